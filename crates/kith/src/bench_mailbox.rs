//! `kith bench-mailbox`: messages to someone who is offline, through a mailbox, side by side with the same
//! backlog delivered directly in the same run.
//!
//! * **Time to show**: bob is offline while alice queues N messages. Through the mailbox, alice has gone
//!   offline too and carol's node keeps bob's mail; the reference is the direct path, alice still online.
//!   From starting bob's daemon to all N shown in his chat (polled on his API every 20 ms).
//! * **Deposits per second**: N sealed deposits from a fresh anonymous endpoint into a mailbox daemon (16
//!   in flight on one connection, each committed to SQLite before its answer); reference: the same
//!   daemons' direct messages per second (send -> delivered receipt) measured in this run's direct case.
//! * **Bytes per message at the mailbox**: envelope bytes held, and the growth of the mailbox's database
//!   files; reference: the message's text and its direct wire frame.
//! * **Ratchet cost per message**: Olm encrypt + decrypt (vodozemac) inside the envelope, and the whole
//!   seal + open; reference: the outer envelope alone (XChaCha20-Poly1305, same size class).

use crate::process::{Daemon, introduce, kith_exe};
use kith_core::mailbox::{self, Request, Response};
use kith_core::seal::{PairKey, RatchetAccount, Sealed};
use kith_core::{AccountSecret, DeviceCert, DeviceSecret, ParsedContact};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEXT: &str = "See you at the station at 7, platform 2 - bring the tickets please";

async fn received(d: &Daemon, peer: &str) -> anyhow::Result<usize> {
    let chat = d
        .client()
        .get(&format!("/v1/chat/{peer}?limit=1000000"))
        .await?;
    Ok(chat
        .as_array()
        .map(|a| a.iter().filter(|m| m["outgoing"] == false).count())
        .unwrap_or(0))
}

/// Starts `bob` and waits until he shows `n` messages from alice; seconds from the start.
async fn time_to_show(bob: &mut Daemon, n: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    bob.start().await?;
    let deadline = t0 + Duration::from_secs(600);
    loop {
        if received(bob, "alice").await? >= n {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            anyhow::bail!("bob shows {} of {n}", received(bob, "alice").await?);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn db_bytes(home: &Path) -> u64 {
    std::fs::read_dir(home)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kith.db"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

struct Run {
    mailbox_secs: f64,
    direct_secs: f64,
    envelope_bytes: f64,
    db_growth_bytes: f64,
}

/// One run of `n` messages: through carol's mailbox, then directly.
async fn run_n(n: usize) -> anyhow::Result<Run> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-mailbox-")
        .tempdir()?;
    let exe = kith_exe();
    let fast = || vec!["--mailbox-after=0.5".to_string()];
    let mut alice = Daemon::spawn(&exe, &dir.path().join("alice"), "alice", None, fast()).await?;
    let mut bob = Daemon::spawn(&exe, &dir.path().join("bob"), "bob", None, fast()).await?;
    let mut carol = Daemon::spawn(&exe, &dir.path().join("carol"), "carol", None, vec![]).await?;
    for (x, y) in [
        (&alice, &bob),
        (&bob, &alice),
        (&bob, &carol),
        (&carol, &bob),
    ] {
        introduce(x, y).await?;
    }
    let wa = alice.watcher().await?;
    let first = alice.client().send("bob", "hello").await?;
    if !wa.delivered_within("bob", first, 30).await {
        anyhow::bail!("alice and bob did not connect");
    }
    carol
        .client()
        .post("/v1/mailbox/host", json!({ "name": "bob" }))
        .await?;
    bob.client()
        .post("/v1/mailbox/use", json!({ "name": "carol" }))
        .await?;
    if !wa
        .wait_for(Duration::from_secs(30), |w| {
            w.last("mail_info").is_some_and(|e| e["mailboxes"] == 1)
        })
        .await
    {
        anyhow::bail!("alice did not learn bob's mailbox");
    }

    // Through the mailbox.
    bob.stop().await;
    // The mailbox's database after a clean stop (its write-ahead log folded in), before and after.
    carol.stop().await;
    let carol_db_before = db_bytes(&dir.path().join("carol"));
    carol.start().await?;
    for i in 0..n {
        alice
            .client()
            .send("bob", &format!("{i:05} {TEXT}"))
            .await?;
    }
    if !wa
        .wait_for(Duration::from_secs(600), |w| {
            w.sum("mail_deposited", "messages") >= n as u64
        })
        .await
    {
        anyhow::bail!(
            "deposited {} of {n}: {:?}",
            wa.sum("mail_deposited", "messages"),
            wa.last("mail_deposit_failed")
        );
    }
    alice.stop().await;
    carol.stop().await;
    let carol_db_after = db_bytes(&dir.path().join("carol"));
    let envelope_total: u64 = {
        let store = kith_node::Profile::new(dir.path().join("carol")).open_store(None)?;
        let owner = account_of(&bob)?;
        let (items, _) = store.mailbox_fetch(
            &owner,
            0,
            1_000_000,
            kith_node::node::unix_now() as i64 * 1000,
        )?;
        if items.len() != n {
            anyhow::bail!("carol holds {} envelopes for {n} messages", items.len());
        }
        items.iter().map(|h| h.envelope.len() as u64).sum()
    };
    carol.start().await?;
    let mailbox_secs = time_to_show(&mut bob, n + 1).await?;

    // Directly: bob offline again, alice online with a backlog for him.
    bob.stop().await;
    alice.start().await?;
    let wa = alice.watcher().await?;
    let mut seqs = vec![];
    for i in 0..n {
        seqs.push(
            alice
                .client()
                .send("bob", &format!("{i:05} {TEXT}"))
                .await?,
        );
    }
    let direct_secs = time_to_show(&mut bob, 2 * n + 1).await?;
    if !wa
        .wait_for(Duration::from_secs(600), |w| {
            w.delivered_count("bob", &seqs) == seqs.len()
        })
        .await
    {
        anyhow::bail!("direct backlog not delivered");
    }
    alice.stop().await;
    bob.stop().await;
    Ok(Run {
        mailbox_secs,
        direct_secs,
        envelope_bytes: envelope_total as f64 / n as f64,
        db_growth_bytes: carol_db_after.saturating_sub(carol_db_before) as f64 / n as f64,
    })
}

fn account_of(d: &Daemon) -> anyhow::Result<kith_core::AccountKey> {
    let a: kith_core::Address = d.address()?.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(a.account())
}

/// Deposits per second into a mailbox daemon from one anonymous connection, `in_flight` at once.
async fn deposit_rate(n: usize, in_flight: usize) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-deposit-")
        .tempdir()?;
    let exe = kith_exe();
    let owner = Daemon::spawn(&exe, &dir.path().join("owner"), "owner", None, vec![]).await?;
    let mut mailbox = Daemon::spawn(&exe, &dir.path().join("box"), "box", None, vec![]).await?;
    introduce(&owner, &mailbox).await?;
    introduce(&mailbox, &owner).await?;
    mailbox
        .client()
        .post("/v1/mailbox/host", json!({ "name": "owner" }))
        .await?;
    // A contact of the owner (the depositor's pair key and token), made here.
    let mut rng = rand::rng();
    let depositor = AccountSecret::generate(&mut rng);
    let owner_key = account_of(&owner)?;
    let pair = PairKey::derive(&depositor, &owner_key)?;
    let period = kith_core::blind::period_at(kith_node::node::unix_now(), 1440).0;
    let token = pair.deposit_token(&owner_key, period);
    // The owner gives its mailbox the token, as its node does for its contacts.
    {
        let store = kith_node::Profile::new(dir.path().join("box")).open_store(None)?;
        store.mailbox_add_owner(&owner_key, 0)?;
    }
    mailbox.stop().await;
    {
        let mut store = kith_node::Profile::new(dir.path().join("box")).open_store(None)?;
        store.mailbox_set_tokens(&owner_key, period, &[token], period.saturating_sub(1))?;
    }
    mailbox.start().await?;
    let card = mailbox.client().get("/v1/card").await?;
    let ParsedContact::Card(card) =
        ParsedContact::parse(card["card"].as_str().unwrap_or_default())?
    else {
        anyhow::bail!("no card");
    };
    let net = kith_net::Net::bind(
        rand::random(),
        "127.0.0.1:0".parse()?,
        Arc::new(kith_net::StaticDiscovery::default()),
    )
    .await?;
    let conn = net.mailbox_connect(card.hints()).await?;
    let envelopes: Vec<Vec<u8>> = (0..n)
        .map(|i| pair.seal(&owner_key, format!("{i} {TEXT}").as_bytes(), &mut rng))
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    let requests: Vec<_> = envelopes
        .into_iter()
        .map(|envelope| {
            let conn = conn.clone();
            let request = mailbox::encode(&Request::Deposit { token, envelope });
            async move { conn.request(&request).await }
        })
        .collect();
    use futures_util::StreamExt;
    let answers: Vec<_> = futures_util::stream::iter(requests)
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    let ok = answers
        .iter()
        .filter(|a| {
            matches!(
                a.as_ref().ok().and_then(|b| mailbox::decode::<Response>(b)),
                Some(Response::Deposited { .. })
            )
        })
        .count();
    conn.close();
    net.close().await;
    if ok != n {
        anyhow::bail!("{ok} of {n} deposits taken");
    }
    drop(owner);
    Ok(n as f64 / secs)
}

/// Microseconds per message: (Olm encrypt, Olm decrypt, whole seal, whole open, envelope seal, envelope
/// open), over `n` messages in steady state (after the first answer, so no pre-key messages).
fn ratchet_cost(n: usize) -> anyhow::Result<[f64; 6]> {
    let mut rng = rand::rng();
    let (a_acc, b_acc) = (
        AccountSecret::generate(&mut rng),
        AccountSecret::generate(&mut rng),
    );
    let a_dev = DeviceSecret::generate(&mut rng);
    let b_dev = DeviceSecret::generate(&mut rng);
    let a_cert = DeviceCert::issue(&a_acc, a_dev.public(), 0);
    let b_cert = DeviceCert::issue(&b_acc, b_dev.public(), 0);
    let a_olm = RatchetAccount::new();
    let mut b_olm = RatchetAccount::new();
    let bundle = b_olm.bundle(&b_dev, 0);
    let mut a_sess = a_olm.outbound(&bundle, None)?;
    let first = a_sess.encrypt(b"hi", Some(a_olm.proof(&a_dev, &a_cert)))?;
    let (_, mut b_sess, _) = b_olm.inbound(&a_acc.public(), &first)?;
    // Bob answers once: alice's session is then established (no more pre-key messages).
    let answer = b_sess.encrypt(b"hello", Some(b_olm.proof(&b_dev, &b_cert)))?;
    a_sess.decrypt(&answer)?;
    let pair_a = PairKey::derive(&a_acc, &b_acc.public())?;
    let pair_b = PairKey::derive(&b_acc, &a_acc.public())?;
    let owner = b_acc.public();
    let plain = mailbox::encode(&mailbox::Letter::Messages(vec![
        kith_core::wire::MessageFrame {
            seq: 1,
            id: [7; 16],
            sent_at_ms: 1,
            text: TEXT.into(),
        },
    ]));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    // Olm alone.
    let t = Instant::now();
    let sealed: Vec<Sealed> = (0..n)
        .map(|_| a_sess.encrypt(&plain, None))
        .collect::<Result<_, _>>()?;
    let olm_enc = per(t.elapsed());
    let t = Instant::now();
    for s in &sealed {
        b_sess.decrypt(s)?;
    }
    let olm_dec = per(t.elapsed());
    // Everything a message goes through: Olm, serialisation, the padded envelope; and back.
    let t = Instant::now();
    let envelopes: Vec<Vec<u8>> = (0..n)
        .map(|_| {
            let s = a_sess.encrypt(&plain, None)?;
            Ok::<_, anyhow::Error>(pair_a.seal(&owner, &s.to_bytes(), &mut rng)?)
        })
        .collect::<Result<_, _>>()?;
    let whole_seal = per(t.elapsed());
    let t = Instant::now();
    for e in &envelopes {
        let inner = pair_b.open(&owner, e)?;
        b_sess.decrypt(&Sealed::from_bytes(&inner)?)?;
    }
    let whole_open = per(t.elapsed());
    // Reference: the envelope alone, same plaintext.
    let t = Instant::now();
    let bare: Vec<Vec<u8>> = (0..n)
        .map(|_| pair_a.seal(&owner, &plain, &mut rng))
        .collect::<Result<_, _>>()?;
    let env_seal = per(t.elapsed());
    let t = Instant::now();
    for e in &bare {
        pair_b.open(&owner, e)?;
    }
    let env_open = per(t.elapsed());
    Ok([olm_enc, olm_dec, whole_seal, whole_open, env_seal, env_open])
}

pub async fn run(counts: Vec<usize>, out: Option<PathBuf>) -> anyhow::Result<()> {
    crate::say!(
        "kith bench-mailbox: messages to someone offline, through a mailbox vs directly (daemons on 127.0.0.1)"
    );
    let mut rows: Vec<Value> = vec![];
    crate::say!();
    crate::say!(
        "| messages queued | mailbox: bob starts -> all shown (alice offline) | reference, direct: bob starts -> all shown (alice online) | envelope bytes / msg at the mailbox | mailbox DB growth / msg |"
    );
    crate::say!("|---|---|---|---|---|");
    for &n in &counts {
        let r = run_n(n).await?;
        crate::say!(
            "| {n} | {:.2} s | {:.2} s | {:.0} B | {:.0} B |",
            r.mailbox_secs,
            r.direct_secs,
            r.envelope_bytes,
            r.db_growth_bytes
        );
        rows.push(json!({
            "messages": n,
            "mailbox_show_secs": r.mailbox_secs,
            "direct_show_secs": r.direct_secs,
            "envelope_bytes_per_msg": r.envelope_bytes,
            "mailbox_db_growth_bytes_per_msg": r.db_growth_bytes,
        }));
    }
    let frame = kith_core::wire::Frame::Message(kith_core::wire::MessageFrame {
        seq: 1000,
        id: [7; 16],
        sent_at_ms: 1_795_000_000_000,
        text: format!("{:05} {TEXT}", 1),
    })
    .encode()
    .map(|b| b.len())
    .unwrap_or(0);
    crate::say!(
        "(reference sizes: the text is {} B, its direct wire frame {frame} B)",
        TEXT.len() + 6
    );
    crate::say!();
    let n_dep = counts.iter().copied().max().unwrap_or(1000).max(1000);
    let dep = deposit_rate(n_dep, 16).await?;
    let dep1 = deposit_rate(n_dep / 4, 1).await?;
    crate::say!(
        "| deposits into a mailbox daemon ({n_dep}, one anonymous QUIC connection) | per second |"
    );
    crate::say!("|---|---|");
    crate::say!("| 16 in flight | {dep:.0} |");
    crate::say!("| reference: one at a time | {dep1:.0} |");
    crate::say!();
    let n_r = 5000;
    let [oe, od, ws, wo, es, eo] = tokio::task::spawn_blocking(move || ratchet_cost(n_r)).await??;
    crate::say!(
        "| per message ({n_r}, {} B text) | seal | open |",
        TEXT.len() + 6
    );
    crate::say!("|---|---|---|");
    crate::say!("| Olm double ratchet alone (vodozemac) | {oe:.1} us | {od:.1} us |");
    crate::say!("| whole: Olm + padded pair envelope | {ws:.1} us | {wo:.1} us |");
    crate::say!(
        "| reference: the pair envelope alone (XChaCha20-Poly1305) | {es:.1} us | {eo:.1} us |"
    );
    let report = json!({
        "date": kith_node::node::unix_now(),
        "runs": rows,
        "text_bytes": TEXT.len() + 6,
        "direct_frame_bytes": frame,
        "deposits_per_sec": { "messages": n_dep, "in_flight_16": dep, "one_at_a_time": dep1 },
        "ratchet_us": { "messages": n_r, "olm_encrypt": oe, "olm_decrypt": od, "whole_seal": ws, "whole_open": wo, "envelope_seal": es, "envelope_open": eo },
    });
    if let Some(path) = out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
        crate::say!("\nsaved {}", path.display());
    }
    Ok(())
}
