//! Mailboxes with real processes: carol's contact bob keeps her mail; deposits reach his daemon over QUIC
//! from an endpoint that names nobody.

use kith::process::{Daemon, introduce};
use kith_core::mailbox::{self, Refusal, Request, Response};
use kith_core::seal::PairKey;
use kith_core::{AccountKey, AccountSecret, Address, ParsedContact};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn account_of(d: &Daemon) -> AccountKey {
    let a: Address = d.address().unwrap().parse().unwrap();
    a.account()
}

async fn deposit(
    net: &kith_net::Net,
    hint: &kith_core::Hints,
    token: [u8; 32],
    envelope: Vec<u8>,
) -> Response {
    let bytes = net
        .mailbox_request(
            hint,
            &mailbox::encode(&Request::Deposit { token, envelope }),
        )
        .await
        .unwrap();
    mailbox::decode(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_need_a_current_token_and_the_mailbox_holds_nothing_readable() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(exe(), &dir.path().join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    let bob = Daemon::spawn(exe(), &dir.path().join("bob"), "bob", None, vec![])
        .await
        .unwrap();
    let mut carol = Daemon::spawn(exe(), &dir.path().join("carol"), "carol", None, vec![])
        .await
        .unwrap();
    for (x, y) in [
        (&alice, &carol),
        (&carol, &alice),
        (&bob, &carol),
        (&carol, &bob),
    ] {
        introduce(x, y).await.unwrap();
    }
    let wb = bob.watcher().await.unwrap();
    let wa = alice.watcher().await.unwrap();
    bob.client()
        .post("/v1/mailbox/host", json!({ "name": "carol" }))
        .await
        .unwrap();
    // A name that is no contact is refused with the reason.
    let e = carol
        .client()
        .post("/v1/mailbox/use", json!({ "name": "nobody" }))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no contact named"), "{e}");
    carol
        .client()
        .post("/v1/mailbox/use", json!({ "name": "bob" }))
        .await
        .unwrap();
    // Carol hands bob her contacts' tokens for the previous, this and the next period.
    assert!(
        wb.wait_for(Duration::from_secs(20), |w| w.count("mailbox_tokens") >= 3)
            .await,
        "bob got no tokens from carol"
    );
    let list = bob.client().get("/v1/mailbox").await.unwrap();
    assert_eq!(list["keeping_mail_for"], json!(["carol"]), "{list}");
    let list = carol.client().get("/v1/mailbox").await.unwrap();
    assert_eq!(list["my_mailboxes"], json!(["bob"]), "{list}");
    // Carol's contacts online learn her Olm keys and that she now has a mailbox.
    assert!(
        wa.wait_for(Duration::from_secs(20), |w| w
            .any("mail_info", |e| e["from"] == "carol" && e["mailboxes"] == 1))
            .await,
        "alice did not hear of carol's mailbox: {:?}",
        wa.last("mail_info")
    );
    let list = alice.client().get("/v1/mailbox").await.unwrap();
    assert_eq!(list["contacts_mailboxes"], json!({ "carol": 1 }), "{list}");

    // Alice's side of it: her pair key with carol, from her profile's keys.
    let alice_id = kith_node::profile::Profile::new(dir.path().join("alice"))
        .unlock(None)
        .unwrap();
    let carol_key = account_of(&carol);
    let pair = PairKey::derive(alice_id.account.as_ref().unwrap(), &carol_key).unwrap();
    let period = kith_core::blind::period_at(kith_node::node::unix_now(), 1440).0;
    // Bob's endpoint, from his card; the depositor's endpoint is a fresh key that names nobody.
    let card = bob.client().get("/v1/card").await.unwrap();
    let ParsedContact::Card(card) = ParsedContact::parse(card["card"].as_str().unwrap()).unwrap()
    else {
        panic!("not a card: {card}")
    };
    let hint = card.hints().clone();
    // Carol goes away (her mailbox keeps what comes meanwhile; online, she would fetch it at once).
    carol.stop().await;
    let anonymous = kith_net::Net::bind(
        rand::random(),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(kith_net::StaticDiscovery::default()),
    )
    .await
    .unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let secret_text = b"the plaintext only carol may read: 7f3a9c";
    let envelope = pair.seal(&carol_key, secret_text, &mut rng).unwrap();
    let token = pair.deposit_token(&carol_key, period);
    let Response::Deposited { id } = deposit(&anonymous, &hint, token, envelope.clone()).await
    else {
        panic!("a valid deposit was refused")
    };
    // The same envelope again (a depositor that lost the answer): the same id, held once.
    assert_eq!(
        deposit(&anonymous, &hint, token, envelope.clone()).await,
        Response::Deposited { id }
    );
    // Refused: a stranger's token, a token for another owner, a token of a past period, a made-up one.
    let stranger = AccountSecret::generate(&mut rng);
    let strangers_pair = PairKey::derive(&stranger, &carol_key).unwrap();
    let refused = [
        strangers_pair.deposit_token(&carol_key, period),
        pair.deposit_token(&account_of(&alice), period),
        pair.deposit_token(&carol_key, period - 2),
        [0x55; 32],
    ];
    for t in refused {
        assert_eq!(
            deposit(&anonymous, &hint, t, envelope.clone()).await,
            Response::Refused(Refusal::UnknownToken)
        );
    }
    // Not one of the size classes.
    assert_eq!(
        deposit(&anonymous, &hint, token, vec![1; 1000]).await,
        Response::Refused(Refusal::BadSize(1000))
    );

    // What bob's disk holds: the envelope under its token, and neither the text nor alice's account key.
    let store = kith_node::Profile::new(dir.path().join("bob"))
        .open_store(None)
        .unwrap();
    let (held, _) = store
        .mailbox_fetch(&carol_key, 0, 10, kith_node::node::unix_now() as i64 * 1000)
        .unwrap();
    drop(store);
    assert_eq!(held.len(), 1, "one deposit held once");
    assert_eq!((held[0].token, &held[0].envelope), (token, &envelope));
    let mut disk = vec![];
    for f in std::fs::read_dir(dir.path().join("bob")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("kith.db")
        {
            disk.extend(std::fs::read(&p).unwrap());
        }
    }
    let contains = |needle: &[u8]| disk.windows(needle.len()).any(|w| w == needle);
    // The store is encrypted at rest: not even the (sealed) envelope can be found in its files.
    assert!(!disk.is_empty());
    assert!(
        !contains(&envelope[..64]),
        "the envelope in clear on bob's disk"
    );
    assert!(!contains(secret_text), "plaintext on the mailbox's disk");
    assert!(
        !contains(account_of(&alice).as_bytes()),
        "the depositor's account key on the mailbox's disk"
    );
}

struct Trio {
    alice: Daemon,
    bob: Daemon,
    carol: Daemon,
    /// Alice's events.
    wa: kith::client::Watcher,
}

/// Alice and bob are contacts, so are bob and carol; carol keeps bob's mail, and alice knows it. Mail
/// goes to mailboxes after 1 s. `carol_args` are carol's extra daemon arguments.
async fn trio(dir: &Path, carol_args: Vec<String>) -> Trio {
    trio_with(dir, vec![], carol_args).await
}

/// [`trio`] with `all_args` for all three daemons.
async fn trio_with(dir: &Path, all_args: Vec<String>, mut carol_args: Vec<String>) -> Trio {
    let fast = || {
        let mut a = vec!["--mailbox-after=1".to_string()];
        a.extend(all_args.clone());
        a
    };
    carol_args.extend(all_args.clone());
    let alice = Daemon::spawn(exe(), &dir.join("alice"), "alice", None, fast())
        .await
        .unwrap();
    let bob = Daemon::spawn(exe(), &dir.join("bob"), "bob", None, fast())
        .await
        .unwrap();
    let carol = Daemon::spawn(exe(), &dir.join("carol"), "carol", None, carol_args)
        .await
        .unwrap();
    for (x, y) in [
        (&alice, &bob),
        (&bob, &alice),
        (&bob, &carol),
        (&carol, &bob),
    ] {
        introduce(x, y).await.unwrap();
    }
    let wa = alice.watcher().await.unwrap();
    // Alice and bob are connected (a first message is delivered), then bob names carol his mailbox.
    alice.client().send("bob", "hello").await.unwrap();
    assert!(
        wa.delivered_within("bob", 1, 20).await,
        "the first message was not delivered"
    );
    carol
        .client()
        .post("/v1/mailbox/host", json!({ "name": "bob" }))
        .await
        .unwrap();
    bob.client()
        .post("/v1/mailbox/use", json!({ "name": "carol" }))
        .await
        .unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(20), |w| w
            .any("mail_info", |e| e["from"] == "bob" && e["mailboxes"] == 1))
            .await,
        "alice did not hear of bob's mailbox"
    );
    Trio {
        alice,
        bob,
        carol,
        wa,
    }
}

async fn chat(d: &Daemon, peer: &str) -> Vec<serde_json::Value> {
    d.client()
        .get(&format!("/v1/chat/{peer}?limit=100000"))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Bob's received texts from alice, in the order shown.
async fn received(bob: &Daemon) -> Vec<String> {
    chat(bob, "alice")
        .await
        .iter()
        .filter(|m| m["outgoing"] == false)
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until bob has received as many as `want` from alice, and checks they are `want` (all, in order,
/// once).
async fn bob_has(bob: &Daemon, want: &[String], secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let got = received(bob).await;
        if got.len() >= want.len() || std::time::Instant::now() > deadline {
            assert_eq!(got, want, "bob's chat: all, in order, once");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every message alice sent bob is delivered.
async fn alice_sees_all_delivered(alice: &Daemon, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pending = chat(alice, "bob")
            .await
            .iter()
            .filter(|m| m["outgoing"] == true && m["state"] != "delivered")
            .count();
        if pending == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} not delivered on alice's side"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Alice writes `n` messages to bob (texts `prefix 000`, ...) while he is away, and waits until all are
/// deposited in his mailbox; returns the texts.
async fn write_while_bob_is_away(
    alice: &Daemon,
    wa: &kith::client::Watcher,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    // Bob is away once alice knows it: a stopped daemon closes its connections at once, but one that had
    // to be killed (a loaded machine: `Daemon::stop` kills after 10 s) is noticed only at the connection's
    // idle timeout, and until then alice's messages rightly wait for the direct path, not the mailbox.
    assert!(
        wa.wait_for(Duration::from_secs(120), |w| w
            .last_where("peer", |e| e["name"] == "bob")
            .is_none_or(|e| e["online"] == false))
            .await,
        "alice still sees bob online"
    );
    let before = wa.sum("mail_deposited", "messages");
    let sent = texts(prefix, n);
    for t in &sent {
        alice.client().send("bob", t).await.unwrap();
    }
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w
            .sum("mail_deposited", "messages")
            >= before + n as u64)
            .await,
        "deposited {} of {n}: {:?}",
        wa.sum("mail_deposited", "messages") - before,
        wa.last("mail_deposit_failed")
    );
    sent
}

/// `owner` and `mailbox` become contacts; the owner names it as its mailbox, then the mailbox agrees to
/// keep the owner's mail (in that order).
async fn keeps_mail_of(mailbox: &Daemon, owner: &Daemon) {
    introduce(owner, mailbox).await.unwrap();
    introduce(mailbox, owner).await.unwrap();
    owner
        .client()
        .post("/v1/mailbox/use", json!({ "name": mailbox.name }))
        .await
        .unwrap();
    mailbox
        .client()
        .post("/v1/mailbox/host", json!({ "name": owner.name }))
        .await
        .unwrap();
}

/// A daemon named `name` in `dir`, with no DHT at all.
async fn no_dht(dir: &Path, name: &str, args: Vec<String>) -> Daemon {
    Daemon::spawn(exe(), &dir.join(name), name, None, args)
        .await
        .unwrap()
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i:03}")).collect()
}

/// Bob is offline; alice sends 200 messages, they go to bob's mailbox (kept by carol), and alice goes
/// offline too. Bob comes back: he has all 200, in order, once. Alice comes back: all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_reach_an_offline_contact_through_his_mailbox() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        carol: _carol,
        wa,
    } = trio(dir.path(), vec![]).await;
    bob.stop().await;
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(write_while_bob_is_away(&alice, &wa, "offline", N).await)
        .collect();
    alice.stop().await;

    bob.start().await.unwrap();
    // Alice is offline: the mailbox is the only way they can come.
    bob_has(&bob, &want, 60).await;

    alice.start().await.unwrap();
    alice_sees_all_delivered(&alice, 60).await;
    // Still once each on bob's side after alice offered them again directly.
    assert_eq!(received(&bob).await, want);
}

/// The mailbox is SIGKILLed while deposits pour in, and restarted: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_killed_during_deposits_loses_and_doubles_nothing() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        mut carol,
        wa,
    } = trio(dir.path(), vec![]).await;
    bob.stop().await;
    for t in texts("k", N) {
        alice.client().send("bob", &t).await.unwrap();
    }
    // Kill carol once she holds some of them (read from her database beside her, as WAL allows).
    let carol_home = dir.path().join("carol");
    let owner = account_of(&bob);
    let held = || {
        let store = kith_node::Profile::new(&carol_home)
            .open_store(None)
            .unwrap();
        store
            .mailbox_fetch(&owner, 0, 10_000, kith_node::node::unix_now() as i64 * 1000)
            .map(|(items, _)| items.len())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held() < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no deposits reached carol"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    carol.kill();
    let at_kill = held();
    println!("carol killed holding {at_kill} of {N}");
    carol.start().await.unwrap();
    // Alice deposits the rest (and again those whose answers the kill swallowed).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while held() < N {
        assert!(
            std::time::Instant::now() < deadline,
            "carol holds {} of {N}; last failure {:?}",
            held(),
            wa.last("mail_deposit_failed")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(at_kill < N, "the kill came after the last deposit");
    assert_eq!(held(), N, "one envelope per message");
    // Someone captures a held deposit (to replay it later).
    let captured = {
        let store = kith_node::Profile::new(&carol_home)
            .open_store(None)
            .unwrap();
        let (items, _) = store
            .mailbox_fetch(&owner, 0, 1, kith_node::node::unix_now() as i64 * 1000)
            .unwrap();
        items[0].clone()
    };
    alice.stop().await;
    bob.start().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(texts("k", N))
        .collect();
    bob_has(&bob, &want, 60).await;
    assert!(
        wb.wait_for(Duration::from_secs(20), |_| held() == 0).await,
        "bob deletes what he stored: carol still holds {}",
        held()
    );
    // The replay: carol takes it (it is a valid envelope under a valid token), bob fetches it, and it
    // does not decrypt again (its message key is gone): shown once.
    let fetched = wb.sum("mail_fetched", "messages");
    let card = carol.client().get("/v1/card").await.unwrap();
    let ParsedContact::Card(card) = ParsedContact::parse(card["card"].as_str().unwrap()).unwrap()
    else {
        panic!("not a card: {card}")
    };
    let anonymous = kith_net::Net::bind(
        rand::random(),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(kith_net::StaticDiscovery::default()),
    )
    .await
    .unwrap();
    assert!(matches!(
        deposit(&anonymous, card.hints(), captured.token, captured.envelope).await,
        Response::Deposited { .. }
    ));
    assert!(
        wb.wait_for(Duration::from_secs(20), |_| held() == 0).await,
        "bob did not fetch the replay"
    );
    assert_eq!(
        wb.sum("mail_fetched", "messages"),
        fetched,
        "nothing new opened"
    );
    assert_eq!(received(&bob).await, want, "the replay is not shown");
}

/// No DHT at all, and the steps in the order a person may well take them: bob names his mailbox before
/// it agreed, alice adds bob before bob adds her (her first connection reaches him while she is still a
/// stranger to him). Alice must still learn bob's mailbox, and the mailbox must take her deposits: all
/// 30 messages written while bob is away reach him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_reaches_an_offline_contact_without_a_dht_whatever_the_order_of_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let fast = || vec!["--mailbox-after=1".to_string()];
    let mut alice = no_dht(dir.path(), "alice", fast()).await;
    let mut bob = no_dht(dir.path(), "bob", fast()).await;
    let mailbox = no_dht(dir.path(), "box", vec![]).await;
    // bob names the box before the box agreed...
    keeps_mail_of(&mailbox, &bob).await;
    // ...and alice adds bob first: her connection reaches bob while she is a stranger to him.
    let wb = bob.watcher().await.unwrap();
    introduce(&alice, &bob).await.unwrap();
    assert!(
        wb.wait_for(Duration::from_secs(30), |w| w.any("peer", |e| e["online"]
            == true
            && e["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("kith:"))
            && e["name"] != "box"))
            .await,
        "alice's first connection did not reach bob"
    );
    // (Alice's events from here on: bob's mail info may come as soon as he adds her.)
    let wa = alice.watcher().await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    alice.client().send("bob", "hello").await.unwrap();
    assert!(wa.delivered_within("bob", 1, 30).await);
    // Alice learns bob's mailbox over their connection (there is no DHT record to read it from).
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w
            .any("mail_info", |e| e["mailboxes"] == 1))
            .await,
        "alice never learned bob's mailbox: {:?}",
        wa.last("mail_info")
    );
    bob.stop().await;
    let mut want = vec!["hello".to_string()];
    want.extend(write_while_bob_is_away(&alice, &wa, "no dht", 30).await);
    // Alice's side says where they are: in bob's mailbox, not just "queued".
    let states: Vec<String> = chat(&alice, "bob")
        .await
        .iter()
        .filter(|m| {
            m["outgoing"] == true && m["text"].as_str().is_some_and(|t| t.starts_with("no dht"))
        })
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states.len(), 30);
    assert!(states.iter().all(|s| s == "in_mailbox"), "{states:?}");
    assert!(
        wa.wait_for(Duration::from_secs(10), |w| w
            .any("message_state", |e| e["state"] == "in_mailbox"))
            .await,
        "no in_mailbox state event"
    );
    alice.stop().await;
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
}

/// Bob's card carries his Olm keys and his mailbox: alice, who has only the card (handed over while bob is
/// away: no connection between them ever, no DHT), leaves mail in his mailbox, and he reads it when he is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_alone_is_enough_to_leave_mail() {
    let dir = tempfile::tempdir().unwrap();
    let fast = || vec!["--mailbox-after=1".to_string()];
    let mut alice = no_dht(dir.path(), "alice", fast()).await;
    let alice_card = alice.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.stop().await;
    let mut bob = no_dht(dir.path(), "bob", fast()).await;
    let mailbox = no_dht(dir.path(), "box", vec![]).await;
    let wbox = mailbox.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    keeps_mail_of(&mailbox, &bob).await;
    // Bob adds alice while she is away: the box gets a deposit token for her (one per contact but the box
    // itself).
    bob.client()
        .post(
            "/v1/contacts",
            json!({ "contact": alice_card, "name": "alice" }),
        )
        .await
        .unwrap();
    assert!(
        wbox.wait_for(Duration::from_secs(30), |w| w
            .any("mailbox_tokens", |e| e["tokens"] == 1))
            .await,
        "the box has no token for alice: {:?}",
        wbox.last("mailbox_tokens")
    );
    // Once the box told bob its endpoint keys, his card names it with them.
    assert!(
        wb.wait_for(Duration::from_secs(30), |w| w
            .any("card_changed", |e| e["mailboxes"] == 1 && e["keyed"] == 1))
            .await,
        "bob's card never named his mailbox with its keys: {:?}",
        wb.last("card_changed")
    );
    let bob_card = bob.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();
    let Ok(ParsedContact::Card(card)) = ParsedContact::parse(&bob_card) else {
        panic!("bob's card does not parse: {bob_card}");
    };
    assert!(
        card.mail()
            .is_some_and(|m| m.mailboxes.len() == 1 && !m.mailboxes[0].keys.is_empty()),
        "bob's card as served does not name his mailbox with its keys"
    );
    bob.stop().await;
    alice.start().await.unwrap();
    let wa = alice.watcher().await.unwrap();
    alice
        .client()
        .post(
            "/v1/contacts",
            json!({ "contact": bob_card, "name": "bob" }),
        )
        .await
        .unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(10), |w| w
            .any("mail_info", |e| e["mailboxes"] == 1 && e["keyed"] == 1))
            .await,
        "alice did not take bob's mailbox from his card: {:?}",
        wa.last("mail_info")
    );
    let want = write_while_bob_is_away(&alice, &wa, "card only", 10).await;
    alice.stop().await;
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
}

/// A mailbox that cannot be reached when its owner starts (asleep: its process is stopped, so it neither
/// answers nor notices anything) is reached later without a restart of either: the owner dials it again
/// until it answers, and fetches what it keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_unreachable_at_start_is_reached_later() {
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        carol,
        wa,
    } = trio(dir.path(), vec![]).await;
    bob.stop().await;
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(write_while_bob_is_away(&alice, &wa, "asleep", 10).await)
        .collect();
    alice.stop().await;
    // Carol's machine sleeps: SIGSTOP, so her sockets stay open and nothing answers.
    let carol_pid = carol.pid().unwrap().to_string();
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &carol_pid])
                .status()
                .unwrap()
                .success()
        )
    };
    signal("-STOP");
    bob.start().await.unwrap();
    // Bob's first dial to carol fails (after the dial timeout); his mailbox view says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v = bob.client().get("/v1/mailbox").await.unwrap();
        if v["my_mailboxes_reach"]["carol"]["error"].is_string() {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed dial reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        view["my_mailboxes_reach"]["carol"]["connected"], false,
        "{view}"
    );
    assert!(
        received(&bob).await.len() <= 1,
        "nothing came while carol slept"
    );
    // Carol wakes up. She dials no one (she never noticed she was away): bob must come to her.
    signal("-CONT");
    bob_has(&bob, &want, 90).await;
    let v = bob.client().get("/v1/mailbox").await.unwrap();
    assert_eq!(v["my_mailboxes_reach"]["carol"]["connected"], true, "{v}");
}

/// A full mailbox, an unreachable one, and a mailbox gone for good: the messages wait in the outbox and
/// go out later, through the mailbox once it takes them, or directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_unreachable_and_gone_mailboxes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        mut carol,
        wa,
    } = trio(
        dir.path(),
        vec!["--mailbox-per-contact-messages=150".into()],
    )
    .await;
    let mut want = vec!["hello".to_string()];

    // Full: carol takes 50 of 80 (a third of the contact's 150: one period's token) and says why she
    // refuses the rest.
    bob.stop().await;
    for t in texts("full", 80) {
        alice.client().send("bob", &t).await.unwrap();
        want.push(t);
    }
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w
            .sum("mail_deposited", "messages")
            >= 50
            && w.any("mail_deposit_failed", |e| e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("share of the mailbox is full"))))
            .await,
        "deposited {}; failure {:?}",
        wa.sum("mail_deposited", "messages"),
        wa.last("mail_deposit_failed")
    );
    assert_eq!(wa.sum("mail_deposited", "messages"), 50);
    // Alice goes away: bob gets what the mailbox holds (shown up to the first gap)...
    alice.stop().await;
    bob.start().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while received(&bob).await.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and the rest directly once alice is back.
    alice.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
    alice_sees_all_delivered(&alice, 60).await;

    // Unreachable: carol is down; alice keeps the messages and says why.
    let wa = alice.watcher().await.unwrap();
    carol.stop().await;
    bob.stop().await;
    for t in texts("unreachable", 20) {
        alice.client().send("bob", &t).await.unwrap();
        want.push(t);
    }
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w.any(
            "mail_deposit_failed",
            |e| e["reason"].as_str().unwrap().contains("unreachable")
        ))
        .await,
        "{:?}",
        wa.last("mail_deposit_failed")
    );
    // Carol is back: alice's next try deposits them; alice leaves; bob gets them from the mailbox.
    carol.start().await.unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w
            .sum("mail_deposited", "messages")
            >= 20)
            .await,
        "not deposited after carol came back: {:?}",
        wa.last("mail_deposit_failed")
    );
    alice.stop().await;
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;

    // Gone: carol's machine and profile are gone for good. Alice's messages wait, and go directly.
    carol.kill();
    std::fs::remove_dir_all(dir.path().join("carol")).unwrap();
    bob.stop().await;
    alice.start().await.unwrap();
    let wa = alice.watcher().await.unwrap();
    for t in texts("gone", 10) {
        alice.client().send("bob", &t).await.unwrap();
        want.push(t);
    }
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w
            .last("mail_deposit_failed")
            .is_some())
            .await,
        "no deposit failure while every mailbox is gone"
    );
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
    alice_sees_all_delivered(&alice, 60).await;
}

/// `kith mailbox`: an always-on machine of bob's own keeps his mail without being told whom for (any
/// contact that names it), and declines calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_mailbox_keeps_mail_for_the_contacts_that_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let fast = || vec!["--mailbox-after=1".to_string()];
    let mut alice = Daemon::spawn(exe(), &dir.path().join("alice"), "alice", None, fast())
        .await
        .unwrap();
    let mut bob = Daemon::spawn(exe(), &dir.path().join("bob"), "bob", None, fast())
        .await
        .unwrap();
    let mut always_on = Daemon::init(exe(), &dir.path().join("box"), "bobs-box").unwrap();
    always_on.command = vec!["mailbox".into(), "serve".into()];
    always_on.start().await.unwrap();
    let banner = std::fs::read_to_string(dir.path().join("box").join("daemon.out")).unwrap();
    assert!(banner.contains("kith mailbox ready"), "{banner}");
    for (x, y) in [
        (&alice, &bob),
        (&bob, &alice),
        (&bob, &always_on),
        (&always_on, &bob),
    ] {
        introduce(x, y).await.unwrap();
    }
    let wa = alice.watcher().await.unwrap();
    alice.client().send("bob", "hello").await.unwrap();
    assert!(wa.delivered_within("bob", 1, 20).await);
    // Only bob's side: the box keeps mail for any contact that names it.
    bob.client()
        .post("/v1/mailbox/use", json!({ "name": "bobs-box" }))
        .await
        .unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(20), |w| w
            .any("mail_info", |e| e["mailboxes"] == 1))
            .await
    );
    // A call to the box is declined, not left ringing.
    let wb = bob.watcher().await.unwrap();
    let call = bob
        .client()
        .post("/v1/calls", json!({ "to": "bobs-box", "input": "null" }))
        .await
        .unwrap();
    let id = call["call"].as_str().unwrap().to_owned();
    assert!(
        wb.wait_for(Duration::from_secs(20), |w| w
            .call_event("call_ended", Some(&id))
            .is_some_and(|e| e["outcome"] == "declined"))
            .await,
        "{:?}",
        wb.call_events()
    );
    bob.stop().await;
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(write_while_bob_is_away(&alice, &wa, "boxed", 30).await)
        .collect();
    alice.stop().await;
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
}

/// Endpoint keys rotate every period. Bob's mailbox told him its keys for the coming periods, and alice
/// learnt them from bob: after a rotation, with bob offline, she still reaches the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_reach_a_mailbox_whose_endpoint_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        carol,
        wa,
    } = trio_with(dir.path(), vec!["--period-minutes=1".into()], vec![]).await;
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w
            .any("mail_info", |e| e["from"] == "bob" && e["keyed"] == 1))
            .await,
        "alice did not learn the mailbox's coming keys: {:?}",
        wa.last("mail_info")
    );
    bob.stop().await;
    // Wait for carol's next period (her endpoint key changes), then write to bob.
    let wc = carol.watcher().await.unwrap();
    let rotated = wc.count("endpoint_rotated");
    assert!(
        wc.wait_for(Duration::from_secs(75), |w| w.count("endpoint_rotated")
            > rotated)
            .await,
        "carol's endpoint did not rotate"
    );
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(write_while_bob_is_away(&alice, &wa, "rotated", 5).await)
        .collect();
    alice.stop().await;
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
}

/// The receipt comes back by whichever path works: carol keeps alice's mail too, so bob, who read alice's
/// messages from his mailbox while she was away, sends his receipts into hers; alice comes back while bob is
/// away and sees them delivered. Carol's whole store, read after the run, holds no text and no account key
/// of either sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_come_back_through_the_senders_mailbox_which_reads_nothing() {
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let Trio {
        mut alice,
        mut bob,
        mut carol,
        wa,
    } = trio(dir.path(), vec![]).await;
    let wb = bob.watcher().await.unwrap();
    keeps_mail_of(&carol, &alice).await;
    assert!(
        wb.wait_for(Duration::from_secs(20), |w| w
            .any("mail_info", |e| e["from"] == "alice" && e["mailboxes"] == 1))
            .await,
        "bob did not hear of alice's mailbox"
    );
    let (alice_key, bob_key) = (account_of(&alice), account_of(&bob));
    bob.stop().await;
    let want: Vec<String> = std::iter::once("hello".to_string())
        .chain(write_while_bob_is_away(&alice, &wa, "secret words", N).await)
        .collect();
    alice.stop().await;
    let carol_home = dir.path().join("carol");
    let held = |owner: &AccountKey| {
        let store = kith_node::Profile::new(&carol_home)
            .open_store(None)
            .unwrap();
        store
            .mailbox_fetch(owner, 0, 10_000, kith_node::node::unix_now() as i64 * 1000)
            .map(|(items, _)| items)
            .unwrap_or_default()
    };
    let held_for = |owner: &AccountKey| held(owner).len();
    // What carol holds names neither sender: no account key in any envelope or token.
    let names_nobody = |items: Vec<kith_core::mailbox::Held>| {
        assert!(!items.is_empty());
        for h in items {
            for key in [alice_key.as_bytes(), bob_key.as_bytes()] {
                assert!(!h.envelope.windows(32).any(|w| w == key.as_slice()));
                assert_ne!(&h.token, key);
            }
        }
    };
    names_nobody(held(&bob_key));
    bob.start().await.unwrap();
    bob_has(&bob, &want, 60).await;
    // Bob's receipts wait at carol's for alice.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held_for(&alice_key) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no receipts deposited for alice"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    names_nobody(held(&alice_key));
    bob.stop().await;
    alice.start().await.unwrap();
    // Bob is away: the receipts can only have come through alice's mailbox.
    alice_sees_all_delivered(&alice, 60).await;
    carol.stop().await;
    let mut disk = vec![];
    for f in std::fs::read_dir(dir.path().join("carol")).unwrap() {
        let p = f.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("kith.db")
        {
            disk.extend(std::fs::read(&p).unwrap());
        }
    }
    let contains = |needle: &[u8]| disk.windows(needle.len()).any(|w| w == needle);
    // (Carol knows alice and bob as her contacts, so their keys are in her contact list; what she held
    // for them was checked above.)
    assert!(
        !contains(b"secret words"),
        "plaintext on the mailbox's disk"
    );
}
