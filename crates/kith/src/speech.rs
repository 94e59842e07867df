//! How well speech came through: normalized cross-correlation of what was sent and what was recorded
//! (shared by the call and gateway tests).
use std::path::Path;

pub fn read_wav(path: &Path) -> anyhow::Result<Vec<i16>> {
    use anyhow::Context;
    hound::WavReader::open(path)
        .with_context(|| format!("reading {}", path.display()))?
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// Normalized cross-correlation of `sent` and `received` at the best alignment (received may lag by up
/// to 0.5 s or lead by 0.25 s), over the part of `sent` that the recording covers.
pub fn best_ncc(sent: &[i16], received: &[i16]) -> (f64, i64) {
    let ncc = |lag: i64, step: usize| {
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        let mut i = 0usize;
        while i < sent.len() {
            let j = i as i64 + lag;
            if j >= 0 && (j as usize) < received.len() {
                let (x, y) = (f64::from(sent[i]), f64::from(received[j as usize]));
                xy += x * y;
                xx += x * x;
                yy += y * y;
            }
            i += step;
        }
        if xx == 0.0 || yy == 0.0 {
            0.0
        } else {
            xy / (xx * yy).sqrt()
        }
    };
    // Coarse search on every 8th sample, then refine around the best lag.
    let coarse = (-12_000i64..=24_000)
        .step_by(8)
        .map(|l| (ncc(l, 8), l))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    (coarse.1 - 16..=coarse.1 + 16)
        .map(|l| (ncc(l, 1), l))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}

/// The same, aligned window by window (250 ms windows, each at its best lag within 60 ms of the global one):
/// a jitter buffer legitimately shifts the timeline by whole frames when it grows or shrinks its delay.
/// Returns the NCC over all windows together and the lags used.
pub fn windowed_ncc(sent: &[i16], received: &[i16]) -> (f64, Vec<i64>) {
    windowed_ncc_within(sent, received, 2_880)
}

/// [`windowed_ncc`] with each window's lag searched within `reach` samples of the global one.
pub fn windowed_ncc_within(sent: &[i16], received: &[i16], reach: i64) -> (f64, Vec<i64>) {
    let (_, global) = best_ncc(sent, received);
    let win = 12_000usize;
    let (mut sxy, mut sxx, mut syy) = (0.0f64, 0.0f64, 0.0f64);
    let mut lags = vec![];
    // Sums over the window at one lag, on every `step`th sample.
    let sums = |start: usize, end: usize, lag: i64, step: usize| {
        let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
        for (i, &s) in sent.iter().enumerate().take(end).skip(start).step_by(step) {
            let j = i as i64 + lag;
            if j >= 0 && (j as usize) < received.len() {
                let (x, y) = (f64::from(s), f64::from(received[j as usize]));
                xy += x * y;
                xx += x * x;
                yy += y * y;
            }
        }
        let n = if xx == 0.0 || yy == 0.0 {
            0.0
        } else {
            xy / (xx * yy).sqrt()
        };
        (n, lag, xy, xx, yy)
    };
    let better =
        |a: (f64, i64, f64, f64, f64), b: (f64, i64, f64, f64, f64)| if b.0 > a.0 { b } else { a };
    for start in (0..sent.len()).step_by(win) {
        let end = (start + win).min(sent.len());
        // Coarse (every 8th lag on every 8th sample), then every lag around the best.
        let coarse = (global - reach..=global + reach)
            .step_by(8)
            .map(|lag| sums(start, end, lag, 8))
            .fold((f64::MIN, global, 0.0, 0.0, 0.0), better);
        let best = (coarse.1 - 8..=coarse.1 + 8)
            .map(|lag| sums(start, end, lag, 1))
            .fold((f64::MIN, global, 0.0, 0.0, 0.0), better);
        lags.push(best.1);
        sxy += best.2;
        sxx += best.3;
        syy += best.4;
    }
    (sxy / (sxx * syy).sqrt(), lags)
}
