//! 48 kHz (the kith side, Opus) to and from 8 kHz (G.711) or 16 kHz (G.722): a windowed-sinc low-pass at
//! 92.5 % of the lower rate's Nyquist frequency (3.7 or 7.4 kHz), decimating by 6 (or 3) on the way down
//! and interpolating on the way up (polyphase: only the taps that meet a real sample are computed). Each
//! keeps the samples it still needs across frames, so frame edges are seamless.

/// The filter's length (odd: linear phase, delay (TAPS - 1) / 2 samples at 48 kHz = 1.25 ms).
const TAPS: usize = 121;
/// 48 kHz to 8 kHz.
const FACTOR: usize = 6;

/// The delay each of [`Down`] and [`Up`] adds (the filter's group delay), in microseconds: 1250.
pub const DELAY_US: u32 = ((TAPS - 1) / 2 * 1_000_000 / 48_000) as u32;

/// The factor between 48 kHz and `rate` (8000 or 16000).
pub fn factor_for(rate: u32) -> usize {
    (48_000 / rate.max(1)) as usize
}

fn design(factor: usize) -> Vec<f32> {
    // 92.5 % of the lower rate's Nyquist frequency: 3.7 kHz at 8 kHz, 7.4 kHz at 16 kHz.
    let fc = 0.925 * 0.5 / factor as f64;
    let m = (TAPS - 1) as f64;
    let mut h: Vec<f64> = (0..TAPS)
        .map(|n| {
            let x = n as f64 - m / 2.0;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            // Blackman window: about 74 dB of stop-band attenuation.
            let w = 0.42 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / m).cos()
                + 0.08 * (4.0 * std::f64::consts::PI * n as f64 / m).cos();
            sinc * w
        })
        .collect();
    let sum: f64 = h.iter().sum();
    for v in &mut h {
        *v /= sum;
    }
    h.into_iter().map(|v| v as f32).collect()
}

fn clip(v: f32) -> i16 {
    v.round().clamp(-32768.0, 32767.0) as i16
}

/// 48 kHz -> 8 kHz (or another rate: [`Down::new`]).
pub struct Down {
    taps: Vec<f32>,
    factor: usize,
    /// The last TAPS - 1 input samples.
    history: Vec<f32>,
}

impl Default for Down {
    fn default() -> Self {
        Self::new(FACTOR)
    }
}

impl Down {
    /// 48 kHz -> 48 kHz / `factor`.
    pub fn new(factor: usize) -> Self {
        Self {
            taps: design(factor),
            factor,
            history: vec![0.0; TAPS - 1],
        }
    }

    /// `input.len()` must be a multiple of the factor; appends `input.len() / factor` samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let mut buf = std::mem::take(&mut self.history);
        buf.extend(input.iter().map(|&s| f32::from(s)));
        let produced = input.len() / self.factor;
        for k in 0..produced {
            // The output sample at the input position (TAPS - 1) + k * factor (the newest it covers).
            let end = (TAPS - 1) + k * self.factor;
            let window = &buf[end + 1 - TAPS..=end];
            let acc: f32 = window
                .iter()
                .zip(self.taps.iter().rev())
                .map(|(x, h)| x * h)
                .sum();
            out.push(clip(acc));
        }
        self.history = buf[buf.len() - (TAPS - 1)..].to_vec();
    }
}

/// 8 kHz -> 48 kHz (or another rate: [`Up::new`]).
pub struct Up {
    /// The filter split into `factor` phases of TAPS / factor (rounded up) taps each, times the factor
    /// (the gain lost to the zeros stuffed in between).
    phases: Vec<Vec<f32>>,
    history: Vec<f32>,
}

impl Default for Up {
    fn default() -> Self {
        Self::new(FACTOR)
    }
}

impl Up {
    /// 48 kHz / `factor` -> 48 kHz.
    pub fn new(factor: usize) -> Self {
        let h = design(factor);
        let per = TAPS.div_ceil(factor);
        let phases = (0..factor)
            .map(|p| {
                (0..per)
                    .map(|j| h.get(p + j * factor).copied().unwrap_or(0.0) * factor as f32)
                    .collect()
            })
            .collect();
        Self {
            phases,
            history: vec![0.0; per - 1],
        }
    }

    /// Appends `input.len() * factor` samples to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let per = self.phases[0].len();
        let mut buf = std::mem::take(&mut self.history);
        buf.extend(input.iter().map(|&s| f32::from(s)));
        for k in 0..input.len() {
            let newest = per - 1 + k;
            for phase in &self.phases {
                let acc: f32 = (0..per).map(|j| buf[newest - j] * phase[j]).sum();
                out.push(clip(acc));
            }
        }
        self.history = buf[buf.len() - (per - 1)..].to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Speech-band tones pass both ways at their level; a tone above 4 kHz does not fold back into the
    /// 8 kHz band. Frame by frame (20 ms) as the gateway runs it.
    #[test]
    fn speech_passes_and_what_8_khz_cannot_hold_is_removed() {
        for hz in [300.0, 1000.0, 3000.0] {
            let input = tone(hz, 48_000.0, 48_000, 10_000.0);
            let mut down = Down::default();
            let mut low = vec![];
            for frame in input.chunks(960) {
                down.process(frame, &mut low);
            }
            assert_eq!(low.len(), 8000);
            let r = rms(&low[400..]) / rms(&input);
            assert!((0.95..1.05).contains(&r), "{hz} Hz down: gain {r}");
            let mut up = Up::default();
            let mut high = vec![];
            for frame in low.chunks(160) {
                up.process(frame, &mut high);
            }
            assert_eq!(high.len(), 48_000);
            let r = rms(&high[2400..]) / rms(&input);
            assert!((0.9..1.1).contains(&r), "{hz} Hz up: gain {r}");
        }
        let alias = tone(6000.0, 48_000.0, 48_000, 10_000.0);
        let mut down = Down::default();
        let mut low = vec![];
        down.process(&alias, &mut low);
        assert!(
            rms(&low[400..]) < 10_000.0 * 0.01,
            "6 kHz leaked: {}",
            rms(&low)
        );
    }

    /// The same at 16 kHz (G.722): 6 kHz passes both ways, 10 kHz does not fold back.
    #[test]
    fn wideband_passes_to_7_khz() {
        let f = factor_for(16_000);
        assert_eq!(f, 3);
        for hz in [300.0, 3000.0, 6000.0] {
            let input = tone(hz, 48_000.0, 48_000, 10_000.0);
            let (mut down, mut up) = (Down::new(f), Up::new(f));
            let (mut low, mut high) = (vec![], vec![]);
            for frame in input.chunks(960) {
                down.process(frame, &mut low);
            }
            assert_eq!(low.len(), 16_000);
            let r = rms(&low[800..]) / rms(&input);
            assert!((0.95..1.05).contains(&r), "{hz} Hz down: gain {r}");
            for frame in low.chunks(320) {
                up.process(frame, &mut high);
            }
            assert_eq!(high.len(), 48_000);
            let r = rms(&high[2400..]) / rms(&input);
            assert!((0.9..1.1).contains(&r), "{hz} Hz up: gain {r}");
        }
        let mut low = vec![];
        Down::new(f).process(&tone(10_000.0, 48_000.0, 48_000, 10_000.0), &mut low);
        assert!(rms(&low[800..]) < 100.0, "10 kHz leaked: {}", rms(&low));
    }
}
