//! Where a person's device may be reached: an endpoint key with its direct addresses and relays, DHT nodes
//! to join through, and the contact key. Cards carry them, and so do mailbox addresses.

use crate::identity::EndpointKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Where a device may be reached (a card's owner, a mailbox). All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hints {
    /// The QUIC endpoint the owner's device listens on.
    pub endpoint: Option<EndpointKey>,
    /// Direct UDP addresses of that endpoint.
    pub direct: Vec<SocketAddr>,
    /// Relay URLs through which the endpoint is reachable.
    pub relays: Vec<String>,
    /// Mainline DHT nodes the owner knew when issuing the card (not the owner's own): a way into the
    /// DHT for someone whose bootstrap hosts are blocked or unknown.
    pub dht: Vec<SocketAddr>,
    /// The owner's contact key: opens the contacts-only part of their discovery records (their contact
    /// endpoint and addresses). In the card given to contacts only; absent from what strangers get.
    pub contact_key: Option<[u8; 32]>,
}
