//! Both channels against real servers in-process: a DNSSEC-signed zone (hickory-server) and an HTTPS
//! server with certificates from a test authority.

use super::*;
use hickory_resolver::proto::dnssec::crypto::Ed25519SigningKey;
use hickory_resolver::proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_resolver::proto::dnssec::{DnssecSigner, SigningKey};
use hickory_resolver::proto::rr::rdata::{NS, SOA, TXT};
use hickory_resolver::proto::rr::{Name, Record};
use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use kith_core::AccountSecret;
use kith_core::org::{Channel, OrgStatement, Rotation, check_pin, format_document, format_txt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOMAIN: &str = "example.org";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn statement(account: &AccountSecret) -> OrgStatement {
    OrgStatement {
        account: account.public(),
        services: vec!["support".into()],
        expires: now() + 86_400,
        alone: false,
        rotation: None,
    }
}

fn key(seed: u64) -> AccountSecret {
    AccountSecret::generate(&mut StdRng::seed_from_u64(seed))
}

#[derive(Clone, Copy, PartialEq)]
enum Signing {
    /// Signed by the key the client trusts.
    Good,
    /// Not signed at all, as a DNS spoofer would answer.
    Unsigned,
    /// Signed, by another key than the one the client trusts.
    OtherKey,
}

fn dnskey_of(key: &Ed25519SigningKey) -> DNSKEY {
    DNSKEY::new(true, true, false, key.to_public_key().unwrap())
}

/// A zone for example.org with these `_kith` TXT records, served on 127.0.0.1 (UDP and TCP, one
/// port). Returns the address and the trust anchor the client is to use.
async fn zone(txt: &[String], signing: Signing) -> (SocketAddr, String) {
    let origin = Name::from_ascii("example.org.").unwrap();
    let ns = Name::from_ascii("ns1.example.org.").unwrap();
    let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        Some(NxProofKind::Nsec),
    );
    let soa = SOA::new(
        ns.clone(),
        Name::from_ascii("admin.example.org.").unwrap(),
        1,
        3600,
        900,
        604_800,
        60,
    );
    zone.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
    zone.upsert_mut(
        Record::from_rdata(origin.clone(), 60, RData::NS(NS(ns.clone()))),
        1,
    );
    // A zone has more than its apex (and with only its apex, hickory's denial of a name is not proven).
    zone.upsert_mut(
        Record::from_rdata(
            Name::from_ascii("www.example.org.").unwrap(),
            60,
            RData::A(std::net::Ipv4Addr::LOCALHOST.into()),
        ),
        1,
    );
    let kith = Name::from_ascii("_kith.example.org.").unwrap();
    for t in txt {
        zone.upsert_mut(
            // A character-string holds 255 bytes: longer values are split, and read joined.
            Record::from_rdata(
                kith.clone(),
                60,
                RData::TXT(TXT::new(
                    t.as_bytes()
                        .chunks(255)
                        .map(|c| String::from_utf8(c.to_vec()).unwrap())
                        .collect(),
                )),
            ),
            1,
        );
    }
    let trusted =
        Ed25519SigningKey::from_pkcs8(&Ed25519SigningKey::generate_pkcs8().unwrap()).unwrap();
    let anchor = Record::from_rdata(
        origin.clone(),
        3600,
        RData::DNSSEC(DNSSECRData::DNSKEY(dnskey_of(&trusted))),
    )
    .to_string();
    let signer = match signing {
        Signing::Good => Some(trusted),
        Signing::OtherKey => Some(
            Ed25519SigningKey::from_pkcs8(&Ed25519SigningKey::generate_pkcs8().unwrap()).unwrap(),
        ),
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
        .unwrap();
        zone.secure_zone_mut().unwrap();
    }
    let mut catalog = Catalog::new();
    catalog.upsert(origin.into(), vec![Arc::new(zone)]);
    // UDP and TCP on one port.
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    (addr, anchor)
}

/// A test authority and a certificate for `names` signed by it (DER, and the leaf's key).
struct Pki {
    ca: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    Pki {
        ca: ca.der().to_vec(),
        issuer: rcgen::Issuer::new(params, ca_key),
    }
}

impl Pki {
    fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }
}

/// An HTTPS server on 127.0.0.1 answering `path` with `body` (404 for anything else, or for every
/// path without a body), with the certificate `cert`/`key`.
async fn https(cert: (Vec<u8>, Vec<u8>), path: &'static str, body: Option<String>) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![rustls::pki_types::CertificateDer::from(cert.0)],
        rustls::pki_types::PrivateKeyDer::Pkcs8(cert.1.into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = vec![];
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let wanted = line.starts_with(&format!("GET {path} "));
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
    addr
}

/// An organization's two channels as a test sets them up, and a client for them.
struct Org {
    pki: Pki,
}

impl Org {
    fn new() -> Self {
        Self { pki: pki() }
    }

    async fn resolver(
        &self,
        txt: &[String],
        signing: Signing,
        https_addr: SocketAddr,
        extra: Vec<(String, SocketAddr)>,
    ) -> OrgResolver {
        let (dns, anchor) = zone(txt, signing).await;
        let mut https_addrs = vec![(DOMAIN.to_string(), https_addr)];
        https_addrs.extend(extra);
        OrgResolver::new(OrgConfig {
            dns_servers: vec![dns],
            trust_anchor: Some(anchor),
            https_roots: Some(vec![self.pki.ca.clone()]),
            https_addrs,
            timeout: Duration::from_secs(10),
        })
        .unwrap()
    }

    async fn document(&self, body: Option<String>) -> SocketAddr {
        https(self.pki.leaf(&[DOMAIN]), org::WELL_KNOWN_PATH, body).await
    }
}

#[tokio::test]
async fn both_channels_agreeing_verify_the_organization() {
    let account = key(1);
    let s = statement(&account);
    let org = Org::new();
    let web = org.document(Some(format_document(&s, DOMAIN))).await;
    let r = org
        .resolver(
            &[format_txt(&s), "v=spf1 -all".into()],
            Signing::Good,
            web,
            vec![],
        )
        .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert_eq!(v.account, account.public());
    assert_eq!(v.label(), "Verified: example.org (DNSSEC + HTTPS)");
    assert_eq!(v.services, ["support"]);
}

#[tokio::test]
async fn a_forged_or_wrongly_signed_zone_is_refused() {
    let account = key(1);
    let s = statement(&account);
    for signing in [Signing::Unsigned, Signing::OtherKey] {
        let org = Org::new();
        let web = org.document(Some(format_document(&s, DOMAIN))).await;
        let r = org.resolver(&[format_txt(&s)], signing, web, vec![]).await;
        let refused = r.verify(DOMAIN, now()).await.unwrap_err();
        assert!(
            matches!(
                &refused,
                Refused::ChannelFailed {
                    channel: Channel::Dns,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("possible attack"), "{refused}");
    }
}

#[tokio::test]
async fn a_self_signed_or_wrong_authority_certificate_is_refused() {
    let account = key(1);
    let s = statement(&account);
    let org = Org::new();
    let other_authority = pki();
    let self_signed = {
        let made = rcgen::generate_simple_self_signed(vec![DOMAIN.to_string()]).unwrap();
        (made.cert.der().to_vec(), made.signing_key.serialize_der())
    };
    for cert in [self_signed, other_authority.leaf(&[DOMAIN])] {
        let web = https(
            cert,
            org::WELL_KNOWN_PATH,
            Some(format_document(&s, DOMAIN)),
        )
        .await;
        let r = org
            .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
            .await;
        let refused = r.verify(DOMAIN, now()).await.unwrap_err();
        assert!(
            matches!(
                &refused,
                Refused::ChannelFailed {
                    channel: Channel::Https,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.to_string().contains("TLS"), "{refused}");
    }
}

#[tokio::test]
async fn another_key_in_the_document_than_in_dns_is_a_possible_compromise() {
    let (account, impostor) = (key(1), key(2));
    let org = Org::new();
    let web = org
        .document(Some(format_document(&statement(&impostor), DOMAIN)))
        .await;
    let r = org
        .resolver(
            &[format_txt(&statement(&account))],
            Signing::Good,
            web,
            vec![],
        )
        .await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::Disagree { .. }), "{refused}");
}

#[tokio::test]
async fn an_expired_record_is_refused() {
    let account = key(1);
    let mut s = statement(&account);
    let org = Org::new();
    let web = org.document(Some(format_document(&s, DOMAIN))).await;
    s.expires = now() - 1;
    let r = org
        .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
        .await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Refused::Expired {
                channel: Channel::Dns,
                ..
            }
        ),
        "{refused}"
    );
}

#[tokio::test]
async fn one_channel_counts_only_where_allowed_and_nothing_at_all_is_not_published() {
    let account = key(1);
    let mut s = statement(&account);
    let org = Org::new();
    let web = org.document(None).await;
    let r = org
        .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
        .await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::OneChannel { .. }), "{refused}");

    s.alone = true;
    let r = org
        .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
        .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert_eq!(v.label(), "Verified (DNSSEC only): example.org");

    // No TXT record (a signed "no such record") and no document.
    let r = org.resolver(&[], Signing::Good, web, vec![]).await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::NotPublished { .. }), "{refused}");
}

#[tokio::test]
async fn a_key_change_is_taken_only_with_the_pinned_keys_signature() {
    let (old, new) = (key(1), key(2));
    let org = Org::new();
    let mut s = statement(&new);
    let web = org.document(Some(format_document(&s, DOMAIN))).await;
    let r = org
        .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
        .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(matches!(
        check_pin(&v, Some(old.public())),
        Err(Refused::KeyChanged { .. })
    ));

    s.rotation = Some(Rotation::issue(&old, DOMAIN, new.public(), now()));
    let web = org.document(Some(format_document(&s, DOMAIN))).await;
    let r = org
        .resolver(&[format_txt(&s)], Signing::Good, web, vec![])
        .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(matches!(
        check_pin(&v, Some(old.public())),
        Ok(kith_core::org::Pin::Rotated { .. })
    ));
}

#[tokio::test]
async fn a_hosted_gateways_document_is_followed_once() {
    let account = key(1);
    let s = statement(&account);
    let org = Org::new();
    let hoster = https(
        org.pki.leaf(&["gw.hoster.test"]),
        "/orgs/example.org.json",
        Some(format_document(&s, DOMAIN)),
    )
    .await;
    let delegate = format!(
        r#"{{"kith": 1, "domain": "example.org", "delegate": "https://gw.hoster.test:{}/orgs/example.org.json"}}"#,
        hoster.port()
    );
    let web = org.document(Some(delegate)).await;
    let r = org
        .resolver(
            &[format_txt(&s)],
            Signing::Good,
            web,
            vec![("gw.hoster.test".into(), hoster)],
        )
        .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(v.is_full(), "{}", v.label());
}
