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
    let carol = Daemon::spawn(exe(), &dir.path().join("carol"), "carol", None, vec![])
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
            .last("mail_info")
            .is_some_and(|e| e["from"] == "carol" && e["mailboxes"] == 1))
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
    let pair = PairKey::derive(&alice_id.account, &carol_key).unwrap();
    let period = kith_core::blind::period_at(kith_node::node::unix_now(), 1440).0;
    // Bob's endpoint, from his card; the depositor's endpoint is a fresh key that names nobody.
    let card = bob.client().get("/v1/card").await.unwrap();
    let ParsedContact::Card(card) = ParsedContact::parse(card["card"].as_str().unwrap()).unwrap()
    else {
        panic!("not a card: {card}")
    };
    let hint = card.hints().clone();
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
    let store =
        kith_store::Store::open(&dir.path().join("bob").join(kith_node::profile::DB_FILE)).unwrap();
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
    assert!(contains(&envelope[..64]), "the envelope is on bob's disk");
    assert!(!contains(secret_text), "plaintext on the mailbox's disk");
    assert!(
        !contains(account_of(&alice).as_bytes()),
        "the depositor's account key on the mailbox's disk"
    );
}
