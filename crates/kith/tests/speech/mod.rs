//! The speech measure of `kith::speech`, with a WAV reader that panics (tests).
#![allow(dead_code, unused_imports)]

pub use kith::speech::{best_ncc, windowed_ncc, windowed_ncc_within};
use std::path::Path;

pub fn read_wav(path: &Path) -> Vec<i16> {
    kith::speech::read_wav(path).unwrap()
}
