//! Which incoming connections may run their handshake now (sans-IO).
//!
//! Each handshake runs in a task of its own, so a dialer that stops half-way (connects and sends nothing)
//! holds up only itself. What it can still take is a slot: handshakes in flight are capped per source (an
//! IP address, or a relayed endpoint id) and in total. Past a source's cap its newest connection is
//! refused; past the total cap the oldest handshake in flight is dropped to make room, so a crowd of silent
//! connections cannot keep a real peer out: to do that, it would have to open more connections than the
//! cap within the few milliseconds a real handshake takes, again and again.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Handshakes in flight per endpoint, from all sources.
pub const HANDSHAKES_TOTAL: usize = 64;
/// Handshakes in flight per endpoint from one source.
pub const HANDSHAKES_PER_SOURCE: usize = 8;

/// The answer to a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Run its handshake under `ticket`; first drop the handshake of `evict`, if any (the oldest).
    Go { ticket: u64, evict: Option<u64> },
    /// Its source has as many handshakes in flight as it may: refuse it.
    Refuse,
}

#[derive(Debug)]
pub struct Admission<S> {
    total: usize,
    per_source: usize,
    next: u64,
    /// Handshakes in flight, oldest first.
    order: VecDeque<(u64, S)>,
    counts: HashMap<S, usize>,
}

impl<S: Clone + Eq + Hash> Admission<S> {
    pub fn new(total: usize, per_source: usize) -> Self {
        Self {
            total: total.max(1),
            per_source: per_source.max(1),
            next: 0,
            order: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    /// A connection from `source` arrived.
    pub fn admit(&mut self, source: S) -> Admit {
        if self.counts.get(&source).copied().unwrap_or(0) >= self.per_source {
            return Admit::Refuse;
        }
        let evict = if self.order.len() >= self.total {
            self.order.front().map(|(t, _)| *t)
        } else {
            None
        };
        if let Some(t) = evict {
            self.done(t);
        }
        self.next += 1;
        let ticket = self.next;
        self.order.push_back((ticket, source.clone()));
        *self.counts.entry(source).or_default() += 1;
        Admit::Go { ticket, evict }
    }

    /// The handshake of `ticket` ended (or was dropped). Unknown tickets are ignored.
    pub fn done(&mut self, ticket: u64) {
        let Some(i) = self.order.iter().position(|(t, _)| *t == ticket) else {
            return;
        };
        let (_, source) = self.order.remove(i).expect("found above");
        if let Some(n) = self.counts.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&source);
            }
        }
    }

    /// Handshakes in flight.
    pub fn in_flight(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(a: Admit) -> u64 {
        match a {
            Admit::Go { ticket, .. } => ticket,
            Admit::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn one_source_gets_its_cap_and_no_more_until_one_ends() {
        let mut a = Admission::new(64, 3);
        let t: Vec<u64> = (0..3).map(|_| ticket(a.admit("x"))).collect();
        assert_eq!(a.admit("x"), Admit::Refuse);
        // Another source is not held back by the first.
        assert!(matches!(a.admit("y"), Admit::Go { evict: None, .. }));
        a.done(t[1]);
        assert!(matches!(a.admit("x"), Admit::Go { evict: None, .. }));
        assert_eq!(a.admit("x"), Admit::Refuse);
        assert_eq!(a.in_flight(), 4);
    }

    #[test]
    fn past_the_total_the_oldest_handshake_makes_room_for_the_newest() {
        let mut a = Admission::new(4, 4);
        let silent: Vec<u64> = (0..4).map(|i| ticket(a.admit(i))).collect();
        // A real peer arriving while four silent handshakes fill every slot still gets one.
        match a.admit(99) {
            Admit::Go { evict, .. } => assert_eq!(evict, Some(silent[0])),
            Admit::Refuse => panic!("a new source was refused"),
        }
        assert_eq!(a.in_flight(), 4);
        // The evicted one's end (its task dropped) changes nothing more.
        a.done(silent[0]);
        assert_eq!(a.in_flight(), 4);
        // Its source's count went down with the eviction.
        assert!(matches!(a.admit(0), Admit::Go { .. }));
    }

    #[test]
    fn unknown_and_repeated_ends_are_ignored() {
        let mut a = Admission::new(2, 2);
        let t = ticket(a.admit(1));
        a.done(t);
        a.done(t);
        a.done(12345);
        assert_eq!(a.in_flight(), 0);
        assert!(matches!(a.admit(1), Admit::Go { evict: None, .. }));
        assert!(matches!(a.admit(1), Admit::Go { evict: None, .. }));
        assert_eq!(a.admit(1), Admit::Refuse);
    }
}
