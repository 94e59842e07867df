//! The hello: the first frame each side sends on a `kith/1` connection, proving the chain
//! account -> device -> endpoint.
//!
//! QUIC (iroh) already proved that the peer holds the endpoint key it connected with. The hello adds the
//! device certificate (signed by the account) and the endpoint certificate (signed by the device) and
//! [`Hello::verify`] checks every link, plus that the certified endpoint is the one on the connection, so a
//! hello copied from another connection is useless. Success yields a [`VerifiedPeer`], a proof value that
//! only this module can make: code that needs an authenticated peer takes one.

use crate::card::ContactCard;
use crate::identity::{AccountKey, DeviceCert, DeviceKey, EndpointCert, EndpointKey};
use serde::{Deserialize, Serialize};

/// How far clocks may disagree when checking an endpoint certificate's validity window (seconds).
pub const CLOCK_SKEW_SECS: u64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub account: AccountKey,
    pub device_cert: DeviceCert,
    pub endpoint_cert: EndpointCert,
    /// The sender's current contact card (bytes of [`ContactCard::to_bytes`]), so contacts learn new hints
    /// and a stranger's request carries a display name.
    pub card: Option<Vec<u8>>,
}

/// Which link of the chain failed. Logged as the reason the peer was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("device certificate names another account than the hello")]
    DeviceCertWrongAccount,
    #[error("device certificate signature does not verify against the account key")]
    DeviceCertBadSignature,
    #[error("endpoint certificate names another device than the device certificate")]
    EndpointCertWrongDevice,
    #[error("endpoint certificate signature does not verify against the device key")]
    EndpointCertBadSignature,
    #[error("endpoint certificate is for another endpoint than the one on this connection")]
    EndpointMismatch,
    #[error("endpoint certificate expired")]
    EndpointCertExpired,
    #[error("endpoint certificate is not valid yet")]
    EndpointCertNotYetValid,
    #[error("peer is not the account that was dialled")]
    UnexpectedAccount,
    #[error("card in the hello is invalid or belongs to another account")]
    BadCard,
}

/// A peer whose hello verified. Only [`Hello::verify`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedPeer {
    account: AccountKey,
    device: DeviceKey,
    endpoint: EndpointKey,
    card: Option<ContactCard>,
}

impl VerifiedPeer {
    pub fn account(&self) -> AccountKey {
        self.account
    }
    pub fn device(&self) -> DeviceKey {
        self.device
    }
    pub fn endpoint(&self) -> EndpointKey {
        self.endpoint
    }
    pub fn card(&self) -> Option<&ContactCard> {
        self.card.as_ref()
    }
}

impl Hello {
    /// Checks the whole chain. `remote_endpoint` is the key QUIC authenticated; `expected` is the account
    /// the caller dialled (None when accepting); `now` is Unix seconds.
    pub fn verify(
        &self,
        remote_endpoint: EndpointKey,
        expected: Option<AccountKey>,
        now: u64,
    ) -> Result<VerifiedPeer, HelloError> {
        if self.device_cert.account != self.account {
            return Err(HelloError::DeviceCertWrongAccount);
        }
        self.device_cert
            .verify()
            .map_err(|_| HelloError::DeviceCertBadSignature)?;
        if self.endpoint_cert.device != self.device_cert.device {
            return Err(HelloError::EndpointCertWrongDevice);
        }
        self.endpoint_cert
            .verify()
            .map_err(|_| HelloError::EndpointCertBadSignature)?;
        if self.endpoint_cert.endpoint != remote_endpoint {
            return Err(HelloError::EndpointMismatch);
        }
        if now > self.endpoint_cert.not_after.saturating_add(CLOCK_SKEW_SECS) {
            return Err(HelloError::EndpointCertExpired);
        }
        if now.saturating_add(CLOCK_SKEW_SECS) < self.endpoint_cert.not_before {
            return Err(HelloError::EndpointCertNotYetValid);
        }
        if expected.is_some_and(|e| e != self.account) {
            return Err(HelloError::UnexpectedAccount);
        }
        let card = match &self.card {
            None => None,
            Some(bytes) => {
                let card = ContactCard::from_bytes(bytes).map_err(|_| HelloError::BadCard)?;
                if card.account() != self.account {
                    return Err(HelloError::BadCard);
                }
                Some(card)
            }
        };
        Ok(VerifiedPeer {
            account: self.account,
            device: self.device_cert.device,
            endpoint: remote_endpoint,
            card,
        })
    }
}

#[cfg(test)]
mod tests {
    //! One test per forged link of the chain.
    use super::*;
    use crate::card::Hints;
    use crate::identity::{AccountSecret, DeviceSecret};
    use rand::{SeedableRng, rngs::StdRng};

    struct Party {
        account: AccountSecret,
        device: DeviceSecret,
        endpoint: EndpointKey,
    }

    fn party(seed: u64) -> Party {
        let mut rng = StdRng::seed_from_u64(seed);
        let account = AccountSecret::generate(&mut rng);
        let device = DeviceSecret::generate(&mut rng);
        let endpoint =
            EndpointKey::from_bytes(*DeviceSecret::generate(&mut rng).public().as_bytes()).unwrap();
        Party {
            account,
            device,
            endpoint,
        }
    }

    fn hello(p: &Party) -> Hello {
        let card = ContactCard::issue(&p.account, "p", Hints::default(), 1).unwrap();
        Hello {
            account: p.account.public(),
            device_cert: DeviceCert::issue(&p.account, p.device.public(), 1),
            endpoint_cert: EndpointCert::issue(&p.device, p.endpoint, 1000, 2000),
            card: Some(card.to_bytes()),
        }
    }

    #[test]
    fn honest_chain_verifies() {
        let p = party(1);
        let v = hello(&p)
            .verify(p.endpoint, Some(p.account.public()), 1500)
            .unwrap();
        assert_eq!(v.account(), p.account.public());
        assert_eq!(v.device(), p.device.public());
        assert_eq!(v.card().unwrap().name(), "p");
    }

    #[test]
    fn forged_account_link() {
        let (p, m) = (party(1), party(2));
        // Mallory claims Alice's account with her own device cert.
        let mut h = hello(&m);
        h.account = p.account.public();
        assert_eq!(
            h.verify(m.endpoint, None, 1500).unwrap_err(),
            HelloError::DeviceCertWrongAccount
        );
        // Or edits the cert to name Alice's account: the signature breaks.
        let mut h = hello(&m);
        h.account = p.account.public();
        h.device_cert.account = p.account.public();
        assert_eq!(
            h.verify(m.endpoint, None, 1500).unwrap_err(),
            HelloError::DeviceCertBadSignature
        );
    }

    #[test]
    fn forged_device_link() {
        let (p, m) = (party(1), party(2));
        // Alice's real device cert, but an endpoint cert signed by Mallory's device.
        let mut h = hello(&p);
        h.endpoint_cert = EndpointCert::issue(&m.device, m.endpoint, 1000, 2000);
        assert_eq!(
            h.verify(m.endpoint, None, 1500).unwrap_err(),
            HelloError::EndpointCertWrongDevice
        );
        let mut h = hello(&p);
        h.endpoint_cert = EndpointCert::issue(&m.device, m.endpoint, 1000, 2000);
        h.endpoint_cert.device = p.device.public();
        assert_eq!(
            h.verify(m.endpoint, None, 1500).unwrap_err(),
            HelloError::EndpointCertBadSignature
        );
    }

    #[test]
    fn forged_endpoint_link() {
        let (p, m) = (party(1), party(2));
        // A replayed hello of Alice, sent from Mallory's endpoint.
        assert_eq!(
            hello(&p).verify(m.endpoint, None, 1500).unwrap_err(),
            HelloError::EndpointMismatch
        );
    }

    #[test]
    fn validity_window_and_expected_account() {
        let (p, m) = (party(1), party(2));
        let h = hello(&p);
        assert_eq!(
            h.verify(p.endpoint, None, 2000 + CLOCK_SKEW_SECS + 1)
                .unwrap_err(),
            HelloError::EndpointCertExpired
        );
        assert_eq!(
            h.verify(p.endpoint, None, 1000 - CLOCK_SKEW_SECS - 1)
                .unwrap_err(),
            HelloError::EndpointCertNotYetValid
        );
        assert!(h.verify(p.endpoint, None, 2000 + CLOCK_SKEW_SECS).is_ok());
        assert_eq!(
            h.verify(p.endpoint, Some(m.account.public()), 1500)
                .unwrap_err(),
            HelloError::UnexpectedAccount
        );
    }

    #[test]
    fn card_of_another_account_is_refused() {
        let (p, m) = (party(1), party(2));
        let mut h = hello(&p);
        h.card = Some(
            ContactCard::issue(&m.account, "p", Hints::default(), 1)
                .unwrap()
                .to_bytes(),
        );
        assert_eq!(
            h.verify(p.endpoint, None, 1500).unwrap_err(),
            HelloError::BadCard
        );
    }
}
