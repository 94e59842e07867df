//! `kith demo`, the organization part: example.org publishes its key (a DNSSEC-signed zone and an HTTPS
//! document, served on this machine), runs a kith gateway to its PBX (Kamailio) and support phone (baresip);
//! a customer calls `support@example.org`, which kith verifies before the call, and the two talk; then an
//! impostor's key is refused.
//!
//! Kamailio and baresip run on loopback inside a network namespace of their own (baresip binds every
//! interface), so this part runs as `kith demo-org` inside `unshare --net`; without the peers or the rights
//! it is skipped with the reason.

use crate::process::{Daemon, kith_exe};
use crate::sip_peers::{configure_org, has, kamailio, namespace, phone, phone_heard, to_8k};
use crate::speech::{read_wav, windowed_ncc};
use anyhow::Context;
use std::path::Path;
use std::time::{Duration, Instant};

const KAMAILIO: &str = "127.0.0.1:5060";
const GATEWAY: &str = "127.0.0.1:5070";

/// The speech both sides say (two Harvard sentences, 48 kHz; see scripts/make-test-speech.sh).
const SPEECH_CUSTOMER: &[u8] = include_bytes!("../tests/data/speech-a.wav");
const SPEECH_SUPPORT: &[u8] = include_bytes!("../tests/data/speech-b.wav");

/// Runs the organization part in a network namespace of its own, or says why it cannot.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let missing: Vec<&str> = ["kamailio", "baresip"]
        .into_iter()
        .filter(|t| !has(t))
        .collect();
    if !missing.is_empty() {
        crate::say!(
            "  organization part skipped: {} not installed (scripts/demo.sh installs them)",
            missing.join(" and ")
        );
        return Ok(());
    }
    let mut cmd = match namespace() {
        Ok(c) => c,
        Err(reason) => {
            crate::say!("  organization part skipped: {reason}");
            return Ok(());
        }
    };
    std::fs::create_dir_all(dir)?;
    let status = cmd
        .arg(kith_exe())
        .args(["demo-org", "--dir"])
        .arg(dir)
        .status()
        .context("running the organization part")?;
    anyhow::ensure!(status.success(), "the organization part failed");
    Ok(())
}

/// The organization part itself (inside the namespace).
pub async fn inside(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let exe = kith_exe();
    std::fs::create_dir_all(dir)?;
    let customer_wav = dir.join("speech-customer.wav");
    let support_wav = dir.join("speech-support.wav");
    std::fs::write(&customer_wav, SPEECH_CUSTOMER)?;
    std::fs::write(&support_wav, SPEECH_SUPPORT)?;
    let support_8k = dir.join("speech-support-8k.wav");
    to_8k(&support_wav, &support_8k)?;

    let kam = kamailio(dir, KAMAILIO, GATEWAY)?;
    let (support, support_rec) = phone(dir, KAMAILIO, "support", 5080, &support_8k, None)?;
    support.wait_for("[1 binding]", Duration::from_secs(30))?;
    crate::say!(
        "  example.org's PBX: Kamailio on {KAMAILIO} (digest authentication), its support phone: baresip, registered"
    );
    let support_uri = format!("sip:support@{KAMAILIO}");
    let gw_config =
        crate::sip_peers::gateway_toml(dir, KAMAILIO, GATEWAY, &[("support", &support_uri)], &[])?;
    // example.org's account key stays with its admin (no node of it runs); the gateway is a device of
    // that account, enrolled with a grant.
    let (mut gw, published) = Daemon::init_gateway(&exe, &dir.join("gateway"), "gw1", &gw_config)?;
    gw.start().await?;
    crate::say!(
        "  example.org's kith gateway gw1: a device of example.org's account (the account key stays with the \
         admin: `kith org enroll` signed gw1's certificate and the list of gateways), registered with the PBX, \
         service support -> sip:support@{KAMAILIO}"
    );
    let txt = published["txt"].as_str().context("txt")?.to_owned();
    let lab = crate::sip_peers::publish_enrolled(&published).await?;
    crate::say!(
        "  example.org publishes its account and its list of gateways: _kith.example.org TXT \"{txt}\" in a \
         DNSSEC-signed zone ({}), and https://example.org/.well-known/kith.json with the signed list ({}, \
         certificate from a test authority)",
        lab.zone.addr(),
        lab.web.addr()
    );
    let mut customer = Daemon::init(&exe, &dir.join("customer"), "customer")?;
    configure_org(&customer.home, &lab)?;
    customer.start().await?;
    // The customer's kith reaches the gateway at the address the signed list names (no DHT, no card).

    let wc = customer.watcher().await?;
    let heard = dir.join("customer-heard.wav");
    let placed = customer
        .client()
        .post(
            "/v1/calls",
            serde_json::json!({ "to": "support@example.org", "input": { "wav": customer_wav }, "record_wav": heard }),
        )
        .await?;
    let org_view = &placed["org"];
    crate::say!(
        "  customer: kith call support@example.org -> {} (fingerprint {}), checked: DNSSEC from the zone's \
         key, HTTPS from the test authority, both naming the same key, pinned ({})",
        org_view["label"].as_str().unwrap_or("?"),
        org_view["fingerprint"].as_str().unwrap_or("?"),
        org_view["pin"].as_str().unwrap_or("?")
    );
    let id = placed["call"].as_str().context("call id")?.to_owned();
    let ended = |w: &crate::client::Watcher| w.call_event("call_ended", Some(&id));
    anyhow::ensure!(
        wc.wait_for(Duration::from_secs(30), |w| ended(w).is_some())
            .await,
        "the call to support@example.org did not end within 30 s"
    );
    let end = ended(&wc).context("call_ended")?;
    let answered = wc
        .call_event("call_answered", Some(&id))
        .context("the call was never answered")?;
    let (to_customer, _) = windowed_ncc(&read_wav(&support_wav)?, &read_wav(&heard)?);
    let (to_phone, _) = windowed_ncc(&read_wav(&customer_wav)?, &phone_heard(&support_rec)?);
    crate::say!(
        "  the call: answered by {}; {} after {:.1} s; speech heard (windowed correlation, 1 = identical): \
         the support phone heard the customer at {to_phone:.2}, the customer heard the phone at {to_customer:.2} \
         (Opus on the kith side, PCMU on the SIP side)",
        answered["with"].as_str().unwrap_or("?"),
        end["outcome"].as_str().unwrap_or("?"),
        end["talked_secs"].as_f64().unwrap_or(0.0)
    );
    anyhow::ensure!(
        end["outcome"] == "completed" && to_phone >= 0.8 && to_customer >= 0.8,
        "the call to support@example.org did not come through: {end}"
    );

    // An impostor takes over the web server and publishes its own key there: DNS and HTTPS disagree.
    let impostor = kith_core::AccountSecret::generate(&mut rand::rng()).public();
    let forged = kith_core::org::OrgStatement::new(
        impostor,
        vec!["support".into()],
        kith_node::node::unix_now() + 86_400,
    );
    lab.web.set(Some(kith_core::org::format_document(
        &forged,
        "example.org",
    )));
    let refused = customer
        .client()
        .post(
            "/v1/calls",
            serde_json::json!({ "to": "support@example.org", "input": "null" }),
        )
        .await;
    match refused {
        Ok(v) => anyhow::bail!("a call to an impostor's key was placed: {v}"),
        Err(e) => crate::say!(
            "  an impostor publishes another key on the web server: refused before any call: {e}"
        ),
    }
    customer.stop().await;
    gw.stop().await;
    drop((support, kam));
    crate::say!(
        "  organization part: OK in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
