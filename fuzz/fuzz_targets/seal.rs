//! Mailbox envelopes, as the owner opens what it fetched: the pair's envelope (`PairKey::open`), then the
//! sealed Olm message inside (`Sealed::from_bytes`) and its ratchet (`RatchetAccount::inbound`,
//! `inbound_known`, `RatchetSession::matches` and `decrypt`).
//!
//! Input: a mode byte, then: (0) an envelope as a mailbox holds it; (1) what an envelope carries, sealed
//! by the target with the pair's key (so the fuzzer gets past the envelope's AEAD); (2) a sealed message
//! (`Sealed` in postcard); (3) a plaintext, encrypted by a sender's session made at start-up.
//! Olm accounts are made at start-up (vodozemac draws their keys; they differ between runs, so a seed's
//! pre-key message finds no one-time key of this run: its parsing is what is fuzzed).
//! Invariants: an envelope the pair sealed opens to what was sealed; a sealed message encodes to bytes
//! that decode to it; a pre-key message that starts a session names the sender's device; what a session
//! encrypted, the other side decrypts.
#![no_main]

use kith_core::identity::DeviceSecret;
use kith_core::seal::{PairKey, PrekeyBundle, RatchetAccount, RatchetSession, Sealed};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const PICKLE_KEY: [u8; 32] = [8; 32];

struct Olm {
    /// The receiver (the owner of the mailbox) before any session: pickled, so every input starts
    /// from the same state.
    receiver: String,
    /// The receiver's session with the sender, after the sender's first message.
    receiver_session: String,
    /// The sender's bundle, as the receiver knows it.
    sender_bundle: PrekeyBundle,
    /// The sender's session, before its first message.
    sender_session: String,
    /// The sender's proof, for its pre-key messages.
    proof: kith_core::seal::SenderProof,
    /// Seeds: a pre-key message and a normal one, in postcard.
    prekey: Vec<u8>,
    normal: Vec<u8>,
}

fn sender_device() -> DeviceSecret {
    DeviceSecret::from_bytes(&[11; 32])
}

static OLM: LazyLock<Olm> = LazyLock::new(|| {
    let mut receiver = RatchetAccount::new();
    let receiver_bundle = receiver.bundle(kith_fuzz::device(), 4);
    let receiver_pickle = receiver.pickle(&PICKLE_KEY);
    let mut sender = RatchetAccount::new();
    let sender_bundle = sender.bundle(&sender_device(), 1);
    let cert = kith_core::identity::DeviceCert::issue(
        kith_fuzz::other_account(),
        sender_device().public(),
        kith_fuzz::NOW,
    );
    let proof = sender.proof(&sender_device(), &cert);
    let mut s = sender
        .outbound(&receiver_bundle, receiver_bundle.one_time.first().copied())
        .unwrap();
    let sender_session = s.pickle(&PICKLE_KEY);
    let first = s.encrypt(b"first", Some(proof.clone())).unwrap();
    let (_, mut r, plain) = receiver
        .inbound(&kith_fuzz::other_account().public(), &first)
        .unwrap();
    assert_eq!(plain, b"first");
    let receiver_session = r.pickle(&PICKLE_KEY);
    let reply = r.encrypt(b"reply", None).unwrap();
    s.decrypt(&reply).unwrap();
    let normal = s.encrypt(b"second", None).unwrap();
    assert_eq!(normal.kind, 1);
    Olm {
        receiver: receiver_pickle,
        receiver_session,
        sender_bundle,
        sender_session,
        proof,
        prekey: first.to_bytes(),
        normal: normal.to_bytes(),
    }
});

fn pair() -> &'static PairKey {
    static P: LazyLock<PairKey> = LazyLock::new(|| {
        PairKey::derive(kith_fuzz::account(), &kith_fuzz::other_account().public()).unwrap()
    });
    &P
}

fn owner() -> kith_core::AccountKey {
    kith_fuzz::account().public()
}

fn seeds() -> Vec<Vec<u8>> {
    let olm = &*OLM;
    let envelope = pair()
        .seal(&owner(), &olm.prekey, &mut kith_fuzz::rng())
        .unwrap();
    vec![
        [&[0u8][..], &envelope].concat(),
        [&[1u8][..], &olm.prekey].concat(),
        [&[2u8][..], &olm.prekey].concat(),
        [&[2u8][..], &olm.normal].concat(),
        [&[3u8][..], b"a message"].concat(),
    ]
}

/// What the owner does with what an envelope held.
fn sealed(bytes: &[u8]) {
    let Ok(s) = Sealed::from_bytes(bytes) else {
        return;
    };
    assert_eq!(Sealed::from_bytes(&s.to_bytes()).as_ref(), Ok(&s));
    let olm = &*OLM;
    // The receiver's state is unpickled only where the message can get past the checks before it
    // (a proof for `inbound`, a pre-key message for `inbound_known`): unpickling costs more than the rest.
    if s.proof.is_some() {
        let mut receiver = RatchetAccount::unpickle(&olm.receiver, &PICKLE_KEY).unwrap();
        if let Ok((device, _, _)) = receiver.inbound(&kith_fuzz::other_account().public(), &s) {
            assert_eq!(Some(device), s.proof.as_ref().map(|p| p.cert.device));
        }
    }
    if s.kind == 0 {
        let mut receiver = RatchetAccount::unpickle(&olm.receiver, &PICKLE_KEY).unwrap();
        let _ = receiver.inbound_known(&olm.sender_bundle, &s);
    }
    let mut session = RatchetSession::unpickle(&olm.receiver_session, &PICKLE_KEY).unwrap();
    let _ = session.matches(&s);
    let _ = session.decrypt(&s);
}

fuzz_target!(
    init: {
        LazyLock::force(&OLM);
        kith_fuzz::write_seeds("seal", seeds);
    },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            if let Ok(inner) = pair().open(&owner(), rest) {
                sealed(&inner);
            }
        }
        1 => {
            let Ok(envelope) = pair().seal(&owner(), rest, &mut kith_fuzz::rng()) else { return };
            assert!(kith_core::seal::SIZE_CLASSES.contains(&envelope.len()));
            assert_eq!(pair().open(&owner(), &envelope).as_deref(), Ok(rest));
            sealed(rest);
        }
        2 => sealed(rest),
        _ => {
            let olm = &*OLM;
            let mut s = RatchetSession::unpickle(&olm.sender_session, &PICKLE_KEY).unwrap();
            let m = s.encrypt(rest, Some(olm.proof.clone())).unwrap();
            let m = Sealed::from_bytes(&m.to_bytes()).unwrap();
            let mut receiver = RatchetAccount::unpickle(&olm.receiver, &PICKLE_KEY).unwrap();
            let (device, _, plain) = receiver
                .inbound(&kith_fuzz::other_account().public(), &m)
                .expect("a pre-key message of the sender starts a session");
            assert_eq!(device, sender_device().public());
            assert_eq!(plain, rest);
        }
    }
});
