//! Looks up which kith account speaks for a domain, in its two channels, and judges what they say
//! ([`kith_core::org`] has the formats and the rules).
//!
//! * DNS: the TXT record at `_kith.<domain>`, validated **here** with DNSSEC from a trust anchor (the root
//!   zone's keys, or anchors given for tests and private zones), never by trusting the AD bit of a
//!   resolver across the network. Only a secure answer counts; a validated "no such record", or a zone
//!   that is provably unsigned, is "absent"; a bogus answer (forged, stripped of its signatures, signed
//!   by the wrong key) fails the channel.
//! * HTTPS: `https://<domain>/.well-known/kith.json` over rustls, certificates checked against the
//!   Mozilla roots (or roots given for tests), no redirects; a 404 is "absent"; a document that delegates
//!   (a hosted gateway) is followed once.

use kith_core::org::{self, Document, Lookup, Refused, Verified};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

/// Where and how to look.
#[derive(Debug, Clone)]
pub struct OrgConfig {
    /// DNS servers to ask (each over UDP and TCP); empty: the system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// DNSKEY records in zone-file form, trusted as anchors in place of the root zone's keys (tests, a
    /// private zone). `None`: the root zone's keys that hickory carries.
    pub trust_anchor: Option<String>,
    /// Root certificates (DER) for HTTPS in place of the Mozilla roots (tests, a private CA). `None`:
    /// the Mozilla roots.
    pub https_roots: Option<Vec<Vec<u8>>>,
    /// Where to connect for a host's HTTPS instead of where its DNS points (tests: a local server).
    pub https_addrs: Vec<(String, SocketAddr)>,
    /// How long each channel may take.
    pub timeout: Duration,
}

impl Default for OrgConfig {
    fn default() -> Self {
        Self {
            dns_servers: vec![],
            trust_anchor: None,
            https_roots: None,
            https_addrs: vec![],
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why the lookups cannot even start (a configuration mistake).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the DNSSEC trust anchor is not a DNSKEY record in zone-file form: {0}")]
    TrustAnchor(String),
    #[error("no DNS server: none configured and none in /etc/resolv.conf ({0})")]
    NoDns(String),
    #[error("a root certificate for HTTPS cannot be read: {0}")]
    Root(String),
    #[error("the DNSSEC trust anchor file {0} cannot be read: {1}")]
    AnchorFile(std::path::PathBuf, String),
    #[error("cannot set up HTTPS: {0}")]
    Https(String),
}

/// Reads certificate authorities (PEM, one or more certificates a file) for [`OrgConfig::https_roots`].
pub fn roots_from_pem_files(paths: &[std::path::PathBuf]) -> Result<Vec<Vec<u8>>, SetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut out = vec![];
    for path in paths {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect())
            .map_err(|e| SetupError::Root(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(SetupError::Root(format!(
                "{}: no certificate in it",
                path.display()
            )));
        }
        out.extend(certs.into_iter().map(|c| c.to_vec()));
    }
    Ok(out)
}

/// Looks domains up.
pub struct OrgResolver {
    dns: TokioResolver,
    http: reqwest::Client,
    config: OrgConfig,
}

impl OrgResolver {
    pub fn new(config: OrgConfig) -> Result<Self, SetupError> {
        let anchors = match &config.trust_anchor {
            Some(text) => text
                .parse::<TrustAnchors>()
                .map_err(|e| SetupError::TrustAnchor(e.to_string()))?,
            None => TrustAnchors::default(),
        };
        let provider = TokioRuntimeProvider::default();
        let builder = if config.dns_servers.is_empty() {
            Resolver::builder(provider).map_err(|e| SetupError::NoDns(e.to_string()))?
        } else {
            let servers = config
                .dns_servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        };
        let mut options = ResolverOpts::default();
        options.validate = true;
        options.timeout = config.timeout;
        // Answers come from one place; a cache would only hide a change of the record from a test.
        options.cache_size = 0;
        let dns = builder
            .with_options(options)
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| SetupError::NoDns(e.to_string()))?;

        let mut roots = rustls::RootCertStore::empty();
        match &config.https_roots {
            Some(list) => {
                for der in list {
                    roots
                        .add(rustls::pki_types::CertificateDer::from(der.clone()))
                        .map_err(|e| SetupError::Root(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Https(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .no_proxy();
        for (host, addr) in &config.https_addrs {
            http = http.resolve(host, *addr);
        }
        let http = http.build().map_err(|e| SetupError::Https(e.to_string()))?;
        Ok(Self { dns, http, config })
    }

    /// Both channels for `domain`, judged at `now` (Unix seconds).
    pub async fn verify(&self, domain: &str, now: u64) -> Result<Verified, Refused> {
        let domain = org::normalize_domain(domain);
        let (dns, https) = tokio::join!(self.dns_lookup(&domain), self.https_lookup(&domain));
        tracing::debug!(%domain, ?dns, ?https, "organization lookups");
        org::judge(&domain, dns, https, now)
    }

    /// The DNS channel alone.
    pub async fn dns_lookup(&self, domain: &str) -> Lookup {
        let name = format!("{}.{domain}.", org::TXT_LABEL);
        let answer = tokio::time::timeout(
            self.config.timeout,
            self.dns.lookup(name.as_str(), RecordType::TXT),
        )
        .await;
        let lookup = match answer {
            Err(_) => return Lookup::Unreachable(format!("no DNS answer for {name}")),
            Ok(Err(e)) => return dns_error(&name, e),
            Ok(Ok(l)) => l,
        };
        let mut texts = vec![];
        for record in lookup.answers() {
            let RData::TXT(txt) = &record.data else {
                continue;
            };
            match record.proof {
                Proof::Secure => {}
                Proof::Insecure => {
                    // The zone is provably unsigned: nothing here can be believed, and nothing is
                    // claimed either (as if there were no record).
                    return Lookup::Absent;
                }
                proof => {
                    return Lookup::Failed(format!(
                        "the TXT record of {name} is not proven by DNSSEC ({proof})"
                    ));
                }
            }
            texts.push(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            );
        }
        match org::parse_txt(&texts) {
            Ok(Some(s)) => Lookup::Found(s),
            Ok(None) => Lookup::Absent,
            Err(e) => Lookup::Failed(format!("the TXT record of {name}: {e}")),
        }
    }

    /// The HTTPS channel alone (following one delegation).
    pub async fn https_lookup(&self, domain: &str) -> Lookup {
        let own = match self
            .config
            .https_addrs
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(domain))
        {
            Some((_, addr)) => format!("https://{domain}:{}{}", addr.port(), org::WELL_KNOWN_PATH),
            None => format!("https://{domain}{}", org::WELL_KNOWN_PATH),
        };
        let mut url = own;
        for hop in 0..2 {
            let body = match self.fetch(&url).await {
                Ok(Some(body)) => body,
                Ok(None) if hop == 0 => return Lookup::Absent,
                Ok(None) => {
                    return Lookup::Failed(format!(
                        "the delegated document {url} is not there (404)"
                    ));
                }
                Err(lookup) => return lookup,
            };
            match org::parse_document(&body, domain) {
                Ok(Document::Statement(s)) => return Lookup::Found(s),
                Ok(Document::Delegate(next)) if hop == 0 => url = next,
                Ok(Document::Delegate(_)) => {
                    return Lookup::Failed(format!("{url} delegates again (one delegation only)"));
                }
                Err(e) => return Lookup::Failed(format!("{url}: {e}")),
            }
        }
        unreachable!("the loop returns")
    }

    /// The body at `url`: `Ok(None)` for 404/410; `Err` with the lookup's outcome otherwise.
    async fn fetch(&self, url: &str) -> Result<Option<Vec<u8>>, Lookup> {
        let response = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return Err(http_error(url, &e)),
        };
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if status.is_server_error() {
            return Err(Lookup::Unreachable(format!("{url} answered {status}")));
        }
        if !status.is_success() {
            return Err(Lookup::Failed(format!("{url} answered {status}")));
        }
        match response.bytes().await {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(e) => Err(Lookup::Unreachable(format!("{url}: {e}"))),
        }
    }
}

/// What a failed DNS lookup means for the channel.
fn dns_error(name: &str, e: NetError) -> Lookup {
    match &e {
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Secure => Lookup::Absent,
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Insecure => Lookup::Absent,
        NetError::Dns(DnsError::Nsec { proof, .. }) => Lookup::Failed(format!(
            "the answer that {name} does not exist is not proven by DNSSEC ({proof})"
        )),
        NetError::Dns(DnsError::DnssecBogus) => Lookup::Failed(format!(
            "the answer for {name} failed DNSSEC validation (forged, or signed by another key)"
        )),
        // No such name or record: believed if the zone's signed SOA (or its provable lack of DNSSEC)
        // comes with it.
        NetError::Dns(DnsError::NoRecordsFound(none)) => match none.soa.as_ref().map(|s| s.proof) {
            Some(Proof::Secure | Proof::Insecure) => Lookup::Absent,
            proof => Lookup::Failed(format!(
                "the answer that {name} has no record is not proven by DNSSEC ({proof:?})"
            )),
        },
        _ => Lookup::Unreachable(format!("{name}: {e}")),
    }
}

/// What a failed HTTPS request means for the channel: a certificate nobody vouches for fails it, a
/// network error leaves it unreachable.
fn http_error(url: &str, e: &reqwest::Error) -> Lookup {
    // The TLS error sits inside I/O errors inside the connector's error, which `source` does not
    // always reach: an I/O error's inner error is followed by hand.
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Lookup::Failed(format!("{url}: TLS: {tls}"));
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    Lookup::Unreachable(format!("{url}: {e}"))
}

pub mod lab;

#[cfg(test)]
mod tests;
