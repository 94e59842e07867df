//! Media datagrams: one Opus frame per QUIC datagram with a small header, and receiver reports.
//!
//! ```text
//! audio:  u8 kind=1 | u32 call tag | u32 seq | u32 timestamp (48 kHz samples) | u8 flags | Opus frame
//!         with FLAG_RED: ... | u8 flags | u8 n | n x (u8 back, u16 length) | n earlier frames | Opus frame
//! report: u8 kind=2 | u32 call tag | u32 highest seq | u32 received | u32 lost | u32 late
//!         | u32 fec | u32 concealed | u16 jitter (0.1 ms) | u16 delay (ms) | u16 loss (0.01 %, last interval)
//!         | u32 echo timestamp (ms, of the last audio seen) | u32 echo hold (ms since then)
//! ```
//! All integers big endian. The call tag is the first four bytes of the call id, so a datagram of an older
//! call on the same connection is recognised and dropped.
//!
//! As in RTP, `seq` counts the packets sent and `timestamp` places the frame in the sender's audio: in a
//! pause the sender sends a frame only every 400 ms (DTX), so the timestamp jumps while `seq` does not,
//! and a gap in `seq` is loss. A copy's `back` counts frames (timestamps), not packets.

use crate::MediaError;

pub const KIND_AUDIO: u8 = 1;
pub const KIND_REPORT: u8 = 2;
pub const AUDIO_HEADER: usize = 14;
pub const REPORT_LEN: usize = 43;
/// Flag: the frame carries in-band FEC (LBRR) for the previous frame.
pub const FLAG_FEC: u8 = 1;
/// Flag: the datagram also carries whole copies of earlier frames (redundancy, as RFC 2198 does for RTP).
pub const FLAG_RED: u8 = 2;
/// Flag: the frame is a comfort-noise refresh, sent while the sender's encoder is in DTX (a pause); the
/// pause goes on after it. The receiver need not wake for it on its own playout clock (see
/// `kith-node`'s media loop); a receiver that does not know the flag plays it as any frame.
pub const FLAG_CN: u8 = 4;
/// At most this many earlier frames ride along.
pub const MAX_REDUNDANT: usize = 3;

/// Extends a 32-bit counter that wraps (a sequence number, a timestamp) to 64 bits, for values that arrive
/// within 2^31 of the highest one seen (in order, or reordered by less than that).
#[derive(Debug, Default, Clone)]
pub struct Unwrap {
    highest: Option<u64>,
}

impl Unwrap {
    pub fn extend(&mut self, v: u32) -> u64 {
        let Some(h) = self.highest else {
            self.highest = Some(u64::from(v));
            return u64::from(v);
        };
        let step = i64::from(v.wrapping_sub(h as u32) as i32);
        let x = h.saturating_add_signed(step);
        self.highest = Some(h.max(x));
        x
    }
}

pub fn call_tag(call: &[u8; 16]) -> u32 {
    u32::from_be_bytes([call[0], call[1], call[2], call[3]])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    pub tag: u32,
    pub seq: u32,
    pub timestamp: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
    /// Copies of earlier frames: (how many frames back, that frame's Opus packet). Encoded with
    /// [`FLAG_RED`]; at most [`MAX_REDUNDANT`].
    pub redundant: Vec<(u8, Vec<u8>)>,
}

impl AudioPacket {
    pub fn encode(&self) -> Vec<u8> {
        let red = &self.redundant[..self.redundant.len().min(MAX_REDUNDANT)];
        let mut out = Vec::with_capacity(
            AUDIO_HEADER
                + 1
                + self.payload.len()
                + red.iter().map(|r| 3 + r.1.len()).sum::<usize>(),
        );
        out.push(KIND_AUDIO);
        out.extend_from_slice(&self.tag.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        if red.is_empty() {
            out.push(self.flags & !FLAG_RED);
        } else {
            out.push(self.flags | FLAG_RED);
            out.push(red.len() as u8);
            for (back, p) in red {
                out.push(*back);
                out.extend_from_slice(&(p.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
            }
            for (_, p) in red {
                out.extend_from_slice(&p[..p.len().min(usize::from(u16::MAX))]);
            }
        }
        out.extend_from_slice(&self.payload);
        out
    }

    fn decode(b: &[u8]) -> Result<Self, MediaError> {
        let u32_at = |i: usize| -> u32 { u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) };
        let flags = b[13];
        let mut rest = &b[AUDIO_HEADER..];
        let mut redundant = Vec::new();
        if flags & FLAG_RED != 0 {
            let bad = MediaError::BadDatagram("malformed redundancy");
            let (&n, r) = rest.split_first().ok_or(bad.clone())?;
            let n = usize::from(n);
            if n == 0 || n > MAX_REDUNDANT || r.len() < 3 * n {
                return Err(bad);
            }
            let (heads, mut body) = r.split_at(3 * n);
            for h in heads.chunks(3) {
                let len = usize::from(u16::from_be_bytes([h[1], h[2]]));
                if h[0] == 0 || len == 0 || body.len() < len {
                    return Err(bad);
                }
                let (p, after) = body.split_at(len);
                redundant.push((h[0], p.to_vec()));
                body = after;
            }
            rest = body;
        }
        if rest.is_empty() {
            return Err(MediaError::BadDatagram("truncated"));
        }
        Ok(AudioPacket {
            tag: u32_at(1),
            seq: u32_at(5),
            timestamp: u32_at(9),
            flags,
            payload: rest.to_vec(),
            redundant,
        })
    }
}

/// A receiver report: what arrived of the peer's audio, and a timestamp echo for the round-trip time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub tag: u32,
    pub highest_seq: u32,
    pub received: u32,
    pub lost: u32,
    pub late: u32,
    pub fec: u32,
    pub concealed: u32,
    /// Interarrival jitter, tenths of a millisecond.
    pub jitter_tenth_ms: u16,
    /// Jitter-buffer delay, ms.
    pub delay_ms: u16,
    /// Loss over the last report interval, hundredths of a percent.
    pub interval_loss_bp: u16,
    /// The sender's send time (ms, its own clock) of the last audio packet seen, and how long ago that was.
    pub echo_ms: u32,
    pub echo_hold_ms: u32,
}

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPORT_LEN);
        out.push(KIND_REPORT);
        for v in [
            self.tag,
            self.highest_seq,
            self.received,
            self.lost,
            self.late,
            self.fec,
            self.concealed,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for v in [self.jitter_tenth_ms, self.delay_ms, self.interval_loss_bp] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.echo_ms.to_be_bytes());
        out.extend_from_slice(&self.echo_hold_ms.to_be_bytes());
        debug_assert_eq!(out.len(), REPORT_LEN);
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    Audio(AudioPacket),
    Report(Report),
}

impl Datagram {
    /// Parses a datagram from the peer. Never panics; anything malformed is an error to count and drop.
    pub fn decode(b: &[u8]) -> Result<Self, MediaError> {
        let u32_at = |i: usize| -> u32 { u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) };
        let u16_at = |i: usize| -> u16 { u16::from_be_bytes([b[i], b[i + 1]]) };
        match b.first() {
            Some(&KIND_AUDIO) if b.len() > AUDIO_HEADER => AudioPacket::decode(b).map(Self::Audio),
            Some(&KIND_REPORT) if b.len() == REPORT_LEN => Ok(Self::Report(Report {
                tag: u32_at(1),
                highest_seq: u32_at(5),
                received: u32_at(9),
                lost: u32_at(13),
                late: u32_at(17),
                fec: u32_at(21),
                concealed: u32_at(25),
                jitter_tenth_ms: u16_at(29),
                delay_ms: u16_at(31),
                interval_loss_bp: u16_at(33),
                echo_ms: u32_at(35),
                echo_hold_ms: u32_at(39),
            })),
            Some(&KIND_AUDIO) | Some(&KIND_REPORT) => Err(MediaError::BadDatagram("truncated")),
            Some(_) => Err(MediaError::BadDatagram("unknown kind")),
            None => Err(MediaError::BadDatagram("empty")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counters_extend_across_their_wrap_and_reordering() {
        let mut u = Unwrap::default();
        let near = u32::MAX - 1;
        assert_eq!(u.extend(near), u64::from(near));
        // Past the wrap, a late one from before it, and on.
        assert_eq!(u.extend(1), (1 << 32) + 1);
        assert_eq!(u.extend(u32::MAX), u64::from(u32::MAX));
        assert_eq!(u.extend(960), (1 << 32) + 960);
        // Late by less than it can tell from the start: stays at 0 rather than wrapping below it.
        let mut v = Unwrap::default();
        assert_eq!(v.extend(5), 5);
        assert_eq!(v.extend(u32::MAX - 3), 0);
        assert_eq!(v.extend(6), 6);
    }

    #[test]
    fn round_trips() {
        let a = AudioPacket {
            tag: 7,
            seq: 123_456,
            timestamp: 960 * 5,
            flags: FLAG_FEC,
            payload: vec![1, 2, 3],
            redundant: vec![],
        };
        assert_eq!(
            Datagram::decode(&a.encode()).unwrap(),
            Datagram::Audio(a.clone())
        );
        let red = AudioPacket {
            flags: FLAG_FEC | FLAG_RED,
            redundant: vec![(1, vec![9; 70]), (2, vec![8; 3])],
            ..a
        };
        let bytes = red.encode();
        assert_eq!(bytes.len(), AUDIO_HEADER + 1 + 6 + 73 + 3);
        assert_eq!(Datagram::decode(&bytes).unwrap(), Datagram::Audio(red));
        // Lengths that run past the end, a zero count, a frame 0 back, no primary frame: refused.
        for bad in [
            [&bytes[..AUDIO_HEADER], &[1, 1, 0, 200, 5]].concat(),
            [&bytes[..AUDIO_HEADER], &[0, 5, 5]].concat(),
            [&bytes[..AUDIO_HEADER], &[1, 0, 0, 1, 7, 5]].concat(),
            [&bytes[..AUDIO_HEADER], &[1, 1, 0, 1, 7]].concat(),
        ] {
            assert!(Datagram::decode(&bad).is_err(), "{bad:?}");
        }
        let r = Report {
            tag: 7,
            highest_seq: 99,
            received: 90,
            lost: 9,
            late: 1,
            fec: 5,
            concealed: 4,
            jitter_tenth_ms: 123,
            delay_ms: 40,
            interval_loss_bp: 1000,
            echo_ms: 5555,
            echo_hold_ms: 12,
        };
        assert_eq!(r.encode().len(), REPORT_LEN);
        assert_eq!(Datagram::decode(&r.encode()).unwrap(), Datagram::Report(r));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Datagram::decode(&b);
        }
    }
}
