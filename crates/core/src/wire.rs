//! The frames of the `kith/1` control stream.
//!
//! On the wire each frame is `u32 length (big endian) | u8 version | u8 kind | postcard payload`, where the
//! length covers everything after itself. Frames are bounded ([`MAX_FRAME_LEN`]); an oversized length is
//! refused before any payload is buffered, and an unknown version or kind is a clear error, never a panic.
//!
//! [`FrameDecoder`] is sans-IO: push whatever bytes arrived, pull whole frames.

use crate::call::CallMsg;
use crate::hello::Hello;
use serde::{Deserialize, Serialize};

/// The wire format version in every frame header.
pub const WIRE_VERSION: u8 = 1;
/// The largest frame accepted, header included.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// The longest message text in bytes (UTF-8).
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// The most sequence numbers one receipt may carry.
pub const MAX_RECEIPT_SEQS: usize = 1024;

/// A chat message: the same frame goes directly (in [`Frame::Message`]) and sealed through mailboxes.
pub use crate::message::MessageFrame;

/// "I have stored these messages of yours" (the delivered receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptFrame {
    pub seqs: Vec<u64>,
}

/// Every frame kith speaks, one versioned enum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Box<Hello>),
    Message(MessageFrame),
    Receipt(ReceiptFrame),
    /// Call signalling (see [`crate::call`]).
    Call(CallMsg),
    /// The owner of a mailbox asks the node that keeps it ([`crate::mailbox::Request`]), over the
    /// owner's authenticated connection; `id` pairs the answer with the question.
    MailboxRequest {
        id: u64,
        request: crate::mailbox::Request,
    },
    MailboxResponse {
        id: u64,
        response: crate::mailbox::Response,
    },
    /// The sender's Olm keys and mailboxes ([`crate::mailbox::MailInfo`]), sent to contacts.
    MailInfo(Box<crate::mailbox::MailInfo>),
}

const KIND_HELLO: u8 = 1;
const KIND_MESSAGE: u8 = 2;
const KIND_RECEIPT: u8 = 3;
const KIND_CALL: u8 = 4;
const KIND_MAILBOX_REQUEST: u8 = 5;
const KIND_MAILBOX_RESPONSE: u8 = 6;
const KIND_MAIL_INFO: u8 = 7;

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("frame is too short to hold a header")]
    TooShort,
    #[error(
        "frame uses wire version {0}, this kith speaks version {WIRE_VERSION}: one side needs an update"
    )]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame")]
    Malformed { kind: &'static str },
    #[error("message text is {len} bytes, more than the {max}-byte limit")]
    TextTooLong { len: usize, max: usize },
    #[error("receipt lists {len} messages, more than the {max} allowed")]
    ReceiptTooLong { len: usize, max: usize },
}

impl Frame {
    fn kind_name(kind: u8) -> &'static str {
        match kind {
            KIND_HELLO => "hello",
            KIND_MESSAGE => "message",
            KIND_RECEIPT => "receipt",
            KIND_CALL => "call",
            KIND_MAILBOX_REQUEST => "mailbox request",
            KIND_MAILBOX_RESPONSE => "mailbox response",
            KIND_MAIL_INFO => "mail info",
            _ => "unknown",
        }
    }

    /// Checks the limits a peer must respect, so an encoder never produces what a decoder refuses.
    pub fn validate(&self) -> Result<(), FrameError> {
        match self {
            Frame::Message(m) if m.text.len() > MAX_TEXT_BYTES => Err(FrameError::TextTooLong {
                len: m.text.len(),
                max: MAX_TEXT_BYTES,
            }),
            Frame::MailInfo(m)
                if m.mailboxes.len() > crate::mailbox::MAX_MAILBOXES
                    || m.mailboxes
                        .iter()
                        .any(|b| b.keys.len() > crate::mailbox::ENDPOINT_PERIODS) =>
            {
                Err(FrameError::Malformed { kind: "mail info" })
            }
            Frame::Receipt(r) if r.seqs.len() > MAX_RECEIPT_SEQS => {
                Err(FrameError::ReceiptTooLong {
                    len: r.seqs.len(),
                    max: MAX_RECEIPT_SEQS,
                })
            }
            _ => Ok(()),
        }
    }

    /// Encodes the frame with its length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        self.validate()?;
        let (kind, payload) = match self {
            Frame::Hello(h) => (KIND_HELLO, postcard::to_allocvec(h)),
            Frame::Message(m) => (KIND_MESSAGE, postcard::to_allocvec(m)),
            Frame::Receipt(r) => (KIND_RECEIPT, postcard::to_allocvec(r)),
            Frame::Call(c) => (KIND_CALL, postcard::to_allocvec(c)),
            Frame::MailboxRequest { id, request } => {
                (KIND_MAILBOX_REQUEST, postcard::to_allocvec(&(id, request)))
            }
            Frame::MailboxResponse { id, response } => (
                KIND_MAILBOX_RESPONSE,
                postcard::to_allocvec(&(id, response)),
            ),
            Frame::MailInfo(m) => (KIND_MAIL_INFO, postcard::to_allocvec(m)),
        };
        let payload = payload.map_err(|_| FrameError::Malformed {
            kind: Self::kind_name(kind),
        })?;
        let len = payload.len() + 2;
        if len + 4 > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len: len + 4,
                max: MAX_FRAME_LEN,
            });
        }
        let mut out = Vec::with_capacity(len + 4);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(WIRE_VERSION);
        out.push(kind);
        out.extend(payload);
        Ok(out)
    }

    /// Decodes one frame body (everything after the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
        let [version, kind, payload @ ..] = body else {
            return Err(FrameError::TooShort);
        };
        if *version != WIRE_VERSION {
            return Err(FrameError::UnsupportedVersion(*version));
        }
        fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8], kind: u8) -> Result<T, FrameError> {
            match postcard::take_from_bytes(payload) {
                Ok((v, [])) => Ok(v),
                _ => Err(FrameError::Malformed {
                    kind: Frame::kind_name(kind),
                }),
            }
        }
        let frame = match *kind {
            KIND_HELLO => Frame::Hello(Box::new(parse(payload, *kind)?)),
            KIND_MESSAGE => Frame::Message(parse(payload, *kind)?),
            KIND_RECEIPT => Frame::Receipt(parse(payload, *kind)?),
            KIND_CALL => Frame::Call(parse(payload, *kind)?),
            KIND_MAILBOX_REQUEST => {
                let (id, request) = parse(payload, *kind)?;
                Frame::MailboxRequest { id, request }
            }
            KIND_MAILBOX_RESPONSE => {
                let (id, response) = parse(payload, *kind)?;
                Frame::MailboxResponse { id, response }
            }
            KIND_MAIL_INFO => Frame::MailInfo(Box::new(parse(payload, *kind)?)),
            other => return Err(FrameError::UnknownKind(other)),
        };
        frame.validate()?;
        Ok(frame)
    }
}

/// Reassembles frames from a byte stream. Call [`FrameDecoder::push`] with received bytes, then
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. After an error the stream is unusable: close it.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let whole = whole_frame_len(len)?;
        if self.buf.len() < whole {
            return Ok(None);
        }
        let frame = Frame::decode_body(&self.buf[4..whole]);
        self.buf.drain(..whole);
        frame.map(Some)
    }
}

/// The length of a frame whose prefix says `len`, prefix included, if it is within [`MAX_FRAME_LEN`].
/// Checked: on a 32-bit target a prefix near `u32::MAX` would wrap `len + 4` round to a small number.
fn whole_frame_len(len: usize) -> Result<usize, FrameError> {
    match len.checked_add(4) {
        Some(whole) if whole <= MAX_FRAME_LEN => Ok(whole),
        _ => Err(FrameError::TooLarge {
            len: len.saturating_add(4),
            max: MAX_FRAME_LEN,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 21, point 7: the length a prefix declares is added to in checked arithmetic. On a 32-bit
    /// target `usize` is `u32`, so a prefix near `u32::MAX` is a `usize` near its maximum there: this
    /// overflowed (a panic in debug builds, a wrapped length in release) before the check.
    #[test]
    fn a_prefix_at_the_top_of_usize_is_too_large_not_an_overflow() {
        for len in [
            usize::MAX,
            usize::MAX - 3,
            u32::MAX as usize,
            MAX_FRAME_LEN - 3,
        ] {
            assert!(
                matches!(whole_frame_len(len), Err(FrameError::TooLarge { .. })),
                "{len}"
            );
        }
        assert_eq!(whole_frame_len(MAX_FRAME_LEN - 4).unwrap(), MAX_FRAME_LEN);
        let mut d = FrameDecoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn round_trip_split_anywhere() {
        let frames = vec![
            Frame::Message(MessageFrame {
                seq: 7,
                id: [3; 16],
                sent_at_ms: 99,
                text: "hej ✓".into(),
            }),
            Frame::Receipt(ReceiptFrame {
                seqs: vec![1, 2, 3],
            }),
            Frame::MailboxRequest {
                id: 4,
                request: crate::mailbox::Request::Fetch { after: 9, max: 2 },
            },
            Frame::MailboxResponse {
                id: 4,
                response: crate::mailbox::Response::Items {
                    items: vec![crate::mailbox::Held {
                        id: 10,
                        token: [1; 32],
                        envelope: vec![2; 40],
                        at_ms: 5,
                    }],
                    more: false,
                },
            },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(|f| f.encode().unwrap()).collect();
        for split in 0..bytes.len() {
            let mut d = FrameDecoder::new();
            let mut got = vec![];
            d.push(&bytes[..split]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            d.push(&bytes[split..]);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
            assert_eq!(got, frames);
        }
    }

    #[test]
    fn refuses_bad_frames_clearly() {
        let mut d = FrameDecoder::new();
        d.push(&(MAX_FRAME_LEN as u32).to_be_bytes());
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge { .. })));
        assert_eq!(
            Frame::decode_body(&[WIRE_VERSION, 200, 0]),
            Err(FrameError::UnknownKind(200))
        );
        assert_eq!(
            Frame::decode_body(&[9, KIND_RECEIPT, 0]),
            Err(FrameError::UnsupportedVersion(9))
        );
        assert_eq!(
            Frame::decode_body(&[WIRE_VERSION]),
            Err(FrameError::TooShort)
        );
        assert_eq!(
            Frame::decode_body(&[WIRE_VERSION, KIND_MESSAGE, 1]),
            Err(FrameError::Malformed { kind: "message" })
        );
        let long = Frame::Message(MessageFrame {
            seq: 1,
            id: [0; 16],
            sent_at_ms: 0,
            text: "x".repeat(MAX_TEXT_BYTES + 1),
        });
        assert!(matches!(long.encode(), Err(FrameError::TextTooLong { .. })));
        // Trailing garbage after a valid payload is refused too.
        let mut body = Frame::Receipt(ReceiptFrame { seqs: vec![1] })
            .encode()
            .unwrap()[4..]
            .to_vec();
        body.push(0);
        assert_eq!(
            Frame::decode_body(&body),
            Err(FrameError::Malformed { kind: "receipt" })
        );
    }

    proptest! {
        #[test]
        fn decoder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut d = FrameDecoder::new();
            for c in chunks {
                d.push(&c);
                while let Ok(Some(_)) = d.next_frame() {}
            }
        }

        #[test]
        fn message_round_trip(seq in any::<u64>(), id in any::<[u8; 16]>(), at in any::<u64>(), text in "\\PC{0,200}") {
            let f = Frame::Message(MessageFrame { seq, id, sent_at_ms: at, text });
            let bytes = f.encode().unwrap();
            prop_assert_eq!(Frame::decode_body(&bytes[4..]).unwrap(), f);
        }
    }
}
