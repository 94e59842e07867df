//! `kith bench-discovery`: finding a person by address alone on a local Mainline testnet.
//!
//! * cold: two fresh profiles that know only each other's address; from starting both daemons to the
//!   first delivered message (DHT publish, blinded lookup, decrypt, connect, deliver).
//! * warm: the same pair restarted with their bootstrap list removed (saved routing table, learned cards).
//! * churn: records of 20 publishers looked up by fresh clients before and after 30% of the testnet's nodes
//!   are killed: success rate and time to the first valid record.
//!
//! The reference in the same run: the same lookups of an unblinded, unencrypted BEP44 item under the raw
//! account key, as iroh's own mainline address lookup publishes it, which is linkable forever.

use crate::demo::percentile;
use crate::process::{Daemon, kith_exe};
use crate::testnet::Testnet;
use futures_util::StreamExt;
use kith_core::blind::{self, PeriodNum};
use kith_core::record::{self, DeviceEntry, RECORD_VALUE_LEN, RecordBody, bep44_signable};
use kith_core::{AccountSecret, DeviceCert, DeviceSecret, EndpointKey};
use kith_net::dht::{DhtConfig, KithDht};
use serde_json::json;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PERIOD_MINUTES: u64 = 24 * 60;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    json!({ "n": v.len(), "median_ms": percentile(&v, 0.5), "p90_ms": percentile(&v, 0.9) })
}

async fn first_message(a: &Daemon, b: &Daemon, text: &str) -> anyhow::Result<()> {
    let w = a.watcher().await?;
    let seq = a.client().send("b", text).await?;
    if !w
        .wait_for(Duration::from_secs(30), |w| {
            w.delivered_at("b", seq).is_some()
        })
        .await
    {
        anyhow::bail!("message not delivered within 30 s");
    }
    let _ = b;
    Ok(())
}

/// Environment variable: `1` makes a kith process run its DHT queries as mainline 8.0.1 published them,
/// without kith's change (vendor/README.md): the reference in this benchmark's side-by-side series.
pub const DHT_AS_PUBLISHED: &str = "KITH_BENCH_DHT_AS_PUBLISHED";

/// How the DHT queries of a series run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queries {
    /// As kith runs them: slow nodes given up on after a few round trips.
    Kith,
    /// As mainline 8.0.1 published them (the reference).
    AsPublished,
}

impl Queries {
    fn env(self) -> Vec<(String, String)> {
        match self {
            Queries::Kith => vec![],
            Queries::AsPublished => vec![(DHT_AS_PUBLISHED.to_owned(), "1".to_owned())],
        }
    }
}

/// Two fresh profiles with `arg`, started together, each adding the other by address only; returns them
/// (stopped) and the milliseconds from launch to the first delivered message.
async fn cold_pair(
    exe: &Path,
    dir: &Path,
    net: &Testnet,
    arg: &str,
    what: &str,
    queries: Queries,
) -> anyhow::Result<(Daemon, Daemon, f64)> {
    let mut a = Daemon::init(exe, &dir.join("a"), "a")?;
    let mut b = Daemon::init(exe, &dir.join("b"), "b")?;
    for d in [&mut a, &mut b] {
        d.bootstrap = Some(net.bootstrap());
        d.extra_args = vec![arg.to_owned()];
        d.env = queries.env();
    }
    let (addr_a, addr_b) = (a.address()?, b.address()?);
    let t0 = Instant::now();
    a.start().await?;
    b.start().await?;
    a.client()
        .post("/v1/contacts", json!({ "contact": addr_b, "name": "b" }))
        .await?;
    b.client()
        .post("/v1/contacts", json!({ "contact": addr_a, "name": "a" }))
        .await?;
    first_message(&a, &b, what).await?;
    let t = ms(t0.elapsed());
    a.stop().await;
    b.stop().await;
    Ok((a, b, t))
}

async fn pair_runs(net: &Testnet, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let exe = kith_exe();
    let mut cold = vec![];
    let mut warm = vec![];
    for run in 0..runs {
        let dir = tempfile::Builder::new()
            .prefix("kith-bench-disc-")
            .tempdir()?;
        let (mut a, mut b, t) = cold_pair(
            &exe,
            dir.path(),
            net,
            "--publish-direct",
            "cold",
            Queries::Kith,
        )
        .await?;
        cold.push(t);
        for d in [&mut a, &mut b] {
            d.bootstrap = Some(vec![]);
        }
        let t0 = Instant::now();
        b.start().await?;
        a.start().await?;
        first_message(&a, &b, "warm").await?;
        warm.push(ms(t0.elapsed()));
        a.stop().await;
        b.stop().await;
        eprintln!(
            "  run {}: cold {:.0} ms, warm {:.0} ms",
            run + 1,
            cold[run],
            warm[run]
        );
    }
    Ok((cold, warm))
}

/// Cold start with the default privacy settings: a relay, no address published; the first message goes
/// through the relay to the recipient's relay-only request endpoint.
async fn private_runs(net: &Testnet, runs: usize, relay: &str) -> anyhow::Result<Vec<f64>> {
    let exe = kith_exe();
    let mut cold = vec![];
    for run in 0..runs {
        let dir = tempfile::Builder::new()
            .prefix("kith-bench-disc-")
            .tempdir()?;
        let relay_arg = format!("--relay={relay}");
        let (_a, _b, t) = cold_pair(
            &exe,
            dir.path(),
            net,
            &relay_arg,
            "cold, private",
            Queries::Kith,
        )
        .await?;
        cold.push(t);
        eprintln!(
            "  run {}: cold through the relay {:.0} ms",
            run + 1,
            cold[run]
        );
    }
    Ok(cold)
}

struct Publisher {
    account: AccountSecret,
}

/// Publishes a blinded record and a raw reference item per publisher; returns publish times and ack counts.
async fn publish_all(
    publishers: &[Publisher],
    client: &KithDht,
    now: u64,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<u32>)> {
    let period = blind::period_at(now, PERIOD_MINUTES);
    let mut rng = rand::rng();
    let (mut blinded_t, mut raw_t, mut acks) = (vec![], vec![], vec![]);
    for p in publishers {
        let device = DeviceSecret::generate(&mut rng);
        let endpoint =
            EndpointKey::from_bytes(*DeviceSecret::generate(&mut rng).public().as_bytes())?;
        let body = RecordBody {
            version: record::RECORD_VERSION,
            period: period.0,
            expires: now + 86_400,
            devices: vec![DeviceEntry {
                cert: DeviceCert::issue(&p.account, device.public(), now),
                endpoint,
                relays: vec![],
                direct: vec!["127.0.0.1:4000".parse()?],
            }],
            contacts: None,
        };
        let secret = blind::blind_secret(&p.account, period, PERIOD_MINUTES);
        let value = record::seal(&p.account, &secret.public(), body, &mut rng)?;
        // As the node does: a record stored by few nodes (the client had barely joined) is published
        // again. The time is that of the first publish; the count that of the last.
        let t = Instant::now();
        let mut stored = client.publish(&secret, now as i64, &value).await?;
        blinded_t.push(ms(t.elapsed()));
        for _ in 0..5 {
            if stored >= kith_net::dht::WELL_STORED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            stored = client.publish(&secret, now as i64, &value).await?;
        }
        acks.push(stored);
        // Reference: the same size, under the raw account key, no blinding or encryption; published the
        // same way.
        let raw = vec![7u8; RECORD_VALUE_LEN];
        let sig = p.account.sign(&bep44_signable(now as i64, &raw));
        let key = *p.account.public().as_bytes();
        let t = Instant::now();
        let mut stored = client.publish_item(key, sig, now as i64, &raw).await?;
        raw_t.push(ms(t.elapsed()));
        for _ in 0..5 {
            if stored >= kith_net::dht::WELL_STORED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            stored = client.publish_item(key, sig, now as i64, &raw).await?;
        }
    }
    Ok((blinded_t, raw_t, acks))
}

/// Fresh clients look every publisher up; returns (successes, times to first valid item) for both kinds.
async fn lookup_all(
    publishers: &[Publisher],
    bootstrap: &[String],
    now: u64,
) -> anyhow::Result<[(usize, Vec<f64>); 2]> {
    let period = blind::period_at(now, PERIOD_MINUTES);
    let mut blinded = (0, vec![]);
    let mut raw = (0, vec![]);
    for (i, p) in publishers.iter().enumerate() {
        let config = DhtConfig {
            bootstrap: bootstrap.to_vec(),
            bind: Ipv4Addr::LOCALHOST,
            port: None,
            server: false,
        };
        // A fresh client per lookup, like a new period's client.
        let client = KithDht::start(&config)?;
        let account = p.account.public();
        let key = blind::blind_public(&account, period, PERIOD_MINUTES)?;
        let t = Instant::now();
        // Like the node: a query that ends empty (e.g. before the client has joined) is asked again.
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut s = std::pin::pin!(client.lookup(&key));
                while let Some(item) = s.next().await {
                    if record::open(
                        &account,
                        &key,
                        period,
                        item.seq,
                        &item.value,
                        &item.signature,
                        now,
                    )
                    .is_ok()
                    {
                        return true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or(false);
        if found {
            blinded.0 += 1;
            blinded.1.push(ms(t.elapsed()));
        }
        let client = KithDht::start(&config)?;
        let t = Instant::now();
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut s = std::pin::pin!(client.lookup_key(account.as_bytes()));
                if s.next().await.is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or(false);
        if found {
            raw.0 += 1;
            raw.1.push(ms(t.elapsed()));
        }
        let _ = i;
    }
    Ok([blinded, raw])
}

pub async fn run(nodes: usize, runs: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    crate::say!(
        "kith bench-discovery: local Mainline testnet of {nodes} nodes on 127.0.x.x, {runs} runs"
    );
    let mut net = Testnet::start(nodes).await?;
    let (cold, warm) = pair_runs(&net, runs).await?;
    let (_relay, relay_url) = crate::relay::start("127.0.0.1:0".parse()?).await?;
    let private = private_runs(&net, runs, &relay_url).await?;

    let now = kith_node::node::unix_now();
    let mut rng = rand::rng();
    let publishers: Vec<Publisher> = (0..20)
        .map(|_| Publisher {
            account: AccountSecret::generate(&mut rng),
        })
        .collect();
    let client = KithDht::start(&DhtConfig {
        bootstrap: net.bootstrap(),
        bind: Ipv4Addr::LOCALHOST,
        port: None,
        server: false,
    })?;
    let (pub_blinded, pub_raw, acks) = publish_all(&publishers, &client, now).await?;
    // Joining costs: a fresh client (as each period gets) publishing its first record.
    let mut fresh_publish = vec![];
    for p in publishers.iter().take(5) {
        let t = Instant::now();
        let c = KithDht::start(&DhtConfig {
            bootstrap: net.bootstrap(),
            bind: Ipv4Addr::LOCALHOST,
            port: None,
            server: false,
        })?;
        publish_all(std::slice::from_ref(p), &c, now).await?;
        fresh_publish.push(ms(t.elapsed()));
    }
    eprintln!("  fresh client publish (join + publish blinded + raw): {fresh_publish:?}");
    let before = lookup_all(&publishers, &net.bootstrap(), now).await?;
    let killed = nodes * 3 / 10;
    net.kill(killed, 42);
    let after = lookup_all(&publishers, &net.bootstrap(), now).await?;
    // Half of the nodes left go silent: they stay in routing tables and are handed out as contacts, but
    // answer nothing (as kith's read-only clients look to DHT nodes that ignore the read-only flag).
    let silenced = net.nodes().len() / 2;
    net.silence(silenced, 7);
    let silent = lookup_all(&publishers, &net.bootstrap(), now).await?;
    let (silent_cold, _) = pair_runs(&net, runs.min(5)).await?;
    // Side by side: kith's DHT queries and mainline's as published, in turns, among the silent nodes.
    let mut side = [vec![], vec![]];
    for run in 0..runs {
        for (i, q) in [Queries::Kith, Queries::AsPublished]
            .into_iter()
            .enumerate()
        {
            let dir = tempfile::Builder::new()
                .prefix("kith-bench-disc-")
                .tempdir()?;
            let (_, _, t) =
                cold_pair(&kith_exe(), dir.path(), &net, "--publish-direct", "cold", q).await?;
            side[i].push(t);
        }
        eprintln!(
            "  run {}: cold among silent nodes {:.0} ms (kith's queries), {:.0} ms (as published)",
            run + 1,
            side[0][run],
            side[1][run]
        );
    }
    kith_net::dht::set_adaptive_queries(false);
    let silent_published = lookup_all(&publishers, &net.bootstrap(), now).await;
    kith_net::dht::set_adaptive_queries(true);
    let silent_published = silent_published?;

    let c = stats(cold.clone());
    let w = stats(warm.clone());
    let pc = stats(private.clone());
    crate::say!();
    crate::say!(
        "| measurement | kith (blinded, encrypted record) | reference: raw BEP44 item under the account key |"
    );
    crate::say!("|---|---|---|");
    crate::say!(
        "| cold start -> first delivered message, two fresh profiles, address only | median {:.0} ms, p90 {:.0} ms ({runs} runs) | - |",
        c["median_ms"].as_f64().unwrap_or(f64::NAN),
        c["p90_ms"].as_f64().unwrap_or(f64::NAN)
    );
    crate::say!(
        "| the same with a relay and no IP address published (first message via the request endpoint) | median {:.0} ms, p90 {:.0} ms ({runs} runs) | - |",
        pc["median_ms"].as_f64().unwrap_or(f64::NAN),
        pc["p90_ms"].as_f64().unwrap_or(f64::NAN)
    );
    crate::say!(
        "| warm restart (saved routing table, no bootstrap) -> first delivered message | median {:.0} ms, p90 {:.0} ms | - |",
        w["median_ms"].as_f64().unwrap_or(f64::NAN),
        w["p90_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let line = |label: &str, r: &[(usize, Vec<f64>); 2]| {
        let mut b = r[0].1.clone();
        let mut x = r[1].1.clone();
        b.sort_by(f64::total_cmp);
        x.sort_by(f64::total_cmp);
        crate::say!(
            "| lookup by a fresh client, {label} | {}/20 found, median {:.0} ms | {}/20 found, median {:.0} ms |",
            r[0].0,
            percentile(&b, 0.5),
            r[1].0,
            percentile(&x, 0.5)
        );
    };
    line("full testnet", &before);
    line(&format!("{killed} of {nodes} nodes killed"), &after);
    line(
        &format!(
            "and {silenced} of the other {} silent (in routing tables, never answering)",
            nodes - killed
        ),
        &silent,
    );
    let sc = stats(silent_cold.clone());
    crate::say!(
        "| cold start -> first delivered message, with those silent nodes | median {:.0} ms, p90 {:.0} ms ({} runs) | - |",
        sc["median_ms"].as_f64().unwrap_or(f64::NAN),
        sc["p90_ms"].as_f64().unwrap_or(f64::NAN),
        silent_cold.len()
    );
    let k = stats(side[0].clone());
    let r = stats(side[1].clone());
    crate::say!();
    crate::say!(
        "| among those silent nodes | kith's DHT queries (vendored mainline, vendor/README.md) | reference: mainline 8.0.1 as published |"
    );
    crate::say!("|---|---|---|");
    crate::say!(
        "| cold start -> first delivered message, address only, in turns | median {:.0} ms, p90 {:.0} ms ({runs} runs) | median {:.0} ms, p90 {:.0} ms ({runs} runs) |",
        k["median_ms"].as_f64().unwrap_or(f64::NAN),
        k["p90_ms"].as_f64().unwrap_or(f64::NAN),
        r["median_ms"].as_f64().unwrap_or(f64::NAN),
        r["p90_ms"].as_f64().unwrap_or(f64::NAN)
    );
    let found = |r: &(usize, Vec<f64>)| {
        let mut v = r.1.clone();
        v.sort_by(f64::total_cmp);
        format!("{}/20 found, median {:.0} ms", r.0, percentile(&v, 0.5))
    };
    crate::say!(
        "| lookup of a record by a fresh client | {} | {} |",
        found(&silent[0]),
        found(&silent_published[0])
    );
    crate::say!();
    let mut pb = pub_blinded.clone();
    let mut pr = pub_raw.clone();
    pb.sort_by(f64::total_cmp);
    pr.sort_by(f64::total_cmp);
    let mut a = acks.clone();
    a.sort();
    crate::say!(
        "| publish one record (value {RECORD_VALUE_LEN} B) | median {:.0} ms, stored by median {} nodes | median {:.0} ms |",
        percentile(&pb, 0.5),
        a.get(a.len() / 2).copied().unwrap_or(0),
        percentile(&pr, 0.5)
    );
    let report = json!({
        "nodes": nodes, "runs": runs,
        "cold_first_message": c, "warm_first_message": w, "cold_private_first_message": pc,
        "lookup_full": { "kith_found": before[0].0, "kith": stats(before[0].1.clone()), "raw_found": before[1].0, "raw": stats(before[1].1.clone()) },
        "lookup_after_kill": { "killed": killed, "kith_found": after[0].0, "kith": stats(after[0].1.clone()), "raw_found": after[1].0, "raw": stats(after[1].1.clone()) },
        "lookup_with_silent_nodes": { "silent": silenced, "kith_found": silent[0].0, "kith": stats(silent[0].1.clone()), "raw_found": silent[1].0, "raw": stats(silent[1].1.clone()) },
        "cold_first_message_with_silent_nodes": sc,
        "silent_side_by_side": {
            "cold_kith_queries": k, "cold_as_published": r,
            "lookup_kith_queries": { "found": silent[0].0, "ms": stats(silent[0].1.clone()) },
            "lookup_as_published": { "found": silent_published[0].0, "ms": stats(silent_published[0].1.clone()) },
        },
        "record_value_bytes": RECORD_VALUE_LEN,
        "publish": { "kith": stats(pub_blinded), "raw": stats(pub_raw), "stored_at": acks },
    });
    if let Some(path) = out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        crate::say!("\nsaved {}", path.display());
    }
    let _ = PeriodNum(0);
    Ok(())
}
