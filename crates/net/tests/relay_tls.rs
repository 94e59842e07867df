//! Relays over TLS on loopback, through a real iroh relay server: a self-signed certificate pinned by the
//! URL, a certificate from a private authority given as an extra root, and the ways a relay is refused
//! (a wrong pin, no pin and no authority), each with the reason a user can act on.

use iroh_relay::server::{CertConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use kith_core::Hints;
use kith_net::relay_tls::{self, ProbeError, pin_of, pinned_url};
use kith_net::{Incoming, Net, NetOptions, StaticDiscovery, serve_mailbox};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

/// Long enough for a relay handshake on a loaded machine; the tests wait on the endpoint's own
/// notifications and end as soon as the state they wait for is reached.
const WITHIN: Duration = Duration::from_secs(20);

async fn tls_relay(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (Server, u16) {
    let server_config =
        rustls::ServerConfig::builder_with_provider(iroh_relay::tls::default_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let mut relay = RelayConfig::new(([127, 0, 0, 1], 0));
    relay.tls = Some(TlsConfig::new(
        ([127, 0, 0, 1], 0),
        CertConfig::Manual { server_config },
    ));
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    let server = Server::spawn(config).await.unwrap();
    let port = server.https_addr().unwrap().port();
    (server, port)
}

/// A relay with a self-signed certificate whose name has nothing to do with the URL's host: only the pin
/// can make it trusted. Returns the relay, its port and the pin.
async fn self_signed_relay() -> (Server, u16, [u8; 32]) {
    let made = rcgen::generate_simple_self_signed(vec!["kith-relay.invalid".to_string()]).unwrap();
    let der = made.cert.der().clone();
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der()).unwrap();
    let (server, port) = tls_relay(vec![der.clone()], key).await;
    (server, port, pin_of(der.as_ref()))
}

async fn bind(seed: u8, relays: Vec<String>, extra_roots: Vec<Vec<u8>>) -> Net {
    let relay_only = !relays.is_empty();
    Net::bind_with(
        [seed; 32],
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(StaticDiscovery::default()),
        &NetOptions {
            relays,
            relay_only,
            extra_roots,
        },
    )
    .await
    .unwrap()
}

async fn connected(net: &Net) -> bool {
    net.wait_relays(WITHIN, |r| r.iter().any(|(_, c, _)| *c))
        .await
}

/// A relay-only endpoint behind the relay at `good` (its correct URL), serving mailbox requests.
async fn served_behind(seed: u8, good: &str) -> Net {
    let server = bind(seed, vec![good.to_owned()], vec![]).await;
    assert!(connected(&server).await, "{:?}", server.relay_errors());
    serve_reversed(&server);
    server
}

/// A peer with no relay of its own, dialling `server` through the relay named by `url` (as a card or
/// record would name it).
async fn dial_through(seed: u8, server: &Net, url: &str) -> Result<Vec<u8>, kith_net::DialError> {
    let client = bind(seed, vec![], vec![]).await;
    let hint = Hints {
        endpoint: Some(server.endpoint_key()),
        relays: vec![url.to_owned()],
        ..Default::default()
    };
    client.mailbox_request(&hint, b"abc").await
}

/// Serves echo-in-reverse mailbox requests on `net` (no hello needed).
fn serve_reversed(net: &Net) {
    let net = net.clone();
    tokio::spawn(async move {
        while let Some(Ok(Incoming::Mailbox(conn))) = net
            .accept_any(|_| unreachable!("no hello on the mailbox ALPN"), || 0)
            .await
        {
            tokio::spawn(serve_mailbox(conn, |req: Vec<u8>| async move {
                req.iter().rev().copied().collect::<Vec<u8>>()
            }));
        }
    });
}

/// A relay-only endpoint behind a pinned self-signed relay answers a peer that has no relay of its own:
/// the peer registers the pin named in the hint before it dials, so the connection goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_self_signed_relay_carries_a_connection() {
    let (_relay, port, pin) = self_signed_relay().await;
    let url = pinned_url("127.0.0.1", port, &pin);
    let server = served_behind(1, &url).await;
    assert_eq!(
        server.relays(),
        vec![url.clone()],
        "the pin stays in the URL"
    );
    let answer = tokio::time::timeout(WITHIN, dial_through(2, &server, &url))
        .await
        .expect("an answer through the relay")
        .unwrap();
    assert_eq!(answer, b"cba");
    let rtt = relay_tls::probe(&url, &[]).await.unwrap();
    assert!(rtt < relay_tls::PROBE_TIMEOUT);
}

/// A URL whose pin is not the relay's certificate: a peer given it cannot reach anyone through the
/// relay, and the probe says that the pin does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_with_the_reason() {
    let (_relay, port, pin) = self_signed_relay().await;
    let mut wrong = pin;
    wrong[0] ^= 1;
    let url = pinned_url("127.0.0.1", port, &wrong);
    let server = served_behind(3, &pinned_url("127.0.0.1", port, &pin)).await;
    // A peer handed the wrong pin (a tampered card, a stale URL) cannot reach the server through it.
    assert!(dial_through(13, &server, &url).await.is_err());
    match relay_tls::probe(&url, &[]).await {
        Err(ProbeError::PinMismatch(m)) => {
            assert_eq!(m.got, hex::encode(pin), "it names the certificate it saw");
            let text = m.to_string();
            assert!(text.contains("ask the relay's operator"), "{text}");
        }
        other => panic!("a wrong pin must be refused as such, got {other:?}"),
    }
}

/// An operator's certificate from a private authority: trusted once the authority is an extra root, with
/// a URL that carries no pin; refused (as untrusted, not as a wrong pin) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_extra_root_is_trusted() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kith test authority");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let (_relay, port) = tls_relay(vec![leaf.der().clone(), ca.der().clone()], key).await;
    let url = format!("https://127.0.0.1:{port}/");
    let roots = vec![ca.der().to_vec()];
    let net = bind(4, vec![url.clone()], roots.clone()).await;
    assert!(connected(&net).await, "{:?}", net.relay_errors());
    relay_tls::probe(&url, &roots).await.unwrap();
    assert!(matches!(
        relay_tls::probe(&url, &[]).await,
        Err(ProbeError::Untrusted(_))
    ));
}

/// A self-signed relay named by a URL without its pin: nothing vouches for the certificate, so it is
/// refused, and the reason says to use the URL with the pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_without_a_pin_is_refused() {
    let (_relay, port, pin) = self_signed_relay().await;
    let url = format!("https://127.0.0.1:{port}/");
    let server = served_behind(5, &pinned_url("127.0.0.1", port, &pin)).await;
    assert!(dial_through(15, &server, &url).await.is_err());
    let e = relay_tls::probe(&url, &[]).await.unwrap_err();
    assert!(matches!(e, ProbeError::Untrusted(_)), "{e:?}");
    assert!(e.to_string().contains("carries no pin"), "{e}");
}

/// Trust on first use: the certificate a relay presents is taken, and its pin is the certificate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_learns_the_relays_pin() {
    let (_relay, port, pin) = self_signed_relay().await;
    let (_rtt, seen) = relay_tls::probe_first_use(&format!("https://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(seen, pin);
    // And the pinned URL built from it is then checked strictly.
    relay_tls::probe(&pinned_url("127.0.0.1", port, &seen), &[])
        .await
        .unwrap();
}
