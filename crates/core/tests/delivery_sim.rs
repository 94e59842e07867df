//! Deterministic simulation of `delivery::{Outbox, Inbox}` over a hostile link.
//!
//! One sender and one receiver talk over a link that drops, duplicates and
//! reorders frames in both directions, flaps, and whose endpoints crash and
//! restart from their simulated durable stores. Everything runs in virtual
//! time (one `Instant::now()` plus durations) driven by a seeded `StdRng`, so a
//! failing seed replays exactly: every assertion names its seed.

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use kith_core::delivery::{Inbox, MAX_AHEAD, Offer, Outbox, OutboxConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

/// No new flaps or crashes after this, so every run can finish.
const CHAOS_END: Duration = Duration::from_secs(300);
/// Virtual-time and step bounds: exceeding either means the protocol stalled.
const MAX_TIME: Duration = Duration::from_secs(3600);
const MAX_STEPS: u64 = 500_000;

#[derive(Debug)]
enum Ev {
    /// The application persists message `seq` and hands it to the outbox.
    Enqueue(u64),
    /// Data frame towards the receiver, sent on connection `conn`.
    Frame {
        conn: u64,
        seq: u64,
    },
    /// Receipt towards the sender, sent on connection `conn`.
    Ack {
        conn: u64,
        seqs: Vec<u64>,
    },
    /// Outcome of a dial started by the sender incarnation `epoch`.
    DialDone {
        epoch: u64,
        ok: bool,
    },
    LinkDown,
    ReceiverCrash,
    SenderCrash,
}

struct Scheduled {
    at: Duration,
    /// Tie-breaker so equal times pop in scheduling order (determinism).
    id: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, we want the earliest event.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.id).cmp(&(self.at, self.id))
    }
}

/// What a run exercised; summed over seeds and checked so the simulation
/// cannot silently degrade into a happy-path test.
#[derive(Debug, Default)]
struct Stats {
    flaps: u64,
    rx_crashes: u64,
    restore_revealed: u64,
    tx_crashes: u64,
    dial_failures: u64,
    retransmissions: u64,
    duplicates: u64,
    held_behind_gap: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.flaps += o.flaps;
        self.rx_crashes += o.rx_crashes;
        self.restore_revealed += o.restore_revealed;
        self.tx_crashes += o.tx_crashes;
        self.dial_failures += o.dial_failures;
        self.retransmissions += o.retransmissions;
        self.duplicates += o.duplicates;
        self.held_behind_gap += o.held_behind_gap;
    }
}

struct Sim {
    seed: u64,
    stats: Stats,
    /// Per seq: has the sender transmitted it before (to count retransmissions).
    transmitted: Vec<bool>,
    rng: StdRng,
    base: Instant,
    /// Virtual time since `base`.
    t: Duration,
    queue: BinaryHeap<Scheduled>,
    next_id: u64,

    // Per-seed link and chaos parameters.
    n: u64,
    drop_p: f64,
    dup_p: f64,
    dial_ok_p: f64,
    mid_store_crash_p: f64,
    flap_mean_ms: u64,
    rx_crash_mean_ms: u64,
    tx_crash_mean_ms: u64,

    /// Id of the live connection; frames tagged with any other id are lost.
    link: Option<u64>,
    next_conn: u64,

    // Sender: state machine plus durable store.
    config: OutboxConfig,
    outbox: Outbox,
    /// Bumped on every sender crash so dial outcomes of a dead process are ignored.
    sender_epoch: u64,
    /// Messages persisted so far are `1..=created`.
    created: u64,
    /// Durable "delivered" flags, index = seq.
    delivered: Vec<bool>,

    // Receiver: state machine plus durable store.
    inbox: Inbox,
    rx_stored: BTreeSet<u64>,
    rx_shown_upto: u64,
    /// Everything ever displayed, in display order (persisted with shown_upto).
    visible: Vec<u64>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(20..=100u64);
        let window = if rng.random_bool(0.5) {
            rng.random_range(1..=16)
        } else {
            256
        };
        let config = OutboxConfig {
            window,
            ..OutboxConfig::default()
        };
        Self {
            seed,
            stats: Stats::default(),
            transmitted: vec![false; n as usize + 1],
            n,
            drop_p: rng.random_range(0.0..0.3),
            dup_p: rng.random_range(0.0..0.2),
            dial_ok_p: rng.random_range(0.3..0.95),
            mid_store_crash_p: rng.random_range(0.0..0.03),
            flap_mean_ms: rng.random_range(1_000..20_000),
            rx_crash_mean_ms: rng.random_range(5_000..60_000),
            tx_crash_mean_ms: rng.random_range(5_000..60_000),
            rng,
            base: Instant::now(),
            t: Duration::ZERO,
            queue: BinaryHeap::new(),
            next_id: 0,
            link: None,
            next_conn: 0,
            outbox: Outbox::new(config.clone()),
            config,
            sender_epoch: 0,
            created: 0,
            delivered: vec![false; n as usize + 1],
            inbox: Inbox::new(),
            rx_stored: BTreeSet::new(),
            rx_shown_upto: 0,
            visible: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + self.t
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.next_id += 1;
        self.queue.push(Scheduled {
            at: self.t + after,
            id: self.next_id,
            ev,
        });
    }

    /// Schedules the next chaos event of a kind, roughly `mean_ms` apart.
    fn schedule_chaos(&mut self, mean_ms: u64, ev: Ev) {
        let after = Duration::from_millis(self.rng.random_range(0..=2 * mean_ms));
        if self.t + after < CHAOS_END {
            self.schedule(after, ev);
        }
    }

    /// Puts a frame on the link: maybe dropped, maybe duplicated, each copy
    /// independently delayed 1..=200 ms (which reorders).
    fn transmit(&mut self, make: impl Fn() -> Ev) {
        if self.rng.random_bool(self.drop_p) {
            return;
        }
        let copies = if self.rng.random_bool(self.dup_p) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = Duration::from_millis(self.rng.random_range(1..=200));
            self.schedule(delay, make());
        }
    }

    fn link_down(&mut self) {
        if self.link.take().is_some() {
            self.stats.flaps += 1;
            let now = self.now();
            self.outbox.disconnected(now);
        }
    }

    fn show(&mut self, seq: u64) {
        let seed = self.seed;
        assert_eq!(
            seq,
            self.visible.len() as u64 + 1,
            "seed {seed}: shown out of order"
        );
        assert!(
            self.rx_stored.contains(&seq),
            "seed {seed}: shown {seq} before it was stored"
        );
        self.visible.push(seq);
    }

    fn receiver_crash(&mut self) {
        self.stats.rx_crashes += 1;
        let restored_from = self.rx_shown_upto;
        self.inbox = Inbox::restore(
            restored_from,
            self.rx_stored.range(restored_from + 1..).copied(),
        );
        // Restore may reveal stored seqs that were contiguous when we crashed.
        for seq in restored_from + 1..=self.inbox.shown_upto() {
            self.stats.restore_revealed += 1;
            self.show(seq);
        }
        self.rx_shown_upto = self.inbox.shown_upto();
        self.link_down();
    }

    fn sender_crash(&mut self) {
        self.sender_epoch += 1;
        self.stats.tx_crashes += 1;
        // The process is gone: its connection with it. The new Outbox starts
        // disconnected, so there is nobody to notify.
        self.link = None;
        self.outbox = Outbox::new(self.config.clone());
        let now = self.now();
        let mut undelivered: Vec<u64> = (1..=self.created)
            .filter(|&s| !self.delivered[s as usize])
            .collect();
        undelivered.shuffle(&mut self.rng);
        for seq in undelivered {
            self.outbox.enqueue(seq, now);
        }
    }

    fn on_frame(&mut self, conn: u64, seq: u64) {
        let seed = self.seed;
        if self.link != Some(conn) {
            return; // sent on a connection that no longer exists
        }
        match self.inbox.offer(seq) {
            Offer::New => {
                self.rx_stored.insert(seq);
                if self.rng.random_bool(self.mid_store_crash_p) {
                    // Crash after the body is durable but before the inbox and
                    // shown_upto learned about it, and before any ack.
                    self.receiver_crash();
                    return;
                }
                let shown = self.inbox.stored(seq);
                if shown.is_empty() {
                    self.stats.held_behind_gap += 1;
                }
                for seq in shown {
                    self.show(seq);
                }
                self.rx_shown_upto = self.inbox.shown_upto();
                self.send_ack(conn, seq);
            }
            Offer::Duplicate => {
                self.stats.duplicates += 1;
                assert!(
                    self.rx_stored.contains(&seq),
                    "seed {seed}: Duplicate for unstored {seq}"
                );
                self.send_ack(conn, seq);
            }
            other => panic!("seed {seed}: unexpected {other:?} for seq {seq}"),
        }
        assert!(
            self.inbox.held() <= MAX_AHEAD as usize,
            "seed {seed}: held unbounded"
        );
    }

    fn send_ack(&mut self, conn: u64, seq: u64) {
        let mut seqs = vec![seq];
        // Garbage from the peer must be ignored.
        if self.rng.random_bool(0.05) {
            let bogus = if self.rng.random_bool(0.5) {
                0
            } else {
                self.n + self.rng.random_range(1..1000)
            };
            seqs.push(bogus);
        }
        self.transmit(|| Ev::Ack {
            conn,
            seqs: seqs.clone(),
        });
    }

    fn on_ack(&mut self, conn: u64, seqs: &[u64]) {
        let seed = self.seed;
        if self.link != Some(conn) {
            return;
        }
        let now = self.now();
        for seq in self.outbox.receipt(seqs, now) {
            assert!(
                (1..=self.created).contains(&seq),
                "seed {seed}: delivered unknown {seq}"
            );
            assert!(
                !self.delivered[seq as usize],
                "seed {seed}: {seq} delivered twice"
            );
            assert!(
                self.rx_stored.contains(&seq),
                "seed {seed}: {seq} acked but not stored"
            );
            self.delivered[seq as usize] = true;
        }
    }

    /// The sender's driver loop body: timers, dialing, transmitting.
    fn drive_sender(&mut self) {
        let seed = self.seed;
        let now = self.now();
        self.outbox.handle_timeout(now);
        if self.outbox.poll_dial(now) {
            assert!(self.link.is_none(), "seed {seed}: dial while connected");
            let ok = self.rng.random_bool(self.dial_ok_p);
            let delay = Duration::from_millis(self.rng.random_range(5..=300));
            self.schedule(
                delay,
                Ev::DialDone {
                    epoch: self.sender_epoch,
                    ok,
                },
            );
        }
        while let Some(seq) = self.outbox.poll_transmit(now) {
            assert!(
                (1..=self.created).contains(&seq),
                "seed {seed}: transmit unknown {seq}"
            );
            assert!(
                !self.delivered[seq as usize],
                "seed {seed}: transmit delivered {seq}"
            );
            if std::mem::replace(&mut self.transmitted[seq as usize], true) {
                self.stats.retransmissions += 1;
            }
            let Some(conn) = self.link else {
                panic!("seed {seed}: transmit {seq} while disconnected");
            };
            self.transmit(|| Ev::Frame { conn, seq });
        }
        assert!(
            self.outbox.in_flight() <= self.config.window,
            "seed {seed}: window exceeded"
        );
        if let Some(at) = self.outbox.poll_timeout() {
            assert!(
                at > now,
                "seed {seed}: timer {at:?} not in the future of {now:?}"
            );
        }
    }

    fn done(&self) -> bool {
        self.created == self.n && self.outbox.is_idle()
    }

    fn run(mut self) -> Stats {
        let seed = self.seed;
        // Messages appear at random times; a short spread means bursts that
        // fill the window and reorder heavily, a long one means trickles.
        let spread_ms = if self.rng.random_bool(0.3) {
            100
        } else {
            30_000
        };
        let mut times: Vec<u64> = (0..self.n)
            .map(|_| self.rng.random_range(0..spread_ms))
            .collect();
        times.sort_unstable();
        for (i, ms) in times.into_iter().enumerate() {
            self.schedule(Duration::from_millis(ms), Ev::Enqueue(i as u64 + 1));
        }
        self.schedule_chaos(self.flap_mean_ms, Ev::LinkDown);
        self.schedule_chaos(self.rx_crash_mean_ms, Ev::ReceiverCrash);
        self.schedule_chaos(self.tx_crash_mean_ms, Ev::SenderCrash);

        let mut steps = 0u64;
        while !self.done() {
            steps += 1;
            assert!(
                steps <= MAX_STEPS,
                "seed {seed}: no termination after {steps} steps"
            );
            assert!(
                self.t <= MAX_TIME,
                "seed {seed}: no termination by {:?}",
                self.t
            );

            let timer = self.outbox.poll_timeout().map(|at| at - self.base);
            let next_ev = self.queue.peek().map(|s| s.at);
            match (timer, next_ev) {
                (None, None) => panic!(
                    "seed {seed}: stalled at {:?} with {} pending, {}/{} created",
                    self.t,
                    self.outbox.pending(),
                    self.created,
                    self.n
                ),
                (Some(timer), next) if next.is_none_or(|ev| timer <= ev) => {
                    self.t = self.t.max(timer);
                    self.drive_sender();
                    continue;
                }
                _ => {}
            }
            let Some(Scheduled { at, ev, .. }) = self.queue.pop() else {
                unreachable!()
            };
            self.t = at;
            let now = self.now();
            match ev {
                Ev::Enqueue(seq) => {
                    assert_eq!(seq, self.created + 1, "seed {seed}: enqueue order");
                    self.created = seq;
                    self.outbox.enqueue(seq, now);
                }
                Ev::Frame { conn, seq } => self.on_frame(conn, seq),
                Ev::Ack { conn, seqs } => self.on_ack(conn, &seqs),
                Ev::DialDone { epoch, ok } => {
                    if epoch == self.sender_epoch {
                        if ok {
                            assert!(self.link.is_none(), "seed {seed}: two connections");
                            self.next_conn += 1;
                            self.link = Some(self.next_conn);
                            self.outbox.connected(now);
                        } else {
                            self.stats.dial_failures += 1;
                            self.outbox.dial_failed(now);
                        }
                    }
                }
                Ev::LinkDown => {
                    self.link_down();
                    self.schedule_chaos(self.flap_mean_ms, Ev::LinkDown);
                }
                Ev::ReceiverCrash => {
                    self.receiver_crash();
                    self.schedule_chaos(self.rx_crash_mean_ms, Ev::ReceiverCrash);
                }
                Ev::SenderCrash => {
                    self.sender_crash();
                    self.schedule_chaos(self.tx_crash_mean_ms, Ev::SenderCrash);
                }
            }
            self.drive_sender();
        }

        let expected: Vec<u64> = (1..=self.n).collect();
        assert_eq!(
            self.visible, expected,
            "seed {seed}: receiver must show 1..=N exactly once, in order"
        );
        assert_eq!(self.inbox.shown_upto(), self.n, "seed {seed}: shown_upto");
        assert_eq!(self.inbox.held(), 0, "seed {seed}: nothing held at the end");
        assert!(
            self.delivered[1..].iter().all(|&d| d),
            "seed {seed}: every message must be marked delivered at the sender"
        );
        self.stats
    }
}

fn run_seeds(seeds: std::ops::Range<u64>) {
    let range = seeds.clone();
    let mut total = Stats::default();
    for seed in seeds {
        total.add(&Sim::new(seed).run());
    }
    // Every fault the simulation claims to inject must actually have happened.
    let Stats {
        flaps,
        rx_crashes,
        restore_revealed,
        tx_crashes,
        dial_failures,
        retransmissions,
        duplicates,
        held_behind_gap,
    } = total;
    for (what, count) in [
        ("link flaps", flaps),
        ("receiver crashes", rx_crashes),
        ("restores revealing stored seqs", restore_revealed),
        ("sender crashes", tx_crashes),
        ("dial failures", dial_failures),
        ("retransmissions", retransmissions),
        ("duplicate offers", duplicates),
        ("messages held behind a gap", held_behind_gap),
    ] {
        assert!(count > 0, "seeds {range:?}: no {what} were exercised");
    }
    eprintln!("seeds {range:?}: {total:?}");
}

// Split so the test runner can use several cores; together: seeds 0..1000.
#[test]
fn sim_seeds_0000_0249() {
    run_seeds(0..250);
}
#[test]
fn sim_seeds_0250_0499() {
    run_seeds(250..500);
}
#[test]
fn sim_seeds_0500_0749() {
    run_seeds(500..750);
}
#[test]
fn sim_seeds_0750_0999() {
    run_seeds(750..1000);
}

/// One step of the Inbox proptest: what the (possibly misbehaving) driver does.
#[derive(Debug, Clone)]
enum Op {
    /// Well-behaved: offer, and on `New` store and call `stored`.
    Deliver(u64),
    /// Misbehaving: `stored` without a preceding `offer`.
    RawStored(u64),
    /// Crash and `restore` from the durable state.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    // Small seqs so collisions, gaps and fills are common; some huge ones too.
    let seq = prop_oneof![8 => 0u64..48, 1 => any::<u64>()];
    prop_oneof![
        6 => seq.clone().prop_map(Op::Deliver),
        2 => seq.prop_map(Op::RawStored),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    // Integration tests have no lib.rs for proptest to persist failures next
    // to; a failing case is printed (and shrunk) instead.
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn inbox_never_shows_twice_or_out_of_order(ops in prop::collection::vec(op(), 0..200)) {
        let mut inbox = Inbox::new();
        let mut stored = BTreeSet::new();
        let mut shown: Vec<u64> = Vec::new();
        let mut shown_upto = 0u64;
        for op in ops {
            let newly = match op {
                Op::Deliver(seq) => match inbox.offer(seq) {
                    Offer::New => {
                        stored.insert(seq);
                        inbox.stored(seq)
                    }
                    Offer::Duplicate => {
                        prop_assert!(seq != 0 && (seq <= shown_upto || stored.contains(&seq)));
                        Vec::new()
                    }
                    Offer::TooFarAhead => {
                        prop_assert!(seq > shown_upto + MAX_AHEAD);
                        Vec::new()
                    }
                    Offer::Invalid => {
                        prop_assert_eq!(seq, 0);
                        Vec::new()
                    }
                },
                Op::RawStored(seq) => {
                    let accepted = inbox.offer(seq) == Offer::New;
                    if accepted {
                        stored.insert(seq);
                    }
                    inbox.stored(seq)
                }
                Op::Restart => {
                    inbox = Inbox::restore(shown_upto, stored.iter().copied());
                    (shown_upto + 1..=inbox.shown_upto()).collect()
                }
            };
            for seq in newly {
                prop_assert_eq!(seq, shown.len() as u64 + 1, "shown twice or out of order");
                prop_assert!(stored.contains(&seq), "shown before stored");
                shown.push(seq);
            }
            shown_upto = inbox.shown_upto();
            prop_assert_eq!(shown_upto, shown.len() as u64);
            prop_assert!(inbox.held() as u64 <= MAX_AHEAD);
            prop_assert_eq!(
                inbox.held(),
                stored.iter().filter(|&&s| s > shown_upto).count(),
                "held must match stored-but-not-shown"
            );
        }
    }
}
