//! Every transition of the call machine in simulated time, over a link that can lose, duplicate, delay and
//! reorder signalling messages.

use super::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const MS: Duration = Duration::from_millis(1);

type MsgFilter = Box<dyn Fn(&CallMsg) -> bool>;

/// Nodes 0..n, each a `Calls<u8>` whose peers are the other indices.
struct Sim {
    nodes: Vec<Calls<u8>>,
    /// contacts[a][b]: a has b as a contact.
    contacts: Vec<Vec<bool>>,
    now: Instant,
    queue: Vec<(Instant, u64, u8, u8, CallMsg)>,
    seq: u64,
    events: Vec<Vec<CallEvent<u8>>>,
    rng: StdRng,
    loss: f64,
    dup: f64,
    /// Extra random delay per message (reorders).
    jitter_ms: u64,
    /// Links that drop everything (partition), as (from, to).
    cut: Vec<(u8, u8)>,
    /// Drop the next message matching this predicate, once.
    drop_once: Option<MsgFilter>,
    /// Active calls exchange media every 100 ms while their link is up.
    media: bool,
    next_media: Instant,
}

impl Sim {
    fn new(n: usize, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            nodes: (0..n).map(|_| Calls::new(CallConfig::default())).collect(),
            contacts: vec![vec![true; n]; n],
            now,
            queue: vec![],
            seq: 0,
            events: vec![vec![]; n],
            rng: StdRng::seed_from_u64(seed),
            loss: 0.0,
            dup: 0.0,
            jitter_ms: 0,
            cut: vec![],
            drop_once: None,
            media: true,
            next_media: now,
        }
    }

    fn id(&mut self) -> CallId {
        let mut id = [0u8; 16];
        self.rng.fill(&mut id[..]);
        id
    }

    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(o) = self.nodes[i].poll_output() {
                match o {
                    CallOutput::Send { peer, msg } => {
                        if self.cut.contains(&(i as u8, peer)) {
                            continue;
                        }
                        if let Some(f) = &self.drop_once
                            && f(&msg)
                        {
                            self.drop_once = None;
                            continue;
                        }
                        if self.rng.random_bool(self.loss) {
                            continue;
                        }
                        let copies = if self.rng.random_bool(self.dup) { 2 } else { 1 };
                        for _ in 0..copies {
                            let delay = 20 + self.rng.random_range(0..=self.jitter_ms);
                            self.seq += 1;
                            self.queue.push((
                                self.now + MS * delay as u32,
                                self.seq,
                                i as u8,
                                peer,
                                msg.clone(),
                            ));
                        }
                    }
                    CallOutput::Event(e) => self.events[i].push(e),
                }
            }
        }
    }

    /// Runs the world for `d` of simulated time.
    fn run(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            self.drain();
            let next_msg = self.queue.iter().map(|q| (q.0, q.1)).min();
            let next_timer = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
            let any_active = self
                .nodes
                .iter()
                .any(|n| n.live().iter().any(|c| c.state == CallState::Active));
            let next_media = (self.media && any_active).then_some(self.next_media);
            let next = [next_msg.map(|m| m.0), next_timer, next_media]
                .into_iter()
                .flatten()
                .min();
            let Some(t) = next.filter(|t| *t <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(t);
            if let Some((at, s)) = next_msg
                && at <= self.now
            {
                let pos = self
                    .queue
                    .iter()
                    .position(|q| q.0 == at && q.1 == s)
                    .unwrap();
                let (_, _, from, to, msg) = self.queue.remove(pos);
                let contact = self.contacts[to as usize][from as usize];
                let now = self.now;
                self.nodes[to as usize].handle(from, msg, contact, now);
                continue;
            }
            if next_media == Some(t) && t <= self.now {
                self.next_media = self.now + MS * 100;
                for i in 0..self.nodes.len() {
                    for c in self.nodes[i].live() {
                        if c.state == CallState::Active
                            && !self.cut.contains(&(c.peer, i as u8))
                            && self.nodes[c.peer as usize].state(&c.call) == Some(CallState::Active)
                        {
                            let now = self.now;
                            self.nodes[i].media_received(c.call, now);
                        }
                    }
                }
            }
            let now = self.now;
            for n in &mut self.nodes {
                if n.poll_timeout().is_some_and(|x| x <= now) {
                    n.handle_timeout(now);
                }
            }
        }
    }

    fn ended(&self, node: usize) -> Vec<EndReason> {
        self.events[node]
            .iter()
            .filter_map(|e| match e {
                CallEvent::Ended { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    fn count(&self, node: usize, f: impl Fn(&CallEvent<u8>) -> bool) -> usize {
        self.events[node].iter().filter(|e| f(e)).count()
    }

    fn incoming(&self, node: usize) -> Option<CallId> {
        self.events[node].iter().find_map(|e| match e {
            CallEvent::Incoming { call, .. } => Some(*call),
            _ => None,
        })
    }

    fn idle(&self) -> bool {
        self.nodes.iter().all(|n| n.live().is_empty())
    }
}

fn answered(e: &CallEvent<u8>) -> bool {
    matches!(e, CallEvent::Answered { .. })
}

/// Dials 0 -> 1, lets it ring, answers; returns the call id.
fn connected(s: &mut Sim) -> CallId {
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(1));
    assert_eq!(s.incoming(1), Some(id));
    let now = s.now;
    s.nodes[1].answer(id, now).unwrap();
    s.run(Duration::from_secs(1));
    assert_eq!(s.nodes[0].state(&id), Some(CallState::Active));
    assert_eq!(s.nodes[1].state(&id), Some(CallState::Active));
    id
}

#[test]
fn call_rings_is_answered_and_the_caller_hangs_up() {
    let mut s = Sim::new(2, 1);
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    assert_eq!(s.nodes[0].state(&id), Some(CallState::Dialing));
    s.run(Duration::from_millis(100));
    assert_eq!(s.nodes[0].state(&id), Some(CallState::RingingOut));
    assert_eq!(s.nodes[1].state(&id), Some(CallState::RingingIn));
    assert_eq!(s.count(0, |e| matches!(e, CallEvent::Ringing { .. })), 1);
    assert_eq!(s.count(1, |e| matches!(e, CallEvent::Incoming { .. })), 1);
    s.run(Duration::from_secs(5));
    let now = s.now;
    s.nodes[1].answer(id, now).unwrap();
    s.run(Duration::from_secs(30));
    assert_eq!(s.count(0, answered), 1);
    assert_eq!(s.count(1, answered), 1);
    let now = s.now;
    s.nodes[0].hangup(id, now).unwrap();
    s.run(Duration::from_secs(5));
    assert_eq!(s.ended(0), vec![EndReason::Completed { by_us: true }]);
    assert_eq!(s.ended(1), vec![EndReason::Completed { by_us: false }]);
    assert!(s.idle());
    // Talk time: from the answer to the hangup, ~30 s on both sides.
    for n in 0..2 {
        let talked = s.events[n]
            .iter()
            .find_map(|e| match e {
                CallEvent::Ended { talked, .. } => *talked,
                _ => None,
            })
            .unwrap();
        assert!(
            talked >= Duration::from_millis(29_900) && talked < Duration::from_secs(31),
            "{talked:?}"
        );
    }
}

#[test]
fn both_sides_use_the_callers_frame_length() {
    let mut s = Sim::new(2, 13);
    // The callee's own preference is 20 ms with a lower bitrate cap; the caller proposes 10 ms.
    s.nodes[1] = Calls::new(CallConfig {
        media: MediaParams {
            frame_ms: 20,
            max_bitrate: 24_000,
        },
        ..CallConfig::default()
    });
    s.drop_once = Some(Box::new(|m| matches!(m, CallMsg::Invite { .. })));
    let id = s.id();
    let now = s.now;
    let ten = MediaParams {
        frame_ms: 10,
        max_bitrate: 32_000,
    };
    s.nodes[0].dial_with(1, id, ten, None, now).unwrap();
    s.run(Duration::from_secs(3));
    let now = s.now;
    s.nodes[1].answer(id, now).unwrap();
    s.run(Duration::from_secs(1));
    for n in 0..2 {
        let media = s.events[n]
            .iter()
            .find_map(|e| match e {
                CallEvent::Answered { media, .. } => Some(*media),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            media,
            MediaParams {
                frame_ms: 10,
                max_bitrate: 24_000
            },
            "node {n} (the repeated invite kept the proposal)"
        );
    }
}

#[test]
fn the_callee_hangs_up() {
    let mut s = Sim::new(2, 2);
    let id = connected(&mut s);
    let now = s.now;
    s.nodes[1].hangup(id, now).unwrap();
    s.run(Duration::from_secs(5));
    assert_eq!(s.ended(0), vec![EndReason::Completed { by_us: false }]);
    assert_eq!(s.ended(1), vec![EndReason::Completed { by_us: true }]);
}

#[test]
fn the_callee_declines() {
    let mut s = Sim::new(2, 3);
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(1));
    let now = s.now;
    s.nodes[1].reject(id, now).unwrap();
    s.run(Duration::from_secs(5));
    assert_eq!(s.ended(0), vec![EndReason::Declined { by_us: false }]);
    assert_eq!(s.ended(1), vec![EndReason::Declined { by_us: true }]);
    assert_eq!(s.count(0, answered) + s.count(1, answered), 0);
    // Answering after the fact is an error, not a call.
    let now = s.now;
    assert_eq!(s.nodes[1].answer(id, now), Err(CallError::NoSuchCall));
}

#[test]
fn the_caller_cancels_before_an_answer() {
    let mut s = Sim::new(2, 4);
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(3));
    let now = s.now;
    s.nodes[0].hangup(id, now).unwrap();
    s.run(Duration::from_secs(5));
    assert_eq!(s.ended(0), vec![EndReason::Cancelled { by_us: true }]);
    assert_eq!(
        s.ended(1),
        vec![EndReason::Cancelled { by_us: false }],
        "a missed call"
    );
    assert!(s.idle());
}

#[test]
fn nobody_answers() {
    let mut s = Sim::new(2, 5);
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(59));
    assert_eq!(s.nodes[1].state(&id), Some(CallState::RingingIn));
    s.run(Duration::from_secs(10));
    assert_eq!(s.ended(0), vec![EndReason::NoAnswer]);
    assert_eq!(s.ended(1), vec![EndReason::NoAnswer]);
}

#[test]
fn an_offline_peer_is_unreachable() {
    let mut s = Sim::new(2, 6);
    s.cut = vec![(0, 1), (1, 0)];
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(14));
    assert!(s.ended(0).is_empty());
    s.run(Duration::from_secs(2));
    assert_eq!(s.ended(0), vec![EndReason::Unreachable]);
    // The invite was repeated with backoff meanwhile (1, 2, 4, 4, ... s).
    s.run(Duration::from_secs(200));
    assert!(s.idle());
}

#[test]
fn a_stranger_is_refused_without_ringing() {
    let mut s = Sim::new(2, 7);
    s.contacts[1][0] = false;
    let id = s.id();
    let now = s.now;
    s.nodes[0].dial(1, id, now).unwrap();
    s.run(Duration::from_secs(5));
    assert_eq!(s.ended(0), vec![EndReason::Refused]);
    assert_eq!(s.ended(1), vec![EndReason::Refused]);
    assert_eq!(s.count(1, |e| matches!(e, CallEvent::Incoming { .. })), 0);
}

#[test]
fn a_lost_connection_ends_the_call_on_both_sides() {
    let mut s = Sim::new(2, 8);
    connected(&mut s);
    let now = s.now;
    s.nodes[0].peer_lost(1, now);
    s.nodes[1].peer_lost(0, now);
    s.run(Duration::from_secs(1));
    assert_eq!(s.ended(0), vec![EndReason::ConnectionLost]);
    assert_eq!(s.ended(1), vec![EndReason::ConnectionLost]);
}

#[test]
fn a_silent_peer_ends_the_call_after_the_media_timeout() {
    let mut s = Sim::new(2, 9);
    connected(&mut s);
    // The network between them fails: no media, no signalling, no "connection lost" either.
    s.cut = vec![(0, 1), (1, 0)];
    s.run(Duration::from_secs(9));
    assert!(s.ended(0).is_empty());
    s.run(Duration::from_secs(2));
    assert_eq!(s.ended(0), vec![EndReason::ConnectionLost]);
    assert_eq!(s.ended(1), vec![EndReason::ConnectionLost]);
}

#[test]
fn glare_yields_one_call() {
    for seed in 0..50 {
        let mut s = Sim::new(2, 100 + seed);
        s.jitter_ms = 30;
        let (a, b) = (s.id(), s.id());
        let now = s.now;
        s.nodes[0].dial(1, a, now).unwrap();
        s.nodes[1].dial(0, b, now).unwrap();
        s.run(Duration::from_secs(3));
        let winner = a.min(b);
        for n in 0..2 {
            let live = s.nodes[n].live();
            assert_eq!(live.len(), 1, "seed {seed}: {live:?}");
            assert_eq!(live[0].call, winner);
            assert_eq!(live[0].state, CallState::Active);
            assert_eq!(s.count(n, answered), 1);
            assert!(
                s.ended(n).is_empty(),
                "the dropped call is not a separate end"
            );
        }
    }
}

#[test]
fn a_second_call_during_a_call_gets_busy() {
    let mut s = Sim::new(3, 10);
    let id = connected(&mut s);
    let other = s.id();
    let now = s.now;
    s.nodes[2].dial(1, other, now).unwrap();
    s.run(Duration::from_secs(2));
    assert_eq!(s.ended(2), vec![EndReason::Busy]);
    assert_eq!(
        s.ended(1),
        vec![EndReason::Busy],
        "logged as missed while busy"
    );
    assert_eq!(
        s.nodes[1].state(&id),
        Some(CallState::Active),
        "the first call goes on"
    );
    // And one cannot dial out while in a call.
    let now = s.now;
    let x = s.id();
    assert_eq!(s.nodes[1].dial(2, x, now), Err(CallError::InCall));
}

#[test]
fn lost_signalling_is_repeated() {
    for lost in ["invite", "ringing", "accept", "connected", "hangup", "ack"] {
        let mut s = Sim::new(2, 11);
        let pred: MsgFilter = match lost {
            "invite" => Box::new(|m| matches!(m, CallMsg::Invite { .. })),
            "ringing" => Box::new(|m| matches!(m, CallMsg::Ringing { .. })),
            "accept" => Box::new(|m| matches!(m, CallMsg::Accept { .. })),
            "connected" => Box::new(|m| matches!(m, CallMsg::Connected { .. })),
            "hangup" => Box::new(|m| matches!(m, CallMsg::Hangup { .. })),
            _ => Box::new(|m| matches!(m, CallMsg::HangupAck { .. })),
        };
        s.drop_once = Some(pred);
        let id = s.id();
        let now = s.now;
        s.nodes[0].dial(1, id, now).unwrap();
        s.run(Duration::from_secs(5));
        assert_eq!(s.nodes[1].state(&id), Some(CallState::RingingIn), "{lost}");
        let now = s.now;
        s.nodes[1].answer(id, now).unwrap();
        s.run(Duration::from_secs(5));
        assert_eq!(s.nodes[0].state(&id), Some(CallState::Active), "{lost}");
        let now = s.now;
        s.nodes[0].hangup(id, now).unwrap();
        s.run(Duration::from_secs(10));
        assert_eq!(
            s.ended(0),
            vec![EndReason::Completed { by_us: true }],
            "{lost}"
        );
        assert_eq!(
            s.ended(1),
            vec![EndReason::Completed { by_us: false }],
            "{lost}"
        );
        assert_eq!(
            s.count(1, |e| matches!(e, CallEvent::Incoming { .. })),
            1,
            "{lost}"
        );
    }
}

#[test]
fn duplicated_signalling_changes_nothing() {
    let mut s = Sim::new(2, 12);
    s.dup = 1.0;
    s.jitter_ms = 50;
    let id = connected(&mut s);
    let now = s.now;
    s.nodes[1].hangup(id, now).unwrap();
    s.run(Duration::from_secs(200));
    for n in 0..2 {
        assert_eq!(s.count(n, answered), 1);
        assert_eq!(s.ended(n).len(), 1);
    }
    assert_eq!(
        s.count(1, |e| matches!(e, CallEvent::Incoming { .. })),
        1,
        "rang once"
    );
    assert!(s.idle());
}

/// Random user behaviour over a lossy, duplicating, reordering link: both sides always end up agreeing.
#[test]
fn random_calls_over_a_bad_link_end_consistently() {
    for seed in 0..300u64 {
        let mut s = Sim::new(2, 1000 + seed);
        s.loss = 0.3;
        s.dup = 0.2;
        s.jitter_ms = 80;
        let mut r = StdRng::seed_from_u64(seed);
        let id = s.id();
        let now = s.now;
        s.nodes[0].dial(1, id, now).unwrap();
        s.run(Duration::from_millis(r.random_range(0..20_000)));
        // The callee answers, declines or lets it ring; the caller may give up.
        let now = s.now;
        match r.random_range(0..4) {
            0 => drop(s.nodes[1].answer(id, now)),
            1 => drop(s.nodes[1].reject(id, now)),
            2 => drop(s.nodes[0].hangup(id, now)),
            _ => {}
        }
        s.run(Duration::from_millis(r.random_range(0..20_000)));
        let now = s.now;
        let who = r.random_range(0..2);
        drop(s.nodes[who].hangup(id, now));
        s.run(Duration::from_secs(300));
        assert!(s.idle(), "seed {seed}: calls still live");
        let a_answered = s.count(0, answered);
        let b_answered = s.count(1, answered);
        assert!(a_answered <= 1 && b_answered <= 1, "seed {seed}");
        assert_eq!(
            a_answered, b_answered,
            "seed {seed}: both sides agree the call was answered"
        );
        assert_eq!(s.ended(0).len(), 1, "seed {seed}: {:?}", s.events[0]);
        assert!(s.ended(1).len() <= 1, "seed {seed}: {:?}", s.events[1]);
        assert!(
            s.count(1, |e| matches!(e, CallEvent::Incoming { .. })) <= 1,
            "seed {seed}"
        );
    }
}

#[test]
fn a_new_connection_sends_what_waits_at_once() {
    // Dialling while not connected: the first invite goes nowhere. When the connection comes up 100 ms
    // later, the invite is repeated at once, not at the next repeat (1 s).
    let mut c: Calls<u8> = Calls::new(CallConfig::default());
    let t0 = Instant::now();
    c.dial(1, [7; 16], t0).unwrap();
    let sent = |c: &mut Calls<u8>| {
        let mut n = 0;
        while let Some(o) = c.poll_output() {
            if let CallOutput::Send {
                peer: 1,
                msg: CallMsg::Invite { .. },
            } = o
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(sent(&mut c), 1);
    c.peer_connected(2, t0 + 100 * MS);
    assert_eq!(sent(&mut c), 0, "another peer's connection changes nothing");
    c.peer_connected(1, t0 + 100 * MS);
    assert_eq!(sent(&mut c), 1);
    // The repeat schedule goes on from there.
    c.handle_timeout(t0 + 500 * MS);
    assert_eq!(sent(&mut c), 0);
    assert!(c.poll_timeout().unwrap() > t0 + 500 * MS);
}

/// A gateway (max_calls 3) takes calls from three callers at once, each with the service it asked for; a
/// fourth caller, and a second call from a caller already in one, are refused as busy. Key presses reach
/// the other side once the call is answered, and not before.
#[test]
fn a_gateway_takes_several_callers_each_once_and_their_keys() {
    let mut s = Sim::new(5, 7);
    s.nodes[0] = Calls::new(CallConfig {
        max_calls: 3,
        ..CallConfig::default()
    });
    let ids: Vec<CallId> = (0..4).map(|_| s.id()).collect();
    for (caller, id) in (1..=4u8).zip(&ids) {
        let now = s.now;
        s.nodes[caller as usize]
            .dial_with(0, *id, MediaParams::default(), Some("support".into()), now)
            .unwrap();
        s.run(Duration::from_millis(200));
    }
    let services: Vec<Option<String>> = s.events[0]
        .iter()
        .filter_map(|e| match e {
            CallEvent::Incoming { service, .. } => Some(service.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(services, vec![Some("support".to_string()); 3]);
    assert_eq!(s.ended(4), vec![EndReason::Busy]);
    // Caller 1 dials again while its first call rings: refused by its own machine (one call per peer
    // there too), and a forged second invite from it is refused as busy by the gateway.
    let again = s.id();
    let now = s.now;
    assert_eq!(
        s.nodes[1].dial_with(0, again, MediaParams::default(), None, now),
        Err(CallError::InCall)
    );
    s.nodes[0].handle(
        1,
        CallMsg::Invite {
            call: again,
            media: MediaParams::default(),
            service: None,
        },
        true,
        now,
    );
    s.drain();
    assert!(s.nodes[0].state(&again).is_none());
    assert_eq!(s.nodes[0].live().len(), 3);
    // Keys: refused before the answer, delivered after it.
    assert_eq!(s.nodes[1].dtmf(ids[0], 11, 100), Err(CallError::NotActive));
    s.nodes[0].answer(ids[0], now).unwrap();
    s.run(Duration::from_millis(500));
    s.nodes[1].dtmf(ids[0], 11, 100).unwrap();
    s.run(Duration::from_millis(500));
    let keys: Vec<(CallId, u8, u16)> = s.events[0]
        .iter()
        .filter_map(|e| match e {
            CallEvent::Dtmf {
                call,
                event,
                duration_ms,
                ..
            } => Some((*call, *event, *duration_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(keys, vec![(ids[0], 11, 100)]);
    // Hold: told to the peer once answered, and taken off again.
    s.nodes[0].hold(ids[0], true).unwrap();
    s.run(Duration::from_millis(500));
    s.nodes[0].hold(ids[0], false).unwrap();
    s.run(Duration::from_millis(500));
    let holds: Vec<(CallId, bool)> = s.events[1]
        .iter()
        .filter_map(|e| match e {
            CallEvent::Held { call, held, .. } => Some((*call, *held)),
            _ => None,
        })
        .collect();
    assert_eq!(holds, vec![(ids[0], true), (ids[0], false)]);
    assert_eq!(s.nodes[0].hold([9; 16], true), Err(CallError::NoSuchCall));
    assert_eq!(dtmf_key(11), Some('#'));
    assert_eq!(
        "0123456789*#ABCD"
            .chars()
            .map(dtmf_event)
            .collect::<Vec<_>>(),
        (0..16).map(Some).collect::<Vec<_>>()
    );
    assert_eq!(dtmf_event('x'), None);
}
