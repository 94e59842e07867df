//! `kith gateway`: an organization's edge between kith and its SIP phones.
//!
//! Layers, top down: [`b2bua`] (each call a kith call and a SIP call, bridged) on [`leg`] (the SIP leg's
//! RTP media) on the sans-IO pieces: [`sdp`] (offer/answer), [`rtp`] (packets, telephone events),
//! [`g711`] and [`resample`] (the transcoding between 48 kHz Opus audio and 8 kHz G.711). [`config`] reads
//! `gateway.toml`.

pub mod b2bua;
pub mod config;
pub mod g711;
pub mod leg;
pub mod resample;
pub mod rtp;
pub mod sdp;

pub use b2bua::{Gateway, GatewayError};
pub use config::GatewayConfig;
