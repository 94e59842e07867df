//! Addresses (`Address::from_str`) and z-base-32 (`zbase32::decode`), as typed or pasted by a user.
//!
//! Invariants: an address that parses prints as the text it was parsed from (lowercased, without the
//! scheme, whitespace or a card part), and parses again to itself; z-base-32 that decodes encodes back to
//! the same text (lowercased), and any bytes encode to text that decodes to them.
#![no_main]

use kith_core::{Address, zbase32};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let a = Address::new(kith_fuzz::account().public());
    vec![
        a.to_string().into_bytes(),
        a.to_string().to_uppercase().into_bytes(),
        format!("  {a}?card=ybnd\n").into_bytes(),
        zbase32::encode(b"kith").into_bytes(),
    ]
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("address", seeds); },
    |data: &[u8]| {
    let decoded = zbase32::encode(data);
    assert_eq!(zbase32::decode(&decoded).as_deref(), Ok(data));
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(bytes) = zbase32::decode(text) {
        assert_eq!(zbase32::encode(&bytes), text.to_ascii_lowercase());
    }
    if let Ok(a) = text.parse::<Address>() {
        let body = &text.trim()[kith_core::address::SCHEME.len()..];
        let body = body.split('?').next().unwrap_or("");
        assert_eq!(a.body(), body.to_ascii_lowercase());
        assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        assert_eq!(Address::new(a.account()), a);
    }
});
