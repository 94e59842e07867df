//! `kith relay`: an iroh relay server anyone can host. Nodes that cannot reach each other directly (NATs,
//! firewalls, or a relay-only privacy policy) exchange their encrypted QUIC packets through it; the relay
//! sees endpoint keys (rotating every period) and ciphertext, never an account.
//!
//! It serves TLS: with a certificate chain and key from files (e.g. from an ACME client; the URL is then
//! plain `https://HOST:PORT/`), or by default with a self-signed certificate kept in a state folder, so
//! its pin stays the same across restarts (the URL is `https://HOST:PORT/?pin=...`, and nodes accept only
//! that certificate). Plain HTTP, where endpoint ids pass in the clear, is for tests on loopback.
//!
//! With `--announce-via`, the relay announces itself in the Mainline DHT under [`RELAY_INFOHASH`] (BEP5),
//! so nodes find relays without any operator list (they pin the certificate they see first).

use crate::client::user;
use iroh_relay::server::{CertConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use kith_net::dht::{DhtConfig, KithDht};
use kith_net::relay_tls::{pin_of, pinned_url};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use kith_net::dht::RELAY_INFOHASH;

/// How the relay serves its clients.
#[derive(Debug, Clone)]
pub enum RelayTls {
    /// No TLS: the relay and anyone on the path see endpoint ids. Tests on loopback only.
    PlainHttp,
    /// A certificate chain and its key, PEM files (e.g. from an ACME client). Read once at start.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate made at the first start and kept in `state`, pinned by the URL.
    SelfSigned { state: PathBuf },
    /// A self-signed certificate made now and kept nowhere (tests, the demo, benchmarks).
    Ephemeral,
}

/// A running relay.
pub struct Relay {
    pub server: Server,
    /// The URL nodes use (with `?pin=` for a self-signed certificate).
    pub url: String,
    /// The port nodes connect to (the HTTPS port, or the HTTP one without TLS).
    pub port: u16,
}

/// Starts a TLS relay on `listen` with a fresh self-signed certificate; returns it with its pinned URL.
/// What tests, the demo and benchmarks use.
pub async fn start(listen: SocketAddr) -> anyhow::Result<(Server, String)> {
    let r = start_with(listen, &RelayTls::Ephemeral, None).await?;
    Ok((r.server, r.url))
}

/// Starts a relay on `listen` that serves plain HTTP (endpoint ids pass in the clear): tests only.
pub async fn start_plain_http(listen: SocketAddr) -> anyhow::Result<(Server, String)> {
    let r = start_with(listen, &RelayTls::PlainHttp, None).await?;
    Ok((r.server, r.url))
}

/// Starts a relay. `host` is the name or address nodes reach it at (default: the listen address).
pub async fn start_with(
    listen: SocketAddr,
    tls: &RelayTls,
    host: Option<&str>,
) -> anyhow::Result<Relay> {
    let host = match host {
        Some(h) => h.to_owned(),
        None if listen.ip().is_unspecified() => {
            return Err(user(format!(
                "--listen {listen} serves every interface, so the URL to print is unknown: pass \
                 --host NAME (the name or IP address nodes reach this relay at)"
            )));
        }
        None => listen.ip().to_string(),
    };
    let mut relay = RelayConfig::new(listen);
    relay.key_cache_capacity = Some(4096);
    let pin = match tls {
        RelayTls::PlainHttp => None,
        RelayTls::Files { cert, key } => {
            let (chain, key) = read_pem(cert, key)?;
            relay.tls = Some(tls_config(listen, chain, key)?);
            None
        }
        RelayTls::SelfSigned { state } => {
            let (chain, key) = self_signed_in(state, &host)?;
            let pin = pin_of(chain[0].as_ref());
            relay.tls = Some(tls_config(listen, chain, key)?);
            Some(pin)
        }
        RelayTls::Ephemeral => {
            let (chain, key) = self_signed(&host)?;
            let pin = pin_of(chain[0].as_ref());
            relay.tls = Some(tls_config(listen, chain, key)?);
            Some(pin)
        }
    };
    if relay.tls.is_some() {
        // HTTPS takes the listen address; plain HTTP then only answers captive-portal checks, on a port of
        // its own.
        relay.http_bind_addr = SocketAddr::new(listen.ip(), 0);
    }
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    let server = Server::spawn(config).await.map_err(|e| {
        anyhow::anyhow!("cannot start the relay on {listen}: {e} (is the port already in use?)")
    })?;
    let (port, url) = match (server.https_addr(), server.http_addr()) {
        (Some(a), _) => (
            a.port(),
            match pin {
                Some(pin) => pinned_url(&host, a.port(), &pin),
                None => format!("https://{}:{}/", bracketed(&host), a.port()),
            },
        ),
        (None, Some(a)) => (
            a.port(),
            format!("http://{}:{}/", bracketed(&host), a.port()),
        ),
        (None, None) => anyhow::bail!("the relay started without an address"),
    };
    Ok(Relay { server, url, port })
}

fn bracketed(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn tls_config(
    listen: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<TlsConfig> {
    let server_config =
        rustls::ServerConfig::builder_with_provider(iroh_relay::tls::default_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                user(format!(
                    "the relay's certificate and key do not fit together: {e}"
                ))
            })?;
    Ok(TlsConfig::new(listen, CertConfig::Manual { server_config }))
}

fn read_pem(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            user(format!(
                "cannot read the certificate chain {}: {e} (a PEM file, the server's certificate first)",
                cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(user(format!(
            "{} holds no certificate: pass the PEM chain, the server's certificate first",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        user(format!(
            "cannot read the private key {}: {e} (a PEM file with one private key)",
            key.display()
        ))
    })?;
    Ok((chain, key))
}

type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A new self-signed certificate for `host`. Its name matters little: nodes check the pin.
fn self_signed(host: &str) -> anyhow::Result<CertAndKey> {
    let (cert, key) = self_signed_pem(host)?;
    parse_pair(cert.as_bytes(), key.as_bytes())
        .ok_or_else(|| anyhow::anyhow!("a certificate just made does not parse"))
}

fn self_signed_pem(host: &str) -> anyhow::Result<(String, String)> {
    let made = rcgen::generate_simple_self_signed(vec![host.to_owned()])
        .map_err(|e| anyhow::anyhow!("cannot make a self-signed certificate for {host}: {e}"))?;
    Ok((made.cert.pem(), made.signing_key.serialize_pem()))
}

fn parse_pair(cert: &[u8], key: &[u8]) -> Option<CertAndKey> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_slice(key).ok()?;
    (!chain.is_empty()).then_some((chain, key))
}

const STATE_CERT: &str = "relay-cert.pem";
const STATE_KEY: &str = "relay-key.pem";

/// The self-signed certificate kept in `state`, made at the first start. Kept so the pin, and with it
/// every URL nodes and their contacts hold, stays valid across restarts.
fn self_signed_in(state: &Path, host: &str) -> anyhow::Result<CertAndKey> {
    let cert_path = state.join(STATE_CERT);
    let key_path = state.join(STATE_KEY);
    if cert_path.exists() || key_path.exists() {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                user(format!(
                    "cannot read {}: {e} (the relay's kept certificate; fix its permissions)",
                    p.display()
                ))
            })
        };
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        return parse_pair(&cert, &key).ok_or_else(|| {
            user(format!(
                "{} or {} is damaged: restore them from a backup, or remove both to make a new \
                 certificate (nodes then need the new URL with its new pin)",
                cert_path.display(),
                key_path.display()
            ))
        });
    }
    let (cert, key) = self_signed_pem(host)?;
    write_private(state, &key_path, key.as_bytes())?;
    write_private(state, &cert_path, cert.as_bytes())?;
    parse_pair(cert.as_bytes(), key.as_bytes())
        .ok_or_else(|| anyhow::anyhow!("a certificate just made does not parse"))
}

/// Writes a new file readable by the owner only (in a folder only the owner enters), all or nothing.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| {
        user(format!(
            "cannot write {}: {e} (pass --state DIR with a folder this user may write)",
            path.display()
        ))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The default state folder: `kith-relay` in the platform's data folder (~/.local/share/kith-relay).
pub fn default_state() -> anyhow::Result<PathBuf> {
    directories::BaseDirs::new()
        .map(|d| d.data_dir().join("kith-relay"))
        .ok_or_else(|| {
            user("cannot find a home folder for the relay's certificate: pass --state DIR")
        })
}

/// `kith relay`: serves until Ctrl-C.
pub async fn run(
    listen: SocketAddr,
    tls: RelayTls,
    host: Option<String>,
    announce_via: Option<Vec<String>>,
) -> anyhow::Result<()> {
    if matches!(tls, RelayTls::PlainHttp) && announce_via.is_some() {
        return Err(user(
            "--announce-via needs TLS: nodes use relays found in the DHT only over https. Drop \
             --plain-http (the default is a self-signed certificate)",
        ));
    }
    let relay = start_with(listen, &tls, host.as_deref()).await?;
    let url = relay.url.clone();
    crate::say!("{url}");
    match &tls {
        RelayTls::PlainHttp => eprintln!(
            "kith relay: serving PLAIN HTTP on {url}: endpoint ids pass in the clear (tests only)."
        ),
        RelayTls::SelfSigned { state } => eprintln!(
            "kith relay: serving TLS with a self-signed certificate (kept in {}); the pin in the URL \
             makes nodes accept only this certificate.",
            state.display()
        ),
        _ => {}
    }
    eprintln!("kith relay: nodes use it with `kith daemon --relay '{url}'`. Ctrl-C stops.");
    let announcer = match announce_via {
        Some(bootstrap) => {
            let bind = match listen.ip() {
                IpAddr::V4(ip) => ip,
                _ => Ipv4Addr::LOCALHOST,
            };
            let dht = KithDht::start(&DhtConfig {
                bootstrap,
                bind,
                port: None,
                server: false,
            })?;
            let port = relay.port;
            Some(tokio::spawn(async move {
                loop {
                    match dht.announce(RELAY_INFOHASH, port).await {
                        Ok(()) => eprintln!("kith relay: announced in the DHT"),
                        Err(e) => eprintln!("kith relay: announcing failed ({e}); retrying"),
                    }
                    // Peers announced with BEP5 are kept for about 30 minutes.
                    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
                }
            }))
        }
        None => None,
    };
    tokio::signal::ctrl_c().await?;
    if let Some(a) = announcer {
        a.abort();
    }
    relay
        .server
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("relay shutdown: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_certificate_keeps_its_pin_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = self_signed_in(&state, "127.0.0.1").unwrap();
        let again = self_signed_in(&state, "other.example").unwrap();
        assert_eq!(
            pin_of(first.0[0].as_ref()),
            pin_of(again.0[0].as_ref()),
            "a restart keeps the certificate, whatever host it is given"
        );
        for f in [STATE_CERT, STATE_KEY] {
            let mode = std::fs::metadata(state.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(state.join(STATE_KEY), "not a key").unwrap();
        let e = self_signed_in(&state, "127.0.0.1").unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("remove both"), "{e}");
    }

    /// An operator's PEM files (a chain from a private authority): the URL has no pin, and a node that
    /// trusts the authority reaches the relay.
    #[tokio::test]
    async fn certificate_files_serve_tls_without_a_pin() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let files = RelayTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        let r = start_with("127.0.0.1:0".parse().unwrap(), &files, None)
            .await
            .unwrap();
        assert_eq!(r.url, format!("https://127.0.0.1:{}/", r.port));
        kith_net::relay_tls::probe(&r.url, &[ca.der().to_vec()])
            .await
            .unwrap();
        // A key file that holds no key: refused with the file's name.
        std::fs::write(&key, "nothing").unwrap();
        let e = start_with("127.0.0.1:0".parse().unwrap(), &files, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("key.pem"), "{e}");
    }

    #[tokio::test]
    async fn every_interface_needs_a_host_for_the_url() {
        let e = start_with("0.0.0.0:0".parse().unwrap(), &RelayTls::Ephemeral, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--host"), "{e}");
    }

    #[tokio::test]
    async fn urls_name_the_https_port_and_the_pin() {
        let r = start_with("127.0.0.1:0".parse().unwrap(), &RelayTls::Ephemeral, None)
            .await
            .unwrap();
        assert_eq!(r.server.https_addr().unwrap().port(), r.port);
        let parsed = kith_net::relay_tls::parse_relay_url(&r.url).unwrap();
        assert!(parsed.tls && parsed.pin.is_some(), "{}", r.url);
        let plain = start_with("127.0.0.1:0".parse().unwrap(), &RelayTls::PlainHttp, None)
            .await
            .unwrap();
        assert!(plain.url.starts_with("http://127.0.0.1:"), "{}", plain.url);
    }
}
