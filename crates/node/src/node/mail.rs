//! Mail through mailboxes, at both ends.
//!
//! * **Sending**: a message a contact has not acknowledged [`NodeConfig::mailbox_after`] after it was
//!   queued is sealed once (Olm ratchet to the contact's device inside the pair envelope, see
//!   `kith_core::seal`), the envelope is stored beside the message in the same transaction as the ratchet
//!   state, and deposited into the contact's mailboxes from a fresh endpoint that names nobody, with the
//!   period's deposit token. A refused or unreachable mailbox is tried again later, or another one; the
//!   message stays in the outbox (and is still offered directly) until a receipt comes by either path.
//! * **Receiving**: on every connection to one of our mailboxes, and whenever it says something new came,
//!   we fetch what it holds, find the contact from the token, open and decrypt, store the messages through
//!   the same inbox as direct ones (so a message that came both ways is shown once, in order), and only
//!   then delete them at the mailbox. Receipts go back directly if the sender is connected, else into the
//!   sender's mailboxes.

use super::*;
use futures_util::StreamExt;
use kith_core::mailbox::{self, Letter, MailInfo, Request, Response};
use kith_core::seal::{PairKey, RatchetSession, Sealed};
use kith_store::OlmSessionRow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::oneshot;

/// How long a deposited message may go undelivered before it is deposited again (its mailbox may have
/// lost it, or be gone).
const REDEPOSIT: Duration = Duration::from_secs(3600);
/// Deposits in flight on one mailbox connection.
const IN_FLIGHT: usize = 16;
/// Messages sealed in one pass.
const SEAL_BATCH: usize = 256;
/// Envelopes deposited in one pass.
const DEPOSIT_BATCH: usize = 2048;
/// Receipts in one sealed letter.
const RECEIPTS_PER_LETTER: usize = 400;
/// How long the device's Olm fallback key is handed out before a new one replaces it. The one before is
/// forgotten at that moment, so a session begun on a key can be made again from a stolen account for at
/// most two of these: after that, what its first messages said is out of reach.
const FALLBACK_ROTATE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Store setting: when the fallback key was last rotated (Unix ms).
const FALLBACK_ROTATED: &str = "olm_fallback_rotated_ms";
/// How often a mailbox drops expired mail.
const EXPIRE_EVERY: Duration = Duration::from_secs(600);
/// How long to wait for a mailbox's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// A fetch whose request got no answer is asked again this many times, this long apart, while we are
/// connected to the mailbox.
const FETCH_RETRIES: u32 = 3;
const FETCH_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Backoff after a failed deposit: first, and most.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Our own mailboxes are kept connected: one that cannot be reached is dialled again after this, doubling
/// up to [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct MailState {
    /// Wakes the sender (a message was queued, a contact's mail info arrived).
    pub(super) wake: Notify,
    /// Our requests to our mailboxes, waiting for their answers: id -> (mailbox, answer).
    pending: Mutex<HashMap<u64, (AccountKey, oneshot::Sender<Response>)>>,
    next_id: AtomicU64,
    /// Contacts with a deposit under way.
    depositing: Mutex<HashSet<AccountKey>>,
    /// Contacts whose mail info came over a connection in this run (the first one is answered with ours).
    heard_from: Mutex<HashSet<AccountKey>>,
    /// When a contact's failed deposit may be tried again, and the backoff after that.
    retry: Mutex<HashMap<AccountKey, (Instant, Duration)>>,
    /// Mailboxes we are fetching from, and whether new mail was announced meanwhile.
    fetching: Mutex<HashMap<AccountKey, bool>>,
    /// As a mailbox: owners who will be told shortly that something came.
    notify: Mutex<HashSet<AccountKey>>,
    /// Wakes the keeper of our own mailboxes (one was named, a connection to one closed).
    pub(super) keep: Notify,
    /// Our mailboxes the keeper could not reach: when it dials again, and why the last dial failed.
    unreached: Mutex<HashMap<AccountKey, Unreached>>,
    /// Our mailboxes the keeper is dialling now.
    dialling: Mutex<HashSet<AccountKey>>,
}

/// One of our mailboxes that the last dial did not reach.
#[derive(Clone)]
pub(super) struct Unreached {
    pub(super) next: Instant,
    pub(super) backoff: Duration,
    pub(super) why: String,
}

/// One Olm session in use while a batch of mail is opened or sealed.
struct Slot {
    device: DeviceKey,
    session: RatchetSession,
    dirty: bool,
    received: bool,
}

impl Slot {
    fn row(&self, key: &[u8; 32]) -> OlmSessionRow {
        OlmSessionRow {
            device: self.device,
            session_id: self.session.session_id(),
            pickle: self.session.pickle(key),
        }
    }
}

impl Node {
    /// A contact's mail info (its Olm bundle and mailboxes), if it told us (or its card did). Olm keys
    /// older than a fallback rotation may name a key its owner has forgotten since, and a session started
    /// on it could never be opened: unless a session with that device exists already, they are not
    /// used, and mail waits for fresher keys (the contact's next connection, card or record).
    fn mail_info_of(&self, account: &AccountKey) -> Option<MailInfo> {
        let (bytes, at_ms) = lock(&self.store).mail_info_at(account).ok().flatten()?;
        let info = mailbox::decode::<MailInfo>(&bytes)?;
        let stale = unix_ms() - at_ms > FALLBACK_ROTATE.as_millis() as i64;
        if stale
            && !lock(&self.store)
                .olm_sessions(account)
                .unwrap_or_default()
                .iter()
                .any(|r| r.device == info.bundle.device)
        {
            return None;
        }
        Some(info)
    }

    /// A contact's card arrived (added by the user, or in its hello): the Olm keys and mailboxes it
    /// carries are kept if newer than what we have, so that mail can be left for a contact we have never
    /// been connected to.
    pub(super) fn take_card_mail(self: &Arc<Self>, card: &kith_core::ContactCard) {
        let Some(info) = card.mail() else {
            return;
        };
        let account = card.account();
        let at_ms = (card.issued() as i64).saturating_mul(1000);
        let kept =
            lock(&self.store).save_mail_info_if_newer(&account, &mailbox::encode(info), at_ms);
        match kept {
            Ok(true) => {
                self.emit(Event::MailInfo {
                    from: self.label(&account),
                    mailboxes: info.mailboxes.len(),
                    keyed: info.mailboxes.iter().filter(|m| !m.keys.is_empty()).count(),
                });
                self.mail.wake.notify_one();
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot store the mail info of a card"),
        }
    }

    /// Where to deposit for `account`: the mailboxes its current discovery record names (the freshest
    /// word), then those it told us while we were both online.
    fn mailboxes_of(&self, account: &AccountKey, info: &MailInfo) -> Vec<Hints> {
        let contact_key = lock(&self.store)
            .peer(account)
            .ok()
            .flatten()
            .and_then(|p| p.card)
            .and_then(|c| c.hints().contact_key);
        let mut out: Vec<Hints> = contact_key
            .and_then(|k| {
                self.discovery
                    .cached(account, unix_now())
                    .and_then(|r| r.contact_part(&k).ok())
            })
            .map(|part| {
                part.mailboxes
                    .into_iter()
                    .map(|e| Hints {
                        endpoint: Some(e.endpoint),
                        direct: e.direct,
                        relays: e.relays,
                        dht: vec![],
                        contact_key: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let period =
            kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
        for h in info.mailboxes.iter().map(|m| m.for_period(period)) {
            if !out.iter().any(|o| o.endpoint == h.endpoint) {
                out.push(h);
            }
        }
        out
    }

    fn load_slots(&self, account: &AccountKey) -> Vec<Slot> {
        let rows = lock(&self.store).olm_sessions(account).unwrap_or_default();
        rows.into_iter()
            .filter_map(|r| {
                RatchetSession::unpickle(&r.pickle, &self.olm_key)
                    .map_err(|e| tracing::warn!(error = %e, "a stored Olm session does not open"))
                    .ok()
                    .map(|session| Slot {
                        device: r.device,
                        session,
                        dirty: false,
                        received: false,
                    })
            })
            .collect()
    }

    /// Seals `letters` for `account`'s device named in `info`: returns the envelopes and the session that
    /// sealed them (to be stored with them).
    fn seal_letters(
        &self,
        account: &AccountKey,
        info: &MailInfo,
        letters: &[Letter],
    ) -> Result<(Vec<Vec<u8>>, OlmSessionRow), String> {
        let pair = PairKey::derive(self.account_secret()?, account).map_err(|e| e.to_string())?;
        let device = info.bundle.device;
        let mut slot = match self
            .load_slots(account)
            .into_iter()
            .find(|s| s.device == device)
        {
            Some(s) => s,
            None => Slot {
                device,
                session: lock(&self.olm)
                    .outbound(&info.bundle, None)
                    .map_err(|e| e.to_string())?,
                dirty: true,
                received: false,
            },
        };
        // A session's first messages carry our proof (device certificate and signature over our Olm key)
        // only in the first letter of a batch: the receiver normally holds our bundle already, and the
        // proof would push every short message into the next size class.
        let proof = lock(&self.olm).proof(&self.id.device, &self.id.device_cert);
        let mut rng = rand::rng();
        let mut out = Vec::with_capacity(letters.len());
        for (i, letter) in letters.iter().enumerate() {
            let sealed = slot
                .session
                .encrypt(&mailbox::encode(letter), (i == 0).then(|| proof.clone()))
                .map_err(|e| e.to_string())?;
            out.push(
                pair.seal(account, &sealed.to_bytes(), &mut rng)
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok((out, slot.row(&self.olm_key)))
    }

    /// Seals and deposits, for ever: what waited too long for a direct delivery goes to the contact's
    /// mailboxes.
    pub(super) async fn mail_sender(self: Arc<Self>) {
        let mut expired_at: Option<Instant> = None;
        loop {
            // As a mailbox: drop what has expired (fetches and quotas already ignore it).
            if expired_at.is_none_or(|t| t.elapsed() >= EXPIRE_EVERY) {
                expired_at = Some(Instant::now());
                let expired = lock(&self.store).mailbox_expire(unix_ms());
                match expired {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(envelopes = n, "held mail expired"),
                    Err(e) => tracing::warn!(error = %e, "cannot expire held mail"),
                }
                self.rotate_fallback_when_due();
            }
            // While messages wait, one pass a second (not one per message queued: each pass seals a
            // batch, and each batch's first letter carries the proof); idle, until woken.
            if self.mail_pass() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = self.mail.wake.notified() => {}
                }
            }
        }
    }

    /// Replaces the Olm fallback key every [`FALLBACK_ROTATE`], and tells contacts online the new bundle.
    fn rotate_fallback_when_due(self: &Arc<Self>) {
        let now = unix_ms();
        let last = lock(&self.store).setting(FALLBACK_ROTATED).ok().flatten();
        let due = match last {
            None => {
                let _ = lock(&self.store).set_setting(FALLBACK_ROTATED, now);
                false
            }
            Some(t) => now - t >= FALLBACK_ROTATE.as_millis() as i64,
        };
        if !due {
            return;
        }
        let pickle = {
            let mut olm = lock(&self.olm);
            olm.rotate_fallback();
            olm.pickle(&self.olm_key)
        };
        let saved = {
            let store = lock(&self.store);
            store
                .save_ratchet("account", &pickle)
                .and_then(|()| store.set_setting(FALLBACK_ROTATED, now))
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot store the rotated Olm account");
            return;
        }
        *lock(&self.bundle) = None;
        tracing::info!("Olm fallback key rotated");
        // Cards given out from now on carry the new key (those given before name the previous one,
        // which stays usable until the next rotation).
        self.refresh_card_or_log();
        self.send_mail_info_to_online(None);
    }

    /// One pass: seal what is due, start deposits of what is sealed. Returns whether messages wait.
    fn mail_pass(self: &Arc<Self>) -> bool {
        let now_ms = unix_ms();
        let cutoff = now_ms - self.config.mailbox_after.as_millis() as i64;
        let unsealed = match lock(&self.store).unsealed(&self.device, cutoff, SEAL_BATCH) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the outbox for mailboxes");
                return true;
            }
        };
        // A contact we are connected to gets its messages directly (a dead connection times out, and then
        // the mailboxes take over).
        let connected = |a: &AccountKey| {
            lock(&self.state)
                .peers
                .get(a)
                .is_some_and(|p| !p.conns.is_empty())
        };
        for (account, batch) in group(unsealed) {
            if connected(&account) {
                continue;
            }
            let Some(info) = self.mail_info_of(&account) else {
                tracing::debug!(
                    "messages wait for a contact who has not told us its mail keys yet"
                );
                continue;
            };
            if self.mailboxes_of(&account, &info).is_empty() {
                continue;
            }
            let letters: Vec<Letter> = batch
                .iter()
                .map(|m| {
                    Letter::Messages(vec![MessageFrame {
                        seq: m.seq,
                        id: m.id,
                        sent_at_ms: m.sent_at_ms,
                        text: m.text.clone(),
                    }])
                })
                .collect();
            match self.seal_letters(&account, &info, &letters) {
                Ok((envelopes, session)) => {
                    let items: Vec<(u64, Vec<u8>)> =
                        batch.iter().map(|m| m.seq).zip(envelopes).collect();
                    if let Err(e) = lock(&self.store).save_sealed(
                        &account,
                        &self.device,
                        &items,
                        &session,
                        now_ms,
                    ) {
                        tracing::warn!(error = %e, "cannot store sealed messages");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot seal messages for a mailbox"),
            }
        }
        let due = match lock(&self.store).deposits_due(
            &self.device,
            now_ms - REDEPOSIT.as_millis() as i64,
            DEPOSIT_BATCH,
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read sealed messages");
                return true;
            }
        };
        let now = Instant::now();
        for (account, items) in group(
            due.into_iter()
                .map(|(a, seq, env)| (a, (seq, env)))
                .collect(),
        ) {
            if connected(&account)
                || lock(&self.mail.retry)
                    .get(&account)
                    .is_some_and(|(at, _)| *at > now)
            {
                continue;
            }
            if !lock(&self.mail.depositing).insert(account) {
                continue;
            }
            let node = self.clone();
            tokio::spawn(async move {
                let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
                let result = node.deposit(&account, items).await;
                let to = node.label(&account);
                match result {
                    Ok(done) => {
                        lock(&node.mail.retry).remove(&account);
                        debug_assert!(done.len() <= seqs.len());
                        node.emit(Event::MailDeposited {
                            to,
                            messages: done.len(),
                        });
                    }
                    Err((done, reason)) => {
                        let mut retry = lock(&node.mail.retry);
                        let backoff = retry
                            .get(&account)
                            .map_or(RETRY_FIRST, |(_, b)| (*b * 2).min(RETRY_MAX));
                        retry.insert(account, (Instant::now() + backoff, backoff));
                        drop(retry);
                        tracing::info!(%reason, deposited = done.len(), retry_secs = backoff.as_secs(), "mailbox deposit incomplete; the messages stay in the outbox");
                        if !done.is_empty() {
                            node.emit(Event::MailDeposited {
                                to: to.clone(),
                                messages: done.len(),
                            });
                        }
                        node.emit(Event::MailDepositFailed {
                            to,
                            left: seqs.len() - done.len(),
                            reason,
                        });
                    }
                }
                lock(&node.mail.depositing).remove(&account);
            });
        }
        lock(&self.store)
            .has_undelivered(&self.device)
            .unwrap_or(true)
    }

    /// A fresh endpoint with a random key, so a mailbox cannot tell who deposits.
    async fn anonymous_net(&self) -> Result<Net, String> {
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let options = kith_net::NetOptions {
            relays: self.net().relays(),
            relay_only: self.config.net.relay_only,
            extra_roots: self.config.net.extra_roots.clone(),
        };
        let bind = SocketAddr::new(self.config.listen.ip(), 0);
        Net::bind_with(seed, bind, self.discovery.clone(), &options)
            .await
            .map_err(|e| e.to_string())
    }

    /// Deposits `items` (seq, envelope) into `account`'s mailboxes, one after the other until all are
    /// taken; marks the deposited ones. Returns their seqs, or those and why the rest were not taken.
    async fn deposit(
        &self,
        account: &AccountKey,
        mut items: Vec<(u64, Vec<u8>)>,
    ) -> Result<Vec<u64>, (Vec<u64>, String)> {
        let Some(info) = self.mail_info_of(account) else {
            return Err((vec![], "the contact has not told us its mailboxes".into()));
        };
        let mailboxes = self.mailboxes_of(account, &info);
        let pair = PairKey::derive(self.account_secret().map_err(|e| (vec![], e))?, account)
            .map_err(|e| (vec![], e.to_string()))?;
        let period =
            kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
        let token = pair.deposit_token(account, period);
        let net = self.anonymous_net().await.map_err(|e| (vec![], e))?;
        let mut reasons = vec![];
        let mut done = vec![];
        for (i, hint) in mailboxes.iter().enumerate() {
            let conn = match net.mailbox_connect(hint).await {
                Ok(c) => c,
                Err(e) => {
                    reasons.push(format!("mailbox {}: unreachable ({e})", i + 1));
                    continue;
                }
            };
            // Owned futures (no borrows across the stream), at most IN_FLIGHT at once.
            let requests: Vec<_> = items
                .iter()
                .map(|(seq, env)| {
                    let request = mailbox::encode(&Request::Deposit {
                        token,
                        envelope: env.clone(),
                    });
                    let (conn, seq) = (conn.clone(), *seq);
                    async move {
                        let answer = conn
                            .request(&request)
                            .await
                            .ok()
                            .and_then(|b| mailbox::decode::<Response>(&b));
                        (seq, answer)
                    }
                })
                .collect();
            let answers: Vec<(u64, Option<Response>)> = futures_util::stream::iter(requests)
                .buffer_unordered(IN_FLIGHT)
                .collect()
                .await;
            conn.close();
            let mut ok = vec![];
            let mut refusal = None;
            for (seq, answer) in answers {
                match answer {
                    Some(Response::Deposited { .. }) => ok.push(seq),
                    Some(Response::Refused(r)) => refusal = Some(r.to_string()),
                    _ => refusal = refusal.or(Some("no answer".into())),
                }
            }
            if let Some(r) = refusal {
                reasons.push(format!("mailbox {}: {r}", i + 1));
            }
            ok.sort_unstable();
            let marked = lock(&self.store).mark_deposited(account, &self.device, &ok, unix_ms());
            match marked {
                Err(e) => tracing::warn!(error = %e, "cannot record deposits"),
                Ok(()) => {
                    let to = self.label(account);
                    for seq in &ok {
                        self.emit(Event::MessageState {
                            to: to.clone(),
                            seq: *seq,
                            state: kith_store::MessageState::InMailbox,
                        });
                    }
                }
            }
            items.retain(|(s, _)| ok.binary_search(s).is_err());
            done.extend(ok);
            if items.is_empty() {
                break;
            }
        }
        net.close().await;
        if items.is_empty() {
            Ok(done)
        } else {
            if reasons.is_empty() {
                reasons.push("the contact names no mailbox".into());
            }
            Err((done, reasons.join("; ")))
        }
    }

    // ---- the owner's side ----

    /// Keeps a connection to each of our mailboxes, for as long as the node runs: over it the mailbox says
    /// when mail came, and we fetch at once. A mailbox that cannot be reached (asleep, offline, a network
    /// that failed once) is dialled again after [`REDIAL_FIRST`], doubling up to [`REDIAL_MAX`], with its
    /// record looked up afresh each time; so one failed dial at start never leaves mail waiting until a
    /// restart.
    pub(super) async fn mailbox_keeper(self: Arc<Self>) {
        loop {
            let mine = lock(&self.store).my_mailboxes().unwrap_or_default();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            {
                let mut unreached = lock(&self.mail.unreached);
                unreached.retain(|a, _| mine.contains(a));
            }
            for mailbox in mine {
                if self.connected_to(&mailbox) {
                    lock(&self.mail.unreached).remove(&mailbox);
                    continue;
                }
                if lock(&self.mail.dialling).contains(&mailbox) {
                    continue;
                }
                let due = lock(&self.mail.unreached).get(&mailbox).map(|u| u.next);
                if let Some(due) = due
                    && due > now
                {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    continue;
                }
                lock(&self.mail.dialling).insert(mailbox);
                let node = self.clone();
                tokio::spawn(async move {
                    let hello = node.hello();
                    let result = node.net().dial(mailbox, &hello, unix_now()).await;
                    match result {
                        Ok(session) => {
                            lock(&node.mail.unreached).remove(&mailbox);
                            node.register(session, Role::Contact);
                        }
                        Err(e) => {
                            let why = e.to_string();
                            // The hints may be stale: the next dial goes by a fresh record.
                            node.discovery.lookup(mailbox, unix_now()).await;
                            let mut unreached = lock(&node.mail.unreached);
                            let backoff = unreached
                                .get(&mailbox)
                                .map_or(REDIAL_FIRST, |u| (u.backoff * 2).min(REDIAL_MAX));
                            tracing::info!(reason = %why, retry_secs = backoff.as_secs(), "our mailbox is unreachable");
                            unreached.insert(
                                mailbox,
                                Unreached {
                                    next: Instant::now() + backoff,
                                    backoff,
                                    why,
                                },
                            );
                        }
                    }
                    lock(&node.mail.dialling).remove(&mailbox);
                    node.mail.keep.notify_one();
                });
            }
            let sleep = next.map_or(Duration::from_secs(30), |n| {
                n.saturating_duration_since(Instant::now())
            });
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.mail.keep.notified() => {}
            }
        }
    }

    /// Whether we are connected to our mailbox `mailbox`, and if not, why the last dial failed and when the
    /// next one goes (seconds from now).
    pub(super) fn mailbox_reach(&self, mailbox: &AccountKey) -> serde_json::Value {
        if self.connected_to(mailbox) {
            return serde_json::json!({ "connected": true });
        }
        let dialling = lock(&self.mail.dialling).contains(mailbox);
        match lock(&self.mail.unreached).get(mailbox) {
            Some(u) => serde_json::json!({
                "connected": false,
                "dialling": dialling,
                "error": u.why,
                "retry_in_secs": u.next.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as u64,
            }),
            None => serde_json::json!({ "connected": false, "dialling": dialling }),
        }
    }

    /// Sends `request` to our mailbox `mailbox` over our connection to it and waits for the answer.
    async fn mailbox_call(&self, mailbox: AccountKey, request: Request) -> Option<Response> {
        // Ids of answers we wait for start high: token pushes use the period as their id.
        let id = (1 << 48) + self.mail.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.mail.pending).insert(id, (mailbox, tx));
        self.send_frames(mailbox, vec![Frame::MailboxRequest { id, request }]);
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, rx).await;
        lock(&self.mail.pending).remove(&id);
        answer.ok().and_then(Result::ok)
    }

    /// Whether a connection to `peer` stands.
    fn connected_to(&self, peer: &AccountKey) -> bool {
        lock(&self.state)
            .peers
            .get(peer)
            .is_some_and(|p| !p.conns.is_empty())
    }

    /// A connection to `peer` closed: the mailbox requests waiting for its answers get none (an answer can
    /// only come back on the connection the request went out on), so their callers go on at once instead
    /// of after [`ANSWER_TIMEOUT`].
    pub(super) fn connection_closed(&self, peer: &AccountKey) {
        lock(&self.mail.pending).retain(|_, (m, _)| m != peer);
        // If it was one of our mailboxes, the keeper dials it again.
        self.mail.keep.notify_one();
    }

    /// An answer (or an announcement) from a mailbox over its connection to us.
    pub(super) fn on_mailbox_response(
        self: &Arc<Self>,
        from: AccountKey,
        id: u64,
        response: Response,
    ) {
        let mine = || {
            lock(&self.store)
                .my_mailboxes()
                .is_ok_and(|m| m.contains(&from))
        };
        match response {
            Response::NewMail => {
                if mine() {
                    self.fetch_mail(from);
                }
                return;
            }
            Response::Endpoints { first_period, keys } => {
                if !mine() || keys.len() > mailbox::ENDPOINT_PERIODS {
                    return;
                }
                let bytes: Vec<u8> = keys.iter().flat_map(|k| *k.as_bytes()).collect();
                // Bound first: the guard must not live through the arms (they lock the store again).
                let saved = lock(&self.store).save_my_mailbox_keys(&from, first_period, &bytes);
                match saved {
                    Ok(true) => {
                        // Contacts learn the new keys: the records and our card at once, connected
                        // contacts now.
                        self.refresh_card_or_log();
                        self.republish.notify_one();
                        self.send_mail_info_to_online(Some(from));
                        // New keys from a mailbox: it has just agreed to keep our mail (or a new period
                        // began), and our tokens may have been refused before it agreed. (It answers tokens
                        // with the same keys, so this does not repeat.)
                        self.push_mailbox_tokens(from);
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot store a mailbox's endpoint keys"),
                }
                return;
            }
            _ => {}
        }
        let mut pending = lock(&self.mail.pending);
        if pending.get(&id).is_some_and(|(m, _)| *m == from)
            && let Some((_, tx)) = pending.remove(&id)
        {
            let _ = tx.send(response);
        }
    }

    /// Fetches everything our mailbox `mailbox` holds (unless a fetch from it is under way, which then
    /// goes round once more).
    pub(super) fn fetch_mail(self: &Arc<Self>, mailbox: AccountKey) {
        {
            let mut f = lock(&self.mail.fetching);
            if let Some(again) = f.get_mut(&mailbox) {
                *again = true;
                return;
            }
            f.insert(mailbox, false);
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                node.fetch_all(mailbox).await;
                let mut f = lock(&node.mail.fetching);
                if f.get(&mailbox) == Some(&true) {
                    f.insert(mailbox, false);
                    continue;
                }
                f.remove(&mailbox);
                break;
            }
        });
    }

    async fn fetch_all(self: &Arc<Self>, mailbox: AccountKey) {
        let mut after = 0;
        let mut retries = 0;
        loop {
            let answer = self
                .mailbox_call(mailbox, Request::Fetch { after, max: 64 })
                .await;
            let Some(Response::Items { items, more }) = answer else {
                match answer {
                    Some(a) => tracing::info!(answer = ?a, "our mailbox did not hand out mail"),
                    // No answer: the connection the request went on closed (both sides dialled at once and
                    // one connection gave way, say). Ask again while another one stands.
                    None if retries < FETCH_RETRIES && self.connected_to(&mailbox) => {
                        retries += 1;
                        tracing::info!(retries, "no answer from our mailbox: asking again");
                        tokio::time::sleep(FETCH_RETRY_AFTER).await;
                        continue;
                    }
                    None => tracing::info!("no answer from our mailbox"),
                }
                return;
            };
            if items.is_empty() {
                return;
            }
            after = items.iter().map(|h| h.id).max().unwrap_or(after);
            let ids: Vec<u64> = items.iter().map(|h| h.id).collect();
            let opened = match self.open_mail(items) {
                Ok(o) => o,
                Err(e) => {
                    // Nothing is deleted: the next fetch tries again.
                    tracing::error!(error = %e, "cannot store mail from a mailbox");
                    return;
                }
            };
            let _ = self.mailbox_call(mailbox, Request::Delete { ids }).await;
            self.emit(Event::MailFetched {
                mailbox: self.label(&mailbox),
                messages: opened.messages,
                receipts: opened.receipts,
            });
            for (account, acks) in opened.acks {
                self.send_receipts(account, acks);
            }
            if !more {
                return;
            }
        }
    }

    /// Opens, decrypts and stores a batch of held envelopes. Envelopes that are not ours to read (an
    /// unknown token, a replay, damage) are skipped, to be deleted with the rest.
    fn open_mail(self: &Arc<Self>, items: Vec<mailbox::Held>) -> Result<Opened, StoreError> {
        let contacts: Vec<AccountKey> = lock(&self.store)
            .contacts()?
            .into_iter()
            .map(|p| p.account)
            .collect();
        let mut pairs: HashMap<AccountKey, PairKey> = HashMap::new();
        for c in &contacts {
            if let Some(Ok(p)) = self.id.account.as_ref().map(|a| PairKey::derive(a, c)) {
                pairs.insert(*c, p);
            }
        }
        let minutes = self.config.discovery.period_minutes;
        let mut tokens: HashMap<[u8; 32], AccountKey> = HashMap::new();
        let mut periods: HashSet<u64> = HashSet::new();
        let mut slots: HashMap<AccountKey, Vec<Slot>> = HashMap::new();
        let mut olm_changed = false;
        let mut messages: Vec<((AccountKey, DeviceKey), Vec<MessageFrame>)> = vec![];
        let mut receipts: Vec<(AccountKey, Vec<u64>)> = vec![];
        // Two passes: a message of a session whose first message comes later in the batch (deposits run
        // in parallel, so they may be held out of order) is tried again once that one made the session.
        let mut pending = items;
        let mut later = vec![];
        for pass in 0..2 {
            for item in std::mem::take(&mut pending) {
                let p = kith_core::blind::period_at(item.at_ms / 1000, minutes).0;
                for q in mailbox::accepted_periods(p) {
                    if periods.insert(q) {
                        for (c, pair) in &pairs {
                            tokens.insert(pair.deposit_token(&self.account, q), *c);
                        }
                    }
                }
                let Some(from) = tokens.get(&item.token).copied() else {
                    tracing::info!("held mail under a token of no contact: dropped");
                    continue;
                };
                let Some(opened) = pairs
                    .get(&from)
                    .and_then(|p| p.open(&self.account, &item.envelope).ok())
                else {
                    tracing::info!("held mail does not open: dropped");
                    continue;
                };
                let Ok(sealed) = Sealed::from_bytes(&opened) else {
                    continue;
                };
                let slots = slots.entry(from).or_insert_with(|| self.load_slots(&from));
                let (device, plain) = match self.decrypt(&from, &sealed, slots, &mut olm_changed) {
                    Ok(d) => d,
                    Err(kith_core::seal::SealError::NoSession) if pass == 0 => {
                        later.push(item);
                        continue;
                    }
                    Err(e) => {
                        // Most often a replay: the message key is gone, as it should be.
                        tracing::info!(error = %e, "held mail does not decrypt: dropped");
                        continue;
                    }
                };
                match mailbox::decode::<Letter>(&plain) {
                    Some(Letter::Messages(ms)) => {
                        let ms = ms
                            .into_iter()
                            .filter(|m| m.text.len() <= kith_core::wire::MAX_TEXT_BYTES);
                        match messages.iter_mut().find(|(k, _)| *k == (from, device)) {
                            Some((_, v)) => v.extend(ms),
                            None => messages.push(((from, device), ms.collect())),
                        }
                    }
                    Some(Letter::Receipts(seqs)) => receipts.push((from, seqs)),
                    None => tracing::info!("held mail of a kind this kith does not know: dropped"),
                }
            }
            pending = std::mem::take(&mut later);
        }
        // Messages first, ratchet state after: a crash in between decrypts them again (and the inbox
        // shows them once); the other order could lose them.
        let mut out = Opened::default();
        for ((account, device), ms) in messages {
            out.messages += ms.len();
            let acks = self.handle_messages_of(account, device, None, ms)?;
            match out.acks.iter_mut().find(|(a, _)| *a == account) {
                Some((_, v)) => v.extend(acks),
                None => out.acks.push((account, acks)),
            }
        }
        for (account, slots) in slots {
            let rows: Vec<(OlmSessionRow, bool)> = slots
                .iter()
                .filter(|s| s.dirty)
                .map(|s| (s.row(&self.olm_key), s.received))
                .collect();
            if !rows.is_empty() {
                lock(&self.store).save_olm_sessions(&account, &rows, unix_ms())?;
            }
        }
        if olm_changed {
            let pickle = lock(&self.olm).pickle(&self.olm_key);
            lock(&self.store).save_ratchet("account", &pickle)?;
        }
        for (account, seqs) in receipts {
            out.receipts += seqs.len();
            self.handle_receipts(account, &seqs);
        }
        Ok(out)
    }

    /// Decrypts one sealed message from `account`: on the session it belongs to, or (a session's first
    /// messages) on a new one, after checking that the sender's device belongs to `account`.
    fn decrypt(
        &self,
        account: &AccountKey,
        sealed: &Sealed,
        slots: &mut Vec<Slot>,
        olm_changed: &mut bool,
    ) -> Result<(DeviceKey, Vec<u8>), kith_core::seal::SealError> {
        let done = |s: &mut Slot, plain: Vec<u8>| {
            s.dirty = true;
            s.received = true;
            (s.device, plain)
        };
        if sealed.kind == 0 {
            if let Some(s) = slots.iter_mut().find(|s| s.session.matches(sealed)) {
                let plain = s.session.decrypt(sealed)?;
                return Ok(done(s, plain));
            }
            // The first messages of a session: checked by the proof they carry, or against the device's
            // bundle we hold (signed by the device its hello proved).
            let (device, session, plain) = match &sealed.proof {
                Some(_) => lock(&self.olm).inbound(account, sealed)?,
                None => {
                    let bundle = self
                        .mail_info_of(account)
                        .map(|i| i.bundle)
                        .ok_or(kith_core::seal::SealError::NoSession)?;
                    let (session, plain) = lock(&self.olm).inbound_known(&bundle, sealed)?;
                    (bundle.device, session, plain)
                }
            };
            *olm_changed = true;
            slots.insert(
                0,
                Slot {
                    device,
                    session,
                    dirty: true,
                    received: true,
                },
            );
            return Ok((device, plain));
        }
        for s in slots.iter_mut() {
            if let Ok(plain) = s.session.decrypt(sealed) {
                return Ok(done(s, plain));
            }
        }
        Err(kith_core::seal::SealError::NoSession)
    }

    /// Acknowledges `acks` to `account`: directly if connected, else through its mailboxes (best effort:
    /// a sender that never gets them offers the messages again, and gets the receipt then).
    fn send_receipts(self: &Arc<Self>, account: AccountKey, acks: Vec<u64>) {
        if acks.is_empty() {
            return;
        }
        let connected = lock(&self.state)
            .peers
            .get(&account)
            .is_some_and(|p| !p.conns.is_empty());
        if connected {
            let frames = acks
                .chunks(MAX_RECEIPT_SEQS)
                .map(|c| Frame::Receipt(ReceiptFrame { seqs: c.to_vec() }))
                .collect();
            self.send_frames(account, frames);
            return;
        }
        let Some(info) = self
            .mail_info_of(&account)
            .filter(|i| !self.mailboxes_of(&account, i).is_empty())
        else {
            return;
        };
        let letters: Vec<Letter> = acks
            .chunks(RECEIPTS_PER_LETTER)
            .map(|c| Letter::Receipts(c.to_vec()))
            .collect();
        let (envelopes, session) = match self.seal_letters(&account, &info, &letters) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot seal receipts");
                return;
            }
        };
        // The ratchet moved: its state is kept before anything leaves.
        if let Err(e) =
            lock(&self.store).save_olm_sessions(&account, &[(session, false)], unix_ms())
        {
            tracing::warn!(error = %e, "cannot store the ratchet; receipts not sent");
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            let items = envelopes.into_iter().map(|e| (0, e)).collect();
            if let Err((_, reason)) = node.deposit(&account, items).await {
                tracing::info!(%reason, "receipts not deposited; the sender will offer its messages again");
            }
        });
    }

    // ---- the mailbox's side ----

    /// Answers a request on the mailbox ALPN (a deposit), and tells a connected owner that mail came.
    pub(super) async fn serve_deposit(self: Arc<Self>, request: Vec<u8>) -> Vec<u8> {
        let node = self.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let period =
                kith_core::blind::period_at(unix_now(), node.config.discovery.period_minutes).0;
            let answer = crate::mailbox::answer_anonymous(
                &node.store,
                &request,
                period,
                &node.config.mailbox_quotas,
                unix_ms(),
            );
            let owner = match (
                mailbox::decode::<Response>(&answer),
                mailbox::decode::<Request>(&request),
            ) {
                (Some(Response::Deposited { .. }), Some(Request::Deposit { token, .. })) => {
                    lock(&node.store).mailbox_token_owner(&token).ok().flatten()
                }
                _ => None,
            };
            (answer, owner)
        })
        .await;
        let Ok((answer, owner)) = answer else {
            return mailbox::encode(&Response::Refused(mailbox::Refusal::Malformed));
        };
        if let Some(owner) = owner
            && lock(&self.mail.notify).insert(owner)
        {
            // One announcement for a burst of deposits: those that land before it is sent are covered
            // by it, later ones schedule the next.
            let node = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                lock(&node.mail.notify).remove(&owner);
                node.send_frames(
                    owner,
                    vec![Frame::MailboxResponse {
                        id: 0,
                        response: Response::NewMail,
                    }],
                );
            });
        }
        answer
    }
}

/// What one batch of held mail brought.
#[derive(Default)]
struct Opened {
    messages: usize,
    receipts: usize,
    /// Receipts to send, per sender.
    acks: Vec<(AccountKey, Vec<u64>)>,
}

// ---- mailboxes: who keeps whose mail, and what contacts learn of ours ----

impl Node {
    /// Keep mail for the contact `name` while it is away (it then lists us with `kith mailbox use`).
    pub fn mailbox_host(self: &Arc<Self>, name: &str) -> Result<String, NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        lock(&self.store).mailbox_add_owner(&peer.account, unix_ms())?;
        tracing::info!("keeping mail for a contact");
        // If the owner is connected (and named us its mailbox before we agreed, so its tokens were
        // refused), tell it now: where we will be, which is also its cue to hand us its tokens again.
        self.send_mailbox_endpoints(peer.account);
        Ok(Address::new(peer.account).to_string())
    }

    /// Use the contact `name` as one of our mailboxes (it runs `kith mailbox host` for us). It gets our
    /// contacts' deposit tokens now if connected, and at every connection and period from then on.
    pub fn mailbox_use(self: &Arc<Self>, name: &str) -> Result<String, NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        lock(&self.store).add_my_mailbox(&peer.account, unix_ms())?;
        // Our card names it from now on...
        self.refresh_card_or_log();
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
    pub(super) fn mail_info(&self) -> Result<kith_core::mailbox::MailInfo, NodeError> {
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

    /// What our card carries for contacts to leave mail while we are away: our Olm keys and mailboxes
    /// (nothing while we have no mailbox: no one could deposit).
    /// A card's Olm keys are used for at most a fallback rotation (a week), so it names each mailbox's
    /// endpoint keys from the current period through that week only (a smaller card, a smaller QR code).
    pub(super) fn card_mail(&self) -> Option<kith_core::mailbox::MailInfo> {
        let mut info = self
            .mail_info()
            .map_err(|e| tracing::warn!(error = %e, "cannot put our mail info in our card"))
            .ok()?;
        let minutes = self.config.discovery.period_minutes.max(1);
        let period = kith_core::blind::period_at(unix_now(), minutes).0;
        let periods = (FALLBACK_ROTATE.as_secs() / 60).div_ceil(minutes) as usize + 1;
        for m in &mut info.mailboxes {
            let past = period.saturating_sub(m.first_period) as usize;
            if past > 0 && !m.keys.is_empty() {
                m.keys.drain(..past.min(m.keys.len()));
                m.first_period = period;
            }
            m.keys.truncate(periods);
        }
        (!info.mailboxes.is_empty()).then_some(info)
    }

    /// Where our mailboxes are, in the order we named them: their cards' hints, with the endpoint keys
    /// they told us for the coming periods.
    pub(super) fn my_mailbox_addrs(&self) -> Vec<kith_core::mailbox::MailboxAddr> {
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
    pub(super) fn my_mailbox_entries(
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
    pub(super) fn send_mailbox_endpoints(&self, account: AccountKey) {
        let period =
            kith_core::blind::period_at(unix_now(), self.config.discovery.period_minutes).0;
        let keys = (period..period + kith_core::mailbox::ENDPOINT_PERIODS as u64)
            .map(|p| kith_core::EndpointKey::from_seed(&self.contact_endpoint_seed(p)))
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
    pub(super) fn send_mail_info_to_online(self: &Arc<Self>, except: Option<AccountKey>) {
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
    pub(super) fn send_mail_info(self: &Arc<Self>, account: AccountKey) {
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
    pub(super) fn on_mail_info(
        self: &Arc<Self>,
        peer: &VerifiedPeer,
        info: kith_core::mailbox::MailInfo,
    ) {
        let account = peer.account();
        if !self.is_contact(&account) {
            return;
        }
        if info.bundle.device != peer.device() || info.bundle.verify().is_err() {
            tracing::info!("mail info with keys of another device, or a bad signature: ignored");
            return;
        }
        // The first from this contact in this run: ours may have gone to them before they had added us,
        // and been dropped; send it (again) once. (Not "nothing stored": what a card carried may be.)
        let first = lock(&self.mail.heard_from).insert(account);
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
        if first {
            self.send_mail_info(account);
        }
        self.mail.wake.notify_one();
    }

    /// Our contacts changed (one added, accepted or removed): our mailboxes need the new set of deposit
    /// tokens, and a contact `added` while a connection to it already stands (it dialled us first, when we
    /// were not yet its contact) learns our mail info on that connection now.
    pub(super) fn contacts_changed(self: &Arc<Self>, added: Option<AccountKey>) {
        // Collected first: the store's guard must not live through the loop (pushing locks it again).
        let mine = lock(&self.store).my_mailboxes().unwrap_or_default();
        for m in mine {
            if self.connected_to(&m) {
                self.push_mailbox_tokens(m);
            }
        }
        if let Some(a) = added
            && self.connected_to(&a)
        {
            self.send_mail_info(a);
        }
    }

    /// Gives the mailbox `mailbox` the deposit tokens of all our contacts for the previous, current and
    /// next period (so clocks a little apart still agree), over our connection to it if there is one.
    pub(super) fn push_mailbox_tokens(self: &Arc<Self>, mailbox: AccountKey) {
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
            .filter_map(|c| {
                kith_core::seal::PairKey::derive(self.id.account.as_ref()?, &c.account).ok()
            })
            .collect();
        let frames: Vec<Frame> = [period.saturating_sub(1), period, period + 1]
            .into_iter()
            .map(|p| Frame::MailboxRequest {
                id: p,
                request: kith_core::mailbox::Request::Tokens {
                    period: p,
                    tokens: kith_core::seal::PairKey::tokens_for_period(&pairs, &self.account, p),
                },
            })
            .collect();
        self.send_frames(mailbox, frames);
    }
}

/// Groups `(key, item)` pairs by key, keeping the order of the items (the input is sorted by key or not;
/// each key's items keep their relative order).
fn group<T>(rows: Vec<(AccountKey, T)>) -> Vec<(AccountKey, Vec<T>)> {
    let mut out: Vec<(AccountKey, Vec<T>)> = vec![];
    for (k, v) in rows {
        match out.iter_mut().find(|(a, _)| *a == k) {
            Some((_, list)) => list.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}
