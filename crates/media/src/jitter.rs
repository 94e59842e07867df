//! An adaptive jitter buffer, sans-IO: packets go in with their arrival time, one frame comes out per
//! playout tick, and the buffer's delay follows what the measured jitter requires.
//!
//! Delay: each packet's transit relative to the fastest packet in the last [`WINDOW`] packets measures the
//! jitter; the target delay is its 95th percentile plus a small margin, plus one frame while packets are
//! being lost (so the next packet, and its FEC, is at hand when a frame is missing), in whole frames. A
//! call's first [`START_PACKETS`] packets count as lossy: the room is there before the first loss, which
//! otherwise would be concealed and make the buffer grow in the middle of speech. The
//! buffer's actual delay at a tick is how long a packet with the least transit would have waited. When it is
//! short of the target by more than half a frame, the tick conceals and waits (the delay grows by a frame);
//! when it exceeds the target by more than a frame for [`JitterConfig::shrink_after`] ticks, a frame goes:
//! in a pause the quiet frame just played ([`JitterBuffer::advance`]), after too long without one the next
//! frame. Either step shifts the rest of the call by a frame, which a listener (and PESQ) hears in speech
//! but hardly in a pause. Growing cannot wait (packets would miss their turn, or the FEC frame would not be at
//! hand), but shrinking can: it waits for a pause ([`PAUSE`] of quiet frames in a row, each told by the
//! player after it decoded it: [`JitterBuffer::set_quiet`]), for at most [`JitterConfig::shrink_within`]
//! ticks. (A single quiet frame is often inside a word.)
//!
//! Whole frames are coarse: the delay kept sits anywhere from half a frame under the target to a frame
//! over it, depending on how the playout clock's ticks fall against the packets' arrivals. So after a quiet
//! frame [`JitterBuffer::advance`] may move the playout clock earlier by part of a frame (the player cuts as
//! much from that quiet frame and ticks that much sooner), down to a quarter frame under the target but
//! never under what the jitter needs; once the jitter window has seen [`WINDOW`]/4 packets.
//!
//! Per tick ([`JitterBuffer::pop`], called every frame duration by the playout clock), once the delay is
//! right:
//! * the next frame's packet is there: decode it; or a whole copy of it came with a later packet
//!   (redundancy, [`JitterBuffer::push_redundant`]): decode that;
//! * it is missing but the one after it is there: decode that one's in-band FEC (LBRR) in its place;
//! * both are missing: conceal (the decoder's PLC). A packet that comes after its turn is late: dropped,
//!   but its delay still counts for the jitter estimate.
//!
//! Frames and packets are numbered apart, as RTP does: a frame's number is its place in the sender's
//! audio (its timestamp over the frame length), a packet's sequence number counts the packets sent. The
//! sender sends nothing for frames in a pause (discontinuous transmission, DTX: libopus codes a frame only
//! every 400 ms there), so a frame without a packet is either lost or not sent, and the sequence numbers
//! tell which: between two packets that arrived, as many frames were lost as sequence numbers are missing.
//! A frame not sent is played as comfort noise ([`Playout::Gap`]: the decoder's concealment continues the
//! comfort noise of the last packet) and is neither loss nor concealment in the statistics. While the
//! packet after a missing frame has not come yet, the frame is concealed, and counted once that packet says
//! whether it was lost ([`JitterStats::gaps`]). Where a pause and a loss meet, the frames taken as lost are
//! those just before the next packet (the start of a talk spurt), whose FEC that packet carries.

use crate::packet;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Packets over which the jitter percentile is taken (about 4 s at 20 ms).
pub const WINDOW: usize = 200;
/// Quiet this long in a row is a pause in speech, where the delay may change unheard.
pub const PAUSE: Duration = Duration::from_millis(60);
/// Packets at the start that keep room for loss whether or not any was seen (2 s at 20 ms).
pub const START_PACKETS: u64 = 100;

#[derive(Debug, Clone)]
pub struct JitterConfig {
    pub frame: Duration,
    /// Never less than this much buffered delay.
    pub min_delay: Duration,
    /// Never more than this.
    pub max_delay: Duration,
    /// Added to the jitter percentile.
    pub margin: Duration,
    /// Ticks in a row with too much buffered before a frame is dropped.
    pub shrink_after: u32,
    /// Ticks a due shrink may wait for a pause.
    pub shrink_within: u32,
}

impl JitterConfig {
    pub fn for_frame(frame: Duration) -> Self {
        Self {
            frame,
            min_delay: frame,
            max_delay: Duration::from_millis(400),
            margin: Duration::from_millis(5),
            shrink_after: 10,
            shrink_within: (Duration::from_secs(5).as_micros() / frame.as_micros().max(1)) as u32,
        }
    }
}

/// What to play for one tick; `frame` is the frame's number (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Decode this packet. `resume`: it is the first after frames the sender did not send (a pause) and
    /// none was lost: the decoder should start afresh, as for a call's first frame, since its concealment
    /// would fade this frame in from the comfort noise (which cuts the start of a word).
    Packet {
        frame: u64,
        payload: Vec<u8>,
        resume: bool,
    },
    /// Frame `frame`'s packet is lost: decode the FEC carried in the next packet (`payload`) instead.
    Fec { frame: u64, payload: Vec<u8> },
    /// Frame `frame`'s packet is missing and there is no FEC for it: conceal. (Or the buffer waits a frame
    /// to grow its delay, see [`JitterStats::stalls`].)
    Conceal { frame: u64 },
    /// The sender sent nothing for frame `frame` (a pause, DTX): comfort noise, which the decoder's
    /// concealment plays after a DTX frame.
    Gap { frame: u64 },
    /// Nothing to play yet (before the first packet, or while the buffer fills at start).
    Wait,
}

impl Playout {
    /// The frame this tick played, if any.
    pub fn frame(&self) -> Option<u64> {
        match self {
            Playout::Packet { frame, .. }
            | Playout::Fec { frame, .. }
            | Playout::Conceal { frame }
            | Playout::Gap { frame } => Some(*frame),
            Playout::Wait => None,
        }
    }
}

/// Counters for the receiver report and the call statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JitterStats {
    pub received: u64,
    /// Arrived after their turn (played as FEC/concealment, then discarded).
    pub late: u64,
    pub duplicates: u64,
    /// Frames rebuilt from the next packet's FEC.
    pub fec: u64,
    /// Frames whose own packet was lost, played from a whole copy carried by a later packet (counted in
    /// `played` too).
    pub red: u64,
    /// Lost frames concealed (no FEC available).
    pub concealed: u64,
    /// Frames the sender did not send (DTX), played as comfort noise; not loss. A frame missing before
    /// the next packet has come is counted (here or in `concealed`) once that packet says which it was.
    pub gaps: u64,
    /// Ticks concealed while waiting, to grow the delay.
    pub stalls: u64,
    /// Frames dropped to shrink the delay.
    pub dropped: u64,
    /// Playout clock moves earlier by part of a frame ([`JitterBuffer::advance`]), and their sum in ms.
    pub advances: u64,
    pub advanced_ms: f64,
    pub played: u64,
    /// Current buffered delay and the target, milliseconds.
    pub delay_ms: f64,
    pub target_ms: f64,
    /// 95th percentile of the relative delay over the window, milliseconds.
    pub jitter_p95_ms: f64,
    /// RFC 3550 interarrival jitter, milliseconds.
    pub jitter_rfc3550_ms: f64,
}

/// A frame waiting to be played.
#[derive(Debug)]
struct Entry {
    payload: Vec<u8>,
    /// The sequence number of the packet it came in; `None` for a copy carried by a later packet
    /// (redundancy: its own packet was lost or is late).
    seq: Option<u64>,
    /// Its packet carries in-band FEC for the frame before it.
    fec: bool,
    /// A comfort-noise refresh in the sender's pause ([`crate::packet::FLAG_CN`]).
    cn: bool,
}

/// Frames missing since the last frame played from its own packet (the anchor), by how they were played,
/// until the next packet tells how many of them were lost.
#[derive(Debug, Default, Clone, Copy)]
struct Missing {
    /// Played from a copy, from the next packet's FEC, concealed as lost, or played as a gap: known.
    red: u64,
    fec: u64,
    lost: u64,
    gap: u64,
    /// Concealed before anything was known.
    unknown: u64,
}

#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// Frames waiting to be played, by frame number.
    packets: BTreeMap<u64, Entry>,
    /// The next frame to play (None before playout starts).
    next: Option<u64>,
    /// The last frame played from its own packet, and that packet's sequence number.
    anchor: Option<(u64, u64)>,
    /// Frames missing since the anchor.
    missing: Missing,
    /// When the first packet arrived (playout starts `target` later).
    first_arrival: Option<Instant>,
    /// (seq, arrival) of recent packets, to measure relative delay.
    history: std::collections::VecDeque<Seen>,
    /// The first arrival: the origin of the transits in `history`.
    epoch: Option<Instant>,
    /// Reused per packet (transits, sequence numbers).
    scratch: (Vec<f64>, Vec<u64>),
    target: Duration,
    /// What the jitter needs, before rounding up to whole frames.
    needed: Duration,
    /// Ticks since the delay last had to grow (advancing waits a window's worth after that: what made it
    /// grow, a drifting clock or a burst of jitter, may be at it again).
    ticks_since_stall: u32,
    over_target_ticks: u32,
    stats: JitterStats,
    /// For RFC 3550 jitter: previous (frame, arrival).
    prev: Option<(u64, Instant)>,
    j3550: f64,
    /// Highest sequence number received.
    highest: Option<u64>,
    /// Packets observed (arrived, late or not).
    seen: u64,
    /// The buffer delay at the last tick, seconds.
    last_lag: f64,
    /// When the last tick was due.
    last_tick: Option<Instant>,
    /// Quiet frames played in a row (a pause once they last [`PAUSE`]): the time to shrink the delay.
    quiet_frames: u32,
    /// The last frame played from its own packet was a comfort-noise refresh.
    last_cn: bool,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let target = config.min_delay;
        Self {
            config,
            packets: BTreeMap::new(),
            next: None,
            anchor: None,
            missing: Missing::default(),
            first_arrival: None,
            last_tick: None,
            history: Default::default(),
            epoch: None,
            scratch: Default::default(),
            target,
            needed: target,
            ticks_since_stall: 0,
            over_target_ticks: 0,
            stats: JitterStats::default(),
            prev: None,
            j3550: 0.0,
            highest: None,
            seen: 0,
            last_lag: 0.0,
            quiet_frames: u32::MAX,
            last_cn: false,
        }
    }

    /// Whether the frame just played was quiet. Shrinking waits for a pause ([`PAUSE`] of quiet frames).
    /// Without this call every frame counts as a pause.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet_frames = if quiet {
            self.quiet_frames.saturating_add(1)
        } else {
            0
        };
    }

    /// In a pause of speech: the last [`PAUSE`] played was quiet.
    fn in_pause(&self) -> bool {
        let frame_us = self.config.frame.as_micros().max(1);
        u128::from(self.quiet_frames) >= PAUSE.as_micros().div_ceil(frame_us)
    }

    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats.clone();
        s.delay_ms = self.last_lag.max(0.0) * 1000.0;
        s.target_ms = self.target.as_secs_f64() * 1000.0;
        s.jitter_p95_ms = self.jitter_p95().as_secs_f64() * 1000.0;
        s.jitter_rfc3550_ms = self.j3550 * 1000.0;
        s
    }

    /// Highest sequence number received so far (for loss accounting in receiver reports).
    pub fn highest_seq(&self) -> Option<u64> {
        self.highest
    }

    /// The peer pauses: playout has started, nothing but comfort-noise refreshes waits to be played, and
    /// the last packet played was such a refresh, or for [`PAUSE`] or more the frames played since the
    /// peer's last packet were ones it did not send, or nothing has come since. (What is played then is
    /// comfort noise; when it is made matters little.)
    pub fn peer_paused(&self) -> bool {
        let frame_us = self.config.frame.as_micros().max(1);
        self.next.is_some()
            && self.packets.values().all(|e| e.cn)
            && (self.last_cn
                || u128::from(self.missing.gap + self.missing.unknown)
                    >= PAUSE.as_micros().div_ceil(frame_us))
    }

    /// The delay the buffer aims for now.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// The buffer's delay at the last playout tick (how long a packet that came with the least transit
    /// seen waits before it is played).
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.last_lag.max(0.0))
    }

    /// The packet of frame `frame` arrived at `now`, carrying in-band FEC for the frame before it; one
    /// packet per frame (no DTX), so its sequence number is the frame's.
    pub fn push(&mut self, frame: u64, payload: Vec<u8>, now: Instant) {
        self.push_packet(frame, frame, payload, packet::FLAG_FEC, now);
    }

    /// The packet with sequence number `seq`, of frame `frame`, arrived at `now`, with the header's
    /// `flags`: [`packet::FLAG_FEC`], it carries in-band FEC (LBRR) for the frame before it (a lost frame
    /// is rebuilt from the next packet only if that one does, else it is concealed, and counted so);
    /// [`packet::FLAG_CN`], it is a comfort-noise refresh in the sender's pause.
    pub fn push_packet(&mut self, frame: u64, seq: u64, payload: Vec<u8>, flags: u8, now: Instant) {
        let (fec, cn) = (flags & packet::FLAG_FEC != 0, flags & packet::FLAG_CN != 0);
        if let Some(next) = self.next
            && frame < next
        {
            self.stats.late += 1;
            self.observe(frame, seq, now);
            return;
        }
        match self.packets.get_mut(&frame) {
            Some(Entry { seq: Some(_), .. }) => {
                self.stats.duplicates += 1;
                return;
            }
            // The packet itself, after a copy of it came: the same frame, now from its own packet (with
            // whatever FEC it carries for the frame before).
            Some(e) => {
                *e = Entry {
                    payload,
                    seq: Some(seq),
                    fec,
                    cn,
                };
            }
            None => {
                self.packets.insert(
                    frame,
                    Entry {
                        payload,
                        seq: Some(seq),
                        fec,
                        cn,
                    },
                );
                self.bound();
            }
        }
        self.stats.received += 1;
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        self.observe(frame, seq, now);
        self.first_arrival.get_or_insert(now);
    }

    /// A whole copy of frame `frame` arrived inside a later packet (whose own frame went to
    /// [`Self::push_packet`]). Kept if that frame is still to be played and its own packet is not here; it
    /// says nothing about transit or loss.
    pub fn push_redundant(&mut self, frame: u64, payload: Vec<u8>) {
        if self.next.is_some_and(|n| frame < n) || self.packets.contains_key(&frame) {
            return;
        }
        self.packets.insert(
            frame,
            Entry {
                payload,
                seq: None,
                fec: false,
                cn: false,
            },
        );
        self.bound();
    }

    /// Bounds memory against a peer that sends far ahead.
    fn bound(&mut self) {
        while self.packets.len() > 1000 {
            self.packets.pop_first();
        }
    }

    fn observe(&mut self, frame: u64, seq: u64, now: Instant) {
        // RFC 3550: D = (arrival difference) - (send-time difference); J += (|D| - J) / 16.
        if let Some((pf, pa)) = self.prev
            && frame > pf
        {
            let arrival = now.saturating_duration_since(pa).as_secs_f64()
                - pa.saturating_duration_since(now).as_secs_f64();
            let sent = self.config.frame.as_secs_f64() * (frame - pf) as f64;
            let d = (arrival - sent).abs();
            self.j3550 += (d - self.j3550) / 16.0;
        }
        if self.prev.is_none_or(|(pf, _)| frame > pf) {
            self.prev = Some((frame, now));
        }
        self.seen += 1;
        let epoch = *self.epoch.get_or_insert(now);
        let transit = signed_secs(now, epoch) - frame as f64 * self.config.frame.as_secs_f64();
        self.history.push_back(Seen { seq, transit });
        while self.history.len() > WINDOW {
            self.history.pop_front();
        }
        self.retarget();
    }

    /// The least relative transit in the window (seconds; see [`Seen::transit`]).
    fn min_transit(&self) -> Option<f64> {
        (!self.history.is_empty()).then(|| {
            self.history
                .iter()
                .map(|h| h.transit)
                .fold(f64::INFINITY, f64::min)
        })
    }

    /// 95th percentile of the relative delays over the window (each packet's transit minus the least).
    fn jitter_p95(&self) -> Duration {
        let mut scratch = Vec::new();
        self.jitter_p95_in(&mut scratch)
    }

    /// As [`Self::jitter_p95`], reusing `scratch` (per packet: no allocation).
    fn jitter_p95_in(&self, scratch: &mut Vec<f64>) -> Duration {
        let Some(min) = self.min_transit() else {
            return Duration::ZERO;
        };
        if self.history.len() < 2 {
            return Duration::ZERO;
        }
        scratch.clear();
        scratch.extend(self.history.iter().map(|h| h.transit - min));
        let idx = ((scratch.len() as f64 - 1.0) * 0.95).round() as usize;
        let (_, p95, _) = scratch.select_nth_unstable_by(idx, f64::total_cmp);
        Duration::from_secs_f64(p95.max(0.0))
    }

    /// Fraction of packets missing in the window (holes between its lowest and highest sequence number;
    /// frames not sent have none).
    fn window_loss(&self, scratch: &mut Vec<u64>) -> f64 {
        let (Some(lo), Some(hi)) = (
            self.history.iter().map(|h| h.seq).min(),
            self.history.iter().map(|h| h.seq).max(),
        ) else {
            return 0.0;
        };
        let span = (hi - lo + 1) as f64;
        // Nearly in order already: sorting is about one pass.
        scratch.clear();
        scratch.extend(self.history.iter().map(|h| h.seq));
        scratch.sort_unstable();
        scratch.dedup();
        1.0 - scratch.len() as f64 / span
    }

    /// How long frame `frame` will have waited when played at `now`, had it arrived with the least transit
    /// seen: the buffer's delay at this playout point.
    fn lag(&self, frame: u64, now: Instant) -> Option<f64> {
        let (epoch, min) = (self.epoch?, self.min_transit()?);
        Some(signed_secs(now, epoch) - (frame as f64 * self.config.frame.as_secs_f64() + min))
    }

    /// Frame `frame` was played from (or dropped with) its own packet `seq`: the frames missing since the
    /// last such frame are now known, lost or not sent, and the ones concealed unknowing are counted.
    fn anchor_at(&mut self, frame: u64, seq: u64) {
        let m = std::mem::take(&mut self.missing);
        if let Some((_, last)) = self.anchor {
            let lost = seq.saturating_sub(last + 1);
            let left = lost.saturating_sub(m.red + m.fec + m.lost);
            let concealed = m.unknown.min(left);
            self.stats.concealed += concealed;
            self.stats.gaps += m.unknown - concealed;
        } else {
            // Before the first packet played nothing is known: what was concealed counts as lost.
            self.stats.concealed += m.unknown;
        }
        self.anchor = Some((frame, seq));
    }

    /// Frame `next` has no packet here at its turn: whether it was lost (sent), as far as the packets
    /// around it tell (`None`: not known yet).
    fn was_sent(&self, next: u64) -> Option<bool> {
        let Some((anchor_frame, anchor_seq)) = self.anchor else {
            // Nothing played from a packet yet: count it as lost, as a buffer without DTX would.
            return Some(true);
        };
        let (&after_frame, after) = self
            .packets
            .range(next + 1..)
            .find(|(_, e)| e.seq.is_some())?;
        let lost = after.seq?.saturating_sub(anchor_seq + 1);
        let frames = after_frame.saturating_sub(anchor_frame + 1);
        // All frames between sent, none, or (a pause and a loss) the ones just before the next packet.
        Some(lost >= frames || after_frame - next <= lost)
    }

    fn retarget(&mut self) {
        let (mut transits, mut seqs) = std::mem::take(&mut self.scratch);
        let mut needed = self.jitter_p95_in(&mut transits) + self.config.margin;
        // With loss about (or not yet known not to be), keep one frame more, so the next packet (and its
        // FEC, or its copy of the missing frame) is there when a frame is missing.
        if self.seen < START_PACKETS || self.window_loss(&mut seqs) >= 0.01 {
            needed += self.config.frame;
        }
        self.scratch = (transits, seqs);
        self.needed = needed;
        let frames = needed.as_secs_f64() / self.config.frame.as_secs_f64();
        let target = self.config.frame * (frames.ceil() as u32).max(1);
        self.target = target.clamp(self.config.min_delay, self.config.max_delay);
    }

    /// Asked after each played frame: whether the playout clock should now run earlier, and by how much.
    /// The caller cuts that much from the end of the frame just played, which was quiet, and makes its
    /// next tick come that much sooner. A whole frame when the buffer has held more than a frame too much
    /// for [`JitterConfig::shrink_after`] ticks (the quiet frame just played goes, not the next one, which
    /// may begin a word); else at most half a frame, to sit close to what the jitter needs.
    pub fn advance(&mut self) -> Option<Duration> {
        if self.next.is_none() {
            // Before playout starts (silence so far): bring the next tick to the moment playout can
            // start, so that it starts with the delay the buffer wants rather than up to a frame more
            // (which it would then have to take out in speech).
            let (Some(first), Some(last)) = (self.first_arrival, self.last_tick) else {
                return None;
            };
            let start = first + self.target.saturating_sub(self.config.frame / 2);
            let d = (last + self.config.frame).saturating_duration_since(start);
            return (d > Duration::ZERO && d < self.config.frame).then_some(d);
        }
        if !self.in_pause() {
            return None;
        }
        let frame = self.config.frame.as_secs_f64();
        if self.over_target_ticks >= self.config.shrink_after
            && self.last_lag > self.target.as_secs_f64() + frame
        {
            self.over_target_ticks = 0;
            self.last_lag -= frame;
            self.stats.dropped += 1;
            return Some(self.config.frame);
        }
        if self.history.len() < WINDOW / 4 || self.ticks_since_stall < WINDOW as u32 {
            return None;
        }
        // Down to a quarter frame under the whole-frame target, a quarter frame above the point where the
        // buffer grows (see `pop`), but never under what the jitter needs. (Aiming at what the jitter needs
        // plus a quarter frame kept 4 ms less, and on a busy machine let 1 % of packets come late.)
        let aim = (self.target.as_secs_f64() - frame / 4.0).max(self.needed.as_secs_f64());
        let excess = self.last_lag - aim;
        if excess < 0.002 {
            return None;
        }
        let d = excess.min(frame / 2.0);
        self.last_lag -= d;
        self.stats.advances += 1;
        self.stats.advanced_ms += d * 1000.0;
        Some(Duration::from_secs_f64(d))
    }

    /// One playout tick. `now` is when the tick was due on the playout clock, not when the caller got
    /// to run: a caller that runs late for a while (a busy machine) and passed the time it ran would make
    /// the buffer's delay look longer, which [`Self::advance`] takes out, and then too short once it is
    /// punctual again, which costs a concealed frame in the middle of speech.
    pub fn pop(&mut self, now: Instant) -> Playout {
        self.last_tick = Some(now);
        let next = match self.next {
            Some(n) => n,
            None => {
                let (Some(first), Some((&lowest, _))) =
                    (self.first_arrival, self.packets.first_key_value())
                else {
                    return Playout::Wait;
                };
                if now.saturating_duration_since(first) + self.config.frame / 2 < self.target {
                    return Playout::Wait;
                }
                self.next = Some(lowest);
                lowest
            }
        };
        let frame = self.config.frame.as_secs_f64();
        let target = self.target.as_secs_f64();
        let lag = self.lag(next, now).unwrap_or(target);
        self.last_lag = lag;
        let present = self.packets.contains_key(&next);
        // Too little delay for the jitter measured: wait a frame (the delay grows by one frame).
        self.ticks_since_stall = self.ticks_since_stall.saturating_add(1);
        // (A microsecond of slack: the delay at which playout started sits exactly at this bound.)
        if lag + frame / 2.0 < target - 1e-6 {
            self.ticks_since_stall = 0;
            self.stats.stalls += 1;
            return Playout::Conceal { frame: next };
        }
        // Too much delay for a while: in a pause the quiet frame just played goes ([`Self::advance`]); with
        // no pause for a long time, the next frame is dropped here.
        if lag > target + frame && present {
            self.over_target_ticks += 1;
            if self.over_target_ticks >= self.config.shrink_after + self.config.shrink_within {
                match self.packets.remove(&next).and_then(|e| e.seq) {
                    Some(seq) => self.anchor_at(next, seq),
                    // A copy: its own packet was lost.
                    None => self.missing.red += 1,
                }
                self.stats.dropped += 1;
                self.over_target_ticks = 0;
                self.next = Some(next + 1);
                return self.pop(now);
            }
        } else {
            self.over_target_ticks = 0;
        }
        if let Some(Entry {
            payload, seq, cn, ..
        }) = self.packets.remove(&next)
        {
            self.next = Some(next + 1);
            self.stats.played += 1;
            // (A copy's own packet was lost: what it was is not known.)
            self.last_cn = cn && seq.is_some();
            let mut resume = false;
            match seq {
                Some(seq) => {
                    // (A frame played from a copy had its own packet lost: `seq` would not follow on.)
                    resume = self
                        .anchor
                        .is_some_and(|(frame, last)| seq == last + 1 && next > frame + 1);
                    self.anchor_at(next, seq);
                }
                None => {
                    self.stats.red += 1;
                    self.missing.red += 1;
                }
            }
            return Playout::Packet {
                frame: next,
                payload,
                resume,
            };
        }
        // Missing at its time: not sent, lost, or later than the jitter allows. Rebuild a lost one from the
        // next packet's FEC if that one is here and carries FEC (a copy, or a packet sent while copies stood
        // in for FEC, does not), else conceal it.
        self.next = Some(next + 1);
        match self.was_sent(next) {
            Some(false) => {
                self.missing.gap += 1;
                self.stats.gaps += 1;
                Playout::Gap { frame: next }
            }
            Some(true) => {
                if let Some(following) = self
                    .packets
                    .get(&(next + 1))
                    .filter(|f| f.fec && f.seq.is_some())
                {
                    self.missing.fec += 1;
                    self.stats.fec += 1;
                    return Playout::Fec {
                        frame: next,
                        payload: following.payload.clone(),
                    };
                }
                self.missing.lost += 1;
                self.stats.concealed += 1;
                Playout::Conceal { frame: next }
            }
            None => {
                self.missing.unknown += 1;
                Playout::Conceal { frame: next }
            }
        }
    }
}

/// A packet in the jitter window.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: u64,
    /// Its relative transit, seconds: arrival (from the buffer's epoch) minus its send time (`seq` frames),
    /// so that one packet's delay relative to another is the difference of their transits. Computed once,
    /// at arrival.
    transit: f64,
}

fn signed_secs(a: Instant, b: Instant) -> f64 {
    a.saturating_duration_since(b).as_secs_f64() - b.saturating_duration_since(a).as_secs_f64()
}

#[cfg(test)]
mod tests;
