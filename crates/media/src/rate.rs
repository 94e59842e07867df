//! The sender's reaction to receiver reports: loss steers in-band FEC and the encoder's loss hint, queueing
//! delay (round-trip time above its minimum) steers the bitrate. Sans-IO.
//!
//! * FEC: wanted from the start (a call's first seconds should survive loss too; the start's copies below
//!   stand in for it) with a loss hint of at least 6 %, because below that libopus sends no LBRR at 16-24
//!   kbit/s; the hint tracks the smoothed loss plus a margin (at most 40 %). A start that ends clean (two
//!   reports without loss) ends it too: LBRR on a path that has lost nothing costs a fifth more encoder
//!   time and part of the bitrate for nothing. It comes back at the first loss, and goes again after 10 s
//!   without any.
//! * Redundancy: from the start of a call until two reports in a row show no loss (the loss of a call's first
//!   second cannot wait for the first report), and from 1 % smoothed loss on (the first report after 3.3 %
//!   loss), each datagram also carries a whole copy of the previous frame
//!   (as RFC 2198 redundancy does for RTP), so a lost frame whose next packet arrives plays at full quality
//!   instead of from the low-rate LBRR; the LBRR then only duplicates the copy, so in-band FEC is turned
//!   off and all of the bitrate goes to the frame itself (the loss hint stays, for robustness). This
//!   doubles the audio rate (64 kbit/s at the default 32): it goes off again after 10 s without loss, and
//!   at once, for 10 s, when the round trip shows a queue building (the loss may then be congestion, which
//!   more bits would make worse).
//! * Bitrate: starts at the negotiated maximum; if the round trip grows 150 ms above the lowest seen (a queue
//!   is building), it drops by a fifth per report (not below 12 kbit/s), and climbs back 2 kbit/s per report
//!   once the queue is gone. Random loss alone does not lower it: FEC needs the bits.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub bitrate: u32,
    pub fec: bool,
    pub loss_hint_pct: u8,
    /// Copies of earlier frames each datagram carries (0 or 1).
    pub redundancy: u8,
}

#[derive(Debug)]
pub struct RateController {
    max_bitrate: u32,
    settings: EncoderSettings,
    /// What the loss asks of in-band FEC (the settings turn it off while copies are sent).
    lbrr: bool,
    /// Copies for loss (on at 1 % smoothed loss, off after 10 s without loss or at a queue).
    red_loss: bool,
    /// Reports in a row without loss since the start, while the call's first copies are on (None once
    /// the start is over).
    start_clean: Option<u32>,
    smoothed_loss: f64,
    min_rtt: Option<Duration>,
    last_loss: Instant,
    /// When the round trip last showed a queue.
    last_queue: Option<Instant>,
}

pub const MIN_BITRATE: u32 = 12_000;
const FEC_OFF_AFTER: Duration = Duration::from_secs(10);
const QUEUE_RTT: Duration = Duration::from_millis(150);
const RED_ON_LOSS: f64 = 0.01;
const RED_HOLD_AFTER_QUEUE: Duration = Duration::from_secs(10);
/// Clean reports in a row that end the copies a call starts with.
const START_CLEAN_REPORTS: u32 = 2;

impl RateController {
    pub fn new(max_bitrate: u32, now: Instant) -> Self {
        Self {
            max_bitrate: max_bitrate.max(MIN_BITRATE),
            settings: EncoderSettings {
                bitrate: max_bitrate.max(MIN_BITRATE),
                fec: false,
                loss_hint_pct: 6,
                redundancy: 1,
            },
            lbrr: true,
            red_loss: false,
            start_clean: Some(0),
            smoothed_loss: 0.0,
            min_rtt: None,
            last_loss: now,
            last_queue: None,
        }
    }

    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }

    /// A receiver report: `loss` is the fraction of packets lost in its interval (before FEC), `rtt` the
    /// round trip measured from its timestamp echo.
    pub fn on_report(&mut self, loss: f64, rtt: Option<Duration>, now: Instant) -> EncoderSettings {
        let loss = loss.clamp(0.0, 1.0);
        self.smoothed_loss = 0.7 * self.smoothed_loss + 0.3 * loss;
        if loss > 0.0 {
            self.last_loss = now;
        }
        if loss > 0.0 || self.smoothed_loss >= 0.01 {
            self.lbrr = true;
        } else if now.saturating_duration_since(self.last_loss) >= FEC_OFF_AFTER {
            self.lbrr = false;
        }
        // The start's copies: until the reports show the path clean, or lossy (then the rules below).
        self.start_clean = match self.start_clean {
            Some(_) if loss > 0.0 => None,
            Some(n) if n + 1 >= START_CLEAN_REPORTS => {
                // Clean from the first frame (a lossy report would have ended the start already).
                self.lbrr = false;
                None
            }
            Some(n) => Some(n + 1),
            None => None,
        };
        let s = &mut self.settings;
        s.loss_hint_pct = if self.lbrr {
            ((self.smoothed_loss * 100.0).ceil() as u8 + 2).clamp(6, 40)
        } else {
            0
        };
        if let Some(rtt) = rtt {
            let min = self.min_rtt.map_or(rtt, |m| m.min(rtt));
            self.min_rtt = Some(min);
            if rtt > min + QUEUE_RTT {
                self.last_queue = Some(now);
                if s.redundancy > 0 {
                    // Shed the copies first: they are half of what is sent.
                    s.redundancy = 0;
                } else {
                    s.bitrate = (s.bitrate * 4 / 5).max(MIN_BITRATE);
                }
            } else if rtt < min + QUEUE_RTT / 3 {
                s.bitrate = (s.bitrate + 2_000).min(self.max_bitrate);
            }
        }
        let queue_lately = self
            .last_queue
            .is_some_and(|q| now.saturating_duration_since(q) < RED_HOLD_AFTER_QUEUE);
        let quiet_lately = now.saturating_duration_since(self.last_loss) >= FEC_OFF_AFTER;
        if queue_lately || quiet_lately {
            self.red_loss = false;
        } else if self.smoothed_loss >= RED_ON_LOSS {
            self.red_loss = true;
        }
        s.redundancy = u8::from(!queue_lately && (self.red_loss || self.start_clean.is_some()));
        // With a copy of the previous frame in every datagram, LBRR (a low-rate copy of the same frame)
        // adds nothing: its bits go to the frame itself.
        s.fec = self.lbrr && s.redundancy == 0;
        *s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn fec_follows_loss() {
        let t = Instant::now();
        let mut rc = RateController::new(32_000, t);
        let s = rc.settings();
        assert!(
            s.redundancy == 1 && !s.fec && s.loss_hint_pct >= 6,
            "copies from the start, standing in for FEC: {s:?}"
        );
        let mut s = rc.on_report(0.0, Some(Duration::from_millis(40)), t + SEC);
        assert_eq!(s.redundancy, 1, "one clean report is not enough: {s:?}");
        s = rc.on_report(0.0, Some(Duration::from_millis(40)), t + SEC * 2);
        assert_eq!(
            (s.redundancy, s.fec, s.loss_hint_pct),
            (0, false, 0),
            "two clean reports end the copies, and FEC with them: {s:?}"
        );
        s = rc.on_report(0.02, Some(Duration::from_millis(40)), t + SEC * 3);
        assert!(
            s.fec && s.loss_hint_pct >= 6,
            "back at the first loss: {s:?}"
        );
        for i in 4..=12 {
            s = rc.on_report(0.0, Some(Duration::from_millis(40)), t + SEC * i);
        }
        assert!(s.fec, "kept for 10 s after a loss: {s:?}");
        s = rc.on_report(0.0, Some(Duration::from_millis(40)), t + SEC * 13);
        assert!(!s.fec, "off after 10 s without loss");
        assert_eq!(s.loss_hint_pct, 0);
        s = rc.on_report(0.02, Some(Duration::from_millis(40)), t + SEC * 14);
        assert!(s.fec && s.loss_hint_pct >= 6, "back at the next loss");
        for i in 15..40 {
            s = rc.on_report(0.2, Some(Duration::from_millis(40)), t + SEC * i);
        }
        assert!(s.loss_hint_pct >= 20 && s.loss_hint_pct <= 25, "{s:?}");
        assert_eq!(s.bitrate, 32_000, "random loss does not cut the bitrate");
    }

    #[test]
    fn a_start_with_loss_keeps_fec_after_its_copies() {
        let t = Instant::now();
        let rtt = Some(Duration::from_millis(40));
        let mut rc = RateController::new(32_000, t);
        // Light loss in the first second: too little for copies, enough to keep LBRR.
        let mut s = rc.on_report(0.005, rtt, t + SEC);
        assert_eq!((s.redundancy, s.fec), (0, true), "{s:?}");
        for i in 2..=5 {
            s = rc.on_report(0.0, rtt, t + SEC * i);
        }
        assert!(s.fec && s.loss_hint_pct >= 6, "{s:?}");
    }

    #[test]
    fn steady_loss_brings_whole_copies_and_a_queue_sheds_them() {
        let t = Instant::now();
        let rtt = Some(Duration::from_millis(40));
        let mut rc = RateController::new(32_000, t);
        let mut s = rc.on_report(0.01, rtt, t + SEC);
        assert_eq!((s.redundancy, s.fec), (0, true), "light loss: LBRR only");
        for i in 2..10 {
            s = rc.on_report(0.10, rtt, t + SEC * i);
        }
        assert_eq!((s.redundancy, s.fec), (1, false), "{s:?}");
        assert!(
            s.loss_hint_pct >= 10,
            "the hint stays for robustness: {s:?}"
        );
        assert_eq!(s.bitrate, 32_000);
        // A queue: copies go first, the bitrate stays.
        s = rc.on_report(0.10, Some(Duration::from_millis(400)), t + SEC * 10);
        assert_eq!((s.redundancy, s.bitrate), (0, 32_000), "{s:?}");
        assert!(s.fec, "LBRR is back while the copies are off: {s:?}");
        // Queue gone, loss goes on: copies return only after the hold.
        s = rc.on_report(0.10, rtt, t + SEC * 15);
        assert_eq!(s.redundancy, 0, "{s:?}");
        s = rc.on_report(0.10, rtt, t + SEC * 21);
        assert_eq!(s.redundancy, 1, "{s:?}");
        // Loss gone: off again after 10 s without any.
        for i in 22..40 {
            s = rc.on_report(0.0, rtt, t + SEC * i);
        }
        assert_eq!(s.redundancy, 0, "{s:?}");
    }

    #[test]
    fn a_growing_queue_lowers_the_bitrate_and_it_recovers() {
        let t = Instant::now();
        let mut rc = RateController::new(32_000, t);
        rc.on_report(0.0, Some(Duration::from_millis(30)), t);
        let mut s = rc.settings();
        for i in 1..6 {
            s = rc.on_report(0.0, Some(Duration::from_millis(400)), t + SEC * i);
        }
        assert!(s.bitrate < 16_000 && s.bitrate >= MIN_BITRATE, "{s:?}");
        for i in 6..20 {
            s = rc.on_report(0.0, Some(Duration::from_millis(32)), t + SEC * i);
        }
        assert_eq!(s.bitrate, 32_000);
    }
}
