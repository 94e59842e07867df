//! RTP (RFC 3550) packets as the gateway's SIP leg sends and reads them, and telephone events (RFC 4733):
//! parsing never panics and never trusts a length it did not check.

/// A parsed RTP packet, borrowing its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than an RTP header")]
    Short,
    #[error("not RTP version 2")]
    Version,
    #[error("header, extension or padding longer than the packet")]
    Length,
}

impl<'a> Packet<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, RtpError> {
        if b.len() < 12 {
            return Err(RtpError::Short);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let padding = b[0] & 0x20 != 0;
        let extension = b[0] & 0x10 != 0;
        let csrcs = usize::from(b[0] & 0x0F);
        let mut start = 12 + 4 * csrcs;
        if extension {
            let words = b
                .get(start + 2..start + 4)
                .ok_or(RtpError::Length)
                .map(|w| usize::from(u16::from_be_bytes([w[0], w[1]])))?;
            start += 4 + 4 * words;
        }
        let mut end = b.len();
        if padding {
            let pad = usize::from(*b.last().ok_or(RtpError::Length)?);
            end = end.checked_sub(pad).ok_or(RtpError::Length)?;
        }
        if start > end {
            return Err(RtpError::Length);
        }
        Ok(Self {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7F,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[start..end],
        })
    }

    /// The packet's bytes (no CSRCs, no extension, no padding).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
        out
    }
}

/// A telephone event (RFC 4733 section 2.3): a key, whether it ended, its volume and its duration so far
/// in timestamp units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl Event {
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b: [u8; 4] = p.get(..4)?.try_into().ok()?;
        Some(Self {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3F,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    pub fn encode(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_and_events_round_trip_and_bad_lengths_are_refused() {
        let payload = [1u8, 2, 3];
        let p = Packet {
            marker: true,
            payload_type: 0,
            seq: 65535,
            timestamp: 0xDEAD_BEEF,
            ssrc: 7,
            payload: &payload,
        };
        let bytes = p.encode();
        assert_eq!(Packet::parse(&bytes), Ok(p));
        // One CSRC and a one-word extension, then padding of 2.
        let mut b = vec![
            0xB1, 8, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 9, 9, 9, 9, 0xBE, 0xDE, 0, 1, 5, 5, 5, 5,
        ];
        b.extend([0xAA, 0xBB, 0, 2]);
        let q = Packet::parse(&b).unwrap();
        assert_eq!(q.payload, &[0xAA, 0xBB]);
        assert_eq!(q.payload_type, 8);
        assert_eq!(Packet::parse(&b[..11]), Err(RtpError::Short));
        assert_eq!(Packet::parse(&[0x40; 12]), Err(RtpError::Version));
        let mut over = bytes.clone();
        over[0] |= 0x20;
        *over.last_mut().unwrap() = 200;
        assert_eq!(Packet::parse(&over), Err(RtpError::Length));
        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF];
        assert_eq!(Packet::parse(&ext), Err(RtpError::Length));
        ext.truncate(13);
        assert_eq!(Packet::parse(&ext), Err(RtpError::Length));
        let e = Event {
            event: 11,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(Event::parse(&e.encode()), Some(e));
        assert_eq!(Event::parse(&[1, 2, 3]), None);
    }
}
