//! Media datagrams, as a call's receiver takes them: `Datagram::decode`, then the Opus frames of an
//! audio packet (the frame and its redundant copies) through `has_lbrr` and the decoder.
//!
//! Invariants: a datagram that decodes encodes to exactly the bytes it was decoded from (the format has
//! one encoding); redundant copies are within their limit and none is empty; the decoder gives one
//! frame's samples for every packet it takes.
#![no_main]

use kith_media::codec::{OpusDecoder, frame_samples, has_lbrr};
use kith_media::packet::{AudioPacket, Datagram, FLAG_FEC, FLAG_RED, MAX_REDUNDANT, Report};
use libfuzzer_sys::fuzz_target;

fn seeds() -> Vec<Vec<u8>> {
    let mut enc = kith_media::codec::OpusEncoder::new(
        20,
        kith_media::rate::EncoderSettings {
            bitrate: 24_000,
            fec: true,
            loss_hint_pct: 10,
            redundancy: 1,
        },
    )
    .unwrap();
    let tone: Vec<i16> = (0..frame_samples(20))
        .map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16)
        .collect();
    let f1 = enc.encode(&tone).unwrap();
    let f2 = enc.encode(&tone).unwrap();
    let plain = AudioPacket {
        tag: 7,
        seq: 1,
        timestamp: 960,
        flags: FLAG_FEC,
        payload: f1.clone(),
        redundant: vec![],
    };
    let red = AudioPacket {
        seq: 2,
        timestamp: 1920,
        payload: f2,
        redundant: vec![(1, f1)],
        ..plain.clone()
    };
    vec![
        plain.encode(),
        red.encode(),
        Report {
            tag: 7,
            highest_seq: 2,
            received: 2,
            jitter_tenth_ms: 40,
            ..Default::default()
        }
        .encode(),
    ]
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("media", seeds); },
    |data: &[u8]| {
    match Datagram::decode(data) {
        Ok(Datagram::Report(r)) => assert_eq!(r.encode(), data),
        Ok(Datagram::Audio(a)) => {
            assert_eq!(a.encode(), data);
            assert!(a.redundant.len() <= MAX_REDUNDANT);
            assert_eq!(a.flags & FLAG_RED != 0, !a.redundant.is_empty());
            assert!(!a.payload.is_empty());
            let frame_ms = if a.seq % 2 == 0 { 20 } else { 10 };
            let Ok(mut dec) = OpusDecoder::new(frame_ms) else { return };
            for (back, p) in &a.redundant {
                assert!(*back > 0 && !p.is_empty());
                if let Ok(pcm) = dec.decode(p) {
                    assert_eq!(pcm.len(), frame_samples(frame_ms));
                }
            }
            if has_lbrr(&a.payload)
                && let Ok(pcm) = dec.decode_fec(&a.payload)
            {
                assert_eq!(pcm.len(), frame_samples(frame_ms));
            }
            if let Ok(pcm) = dec.decode(&a.payload) {
                assert_eq!(pcm.len(), frame_samples(frame_ms));
            }
        }
        Err(_) => {}
    }
});
