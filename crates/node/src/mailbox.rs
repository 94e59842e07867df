//! The mailbox role on the network: deposits arrive on the `kith-mailbox/1` ALPN from anyone holding a
//! token ([`kith_core::mailbox`]); what is admitted goes to the store in one transaction before the answer
//! is sent, so a depositor that got `Deposited` can forget the envelope (its message stays in its outbox
//! until the receipt anyway).

use kith_core::mailbox::{self, Quotas, Refusal, Request, Response};
use kith_store::Store;
use std::sync::Mutex;

/// Answers one request that came on the mailbox ALPN. Only deposits are taken there: the owner's requests
/// come over its authenticated connection.
pub fn answer_anonymous(
    store: &Mutex<Store>,
    request: &[u8],
    period: u64,
    quotas: &Quotas,
    now_ms: i64,
) -> Vec<u8> {
    let response = match mailbox::decode::<Request>(request) {
        Some(Request::Deposit { token, envelope }) => {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            match s.mailbox_deposit(
                &token,
                &envelope,
                &mailbox::accepted_periods(period),
                quotas,
                now_ms,
            ) {
                Ok(Ok(id)) => Response::Deposited { id },
                Ok(Err(refusal)) => {
                    tracing::info!(reason = %refusal, "mailbox deposit refused");
                    Response::Refused(refusal)
                }
                Err(e) => {
                    // The depositor keeps its message and tries again: nothing is lost.
                    tracing::warn!(error = %e, "mailbox store failed");
                    Response::Refused(Refusal::MailboxFull {
                        what: "bytes (the mailbox's disk refused the write)".into(),
                        held: 0,
                        limit: 0,
                    })
                }
            }
        }
        Some(_) => Response::Refused(Refusal::NotOwner),
        None => Response::Refused(Refusal::Malformed),
    };
    mailbox::encode(&response)
}

/// The most envelope bytes one fetch answer carries (it must fit in one frame).
const FETCH_BYTES: usize = 48 * 1024;
/// The most envelopes one fetch answer carries.
const FETCH_MAX: usize = 64;

/// Answers a request of `peer`, who proved its account on its connection: the owner's tokens, fetches
/// and deletions. Anyone else is told it is not the owner.
pub fn answer_owner(
    store: &Mutex<Store>,
    peer: &kith_core::AccountKey,
    request: Request,
    period: u64,
    now_ms: i64,
) -> Response {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    match s.mailbox_owners() {
        Ok(owners) if owners.contains(peer) => {}
        Ok(_) => return Response::Refused(Refusal::NotOwner),
        Err(e) => {
            tracing::warn!(error = %e, "mailbox store failed");
            return Response::Refused(Refusal::Malformed);
        }
    }
    let result = match request {
        Request::Tokens { period: p, tokens } => s
            .mailbox_set_tokens(peer, p, &tokens, period.saturating_sub(1))
            .map(|()| Response::Done),
        Request::Fetch { after, max } => s
            .mailbox_fetch(peer, after, (max as usize).clamp(1, FETCH_MAX), now_ms)
            .map(|(mut items, mut more)| {
                // Within one frame: stop before the envelope that would pass the byte budget (one at least).
                let mut bytes = 0;
                let keep = items
                    .iter()
                    .take_while(|h| {
                        bytes += h.envelope.len();
                        bytes <= FETCH_BYTES
                    })
                    .count()
                    .max(1);
                if keep < items.len() {
                    items.truncate(keep);
                    more = true;
                }
                Response::Items { items, more }
            }),
        Request::Delete { ids } => s.mailbox_delete(peer, &ids).map(|_| Response::Done),
        Request::Deposit { .. } => Ok(Response::Refused(Refusal::Malformed)),
    };
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "mailbox store failed");
        Response::Refused(Refusal::Malformed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::AccountSecret;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn deposits_are_answered_from_the_store_and_other_requests_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(Store::open(&dir.path().join("db")).unwrap());
        let owner = AccountSecret::generate(&mut StdRng::seed_from_u64(1)).public();
        {
            let mut s = store.lock().unwrap();
            s.mailbox_add_owner(&owner, 0).unwrap();
            s.mailbox_set_tokens(&owner, 100, &[[5; 32]], 99).unwrap();
        }
        let q = Quotas::default();
        let ask = |r: &Request, period| {
            mailbox::decode::<Response>(&answer_anonymous(
                &store,
                &mailbox::encode(r),
                period,
                &q,
                1,
            ))
            .unwrap()
        };
        let deposit = |token| Request::Deposit {
            token,
            envelope: vec![1; 512],
        };
        assert_eq!(ask(&deposit([5; 32]), 100), Response::Deposited { id: 1 });
        assert_eq!(
            ask(&deposit([5; 32]), 101),
            Response::Deposited { id: 1 },
            "again: once"
        );
        // A wrong token, and the right one once its period is past.
        assert_eq!(
            ask(&deposit([6; 32]), 100),
            Response::Refused(Refusal::UnknownToken)
        );
        assert_eq!(
            ask(&deposit([5; 32]), 102),
            Response::Refused(Refusal::UnknownToken)
        );
        // The owner's requests are not taken from anonymous connections; garbage is named as such.
        assert_eq!(
            ask(&Request::Fetch { after: 0, max: 10 }, 100),
            Response::Refused(Refusal::NotOwner)
        );
        let garbage = answer_anonymous(&store, &[0xff, 0xff, 0xff], 100, &q, 1);
        assert_eq!(
            mailbox::decode::<Response>(&garbage).unwrap(),
            Response::Refused(Refusal::Malformed)
        );
    }

    #[test]
    fn only_the_owner_sets_tokens_fetches_within_a_frame_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(Store::open(&dir.path().join("db")).unwrap());
        let mut rng = StdRng::seed_from_u64(2);
        let owner = AccountSecret::generate(&mut rng).public();
        let other = AccountSecret::generate(&mut rng).public();
        store.lock().unwrap().mailbox_add_owner(&owner, 0).unwrap();
        let tokens = Request::Tokens {
            period: 50,
            tokens: vec![[8; 32]],
        };
        assert_eq!(
            answer_owner(&store, &other, tokens.clone(), 50, 1),
            Response::Refused(Refusal::NotOwner)
        );
        assert_eq!(answer_owner(&store, &owner, tokens, 50, 1), Response::Done);
        let q = Quotas::default();
        // Three of the largest envelopes: a fetch answer carries one (two would not fit in a frame).
        for b in 0..3u8 {
            let env = vec![b; 40_960];
            let r = answer_anonymous(
                &store,
                &mailbox::encode(&Request::Deposit {
                    token: [8; 32],
                    envelope: env,
                }),
                50,
                &q,
                2,
            );
            assert!(matches!(
                mailbox::decode::<Response>(&r),
                Some(Response::Deposited { .. })
            ));
        }
        let Response::Items { items, more } =
            answer_owner(&store, &owner, Request::Fetch { after: 0, max: 10 }, 50, 3)
        else {
            panic!("no items")
        };
        assert_eq!((items.len(), more), (1, true));
        let frame = kith_core::wire::Frame::MailboxResponse {
            id: 1,
            response: Response::Items {
                items: items.clone(),
                more,
            },
        };
        assert!(frame.encode().is_ok(), "fits in one frame");
        assert_eq!(
            answer_owner(&store, &other, Request::Fetch { after: 0, max: 10 }, 50, 3),
            Response::Refused(Refusal::NotOwner)
        );
        assert_eq!(
            answer_owner(
                &store,
                &owner,
                Request::Delete {
                    ids: vec![items[0].id]
                },
                50,
                3
            ),
            Response::Done
        );
        let Response::Items { items, more } =
            answer_owner(&store, &owner, Request::Fetch { after: 0, max: 10 }, 50, 3)
        else {
            panic!("no items")
        };
        assert_eq!((items.len(), more), (1, true), "two left, one per answer");
    }
}
