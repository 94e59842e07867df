//! The discovery record: what a device publishes in the Mainline DHT so that anyone who knows an address,
//! and only they, can find where its owner is reachable in one period.
//!
//! Layers, outside in:
//! * a BEP44 mutable item under the period's blinded key `A'_p` (see [`crate::blind`]), signed by the blinded
//!   secret. DHT nodes see only `A'_p`, a sequence number and a value of exactly [`RECORD_VALUE_LEN`] bytes.
//! * the value: `nonce (24) | XChaCha20-Poly1305 ciphertext`, keyed by SHA-256 over the account key and
//!   `A'_p`, so reading it needs the address; the associated data is `A'_p`.
//! * the plaintext: `u16 length | postcard(SignedRecord) | zero padding` to one fixed size, so every record
//!   of every user looks the same.
//! * [`SignedRecord`]: the [`RecordBody`] (period, expiry, devices with their certificates, endpoint ids,
//!   relays and direct addresses) signed by the account over the blinded key as well, so a record cannot be
//!   moved to another period.
//!
//! [`seal`] builds the value; [`open`] checks everything and yields a [`VerifiedRecord`]; [`RecordCache`]
//! keeps the highest valid sequence per (account, period) and refuses older ones.

use crate::blind::{BlindedKey, PeriodNum};
use crate::identity::{
    AccountKey, AccountSecret, DeviceCert, EndpointKey, Signature, domain_signed_bytes,
};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Size of every record value in the DHT (BEP44 allows up to 1000 bytes).
pub const RECORD_VALUE_LEN: usize = 960;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const PLAINTEXT_LEN: usize = RECORD_VALUE_LEN - NONCE_LEN - TAG_LEN;
/// Record format version inside the body.
pub const RECORD_VERSION: u8 = 3;
pub const MAX_DEVICES: usize = 4;

/// One device of the account as published for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub cert: DeviceCert,
    /// The device's endpoint for this period.
    pub endpoint: EndpointKey,
    pub relays: Vec<String>,
    /// Direct addresses, only where the user's policy allows publishing them.
    pub direct: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    pub version: u8,
    pub period: u64,
    /// Unix seconds after which the record must not be used.
    pub expires: u64,
    /// What anyone who knows the address may use: the relay-only request endpoints (or nothing, when the
    /// owner accepts no requests from strangers).
    pub devices: Vec<DeviceEntry>,
    /// [`ContactEntry`]s sealed under the owner's contact key (see [`seal_contacts`]): readable only by
    /// people who hold the owner's full card, i.e. contacts.
    pub contacts: Option<Vec<u8>>,
}

/// Where one device is reachable, for contacts only: its contact endpoint (which may go direct) and its
/// addresses. Authenticated by the account's signature over the whole body; the hello proves the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactEntry {
    pub endpoint: EndpointKey,
    pub relays: Vec<String>,
    pub direct: Vec<SocketAddr>,
}

/// The contacts-only part of a record: where the owner's devices are, and where its mailboxes are (so a
/// contact can deposit while the owner is away; see [`crate::mailbox`]). Mailboxes are listed as far as the
/// record has room, the first ones first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContactPart {
    pub entries: Vec<ContactEntry>,
    pub mailboxes: Vec<ContactEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    pub body: RecordBody,
    pub signature: Signature,
}

/// A record whose every layer checked out. Only [`open`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    account: AccountKey,
    seq: i64,
    body: RecordBody,
    blinded: BlindedKey,
    value: Vec<u8>,
    item_signature: Signature,
}

impl VerifiedRecord {
    pub fn account(&self) -> AccountKey {
        self.account
    }
    pub fn seq(&self) -> i64 {
        self.seq
    }
    pub fn body(&self) -> &RecordBody {
        &self.body
    }
    pub fn blinded(&self) -> &BlindedKey {
        &self.blinded
    }
    /// The DHT item exactly as found (value and the blinded key's signature), so anyone holding it can
    /// store it again and keep it alive while its owner is offline.
    pub fn item(&self) -> (&[u8], &Signature) {
        (&self.value, &self.item_signature)
    }
    /// The contact entries, if `contact_key` (from the owner's card) opens them.
    pub fn contact_entries(
        &self,
        contact_key: &[u8; 32],
    ) -> Result<Vec<ContactEntry>, RecordError> {
        self.contact_part(contact_key).map(|p| p.entries)
    }

    /// The whole contacts-only part (entries and mailboxes), if `contact_key` opens it.
    pub fn contact_part(&self, contact_key: &[u8; 32]) -> Result<ContactPart, RecordError> {
        match &self.body.contacts {
            Some(blob) => open_contacts(contact_key, &self.blinded, blob),
            None => Ok(ContactPart::default()),
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record value has {len} bytes, records are exactly {RECORD_VALUE_LEN}")]
    WrongSize { len: usize },
    #[error("the DHT item's signature does not verify under the period's blinded key")]
    BadItemSignature,
    #[error("record does not decrypt for this address")]
    Decrypt,
    #[error("record plaintext is malformed")]
    Malformed,
    #[error("record version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("record is signed for period {found}, expected {expected}")]
    WrongPeriod { found: u64, expected: u64 },
    #[error("record expired")]
    Expired,
    #[error("the account's signature on the record does not verify")]
    BadSignature,
    #[error("a device certificate in the record is invalid or names another account")]
    BadDeviceCert,
    #[error("record has sequence {seq}, older than the {newest} already seen")]
    OlderSequence { seq: i64, newest: i64 },
    #[error(
        "record is too large for the fixed record size ({len} > {max} bytes): publish fewer devices or relays"
    )]
    TooLarge { len: usize, max: usize },
}

fn record_key(account: &AccountKey, blinded: &BlindedKey) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"kith record key v1")
        .chain_update(account.as_bytes())
        .chain_update(blinded.as_bytes())
        .finalize()
        .into()
}

/// The key of the contacts-only part of the record of `blinded`: a secret, wiped when dropped.
fn contacts_key(contact_key: &[u8; 32], blinded: &BlindedKey) -> zeroize::Zeroizing<[u8; 32]> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    Sha256::new()
        .chain_update(b"kith record contacts key v1")
        .chain_update(contact_key)
        .chain_update(blinded.as_bytes())
        .finalize_into((&mut *key).into());
    key
}

/// Seals the contacts-only part for the record of `blinded` under the owner's contact key, padded with
/// zeros to `pad_to` bytes of plaintext (at least its own length).
pub fn seal_contacts<R: rand::CryptoRng + ?Sized>(
    contact_key: &[u8; 32],
    blinded: &BlindedKey,
    part: &ContactPart,
    pad_to: usize,
    rng: &mut R,
) -> Result<Vec<u8>, RecordError> {
    if part.entries.len() > MAX_DEVICES || part.mailboxes.len() > crate::mailbox::MAX_MAILBOXES {
        return Err(RecordError::Malformed);
    }
    let mut plain =
        zeroize::Zeroizing::new(postcard::to_allocvec(part).map_err(|_| RecordError::Malformed)?);
    if plain.len() < pad_to {
        plain.resize(pad_to, 0);
    }
    seal_with(&contacts_key(contact_key, blinded), blinded, &plain, rng)
}

/// Seals a record whose contacts-only part `part` fills all the room the rest of `body` leaves (its
/// `contacts` is replaced). Anyone with the address sees the public part and the contacts part's length;
/// filled, that length follows from the public part alone, so it tells nothing of how many endpoints,
/// addresses or mailboxes the owner's contacts may read. [`RecordError::TooLarge`] if `part` does not fit.
pub fn seal_filled<R: rand::CryptoRng + ?Sized>(
    account: &AccountSecret,
    blinded: &BlindedKey,
    mut body: RecordBody,
    contact_key: &[u8; 32],
    part: &ContactPart,
    rng: &mut R,
) -> Result<Vec<u8>, RecordError> {
    body.contacts = Some(vec![]);
    let without = postcard::to_allocvec(&SignedRecord {
        body: body.clone(),
        signature: Signature([0; 64]),
    })
    .map_err(|_| RecordError::Malformed)?
    .len();
    // Room for the blob: what the plaintext holds beyond the length prefix and the rest of the record,
    // less one byte for its own length prefix growing from one byte (empty) to two (128 to 16383 bytes).
    let too_large = |need: usize| RecordError::TooLarge {
        len: need,
        max: PLAINTEXT_LEN,
    };
    let blob = PLAINTEXT_LEN
        .checked_sub(2 + without + 1)
        .ok_or(too_large(2 + without + 1))?;
    let room = blob
        .checked_sub(NONCE_LEN + TAG_LEN)
        .ok_or(too_large(2 + without + 1 + NONCE_LEN + TAG_LEN))?;
    let need = postcard::to_allocvec(part)
        .map_err(|_| RecordError::Malformed)?
        .len();
    if need > room {
        return Err(too_large(PLAINTEXT_LEN + need - room));
    }
    body.contacts = Some(seal_contacts(contact_key, blinded, part, room, rng)?);
    seal(account, blinded, body, rng)
}

/// `nonce | XChaCha20-Poly1305(key, aad = blinded key)`.
fn seal_with<R: rand::CryptoRng + ?Sized>(
    key: &[u8; 32],
    blinded: &BlindedKey,
    plain: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, RecordError> {
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| RecordError::Malformed)?;
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: blinded.as_bytes(),
            },
        )
        .map_err(|_| RecordError::Malformed)?;
    let mut out = nonce.to_vec();
    out.extend(ct);
    Ok(out)
}

/// Opens what [`seal_with`] made; [`RecordError::Decrypt`] for a wrong key or damaged bytes.
fn open_with(
    key: &[u8; 32],
    blinded: &BlindedKey,
    blob: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, RecordError> {
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(RecordError::Malformed);
    }
    let (nonce, ct) = blob.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| RecordError::Malformed)?;
    let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| RecordError::Decrypt)?;
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ct,
                aad: blinded.as_bytes(),
            },
        )
        .map(zeroize::Zeroizing::new)
        .map_err(|_| RecordError::Decrypt)
}

/// Opens what [`seal_contacts`] sealed; fails with [`RecordError::Decrypt`] for a wrong key.
pub fn open_contacts(
    contact_key: &[u8; 32],
    blinded: &BlindedKey,
    blob: &[u8],
) -> Result<ContactPart, RecordError> {
    let plain = open_with(&contacts_key(contact_key, blinded), blinded, blob)?;
    match postcard::take_from_bytes::<ContactPart>(&plain) {
        Ok((part, padding))
            if padding.iter().all(|b| *b == 0)
                && part.entries.len() <= MAX_DEVICES
                && part.mailboxes.len() <= crate::mailbox::MAX_MAILBOXES =>
        {
            Ok(part)
        }
        _ => Err(RecordError::Malformed),
    }
}

fn signed_part(blinded: &BlindedKey, body: &RecordBody) -> Vec<u8> {
    domain_signed_bytes("kith discovery-record v1", &(blinded.as_bytes(), body))
}

/// The bytes a BEP44 mutable item signature covers (no salt): `3:seqi<seq>e1:v<len>:<value>`.
pub fn bep44_signable(seq: i64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("3:seqi{seq}e1:v{}:", value.len()).into_bytes();
    out.extend_from_slice(value);
    out
}

/// Encrypts and pads a record for `blinded` (the period's blinded key of `account`).
pub fn seal<R: rand::CryptoRng + ?Sized>(
    account: &AccountSecret,
    blinded: &BlindedKey,
    body: RecordBody,
    rng: &mut R,
) -> Result<Vec<u8>, RecordError> {
    let signature = account.sign(&signed_part(blinded, &body));
    let encoded = postcard::to_allocvec(&SignedRecord { body, signature })
        .map_err(|_| RecordError::Malformed)?;
    if encoded.len() + 2 > PLAINTEXT_LEN {
        return Err(RecordError::TooLarge {
            len: encoded.len() + 2,
            max: PLAINTEXT_LEN,
        });
    }
    let mut plain = zeroize::Zeroizing::new(vec![0u8; PLAINTEXT_LEN]);
    plain[..2].copy_from_slice(&(encoded.len() as u16).to_be_bytes());
    plain[2..2 + encoded.len()].copy_from_slice(&encoded);
    let value = seal_with(
        &record_key(&account.public(), blinded),
        blinded,
        &plain,
        rng,
    )?;
    debug_assert_eq!(value.len(), RECORD_VALUE_LEN);
    Ok(value)
}

/// Checks a record found in the DHT for `account` in `period` (whose blinded key is `blinded`): the item
/// signature, the size, the decryption, the account's signature, the period, the expiry and each device
/// certificate. `now` is Unix seconds.
pub fn open(
    account: &AccountKey,
    blinded: &BlindedKey,
    period: PeriodNum,
    seq: i64,
    value: &[u8],
    item_signature: &Signature,
    now: u64,
) -> Result<VerifiedRecord, RecordError> {
    blinded
        .verify(&bep44_signable(seq, value), item_signature)
        .map_err(|_| RecordError::BadItemSignature)?;
    if value.len() != RECORD_VALUE_LEN {
        return Err(RecordError::WrongSize { len: value.len() });
    }
    let plain = open_with(&record_key(account, blinded), blinded, value)?;
    let len = u16::from_be_bytes([plain[0], plain[1]]) as usize;
    let encoded = plain.get(2..2 + len).ok_or(RecordError::Malformed)?;
    let signed: SignedRecord = match postcard::take_from_bytes(encoded) {
        Ok((s, [])) => s,
        _ => return Err(RecordError::Malformed),
    };
    account
        .verify(&signed_part(blinded, &signed.body), &signed.signature)
        .map_err(|_| RecordError::BadSignature)?;
    let body = signed.body;
    if body.version != RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion(body.version));
    }
    if body.period != period.0 {
        return Err(RecordError::WrongPeriod {
            found: body.period,
            expected: period.0,
        });
    }
    if now > body.expires {
        return Err(RecordError::Expired);
    }
    if body.devices.len() > MAX_DEVICES
        || body
            .devices
            .iter()
            .any(|d| d.cert.account != *account || d.cert.verify().is_err())
    {
        return Err(RecordError::BadDeviceCert);
    }
    Ok(VerifiedRecord {
        account: *account,
        seq,
        body,
        blinded: *blinded,
        value: value.to_vec(),
        item_signature: *item_signature,
    })
}

/// Keeps the newest valid record per (account, period); refuses older sequence numbers. Bounded.
#[derive(Debug, Default)]
pub struct RecordCache {
    entries: HashMap<(AccountKey, u64), VerifiedRecord>,
}

impl RecordCache {
    const MAX_ENTRIES: usize = 4096;

    /// Takes a verified record if it is at least as new as what is cached.
    pub fn offer(
        &mut self,
        period: PeriodNum,
        record: VerifiedRecord,
    ) -> Result<&VerifiedRecord, RecordError> {
        let key = (record.account, period.0);
        if let Some(old) = self.entries.get(&key)
            && old.seq > record.seq
        {
            return Err(RecordError::OlderSequence {
                seq: record.seq,
                newest: old.seq,
            });
        }
        if self.entries.len() >= Self::MAX_ENTRIES && !self.entries.contains_key(&key) {
            // Forget the oldest period first.
            if let Some(k) = self.entries.keys().min_by_key(|k| k.1).copied() {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(key, record);
        Ok(&self.entries[&key])
    }

    pub fn all(&self) -> impl Iterator<Item = &VerifiedRecord> {
        self.entries.values()
    }

    pub fn get(
        &self,
        account: &AccountKey,
        period: PeriodNum,
        now: u64,
    ) -> Option<&VerifiedRecord> {
        self.entries
            .get(&(*account, period.0))
            .filter(|r| r.body.expires >= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blind::{blind_secret, period_at};
    use crate::identity::{DeviceSecret, EndpointKey};
    use rand::{SeedableRng, rngs::StdRng};

    const LEN_MIN: u64 = 60;

    /// Issue 21, point 8: the key of the contacts-only part is wiped when dropped (a plain array before).
    #[test]
    fn the_contacts_part_key_is_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let blinded = blind_secret(
            &AccountSecret::generate(&mut StdRng::seed_from_u64(2)),
            period_at(0, LEN_MIN),
            LEN_MIN,
        )
        .public();
        let key = contacts_key(&[7; 32], &blinded);
        wiped(&key);
        assert_ne!(*key, *contacts_key(&[8; 32], &blinded));
    }

    struct Fixture {
        account: AccountSecret,
        device: DeviceSecret,
        endpoint: EndpointKey,
    }

    fn fixture(seed: u64) -> Fixture {
        let mut rng = StdRng::seed_from_u64(seed);
        let account = AccountSecret::generate(&mut rng);
        let device = DeviceSecret::generate(&mut rng);
        let endpoint =
            EndpointKey::from_bytes(*DeviceSecret::generate(&mut rng).public().as_bytes()).unwrap();
        Fixture {
            account,
            device,
            endpoint,
        }
    }

    fn body(f: &Fixture, period: u64, devices: usize) -> RecordBody {
        let entry = DeviceEntry {
            cert: DeviceCert::issue(&f.account, f.device.public(), 1),
            endpoint: f.endpoint,
            relays: vec!["https://relay.example./".into()],
            direct: vec!["127.0.0.1:4000".parse().unwrap()],
        };
        RecordBody {
            version: RECORD_VERSION,
            period,
            expires: 10_000_000,
            devices: vec![entry; devices],
            contacts: None,
        }
    }

    #[test]
    fn contact_entries_open_only_with_the_contact_key() {
        let f = fixture(1);
        let p = period_at(1_000_000, LEN_MIN);
        let secret = blind_secret(&f.account, p, LEN_MIN);
        let contact_key = [7u8; 32];
        // The largest realistic record: one public device entry, and a contact entry with every address and
        // relay a card may carry.
        let entry = ContactEntry {
            endpoint: f.endpoint,
            relays: (0..4)
                .map(|i| format!("https://relay-{i}.example.org./"))
                .collect(),
            direct: (0..8)
                .map(|i| SocketAddr::from(([203, 0, 113, i], 40_000 + u16::from(i))))
                .collect(),
        };
        let mut b = body(&f, p.0, 1);
        b.contacts = Some(
            seal_contacts(
                &contact_key,
                &secret.public(),
                &ContactPart {
                    entries: vec![entry.clone()],
                    mailboxes: vec![],
                },
                0,
                &mut StdRng::seed_from_u64(3),
            )
            .unwrap(),
        );
        let (key, seq, value, sig) = publish(&f, p, b, 5);
        assert_eq!(value.len(), RECORD_VALUE_LEN);
        let rec = open(&f.account.public(), &key, p, seq, &value, &sig, 1_000_000).unwrap();
        assert_eq!(rec.contact_entries(&contact_key).unwrap(), vec![entry]);
        // Whoever has only the address reads the public part and nothing of the contact part.
        assert_eq!(rec.contact_entries(&[8u8; 32]), Err(RecordError::Decrypt));
        assert_eq!(rec.body().devices.len(), 1);
        // The raw item is kept, so a contact can store it again unchanged.
        let (v, s) = rec.item();
        assert_eq!((v, s), (&value[..], &sig));
        // A blob sealed for another period's key does not open under this one.
        let other = blind_secret(&f.account, PeriodNum(p.0 + 1), LEN_MIN).public();
        let blob = rec.body().contacts.clone().unwrap();
        assert_eq!(
            open_contacts(&contact_key, &other, &blob),
            Err(RecordError::Decrypt)
        );
    }

    /// Seals and signs like a publisher: returns (blinded public key, seq, value, item signature).
    /// Issue 21, point 6: the contacts-only part fills the room the public part leaves, so its length
    /// (visible to anyone with the address) is the same whatever it holds: one endpoint with nothing, or
    /// every address, relay and mailbox that fits. Unpadded, the lengths differed by hundreds of bytes.
    #[test]
    fn the_contacts_part_has_one_length_whatever_it_holds() {
        let f = fixture(6);
        let p = period_at(1_000_000, LEN_MIN);
        let secret = blind_secret(&f.account, p, LEN_MIN);
        let contact_key = [9u8; 32];
        let entry = |addrs: u8, relays: usize| ContactEntry {
            endpoint: f.endpoint,
            relays: (0..relays)
                .map(|i| format!("https://relay-{i}.example.org./"))
                .collect(),
            direct: (0..addrs)
                .map(|i| SocketAddr::from(([203, 0, 113, i], 40_000)))
                .collect(),
        };
        let small = ContactPart {
            entries: vec![entry(0, 0)],
            mailboxes: vec![],
        };
        let large = ContactPart {
            entries: vec![entry(4, 2), entry(2, 1)],
            mailboxes: vec![entry(1, 1), entry(1, 1)],
        };
        let mut blobs = vec![];
        for part in [&small, &large] {
            let value = seal_filled(
                &f.account,
                &secret.public(),
                body(&f, p.0, 1),
                &contact_key,
                part,
                &mut StdRng::seed_from_u64(3),
            )
            .unwrap();
            let sig = secret.sign(&bep44_signable(5, &value));
            let rec = open(
                &f.account.public(),
                &secret.public(),
                p,
                5,
                &value,
                &sig,
                1_000_000,
            )
            .unwrap();
            assert_eq!(&rec.contact_part(&contact_key).unwrap(), part);
            blobs.push(rec.body().contacts.clone().unwrap().len());
        }
        assert_eq!(
            blobs[0], blobs[1],
            "the contacts part's length shows what it holds"
        );
        // It fills the record: nothing but the outer padding's few bytes is left.
        let unpadded = seal_contacts(&contact_key, &secret.public(), &small, 0, &mut rand::rng())
            .unwrap()
            .len();
        assert!(blobs[0] > unpadded + 300, "{} vs {unpadded}", blobs[0]);
        // More than fits is refused as too large (the caller then drops mailboxes or relays).
        let huge = ContactPart {
            entries: (0..4).map(|_| entry(8, 4)).collect(),
            mailboxes: vec![],
        };
        assert!(matches!(
            seal_filled(
                &f.account,
                &secret.public(),
                body(&f, p.0, 1),
                &contact_key,
                &huge,
                &mut rand::rng(),
            ),
            Err(RecordError::TooLarge { .. })
        ));
    }

    fn publish(
        f: &Fixture,
        period: PeriodNum,
        b: RecordBody,
        seq: i64,
    ) -> (BlindedKey, i64, Vec<u8>, Signature) {
        let secret = blind_secret(&f.account, period, LEN_MIN);
        let value = seal(
            &f.account,
            &secret.public(),
            b,
            &mut StdRng::seed_from_u64(9),
        )
        .unwrap();
        let sig = secret.sign(&bep44_signable(seq, &value));
        (secret.public(), seq, value, sig)
    }

    #[test]
    fn mailboxes_travel_in_the_contact_part() {
        let f = fixture(4);
        let p = period_at(1_000_000, LEN_MIN);
        let secret = blind_secret(&f.account, p, LEN_MIN);
        let contact_key = [9u8; 32];
        // Typical hints: an endpoint, a relay, two addresses. The owner's own entry and four mailboxes fit
        // beside a public device entry.
        let typical = |i: u8| ContactEntry {
            endpoint: fixture(10 + u64::from(i)).endpoint,
            relays: vec![format!("https://relay-{i}.example.org./")],
            direct: vec![
                SocketAddr::from(([198, 51, 100, i], 4433)),
                SocketAddr::from(([10, 0, 0, i], 4433)),
            ],
        };
        let part = ContactPart {
            entries: vec![typical(0)],
            mailboxes: (1..=4).map(typical).collect(),
        };
        let mut b = body(&f, p.0, 1);
        b.contacts = Some(
            seal_contacts(
                &contact_key,
                &secret.public(),
                &part,
                0,
                &mut StdRng::seed_from_u64(3),
            )
            .unwrap(),
        );
        let (key, seq, value, sig) = publish(&f, p, b, 5);
        let rec = open(&f.account.public(), &key, p, seq, &value, &sig, 1_000_000).unwrap();
        assert_eq!(rec.contact_part(&contact_key).unwrap(), part);
        assert_eq!(rec.contact_part(&[1u8; 32]), Err(RecordError::Decrypt));
        // More than MAX_MAILBOXES is refused when sealing.
        let too_many = ContactPart {
            entries: vec![],
            mailboxes: (0..5).map(typical).collect(),
        };
        assert!(
            seal_contacts(
                &contact_key,
                &secret.public(),
                &too_many,
                0,
                &mut StdRng::seed_from_u64(3)
            )
            .is_err()
        );
    }

    #[test]
    fn round_trip_and_fixed_size() {
        let f = fixture(1);
        let p = period_at(1_000_000, LEN_MIN);
        for n in 1..=MAX_DEVICES {
            let (key, seq, value, sig) = publish(&f, p, body(&f, p.0, n), 5);
            assert_eq!(
                value.len(),
                RECORD_VALUE_LEN,
                "every record has the same size"
            );
            let rec = open(&f.account.public(), &key, p, seq, &value, &sig, 1_000_000).unwrap();
            assert_eq!(rec.body().devices.len(), n);
            assert_eq!(rec.seq(), 5);
        }
    }

    #[test]
    fn bad_item_signature_is_refused() {
        let (f, m) = (fixture(1), fixture(2));
        let p = PeriodNum(7);
        let (key, seq, value, _) = publish(&f, p, body(&f, 7, 1), 5);
        let forged = blind_secret(&m.account, p, LEN_MIN).sign(&bep44_signable(seq, &value));
        assert_eq!(
            open(&f.account.public(), &key, p, seq, &value, &forged, 0),
            Err(RecordError::BadItemSignature)
        );
        // A higher seq under the old signature does not verify either.
        let (_, _, _, sig) = publish(&f, p, body(&f, 7, 1), 5);
        assert_eq!(
            open(&f.account.public(), &key, p, 6, &value, &sig, 0),
            Err(RecordError::BadItemSignature)
        );
    }

    #[test]
    fn wrong_period_is_refused() {
        let f = fixture(1);
        // The body says period 8 but is published under period 7's key.
        let (key, seq, value, sig) = publish(&f, PeriodNum(7), body(&f, 8, 1), 5);
        assert_eq!(
            open(
                &f.account.public(),
                &key,
                PeriodNum(7),
                seq,
                &value,
                &sig,
                0
            ),
            Err(RecordError::WrongPeriod {
                found: 8,
                expected: 7
            })
        );
    }

    #[test]
    fn other_addresses_cannot_read_it_and_signatures_are_checked() {
        let (f, m) = (fixture(1), fixture(2));
        let p = PeriodNum(7);
        let (key, seq, value, sig) = publish(&f, p, body(&f, 7, 1), 5);
        assert_eq!(
            open(&m.account.public(), &key, p, seq, &value, &sig, 0),
            Err(RecordError::Decrypt)
        );
        // Mallory seals a record claiming Alice's devices with her own account signature under a key she controls:
        // opening it as Alice fails at the account signature.
        let secret = blind_secret(&f.account, p, LEN_MIN);
        let mut b = body(&f, 7, 1);
        b.devices[0].cert = DeviceCert::issue(&m.account, f.device.public(), 1);
        let value = seal(
            &f.account,
            &secret.public(),
            b,
            &mut StdRng::seed_from_u64(1),
        )
        .unwrap();
        let sig = secret.sign(&bep44_signable(1, &value));
        assert_eq!(
            open(&f.account.public(), &secret.public(), p, 1, &value, &sig, 0),
            Err(RecordError::BadDeviceCert)
        );
        assert_eq!(
            open(&f.account.public(), &key, p, seq, &value[1..], &sig, 0),
            Err(RecordError::BadItemSignature)
        );
    }

    #[test]
    fn expired_and_older_records_are_refused() {
        let f = fixture(1);
        let p = PeriodNum(7);
        let (key, seq, value, sig) = publish(&f, p, body(&f, 7, 1), 5);
        assert_eq!(
            open(&f.account.public(), &key, p, seq, &value, &sig, 10_000_001),
            Err(RecordError::Expired)
        );
        let mut cache = RecordCache::default();
        let newer = {
            let (k, s, v, g) = publish(&f, p, body(&f, 7, 2), 9);
            open(&f.account.public(), &k, p, s, &v, &g, 0).unwrap()
        };
        let older = open(&f.account.public(), &key, p, seq, &value, &sig, 0).unwrap();
        cache.offer(p, newer).unwrap();
        assert_eq!(
            cache.offer(p, older).unwrap_err(),
            RecordError::OlderSequence { seq: 5, newest: 9 }
        );
        assert_eq!(cache.get(&f.account.public(), p, 0).unwrap().seq(), 9);
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let f = fixture(1);
        let secret = blind_secret(&f.account, PeriodNum(1), LEN_MIN);
        let mut b = body(&f, 1, 1);
        b.devices[0].relays = vec!["x".repeat(300); 4];
        b.devices = vec![b.devices[0].clone(); 3];
        assert!(matches!(
            seal(
                &f.account,
                &secret.public(),
                b,
                &mut StdRng::seed_from_u64(1)
            ),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
