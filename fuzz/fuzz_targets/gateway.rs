//! What the gateway reads from the SIP side: SIP datagrams (ezk's parse path for a UDP message: message
//! line, header lines, then the typed headers every transaction reads), SDP offers and answers, RTP
//! packets (their payload decoded as each of the leg's codecs: G.722, PCMU, PCMA) and telephone events, and
//! `gateway.toml`. The first byte picks the parser.
//!
//! Invariants: nothing panics; an RTP packet that parses encodes back to a packet that parses to the same
//! header and payload; a telephone event round-trips; what SDP negotiation accepts names a codec the
//! gateway speaks, at an address with a port.
#![no_main]

use bytes::Bytes;
use ezk_sip_types::header::typed::{CSeq, CallID, Contact, ContentLength, FromTo, Via};
use ezk_sip_types::_private_reexport::nom::Finish;
use ezk_sip_types::msg::{Line, MessageLine, PullParser};
use ezk_sip_types::parse::Parse;
use ezk_sip_types::{Headers, Name};
use kith_gateway::{rtp, sdp};
use libfuzzer_sys::fuzz_target;

fn sip(bytes: &[u8]) {
    let buffer = Bytes::copy_from_slice(bytes);
    let mut parser = PullParser::new(&buffer, 0);
    let mut first = true;
    let mut headers = Headers::new();
    for item in &mut parser {
        let Ok(line) = item else { return };
        let Ok(line) = std::str::from_utf8(line) else { return };
        if first {
            if MessageLine::parse(&buffer)(line).is_err() {
                return;
            }
            first = false;
        } else {
            match Line::parse(&buffer, line).finish() {
                Ok((_, l)) => headers.insert(l.name, l.value),
                Err(_) => return,
            }
        }
    }
    let _ = parser.head_end();
    let _ = headers.get::<FromTo>(Name::FROM);
    let _ = headers.get::<FromTo>(Name::TO);
    let _ = headers.get_named::<Vec<Via>>();
    let _ = headers.get_named::<CSeq>();
    let _ = headers.get_named::<CallID>();
    let _ = headers.get_named::<Vec<Contact>>();
    let _ = headers.get_named::<ContentLength>();
}

fn seeds() -> Vec<Vec<u8>> {
    let offer = sdp::describe(
        "127.0.0.1".parse().unwrap(),
        30000,
        &sdp::OFFER,
        1,
        1,
        "sendrecv",
    );
    let invite = format!(
        "INVITE sip:200@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\n\
         From: \"Phone\" <sip:101@127.0.0.1>;tag=1\r\nTo: <sip:200@127.0.0.1>\r\nCall-ID: abc@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:101@127.0.0.1:5090>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    let payload = [0xFFu8; 160];
    let packet = rtp::Packet { marker: true, payload_type: 0, seq: 1, timestamp: 160, ssrc: 7, payload: &payload }.encode();
    let event = rtp::Event { event: 11, end: true, volume: 10, duration: 800 }.encode();
    let config = b"[sip]\nlisten = \"127.0.0.1:5070\"\nregistrar = \"sip:127.0.0.1:5060\"\nuser = \"gw\"\npassword = \"pw\"\npbx = [\"127.0.0.1\"]\n[services]\nsupport = [\"sip:support@127.0.0.1\"]\n[dialplan]\n\"200\" = \"alice\"\n";
    let with = |tag: u8, body: &[u8]| [&[tag][..], body].concat();
    vec![
        with(0, invite.as_bytes()),
        with(1, offer.as_bytes()),
        with(2, &packet),
        with(3, &event),
        with(4, config),
    ]
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("gateway", seeds); },
    |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 5 {
        0 => sip(rest),
        1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let Ok(s) = sdp::parse(text) else { return };
            if let Ok(n) = sdp::negotiate(&s) {
                assert_ne!(n.remote.port(), 0, "a stream without a port was taken");
                assert!(sdp::OFFER.contains(&n.codec));
            }
        }
        2 => {
            let Ok(p) = rtp::Packet::parse(rest) else { return };
            let bytes = p.encode();
            let q = rtp::Packet::parse(&bytes).expect("an encoded packet parses");
            assert_eq!((q.marker, q.payload_type, q.seq, q.timestamp, q.ssrc, q.payload), (p.marker, p.payload_type, p.seq, p.timestamp, p.ssrc, p.payload));
            // Whatever a phone sends decodes to audio of the codec's rate: two samples a byte for G.722.
            for codec in sdp::OFFER {
                let audio = kith_gateway::leg::decode_payload(codec, p.payload);
                let per_byte = (codec.sample_rate() / 8000) as usize;
                assert_eq!(audio.len(), p.payload.len() * per_byte, "{codec:?}");
            }
        }
        3 => {
            if let Some(e) = rtp::Event::parse(rest) {
                let again = rtp::Event::parse(&e.encode()).expect("an encoded event parses");
                assert_eq!((again.event, again.end, again.duration), (e.event, e.end, e.duration));
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = kith_gateway::GatewayConfig::parse(text);
            }
        }
    }
});
