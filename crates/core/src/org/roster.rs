//! An organization's gateway devices: which devices speak for its account, and where they are.
//!
//! The organization's account key stays offline (or on one admin machine). Each gateway is a *device* of
//! that account: it holds only its device key and a [`DeviceCert`] the account signed once, when the
//! gateway was enrolled ([`Enrollment`] from the gateway, [`Grant`] back to it). Which devices are
//! current is the [`Roster`]: signed by the account, numbered (`seq` only grows), with an expiry, and
//! published beside the account in both channels (the whole roster in the HTTPS document, its
//! [`Roster::digest`] in the DNSSEC-signed TXT record), so neither channel alone can add a device.
//!
//! A client calling the organization dials only the roster's gateways (several share the load; one that
//! is down is skipped) and accepts a session with the account only from a device the roster lists: a
//! gateway the organization took out of the roster (revoked) is refused even though its certificate
//! still verifies. A roster older than one the client saw before is refused as a replay.

use crate::card::ContactCard;
use crate::hints::Hints;
use crate::identity::{
    AccountKey, AccountSecret, DeviceCert, DeviceKey, DeviceSecret, EndpointKey, Signature,
    domain_signed_bytes,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;

/// Gateways a roster may list.
pub const MAX_GATEWAYS: usize = 16;
/// Addresses and relays one gateway may name.
pub const MAX_GATEWAY_ADDRS: usize = 4;
/// The longest gateway name.
pub const MAX_GATEWAY_NAME: usize = 32;

/// Text prefixes of the two enrollment messages (what is pasted between the gateway and the admin).
pub const ENROLL_PREFIX: &str = "kith-enroll:";
pub const GRANT_PREFIX: &str = "kith-grant:";

/// One gateway device and where it listens. Gateways are servers at the organization's edge: their
/// endpoint key is fixed (it does not rotate like a person's) and their addresses are public.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// The admin's name for it (`gw1`): what `kith org revoke` takes.
    pub name: String,
    pub device: DeviceKey,
    pub endpoint: EndpointKey,
    pub direct: Vec<SocketAddr>,
    pub relays: Vec<String>,
}

impl Gateway {
    /// Where to dial it.
    pub fn hints(&self) -> Hints {
        Hints {
            endpoint: Some(self.endpoint),
            direct: self.direct.clone(),
            relays: self.relays.clone(),
            dht: vec![],
            contact_key: None,
        }
    }

    fn check(&self) -> Result<(), RosterError> {
        check_gateway_name(&self.name)?;
        if self.direct.len() > MAX_GATEWAY_ADDRS || self.relays.len() > MAX_GATEWAY_ADDRS {
            return Err(RosterError::Malformed(format!(
                "gateway {:?} names more than {MAX_GATEWAY_ADDRS} addresses or relays",
                self.name
            )));
        }
        if self.direct.is_empty() && self.relays.is_empty() {
            return Err(RosterError::Malformed(format!(
                "gateway {:?} names neither an address nor a relay: nobody could reach it",
                self.name
            )));
        }
        Ok(())
    }
}

/// A gateway's name: 1-32 of a-z, 0-9, '-', '_'.
pub fn check_gateway_name(name: &str) -> Result<(), RosterError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_GATEWAY_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RosterError::Malformed(format!(
            "gateway name {name:?}: 1-{MAX_GATEWAY_NAME} of a-z, 0-9, '-', '_'"
        )))
    }
}

/// The account's statement "these are my gateways for `domain`, as of `seq`, until `expires`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roster {
    pub domain: String,
    pub account: AccountKey,
    /// Grows with every change: a client refuses a roster older than one it saw.
    pub seq: u64,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds after which the roster must not be used (the admin signs a new one before).
    pub expires: u64,
    pub gateways: Vec<Gateway>,
    pub signature: Signature,
}

const ROSTER_DOMAIN: &str = "kith org roster v1";

/// Why a roster (or an enrollment message) is not taken. Each names the cause and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("not a kith gateway list: {0}")]
    Malformed(String),
    #[error(
        "the list of {domain}'s gateways is not signed by its account key: forged or damaged; ask the \
         organization"
    )]
    BadSignature { domain: String },
    #[error("the list of gateways is for {theirs}, not {domain}")]
    OtherDomain { domain: String, theirs: String },
    #[error(
        "the list of {domain}'s gateways is signed by another account than the one {domain} names"
    )]
    OtherAccount { domain: String },
    #[error(
        "the list of {domain}'s gateways expired (at Unix time {expires}): the organization has not \
         renewed it (`kith org publish`)"
    )]
    Expired { domain: String, expires: u64 },
    #[error(
        "{domain} shows an older list of its gateways (number {seq}) than one seen before (number \
         {seen}): replayed, possible attack. Try again later or on another network"
    )]
    Older { domain: String, seq: u64, seen: u64 },
}

impl Roster {
    fn signed(&self) -> Vec<u8> {
        domain_signed_bytes(
            ROSTER_DOMAIN,
            &(
                &self.domain,
                self.account,
                self.seq,
                self.issued,
                self.expires,
                &self.gateways,
            ),
        )
    }

    /// The account signs the list of its gateways for `domain`.
    pub fn issue(
        account: &AccountSecret,
        domain: &str,
        seq: u64,
        issued: u64,
        expires: u64,
        gateways: Vec<Gateway>,
    ) -> Result<Self, RosterError> {
        if gateways.len() > MAX_GATEWAYS {
            return Err(RosterError::Malformed(format!(
                "more than {MAX_GATEWAYS} gateways"
            )));
        }
        for g in &gateways {
            g.check()?;
        }
        let mut roster = Self {
            domain: super::normalize_domain(domain),
            account: account.public(),
            seq,
            issued,
            expires,
            gateways,
            signature: Signature([0; 64]),
        };
        roster.signature = account.sign(&roster.signed());
        Ok(roster)
    }

    /// Checks the signature, the domain and account it is for, its expiry at `now` and its shape.
    pub fn verify(&self, domain: &str, account: &AccountKey, now: u64) -> Result<(), RosterError> {
        let domain = super::normalize_domain(domain);
        if self.domain != domain {
            return Err(RosterError::OtherDomain {
                domain,
                theirs: self.domain.clone(),
            });
        }
        if self.account != *account {
            return Err(RosterError::OtherAccount { domain });
        }
        self.account
            .verify(&self.signed(), &self.signature)
            .map_err(|_| RosterError::BadSignature {
                domain: domain.clone(),
            })?;
        if self.expires <= now {
            return Err(RosterError::Expired {
                domain,
                expires: self.expires,
            });
        }
        if self.gateways.len() > MAX_GATEWAYS {
            return Err(RosterError::Malformed(format!(
                "more than {MAX_GATEWAYS} gateways"
            )));
        }
        self.gateways.iter().try_for_each(Gateway::check)
    }

    /// Refuses a roster older than the newest seen for the domain (`seen`: its number).
    pub fn check_newer(&self, seen: Option<u64>) -> Result<(), RosterError> {
        match seen {
            Some(seen) if self.seq < seen => Err(RosterError::Older {
                domain: self.domain.clone(),
                seq: self.seq,
                seen,
            }),
            _ => Ok(()),
        }
    }

    /// The gateway that is `device`, if the roster lists it.
    pub fn gateway(&self, device: &DeviceKey) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.device == *device)
    }

    /// What the TXT record names (`dev=`): the number, and a hash of the whole signed roster, so the
    /// DNSSEC channel vouches for exactly the roster the HTTPS document carries.
    pub fn digest(&self) -> String {
        let hash = Sha256::new()
            .chain_update(b"kith org roster digest v1")
            .chain_update(self.to_bytes())
            .finalize();
        let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hex}", self.seq)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Reads [`Roster::to_bytes`] (not checked: [`Roster::verify`] does that).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RosterError> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((r, [])) => Ok(r),
            _ => Err(RosterError::Malformed("damaged".into())),
        }
    }

    /// The form in the HTTPS document: z-base-32 of its postcard encoding.
    pub fn encode(&self) -> String {
        crate::zbase32::encode(&self.to_bytes())
    }

    pub fn decode(text: &str) -> Result<Self, RosterError> {
        decode_exact(text).map_err(RosterError::Malformed)
    }
}

/// z-base-32 of postcard, every byte used.
fn decode_exact<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let bytes = crate::zbase32::decode(text.trim()).map_err(|e| e.to_string())?;
    match postcard::take_from_bytes::<T>(&bytes) {
        Ok((v, [])) => Ok(v),
        Ok(_) => Err("trailing bytes".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// What a new gateway sends the admin: its device key, its fixed endpoint and where it listens, signed
/// by the device (so it holds the key it names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub gateway: Gateway,
    pub signature: Signature,
}

const ENROLL_DOMAIN: &str = "kith gateway enrollment v1";

impl Enrollment {
    pub fn issue(device: &DeviceSecret, gateway: Gateway) -> Result<Self, RosterError> {
        gateway.check()?;
        if gateway.device != device.public() {
            return Err(RosterError::Malformed(
                "the enrollment names another device".into(),
            ));
        }
        let signature = device.sign(&domain_signed_bytes(ENROLL_DOMAIN, &gateway));
        Ok(Self { gateway, signature })
    }

    pub fn encode(&self) -> String {
        format!(
            "{ENROLL_PREFIX}{}",
            crate::zbase32::encode(&postcard::to_allocvec(self).unwrap_or_default())
        )
    }

    /// Reads and checks an enrollment (the device's signature and the gateway's shape).
    pub fn decode(text: &str) -> Result<Self, RosterError> {
        let body = text.trim().strip_prefix(ENROLL_PREFIX).ok_or_else(|| {
            RosterError::Malformed(format!(
                "an enrollment starts with {ENROLL_PREFIX} (printed by `kith device request` on the gateway)"
            ))
        })?;
        let e: Self = decode_exact(body).map_err(RosterError::Malformed)?;
        e.gateway.check()?;
        e.gateway
            .device
            .verify(
                &domain_signed_bytes(ENROLL_DOMAIN, &e.gateway),
                &e.signature,
            )
            .map_err(|_| {
                RosterError::Malformed(
                    "the enrollment is not signed by the device it names: damaged in transit"
                        .into(),
                )
            })?;
        Ok(e)
    }
}

/// What the admin sends back to an enrolled gateway: the device certificate (the account's "this device
/// is mine"), and the account's card for the gateway to show in its hellos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub domain: String,
    pub cert: DeviceCert,
    /// Bytes of [`ContactCard::to_bytes`].
    pub card: Vec<u8>,
}

impl Grant {
    pub fn encode(&self) -> String {
        format!(
            "{GRANT_PREFIX}{}",
            crate::zbase32::encode(&postcard::to_allocvec(self).unwrap_or_default())
        )
    }

    /// Reads a grant and checks it certifies `device`: the certificate verifies, and the card is the same
    /// account's.
    pub fn decode(text: &str, device: &DeviceKey) -> Result<(Self, ContactCard), RosterError> {
        let body = text.trim().strip_prefix(GRANT_PREFIX).ok_or_else(|| {
            RosterError::Malformed(format!(
                "a grant starts with {GRANT_PREFIX} (printed by `kith org enroll` on the admin's machine)"
            ))
        })?;
        let g: Self = decode_exact(body).map_err(RosterError::Malformed)?;
        if g.cert.device != *device {
            return Err(RosterError::Malformed(
                "this grant is for another device: it was made from another gateway's enrollment"
                    .into(),
            ));
        }
        g.cert.verify().map_err(|_| RosterError::BadSignature {
            domain: g.domain.clone(),
        })?;
        let card = ContactCard::from_bytes(&g.card)
            .map_err(|e| RosterError::Malformed(format!("the grant's card: {e}")))?;
        if card.account() != g.cert.account {
            return Err(RosterError::Malformed(
                "the grant's card is another account's".into(),
            ));
        }
        Ok((g, card))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn gateway(rng: &mut StdRng, name: &str) -> (DeviceSecret, Gateway) {
        let device = DeviceSecret::generate(rng);
        let endpoint = EndpointKey::from_seed(&device.gateway_endpoint_seed());
        let g = Gateway {
            name: name.into(),
            device: device.public(),
            endpoint,
            direct: vec!["192.0.2.10:7000".parse().unwrap()],
            relays: vec![],
        };
        (device, g)
    }

    #[test]
    fn a_roster_verifies_and_names_its_gateways() {
        let mut rng = StdRng::seed_from_u64(1);
        let account = AccountSecret::generate(&mut rng);
        let (_, g1) = gateway(&mut rng, "gw1");
        let (_, g2) = gateway(&mut rng, "gw2");
        let r = Roster::issue(
            &account,
            "Example.ORG.",
            3,
            100,
            200,
            vec![g1.clone(), g2.clone()],
        )
        .unwrap();
        r.verify("example.org", &account.public(), 150).unwrap();
        assert_eq!(r.gateway(&g2.device), Some(&g2));
        let back = Roster::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(r.digest().starts_with("3-"));
        assert_eq!(r.digest(), back.digest());
        // Every refusal names its cause.
        assert!(matches!(
            r.verify("example.org", &account.public(), 200),
            Err(RosterError::Expired { .. })
        ));
        assert!(matches!(
            r.verify("example.net", &account.public(), 150),
            Err(RosterError::OtherDomain { .. })
        ));
        let other = AccountSecret::generate(&mut rng).public();
        assert!(matches!(
            r.verify("example.org", &other, 150),
            Err(RosterError::OtherAccount { .. })
        ));
        let mut tampered = r.clone();
        tampered.gateways.pop();
        assert!(matches!(
            tampered.verify("example.org", &account.public(), 150),
            Err(RosterError::BadSignature { .. })
        ));
        assert_ne!(tampered.digest(), r.digest());
        assert!(r.check_newer(Some(3)).is_ok());
        assert!(r.check_newer(None).is_ok());
        assert!(matches!(
            r.check_newer(Some(4)),
            Err(RosterError::Older {
                seq: 3,
                seen: 4,
                ..
            })
        ));
        assert!(Roster::decode("not zbase32 !").is_err());
    }

    #[test]
    fn enrollment_and_grant_travel_as_text_and_check_their_keys() {
        let mut rng = StdRng::seed_from_u64(2);
        let account = AccountSecret::generate(&mut rng);
        let (device, g) = gateway(&mut rng, "gw1");
        let e = Enrollment::issue(&device, g.clone()).unwrap();
        let text = e.encode();
        assert_eq!(Enrollment::decode(&text).unwrap(), e);
        // A device cannot enroll another's key.
        let (_, other) = gateway(&mut rng, "gw2");
        assert!(Enrollment::issue(&device, other.clone()).is_err());
        let mut forged = e.clone();
        forged.gateway.direct = vec!["198.51.100.1:7000".parse().unwrap()];
        assert!(Enrollment::decode(&forged.encode()).is_err());
        assert!(Enrollment::decode("kith-grant:xyz").is_err());

        let cert = DeviceCert::issue(&account, g.device, 100);
        let card = ContactCard::issue(&account, "example.org", g.hints(), 100).unwrap();
        let grant = Grant {
            domain: "example.org".into(),
            cert,
            card: card.to_bytes(),
        };
        let (back, back_card) = Grant::decode(&grant.encode(), &g.device).unwrap();
        assert_eq!(back, grant);
        assert_eq!(back_card.account(), account.public());
        assert!(Grant::decode(&grant.encode(), &other.device).is_err());
        // A gateway without an address is refused at once.
        let mut nowhere = g;
        nowhere.direct.clear();
        assert!(Enrollment::issue(&device, nowhere).is_err());
    }
}
