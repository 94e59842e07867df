//! Relays on loopback: a `kith relay` server, nodes that use it by configuration or find it in the DHT,
//! and the relay-only policy under which no peer learns an IP address.

use kith::process::Daemon;
use kith::testnet::Testnet;
use kith_net::dht::{DhtConfig, KithDht, RELAY_INFOHASH};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

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
    assert!(wa.delivered_within("bob", s1, 60).await, "alice -> bob");
    assert!(wb.delivered_within("alice", s2, 60).await, "bob -> alice");
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
    let port = relay.https_addr().expect("the relay serves TLS").port();
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
    // The announcement carries only a port: the relay is reached at the announcer's address, over TLS,
    // and the certificate seen at first contact is pinned in the URL used and published.
    let expected = url.clone();
    assert!(expected.starts_with(&format!("https://127.0.0.1:{port}/?pin=")));
    assert_eq!(
        relays,
        json!([expected]),
        "the announced relay was found, pinned and is used"
    );
    let card = alice.client().get("/v1/card").await.unwrap();
    let parsed: kith_core::ContactCard = card["card"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        parsed.hints().relays,
        vec![expected],
        "and it is in the card"
    );
}

fn contact<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .expect("the contact")
}

fn card_of(contact: &Value) -> kith_core::ContactCard {
    contact["card"]
        .as_str()
        .expect("a card received from the peer")
        .parse()
        .unwrap()
}

/// Waits until `daemon`'s connection to `peer` satisfies `ok`, polling its status after each event.
async fn wait_connection(
    daemon: &Daemon,
    watcher: &kith::client::Watcher,
    peer: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = daemon.client().get("/v1/status").await.unwrap();
        if let Some(c) = status["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["peer"] == peer)
            && ok(c)
        {
            return c.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection to {peer} never became what the test waits for: {status}"
        );
        let seen = watcher.count("peer");
        watcher
            .wait_for(Duration::from_secs(2), |w| w.count("peer") > seen)
            .await;
    }
}

/// Neither node is relay-only. Alice, a stranger to Bob, finds him by address and sends a contact request:
/// it travels through the relay to Bob's request endpoint, and nothing Alice's node receives names Bob's
/// IP address or his contact endpoint. Once Bob accepts, the two go direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_request_never_reveals_the_recipients_ip() {
    let (_relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |name: &'static str| {
        let home = dir.path().join(name);
        let bootstrap = net.bootstrap();
        let url = url.clone();
        async move {
            Daemon::spawn(
                exe(),
                &home,
                name,
                Some(bootstrap),
                vec![format!("--relay={url}")],
            )
            .await
            .unwrap()
        }
    };
    let alice = spawn("alice").await;
    let bob = spawn("bob").await;
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let sb = bob.client().get("/v1/status").await.unwrap();
    let bob_contact_endpoint = sb["endpoint"].as_str().unwrap().to_owned();
    let bob_request_endpoint = sb["request_endpoint"]
        .as_str()
        .expect("bob has a request endpoint")
        .to_owned();
    assert_ne!(bob_contact_endpoint, bob_request_endpoint);
    assert!(
        !sb["listen"].as_array().unwrap().is_empty(),
        "bob's contact endpoint has IP sockets"
    );

    alice.add_by_address(&bob).await.unwrap();
    let seq = alice.client().send("bob", "hello, stranger").await.unwrap();
    assert!(
        wa.delivered_within("bob", seq, 60).await,
        "the request reached bob"
    );
    assert!(
        wb.wait_for(Duration::from_secs(10), |w| w.count("request") > 0)
            .await
    );
    let sa = alice.client().get("/v1/status").await.unwrap();
    let to_bob = connection(&sa, "bob");
    assert_eq!(to_bob["path"], json!("relayed"));
    assert_eq!(
        to_bob["ip_paths"],
        json!(0),
        "alice's endpoint has no IP path to bob"
    );
    let contacts = alice.client().get("/v1/contacts").await.unwrap();
    let card = card_of(contact(&contacts, "bob"));
    assert!(
        card.hints().direct.is_empty(),
        "the card bob's node gave a stranger names no IP address: {:?}",
        card.hints().direct
    );
    assert_eq!(
        kith_core::zbase32::encode(card.hints().endpoint.unwrap().as_bytes()),
        bob_request_endpoint,
        "and only his relay-only request endpoint"
    );
    assert_eq!(card.hints().relays, vec![url.clone()]);
    // Bob's IP sockets: none of them appears anywhere in what alice's node knows of him.
    let alice_view = format!("{contacts} {sa}");
    for addr in sb["listen"].as_array().unwrap() {
        let port = addr.as_str().unwrap().rsplit(':').next().unwrap();
        assert!(
            !alice_view.contains(&format!(":{port}")),
            "bob's port {port} leaked to alice: {alice_view}"
        );
    }

    // Bob accepts: he dials alice's contact endpoint (named in her card), and the path may go direct.
    bob.client()
        .post(
            "/v1/requests/accept",
            json!({"request": "alice", "name": "alice"}),
        )
        .await
        .unwrap();
    let c = wait_connection(&alice, &wa, "bob", |c| {
        c["path"] == "direct" && c["ip_paths"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(c["path"], json!("direct"));
    let contacts = alice.client().get("/v1/contacts").await.unwrap();
    let card = card_of(contact(&contacts, "bob"));
    assert_eq!(
        kith_core::zbase32::encode(card.hints().endpoint.unwrap().as_bytes()),
        bob_contact_endpoint,
        "a contact learns bob's contact endpoint"
    );
}

/// Two contacts who know only each other's address: the first connection goes to the request endpoint in
/// the record, which tells a contact its contact endpoint, and they move to a direct connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_move_from_the_request_endpoint_to_a_direct_path() {
    let (_relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nodes = kith::process::spawn_all(
        exe(),
        dir.path(),
        &["alice", "bob"],
        Some(net.bootstrap()),
        vec![format!("--relay={url}")],
    )
    .await
    .unwrap();
    let (alice, bob) = (&nodes[0], &nodes[1]);
    bob.add_by_address(alice).await.unwrap();
    alice.add_by_address(bob).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let seq = alice.client().send("bob", "hi").await.unwrap();
    assert!(wa.delivered_within("bob", seq, 60).await);
    wait_connection(alice, &wa, "bob", |c| {
        c["path"] == "direct" && c["ip_paths"].as_u64() > Some(0)
    })
    .await;
}

/// A `kith relay` process (self-signed certificate kept in `state`) and the URL it printed.
async fn relay_process(state: &Path) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(exe())
        .args(["relay", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the relay prints its URL")
        .unwrap()
        .expect("a line");
    (child, url)
}

/// Two relay-only daemons reach each other only through a `kith relay` process serving TLS with its
/// self-signed certificate, pinned by the URL it printed; a restart keeps the certificate and the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_daemons_talk_through_a_tls_relay() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay-state");
    let (first, url) = relay_process(&state).await;
    drop(first);
    let (_relay, again) = relay_process(&state).await;
    let parsed = kith_net::relay_tls::parse_relay_url(&url).unwrap();
    assert!(
        parsed.tls && parsed.pin.is_some(),
        "an https URL with a pin: {url}"
    );
    assert_eq!(
        parsed.pin,
        kith_net::relay_tls::parse_relay_url(&again).unwrap().pin,
        "a restarted relay keeps its certificate"
    );
    let url = again;
    let net = Testnet::start(12).await.unwrap();
    let nodes = kith::process::spawn_all(
        exe(),
        dir.path(),
        &["alice", "bob"],
        Some(net.bootstrap()),
        vec![format!("--relay={url}"), "--relay-only".into()],
    )
    .await
    .unwrap();
    let (alice, bob) = (&nodes[0], &nodes[1]);
    alice.add_by_address(bob).await.unwrap();
    bob.add_by_address(alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let s1 = alice.client().send("bob", "over tls").await.unwrap();
    let s2 = bob.client().send("alice", "and back").await.unwrap();
    assert!(wa.delivered_within("bob", s1, 60).await, "alice -> bob");
    assert!(wb.delivered_within("alice", s2, 60).await, "bob -> alice");
    for (d, peer) in [(alice, "bob"), (bob, "alice")] {
        let st = d.client().get("/v1/status").await.unwrap();
        assert_eq!(st["listen"], json!([]), "no IP socket at all");
        assert_eq!(connection(&st, peer)["path"], json!("relayed"));
        assert_eq!(connection(&st, peer)["ip_paths"], json!(0));
        let report = st["relay_report"].as_array().unwrap();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0]["url"], json!(url));
        assert_eq!(
            report[0]["reachable"],
            json!(true),
            "the TLS relay answers the probe: {report:?}"
        );
        assert!(report[0]["rtt_ms"].as_f64().is_some(), "{report:?}");
    }
    let card = bob.client().get("/v1/card").await.unwrap();
    let parsed: kith_core::ContactCard = card["card"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        parsed.hints().relays,
        vec![url.clone()],
        "the card carries the pinned URL to contacts"
    );
}

/// A daemon given the relay's URL with a wrong pin cannot use the relay, and its status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_keeps_the_relay_out_and_status_says_why() {
    let (_relay, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (base, pin) = url.split_once("?pin=").unwrap();
    let flipped = if pin.starts_with('0') { "1" } else { "0" };
    let wrong = format!("{base}?pin={flipped}{}", &pin[1..]);
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let alice = Daemon::spawn(
        exe(),
        &home,
        "alice",
        None,
        vec![format!("--relay={wrong}"), "--relay-only".into()],
    )
    .await
    .unwrap();
    let st = alice.client().get("/v1/status").await.unwrap();
    assert_eq!(st["relay_connected"], json!(false));
    let report = &st["relay_report"][0];
    assert_eq!(report["reachable"], json!(false), "{report}");
    let why = report["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("does not match the pin") && why.contains("operator"),
        "the reason names the pin and what to do: {report}"
    );
    let out = std::process::Command::new(exe())
        .arg("--home")
        .arg(&home)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NOT reachable: the relay's certificate"),
        "`kith status` says why: {text}"
    );
    drop(alice);
}

/// Pinned relay URLs are long: a node that names four still publishes its record (with as many relays as
/// it has room for, at least one), and is found by address through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_four_pinned_relays_still_publishes_and_is_found() {
    let mut relays = vec![];
    let mut urls = vec![];
    for _ in 0..4 {
        let (r, url) = kith::relay::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert!(url.contains("?pin="), "{url}");
        relays.push(r);
        urls.push(url);
    }
    let net = kith::testnet::Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bob = Daemon::spawn(
        exe(),
        &dir.path().join("bob"),
        "bob",
        Some(net.bootstrap()),
        vec![format!("--relay={}", urls.join(","))],
    )
    .await
    .unwrap();
    let alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        vec![format!("--relay={}", urls[0])],
    )
    .await
    .unwrap();
    let wb = bob.watcher().await.unwrap();
    assert!(
        wb.wait_for(Duration::from_secs(60), |w| w.count("record_published") > 0)
            .await,
        "bob's record was never published: {:?}",
        bob.client().get("/v1/status").await.unwrap()["dht"]
    );
    alice.add_by_address(&bob).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let seq = alice.client().send("bob", "found you").await.unwrap();
    assert!(
        wa.delivered_within("bob", seq, 60).await,
        "not delivered by address"
    );
}
