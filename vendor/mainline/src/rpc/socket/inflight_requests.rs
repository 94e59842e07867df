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
}

/// kith: the least time a request is waited for, whatever the round trips heard: answers on a loaded
/// machine or a busy node come late now and then, and a request given up on too early costs a detour.
pub const MIN_GIVE_UP: Duration = Duration::from_millis(100);

impl InflightRequests {
    pub fn new(timeout: Duration) -> Self {
        Self {
            requests: BTreeMap::new(),
            timeout,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// kith: how long a request is waited for before it counts as unanswered (for the queries, which then
    /// move on): SRTT + 4 RTTVAR of the answers heard, at least [`MIN_GIVE_UP`], at most the timeout. An
    /// answer that comes later is still taken until the timeout.
    pub fn give_up_after(&self) -> Duration {
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

    /// Check if a transaction_id is still inflight and not given up on O(log n)
    pub fn contains(&self, transaction_id: u32) -> bool {
        if let Some(request) = self.requests.get(&transaction_id) {
            // kith: given up on after a few round trips, not only at the timeout.
            return request.sent_at.elapsed() < self.give_up_after();
        }
        false
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
