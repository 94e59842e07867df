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
        // Whitespace is dropped (wrapped cards), so a character replaced by a space is a missing one.
        (
            format!("kith:{}", &body.replace(&body[3..4], " ")),
            "too short",
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
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The JSON names the audio system too, and why not PulseAudio when it is another.
    let system = &listing["system"];
    assert!(
        system["name"] == "PulseAudio" && system["why_not_pulseaudio"].is_null()
            || system["name"] == "ALSA"
                && system["why_not_pulseaudio"]
                    .as_str()
                    .is_some_and(|w| !w.is_empty()),
        "{listing}"
    );
    let list = &listing["devices"];
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
            || system.starts_with("Audio system: ALSA (not PulseAudio: "),
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
    // The organization part: with the SIP peers and a network namespace (always so in CI), a verified call
    // with speech both ways and a refused impostor; elsewhere the reason it was skipped.
    if stdout.contains("organization part skipped") {
        assert!(std::env::var_os("CI").is_none(), "{stdout}");
        println!("the demo's organization part was skipped here: {stdout}");
    } else {
        assert!(
            stdout.contains(
                "answered by support@example.org (Verified: example.org (DNSSEC + HTTPS))"
            ) && stdout.contains("possible compromise")
                && stdout.contains("organization part: OK"),
            "{stdout}"
        );
    }
}

/// Starts `kith --home HOME ARGS` and hands its standard output over line by line, as it comes.
fn follow_lines(
    home: &Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let (child, out, _) = follow_lines_and_errors(home, args);
    (child, out)
}

/// Like [`follow_lines`], with the lines of standard error on a channel of their own.
fn follow_lines_and_errors(
    home: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kith"))
        .arg("--home")
        .arg(home)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = |from: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().unwrap()));
    let err = lines(Box::new(child.stderr.take().unwrap()));
    (child, out, err)
}

/// Runs kith with `input` on standard input.
fn kith_stdin(home: &Path, a: &[&str], env: &[(&str, &str)], input: &[u8]) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kith"));
    cmd.arg("--home")
        .arg(home)
        .args(a)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("KITH_PASSPHRASE")
        .env_remove("KITH_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn init(home: &Path, name: &str) {
    let out = kith(home, &args(&["init", "--name", name]), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn emptied_damaged_and_missing_stores_are_refused_and_not_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("p");
    init(&home, "Ann");
    let db = home.join("kith.db");
    // The store exists from `init` on, private like the other profile files.
    use std::os::unix::fs::PermissionsExt;
    for f in ["kith.db", "config.toml", "identity.json", "api-token"] {
        let mode = std::fs::metadata(home.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let daemon_refuses = |needle: &str| {
        let out = kith(&home, &args(&["daemon"]), &[]);
        assert_user_error(&out, needle);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&db.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(stderr.contains("kith restore"), "says what to do: {stderr}");
        // Said once, not once per layer of the error.
        assert_eq!(stderr.matches(needle).count(), 1, "{stderr}");
    };
    // Truncated to 0 bytes: refused, and still 0 bytes (not a fresh empty profile in its place).
    std::fs::write(&db, b"").unwrap();
    daemon_refuses("is empty");
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
    // Overwritten with something that is not a database.
    let junk = vec![0x5au8; 8192];
    std::fs::write(&db, &junk).unwrap();
    daemon_refuses("is damaged");
    assert_eq!(std::fs::read(&db).unwrap(), junk, "not written over");
    // Gone.
    std::fs::remove_file(&db).unwrap();
    daemon_refuses("is missing");
    assert!(!db.exists(), "nothing was created in its place");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("p");
    init(&home, "Ann");
    // As `kith id | head -0`: the reader is gone before kith writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_kith"))
        .arg("--home")
        .arg(&home)
        .args(["id", "--qr"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "quiet: {stderr}");
}

#[test]
fn init_without_a_passphrase_says_so_and_kith_passphrase_sets_changes_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("p");
    let out = kith(&home, &args(&["init", "--name", "Ann"]), &[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unencrypted") && stderr.contains("kith passphrase"),
        "{stderr}"
    );
    // The address on stdout stays clean for scripts.
    assert!(String::from_utf8_lossy(&out.stdout).contains("Your address: kith:"));
    let address = String::from_utf8_lossy(&kith(&home, &args(&["id"]), &[]).stdout).into_owned();
    let identity = || std::fs::read_to_string(home.join("identity.json")).unwrap();
    assert!(!identity().contains("argon2id"));

    // Set one.
    let out = kith(
        &home,
        &args(&["passphrase"]),
        &[("KITH_NEW_PASSPHRASE", "first one")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(identity().contains("argon2id"));
    assert_user_error(
        &kith(&home, &args(&["daemon"]), &[]),
        "locked with a passphrase",
    );
    // Changing it needs the current one.
    assert_user_error(
        &kith(
            &home,
            &args(&["passphrase"]),
            &[("KITH_PASSPHRASE", "wrong"), ("KITH_NEW_PASSPHRASE", "x")],
        ),
        "wrong passphrase",
    );
    assert_user_error(
        &kith(
            &home,
            &args(&["passphrase"]),
            &[("KITH_NEW_PASSPHRASE", "x")],
        ),
        "locked with a passphrase",
    );
    let out = kith(
        &home,
        &args(&["passphrase"]),
        &[
            ("KITH_PASSPHRASE", "first one"),
            ("KITH_NEW_PASSPHRASE", "second one"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_user_error(
        &kith(
            &home,
            &args(&["daemon"]),
            &[("KITH_PASSPHRASE", "first one")],
        ),
        "wrong passphrase",
    );
    // Remove it: the keys are the same keys.
    let out = kith(
        &home,
        &args(&["--json", "passphrase"]),
        &[
            ("KITH_PASSPHRASE", "second one"),
            ("KITH_NEW_PASSPHRASE", ""),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["encrypted"], false, "{v}");
    assert!(!identity().contains("argon2id"));
    assert_eq!(
        String::from_utf8_lossy(&kith(&home, &args(&["id"]), &[]).stdout),
        address
    );
    let mode = std::fs::metadata(home.join("identity.json"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
}

#[test]
fn json_mode_errors_have_the_api_shape() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nobody");
    let json_error = |out: &Output, code: i32, needle: &str| {
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(
            v["kind"],
            if code == 2 { "user" } else { "internal" },
            "{v}"
        );
        assert!(v["error"].as_str().unwrap().contains(needle), "{v}");
    };
    json_error(
        &kith(&home, &args(&["--json", "contacts"]), &[]),
        2,
        "no kith profile",
    );
    json_error(
        &kith(&home, &args(&["--json", "frobnicate"]), &[]),
        2,
        "frobnicate",
    );
    json_error(
        &kith(&home, &args(&["contacts", "--json", "--bogus"]), &[]),
        2,
        "--bogus",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_text_names_and_state_are_shown_safely_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_kith"));
    let mut me = Daemon::init(exe, &dir.path().join("me"), "me").unwrap();
    let mut bob = Daemon::init(exe, &dir.path().join("bob"), "bob").unwrap();
    me.start().await.unwrap();
    bob.start().await.unwrap();
    let home = me.home.clone();
    let card = bob.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();

    // A card as a mail client wraps it is read.
    let wrapped: String = card
        .chars()
        .collect::<Vec<_>>()
        .chunks(60)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("\n");
    let out = kith(&home, &args(&["add", &wrapped]), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Added bob"));
    // The same card again: nothing new, and it says so; under another name: renamed, and it says so.
    let out = kith(&home, &args(&["add", &card]), &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already a contact"),
        "{out:?}"
    );
    let out = kith(
        &home,
        &args(&["--json", "add", &card, "--name", "robert"]),
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["previous_name"].as_str()),
        (Some("renamed"), Some("bob")),
        "{v}"
    );
    // Another key under an existing name is refused.
    let other = Daemon::init(exe, &dir.path().join("other"), "other").unwrap();
    let other_address = String::from_utf8_lossy(&kith(&other.home, &args(&["id"]), &[]).stdout)
        .trim()
        .to_owned();
    assert_user_error(
        &kith(
            &home,
            &args(&["add", &other_address, "--name", "Robert"]),
            &[],
        ),
        "another address",
    );
    introduce(&bob, &me).await.unwrap();

    // Empty names are named, in text and in JSON.
    assert_user_error(&kith(&home, &args(&["lookup", ""]), &[]), "name is empty");
    assert_user_error(&kith(&home, &args(&["chat", ""]), &[]), "name is empty");
    let out = kith(&home, &args(&["--json", "chat", ""]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "user", "{v}");
    // The API answers every error in its one shape, also for paths and bodies it does not know.
    let api = me.client();
    for (path, body) in [
        ("/v1/lookup/", None),
        ("/v1/nothing-here", None),
        ("/v1/messages", Some("{\"to\": 5}")),
    ] {
        let info = kith_node::Profile::new(&home).daemon_info().unwrap();
        let token = kith_node::Profile::new(&home).token().unwrap();
        let url = format!("http://{}{path}", info.api);
        let http = reqwest::Client::new();
        let req = match body {
            None => http.get(&url),
            Some(b) => http
                .post(&url)
                .header("content-type", "application/json")
                .body(b),
        };
        let resp = req.bearer_auth(&token).send().await.unwrap();
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(status.is_client_error(), "{path}: {status}");
        assert_eq!(v["kind"], "user", "{path}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty(), "{path}: {v}");
    }
    let _ = api;

    // A message with escape sequences: shown visibly in text, exact in JSON.
    let evil = "\u{1b}]0;pwned\u{7}hi\r\u{1b}[2J";
    let wm = me.watcher().await.unwrap();
    bob.client().send("me", evil).await.unwrap();
    assert!(
        wm.wait_for(std::time::Duration::from_secs(30), |w| !w
            .received("robert")
            .is_empty())
            .await
    );
    let out = kith(&home, &args(&["chat", "robert"]), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.stdout
            .iter()
            .any(|b| *b == 0x1b || *b == 0x07 || *b == b'\r'),
        "{text:?}"
    );
    assert!(text.contains("^[]0;pwned^Ghi^M^[[2J"), "{text}");
    let out = kith(&home, &args(&["--json", "chat", "robert"]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["text"], evil);

    // Text from standard input ("-") and from a file; times and delivery shown.
    let out = kith_stdin(
        &home,
        &["send", "robert", "-", "--wait", "30"],
        &[],
        b"line one\nline two\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("note.txt");
    std::fs::write(&file, "from a file").unwrap();
    let out = kith(
        &home,
        &args(&[
            "send",
            "robert",
            "--file",
            file.to_str().unwrap(),
            "--wait",
            "30",
        ]),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kith(&home, &args(&["--json", "chat", "robert"]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let texts: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(&texts[1..], ["line one\nline two", "from a file"], "{v}");
    let out = kith(&home, &args(&["chat", "robert"]), &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let now = hhmm_now();
    assert!(
        text.contains("me: line one") && text.contains("   line two"),
        "{text}"
    );
    assert!(text.contains("[delivered "), "{text}");
    assert!(
        now.iter().any(|t| text.contains(t.as_str())),
        "a time of today ({now:?}): {text}"
    );
    assert_user_error(
        &kith(
            &home,
            &args(&["send", "robert", "--file", "/nonexistent/x"]),
            &[],
        ),
        "cannot read",
    );

    // A closed pipe in the middle of a long listing: no panic.
    let mut child = Command::new(exe)
        .arg("--home")
        .arg(&home)
        .args(["chat", "robert"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `kith mailbox` shows the view (it does not start a mailbox server).
    let out = kith(&home, &args(&["--json", "mailbox"]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["my_mailboxes"].is_array() && v["keeping_mail_for"].is_array(),
        "{v}"
    );

    // The store is encrypted at rest: neither a message nor a name can be read from the files.
    me.stop().await;
    for f in ["kith.db", "kith.db-wal"] {
        if let Ok(bytes) = std::fs::read(home.join(f)) {
            for needle in [
                &b"SQLite format 3"[..],
                b"line one",
                b"from a file",
                b"robert",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{f} holds {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
    me.start().await.unwrap();
    let out = kith(&home, &args(&["--json", "chat", "robert"]), &[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        3,
        "all there after a restart: {v}"
    );

    // The daemon's log file carries no colour codes.
    let log = std::fs::read(home.join("daemon.log")).unwrap();
    assert!(
        !log.is_empty() && !log.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&log)
    );
}

/// The local time now and a minute before, as `kith chat` prints times ("HH:MM").
fn hhmm_now() -> Vec<String> {
    let now = chrono::Local::now();
    [now, now - chrono::Duration::minutes(1)]
        .iter()
        .map(|t| t.format("%H:%M").to_string())
        .collect()
}

#[test]
fn testnet_prints_its_bootstrap_list_as_bootstrap_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kith"))
        .arg("--home")
        .arg(dir.path())
        .args(["testnet", "--nodes", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let list: Vec<&str> = line.trim().split(',').collect();
    assert_eq!(list.len(), 3, "{line:?}");
    for n in list {
        assert!(n.parse::<std::net::SocketAddr>().is_ok(), "{line:?}");
    }
}

/// `--null` on both ends of a call touches no sound card, even where the profile names one that does not
/// exist; the callee's daemon says who calls; `kith events` and `kith calls --watch` follow it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_call_touches_no_sound_card_and_is_followed_live() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_kith"));
    let mut alice = Daemon::init(exe, &dir.path().join("alice"), "alice").unwrap();
    let mut bob = Daemon::init(exe, &dir.path().join("bob"), "bob").unwrap();
    for d in [&alice, &bob] {
        let path = d.home.join("config.toml");
        let config = std::fs::read_to_string(&path).unwrap();
        let config = config
            .replace(
                "audio_input = \"default\"",
                "audio_input = \"no-such-card\"",
            )
            .replace(
                "audio_output = \"default\"",
                "audio_output = \"no-such-card\"",
            );
        assert!(config.contains("no-such-card"), "{config}");
        std::fs::write(&path, config).unwrap();
    }
    alice.start().await.unwrap();
    bob.start().await.unwrap();
    introduce(&alice, &bob).await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    let follow = |args: &[&str]| follow_lines(&bob.home, args);
    let (mut events, events_rx, events_err) = follow_lines_and_errors(
        &bob.home,
        &["--json", "events", "--type", "call_incoming,call_ended"],
    );
    let (mut watch, watch_rx) = follow(&["calls", "--watch"]);
    // Both followers are subscribed once they print: the listing for `calls`, a line on standard error
    // for `events`.
    let subscribed = events_err
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(subscribed.starts_with("Following"), "{subscribed}");
    let first = watch_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(first.contains("No calls yet"), "{first}");

    let wb = bob.watcher().await.unwrap();
    let caller = Command::new(exe)
        .arg("--home")
        .arg(&alice.home)
        .args(["--json", "call", "bob", "--null", "--duration", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wb.wait_for(std::time::Duration::from_secs(30), |w| w
            .call_event("call_incoming", None)
            .is_some())
            .await
    );
    let out = kith(&bob.home, &args(&["answer", "--null"]), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = caller.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended["outcome"], "completed", "{ended}");
    assert_eq!(ended["stats"]["input"], "silence", "{ended}");
    assert!(
        !ended["stats"]["output"].as_str().unwrap().contains("card"),
        "no sound card on the caller's side: {ended}"
    );
    assert!(
        wb.wait_for(std::time::Duration::from_secs(30), |w| w
            .call_event("call_ended", None)
            .is_some())
            .await
    );
    let bob_end = wb.call_event("call_ended", None).unwrap();
    assert_eq!(bob_end["stats"]["input"], "silence", "{bob_end}");
    assert!(
        !bob_end["stats"]["output"]
            .as_str()
            .unwrap()
            .contains("card"),
        "{bob_end}"
    );
    for d in [&alice, &bob] {
        let log = std::fs::read_to_string(d.home.join("daemon.log")).unwrap();
        assert!(
            !log.contains("audio device") && !log.contains("no-such-card"),
            "{}: {log}",
            d.name
        );
    }
    // Bob's daemon said who called; the followers saw it live.
    let out = std::fs::read_to_string(bob.home.join("daemon.out")).unwrap();
    assert!(
        out.contains("incoming call from alice (not verified)"),
        "{out}"
    );
    let line = events_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    let e: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (
            e["type"].as_str(),
            e["from"].as_str(),
            e["verified"].as_bool()
        ),
        (Some("call_incoming"), Some("alice"), Some(false)),
        "{e}"
    );
    let line = events_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap();
    assert!(line.contains("call_ended"), "{line}");
    let mut watched = vec![];
    while let Ok(l) = watch_rx.recv_timeout(std::time::Duration::from_secs(10)) {
        let done = l.contains("ended");
        watched.push(l);
        if done {
            break;
        }
    }
    let watched = watched.join("\n");
    assert!(
        watched.contains("incoming call from alice (not verified)")
            && watched.contains("call with alice ended: completed"),
        "{watched}"
    );
    let _ = events.kill();
    let _ = watch.kill();
    let _ = events.wait();
    let _ = watch.wait();
}

/// `kith chat NAME --follow` shows what comes in and what changes state, as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_follow_shows_new_messages_and_deliveries_live() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_kith"));
    let mut alice = Daemon::init(exe, &dir.path().join("alice"), "alice").unwrap();
    let mut bob = Daemon::init(exe, &dir.path().join("bob"), "bob").unwrap();
    alice.start().await.unwrap();
    bob.start().await.unwrap();
    introduce(&alice, &bob).await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    let follow = |json: bool| {
        let args: &[&str] = if json {
            &["--json", "chat", "bob", "--follow"]
        } else {
            &["chat", "bob", "--follow"]
        };
        follow_lines(&alice.home, args)
    };
    // The JSON follower prints the (empty) history as one array first: from then on it is subscribed.
    let (mut json_child, json_rx) = follow(true);
    let mut first = String::new();
    while !first.trim_end().ends_with(']') {
        first.push_str(
            &json_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap(),
        );
    }
    let (mut text_child, text_rx) = follow(false);
    let wa = alice.watcher().await.unwrap();
    bob.client().send("alice", "live one").await.unwrap();
    assert!(
        wa.wait_for(std::time::Duration::from_secs(30), |w| !w
            .received("bob")
            .is_empty())
            .await
    );
    let seq = alice.client().send("bob", "and back").await.unwrap();
    assert!(wa.delivered_within("bob", seq, 30).await);
    let mut json_lines = vec![];
    while !json_lines
        .iter()
        .any(|l: &String| l.contains("and back") && l.contains("\"delivered\""))
    {
        json_lines.push(
            json_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{json_lines:?}")),
        );
    }
    let incoming: serde_json::Value =
        serde_json::from_str(json_lines.iter().find(|l| l.contains("live one")).unwrap()).unwrap();
    assert_eq!(
        (incoming["outgoing"].as_bool(), incoming["text"].as_str()),
        (Some(false), Some("live one"))
    );
    let mut text_lines = vec![];
    while !text_lines.iter().any(|l: &String| l.contains("delivered")) {
        text_lines.push(
            text_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{text_lines:?}")),
        );
    }
    let text = text_lines.join("\n");
    assert!(
        text.contains("bob: live one") && text.contains("me: and back"),
        "{text}"
    );
    for c in [&mut json_child, &mut text_child] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Issue 21, point 9: a send repeated under its idempotency key (the first answer never came: here the
/// daemon was SIGKILLed after it) gives the message queued the first time, across the restart, and the
/// contact gets it once. The key with another text is refused; a malformed key too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_repeated_under_its_key_is_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_kith"));
    let mut alice = Daemon::spawn(exe, &dir.path().join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    let bob = Daemon::spawn(exe, &dir.path().join("bob"), "bob", None, vec![])
        .await
        .unwrap();
    introduce(&alice, &bob).await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    let home = alice.home.clone();
    let send = |text: &str| {
        kith(
            &home,
            &args(&["send", "bob", text, "--idempotency-key", "note-7"]),
            &[],
        )
    };
    let first = send("only once");
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("queued #1 to bob"));
    alice.kill();
    alice.start().await.unwrap();
    let again = send("only once");
    assert!(again.status.success(), "{again:?}");
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.contains("already sent under this key: #1 to bob"),
        "{said}"
    );
    assert_user_error(&send("something else"), "used for another message");
    assert_user_error(
        &kith(
            &alice.home,
            &args(&["send", "bob", "x", "--idempotency-key", "no spaces"]),
            &[],
        ),
        "idempotency_key must be",
    );
    // Sent once more without the key: a message of its own. Both arrive, the keyed one once.
    let wa = alice.watcher().await.unwrap();
    let seq = alice.client().send("bob", "another").await.unwrap();
    assert_eq!(seq, 2);
    assert!(wa.delivered_within("bob", 2, 60).await);
    let chat = bob.client().get("/v1/chat/alice").await.unwrap();
    let texts: Vec<&str> = chat
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["only once", "another"]);
}

/// Issue 21, point 9: `kith send` whose request gets no answer (the connection drops: the daemon stopped
/// or crashed mid-request) sends it again under the same key until an answer comes; when none comes, it
/// says the outcome is unknown and how to retry safely. A stand-in for the daemon's API drops the first
/// two requests here.
#[test]
fn kith_send_retries_an_unanswered_request_under_the_same_key() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    init(&home, "alice");
    let serve = |drop_first: usize, answer: bool| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        kith_node::Profile::new(&home)
            .write_daemon_info(&kith_node::profile::DaemonInfo {
                pid: std::process::id(),
                api: listener.local_addr().unwrap(),
            })
            .unwrap();
        std::thread::spawn(move || {
            let mut bodies = vec![];
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                bodies.push(serde_json::from_slice::<serde_json::Value>(&body).unwrap());
                if i < drop_first || !answer {
                    drop(conn);
                    continue;
                }
                let reply = br#"{"to":"bob","seq":4,"id":"00","state":"sent","repeated":true}"#;
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    reply.len()
                )
                .unwrap();
                conn.write_all(reply).unwrap();
                return bodies;
            }
            bodies
        })
    };
    let server = serve(2, true);
    let out = kith(&home, &args(&["send", "bob", "hello"]), &[]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("already sent under this key: #4 to bob (sent)"),
        "{said}"
    );
    let bodies = server.join().unwrap();
    assert_eq!(bodies.len(), 3, "two dropped, the third answered");
    let key = &bodies[0]["idempotency_key"];
    assert!(key.as_str().is_some_and(|k| k.len() == 32), "{key}");
    assert!(
        bodies
            .iter()
            .all(|b| &b["idempotency_key"] == key && b["text"] == "hello")
    );

    // No answer ever: the outcome is unknown, and the message says how to retry without doubling.
    let _never = serve(0, false);
    let out = kith(
        &home,
        &args(&["send", "bob", "hello", "--idempotency-key", "mine-1"]),
        &[],
    );
    assert_user_error(&out, "whether the message was queued is unknown");
    assert_user_error(&out, "--idempotency-key mine-1");
}
