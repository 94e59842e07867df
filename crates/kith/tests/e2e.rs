//! End to end with real processes: daemons on loopback driven through their control API.

use kith::demo::check_history;
use kith::process::{Daemon, introduce};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

async fn pair(dir: &Path) -> (Daemon, Daemon) {
    let mut a = Daemon::init(exe(), &dir.join("alice"), "alice").unwrap();
    let mut b = Daemon::init(exe(), &dir.join("bob"), "bob").unwrap();
    a.start().await.unwrap();
    b.start().await.unwrap();
    introduce(&a, &b).await.unwrap();
    introduce(&b, &a).await.unwrap();
    (a, b)
}

async fn outgoing_states(d: &Daemon, peer: &str) -> Vec<(String, String)> {
    let chat = d
        .client()
        .get(&format!("/v1/chat/{peer}?limit=100000"))
        .await
        .unwrap();
    chat.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["outgoing"].as_bool() == Some(true))
        .map(|m| {
            (
                m["text"].as_str().unwrap().to_owned(),
                m["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn outgoing_seqs_not_delivered(d: &Daemon, peer: &str) -> Vec<u64> {
    let chat = d
        .client()
        .get(&format!("/v1/chat/{peer}?limit=100000"))
        .await
        .unwrap();
    chat.as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["outgoing"].as_bool() == Some(true) && m["state"].as_str() != Some("delivered")
        })
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// 1000 messages each way; the receiver is SIGKILLed mid-stream and restarted; afterwards both histories
/// hold exactly the 2000 messages, in order, all delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_each_way_survive_sigkill_of_the_receiver() {
    const N: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut bob) = pair(dir.path()).await;
    let wa = alice.watcher().await.unwrap();

    let a_client = alice.client().clone();
    let alice_sender = tokio::spawn(async move {
        let mut seqs = vec![];
        for i in 0..N {
            seqs.push(a_client.send("bob", &format!("a {i}")).await.unwrap());
        }
        seqs
    });
    // Bob writes too, concurrently, until he is killed.
    let b_client = bob.client().clone();
    let bob_sender = tokio::spawn(async move {
        let mut seqs = vec![];
        for i in 0..N {
            match b_client.send("alice", &format!("b {i}")).await {
                Ok(seq) => seqs.push(seq),
                Err(_) => break, // bob is gone; the rest is sent after his restart
            }
        }
        seqs
    });
    // Kill bob while alice's stream is flowing into him: as soon as a first part has been delivered.
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| (1..=N as u64)
            .filter(|s| w.delivered_at("bob", *s).is_some())
            .count()
            >= 100)
            .await,
        "alice's messages did not start flowing"
    );
    bob.kill();
    let delivered_at_kill = (1..=N as u64)
        .filter(|s| wa.delivered_at("bob", *s).is_some())
        .count();
    assert!(
        delivered_at_kill < N,
        "the kill must happen mid-stream (delivered {delivered_at_kill} of {N})"
    );
    bob.start().await.unwrap();
    // Subscribe first, then ask the store what is still undelivered: each of those will show up as an event.
    let sent_before = bob_sender.await.unwrap().len();
    // A send cut by the kill may have been stored without its reply: bob's own history is the authority.
    let stored = outgoing_states(&bob, "alice").await.len();
    assert!(stored >= sent_before);
    let mut bob_seqs: Vec<u64> = (1..=stored as u64).collect();
    let wb_after = bob.watcher().await.unwrap();
    let mut bob_waiting: Vec<u64> = outgoing_seqs_not_delivered(&bob, "alice").await;
    for i in stored..N {
        let seq = bob.client().send("alice", &format!("b {i}")).await.unwrap();
        bob_seqs.push(seq);
        bob_waiting.push(seq);
    }
    let alice_seqs = alice_sender.await.unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(180), |w| w
            .delivered_count("bob", &alice_seqs)
            == N)
            .await,
        "alice -> bob: only {} of {N} delivered",
        wa.delivered_count("bob", &alice_seqs)
    );
    let bob_done =
        |w: &kith::client::Watcher| w.delivered_count("alice", &bob_waiting) == bob_waiting.len();
    if !wb_after.wait_for(Duration::from_secs(180), bob_done).await {
        let missing: Vec<u64> = bob_waiting
            .iter()
            .copied()
            .filter(|s| wb_after.delivered_at("alice", *s).is_none())
            .collect();
        panic!(
            "bob -> alice: {} not delivered (first {:?}); bob status {}; alice status {}",
            missing.len(),
            &missing[..missing.len().min(10)],
            bob.client().get("/v1/status").await.unwrap(),
            alice.client().get("/v1/status").await.unwrap()
        );
    }

    let a_texts: Vec<String> = (0..N).map(|i| format!("a {i}")).collect();
    let b_texts: Vec<String> = (0..N).map(|i| format!("b {i}")).collect();
    check_history(&bob, "alice", &a_texts).await.unwrap();
    check_history(&alice, "bob", &b_texts).await.unwrap();
    for (d, peer, texts) in [(&alice, "bob", &a_texts), (&bob, "alice", &b_texts)] {
        let out = outgoing_states(d, peer).await;
        assert_eq!(
            out.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
            *texts,
            "{}'s outgoing history",
            d.name
        );
        assert!(
            out.iter().all(|(_, s)| s == "delivered"),
            "{}: every message delivered",
            d.name
        );
        let chat = d
            .client()
            .get(&format!("/v1/chat/{peer}?limit=100000"))
            .await
            .unwrap();
        assert_eq!(
            chat.as_array().unwrap().len(),
            2 * N,
            "{}'s history holds exactly 2000 messages",
            d.name
        );
    }
    let status = alice.client().get("/v1/status").await.unwrap();
    assert_eq!(status["outbox"], json!(0));
}

/// A stranger's message arrives as a contact request, not as chat; accepting turns it into a chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_messages_arrive_as_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Daemon::init(exe(), &dir.path().join("alice"), "alice").unwrap();
    let mut mallory = Daemon::init(exe(), &dir.path().join("mallory"), "Mallory").unwrap();
    alice.start().await.unwrap();
    mallory.start().await.unwrap();
    introduce(&mallory, &alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wm = mallory.watcher().await.unwrap();
    let seq = mallory
        .client()
        .send("alice", "hello, may I?")
        .await
        .unwrap();
    assert!(wm.delivered_within("alice", seq, 30).await);
    let requests = alice.client().get("/v1/requests").await.unwrap();
    let list = requests.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], json!("Mallory"));
    assert_eq!(list[0]["messages"][0]["text"], json!("hello, may I?"));
    // Not a chat: there is no contact of that name.
    let err = alice.client().get("/v1/chat/Mallory").await.unwrap_err();
    assert!(err.to_string().contains("no contact named"), "{err}");
    assert!(
        alice
            .client()
            .get("/v1/contacts")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let accepted = alice
        .client()
        .post(
            "/v1/requests/accept",
            json!({ "request": "Mallory", "name": "mal" }),
        )
        .await
        .unwrap();
    assert_eq!(accepted["name"], json!("mal"));
    let chat = alice.client().get("/v1/chat/mal").await.unwrap();
    assert_eq!(chat[0]["text"], json!("hello, may I?"));
    assert!(
        alice
            .client()
            .get("/v1/requests")
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let _ = wa;
}

/// A burst from a stranger beyond the rate limit is not stored (and so not acknowledged) at first; the
/// sender keeps it queued and nothing is lost once the recipient accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_bursts_are_rate_limited_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = Daemon::init(exe(), &dir.path().join("alice"), "alice").unwrap();
    let mut mallory = Daemon::init(exe(), &dir.path().join("mallory"), "Mallory").unwrap();
    alice.start().await.unwrap();
    mallory.start().await.unwrap();
    introduce(&mallory, &alice).await.unwrap();
    let wm = mallory.watcher().await.unwrap();
    let mut seqs = vec![];
    for i in 0..60 {
        seqs.push(
            mallory
                .client()
                .send("alice", &format!("spam {i}"))
                .await
                .unwrap(),
        );
    }
    // The per-stranger burst is 20: exactly those are stored and acknowledged.
    assert!(
        wm.wait_for(Duration::from_secs(30), |w| w
            .delivered_count("alice", &seqs)
            >= 20)
            .await
    );
    let requests = alice.client().get("/v1/requests").await.unwrap();
    let stored = requests[0]["messages"].as_array().unwrap().len();
    assert_eq!(stored, 20, "only the burst allowance is stored");
    assert_eq!(
        wm.delivered_count("alice", &seqs),
        20,
        "the rest is not acknowledged"
    );
    let status = mallory.client().get("/v1/status").await.unwrap();
    assert_eq!(
        status["outbox"],
        json!(40),
        "the sender keeps the rest queued"
    );
    // Once accepted, the limit no longer applies and the queued messages arrive in order.
    alice
        .client()
        .post("/v1/requests/accept", json!({ "request": "Mallory" }))
        .await
        .unwrap();
    let wa = alice.watcher().await.unwrap();
    assert!(
        wm.wait_for(Duration::from_secs(120), |w| w
            .delivered_count("alice", &seqs)
            == 60)
            .await
    );
    let texts: Vec<String> = (0..60).map(|i| format!("spam {i}")).collect();
    check_history(&alice, "Mallory", &texts).await.unwrap();
    let _: Value = json!(wa.received("Mallory").len());
}
