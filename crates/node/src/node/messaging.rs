//! Messages: the outbox and inboxes per peer (the delivery state machines of `kith-core`), the pump that
//! transmits and dials, receipts, and a contact's chat.

use super::*;

pub(super) struct PeerRt {
    pub(super) outbox: Outbox,
    pub(super) inboxes: HashMap<DeviceKey, Inbox>,
    pub(super) conns: Vec<ConnHandle>,
    /// A dial to the peer's contact endpoint is under way (see [`Node::register`]).
    pub(super) upgrading: bool,
    /// The connection the peer last sent a frame on: known to be alive at its end.
    pub(super) last_rx: Option<u64>,
    /// Why the last dial failed (cleared by a connection): what `contacts`, `chat` and `send` say when
    /// messages wait.
    pub(super) last_dial_error: Option<String>,
    /// A device of theirs appeared that the user has not confirmed: nothing is transmitted to them.
    pub(super) held: bool,
}

impl PeerRt {
    pub(super) fn new(config: &OutboxConfig) -> Self {
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

#[derive(Debug, Serialize)]
pub struct SentView {
    pub to: String,
    pub seq: u64,
    pub id: String,
    /// `queued` for a new message; for a repeat, the state the message is in now.
    pub state: String,
    /// Queued before under the same idempotency key: nothing was queued now.
    pub repeated: bool,
}

impl Node {
    pub(super) fn handle_receipts(&self, account: AccountKey, seqs: &[u64]) {
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
    pub(super) fn handle_messages(
        &self,
        peer: &VerifiedPeer,
        messages: Vec<MessageFrame>,
    ) -> Result<Vec<u64>, StoreError> {
        self.handle_messages_of(peer.account(), peer.device(), Some(peer), messages)
    }

    /// [`Self::handle_messages`] for messages of `account`'s `device`, which came over a connection
    /// (`peer`) or out of a mailbox (None: only contacts can deposit, so a non-contact's are dropped).
    pub(super) fn handle_messages_of(
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
        // An organization's gateway shows each message as it comes: a customer's earlier ones may have
        // gone to another of the organization's gateways, so a gap here may never fill.
        let unordered = self.id.is_gateway_device();
        for m in &messages {
            match next.offer(m.seq) {
                Offer::New if !fresh.iter().any(|f| f.seq == m.seq) => {
                    fresh.push(m);
                    show.extend(next.stored(m.seq));
                    if unordered && !show.contains(&m.seq) {
                        show.push(m.seq);
                    }
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
            .and_then(super::contacts::peer_name)
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
    pub(super) async fn pump(self: Arc<Self>) {
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

    pub fn send(self: &Arc<Self>, name: &str, text: &str) -> Result<SentView, NodeError> {
        self.send_once(name, text, None)
    }

    /// Queues a message to the contact `name`, at most once per idempotency `key`: a send repeated with
    /// the key (the caller never got the first answer) answers with the message queued the first time.
    pub fn send_once(
        self: &Arc<Self>,
        name: &str,
        text: &str,
        key: Option<&str>,
    ) -> Result<SentView, NodeError> {
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
            let queued = store.enqueue_outgoing_once(
                &peer.account,
                &self.device,
                id,
                text,
                unix_ms(),
                key,
            )?;
            if queued.repeated {
                return Ok(SentView {
                    to,
                    seq: queued.seq,
                    id: hex::encode(queued.id),
                    state: queued.state,
                    repeated: true,
                });
            }
            let outbox_cfg = self.config.outbox.clone();
            st.peers
                .entry(peer.account)
                .or_insert_with(|| PeerRt::new(&outbox_cfg))
                .outbox
                .enqueue(queued.seq, Instant::now());
            (queued.seq, to)
        };
        self.wake.notify_one();
        self.mail.wake.notify_one();
        Ok(SentView {
            to,
            seq,
            id: hex::encode(id),
            state: "queued".into(),
            repeated: false,
        })
    }

    pub fn chat(&self, name: &str, limit: usize) -> Result<Vec<ChatMessage>, NodeError> {
        let store = lock(&self.store);
        let peer = store.contact_by_name(name)?;
        Ok(store.chat(&peer.account, limit)?)
    }

    pub(super) fn requeue(&self, account: AccountKey) -> Result<(), NodeError> {
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
}
