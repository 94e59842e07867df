use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct InflightRequest {
    pub to: SocketAddrV4,
    pub sent_at: Instant,
}

impl InflightRequest {
    pub fn does_match(&self, socket: &SocketAddrV4) -> bool {
        if self.to.port() != socket.port() {
            return false;
        }

        if self.to.ip().is_unspecified() {
            return true;
        }

        self.to.ip() == socket.ip()
    }
}

#[derive(Debug)]
pub struct InflightRequests {
    // BTreeMap provides O(log n) lookup, insertion, and deletion keyed by transaction_id.
    requests: BTreeMap<u32, InflightRequest>,
    timeout: Duration,
    // kith: round-trip times of the answers heard (as TCP's SRTT and RTTVAR, RFC 6298), so that a request
    // is given up on after a few round trips of this network instead of the whole `timeout`.
    srtt: Option<Duration>,
    rttvar: Duration,
    // kith: this node's setting; None follows the process-wide switch.
    adaptive: Option<bool>,
}

/// kith: the least time a request is waited for, whatever the round trips heard: answers on a loaded
/// machine or a busy node come late now and then, and a request given up on too early costs a detour.
pub const MIN_GIVE_UP: Duration = Duration::from_millis(100);

/// kith: whether queries give up on slow nodes early and end once the closest answering nodes answered
/// (on by default); off, queries behave as mainline 8.0.1 published (for benchmarks' side-by-side runs).
pub static ADAPTIVE_QUERIES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// kith: turns the adaptive queries on or off for the whole process.
pub fn set_adaptive_queries(on: bool) {
    ADAPTIVE_QUERIES.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// kith: whether the adaptive queries are on in the whole process.
pub fn adaptive_queries() -> bool {
    ADAPTIVE_QUERIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// kith: whether a node with this setting runs adaptive queries (None: the process-wide switch).
pub fn adaptive(setting: Option<bool>) -> bool {
    setting.unwrap_or_else(adaptive_queries)
}

impl InflightRequests {
    pub fn new(timeout: Duration, adaptive: Option<bool>) -> Self {
        Self {
            requests: BTreeMap::new(),
            timeout,
            srtt: None,
            rttvar: Duration::ZERO,
            adaptive,
        }
    }

    /// kith: this node's setting for adaptive queries (None: the process-wide switch).
    pub fn adaptive_setting(&self) -> Option<bool> {
        self.adaptive
    }

    /// kith: how long a request is waited for before a query also asks the next closest node: SRTT +
    /// 4 RTTVAR of the answers heard, at least [`MIN_GIVE_UP`], at most the timeout. An answer that comes
    /// later is still taken until the timeout, and queries end only when every request is answered or
    /// timed out, as before.
    pub fn give_up_after(&self) -> Duration {
        if !adaptive(self.adaptive) {
            return self.timeout;
        }
        match self.srtt {
            None => self.timeout,
            Some(srtt) => (srtt + 4 * self.rttvar).clamp(MIN_GIVE_UP, self.timeout.max(MIN_GIVE_UP)),
        }
    }

    /// kith: one more round trip heard.
    fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Add a new inflight request O(log n)
    pub fn add(&mut self, transaction_id: u32, to: SocketAddrV4) {
        self.requests.insert(
            transaction_id,
            InflightRequest {
                to,
                sent_at: Instant::now(),
            },
        );
    }

    /// Check if a transaction_id is still inflight and not expired O(log n)
    pub fn contains(&self, transaction_id: u32) -> bool {
        if let Some(request) = self.requests.get(&transaction_id) {
            return request.sent_at.elapsed() < self.timeout;
        }
        false
    }

    /// kith: still inflight, but unanswered for longer than [`Self::give_up_after`].
    pub fn overdue(&self, transaction_id: u32) -> bool {
        self.requests
            .get(&transaction_id)
            .is_some_and(|r| r.sent_at.elapsed() >= self.give_up_after())
    }

    /// Remove inflight request by transaction_id if it exists and matches the address
    /// O(log n)
    pub fn remove(&mut self, transaction_id: u32, from: &SocketAddrV4) -> Option<InflightRequest> {
        let request = self.requests.get(&transaction_id)?;

        // Drop immediately if expired; avoid accepting late responses
        if request.sent_at.elapsed() >= self.timeout {
            self.requests.remove(&transaction_id);
            return None;
        }

        if !request.does_match(from) {
            return None;
        }

        let request = self.requests.remove(&transaction_id)?;
        // kith: learn the network's round trips from the answers.
        self.sample(request.sent_at.elapsed());
        Some(request)
    }

    /// Cleanup expired requests based on timeout
    /// O(n) scans all requests to remove expired ones
    pub fn cleanup(&mut self) {
        let now = Instant::now();
        let cutoff = now - self.timeout;

        // Remove expired requests in a single pass using retain
        self.requests.retain(|_, request| request.sent_at > cutoff);
    }
}
