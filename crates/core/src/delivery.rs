//! Reliable, in-order message delivery as sans-IO state machines.
//!
//! Nothing in here touches sockets, clocks or randomness: every entry point
//! takes `now` and the driver (the async node code, or a simulation) performs
//! the I/O the machines ask for. That keeps the logic deterministic and lets
//! `tests/delivery_sim.rs` drive it through lossy links, flaps and crashes in
//! virtual time.
//!
//! * [`Outbox`] (sender, one per remote peer): which seq to (re)transmit when,
//!   and when to dial.
//! * [`Inbox`] (receiver, one per remote sender device): what to store, what
//!   to acknowledge, and what becomes visible in order.
//!
//! Sequence numbers are per conversation, start at 1 and are assigned and
//! persisted by the caller before they reach these machines; bodies never
//! pass through here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Tuning for an [`Outbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Maximum number of messages in flight (sent, not yet acknowledged).
    /// Values below 1 are treated as 1 so the outbox can always progress.
    pub window: usize,
    /// Retransmission timeout used after a connect or after progress.
    pub initial_rto: Duration,
    /// Upper bound for the exponentially backed-off retransmission timeout.
    pub max_rto: Duration,
    /// Delay before the first redial after a failed or lost connection.
    pub initial_dial_backoff: Duration,
    /// Upper bound for the exponentially growing dial backoff.
    pub max_dial_backoff: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            window: 256,
            initial_rto: Duration::from_secs(2),
            max_rto: Duration::from_secs(60),
            initial_dial_backoff: Duration::from_millis(250),
            max_dial_backoff: Duration::from_secs(30),
        }
    }
}

/// Bookkeeping for one transmitted, unacknowledged message.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sent_at: Instant,
    deadline: Instant,
}

/// Sender side of one conversation: decides what to transmit, when to
/// retransmit and when to dial. Only sequence numbers are tracked.
///
/// # Call order (driver loop)
///
/// 1. Feed events as they happen:
///    * a message was persisted → [`enqueue`](Self::enqueue) (after a restart:
///      every undelivered seq, in any order);
///    * a connection came up → [`connected`](Self::connected); went down →
///      [`disconnected`](Self::disconnected); a dial attempt failed →
///      [`dial_failed`](Self::dial_failed);
///    * a receipt frame arrived → [`receipt`](Self::receipt), then durably
///      mark the returned seqs delivered;
///    * the timer armed in step 3 fired → [`handle_timeout`](Self::handle_timeout).
/// 2. After *any* event: if [`poll_dial`](Self::poll_dial) returns true start
///    one connection attempt (and later report `connected` or `dial_failed`);
///    then drain [`poll_transmit`](Self::poll_transmit), loading and sending
///    each returned seq on the current connection.
/// 3. Arm a single timer at [`poll_timeout`](Self::poll_timeout) (`None`:
///    no timer needed until the next event).
///
/// # Policies
///
/// * Retransmission: each in-flight message has its own deadline
///   (`sent_at + rto`). When deadlines pass the messages are requeued and the
///   RTO doubles (capped), but at most once per loss episode: a message sent
///   before the last doubling does not double it again, otherwise a burst of
///   N lost messages would back off N times. Receipt progress and a new
///   connection reset the RTO. There is no RTT estimation: messages are small
///   and rare, so a fixed initial RTO plus backoff is enough.
/// * Dialing: every failed dial and every lost connection doubles the dial
///   backoff (capped). It is reset only by receipt *progress*, not by
///   `connected` alone, so a peer that accepts and immediately drops
///   connections is not redialed in a hot loop.
/// * Memory: delivered seqs are forgotten. The caller's store is the
///   authority on delivery; re-enqueueing a seq that was already delivered
///   just sends it again and the receiver acknowledges it as a duplicate.
#[derive(Debug)]
pub struct Outbox {
    config: OutboxConfig,
    /// Pending and eligible for (re)transmission, lowest seq first.
    queued: BTreeSet<u64>,
    /// Sent on the current connection, awaiting a receipt.
    in_flight: BTreeMap<u64, InFlight>,
    rto: Duration,
    /// When the RTO was last doubled; see the retransmission policy.
    last_rto_backoff: Option<Instant>,
    connected: bool,
    /// A dial was handed out by `poll_dial` and not yet resolved.
    dialing: bool,
    /// Earliest time for the next dial; `None` means immediately.
    next_dial_at: Option<Instant>,
    dial_backoff: Duration,
}

impl Outbox {
    /// Creates an empty, disconnected outbox.
    pub fn new(mut config: OutboxConfig) -> Self {
        config.window = config.window.max(1);
        Self {
            rto: config.initial_rto,
            dial_backoff: config.initial_dial_backoff,
            config,
            queued: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            last_rto_backoff: None,
            connected: false,
            dialing: false,
            next_dial_at: None,
        }
    }

    /// Adds a persisted message. Enqueueing a seq that is already pending is a
    /// no-op (restart replay may overlap with live enqueues).
    pub fn enqueue(&mut self, seq: u64, _now: Instant) {
        if !self.in_flight.contains_key(&seq) {
            self.queued.insert(seq);
        }
    }

    /// A connection to the peer is up. Anything sent earlier may have been
    /// lost with the old connection, so everything unacknowledged becomes
    /// eligible for transmission right away, with a fresh RTO.
    pub fn connected(&mut self, _now: Instant) {
        self.connected = true;
        self.dialing = false;
        self.next_dial_at = None;
        self.requeue_in_flight();
        self.rto = self.config.initial_rto;
        self.last_rto_backoff = None;
    }

    /// The connection is gone. In-flight messages are requeued and, if
    /// anything is pending, a redial becomes due after the dial backoff.
    pub fn disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.dialing = false;
        self.requeue_in_flight();
        self.schedule_redial(now);
    }

    /// The dial handed out by [`poll_dial`](Self::poll_dial) failed.
    pub fn dial_failed(&mut self, now: Instant) {
        self.dialing = false;
        if !self.connected {
            self.schedule_redial(now);
        }
    }

    /// A new way to reach the peer appeared (this node found a relay, a fresher record came): the backoff
    /// of earlier failures, which were failures of the old ways, no longer applies. The next dial is due
    /// now (unless one is under way or the peer is connected); the backoff keeps growing if it fails too.
    pub fn route_changed(&mut self, _now: Instant) {
        self.next_dial_at = None;
    }

    /// Applies acknowledgements from the peer and returns the seqs newly
    /// known to be delivered (the caller must persist that). Unknown and
    /// duplicate acks are ignored: the peer controls this input.
    pub fn receipt(&mut self, seqs: &[u64], _now: Instant) -> Vec<u64> {
        let mut delivered = Vec::new();
        for &seq in seqs {
            // An ack may also arrive for a queued seq: a retransmit timeout
            // requeued it but the original was received after all.
            if self.in_flight.remove(&seq).is_some() || self.queued.remove(&seq) {
                delivered.push(seq);
            }
        }
        if !delivered.is_empty() {
            // The path works: stop backing off.
            self.rto = self.config.initial_rto;
            self.last_rto_backoff = None;
            self.dial_backoff = self.config.initial_dial_backoff;
        }
        delivered
    }

    /// Next seq to transmit now, lowest first (so retransmits of older
    /// messages go before newer ones). `None` when disconnected, nothing is
    /// queued, or the window is full. The seq is marked in flight.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<u64> {
        if !self.connected || self.in_flight.len() >= self.config.window {
            return None;
        }
        let seq = self.queued.pop_first()?;
        let deadline = now.checked_add(self.rto).unwrap_or(now);
        self.in_flight.insert(
            seq,
            InFlight {
                sent_at: now,
                deadline,
            },
        );
        Some(seq)
    }

    /// Returns true when the driver should start one connection attempt now.
    /// Returns true once per attempt; the outbox then counts as dialing until
    /// [`connected`](Self::connected), [`dial_failed`](Self::dial_failed) or
    /// [`disconnected`](Self::disconnected).
    pub fn poll_dial(&mut self, now: Instant) -> bool {
        if self.connected || self.dialing || self.pending() == 0 {
            return false;
        }
        if self.next_dial_at.is_some_and(|at| now < at) {
            return false;
        }
        self.dialing = true;
        true
    }

    /// Requeues in-flight messages whose retransmit deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<(u64, InFlight)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(&seq, &f)| (seq, f))
            .collect();
        if expired.is_empty() {
            return;
        }
        // Only messages sent with the current RTO count as a new loss
        // episode; older ones were already accounted for by the last doubling.
        let new_episode = expired
            .iter()
            .any(|(_, f)| self.last_rto_backoff.is_none_or(|at| f.sent_at >= at));
        for (seq, _) in expired {
            self.in_flight.remove(&seq);
            self.queued.insert(seq);
        }
        if new_episode {
            self.rto = self.rto.saturating_mul(2).min(self.config.max_rto);
            self.last_rto_backoff = Some(now);
        }
    }

    /// The earliest time the driver must call
    /// [`handle_timeout`](Self::handle_timeout) / [`poll_dial`](Self::poll_dial)
    /// again, or `None` if only a new event can create work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.connected {
            self.in_flight.values().map(|f| f.deadline).min()
        } else if !self.dialing && self.pending() > 0 {
            // `None` here means "dial now", which the driver already learned
            // from `poll_dial` in the same round.
            self.next_dial_at
        } else {
            None
        }
    }

    /// Messages not yet acknowledged (queued or in flight).
    pub fn pending(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// Messages transmitted and awaiting a receipt.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Everything enqueued has been acknowledged.
    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    fn requeue_in_flight(&mut self) {
        let in_flight = std::mem::take(&mut self.in_flight);
        self.queued.extend(in_flight.into_keys());
    }

    fn schedule_redial(&mut self, now: Instant) {
        self.next_dial_at = Some(now.checked_add(self.dial_backoff).unwrap_or(now));
        self.dial_backoff = self
            .dial_backoff
            .saturating_mul(2)
            .min(self.config.max_dial_backoff);
    }
}

/// How far beyond the visible prefix a receiver accepts messages. Bounds the
/// memory (and storage) a peer can make us hold behind a gap.
pub const MAX_AHEAD: u64 = 4096;

/// Verdict of [`Inbox::offer`] on an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not seen before: persist it, call [`Inbox::stored`], then acknowledge.
    New,
    /// Already stored: acknowledge again (the earlier ack was probably lost).
    Duplicate,
    /// Beyond `shown_upto + MAX_AHEAD`: drop without storing or acking; the
    /// sender retries once the gap has filled.
    TooFarAhead,
    /// Seq 0 is never assigned: drop without acking.
    Invalid,
}

/// Receiver side of one conversation: which incoming messages to store and
/// acknowledge, and which become visible, strictly in order.
///
/// # Call order
///
/// For each incoming message call [`offer`](Self::offer):
/// * [`Offer::New`]: persist the message, then [`stored`](Self::stored);
///   display the returned seqs (in order), persist the new
///   [`shown_upto`](Self::shown_upto), then acknowledge the seq. A duplicate
///   frame may arrive while persisting and also be answered `New`, so the
///   store write must be idempotent (and `stored` is).
/// * [`Offer::Duplicate`]: acknowledge again.
/// * [`Offer::TooFarAhead`] / [`Offer::Invalid`]: drop, no ack.
///
/// After a restart rebuild with [`restore`](Self::restore) from the store.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    /// Every seq in `1..=shown_upto` is stored and visible.
    shown_upto: u64,
    /// Stored seqs beyond a gap, waiting for it to fill. All are in
    /// `shown_upto + 2 ..= shown_upto + MAX_AHEAD`.
    ahead: BTreeSet<u64>,
}

impl Inbox {
    /// An inbox that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds from the store: `shown_upto` as last persisted, plus the
    /// stored seqs beyond it (entries at or below `shown_upto` are ignored).
    ///
    /// A crash between persisting a message and persisting the new
    /// `shown_upto` leaves stored seqs that are already contiguous. They are
    /// made visible here, so [`shown_upto`](Self::shown_upto) may come back
    /// larger than the argument: the driver must then display and persist
    /// `old+1..=shown_upto()`. (Leaving them held would deadlock: `offer`
    /// says `Duplicate`, so `stored` would never be called for them again.)
    pub fn restore(shown_upto: u64, stored_ahead: impl IntoIterator<Item = u64>) -> Self {
        let mut inbox = Self {
            shown_upto,
            ahead: stored_ahead
                .into_iter()
                .filter(|&s| s > shown_upto)
                .collect(),
        };
        inbox.advance();
        inbox
    }

    /// Classifies an incoming seq; see [`Offer`].
    pub fn offer(&self, seq: u64) -> Offer {
        if seq == 0 {
            Offer::Invalid
        } else if seq <= self.shown_upto || self.ahead.contains(&seq) {
            Offer::Duplicate
        } else if seq > self.shown_upto.saturating_add(MAX_AHEAD) {
            Offer::TooFarAhead
        } else {
            Offer::New
        }
    }

    /// Records that `seq` is durably stored and returns the seqs that became
    /// visible, in order: the contiguous run now following the old
    /// `shown_upto`. Empty if `seq` sits after a gap (it is held until the gap
    /// fills) or was already recorded.
    pub fn stored(&mut self, seq: u64) -> Vec<u64> {
        // Same guard as `offer`, so a misbehaving driver cannot grow `ahead`
        // beyond MAX_AHEAD either.
        if self.offer(seq) != Offer::New {
            return Vec::new();
        }
        self.ahead.insert(seq);
        self.advance()
    }

    /// Highest seq such that all of `1..=shown_upto` are visible.
    pub fn shown_upto(&self) -> u64 {
        self.shown_upto
    }

    /// Stored messages held back by a gap.
    pub fn held(&self) -> usize {
        self.ahead.len()
    }

    /// Moves the contiguous run after `shown_upto` from `ahead` to visible.
    fn advance(&mut self) -> Vec<u64> {
        let mut shown = Vec::new();
        while let Some(next) = self.shown_upto.checked_add(1) {
            if !self.ahead.remove(&next) {
                break;
            }
            self.shown_upto = next;
            shown.push(next);
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> OutboxConfig {
        OutboxConfig::default()
    }

    fn drain(ob: &mut Outbox, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| ob.poll_transmit(now)).collect()
    }

    #[test]
    fn default_config_values() {
        let c = OutboxConfig::default();
        assert_eq!(c.window, 256);
        assert_eq!(c.initial_rto, Duration::from_secs(2));
        assert_eq!(c.max_rto, Duration::from_secs(60));
        assert_eq!(c.initial_dial_backoff, Duration::from_millis(250));
        assert_eq!(c.max_dial_backoff, Duration::from_secs(30));
    }

    #[test]
    fn a_new_route_makes_the_next_dial_due_at_once() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(cfg());
        ob.enqueue(1, t0);
        // A failure pushes the next dial out...
        let now = t0;
        assert!(ob.poll_dial(now));
        ob.dial_failed(now);
        assert!(!ob.poll_dial(now), "backing off");
        // ...until a relay appears: due now, once.
        ob.route_changed(now);
        assert!(ob.poll_dial(now));
        assert!(!ob.poll_dial(now), "one attempt at a time");
        ob.route_changed(now);
        assert!(!ob.poll_dial(now), "not while a dial is under way");
        ob.dial_failed(now);
        assert!(!ob.poll_dial(now), "and a failure backs off again");
        // Nothing pending or connected: no dial.
        ob.connected(now);
        ob.route_changed(now);
        assert!(!ob.poll_dial(now));
    }

    #[test]
    fn new_outbox_is_idle() {
        let mut ob = Outbox::new(cfg());
        let now = Instant::now();
        assert!(ob.is_idle());
        assert_eq!(ob.pending(), 0);
        assert!(!ob.poll_dial(now), "nothing to send, no dial");
        assert_eq!(ob.poll_timeout(), None);
    }

    #[test]
    fn enqueue_dedups_and_orders() {
        let now = Instant::now();
        let mut ob = Outbox::new(cfg());
        for s in [5, 3, 9, 3, 5] {
            ob.enqueue(s, now);
        }
        assert_eq!(ob.pending(), 3);
        assert_eq!(drain(&mut ob, now), Vec::<u64>::new(), "not connected yet");
        ob.connected(now);
        assert_eq!(drain(&mut ob, now), vec![3, 5, 9]);
        ob.enqueue(5, now); // in flight: still a no-op
        assert_eq!(ob.pending(), 3);
        assert_eq!(ob.in_flight(), 3);
    }

    #[test]
    fn poll_transmit_respects_window() {
        let now = Instant::now();
        let mut ob = Outbox::new(OutboxConfig { window: 2, ..cfg() });
        (1..=5).for_each(|s| ob.enqueue(s, now));
        ob.connected(now);
        assert_eq!(drain(&mut ob, now), vec![1, 2]);
        assert_eq!(ob.receipt(&[1], now), vec![1]);
        assert_eq!(drain(&mut ob, now), vec![3]);
        // Zero window is clamped so the outbox cannot stall forever.
        let mut ob = Outbox::new(OutboxConfig { window: 0, ..cfg() });
        ob.enqueue(1, now);
        ob.connected(now);
        assert_eq!(ob.poll_transmit(now), Some(1));
    }

    #[test]
    fn receipt_ignores_unknown_and_duplicates() {
        let now = Instant::now();
        let mut ob = Outbox::new(cfg());
        (1..=3).for_each(|s| ob.enqueue(s, now));
        ob.connected(now);
        assert_eq!(ob.poll_transmit(now), Some(1));
        // 2 is only queued, still counts: the peer has it.
        assert_eq!(ob.receipt(&[1, 1, 2, 0, 99, u64::MAX], now), vec![1, 2]);
        assert_eq!(ob.receipt(&[1, 2], now), Vec::<u64>::new());
        assert_eq!(ob.pending(), 1);
        assert_eq!(ob.receipt(&[3], now), vec![3]);
        assert!(ob.is_idle());
        assert_eq!(ob.poll_timeout(), None);
    }

    #[test]
    fn timeout_retransmits_with_backoff_once_per_episode() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(cfg());
        (1..=3).for_each(|s| ob.enqueue(s, t0));
        ob.connected(t0);
        assert_eq!(ob.poll_transmit(t0), Some(1));
        assert_eq!(ob.poll_transmit(t0 + 10 * MS), Some(2));
        assert_eq!(ob.poll_timeout(), Some(t0 + Duration::from_secs(2)));

        ob.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(ob.in_flight(), 2, "nothing expired yet");

        let t1 = t0 + Duration::from_secs(2);
        ob.handle_timeout(t1);
        assert_eq!(ob.in_flight(), 1);
        assert_eq!(
            ob.poll_transmit(t1),
            Some(1),
            "retransmit before newer seq 3"
        );
        assert_eq!(
            ob.poll_timeout(),
            Some(t0 + 10 * MS + Duration::from_secs(2))
        );

        // Seq 2 belongs to the same loss episode: no second doubling.
        let t2 = t0 + 10 * MS + Duration::from_secs(2);
        ob.handle_timeout(t2);
        assert_eq!(ob.poll_transmit(t2), Some(2));
        assert_eq!(ob.poll_timeout(), Some(t1 + Duration::from_secs(4)));

        // Retransmissions lost again: new episode, RTO 4s -> 8s.
        let t3 = t2 + Duration::from_secs(4);
        ob.handle_timeout(t3);
        assert_eq!(ob.poll_transmit(t3), Some(1));
        assert_eq!(ob.poll_transmit(t3), Some(2));
        assert_eq!(ob.poll_timeout(), Some(t3 + Duration::from_secs(8)));

        // Progress resets the RTO.
        assert_eq!(ob.receipt(&[1, 2], t3), vec![1, 2]);
        assert_eq!(ob.poll_transmit(t3), Some(3));
        assert_eq!(ob.poll_timeout(), Some(t3 + Duration::from_secs(2)));
    }

    #[test]
    fn rto_is_capped() {
        let mut now = Instant::now();
        let mut ob = Outbox::new(cfg());
        ob.enqueue(1, now);
        ob.connected(now);
        for _ in 0..20 {
            assert_eq!(ob.poll_transmit(now), Some(1));
            now = ob.poll_timeout().expect("deadline armed");
            ob.handle_timeout(now);
        }
        assert_eq!(ob.poll_transmit(now), Some(1));
        assert_eq!(ob.poll_timeout(), Some(now + Duration::from_secs(60)));
    }

    #[test]
    fn connected_resets_rto_and_resends_everything() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(cfg());
        (1..=2).for_each(|s| ob.enqueue(s, t0));
        ob.connected(t0);
        assert_eq!(drain(&mut ob, t0), vec![1, 2]);
        let t1 = t0 + Duration::from_secs(2);
        ob.handle_timeout(t1); // RTO now 4s
        assert_eq!(drain(&mut ob, t1), vec![1, 2]);
        ob.connected(t1); // e.g. a fresh connection replaced the old one
        assert_eq!(ob.in_flight(), 0);
        assert_eq!(drain(&mut ob, t1), vec![1, 2]);
        assert_eq!(ob.poll_timeout(), Some(t1 + Duration::from_secs(2)));
    }

    #[test]
    fn dial_lifecycle_and_backoff() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(cfg());
        assert!(!ob.poll_dial(t0));
        ob.enqueue(1, t0);
        assert!(ob.poll_dial(t0), "first dial is immediate");
        assert!(!ob.poll_dial(t0), "once per attempt");
        assert_eq!(
            ob.poll_timeout(),
            None,
            "dial outcome is an event, not a timer"
        );

        ob.dial_failed(t0);
        assert_eq!(ob.poll_timeout(), Some(t0 + 250 * MS));
        assert!(!ob.poll_dial(t0 + 249 * MS));
        let t1 = t0 + 250 * MS;
        assert!(ob.poll_dial(t1));
        ob.dial_failed(t1);
        assert_eq!(ob.poll_timeout(), Some(t1 + 500 * MS));
        let t2 = t1 + 500 * MS;
        assert!(ob.poll_dial(t2));

        // A connection that dies without progress keeps growing the backoff.
        ob.connected(t2);
        assert!(!ob.poll_dial(t2), "connected: no dial");
        assert_eq!(ob.poll_transmit(t2), Some(1));
        ob.disconnected(t2);
        assert_eq!(ob.in_flight(), 0);
        assert_eq!(ob.pending(), 1);
        assert_eq!(ob.poll_timeout(), Some(t2 + Duration::from_secs(1)));

        // Progress resets it.
        let t3 = t2 + Duration::from_secs(1);
        assert!(ob.poll_dial(t3));
        ob.connected(t3);
        ob.enqueue(2, t3);
        assert_eq!(drain(&mut ob, t3), vec![1, 2]);
        assert_eq!(ob.receipt(&[1], t3), vec![1]);
        ob.disconnected(t3);
        assert_eq!(ob.poll_timeout(), Some(t3 + 250 * MS));
    }

    #[test]
    fn dial_backoff_is_capped() {
        let mut now = Instant::now();
        let mut ob = Outbox::new(cfg());
        ob.enqueue(1, now);
        for _ in 0..20 {
            assert!(ob.poll_dial(now));
            ob.dial_failed(now);
            now = ob.poll_timeout().expect("redial scheduled");
        }
        assert!(ob.poll_dial(now));
        ob.dial_failed(now);
        assert_eq!(ob.poll_timeout(), Some(now + Duration::from_secs(30)));
    }

    #[test]
    fn disconnected_without_pending_requests_no_dial() {
        let now = Instant::now();
        let mut ob = Outbox::new(cfg());
        ob.enqueue(1, now);
        ob.connected(now);
        assert_eq!(ob.poll_transmit(now), Some(1));
        assert_eq!(ob.receipt(&[1], now), vec![1]);
        ob.disconnected(now);
        assert!(!ob.poll_dial(now + Duration::from_secs(100)));
        assert_eq!(ob.poll_timeout(), None);
        assert!(ob.is_idle());
    }

    #[test]
    fn handle_timeout_when_disconnected_is_harmless() {
        let now = Instant::now();
        let mut ob = Outbox::new(cfg());
        ob.enqueue(1, now);
        ob.handle_timeout(now + Duration::from_secs(1000));
        assert_eq!(ob.pending(), 1);
        assert_eq!(ob.in_flight(), 0);
    }

    #[test]
    fn inbox_offer_classification() {
        let mut ib = Inbox::new();
        assert_eq!(ib.offer(0), Offer::Invalid);
        assert_eq!(ib.offer(1), Offer::New);
        assert_eq!(ib.offer(MAX_AHEAD), Offer::New);
        assert_eq!(ib.offer(MAX_AHEAD + 1), Offer::TooFarAhead);
        assert_eq!(ib.offer(u64::MAX), Offer::TooFarAhead);
        assert_eq!(ib.stored(1), vec![1]);
        assert_eq!(ib.offer(1), Offer::Duplicate);
        assert_eq!(ib.offer(MAX_AHEAD + 1), Offer::New, "window slides");
        assert_eq!(ib.stored(3), Vec::<u64>::new());
        assert_eq!(ib.offer(3), Offer::Duplicate, "held counts as stored");
    }

    #[test]
    fn inbox_stored_holds_gaps_then_releases_in_order() {
        let mut ib = Inbox::new();
        assert_eq!(ib.stored(3), Vec::<u64>::new());
        assert_eq!(ib.stored(2), Vec::<u64>::new());
        assert_eq!(ib.stored(5), Vec::<u64>::new());
        assert_eq!(ib.held(), 3);
        assert_eq!(ib.shown_upto(), 0);
        assert_eq!(ib.stored(1), vec![1, 2, 3]);
        assert_eq!(ib.shown_upto(), 3);
        assert_eq!(ib.held(), 1);
        assert_eq!(ib.stored(4), vec![4, 5]);
        assert_eq!(ib.held(), 0);
        // Repeats and invalid input change nothing.
        assert_eq!(ib.stored(4), Vec::<u64>::new());
        assert_eq!(ib.stored(0), Vec::<u64>::new());
        assert_eq!(ib.stored(5 + MAX_AHEAD + 1), Vec::<u64>::new());
        assert_eq!(ib.held(), 0);
        assert_eq!(ib.shown_upto(), 5);
    }

    #[test]
    fn inbox_restore() {
        let ib = Inbox::restore(5, [2, 5, 7, 9]);
        assert_eq!(ib.shown_upto(), 5);
        assert_eq!(ib.held(), 2);
        assert_eq!(ib.offer(4), Offer::Duplicate);
        assert_eq!(ib.offer(7), Offer::Duplicate);
        assert_eq!(ib.offer(6), Offer::New);
        let mut ib = ib;
        assert_eq!(ib.stored(6), vec![6, 7]);
        assert_eq!(ib.stored(8), vec![8, 9]);

        // Crash after storing 6,7 but before persisting shown_upto.
        let ib = Inbox::restore(5, [6, 7, 9]);
        assert_eq!(ib.shown_upto(), 7);
        assert_eq!(ib.held(), 1);
        assert_eq!(ib.offer(8), Offer::New);
    }
}
