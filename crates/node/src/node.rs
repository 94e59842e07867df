//! The running node: the delivery state machines of `kith-core` driven by real connections and the store.
//!
//! Structure: one [`Node`] shared by
//! * the accept loop (incoming sessions),
//! * one reader and one writer task per connection,
//! * the pump: the only place that asks the outboxes what to transmit, when to dial and when to wake up
//!   (quinn's "drain all outputs after every input", run whenever something changes via [`Notify`]),
//! * the control API handlers.
//!
//! Locking: `state` (in-memory protocol state) is taken before `store` when both are needed, never the other
//! way round, and neither is held across an `.await`.

use crate::discovery::{DiscoveryConfig, NodeDiscovery};
use crate::events::Event;
use crate::limiter::{LimiterConfig, RequestLimiter};
use crate::profile::Identity;
use kith_core::call::{CallConfig, CallEvent, CallId, CallOutput, Calls, Direction, EndReason};
use kith_core::delivery::{Inbox, Offer, Outbox, OutboxConfig};
use kith_core::hello::{Hello, VerifiedPeer};
use kith_core::record::DeviceEntry;
use kith_core::wire::{Frame, MAX_RECEIPT_SEQS, MAX_TEXT_BYTES, MessageFrame, ReceiptFrame};
use kith_core::{AccountKey, Address, ContactCard, DeviceKey, EndpointCert, Hints, ParsedContact};
use kith_net::dht::{DhtConfig, DhtInfo};
use kith_net::{Net, PathKind, Session, SessionReader, SessionWriter};
use kith_store::{ChatMessage, Incoming, Peer, PeerState, Store, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast, mpsc};

mod mail;

/// Frames queued for one connection's writer.
const CONN_QUEUE: usize = 512;
/// Messages read from one connection before they are stored in one transaction.
const READ_BATCH: usize = 256;
/// Connections kept per peer; an older one is closed when a newer one arrives beyond this.
const MAX_CONNS_PER_PEER: usize = 2;
/// Pending contact requests (distinct strangers) kept at once.
const MAX_STRANGERS: usize = 256;
/// Peers (contacts and strangers) with in-memory protocol state; a stranger beyond it is refused.
const MAX_PEERS_IN_MEMORY: usize = 4096;
/// Contacts dialled at once when the node starts (to announce itself and flush outboxes).
const ANNOUNCE_CONCURRENCY: usize = 8;
/// How far outside its period an endpoint certificate stays valid (clock skew, and connections that
/// straddle the boundary).
const ENDPOINT_CERT_MARGIN_SECS: u64 = 10 * 60;

/// The device's certificate for its endpoint of `period`: valid for that period, plus a margin.
fn endpoint_cert_for(
    id: &Identity,
    endpoint: kith_core::EndpointKey,
    period: kith_core::blind::PeriodNum,
    minutes: u64,
) -> EndpointCert {
    let start = period.0 * minutes * 60;
    let end = start + minutes * 60;
    EndpointCert::issue(
        &id.device,
        endpoint,
        start.saturating_sub(ENDPOINT_CERT_MARGIN_SECS),
        end + ENDPOINT_CERT_MARGIN_SECS,
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Errors of node operations, each naming what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Contact(#[from] kith_core::CardError),
    #[error("that is your own address: you cannot add yourself as a contact")]
    SelfContact,
    #[error("the message is empty")]
    EmptyMessage,
    #[error("the message is {0} bytes, more than the {MAX_TEXT_BYTES}-byte limit: split it")]
    MessageTooLong(usize),
    #[error("network: {0}")]
    Net(String),
    #[error(
        "this daemon runs without the DHT (--no-dht): start it with a bootstrap list to look people up"
    )]
    NoDht,
    #[error("{0}")]
    Call(String),
    #[error(
        "{0} connected from a device you have not seen before (a new phone, a restored backup, or \
         someone who holds their key): nothing is sent to them until you confirm. Ask them, by another \
         way, whether they set up a new device; compare safety numbers (`kith verify {0}`), then confirm \
         with `kith verify {0} --confirm`"
    )]
    KeyChanged(String),
}

impl NodeError {
    /// Whether the error is the user's input (HTTP 4xx) rather than the node's fault.
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            NodeError::Net(_)
                | NodeError::Store(StoreError::Sqlite(_))
                | NodeError::Store(StoreError::TooNew(_))
        )
    }
}

struct ConnHandle {
    id: u64,
    tx: mpsc::Sender<Frame>,
    conn: iroh::endpoint::Connection,
    since_ms: i64,
    /// Both sides use their contact endpoints (not a request endpoint): the path may go direct.
    contact_grade: bool,
}

/// The connection a call's media goes over: the one the peer last sent a frame on (so it is alive at the
/// peer's end: after a peer's crash and restart, an older connection can lead to the dead process for a
/// while, and datagrams sent there are lost without an error). Without one, the newest; when both sides
/// dialled at about the same time (connections registered within [`SIMULTANEOUS_MS`]), the one the lower
/// account dialled, so that both sides tend to pick the same.
fn media_conn(
    me: AccountKey,
    peer: AccountKey,
    conns: &[ConnHandle],
    last_rx: Option<u64>,
) -> Option<iroh::endpoint::Connection> {
    let live: Vec<&ConnHandle> = conns
        .iter()
        .filter(|c| c.conn.close_reason().is_none())
        .collect();
    if let Some(c) = live.iter().find(|c| Some(c.id) == last_rx) {
        return Some(c.conn.clone());
    }
    let newest = live.iter().map(|c| c.since_ms).max()?;
    live.into_iter()
        .filter(|c| c.since_ms >= newest - SIMULTANEOUS_MS)
        .max_by_key(|c| {
            let dialled_by_me = c.conn.side() == iroh::endpoint::Side::Client;
            (dialled_by_me == (me.as_bytes() < peer.as_bytes()), c.id)
        })
        .map(|c| c.conn.clone())
}

/// Connections registered this close together count as one simultaneous dial (see [`media_conn`]).
const SIMULTANEOUS_MS: i64 = 2_000;

/// Which of the node's two endpoints.
///
/// * The **contact endpoint** may use IP paths (direct, hole-punched). Only contacts learn its key: from
///   the card we give or send them.
/// * The **request endpoint** has no IP transport at all, only relays. It is the one named in the public
///   discovery record, so a stranger who has our address can deliver a contact request through a relay
///   without ever learning our IP address. Exists while the node has at least one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Contact,
    Request,
}

struct PeerRt {
    outbox: Outbox,
    inboxes: HashMap<DeviceKey, Inbox>,
    conns: Vec<ConnHandle>,
    /// A dial to the peer's contact endpoint is under way (see [`Node::register`]).
    upgrading: bool,
    /// The connection the peer last sent a frame on: known to be alive at its end.
    last_rx: Option<u64>,
    /// Why the last dial failed (cleared by a connection): what `contacts`, `chat` and `send` say when
    /// messages wait.
    last_dial_error: Option<String>,
    /// A device of theirs appeared that the user has not confirmed: nothing is transmitted to them.
    held: bool,
}

impl PeerRt {
    fn new(config: &OutboxConfig) -> Self {
        Self {
            outbox: Outbox::new(config.clone()),
            inboxes: HashMap::new(),
            conns: Vec::new(),
            upgrading: false,
            last_rx: None,
            last_dial_error: None,
            held: false,
        }
    }
}

struct State {
    peers: HashMap<AccountKey, PeerRt>,
    next_conn: u64,
    limiter: RequestLimiter,
    endpoint_cert: EndpointCert,
    card: ContactCard,
    /// The request endpoint's certificate and the card strangers get (no IP address, no contact endpoint).
    request: Option<(EndpointCert, ContactCard)>,
    /// Generation of our contact key (see [`Identity::contact_key`]); moves on when a contact is removed.
    contact_key_gen: u64,
    /// Call signalling of every call (see `kith_core::call`).
    calls: Calls<AccountKey>,
    /// What the user asked for each call (audio in/out, duration), and its times for the log.
    call_meta: HashMap<CallId, CallMeta>,
    /// Running media, by call.
    media: HashMap<CallId, crate::media::MediaHandle>,
}

struct CallMeta {
    options: crate::media::AudioOptions,
    started_ms: i64,
    answered_ms: Option<i64>,
}

/// Tunables of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub outbox: OutboxConfig,
    pub limiter: LimiterConfig,
    pub discovery: DiscoveryConfig,
    /// The DHT node to start, if any.
    pub dht: Option<DhtConfig>,
    /// Relays and IP policy of the endpoint.
    pub net: kith_net::NetOptions,
    /// Take contact requests from strangers (who know only our address). Off: no request endpoint, no
    /// public entry in the record, and connections from non-contacts are refused; strangers then learn
    /// nothing about whether or where we are reachable.
    pub accept_requests: bool,
    /// Impair outgoing media datagrams (tests and benchmarks only).
    pub impair: Option<crate::media::Impairment>,
    /// Sound cards used when a call names none ("default", a device name, or "none").
    pub audio_input: String,
    pub audio_output: String,
    /// How long a message waits for a direct delivery before it is also deposited into the contact's
    /// mailboxes.
    pub mailbox_after: Duration,
    /// Limits of the mailboxes this node keeps for contacts.
    pub mailbox_quotas: kith_core::mailbox::Quotas,
    /// A headless mailbox (`kith mailbox`): keeps mail for every contact that names it, declines calls.
    pub headless_mailbox: bool,
}

/// How a call ended, as the call log says it.
fn outcome_name(direction: Direction, reason: EndReason) -> &'static str {
    match (direction, reason) {
        (_, EndReason::Completed { .. }) => "completed",
        (Direction::Outgoing, EndReason::Declined { .. }) => "declined",
        (Direction::Incoming, EndReason::Declined { .. }) => "rejected",
        (Direction::Outgoing, EndReason::Busy) => "busy",
        (Direction::Incoming, EndReason::Busy) => "missed (busy)",
        (Direction::Outgoing, EndReason::Cancelled { .. }) => "cancelled",
        (Direction::Incoming, EndReason::Cancelled { .. }) => "missed",
        (Direction::Outgoing, EndReason::NoAnswer) => "no answer",
        (Direction::Incoming, EndReason::NoAnswer) => "missed",
        (_, EndReason::Unreachable) => "unreachable",
        (Direction::Outgoing, EndReason::Refused) => "refused",
        (Direction::Incoming, EndReason::Refused) => "refused (not a contact)",
        (_, EndReason::ConnectionLost) => "connection lost",
    }
}

/// Store setting: generation of the contact key.
const CONTACT_KEY_GEN: &str = "contact_key_generation";

/// How often the node republishes its discovery records (BEP44 items expire after about two hours).
const REPUBLISH: Duration = Duration::from_secs(20 * 60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Node {
    id: Identity,
    account: AccountKey,
    device: DeviceKey,
    store: Arc<Mutex<Store>>,
    /// The current contact endpoint; replaced at every period boundary (see [`Node::rotator`]).
    net_slot: Mutex<Net>,
    /// The current request endpoint (relay-only), if the node has a relay.
    request_slot: Mutex<Option<Net>>,
    /// Raised once when the node shuts down, so the accept loop stops instead of following a new endpoint.
    stopping: std::sync::atomic::AtomicBool,
    discovery: Arc<NodeDiscovery>,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    wake: Notify,
    /// Wakes the publisher early (after a rotation).
    republish: Notify,
    /// Bumped whenever an endpoint is replaced or added, so the accept loops pick it up.
    endpoints: tokio::sync::watch::Sender<u64>,
    /// Wakes the call timer (signalling retransmissions and timeouts).
    calls_changed: Notify,
    config: NodeConfig,
    started: Instant,
    /// This device's Olm account (its keys for sealed mail), and the key its stored state is encrypted under.
    olm: Mutex<kith_core::seal::RatchetAccount>,
    olm_key: zeroize::Zeroizing<[u8; 32]>,
    /// The Olm bundle this run publishes to contacts (made on first use).
    bundle: Mutex<Option<kith_core::seal::PrekeyBundle>>,
    /// Mail through mailboxes (see [`mail`]).
    mail: mail::MailState,
}

/// A contact as the API shows it.
#[derive(Debug, Serialize)]
pub struct ContactView {
    pub name: String,
    pub address: String,
    pub display_name: Option<String>,
    pub reachability: String,
    pub last_seen_ms: Option<i64>,
    pub added_at_ms: i64,
    pub has_route: bool,
    /// The latest card the contact sent us (a `kith:` link), if any.
    pub card: Option<String>,
    /// Messages to the contact not yet delivered.
    pub waiting: u64,
    /// While offline: why the last attempt to reach the contact failed.
    pub why_unreached: Option<String>,
    /// The user confirmed the safety number, and no new device of theirs appeared since.
    pub verified: bool,
    /// A device of theirs appeared that the user has not confirmed: sending is held.
    pub key_changed: bool,
    /// After `add`: "added", "renamed" (the address was a contact under `previous_name`) or
    /// "already a contact" (same address, same name: nothing changed but a newer card).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RequestView {
    pub name: String,
    pub address: String,
    pub messages: Vec<ChatMessage>,
    pub first_seen_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub peer: String,
    pub path: String,
    pub since_ms: i64,
    /// Open paths of this connection that run over IP (0 when only relays are used: the peer's endpoint
    /// then knows no IP address of ours, nor we of theirs).
    pub ip_paths: usize,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub name: String,
    pub address: String,
    pub endpoint: String,
    pub listen: Vec<SocketAddr>,
    pub connections: Vec<ConnectionView>,
    pub outbox: u64,
    pub held: u64,
    pub in_flight: usize,
    pub contacts: usize,
    pub requests: u64,
    pub uptime_secs: u64,
    pub relays: Vec<String>,
    pub relay_connected: bool,
    pub relay_only: bool,
    /// The relay-only endpoint named in the public record (where strangers' requests arrive), if any.
    pub request_endpoint: Option<String>,
}

/// What a DHT lookup of someone found (`kith lookup`).
#[derive(Debug, Serialize)]
pub struct LookupView {
    pub address: String,
    pub found: bool,
    /// The record's sequence number (changes only when its content does).
    pub seq: Option<i64>,
    /// Endpoints anyone with the address may dial (request endpoints).
    pub public_endpoints: usize,
    pub public_relays: Vec<String>,
    /// IP addresses in the public part (only with `publish_direct`).
    pub public_direct: usize,
    pub contact_part: String,
    pub contact_endpoints: usize,
    /// Mailboxes the contacts-only part names.
    pub contact_mailboxes: usize,
}

/// One relay as `kith status` reports it.
#[derive(Debug, Serialize)]
pub struct RelayView {
    pub url: String,
    /// Answered an HTTP probe just now (plain-HTTP relays), or is the endpoint's connected home relay.
    pub reachable: bool,
    pub rtt_ms: Option<f64>,
    pub home: bool,
}

#[derive(Debug, Serialize)]
pub struct SentView {
    pub to: String,
    pub seq: u64,
    pub id: String,
    pub state: &'static str,
}

fn path_name(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
        PathKind::Unknown => "connecting",
    }
}

impl Node {
    /// Opens the store, binds the endpoint, restores outboxes and starts the background tasks.
    pub async fn start(
        id: Identity,
        store: Store,
        config: NodeConfig,
    ) -> Result<Arc<Self>, NodeError> {
        let store = Arc::new(Mutex::new(store));
        let discovery = Arc::new(NodeDiscovery::new(
            store.clone(),
            config.dht.clone(),
            config.discovery.clone(),
        ));
        // Contacts' cards name DHT nodes they knew: one more way in.
        if let Some(dhts) = &discovery.dht {
            let hinted: Vec<SocketAddr> = lock(&store)
                .contacts()?
                .iter()
                .filter_map(|c| c.card.as_ref())
                .flat_map(|c| c.hints().dht.clone())
                .collect();
            dhts.add_bootstrap(crate::discovery::BootstrapSource::ContactCards, &hinted);
        }
        let now = unix_now();
        let period = kith_core::blind::period_at(now, config.discovery.period_minutes);
        let net = Net::bind_with(
            *id.device.endpoint_seed(period.0),
            config.listen,
            discovery.clone(),
            &config.net,
        )
        .await
        .map_err(|e| NodeError::Net(e.to_string()))?;
        let account = id.account.public();
        let device = id.device.public();
        let endpoint_cert = endpoint_cert_for(
            &id,
            net.endpoint_key(),
            period,
            config.discovery.period_minutes,
        );
        let contact_key_gen = lock(&store).setting(CONTACT_KEY_GEN)?.unwrap_or(0).max(0) as u64;
        let card = Self::make_card(&id, &net, &discovery, id.contact_key(contact_key_gen), now)?;
        let (request_net, request) = match Self::bind_request(
            &id,
            &discovery,
            period,
            &config.net.relays,
            config.accept_requests,
        )
        .await?
        {
            Some(r) => {
                let cert = endpoint_cert_for(
                    &id,
                    r.endpoint_key(),
                    period,
                    config.discovery.period_minutes,
                );
                let card = Self::make_public_card(&id, &r, now)?;
                (Some(r), Some((cert, card)))
            }
            None => (None, None),
        };
        let t0 = Instant::now();
        let mut peers: HashMap<AccountKey, PeerRt> = HashMap::new();
        for (peer, seq) in lock(&store).undelivered(&device)? {
            peers
                .entry(peer)
                .or_insert_with(|| PeerRt::new(&config.outbox))
                .outbox
                .enqueue(seq, t0);
        }
        // Contacts with an unconfirmed new device stay held across restarts.
        for c in lock(&store).contacts()? {
            if c.key_changed_ms.is_some() {
                peers
                    .entry(c.account)
                    .or_insert_with(|| PeerRt::new(&config.outbox))
                    .held = true;
            }
        }
        let state = State {
            peers,
            next_conn: 0,
            limiter: RequestLimiter::new(config.limiter.clone(), t0),
            endpoint_cert,
            card,
            request,
            contact_key_gen,
            calls: Calls::new(CallConfig::default()),
            call_meta: HashMap::new(),
            media: HashMap::new(),
        };
        let (events, _) = broadcast::channel(4096);
        // The Olm account: stored encrypted under a key derived from the device secret.
        let olm_key = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"kith olm pickle v1");
            h.update(&id.device.to_bytes()[..]);
            zeroize::Zeroizing::new(<[u8; 32]>::from(h.finalize()))
        };
        let stored = lock(&store).ratchet("account")?;
        let olm = match stored {
            Some(p) => kith_core::seal::RatchetAccount::unpickle(&p, &olm_key).map_err(|e| {
                NodeError::Net(format!("cannot open this device's stored Olm keys: {e}"))
            })?,
            None => {
                let a = kith_core::seal::RatchetAccount::new();
                lock(&store).save_ratchet("account", &a.pickle(&olm_key))?;
                a
            }
        };
        let node = Arc::new(Self {
            id,
            account,
            device,
            store,
            net_slot: Mutex::new(net),
            request_slot: Mutex::new(request_net),
            stopping: std::sync::atomic::AtomicBool::new(false),
            discovery,
            state: Mutex::new(state),
            events,
            wake: Notify::new(),
            republish: Notify::new(),
            endpoints: tokio::sync::watch::Sender::new(0),
            calls_changed: Notify::new(),
            config,
            started: t0,
            olm: Mutex::new(olm),
            olm_key,
            bundle: Mutex::new(None),
            mail: Default::default(),
        });
        tokio::spawn(node.clone().accept_loop(Role::Contact));
        tokio::spawn(node.clone().accept_loop(Role::Request));
        tokio::spawn(node.clone().pump());
        tokio::spawn(node.clone().announce());
        tokio::spawn(node.clone().publisher());
        tokio::spawn(node.clone().rotator());
        tokio::spawn(node.clone().relay_finder());
        tokio::spawn(node.clone().call_timer());
        tokio::spawn(node.clone().mail_sender());
        tokio::spawn(node.clone().mailbox_keeper());
        if node.config.discovery.lan
            && let Some(dht) = &node.config.dht
        {
            let weak = Arc::downgrade(&node);
            tokio::spawn(crate::lan::run(
                node.discovery.clone(),
                dht.bind,
                dht.server,
                move || {
                    weak.upgrade()
                        .is_none_or(|n| n.stopping.load(std::sync::atomic::Ordering::SeqCst))
                },
            ));
        }
        Ok(node)
    }

    fn make_card(
        id: &Identity,
        net: &Net,
        discovery: &NodeDiscovery,
        contact_key: [u8; 32],
        now: u64,
    ) -> Result<ContactCard, NodeError> {
        let direct: Vec<SocketAddr> = net
            .local_addrs()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .take(8)
            .collect();
        let hints = Hints {
            endpoint: Some(net.endpoint_key()),
            direct,
            relays: net.relays().into_iter().take(4).collect(),
            dht: discovery.dht_hints(kith_core::card::MAX_DHT_HINTS),
            contact_key: Some(contact_key),
        };
        Ok(ContactCard::issue(&id.account, &id.name, hints, now)?)
    }

    /// Binds the relay-only request endpoint of `period`; `None` without relays (then nothing but IP
    /// could reach it).
    async fn bind_request(
        id: &Identity,
        discovery: &Arc<NodeDiscovery>,
        period: kith_core::blind::PeriodNum,
        relays: &[String],
        accept_requests: bool,
    ) -> Result<Option<Net>, NodeError> {
        if relays.is_empty() || !accept_requests {
            return Ok(None);
        }
        let options = kith_net::NetOptions {
            relays: relays.to_vec(),
            relay_only: true,
        };
        let unused: SocketAddr = ([127, 0, 0, 1], 0).into();
        let net = Net::bind_with(
            *id.device.request_endpoint_seed(period.0),
            unused,
            discovery.clone(),
            &options,
        )
        .await
        .map_err(|e| NodeError::Net(e.to_string()))?;
        Ok(Some(net))
    }

    /// The card strangers get in our hello: the request endpoint and relays, no IP address.
    fn make_public_card(id: &Identity, request: &Net, now: u64) -> Result<ContactCard, NodeError> {
        let hints = Hints {
            endpoint: Some(request.endpoint_key()),
            direct: vec![],
            relays: request.relays().into_iter().take(4).collect(),
            dht: vec![],
            contact_key: None,
        };
        Ok(ContactCard::issue(&id.account, &id.name, hints, now)?)
    }

    /// Starts the request endpoint once the node has a relay (e.g. one found in the DHT after start).
    async fn ensure_request_endpoint(&self) {
        if self.request_net().is_some() {
            return;
        }
        let relays = self.net().relays();
        let period = kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes);
        match Self::bind_request(
            &self.id,
            &self.discovery,
            period,
            &relays,
            self.config.accept_requests,
        )
        .await
        {
            Ok(Some(r)) => {
                let cert = endpoint_cert_for(
                    &self.id,
                    r.endpoint_key(),
                    period,
                    self.config.discovery.period_minutes,
                );
                match Self::make_public_card(&self.id, &r, unix_now()) {
                    Ok(card) => {
                        lock(&self.state).request = Some((cert, card));
                        *lock(&self.request_slot) = Some(r);
                        self.endpoints.send_modify(|g| *g += 1);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot issue the public card"),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot start the request endpoint"),
        }
    }

    /// Offers the DHT nodes a contact's card names as bootstrap nodes; if our DHT has no node yet, it
    /// starts again from them.
    fn offer_card_dht_hints(&self, card: &ContactCard) {
        let Some(dhts) = &self.discovery.dht else {
            return;
        };
        if dhts.add_bootstrap(
            crate::discovery::BootstrapSource::ContactCards,
            &card.hints().dht,
        ) > 0
        {
            let discovery = self.discovery.clone();
            tokio::spawn(async move {
                if let Some(d) = &discovery.dht {
                    d.rejoin_if_alone().await;
                }
            });
        }
    }

    /// Our current contact key.
    fn contact_key(&self) -> [u8; 32] {
        self.id.contact_key(lock(&self.state).contact_key_gen)
    }

    fn request_net(&self) -> Option<Net> {
        lock(&self.request_slot).clone()
    }

    fn is_contact(&self, account: &AccountKey) -> bool {
        matches!(
            lock(&self.store).peer(account),
            Ok(Some(Peer {
                state: PeerState::Contact,
                ..
            }))
        )
    }

    /// The hello an endpoint answers a verified dialer with. The request endpoint tells contacts our full
    /// card (contact endpoint, addresses) and strangers only the public one.
    fn hello_for(&self, role: Role, peer: &VerifiedPeer) -> Option<Hello> {
        match role {
            Role::Contact => Some(self.hello()),
            Role::Request => {
                let contact = self.is_contact(&peer.account());
                let st = lock(&self.state);
                let (cert, public_card) = st.request.as_ref()?;
                let card = if contact { &st.card } else { public_card };
                Some(Hello {
                    account: self.account,
                    device_cert: self.id.device_cert.clone(),
                    endpoint_cert: cert.clone(),
                    card: Some(card.to_bytes()),
                })
            }
        }
    }

    pub fn address(&self) -> Address {
        Address::new(self.account)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn hello(&self) -> Hello {
        let st = lock(&self.state);
        Hello {
            account: self.account,
            device_cert: self.id.device_cert.clone(),
            endpoint_cert: st.endpoint_cert.clone(),
            card: Some(st.card.to_bytes()),
        }
    }

    /// Finds relays announced in the DHT (and in contacts' records) when none is configured, probes them and
    /// uses the ones that answer fastest. Repeats while no relay is connected.
    async fn relay_finder(self: Arc<Self>) {
        if !self.config.net.relays.is_empty() || self.discovery.dht.is_none() {
            return;
        }
        let mut finder_wait = Duration::from_secs(2);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let mut candidates: Vec<String> = vec![];
            let now = unix_now();
            let period = kith_core::blind::period_at(now, self.config.discovery.period_minutes);
            if let Some(dhts) = &self.discovery.dht
                && let Ok(client) = dhts.client(period, period)
            {
                for peer in client
                    .get_peers(kith_net::dht::RELAY_INFOHASH, 16, Duration::from_secs(3))
                    .await
                {
                    candidates.push(format!("http://{peer}/"));
                }
            }
            candidates.extend(self.discovery.contact_relays());
            candidates.sort();
            candidates.dedup();
            let mut timed = vec![];
            for url in candidates {
                if let Some(rtt) = crate::discovery::probe_relay(&url).await {
                    timed.push((rtt, url));
                }
            }
            timed.sort();
            let mut added = 0;
            for (rtt, url) in timed.into_iter().take(2) {
                if self.net().add_relay(&url).await.is_ok() {
                    tracing::info!(
                        rtt_ms = rtt.as_millis() as u64,
                        "using a relay found in the network"
                    );
                    self.emit(Event::RelayAdded {
                        url: url.clone(),
                        rtt_ms: rtt.as_millis() as u64,
                    });
                    added += 1;
                }
            }
            if added > 0 {
                // Peers that could not be reached without a relay may be reachable now: dial at once
                // rather than after the backoff of the failures before.
                {
                    let now = Instant::now();
                    let mut st = lock(&self.state);
                    for p in st.peers.values_mut() {
                        p.outbox.route_changed(now);
                    }
                }
                self.wake.notify_one();
                if let Ok(card) = Self::make_card(
                    &self.id,
                    &self.net(),
                    &self.discovery,
                    self.contact_key(),
                    unix_now(),
                ) {
                    lock(&self.state).card = card;
                }
                if let Some(r) = self.request_net() {
                    for url in self.net().relays() {
                        let _ = r.add_relay(&url).await;
                    }
                    if let Ok(card) = Self::make_public_card(&self.id, &r, unix_now())
                        && let Some((_, c)) = lock(&self.state).request.as_mut()
                    {
                        *c = card;
                    }
                } else {
                    self.ensure_request_endpoint().await;
                }
                self.republish.notify_one();
            }
            // Without a relay, look again soon (2, 4, 8 ... 30 s): a relay that appears is used within
            // seconds, not half a minute later.
            let wait = if self.net().relays().is_empty() {
                let w = finder_wait;
                finder_wait = (finder_wait * 2).min(Duration::from_secs(30));
                w
            } else {
                finder_wait = Duration::from_secs(2);
                Duration::from_secs(30 * 60)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The current endpoint.
    fn net(&self) -> Net {
        lock(&self.net_slot).clone()
    }

    /// At every period boundary: close the endpoint, bind the next period's key on the same address,
    /// certify it, re-issue the card, republish and reconnect to contacts. Connections of the old endpoint
    /// end; outboxes redial through the new records.
    async fn rotator(self: Arc<Self>) {
        let minutes = self.config.discovery.period_minutes;
        loop {
            let now = unix_now();
            let current = kith_core::blind::period_at(now, minutes);
            let next_start = (current.0 + 1) * minutes * 60;
            tokio::time::sleep(
                Duration::from_secs(next_start.saturating_sub(now)) + Duration::from_millis(200),
            )
            .await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let period = kith_core::blind::period_at(unix_now(), minutes);
            let (listen, relays) = {
                let old = self.net();
                let listen = old
                    .local_addrs()
                    .into_iter()
                    .next()
                    .unwrap_or(self.config.listen);
                let relays = old.relays();
                old.close().await;
                (listen, relays)
            };
            let seed = self.id.device.endpoint_seed(period.0);
            let options = kith_net::NetOptions {
                relays,
                relay_only: self.config.net.relay_only,
            };
            // The same port, so cards, mailbox hints and NAT mappings stay valid. Its socket is free once
            // every handle of the old endpoint is gone (connections draining, a dial in flight, our own
            // slot): if it is not yet, a stand-in on another port serves until it is.
            let mut new = None;
            for _ in 0..3 {
                match Net::bind_with(*seed, listen, self.discovery.clone(), &options).await {
                    Ok(n) => {
                        new = Some(n);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let rehome = new.is_none();
            if new.is_none() {
                for addr in [
                    self.config.listen,
                    SocketAddr::new(self.config.listen.ip(), 0),
                ] {
                    match Net::bind_with(*seed, addr, self.discovery.clone(), &options).await {
                        Ok(n) => {
                            new = Some(n);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot bind the new period's endpoint; trying another port")
                        }
                    }
                }
            }
            let Some(new) = new else {
                tracing::error!(
                    "no endpoint for the new period; the node is offline until restarted"
                );
                return;
            };
            if !self.install_endpoint(new, period) {
                return;
            }
            if rehome {
                tokio::spawn(self.clone().rehome(seed, listen, options, period));
            }
            // The request endpoint rotates with it (relay-only: no address to keep).
            let mut request = None;
            if let Some(old_request) = self.request_net() {
                old_request.close().await;
                match Self::bind_request(
                    &self.id,
                    &self.discovery,
                    period,
                    &old_request.relays(),
                    self.config.accept_requests,
                )
                .await
                {
                    Ok(Some(r)) => {
                        let cert = endpoint_cert_for(&self.id, r.endpoint_key(), period, minutes);
                        if let Ok(card) = Self::make_public_card(&self.id, &r, unix_now()) {
                            request = Some((r, cert, card));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot bind the new period's request endpoint")
                    }
                }
            }
            {
                let mut st = lock(&self.state);
                st.request = None;
                if let Some((r, cert, card)) = request {
                    st.request = Some((cert, card));
                    *lock(&self.request_slot) = Some(r);
                } else {
                    *lock(&self.request_slot) = None;
                }
            }
            tracing::info!(period = period.0, "endpoint key rotated for the new period");
            self.emit(Event::EndpointRotated { period: period.0 });
            self.republish.notify_one();
            self.endpoints.send_modify(|g| *g += 1);
            tokio::spawn(self.clone().announce());
            self.wake.notify_one();
        }
    }

    /// Puts `new` in place as the contact endpoint of `period`: certifies it, re-issues the card, and
    /// swaps it into the slot (the accept loop follows once told through `endpoints`). False if no card
    /// could be issued.
    fn install_endpoint(&self, new: Net, period: kith_core::blind::PeriodNum) -> bool {
        let minutes = self.config.discovery.period_minutes;
        let cert = endpoint_cert_for(&self.id, new.endpoint_key(), period, minutes);
        let card = match Self::make_card(
            &self.id,
            &new,
            &self.discovery,
            self.contact_key(),
            unix_now(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot issue the new card");
                return false;
            }
        };
        *lock(&self.net_slot) = new;
        let mut st = lock(&self.state);
        st.endpoint_cert = cert;
        st.card = card;
        true
    }

    /// After a rotation that had to use a stand-in port: moves the endpoint back to `listen` as soon as the
    /// old endpoint's socket is free (every handle of it gone), within a minute, then tells contacts.
    async fn rehome(
        self: Arc<Self>,
        seed: zeroize::Zeroizing<[u8; 32]>,
        listen: SocketAddr,
        options: kith_net::NetOptions,
        period: kith_core::blind::PeriodNum,
    ) {
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst)
                || kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes)
                    != period
            {
                return;
            }
            if let Ok(n) = Net::bind_with(*seed, listen, self.discovery.clone(), &options).await {
                let stand_in = self.net();
                if !self.install_endpoint(n, period) {
                    return;
                }
                stand_in.close().await;
                tracing::info!("the endpoint is back on its port");
                self.republish.notify_one();
                self.endpoints.send_modify(|g| *g += 1);
                tokio::spawn(self.clone().announce());
                self.wake.notify_one();
                return;
            }
        }
        tracing::warn!(
            "the endpoint stays on a stand-in port this period (the old one is still in use)"
        );
    }

    pub fn card(&self) -> ContactCard {
        lock(&self.state).card.clone()
    }

    /// The name the user knows a peer by: petname, else the name on its card, else its address.
    fn label(&self, account: &AccountKey) -> String {
        match lock(&self.store).peer(account) {
            Ok(Some(p)) => p
                .petname
                .or(p.display_name)
                .unwrap_or_else(|| Address::new(*account).to_string()),
            _ => Address::new(*account).to_string(),
        }
    }

    /// Accepts on one of the two endpoints, following it across rotations.
    async fn accept_loop(self: Arc<Self>, role: Role) {
        let mut changed = self.endpoints.subscribe();
        loop {
            changed.borrow_and_update();
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let net = match role {
                Role::Contact => Some(self.net()),
                Role::Request => self.request_net(),
            };
            let Some(net) = net else {
                // No request endpoint (no relay yet): wait until one is started.
                if changed.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let node = self.clone();
            let hello_for = move |peer: &VerifiedPeer| {
                node.hello_for(role, peer).unwrap_or_else(|| node.hello())
            };
            let next = tokio::select! {
                n = net.accept_any(hello_for, unix_now) => n,
                // A new endpoint is in place: accept on it.
                _ = changed.changed() => continue,
            };
            // Not held while waiting: a closed endpoint's socket is freed once every handle is gone.
            drop(net);
            match next {
                None if self.stopping.load(std::sync::atomic::Ordering::SeqCst) => return,
                None => {
                    // The endpoint closed for a rotation: wait for its successor.
                    if changed.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(kith_net::Incoming::Session(session))) => self.register(*session, role),
                Some(Ok(kith_net::Incoming::Mailbox(conn))) => {
                    let node = self.clone();
                    tokio::spawn(kith_net::serve_mailbox(conn, move |request| {
                        node.clone().serve_deposit(request)
                    }));
                }
                Some(Err(e)) => tracing::info!(reason = %e, "incoming connection refused"),
            }
        }
    }

    /// Dials every contact once at start, so peers learn we are back (and our current card) at once.
    async fn announce(self: Arc<Self>) {
        let contacts = match lock(&self.store).contacts() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list contacts to announce");
                return;
            }
        };
        // Our mailboxes are dialled (and dialled again until reached) by the mailbox keeper.
        let mine = lock(&self.store).my_mailboxes().unwrap_or_default();
        let sem = Arc::new(tokio::sync::Semaphore::new(ANNOUNCE_CONCURRENCY));
        for c in contacts {
            if mine.contains(&c.account) {
                continue;
            }
            if c.card
                .as_ref()
                .is_none_or(|card| card.hints().endpoint.is_none())
            {
                continue;
            }
            if lock(&self.state)
                .peers
                .get(&c.account)
                .is_some_and(|p| !p.conns.is_empty())
            {
                continue;
            }
            let Ok(permit) = sem.clone().acquire_owned().await else {
                return;
            };
            let node = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let hello = node.hello();
                if let Ok(session) = node.net().dial(c.account, &hello, unix_now()).await {
                    node.register(session, Role::Contact);
                }
            });
        }
    }

    /// Publishes the discovery records now and then every [`REPUBLISH`].
    async fn publisher(self: Arc<Self>) {
        if self.discovery.dht.is_none() {
            return;
        }
        // A fresh DHT client may fail its first publish (it has not joined yet): retry quickly, then back off.
        let mut retry = Duration::from_millis(300);
        loop {
            // Each period's record names that period's endpoints (the next ones are bound at the boundary).
            // Contacts read the contact endpoint and its addresses in the part sealed under our contact key.
            // Strangers get the relay-only request endpoint; the contact endpoint only if we have no relay
            // (then with addresses only if the user chose to publish them); nothing if we take no requests.
            let relays: Vec<String> = self.net().relays().into_iter().take(4).collect();
            let direct: Vec<SocketAddr> = self.net().direct_addrs().into_iter().take(8).collect();
            let has_request_endpoint = self.request_net().is_some();
            let publish_direct = self.config.discovery.publish_direct;
            // Our mailboxes, as their cards name them: for contacts to deposit while we are away.
            let mailboxes = self.my_mailbox_addrs();
            let entries = |period: kith_core::blind::PeriodNum| {
                let contact_endpoint =
                    kith_core::EndpointKey::from_seed(&self.id.device.endpoint_seed(period.0));
                let public = if !self.config.accept_requests {
                    vec![]
                } else if has_request_endpoint && !publish_direct {
                    vec![DeviceEntry {
                        cert: self.id.device_cert.clone(),
                        endpoint: kith_core::EndpointKey::from_seed(
                            &self.id.device.request_endpoint_seed(period.0),
                        ),
                        relays: relays.clone(),
                        direct: vec![],
                    }]
                } else {
                    vec![DeviceEntry {
                        cert: self.id.device_cert.clone(),
                        endpoint: contact_endpoint,
                        relays: relays.clone(),
                        direct: direct.clone(),
                    }]
                };
                let contact = kith_core::record::ContactEntry {
                    endpoint: contact_endpoint,
                    relays: relays.clone(),
                    direct: if self.config.net.relay_only {
                        vec![]
                    } else {
                        direct.clone()
                    },
                };
                (
                    public,
                    kith_core::record::ContactPart {
                        entries: vec![contact],
                        mailboxes: Self::my_mailbox_entries(&mailboxes, period.0),
                    },
                )
            };
            let contact_key = self.contact_key();
            let delay = match self
                .discovery
                .publish(&self.id, entries, &contact_key, unix_now())
                .await
            {
                Ok(done) => {
                    // Keep the nodes we name in our card fresh.
                    if let Some(d) = &self.discovery.dht {
                        d.routing_table().await;
                    }
                    for (period, seq) in done {
                        self.emit(Event::RecordPublished {
                            period: period.0,
                            seq,
                        });
                    }
                    retry = Duration::from_millis(300);
                    REPUBLISH
                }
                Err(e) => {
                    tracing::info!(error = %e, "publishing the discovery record failed; retrying soon");
                    let delay = retry;
                    retry = (retry * 2).min(Duration::from_secs(60));
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.republish.notified() => {}
            }
        }
    }

    /// The DHT clients' routing tables, to save for the next start.
    pub async fn dht_routing_table(&self) -> Vec<String> {
        match &self.discovery.dht {
            Some(d) => d.routing_table().await,
            None => vec![],
        }
    }

    /// Looks an account up in the DHT now (bypassing cached card hints); true if a valid record came back.
    pub async fn lookup(&self, account: AccountKey) -> bool {
        self.discovery.lookup(account, unix_now()).await.is_some()
    }

    /// Looks a contact (by name) or any address up in the DHT now and says what its record tells us: what
    /// anyone with the address sees, and whether we can read the contacts-only part.
    pub async fn lookup_report(&self, who: &str) -> Result<LookupView, NodeError> {
        let account = match lock(&self.store).contact_by_name(who.trim()) {
            Ok(p) => p.account,
            Err(StoreError::UnknownContact(_)) => {
                kith_core::ParsedContact::parse(who)?.address().account()
            }
            Err(e) => return Err(e.into()),
        };
        if self.discovery.dht.is_none() {
            return Err(NodeError::NoDht);
        }
        let record = self.discovery.lookup_newest(account, unix_now()).await;
        let key = lock(&self.store)
            .peer(&account)?
            .filter(|p| p.state == PeerState::Contact)
            .and_then(|p| p.card)
            .and_then(|c| c.hints().contact_key);
        Ok(match record {
            None => LookupView {
                address: Address::new(account).to_string(),
                found: false,
                seq: None,
                public_endpoints: 0,
                public_relays: vec![],
                public_direct: 0,
                contact_part: "absent".into(),
                contact_endpoints: 0,
                contact_mailboxes: 0,
            },
            Some(rec) => {
                let body = rec.body();
                let (contact_part, contact_endpoints, contact_mailboxes) =
                    match (&body.contacts, key) {
                        (None, _) => ("absent", 0, 0),
                        (Some(_), None) => ("sealed: only the person's contacts can read it", 0, 0),
                        (Some(_), Some(k)) => match rec.contact_part(&k) {
                            Ok(p) => ("readable", p.entries.len(), p.mailboxes.len()),
                            Err(_) => ("sealed under a key we do not hold (a newer card?)", 0, 0),
                        },
                    };
                LookupView {
                    address: Address::new(account).to_string(),
                    found: true,
                    seq: Some(rec.seq()),
                    public_endpoints: body.devices.len(),
                    public_relays: body.devices.iter().flat_map(|d| d.relays.clone()).collect(),
                    public_direct: body.devices.iter().map(|d| d.direct.len()).sum(),
                    contact_part: contact_part.into(),
                    contact_endpoints,
                    contact_mailboxes,
                }
            }
        })
    }

    pub async fn dht_status(&self) -> serde_json::Value {
        let stats = self
            .discovery
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        match &self.discovery.dht {
            None => serde_json::json!({ "enabled": false, "sources": stats }),
            Some(d) => {
                let clients = d.clients();
                let mut size_estimate = 0;
                let mut firewalled = true;
                for c in &clients {
                    let info: DhtInfo = c.info().await;
                    size_estimate = size_estimate.max(info.size_estimate);
                    firewalled &= info.firewalled;
                }
                let nodes = d.routing_table().await.len();
                let bootstrap = d.source_report().await;
                serde_json::json!({
                    "enabled": true,
                    "bootstrap": bootstrap,
                    "joined": nodes > 0,
                    "period_clients": clients.len(),
                    "routing_table_nodes": nodes,
                    "size_estimate": size_estimate,
                    "firewalled": firewalled,
                    "sources": stats,
                })
            }
        }
    }

    fn dial(self: &Arc<Self>, account: AccountKey) {
        let node = self.clone();
        tokio::spawn(async move {
            let hello = node.hello();
            match node.net().dial(account, &hello, unix_now()).await {
                Ok(session) => node.register(session, Role::Contact),
                Err(e) => {
                    tracing::debug!(error = %e, "dial failed");
                    // The hints may be stale: refresh the cached record from the DHT for the next attempt.
                    node.discovery.lookup(account, unix_now()).await;
                    if let Some(p) = lock(&node.state).peers.get_mut(&account) {
                        p.outbox.dial_failed(Instant::now());
                        p.last_dial_error = Some(e.to_string());
                    }
                    node.wake.notify_one();
                }
            }
        });
    }

    /// Takes a verified session into service: records the peer's card, starts its reader and writer.
    ///
    /// A connection that involves a request endpoint (ours, or theirs: the card they sent names another
    /// endpoint than the one we reached) runs through relays only. If the peer is our contact and its card
    /// names its contact endpoint, we dial that too; once a contact-grade connection is up, the
    /// request-endpoint ones are closed.
    fn register(self: &Arc<Self>, session: Session, role: Role) {
        let peer = session.peer.clone();
        let account = peer.account();
        if account == self.account {
            session.conn.close(0u32.into(), b"connected to self");
            return;
        }
        if !self.config.accept_requests && !self.is_contact(&account) {
            tracing::info!("connection from a non-contact refused: requests are off");
            self.emit(Event::RequestRefused {
                address: Address::new(account).to_string(),
            });
            session
                .conn
                .close(0u32.into(), b"this person takes no contact requests");
            return;
        }
        let their_contact_endpoint = peer
            .card()
            .and_then(|c| c.hints().endpoint.map(|e| (e, c.hints().clone())));
        let contact_grade = role == Role::Contact
            && their_contact_endpoint
                .as_ref()
                .is_none_or(|(e, _)| *e == peer.endpoint());
        let mut upgrade = match &their_contact_endpoint {
            Some((e, hints)) if *e != peer.endpoint() && role == Role::Contact => {
                Some(hints.clone())
            }
            _ => None,
        };
        let path = path_name(session.path_kind());
        let mut key_changed = None;
        let known = {
            let store = lock(&self.store);
            let stored = store.peer(&account).ok().flatten();
            let known = stored.is_some();
            if let Some(stored) = &stored
                && stored.state == PeerState::Contact
                && let Ok(kith_store::DeviceSeen::Changed) =
                    store.record_device(&account, &peer.device(), unix_ms())
            {
                key_changed = Some(stored.verified_ms.is_some());
            }
            if let Some(stored) = stored {
                if let Some(card) = peer.card() {
                    let _ = store.update_card(card);
                    if stored.state == PeerState::Contact {
                        self.offer_card_dht_hints(card);
                    }
                }
                let _ = store.touch(&account, unix_ms());
            }
            known
        };
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let conn = session.conn.clone();
        let id = {
            let mut st = lock(&self.state);
            if !known && !st.peers.contains_key(&account) && st.peers.len() >= MAX_PEERS_IN_MEMORY {
                conn.close(0u32.into(), b"busy");
                return;
            }
            st.next_conn += 1;
            let id = st.next_conn;
            let outbox_cfg = self.config.outbox.clone();
            let p = st
                .peers
                .entry(account)
                .or_insert_with(|| PeerRt::new(&outbox_cfg));
            if contact_grade {
                for c in p.conns.iter().filter(|c| !c.contact_grade) {
                    c.conn.close(0u32.into(), b"moved to the contact endpoint");
                }
            } else if p.conns.iter().any(|c| c.contact_grade) {
                // Already connected endpoint to endpoint: a relay-only connection adds nothing.
                conn.close(0u32.into(), b"already connected on the contact endpoint");
                return;
            }
            if upgrade.is_some() && !p.upgrading {
                p.upgrading = true;
            } else {
                upgrade = None;
            }
            p.conns.push(ConnHandle {
                id,
                tx,
                conn: conn.clone(),
                since_ms: unix_ms(),
                contact_grade,
            });
            if p.conns.len() > MAX_CONNS_PER_PEER {
                let old = p.conns.remove(0);
                old.conn
                    .close(0u32.into(), b"replaced by a newer connection");
            }
            p.outbox.connected(Instant::now());
            p.last_dial_error = None;
            id
        };
        tracing::info!(path, "peer connected");
        if let Some(was_verified) = key_changed {
            if let Some(p) = lock(&self.state).peers.get_mut(&account) {
                p.held = true;
            }
            tracing::warn!(
                was_verified,
                "a contact connected from a device not seen before: sending to them is held until the user confirms (kith verify NAME --confirm)"
            );
            self.emit(Event::KeyChanged {
                name: self.label(&account),
                address: Address::new(account).to_string(),
                was_verified,
            });
        }
        if matches!(lock(&self.store).my_mailboxes(), Ok(m) if m.contains(&account)) {
            // Tokens first (the frames go in order), then whatever it kept for us.
            self.push_mailbox_tokens(account);
            self.fetch_mail(account);
        }
        if self.is_contact(&account) {
            self.send_mail_info(account);
        }
        self.emit(Event::Peer {
            name: self.label(&account),
            address: Address::new(account).to_string(),
            online: true,
            path: path.into(),
        });
        let (reader, writer) = session.split();
        tokio::spawn(Self::write_loop(writer, rx));
        // Call signalling that waited for this connection goes out now.
        lock(&self.state)
            .calls
            .peer_connected(account, Instant::now());
        self.process_calls();
        tokio::spawn(self.clone().datagram_loop(account, conn.clone()));
        tokio::spawn(self.clone().read_loop(reader, peer, id, conn));
        self.wake.notify_one();
        if let Some(hints) = upgrade {
            let node = self.clone();
            tokio::spawn(async move {
                if known && node.is_contact(&account) {
                    let hello = node.hello();
                    match node
                        .net()
                        .dial_hint(account, &hints, &hello, unix_now())
                        .await
                    {
                        Ok(s) => node.register(s, Role::Contact),
                        Err(e) => {
                            tracing::debug!(error = %e, "contact endpoint not reachable; staying on the relay")
                        }
                    }
                }
                if let Some(p) = lock(&node.state).peers.get_mut(&account) {
                    p.upgrading = false;
                }
            });
        }
    }

    async fn write_loop(mut writer: SessionWriter, mut rx: mpsc::Receiver<Frame>) {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.send(&frame).await {
                tracing::debug!(error = %e, "write failed");
                return;
            }
        }
    }

    async fn read_loop(
        self: Arc<Self>,
        mut reader: SessionReader,
        peer: VerifiedPeer,
        conn_id: u64,
        conn: iroh::endpoint::Connection,
    ) {
        let account = peer.account();
        // The writer of this very connection (receipts and mailbox answers go back where the frames came).
        let own_tx = || {
            lock(&self.state).peers.get(&account).and_then(|p| {
                p.conns
                    .iter()
                    .find(|c| c.id == conn_id)
                    .map(|c| c.tx.clone())
            })
        };
        loop {
            let first = match reader.next().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, "connection ended");
                    break;
                }
            };
            let mut messages = vec![];
            let mut receipts = vec![];
            let mut signalling = vec![];
            let mut mailbox = vec![];
            let mut infos = vec![];
            let mut answers = vec![];
            let mut push = |f: Frame, messages: &mut Vec<MessageFrame>| match f {
                Frame::MailInfo(m) => infos.push(*m),
                Frame::Message(m) => messages.push(m),
                Frame::Receipt(r) => receipts.extend(r.seqs),
                Frame::Hello(_) => {}
                Frame::Call(c) => signalling.push(c),
                Frame::MailboxRequest { id, request } => mailbox.push((id, request)),
                Frame::MailboxResponse { id, response } => answers.push((id, response)),
            };
            push(first, &mut messages);
            if let Some(p) = lock(&self.state).peers.get_mut(&account) {
                p.last_rx = Some(conn_id);
            }
            // Take whatever is already buffered, so one store transaction covers many messages.
            while reader.has_buffered() && messages.len() < READ_BATCH {
                match reader.next().await {
                    Ok(f) => push(f, &mut messages),
                    Err(_) => break,
                }
            }
            for info in infos.drain(..) {
                self.on_mail_info(&peer, info);
            }
            for (id, response) in answers.drain(..) {
                self.on_mailbox_response(account, id, response);
            }
            if !mailbox.is_empty() {
                let tx = own_tx();
                let period =
                    kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
                if self.config.headless_mailbox
                    && self.is_contact(&account)
                    && let Err(e) = lock(&self.store).mailbox_add_owner(&account, unix_ms())
                {
                    tracing::warn!(error = %e, "cannot keep mail for a contact");
                }
                let mut gave_tokens = false;
                for (id, request) in mailbox {
                    let tokens = match &request {
                        kith_core::mailbox::Request::Tokens { period, tokens } => {
                            Some((*period, tokens.len()))
                        }
                        _ => None,
                    };
                    let response = crate::mailbox::answer_owner(
                        &self.store,
                        &account,
                        request,
                        period,
                        unix_ms(),
                    );
                    if let (Some((period, tokens)), kith_core::mailbox::Response::Done) =
                        (tokens, &response)
                    {
                        gave_tokens = true;
                        self.emit(Event::MailboxTokens {
                            owner: self.label(&account),
                            period,
                            tokens,
                        });
                    }
                    if let Some(tx) = &tx {
                        let _ = tx.send(Frame::MailboxResponse { id, response }).await;
                    }
                }
                // An owner that hands us tokens also learns where we will be in the coming periods.
                if gave_tokens {
                    self.send_mailbox_endpoints(account);
                }
            }
            if !signalling.is_empty() {
                let contact = self.is_contact(&account);
                let now = Instant::now();
                {
                    let mut st = lock(&self.state);
                    for msg in signalling {
                        st.calls.handle(account, msg, contact, now);
                    }
                }
                self.process_calls();
            }
            if !receipts.is_empty() {
                self.handle_receipts(account, &receipts);
            }
            if !messages.is_empty() {
                let acks = match self.handle_messages(&peer, messages) {
                    Ok(acks) => acks,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot store incoming messages; dropping the connection so the peer retries");
                        conn.close(3u32.into(), b"receiver storage error");
                        break;
                    }
                };
                let tx = own_tx();
                if let Some(tx) = tx {
                    for chunk in acks.chunks(MAX_RECEIPT_SEQS) {
                        if tx
                            .send(Frame::Receipt(ReceiptFrame {
                                seqs: chunk.to_vec(),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
        self.unregister(account, conn_id);
    }

    fn unregister(self: &Arc<Self>, account: AccountKey, conn_id: u64) {
        let offline = {
            let mut st = lock(&self.state);
            let Some(p) = st.peers.get_mut(&account) else {
                return;
            };
            p.conns.retain(|c| c.id != conn_id);
            let offline = p.conns.is_empty();
            if offline {
                p.outbox.disconnected(Instant::now());
                if p.outbox.is_idle()
                    && p.outbox.pending() == 0
                    && !matches!(lock(&self.store).peer(&account), Ok(Some(_)))
                {
                    st.peers.remove(&account);
                }
            }
            offline
        };
        self.connection_closed(&account);
        if offline {
            lock(&self.state).calls.peer_lost(account, Instant::now());
            self.process_calls();
            tracing::info!("peer disconnected");
            self.emit(Event::Peer {
                name: self.label(&account),
                address: Address::new(account).to_string(),
                online: false,
                path: "offline".into(),
            });
        }
        self.wake.notify_one();
    }

    fn handle_receipts(&self, account: AccountKey, seqs: &[u64]) {
        let delivered = {
            let mut st = lock(&self.state);
            match st.peers.get_mut(&account) {
                Some(p) => p.outbox.receipt(seqs, Instant::now()),
                None => vec![],
            }
        };
        if delivered.is_empty() {
            return;
        }
        if let Err(e) =
            lock(&self.store).mark_delivered(&account, &self.device, &delivered, unix_ms())
        {
            tracing::error!(error = %e, "cannot record delivery");
        }
        let to = self.label(&account);
        for seq in delivered {
            self.emit(Event::MessageState {
                to: to.clone(),
                seq,
                state: kith_store::MessageState::Delivered,
            });
        }
        self.wake.notify_one();
    }

    /// Stores what is new, decides what becomes visible, and returns the seqs to acknowledge.
    fn handle_messages(
        &self,
        peer: &VerifiedPeer,
        messages: Vec<MessageFrame>,
    ) -> Result<Vec<u64>, StoreError> {
        self.handle_messages_of(peer.account(), peer.device(), Some(peer), messages)
    }

    /// [`Self::handle_messages`] for messages of `account`'s `device`, which came over a connection
    /// (`peer`) or out of a mailbox (None: only contacts can deposit, so a non-contact's are dropped).
    fn handle_messages_of(
        &self,
        account: AccountKey,
        device: DeviceKey,
        peer: Option<&VerifiedPeer>,
        mut messages: Vec<MessageFrame>,
    ) -> Result<Vec<u64>, StoreError> {
        let now = Instant::now();
        let now_ms = unix_ms();
        let mut st = lock(&self.state);
        let mut store = lock(&self.store);
        let is_contact = matches!(
            store.peer(&account)?,
            Some(Peer {
                state: PeerState::Contact,
                ..
            })
        );
        let mut new_request = false;
        if !is_contact {
            // Out of a mailbox: deposits need a token only contacts have, so this is a removed contact's.
            let Some(peer) = peer else {
                return Ok(vec![]);
            };
            // Only messages not yet stored count against the limits (retransmissions are free).
            let inbox = match st.peers.get(&account).and_then(|p| p.inboxes.get(&device)) {
                Some(i) => i.clone(),
                None => {
                    let (shown, held) = store.inbox_state(&account, &device)?;
                    Inbox::restore(shown, held)
                }
            };
            let fresh = messages
                .iter()
                .filter(|m| matches!(inbox.offer(m.seq), Offer::New))
                .count();
            let known = store.peer(&account)?.is_some();
            let allowed = if !known && store.request_count()? >= MAX_STRANGERS as u64 {
                0
            } else {
                st.limiter.allow(account, fresh, now)
            };
            if allowed < fresh {
                tracing::info!(
                    refused = fresh - allowed,
                    "contact request rate-limited; the sender will retry later"
                );
                let mut budget = allowed;
                messages.retain(|m| match inbox.offer(m.seq) {
                    Offer::New if budget > 0 => {
                        budget -= 1;
                        true
                    }
                    Offer::New => false,
                    _ => true,
                });
            }
            if messages.is_empty() {
                return Ok(vec![]);
            }
            if !known {
                store.record_request(&account, peer.card(), now_ms)?;
                new_request = true;
            }
        }
        let outbox_cfg = self.config.outbox.clone();
        let p = st
            .peers
            .entry(account)
            .or_insert_with(|| PeerRt::new(&outbox_cfg));
        let mut restored_shows = vec![];
        let inbox = match p.inboxes.entry(device) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (shown, held) = store.inbox_state(&account, &device)?;
                let inbox = Inbox::restore(shown, held);
                // A crash between storing and showing leaves a run that restore already counts as shown.
                restored_shows.extend(shown + 1..=inbox.shown_upto());
                v.insert(inbox)
            }
        };
        let mut next = inbox.clone();
        let mut acks = vec![];
        let mut fresh: Vec<&MessageFrame> = vec![];
        let mut show = restored_shows;
        for m in &messages {
            match next.offer(m.seq) {
                Offer::New if !fresh.iter().any(|f| f.seq == m.seq) => {
                    fresh.push(m);
                    show.extend(next.stored(m.seq));
                    acks.push(m.seq);
                }
                Offer::New | Offer::Duplicate => acks.push(m.seq),
                Offer::TooFarAhead | Offer::Invalid => {}
            }
        }
        let incoming: Vec<Incoming<'_>> = fresh
            .iter()
            .map(|m| Incoming {
                seq: m.seq,
                id: m.id,
                text: &m.text,
                sent_at_ms: m.sent_at_ms,
            })
            .collect();
        // A message shown before (the same id, resent by a restored device) is acknowledged, not shown again.
        let show = store.store_incoming(&account, &device, &incoming, &show, now_ms)?;
        *inbox = next;
        store.touch(&account, now_ms)?;
        let peer_row = store.peer(&account)?;
        drop(st);
        let from = peer_row
            .as_ref()
            .and_then(|p| p.petname.clone().or(p.display_name.clone()))
            .unwrap_or_else(|| Address::new(account).to_string());
        let address = Address::new(account).to_string();
        if new_request {
            self.emit(Event::Request {
                name: from.clone(),
                address: address.clone(),
            });
        }
        for seq in show {
            let (text, id, sent_at_ms) = match messages.iter().find(|m| m.seq == seq) {
                Some(m) => (m.text.clone(), m.id, m.sent_at_ms),
                None => match store.incoming(&account, &device, seq)? {
                    Some(m) => (m.text, m.id, m.sent_at_ms),
                    None => continue,
                },
            };
            self.emit(Event::Message {
                from: from.clone(),
                address: address.clone(),
                seq,
                id: hex::encode(id),
                text,
                sent_at_ms,
                request: !is_contact,
            });
        }
        Ok(acks)
    }

    /// The one loop that turns outbox decisions into dials and frames.
    async fn pump(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let mut dials = vec![];
            let mut sends: Vec<(AccountKey, Vec<u64>, mpsc::Sender<Frame>)> = vec![];
            let mut deadline: Option<Instant> = None;
            {
                let mut st = lock(&self.state);
                for (account, p) in st.peers.iter_mut() {
                    if p.outbox.poll_timeout().is_some_and(|t| t <= now) {
                        p.outbox.handle_timeout(now);
                    }
                    if p.outbox.poll_dial(now) {
                        dials.push(*account);
                    }
                    if let Some(conn) = p.conns.last().filter(|_| !p.held) {
                        let mut seqs = vec![];
                        let room = conn.tx.capacity().saturating_sub(8);
                        while seqs.len() < room {
                            match p.outbox.poll_transmit(now) {
                                Some(seq) => seqs.push(seq),
                                None => break,
                            }
                        }
                        if !seqs.is_empty() {
                            sends.push((*account, seqs, conn.tx.clone()));
                        }
                    }
                    if let Some(t) = p.outbox.poll_timeout() {
                        deadline = Some(deadline.map_or(t, |d| d.min(t)));
                    }
                }
            }
            for account in dials {
                self.dial(account);
            }
            for (account, seqs, tx) in sends {
                let loaded: Vec<_> = {
                    let store = lock(&self.store);
                    seqs.iter()
                        .filter_map(|seq| {
                            store.outgoing(&account, &self.device, *seq).ok().flatten()
                        })
                        .collect()
                };
                let mut sent = vec![];
                for m in loaded {
                    let frame = Frame::Message(MessageFrame {
                        seq: m.seq,
                        id: m.id,
                        sent_at_ms: m.sent_at_ms,
                        text: m.text,
                    });
                    if tx.try_send(frame).is_err() {
                        // The connection is going away; the outbox retransmits after its timeout or reconnect.
                        break;
                    }
                    sent.push(m.seq);
                }
                if !sent.is_empty() {
                    if let Err(e) = lock(&self.store).mark_sent(&account, &self.device, &sent) {
                        tracing::warn!(error = %e, "cannot record sent state");
                    }
                    let to = self.label(&account);
                    for seq in sent {
                        self.emit(Event::MessageState {
                            to: to.clone(),
                            seq,
                            state: kith_store::MessageState::Sent,
                        });
                    }
                }
            }
            let sleep = deadline
                .map(|d| d.max(Instant::now()))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(sleep.into()) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    // ---- calls ----

    /// Drives call timers: repeats unanswered signalling, ends calls that time out.
    async fn call_timer(self: Arc<Self>) {
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let next = lock(&self.state).calls.poll_timeout();
            let sleep = match next {
                Some(t) => tokio::time::sleep_until(t.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {
                    lock(&self.state).calls.handle_timeout(Instant::now());
                    self.process_calls();
                }
                _ = self.calls_changed.notified() => {}
            }
        }
    }

    /// Reads the media datagrams of one connection and hands them to the peer's running call.
    async fn datagram_loop(self: Arc<Self>, account: AccountKey, conn: iroh::endpoint::Connection) {
        while let Ok(d) = conn.read_datagram().await {
            let (tx, call) =
                {
                    let st = lock(&self.state);
                    match st.calls.live().into_iter().find(|c| {
                        c.peer == account && c.state == kith_core::call::CallState::Active
                    }) {
                        Some(c) => (
                            st.media.get(&c.call).map(|m| m.incoming.clone()),
                            Some(c.call),
                        ),
                        None => (None, None),
                    }
                };
            if let (Some(tx), Some(call)) = (tx, call) {
                let _ = tx.try_send(d);
                lock(&self.state).calls.media_received(call, Instant::now());
            }
        }
    }

    /// Carries out what the call machine says: sends signalling, starts and stops media, logs, tells the UI.
    fn process_calls(self: &Arc<Self>) {
        loop {
            let out = lock(&self.state).calls.poll_output();
            let Some(out) = out else { break };
            match out {
                CallOutput::Send { peer, msg } => {
                    let tx = lock(&self.state)
                        .peers
                        .get(&peer)
                        .and_then(|p| p.conns.last().map(|c| c.tx.clone()));
                    match tx {
                        Some(tx) => {
                            let _ = tx.try_send(Frame::Call(msg));
                        }
                        // Not connected: dial; the call machine repeats the message until it gets through.
                        None => self.say_hello(peer),
                    }
                }
                CallOutput::Event(e) => self.on_call_event(e),
            }
        }
        self.calls_changed.notify_one();
    }

    fn on_call_event(self: &Arc<Self>, e: CallEvent<AccountKey>) {
        match e {
            CallEvent::Incoming { call, peer } => {
                lock(&self.state).call_meta.insert(
                    call,
                    CallMeta {
                        options: Default::default(),
                        started_ms: unix_ms(),
                        answered_ms: None,
                    },
                );
                if self.config.headless_mailbox {
                    // Nobody to ring: declined at once (after this event is handled).
                    tracing::info!("incoming call declined: this node is a headless mailbox");
                    let node = self.clone();
                    let id = hex::encode(call);
                    tokio::spawn(async move {
                        let _ = node.reject_call(Some(&id));
                    });
                    return;
                }
                tracing::info!("incoming call");
                let verified = lock(&self.store)
                    .peer(&peer)
                    .ok()
                    .flatten()
                    .is_some_and(|p| p.verified_ms.is_some() && p.key_changed_ms.is_none());
                self.emit(Event::CallIncoming {
                    call: hex::encode(call),
                    from: self.label(&peer),
                    address: Address::new(peer).to_string(),
                    verified,
                });
            }
            CallEvent::Ringing { call, peer } => self.emit(Event::CallRinging {
                call: hex::encode(call),
                to: self.label(&peer),
            }),
            CallEvent::Answered {
                call,
                peer,
                media,
                replaces,
                ..
            } => {
                let options = {
                    let mut st = lock(&self.state);
                    // Glare: our own call was dropped for the peer's; it keeps what the user asked for.
                    let inherited = replaces.and_then(|r| st.call_meta.remove(&r));
                    let meta = st.call_meta.entry(call).or_insert(CallMeta {
                        options: Default::default(),
                        started_ms: unix_ms(),
                        answered_ms: None,
                    });
                    if let Some(i) = inherited {
                        meta.options = i.options;
                        meta.started_ms = i.started_ms;
                    }
                    meta.answered_ms = Some(unix_ms());
                    meta.options.clone()
                };
                let node = Arc::downgrade(self);
                let me = self.account;
                let conn_of: crate::media::ConnOf = Arc::new(move || {
                    let n = node.upgrade()?;
                    let st = lock(&n.state);
                    st.peers
                        .get(&peer)
                        .and_then(|p| media_conn(me, peer, &p.conns, p.last_rx))
                });
                match crate::media::start(
                    call,
                    media,
                    options.clone(),
                    conn_of,
                    self.config.impair.clone(),
                ) {
                    Ok(h) => {
                        lock(&self.state).media.insert(call, h);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot start the call's media"),
                }
                if let Some(secs) = options.duration_secs {
                    let node = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs_f64(secs.max(0.0))).await;
                        let _ = node.hangup_call(Some(&hex::encode(call)));
                    });
                }
                tracing::info!("call answered");
                self.emit(Event::CallAnswered {
                    call: hex::encode(call),
                    with: self.label(&peer),
                });
            }
            CallEvent::Ended {
                call,
                peer,
                direction,
                reason,
                talked,
            } => {
                let (meta, media) = {
                    let mut st = lock(&self.state);
                    (st.call_meta.remove(&call), st.media.remove(&call))
                };
                let node = self.clone();
                tokio::spawn(async move {
                    let stats = match media {
                        Some(m) => Some(m.stop().await),
                        None => None,
                    };
                    let outcome = outcome_name(direction, reason);
                    let record = kith_store::CallRecord {
                        id: call,
                        peer,
                        direction: match direction {
                            Direction::Outgoing => "outgoing".into(),
                            Direction::Incoming => "incoming".into(),
                        },
                        started_ms: meta.as_ref().map_or(unix_ms(), |m| m.started_ms),
                        answered_ms: meta.as_ref().and_then(|m| m.answered_ms),
                        ended_ms: unix_ms(),
                        outcome: outcome.into(),
                        stats: stats.as_ref().and_then(|s| serde_json::to_string(s).ok()),
                    };
                    if let Err(e) = lock(&node.store).log_call(&record) {
                        tracing::warn!(error = %e, "cannot log the call");
                    }
                    tracing::info!(outcome, "call ended");
                    node.emit(Event::CallEnded {
                        call: hex::encode(call),
                        with: node.label(&peer),
                        outcome: outcome.into(),
                        talked_secs: talked.map(|t| t.as_secs_f64()),
                        stats: stats.and_then(|s| serde_json::to_value(s).ok()),
                    });
                });
            }
        }
    }

    /// Calls a contact. Returns the call id.
    pub fn place_call(
        self: &Arc<Self>,
        name: &str,
        options: crate::media::AudioOptions,
    ) -> Result<String, NodeError> {
        crate::media::check(&options).map_err(NodeError::Call)?;
        let options = self.audio_defaults(options);
        let peer = lock(&self.store).contact_by_name(name)?.account;
        let mut id = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut id[..]);
        {
            let mut st = lock(&self.state);
            let mut media = st.calls.config().media;
            if let Some(f) = options.frame_ms {
                media.frame_ms = f;
            }
            st.calls
                .dial_with(peer, id, media, Instant::now())
                .map_err(|e| NodeError::Call(e.to_string()))?;
            st.call_meta.insert(
                id,
                CallMeta {
                    options,
                    started_ms: unix_ms(),
                    answered_ms: None,
                },
            );
        }
        self.process_calls();
        Ok(hex::encode(id))
    }

    /// Fills in the configured sound cards where a call names no source or sink: no input given means the
    /// configured input device; no output device and no recording means the configured output device.
    /// `--null` (silence) asks for no device at all.
    fn audio_defaults(&self, mut o: crate::media::AudioOptions) -> crate::media::AudioOptions {
        use crate::media::AudioInput;
        let device =
            |d: &str| (!d.eq_ignore_ascii_case("none") && !d.is_empty()).then(|| d.to_string());
        let headless = o.input == Some(AudioInput::Null);
        if o.input.is_none() {
            o.input = device(&self.config.audio_input)
                .map(AudioInput::Device)
                .or(Some(AudioInput::Null));
        }
        if o.output_device.is_none() && o.record_wav.is_none() && !headless {
            o.output_device = device(&self.config.audio_output);
        }
        // "none" named explicitly: no sound card.
        if let Some(AudioInput::Device(d)) = &o.input
            && device(d).is_none()
        {
            o.input = Some(AudioInput::Null);
        }
        if o.output_device
            .as_deref()
            .is_some_and(|d| device(d).is_none())
        {
            o.output_device = None;
        }
        o
    }

    /// The call meant by `call` (a hex id or a prefix of one), or the only live call.
    fn find_call(&self, call: Option<&str>) -> Result<CallId, NodeError> {
        let live = lock(&self.state).calls.live();
        let matches: Vec<CallId> = live
            .iter()
            .map(|c| c.call)
            .filter(|id| call.is_none_or(|c| hex::encode(id).starts_with(&c.to_lowercase())))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::Call(match call {
                Some(c) => format!("no call {c} in progress (see `kith calls`)"),
                None => "no call in progress".into(),
            })),
            _ => Err(NodeError::Call(
                "several calls in progress: name one (see `kith calls`)".into(),
            )),
        }
    }

    pub fn answer_call(
        self: &Arc<Self>,
        call: Option<&str>,
        options: crate::media::AudioOptions,
    ) -> Result<String, NodeError> {
        crate::media::check(&options).map_err(NodeError::Call)?;
        let options = self.audio_defaults(options);
        let id = self.find_call(call)?;
        {
            let mut st = lock(&self.state);
            if let Some(m) = st.call_meta.get_mut(&id) {
                m.options = options;
            }
            st.calls
                .answer(id, Instant::now())
                .map_err(|e| NodeError::Call(e.to_string()))?;
        }
        self.process_calls();
        Ok(hex::encode(id))
    }

    pub fn reject_call(self: &Arc<Self>, call: Option<&str>) -> Result<String, NodeError> {
        self.act_on_call(call, Calls::reject)
    }

    pub fn hangup_call(self: &Arc<Self>, call: Option<&str>) -> Result<String, NodeError> {
        self.act_on_call(call, Calls::hangup)
    }

    /// Applies a user's action (reject, hang up) to the call meant by `call` and sends what follows.
    fn act_on_call(
        self: &Arc<Self>,
        call: Option<&str>,
        act: fn(&mut Calls<AccountKey>, CallId, Instant) -> Result<(), kith_core::call::CallError>,
    ) -> Result<String, NodeError> {
        let id = self.find_call(call)?;
        act(&mut lock(&self.state).calls, id, Instant::now())
            .map_err(|e| NodeError::Call(e.to_string()))?;
        self.process_calls();
        Ok(hex::encode(id))
    }

    /// Live calls (with their statistics) and the call log.
    pub fn calls_view(&self, limit: usize) -> Result<serde_json::Value, NodeError> {
        let live: Vec<serde_json::Value> = {
            let st = lock(&self.state);
            st.calls
                .live()
                .into_iter()
                .map(|c| {
                    let stats = st
                        .media
                        .get(&c.call)
                        .and_then(|m| m.stats.lock().ok().map(|s| s.clone()));
                    serde_json::json!({
                        "call": hex::encode(c.call),
                        "peer": Address::new(c.peer).to_string(),
                        "direction": c.direction,
                        "state": c.state,
                        "stats": stats,
                    })
                })
                .collect()
        };
        let live: Vec<serde_json::Value> = live
            .into_iter()
            .map(|mut v| {
                if let Some(addr) = v["peer"].as_str()
                    && let Ok(a) = addr.parse::<Address>()
                {
                    v["with"] = serde_json::json!(self.label(&a.account()));
                }
                v
            })
            .collect();
        // (The store lock is released before labels are looked up: `label` takes it again.)
        let records = lock(&self.store).call_log(limit)?;
        let log: Vec<serde_json::Value> = records
            .into_iter()
            .map(|r| {
                let duration = r
                    .answered_ms
                    .map(|a| (r.ended_ms - a).max(0) as f64 / 1000.0);
                serde_json::json!({
                    "call": hex::encode(r.id),
                    "with": self.label(&r.peer),
                    "direction": r.direction,
                    "outcome": r.outcome,
                    "started_ms": r.started_ms,
                    "duration_secs": duration,
                    "stats": r.stats.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()),
                })
            })
            .collect();
        Ok(serde_json::json!({ "live": live, "log": log }))
    }

    // ---- operations of the control API ----

    pub fn status(&self) -> Result<StatusView, NodeError> {
        let (outbox, held) = lock(&self.store).queue_sizes()?;
        let requests = lock(&self.store).request_count()?;
        let contacts = lock(&self.store).contacts()?.len();
        let (conns, in_flight) = {
            let st = lock(&self.state);
            let conns: Vec<(AccountKey, i64, PathKind, usize)> = st
                .peers
                .iter()
                .filter_map(|(a, p)| {
                    p.conns.last().map(|c| {
                        (
                            *a,
                            c.since_ms,
                            kith_net::path_kind(&c.conn),
                            kith_net::ip_paths(&c.conn),
                        )
                    })
                })
                .collect();
            (conns, st.peers.values().map(|p| p.outbox.in_flight()).sum())
        };
        Ok(StatusView {
            name: self.id.name.clone(),
            address: self.address().to_string(),
            endpoint: kith_core::zbase32::encode(self.net().endpoint_key().as_bytes()),
            listen: self.net().local_addrs(),
            connections: conns
                .into_iter()
                .map(|(a, since_ms, kind, ip_paths)| ConnectionView {
                    peer: self.label(&a),
                    path: path_name(kind).into(),
                    since_ms,
                    ip_paths,
                })
                .collect(),
            outbox,
            held,
            in_flight,
            contacts,
            requests,
            uptime_secs: self.started.elapsed().as_secs(),
            relays: self.net().relays(),
            relay_connected: self.net().relay_connected(),
            relay_only: self.config.net.relay_only,
            request_endpoint: self
                .request_net()
                .map(|r| kith_core::zbase32::encode(r.endpoint_key().as_bytes())),
        })
    }

    /// Probes every relay the node uses, concurrently.
    pub async fn relay_report(&self) -> Vec<RelayView> {
        let net = self.net();
        let home = net.home_relays();
        let probes = net.relays().into_iter().map(|url| {
            let home = home.contains(&url);
            async move {
                let rtt = crate::discovery::probe_relay(&url).await;
                RelayView {
                    reachable: rtt.is_some() || home,
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    home,
                    url,
                }
            }
        });
        futures_util::future::join_all(probes).await
    }

    pub fn add_contact(
        self: &Arc<Self>,
        text: &str,
        name: Option<&str>,
    ) -> Result<ContactView, NodeError> {
        let parsed = ParsedContact::parse(text)?;
        let account = parsed.address().account();
        if account == self.account {
            return Err(NodeError::SelfContact);
        }
        let card = match &parsed {
            ParsedContact::Card(c) => Some(c.as_ref()),
            ParsedContact::Address(_) => None,
        };
        let name = match (name, card) {
            (Some(n), _) => n.trim().to_owned(),
            (None, Some(c)) => c.name().to_owned(),
            (None, None) => {
                return Err(NodeError::Contact(kith_core::CardError::InvalidName(
                    "an address carries no name: give one with --name",
                )));
            }
        };
        kith_core::card::check_name(&name)?;
        // The same address again: say what happened (renamed, or nothing new) rather than "added".
        let before = lock(&self.store)
            .peer(&account)?
            .filter(|p| p.state == PeerState::Contact)
            .and_then(|p| p.petname);
        let outcome = match &before {
            None => "added",
            Some(old) if *old == name => "already a contact",
            Some(_) => "renamed",
        };
        lock(&self.store).add_contact(&account, &name, card, unix_ms())?;
        if let Some(card) = card {
            self.offer_card_dht_hints(card);
        }
        // Messages queued for this account before it was removed go out again now that it is back.
        self.requeue(account)?;
        let mut view = self.contact_view(&lock(&self.store).contact_by_name(&name)?);
        view.outcome = Some(outcome);
        view.previous_name = before.filter(|_| outcome == "renamed");
        // Say hello now: the peer learns our card, and we learn whether they are reachable.
        self.say_hello(account);
        Ok(view)
    }

    fn requeue(&self, account: AccountKey) -> Result<(), NodeError> {
        let undelivered = lock(&self.store).undelivered(&self.device)?;
        let mut st = lock(&self.state);
        let cfg = self.config.outbox.clone();
        let now = Instant::now();
        for (peer, seq) in undelivered.into_iter().filter(|(p, _)| *p == account) {
            st.peers
                .entry(peer)
                .or_insert_with(|| PeerRt::new(&cfg))
                .outbox
                .enqueue(seq, now);
        }
        Ok(())
    }

    /// Opens a connection to `account` unless one is up. A new connection also makes the peer's outbox to us
    /// retransmit at once whatever we have not acknowledged (used after accepting a request).
    fn say_hello(self: &Arc<Self>, account: AccountKey) {
        if lock(&self.state)
            .peers
            .get(&account)
            .is_some_and(|p| !p.conns.is_empty())
        {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let hello = node.hello();
            if let Ok(s) = node.net().dial(account, &hello, unix_now()).await {
                node.register(s, Role::Contact);
            }
        });
    }

    fn contact_view(&self, p: &Peer) -> ContactView {
        let (reachability, waiting, why) = {
            let st = lock(&self.state);
            let rt = st.peers.get(&p.account);
            let waiting = rt.map_or(0, |rt| rt.outbox.pending() as u64);
            match rt.and_then(|rt| rt.conns.last()) {
                Some(c) => (
                    format!("online {}", path_name(kith_net::path_kind(&c.conn))),
                    waiting,
                    None,
                ),
                None => (
                    "offline".into(),
                    waiting,
                    rt.and_then(|rt| rt.last_dial_error.clone()),
                ),
            }
        };
        ContactView {
            name: p.petname.clone().unwrap_or_default(),
            address: Address::new(p.account).to_string(),
            display_name: p.display_name.clone(),
            reachability,
            last_seen_ms: p.last_seen_ms,
            added_at_ms: p.added_at_ms,
            has_route: p
                .card
                .as_ref()
                .is_some_and(|c| c.hints().endpoint.is_some()),
            card: p.card.as_ref().map(|c| c.to_link()),
            waiting,
            why_unreached: why,
            verified: p.verified_ms.is_some() && p.key_changed_ms.is_none(),
            key_changed: p.key_changed_ms.is_some(),
            outcome: None,
            previous_name: None,
        }
    }

    pub fn contacts(&self) -> Result<Vec<ContactView>, NodeError> {
        let contacts = lock(&self.store).contacts()?;
        Ok(contacts.iter().map(|p| self.contact_view(p)).collect())
    }

    /// Removes a contact. Our contact key moves to its next generation, so the removed person can no longer
    /// read where we are from our records; the remaining contacts get the new key in our card the next time
    /// we connect (we dial them all now).
    /// Keep mail for the contact `name` while it is away (it then lists us with `kith mailbox use`).
    pub fn mailbox_host(self: &Arc<Self>, name: &str) -> Result<String, NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        lock(&self.store).mailbox_add_owner(&peer.account, unix_ms())?;
        tracing::info!("keeping mail for a contact");
        Ok(Address::new(peer.account).to_string())
    }

    /// Use the contact `name` as one of our mailboxes (it runs `kith mailbox host` for us). It gets our
    /// contacts' deposit tokens now if connected, and at every connection and period from then on.
    pub fn mailbox_use(self: &Arc<Self>, name: &str) -> Result<String, NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        lock(&self.store).add_my_mailbox(&peer.account, unix_ms())?;
        self.mail.keep.notify_one();
        self.push_mailbox_tokens(peer.account);
        // Our records name it from now on (contacts who are offline now read it there)...
        self.republish.notify_one();
        // ...and contacts online now learn where to deposit for us.
        self.send_mail_info_to_online(Some(peer.account));
        Ok(Address::new(peer.account).to_string())
    }

    /// Who we keep mail for, and who keeps ours (names as we call them).
    pub fn mailbox_view(&self) -> Result<serde_json::Value, NodeError> {
        // Whether each of ours is reachable now, and if not why and when the next try goes (before the
        // store is locked: the connection state is locked before the store elsewhere).
        let my = lock(&self.store).my_mailboxes()?;
        let reach: Vec<serde_json::Value> = my.iter().map(|m| self.mailbox_reach(m)).collect();
        let store = lock(&self.store);
        let name = |a: &AccountKey| -> String {
            store
                .peer(a)
                .ok()
                .flatten()
                .and_then(|p| p.petname)
                .unwrap_or_else(|| Address::new(*a).to_string())
        };
        let hosted: Vec<String> = store.mailbox_owners()?.iter().map(name).collect();
        let mine: Vec<String> = my.iter().map(name).collect();
        let reach: serde_json::Map<String, serde_json::Value> =
            mine.iter().cloned().zip(reach).collect();
        // For each contact: how many mailboxes it told us of (absent: it has told us nothing yet).
        let mut theirs = serde_json::Map::new();
        for c in store.contacts()? {
            if let Some(info) = store
                .mail_info(&c.account)?
                .and_then(|b| kith_core::mailbox::decode::<kith_core::mailbox::MailInfo>(&b))
            {
                theirs.insert(name(&c.account), serde_json::json!(info.mailboxes.len()));
            }
        }
        Ok(
            serde_json::json!({ "keeping_mail_for": hosted, "my_mailboxes": mine, "my_mailboxes_reach": reach, "contacts_mailboxes": theirs }),
        )
    }

    /// What contacts need to seal and deposit for us later: our device's Olm keys (the fallback key; no
    /// one-time keys yet) and where our mailboxes are (their cards' endpoint hints).
    fn mail_info(&self) -> Result<kith_core::mailbox::MailInfo, NodeError> {
        // The bundle (fallback key only) is made, and the account stored, once per run: every later
        // connection sends the same one.
        let bundle = {
            let mut cached = lock(&self.bundle);
            match cached.as_ref() {
                Some(b) => b.clone(),
                None => {
                    let mut olm = lock(&self.olm);
                    let b = olm.bundle(&self.id.device, 0);
                    lock(&self.store).save_ratchet("account", &olm.pickle(&self.olm_key))?;
                    *cached = Some(b.clone());
                    b
                }
            }
        };
        Ok(kith_core::mailbox::MailInfo {
            bundle,
            mailboxes: self.my_mailbox_addrs(),
        })
    }

    /// Where our mailboxes are, in the order we named them: their cards' hints, with the endpoint keys
    /// they told us for the coming periods.
    fn my_mailbox_addrs(&self) -> Vec<kith_core::mailbox::MailboxAddr> {
        let store = lock(&self.store);
        store
            .my_mailboxes()
            .unwrap_or_default()
            .iter()
            .filter_map(|m| {
                let card = store.peer(m).ok().flatten()?.card?;
                let (first_period, keys) = store
                    .my_mailbox_keys(m)
                    .ok()
                    .flatten()
                    .map(|(first, bytes)| {
                        let keys = bytes
                            .chunks_exact(32)
                            .filter_map(|c| <[u8; 32]>::try_from(c).ok())
                            .filter_map(|k| kith_core::EndpointKey::from_bytes(k).ok())
                            .collect();
                        (first, keys)
                    })
                    .unwrap_or((0, vec![]));
                Some(kith_core::mailbox::MailboxAddr {
                    hints: kith_core::Hints {
                        dht: vec![],
                        contact_key: None,
                        ..card.hints().clone()
                    },
                    first_period,
                    keys,
                })
            })
            .take(kith_core::mailbox::MAX_MAILBOXES)
            .collect()
    }

    /// Our mailboxes as a record of `period` names them.
    fn my_mailbox_entries(
        addrs: &[kith_core::mailbox::MailboxAddr],
        period: u64,
    ) -> Vec<kith_core::record::ContactEntry> {
        addrs
            .iter()
            .map(|a| a.for_period(period))
            .filter_map(|h| {
                h.endpoint.map(|endpoint| kith_core::record::ContactEntry {
                    endpoint,
                    relays: h.relays,
                    direct: h.direct,
                })
            })
            .collect()
    }

    /// As a mailbox: tells the owner `account` (connected now) our endpoint keys for the coming periods.
    fn send_mailbox_endpoints(&self, account: AccountKey) {
        let period =
            kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
        let keys = (period..period + kith_core::mailbox::ENDPOINT_PERIODS as u64)
            .map(|p| kith_core::EndpointKey::from_seed(&self.id.device.endpoint_seed(p)))
            .collect();
        self.send_frames(
            account,
            vec![Frame::MailboxResponse {
                id: 0,
                response: kith_core::mailbox::Response::Endpoints {
                    first_period: period,
                    keys,
                },
            }],
        );
    }

    /// Tells every contact connected now (but `except`) our Olm keys and mailboxes.
    fn send_mail_info_to_online(self: &Arc<Self>, except: Option<AccountKey>) {
        let online: Vec<AccountKey> = lock(&self.state)
            .peers
            .iter()
            .filter(|(a, p)| Some(**a) != except && !p.conns.is_empty())
            .map(|(a, _)| *a)
            .collect();
        for a in online {
            if self.is_contact(&a) {
                self.send_mail_info(a);
            }
        }
    }

    /// Tells the contact `account` (if connected) our Olm keys and mailboxes.
    fn send_mail_info(self: &Arc<Self>, account: AccountKey) {
        let info = match self.mail_info() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot make the mail info for a contact");
                return;
            }
        };
        self.send_frames(account, vec![Frame::MailInfo(Box::new(info))]);
    }

    /// A contact's Olm keys and mailboxes arrived: kept if its bundle is signed by the device this
    /// connection proved.
    fn on_mail_info(&self, peer: &VerifiedPeer, info: kith_core::mailbox::MailInfo) {
        let account = peer.account();
        if !self.is_contact(&account) {
            return;
        }
        if info.bundle.device != peer.device() || info.bundle.verify().is_err() {
            tracing::info!("mail info with keys of another device, or a bad signature: ignored");
            return;
        }
        let bytes = kith_core::mailbox::encode(&info);
        if let Err(e) = lock(&self.store).save_mail_info(&account, &bytes, unix_ms()) {
            tracing::warn!(error = %e, "cannot store a contact's mail info");
            return;
        }
        self.emit(Event::MailInfo {
            from: self.label(&account),
            mailboxes: info.mailboxes.len(),
            keyed: info.mailboxes.iter().filter(|m| !m.keys.is_empty()).count(),
        });
        self.mail.wake.notify_one();
    }

    /// Gives the mailbox `mailbox` the deposit tokens of all our contacts for the previous, current and
    /// next period (so clocks a little apart still agree), over our connection to it if there is one.
    fn push_mailbox_tokens(self: &Arc<Self>, mailbox: AccountKey) {
        let period =
            kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
        let contacts = match lock(&self.store).contacts() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read contacts for mailbox tokens");
                return;
            }
        };
        let pairs: Vec<kith_core::seal::PairKey> = contacts
            .iter()
            .filter(|c| c.account != mailbox)
            .filter_map(|c| kith_core::seal::PairKey::derive(&self.id.account, &c.account).ok())
            .collect();
        let frames: Vec<Frame> = [period.saturating_sub(1), period, period + 1]
            .into_iter()
            .map(|p| Frame::MailboxRequest {
                id: p,
                request: kith_core::mailbox::Request::Tokens {
                    period: p,
                    tokens: pairs
                        .iter()
                        .map(|k| k.deposit_token(&self.account, p))
                        .collect(),
                },
            })
            .collect();
        self.send_frames(mailbox, frames);
    }

    /// Sends `frames`, in order, on the newest connection to `account` (if there is one).
    fn send_frames(&self, account: AccountKey, frames: Vec<Frame>) {
        let tx = lock(&self.state)
            .peers
            .get(&account)
            .and_then(|p| p.conns.last().map(|c| c.tx.clone()));
        if let Some(tx) = tx {
            tokio::spawn(async move {
                for f in frames {
                    if tx.send(f).await.is_err() {
                        break;
                    }
                }
            });
        }
    }

    pub fn remove_contact(self: &Arc<Self>, name: &str) -> Result<(), NodeError> {
        let account = lock(&self.store).remove_contact(name)?;
        {
            let mut st = lock(&self.state);
            if let Some(p) = st.peers.remove(&account) {
                for c in p.conns {
                    c.conn.close(0u32.into(), b"contact removed");
                }
            }
        }
        let generation = lock(&self.state).contact_key_gen + 1;
        lock(&self.store).set_setting(CONTACT_KEY_GEN, generation as i64)?;
        lock(&self.state).contact_key_gen = generation;
        let card = Self::make_card(
            &self.id,
            &self.net(),
            &self.discovery,
            self.contact_key(),
            unix_now(),
        )?;
        lock(&self.state).card = card;
        self.republish.notify_one();
        // Connections up now carried the old card: a new connection to every contact carries the new one
        // (the older connection is then closed as surplus).
        let contacts = lock(&self.store).contacts()?;
        for c in contacts {
            let node = self.clone();
            tokio::spawn(async move {
                let hello = node.hello();
                if let Ok(s) = node.net().dial(c.account, &hello, unix_now()).await {
                    node.register(s, Role::Contact);
                }
            });
        }
        Ok(())
    }

    /// The user compared safety numbers with the contact `name` and confirms: it is shown as verified,
    /// and a key change is accepted (sending resumes).
    pub fn confirm_verified(&self, name: &str) -> Result<ContactView, NodeError> {
        let peer = {
            let store = lock(&self.store);
            let peer = store.contact_by_name(name)?;
            store.set_verified(&peer.account, unix_ms())?;
            store.contact_by_name(name)?
        };
        if let Some(p) = lock(&self.state).peers.get_mut(&peer.account) {
            p.held = false;
        }
        self.wake.notify_one();
        Ok(self.contact_view(&peer))
    }

    /// The safety number with a contact, their address, and their name as stored (`name` may differ
    /// in case).
    pub fn safety_number(&self, name: &str) -> Result<(String, String, String), NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        Ok((
            kith_core::safety::safety_number(&self.account, &peer.account),
            Address::new(peer.account).to_string(),
            peer.petname.unwrap_or_else(|| name.to_owned()),
        ))
    }

    pub fn send(self: &Arc<Self>, name: &str, text: &str) -> Result<SentView, NodeError> {
        if text.trim().is_empty() {
            return Err(NodeError::EmptyMessage);
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(NodeError::MessageTooLong(text.len()));
        }
        let mut id = [0u8; 16];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut id);
        let (seq, to) = {
            let mut st = lock(&self.state);
            let mut store = lock(&self.store);
            let peer = store.contact_by_name(name)?;
            // The name as stored (events name the contact so; `name` may differ in case).
            let to = peer.petname.clone().unwrap_or_else(|| name.to_owned());
            if peer.key_changed_ms.is_some() {
                return Err(NodeError::KeyChanged(to));
            }
            let seq = store.enqueue_outgoing(&peer.account, &self.device, id, text, unix_ms())?;
            let outbox_cfg = self.config.outbox.clone();
            st.peers
                .entry(peer.account)
                .or_insert_with(|| PeerRt::new(&outbox_cfg))
                .outbox
                .enqueue(seq, Instant::now());
            (seq, to)
        };
        self.wake.notify_one();
        self.mail.wake.notify_one();
        Ok(SentView {
            to,
            seq,
            id: hex::encode(id),
            state: "queued",
        })
    }

    pub fn chat(&self, name: &str, limit: usize) -> Result<Vec<ChatMessage>, NodeError> {
        let store = lock(&self.store);
        let peer = store.contact_by_name(name)?;
        Ok(store.chat(&peer.account, limit)?)
    }

    pub fn requests(&self) -> Result<Vec<RequestView>, NodeError> {
        let store = lock(&self.store);
        let mut out = vec![];
        for p in store.requests()? {
            out.push(RequestView {
                name: p
                    .display_name
                    .clone()
                    .unwrap_or_else(|| Address::new(p.account).to_string()),
                address: Address::new(p.account).to_string(),
                messages: store.chat(&p.account, 20)?,
                first_seen_ms: p.added_at_ms,
            });
        }
        Ok(out)
    }

    pub fn accept_request(
        self: &Arc<Self>,
        request: &str,
        name: Option<&str>,
    ) -> Result<ContactView, NodeError> {
        let store = lock(&self.store);
        let peer = store.find_request(request)?;
        let name = name
            .map(str::to_owned)
            .or(peer.display_name.clone())
            .unwrap_or_else(|| request.to_owned());
        kith_core::card::check_name(&name)?;
        store.add_contact(&peer.account, &name, None, unix_ms())?;
        let p = store.contact_by_name(&name)?;
        drop(store);
        // Close the stranger-era connections and dial afresh: the new connection makes their outbox resend
        // at once what the rate limit held back.
        if let Some(rt) = lock(&self.state).peers.get_mut(&p.account) {
            for c in rt.conns.drain(..) {
                c.conn.close(0u32.into(), b"request accepted, reconnecting");
            }
        }
        self.say_hello(p.account);
        Ok(self.contact_view(&p))
    }

    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.endpoints.send_modify(|g| *g += 1);
        if let Some(r) = self.request_net() {
            r.close().await;
        }
        self.net().close().await;
    }
}
