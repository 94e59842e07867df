//! TLS to relays: how a node decides that it talks to the relay its URL names.
//!
//! A relay URL is either `https://HOST[:PORT]/` (a certificate from an authority the Mozilla roots, or
//! [`RelayTrust`]'s extra roots, trust) or `https://HOST:PORT/?pin=<64 hex>` (any certificate, self-signed
//! included, whose end-entity DER hashes to the pin with SHA-256). The pin stays inside the URL string, so
//! cards and records carry it to the peers who reach us through that relay. `http://` URLs (no TLS: the
//! relay and anyone on the path see endpoint ids) are accepted for tests on loopback.
//!
//! One verifier serves every TLS connection of an endpoint (relay websocket, QUIC address discovery, the
//! HTTPS probe). rustls hands it the server name (the host), never the port, so pins are kept per host:
//! a host with pins accepts only a certificate matching one of them, and a host without pins is checked
//! against the roots.
//!
//! Not done here: reaching a relay through a proxy, revocation (a pin is replaced by giving nodes a new
//! URL).

use iroh::RelayUrl;
use iroh::tls::CaTlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// SHA-256 of a relay's end-entity certificate (DER).
pub type Pin = [u8; 32];

/// How long [`probe`] waits for a relay's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The pin of a certificate.
pub fn pin_of(cert_der: &[u8]) -> Pin {
    sha2::Sha256::digest(cert_der).into()
}

/// Errors of [`parse_relay_url`].
#[derive(Debug, thiserror::Error)]
pub enum RelayUrlError {
    #[error("relay URL {url:?} is invalid ({reason}): use the form https://relay.example.org/")]
    Invalid { url: String, reason: String },
    #[error(
        "relay URL {url:?} has a bad pin: `?pin=` takes the 64 hex digits of the certificate's \
         SHA-256, exactly as `kith relay` printed them"
    )]
    BadPin { url: String },
    #[error(
        "relay URL {url:?} pins a certificate but is not https: write it as https://... (the pin \
         checks the relay's TLS certificate)"
    )]
    PinWithoutTls { url: String },
    #[error("relay URL {url:?} must start with https:// (or http:// for a test relay on loopback)")]
    Scheme { url: String },
}

/// A relay URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    /// The URL as iroh takes it (pin included: the relay ignores the query).
    pub url: RelayUrl,
    /// The host as the TLS verifier sees it (lower case, no trailing dot, IPv6 without brackets).
    pub host: String,
    /// The pinned certificate, if the URL names one.
    pub pin: Option<Pin>,
    /// Whether the URL asks for TLS (https).
    pub tls: bool,
}

impl RelayAddr {
    /// The URL in its one written form (what cards, records and `relays()` carry).
    pub fn as_text(&self) -> String {
        self.url.to_string()
    }
}

/// Parses a relay URL and its `?pin=`.
pub fn parse_relay_url(text: &str) -> Result<RelayAddr, RelayUrlError> {
    let url: RelayUrl =
        text.parse()
            .map_err(|e: iroh::RelayUrlParseError| RelayUrlError::Invalid {
                url: text.to_owned(),
                reason: std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
            })?;
    let tls = match url.scheme() {
        "https" => true,
        "http" => false,
        _ => {
            return Err(RelayUrlError::Scheme {
                url: text.to_owned(),
            });
        }
    };
    let host = match url.host_str() {
        Some(h) if h.starts_with('[') => h.trim_matches(|c| c == '[' || c == ']').to_owned(),
        Some(h) if !h.is_empty() => host_key(h),
        _ => {
            return Err(RelayUrlError::Invalid {
                url: text.to_owned(),
                reason: "no host".into(),
            });
        }
    };
    let mut pin = None;
    for (k, v) in url.query_pairs() {
        if k == "pin" {
            let mut p = [0u8; 32];
            hex::decode_to_slice(v.as_bytes(), &mut p).map_err(|_| RelayUrlError::BadPin {
                url: text.to_owned(),
            })?;
            pin = Some(p);
        }
    }
    if pin.is_some() && !tls {
        return Err(RelayUrlError::PinWithoutTls {
            url: text.to_owned(),
        });
    }
    Ok(RelayAddr {
        url,
        host,
        pin,
        tls,
    })
}

/// `https://HOST:PORT/?pin=...` for a relay at `host` and `port` with the certificate `pin`.
pub fn pinned_url(host: &str, port: u16, pin: &Pin) -> String {
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    format!("https://{host}:{port}/?pin={}", hex::encode(pin))
}

fn host_key(dns: &str) -> String {
    dns.trim_end_matches('.').to_ascii_lowercase()
}

fn server_host(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => host_key(d.as_ref()),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}

/// The certificate a pinned host presented does not hash to any of its pins.
#[derive(Debug, thiserror::Error)]
#[error(
    "the relay's certificate (sha256 {got}) does not match the pin in its URL: ask the relay's \
     operator for its current URL (`kith relay` prints it)"
)]
pub struct PinMismatch {
    pub got: String,
}

/// What an endpoint trusts for relays: pins per host, and extra root certificates beside the Mozilla
/// roots. Cheap to clone; clones share the pins, so a pin registered later (a relay added, a peer's
/// relay dialled) applies to the endpoint at once.
#[derive(Clone, Default)]
pub struct RelayTrust {
    pins: Arc<RwLock<HashMap<String, Vec<Pin>>>>,
    extra_roots: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for RelayTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayTrust")
            .field("pinned_hosts", &self.read().len())
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl RelayTrust {
    /// Trusts the Mozilla roots plus `extra_roots` (DER certificates, e.g. a private CA).
    pub fn new(extra_roots: &[Vec<u8>]) -> Self {
        Self {
            pins: Arc::default(),
            extra_roots: Arc::new(
                extra_roots
                    .iter()
                    .map(|d| CertificateDer::from(d.clone()))
                    .collect(),
            ),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Pin>>> {
        self.pins.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the pin `relay` names (if any) for its host.
    pub fn register(&self, relay: &RelayAddr) {
        let Some(pin) = relay.pin else { return };
        let mut pins = self.pins.write().unwrap_or_else(|e| e.into_inner());
        let list = pins.entry(relay.host.clone()).or_default();
        // Bounded: a host keeps its most recent pins (relays on several ports of one host, a certificate
        // replaced); peers' records can name relays, so an unbounded list would grow at their will.
        if !list.contains(&pin) {
            if list.len() >= 8 {
                list.remove(0);
            }
            list.push(pin);
        }
    }

    /// The configuration iroh uses for every TLS connection of the endpoint.
    pub fn ca_tls_config(&self) -> CaTlsConfig {
        let trust = self.clone();
        CaTlsConfig::custom_server_cert_verifier(Arc::new(move |provider: Arc<CryptoProvider>| {
            trust
                .verifier(provider)
                .map(|v| v as Arc<dyn ServerCertVerifier>)
        }))
    }

    fn verifier(&self, provider: Arc<CryptoProvider>) -> std::io::Result<Arc<PinVerifier>> {
        let fallback = CaTlsConfig::embedded()
            .with_extra_roots(self.extra_roots.iter().cloned())
            .server_cert_verifier(provider.clone())?;
        Ok(Arc::new(PinVerifier {
            pins: self.pins.clone(),
            fallback,
            provider,
            seen: Mutex::new(None),
            trust_first_use: false,
        }))
    }
}

/// Accepts a pinned host's certificate by its hash, any other host's by the roots. In trust-on-first-use
/// mode it accepts any certificate and remembers its pin (signatures are still checked, so the server
/// holds the certificate's key).
#[derive(Debug)]
struct PinVerifier {
    pins: Arc<RwLock<HashMap<String, Vec<Pin>>>>,
    fallback: Arc<dyn ServerCertVerifier>,
    provider: Arc<CryptoProvider>,
    seen: Mutex<Option<Pin>>,
    trust_first_use: bool,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = pin_of(end_entity.as_ref());
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
        if self.trust_first_use {
            return Ok(ServerCertVerified::assertion());
        }
        let pins = self
            .pins
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&server_host(server_name))
            .cloned();
        match pins {
            Some(pins) if pins.contains(&got) => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    got: hex::encode(got),
                }))),
            )),
            None => {
                self.fallback
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Errors of [`probe`] and [`probe_first_use`].
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Url(#[from] RelayUrlError),
    #[error("cannot connect to the relay: {0} (is it running, and is its port open?)")]
    Connect(String),
    #[error("{0}")]
    PinMismatch(PinMismatch),
    #[error(
        "the relay's certificate is not trusted ({0}) and its URL carries no pin: use the URL the \
         relay printed, with its ?pin=, or give it a certificate from an authority"
    )]
    Untrusted(String),
    #[error("TLS with the relay failed: {0} (does it serve https on this port?)")]
    Tls(String),
    #[error("the relay answered /ping with {0:?}, not 200: is this a kith relay?")]
    BadAnswer(String),
    #[error("the relay did not answer within {} s", PROBE_TIMEOUT.as_secs())]
    Timeout,
}

/// Measures a relay's round trip with `GET /ping` (over TLS for https URLs, checked as the endpoint
/// would: the URL's pin, else the roots and `extra_roots`).
pub async fn probe(url: &str, extra_roots: &[Vec<u8>]) -> Result<Duration, ProbeError> {
    let relay = parse_relay_url(url)?;
    let trust = RelayTrust::new(extra_roots);
    trust.register(&relay);
    let verifier = trust
        .verifier(iroh::tls::default_provider())
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    ping(&relay, verifier).await
}

/// Trust on first use: reaches the https relay at `url` (no pin needed), accepting whatever certificate
/// it presents, and returns its round trip with the pin of that certificate. For relays found in the
/// DHT, whose announcement carries no pin: this keeps passive observers out, not a man in the middle
/// at the first contact.
pub async fn probe_first_use(url: &str) -> Result<(Duration, Pin), ProbeError> {
    let relay = parse_relay_url(url)?;
    if !relay.tls {
        return Err(RelayUrlError::Scheme {
            url: url.to_owned(),
        }
        .into());
    }
    let provider = iroh::tls::default_provider();
    let verifier = Arc::new(PinVerifier {
        pins: Arc::default(),
        fallback: CaTlsConfig::embedded()
            .server_cert_verifier(provider.clone())
            .map_err(|e| ProbeError::Tls(e.to_string()))?,
        provider,
        seen: Mutex::new(None),
        trust_first_use: true,
    });
    let rtt = ping(&relay, verifier.clone()).await?;
    let pin = verifier
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| ProbeError::Tls("the relay presented no certificate".into()))?;
    Ok((rtt, pin))
}

async fn ping(relay: &RelayAddr, verifier: Arc<PinVerifier>) -> Result<Duration, ProbeError> {
    let port = relay
        .url
        .port_or_known_default()
        .unwrap_or(if relay.tls { 443 } else { 80 });
    let host = relay.url.host_str().unwrap_or_default().to_owned();
    let t0 = Instant::now();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((relay.host.as_str(), port))
            .await
            .map_err(|e| ProbeError::Connect(e.to_string()))?;
        let request = format!("GET /ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        if relay.tls {
            let config = rustls::ClientConfig::builder_with_provider(verifier.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ProbeError::Tls(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            let name = ServerName::try_from(relay.host.clone())
                .map_err(|e| ProbeError::Tls(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(tls_error)?;
            exchange_ping(tls, &request).await
        } else {
            exchange_ping(tcp, &request).await
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| ProbeError::Timeout)??;
    Ok(t0.elapsed())
}

async fn exchange_ping<S>(mut stream: S, request: &str) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    // The status line may arrive in pieces (TLS records); 12 bytes hold "HTTP/1.1 200".
    while n < 12 {
        match stream.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(tls_error(e)),
        }
    }
    let answer = String::from_utf8_lossy(&buf[..n]);
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(ProbeError::BadAnswer(
            answer.lines().next().unwrap_or_default().to_owned(),
        ))
    }
}

/// Names the cause of a failed TLS handshake: a pin that does not match, a certificate no root vouches
/// for, or something else.
fn tls_error(e: std::io::Error) -> ProbeError {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return ProbeError::Tls(e.to_string());
    };
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<PinMismatch>() {
                Some(m) => ProbeError::PinMismatch(PinMismatch { got: m.got.clone() }),
                None => ProbeError::Untrusted(err.to_string()),
            }
        }
        rustls::Error::InvalidCertificate(_) => ProbeError::Untrusted(err.to_string()),
        _ => ProbeError::Tls(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_pins() {
        let pin = [0xab; 32];
        let text = pinned_url("127.0.0.1", 3340, &pin);
        let r = parse_relay_url(&text).unwrap();
        assert_eq!(r.pin, Some(pin));
        assert_eq!(r.host, "127.0.0.1");
        assert!(r.tls);
        assert_eq!(r.as_text(), text, "the written form survives a round trip");
        let r = parse_relay_url("https://Relay.Example.org./").unwrap();
        assert_eq!((r.host.as_str(), r.pin), ("relay.example.org", None));
        let r = parse_relay_url(&pinned_url("::1", 1, &pin)).unwrap();
        assert_eq!(r.host, "::1");
        assert!(!parse_relay_url("http://127.0.0.1:1/").unwrap().tls);
    }

    #[test]
    fn bad_urls_say_what_to_fix() {
        for (url, want) in [
            ("https://h:1/?pin=abcd", "bad pin"),
            (&format!("https://h:1/?pin={}", "zz".repeat(32)), "bad pin"),
            (&format!("http://h:1/?pin={}", "ab".repeat(32)), "not https"),
            ("ftp://h/", "must start with https://"),
            ("not a url", "invalid"),
        ] {
            let e = parse_relay_url(url).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }

    #[test]
    fn pins_per_host_are_bounded() {
        let trust = RelayTrust::new(&[]);
        for i in 0..20u8 {
            trust.register(&parse_relay_url(&pinned_url("h", 1, &[i; 32])).unwrap());
        }
        let pins = trust.read().get("h").cloned().unwrap();
        assert_eq!(pins.len(), 8);
        assert_eq!(pins.last(), Some(&[19; 32]), "the newest pin is kept");
    }
}
