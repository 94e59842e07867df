//! Discovery through a local Mainline DHT testnet (never the public DHT): real daemons that know only each
//! other's address.

use kith::process::Daemon;
use kith::testnet::Testnet;
use std::path::Path;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

async fn daemon(dir: &Path, name: &str, bootstrap: Vec<String>) -> Daemon {
    Daemon::spawn(
        exe(),
        &dir.join(name),
        name,
        Some(bootstrap),
        vec!["--publish-direct".into()],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_alone_is_enough_through_the_dht() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    alice.add_by_address(&bob).await.unwrap();
    bob.add_by_address(&alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let s1 = alice.client().send("bob", "hi bob").await.unwrap();
    let s2 = bob.client().send("alice", "hi alice").await.unwrap();
    assert!(
        wa.delivered_within("bob", s1, 60).await,
        "alice -> bob by address"
    );
    assert!(
        wb.delivered_within("alice", s2, 60).await,
        "bob -> alice by address"
    );
    let st = alice.client().get("/v1/status").await.unwrap();
    let sb = bob.client().get("/v1/status").await.unwrap();
    // Whoever dialled first found the other through a DHT record (no card, no other source); the other may
    // have been reached before its own lookup ended.
    assert!(
        st["dht"]["sources"]["dht_records"].as_u64().unwrap()
            + sb["dht"]["sources"]["dht_records"].as_u64().unwrap()
            >= 1,
        "found through a DHT record: {st} {sb}"
    );
    assert!(
        st["dht"]["sources"]["published"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // Records for this and the next period: wait for publish events until the status counts both.
    let mut published = 0;
    for _ in 0..60 {
        published = alice.client().get("/v1/status").await.unwrap()["dht"]["sources"]["published"]
            .as_u64()
            .unwrap();
        if published >= 2 {
            break;
        }
        let seen = wa.count("record_published");
        wa.wait_for(Duration::from_secs(1), |w| {
            w.count("record_published") > seen
        })
        .await;
    }
    assert!(published >= 2, "published for this and the next period");
    assert!(st["dht"]["routing_table_nodes"].as_u64().unwrap() > 0);
}

/// The routing table saved at shutdown lets a node rejoin with its bootstrap list removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_routing_table_rejoins_without_bootstrap() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    // Let alice's node learn the network, then stop her cleanly: the table is saved.
    let joined = alice.client().get("/v1/status").await.unwrap()["dht"]["routing_table_nodes"]
        .as_u64()
        .unwrap();
    assert!(joined > 0);
    alice.stop().await;
    let saved: Vec<String> = serde_json::from_slice(
        &std::fs::read(alice.home.join("dht-nodes.json")).expect("routing table saved"),
    )
    .unwrap();
    assert!(!saved.is_empty());
    // Restart with an empty bootstrap list.
    alice.bootstrap = Some(vec![]);
    alice.start().await.unwrap();
    alice.add_by_address(&bob).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let seq = alice
        .client()
        .send("bob", "back without bootstrap hosts")
        .await
        .unwrap();
    assert!(wa.delivered_within("bob", seq, 60).await);
    let st = alice.client().get("/v1/status").await.unwrap();
    assert!(
        st["dht"]["routing_table_nodes"].as_u64().unwrap() > 0,
        "{st}"
    );
    assert!(
        st["dht"]["sources"]["dht_records"].as_u64().unwrap() >= 1,
        "{st}"
    );
    let saved_table = &st["dht"]["bootstrap"]["saved_table"];
    assert!(saved_table["answered"].as_u64() > Some(0), "{st}");
    assert_eq!(st["dht"]["bootstrap"]["configured"]["offered"], 0);
}

/// Carol starts with no bootstrap node and no saved table. Alice's card names DHT nodes she knew; once
/// Carol adds it, Carol's node joins through them and finds Bob, whom she knows by address alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_card_is_a_way_into_the_dht() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    let carol = daemon(dir.path(), "carol", vec![]).await;
    let st = carol.client().get("/v1/status").await.unwrap();
    assert_eq!(st["dht"]["routing_table_nodes"], 0, "carol starts alone");
    let card = alice.client().get("/v1/card").await.unwrap();
    let parsed: kith_core::ContactCard = card["card"].as_str().unwrap().parse().unwrap();
    assert!(
        !parsed.hints().dht.is_empty(),
        "alice's card names DHT nodes"
    );
    kith::process::introduce(&carol, &alice).await.unwrap();
    carol.add_by_address(&bob).await.unwrap();
    let wc = carol.watcher().await.unwrap();
    let seq = carol
        .client()
        .send("bob", "found through a card's DHT hints")
        .await
        .unwrap();
    assert!(
        wc.delivered_within("bob", seq, 60).await,
        "carol reached bob by address"
    );
    let st = carol.client().get("/v1/status").await.unwrap();
    let cards = &st["dht"]["bootstrap"]["contact_cards"];
    assert!(cards["offered"].as_u64() > Some(0), "{st}");
    assert!(cards["answered"].as_u64() > Some(0), "{st}");
    assert!(
        st["dht"]["sources"]["dht_records"].as_u64() >= Some(1),
        "{st}"
    );
}

fn contains_ipv4(text: &str) -> Option<String> {
    // Four dot-separated groups of 1-3 digits, not inside a longer number (e.g. version strings are fine).
    let bytes = text.as_bytes();
    for start in 0..bytes.len() {
        if !bytes[start].is_ascii_digit()
            || (start > 0 && (bytes[start - 1].is_ascii_digit() || bytes[start - 1] == b'.'))
        {
            continue;
        }
        let mut i = start;
        let mut groups = 0;
        loop {
            let g = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() && i - g < 4 {
                i += 1;
            }
            if i == g || i - g > 3 {
                break;
            }
            groups += 1;
            if groups == 4 {
                return Some(text[start..i].to_owned());
            }
            if i < bytes.len() && bytes[i] == b'.' {
                i += 1;
            } else {
                break;
            }
        }
    }
    None
}

/// kith's own logs at the default level (info) never contain an IP address, an account, device or endpoint
/// key, or a blinded key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_leak_addresses_or_keys() {
    assert_eq!(
        contains_ipv4("listening on 127.0.0.1:4000"),
        Some("127.0.0.1".into()),
        "the scanner works"
    );
    assert_eq!(contains_ipv4("version 1.2.3 at 12:00"), None);
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let mut bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    let mallory = daemon(dir.path(), "mallory", net.bootstrap()).await;
    alice.add_by_address(&bob).await.unwrap();
    bob.add_by_address(&alice).await.unwrap();
    mallory.add_by_address(&alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wm = mallory.watcher().await.unwrap();
    let s = alice.client().send("bob", "one").await.unwrap();
    let m = mallory
        .client()
        .send("alice", "a stranger says hi")
        .await
        .unwrap();
    assert!(wa.delivered_within("bob", s, 60).await);
    assert!(wm.delivered_within("alice", m, 60).await);
    bob.kill();
    bob.start().await.unwrap();
    let s = alice.client().send("bob", "two").await.unwrap();
    assert!(wa.delivered_within("bob", s, 60).await);

    let mut secrets: Vec<(String, String)> = vec![];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for d in [&alice, &bob, &mallory] {
        let public = kith_node::Profile::new(&d.home).public().unwrap();
        let status = d.client().get("/v1/status").await.unwrap();
        let acct = public.account;
        secrets.push((
            format!("{} account hex", d.name),
            hex::encode(acct.as_bytes()),
        ));
        secrets.push((
            format!("{} address", d.name),
            d.address().unwrap()[5..].to_owned(),
        ));
        secrets.push((
            format!("{} device hex", d.name),
            hex::encode(public.device.as_bytes()),
        ));
        secrets.push((
            format!("{} endpoint", d.name),
            status["endpoint"].as_str().unwrap().to_owned(),
        ));
        for p in [0, 1] {
            let period =
                kith_core::blind::PeriodNum(kith_core::blind::period_at(now, 24 * 60).0 + p);
            let blinded = kith_core::blind::blind_public(&acct, period, 24 * 60).unwrap();
            secrets.push((
                format!("{} blinded hex", d.name),
                hex::encode(blinded.as_bytes()),
            ));
            secrets.push((
                format!("{} blinded z32", d.name),
                kith_core::zbase32::encode(blinded.as_bytes()),
            ));
        }
    }
    let mut checked = 0;
    for d in [&alice, &bob, &mallory] {
        let log = std::fs::read_to_string(d.home.join("daemon.log")).unwrap();
        assert!(
            log.contains("peer connected"),
            "{}'s log has content to check",
            d.name
        );
        checked += log.lines().count();
        if let Some(ip) = contains_ipv4(&log) {
            panic!("{}'s log contains an IP address ({ip}):\n{log}", d.name);
        }
        for (what, s) in &secrets {
            assert!(
                !log.to_lowercase().contains(&s.to_lowercase()),
                "{}'s log contains {what}:\n{log}",
                d.name
            );
            assert!(
                !log.to_lowercase().contains(&s[..16].to_lowercase()),
                "{}'s log contains a prefix of {what}",
                d.name
            );
        }
    }
    assert!(checked > 5, "enough log lines were checked ({checked})");
}

/// Endpoint keys rotate at every period boundary (1-minute periods here); contacts find the new endpoint
/// through the new period's record and keep talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_keys_rotate_every_period_and_contacts_follow() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = || vec!["--publish-direct".into(), "--period-minutes=1".into()];
    let alice = Daemon::spawn(
        exe(),
        &dir.path().join("alice"),
        "alice",
        Some(net.bootstrap()),
        args(),
    )
    .await
    .unwrap();
    let bob = Daemon::spawn(
        exe(),
        &dir.path().join("bob"),
        "bob",
        Some(net.bootstrap()),
        args(),
    )
    .await
    .unwrap();
    alice.add_by_address(&bob).await.unwrap();
    bob.add_by_address(&alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let s = alice.client().send("bob", "before").await.unwrap();
    assert!(wa.delivered_within("bob", s, 60).await);
    let endpoint_before = bob.client().get("/v1/status").await.unwrap()["endpoint"].clone();
    assert!(
        wb.wait_for(Duration::from_secs(90), |w| w.count("endpoint_rotated")
            >= 1)
            .await,
        "bob rotated"
    );
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w.count("endpoint_rotated")
            >= 1)
            .await,
        "alice rotated"
    );
    let endpoint_after = bob.client().get("/v1/status").await.unwrap()["endpoint"].clone();
    assert_ne!(
        endpoint_before, endpoint_after,
        "bob's endpoint key changed with the period"
    );
    let s1 = alice.client().send("bob", "after").await.unwrap();
    let s2 = bob.client().send("alice", "after, too").await.unwrap();
    assert!(
        wa.delivered_within("bob", s1, 60).await,
        "alice -> bob after rotation"
    );
    assert!(
        wb.delivered_within("alice", s2, 60).await,
        "bob -> alice after rotation"
    );
}

/// A stranger added by address alone, with no relay known anywhere: the message waits, and `contacts`,
/// `chat` and `send --wait` say why (and what to do), instead of "queued" and "not delivered".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_that_needs_a_relay_says_why_it_waits() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Default privacy: no address published, requests only through a relay, and no relay anywhere.
    let [alice, bob]: [Daemon; 2] = kith::process::spawn_all(
        exe(),
        dir.path(),
        &["alice", "bob"],
        Some(net.bootstrap()),
        vec![],
    )
    .await
    .unwrap()
    .try_into()
    .unwrap_or_else(|_| unreachable!("two names, two daemons"));
    alice.add_by_address(&bob).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    alice.client().send("bob", "hello?").await.unwrap();
    // Wait for the first failed attempt, event-driven on the record lookup and the dial.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let contact = loop {
        let list = alice.client().get("/v1/contacts").await.unwrap();
        let c = list[0].clone();
        if c["why_unreached"].is_string() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no reason given: {c}");
        let seen = wa.count("record_published") + wa.count("peer");
        wa.wait_for(Duration::from_millis(500), |w| {
            w.count("record_published") + w.count("peer") > seen
        })
        .await;
    };
    let why = contact["why_unreached"].as_str().unwrap();
    assert!(
        why.contains("only through a relay") && why.contains("kith relay"),
        "{why}"
    );
    assert_eq!(contact["waiting"], 1, "{contact}");
    let run = |args: &[&str]| {
        std::process::Command::new(exe())
            .arg("--home")
            .arg(&alice.home)
            .args(args)
            .output()
            .unwrap()
    };
    for args in [&["contacts"][..], &["chat", "bob"]] {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("bob is not reachable now: they take connections only through a relay"),
            "{args:?}: {text}"
        );
    }
    let out = run(&["send", "bob", "still there?", "--wait", "2"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not delivered within 2 s (bob is not reachable now: they take connections only through a relay"), "{err}");
}
