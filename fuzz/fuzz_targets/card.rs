//! Contact cards: the bytes a hello or the store carries (`ContactCard::from_bytes`), and the text a
//! user pastes (`ParsedContact::parse`, `ContactCard::from_str`).
//!
//! Input: a mode byte, then: (0) card bytes; (1) text; (2) a card body under the fixture's address (the
//! link `kith:<address>?card=<z-base-32 of the input>`, so the address part is right).
//! Invariants: a card read back from its bytes and from its link is the same card; what parses as an
//! address prints as an address that parses to it; a card link parses as that card wherever it is read.
#![no_main]

use kith_core::card::{ContactCard, ParsedContact};
use kith_core::{Address, zbase32};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let card = kith_fuzz::card();
    let link = card.to_link();
    let body = zbase32::decode(link.split_once("?card=").unwrap().1).unwrap();
    vec![
        [&[0u8][..], &card.to_bytes()].concat(),
        [&[1u8][..], link.as_bytes()].concat(),
        [&[1u8][..], card.address().to_string().as_bytes()].concat(),
        [&[2u8][..], &body].concat(),
    ]
}

fn check_card(card: &ContactCard) {
    assert_eq!(ContactCard::from_bytes(&card.to_bytes()).as_ref(), Ok(card));
    let link = card.to_link();
    assert_eq!(link.parse::<ContactCard>().as_ref(), Ok(card));
    match ParsedContact::parse(&link) {
        Ok(ParsedContact::Card(c)) => assert_eq!(&*c, card),
        other => panic!("a card's link parsed as {other:?}"),
    }
    assert_eq!(link.parse::<Address>(), Ok(card.address()));
}

fn check_text(text: &str) {
    match ParsedContact::parse(text) {
        Ok(ParsedContact::Card(c)) => check_card(&c),
        Ok(ParsedContact::Address(a)) => {
            assert_eq!(a.to_string().parse::<Address>(), Ok(a));
        }
        Err(_) => {}
    }
    if let Ok(c) = text.parse::<ContactCard>() {
        check_card(&c);
        // Without whitespace, the same text is read the same by `kith add`.
        if !text.chars().any(char::is_whitespace) {
            assert!(matches!(ParsedContact::parse(text), Ok(ParsedContact::Card(p)) if *p == c));
        }
    }
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("card", seeds); },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            if let Ok(c) = ContactCard::from_bytes(rest) {
                check_card(&c);
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_text(text);
            }
        }
        _ => {
            let address = Address::new(kith_fuzz::account().public());
            check_text(&format!("{address}?card={}", zbase32::encode(rest)));
        }
    }
});
