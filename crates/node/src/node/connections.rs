//! Connections: the endpoints (contact and request) and their rotation every period, dialling and
//! accepting, the hello each side sends, and one reader and one writer task per connection.

use super::*;
use crate::admission::{Admission, Admit, HANDSHAKES_PER_SOURCE, HANDSHAKES_TOTAL};

/// Frames queued for one connection's writer.
pub(super) const CONN_QUEUE: usize = 512;

/// Messages read from one connection before they are stored in one transaction.
pub(super) const READ_BATCH: usize = 256;

/// Connections kept per peer; an older one is closed when a newer one arrives beyond this.
pub(super) const MAX_CONNS_PER_PEER: usize = 2;

/// Pending contact requests (distinct strangers) kept at once.
pub(super) const MAX_STRANGERS: usize = 256;

/// Peers (contacts and strangers) with in-memory protocol state; a stranger beyond it is refused.
pub(super) const MAX_PEERS_IN_MEMORY: usize = 4096;

/// Contacts dialled at once when the node starts (to announce itself and flush outboxes).
pub(super) const ANNOUNCE_CONCURRENCY: usize = 8;

/// How far outside its period an endpoint certificate stays valid (clock skew, and connections that
/// straddle the boundary).
pub(super) const ENDPOINT_CERT_MARGIN_SECS: u64 = 10 * 60;

/// The device's certificate for its endpoint of `period`: valid for that period, plus a margin.
pub(super) fn endpoint_cert_for(
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

/// An endpoint's handshakes in flight: who may start one, and how to drop one.
pub(super) struct Handshakes {
    admission: Admission<kith_net::Source>,
    tasks: HashMap<u64, tokio::task::AbortHandle>,
}

/// Frees a handshake's slot when its task ends, or is dropped (evicted, or the node stopping).
struct HandshakeDone(Arc<Mutex<Handshakes>>, u64);

impl Drop for HandshakeDone {
    fn drop(&mut self) {
        let mut h = lock(&self.0);
        h.admission.done(self.1);
        h.tasks.remove(&self.1);
    }
}

pub(super) struct ConnHandle {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) conn: iroh::endpoint::Connection,
    pub(super) since_ms: i64,
    /// Both sides use their contact endpoints (not a request endpoint): the path may go direct.
    pub(super) contact_grade: bool,
    /// The peer's device on this connection.
    pub(super) device: kith_core::DeviceKey,
}

/// The connection a call's media goes over: the one the peer last sent a frame on (so it is alive at the
/// peer's end: after a peer's crash and restart, an older connection can lead to the dead process for a
/// while, and datagrams sent there are lost without an error). Without one, the newest; when both sides
/// dialled at about the same time (connections registered within [`SIMULTANEOUS_MS`]), the one the lower
/// account dialled, so that both sides tend to pick the same.
pub(super) fn media_conn(
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
pub(super) const SIMULTANEOUS_MS: i64 = 2_000;

/// Which of the node's two endpoints.
///
/// * The **contact endpoint** may use IP paths (direct, hole-punched). Only contacts learn its key: from
///   the card we give or send them.
/// * The **request endpoint** has no IP transport at all, only relays. It is the one named in the public
///   discovery record, so a stranger who has our address can deliver a contact request through a relay
///   without ever learning our IP address. Exists while the node has at least one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Contact,
    Request,
}

pub(super) fn path_name(kind: PathKind) -> &'static str {
    match kind {
        PathKind::Direct => "direct",
        PathKind::Relayed => "relayed",
        PathKind::Unknown => "connecting",
    }
}

impl Node {
    /// Binds the relay-only request endpoint of `period`; `None` without relays (then nothing but IP
    /// could reach it).
    pub(super) async fn bind_request(
        id: &Identity,
        discovery: &Arc<NodeDiscovery>,
        period: kith_core::blind::PeriodNum,
        relays: &[String],
        accept_requests: bool,
    ) -> Result<Option<Net>, NodeError> {
        // A gateway device is a public server: it takes requests on its one endpoint.
        if relays.is_empty() || !accept_requests || id.is_gateway_device() {
            return Ok(None);
        }
        let options = kith_net::NetOptions {
            relays: relays.to_vec(),
            relay_only: true,
            ..Default::default()
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
    pub(super) fn make_public_card(
        id: &Identity,
        request: &Net,
        now: u64,
    ) -> Result<ContactCard, NodeError> {
        let hints = Hints {
            endpoint: Some(request.endpoint_key()),
            direct: vec![],
            relays: request.relays().into_iter().take(4).collect(),
            dht: vec![],
            contact_key: None,
        };
        match (&id.account, &id.gateway_card) {
            (Some(account), _) => Ok(ContactCard::issue(account, &id.name, hints, now)?),
            (None, Some(card)) => Ok(card.clone()),
            (None, None) => Err(NodeError::Gateway(NOT_ENROLLED.into())),
        }
    }

    /// Starts the request endpoint once the node has a relay (e.g. one found in the DHT after start).
    pub(super) async fn ensure_request_endpoint(&self) {
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

    pub(super) fn request_net(&self) -> Option<Net> {
        lock(&self.request_slot).clone()
    }

    pub(super) fn is_contact(&self, account: &AccountKey) -> bool {
        matches!(
            lock(&self.store).peer(account),
            Ok(Some(Peer {
                state: PeerState::Contact,
                ..
            }))
        )
    }

    /// The hello an endpoint answers a verified dialer with, chosen by who the dialer is on both
    /// endpoints: a contact gets our full card (contact endpoint, addresses, contact key, mailboxes),
    /// anyone else the public card (the request endpoint and its relays; without one, no card). So a
    /// removed contact or a relay operator who dials an endpoint it knows learns nothing the public record
    /// does not say. `Err` refuses the dialer: anyone but a contact while requests are off, or anyone on a
    /// request endpoint whose state is gone. Never the full card by default.
    pub(super) fn hello_for(&self, role: Role, peer: &VerifiedPeer) -> Result<Hello, &'static str> {
        if self.check_gateway(peer).is_err() {
            return Err("this device is not on its organization's list of gateways");
        }
        let contact = self.is_contact(&peer.account());
        if !contact && !self.config.accept_requests {
            tracing::info!("connection from a non-contact refused: requests are off");
            self.emit(Event::RequestRefused {
                address: Address::new(peer.account()).to_string(),
            });
            return Err("this person takes no contact requests");
        }
        let st = lock(&self.state);
        let endpoint_cert = match role {
            Role::Contact => st.endpoint_cert.clone(),
            Role::Request => st
                .request
                .as_ref()
                .ok_or("no request endpoint here now")?
                .0
                .clone(),
        };
        let card = if contact {
            Some(st.card.to_bytes())
        } else {
            st.request.as_ref().map(|(_, public)| public.to_bytes())
        };
        Ok(Hello {
            account: self.account,
            device_cert: self.id.device_cert.clone(),
            endpoint_cert,
            card,
        })
    }

    pub(super) fn hello(&self) -> Hello {
        let st = lock(&self.state);
        Hello {
            account: self.account,
            device_cert: self.id.device_cert.clone(),
            endpoint_cert: st.endpoint_cert.clone(),
            card: Some(st.card.to_bytes()),
        }
    }

    /// The current endpoint.
    pub(super) fn net(&self) -> Net {
        lock(&self.net_slot).clone()
    }

    /// At every period boundary: close the endpoint, bind the next period's key on the same address,
    /// certify it, re-issue the card, republish and reconnect to contacts. Connections of the old endpoint
    /// end; outboxes redial through the new records.
    pub(super) async fn rotator(self: Arc<Self>) {
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
            let _rotating = self.rotating.lock().await;
            let period = kith_core::blind::period_at(unix_now(), minutes);
            // A gateway device keeps its endpoint (its organization lists it): only its certificate,
            // which is valid for one period, is made again. Its connections carry on.
            if self.id.is_gateway_device() {
                let cert = endpoint_cert_for(&self.id, self.net().endpoint_key(), period, minutes);
                lock(&self.state).endpoint_cert = cert;
                continue;
            }
            if !self.replace_contact_endpoint(period).await {
                return;
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
            self.endpoint_replaced(period);
        }
    }

    /// After a contact was removed: the contact endpoint moves to a key of the new generation now, not at
    /// the end of the period, so the removed one (who knows the old key, and may reach it through a relay
    /// wherever we go) has no endpoint that leads here any more. Contacts follow through the new card,
    /// which every contact is sent on the reconnection that follows.
    pub(super) async fn rotate_after_removal(self: Arc<Self>) {
        let _rotating = self.rotating.lock().await;
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) || self.id.is_gateway_device() {
            return;
        }
        let period = kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes);
        if self.replace_contact_endpoint(period).await {
            tracing::info!("contact endpoint moved to a new key after a contact was removed");
            self.endpoint_replaced(period);
        }
    }

    /// Tells everything that follows the endpoint that it changed: the accept loops, the records, the
    /// contacts (dialled again), the outboxes, and the user.
    fn endpoint_replaced(self: &Arc<Self>, period: kith_core::blind::PeriodNum) {
        self.emit(Event::EndpointRotated { period: period.0 });
        self.republish.notify_one();
        self.endpoints.send_modify(|g| *g += 1);
        tokio::spawn(self.clone().announce());
        self.wake.notify_one();
    }

    /// Closes the contact endpoint and binds the key of `period` (and the current contact-key generation)
    /// in its place, certified, with a new card. False if no endpoint could be bound: the node is then
    /// offline until restarted.
    async fn replace_contact_endpoint(
        self: &Arc<Self>,
        period: kith_core::blind::PeriodNum,
    ) -> bool {
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
        let seed = self.contact_endpoint_seed(period.0);
        let options = kith_net::NetOptions {
            relays,
            relay_only: self.config.net.relay_only,
            extra_roots: self.config.net.extra_roots.clone(),
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
                        tracing::warn!(error = %e, "cannot bind the new endpoint; trying another port")
                    }
                }
            }
        }
        let Some(new) = new else {
            tracing::error!("no endpoint for the new key; the node is offline until restarted");
            return false;
        };
        if !self.install_endpoint(new, period) {
            return false;
        }
        if rehome {
            tokio::spawn(self.clone().rehome(seed, listen, options, period));
        }
        true
    }

    /// Puts `new` in place as the contact endpoint of `period`: certifies it, re-issues the card, and
    /// swaps it into the slot (the accept loop follows once told through `endpoints`). False if no card
    /// could be issued.
    pub(super) fn install_endpoint(&self, new: Net, period: kith_core::blind::PeriodNum) -> bool {
        let minutes = self.config.discovery.period_minutes;
        let cert = endpoint_cert_for(&self.id, new.endpoint_key(), period, minutes);
        let card = match Self::make_card(
            &self.id,
            &new,
            &self.discovery,
            &self.contact_key(),
            self.card_mail(),
            unix_now(),
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot issue the new card");
                return false;
            }
        };
        *lock(&self.net_slot) = new;
        lock(&self.state).endpoint_cert = cert;
        self.set_card(card);
        true
    }

    /// After a rotation that had to use a stand-in port: moves the endpoint back to `listen` as soon as the
    /// old endpoint's socket is free (every handle of it gone), within a minute, then tells contacts.
    pub(super) async fn rehome(
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
            let _rotating = self.rotating.lock().await;
            // A later rotation (a contact removed meanwhile) has replaced the stand-in: nothing to do.
            if self.net().endpoint_key() != kith_core::EndpointKey::from_seed(&seed) {
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

    /// Accepts on one of the two endpoints, following it across rotations. Each connection's handshake
    /// runs apart ([`Node::handshake_apart`]).
    pub(super) async fn accept_loop(self: Arc<Self>, role: Role) {
        let handshakes = Arc::new(Mutex::new(Handshakes {
            admission: Admission::new(HANDSHAKES_TOTAL, HANDSHAKES_PER_SOURCE),
            tasks: HashMap::new(),
        }));
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
            let next = tokio::select! {
                n = net.next_incoming() => n,
                // A new endpoint is in place: accept on it.
                _ = changed.changed() => continue,
            };
            // Not held while waiting: a closed endpoint's socket is freed once every handle is gone.
            drop(net);
            let Some(pending) = next else {
                if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                // The endpoint closed for a rotation: wait for its successor.
                if changed.changed().await.is_err() {
                    return;
                }
                continue;
            };
            self.handshake_apart(&handshakes, pending, role);
        }
    }

    /// Runs the handshake of `pending` in a task of its own, within the caps of [`crate::admission`]:
    /// a dialer that stops half-way holds up nobody else.
    fn handshake_apart(
        self: &Arc<Self>,
        handshakes: &Arc<Mutex<Handshakes>>,
        pending: kith_net::Pending,
        role: Role,
    ) {
        let source = pending.source();
        // Held until the task's abort handle is in place, so the task cannot end (and look for it) first.
        let mut h = lock(handshakes);
        let ticket = match h.admission.admit(source) {
            Admit::Refuse => {
                drop(h);
                tracing::debug!(
                    "incoming connection refused: its source has too many handshakes open"
                );
                pending.refuse();
                return;
            }
            Admit::Go { ticket, evict } => {
                if let Some(task) = evict.and_then(|t| h.tasks.remove(&t)) {
                    tracing::debug!("oldest handshake dropped to make room for a new connection");
                    task.abort();
                }
                ticket
            }
        };
        let node = self.clone();
        let done = HandshakeDone(handshakes.clone(), ticket);
        let task = tokio::spawn(async move {
            let hello_for = |peer: &VerifiedPeer| node.hello_for(role, peer);
            let result = pending.handshake(hello_for, unix_now()).await;
            drop(done);
            match result {
                Ok(kith_net::Incoming::Session(session)) => node.register(*session, role),
                Ok(kith_net::Incoming::Mailbox(conn)) => {
                    let node = node.clone();
                    tokio::spawn(kith_net::serve_mailbox(conn, move |request| {
                        node.clone().serve_deposit(request)
                    }));
                }
                Err(e) => tracing::info!(reason = %e, "incoming connection refused"),
            }
        });
        h.tasks.insert(ticket, task.abort_handle());
    }

    /// Dials every contact once at start, so peers learn we are back (and our current card) at once.
    pub(super) async fn announce(self: Arc<Self>) {
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

    /// Keeps why the last dial to `account` failed, for what the user sees: `kith contacts`, and a call
    /// that ends unreachable.
    fn dial_error(&self, account: AccountKey, e: &kith_net::DialError) {
        if let Some(p) = lock(&self.state).peers.get_mut(&account) {
            p.last_dial_error = Some(e.to_string());
        }
    }

    pub(super) fn dial(self: &Arc<Self>, account: AccountKey) {
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
                    }
                    node.dial_error(account, &e);
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
    pub(super) fn register(self: &Arc<Self>, session: Session, role: Role) {
        let peer = session.peer.clone();
        let account = peer.account();
        if account == self.account {
            session.conn.close(0u32.into(), b"connected to self");
            return;
        }
        // Dials go only to the gateways an organization lists, but a path could still lead elsewhere.
        if let Err(why) = self.check_gateway(&peer) {
            if let Some(p) = lock(&self.state).peers.get_mut(&account) {
                p.last_dial_error = Some(why);
            }
            session.conn.close(
                0u32.into(),
                b"this device is not on its organization's list of gateways",
            );
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
        // A contact's card with mail info, taken once the store is unlocked (taking it locks it).
        let mut card_mail = None;
        // An organization's gateways are its account's devices by the list the account signed (checked
        // above): another of them answering is no new device to confirm.
        let listed_gateway = !self.discovery.gateways(&account).is_empty();
        let known = {
            let store = lock(&self.store);
            let stored = store.peer(&account).ok().flatten();
            let known = stored.is_some();
            if listed_gateway {
                let _ = store.note_device(&account, &peer.device(), unix_ms());
            } else if let Some(stored) = &stored
                && stored.state == PeerState::Contact
                && let Ok(kith_store::DeviceSeen::Changed) =
                    store.record_device(&account, &peer.device(), unix_ms())
            {
                key_changed = Some(stored.verified_ms.is_some());
            }
            if let Some(stored) = stored {
                // A public card (a peer that has not added us, or no longer has us) does not replace
                // the full card we were given: it names less, and the full one still opens their records.
                let downgrade = |card: &ContactCard| {
                    card.hints().contact_key.is_none()
                        && stored
                            .card
                            .as_ref()
                            .is_some_and(|c| c.hints().contact_key.is_some())
                };
                if let Some(card) = peer.card().filter(|c| !downgrade(c)) {
                    let _ = store.update_card(card);
                    if stored.state == PeerState::Contact {
                        self.offer_card_dht_hints(card);
                        card_mail = Some(card.clone());
                    }
                }
                let _ = store.touch(&account, unix_ms());
            }
            known
        };
        if let Some(card) = card_mail {
            self.take_card_mail(&card);
        }
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
                device: peer.device(),
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
            .call
            .signalling
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

    pub(super) async fn write_loop(mut writer: SessionWriter, mut rx: mpsc::Receiver<Frame>) {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.send(&frame).await {
                tracing::debug!(error = %e, "write failed");
                return;
            }
        }
    }

    pub(super) async fn read_loop(
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
                        // A contact may ring; at a gateway, so may anyone who calls one of its services.
                        let admitted = contact
                            || matches!(&msg, kith_core::call::CallMsg::Invite { service: Some(s), .. }
                                if self.config.services.iter().any(|x| x == s));
                        st.call.signalling.handle(account, msg, admitted, now);
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

    pub(super) fn unregister(self: &Arc<Self>, account: AccountKey, conn_id: u64) {
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
            lock(&self.state)
                .call
                .signalling
                .peer_lost(account, Instant::now());
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

    /// Opens a connection to `account` unless one is up. A new connection also makes the peer's outbox to us
    /// retransmit at once whatever we have not acknowledged (used after accepting a request).
    pub(super) fn say_hello(self: &Arc<Self>, account: AccountKey) {
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
            match node.net().dial(account, &hello, unix_now()).await {
                Ok(s) => node.register(s, Role::Contact),
                Err(e) => node.dial_error(account, &e),
            }
        });
    }

    /// Sends `frames`, in order, on the newest connection to `account` (if there is one).
    pub(super) fn send_frames(&self, account: AccountKey, frames: Vec<Frame>) {
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
}
