//! The organization gateway against real SIP peers, each started here: Kamailio as the organization's
//! registrar and proxy (digest authentication: 401 for REGISTER, 407 for INVITE) and baresip as its phones.
//! Everything runs inside a network namespace of the test's own with only loopback up (baresip binds every
//! interface), which the test makes by running itself again under `unshare --net`; it needs root or user
//! namespaces. CI runs it (as root); elsewhere, without the tools or the rights, it is skipped with the
//! reason printed, never silently, and never in CI.

mod speech;

use kith::client::Watcher;
use kith::process::{Daemon, introduce};
use serde_json::{Value, json};
use speech::{read_wav, windowed_ncc};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const INSIDE: &str = "KITH_TEST_IN_NETNS";
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

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs inside the test's namespace. If not, runs `test` again inside a new one
/// (asserting that it passed there) and returns false; without the tools or the rights it prints why it
/// skips (and fails in CI).
fn inside_a_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let skip = |reason: String| {
        if std::env::var_os("CI").is_some() {
            panic!("the gateway test must run in CI, but: {reason}");
        }
        println!("SKIPPED {test}: {reason}");
    };
    for tool in ["kamailio", "baresip", "unshare", "ip"] {
        if !has(tool) {
            skip(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
            return false;
        }
    }
    let root = nix_uid() == 0;
    let unshare = || {
        let mut cmd = Command::new("unshare");
        cmd.arg("--net");
        if !root {
            cmd.arg("--map-root-user");
        }
        cmd
    };
    let probe = unshare().arg("true").output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        skip(format!(
            "cannot make a network namespace (not root, and user namespaces are off): {}",
            probe
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_else(|e| e.to_string())
        ));
        return false;
    }
    // The run inside reports that it ran the test to its end (a filter that matched nothing also exits 0).
    let marker = tempfile::NamedTempFile::new().unwrap();
    let me = std::env::current_exe().unwrap();
    let status = unshare()
        .args(["--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(me)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, marker.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    assert_eq!(
        std::fs::read_to_string(marker.path()).unwrap(),
        "done",
        "{test} did not run to its end inside its network namespace"
    );
    false
}

/// Inside the namespace: says the test ran to its end (see [`inside_a_namespace`]).
fn done() {
    if let Some(marker) = std::env::var_os(INSIDE) {
        std::fs::write(marker, "done").unwrap();
    }
}

fn nix_uid() -> u32 {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(u32::MAX)
}

/// A third-party process whose output lines are kept in a log file and handed to the test as they come.
struct Peer {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Peer {
    fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> Peer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap();
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    let _ = tx.send(line);
                }
            });
        }
        Peer {
            name,
            child,
            lines,
            log,
        }
    }

    /// Waits for a line containing `text`.
    fn wait_for(&self, text: &str, within: Duration) {
        self.wait_for_any(&[text], within)
    }

    /// Waits for a line containing one of `texts`.
    fn wait_for_any(&self, texts: &[&str], within: Duration) {
        let text = texts.join(" or ");
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if texts.iter().any(|t| l.contains(t)) => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} did not say {text:?} within {within:?}; log: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kamailio(dir: &Path) -> Peer {
    let cfg = std::fs::read_to_string(data("gateway/kamailio.cfg"))
        .unwrap()
        .replace("@SIP@", KAMAILIO)
        .replace("@GATEWAY@", GATEWAY);
    let run = dir.join("kamailio");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("kamailio.cfg"), cfg).unwrap();
    Peer::start(
        "kamailio",
        Command::new("kamailio")
            .arg("-f")
            .arg(run.join("kamailio.cfg"))
            .args(["-DD", "-E", "-Y"])
            .arg(&run)
            .arg("-w")
            .arg(&run),
        dir.join("kamailio.log"),
    )
}

/// A baresip phone registered as `user` (password `pw-<user>`), answering at once, saying `wav` (8 kHz),
/// recording what it hears into `dir/<user>/rec`. `dial`: a number it calls once started.
fn phone(dir: &Path, user: &str, port: u16, wav: &Path, dial: Option<&str>) -> (Peer, PathBuf) {
    phone_answering(dir, user, port, wav, dial, "auto")
}

/// [`phone`] with baresip's answer mode: `auto`, or `manual` (it rings until the caller gives up).
fn phone_answering(
    dir: &Path,
    user: &str,
    port: u16,
    wav: &Path,
    dial: Option<&str>,
    answer: &str,
) -> (Peer, PathBuf) {
    let home = dir.join(user);
    let rec = home.join("rec");
    std::fs::create_dir_all(&rec).unwrap();
    let modules = [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
    ]
    .into_iter()
    .find(|d| Path::new(d).join("g711.so").exists())
    .expect("baresip's modules (g711.so)");
    std::fs::write(
        home.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             dns_server 127.0.0.1:53\naudio_player alsa,null\naudio_alert alsa,null\n\
             audio_source aufile,{}\nausrc_srate 8000\nauplay_srate 8000\nausrc_channels 1\n\
             auplay_channels 1\nrtp_ports {}-{}\nmodule_path {modules}\nmodule g711.so\n\
             module aufile.so\nmodule alsa.so\nmodule sndfile.so\nmodule_tmp uuid.so\n\
             module_tmp account.so\nmodule_app menu.so\nsnd_path {}\n",
            wav.display(),
            port + 100,
            port + 109,
            rec.display()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join("accounts"),
        format!("<sip:{user}@{KAMAILIO}>;auth_pass=pw-{user};answermode={answer};regint=600\n"),
    )
    .unwrap();
    std::fs::write(home.join("contacts"), "").unwrap();
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(&home);
    if let Some(n) = dial {
        cmd.args(["-e", &format!("/dial sip:{n}@{KAMAILIO}")]);
    }
    let p = Peer::start("baresip", &mut cmd, dir.join(format!("{user}.log")));
    (p, rec)
}

/// A 48 kHz mono WAV resampled to 8 kHz (for the phones), through the gateway's own filter.
fn to_8k(from: &Path, to: &Path) {
    let samples = read_wav(from);
    let mut down = kith_gateway::resample::Down::default();
    let mut out = vec![];
    let whole = samples.len() / 6 * 6;
    down.process(&samples[..whole], &mut out);
    write_wav(to, 8000, &out);
}

fn to_48k(samples: &[i16]) -> Vec<i16> {
    let mut up = kith_gateway::resample::Up::default();
    let mut out = vec![];
    up.process(samples, &mut out);
    out
}

fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
    let mut w = hound::WavWriter::create(
        path,
        hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

/// What the phone heard in its last call (baresip's sndfile dump of the decoded audio), at 48 kHz.
fn phone_heard(rec: &Path) -> Vec<i16> {
    let dump = std::fs::read_dir(rec)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .max()
        .expect("the phone's recording");
    to_48k(&read_wav(&dump))
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

/// Points the profile's `[org]` settings at the lab (its zone key as the trust anchor, its authority as
/// the only root).
fn configure_org(home: &Path, lab: &kith_org::lab::Lab) {
    let anchor = home.join("org-anchor.txt");
    std::fs::write(&anchor, lab.zone.anchor()).unwrap();
    let ca = home.join("org-ca.pem");
    std::fs::write(&ca, lab.authority.pem()).unwrap();
    let config = home.join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!(
        "\n[org]\ndns_servers = [\"{}\"]\ntrust_anchor_file = \"{}\"\nhttps_roots = [\"{}\"]\n\n[org.https_addrs]\n\"{}\" = \"{}\"\n",
        lab.zone.addr(),
        anchor.display(),
        ca.display(),
        lab.domain,
        lab.web.addr()
    );
    std::fs::write(&config, text).unwrap();
}

fn gateway_toml(dir: &Path) -> PathBuf {
    let p = dir.join("gateway.toml");
    std::fs::write(
        &p,
        format!(
            "[sip]\nlisten = \"{GATEWAY}\"\nregistrar = \"sip:{KAMAILIO}\"\nuser = \"kithgw\"\n\
             password = \"pw-kithgw\"\npbx = [\"127.0.0.1\"]\n\n[services]\n\
             support = [\"sip:support@{KAMAILIO}\"]\ndesk = [\"sip:desk@{KAMAILIO}\"]\n             gone = [\"sip:nobody@{KAMAILIO}\"]\n\n[dialplan]\n\"200\" = \"alice\"\n"
        ),
    )
    .unwrap();
    p
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(both_ways());
}

async fn both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a48, b48) = (data("speech-a.wav"), data("speech-b.wav"));
    let b8 = d.join("speech-b-8k.wav");
    to_8k(&b48, &b8);
    let kam = kamailio(d);
    let (support, support_rec) = phone(d, "support", 5080, &b8, None);
    support.wait_for("[1 binding]", Duration::from_secs(30));
    let loss = vec!["--impair".to_string(), "loss=5,seed=7".into()];
    let mut gw = Daemon::init(exe(), &d.join("gw"), "example").unwrap();
    gw.command = vec![
        "gateway".into(),
        "--config".into(),
        gateway_toml(d).to_string_lossy().into_owned(),
    ];
    gw.extra_args = loss.clone();
    gw.start().await.unwrap();
    // The organization publishes the gateway profile's account for example.org (a signed zone and an
    // HTTPS document on this machine), with the support service; alice's kith looks there.
    let org = kith_node::Profile::new(&gw.home).public().unwrap().account;
    let statement = kith_core::org::OrgStatement {
        account: org,
        services: vec!["support".into()],
        expires: kith_node::node::unix_now() + 86_400,
        alone: false,
        rotation: None,
    };
    let lab = kith_org::lab::Lab::start(
        "example.org",
        &[kith_core::org::format_txt(&statement)],
        Some(kith_core::org::format_document(&statement, "example.org")),
    )
    .await
    .unwrap();
    let mut alice = Daemon::init(exe(), &d.join("alice"), "alice").unwrap();
    configure_org(&alice.home, &lab);
    alice.extra_args = loss;
    alice.start().await.unwrap();
    introduce(&alice, &gw).await.unwrap();
    introduce(&gw, &alice).await.unwrap();

    // kith -> SIP: alice calls the support service; the phone answers and hangs up when its file ends.
    let wa = alice.watcher().await.unwrap();
    let heard = d.join("alice-heard.wav");
    let call = alice
        .client()
        .post(
            "/v1/calls",
            json!({ "to": "example", "service": "support", "input": { "wav": a48 }, "record_wav": heard }),
        )
        .await
        .unwrap()["call"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_event(&wa, "call_answered", Some(&call), 30).await;
    let end = wait_event(&wa, "call_ended", Some(&call), 30).await;
    assert_eq!(end["outcome"], "completed", "{end}");
    let (to_kith, _) = windowed_ncc(&read_wav(&b48), &read_wav(&heard));
    let (to_phone, _) = windowed_ncc(&read_wav(&a48), &phone_heard(&support_rec));
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
    let (caller, caller_rec) = phone(d, "101", 5090, &b8, Some("200"));
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
    let (to_phone, _) = windowed_ncc(&read_wav(&a48), &phone_heard(&caller_rec));
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(keys_hangups_and_refusals());
}

async fn keys_hangups_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The phones talk for a while: ten seconds of speech and silence, so a call ends only when hung up.
    let long = d.join("long-8k.wav");
    let mut speech = read_wav(&data("speech-b.wav"));
    speech.resize(48_000 * 10, 0);
    let long48 = d.join("long.wav");
    write_wav(&long48, 48_000, &speech);
    to_8k(&long48, &long);
    let kam = kamailio(d);
    let (support, _) = phone(d, "support", 5080, &long, None);
    support.wait_for("[1 binding]", Duration::from_secs(30));
    let (desk, _) = phone_answering(d, "desk", 5082, &long, None, "manual");
    desk.wait_for("[1 binding]", Duration::from_secs(30));
    let mut gw = Daemon::init(exe(), &d.join("gw"), "example").unwrap();
    gw.command = vec![
        "gateway".into(),
        "--config".into(),
        gateway_toml(d).to_string_lossy().into_owned(),
    ];
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
    support.wait_for("received event: '1' (end=1)", Duration::from_secs(10));
    support.wait_for("received event: '#' (end=1)", Duration::from_secs(10));
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
    support.wait_for_any(&["session closed", "terminated"], Duration::from_secs(10));

    // Alice gives up while the desk phone rings: the phone's call is cancelled.
    let id = call("desk").await;
    desk.wait_for("Incoming call", Duration::from_secs(30));
    alice
        .client()
        .post("/v1/calls/hangup", json!({ "call": id }))
        .await
        .unwrap();
    assert_eq!(
        wait_event(&wa, "call_ended", Some(&id), 10).await["outcome"],
        "cancelled"
    );
    kam.wait_for("kith-test: CANCEL sip:desk@", Duration::from_secs(10));

    // A service whose phone is not registered (Kamailio: 404): no answer.
    let id = call("gone").await;
    assert_eq!(
        wait_event(&wa, "call_ended", Some(&id), 30).await["outcome"],
        "no answer"
    );

    // A phone calls alice (200), who refuses: the phone is told 603 Decline.
    let (caller, _) = phone(d, "101", 5090, &long, Some("200"));
    let incoming = wait_event(&wa, "call_incoming", None, 30).await;
    alice
        .client()
        .post("/v1/calls/reject", json!({ "call": incoming["call"] }))
        .await
        .unwrap();
    caller.wait_for("603", Duration::from_secs(10));
    drop((caller, desk, support, kam));
    done();
}
