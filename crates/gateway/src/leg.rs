//! The SIP leg's media: RTP on a UDP socket, G.722 or G.711 to and from the 48 kHz audio of the kith call
//! (through a [`Bridge`]), a jitter buffer for what the PBX's phones send, and telephone events both ways.
//!
//! One task per call, on a 20 ms clock of its own, which the kith call's media follows (see [`Bridge`]):
//! each tick plays 20 ms out of the jitter buffer into the kith call; the call then encodes it and plays
//! its next 20 ms back, which the task sends at once as one RTP packet (or a telephone-event packet while a
//! key is pressed). The SDP negotiation (see [`SipMedia`]) tells the task where to send
//! and in which codec; until then, and while the peer holds the call, it sends nothing.

use crate::g711;
use crate::resample::{Down, Up, factor_for};
use crate::rtp::{self, Packet};
use crate::sdp::{self, Codec, Negotiated};
use ezk_sdp_types::SessionDescription;
use kith_node::media::Bridge;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// Samples of one 20 ms frame at 8 kHz and at 48 kHz. 20 ms is also 160 units of the RTP clock, which is
/// 8 kHz for every codec of the leg (G.722's too).
const FRAME_8K: usize = 160;
const FRAME_48K: usize = 960;

/// A key pressed: its RFC 4733 event and how long it is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub event: u8,
    pub duration_ms: u16,
}

/// The SDP side of the leg, for ezk's INVITE sessions: offers and answers name the leg's socket, and
/// what they agree on goes to the media task.
pub struct SipMedia {
    local: SocketAddr,
    session: u64,
    version: u64,
    agreed: watch::Sender<Option<Negotiated>>,
    /// Whether the phone holds the call now (its last offer or answer only sends, or sends nothing).
    held: watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MediaError(#[from] pub sdp::SdpError);

impl ezk_sip_ua::MediaBackend for SipMedia {
    type Error = MediaError;
    type Event = ();

    fn has_media(&self) -> bool {
        true
    }

    async fn create_sdp_offer(&mut self) -> Result<SessionDescription, MediaError> {
        self.version += 1;
        let text = sdp::describe(
            self.local.ip(),
            self.local.port(),
            &sdp::OFFER,
            self.session,
            self.version,
            "sendrecv",
        );
        Ok(sdp::parse(&text)?)
    }

    async fn receive_sdp_answer(&mut self, answer: SessionDescription) -> Result<(), MediaError> {
        let n = sdp::negotiate(&answer)?;
        tracing::debug!(
            codec = n.codec.name(),
            hold = n.on_hold,
            "SIP leg: answer taken"
        );
        self.agree(n);
        Ok(())
    }

    async fn receive_sdp_offer(
        &mut self,
        offer: SessionDescription,
    ) -> Result<SessionDescription, MediaError> {
        self.answer(&offer)
    }

    async fn run(&mut self) -> Result<(), MediaError> {
        // The media runs in its own task; the INVITE session has nothing to wait for here.
        std::future::pending().await
    }
}

impl SipMedia {
    /// The answer to an offer; what it agrees goes to the media task (also for a leg set up without SIP:
    /// the gateway benchmark).
    pub fn answer(&mut self, offer: &SessionDescription) -> Result<SessionDescription, MediaError> {
        let n = sdp::negotiate(offer)?;
        self.version += 1;
        // Held by the peer (it only sends, or nothing): we only receive, or nothing either.
        let direction = if n.on_hold { "recvonly" } else { "sendrecv" };
        let text = sdp::describe(
            self.local.ip(),
            self.local.port(),
            &[n.codec],
            self.session,
            self.version,
            direction,
        );
        tracing::debug!(
            codec = n.codec.name(),
            hold = n.on_hold,
            "SIP leg: offer taken"
        );
        self.agree(n);
        Ok(sdp::parse(&text)?)
    }

    /// What the two sides agreed goes to the media task, and a change of hold to whoever watches it.
    fn agree(&mut self, n: Negotiated) {
        self.held.send_if_modified(|h| {
            let changed = *h != n.on_hold;
            *h = n.on_hold;
            changed
        });
        self.agreed.send_replace(Some(n));
    }
}

/// Statistics of one SIP leg.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegStats {
    pub sent: u64,
    pub received: u64,
    /// Frames played as silence because nothing had come (loss, or the peer paused).
    pub concealed: u64,
    /// Packets that came too late for their turn, or from another address than the peer's.
    pub dropped: u64,
    pub keys_sent: u64,
    pub keys_received: u64,
    /// How long the packet that waited least in the jitter buffer waited, over the last second of
    /// packets played (its delay for a packet that came with the least transit), in ms.
    pub buffered_ms: f64,
}

/// A running SIP leg. Dropping it stops the task.
pub struct Leg {
    pub media: Option<SipMedia>,
    pub keys: mpsc::Sender<Key>,
    pub stats: watch::Receiver<LegStats>,
    /// Whether the phone holds the call (changes when a re-INVITE puts it on hold or takes it off).
    pub held: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Leg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds the leg's RTP socket on `ip` (a port from `ports`, or any) and starts its task, bridged to the
/// kith call through `bridge`. Keys the SIP side presses go to `keys_in`.
pub async fn start(
    ip: IpAddr,
    ports: Option<(u16, u16)>,
    bridge: Bridge,
    keys_in: mpsc::Sender<Key>,
) -> std::io::Result<Leg> {
    let socket = bind(ip, ports).await?;
    let local = socket.local_addr()?;
    let (agreed, agreed_rx) = watch::channel(None);
    let (keys, keys_rx) = mpsc::channel(64);
    let (stats_tx, stats) = watch::channel(LegStats::default());
    let (held_tx, held) = watch::channel(false);
    let task = tokio::spawn(run(
        Arc::new(socket),
        agreed_rx,
        bridge,
        keys_rx,
        keys_in,
        stats_tx,
    ));
    Ok(Leg {
        media: Some(SipMedia {
            local,
            session: rand::random::<u32>().into(),
            version: 0,
            agreed,
            held: held_tx,
        }),
        keys,
        stats,
        held,
        task,
    })
}

async fn bind(ip: IpAddr, ports: Option<(u16, u16)>) -> std::io::Result<UdpSocket> {
    let Some((lo, hi)) = ports else {
        return UdpSocket::bind((ip, 0)).await;
    };
    // RTP takes even ports (RTCP the odd one above); start at a random one so calls spread out.
    let evens: Vec<u16> = (lo..=hi).filter(|p| p % 2 == 0).collect();
    let first = rand::random_range(0..evens.len().max(1));
    for i in 0..evens.len() {
        if let Ok(s) = UdpSocket::bind((ip, evens[(first + i) % evens.len()])).await {
            return Ok(s);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free RTP port in {lo}-{hi}: widen rtp_ports in the gateway's configuration"),
    ))
}

/// Reorders the peer's packets and hands out 20 ms of audio per tick (at the codec's rate).
struct JitterBuffer {
    /// Samples of a frame (a lost packet's stand-in).
    frame: usize,
    /// Decoded packets by extended sequence number.
    packets: BTreeMap<u64, Vec<i16>>,
    /// The next sequence number to play, once playout started.
    next: Option<u64>,
    /// Audio taken from packets but not yet played.
    ready: std::collections::VecDeque<i16>,
    highest: Option<u64>,
    /// When each packet held came.
    arrived: BTreeMap<u64, std::time::Instant>,
    /// The least wait of a packet played in the current window of [`WAIT_WINDOW`] packets, their count,
    /// and the least of the last whole window.
    wait_min: Option<Duration>,
    waits: u32,
    last_wait_min: Option<Duration>,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new(FRAME_8K)
    }
}

/// Packets played over which the least wait is taken (a second).
const WAIT_WINDOW: u32 = 50;

/// Packets held before playout starts (40 ms at 20 ms a packet), and the most held before the oldest
/// are skipped (the peer's clock runs fast or a burst came after a stall).
const START_DEPTH: usize = 2;
const MAX_DEPTH: usize = 6;

impl JitterBuffer {
    fn new(frame: usize) -> Self {
        Self {
            frame,
            packets: BTreeMap::new(),
            next: None,
            ready: Default::default(),
            highest: None,
            arrived: BTreeMap::new(),
            wait_min: None,
            waits: 0,
            last_wait_min: None,
        }
    }

    /// Extends a 16-bit sequence number past its wrap, near the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            // Room below the first, for packets that arrive before it.
            None => u64::from(seq) + (1 << 16),
            Some(h) => h.saturating_add_signed(i64::from(seq.wrapping_sub(h as u16) as i16)),
        }
    }

    /// Takes a packet; false if it came too late for its turn.
    fn push(&mut self, seq: u16, audio: Vec<i16>) -> bool {
        let s = self.extend(seq);
        if self.next.is_some_and(|n| s < n) {
            return false;
        }
        self.highest = Some(self.highest.map_or(s, |h| h.max(s)));
        self.packets.insert(s, audio);
        self.arrived.insert(s, std::time::Instant::now());
        while self.packets.len() > MAX_DEPTH {
            self.packets.pop_first();
            self.next = self.packets.keys().next().copied();
        }
        true
    }

    /// The least wait of a packet played over the last whole window.
    fn least_wait(&mut self) -> Option<Duration> {
        // Packets skipped or lost are not waiting any more.
        if let Some(next) = self.next {
            self.arrived.retain(|&k, _| k >= next);
        }
        self.last_wait_min
    }

    /// 20 ms of audio, or None when there is nothing to play (playout not started, or a gap).
    fn pop(&mut self, out: &mut [i16]) -> bool {
        if self.next.is_none() {
            if self.packets.len() < START_DEPTH {
                return false;
            }
            self.next = self.packets.keys().next().copied();
        }
        while self.ready.len() < out.len() {
            let Some(n) = self.next else { break };
            match self.packets.remove(&n) {
                Some(a) => {
                    if let Some(at) = self.arrived.remove(&n) {
                        let w = at.elapsed();
                        self.wait_min = Some(self.wait_min.map_or(w, |m| m.min(w)));
                        self.waits += 1;
                        if self.waits >= WAIT_WINDOW {
                            self.last_wait_min = self.wait_min.take();
                            self.waits = 0;
                        }
                    }
                    self.ready.extend(a);
                    self.next = Some(n + 1);
                }
                None if self.packets.is_empty() => {
                    // Ran dry: wait for the buffer to fill again.
                    self.next = None;
                    break;
                }
                None => {
                    // A gap with later packets waiting: that one is lost, a frame of silence stands in.
                    self.ready.extend(std::iter::repeat_n(0, self.frame));
                    self.next = Some(n + 1);
                }
            }
        }
        if self.ready.len() < out.len() {
            return false;
        }
        for o in out.iter_mut() {
            *o = self.ready.pop_front().unwrap_or(0);
        }
        true
    }
}

/// `payload` decoded as `codec` by a leg that has seen nothing before (for the fuzz target: what a peer's
/// packet does to the decoder).
pub fn decode_payload(codec: Codec, payload: &[u8]) -> Vec<i16> {
    LegCodec::new(codec).decode(payload)
}

/// The leg's codec with its state: G.722 is ADPCM, each direction keeps its predictor (so a leg decodes
/// its peer's packets in the order they came, and encodes its own in order).
struct LegCodec {
    codec: Codec,
    g722: Option<(
        ezk_g722::libg722::encoder::Encoder,
        ezk_g722::libg722::decoder::Decoder,
    )>,
}

impl LegCodec {
    fn new(codec: Codec) -> Self {
        use ezk_g722::libg722::{Bitrate, decoder::Decoder, encoder::Encoder};
        let g722 = (codec == Codec::G722).then(|| {
            // 64 kbit/s, 16 kHz samples, one code word a byte (RFC 3551's G722/8000).
            (
                Encoder::new(Bitrate::Mode1_64000, false, false),
                Decoder::new(Bitrate::Mode1_64000, false, false),
            )
        });
        Self { codec, g722 }
    }

    /// Samples of 20 ms at the codec's rate.
    fn frame(&self) -> usize {
        (self.codec.sample_rate() / 50) as usize
    }

    fn decode(&mut self, payload: &[u8]) -> Vec<i16> {
        match (self.codec, &mut self.g722) {
            (_, Some((_, dec))) => dec.decode(payload),
            (Codec::Pcma, _) => payload.iter().map(|&b| g711::alaw_decode(b)).collect(),
            _ => payload.iter().map(|&b| g711::ulaw_decode(b)).collect(),
        }
    }

    fn encode(&mut self, pcm: &[i16]) -> Vec<u8> {
        match (self.codec, &mut self.g722) {
            (_, Some((enc, _))) => enc.encode(pcm),
            (Codec::Pcma, _) => pcm.iter().map(|&s| g711::alaw_encode(s)).collect(),
            _ => pcm.iter().map(|&s| g711::ulaw_encode(s)).collect(),
        }
    }
}

/// A key being sent: the timestamp its packets share, how long it lasts and has lasted (timestamp units).
struct Sending {
    key: Key,
    timestamp: u32,
    elapsed: u32,
    ends_sent: u8,
}

async fn run(
    socket: Arc<UdpSocket>,
    mut agreed: watch::Receiver<Option<Negotiated>>,
    bridge: Bridge,
    mut keys_out: mpsc::Receiver<Key>,
    keys_in: mpsc::Sender<Key>,
    stats: watch::Sender<LegStats>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut down, mut up) = (Down::default(), Up::default());
    let mut jb = JitterBuffer::default();
    // G.711 until the SDP says otherwise.
    let mut lc = LegCodec::new(Codec::Pcmu);
    let ssrc: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let mut timestamp: u32 = rand::random();
    let mut first = true;
    let mut st = LegStats::default();
    let mut buf = vec![0u8; 2048];
    let mut wide = vec![0i16; FRAME_48K];
    let (mut narrow, mut heard) = (Vec::with_capacity(FRAME_8K), Vec::with_capacity(FRAME_48K));
    let mut played = vec![0i16; FRAME_8K];
    let mut queued_keys: std::collections::VecDeque<Key> = Default::default();
    let mut sending: Option<Sending> = None;
    // The last telephone event heard (its timestamp), so its repeated packets count once.
    let mut last_event: Option<u32> = None;
    let mut n: Option<Negotiated> = None;
    let mut sdp_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // What the phone said, to the kith caller: a frame every tick (silence when nothing came),
                // for the call's clock follows this one (see `Bridge`).
                let played_now = jb.pop(&mut played);
                st.buffered_ms = jb.least_wait().map_or(0.0, |w| w.as_secs_f64() * 1000.0);
                if !played_now {
                    played.fill(0);
                    if n.is_some() {
                        st.concealed += 1;
                    }
                }
                heard.clear();
                up.process(&played, &mut heard);
                bridge.to_call.put(&heard);
                bridge.frame_in.notify_one();
                stats.send_replace(st.clone());
            }
            _ = bridge.frame_out.notified() => {
                // What the kith caller said, to the phone: the frame the call just played, sent at once.
                // Every frame it played since (two when this task ran late), so that none stands
                // waiting in the bridge.
                loop {
                    bridge.from_call.take(&mut wide);
                    narrow.clear();
                    down.process(&wide, &mut narrow);
                    if let Some(neg) = n.as_ref().filter(|n| !n.on_hold) {
                        if sending.is_none() && let Some(key) = queued_keys.pop_front() {
                            sending = Some(Sending { key, timestamp, elapsed: 0, ends_sent: 0 });
                        }
                        let packet = match (&mut sending, neg.event_pt) {
                            (Some(s), Some(pt)) => {
                                let total = u32::from(s.key.duration_ms) * 8;
                                s.elapsed = (s.elapsed + FRAME_8K as u32).min(total);
                                let end = s.elapsed >= total;
                                let e = rtp::Event { event: s.key.event, end, volume: 10, duration: s.elapsed.min(0xFFFF) as u16 };
                                let marker = s.elapsed == FRAME_8K as u32;
                                let payload = e.encode();
                                let bytes = Packet { marker, payload_type: pt, seq, timestamp: s.timestamp, ssrc, payload: &payload }.encode();
                                if end {
                                    // The end packet goes three times (RFC 4733 section 2.5.1.4).
                                    s.ends_sent += 1;
                                    if s.ends_sent >= 3 {
                                        sending = None;
                                        st.keys_sent += 1;
                                    }
                                }
                                bytes
                            }
                            _ => {
                                // No events taken by the peer: keys cannot reach it.
                                if let Some(s) = sending.take() {
                                    tracing::warn!(event = s.key.event, "the SIP side takes no telephone events: key dropped");
                                }
                                let payload = lc.encode(&narrow);
                                let bytes = Packet { marker: first, payload_type: neg.payload_type, seq, timestamp, ssrc, payload: &payload }.encode();
                                first = false;
                                bytes
                            }
                        };
                        if socket.send_to(&packet, neg.remote).await.is_ok() {
                            st.sent += 1;
                        }
                        seq = seq.wrapping_add(1);
                    }
                    timestamp = timestamp.wrapping_add(FRAME_8K as u32);
                    if bridge.from_call.len() < FRAME_48K {
                        break;
                    }
                }
                stats.send_replace(st.clone());
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = r else { continue };
                let Some(neg) = n.as_ref() else { continue };
                // Only the peer's address may feed the call (its port may differ behind a NAT).
                let Ok(p) = Packet::parse(&buf[..len]) else { st.dropped += 1; continue };
                if from.ip() != neg.remote.ip() {
                    st.dropped += 1;
                    continue;
                }
                if p.payload_type == neg.payload_type {
                    st.received += 1;
                    if !jb.push(p.seq, lc.decode(p.payload)) {
                        st.dropped += 1;
                    }
                } else if Some(p.payload_type) == neg.event_pt
                    && let Some(e) = rtp::Event::parse(p.payload)
                    && e.end
                    && last_event != Some(p.timestamp)
                {
                    last_event = Some(p.timestamp);
                    st.keys_received += 1;
                    let _ = keys_in.try_send(Key { event: e.event, duration_ms: (u32::from(e.duration) / 8).min(u32::from(u16::MAX)) as u16 });
                }
            }
            Some(k) = keys_out.recv() => queued_keys.push_back(k),
            r = agreed.changed(), if sdp_open => match r {
                Ok(()) => {
                    n = agreed.borrow_and_update().clone();
                    // A codec of another rate: resamplers, frames and the jitter buffer follow, and the
                    // kith side's encoder is capped at the new band.
                    if let Some(neg) = &n
                        && neg.codec != lc.codec
                    {
                        tracing::debug!(codec = neg.codec.name(), "SIP leg: codec");
                        lc = LegCodec::new(neg.codec);
                        let f = factor_for(neg.codec.sample_rate());
                        (down, up) = (Down::new(f), Up::new(f));
                        played = vec![0i16; lc.frame()];
                        jb = JitterBuffer::new(lc.frame());
                        bridge.set_band(neg.codec.band_khz());
                    }
                }
                // The SIP session is gone; the media goes on as agreed until the call's owner stops it.
                Err(_) => sdp_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jitter_buffer_reorders_conceals_gaps_and_drops_late_packets() {
        let mut jb = JitterBuffer::default();
        let frame = |v: i16| vec![v; FRAME_8K];
        let mut out = vec![0i16; FRAME_8K];
        assert!(jb.push(65535, frame(1)));
        assert!(!jb.pop(&mut out), "plays only once two packets are held");
        // Across the sequence number's wrap, out of order, with 1 missing.
        assert!(jb.push(2, frame(4)));
        assert!(jb.push(0, frame(2)));
        assert!(jb.pop(&mut out));
        assert_eq!(out[0], 1);
        assert!(jb.pop(&mut out));
        assert_eq!(out[0], 2);
        assert!(jb.pop(&mut out));
        assert_eq!(out[0], 0, "the lost packet is a frame of silence");
        assert!(!jb.push(1, frame(3)), "too late for its turn");
        assert!(jb.pop(&mut out));
        assert_eq!(out[0], 4);
        assert!(!jb.pop(&mut out), "ran dry");
    }
}
