//! A chat message as both paths carry it: directly on a connection (`crate::wire`) and sealed in a
//! mailbox letter (`crate::mailbox`). Its own module, so that neither of those two depends on the other.

use serde::{Deserialize, Serialize};

/// A chat message on the wire. `seq` orders messages per (sender device, recipient) conversation;
/// `id` is the sender's globally unique message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    pub seq: u64,
    pub id: [u8; 16],
    /// Sender's clock, Unix milliseconds (for display only; order comes from `seq`).
    pub sent_at_ms: u64,
    pub text: String,
}
