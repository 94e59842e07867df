//! Safety numbers: 60 digits derived from both account keys, the same on both sides, compared in person
//! (or by reading them out) to rule out a man in the middle who swapped an address.

use crate::identity::AccountKey;
use sha2::{Digest, Sha512};

/// The safety number of two accounts as 12 groups of 5 digits. Symmetric: `safety_number(a, b) ==
/// safety_number(b, a)`.
pub fn safety_number(a: &AccountKey, b: &AccountKey) -> String {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    // Iterated like Signal's fingerprints, so grinding a key to collide with a given number is expensive.
    let mut digest = Sha512::new()
        .chain_update(b"kith safety number v1")
        .chain_update(lo.as_bytes())
        .chain_update(hi.as_bytes())
        .finalize();
    for _ in 0..5200 {
        digest = Sha512::new()
            .chain_update(digest)
            .chain_update(lo.as_bytes())
            .chain_update(hi.as_bytes())
            .finalize();
    }
    digest
        .chunks(5)
        .take(12)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AccountSecret;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn symmetric_and_distinct() {
        let mut rng = StdRng::seed_from_u64(5);
        let a = AccountSecret::generate(&mut rng).public();
        let b = AccountSecret::generate(&mut rng).public();
        let c = AccountSecret::generate(&mut rng).public();
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
        assert_eq!(ab.len(), 12 * 5 + 11);
        assert!(
            ab.split(' ')
                .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit()))
        );
    }
}
