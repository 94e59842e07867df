//! Relays on loopback: a `kith relay` server, nodes that use it by configuration or find it in the DHT,
//! and the relay-only policy under which no peer learns an IP address.

use kith::process::Daemon;
use kith::testnet::Testnet;
use kith_net::dht::{DhtConfig, KithDht, RELAY_INFOHASH};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn connection<'a>(status: &'a Value, peer: &str) -> &'a Value {
    status["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"] == peer)
        .expect("a connection to the peer")
}

/// Bob is relay-only; Alice is not. They find each other by address and talk, and neither endpoint ever
/// has an IP path to the other: Alice's side never learns Bob's IP address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peer_never_reveals_its_ip() {
    let (_relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        vec![format!("--relay={url}")],
    )
    .await
    .unwrap();
    let bob = Daemon::spawn(
        exe(),
        &dir.path().join("bob"),
        "bob",
        Some(net.bootstrap()),
        vec![format!("--relay={url}"), "--relay-only".into()],
    )
    .await
    .unwrap();
    alice.add_by_address(&bob).await.unwrap();
    bob.add_by_address(&alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let s1 = alice
        .client()
        .send("bob", "through the relay")
        .await
        .unwrap();
    let s2 = bob.client().send("alice", "and back").await.unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w
            .delivered_at("bob", s1)
            .is_some())
            .await,
        "alice -> bob"
    );
    assert!(
        wb.wait_for(Duration::from_secs(60), |w| w
            .delivered_at("alice", s2)
            .is_some())
            .await,
        "bob -> alice"
    );
    let sa = alice.client().get("/v1/status").await.unwrap();
    let sb = bob.client().get("/v1/status").await.unwrap();
    assert_eq!(sb["listen"], json!([]), "bob has no IP socket at all");
    assert_eq!(sb["relay_only"], json!(true));
    assert_eq!(connection(&sa, "bob")["path"], json!("relayed"));
    assert_eq!(
        connection(&sa, "bob")["ip_paths"],
        json!(0),
        "alice's endpoint saw no IP path to bob"
    );
    assert_eq!(connection(&sb, "alice")["ip_paths"], json!(0));
    // Bob's card, as alice stored it from his hello, names only the relay.
    let card = bob.client().get("/v1/card").await.unwrap();
    let parsed: kith_core::ContactCard = card["card"].as_str().unwrap().parse().unwrap();
    assert!(
        parsed.hints().direct.is_empty(),
        "no direct address in a relay-only card"
    );
    assert_eq!(parsed.hints().relays, vec![url.clone()]);
}

/// A relay that announces itself in the DHT is found, probed and used by nodes with no relay configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_found_in_the_dht_without_configuration() {
    let (relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let net = Testnet::start(12).await.unwrap();
    let announcer = KithDht::start(&DhtConfig {
        bootstrap: net.bootstrap(),
        bind: Ipv4Addr::LOCALHOST,
        port: None,
        server: false,
    })
    .unwrap();
    let port = relay.http_addr().unwrap().port();
    announcer.announce(RELAY_INFOHASH, port).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        vec![],
    )
    .await
    .unwrap();
    let wa = alice.watcher().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut relays = json!([]);
    while tokio::time::Instant::now() < deadline {
        relays = alice.client().get("/v1/status").await.unwrap()["relays"].clone();
        if relays.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        let seen = wa.count("relay_added");
        wa.wait_for(Duration::from_secs(5), |w| w.count("relay_added") > seen)
            .await;
    }
    // The announcement carries only a port: the relay is reached at the announcer's address.
    let expected = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        relays,
        json!([expected]),
        "the announced relay ({url}) was found and is used"
    );
    let card = alice.client().get("/v1/card").await.unwrap();
    let parsed: kith_core::ContactCard = card["card"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        parsed.hints().relays,
        vec![expected],
        "and it is in the card"
    );
}
