//! Wire frames: `Frame::decode_body` on its own, and `FrameDecoder` fed the same bytes in chunks.
//!
//! Input: one byte choosing how the stream is cut into chunks, then the stream. Invariants: a decoded
//! frame encodes again and decodes to itself; the frames (and the error that ends the stream, if any)
//! do not depend on how the stream was cut.
#![no_main]

use kith_core::call::{CallMsg, MediaParams};
use kith_core::mailbox::{Request, Response};
use kith_core::message::MessageFrame;
use kith_core::wire::{Frame, FrameDecoder, FrameError, MAX_FRAME_LEN, ReceiptFrame};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let hello = kith_core::hello::Hello {
        account: kith_fuzz::account().public(),
        device_cert: kith_fuzz::device_cert(),
        endpoint_cert: kith_fuzz::endpoint_cert(),
        card: Some(kith_fuzz::card().to_bytes()),
    };
    let frames = vec![
        Frame::Hello(Box::new(hello)),
        Frame::Message(MessageFrame {
            seq: 1,
            id: [4; 16],
            sent_at_ms: kith_fuzz::NOW * 1000,
            text: "hello there".into(),
        }),
        Frame::Receipt(ReceiptFrame {
            seqs: vec![1, 2, 300],
        }),
        Frame::Call(CallMsg::Invite {
            call: [6; 16],
            media: MediaParams::default(),
            service: Some("support".into()),
        }),
        Frame::Call(CallMsg::Dtmf {
            call: [6; 16],
            event: 11,
            duration_ms: 100,
        }),
        Frame::MailboxRequest {
            id: 3,
            request: Request::Fetch { after: 0, max: 10 },
        },
        Frame::MailboxResponse {
            id: 3,
            response: Response::Done,
        },
    ];
    let mut out = vec![];
    let mut stream = vec![0u8];
    for f in &frames {
        let enc = f.encode().unwrap();
        out.push([&[3u8][..], &enc].concat());
        stream.extend(&enc);
    }
    out.push(stream);
    out
}

/// Runs the decoder over `stream` cut into `chunks`; returns the frames and the error that ended it.
fn run(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Frame>, Option<FrameError>) {
    let mut dec = FrameDecoder::new();
    let mut frames = vec![];
    for chunk in chunks {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

fn check_frame(f: &Frame) {
    let enc = f.encode().expect("a decoded frame encodes");
    assert!(enc.len() <= MAX_FRAME_LEN);
    let again = Frame::decode_body(&enc[4..]).expect("an encoded frame decodes");
    assert_eq!(&again, f);
    let mut dec = FrameDecoder::new();
    dec.push(&enc);
    assert_eq!(dec.next_frame().unwrap().as_ref(), Some(f));
    assert_eq!(dec.buffered(), 0);
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("frame", seeds); },
    |data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    if let Ok(f) = Frame::decode_body(stream) {
        // Re-encoding is canonical, never longer than what was accepted.
        if stream.len() + 4 <= MAX_FRAME_LEN {
            check_frame(&f);
        }
    }
    let whole = run(&mut std::iter::once(stream));
    for f in &whole.0 {
        check_frame(f);
    }
    // Chunks of one size (1..=64 bytes), or sizes taken from the stream's own bytes.
    let cut_at = |i: usize| -> usize {
        if cut < 128 {
            usize::from(cut % 64) + 1
        } else {
            usize::from(stream.get(i).copied().unwrap_or(1) % 32) + 1
        }
    };
    let mut pieces = vec![];
    let mut i = 0;
    while i < stream.len() {
        let n = cut_at(i).min(stream.len() - i);
        pieces.push(&stream[i..i + n]);
        i += n;
    }
    let chunked = run(&mut pieces.into_iter());
    assert_eq!(whole, chunked, "frames depend on how the stream was cut");
});
