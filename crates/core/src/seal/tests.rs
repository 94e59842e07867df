use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Who {
    account: AccountSecret,
    device: DeviceSecret,
    cert: DeviceCert,
    olm: RatchetAccount,
}

fn who(rng: &mut StdRng) -> Who {
    let account = AccountSecret::generate(rng);
    let device = DeviceSecret::generate(rng);
    let cert = DeviceCert::issue(&account, device.public(), 1_800_000_000);
    Who {
        account,
        device,
        cert,
        olm: RatchetAccount::new(),
    }
}

/// Issue 21, point 3: what a mailbox is told of two periods gives no positional link: each period's
/// tokens come sorted by value, whatever the order of the contacts, so one contact's place differs from
/// one period to the next (and says nothing of its name).
#[test]
fn a_mailbox_cannot_link_tokens_across_periods_by_their_place() {
    let mut rng = StdRng::seed_from_u64(21);
    let owner = who(&mut rng);
    let me = owner.account.public();
    let pairs: Vec<PairKey> = (0..8)
        .map(|_| PairKey::derive(&owner.account, &who(&mut rng).account.public()).unwrap())
        .collect();
    let (p, q) = (
        PairKey::tokens_for_period(&pairs, &me, 40),
        PairKey::tokens_for_period(&pairs, &me, 41),
    );
    let place = |list: &[[u8; 32]], t: [u8; 32]| list.iter().position(|x| *x == t).unwrap();
    let moved = pairs
        .iter()
        .filter(|k| place(&p, k.deposit_token(&me, 40)) != place(&q, k.deposit_token(&me, 41)))
        .count();
    assert!(moved >= 4, "only {moved} of 8 contacts changed place");
    for list in [&p, &q] {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted by value");
    }
    // The order of the contacts given changes nothing.
    let mut reversed: Vec<PairKey> = pairs.iter().map(|k| PairKey(k.0.clone())).collect();
    reversed.reverse();
    assert_eq!(PairKey::tokens_for_period(&reversed, &me, 40), p);
}

#[test]
fn both_accounts_derive_one_pair_key_and_tokens_rotate() {
    let mut rng = StdRng::seed_from_u64(1);
    let (a, b, c) = (who(&mut rng), who(&mut rng), who(&mut rng));
    let (ka, kb) = (a.account.public(), b.account.public());
    let ab = PairKey::derive(&a.account, &kb).unwrap();
    let ba = PairKey::derive(&b.account, &ka).unwrap();
    let ac = PairKey::derive(&a.account, &c.account.public()).unwrap();
    assert_eq!(ab.deposit_token(&kb, 7), ba.deposit_token(&kb, 7));
    // Another period, another owner, another pair: another token.
    let t = ab.deposit_token(&kb, 7);
    assert_ne!(t, ab.deposit_token(&kb, 8));
    assert_ne!(t, ab.deposit_token(&ka, 7));
    assert_ne!(t, ac.deposit_token(&kb, 7));
    // What one seals the other opens; a third account cannot.
    let env = ab.seal(&kb, b"hello bob", &mut rng).unwrap();
    assert_eq!(ba.open(&kb, &env).unwrap(), b"hello bob");
    assert_eq!(ac.open(&kb, &env), Err(SealError::NotForUs));
    // Sealed for the other direction's owner: does not open as this one's.
    assert_eq!(ba.open(&ka, &env), Err(SealError::NotForUs));
}

#[test]
fn envelopes_come_in_size_classes_and_damage_is_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let (a, b) = (who(&mut rng), who(&mut rng));
    let kb = b.account.public();
    let k = PairKey::derive(&a.account, &kb).unwrap();
    for (len, class) in [
        (0, 512),
        (400, 512),
        (500, 2048),
        (9000, 40_960),
        (40_000, 40_960),
    ] {
        let env = k.seal(&kb, &vec![7u8; len], &mut rng).unwrap();
        assert_eq!(env.len(), class, "{len} bytes");
        assert_eq!(k.open(&kb, &env).unwrap().len(), len);
    }
    assert!(matches!(
        k.seal(&kb, &vec![0; 40_960], &mut rng),
        Err(SealError::TooLarge(_))
    ));
    let mut env = k.seal(&kb, b"x", &mut rng).unwrap();
    env[100] ^= 1;
    assert_eq!(k.open(&kb, &env), Err(SealError::NotForUs));
    assert_eq!(k.open(&kb, &env[..500]), Err(SealError::BadSize(500)));
}

/// Alice starts a session to Bob's device from his published bundle.
fn session(a: &Who, b: &mut Who) -> (RatchetSession, PrekeyBundle) {
    let bundle = b.olm.bundle(&b.device, 5);
    assert_eq!(bundle.one_time.len(), 5);
    bundle.verify().unwrap();
    let s = a.olm.outbound(&bundle, Some(bundle.one_time[0])).unwrap();
    (s, bundle)
}

#[test]
fn a_message_decrypts_once_and_only_once() {
    let mut rng = StdRng::seed_from_u64(3);
    let (a, mut b) = (who(&mut rng), who(&mut rng));
    let (mut sa, _) = session(&a, &mut b);
    let proof = a.olm.proof(&a.device, &a.cert);
    let m1 = sa.encrypt(b"one", Some(proof.clone())).unwrap();
    assert_eq!(m1.kind, 0, "a pre-key message");
    let ka = a.account.public();
    let (dev, mut sb, p1) = b.olm.inbound(&ka, &m1).unwrap();
    assert_eq!((dev, p1.as_slice()), (a.device.public(), &b"one"[..]));
    // The same message again: its one-time key is spent, and the session has used its message key.
    assert!(matches!(
        b.olm.inbound(&ka, &m1),
        Err(SealError::Ratchet(_))
    ));
    assert!(sb.matches(&m1));
    assert!(matches!(sb.decrypt(&m1), Err(SealError::Ratchet(_))));
    // Later messages of the session decrypt once each, also out of order.
    let m2 = sa.encrypt(b"two", Some(proof.clone())).unwrap();
    let m3 = sa.encrypt(b"three", Some(proof)).unwrap();
    assert_eq!(sb.decrypt(&m3).unwrap(), b"three");
    assert_eq!(sb.decrypt(&m2).unwrap(), b"two");
    assert!(sb.decrypt(&m2).is_err() && sb.decrypt(&m3).is_err());
    // Bob answers: from then on Alice's messages are normal ones, without the proof.
    let r = sb.encrypt(b"hi alice", None).unwrap();
    assert_eq!(sa.decrypt(&r).unwrap(), b"hi alice");
    let m4 = sa
        .encrypt(b"four", Some(a.olm.proof(&a.device, &a.cert)))
        .unwrap();
    assert_eq!((m4.kind, m4.proof.is_none()), (1, true));
    assert_eq!(sb.decrypt(&m4).unwrap(), b"four");
}

#[test]
fn a_captured_ciphertext_does_not_open_with_the_state_that_moved_on() {
    let mut rng = StdRng::seed_from_u64(4);
    let (a, mut b) = (who(&mut rng), who(&mut rng));
    let (mut sa, _) = session(&a, &mut b);
    let proof = a.olm.proof(&a.device, &a.cert);
    let ka = a.account.public();
    let first = sa.encrypt(b"first", Some(proof)).unwrap();
    let (_, mut sb, _) = b.olm.inbound(&ka, &first).unwrap();
    // A conversation moves both ratchets on.
    let mut captured = vec![];
    for i in 0..5 {
        let m = sa.encrypt(format!("a{i}").as_bytes(), None).unwrap();
        sb.decrypt(&m).unwrap();
        captured.push(m);
        let r = sb.encrypt(format!("b{i}").as_bytes(), None).unwrap();
        sa.decrypt(&r).unwrap();
    }
    // Someone who steals Bob's session state now (stored, pickled) and kept the ciphertexts cannot read
    // any of them. (The first message, a pre-key one, could be made again from his Olm account while its
    // fallback key lives: see `first_messages_are_out_of_reach_once_their_fallback_key_is_forgotten`.)
    let key = [9u8; 32];
    let mut stolen = RatchetSession::unpickle(&sb.pickle(&key), &key).unwrap();
    for m in &captured {
        assert!(
            matches!(stolen.decrypt(m), Err(SealError::Ratchet(_))),
            "{m:?}"
        );
    }
    // The stolen state is Bob's: it reads what comes next.
    let next = sa.encrypt(b"next", None).unwrap();
    assert_eq!(stolen.decrypt(&next).unwrap(), b"next");
}

#[test]
fn the_ratchet_speaks_only_for_the_expected_account() {
    let mut rng = StdRng::seed_from_u64(5);
    let (a, mut b, c) = (who(&mut rng), who(&mut rng), who(&mut rng));
    let (mut sa, _) = session(&a, &mut b);
    let m = sa
        .encrypt(b"hi", Some(a.olm.proof(&a.device, &a.cert)))
        .unwrap();
    // Bob expected Carol (the token was Carol's): refused.
    assert_eq!(
        b.olm.inbound(&c.account.public(), &m).unwrap_err(),
        SealError::WrongAccount
    );
    // A proof whose identity key was swapped for another: refused.
    let mut forged = m.clone();
    forged.proof.as_mut().unwrap().identity = c.olm.identity_key();
    assert_eq!(
        b.olm.inbound(&a.account.public(), &forged).unwrap_err(),
        SealError::BadSignature
    );
    // No proof at all: cannot start a session.
    let mut bare = m.clone();
    bare.proof = None;
    assert_eq!(
        b.olm.inbound(&a.account.public(), &bare).unwrap_err(),
        SealError::NoSession
    );
    // A bundle with a changed key does not verify.
    let mut bundle = b.olm.bundle(&b.device, 1);
    bundle.fallback[0] ^= 1;
    assert_eq!(
        a.olm.outbound(&bundle, None).unwrap_err(),
        SealError::BadSignature
    );
}

#[test]
fn sessions_start_from_the_fallback_key_and_state_survives_storage() {
    let mut rng = StdRng::seed_from_u64(6);
    let (a, mut b) = (who(&mut rng), who(&mut rng));
    let bundle = b.olm.bundle(&b.device, 0);
    let ka = a.account.public();
    let proof = a.olm.proof(&a.device, &a.cert);
    let mut sa = a.olm.outbound(&bundle, None).unwrap();
    let m = sa.encrypt(b"via fallback", Some(proof)).unwrap();
    // Bob's account goes to storage and back before the message comes.
    let key = [3u8; 32];
    let mut bolm = RatchetAccount::unpickle(&b.olm.pickle(&key), &key).unwrap();
    assert!(matches!(
        RatchetAccount::unpickle(&b.olm.pickle(&key), &[4u8; 32]),
        Err(SealError::Pickle(_))
    ));
    let (_, sb, p) = bolm.inbound(&ka, &m).unwrap();
    assert_eq!(p, b"via fallback");
    // Through the envelope, as a mailbox would hold it.
    let kb = b.account.public();
    let pair = PairKey::derive(&a.account, &kb).unwrap();
    let m2 = sa.encrypt(b"sealed twice", None).unwrap();
    let env = pair.seal(&kb, &m2.to_bytes(), &mut rng).unwrap();
    let opened = PairKey::derive(&b.account, &ka)
        .unwrap()
        .open(&kb, &env)
        .unwrap();
    let mut sb = RatchetSession::unpickle(&sb.pickle(&key), &key).unwrap();
    assert_eq!(
        sb.decrypt(&Sealed::from_bytes(&opened).unwrap()).unwrap(),
        b"sealed twice"
    );
    assert!(Sealed::from_bytes(b"\xff\xff\xff").is_err());
}

#[test]
fn a_known_bundle_opens_a_session_without_a_proof_and_a_wrong_one_does_not() {
    let mut rng = StdRng::seed_from_u64(9);
    let (mut a, mut b, mut c) = (who(&mut rng), who(&mut rng), who(&mut rng));
    let b_bundle = b.olm.bundle(&b.device, 0);
    // Alice's bundle, as bob keeps it from when both were online.
    let a_bundle = a.olm.bundle(&a.device, 0);
    let c_bundle = c.olm.bundle(&c.device, 0);
    let mut s = a.olm.outbound(&b_bundle, None).unwrap();
    let m = s.encrypt(b"no proof needed", None).unwrap();
    assert_eq!(m.kind, 0);
    assert!(m.proof.is_none());
    // Without the proof and without alice's bundle: no session.
    assert_eq!(
        b.olm.inbound(&a.account.public(), &m).unwrap_err(),
        SealError::NoSession
    );
    // Carol's bundle does not name alice's identity key.
    assert_eq!(
        b.olm.inbound_known(&c_bundle, &m).unwrap_err(),
        SealError::NoSession
    );
    // A bundle whose signature does not hold is refused.
    let mut forged = a_bundle.clone();
    forged.fallback = [1; 32];
    assert_eq!(
        b.olm.inbound_known(&forged, &m).unwrap_err(),
        SealError::BadSignature
    );
    let (mut bs, plain) = b.olm.inbound_known(&a_bundle, &m).unwrap();
    assert_eq!(plain, b"no proof needed");
    // The next message of the session goes on it; the first again is a replay.
    let m2 = s.encrypt(b"second", None).unwrap();
    assert!(bs.matches(&m2));
    assert_eq!(bs.decrypt(&m2).unwrap(), b"second");
    assert!(bs.decrypt(&m).is_err());
}

#[test]
fn first_messages_are_out_of_reach_once_their_fallback_key_is_forgotten() {
    let mut rng = StdRng::seed_from_u64(12);
    let (a, mut b) = (who(&mut rng), who(&mut rng));
    let ka = a.account.public();
    // The bundle stays the same across calls: the fallback key changes only by rotation.
    let bundle = b.olm.bundle(&b.device, 0);
    assert_eq!(b.olm.bundle(&b.device, 0).fallback, bundle.fallback);
    let mut sa = a.olm.outbound(&bundle, None).unwrap();
    let captured = sa
        .encrypt(
            b"while you were away",
            Some(a.olm.proof(&a.device, &a.cert)),
        )
        .unwrap();
    let key = [3u8; 32];
    // One rotation later the key is still there (bundles handed out before still work)...
    b.olm.rotate_fallback();
    assert_ne!(b.olm.bundle(&b.device, 0).fallback, bundle.fallback);
    let stolen = RatchetAccount::unpickle(&b.olm.pickle(&key), &key).unwrap();
    let mut stolen = stolen;
    assert!(stolen.inbound(&ka, &captured).is_ok());
    // ...after the second it is forgotten: the whole account, stolen now, does not open the capture.
    b.olm.rotate_fallback();
    let mut stolen = RatchetAccount::unpickle(&b.olm.pickle(&key), &key).unwrap();
    assert!(matches!(
        stolen.inbound(&ka, &captured),
        Err(SealError::Ratchet(_))
    ));
}
