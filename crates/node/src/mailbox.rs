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
}
