//! kith-core: the sans-IO heart of kith.
//!
//! What it is: identities and their certificates ([`identity`]), the user-facing address and contact card
//! formats ([`address`], [`card`]), the wire frames spoken over a `kith/1` QUIC stream ([`wire`]), the hello
//! that proves the chain account -> device -> endpoint ([`hello`]), the reliable in-order delivery state
//! machine ([`delivery`]), safety numbers ([`safety`]) and the two-layer sealing of what may rest in a
//! mailbox ([`seal`]: an Olm double ratchet per pair of devices inside an envelope only the two accounts
//! can open).
//!
//! What it does not do: no sockets, no clock reads, no global RNG, no storage. Every entry point that needs
//! time takes it as an argument, every one that needs randomness takes an RNG, so the whole protocol is
//! tested deterministically. The networking driver (`kith-net`), the store (`kith-store`) and the daemon
//! (`kith-node`) do the I/O.
//!
//! A peer's bad input is a value (an error enum naming the cause), never a panic.
#![forbid(unsafe_code)]

pub mod address;
pub mod blind;
pub mod call;
pub mod card;
pub mod delivery;
pub mod hello;
pub mod hints;
pub mod identity;
pub mod mailbox;
pub mod message;
pub mod org;
pub mod record;
pub mod safety;
pub mod seal;
pub mod wire;
pub mod zbase32;

pub use address::{Address, AddressError};
pub use card::{CardError, ContactCard, ParsedContact};
pub use hints::Hints;
pub use identity::{
    AccountKey, AccountSecret, DeviceCert, DeviceKey, DeviceSecret, EndpointCert, EndpointKey,
    Signature,
};
