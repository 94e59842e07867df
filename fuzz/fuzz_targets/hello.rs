//! The hello, decoded as a peer's first frame is (`Frame::decode_body` of a hello frame) and verified as
//! a connection does (`Hello::verify`).
//!
//! Input: a mode byte, then either a hello's postcard payload (mode even), or the card bytes carried in an
//! otherwise valid hello of the fixture's account (mode odd: the signatures hold, so the card is reached).
//! Invariants: a decoded hello encodes to a frame that decodes to it; a verified peer is the hello's
//! account, device and endpoint, with a card of that account; a hello verified for one endpoint is
//! refused for another.
#![no_main]

use kith_core::hello::{Hello, HelloError};
use kith_core::identity::EndpointKey;
use kith_core::wire::{Frame, WIRE_VERSION};
use libfuzzer_sys::fuzz_target;

const KIND_HELLO: u8 = 1;

fn fixture(card: Option<Vec<u8>>) -> Hello {
    Hello {
        account: kith_fuzz::account().public(),
        device_cert: kith_fuzz::device_cert(),
        endpoint_cert: kith_fuzz::endpoint_cert(),
        card,
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let card = kith_fuzz::card().to_bytes();
    vec![
        [&[0u8][..], &postcard::to_allocvec(&fixture(None)).unwrap()].concat(),
        [
            &[0u8][..],
            &postcard::to_allocvec(&fixture(Some(card.clone()))).unwrap(),
        ]
        .concat(),
        [&[1u8][..], &card].concat(),
    ]
}

fn check(hello: &Hello) {
    let remote = hello.endpoint_cert.endpoint;
    let now = hello.endpoint_cert.not_before;
    let result = hello.verify(remote, None, now);
    let Ok(peer) = result else { return };
    assert_eq!(peer.account(), hello.account);
    assert_eq!(peer.device(), hello.device_cert.device);
    assert_eq!(peer.endpoint(), remote);
    assert_eq!(peer.card().is_some(), hello.card.is_some());
    if let Some(c) = peer.card() {
        assert_eq!(c.account(), hello.account);
    }
    // The same hello for the account that was dialled, and for another.
    assert!(hello.verify(remote, Some(hello.account), now).is_ok());
    let stranger = kith_fuzz::other_account().public();
    if stranger != hello.account {
        assert_eq!(
            hello.verify(remote, Some(stranger), now).err(),
            Some(HelloError::UnexpectedAccount)
        );
    }
    // Copied to another connection, it is useless.
    let other = EndpointKey::from_seed(&[0xee; 32]);
    if other != remote {
        assert_eq!(
            hello.verify(other, None, now).err(),
            Some(HelloError::EndpointMismatch)
        );
    }
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("hello", seeds); },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 1 {
        check(&fixture(Some(rest.to_vec())));
        return;
    }
    let mut body = vec![WIRE_VERSION, KIND_HELLO];
    body.extend_from_slice(rest);
    let Ok(frame) = Frame::decode_body(&body) else { return };
    let Frame::Hello(hello) = &frame else { panic!("a hello frame decoded as {frame:?}") };
    let enc = frame.encode().expect("a decoded hello encodes");
    assert_eq!(Frame::decode_body(&enc[4..]).as_ref(), Ok(&frame));
    check(hello);
});
