//! Bad input at the command line: every mistake gets exit status 2, a message naming the cause, and writes
//! nothing.

use kith::process::{Daemon, introduce};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kith(home: &Path, args: &[&OsStr], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kith"));
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("KITH_PASSPHRASE")
        .env_remove("KITH_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn args<'a>(a: &'a [&'a str]) -> Vec<&'a OsStr> {
    a.iter().map(OsStr::new).collect()
}

#[track_caller]
fn assert_user_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit status for {needle:?}; stderr: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr {stderr:?} should name {needle:?}"
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
}

#[test]
fn missing_profile_and_daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nobody");
    assert_user_error(&kith(&home, &args(&["contacts"]), &[]), "no kith profile");
    assert_user_error(&kith(&home, &args(&["id"]), &[]), "kith init");
    assert_user_error(&kith(&home, &args(&["daemon"]), &[]), "no kith profile");
    assert!(!home.exists(), "nothing was created");
    let out = kith(&home, &args(&["init", "--name", "Ann"]), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // By default a profile stays on loopback; `--all-interfaces` is the user's explicit choice.
    let config = std::fs::read_to_string(home.join("config.toml")).unwrap();
    assert!(config.contains("listen = \"127.0.0.1:"), "{config}");
    assert!(config.contains("dht_bind = \"127.0.0.1\""), "{config}");
    assert!(config.contains("lan_discovery = true"), "{config}");
    let wide = dir.path().join("wide");
    let out = kith(
        &wide,
        &args(&["init", "--all-interfaces", "--name", "Ann"]),
        &[],
    );
    assert!(out.status.success());
    let config = std::fs::read_to_string(wide.join("config.toml")).unwrap();
    assert!(config.contains("dht_bind = \"0.0.0.0\""), "{config}");
    assert_user_error(
        &kith(&home, &args(&["send", "bob", "hi"]), &[]),
        "daemon is not running",
    );
    assert_user_error(
        &kith(&home, &args(&["status"]), &[]),
        "daemon is not running",
    );
}

#[test]
fn init_twice_refuses_and_keeps_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("p");
    assert!(
        kith(&home, &args(&["init", "--name", "Ann"]), &[])
            .status
            .success()
    );
    let before = std::fs::read(home.join("identity.json")).unwrap();
    assert_user_error(
        &kith(&home, &args(&["init", "--name", "Other"]), &[]),
        "already exists",
    );
    assert_eq!(
        std::fs::read(home.join("identity.json")).unwrap(),
        before,
        "profile untouched"
    );
    assert_user_error(
        &kith(
            &dir.path().join("q"),
            &args(&["init", "--name", "a\u{7}b"]),
            &[],
        ),
        "control characters",
    );
    // Secret files are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["identity.json", "api-token"] {
        let mode = std::fs::metadata(home.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let out = kith(&home, &args(&["id", "--qr"]), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("kith:") && stdout.contains('▀'),
        "address and QR: {stdout}"
    );
}

#[test]
fn locked_profile_and_wrong_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("p");
    let out = kith(
        &home,
        &args(&["init", "--name", "Ann"]),
        &[("KITH_PASSPHRASE", "correct horse")],
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(home.join("identity.json")).unwrap();
    assert!(text.contains("argon2id"), "encrypted with argon2id");
    assert_user_error(
        &kith(&home, &args(&["daemon"]), &[]),
        "locked with a passphrase",
    );
    assert_user_error(
        &kith(&home, &args(&["daemon"]), &[("KITH_PASSPHRASE", "wrong")]),
        "wrong passphrase",
    );
    // The address is public: readable without the passphrase.
    assert!(kith(&home, &args(&["id"]), &[]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_addresses_and_cards_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_kith"));
    let mut me = Daemon::init(exe, &dir.path().join("me"), "me").unwrap();
    let mut bob = Daemon::init(exe, &dir.path().join("bob"), "Bob").unwrap();
    me.start().await.unwrap();
    bob.start().await.unwrap();
    let card = bob.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();
    let address = card.split('?').next().unwrap().to_owned();
    let body = &address[5..];
    let flip = |s: &str, pos: usize| -> String {
        s.chars()
            .enumerate()
            .map(|(i, c)| {
                if i == pos {
                    if c == 'y' { 'n' } else { 'y' }
                } else {
                    c
                }
            })
            .collect()
    };
    let home = me.home.clone();
    let cases: Vec<(String, &str)> = vec![
        (format!("kith:{}", flip(body, 20)), "bad checksum"),
        (format!("kit:{body}"), "must start with `kith:`"),
        (format!("http:{body}"), "must start with `kith:`"),
        (body.to_owned(), "must start with `kith:`"),
        (address[..40].to_owned(), "truncated"),
        (format!("{address}yy"), "extra characters"),
        (
            format!("kith:{}l{}", &body[..10], &body[11..]),
            "cannot appear in an address",
        ),
        (
            format!("kith:{}", &body.replace(&body[3..4], " ")),
            "cannot appear",
        ),
        (card[..card.len() - 12].to_owned(), "truncated or damaged"),
        (format!("{}y", card), "truncated or damaged"),
        (
            format!(
                "{}?card={}",
                me_address(&me).await,
                card.split("?card=").nth(1).unwrap()
            ),
            "signature",
        ),
        (card.replace("?card=", "?crad="), "unknown part"),
        (String::new(), "empty"),
    ];
    for (input, needle) in &cases {
        let out = kith(
            &home,
            &[
                OsStr::new("add"),
                OsStr::new(input),
                OsStr::new("--name"),
                OsStr::new("x"),
            ],
            &[],
        );
        assert_user_error(&out, needle);
    }
    // A byte that is not UTF-8.
    let mut raw = b"kith:".to_vec();
    raw.extend_from_slice(&body.as_bytes()[..30]);
    raw.push(0xff);
    let out = kith(
        &home,
        &[
            OsStr::new("add"),
            OsStr::from_bytes(&raw),
            OsStr::new("--name"),
            OsStr::new("x"),
        ],
        &[],
    );
    assert_user_error(&out, "UTF-8");
    // A bare address needs a name.
    assert_user_error(&kith(&home, &args(&["add", &address]), &[]), "--name");
    // None of that wrote anything.
    assert!(
        me.client()
            .get("/v1/contacts")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Case does not matter in kith links: an upper-case address (as QR codes carry it) is the same address.
    let out = kith(
        &home,
        &args(&["add", &address.to_uppercase(), "--name", "bob"]),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown contacts and taken names.
    assert_user_error(
        &kith(&home, &args(&["send", "nobody", "hi"]), &[]),
        "no contact named",
    );
    assert_user_error(
        &kith(&home, &args(&["chat", "nobody"]), &[]),
        "no contact named",
    );
    assert_user_error(
        &kith(&home, &args(&["verify", "nobody"]), &[]),
        "no contact named",
    );
    assert_user_error(
        &kith(&home, &args(&["remove", "nobody"]), &[]),
        "no contact named",
    );
    assert_user_error(
        &kith(&home, &args(&["accept", "nobody"]), &[]),
        "no contact request",
    );
    assert_user_error(&kith(&home, &args(&["send", "bob", "  "]), &[]), "empty");
    let my_card = me.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_user_error(
        &kith(&home, &args(&["add", &my_card, "--name", "self"]), &[]),
        "your own address",
    );
    // A second daemon on the same profile is refused.
    assert_user_error(&kith(&home, &args(&["daemon"]), &[]), "in use");
    introduce(&bob, &me).await.unwrap();
    let out = kith(&home, &args(&["--json", "verify", "bob"]), &[]);
    let mine: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = kith(&bob.home, &args(&["--json", "verify", "me"]), &[]);
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        mine["safety_number"], theirs["safety_number"],
        "the same digits on both sides"
    );
    // A call's length and tone are checked before anyone is called.
    assert_user_error(
        &kith(
            &home,
            &args(&["call", "bob", "--null", "--duration=-1"]),
            &[],
        ),
        "above 0",
    );
    assert_user_error(
        &kith(&home, &args(&["call", "bob", "--tone", "30000"]), &[]),
        "below 24000 Hz",
    );
    // Names are found whatever their case, and `send --wait` waits for the receipt of the contact as
    // stored ("Bob", from his card) although the name was typed "bob".
    introduce(&me, &bob).await.unwrap();
    let out = kith(
        &home,
        &args(&["--json", "send", "bob", "hello", "--wait", "30"]),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["to"].as_str(), v["state"].as_str()),
        (Some("Bob"), Some("delivered")),
        "{v}"
    );
    let out = kith(&home, &args(&["--json", "verify", "BOB"]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "Bob", "the name as stored: {v}");
}

async fn me_address(d: &Daemon) -> String {
    d.client().get("/v1/card").await.unwrap()["address"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn audio_devices_are_listed_without_alsa_noise() {
    // Needs no profile. Lists whatever cards this machine has (possibly none), as JSON for scripts.
    let dir = tempfile::tempdir().unwrap();
    let out = kith(dir.path(), &args(&["--json", "audio", "devices"]), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("ALSA lib"), "alsa-lib noise: {stderr}");
    // Nor the JACK plugin's, when no JACK server runs.
    assert!(
        !stderr.to_lowercase().contains("jack"),
        "JACK noise: {stderr}"
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in list.as_array().unwrap() {
        assert!(!d["name"].as_str().unwrap().is_empty(), "{d}");
        assert!(d["input"].is_boolean() && d["output"].is_boolean(), "{d}");
    }
    let text = kith(dir.path(), &args(&["audio", "devices"]), &[]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    let stderr = String::from_utf8_lossy(&text.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    // The text names the audio system first (and why not PulseAudio, when it is ALSA).
    let system = stdout.lines().next().unwrap_or_default();
    assert!(
        system == "Audio system: PulseAudio"
            || system.starts_with("Audio system: ALSA (PulseAudio"),
        "{stdout}"
    );
    assert!(
        list.as_array().unwrap().is_empty() && stdout.contains("No sound cards found")
            || list[0]["name"].as_str().is_some_and(|n| stdout.contains(n)),
        "{stdout}"
    );
}

#[test]
fn the_demo_runs_messages_a_crash_and_a_call() {
    // The README's first command, shortened: three daemons, messages both ways, bob killed and restarted,
    // then a call in which bob must hear alice's 440 Hz tone.
    let dir = tempfile::tempdir().unwrap();
    let out = kith(dir.path(), &args(&["demo", "--messages", "20"]), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("each exactly once, in send order"),
        "{stdout}"
    );
    assert!(stdout.contains("bob heard a 440 Hz tone"), "{stdout}");
    assert!(
        stdout.contains("from her mailbox") && stdout.contains("in order, once"),
        "{stdout}"
    );
    assert!(stdout.contains("kith demo: OK"), "{stdout}");
}
