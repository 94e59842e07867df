//! Events the daemon publishes on its event stream (`GET /v1/events`, server-sent events).

use kith_store::MessageState;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A message became visible in a chat (or in a contact request).
    Message {
        from: String,
        address: String,
        seq: u64,
        id: String,
        text: String,
        sent_at_ms: u64,
        request: bool,
    },
    /// One of our messages changed state.
    MessageState {
        to: String,
        seq: u64,
        state: MessageState,
    },
    /// A stranger's message arrived as a contact request.
    Request { name: String, address: String },
    /// A non-contact connected while requests are off, and was refused.
    RequestRefused { address: String },
    /// A device that speaks for an organization's account but is not on the organization's list of
    /// gateways (revoked) connected or answered, and was refused.
    GatewayRefused {
        domain: String,
        device: String,
        reason: String,
    },
    /// This node's discovery record for `period` was stored in the DHT.
    RecordPublished {
        period: u64,
        seq: i64,
        /// How many DHT nodes stored it (fewer than 8: published again soon).
        stored_at: u32,
    },
    /// Our card was issued again (endpoint, relays, contact key, Olm keys or mailboxes changed): `GET /v1/card` gives
    /// the new one. `mailboxes`: how many it names; `keyed`: of those, how many with endpoint keys for the
    /// coming periods.
    CardChanged { mailboxes: usize, keyed: usize },
    /// A new discovery period began and the node now listens with that period's endpoint key.
    EndpointRotated { period: u64 },
    /// The node started using a relay it found (DHT announcement or a contact's record).
    RelayAdded { url: String, rtt_ms: u64 },
    /// Someone calls (a contact: strangers' calls are refused without ringing). `verified`: the user
    /// confirmed the safety number with them and no key changed since.
    CallIncoming {
        call: String,
        from: String,
        address: String,
        verified: bool,
        /// At a gateway: the service called.
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// The peer pressed a key in the call (`0-9 * # A-D`).
    CallDtmf {
        call: String,
        key: String,
        duration_ms: u16,
    },
    /// The peer put the call on hold (`held`: an organization's phone did, through its gateway), or took
    /// it off.
    CallHeld {
        call: String,
        with: String,
        held: bool,
    },
    /// A contact connected from a device never seen before beside their others: a new phone, a restored
    /// backup, or someone holding their account key. Sending to them is held until the user confirms
    /// (`kith verify NAME --confirm`).
    KeyChanged {
        name: String,
        address: String,
        /// Whether the user had verified them before.
        was_verified: bool,
    },
    /// The callee's phone rings.
    CallRinging { call: String, to: String },
    /// The call is up; media flows.
    CallAnswered { call: String, with: String },
    /// The call is over.
    CallEnded {
        call: String,
        with: String,
        outcome: String,
        /// Why, when it says more than the outcome: for an unreachable peer, the last attempt's failure
        /// (a node that could not prove the key dialled, no route, no answer).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        talked_secs: Option<f64>,
        stats: Option<serde_json::Value>,
    },
    /// A contact whose mail this node keeps gave it deposit tokens for a period (one per its contact).
    MailboxTokens {
        owner: String,
        period: u64,
        tokens: usize,
    },
    /// A contact told us its Olm keys and how many mailboxes it has (so we can seal and deposit for it).
    MailInfo {
        from: String,
        mailboxes: usize,
        /// Of those, how many named their endpoint keys for the coming periods.
        keyed: usize,
    },
    /// Messages to `to` that waited too long for a direct delivery were sealed and deposited into its
    /// mailboxes (they stay in the outbox until a receipt comes).
    MailDeposited { to: String, messages: usize },
    /// Some could not be deposited (why, per mailbox); they are tried again later.
    MailDepositFailed {
        to: String,
        left: usize,
        reason: String,
    },
    /// Mail was fetched from one of our mailboxes, opened and stored.
    MailFetched {
        mailbox: String,
        messages: usize,
        receipts: usize,
    },
    /// A connection to a peer came up or went down.
    Peer {
        name: String,
        address: String,
        online: bool,
        path: String,
    },
}
