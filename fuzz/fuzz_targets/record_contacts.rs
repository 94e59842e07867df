//! Discovery records, the contacts-only part: `record::open_contacts` under the fixture's contact key,
//! as a contact reads a record's `contacts` blob.
//!
//! Input: a mode byte, then: (0) the blob as found in a record (nonce and ciphertext); (1) its plaintext
//! (`postcard(ContactPart)`), encrypted by the target under the contacts key, so the fuzzer reaches the
//! postcard layer.
//! Invariants: a blob the target encrypted always decrypts; a part that opens is within the limits, seals
//! again with `seal_contacts`, and opens to itself.
#![no_main]

use kith_core::record::{self, ContactEntry, ContactPart, RecordError};
use libfuzzer_sys::fuzz_target;

fn part() -> ContactPart {
    let entry = ContactEntry {
        endpoint: kith_fuzz::endpoint(),
        relays: vec!["https://relay.example/".into()],
        direct: vec![
            "192.0.2.1:4433".parse().unwrap(),
            "[2001:db8::1]:4433".parse().unwrap(),
        ],
    };
    ContactPart {
        entries: vec![entry.clone()],
        mailboxes: vec![entry],
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let blob = record::seal_contacts(
        &kith_fuzz::CONTACT_KEY,
        &kith_fuzz::blinded(),
        &part(),
        0,
        &mut kith_fuzz::rng(),
    )
    .unwrap();
    vec![
        [&[0u8][..], &blob].concat(),
        [&[1u8][..], &postcard::to_allocvec(&part()).unwrap()].concat(),
        [
            &[1u8][..],
            &postcard::to_allocvec(&ContactPart::default()).unwrap(),
        ]
        .concat(),
    ]
}

fn check(part: &ContactPart) {
    assert!(part.entries.len() <= record::MAX_DEVICES);
    assert!(part.mailboxes.len() <= kith_core::mailbox::MAX_MAILBOXES);
    let blinded = kith_fuzz::blinded();
    let blob = record::seal_contacts(
        &kith_fuzz::CONTACT_KEY,
        &blinded,
        part,
        0,
        &mut kith_fuzz::rng(),
    )
    .expect("a part that opened seals again");
    assert_eq!(
        record::open_contacts(&kith_fuzz::CONTACT_KEY, &blinded, &blob).as_ref(),
        Ok(part)
    );
    // Another contact key does not open it.
    assert_eq!(
        record::open_contacts(&[0; 32], &blinded, &blob),
        Err(RecordError::Decrypt)
    );
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("record_contacts", seeds); },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let blinded = kith_fuzz::blinded();
    let blob = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        kith_fuzz::aead_seal(&kith_fuzz::contacts_key(&kith_fuzz::CONTACT_KEY, &blinded), &blinded, rest)
    };
    match record::open_contacts(&kith_fuzz::CONTACT_KEY, &blinded, &blob) {
        Ok(p) => check(&p),
        Err(RecordError::Decrypt) if mode % 2 == 1 => {
            panic!("the target's encryption no longer matches the record's: fuzzing stops at the AEAD")
        }
        Err(_) => {}
    }
});
