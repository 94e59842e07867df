//! `kith bench`: messaging latency and throughput between two real daemons on loopback, side by side with
//! a reference measured in the same run: the same frames echoed over a bare kith-net (iroh QUIC) session
//! with no store, no API and no delivery state machine. The gap between the two is what kith's durability
//! (SQLite, fsync before acknowledging) and its control API cost.

use crate::demo::{percentile, ping_latencies};
use crate::process::{Daemon, introduce, kith_exe};
use kith_core::hello::Hello;
use kith_core::wire::{Frame, MessageFrame, ReceiptFrame};
use kith_core::{AccountSecret, DeviceCert, DeviceSecret, EndpointCert, EndpointKey, Hints};
use kith_net::{Net, StaticDiscovery};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent API clients in the throughput run.
const SENDERS: usize = 4;

struct Stats {
    median_ms: f64,
    p99_ms: f64,
    msgs_per_sec: f64,
}

async fn kith_daemons(lat_n: usize, thr_n: usize) -> anyhow::Result<Stats> {
    let dir = tempfile::Builder::new().prefix("kith-bench-").tempdir()?;
    let exe = kith_exe();
    let mut a = Daemon::init(&exe, &dir.path().join("a"), "a")?;
    let mut b = Daemon::init(&exe, &dir.path().join("b"), "b")?;
    a.start().await?;
    b.start().await?;
    introduce(&a, &b).await?;
    introduce(&b, &a).await?;
    let w = a.watcher().await?;
    ping_latencies(&a, &w, "b", 20, "warm-up").await?;
    let mut lat = ping_latencies(&a, &w, "b", lat_n, "latency").await?;
    lat.sort_by(f64::total_cmp);
    // Several API clients at once, as a busy UI or script would: the rate is then the node's, not one
    // HTTP round trip's.
    let t0 = Instant::now();
    let mut tasks = vec![];
    for worker in 0..SENDERS {
        let client = a.client().clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = vec![];
            for i in (worker..thr_n).step_by(SENDERS) {
                seqs.push(client.send("b", &format!("throughput {i}")).await?);
            }
            anyhow::Ok(seqs)
        }));
    }
    let mut seqs = Vec::with_capacity(thr_n);
    for t in tasks {
        seqs.extend(t.await??);
    }
    if !w
        .wait_for(Duration::from_secs(300), |w| {
            w.delivered_count("b", &seqs) == seqs.len()
        })
        .await
    {
        anyhow::bail!("throughput run: not all messages delivered");
    }
    let last = seqs
        .iter()
        .filter_map(|s| w.delivered_at("b", *s))
        .max()
        .unwrap_or_else(Instant::now);
    let secs = last.duration_since(t0).as_secs_f64();
    a.stop().await;
    b.stop().await;
    Ok(Stats {
        median_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        msgs_per_sec: thr_n as f64 / secs,
    })
}

fn party(rng: &mut impl rand::CryptoRng) -> (AccountSecret, DeviceSecret, [u8; 32]) {
    let mut ep = [0u8; 32];
    rng.fill_bytes(&mut ep);
    (
        AccountSecret::generate(rng),
        DeviceSecret::generate(rng),
        ep,
    )
}

fn hello(p: &(AccountSecret, DeviceSecret, [u8; 32]), endpoint: EndpointKey) -> Hello {
    let now = kith_node::node::unix_now();
    Hello {
        account: p.0.public(),
        device_cert: DeviceCert::issue(&p.0, p.1.public(), now),
        endpoint_cert: EndpointCert::issue(&p.1, endpoint, now - 60, now + 3600),
        card: None,
    }
}

async fn bare_quic(lat_n: usize, thr_n: usize) -> anyhow::Result<Stats> {
    let mut rng = rand::rng();
    let pa = party(&mut rng);
    let pb = party(&mut rng);
    let disc = Arc::new(StaticDiscovery::default());
    let na = Net::bind(pa.2, "127.0.0.1:0".parse()?, disc.clone()).await?;
    let nb = Net::bind(pb.2, "127.0.0.1:0".parse()?, disc.clone()).await?;
    disc.insert(
        pb.0.public(),
        Hints {
            endpoint: Some(nb.endpoint_key()),
            direct: nb.local_addrs(),
            relays: vec![],
            dht: vec![],
            contact_key: None,
        },
    );
    let hb = hello(&pb, nb.endpoint_key());
    let server = tokio::spawn(async move {
        if let Some(Ok(session)) = nb.accept(&hb, kith_node::node::unix_now).await {
            let (mut r, mut w) = session.split();
            while let Ok(Frame::Message(m)) = r.next().await {
                if w.send(&Frame::Receipt(ReceiptFrame { seqs: vec![m.seq] }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        nb.close().await;
    });
    let session = na
        .dial(
            pb.0.public(),
            &hello(&pa, na.endpoint_key()),
            kith_node::node::unix_now(),
        )
        .await?;
    let (mut r, mut w) = session.split();
    let msg = |seq: u64, text: String| {
        Frame::Message(MessageFrame {
            seq,
            id: [0; 16],
            sent_at_ms: 0,
            text,
        })
    };
    let mut lat = vec![];
    for i in 0..(lat_n + 20) as u64 {
        let t0 = Instant::now();
        w.send(&msg(i + 1, format!("latency {i}"))).await?;
        r.next().await?;
        if i >= 20 {
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    let t0 = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..thr_n {
            if r.next().await.is_err() {
                break;
            }
        }
        Instant::now()
    });
    for i in 0..thr_n as u64 {
        w.send(&msg(100_000 + i, format!("throughput {i}"))).await?;
    }
    let end = reader.await?;
    drop(w);
    na.close().await;
    server.abort();
    Ok(Stats {
        median_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        msgs_per_sec: thr_n as f64 / end.duration_since(t0).as_secs_f64(),
    })
}

pub async fn run(lat_n: usize, thr_n: usize, out: Option<PathBuf>) -> anyhow::Result<()> {
    crate::say!(
        "kith bench: send -> delivered receipt between two processes on 127.0.0.1 ({lat_n} sequential, {thr_n} pipelined by {SENDERS} API clients)"
    );
    let kith = kith_daemons(lat_n, thr_n).await?;
    let bare = bare_quic(lat_n, thr_n).await?;
    crate::say!();
    crate::say!("| system | latency median | latency p99 | throughput |");
    crate::say!("|---|---|---|---|");
    crate::say!(
        "| kith daemons (CLI API -> SQLite outbox -> QUIC -> SQLite inbox, fsync -> receipt) | {:.2} ms | {:.2} ms | {:.0} msg/s |",
        kith.median_ms,
        kith.p99_ms,
        kith.msgs_per_sec
    );
    crate::say!(
        "| reference: bare kith-net/iroh QUIC frame echo, no store, in-process | {:.3} ms | {:.3} ms | {:.0} msg/s |",
        bare.median_ms,
        bare.p99_ms,
        bare.msgs_per_sec
    );
    let report = json!({
        "date": kith_node::node::unix_now(),
        "latency_messages": lat_n,
        "throughput_messages": thr_n,
        "kith": { "median_ms": kith.median_ms, "p99_ms": kith.p99_ms, "msgs_per_sec": kith.msgs_per_sec },
        "reference_bare_quic": { "median_ms": bare.median_ms, "p99_ms": bare.p99_ms, "msgs_per_sec": bare.msgs_per_sec },
    });
    if let Some(path) = out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        crate::say!("\nsaved {}", path.display());
    }
    Ok(())
}
