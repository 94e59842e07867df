//! kith-media: what a call needs besides signalling. Sans-IO pieces (the adaptive jitter buffer, the media
//! datagram format, the sender's rate control) and, next to them, the codec and audio I/O.
#![deny(unsafe_code)]

pub mod codec;
pub mod jitter;
pub mod packet;
pub mod rate;

/// Errors of the media layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("malformed media datagram: {0}")]
    BadDatagram(&'static str),
    #[error("opus: {0}")]
    Codec(String),
    #[error("{0}")]
    Config(String),
}
