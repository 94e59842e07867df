//! An organization's two channels on this machine, for tests and `kith demo`: a DNSSEC-signed zone served
//! by hickory-server on 127.0.0.1 (UDP and TCP, one port) and an HTTPS server for the document, with a
//! certificate from an authority made here. [`Lab::config`] points an [`OrgResolver`] at them (the zone's
//! key as the trust anchor, the authority as the only root).
//!
//! [`OrgResolver`]: crate::OrgResolver

use crate::OrgConfig;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_resolver::proto::dnssec::{DnssecSigner, SigningKey};
use hickory_resolver::proto::rr::rdata::{NS, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record};
use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the lab's zone is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// By the key the clients trust.
    Good,
    /// Not at all, as a DNS spoofer would answer.
    Unsigned,
    /// By another key than the one the clients trust (a forger's own key).
    OtherKey,
}

/// A test certificate authority.
pub struct Authority {
    der: Vec<u8>,
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Authority {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kith test authority");
        let ca = params.self_signed(&key).expect("self-signed");
        Self {
            der: ca.der().to_vec(),
            pem: ca.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The authority's certificate (DER).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The authority's certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` signed by this authority: (DER, PKCS#8 key DER).
    pub fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params")
                .signed_by(&key, &self.issuer)
                .expect("signed");
        (cert.der().to_vec(), key.serialize_der())
    }
}

impl Default for Authority {
    fn default() -> Self {
        Self::new()
    }
}

/// A self-signed certificate for `names`: (DER, PKCS#8 key DER).
pub fn self_signed(names: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let made =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("self-signed");
    (made.cert.der().to_vec(), made.signing_key.serialize_der())
}

/// A signed zone for one domain, served on 127.0.0.1. [`Zone::publish`] replaces its `_kith` TXT
/// records (same port, same key).
pub struct Zone {
    domain: String,
    addr: SocketAddr,
    anchor: String,
    trusted_pkcs8: Vec<u8>,
    signing: Signing,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn signing_key(pkcs8: &[u8]) -> Ed25519SigningKey {
    Ed25519SigningKey::from_pkcs8(&pkcs8.to_vec().into()).expect("pkcs8 key")
}

fn dnskey_of(key: &Ed25519SigningKey) -> DNSKEY {
    DNSKEY::new(true, true, false, key.to_public_key().expect("public key"))
}

impl Zone {
    /// Serves `domain` with these `_kith` TXT values (each split into 255-byte strings).
    pub async fn start(domain: &str, txt: &[String], signing: Signing) -> std::io::Result<Self> {
        let trusted = Ed25519SigningKey::generate_pkcs8().expect("key");
        let origin = Name::from_ascii(format!("{domain}.")).map_err(std::io::Error::other)?;
        let anchor = Record::from_rdata(
            origin,
            3600,
            RData::DNSSEC(DNSSECRData::DNSKEY(dnskey_of(&signing_key(
                trusted.secret_pkcs8_der(),
            )))),
        )
        .to_string();
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr()?).await {
                break (udp, tcp);
            }
        };
        let zone = Self {
            domain: domain.to_owned(),
            addr: udp.local_addr()?,
            anchor,
            trusted_pkcs8: trusted.secret_pkcs8_der().to_vec(),
            signing,
            server: Mutex::new(None),
        };
        zone.serve(txt, udp, tcp)?;
        Ok(zone)
    }

    /// Where the zone is served (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DNSKEY record clients trust (zone-file form).
    pub fn anchor(&self) -> &str {
        &self.anchor
    }

    /// Replaces the `_kith` TXT records (the zone is signed again with the same key).
    pub async fn publish(&self, txt: &[String]) -> std::io::Result<()> {
        let old = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(old) = old {
            old.abort();
            let _ = old.await;
        }
        // The old sockets are closed once the aborted server is dropped: bind the same port again.
        let mut tries = 0;
        let (udp, tcp) = loop {
            let bound = async {
                let udp = tokio::net::UdpSocket::bind(self.addr).await?;
                let tcp = tokio::net::TcpListener::bind(self.addr).await?;
                Ok::<_, std::io::Error>((udp, tcp))
            }
            .await;
            match bound {
                Ok(pair) => break pair,
                Err(e) if tries > 50 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(txt, udp, tcp)
    }

    fn serve(
        &self,
        txt: &[String],
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
    ) -> std::io::Result<()> {
        let origin =
            Name::from_ascii(format!("{}.", self.domain)).map_err(std::io::Error::other)?;
        let name = |label: &str| {
            Name::from_ascii(format!("{label}.{}.", self.domain)).map_err(std::io::Error::other)
        };
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            Some(NxProofKind::Nsec),
        );
        let soa = SOA::new(name("ns1")?, name("admin")?, 1, 3600, 900, 604_800, 5);
        zone.upsert_mut(Record::from_rdata(origin.clone(), 5, RData::SOA(soa)), 1);
        zone.upsert_mut(
            Record::from_rdata(origin.clone(), 5, RData::NS(NS(name("ns1")?))),
            1,
        );
        // A zone has more than its apex (with only its apex, hickory's denial of a name is not proven).
        for host in ["ns1", "www"] {
            zone.upsert_mut(
                Record::from_rdata(
                    name(host)?,
                    5,
                    RData::A(std::net::Ipv4Addr::LOCALHOST.into()),
                ),
                1,
            );
        }
        for t in txt {
            // A character-string holds 255 bytes: longer values are split, and read joined.
            let strings = t
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            zone.upsert_mut(
                Record::from_rdata(name("_kith")?, 5, RData::TXT(TXT::new(strings))),
                1,
            );
        }
        let signer = match self.signing {
            Signing::Good => Some(signing_key(&self.trusted_pkcs8)),
            Signing::OtherKey => Some(signing_key(
                Ed25519SigningKey::generate_pkcs8()
                    .expect("key")
                    .secret_pkcs8_der(),
            )),
            Signing::Unsigned => None,
        };
        if let Some(k) = signer {
            let dnskey = dnskey_of(&k);
            zone.add_zone_signing_key_mut(DnssecSigner::new(
                dnskey,
                Box::new(k),
                origin.clone(),
                Duration::from_secs(86_400),
            ))
            .map_err(std::io::Error::other)?;
            zone.secure_zone_mut().map_err(std::io::Error::other)?;
        }
        let mut catalog = Catalog::new();
        catalog.upsert(origin.into(), vec![Arc::new(zone)]);
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64);
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }
}

impl Drop for Zone {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// An HTTPS server on 127.0.0.1 that answers `path` with the current body (404 without one, and for any
/// other path). [`Web::set`] changes the body.
pub struct Web {
    addr: SocketAddr,
    body: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Web {
    pub async fn start(
        cert: (Vec<u8>, Vec<u8>),
        path: &str,
        body: Option<String>,
    ) -> std::io::Result<Self> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert.0)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.1.into()),
        )
        .map_err(std::io::Error::other)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let body = Arc::new(Mutex::new(body));
        let served = body.clone();
        let path = path.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let body = served.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let path = path.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = vec![];
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16_384 {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let wanted = request.starts_with(format!("GET {path} ").as_bytes());
                    let reply = match (&body, wanted) {
                        (Some(b), true) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_string(),
                    };
                    let _ = tls.write_all(reply.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Self { addr, body, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `body` from now on (`None`: 404).
    pub fn set(&self, body: Option<String>) {
        *self.body.lock().unwrap_or_else(|e| e.into_inner()) = body;
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One organization's zone and web server, signed and certified the way clients of [`Lab::config`]
/// trust.
pub struct Lab {
    pub domain: String,
    pub zone: Zone,
    pub web: Web,
    pub authority: Authority,
}

impl Lab {
    /// `domain`'s zone with these TXT values and its web server with this document.
    pub async fn start(
        domain: &str,
        txt: &[String],
        document: Option<String>,
    ) -> std::io::Result<Self> {
        let authority = Authority::new();
        let zone = Zone::start(domain, txt, Signing::Good).await?;
        let web = Web::start(
            authority.leaf(&[domain]),
            kith_core::org::WELL_KNOWN_PATH,
            document,
        )
        .await?;
        Ok(Self {
            domain: domain.to_owned(),
            zone,
            web,
            authority,
        })
    }

    /// A resolver configuration that trusts this lab's zone key and authority, and reaches its servers.
    pub fn config(&self) -> OrgConfig {
        OrgConfig {
            dns_servers: vec![self.zone.addr()],
            trust_anchor: Some(self.zone.anchor().to_owned()),
            https_roots: Some(vec![self.authority.der().to_vec()]),
            https_addrs: vec![(self.domain.clone(), self.web.addr())],
            timeout: Duration::from_secs(10),
        }
    }

    /// Publishes a TXT record and a document as an organization's admin printed them (`kith org publish`).
    pub async fn publish_text(&self, txt: &str, document: &str) -> std::io::Result<()> {
        self.zone.publish(&[txt.to_owned()]).await?;
        self.web.set(Some(document.to_owned()));
        Ok(())
    }

    /// Publishes `statement` in both channels.
    pub async fn publish(&self, statement: &kith_core::org::OrgStatement) -> std::io::Result<()> {
        self.zone
            .publish(&[kith_core::org::format_txt(statement)])
            .await?;
        self.web.set(Some(kith_core::org::format_document(
            statement,
            &self.domain,
        )));
        Ok(())
    }
}
