//! Mailbox messages: `mailbox::decode` of a `Request` (what a depositor or owner sends a mailbox), a
//! `Response` (what a mailbox answers), a `Letter` (what an opened envelope holds) and a `MailInfo` (a
//! contact's Olm keys and mailboxes), as the node decodes each.
//!
//! Input: a byte choosing the type, then its postcard bytes.
//! Invariants: what decodes encodes to bytes that decode to it; a mailbox address gives the endpoint key
//! of exactly the periods it names.
#![no_main]

use kith_core::mailbox::{self, Held, Letter, MailInfo, MailboxAddr, Request, Response};
use kith_core::message::MessageFrame;
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn mail_info() -> MailInfo {
    let mut olm = kith_core::seal::RatchetAccount::new();
    MailInfo {
        bundle: olm.bundle(kith_fuzz::device(), 2),
        mailboxes: vec![MailboxAddr {
            hints: kith_fuzz::hints(),
            first_period: kith_fuzz::period().0,
            keys: vec![kith_fuzz::endpoint(); 3],
        }],
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let with = |t: u8, b: Vec<u8>| [&[t][..], &b].concat();
    vec![
        with(
            0,
            mailbox::encode(&Request::Deposit {
                token: [1; 32],
                envelope: vec![2; 512],
            }),
        ),
        with(
            0,
            mailbox::encode(&Request::Tokens {
                period: 20_000,
                tokens: vec![[3; 32]; 2],
            }),
        ),
        with(0, mailbox::encode(&Request::Delete { ids: vec![1, 2, 3] })),
        with(
            1,
            mailbox::encode(&Response::Items {
                items: vec![Held {
                    id: 1,
                    token: [1; 32],
                    envelope: vec![0; 40],
                    at_ms: 5,
                }],
                more: true,
            }),
        ),
        with(
            1,
            mailbox::encode(&Response::Refused(mailbox::Refusal::NotOwner)),
        ),
        with(
            1,
            mailbox::encode(&Response::Endpoints {
                first_period: 9,
                keys: vec![kith_fuzz::endpoint()],
            }),
        ),
        with(
            2,
            mailbox::encode(&Letter::Messages(vec![MessageFrame {
                seq: 1,
                id: [4; 16],
                sent_at_ms: 1,
                text: "hi".into(),
            }])),
        ),
        with(2, mailbox::encode(&Letter::Receipts(vec![1, 2]))),
        with(3, mailbox::encode(&mail_info())),
    ]
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    b: &[u8],
) -> Option<T> {
    let v: T = mailbox::decode(b)?;
    let enc = mailbox::encode(&v);
    assert!(!enc.is_empty());
    assert_eq!(mailbox::decode::<T>(&enc).as_ref(), Some(&v));
    Some(v)
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("mailbox", seeds); },
    |data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 4 {
        0 => {
            round_trip::<Request>(rest);
        }
        1 => {
            round_trip::<Response>(rest);
        }
        2 => {
            round_trip::<Letter>(rest);
        }
        _ => {
            let Some(info) = round_trip::<MailInfo>(rest) else { return };
            let _ = info.bundle.verify();
            for m in &info.mailboxes {
                for p in [0, m.first_period.saturating_sub(1), m.first_period, m.first_period.saturating_add(1), u64::MAX] {
                    let h = m.for_period(p);
                    let named = p.checked_sub(m.first_period).and_then(|i| usize::try_from(i).ok()).and_then(|i| m.keys.get(i));
                    match named {
                        Some(k) => assert_eq!(h.endpoint, Some(*k)),
                        None => assert_eq!(h.endpoint, m.hints.endpoint),
                    }
                }
            }
        }
    }
});
