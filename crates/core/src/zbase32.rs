//! z-base-32 (Zooko's human-oriented base 32), the alphabet of kith addresses and card links.
//!
//! Chosen because it avoids look-alike characters and is case-insensitive: an address read aloud, copied
//! from a QR code in upper case, or typed on a phone decodes the same. Decoding therefore lowercases.

const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Why a string is not valid z-base-32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A character outside the alphabet (0-based position in the encoded text).
    #[error("character {ch:?} at position {pos} is not used in kith links (allowed: {alphabet})", alphabet = std::str::from_utf8(ALPHABET).unwrap_or(""))]
    InvalidChar { ch: char, pos: usize },
    /// The last character carries bits that must be zero: the text was cut or has an extra character.
    #[error("the text ends in the middle of a byte: it is truncated or has an extra character")]
    TrailingBits,
}

fn value_of(c: u8) -> Option<u8> {
    let c = c.to_ascii_lowercase();
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Whether `c` belongs to the alphabet (either case).
pub fn is_char(c: char) -> bool {
    c.is_ascii() && value_of(c as u8).is_some()
}

/// Encodes bytes, without padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity((data.len() * 8).div_ceil(5));
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes text produced by [`encode`]. Upper case is accepted. Non-zero padding bits are refused, so each
/// byte string has exactly one encoding (a checksum cannot be fooled by a changed last character).
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0u32;
    for (pos, ch) in text.chars().enumerate() {
        let v = if ch.is_ascii() {
            value_of(ch as u8)
        } else {
            None
        };
        let v = v.ok_or(DecodeError::InvalidChar { ch, pos })?;
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    if bits >= 5 || buffer != 0 {
        return Err(DecodeError::TrailingBits);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // From the z-base-32 specification.
        assert_eq!(encode(&[0xf0, 0xbf, 0xc7]), "6n9hq");
        assert_eq!(encode(&[0xd4, 0x7a, 0x04]), "4t7ye");
        assert_eq!(decode("6N9HQ").unwrap(), vec![0xf0, 0xbf, 0xc7]);
    }

    #[test]
    fn refuses_bad_chars_and_trailing_bits() {
        assert_eq!(
            decode("6n9hl"),
            Err(DecodeError::InvalidChar { ch: 'l', pos: 4 })
        );
        assert_eq!(decode("6n9hq6"), Err(DecodeError::TrailingBits));
        assert!(decode("é").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(decode(&encode(&data)).unwrap(), data.clone());
            prop_assert_eq!(decode(&encode(&data).to_uppercase()).unwrap(), data);
        }

        #[test]
        fn decode_never_panics(s in ".{0,120}") {
            let _ = decode(&s);
        }
    }
}
