//! Adversarial peers against real daemons (issue 21): what a removed contact, a stranger who knows an
//! endpoint, or a peer that connects and says nothing can learn or hold up.

use kith::process::{Daemon, introduce, spawn_all};
use kith_core::hello::Hello;
use kith_core::{AccountKey, Address, ContactCard, EndpointCert, Hints};
use kith_net::{Net, Session, StaticDiscovery};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn account_of(d: &Daemon) -> AccountKey {
    let a: Address = d.address().unwrap().parse().unwrap();
    a.account()
}

async fn own_card(d: &Daemon) -> ContactCard {
    let card = d.client().get("/v1/card").await.unwrap();
    card["card"].as_str().unwrap().parse().unwrap()
}

/// The card `d` holds of its contact `name`.
async fn card_held(d: &Daemon, name: &str) -> ContactCard {
    let list = d.client().get("/v1/contacts").await.unwrap();
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .expect("the contact");
    c["card"].as_str().unwrap().parse().unwrap()
}

/// A real kith dial to `target` at `hint`, from a fresh endpoint bound on `bind`, with a valid hello of
/// the profile at `home` (its account and device keys, as its daemon would send): the session shows
/// what the target answers that identity.
async fn dial_as(
    home: &Path,
    bind: &str,
    target: AccountKey,
    hint: &Hints,
) -> Result<Session, kith_net::DialError> {
    let id = kith_node::Profile::new(home).unlock(None).unwrap();
    let net = Net::bind(
        rand::random(),
        bind.parse().unwrap(),
        Arc::new(StaticDiscovery::default()),
    )
    .await
    .unwrap();
    let now = kith_node::node::unix_now();
    let hello = Hello {
        account: id.account_key,
        device_cert: id.device_cert.clone(),
        endpoint_cert: EndpointCert::issue(&id.device, net.endpoint_key(), now - 60, now + 3600),
        card: None,
    };
    net.dial_hint(target, hint, &hello, now).await
}

/// What a dialer learnt of `owner` from the card in its hello: contact key, endpoint, addresses.
fn learnt(session: &Session) -> (Option<[u8; 32]>, Option<kith_core::EndpointKey>, usize) {
    match session.peer.card() {
        None => (None, None, 0),
        Some(c) => (
            c.hints().contact_key,
            c.hints().endpoint,
            c.hints().direct.len(),
        ),
    }
}

/// Issue 21, point 1: a stranger who knows a contact endpoint (a relay operator saw it, an old card)
/// and dials it with a valid hello gets no more than the public card: not the contact key, the contact
/// endpoint or an address. With requests off it is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_at_the_contact_endpoint_learns_nothing_a_contact_would() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(exe(), &dir.path().join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    let shy = Daemon::spawn(
        exe(),
        &dir.path().join("shy"),
        "shy",
        None,
        vec!["--no-requests".into()],
    )
    .await
    .unwrap();
    let mallory = dir.path().join("mallory");
    Daemon::init(exe(), &mallory, "mallory").unwrap();

    let card = own_card(&alice).await;
    assert!(card.hints().contact_key.is_some() && !card.hints().direct.is_empty());
    let session = dial_as(&mallory, "127.0.0.1:0", account_of(&alice), card.hints())
        .await
        .expect("requests are on: the stranger's hello is answered");
    let (key, endpoint, direct) = learnt(&session);
    assert_eq!(key, None, "the contact key went to a stranger");
    assert_ne!(
        endpoint,
        card.hints().endpoint,
        "the contact endpoint was named"
    );
    assert_eq!(direct, 0, "addresses went to a stranger");

    let card = own_card(&shy).await;
    let refused = dial_as(&mallory, "127.0.0.1:0", account_of(&shy), card.hints())
        .await
        .err()
        .expect("requests are off: a stranger is refused");
    assert!(
        refused.to_string().contains("no contact requests"),
        "{refused}"
    );
}

/// Issue 21, point 1: a removed contact that dials us again learns no new contact key, endpoint or
/// address: the endpoint it knew is gone at once (not at the end of the period), and at the new one it
/// would be answered as a stranger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_contact_learns_no_new_key_endpoint_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = spawn_all(exe(), dir.path(), &["alice", "bob", "carol"], None, vec![])
        .await
        .unwrap();
    let carol = all.pop().unwrap();
    let mut bob = all.pop().unwrap();
    let alice = all.pop().unwrap();
    for (x, y) in [
        (&alice, &bob),
        (&bob, &alice),
        (&alice, &carol),
        (&carol, &alice),
    ] {
        introduce(x, y).await.unwrap();
    }
    let wb = bob.watcher().await.unwrap();
    let wc = carol.watcher().await.unwrap();
    let seq = bob.client().send("alice", "before").await.unwrap();
    assert!(wb.delivered_within("alice", seq, 60).await);
    // What bob knows of alice, as her contact.
    let known = card_held(&bob, "alice").await;
    let bob_home = dir.path().join("bob");
    bob.stop().await;

    let wa = alice.watcher().await.unwrap();
    alice
        .client()
        .delete("/v1/contacts/bob")
        .await
        .expect("removed");
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w.count("endpoint_rotated") > 0)
            .await,
        "the contact endpoint moves on when a contact is removed"
    );
    // The new key may first listen on a stand-in port (the old socket still draining) and move back to
    // the port the card had before, issuing the card again (`card_changed`) when it does.
    let issued = wa.count("card_changed");
    let mut now = own_card(&alice).await;
    if now.hints().direct != known.hints().direct {
        assert!(
            wa.wait_for(Duration::from_secs(90), |w| w.count("card_changed")
                > issued)
                .await
        );
        now = own_card(&alice).await;
    }
    assert_eq!(now.hints().direct, known.hints().direct, "the same port");
    assert_ne!(now.hints().contact_key, known.hints().contact_key);
    assert_ne!(now.hints().endpoint, known.hints().endpoint);

    // Bob dials the endpoint he knew: nothing answers as alice there.
    let old = dial_as(&bob_home, "127.0.0.1:0", account_of(&alice), known.hints()).await;
    assert!(old.is_err(), "the old contact endpoint still answers");
    // Even at the new endpoint (which bob could only guess), he is a stranger now.
    let session = dial_as(&bob_home, "127.0.0.1:0", account_of(&alice), now.hints())
        .await
        .expect("requests are on: answered as a stranger");
    let (key, endpoint, direct) = learnt(&session);
    assert_eq!(key, None, "the new contact key went to a removed contact");
    assert_ne!(endpoint, now.hints().endpoint);
    assert_eq!(direct, 0);

    // The remaining contact follows to the new endpoint with the new key.
    let seq = carol.client().send("alice", "after").await.unwrap();
    assert!(wc.delivered_within("alice", seq, 60).await);
    let carol_knows = card_held(&carol, "alice").await;
    assert_eq!(carol_knows.hints().contact_key, now.hints().contact_key);
}

/// Issue 21, point 2: fifty connections that complete QUIC and then say nothing, from one address, do
/// not stop a message from another: each handshake runs apart, one source holds at most a few slots
/// (the rest are refused at once), and the message arrives while the silent ones are still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_silent_connections_do_not_hold_up_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Daemon::spawn(exe(), &dir.path().join("alice"), "alice", None, vec![])
        .await
        .unwrap();
    let bob = Daemon::spawn(exe(), &dir.path().join("bob"), "bob", None, vec![])
        .await
        .unwrap();
    let card = own_card(&alice).await;
    let hint = card.hints().clone();
    // The silent peer, on another loopback address than bob's.
    let silent = Net::bind(
        rand::random(),
        "127.0.0.2:0".parse().unwrap(),
        Arc::new(StaticDiscovery::default()),
    )
    .await
    .unwrap();
    let attempts =
        futures_util::future::join_all((0..50).map(|_| silent.connect_raw(&hint, kith_net::ALPN)));
    // Before the fix one handshake at a time: the second QUIC handshake waited for the first one's
    // 10 s hello timeout, and all fifty took minutes.
    let results = tokio::time::timeout(Duration::from_secs(60), attempts)
        .await
        .expect("fifty connection attempts end long before their handshakes would time out");
    let open: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    assert!(
        (2..=kith_node::admission::HANDSHAKES_PER_SOURCE).contains(&open.len()),
        "{} silent connections were let in at once",
        open.len()
    );

    let wb = bob.watcher().await.unwrap();
    introduce(&bob, &alice).await.unwrap();
    let sent = Instant::now();
    let seq = bob.client().send("alice", "through").await.unwrap();
    assert!(wb.delivered_within("alice", seq, 120).await);
    let took = sent.elapsed();
    let still_open = open.iter().filter(|c| c.close_reason().is_none()).count();
    println!(
        "delivered {} ms after sending, with {still_open} of {} silent handshakes still open",
        took.as_millis(),
        open.len()
    );
    let requests: Value = alice.client().get("/v1/requests").await.unwrap();
    assert_eq!(requests[0]["messages"][0]["text"], json!("through"));
}
