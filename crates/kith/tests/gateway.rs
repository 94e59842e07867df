//! The organization gateway against real SIP peers, each started here: Kamailio as the organization's
//! registrar and proxy (digest authentication: 401 for REGISTER, 407 for INVITE) and baresip as its phones.
//! Everything runs inside a network namespace of the test's own with only loopback up (baresip binds every
//! interface), which the test makes by running itself again under `unshare --net`; it needs root or user
//! namespaces. CI runs it (as root); elsewhere, without the tools or the rights, it is skipped with the
//! reason printed, never silently, and never in CI.

mod speech;

use kith::client::Watcher;
use kith::process::{Daemon, introduce};
use kith::sip_peers::{
    configure_org, kamailio, linphone, phone, phone_answering, phone_heard, to_8k, to_48k, to_rate,
    wideband_phone, write_wav,
};
use serde_json::{Value, json};
use speech::{read_wav, windowed_ncc};
use std::path::{Path, PathBuf};
use std::time::Duration;

const KAMAILIO: &str = "127.0.0.1:5060";
const GATEWAY: &str = "127.0.0.1:5070";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Whether this process runs inside the test's namespace (see [`kith::sip_peers::rerun_in_namespace`]).
fn inside_a_namespace(test: &str) -> bool {
    kith::sip_peers::rerun_in_namespace(test, &["kamailio", "baresip"])
}

fn done() {
    kith::sip_peers::namespace_done()
}

use kith::sip_peers::block_on;

/// Alice calls the gateway's `service` saying `said.0` (48 kHz); the phone, saying `said.1`, answers and
/// hangs up when its file ends. Returns the windowed correlation of what each side heard: (the phone, from
/// its recordings in `phone_rec`; alice).
async fn speech_to_service(
    alice: &Daemon,
    wa: &Watcher,
    service: &str,
    d: &Path,
    said: (&Path, &Path),
    phone_rec: &Path,
) -> (f64, f64) {
    let heard = d.join(format!("alice-heard-{service}.wav"));
    let call = alice
        .client()
        .post(
            "/v1/calls",
            json!({ "to": "example", "service": service, "input": { "wav": said.0 }, "record_wav": heard }),
        )
        .await
        .unwrap()["call"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_event(wa, "call_answered", Some(&call), 30).await;
    let end = wait_event(wa, "call_ended", Some(&call), 30).await;
    assert_eq!(end["outcome"], "completed", "{end}");
    let (to_kith, _) = windowed_ncc(&read_wav(said.1), &read_wav(&heard));
    let (to_phone, _) = windowed_ncc(&read_wav(said.0), &phone_heard(phone_rec).unwrap());
    (to_phone, to_kith)
}

async fn wait_event(w: &Watcher, kind: &str, call: Option<&str>, secs: u64) -> Value {
    assert!(
        w.wait_for(Duration::from_secs(secs), |w| w
            .call_event(kind, call)
            .is_some())
            .await,
        "no {kind} within {secs} s"
    );
    w.call_event(kind, call).unwrap()
}

fn gateway_toml(dir: &Path) -> PathBuf {
    kith::sip_peers::gateway_toml(
        dir,
        KAMAILIO,
        GATEWAY,
        &[
            ("support", &format!("sip:support@{KAMAILIO}")),
            ("desk", &format!("sip:desk@{KAMAILIO}")),
            ("gone", &format!("sip:nobody@{KAMAILIO}")),
            ("linphone", "sip:linphone@127.0.0.1:5084"),
            ("wide", &format!("sip:wide@{KAMAILIO}")),
        ],
        &[("200", "alice")],
    )
    .unwrap()
}

/// Speech comes through both ways, through Kamailio and a baresip phone, in both directions of calling:
/// a kith user calls the organization's `support` service (the gateway rings the support phone, answers
/// the kith call when the phone answers, transcodes Opus <-> PCMU), and a phone dials 200 (the gateway's
/// dial plan: alice) and reaches the kith user. The kith leg loses 5 % of its packets on the way out of
/// each kith daemon. The gateway authenticates to Kamailio (401, then 407 for its INVITE) and asserts the
/// kith caller's address, not a name the caller chose.
#[test]
fn calls_cross_the_gateway_both_ways_with_speech_through_kamailio_and_baresip() {
    const TEST: &str = "calls_cross_the_gateway_both_ways_with_speech_through_kamailio_and_baresip";
    if !inside_a_namespace(TEST) {
        return;
    }
    block_on(both_ways());
}

async fn both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a48, b48) = (data("speech-a.wav"), data("speech-b.wav"));
    let b8 = d.join("speech-b-8k.wav");
    to_8k(&b48, &b8).unwrap();
    let kam = kamailio(d, KAMAILIO, GATEWAY).unwrap();
    let (support, support_rec) = phone(d, KAMAILIO, "support", 5080, &b8, None).unwrap();
    support
        .wait_for("[1 binding]", Duration::from_secs(30))
        .unwrap();
    let loss = vec!["--impair".to_string(), "loss=5,seed=7".into()];
    // The gateway is a device of example.org's account, whose key stays with its admin; the admin
    // publishes the account and its list of gateways (a signed zone and an HTTPS document on this
    // machine), with the support service; alice's kith looks there.
    let (mut gw, published) =
        Daemon::init_gateway(exe(), &d.join("gw"), "example", &gateway_toml(d)).unwrap();
    gw.extra_args = loss.clone();
    gw.start().await.unwrap();
    let lab = kith::sip_peers::publish_enrolled(&published).await.unwrap();
    let mut alice = Daemon::init(exe(), &d.join("alice"), "alice").unwrap();
    configure_org(&alice.home, &lab).unwrap();
    alice.extra_args = loss;
    alice.start().await.unwrap();
    introduce(&alice, &gw).await.unwrap();
    introduce(&gw, &alice).await.unwrap();

    // kith -> SIP: alice calls the support service; the phone answers and hangs up when its file ends.
    let wa = alice.watcher().await.unwrap();
    let (to_phone, to_kith) =
        speech_to_service(&alice, &wa, "support", d, (&a48, &b48), &support_rec).await;
    println!("kith -> SIP phone: {to_phone:.3}; SIP phone -> kith: {to_kith:.3}");
    assert!(to_phone >= 0.9, "the phone heard alice at {to_phone:.3}");
    assert!(to_kith >= 0.9, "alice heard the phone at {to_kith:.3}");
    let log = std::fs::read_to_string(d.join("kamailio.log")).unwrap();
    assert!(
        log.contains("407 for sip:kithgw@"),
        "no proxy challenge:\n{log}"
    );
    let alice_addr = alice.address().unwrap();
    let asserted = log
        .lines()
        .find(|l| l.contains("INVITE from sip:kithgw@"))
        .unwrap_or_default();
    assert!(
        asserted.contains(&format!("<sip:{}@", alice_addr.trim_start_matches("kith:"))),
        "the gateway did not assert alice's address: {asserted}"
    );

    // The same service by the organization's name: verified (both channels) before the call, and named
    // so in the call's events; a service the organization does not list is refused before any call.
    let placed = alice
        .client()
        .post(
            "/v1/calls",
            json!({ "to": "support@example.org", "input": { "wav": a48 }, "record_wav": d.join("alice-heard-org.wav") }),
        )
        .await
        .unwrap();
    let label = placed["org"]["label"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(label, "Verified: example.org (DNSSEC + HTTPS)", "{placed}");
    let by_name = placed["call"].as_str().unwrap().to_owned();
    let answered = wait_event(&wa, "call_answered", Some(&by_name), 30).await;
    assert_eq!(
        answered["with"],
        format!("support@example.org ({label})"),
        "{answered}"
    );
    let end = wait_event(&wa, "call_ended", Some(&by_name), 30).await;
    assert_eq!(end["outcome"], "completed", "{end}");
    let refused = alice
        .client()
        .post(
            "/v1/calls",
            json!({ "to": "sales@example.org", "input": "null" }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("example.org offers no service \"sales\"; it offers: support"),
        "{refused}"
    );

    // SIP -> kith: a phone dials 200, which the gateway's dial plan gives to alice; she answers.
    let (caller, caller_rec) = phone(d, KAMAILIO, "101", 5090, &b8, Some("200")).unwrap();
    let incoming = wait_event(&wa, "call_incoming", None, 30).await;
    let id = incoming["call"].as_str().unwrap().to_owned();
    let heard2 = d.join("alice-heard-2.wav");
    alice
        .client()
        .post(
            "/v1/calls/answer",
            json!({ "call": id, "input": { "wav": a48 }, "record_wav": heard2 }),
        )
        .await
        .unwrap();
    let end = wait_event(&wa, "call_ended", Some(&id), 30).await;
    assert_eq!(end["outcome"], "completed", "{end}");
    let (to_kith, _) = windowed_ncc(&read_wav(&b48), &read_wav(&heard2));
    let (to_phone, _) = windowed_ncc(&read_wav(&a48), &phone_heard(&caller_rec).unwrap());
    println!("SIP phone -> kith (phone called): {to_kith:.3}; kith -> SIP phone: {to_phone:.3}");
    assert!(
        to_phone >= 0.9,
        "the calling phone heard alice at {to_phone:.3}"
    );
    assert!(
        to_kith >= 0.9,
        "alice heard the calling phone at {to_kith:.3}"
    );
    drop((caller, support, kam));
    done();
}

/// Keys, hang-ups and refusals cross the gateway as a SIP phone and a kith user expect: keys a kith caller
/// presses reach the phone as RFC 4733 events; a kith caller who hangs up ends the phone's call (BYE), and
/// one who gives up while the phone rings cancels it (CANCEL); a service whose phone is not registered ends
/// as "no answer"; a kith user who refuses a phone's call refuses it on the SIP side (603).
#[test]
fn keys_hangups_and_refusals_cross_the_gateway() {
    const TEST: &str = "keys_hangups_and_refusals_cross_the_gateway";
    if !inside_a_namespace(TEST) {
        return;
    }
    block_on(keys_hangups_and_refusals());
}

async fn keys_hangups_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The phones talk for a while: ten seconds of speech and silence, so a call ends only when hung up.
    let long = d.join("long-8k.wav");
    let mut speech = read_wav(&data("speech-b.wav"));
    speech.resize(48_000 * 10, 0);
    let long48 = d.join("long.wav");
    write_wav(&long48, 48_000, &speech).unwrap();
    to_8k(&long48, &long).unwrap();
    let kam = kamailio(d, KAMAILIO, GATEWAY).unwrap();
    let (support, _) = phone(d, KAMAILIO, "support", 5080, &long, None).unwrap();
    support
        .wait_for("[1 binding]", Duration::from_secs(30))
        .unwrap();
    let (desk, _) = phone_answering(d, KAMAILIO, "desk", 5082, &long, None, "manual").unwrap();
    desk.wait_for("[1 binding]", Duration::from_secs(30))
        .unwrap();
    let (mut gw, _) =
        Daemon::init_gateway(exe(), &d.join("gw"), "example", &gateway_toml(d)).unwrap();
    gw.start().await.unwrap();
    let alice = Daemon::spawn(exe(), &d.join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    introduce(&alice, &gw).await.unwrap();
    introduce(&gw, &alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let call = |service: &str| {
        let c = alice.client();
        let body = json!({ "to": "example", "service": service, "input": "null" });
        async move {
            c.post("/v1/calls", body).await.unwrap()["call"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    // Keys, then alice hangs up: the phone hears the keys and gets a BYE.
    let id = call("support").await;
    wait_event(&wa, "call_answered", Some(&id), 30).await;
    alice
        .client()
        .post("/v1/calls/dtmf", json!({ "call": id, "keys": "1#" }))
        .await
        .unwrap();
    support
        .wait_for("received event: '1' (end=1)", Duration::from_secs(10))
        .unwrap();
    support
        .wait_for("received event: '#' (end=1)", Duration::from_secs(10))
        .unwrap();
    // The phone puts the call on hold, then takes it off (re-INVITEs: send only, then send and receive
    // again): alice is told each time, the call goes on, and the phone hears her keys again after it.
    for (command, held) in [("/hold", true), ("/resume", false)] {
        support.say(command).unwrap();
        assert!(
            wa.wait_for(Duration::from_secs(10), |w| w.any(
                "call_held",
                |e| e["call"] == id.as_str()
                    && e["held"] == held
                    && e["with"].as_str().is_some_and(|w| w.starts_with("example"))
            ))
            .await,
            "no call_held {held} after the phone's {command}"
        );
    }
    alice
        .client()
        .post("/v1/calls/dtmf", json!({ "call": id, "keys": "2" }))
        .await
        .unwrap();
    support
        .wait_for("received event: '2' (end=1)", Duration::from_secs(10))
        .unwrap();
    alice
        .client()
        .post("/v1/calls/hangup", json!({ "call": id }))
        .await
        .unwrap();
    assert_eq!(
        wait_event(&wa, "call_ended", Some(&id), 10).await["outcome"],
        "completed"
    );
    // baresip reports a BYE from the other side as the session closed by the peer ("Connection reset").
    support
        .wait_for_any(&["session closed", "terminated"], Duration::from_secs(10))
        .unwrap();

    // Alice gives up while the desk phone rings: the phone's call is cancelled.
    let id = call("desk").await;
    desk.wait_for("Incoming call", Duration::from_secs(30))
        .unwrap();
    alice
        .client()
        .post("/v1/calls/hangup", json!({ "call": id }))
        .await
        .unwrap();
    assert_eq!(
        wait_event(&wa, "call_ended", Some(&id), 10).await["outcome"],
        "cancelled"
    );
    kam.wait_for("kith-test: CANCEL sip:desk@", Duration::from_secs(10))
        .unwrap();
    // Kamailio matched the CANCEL to the INVITE (its top Via) and passed it on: the phone stops ringing.
    desk.wait_for("session closed", Duration::from_secs(10))
        .unwrap();

    // A service whose phone is not registered (Kamailio: 404): no answer.
    let id = call("gone").await;
    assert_eq!(
        wait_event(&wa, "call_ended", Some(&id), 30).await["outcome"],
        "no answer"
    );

    // A phone calls alice (200), who refuses: the phone is told 603 Decline.
    let (caller, _) = phone(d, KAMAILIO, "101", 5090, &long, Some("200")).unwrap();
    let incoming = wait_event(&wa, "call_incoming", None, 30).await;
    alice
        .client()
        .post("/v1/calls/reject", json!({ "call": incoming["call"] }))
        .await
        .unwrap();
    caller.wait_for("603", Duration::from_secs(10)).unwrap();
    drop((caller, desk, support, kam));
    done();
}

/// A wideband phone: baresip speaking G.722 first. The gateway offers G.722, the phone takes it, and speech
/// comes through both ways at 16 kHz on the SIP side (the kith side's encoder capped at wideband).
#[test]
fn a_wideband_phone_speaks_g722_through_the_gateway() {
    const TEST: &str = "a_wideband_phone_speaks_g722_through_the_gateway";
    if !inside_a_namespace(TEST) {
        return;
    }
    block_on(wideband());
    done();
}

async fn wideband() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a48, b48) = (data("speech-a.wav"), data("speech-b.wav"));
    let b16 = d.join("speech-b-16k.wav");
    to_rate(&b48, &b16, 16_000).unwrap();
    let kam = kamailio(d, KAMAILIO, GATEWAY).unwrap();
    let (wide, wide_rec) = wideband_phone(d, KAMAILIO, "wide", 5086, &b16).unwrap();
    wide.wait_for("[1 binding]", Duration::from_secs(30))
        .unwrap();
    let (mut gw, _) =
        Daemon::init_gateway(exe(), &d.join("gw"), "example", &gateway_toml(d)).unwrap();
    gw.start().await.unwrap();
    let alice = Daemon::spawn(exe(), &d.join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    introduce(&alice, &gw).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let (to_phone, to_kith) =
        speech_to_service(&alice, &wa, "wide", d, (&a48, &b48), &wide_rec).await;
    println!("kith -> G.722 phone: {to_phone:.3}; G.722 phone -> kith: {to_kith:.3}");
    let phone_log = std::fs::read_to_string(&wide.log).unwrap_or_default();
    // baresip names the codec it set for each direction once the SDP was agreed.
    assert!(
        phone_log.contains("Set audio encoder: G722 16000Hz")
            && phone_log.contains("Set audio decoder: G722 16000Hz"),
        "the phone did not speak G.722:\n{phone_log}"
    );
    assert!(to_phone >= 0.9, "the phone heard alice at {to_phone:.3}");
    assert!(to_kith >= 0.9, "alice heard the phone at {to_kith:.3}");
    drop((wide, kam));
}

/// A second SIP implementation: linphonec (liblinphone) takes a kith caller's call through the gateway,
/// speech both ways.
#[test]
fn linphonec_takes_a_kith_call_through_the_gateway() {
    const TEST: &str = "linphonec_takes_a_kith_call_through_the_gateway";
    if !inside_a_namespace(TEST) {
        return;
    }
    if !kith::sip_peers::has("linphonec") {
        if std::env::var_os("CI").is_some() {
            panic!("linphonec must be installed in CI (scripts/setup.sh installs linphone-cli)");
        }
        println!(
            "SKIPPED {TEST}: linphonec is not installed (scripts/setup.sh installs linphone-cli)"
        );
        done();
        return;
    }
    block_on(linphonec_call());
}

async fn linphonec_call() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a48, b48) = (data("speech-a.wav"), data("speech-b.wav"));
    let b8 = d.join("speech-b-8k.wav");
    to_8k(&b48, &b8).unwrap();
    let kam = kamailio(d, KAMAILIO, GATEWAY).unwrap();
    let heard_by_linphone = d.join("linphone-heard.wav");
    let lp = linphone(d, 5084, &b8, &heard_by_linphone).unwrap();
    lp.wait_for("Creating listening point", Duration::from_secs(30))
        .unwrap();
    let (mut gw, _) =
        Daemon::init_gateway(exe(), &d.join("gw"), "example", &gateway_toml(d)).unwrap();
    gw.start().await.unwrap();
    let alice = Daemon::spawn(exe(), &d.join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    introduce(&alice, &gw).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let heard = d.join("alice-heard.wav");
    // Alice waits a second before she speaks: linphonec records only from its `record` command, sent
    // when it reports the call connected.
    let mut late = vec![0i16; 48_000];
    late.extend(read_wav(&a48));
    let a48 = d.join("speech-a-late.wav");
    write_wav(&a48, 48_000, &late).unwrap();
    let id = alice
        .client()
        .post(
            "/v1/calls",
            json!({ "to": "example", "service": "linphone", "input": { "wav": a48 }, "record_wav": heard, "duration_secs": 6.0 }),
        )
        .await
        .unwrap()["call"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_event(&wa, "call_answered", Some(&id), 30).await;
    let end = wait_event(&wa, "call_ended", Some(&id), 30).await;
    assert_eq!(end["outcome"], "completed", "{end}");
    // linphonec quits once the call has ended, and its recording is complete then.
    let mut lp = lp;
    lp.wait_exit(Duration::from_secs(10)).unwrap();
    let (rate, samples) = read_wav_lenient(&heard_by_linphone);
    let linphone_heard = match rate {
        8000 => to_48k(&samples),
        48_000 => samples,
        r => panic!("linphonec recorded at {r} Hz"),
    };
    let (to_linphone, _) = windowed_ncc(&read_wav(&a48), &linphone_heard);
    let (to_kith, _) = windowed_ncc(&read_wav(&b48), &read_wav(&heard));
    println!("kith -> linphonec: {to_linphone:.3}; linphonec -> kith: {to_kith:.3}");
    assert!(
        to_linphone >= 0.9,
        "linphonec heard alice at {to_linphone:.3}"
    );
    assert!(to_kith >= 0.9, "alice heard linphonec at {to_kith:.3}");
    drop((lp, kam));
    done();
}

/// A 16-bit mono WAV file whose header may overstate its data (linphonec's recordings claim 44 bytes more
/// than they hold): the rate from the format chunk, the samples from the data chunk to the end of the file.
fn read_wav_lenient(path: &Path) -> (u32, Vec<i16>) {
    let b = std::fs::read(path).unwrap();
    assert!(
        b.len() > 44 && &b[..4] == b"RIFF" && &b[8..12] == b"WAVE",
        "{} is not a WAV file",
        path.display()
    );
    let (mut at, mut rate, mut data) = (12usize, 0u32, None);
    while at + 8 <= b.len() {
        let size = u32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        match &b[at..at + 4] {
            b"fmt " => rate = u32::from_le_bytes(b[at + 12..at + 16].try_into().unwrap()),
            b"data" => {
                data = Some(&b[at + 8..]);
                break;
            }
            _ => {}
        }
        at += 8 + size;
    }
    let data = data.expect("a data chunk");
    (
        rate,
        data.chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// The organization's key through independent DNS implementations: Knot DNS signs example.org (its own
/// keys, its own signer) and Unbound serves it as a validating resolver; kith validates the answers itself
/// from the zone's key-signing key as its trust anchor. Verified with the HTTPS document beside it; with
/// another key as the anchor, the same answers are refused as a possible attack.
#[test]
fn the_organization_is_verified_through_knot_and_unbound() {
    const TEST: &str = "the_organization_is_verified_through_knot_and_unbound";
    if !inside_a_namespace(TEST) {
        return;
    }
    for tool in ["knotd", "kdig", "unbound"] {
        if !kith::sip_peers::has(tool) {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{tool} must be installed in CI (scripts/setup.sh installs knot, knot-dnsutils, unbound)"
                );
            }
            println!("SKIPPED {TEST}: {tool} is not installed (scripts/setup.sh installs it)");
            done();
            return;
        }
    }
    block_on(knot_and_unbound());
}

async fn knot_and_unbound() {
    use kith::sip_peers::Peer;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let org = kith_core::AccountSecret::generate(&mut rand::rng()).public();
    let statement = kith_core::org::OrgStatement::new(
        org,
        vec!["support".into()],
        kith_node::node::unix_now() + 86_400,
    );
    // Knot: the zone, signed by Knot with keys it makes (automatic DNSSEC signing).
    let knot = d.join("knot");
    std::fs::create_dir_all(knot.join("db")).unwrap();
    std::fs::write(
        knot.join("example.org.zone"),
        format!(
            "$ORIGIN example.org.\n$TTL 300\n@ SOA ns1 hostmaster 1 3600 600 86400 300\n@ NS ns1\n\
             ns1 A 127.0.0.1\nwww A 127.0.0.1\n_kith TXT \"{}\"\n",
            kith_core::org::format_txt(&statement)
        ),
    )
    .unwrap();
    std::fs::write(
        knot.join("knot.conf"),
        format!(
            "server:
    rundir: \"{k}\"
    listen: 127.0.0.1@5300
database:
    storage: \"{k}/db\"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: \"{k}\"
    file: \"%s.zone\"
zone:
  - domain: example.org
    dnssec-signing: on
",
            k = knot.display()
        ),
    )
    .unwrap();
    let knotd = Peer::start(
        "knotd",
        std::process::Command::new("knotd")
            .arg("-c")
            .arg(knot.join("knot.conf")),
        d.join("knotd.log"),
    )
    .unwrap();
    knotd
        .wait_for("[example.org.] loaded, serial", Duration::from_secs(30))
        .unwrap();
    // The zone's keys, as kith's trust anchor (and Unbound's). Knot signs with two: a key-signing key
    // over the key set and a zone-signing key over the rest. hickory 0.26 trusts a key under a configured
    // anchor only if the anchor names it (seen here: the key-signing key alone fails validation), so a
    // private zone's anchor lists its keys; under the root's anchor the chain of DS records applies.
    let out = std::process::Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            "5300",
            "example.org",
            "DNSKEY",
            "+noall",
            "+answer",
        ])
        .output()
        .unwrap();
    let keys: String = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("DNSKEY"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        keys.contains(" 257 ") || keys.contains("\t257 "),
        "no key-signing key from knot: {out:?}"
    );
    let anchor = d.join("anchor.txt");
    std::fs::write(&anchor, &keys).unwrap();
    // Unbound: a validating resolver for example.org, from knot.
    let ub = d.join("unbound");
    std::fs::create_dir_all(&ub).unwrap();
    std::fs::write(
        ub.join("unbound.conf"),
        format!(
            "server:
    interface: 127.0.0.1
    port: 5301
    do-daemonize: no
    username: \"\"
    chroot: \"\"
    directory: \"{u}\"
    pidfile: \"{u}/unbound.pid\"
    use-syslog: no
    verbosity: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    trust-anchor-file: \"{a}\"
    module-config: \"validator iterator\"
remote-control:
    control-enable: no
stub-zone:
    name: \"example.org\"
    stub-addr: 127.0.0.1@5300
",
            u = ub.display(),
            a = anchor.display()
        ),
    )
    .unwrap();
    let unbound = Peer::start(
        "unbound",
        std::process::Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(ub.join("unbound.conf")),
        d.join("unbound.log"),
    )
    .unwrap();
    unbound
        .wait_for("start of service", Duration::from_secs(30))
        .unwrap();
    // HTTPS: the document, with a certificate from an authority made here.
    let authority = kith_org::lab::Authority::new();
    let web = kith_org::lab::Web::start(
        authority.leaf(&["example.org"]),
        "/.well-known/kith.json",
        Some(kith_core::org::format_document(&statement, "example.org")),
    )
    .await
    .unwrap();
    let ca = d.join("ca.pem");
    std::fs::write(&ca, authority.pem()).unwrap();
    let profile = |name: &str, anchor: &Path| {
        let p = Daemon::init(exe(), &d.join(name), name).unwrap();
        let dns = "127.0.0.1:5301".parse().unwrap();
        kith::sip_peers::org_config(&p.home, dns, anchor, &ca, "example.org", web.addr()).unwrap();
        p
    };
    let mut alice = profile("alice", &anchor);
    alice.start().await.unwrap();
    let v = alice.client().get("/v1/org/example.org").await.unwrap();
    assert_eq!(v["label"], "Verified: example.org (DNSSEC + HTTPS)", "{v}");
    assert_eq!(
        v["address"],
        kith_core::Address::new(org).to_string(),
        "{v}"
    );
    // Other keys as the anchor (each key's material changed in one character): knot's signatures no
    // longer chain to them, and kith refuses, whatever the resolver says.
    let wrong = d.join("wrong-anchor.txt");
    let forged: String = keys
        .lines()
        .map(|l| {
            let at = l.find(" 3 13 ").or_else(|| l.find("\t3 13 ")).unwrap() + " 3 13 ".len();
            let flipped = if l[at..].starts_with('A') { "B" } else { "A" };
            format!("{}{flipped}{}\n", &l[..at], &l[at + 1..])
        })
        .collect();
    std::fs::write(&wrong, forged).unwrap();
    let mut bob = profile("bob", &wrong);
    bob.start().await.unwrap();
    let refused = bob
        .client()
        .get("/v1/org/example.org")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("the DNSSEC check failed") && refused.contains("possible attack"),
        "{refused}"
    );
    drop((unbound, knotd));
    done();
}
