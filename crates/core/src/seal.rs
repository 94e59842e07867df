//! Sealing what may rest in a mailbox. Two layers, so that a mailbox learns neither who wrote nor what:
//!
//! * **Inner: a double ratchet per pair of devices** (Olm, from vodozemac, the Matrix implementation; no
//!   home-made ratchet). A [`RatchetAccount`] is one device's long-term Olm identity with its one-time and
//!   fallback keys; a device publishes them as a [`PrekeyBundle`] signed by its device key, and a peer that
//!   has the bundle opens a [`RatchetSession`] without the two ever being online together. Every message
//!   moves the ratchet: a message key is used once and deleted, so a message decrypts once and only once,
//!   and the state a thief finds today does not open yesterday's ciphertexts. The first messages of a
//!   session carry the sender's device certificate and its signature over its Olm identity key, so the
//!   receiver checks that the ratchet speaks for the account it expects.
//! * **Outer: the envelope a mailbox stores**, XChaCha20-Poly1305 under a key only the two accounts can
//!   compute ([`PairKey`]: X25519 of their account keys, through the Ed25519 -> X25519 map), padded to one
//!   of a few [`SIZE_CLASSES`], and deposited under a [`PairKey::deposit_token`] that changes every period.
//!   The Olm header (which names the sender's Olm identity key) is inside it.
//!
//! What a mailbox sees: a token that is the same for one contact within one period and unlinkable across
//! periods, a ciphertext of a fixed size class, and the times of deposit and fetch.
//!
//! vodozemac draws its own randomness (the OS generator) for Olm keys; everything else here takes an RNG.

use crate::identity::{
    AccountKey, AccountSecret, BadSignature, DeviceCert, DeviceKey, DeviceSecret,
};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use vodozemac::olm::{self, OlmMessage, SessionConfig};
use zeroize::Zeroizing;

/// Envelope sizes a mailbox can see, bytes. A message is padded up to the first class it fits. The
/// largest holds the longest message text ([`crate::wire::MAX_TEXT_BYTES`]) with the ratchet's overhead,
/// and still fits in one frame ([`crate::wire::MAX_FRAME_LEN`]) when the owner fetches it.
pub const SIZE_CLASSES: [usize; 4] = [512, 2048, 8192, 40_960];
const NONCE: usize = 24;
const TAG: usize = 16;

/// Why a seal could not be made or opened. Peers' bad input is one of these, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("message too large to seal: {0} bytes (at most {max})", max = max_inner())]
    TooLarge(usize),
    #[error("envelope of {0} bytes is not one of the size classes")]
    BadSize(usize),
    #[error("envelope does not open with this pair's key (not from this contact, or damaged)")]
    NotForUs,
    #[error("malformed sealed message: {0}")]
    Malformed(&'static str),
    #[error("the two account keys do not agree on a shared secret")]
    NoAgreement,
    #[error("the sender's device certificate or Olm key signature does not verify")]
    BadSignature,
    #[error("the sender's device belongs to another account")]
    WrongAccount,
    #[error("no ratchet session with this device yet, and the message does not start one")]
    NoSession,
    #[error(
        "the ratchet refused: {0} (a replay, or a message from a session this device no longer has)"
    )]
    Ratchet(String),
    #[error("stored ratchet state does not open: {0}")]
    Pickle(String),
}

impl From<BadSignature> for SealError {
    fn from(_: BadSignature) -> Self {
        Self::BadSignature
    }
}

fn max_inner() -> usize {
    SIZE_CLASSES[SIZE_CLASSES.len() - 1] - NONCE - TAG - 4
}

fn hkdf32(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"kith seal v1"), ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    let info: Vec<u8> = info.concat();
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(&info, &mut out[..]);
    out
}

/// The secret two accounts share: X25519 of one's account secret and the other's account key. Both sides
/// compute the same value; nobody else can.
pub struct PairKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for PairKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PairKey(..)")
    }
}

impl PairKey {
    pub fn derive(mine: &AccountSecret, theirs: &AccountKey) -> Result<Self, SealError> {
        let shared = mine.agree(theirs).ok_or(SealError::NoAgreement)?;
        // Bind both public keys, in a fixed order, so the key is the pair's and nobody else's.
        let me = mine.public();
        let (lo, hi) = if me.as_bytes() < theirs.as_bytes() {
            (me, *theirs)
        } else {
            (*theirs, me)
        };
        Ok(Self(hkdf32(
            &shared[..],
            &[b"pair", lo.as_bytes(), hi.as_bytes()],
        )))
    }

    /// The token under which the other account deposits into `owner`'s mailboxes during `period`. The
    /// owner tells its mailboxes the tokens of each period; a mailbox cannot tie one period's token to the
    /// next, nor any token to an account.
    pub fn deposit_token(&self, owner: &AccountKey, period: u64) -> [u8; 32] {
        *hkdf32(
            &self.0[..],
            &[b"deposit token", owner.as_bytes(), &period.to_be_bytes()],
        )
    }

    /// The deposit tokens of `pairs` (the owner's contacts) for `period`, as the owner hands them to its
    /// mailboxes: sorted by value, so their order says nothing. In the order of the contacts (by name),
    /// the i-th token of two periods was one contact's, and the order told the names' alphabetical rank.
    pub fn tokens_for_period(pairs: &[PairKey], owner: &AccountKey, period: u64) -> Vec<[u8; 32]> {
        let mut tokens: Vec<[u8; 32]> = pairs
            .iter()
            .map(|k| k.deposit_token(owner, period))
            .collect();
        tokens.sort_unstable();
        tokens
    }

    fn envelope_key(&self, owner: &AccountKey) -> Zeroizing<[u8; 32]> {
        hkdf32(&self.0[..], &[b"envelope", owner.as_bytes()])
    }

    /// Seals `inner` for `owner`'s mailbox: `nonce | ciphertext` of exactly one size class.
    pub fn seal<R: rand::CryptoRng + ?Sized>(
        &self,
        owner: &AccountKey,
        inner: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>, SealError> {
        let need = NONCE + TAG + 4 + inner.len();
        let class = SIZE_CLASSES
            .iter()
            .copied()
            .find(|c| *c >= need)
            .ok_or(SealError::TooLarge(inner.len()))?;
        let mut padded = Zeroizing::new(Vec::with_capacity(class - NONCE - TAG));
        padded.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        padded.extend_from_slice(inner);
        padded.resize(class - NONCE - TAG, 0);
        let mut nonce = [0u8; NONCE];
        rng.fill_bytes(&mut nonce);
        let key = self.envelope_key(owner);
        let cipher = XChaCha20Poly1305::new_from_slice(&key[..])
            .map_err(|_| SealError::TooLarge(inner.len()))?;
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &padded,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| SealError::TooLarge(inner.len()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        debug_assert_eq!(out.len(), class);
        Ok(out)
    }

    /// Opens an envelope sealed for `owner` by [`Self::seal`].
    pub fn open(&self, owner: &AccountKey, envelope: &[u8]) -> Result<Vec<u8>, SealError> {
        if !SIZE_CLASSES.contains(&envelope.len()) {
            return Err(SealError::BadSize(envelope.len()));
        }
        let (nonce, ct) = envelope.split_at(NONCE);
        let nonce: [u8; NONCE] = nonce.try_into().map_err(|_| SealError::NotForUs)?;
        let key = self.envelope_key(owner);
        let cipher =
            XChaCha20Poly1305::new_from_slice(&key[..]).map_err(|_| SealError::NotForUs)?;
        let padded = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: ct,
                        aad: owner.as_bytes(),
                    },
                )
                .map_err(|_| SealError::NotForUs)?,
        );
        let len = u32::from_be_bytes(
            padded
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(SealError::Malformed("no length"))?,
        ) as usize;
        padded
            .get(4..4 + len)
            .map(<[u8]>::to_vec)
            .ok_or(SealError::Malformed("length beyond the envelope"))
    }
}

/// A device's published Olm keys: its identity key, one-time keys (each opens one session) and a fallback
/// key (used when the one-time keys have run out), signed by the device key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    pub device: DeviceKey,
    pub identity: [u8; 32],
    pub one_time: Vec<[u8; 32]>,
    pub fallback: [u8; 32],
    pub signature: crate::identity::Signature,
}

const BUNDLE_DOMAIN: &[u8] = b"kith prekey bundle v1\0";
const IDENTITY_DOMAIN: &[u8] = b"kith olm identity v1\0";

impl PrekeyBundle {
    fn signed(
        device: &DeviceKey,
        identity: &[u8; 32],
        one_time: &[[u8; 32]],
        fallback: &[u8; 32],
    ) -> Vec<u8> {
        let mut m = BUNDLE_DOMAIN.to_vec();
        m.extend_from_slice(device.as_bytes());
        m.extend_from_slice(identity);
        m.extend_from_slice(fallback);
        for k in one_time {
            m.extend_from_slice(k);
        }
        m
    }

    pub fn verify(&self) -> Result<(), SealError> {
        Ok(self.device.verify(
            &Self::signed(&self.device, &self.identity, &self.one_time, &self.fallback),
            &self.signature,
        )?)
    }
}

/// One device's Olm account.
pub struct RatchetAccount(olm::Account);

impl std::fmt::Debug for RatchetAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RatchetAccount(..)")
    }
}

impl Default for RatchetAccount {
    fn default() -> Self {
        Self::new()
    }
}

/// The sender's proof that an Olm identity key speaks for its device, carried in the messages that start
/// a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderProof {
    pub cert: DeviceCert,
    pub identity: [u8; 32],
    /// The device's signature over the identity key.
    pub signature: crate::identity::Signature,
}

/// What goes inside an envelope: the Olm message, and with a session's first messages, the proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub proof: Option<SenderProof>,
    /// Olm message type (0: pre-key, 1: normal) and body.
    pub kind: u8,
    pub body: Vec<u8>,
}

impl Sealed {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, SealError> {
        postcard::from_bytes(b).map_err(|_| SealError::Malformed("not a sealed message"))
    }
}

impl RatchetAccount {
    pub fn new() -> Self {
        Self(olm::Account::new())
    }

    pub fn identity_key(&self) -> [u8; 32] {
        self.0.curve25519_key().to_bytes()
    }

    /// Makes fresh one-time keys (and a fallback key if there is none) and returns the bundle to publish.
    /// Keys are never marked published (vodozemac then hides the fallback key from this list, and a fresh
    /// one would be made at every call): the fallback key changes only through [`Self::rotate_fallback`].
    pub fn bundle(&mut self, device: &DeviceSecret, one_time: usize) -> PrekeyBundle {
        if one_time > 0 {
            self.0.generate_one_time_keys(one_time);
        }
        if self.0.fallback_key().is_empty() {
            self.0.generate_fallback_key();
        }
        let mut otks: Vec<[u8; 32]> = self
            .0
            .one_time_keys()
            .values()
            .map(|k| k.to_bytes())
            .collect();
        otks.sort_unstable();
        let fallback = self
            .0
            .fallback_key()
            .values()
            .next()
            .map(|k| k.to_bytes())
            .unwrap_or_default();
        let identity = self.identity_key();
        let dev = device.public();
        let signature = device.sign(&PrekeyBundle::signed(&dev, &identity, &otks, &fallback));
        PrekeyBundle {
            device: dev,
            identity,
            one_time: otks,
            fallback,
            signature,
        }
    }

    /// A new fallback key; the one before it stays usable (for bundles handed out before), the one before
    /// that is forgotten. Sessions started on a forgotten key can no longer be made again from this
    /// account: what their first messages said is then out of a thief's reach.
    pub fn rotate_fallback(&mut self) {
        self.0.forget_fallback_key();
        self.0.generate_fallback_key();
    }

    /// The proof to put in the first messages of a session.
    pub fn proof(&self, device: &DeviceSecret, cert: &DeviceCert) -> SenderProof {
        let identity = self.identity_key();
        let mut m = IDENTITY_DOMAIN.to_vec();
        m.extend_from_slice(&identity);
        SenderProof {
            cert: cert.clone(),
            identity,
            signature: device.sign(&m),
        }
    }

    /// Starts a session to the device of `bundle` (already checked to belong to the right account), with
    /// its `one_time` key if given, else its fallback key.
    pub fn outbound(
        &self,
        bundle: &PrekeyBundle,
        one_time: Option<[u8; 32]>,
    ) -> Result<RatchetSession, SealError> {
        bundle.verify()?;
        let identity = vodozemac::Curve25519PublicKey::from_bytes(bundle.identity);
        let otk = vodozemac::Curve25519PublicKey::from_bytes(one_time.unwrap_or(bundle.fallback));
        self.0
            .create_outbound_session(SessionConfig::version_1(), identity, otk)
            .map(RatchetSession)
            .map_err(|e| SealError::Ratchet(e.to_string()))
    }

    /// Opens a sealed message that starts a session (a pre-key message) from a device of `expected`.
    /// Returns the session and the plaintext.
    pub fn inbound(
        &mut self,
        expected: &AccountKey,
        sealed: &Sealed,
    ) -> Result<(DeviceKey, RatchetSession, Vec<u8>), SealError> {
        let proof = sealed.proof.as_ref().ok_or(SealError::NoSession)?;
        let device = verify_proof(expected, proof)?;
        let OlmMessage::PreKey(m) = olm_message(sealed)? else {
            return Err(SealError::NoSession);
        };
        let identity = vodozemac::Curve25519PublicKey::from_bytes(proof.identity);
        let r = self
            .0
            .create_inbound_session(SessionConfig::version_1(), identity, &m)
            .map_err(|e| SealError::Ratchet(e.to_string()))?;
        Ok((device, RatchetSession(r.session), r.plaintext))
    }

    /// Opens a pre-key message that carries no proof, from a device whose Olm identity key the receiver
    /// already holds, checked (a bundle signed by the device, exchanged while both were online, the device
    /// proved by the hello). Returns the session and the plaintext.
    pub fn inbound_known(
        &mut self,
        bundle: &PrekeyBundle,
        sealed: &Sealed,
    ) -> Result<(RatchetSession, Vec<u8>), SealError> {
        bundle.verify()?;
        let OlmMessage::PreKey(m) = olm_message(sealed)? else {
            return Err(SealError::NoSession);
        };
        if m.identity_key().to_bytes() != bundle.identity {
            return Err(SealError::NoSession);
        }
        let r = self
            .0
            .create_inbound_session(SessionConfig::version_1(), m.identity_key(), &m)
            .map_err(|e| SealError::Ratchet(e.to_string()))?;
        Ok((RatchetSession(r.session), r.plaintext))
    }

    /// The account's state, encrypted under `key`, for storage.
    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.0.pickle().encrypt(key)
    }

    pub fn unpickle(s: &str, key: &[u8; 32]) -> Result<Self, SealError> {
        olm::AccountPickle::from_encrypted(s, key)
            .map(|p| Self(olm::Account::from_pickle(p)))
            .map_err(|e| SealError::Pickle(e.to_string()))
    }
}

fn olm_message(sealed: &Sealed) -> Result<OlmMessage, SealError> {
    OlmMessage::from_parts(usize::from(sealed.kind), &sealed.body)
        .map_err(|_| SealError::Malformed("not an Olm message"))
}

/// Checks that `proof` ties an Olm identity key to a device of `expected`; returns the device.
pub fn verify_proof(expected: &AccountKey, proof: &SenderProof) -> Result<DeviceKey, SealError> {
    proof.cert.verify()?;
    if proof.cert.account != *expected {
        return Err(SealError::WrongAccount);
    }
    let mut m = IDENTITY_DOMAIN.to_vec();
    m.extend_from_slice(&proof.identity);
    proof.cert.device.verify(&m, &proof.signature)?;
    Ok(proof.cert.device)
}

/// One Olm session with one peer device.
pub struct RatchetSession(olm::Session);

impl std::fmt::Debug for RatchetSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RatchetSession({})", self.0.session_id())
    }
}

impl RatchetSession {
    /// Encrypts one message; `proof` rides along until the peer has answered on this session (its
    /// pre-key messages need it).
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        proof: Option<SenderProof>,
    ) -> Result<Sealed, SealError> {
        let m = self
            .0
            .encrypt(plaintext)
            .map_err(|e| SealError::Ratchet(e.to_string()))?;
        let (kind, body) = m.to_parts();
        let prekey = kind == 0;
        Ok(Sealed {
            proof: if prekey { proof } else { None },
            kind: kind as u8,
            body,
        })
    }

    /// Decrypts one message of this session. A message that was already decrypted (a replay) fails: its
    /// key is gone.
    pub fn decrypt(&mut self, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        self.0
            .decrypt(&olm_message(sealed)?)
            .map_err(|e| SealError::Ratchet(e.to_string()))
    }

    /// Whether a pre-key message belongs to this session (so it is decrypted here, not used to start a new
    /// one).
    pub fn matches(&self, sealed: &Sealed) -> bool {
        match olm_message(sealed) {
            Ok(OlmMessage::PreKey(m)) => self.0.session_keys() == m.session_keys(),
            _ => false,
        }
    }

    pub fn session_id(&self) -> String {
        self.0.session_id()
    }

    pub fn pickle(&self, key: &[u8; 32]) -> String {
        self.0.pickle().encrypt(key)
    }

    pub fn unpickle(s: &str, key: &[u8; 32]) -> Result<Self, SealError> {
        olm::SessionPickle::from_encrypted(s, key)
            .map(|p| Self(olm::Session::from_pickle(p)))
            .map_err(|e| SealError::Pickle(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
