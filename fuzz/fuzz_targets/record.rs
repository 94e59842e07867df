//! Discovery records, outer layers: `record::open` of a value found in the DHT for the fixture's address
//! and period, the way discovery does.
//!
//! Input: a mode byte, then: (0) the value as found (any length; the target signs it with the period's
//! blinded key as the DHT item signature, so the size and AEAD checks are reached); (1) the plaintext
//! inside the AEAD (`u16 length | postcard(SignedRecord) | padding`, cut or zero-padded to its fixed size),
//! encrypted under the address's record key, so the fuzzer reaches the postcard layer and the checks
//! after it; (2) a `RecordBody` in postcard, sealed by the account with `record::seal` as a publisher
//! does, so the checks behind the account's signature (version, period, expiry, device certificates)
//! are reached.
//! Invariants: a value the target encrypted always decrypts; a record that opens re-seals to a value
//! that opens to the same body; an honestly sealed record is refused only for what its body says.
#![no_main]

use kith_core::record::{self, RECORD_VALUE_LEN, RecordBody, RecordError};
use libfuzzer_sys::fuzz_target;

const PLAINTEXT_LEN: usize = RECORD_VALUE_LEN - 24 - 16;

fn body() -> RecordBody {
    RecordBody {
        version: record::RECORD_VERSION,
        period: kith_fuzz::period().0,
        expires: kith_fuzz::NOW + 3_600,
        devices: vec![record::DeviceEntry {
            cert: kith_fuzz::device_cert(),
            endpoint: kith_fuzz::endpoint(),
            relays: vec!["https://relay.example/".into()],
            direct: vec!["192.0.2.1:4433".parse().unwrap()],
        }],
        contacts: Some(vec![0; 64]),
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let b = body();
    let value = record::seal(
        kith_fuzz::account(),
        &kith_fuzz::blinded(),
        b.clone(),
        &mut kith_fuzz::rng(),
    )
    .unwrap();
    // The plaintext as `seal` lays it out (its signature is over the blinded key, as the record's).
    let signed = record::SignedRecord {
        signature: kith_fuzz::account().sign(b"not the record's signature"),
        body: b.clone(),
    };
    let enc = postcard::to_allocvec(&signed).unwrap();
    let mut plain = (enc.len() as u16).to_be_bytes().to_vec();
    plain.extend(&enc);
    vec![
        [&[0u8][..], &value].concat(),
        [&[1u8][..], &plain].concat(),
        [&[2u8][..], &postcard::to_allocvec(&b).unwrap()].concat(),
    ]
}

fn open(value: &[u8], seq: i64) -> Result<record::VerifiedRecord, RecordError> {
    let sig = kith_fuzz::blinded_secret().sign(&record::bep44_signable(seq, value));
    record::open(
        &kith_fuzz::account().public(),
        &kith_fuzz::blinded(),
        kith_fuzz::period(),
        seq,
        value,
        &sig,
        kith_fuzz::NOW,
    )
}

fn check_opened(rec: &record::VerifiedRecord, value: &[u8], seq: i64) {
    assert_eq!(rec.account(), kith_fuzz::account().public());
    assert_eq!(rec.seq(), seq);
    assert_eq!(rec.item().0, value);
    assert_eq!(rec.body().period, kith_fuzz::period().0);
    assert!(rec.body().devices.len() <= record::MAX_DEVICES);
    assert!(rec.body().expires >= kith_fuzz::NOW);
    let again = record::seal(
        kith_fuzz::account(),
        &kith_fuzz::blinded(),
        rec.body().clone(),
        &mut kith_fuzz::rng(),
    )
    .expect("a record that opened seals again");
    assert_eq!(
        open(&again, seq + 1)
            .expect("a re-sealed record opens")
            .body(),
        rec.body()
    );
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("record", seeds); },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let seq = 1;
    match mode % 3 {
        0 => {
            if let Ok(rec) = open(rest, seq) {
                check_opened(&rec, rest, seq);
            }
        }
        1 => {
            let mut plain = rest.to_vec();
            plain.resize(PLAINTEXT_LEN, 0);
            let account = kith_fuzz::account().public();
            let blinded = kith_fuzz::blinded();
            let value = kith_fuzz::aead_seal(&kith_fuzz::record_key(&account, &blinded), &blinded, &plain);
            assert_eq!(value.len(), RECORD_VALUE_LEN);
            match open(&value, seq) {
                Ok(rec) => check_opened(&rec, &value, seq),
                Err(RecordError::Decrypt | RecordError::WrongSize { .. } | RecordError::BadItemSignature) => {
                    panic!("the target's encryption no longer matches the record's: fuzzing stops at the AEAD")
                }
                Err(_) => {}
            }
        }
        _ => {
            let Ok(body) = postcard::from_bytes::<RecordBody>(rest) else { return };
            let Ok(value) = record::seal(kith_fuzz::account(), &kith_fuzz::blinded(), body.clone(), &mut kith_fuzz::rng()) else {
                return;
            };
            match open(&value, seq) {
                Ok(rec) => {
                    assert_eq!(rec.body(), &body);
                    check_opened(&rec, &value, seq);
                }
                Err(
                    RecordError::UnsupportedVersion(_)
                    | RecordError::WrongPeriod { .. }
                    | RecordError::Expired
                    | RecordError::BadDeviceCert,
                ) => {}
                Err(e) => panic!("an honestly sealed record refused: {e}"),
            }
        }
    }
});
