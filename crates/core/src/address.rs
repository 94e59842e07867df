//! The kith address: `kith:` followed by the z-base-32 of the account key and a 3-byte checksum.
//!
//! 32 key bytes + 3 checksum bytes = 280 bits = exactly 56 characters, so there are no padding bits and a
//! single mistyped character is always caught by the checksum (1 in 16.7 million chance of a miss).
//! Case does not matter anywhere (z-base-32 is case-insensitive and URI schemes are too), so an address
//! copied from an upper-case QR code works. Surrounding whitespace is ignored; anything else extra is an
//! error that says where.

use crate::identity::AccountKey;
use crate::zbase32;
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// The scheme every kith link starts with.
pub const SCHEME: &str = "kith:";
const KEY_LEN: usize = 32;
const CHECKSUM_LEN: usize = 3;
/// Characters after `kith:` in an address.
pub const ENCODED_LEN: usize = 56;

/// A parsed, checksum-verified address. It is the account key in the form people exchange.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(AccountKey);

/// Every way an address can be mistyped, each with the advice a person needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the address is empty: paste the whole `kith:...` address")]
    Empty,
    #[error("the address must start with `kith:` (found {found:?}): copy the whole address")]
    WrongPrefix { found: String },
    #[error(
        "the address is too short ({len} of {expected} characters after `kith:`): it looks truncated, copy all of it"
    )]
    TooShort { len: usize, expected: usize },
    #[error(
        "the address is too long ({len} of {expected} characters after `kith:`): it has extra characters"
    )]
    TooLong { len: usize, expected: usize },
    #[error(
        "character {ch:?} at position {pos} after `kith:` cannot appear in an address: check for a typo"
    )]
    InvalidChar { ch: char, pos: usize },
    #[error("the address has a bad checksum: check for a typo")]
    BadChecksum,
    #[error("the address does not contain a valid key: check for a typo")]
    InvalidKey,
}

fn checksum(key: &[u8; KEY_LEN]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(b"kith address checksum v1")
        .chain_update(key)
        .finalize();
    [digest[0], digest[1], digest[2]]
}

/// Strips the `kith:` scheme (case-insensitive), trimming surrounding whitespace.
pub(crate) fn strip_scheme(text: &str) -> Result<&str, AddressError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    match text.get(..SCHEME.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(SCHEME) => Ok(&text[SCHEME.len()..]),
        _ => {
            let found: String = match text.find(':') {
                Some(i) => text[..=i].chars().take(16).collect(),
                None => text.chars().take(8).collect(),
            };
            Err(AddressError::WrongPrefix { found })
        }
    }
}

impl Address {
    pub fn new(key: AccountKey) -> Self {
        Self(key)
    }

    pub fn account(&self) -> AccountKey {
        self.0
    }

    /// Parses the 56 characters after `kith:`.
    pub(crate) fn parse_body(body: &str) -> Result<Self, AddressError> {
        let len = body.chars().count();
        // Report a bad character before a wrong length: "position 12 is a `l`" is the more useful hint.
        if let Some((pos, ch)) = body
            .chars()
            .enumerate()
            .find(|(_, c)| !zbase32::is_char(*c))
        {
            return Err(AddressError::InvalidChar { ch, pos });
        }
        if len < ENCODED_LEN {
            return Err(AddressError::TooShort {
                len,
                expected: ENCODED_LEN,
            });
        }
        if len > ENCODED_LEN {
            return Err(AddressError::TooLong {
                len,
                expected: ENCODED_LEN,
            });
        }
        let bytes = zbase32::decode(body).map_err(|e| match e {
            zbase32::DecodeError::InvalidChar { ch, pos } => AddressError::InvalidChar { ch, pos },
            zbase32::DecodeError::TrailingBits => AddressError::BadChecksum,
        })?;
        let (key, sum) = bytes.split_at(KEY_LEN);
        let key: [u8; KEY_LEN] = key.try_into().map_err(|_| AddressError::InvalidKey)?;
        if checksum(&key) != sum {
            return Err(AddressError::BadChecksum);
        }
        AccountKey::from_bytes(key)
            .map(Self)
            .map_err(|_| AddressError::InvalidKey)
    }

    /// The 56 characters after `kith:`.
    pub fn body(&self) -> String {
        let mut bytes = self.0.as_bytes().to_vec();
        bytes.extend_from_slice(&checksum(self.0.as_bytes()));
        zbase32::encode(&bytes)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(text: &str) -> Result<Self, AddressError> {
        let body = strip_scheme(text)?;
        if body.contains('?') {
            // A card link was given where an address was expected: take the address part.
            return Self::parse_body(&body[..body.find('?').unwrap_or(body.len())]);
        }
        Self::parse_body(body)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.body())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({:?})", self.0)
    }
}

impl From<AccountKey> for Address {
    fn from(key: AccountKey) -> Self {
        Self(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountSecret;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn sample() -> Address {
        Address::new(AccountSecret::generate(&mut StdRng::seed_from_u64(7)).public())
    }

    #[test]
    fn round_trip_and_case() {
        let a = sample();
        let text = a.to_string();
        assert_eq!(text.len(), 5 + ENCODED_LEN);
        assert_eq!(text.parse::<Address>().unwrap(), a);
        assert_eq!(text.to_uppercase().parse::<Address>().unwrap(), a);
        assert_eq!(format!("  {text}\n").parse::<Address>().unwrap(), a);
    }

    #[test]
    fn every_mistake_is_named() {
        let text = sample().to_string();
        let body = &text[5..];
        assert_eq!("".parse::<Address>(), Err(AddressError::Empty));
        assert!(matches!(
            format!("kit:{body}").parse::<Address>(),
            Err(AddressError::WrongPrefix { .. })
        ));
        assert!(matches!(
            body.parse::<Address>(),
            Err(AddressError::WrongPrefix { .. })
        ));
        assert!(matches!(
            text[..40].parse::<Address>(),
            Err(AddressError::TooShort { len: 35, .. })
        ));
        assert!(matches!(
            format!("{text}y").parse::<Address>(),
            Err(AddressError::TooLong { len: 57, .. })
        ));
        let typo: String = body
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 10 {
                    if c == 'y' { 'b' } else { 'y' }
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(
            format!("kith:{typo}").parse::<Address>(),
            Err(AddressError::BadChecksum)
        );
        let bad: String = body
            .chars()
            .enumerate()
            .map(|(i, c)| if i == 12 { 'l' } else { c })
            .collect();
        assert_eq!(
            format!("kith:{bad}").parse::<Address>(),
            Err(AddressError::InvalidChar { ch: 'l', pos: 12 })
        );
        let space = format!("kith:{} {}", &body[..20], &body[20..]);
        assert_eq!(
            space.parse::<Address>(),
            Err(AddressError::InvalidChar { ch: ' ', pos: 20 })
        );
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let text = sample().to_string();
        for pos in 5..text.len() {
            for c in "ybndrfg8ejkmcpqxot1uwisza345h769".chars() {
                let mut chars: Vec<char> = text.chars().collect();
                if chars[pos] == c {
                    continue;
                }
                chars[pos] = c;
                let typo: String = chars.into_iter().collect();
                assert!(typo.parse::<Address>().is_err(), "typo at {pos} accepted");
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Address>();
            let _ = format!("kith:{s}").parse::<Address>();
        }

        #[test]
        fn any_key_round_trips(seed in any::<u64>()) {
            let a = Address::new(AccountSecret::generate(&mut StdRng::seed_from_u64(seed)).public());
            prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}
