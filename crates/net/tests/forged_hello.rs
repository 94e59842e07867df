//! Real QUIC connections on loopback where one side forges a link of the chain account -> device ->
//! endpoint. The honest side must drop the peer, say why in its log and in the close frame, and reveal
//! nothing about itself.

use kith_core::hello::{Hello, HelloError};
use kith_core::{AccountSecret, DeviceCert, DeviceSecret, EndpointCert, EndpointKey, Hints};
use kith_net::{DialError, Net, SessionError, StaticDiscovery};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::io::Write;
use std::sync::{Arc, Mutex};

struct Party {
    account: AccountSecret,
    device: DeviceSecret,
    endpoint_secret: [u8; 32],
}

fn party(rng: &mut StdRng) -> Party {
    let mut endpoint_secret = [0u8; 32];
    rng.fill_bytes(&mut endpoint_secret);
    Party {
        account: AccountSecret::generate(rng),
        device: DeviceSecret::generate(rng),
        endpoint_secret,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn honest_hello(p: &Party, endpoint: EndpointKey) -> Hello {
    Hello {
        account: p.account.public(),
        device_cert: DeviceCert::issue(&p.account, p.device.public(), now()),
        endpoint_cert: EndpointCert::issue(&p.device, endpoint, now() - 60, now() + 3600),
        card: None,
    }
}

/// Binds `p`'s endpoint on loopback.
async fn bind(p: &Party, disc: &Arc<StaticDiscovery>) -> Net {
    Net::bind(
        p.endpoint_secret,
        "127.0.0.1:0".parse().unwrap(),
        disc.clone(),
    )
    .await
    .unwrap()
}

/// Where `net` can be reached.
fn hints_of(net: &Net) -> Hints {
    Hints {
        endpoint: Some(net.endpoint_key()),
        direct: net.local_addrs(),
        relays: vec![],
        dht: vec![],
        contact_key: None,
    }
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Alice accepts; Mallory dials with `forge(mallory, victim, mallory's endpoint)`'s hello.
async fn attempt(
    seed: u64,
    forge: impl Fn(&Party, &Party, EndpointKey) -> Hello,
) -> (SessionError, DialError, String) {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mut rng = StdRng::seed_from_u64(seed);
    let (alice, mallory, victim) = (party(&mut rng), party(&mut rng), party(&mut rng));
    let disc = Arc::new(StaticDiscovery::default());
    let a = bind(&alice, &disc).await;
    let m = bind(&mallory, &disc).await;
    disc.insert(alice.account.public(), hints_of(&a));
    let a_hello = honest_hello(&alice, a.endpoint_key());
    let forged = forge(&mallory, &victim, m.endpoint_key());
    let accept = tokio::spawn({
        let a = a.clone();
        async move {
            a.accept(&a_hello, now)
                .await
                .unwrap()
                .err()
                .expect("the forged hello must be refused")
        }
    });
    let dial = m
        .dial(alice.account.public(), &forged, now())
        .await
        .err()
        .expect("the forger gets no session");
    let refused = accept.await.unwrap();
    a.close().await;
    m.close().await;
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (refused, dial, log)
}

#[track_caller]
fn check(refused: SessionError, dial: DialError, log: String, expected: HelloError) {
    match refused {
        SessionError::Hello(e) => assert_eq!(e, expected),
        other => panic!("expected {expected:?}, got {other:?}"),
    }
    assert!(
        log.contains("hello rejected") && log.contains(&expected.to_string()),
        "logged reason: {log}"
    );
    // The forger learns the reason from the close frame, and nothing about the acceptor's identity.
    let dial = dial.to_string();
    assert!(
        dial.contains(&expected.to_string()),
        "close reason reaches the dialer: {dial}"
    );
}

#[tokio::test]
async fn forged_account_link_is_dropped() {
    // Mallory claims the victim's account but can only show a device cert signed by her own account.
    let (r, d, log) = attempt(1, |m, v, ep| {
        let mut h = honest_hello(m, ep);
        h.account = v.account.public();
        h
    })
    .await;
    check(r, d, log, HelloError::DeviceCertWrongAccount);

    // Or she edits the cert to name the victim: the account signature no longer verifies.
    let (r, d, log) = attempt(2, |m, v, ep| {
        let mut h = honest_hello(m, ep);
        h.account = v.account.public();
        h.device_cert.account = v.account.public();
        h
    })
    .await;
    check(r, d, log, HelloError::DeviceCertBadSignature);
}

#[tokio::test]
async fn forged_device_link_is_dropped() {
    // The victim's genuine device cert, with an endpoint cert signed by Mallory's device.
    let (r, d, log) = attempt(3, |m, v, ep| {
        let mut h = honest_hello(v, ep);
        h.endpoint_cert = EndpointCert::issue(&m.device, ep, now() - 60, now() + 3600);
        h
    })
    .await;
    check(r, d, log, HelloError::EndpointCertWrongDevice);

    let (r, d, log) = attempt(4, |m, v, ep| {
        let mut h = honest_hello(v, ep);
        h.endpoint_cert = EndpointCert::issue(&m.device, ep, now() - 60, now() + 3600);
        h.endpoint_cert.device = v.device.public();
        h
    })
    .await;
    check(r, d, log, HelloError::EndpointCertBadSignature);
}

#[tokio::test]
async fn forged_endpoint_link_is_dropped() {
    // A replay: the victim's complete, valid hello for the victim's endpoint, sent from Mallory's endpoint.
    let (r, d, log) = attempt(5, |_, v, _| {
        let victim_endpoint = EndpointKey::from_bytes(
            *DeviceSecret::from_bytes(&v.endpoint_secret)
                .public()
                .as_bytes(),
        )
        .unwrap();
        honest_hello(v, victim_endpoint)
    })
    .await;
    check(r, d, log, HelloError::EndpointMismatch);

    // An expired endpoint certificate.
    let (r, d, log) = attempt(6, |m, _, ep| {
        let mut h = honest_hello(m, ep);
        h.endpoint_cert = EndpointCert::issue(&m.device, ep, now() - 7200, now() - 3600);
        h
    })
    .await;
    check(r, d, log, HelloError::EndpointCertExpired);
}

#[tokio::test]
async fn honest_peers_connect_and_an_impostor_endpoint_is_caught_by_the_dialer() {
    let mut rng = StdRng::seed_from_u64(7);
    let (alice, bob, mallory) = (party(&mut rng), party(&mut rng), party(&mut rng));
    let disc = Arc::new(StaticDiscovery::default());
    let a = bind(&alice, &disc).await;
    let b = bind(&bob, &disc).await;
    let m = bind(&mallory, &disc).await;
    disc.insert(alice.account.public(), hints_of(&a));
    // Bob's hints point at Mallory's endpoint (a poisoned card): Alice must notice she reached the wrong account.
    disc.insert(bob.account.public(), hints_of(&m));
    let a_hello = honest_hello(&alice, a.endpoint_key());
    let b_hello = honest_hello(&bob, b.endpoint_key());
    let m_hello = honest_hello(&mallory, m.endpoint_key());
    let m2 = m.clone();
    tokio::spawn(async move {
        // Mallory answers with her own (valid) chain and keeps the connection open.
        let _session = m2.accept(&m_hello, now).await;
        std::future::pending::<()>().await;
    });
    match a.dial(bob.account.public(), &a_hello, now()).await {
        Err(DialError::Session(SessionError::Hello(HelloError::UnexpectedAccount))) => {}
        Err(e) => panic!("expected UnexpectedAccount, got {e}"),
        Ok(_) => panic!("expected UnexpectedAccount, got a session"),
    }
    // And the honest case.
    let alice_key = alice.account.public();
    let a2 = a.clone();
    let acc = tokio::spawn(async move {
        a2.accept(&honest_hello(&alice, a2.endpoint_key()), now)
            .await
            .unwrap()
            .unwrap()
    });
    let session = b.dial(alice_key, &b_hello, now()).await.unwrap();
    let accepted = acc.await.unwrap();
    assert_eq!(accepted.peer.account(), bob.account.public());
    assert_eq!(accepted.peer.device(), bob.device.public());
    assert_eq!(session.peer.account(), alice_key);
}

/// After a valid handshake, a frame of an unknown kind and an oversized frame are refused with a clear
/// error and the connection is closed with that reason; nothing panics.
#[tokio::test]
async fn unknown_and_oversized_frames_close_the_connection() {
    use kith_core::wire::{FrameError, MAX_FRAME_LEN, WIRE_VERSION};
    let bad_frames: Vec<(Vec<u8>, FrameError)> = vec![
        (
            [&3u32.to_be_bytes()[..], &[WIRE_VERSION, 77, 0]].concat(),
            FrameError::UnknownKind(77),
        ),
        (
            (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec(),
            FrameError::TooLarge {
                len: MAX_FRAME_LEN + 5,
                max: MAX_FRAME_LEN,
            },
        ),
        (
            [&3u32.to_be_bytes()[..], &[9, 2, 0]].concat(),
            FrameError::UnsupportedVersion(9),
        ),
    ];
    for (i, (bytes, expected)) in bad_frames.into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(100 + i as u64);
        let (alice, bob) = (party(&mut rng), party(&mut rng));
        let disc = Arc::new(StaticDiscovery::default());
        let a = bind(&alice, &disc).await;
        let b = bind(&bob, &disc).await;
        disc.insert(alice.account.public(), hints_of(&a));
        let a_hello = honest_hello(&alice, a.endpoint_key());
        let a2 = a.clone();
        let reader = tokio::spawn(async move {
            let session = a2.accept(&a_hello, now).await.unwrap().unwrap();
            let (mut r, _w) = session.split();
            r.next().await
        });
        let session = b
            .dial(
                alice.account.public(),
                &honest_hello(&bob, b.endpoint_key()),
                now(),
            )
            .await
            .unwrap();
        let conn = session.conn.clone();
        let (_r, mut w) = session.split();
        w.send_raw(&bytes).await.unwrap();
        match reader.await.unwrap() {
            Err(SessionError::Frame(e)) => assert_eq!(e, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
        let reason = conn.closed().await.to_string();
        assert!(
            reason.contains(&expected.to_string()),
            "close reason: {reason}"
        );
    }
}
