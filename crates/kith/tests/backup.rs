//! `kith backup` and `kith restore`, as a person uses them after losing the store: real daemons, real files.

use kith::process::{Daemon, introduce};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn kith(home: &Path, args: &[&str], pass: Option<&str>) -> Output {
    let mut cmd = Command::new(exe());
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("KITH_PASSPHRASE");
    if let Some(p) = pass {
        cmd.env("KITH_PASSPHRASE", p);
    }
    cmd.output().unwrap()
}

async fn chat(d: &Daemon, with: &str) -> Vec<Value> {
    d.client()
        .get(&format!("/v1/chat/{with}?limit=1000"))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn texts(chat: &[Value], outgoing: bool) -> Vec<String> {
    chat.iter()
        .filter(|m| m["outgoing"] == outgoing)
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `d`'s chat with `with` holds `want` as the texts received, then checks it holds exactly those.
async fn has_received(d: &Daemon, with: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = texts(&chat(d, with).await, false);
        if got.len() >= want.len() || std::time::Instant::now() > deadline {
            assert_eq!(
                got, want,
                "{}'s chat with {with}: each once, in order",
                d.name
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_restored_from_an_older_backup_keeps_its_contacts_and_history_and_talks_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Daemon::spawn(exe(), &dir.path().join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    let mut bob = Daemon::spawn(exe(), &dir.path().join("bob"), "bob", None, vec![])
        .await
        .unwrap();
    introduce(&alice, &bob).await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    for t in ["one", "two"] {
        let seq = alice.client().send("bob", t).await.unwrap();
        assert!(wa.delivered_within("bob", seq, 30).await);
    }
    bob.client().send("alice", "hi alice").await.unwrap();
    has_received(&alice, "bob", &["hi alice"]).await;
    // Bob is away; alice writes one more: in the backup it is undelivered.
    bob.stop().await;
    alice
        .client()
        .send("bob", "while you were away")
        .await
        .unwrap();

    // A backup needs a passphrase (this profile has none of its own).
    let file = dir.path().join("alice.kithbackup");
    let home = alice.home.clone();
    let out = kith(&home, &["backup", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("give it a passphrase"));
    let out = kith(
        &home,
        &["--json", "backup", file.to_str().unwrap()],
        Some("backup pass"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let raw = std::fs::read(&file).unwrap();
    assert!(
        !raw.windows(3).any(|w| w == b"two") && !raw.windows(5).any(|w| w == b"alice"),
        "the backup is encrypted"
    );

    // After the backup: bob gets the waiting message, and one more goes both ways (seq 4 of this device).
    bob.start().await.unwrap();
    has_received(&bob, "alice", &["one", "two", "while you were away"]).await;
    let seq = alice
        .client()
        .send("bob", "after the backup")
        .await
        .unwrap();
    assert!(wa.delivered_within("bob", seq, 30).await);

    // Alice's disk loses the store.
    alice.kill();
    std::fs::write(home.join("kith.db"), b"").unwrap();
    let out = kith(&home, &["daemon"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("kith restore"));

    // Wrong passphrase: refused, nothing touched.
    let out = kith(&home, &["restore", file.to_str().unwrap()], Some("wrong"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("passphrase is wrong"));
    assert_eq!(std::fs::metadata(home.join("kith.db")).unwrap().len(), 0);
    let out = kith(
        &home,
        &["--json", "restore", file.to_str().unwrap()],
        Some("backup pass"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["requeued"], 1, "{summary}");
    // The damaged profile was moved aside, not deleted.
    let aside = Path::new(summary["replaced"].as_str().unwrap());
    assert_eq!(std::fs::metadata(aside.join("kith.db")).unwrap().len(), 0);
    assert!(aside.join("identity.json").exists());

    // The restored profile: the same address, bob a contact, the history of the backup.
    alice.start().await.unwrap();
    let card = alice.client().get("/v1/card").await.unwrap();
    assert_eq!(
        card["address"],
        serde_json::from_slice::<Value>(&kith(&bob.home, &["--json", "contacts"], None).stdout)
            .unwrap()[0]["address"]
    );
    let history = chat(&alice, "bob").await;
    assert_eq!(texts(&history, true), ["one", "two", "while you were away"]);
    assert_eq!(texts(&history, false), ["hi alice"]);
    // Both ways again. Bob shows "while you were away" once, although the restored device sent it again
    // under its own numbering, and takes the restored device's messages as new.
    let wa = alice.watcher().await.unwrap();
    let seq = alice.client().send("bob", "restored").await.unwrap();
    assert!(
        wa.delivered_within("bob", seq, 60).await,
        "not delivered after the restore"
    );
    has_received(
        &bob,
        "alice",
        &[
            "one",
            "two",
            "while you were away",
            "after the backup",
            "restored",
        ],
    )
    .await;
    // Bob's side saw a device of alice's it had not seen: it says so, and holds what he sends until he
    // confirms (he would ask alice, by another way, whether she restored a backup).
    let contacts: Value =
        serde_json::from_slice(&kith(&bob.home, &["--json", "contacts"], None).stdout).unwrap();
    assert_eq!(contacts[0]["key_changed"], true, "{contacts}");
    let out = kith(&bob.home, &["send", "alice", "welcome back"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("kith verify alice --confirm"),
        "{out:?}"
    );
    let out = kith(&bob.home, &["verify", "alice", "--confirm"], None);
    assert!(out.status.success(), "{out:?}");
    let contacts: Value =
        serde_json::from_slice(&kith(&bob.home, &["--json", "contacts"], None).stdout).unwrap();
    assert_eq!(
        (
            contacts[0]["key_changed"].as_bool(),
            contacts[0]["verified"].as_bool()
        ),
        (Some(false), Some(true)),
        "{contacts}"
    );
    bob.client().send("alice", "welcome back").await.unwrap();
    has_received(&alice, "bob", &["hi alice", "welcome back"]).await;
    let history = chat(&alice, "bob").await;
    assert!(
        history
            .iter()
            .filter(|m| m["outgoing"] == true)
            .all(|m| m["state"] == "delivered"),
        "{history:?}"
    );
}
