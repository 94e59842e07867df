//! Key roles and the certificates that link them.
//!
//! * [`AccountKey`]: the user. Its z-base-32 form is the address. Held by the user, never by a server.
//! * [`DeviceKey`]: one installation, certified by the account in a [`DeviceCert`].
//! * [`EndpointKey`]: the QUIC (iroh) key a device uses on the network, certified by the device in an
//!   [`EndpointCert`] with a validity window. It is what relays and peers see before the hello.
//!
//! Each role is its own type so the compiler stops us from using a device key where an account key belongs.
//! Secrets zeroize on drop and print as `Secret(..)`.

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::fmt;

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "serde_sig")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({:02x}{:02x}..)", self.0[0], self.0[1])
    }
}

mod serde_sig {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

/// A signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// The bytes are not a valid Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid public key")]
pub struct InvalidKey;

/// Defines a public-key newtype: validated on construction, strict verification, short Debug output.
macro_rules! public_key {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
        )]
        pub struct $name([u8; 32]);

        impl $name {
            /// Checks that the bytes are a valid Ed25519 point and wraps them.
            pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, $crate::identity::InvalidKey> {
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| $crate::identity::InvalidKey)?;
                Ok(Self(bytes))
            }
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Verifies `sig` over `msg` (strict: no malleable or small-order forms).
            pub fn verify(
                &self,
                msg: &[u8],
                sig: &$crate::identity::Signature,
            ) -> Result<(), $crate::identity::BadSignature> {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
                    .map_err(|_| $crate::identity::BadSignature)?;
                key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig.0))
                    .map_err(|_| $crate::identity::BadSignature)
            }
            /// A short, non-identifying-enough-to-matter prefix for debugging output.
            pub fn short(&self) -> String {
                format!("{:02x}{:02x}{:02x}", self.0[0], self.0[1], self.0[2])
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({}..)"), self.short())
            }
        }
    };
}
pub(crate) use public_key;

public_key!(
    AccountKey,
    "The public key of an account: the user's identity."
);
public_key!(
    DeviceKey,
    "The public key of one device (installation) of an account."
);
public_key!(
    EndpointKey,
    "The public key of a QUIC endpoint (iroh `EndpointId`) used by a device."
);

macro_rules! secret_key {
    ($name:ident, $public:ident, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(SigningKey);

        impl $name {
            pub fn generate<R: rand::CryptoRng + ?Sized>(rng: &mut R) -> Self {
                let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
                rng.fill_bytes(&mut bytes[..]);
                Self(SigningKey::from_bytes(&bytes))
            }
            pub fn from_bytes(bytes: &[u8; 32]) -> Self {
                Self(SigningKey::from_bytes(bytes))
            }
            /// The secret seed; keep it in a `Zeroizing` and only write it to protected storage.
            pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
                zeroize::Zeroizing::new(self.0.to_bytes())
            }
            pub fn public(&self) -> $public {
                $public(self.0.verifying_key().to_bytes())
            }
            pub fn sign(&self, msg: &[u8]) -> Signature {
                Signature(self.0.sign(msg).to_bytes())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("Secret(..)")
            }
        }
    };
}

secret_key!(
    AccountSecret,
    AccountKey,
    "The secret key of an account. Zeroized on drop."
);
secret_key!(
    DeviceSecret,
    DeviceKey,
    "The secret key of a device. Zeroized on drop."
);

impl AccountSecret {
    /// X25519 agreement with another account, through the Ed25519 -> X25519 (Edwards -> Montgomery) map of
    /// both keys. None if the result is all zeros (a small-order peer key).
    pub fn agree(&self, theirs: &AccountKey) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let their = ed25519_dalek::VerifyingKey::from_bytes(theirs.as_bytes())
            .ok()?
            .to_montgomery();
        let scalar = zeroize::Zeroizing::new(self.0.to_scalar_bytes());
        let shared = zeroize::Zeroizing::new(their.mul_clamped(*scalar).to_bytes());
        (*shared != [0u8; 32]).then_some(shared)
    }
}

impl DeviceSecret {
    /// The seed of this device's QUIC endpoint key (the contact endpoint) for one discovery period and
    /// contact-key `generation`. Derived, not stored: it rotates every period and whenever a contact is
    /// removed (the generation moves on, so the removed one no longer knows an endpoint that leads here),
    /// and without the device secret the keys of two periods or generations cannot be linked. Generation
    /// 0 is the derivation without a generation.
    pub fn endpoint_seed(&self, period: u64, generation: u64) -> zeroize::Zeroizing<[u8; 32]> {
        match generation {
            0 => self.derive_seed(b"kith endpoint key v1", period, None),
            g => self.derive_seed(b"kith endpoint key v1", period, Some(g)),
        }
    }

    /// The seed of this device's *request endpoint* for one period: the relay-only endpoint named in the
    /// public discovery record, where strangers' contact requests arrive. It has no IP transport, so nobody
    /// who dials it learns this machine's IP address; contacts are told the other endpoint
    /// ([`Self::endpoint_seed`]) in the card they receive.
    pub fn request_endpoint_seed(&self, period: u64) -> zeroize::Zeroizing<[u8; 32]> {
        self.derive_seed(b"kith request endpoint key v1", period, None)
    }

    /// The seed of a gateway's endpoint: fixed, not rotating. An organization's gateways are public
    /// servers that its published list of gateways names by endpoint key and address; there is no contact
    /// to hide them from.
    pub fn gateway_endpoint_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.derive_seed(b"kith gateway endpoint key v1", 0, None)
    }

    fn derive_seed(
        &self,
        label: &[u8],
        period: u64,
        generation: Option<u64>,
    ) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::Digest;
        // Every copy of the device secret and of the digest is wiped when dropped, and so is the hasher's
        // state (sha2's `zeroize` feature).
        let secret = zeroize::Zeroizing::new(self.0.to_bytes());
        let mut h = sha2::Sha512::new();
        h.update(label);
        h.update(&secret[..]);
        h.update(period.to_be_bytes());
        if let Some(g) = generation {
            h.update(g.to_be_bytes());
        }
        let mut digest = zeroize::Zeroizing::new([0u8; 64]);
        h.finalize_into((&mut *digest).into());
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&digest[..32]);
        seed
    }
}

impl EndpointKey {
    /// The public key of an endpoint secret seed (iroh endpoint ids are Ed25519 public keys).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed).verifying_key().to_bytes())
    }
}

/// Builds the byte string that a certificate's signature covers: a domain label, then the fields.
fn signed_bytes<T: Serialize>(domain: &str, fields: &T) -> Vec<u8> {
    let mut out = domain.as_bytes().to_vec();
    out.push(0);
    // postcard serialization of plain data cannot fail.
    out.extend(postcard::to_allocvec(fields).unwrap_or_default());
    out
}

/// The account's statement "this device is mine".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCert {
    pub account: AccountKey,
    pub device: DeviceKey,
    /// Unix seconds when it was made.
    pub created: u64,
    pub signature: Signature,
}

impl DeviceCert {
    const DOMAIN: &'static str = "kith device-cert v1";

    pub fn issue(account: &AccountSecret, device: DeviceKey, created: u64) -> Self {
        let account_key = account.public();
        let signature = account.sign(&signed_bytes(Self::DOMAIN, &(account_key, device, created)));
        Self {
            account: account_key,
            device,
            created,
            signature,
        }
    }

    /// Checks the account's signature.
    pub fn verify(&self) -> Result<(), BadSignature> {
        self.account.verify(
            &signed_bytes(Self::DOMAIN, &(self.account, self.device, self.created)),
            &self.signature,
        )
    }
}

/// The device's statement "this QUIC endpoint speaks for me between `not_before` and `not_after`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCert {
    pub device: DeviceKey,
    pub endpoint: EndpointKey,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    pub signature: Signature,
}

impl EndpointCert {
    const DOMAIN: &'static str = "kith endpoint-cert v1";

    pub fn issue(
        device: &DeviceSecret,
        endpoint: EndpointKey,
        not_before: u64,
        not_after: u64,
    ) -> Self {
        let device_key = device.public();
        let signature = device.sign(&signed_bytes(
            Self::DOMAIN,
            &(device_key, endpoint, not_before, not_after),
        ));
        Self {
            device: device_key,
            endpoint,
            not_before,
            not_after,
            signature,
        }
    }

    /// Checks the device's signature.
    pub fn verify(&self) -> Result<(), BadSignature> {
        self.device.verify(
            &signed_bytes(
                Self::DOMAIN,
                &(self.device, self.endpoint, self.not_before, self.not_after),
            ),
            &self.signature,
        )
    }
}

pub(crate) fn domain_signed_bytes<T: Serialize>(domain: &str, fields: &T) -> Vec<u8> {
    signed_bytes(domain, fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    /// Issue 21, point 8: what derives an endpoint seed wipes the device secret's copy, the digest and
    /// the hasher's state (sha2's `zeroize` feature: without it `Sha512` is not `ZeroizeOnDrop`), and the
    /// seed itself is wiped when dropped.
    #[test]
    fn endpoint_seeds_and_their_hasher_are_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        use sha2::Digest;
        wiped(&sha2::Sha512::new());
        wiped(&sha2::Sha256::new());
        let device = DeviceSecret::generate(&mut StdRng::seed_from_u64(8));
        let seed = device.endpoint_seed(5, 0);
        wiped(&seed);
        assert_ne!(*seed, *device.endpoint_seed(6, 0));
        assert_ne!(*seed, *device.endpoint_seed(5, 1));
        assert_ne!(*device.endpoint_seed(5, 1), *device.endpoint_seed(5, 2));
        assert_ne!(*seed, *device.request_endpoint_seed(5));
    }

    #[test]
    fn certs_verify_and_detect_tampering() {
        let mut rng = StdRng::seed_from_u64(1);
        let account = AccountSecret::generate(&mut rng);
        let device = DeviceSecret::generate(&mut rng);
        let mut cert = DeviceCert::issue(&account, device.public(), 100);
        assert!(cert.verify().is_ok());
        cert.created = 101;
        assert_eq!(cert.verify(), Err(BadSignature));

        let endpoint =
            EndpointKey::from_bytes(*DeviceSecret::generate(&mut rng).public().as_bytes()).unwrap();
        let mut ecert = EndpointCert::issue(&device, endpoint, 10, 20);
        assert!(ecert.verify().is_ok());
        ecert.not_after = 2000;
        assert_eq!(ecert.verify(), Err(BadSignature));
    }

    #[test]
    fn endpoint_keys_rotate_per_period() {
        let d = DeviceSecret::generate(&mut StdRng::seed_from_u64(3));
        assert_eq!(*d.endpoint_seed(5, 0), *d.endpoint_seed(5, 0));
        assert_ne!(*d.endpoint_seed(5, 0), *d.endpoint_seed(6, 0));
        let other = DeviceSecret::generate(&mut StdRng::seed_from_u64(4));
        assert_ne!(*d.endpoint_seed(5, 0), *other.endpoint_seed(5, 0));
        assert_ne!(*d.endpoint_seed(5, 0), *d.request_endpoint_seed(5));
        assert_ne!(*d.request_endpoint_seed(5), *d.request_endpoint_seed(6));
        assert_ne!(
            EndpointKey::from_seed(&d.endpoint_seed(5, 0)),
            EndpointKey::from_seed(&d.endpoint_seed(6, 0))
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = AccountSecret::generate(&mut StdRng::seed_from_u64(2));
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }
}
