//! Only contacts can learn where (and whether) someone is reachable: the contacts-only part of the
//! discovery record, the contact key that moves on when a contact is removed, and the no-requests policy.

use kith::process::{Daemon, introduce};
use kith::testnet::Testnet;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

async fn lookup(d: &Daemon, who: &str) -> Value {
    d.client().get(&format!("/v1/lookup/{who}")).await.unwrap()
}

/// Waits until `alice` has published `n` more records than `before` (events on her stream).
async fn published(w: &kith::client::Watcher, before: u64) {
    assert!(
        w.wait_for(Duration::from_secs(60), |w| w.count("record_published")
            >= before + 2)
            .await,
        "records published"
    );
}

/// Alice takes requests (through a relay). Carol holds her card: she reads the contacts-only part of
/// Alice's record. Bob knows only the address: he sees the relay-only request endpoint and no IP address.
/// When Alice removes Carol, Carol can no longer read it, while Dave, a remaining contact, can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_contacts_read_where_someone_is() {
    let (_relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = kith::process::spawn_all(
        exe(),
        dir.path(),
        &["alice", "bob", "carol", "dave"],
        Some(net.bootstrap()),
        vec![format!("--relay={url}")],
    )
    .await
    .unwrap();
    let (alice, bob, carol, dave) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    let wa = alice.watcher().await.unwrap();
    published(&wa, 0).await;
    introduce(carol, alice).await.unwrap();
    introduce(dave, alice).await.unwrap();
    introduce(alice, carol).await.unwrap();
    introduce(alice, dave).await.unwrap();
    bob.add_by_address(alice).await.unwrap();

    let c = lookup(carol, "alice").await;
    assert_eq!(c["found"], json!(true), "{c}");
    assert_eq!(c["contact_part"], json!("readable"), "{c}");
    assert_eq!(c["contact_endpoints"], json!(1), "{c}");
    let b = lookup(bob, "alice").await;
    assert_eq!(b["found"], json!(true), "{b}");
    assert_eq!(
        b["contact_part"],
        json!("sealed: only the person's contacts can read it"),
        "{b}"
    );
    assert_eq!(b["public_endpoints"], json!(1), "the request endpoint: {b}");
    assert_eq!(
        b["public_direct"],
        json!(0),
        "no IP address for strangers: {b}"
    );
    assert_eq!(b["public_relays"], json!([url]));

    // Alice removes Carol: her contact key moves on, her records are sealed anew, and Dave gets the new key
    // in the card of a fresh connection.
    let before = wa.count("record_published");
    alice.client().delete("/v1/contacts/carol").await.unwrap();
    published(&wa, before).await;
    let c = lookup(carol, "alice").await;
    assert_eq!(
        c["contact_part"],
        json!("sealed under a key we do not hold (a newer card?)"),
        "a removed contact reads nothing more: {c}"
    );
    let wd = dave.watcher().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = lookup(dave, "alice").await;
        if d["contact_part"] == json!("readable") {
            assert_eq!(d["contact_endpoints"], json!(1));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dave never got alice's new contact key: {d}"
        );
        let seen = wd.count("peer");
        wd.wait_for(Duration::from_secs(2), |w| w.count("peer") > seen)
            .await;
    }

    // Dave keeps alice's mail: her records name his mailbox from now on, for her contacts only.
    dave.client()
        .post("/v1/mailbox/host", json!({ "name": "alice" }))
        .await
        .unwrap();
    let before = wa.count("record_published");
    alice
        .client()
        .post("/v1/mailbox/use", json!({ "name": "dave" }))
        .await
        .unwrap();
    published(&wa, before).await;
    let d = lookup(dave, "alice").await;
    assert_eq!(d["contact_mailboxes"], json!(1), "{d}");
    let b = lookup(bob, "alice").await;
    assert_eq!(
        (&b["contact_part"], &b["contact_mailboxes"]),
        (
            &json!("sealed: only the person's contacts can read it"),
            &json!(0)
        ),
        "a stranger learns nothing of her mailboxes: {b}"
    );
}

/// Alice takes no requests. A stranger with her address finds a record that names no endpoint at all;
/// someone holding an old card of hers is refused; her contacts reach her as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_requests_off_strangers_learn_nothing() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        vec!["--no-requests".into()],
    )
    .await
    .unwrap();
    let others = kith::process::spawn_all(
        exe(),
        dir.path(),
        &["bob", "carol", "dave"],
        Some(net.bootstrap()),
        vec![],
    )
    .await
    .unwrap();
    let (bob, carol, dave) = (&others[0], &others[1], &others[2]);
    let wa = alice.watcher().await.unwrap();
    published(&wa, 0).await;
    let st = alice.client().get("/v1/status").await.unwrap();
    assert_eq!(st["request_endpoint"], Value::Null);

    bob.add_by_address(&alice).await.unwrap();
    let b = lookup(bob, "alice").await;
    assert_eq!(b["found"], json!(true), "{b}");
    assert_eq!(
        b["public_endpoints"],
        json!(0),
        "nothing a stranger could dial: {b}"
    );
    assert_eq!(
        b["contact_part"],
        json!("sealed: only the person's contacts can read it")
    );

    // Dave has Alice's card (handed out once), but Alice never added him: refused, no request appears.
    introduce(dave, &alice).await.unwrap();
    dave.client().send("alice", "let me in").await.unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w.count("request_refused") > 0)
            .await,
        "alice refused dave's connection"
    );
    assert_eq!(
        alice.client().get("/v1/status").await.unwrap()["requests"],
        json!(0)
    );

    // Carol and Alice are contacts: messages flow.
    introduce(carol, &alice).await.unwrap();
    introduce(&alice, carol).await.unwrap();
    let wc = carol.watcher().await.unwrap();
    let seq = carol
        .client()
        .send("alice", "hi, it's carol")
        .await
        .unwrap();
    assert!(wc.delivered_within("alice", seq, 60).await);
    let c = lookup(carol, "alice").await;
    assert_eq!(c["contact_part"], json!("readable"), "{c}");
}

/// A record changes only when its content does: republishing, and restarting the daemon, put the very same
/// item again, so someone polling the record cannot tell when its owner comes and goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_do_not_change_when_their_owner_restarts() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        vec![],
    )
    .await
    .unwrap();
    let bob = Daemon::spawn(
        exe(),
        &dir.path().join("bob"),
        "bob",
        Some(net.bootstrap()),
        vec![],
    )
    .await
    .unwrap();
    bob.add_by_address(&alice).await.unwrap();
    published(&alice.watcher().await.unwrap(), 0).await;
    let first = lookup(&bob, "alice").await;
    assert_eq!(first["found"], json!(true), "{first}");
    alice.stop().await;
    alice.start().await.unwrap();
    published(&alice.watcher().await.unwrap(), 0).await;
    let second = lookup(&bob, "alice").await;
    assert_eq!(
        second["seq"], first["seq"],
        "the restarted node put the same item again"
    );
    // A change of content (a contact removed: new contact key) is a new item with a higher sequence.
    kith::process::introduce(&alice, &bob).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let before = wa.count("record_published");
    alice.client().delete("/v1/contacts/bob").await.unwrap();
    published(&wa, before).await;
    let third = lookup(&bob, "alice").await;
    assert!(
        third["seq"].as_i64() > first["seq"].as_i64(),
        "{first} -> {third}"
    );
}
