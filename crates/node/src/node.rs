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
//!
//! One capability a file, each an `impl Node` block with the types it owns:
//! * `connections.rs`: endpoints and their rotation, dialling, accepting, hellos, reader and writer tasks;
//! * `discovery.rs`: the card, discovery records in the DHT, lookups, relays found in the network;
//! * `messaging.rs`: outboxes and inboxes per peer, the pump, receipts, chats;
//! * `contacts.rs`: contacts and requests, verification and a contact's new device;
//! * `calls.rs`: call signalling, media, the call log;
//! * `mail.rs`: sealing and depositing for offline contacts, our own mailboxes, mailboxes we keep;
//! * `status.rs`: what `kith status` shows.
//!
//! Front ends (the control API, the CLI, a gateway) use the `pub` methods only.

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
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc};

mod calls;
mod connections;
mod contacts;
mod discovery;
mod mail;
mod messaging;
mod org;
mod status;

pub use crate::clock::{unix_ms, unix_now};
use calls::*;
use connections::*;
pub use contacts::{ContactView, RequestView};
pub use discovery::LookupView;
pub use messaging::SentView;
use messaging::*;
pub use org::{OrgView, org_service};
pub use status::{ConnectionView, RelayView, StatusView};

/// Why a gateway device without its grant cannot run.
pub(crate) const NOT_ENROLLED: &str = "this gateway device is not enrolled yet: install the grant its \
     organization's admin made (`kith device grant <grant>`)";

/// Errors of node operations, each naming what the user can do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Contact(#[from] kith_core::CardError),
    #[error("that is your own address: you cannot add yourself as a contact")]
    SelfContact,
    /// A contact name of an organization's form (`service@domain`) for an account not verified for it.
    #[error(
        "{0}: kith gives a name with @ (an organization's service@domain) only to the account the \
         organization publishes; `kith add service@domain` (no card or address) verifies it and adds \
         it under that name. For a person, choose a name without @ (--name)"
    )]
    OrgName(String),
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
    #[error("{0}")]
    Org(#[from] kith_core::org::Refused),
    /// What an organization's gateway device cannot do (it holds no account secret).
    #[error("{0}")]
    Gateway(String),
    #[error("{0}")]
    OrgSetup(#[from] kith_org::SetupError),
    #[error(
        "{0:?} is not a domain name (letters, digits and '-' in labels joined by dots, like example.org)"
    )]
    NotADomain(String),
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

/// The node's in-memory state, under one lock (so that there is one lock order). Who owns what:
/// `peers` (outboxes, inboxes, connections of each peer) is messaging's and connections'; `limiter` is
/// connections' (strangers' requests); the certificates, cards and contact-key generation are discovery's;
/// `call` is calls'.
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
    /// Calls: signalling, what was asked for each, running media (`calls.rs`).
    call: CallState,
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
    /// How organizations' keys are looked up.
    pub org: kith_org::OrgConfig,
    /// At an organization's gateway: the services anyone may call (`support` of `support@example.org`),
    /// contact or not. Empty for a person's node.
    pub services: Vec<String>,
    /// Calls at once (1 for a person; a gateway's limit of calls in progress).
    pub max_calls: usize,
}

/// Store setting: generation of the contact key.
const CONTACT_KEY_GEN: &str = "contact_key_generation";

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
    /// Held while the contact endpoint is replaced (at a period boundary, after a contact's removal, when
    /// a stand-in moves back to its port), so those never interleave.
    rotating: tokio::sync::Mutex<()>,
    /// The organization resolver, made at its first use.
    org: tokio::sync::OnceCell<Arc<kith_org::OrgResolver>>,
    /// How calls and events name an organization's account once it was verified:
    /// `support@example.org (Verified: example.org (DNSSEC + HTTPS))`.
    org_labels: Mutex<HashMap<AccountKey, String>>,
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
        let contact_key_gen = lock(&store).setting(CONTACT_KEY_GEN)?.unwrap_or(0).max(0) as u64;
        let net = Net::bind_with(
            *discovery::endpoint_seed(&id, period.0, contact_key_gen),
            config.listen,
            discovery.clone(),
            &config.net,
        )
        .await
        .map_err(|e| NodeError::Net(e.to_string()))?;
        let account = id.account_key;
        let device = id.device.public();
        let endpoint_cert = endpoint_cert_for(
            &id,
            net.endpoint_key(),
            period,
            config.discovery.period_minutes,
        );
        // Without mail info until the Olm account is open (below): issued again then.
        let card = Self::make_card(
            &id,
            &net,
            &discovery,
            &id.contact_key(contact_key_gen),
            None,
            now,
        )?;
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
            call: CallState::new(config.max_calls),
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
            rotating: tokio::sync::Mutex::new(()),
            org: tokio::sync::OnceCell::new(),
            org_labels: Mutex::new(HashMap::new()),
            calls_changed: Notify::new(),
            config,
            started: t0,
            olm: Mutex::new(olm),
            olm_key,
            bundle: Mutex::new(None),
            mail: Default::default(),
        });
        node.refresh_card_or_log();
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

    pub fn address(&self) -> Address {
        Address::new(self.account)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub fn card(&self) -> ContactCard {
        lock(&self.state).card.clone()
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
