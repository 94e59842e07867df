//! kith-net: the networking driver. It turns an iroh QUIC endpoint into authenticated kith sessions.
//!
//! What it does: binds an iroh endpoint with kith's settings (ALPN `kith/1`, n0's default relays and
//! address lookup OFF, no port mapping, loopback unless told otherwise), dials a peer through the
//! [`Discovery`] seam, runs the hello exchange on the first bidirectional stream and hands back a
//! [`Session`] whose peer proved the chain account -> device -> endpoint. A peer that cannot prove it is
//! dropped with the reason in the log and in the QUIC close frame.
//!
//! What it does not do: decide what to send (that is `kith-node`), parse frames (that is `kith-core::wire`)
//! or find addresses itself: [`Discovery`] answers "where might this account be?". Today the answer comes
//! from contact-card hints; the DHT plugs in behind the same trait.
//!
//! Call contract: [`Net::bind`], then loop on [`Net::accept`] in one task and call [`Net::dial`] as needed;
//! each [`Session`] is split into a [`SessionReader`] and a [`SessionWriter`] for two tasks.
#![forbid(unsafe_code)]

pub mod dht;
mod discovery;
pub mod relay_tls;
mod session;
pub mod testnet;

pub use discovery::{BoxFuture, Discovery, StaticDiscovery};
pub use session::{
    PathKind, Session, SessionError, SessionReader, SessionWriter, ip_paths, path_kind,
};

use iroh::endpoint::{AckFrequencyConfig, PortmapperConfig, QuicTransportConfig, VarInt, presets};
use iroh::{Endpoint, EndpointAddr, RelayConfig, RelayMap, RelayMode, SecretKey, TransportAddr};
use kith_core::hello::{Hello, VerifiedPeer};
use kith_core::{AccountKey, EndpointKey, Hints};
use relay_tls::RelayTrust;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The QUIC ALPN of kith's control protocol.
pub const ALPN: &[u8] = b"kith/1";
/// The QUIC ALPN of deposits into a mailbox: no hello (the depositor stays anonymous), one request and
/// one response per bidirectional stream, each `u32 length | postcard` ([`kith_core::mailbox`]).
pub const MAILBOX_ALPN: &[u8] = b"kith-mailbox/1";
/// The largest mailbox request or response accepted.
pub const MAILBOX_MAX: usize = 128 * 1024;
/// How long the hello exchange may take before the connection is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dial may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay between starting dials to successive hints of one account.
pub const DIAL_STAGGER: Duration = Duration::from_millis(250);
/// How long a peer may hold back its ACK of our packets (QUIC's ACK-frequency extension).
///
/// A voice call sends a datagram every 20 ms each way. A listener in a pause sends almost nothing, so
/// by QUIC's default (an ACK for every second packet, or after 25 ms) it sent an ACK-only packet every
/// 40 ms, and woke the talker's daemon for each: a quarter of its wake-ups. Asked for one ACK per
/// [`ACK_EVERY`] packets or this delay, the listener ACKs 5 times a second, and any datagram it does
/// send carries its pending ACKs. The cost: a lost packet at the tail of a burst is probed for this
/// much later (the probe timeout includes the peer's ACK delay). Out-of-order arrivals (a loss) are
/// still ACKed at once, so loss detection keeps its pace.
pub const MAX_ACK_DELAY: Duration = Duration::from_millis(200);
/// Ack-eliciting packets a peer may take in before it ACKs (at 50 datagrams a second: 200 ms).
pub const ACK_EVERY: u32 = 10;

/// Errors of [`Net::bind`].
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot use {addr} as the listen address: {reason}")]
    BadAddress { addr: SocketAddr, reason: String },
    #[error(
        "cannot open the network endpoint: {0} (is the port already in use by another program?)"
    )]
    Endpoint(String),
    #[error(transparent)]
    BadRelay(#[from] relay_tls::RelayUrlError),
    #[error("relay-only mode needs at least one relay: pass --relay URL")]
    RelayOnlyWithoutRelay,
}

/// Where `hint` says an endpoint is: its key, direct addresses and relays. The pins of its relays are
/// registered with `trust` first: the peer's relay may be one this endpoint never used, and its
/// certificate is checked against the pin the peer's card or record carries.
fn endpoint_addr(hint: &Hints, trust: &RelayTrust) -> Result<EndpointAddr, DialError> {
    let endpoint = hint.endpoint.ok_or(DialError::NoRoute)?;
    let id = iroh::EndpointId::from_bytes(endpoint.as_bytes())
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let addrs = hint.direct.iter().map(|a| TransportAddr::Ip(*a));
    let relays = hint
        .relays
        .iter()
        .filter_map(|r| relay_tls::parse_relay_url(r).ok())
        .map(|r| {
            trust.register(&r);
            TransportAddr::Relay(r.url)
        })
        .collect::<Vec<_>>();
    Ok(EndpointAddr::from_parts(id, addrs.chain(relays)))
}

/// A depositor's (or anyone's) connection to a mailbox.
#[derive(Clone)]
pub struct MailboxConn(iroh::endpoint::Connection);

impl MailboxConn {
    /// One request; returns the response's bytes.
    pub async fn request(&self, request: &[u8]) -> Result<Vec<u8>, DialError> {
        check_size(request)?;
        let exchange = async {
            let (mut send, mut recv) = self
                .0
                .open_bi()
                .await
                .map_err(|e| DialError::Connect(e.to_string()))?;
            write_piece(&mut send, request).await?;
            let _ = send.finish();
            read_piece(&mut recv).await
        };
        tokio::time::timeout(DIAL_TIMEOUT, exchange)
            .await
            .map_err(|_| DialError::Timeout)?
    }

    pub fn close(&self) {
        self.0.close(0u32.into(), b"done");
    }
}

/// What [`Net::accept_any`] took in.
pub enum Incoming {
    Session(Box<Session>),
    Mailbox(iroh::endpoint::Connection),
}

/// Refuses a mailbox message over [`MAILBOX_MAX`] before anything is sent.
fn check_size(b: &[u8]) -> Result<(), DialError> {
    if b.len() > MAILBOX_MAX {
        return Err(DialError::Connect(format!(
            "mailbox request of {} bytes is over the {MAILBOX_MAX}-byte limit",
            b.len()
        )));
    }
    Ok(())
}

async fn write_piece(send: &mut iroh::endpoint::SendStream, b: &[u8]) -> Result<(), DialError> {
    check_size(b)?;
    send.write_all(&(b.len() as u32).to_be_bytes())
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    send.write_all(b)
        .await
        .map_err(|e| DialError::Connect(e.to_string()))
}

async fn read_piece(recv: &mut iroh::endpoint::RecvStream) -> Result<Vec<u8>, DialError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAILBOX_MAX {
        return Err(DialError::Connect(format!(
            "mailbox message of {len} bytes is over the {MAILBOX_MAX}-byte limit"
        )));
    }
    let mut b = vec![0u8; len];
    recv.read_exact(&mut b)
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    Ok(b)
}

/// Serves one mailbox connection: each bidirectional stream carries one request, answered by `handle`
/// (which gets the request's bytes and returns the response's). Returns when the peer closes or
/// misbehaves (a request over the limit, a stream cut short).
pub async fn serve_mailbox<F, Fut>(conn: iroh::endpoint::Connection, handle: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let request = match read_piece(&mut recv).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(reason = %e, "mailbox request dropped");
                conn.close(1u32.into(), b"bad request");
                return;
            }
        };
        let response = handle(request).await;
        if write_piece(&mut send, &response).await.is_err() {
            return;
        }
        let _ = send.finish();
    }
}

/// Errors of [`Net::dial`].
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(
        "no known way to reach this contact yet (no endpoint in their card): ask for their current card"
    )]
    NoRoute,
    /// Every way we know to the peer goes through a relay, and there is none to use.
    #[error(
        "they take connections only through a relay, and {0}: run one (`kith relay`) and name it \
         (`kith daemon --relay URL`, or `relays` in config.toml), or exchange cards with them"
    )]
    NeedRelay(&'static str),
    #[error("could not connect: {0}")]
    Connect(String),
    /// The TLS handshake refused the certificate of whoever answered: it does not hold the endpoint key
    /// the card or record names (an impostor at that address, or someone on the path sending the packets
    /// to a node of its own). The hello was never sent.
    #[error(
        "the node that answered at {at} could not prove it holds their key (endpoint {endpoint}): an \
         impostor, or someone on the path in between; nothing was sent to it"
    )]
    NotTheirKey { at: String, endpoint: String },
    #[error("connection attempt timed out")]
    Timeout,
    #[error("handshake failed: {0}")]
    Session(#[from] SessionError),
}

/// A bound endpoint.
#[derive(Clone)]
pub struct Net {
    endpoint: Endpoint,
    discovery: Arc<dyn Discovery>,
    relays: Arc<std::sync::RwLock<Vec<String>>>,
    trust: RelayTrust,
}

/// Relays and IP policy of an endpoint.
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    /// Relay URLs: `https://relay.example.org/` (a certificate from an authority), or
    /// `https://HOST:PORT/?pin=HEX` (a self-signed one, as `kith relay` prints it), or `http://...` for a
    /// test relay on loopback. See [`relay_tls`].
    pub relays: Vec<String>,
    /// Root certificates (DER) trusted for relays beside the Mozilla roots (e.g. a private CA).
    pub extra_roots: Vec<Vec<u8>>,
    /// Use no IP transport at all: every packet goes through a relay, so no peer ever learns this
    /// machine's IP address.
    pub relay_only: bool,
}

impl Net {
    /// Binds the endpoint. `bind` is a UDP socket address; port 0 picks a free one.
    pub async fn bind(
        secret: [u8; 32],
        bind: SocketAddr,
        discovery: Arc<dyn Discovery>,
    ) -> Result<Self, BindError> {
        Self::bind_with(secret, bind, discovery, &NetOptions::default()).await
    }

    /// Binds the endpoint with relays and an IP policy.
    pub async fn bind_with(
        secret: [u8; 32],
        bind: SocketAddr,
        discovery: Arc<dyn Discovery>,
        options: &NetOptions,
    ) -> Result<Self, BindError> {
        let trust = RelayTrust::new(&options.extra_roots);
        let parsed = options
            .relays
            .iter()
            .map(|u| relay_tls::parse_relay_url(u))
            .collect::<Result<Vec<_>, _>>()?;
        for r in &parsed {
            trust.register(r);
        }
        let relay_texts: Vec<String> = parsed.iter().map(|r| r.as_text()).collect();
        let relays: Vec<RelayConfig> = parsed
            .into_iter()
            .map(|r| RelayConfig::new(r.url, None))
            .collect();
        // Always a custom map (possibly empty), never n0's defaults; relays found later are inserted into it.
        let relay_mode = RelayMode::Custom(relays.into_iter().collect::<RelayMap>());
        let mut ack = AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(ACK_EVERY - 1))
            .max_ack_delay(Some(MAX_ACK_DELAY));
        let transport = QuicTransportConfig::builder()
            .ack_frequency_config(Some(ack))
            .build();
        let mut builder = Endpoint::builder(presets::Minimal)
            .transport_config(transport)
            .secret_key(SecretKey::from_bytes(&secret))
            .alpns(vec![ALPN.to_vec(), MAILBOX_ALPN.to_vec()])
            .relay_mode(relay_mode)
            .ca_tls_config(trust.ca_tls_config())
            .clear_address_lookup()
            .portmapper_config(PortmapperConfig::Disabled)
            .clear_ip_transports();
        if options.relay_only {
            if options.relays.is_empty() {
                return Err(BindError::RelayOnlyWithoutRelay);
            }
        } else {
            builder = builder.bind_addr(bind).map_err(|e| BindError::BadAddress {
                addr: bind,
                reason: e.to_string(),
            })?;
        }
        let endpoint = builder
            .bind()
            .await
            .map_err(|e| BindError::Endpoint(e.to_string()))?;
        Ok(Self {
            endpoint,
            discovery,
            relays: Arc::new(std::sync::RwLock::new(relay_texts)),
            trust,
        })
    }

    /// The relay URLs this endpoint uses.
    pub fn relays(&self) -> Vec<String> {
        self.relays
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// [`Self::relays`] with those this endpoint is connected to as its home first: what a record or card
    /// names first must be where the endpoint can be reached now (iroh picks the home relay by latency,
    /// not by the order configured), since a record too small for every relay keeps the first ones.
    pub fn relays_home_first(&self) -> Vec<String> {
        let home = self.home_relays();
        let mut list = self.relays();
        // A stable sort: otherwise the configured order.
        list.sort_by_key(|r| !home.contains(r));
        list
    }

    /// Waits until the relays this endpoint is connected to as its home differ from `from` (what
    /// [`Self::home_relays`] said when the caller last used them); returns at once if they already do.
    pub async fn home_relays_changed(&self, from: &[String]) {
        use iroh::Watcher;
        let mut watcher = self.endpoint.home_relay_status();
        loop {
            if self.home_relays() != from {
                return;
            }
            if watcher.updated().await.is_err() {
                // The endpoint is closed: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Starts using another relay (e.g. one found in the DHT). Its pin, if the URL has one, is
    /// registered before the endpoint first connects to it.
    pub async fn add_relay(&self, url: &str) -> Result<(), BindError> {
        let parsed = relay_tls::parse_relay_url(url)?;
        self.trust.register(&parsed);
        let text = parsed.as_text();
        self.endpoint
            .insert_relay(
                parsed.url.clone(),
                Arc::new(RelayConfig::new(parsed.url, None)),
            )
            .await;
        let mut relays = self.relays.write().unwrap_or_else(|e| e.into_inner());
        if !relays.contains(&text) {
            relays.push(text);
        }
        Ok(())
    }

    /// Relays this endpoint failed to use, with iroh's last error for each (e.g. a certificate that does
    /// not match the URL's pin).
    pub fn relay_errors(&self) -> Vec<(String, String)> {
        use iroh::Watcher;
        self.endpoint
            .home_relay_status()
            .get()
            .iter()
            .filter(|s| !s.is_connected())
            .filter_map(|s| Some((s.url().to_string(), s.last_error()?.to_string())))
            .collect()
    }

    /// Whether the endpoint is connected to at least one relay.
    pub fn relay_connected(&self) -> bool {
        use iroh::Watcher;
        self.endpoint
            .home_relay_status()
            .get()
            .iter()
            .any(|s| s.is_connected())
    }

    /// Waits until the relays' state satisfies `done` (given, per relay, its URL, whether it is connected
    /// and its last error), or `within` passes; returns whether it did. Driven by the endpoint's own
    /// notifications, not by polling.
    pub async fn wait_relays(
        &self,
        within: Duration,
        done: impl Fn(&[(String, bool, Option<String>)]) -> bool,
    ) -> bool {
        use iroh::Watcher;
        let mut watcher = self.endpoint.home_relay_status();
        let wait = async {
            loop {
                let now: Vec<(String, bool, Option<String>)> = watcher
                    .get()
                    .iter()
                    .map(|s| {
                        (
                            s.url().to_string(),
                            s.is_connected(),
                            s.last_error().map(|e| e.to_string()),
                        )
                    })
                    .collect();
                if done(&now) {
                    return true;
                }
                if watcher.updated().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }

    /// The relays this endpoint is connected to as its home (URLs as iroh prints them).
    pub fn home_relays(&self) -> Vec<String> {
        use iroh::Watcher;
        self.endpoint
            .home_relay_status()
            .get()
            .iter()
            .filter(|s| s.is_connected())
            .map(|s| s.url().to_string())
            .collect()
    }

    /// The endpoint key peers see on the QUIC layer.
    pub fn endpoint_key(&self) -> EndpointKey {
        EndpointKey::from_bytes(*self.endpoint.id().as_bytes())
            .expect("iroh ids are valid ed25519 keys")
    }

    /// The IP addresses the endpoint believes it is reachable at: its sockets, and for a socket bound to
    /// every interface, the interfaces' addresses.
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .endpoint
            .addr()
            .ip_addrs()
            .copied()
            .filter(|a| !a.ip().is_unspecified())
            .collect();
        if out.is_empty() {
            out = self
                .local_addrs()
                .into_iter()
                .filter(|a| !a.ip().is_unspecified())
                .collect();
        }
        out
    }

    /// The local UDP addresses the endpoint is bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Dials `account` using every hint the discovery knows, sends `hello` and verifies the peer's.
    ///
    /// The hints are tried as a race ("happy eyeballs"): the first at once, each further one
    /// [`DIAL_STAGGER`] later, and the first verified session wins. So a stale hint (an endpoint of a past
    /// period) costs a few hundred milliseconds, not a whole [`DIAL_TIMEOUT`].
    pub async fn dial(
        &self,
        account: AccountKey,
        hello: &Hello,
        now_unix: u64,
    ) -> Result<Session, DialError> {
        use futures_util::StreamExt;
        let hints: Vec<Hints> = self
            .discovery
            .resolve(account)
            .await
            .into_iter()
            .filter(|h| h.endpoint.is_some())
            .collect();
        // A path needs an address or a relay (iroh reaches a relay named in the peer's record whether or
        // not this node uses it too). A record with neither is a peer that takes requests only through a
        // relay and knows none.
        if !hints.is_empty()
            && hints
                .iter()
                .all(|h| h.direct.is_empty() && h.relays.is_empty())
        {
            return Err(DialError::NeedRelay(
                "neither their record nor this node names one",
            ));
        }
        let mut attempts = futures_util::stream::FuturesUnordered::new();
        for (i, hint) in hints.into_iter().enumerate() {
            attempts.push(async move {
                tokio::time::sleep(DIAL_STAGGER * i as u32).await;
                self.dial_hint(account, &hint, hello, now_unix).await
            });
        }
        let mut last = DialError::NoRoute;
        while let Some(result) = attempts.next().await {
            match result {
                Ok(session) => return Ok(session),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Dials one endpoint of `account` (e.g. the contact endpoint named in the card a peer just sent).
    pub async fn dial_hint(
        &self,
        account: AccountKey,
        hint: &Hints,
        hello: &Hello,
        now_unix: u64,
    ) -> Result<Session, DialError> {
        let addr = endpoint_addr(hint, &self.trust)?;
        let conn = match tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.connect(addr, ALPN)).await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if refused_their_certificate(&e) => {
                let mut at: Vec<String> = hint.direct.iter().map(ToString::to_string).collect();
                at.extend(hint.relays.iter().map(|r| format!("relay {r}")));
                return Err(DialError::NotTheirKey {
                    at: at.join(", "),
                    endpoint: hint.endpoint.map_or_else(|| "?".into(), |e| e.short()),
                });
            }
            Ok(Err(e)) => return Err(DialError::Connect(e.to_string())),
            Err(_) => return Err(DialError::Timeout),
        };
        Ok(Session::handshake_dialer(conn, account, hello, now_unix).await?)
    }

    /// Waits for the next incoming connection and runs the hello exchange. Returns `None` once the endpoint
    /// is closed. A failed handshake is logged and skipped, so callers simply loop.
    pub async fn accept(
        &self,
        hello: &Hello,
        now_unix: impl Fn() -> u64,
    ) -> Option<Result<Session, SessionError>> {
        self.accept_with(|_| Ok(hello.clone()), now_unix).await
    }

    /// Like [`Net::accept`], but the hello sent back is chosen after the dialer proved who it is: e.g. a
    /// contact gets a card naming more than a stranger's does, or `Err(reason)` refuses the dialer. A
    /// mailbox connection is refused here (see [`Net::accept_any`]).
    ///
    /// One connection at a time: a dialer that stops half-way holds the next one up to [`HELLO_TIMEOUT`].
    /// A server that meets strangers takes [`Net::next_incoming`] and runs each [`Pending::handshake`] in a
    /// task of its own.
    pub async fn accept_with(
        &self,
        hello_for: impl FnOnce(&VerifiedPeer) -> Result<Hello, &'static str>,
        now_unix: impl Fn() -> u64,
    ) -> Option<Result<Session, SessionError>> {
        Some(match self.accept_any(hello_for, now_unix).await? {
            Ok(Incoming::Session(s)) => Ok(*s),
            Ok(Incoming::Mailbox(conn)) => {
                conn.close(0u32.into(), b"no mailbox here");
                Err(SessionError::Connection(
                    "a mailbox connection where none is served".into(),
                ))
            }
            Err(e) => Err(e),
        })
    }

    /// The next incoming connection, handshaken: a kith session (after the hello exchange), or a mailbox
    /// connection (no hello: serve it with [`serve_mailbox`]). One at a time (see [`Net::accept_with`]).
    pub async fn accept_any(
        &self,
        hello_for: impl FnOnce(&VerifiedPeer) -> Result<Hello, &'static str>,
        now_unix: impl Fn() -> u64,
    ) -> Option<Result<Incoming, SessionError>> {
        let pending = self.next_incoming().await?;
        Some(pending.handshake(hello_for, now_unix()).await)
    }

    /// The next connection that reaches this endpoint, before any handshake (`None` once the endpoint is
    /// closed). Cheap: nothing is awaited from the dialer, so a dialer that stops half-way holds up only
    /// its own [`Pending::handshake`].
    pub async fn next_incoming(&self) -> Option<Pending> {
        self.endpoint.accept().await.map(Pending)
    }

    /// One request to the mailbox at `hint` over [`MAILBOX_ALPN`]; returns the response's bytes. The
    /// connection is this endpoint's, so callers that must stay anonymous use an endpoint of their own.
    pub async fn mailbox_request(
        &self,
        hint: &Hints,
        request: &[u8],
    ) -> Result<Vec<u8>, DialError> {
        check_size(request)?;
        let conn = self.mailbox_connect(hint).await?;
        let response = conn.request(request).await;
        conn.close();
        response
    }

    /// A connection to the mailbox at `hint` over [`MAILBOX_ALPN`], for many requests (each on a stream
    /// of its own, so they may run at once).
    pub async fn mailbox_connect(&self, hint: &Hints) -> Result<MailboxConn, DialError> {
        self.connect_raw(hint, MAILBOX_ALPN).await.map(MailboxConn)
    }

    /// A bare QUIC connection to the endpoint at `hint` under `alpn`, with nothing sent on it: the
    /// caller speaks (or, as a test's adversary, stays silent).
    pub async fn connect_raw(
        &self,
        hint: &Hints,
        alpn: &[u8],
    ) -> Result<iroh::endpoint::Connection, DialError> {
        let addr = endpoint_addr(hint, &self.trust)?;
        tokio::time::timeout(DIAL_TIMEOUT, self.endpoint.connect(addr, alpn))
            .await
            .map_err(|_| DialError::Timeout)?
            .map_err(|e| DialError::Connect(e.to_string()))
    }

    /// Closes the endpoint and every connection on it.
    pub async fn close(&self) {
        self.endpoint.close().await;
    }
}

/// Where a pending connection comes from, for per-source caps on handshakes: the dialer's IP address, or,
/// through a relay (which shows no address), its endpoint id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Ip(std::net::IpAddr),
    Relayed([u8; 32]),
    Other,
}

/// A connection that reached an endpoint, before any handshake: see [`Net::next_incoming`].
pub struct Pending(iroh::endpoint::Incoming);

impl Pending {
    /// Where it comes from.
    pub fn source(&self) -> Source {
        match self.0.remote_addr() {
            iroh::endpoint::IncomingAddr::Ip(a) => Source::Ip(a.ip().to_canonical()),
            iroh::endpoint::IncomingAddr::Relay { endpoint_id, .. } => {
                Source::Relayed(*endpoint_id.as_bytes())
            }
            _ => Source::Other,
        }
    }

    /// Turns it away before the handshake (a QUIC refusal: no state is kept for it).
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// The QUIC handshake and, for a kith session, the hello exchange (see [`Net::accept_with`] for
    /// `hello_for`), all within [`HELLO_TIMEOUT`].
    pub async fn handshake(
        self,
        hello_for: impl FnOnce(&VerifiedPeer) -> Result<Hello, &'static str>,
        now_unix: u64,
    ) -> Result<Incoming, SessionError> {
        let steps = async {
            let accepting = self
                .0
                .accept()
                .map_err(|e| SessionError::Connection(e.to_string()))?;
            let conn = accepting
                .await
                .map_err(|e| SessionError::Connection(e.to_string()))?;
            if conn.alpn() == MAILBOX_ALPN {
                return Ok(Incoming::Mailbox(conn));
            }
            Session::handshake_acceptor(conn, hello_for, now_unix)
                .await
                .map(|s| Incoming::Session(Box::new(s)))
        };
        tokio::time::timeout(HELLO_TIMEOUT, steps)
            .await
            .map_err(|_| SessionError::Timeout)?
    }
}

/// Whether a connection attempt failed because this side's TLS refused the certificate it was shown (a
/// locally raised certificate alert: bad_certificate (42) to unknown_ca (48), or decrypt_error (51)). In
/// iroh the certificate is the endpoint key itself, so this is a peer without the key dialled.
fn refused_their_certificate(e: &iroh::endpoint::ConnectError) -> bool {
    use iroh::endpoint::{ConnectError, ConnectingError, ConnectionError, TransportErrorCode};
    let conn = match e {
        ConnectError::Connecting {
            source: ConnectingError::ConnectionError { source, .. },
            ..
        }
        | ConnectError::Connection { source, .. } => source,
        _ => return false,
    };
    matches!(conn, ConnectionError::TransportError(t)
        if (42..=48).chain([51]).any(|alert| t.code == TransportErrorCode::crypto(alert)))
}
