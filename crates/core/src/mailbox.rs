//! Mailboxes: what a mailbox admits and keeps, sans-IO.
//!
//! A mailbox keeps sealed envelopes ([`crate::seal`]) for its owner while the owner is away. It knows the
//! owner (who registered and fetches), and for each period a set of deposit tokens the owner gave it, one
//! per contact ([`crate::seal::PairKey::deposit_token`]); it never learns which contact a token stands
//! for. A deposit names a token and carries one envelope of a fixed size class.
//!
//! [`Quotas`] bound what one token (one contact in one period) and everybody together may hold, in bytes
//! and in messages; envelopes expire after [`Quotas::expiry_secs`] (default 30 days). A deposit the
//! mailbox refuses says why ([`Refusal`]), so the sender keeps the message and tries later or elsewhere.
//! Deposits are idempotent: the same envelope twice is stored once (a sender that lost the answer to a
//! crash simply deposits again).

use serde::{Deserialize, Serialize};

/// Limits of one mailbox.
///
/// The per-contact limit holds across periods although the mailbox cannot tell which tokens are one
/// contact's (tokens of two periods are unlinkable, and their order says nothing: see
/// [`crate::seal::PairKey::tokens_for_period`]). What it can rely on: mail stays at the mailbox only until
/// its owner next connects (the owner fetches and deletes all of it then), and between two connections
/// the owner has handed over the tokens of [`ACCEPTED_PERIODS`] periods, one per contact each, all the
/// mailbox accepts. So each token gets an equal share of the contact's limit ([`Quotas::per_token`]),
/// and one contact never holds more than its limit, however long the owner stays away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quotas {
    pub per_contact_bytes: u64,
    pub per_contact_messages: u64,
    pub total_bytes: u64,
    pub total_messages: u64,
    pub expiry_secs: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            per_contact_bytes: 64 << 20,
            per_contact_messages: 20_000,
            total_bytes: 1 << 30,
            total_messages: 200_000,
            expiry_secs: 30 * 24 * 3600,
        }
    }
}

/// What is held now, for one token or in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub messages: u64,
}

/// Why a mailbox refused a deposit (or a request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this mailbox knows no such deposit token (not a contact of its owner, or a token of a past period)"
    )]
    UnknownToken,
    #[error(
        "this contact's share of the mailbox is full for this period ({held} of {limit} {what}; the \
         owner empties it when next online)"
    )]
    ContactFull { what: String, held: u64, limit: u64 },
    #[error("the mailbox is full ({held} of {limit} {what})")]
    MailboxFull { what: String, held: u64, limit: u64 },
    #[error("envelope of {0} bytes is not one of the size classes")]
    BadSize(usize),
    #[error("only the mailbox's owner may do this")]
    NotOwner,
    #[error("this mailbox keeps messages for someone else")]
    WrongOwner,
    #[error("not a mailbox request this kith understands (a newer version, or damaged)")]
    Malformed,
}

/// How many periods' tokens a mailbox accepts at once (see [`accepted_periods`]).
pub const ACCEPTED_PERIODS: u64 = 3;

impl Quotas {
    /// What one token may hold: an equal share of a contact's limit among the tokens of the
    /// [`ACCEPTED_PERIODS`] periods it may deposit under between two visits of the owner.
    pub fn per_token(&self) -> Usage {
        Usage {
            bytes: self.per_contact_bytes / ACCEPTED_PERIODS,
            messages: self.per_contact_messages / ACCEPTED_PERIODS,
        }
    }

    /// Whether a new envelope of `size` bytes may be stored, given what its token and the whole mailbox
    /// hold now.
    pub fn admit(&self, size: usize, token: Usage, total: Usage) -> Result<(), Refusal> {
        if !crate::seal::SIZE_CLASSES.contains(&size) {
            return Err(Refusal::BadSize(size));
        }
        let size = size as u64;
        let check = |held: u64, add: u64, limit: u64, what: &str, contact: bool| {
            if held + add > limit {
                let what = what.to_string();
                Err(if contact {
                    Refusal::ContactFull { what, held, limit }
                } else {
                    Refusal::MailboxFull { what, held, limit }
                })
            } else {
                Ok(())
            }
        };
        let share = self.per_token();
        check(token.bytes, size, share.bytes, "bytes", true)?;
        check(token.messages, 1, share.messages, "messages", true)?;
        check(total.bytes, size, self.total_bytes, "bytes", false)?;
        check(total.messages, 1, self.total_messages, "messages", false)?;
        Ok(())
    }
}

/// The periods whose tokens a mailbox accepts at `now_period`: the current one and the one before (a
/// sender's clock may lag, and a deposit may have been sealed just before the boundary), and the next (a
/// clock ahead).
pub fn accepted_periods(now_period: u64) -> [u64; ACCEPTED_PERIODS as usize] {
    [now_period.saturating_sub(1), now_period, now_period + 1]
}

/// Requests on the `kith-mailbox/1` stream. `Deposit` needs nothing but a token: the depositor stays
/// anonymous. The others are the owner's, on a connection whose hello proved the owner's device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Deposit {
        token: [u8; 32],
        envelope: Vec<u8>,
    },
    /// The owner's tokens for `period` (replacing any given before for it).
    Tokens {
        period: u64,
        tokens: Vec<[u8; 32]>,
    },
    /// Envelopes with an id above `after`, at most `max`.
    Fetch {
        after: u64,
        max: u32,
    },
    /// The owner has stored these: delete them.
    Delete {
        ids: Vec<u64>,
    },
}

/// One held envelope, as the owner fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub id: u64,
    pub token: [u8; 32],
    pub envelope: Vec<u8>,
    /// Unix milliseconds of the deposit.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Deposited {
        id: u64,
    },
    Refused(Refusal),
    Items {
        items: Vec<Held>,
        more: bool,
    },
    Done,
    /// Unasked, to a connected owner: something was deposited for you (fetch it).
    NewMail,
    /// Unasked, to a connected owner: the mailbox's endpoint keys for the periods from `first_period` on
    /// (its endpoint key changes every period; its addresses and relays do not), so depositors reach it
    /// after a rotation without asking anyone.
    Endpoints {
        first_period: u64,
        keys: Vec<crate::identity::EndpointKey>,
    },
}

/// How many periods ahead a mailbox names its endpoint keys.
pub const ENDPOINT_PERIODS: usize = 32;

/// Where one mailbox is: its hints as its card gave them, and its endpoint keys per period when it told
/// them (so a depositor holding this reaches it in later periods too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxAddr {
    pub hints: crate::hints::Hints,
    pub first_period: u64,
    pub keys: Vec<crate::identity::EndpointKey>,
}

impl MailboxAddr {
    /// The hints to use in `period`: with that period's endpoint key if known.
    pub fn for_period(&self, period: u64) -> crate::hints::Hints {
        let mut h = self.hints.clone();
        if let Some(k) = period
            .checked_sub(self.first_period)
            .and_then(|i| self.keys.get(i as usize))
        {
            h.endpoint = Some(*k);
        }
        h
    }
}

/// What an envelope carries once opened and decrypted: messages of the sender's device to us (in their
/// per-device sequence), or its receipts for ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Letter {
    Messages(Vec<crate::message::MessageFrame>),
    Receipts(Vec<u64>),
}

/// The most mailboxes a person names.
pub const MAX_MAILBOXES: usize = 4;

/// What a person tells each contact while both are online, so the contact can seal and deposit for it
/// later: its device's Olm keys, and where its mailboxes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailInfo {
    pub bundle: crate::seal::PrekeyBundle,
    pub mailboxes: Vec<MailboxAddr>,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    postcard::from_bytes(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_refuse_with_the_reason_and_the_numbers() {
        let q = Quotas {
            // A token's share: a third of these.
            per_contact_bytes: 3 * 2048,
            per_contact_messages: 9,
            total_bytes: 4096,
            total_messages: 5,
            expiry_secs: 60,
        };
        let u = |bytes, messages| Usage { bytes, messages };
        assert_eq!(q.admit(512, u(0, 0), u(0, 0)), Ok(()));
        assert_eq!(q.admit(513, u(0, 0), u(0, 0)), Err(Refusal::BadSize(513)));
        assert_eq!(
            q.admit(512, u(1536, 2), u(1536, 2)),
            Ok(()),
            "exactly at the limit is fine"
        );
        assert!(matches!(
            q.admit(512, u(2048, 2), u(2048, 2)),
            Err(Refusal::ContactFull {
                held: 2048,
                limit: 2048,
                ..
            })
        ));
        assert!(matches!(
            q.admit(512, u(512, 3), u(512, 3)),
            Err(Refusal::ContactFull {
                held: 3,
                limit: 3,
                ..
            })
        ));
        assert!(matches!(
            q.admit(512, u(0, 0), u(4096, 4)),
            Err(Refusal::MailboxFull { held: 4096, .. })
        ));
        assert!(matches!(
            q.admit(512, u(0, 0), u(0, 5)),
            Err(Refusal::MailboxFull {
                held: 5,
                limit: 5,
                ..
            })
        ));
        let e = q.admit(512, u(0, 0), u(0, 5)).unwrap_err().to_string();
        assert!(e.contains("mailbox is full (5 of 5 messages)"), "{e}");
    }

    #[test]
    fn requests_round_trip_and_garbage_is_none() {
        let r = Request::Deposit {
            token: [7; 32],
            envelope: vec![1; 512],
        };
        assert_eq!(decode::<Request>(&encode(&r)), Some(r));
        let a = Response::Items {
            items: vec![Held {
                id: 3,
                token: [1; 32],
                envelope: vec![2; 512],
                at_ms: 9,
            }],
            more: false,
        };
        assert_eq!(decode::<Response>(&encode(&a)), Some(a));
        assert_eq!(decode::<Request>(&[0xff, 0xff, 0xff]), None);
        // A mailbox's per-period keys: the one of the period asked for, else the card's.
        let k = |b: u8| crate::identity::EndpointKey::from_seed(&[b; 32]);
        let addr = MailboxAddr {
            hints: crate::hints::Hints {
                endpoint: Some(k(1)),
                direct: vec![],
                relays: vec![],
                dht: vec![],
                contact_key: None,
            },
            first_period: 10,
            keys: vec![k(2), k(3)],
        };
        assert_eq!(addr.for_period(10).endpoint, Some(k(2)));
        assert_eq!(addr.for_period(11).endpoint, Some(k(3)));
        assert_eq!(addr.for_period(12).endpoint, Some(k(1)));
        assert_eq!(addr.for_period(9).endpoint, Some(k(1)));
        assert_eq!(accepted_periods(0), [0, 0, 1]);
        assert_eq!(accepted_periods(10), [9, 10, 11]);
    }
}
