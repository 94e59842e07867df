//! The SDP of the SIP leg (RFC 3264 offer/answer): what the gateway offers (G.722, G.711 mu-law and A-law
//! over RTP, telephone events), and what it takes from the PBX's offer or answer.

use bytesstr::BytesStr;
use ezk_sdp_types::{Direction, MediaType, SessionDescription, TaggedAddress, TransportProtocol};
use std::net::{IpAddr, SocketAddr};

/// The codecs of the SIP leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// G.711 mu-law (payload type 0).
    Pcmu,
    /// G.711 A-law (payload type 8).
    Pcma,
    /// G.722 (payload type 9): wideband, 16 kHz audio at 64 kbit/s. Its RTP clock is 8000 all the same
    /// (RFC 3551, section 4.5.2).
    G722,
}

/// What the gateway offers, best first: wideband where the phone has it, else telephone audio.
pub const OFFER: [Codec; 3] = [Codec::G722, Codec::Pcmu, Codec::Pcma];

impl Codec {
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// The audio's sample rate (not the RTP clock: 8000 for all three).
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16_000,
        }
    }

    /// The audio band it carries, in kHz: what the kith side's encoder is capped at.
    pub fn band_khz(self) -> u8 {
        match self {
            Codec::Pcmu | Codec::Pcma => crate::g711::BAND_KHZ,
            // Opus's wideband (SILK at 16 kHz): G.722 carries up to 7 kHz.
            Codec::G722 => 8,
        }
    }

    fn from_name(name: &str, clock: u32) -> Option<Self> {
        match (name.to_ascii_uppercase().as_str(), clock) {
            ("PCMU", 8000) => Some(Codec::Pcmu),
            ("PCMA", 8000) => Some(Codec::Pcma),
            ("G722", 8000) => Some(Codec::G722),
            _ => None,
        }
    }

    fn from_static(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }
}

/// The payload type the gateway offers for telephone events.
pub const EVENT_PT: u8 = 101;

/// What was agreed for the SIP leg's media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP.
    pub remote: SocketAddr,
    pub codec: Codec,
    /// The payload type the peer uses for `codec` (its own number when dynamic).
    pub payload_type: u8,
    /// The peer's payload type for telephone events, if it takes them.
    pub event_pt: Option<u8>,
    /// The peer asked not to receive media for now (hold: sendonly, inactive, or the 0.0.0.0 address).
    pub on_hold: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("the SDP has no audio stream over plain RTP (RTP/AVP)")]
    NoAudio,
    #[error("no codec in common: the gateway speaks G722, PCMU and PCMA")]
    NoCodec,
    #[error("the SDP gives no address for the audio")]
    NoAddress,
    #[error("the SDP does not parse: {0}")]
    Parse(String),
}

/// Parses SDP text.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    SessionDescription::parse(&BytesStr::from(text)).map_err(|e| SdpError::Parse(e.to_string()))
}

/// The gateway's SDP: one audio stream at `addr:port`, `codecs` in order of preference, with telephone
/// events. `version` goes up with each new offer of the session.
pub fn describe(
    addr: IpAddr,
    port: u16,
    codecs: &[Codec],
    session: u64,
    version: u64,
    direction: &str,
) -> String {
    let ip = match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let pts: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .chain([EVENT_PT.to_string()])
        .collect();
    let mut s = format!(
        "v=0\r\no=kith {session} {version} IN {ip} {addr}\r\ns=kith gateway\r\nc=IN {ip} {addr}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for c in codecs {
        s.push_str(&format!(
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.name()
        ));
    }
    s.push_str(&format!(
        "a=rtpmap:{EVENT_PT} telephone-event/8000\r\na=fmtp:{EVENT_PT} 0-15\r\na=ptime:20\r\na={direction}\r\n"
    ));
    s
}

/// What the peer's SDP (an offer or an answer) says for the SIP leg: its first audio stream over RTP/AVP,
/// and in it the first codec of the peer's list the gateway speaks.
pub fn negotiate(sdp: &SessionDescription) -> Result<Negotiated, SdpError> {
    let m = sdp
        .media_descriptions
        .iter()
        .find(|m| {
            m.media.media_type == MediaType::Audio
                && m.media.port != 0
                && matches!(m.media.proto, TransportProtocol::RtpAvp)
        })
        .ok_or(SdpError::NoAudio)?;
    let (codec, payload_type) = m
        .media
        .fmts
        .iter()
        .find_map(|&pt| {
            let mapped = m.rtpmap.iter().find(|r| r.payload == pt);
            let codec = match mapped {
                Some(r) => Codec::from_name(&r.encoding, r.clock_rate),
                None => Codec::from_static(pt),
            }?;
            Some((codec, pt))
        })
        .ok_or(SdpError::NoCodec)?;
    let event_pt = m
        .rtpmap
        .iter()
        .find(|r| r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == 8000)
        .map(|r| r.payload);
    let conn = m
        .connection
        .as_ref()
        .or(sdp.connection.as_ref())
        .ok_or(SdpError::NoAddress)?;
    let ip: IpAddr = match &conn.address {
        TaggedAddress::IP4(a) => (*a).into(),
        TaggedAddress::IP6(a) => (*a).into(),
        TaggedAddress::IP4FQDN(_) | TaggedAddress::IP6FQDN(_) => return Err(SdpError::NoAddress),
    };
    let direction = match m.direction {
        Direction::SendRecv => sdp.direction,
        d => d,
    };
    Ok(Negotiated {
        remote: SocketAddr::new(ip, m.media.port),
        codec,
        payload_type,
        event_pt,
        on_hold: ip.is_unspecified()
            || matches!(direction, Direction::SendOnly | Direction::Inactive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_and_the_peers_first_common_codec_is_taken() {
        let ours = describe(
            "127.0.0.1".parse().unwrap(),
            30000,
            &[Codec::Pcmu, Codec::Pcma],
            1,
            1,
            "sendrecv",
        );
        let n = negotiate(&parse(&ours).unwrap()).unwrap();
        assert_eq!(n.remote, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(
            (n.codec, n.payload_type, n.event_pt, n.on_hold),
            (Codec::Pcmu, 0, Some(101), false)
        );
        // A phone preferring Opus and A-law, events at 96, media-level address, on hold.
        let phone = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 111 8 0 96\r\n\
                     c=IN IP4 10.0.0.2\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n";
        let n = negotiate(&parse(phone).unwrap()).unwrap();
        assert_eq!(n.remote, "10.0.0.2:4000".parse().unwrap());
        assert_eq!(
            (n.codec, n.payload_type, n.event_pt, n.on_hold),
            (Codec::Pcma, 8, Some(96), true)
        );
        let video = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=video 4000 RTP/AVP 96\r\n";
        assert_eq!(negotiate(&parse(video).unwrap()), Err(SdpError::NoAudio));
        let g729 = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(negotiate(&parse(g729).unwrap()), Err(SdpError::NoCodec));
        // A wideband phone: G.722 by its static number or by name, its RTP clock 8000.
        for m in [
            "m=audio 4000 RTP/AVP 9 0",
            "m=audio 4000 RTP/AVP 9 0\r\na=rtpmap:9 G722/8000",
        ] {
            let g722 = format!(
                "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n{m}\r\n"
            );
            let n = negotiate(&parse(&g722).unwrap()).unwrap();
            assert_eq!((n.codec, n.payload_type), (Codec::G722, 9));
            assert_eq!((n.codec.sample_rate(), n.codec.band_khz()), (16_000, 8));
        }
        let ours = describe(
            "127.0.0.1".parse().unwrap(),
            30000,
            &OFFER,
            1,
            1,
            "sendrecv",
        );
        assert!(
            ours.contains("RTP/AVP 9 0 8 101") && ours.contains("a=rtpmap:9 G722/8000"),
            "{ours}"
        );
    }
}
