//! `kith bench-gateway --setup-calls N`: how long a call through the gateway takes to ring, against real
//! SIP peers (Kamailio as the organization's registrar and proxy, baresip as its phones), with real kith
//! daemons and the gateway as a user runs them.
//!
//! * kith -> SIP: from the kith caller's `POST /v1/calls` until the support phone says "Incoming call"
//!   (it rings), by the contact's name (`to: NAME, service: support`) and by `support@example.org` (the
//!   organization verified first: DNSSEC and HTTPS on this machine, as in `kith demo`). The caller then
//!   gives up (CANCEL).
//! * SIP -> kith: from the phone's "connecting to" (its INVITE leaves) until the kith user's daemon
//!   reports `call_incoming` (the kith user's phone rings), and until the phone hears "Ringing" (the
//!   gateway's 180). The kith user declines (603).
//!
//! Times are when this process read the lines and events (the phones' output through a pipe, the daemon's
//! events over its control API), on one clock; those reads add well under a millisecond each.
//! Kamailio and baresip run on loopback inside a network namespace of their own (baresip binds every
//! interface), so the measurement runs as the hidden `kith bench-gateway-setup` inside `unshare --net`.

use crate::process::{Daemon, introduce, kith_exe};
use crate::sip_peers::{configure_org, has, kamailio, namespace, phone, phone_answering, to_8k};
use anyhow::Context;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const KAMAILIO: &str = "127.0.0.1:5060";
const GATEWAY: &str = "127.0.0.1:5070";
const SPEECH: &[u8] = include_bytes!("../tests/data/speech-b.wav");

/// Runs the measurement in a network namespace of its own, or says why it cannot.
pub fn run(calls: usize, out: &Path) -> anyhow::Result<()> {
    if let Some(tool) = ["kamailio", "baresip"].into_iter().find(|t| !has(t)) {
        crate::say!(
            "  call set-up times skipped: {tool} is not installed (scripts/setup.sh with KITH_WITH_SIP=1 installs it)"
        );
        return Ok(());
    }
    let mut cmd = match namespace() {
        Ok(c) => c,
        Err(reason) => {
            crate::say!("  call set-up times skipped: {reason}");
            return Ok(());
        }
    };
    let status = cmd
        .arg(kith_exe())
        .args([
            "bench-gateway-setup",
            "--calls",
            &calls.to_string(),
            "--out",
        ])
        .arg(out)
        .status()
        .context("running the set-up measurement")?;
    anyhow::ensure!(status.success(), "the set-up measurement failed");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and largest, in milliseconds.
fn summary(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (
        crate::demo::percentile(&s, 0.5),
        crate::demo::percentile(&s, 1.0),
    )
}

/// The measurement itself (inside the namespace).
pub async fn inside(calls: usize, out: &Path) -> anyhow::Result<()> {
    let exe = kith_exe();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let wav = d.join("speech.wav");
    std::fs::write(&wav, SPEECH)?;
    let wav8 = d.join("speech-8k.wav");
    to_8k(&wav, &wav8)?;
    let kam = kamailio(d, KAMAILIO, GATEWAY)?;
    let (support, _) = phone_answering(d, KAMAILIO, "support", 5080, &wav8, None, "manual")?;
    support.wait_for("[1 binding]", Duration::from_secs(30))?;
    let config = crate::sip_peers::gateway_toml(
        d,
        KAMAILIO,
        GATEWAY,
        &[("support", &format!("sip:support@{KAMAILIO}"))],
        &[("200", "alice")],
    )?;
    let (mut gw, published) = Daemon::init_gateway(&exe, &d.join("gw"), "example", &config)?;
    gw.start().await?;
    let lab = crate::sip_peers::publish_enrolled(&published).await?;
    let mut alice = Daemon::init(&exe, &d.join("alice"), "alice")?;
    configure_org(&alice.home, &lab)?;
    alice.start().await?;
    introduce(&alice, &gw).await?;
    introduce(&gw, &alice).await?;
    let wa = alice.watcher().await?;

    // kith -> SIP, by the contact's name and by the organization's verified name in turn.
    let (mut by_name, mut verified) = (vec![], vec![]);
    for i in 0..calls * 2 {
        let body = if i % 2 == 0 {
            json!({ "to": "example", "service": "support", "input": "null" })
        } else {
            json!({ "to": "support@example.org", "input": "null" })
        };
        let t0 = Instant::now();
        let placed = alice.client().post("/v1/calls", body).await?;
        let rang = support.wait_for("Incoming call", Duration::from_secs(30))?;
        let id = placed["call"].as_str().context("call id")?.to_owned();
        if i % 2 == 0 {
            &mut by_name
        } else {
            &mut verified
        }
        .push(ms(rang - t0));
        alice
            .client()
            .post("/v1/calls/hangup", json!({ "call": id }))
            .await?;
        anyhow::ensure!(
            wa.wait_for(Duration::from_secs(15), |w| w
                .call_event("call_ended", Some(&id))
                .is_some())
                .await,
            "call {i} to the support phone did not end"
        );
        // The gateway cancels the phone's ringing (the phone itself says nothing of a cancelled call).
        kam.wait_for("kith-test: CANCEL sip:support@", Duration::from_secs(15))?;
    }

    // SIP -> kith: a phone dials 200 (alice, in the gateway's dial plan) each time.
    let (mut incoming, mut ringback) = (vec![], vec![]);
    for i in 0..calls {
        let seen = wa.call_events().len();
        let (caller, _) = phone(d, KAMAILIO, "101", 5090, &wav8, Some("200"))?;
        let dialled = caller.wait_for("connecting to", Duration::from_secs(30))?;
        let new_incoming = |w: &crate::client::Watcher| {
            w.call_events()
                .into_iter()
                .skip(seen)
                .find(|e| e["type"] == "call_incoming")
        };
        anyhow::ensure!(
            wa.wait_for(Duration::from_secs(30), |w| new_incoming(w).is_some())
                .await,
            "call {i} from the phone never reached alice"
        );
        let rang_kith = Instant::now();
        let call = new_incoming(&wa).context("call_incoming")?;
        let heard = caller.wait_for("Ringing", Duration::from_secs(30))?;
        incoming.push(ms(rang_kith - dialled));
        ringback.push(ms(heard - dialled));
        alice
            .client()
            .post("/v1/calls/reject", json!({ "call": call["call"] }))
            .await?;
        caller.wait_for("603", Duration::from_secs(15))?;
    }
    alice.stop().await;
    gw.stop().await;

    let rows = [
        ("kith -> SIP phone rings, by contact name", &by_name),
        (
            "kith -> SIP phone rings, support@example.org verified first",
            &verified,
        ),
        ("SIP phone dials -> kith user's call_incoming", &incoming),
        ("SIP phone dials -> phone hears Ringing (180)", &ringback),
    ];
    crate::say!("  call set-up through the gateway (median / largest of {calls} each, ms):");
    let mut saved = serde_json::Map::new();
    for (what, v) in rows {
        let (median, max) = summary(v);
        crate::say!("    {what}: {median:.0} / {max:.0}");
        saved.insert(
            what.into(),
            json!({ "median_ms": median, "max_ms": max, "all_ms": v }),
        );
    }
    std::fs::write(
        out,
        serde_json::to_string_pretty(&json!({ "calls": calls, "setup": saved }))?,
    )?;
    crate::say!("  saved to {}", out.display());
    Ok(())
}
