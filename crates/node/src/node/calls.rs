//! Calls: call signalling through the `kith-core` state machine, media over QUIC datagrams (see
//! `crate::media`), and the call log.

use super::*;

/// What the call capability keeps, under the node's state lock (one lock, one order: see `node.rs`).
pub(super) struct CallState {
    /// Call signalling of every call (see `kith_core::call`).
    pub(super) signalling: Calls<AccountKey>,
    /// What the user asked for each call (audio in/out, duration), and its times for the log.
    pub(super) meta: HashMap<CallId, CallMeta>,
    /// Running media, by call.
    pub(super) media: HashMap<CallId, crate::media::MediaHandle>,
}

impl CallState {
    pub(super) fn new(max_calls: usize) -> Self {
        Self {
            signalling: Calls::new(CallConfig {
                max_calls: max_calls.max(1),
                ..CallConfig::default()
            }),
            meta: HashMap::new(),
            media: HashMap::new(),
        }
    }
}

pub(super) struct CallMeta {
    pub(super) options: crate::media::AudioOptions,
    pub(super) started_ms: i64,
    pub(super) answered_ms: Option<i64>,
}

/// How a call ended, as the call log says it.
pub(super) fn outcome_name(direction: Direction, reason: EndReason) -> &'static str {
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

impl Node {
    /// Drives call timers: repeats unanswered signalling, ends calls that time out.
    pub(super) async fn call_timer(self: Arc<Self>) {
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let next = lock(&self.state).call.signalling.poll_timeout();
            let sleep = match next {
                Some(t) => tokio::time::sleep_until(t.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = sleep => {
                    lock(&self.state).call.signalling.handle_timeout(Instant::now());
                    self.process_calls();
                }
                _ = self.calls_changed.notified() => {}
            }
        }
    }

    /// Reads the media datagrams of one connection and hands them to the peer's running call.
    pub(super) async fn datagram_loop(
        self: Arc<Self>,
        account: AccountKey,
        conn: iroh::endpoint::Connection,
    ) {
        while let Ok(d) = conn.read_datagram().await {
            let (tx, call) =
                {
                    let st = lock(&self.state);
                    match st.call.signalling.live().into_iter().find(|c| {
                        c.peer == account && c.state == kith_core::call::CallState::Active
                    }) {
                        Some(c) => (
                            st.call.media.get(&c.call).map(|m| m.incoming.clone()),
                            Some(c.call),
                        ),
                        None => (None, None),
                    }
                };
            if let (Some(tx), Some(call)) = (tx, call) {
                let _ = tx.try_send(d);
                lock(&self.state)
                    .call
                    .signalling
                    .media_received(call, Instant::now());
            }
        }
    }

    /// Carries out what the call machine says: sends signalling, starts and stops media, logs, tells the UI.
    pub(super) fn process_calls(self: &Arc<Self>) {
        loop {
            let out = lock(&self.state).call.signalling.poll_output();
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

    pub(super) fn on_call_event(self: &Arc<Self>, e: CallEvent<AccountKey>) {
        match e {
            CallEvent::Incoming {
                call,
                peer,
                service,
            } => {
                lock(&self.state).call.meta.insert(
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
                    service,
                });
            }
            CallEvent::Dtmf {
                call,
                event,
                duration_ms,
                ..
            } => {
                if let Some(key) = kith_core::call::dtmf_key(event) {
                    self.emit(Event::CallDtmf {
                        call: hex::encode(call),
                        key: key.to_string(),
                        duration_ms,
                    });
                }
            }
            CallEvent::Held { call, peer, held } => self.emit(Event::CallHeld {
                call: hex::encode(call),
                with: self.label(&peer),
                held,
            }),
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
                    let inherited = replaces.and_then(|r| st.call.meta.remove(&r));
                    let meta = st.call.meta.entry(call).or_insert(CallMeta {
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
                        lock(&self.state).call.media.insert(call, h);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot start the call's media"),
                }
                if let Some(secs) = options.duration_secs {
                    let node = self.clone();
                    tokio::spawn(async move {
                        // `media::check` bounds it; a value past that (an older caller) is no limit.
                        let Ok(after) = Duration::try_from_secs_f64(secs.max(0.0)) else {
                            return;
                        };
                        tokio::time::sleep(after).await;
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
                    (st.call.meta.remove(&call), st.call.media.remove(&call))
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
                    let reason = (outcome == "unreachable")
                        .then(|| {
                            lock(&node.state)
                                .peers
                                .get(&peer)
                                .and_then(|p| p.last_dial_error.clone())
                        })
                        .flatten();
                    node.emit(Event::CallEnded {
                        call: hex::encode(call),
                        with: node.label(&peer),
                        outcome: outcome.into(),
                        reason,
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
        let peer = lock(&self.store).contact_by_name(name)?.account;
        self.place_call_to(peer, None, options)
    }

    /// Calls `peer` (a contact, or an organization's gateway for `service`). Returns the call id.
    pub fn place_call_to(
        self: &Arc<Self>,
        peer: AccountKey,
        service: Option<String>,
        options: crate::media::AudioOptions,
    ) -> Result<String, NodeError> {
        crate::media::check(&options).map_err(NodeError::Call)?;
        let options = self.audio_defaults(options);
        let mut id = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut id[..]);
        {
            let mut st = lock(&self.state);
            let mut media = st.call.signalling.config().media;
            if let Some(f) = options.frame_ms {
                media.frame_ms = f;
            }
            st.call
                .signalling
                .dial_with(peer, id, media, service, Instant::now())
                .map_err(|e| NodeError::Call(e.to_string()))?;
            st.call.meta.insert(
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
    pub(super) fn audio_defaults(
        &self,
        mut o: crate::media::AudioOptions,
    ) -> crate::media::AudioOptions {
        use crate::media::AudioInput;
        let device =
            |d: &str| (!d.eq_ignore_ascii_case("none") && !d.is_empty()).then(|| d.to_string());
        let headless = matches!(o.input, Some(AudioInput::Null | AudioInput::Bridge(_)));
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
    pub(super) fn find_call(&self, call: Option<&str>) -> Result<CallId, NodeError> {
        let live = lock(&self.state).call.signalling.live();
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
            if let Some(m) = st.call.meta.get_mut(&id) {
                m.options = options;
            }
            st.call
                .signalling
                .answer(id, Instant::now())
                .map_err(|e| NodeError::Call(e.to_string()))?;
        }
        self.process_calls();
        Ok(hex::encode(id))
    }

    /// Sends key presses (`0-9 * # A-D`) in the answered call meant by `call`, `duration_ms` each.
    pub fn send_dtmf(
        self: &Arc<Self>,
        call: Option<&str>,
        keys: &str,
        duration_ms: u16,
    ) -> Result<String, NodeError> {
        let events: Vec<u8> = keys
            .chars()
            .map(|k| {
                kith_core::call::dtmf_event(k).ok_or_else(|| {
                    NodeError::Call(format!("{k:?} is not a phone key: use 0-9, *, #, or A-D"))
                })
            })
            .collect::<Result<_, _>>()?;
        if events.is_empty() {
            return Err(NodeError::Call(
                "no keys given: use 0-9, *, #, or A-D".into(),
            ));
        }
        let id = self.find_call(call)?;
        {
            let mut st = lock(&self.state);
            for e in events {
                st.call
                    .signalling
                    .dtmf(id, e, duration_ms)
                    .map_err(|e| NodeError::Call(e.to_string()))?;
            }
        }
        self.process_calls();
        Ok(hex::encode(id))
    }

    /// Tells the peer of an answered call that this side put it on hold, or took it off: what an
    /// organization's gateway does when its phone holds the call (a person's hold, with its media
    /// paused, is not offered yet).
    pub fn hold_call(
        self: &Arc<Self>,
        call: Option<&str>,
        held: bool,
    ) -> Result<String, NodeError> {
        let id = self.find_call(call)?;
        lock(&self.state)
            .call
            .signalling
            .hold(id, held)
            .map_err(|e| NodeError::Call(e.to_string()))?;
        self.process_calls();
        Ok(hex::encode(id))
    }

    pub fn reject_call(self: &Arc<Self>, call: Option<&str>) -> Result<String, NodeError> {
        self.act_on_call(call, Calls::reject)
    }

    /// Refuses a ringing call for `reason` (a gateway: the phones behind it were busy, did not answer).
    pub fn reject_call_with(
        self: &Arc<Self>,
        call: &str,
        reason: kith_core::call::RejectReason,
    ) -> Result<String, NodeError> {
        let id = self.find_call(Some(call))?;
        lock(&self.state)
            .call
            .signalling
            .reject_with(id, reason, Instant::now())
            .map_err(|e| NodeError::Call(e.to_string()))?;
        self.process_calls();
        Ok(hex::encode(id))
    }

    pub fn hangup_call(self: &Arc<Self>, call: Option<&str>) -> Result<String, NodeError> {
        self.act_on_call(call, Calls::hangup)
    }

    /// Applies a user's action (reject, hang up) to the call meant by `call` and sends what follows.
    pub(super) fn act_on_call(
        self: &Arc<Self>,
        call: Option<&str>,
        act: fn(&mut Calls<AccountKey>, CallId, Instant) -> Result<(), kith_core::call::CallError>,
    ) -> Result<String, NodeError> {
        let id = self.find_call(call)?;
        act(&mut lock(&self.state).call.signalling, id, Instant::now())
            .map_err(|e| NodeError::Call(e.to_string()))?;
        self.process_calls();
        Ok(hex::encode(id))
    }

    /// Live calls (with their statistics) and the call log.
    pub fn calls_view(&self, limit: usize) -> Result<serde_json::Value, NodeError> {
        let live: Vec<serde_json::Value> = {
            let st = lock(&self.state);
            st.call
                .signalling
                .live()
                .into_iter()
                .map(|c| {
                    let stats = st
                        .call
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
}
