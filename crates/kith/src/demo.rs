//! `kith demo`: three real daemons on loopback with fresh profiles, real cards, real messages, one crash, and
//! a call.

use crate::client::Watcher;
use crate::process::{Daemon, call_and_answer, introduce, kith_exe};
use anyhow::Context;
use std::time::{Duration, Instant};

/// Alice calls bob and sends a 440 Hz tone for 3 s; bob answers at once and records what he hears; prints
/// what came through.
async fn call(
    alice: &Daemon,
    wa: &Watcher,
    bob: &Daemon,
    rec: &std::path::Path,
) -> anyhow::Result<()> {
    let wb = bob.watcher().await?;
    let c = call_and_answer(
        (alice, wa),
        (bob, &wb),
        "bob",
        serde_json::json!({ "input": { "tone": 440.0 }, "output_device": "none", "duration_secs": 3.0 }),
        serde_json::json!({ "input": "null", "record_wav": rec }),
        Duration::from_secs(30),
    )
    .await?;
    let ring_ms = (c.incoming_unix_us - c.dial_unix_us) as f64 / 1000.0;
    let (ea, eb) = (&c.caller_end, &c.callee_end);
    anyhow::ensure!(
        ea["outcome"] == "completed" && eb["outcome"] == "completed",
        "the call ended as {} / {}",
        ea["outcome"],
        eb["outcome"]
    );
    // What bob heard: the tone's frequency and level, after the first half second.
    let samples: Vec<i16> = hound::WavReader::open(rec)?
        .samples::<i16>()
        .collect::<Result<_, _>>()?;
    let heard = samples.get(24_000..).unwrap_or_default();
    let hz = tone_hz(heard, 48_000.0);
    let rms = (heard.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>()
        / heard.len().max(1) as f64)
        .sqrt();
    let s = &eb["stats"];
    crate::say!(
        "  alice called bob: his phone rang {ring_ms:.0} ms after the dial; {:.1} s talked; bob heard a {hz:.0} Hz tone (alice sent 440 Hz) at {:.0} dBFS",
        ea["talked_secs"].as_f64().unwrap_or(0.0),
        20.0 * (rms / 32768.0).max(1e-9).log10()
    );
    crate::say!(
        "  call statistics at bob: {}, {:.0} kbit/s, loss {:.1} % before FEC, jitter buffer {:.0} ms, round trip {}",
        s["codec"].as_str().unwrap_or("?"),
        ea["stats"]["bitrate"].as_f64().unwrap_or(0.0) / 1000.0,
        s["loss_before_fec_pct"].as_f64().unwrap_or(0.0),
        s["jitter_buffer_ms"].as_f64().unwrap_or(0.0),
        s["rtt_ms"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.1} ms"))
    );
    anyhow::ensure!(
        (hz - 440.0).abs() < 2.0,
        "bob did not hear the 440 Hz tone (measured: {hz:.0} Hz); his call statistics: {}; alice's: {}",
        eb["stats"],
        ea["stats"]
    );
    Ok(())
}

/// The frequency of the tone in `x`: the median period between rising zero crossings (interpolated between
/// samples, with hysteresis so that near-silent stretches, such as a concealed frame fading out or the
/// quiet after the hang-up, count no crossings of their own). NaN if there is no tone.
fn tone_hz(x: &[i16], rate: f64) -> f64 {
    let peak = x.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let arm = -f64::from(peak) / 4.0;
    let mut armed = false;
    let mut rises = Vec::new();
    for (i, w) in x.windows(2).enumerate() {
        let (a, b) = (f64::from(w[0]), f64::from(w[1]));
        if a < arm {
            armed = true;
        }
        if armed && a < 0.0 && b >= 0.0 {
            rises.push(i as f64 + -a / (b - a));
            armed = false;
        }
    }
    let mut periods: Vec<f64> = rises.windows(2).map(|w| w[1] - w[0]).collect();
    periods.sort_by(f64::total_cmp);
    if periods.is_empty() || peak == 0 {
        return f64::NAN;
    }
    rate / periods[periods.len() / 2]
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Sends `n` messages one at a time, each after the previous was delivered; returns latencies in ms.
pub async fn ping_latencies(
    from: &Daemon,
    w: &Watcher,
    to: &str,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        let seq = from.client().send(to, &format!("{tag} {i}")).await?;
        if !w
            .wait_for(Duration::from_secs(20), |w| {
                w.delivered_at(to, seq).is_some()
            })
            .await
        {
            anyhow::bail!(
                "{} -> {to}: message {i} not delivered within 20 s",
                from.name
            );
        }
        let t1 = w.delivered_at(to, seq).context("delivered")?;
        out.push(t1.duration_since(t0).as_secs_f64() * 1000.0);
    }
    Ok(out)
}

fn summary(label: &str, lat: &mut [f64], n: usize) -> String {
    lat.sort_by(f64::total_cmp);
    format!(
        "{label}: {}/{n} delivered, median {:.1} ms, p99 {:.1} ms",
        lat.len(),
        percentile(lat, 0.5),
        percentile(lat, 0.99)
    )
}

/// Checks that `reader`'s chat with `peer` holds exactly `expected` texts from `peer`, in order, once each.
pub async fn check_history(reader: &Daemon, peer: &str, expected: &[String]) -> anyhow::Result<()> {
    let chat = reader
        .client()
        .get(&format!("/v1/chat/{peer}?limit=100000"))
        .await?;
    let got: Vec<String> = chat
        .as_array()
        .context("chat")?
        .iter()
        .filter(|m| m["outgoing"].as_bool() == Some(false))
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    if got != expected {
        let first_diff = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        anyhow::bail!(
            "{}'s history with {peer} has {} messages, expected {} (first difference at #{first_diff})",
            reader.name,
            got.len(),
            expected.len()
        );
    }
    Ok(())
}

/// Offline delivery: carol keeps alice's mail; alice goes away, bob writes to her, and his messages wait at
/// carol's, sealed; bob goes away too; alice comes back and reads them.
async fn mailbox(alice: &mut Daemon, bob: &mut Daemon, carol: &mut Daemon) -> anyhow::Result<()> {
    const N: usize = 20;
    // Bob's own event stream (he was restarted since the demo's first one was opened).
    let wb = bob.watcher().await?;
    carol
        .client()
        .post("/v1/mailbox/host", serde_json::json!({ "name": "alice" }))
        .await?;
    alice
        .client()
        .post("/v1/mailbox/use", serde_json::json!({ "name": "carol" }))
        .await?;
    // Contacts online hear of it at once, the others when they next connect; bob reads it in his view
    // (looked at again whenever his daemon says a contact's mail info came; the stream was open first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = wb.count("mail_info");
        let v = bob.client().get("/v1/mailbox").await?;
        if v["contacts_mailboxes"]["alice"] == 1 {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!("bob did not learn alice's mailbox: {v}");
        }
        wb.wait_for(left, |w| w.count("mail_info") > seen).await;
    }
    alice.stop().await;
    let t = Instant::now();
    let before = wb.sum("mail_deposited", "messages");
    let texts: Vec<String> = (0..N).map(|i| format!("while you were away {i}")).collect();
    for text in &texts {
        bob.client().send("alice", text).await?;
    }
    if !wb
        .wait_for(Duration::from_secs(60), |w| {
            w.sum("mail_deposited", "messages") >= before + N as u64
        })
        .await
    {
        let st = bob.client().get("/v1/status").await?;
        let log = std::fs::read_to_string(bob.home.join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        anyhow::bail!(
            "bob's messages did not reach alice's mailbox: {:?}; bob's connections: {}; the end of bob's log:\n{}",
            wb.last("mail_deposit_failed"),
            st["connections"],
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    crate::say!(
        "  alice went offline; bob wrote {N} messages: {:.1} s later they were sealed (Olm ratchet) and deposited at carol's, alice's mailbox, which cannot read them",
        t.elapsed().as_secs_f64()
    );
    bob.stop().await;
    let t = Instant::now();
    alice.start().await?;
    // Alice's chat is looked at again whenever her daemon reports a message (the stream is open first).
    let wa = alice.watcher().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = wa.count("message");
        let chat = alice.client().get("/v1/chat/bob?limit=100000").await?;
        let got: Vec<String> = chat
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["outgoing"] == false)
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .filter(|t| t.starts_with("while you were away"))
            .collect();
        if got.len() >= N {
            if got != texts {
                anyhow::bail!("alice's mailbox messages out of order or doubled: {got:?}");
            }
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            anyhow::bail!("alice shows {} of bob's {N} messages", got.len());
        }
        wa.wait_for(left, |w| w.count("message") > seen).await;
    }
    crate::say!(
        "  bob went offline too; alice came back and showed all {N} from her mailbox {:.0} ms after starting, in order, once",
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

pub async fn run(messages: usize, keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("kith-demo-").tempdir()?;
    let exe = kith_exe();
    crate::say!(
        "kith demo: three nodes on 127.0.0.1 with fresh profiles in {}",
        dir.path().display()
    );
    let testnet = crate::testnet::Testnet::start(20).await?;
    crate::say!(
        "  local Mainline DHT testnet: 20 nodes on 127.0.1.x (the public DHT is never contacted)"
    );
    let (_relay, relay_url) = crate::relay::start("127.0.0.1:0".parse()?).await?;
    crate::say!(
        "  local relay over TLS, its self-signed certificate pinned by the URL: {relay_url} (records \
         carry only the relay, never an IP address)"
    );
    let mut nodes = vec![];
    for name in ["alice", "bob", "carol"] {
        // Mail goes to a mailbox after 2 s without a direct delivery (10 s by default).
        let args = vec![format!("--relay={relay_url}"), "--mailbox-after=2".into()];
        nodes.push(
            Daemon::spawn(
                &exe,
                &dir.path().join(name),
                name,
                Some(testnet.bootstrap()),
                args,
            )
            .await?,
        );
    }
    crate::say!(
        "  started 3 daemons in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // alice and bob know only each other's address: they find each other through the DHT.
    let t = Instant::now();
    nodes[0].add_by_address(&nodes[1]).await?;
    nodes[1].add_by_address(&nodes[0]).await?;
    {
        let w = nodes[0].watcher().await?;
        let seq = nodes[0]
            .client()
            .send("bob", "found you by your address alone")
            .await?;
        if !w
            .wait_for(Duration::from_secs(30), |w| {
                w.delivered_at("bob", seq).is_some()
            })
            .await
        {
            anyhow::bail!("alice could not reach bob by address through the DHT");
        }
        let first = t.elapsed();
        let path_to_bob = |st: &serde_json::Value| {
            st["connections"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["peer"] == "bob"))
                .map(|c| {
                    format!(
                        "{}, {} IP paths",
                        c["path"].as_str().unwrap_or("?"),
                        c["ip_paths"]
                    )
                })
                .unwrap_or_else(|| "not connected".into())
        };
        let st = nodes[0].client().get("/v1/status").await?;
        crate::say!(
            "  alice added bob by address only; first message delivered {:.0} ms later (DHT lookup + connect to the endpoint in his public record; path then: {})",
            first.as_secs_f64() * 1000.0,
            path_to_bob(&st)
        );
        // They are each other's contacts, so bob's node told alice his contact endpoint: they go direct
        // (a stranger would have stayed on the relay, at an endpoint with no IP address).
        if !path_to_bob(&st).starts_with("direct") {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut direct = None;
            while Instant::now() < deadline {
                let st = nodes[0].client().get("/v1/status").await?;
                if path_to_bob(&st).starts_with("direct") {
                    direct = Some(t.elapsed());
                    break;
                }
                let seen = w.count("peer");
                w.wait_for(Duration::from_millis(50), |w| w.count("peer") > seen)
                    .await;
            }
            match direct {
                Some(d) => crate::say!(
                    "  as contacts they moved to a direct path {:.0} ms after the first message",
                    (d - first).as_secs_f64() * 1000.0
                ),
                None => crate::say!("  alice and bob stayed on the relay (no direct path found)"),
            }
        }
    }
    // carol exchanges signed contact cards with both (hints included: no lookup needed).
    let t = Instant::now();
    for (i, j) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        introduce(&nodes[i], &nodes[j]).await?;
    }
    crate::say!(
        "  carol exchanged contact cards with alice and bob (4 adds) in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    for n in &nodes {
        let v = n
            .client()
            .get(&format!(
                "/v1/contacts/{}/safety-number",
                if n.name == "alice" { "bob" } else { "alice" }
            ))
            .await?;
        if n.name != "carol" {
            crate::say!(
                "  safety number {} sees: {}",
                n.name,
                v["safety_number"].as_str().unwrap_or("")
            );
        }
    }

    let (alice, rest) = nodes.split_first_mut().context("nodes")?;
    let (bob, rest) = rest.split_first_mut().context("nodes")?;
    let carol = &mut rest[0];
    let wa = alice.watcher().await?;
    let wb = bob.watcher().await?;
    let wc = carol.watcher().await?;

    // One message at a time, each waiting for its delivered receipt: the latency a person sees.
    let mut ab = ping_latencies(alice, &wa, "bob", messages, "a->b").await?;
    crate::say!("  {}", summary("alice -> bob", &mut ab, messages));
    let mut ba = ping_latencies(bob, &wb, "alice", messages, "b->a").await?;
    crate::say!("  {}", summary("bob -> alice", &mut ba, messages));
    let mut ca = ping_latencies(carol, &wc, "alice", 20, "c->a").await?;
    crate::say!("  {}", summary("carol -> alice", &mut ca, 20));
    let mut ac = ping_latencies(alice, &wa, "carol", 20, "a->c").await?;
    crate::say!("  {}", summary("alice -> carol", &mut ac, 20));

    // Crash: alice keeps writing while bob is killed with SIGKILL and restarted.
    let burst = messages;
    let mut seqs = vec![];
    let kill_at = burst / 4;
    let mut killed_at = None;
    let mut restarted = None;
    for i in 0..burst {
        seqs.push(alice.client().send("bob", &format!("burst {i}")).await?);
        if i == kill_at {
            // Let some of the burst through, then pull the plug.
            wa.wait_for(Duration::from_secs(10), |w| {
                w.delivered_count("bob", &seqs) >= kill_at / 2
            })
            .await;
            bob.kill();
            killed_at = Some(Instant::now());
            crate::say!(
                "  bob killed with SIGKILL after {} of {burst} burst messages were delivered",
                wa.delivered_count("bob", &seqs)
            );
        }
        if i == burst / 2 {
            bob.start().await?;
            restarted = Some(Instant::now());
            crate::say!(
                "  bob restarted ({:.0} ms after the kill) while alice kept sending",
                killed_at
                    .map(|k| k.elapsed().as_secs_f64() * 1000.0)
                    .unwrap_or(0.0)
            );
        }
    }
    let all = wa
        .wait_for(Duration::from_secs(60), |w| {
            w.delivered_count("bob", &seqs) == seqs.len()
        })
        .await;
    let drained = restarted
        .map(|r| r.elapsed().as_secs_f64() * 1000.0)
        .unwrap_or(0.0);
    crate::say!(
        "  alice -> bob across the crash: {}/{burst} delivered, all within {:.0} ms of bob's restart",
        wa.delivered_count("bob", &seqs),
        drained
    );
    if !all {
        anyhow::bail!("not every message reached bob after his restart");
    }
    // Exactly once, in order, on bob's side, from his store.
    let mut expected: Vec<String> = vec!["found you by your address alone".to_owned()];
    expected.extend((0..messages).map(|i| format!("a->b {i}")));
    expected.extend((0..burst).map(|i| format!("burst {i}")));
    check_history(bob, "alice", &expected).await?;
    crate::say!(
        "  bob's history with alice: {} messages, each exactly once, in send order",
        expected.len()
    );
    let expected_ba: Vec<String> = (0..messages).map(|i| format!("b->a {i}")).collect();
    check_history(alice, "bob", &expected_ba).await?;
    let st = alice.client().get("/v1/status").await?;
    crate::say!(
        "  alice's status: outbox {} waiting, {} connections, DHT: {} nodes known, {} records published, {} found",
        st["outbox"],
        st["connections"].as_array().map_or(0, |a| a.len()),
        st["dht"]["routing_table_nodes"],
        st["dht"]["sources"]["published"],
        st["dht"]["sources"]["dht_records"]
    );

    call(alice, &wa, bob, &dir.path().join("bob-heard.wav")).await?;

    mailbox(alice, bob, carol).await?;

    for n in [&mut *alice, &mut *bob, &mut *carol] {
        n.stop().await;
    }

    crate::say!(
        "kith demo, an organization: example.org's key published twice, its kith gateway to a SIP PBX and phone"
    );
    crate::demo_org::run(&dir.path().join("org"))?;
    if keep {
        let path = dir.keep();
        crate::say!("  profiles and logs kept in {}", path.display());
    }
    crate::say!("kith demo: OK in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tone_hz;

    #[test]
    fn the_tone_is_measured_through_gaps_and_a_quiet_tail() {
        let mut x: Vec<i16> = (0..96_000)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 48_000.0).sin() * 8000.0) as i16
            })
            .collect();
        // Two concealed frames that fade to almost nothing, and a tail of the decoder's low-level noise.
        for s in &mut x[30_000..31_920] {
            *s /= 50;
        }
        x.extend((0..9_600).map(|i| if i % 2 == 0 { -1 } else { 1 }));
        let hz = tone_hz(&x, 48_000.0);
        assert!((hz - 440.0).abs() < 0.5, "{hz}");
        assert!(tone_hz(&[0; 4800], 48_000.0).is_nan());
    }
}
