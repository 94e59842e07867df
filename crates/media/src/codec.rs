//! Opus (libopus, built from the bundled source of the `opus`/`opusic-sys` crates, so every user runs the
//! same codec version) at 48 kHz mono, VOIP application.

use crate::MediaError;
use crate::rate::EncoderSettings;

pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one frame of `frame_ms` at 48 kHz.
pub fn frame_samples(frame_ms: u8) -> usize {
    SAMPLE_RATE as usize / 1000 * frame_ms as usize
}

/// The libopus version linked in.
pub fn libopus_version() -> &'static str {
    opus::version()
}

/// Whether an Opus packet carries in-band FEC (LBRR) for the frame before it.
#[allow(unsafe_code)]
pub fn has_lbrr(packet: &[u8]) -> bool {
    if packet.is_empty() || packet.len() > i32::MAX as usize {
        return false;
    }
    // SAFETY: the pointer and length describe a live, initialised byte slice; libopus only reads it.
    unsafe { opusic_sys::opus_packet_has_lbrr(packet.as_ptr(), packet.len() as i32) > 0 }
}

/// Whether an encoded packet is a DTX frame: one or two bytes (the table-of-contents byte alone), which
/// says only "nothing changed" and need not be sent (see [`OpusEncoder::set_dtx`]).
pub fn is_dtx(packet: &[u8]) -> bool {
    packet.len() <= 2
}

fn err(e: opus::Error) -> MediaError {
    MediaError::Codec(e.to_string())
}

/// Whether a frame is quiet: RMS below -45 dBFS (digital silence, a muted or distant microphone, the
/// room between words). Where the jitter buffer may change its delay unheard, and where the encoder may
/// spend less (see [`OpusEncoder`]).
pub fn is_quiet(pcm: &[i16]) -> bool {
    let energy: i64 = pcm.iter().map(|s| i64::from(*s) * i64::from(*s)).sum();
    // RMS < 184, i.e. energy / n < 184^2.
    pcm.is_empty() || energy < 184 * 184 * pcm.len() as i64
}

/// The encoder's complexity once the input has been quiet for [`QUIET_BEFORE_LOW_MS`].
pub const QUIET_COMPLEXITY: u8 = 0;
/// Quiet input for this long (longer than a pause between words) before the encoder lowers its complexity.
pub const QUIET_BEFORE_LOW_MS: u32 = 200;
/// The audio bandwidth cap (kHz) in a long quiet stretch by default: none (see [`OpusEncoder`]).
pub const QUIET_MAX_KHZ: u8 = 20;

/// An Opus encoder for one call.
///
/// Listening costs as much as talking: libopus spends the same on a quiet frame as on speech. So after
/// [`QUIET_BEFORE_LOW_MS`] of quiet input (one side of a call is mostly listening) the encoder drops to
/// [`QUIET_COMPLEXITY`], and goes back to its full complexity at the first frame that is not quiet, before
/// encoding it: speech is always encoded at full complexity. libopus takes complexity changes between
/// any two frames (WebRTC changes it with the bitrate).
///
/// The quiet stretch may also be capped in bandwidth ([`OpusEncoder::set_quiet_max_bandwidth_khz`]; 8 kHz:
/// SILK alone, so neither its encoding nor the other side's comfort noise runs CELT); speech gets its full
/// bandwidth back from its first frame. Off by default: it cut the listening daemon's CPU by an eighth, but
/// the chirp probe's mouth-to-ear latency read 1.6 ms more with it (BENCHMARKS.md, session 13).
pub struct OpusEncoder {
    enc: opus::Encoder,
    frame: usize,
    settings: Option<EncoderSettings>,
    /// The complexity for speech.
    complexity: u8,
    /// The complexity for a long quiet stretch (`None`: always `complexity`).
    quiet_complexity: Option<u8>,
    /// The audio bandwidth cap for speech, in kHz (20: none).
    max_khz: u8,
    /// The cap in a long quiet stretch.
    quiet_max_khz: u8,
    /// Quiet frames in a row, up to the count that lowers the complexity.
    quiet_run: u32,
    quiet_before_low: u32,
    low: bool,
    /// Frames encoded at the quiet complexity.
    quiet_frames: u64,
}

impl OpusEncoder {
    pub fn new(frame_ms: u8, settings: EncoderSettings) -> Result<Self, MediaError> {
        if ![10, 20, 40, 60].contains(&frame_ms) {
            return Err(MediaError::Config(format!(
                "frame length {frame_ms} ms: use 10, 20, 40 or 60"
            )));
        }
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(err)?;
        // Calls carry speech: keep libopus in its SILK-based modes, which are the ones with in-band FEC.
        enc.set_signal(opus::Signal::Voice).map_err(err)?;
        let complexity = enc.get_complexity().map_err(err)?.clamp(0, 10) as u8;
        let mut e = Self {
            enc,
            frame: frame_samples(frame_ms),
            settings: None,
            complexity,
            quiet_complexity: Some(QUIET_COMPLEXITY),
            max_khz: 20,
            quiet_max_khz: QUIET_MAX_KHZ,
            quiet_run: 0,
            quiet_before_low: QUIET_BEFORE_LOW_MS.div_ceil(u32::from(frame_ms)),
            low: false,
            quiet_frames: 0,
        };
        e.apply(settings)?;
        Ok(e)
    }

    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// The encoder's computational complexity for speech, 0-10 (libopus's default is used until this is
    /// called).
    pub fn set_complexity(&mut self, c: u8) -> Result<(), MediaError> {
        self.complexity = c.min(10);
        if !self.low {
            self.enc
                .set_complexity(i32::from(self.complexity))
                .map_err(err)?;
        }
        Ok(())
    }

    /// The complexity after a long quiet stretch; `None` keeps the speech complexity throughout.
    /// (The quiet stretch's bandwidth cap goes with it.)
    pub fn set_quiet_complexity(&mut self, c: Option<u8>) -> Result<(), MediaError> {
        self.quiet_complexity = c.map(|c| c.min(10));
        if self.low {
            self.low = false;
            self.enc
                .set_complexity(i32::from(self.complexity))
                .map_err(err)?;
            if self.quiet_caps_bandwidth() {
                self.apply_bandwidth()?;
            }
        }
        Ok(())
    }

    /// Whether the last frame was encoded at the quiet complexity.
    pub fn quiet_mode(&self) -> bool {
        self.low
    }

    /// Frames encoded at the quiet complexity so far.
    pub fn quiet_frames(&self) -> u64 {
        self.quiet_frames
    }

    /// Variable bitrate (`true`, libopus's default, constrained) or constant (every frame the same size; for
    /// comparisons: it costs speech quality, see BENCHMARKS.md).
    pub fn set_vbr(&mut self, vbr: bool) -> Result<(), MediaError> {
        self.enc.set_vbr(vbr).map_err(err)
    }

    /// Discontinuous transmission: in silence and background noise libopus then codes a frame only every
    /// 400 ms (to refresh the listener's comfort noise) and returns [`is_dtx`] packets for the rest, which
    /// need not be sent. The decoder plays comfort noise for a frame not sent ([`OpusDecoder::conceal`]).
    pub fn set_dtx(&mut self, dtx: bool) -> Result<(), MediaError> {
        self.enc.set_dtx(dtx).map_err(err)
    }

    /// Caps the audio bandwidth: 8 (wideband, SILK alone), 12 (super-wideband) or 20 kHz (fullband, the
    /// default: libopus then picks by bitrate).
    /// Speech is capped at this; a long quiet stretch at the quiet cap if that is lower.
    pub fn set_max_bandwidth_khz(&mut self, khz: u8) -> Result<(), MediaError> {
        self.max_khz = khz;
        self.apply_bandwidth()
    }

    /// The bandwidth cap in a long quiet stretch (default [`QUIET_MAX_KHZ`], none; 8: wideband, SILK alone;
    /// what is quiet lies below -45 dBFS, and what of it lies above 8 kHz is fainter still).
    pub fn set_quiet_max_bandwidth_khz(&mut self, khz: u8) -> Result<(), MediaError> {
        self.quiet_max_khz = khz;
        self.apply_bandwidth()
    }

    /// Whether entering or leaving a quiet stretch changes the bandwidth cap (not by default: then a
    /// toggle costs libopus no call more than before the cap existed).
    fn quiet_caps_bandwidth(&self) -> bool {
        self.quiet_max_khz < self.max_khz
    }

    /// Gives libopus the cap for now: the speech cap, or the quiet one in a long quiet stretch.
    fn apply_bandwidth(&mut self) -> Result<(), MediaError> {
        let khz = if self.low {
            self.max_khz.min(self.quiet_max_khz)
        } else {
            self.max_khz
        };
        let b = match khz {
            0..=4 => opus::Bandwidth::Narrowband,
            5..=6 => opus::Bandwidth::Mediumband,
            7..=8 => opus::Bandwidth::Wideband,
            9..=12 => opus::Bandwidth::Superwideband,
            _ => opus::Bandwidth::Fullband,
        };
        self.enc.set_max_bandwidth(b).map_err(err)
    }

    /// The complexity libopus uses now (the speech complexity, or the quiet one in a long quiet stretch).
    pub fn complexity(&mut self) -> Result<u8, MediaError> {
        self.enc.get_complexity().map(|c| c as u8).map_err(err)
    }

    /// Applies new settings (from the rate controller); unchanged ones cost nothing.
    pub fn apply(&mut self, s: EncoderSettings) -> Result<(), MediaError> {
        if self.settings == Some(s) {
            return Ok(());
        }
        self.enc
            .set_bitrate(opus::Bitrate::Bits(s.bitrate as i32))
            .map_err(err)?;
        self.enc.set_inband_fec(s.fec).map_err(err)?;
        self.enc
            .set_packet_loss_perc(i32::from(s.loss_hint_pct))
            .map_err(err)?;
        self.settings = Some(s);
        Ok(())
    }

    /// Whether the encoder is in DTX after the frame just encoded: the input has been quiet long enough
    /// that only a comfort-noise refresh goes out every 400 ms (that refresh included). False for speech
    /// and for the quiet frames before DTX starts.
    pub fn in_dtx(&mut self) -> bool {
        self.enc.get_in_dtx().unwrap_or(false)
    }

    /// Encodes exactly one frame.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, MediaError> {
        if pcm.len() != self.frame {
            return Err(MediaError::Config(format!(
                "a frame has {} samples, got {}",
                self.frame,
                pcm.len()
            )));
        }
        if is_quiet(pcm) {
            self.quiet_run = (self.quiet_run + 1).min(self.quiet_before_low);
        } else {
            self.quiet_run = 0;
        }
        let low = self.quiet_complexity.is_some() && self.quiet_run >= self.quiet_before_low;
        if low != self.low {
            let c = match self.quiet_complexity {
                Some(q) if low => q,
                _ => self.complexity,
            };
            self.enc.set_complexity(i32::from(c)).map_err(err)?;
            self.low = low;
            if self.quiet_caps_bandwidth() {
                self.apply_bandwidth()?;
            }
        }
        self.quiet_frames += u64::from(low);
        self.enc.encode_vec(pcm, 1500).map_err(err)
    }

    /// The encoder's lookahead in samples (part of the codec's latency floor).
    pub fn lookahead(&mut self) -> usize {
        self.enc
            .get_lookahead()
            .map(|l| l.max(0) as usize)
            .unwrap_or(0)
    }
}

pub struct OpusDecoder {
    dec: opus::Decoder,
    frame: usize,
}

impl OpusDecoder {
    pub fn new(frame_ms: u8) -> Result<Self, MediaError> {
        Ok(Self {
            dec: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(err)?,
            frame: frame_samples(frame_ms),
        })
    }

    fn run(&mut self, packet: &[u8], fec: bool) -> Result<Vec<i16>, MediaError> {
        let mut out = vec![0i16; self.frame];
        let n = self.dec.decode(packet, &mut out, fec).map_err(err)?;
        out.truncate(n);
        out.resize(self.frame, 0);
        Ok(out)
    }

    /// Decodes one received frame.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, MediaError> {
        self.run(packet, false)
    }

    /// Rebuilds the frame before `next` from the FEC `next` carries (PLC if it carries none).
    pub fn decode_fec(&mut self, next: &[u8]) -> Result<Vec<i16>, MediaError> {
        self.run(next, true)
    }

    /// Forgets the past: the next frame decodes as a call's first would (no fade from concealment).
    pub fn reset(&mut self) -> Result<(), MediaError> {
        self.dec.reset_state().map_err(err)
    }

    /// Conceals one lost frame.
    pub fn conceal(&mut self) -> Result<Vec<i16>, MediaError> {
        self.run(&[], false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A xorshift generator seeded with `seed` (test noise, the same on every run).
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// A speech-like test signal: voiced segments whose pitch jumps every 70 ms, and noise bursts in
    /// between (so concealment cannot simply extrapolate).
    fn voice(samples: usize) -> Vec<i16> {
        let mut next = xorshift(0x2545_f491);
        let mut noise = move || (next() % 20_001) as f64 / 10_000.0 - 1.0;
        let mut phase = 0.0f64;
        (0..samples)
            .map(|i| {
                let seg = i / 3360;
                let f0 = [120.0, 185.0, 140.0, 230.0, 160.0, 105.0, 210.0][seg % 7];
                phase += 2.0 * std::f64::consts::PI * f0 / SAMPLE_RATE as f64;
                let v = if seg % 5 == 4 {
                    noise() * 0.6
                } else {
                    [(1.0, 1.0), (2.0, 0.6), (3.0, 0.5), (5.0, 0.3), (8.0, 0.15)]
                        .iter()
                        .map(|(h, a)| a * (phase * h).sin())
                        .sum::<f64>()
                };
                (v * 5000.0) as i16
            })
            .collect()
    }

    fn frames(settings: EncoderSettings) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(20, settings).unwrap();
        voice(48_000 * 2)
            .chunks(960)
            .map(|f| enc.encode(f).unwrap())
            .collect()
    }

    #[test]
    fn the_encoder_says_which_frames_it_sends_in_dtx() {
        // 2 s of speech, 2 s of room noise at -60 dBFS, 1 s of speech.
        let mut next = xorshift(0x9e37_79b9);
        let mut quiet = || (next() % 61) as i16 - 30;
        let mut pcm = voice(48_000 * 2);
        pcm.extend((0..48_000 * 2).map(|_| quiet()));
        pcm.extend(voice(48_000));
        let mut enc = OpusEncoder::new(
            20,
            EncoderSettings {
                bitrate: 32_000,
                fec: false,
                loss_hint_pct: 6,
                redundancy: 0,
            },
        )
        .unwrap();
        enc.set_dtx(true).unwrap();
        // (frame, sent, in DTX)
        let frames: Vec<(usize, bool, bool)> = pcm
            .chunks(960)
            .enumerate()
            .map(|(i, f)| {
                let p = enc.encode(f).unwrap();
                (i, !is_dtx(&p), enc.in_dtx())
            })
            .collect();
        // Speech is sent and never in DTX.
        for &(i, sent, dtx) in frames[..100].iter().chain(&frames[205..]) {
            assert!(sent && !dtx, "speech frame {i}: sent {sent}, in DTX {dtx}");
        }
        // In the quiet stretch DTX starts, and from then on what is sent is a refresh in DTX, a few a
        // second.
        let start = frames[100..200]
            .iter()
            .position(|&(_, sent, _)| !sent)
            .expect("DTX starts in 2 s of room noise")
            + 100;
        let refreshes: Vec<_> = frames[start..200].iter().filter(|f| f.1).collect();
        assert!(
            !refreshes.is_empty() && refreshes.len() <= 8,
            "{refreshes:?}"
        );
        assert!(refreshes.iter().all(|f| f.2), "{refreshes:?}");
    }

    #[test]
    fn lbrr_is_present_when_the_loss_hint_asks_for_it() {
        for bitrate in [24_000, 32_000] {
            let with = frames(EncoderSettings {
                bitrate,
                fec: true,
                loss_hint_pct: 10,
                redundancy: 0,
            });
            let n = with.iter().filter(|p| has_lbrr(p)).count();
            assert!(
                n >= with.len() * 9 / 10,
                "{bitrate}: LBRR in {n} of {} frames",
                with.len()
            );
            let without = frames(EncoderSettings {
                bitrate,
                fec: false,
                loss_hint_pct: 0,
                redundancy: 0,
            });
            assert_eq!(
                without.iter().filter(|p| has_lbrr(p)).count(),
                0,
                "{bitrate}"
            );
        }
        // The trap: FEC on but too few bits (16 kbit/s, measured with this signal): libopus sends none.
        let low = frames(EncoderSettings {
            bitrate: 16_000,
            fec: true,
            loss_hint_pct: 20,
            redundancy: 0,
        });
        assert_eq!(low.iter().filter(|p| has_lbrr(p)).count(), 0, "16 kbit/s");
    }

    #[test]
    fn fec_rebuilds_a_lost_frame_better_than_concealment() {
        let pcm = voice(48_000 * 2);
        let packets = frames(EncoderSettings {
            bitrate: 24_000,
            fec: true,
            loss_hint_pct: 10,
            redundancy: 0,
        });
        // Every 4th frame whose successor carries LBRR is lost.
        let lost: Vec<usize> = (10..packets.len() - 1)
            .filter(|&i| has_lbrr(&packets[i + 1]))
            .step_by(4)
            .collect();
        assert!(lost.len() >= 8);
        let err = |use_fec: bool| {
            let mut dec = OpusDecoder::new(20).unwrap();
            let mut out = vec![];
            for (i, p) in packets.iter().enumerate() {
                if lost.contains(&i) {
                    out.extend(if use_fec {
                        dec.decode_fec(&packets[i + 1]).unwrap()
                    } else {
                        dec.conceal().unwrap()
                    });
                } else {
                    out.extend(dec.decode(p).unwrap());
                }
            }
            // The codec's delay: the lag that best aligns the output with the input.
            let d = (0..2000)
                .max_by_key(|&d| {
                    (0..40_000)
                        .map(|i| i64::from(out[i + d]) * i64::from(pcm[i]))
                        .sum::<i64>()
                })
                .unwrap();
            lost.iter()
                .flat_map(|&l| l * 960..(l + 1) * 960)
                .filter(|&i| i + d < out.len())
                .map(|i| (f64::from(out[i + d]) - f64::from(pcm[i])).powi(2))
                .sum::<f64>()
        };
        let (fec, plc) = (err(true), err(false));
        assert!(fec < plc, "FEC error {fec:.3e} vs PLC {plc:.3e}");
    }

    #[test]
    fn quiet_is_below_minus_45_dbfs() {
        assert!(is_quiet(&[]));
        assert!(is_quiet(&[0; 960]));
        assert!(is_quiet(&[183; 960]) && is_quiet(&[-183; 960]));
        assert!(!is_quiet(&[184; 960]) && !is_quiet(&[-184; 960]));
        assert!(!is_quiet(&voice(960)));
    }

    /// A listener's encoder: speech, then 300 ms of room noise at -60 dBFS, then speech again; the quiet
    /// stretch at the default bandwidth (none capped) and capped to wideband.
    #[test]
    fn a_long_quiet_stretch_lowers_the_complexity_and_speech_restores_it_at_once() {
        quiet_stretch(None);
        quiet_stretch(Some(8));
    }

    fn quiet_stretch(quiet_khz: Option<u8>) {
        let settings = EncoderSettings {
            bitrate: 32_000,
            fec: false,
            loss_hint_pct: 6,
            redundancy: 0,
        };
        let speech = voice(48_000);
        let mut state = 7u32;
        let room: Vec<i16> = (0..960)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 16) % 65) as i16 - 32
            })
            .collect();
        assert!(is_quiet(&room));
        let mut enc = OpusEncoder::new(20, settings).unwrap();
        if let Some(k) = quiet_khz {
            enc.set_quiet_max_bandwidth_khz(k).unwrap();
        }
        let full = enc.complexity().unwrap();
        assert!(full > QUIET_COMPLEXITY, "libopus default {full}");
        let mut input = vec![];
        let mut packets = vec![];
        for f in speech[..960 * 25].chunks(960) {
            packets.push(enc.encode(f).unwrap());
            input.extend_from_slice(f);
            assert!(!enc.quiet_mode());
        }
        // 200 ms of quiet (10 frames) is still encoded in full; from then on at the quiet complexity.
        for i in 1..=15 {
            packets.push(enc.encode(&room).unwrap());
            input.extend_from_slice(&room);
            assert_eq!(enc.quiet_mode(), i >= 10, "quiet frame {i}");
        }
        assert_eq!(enc.complexity().unwrap(), QUIET_COMPLEXITY);
        assert_eq!(enc.quiet_frames(), 6);
        // The first frame that is not quiet is encoded at full complexity, and so is the rest.
        for f in speech[960 * 25..].chunks(960) {
            packets.push(enc.encode(f).unwrap());
            input.extend_from_slice(f);
            assert!(!enc.quiet_mode());
            assert_eq!(enc.complexity().unwrap(), full);
        }
        assert_eq!(enc.quiet_frames(), 6);
        // And the speech after the quiet stretch decodes as well as it does from an encoder that never
        // lowered its complexity (within 1 dB of its signal-to-noise ratio).
        let snr_after_quiet = |packets: &[Vec<u8>]| {
            let mut dec = OpusDecoder::new(20).unwrap();
            let out: Vec<i16> = packets
                .iter()
                .flat_map(|p| dec.decode(p).unwrap())
                .collect();
            let from = 960 * 40;
            let d = (0..2000)
                .max_by_key(|&d| {
                    (from..from + 20_000)
                        .map(|i| i64::from(out[i + d]) * i64::from(input[i]))
                        .sum::<i64>()
                })
                .unwrap();
            let (mut sig, mut err) = (0.0, 0.0);
            for i in from..input.len() - d {
                sig += f64::from(input[i]).powi(2);
                err += (f64::from(out[i + d]) - f64::from(input[i])).powi(2);
            }
            10.0 * (sig / err).log10()
        };
        let lowered = snr_after_quiet(&packets);
        let mut always = OpusEncoder::new(20, settings).unwrap();
        always.set_quiet_complexity(None).unwrap();
        let mut steady = vec![];
        for f in input.chunks(960) {
            steady.push(always.encode(f).unwrap());
        }
        assert_eq!(always.quiet_frames(), 0);
        // The TOC byte's configuration: 0-11 SILK alone (8-11 wideband), 12-15 hybrid, 16-31 CELT alone.
        let config = |p: &Vec<u8>| p[0] >> 3;
        let (lowered_modes, steady_modes): (Vec<u8>, Vec<u8>) = (
            packets.iter().map(config).collect(),
            steady.iter().map(config).collect(),
        );
        // The encoder that never lowered anything codes the quiet frames' room noise as hybrid (CELT
        // included); capped to wideband, the frames encoded at the quiet complexity are SILK alone.
        let quiet = 25 + 9..25 + 15;
        assert!(
            steady_modes[quiet.clone()].iter().any(|&c| c >= 12),
            "{steady_modes:?}"
        );
        if quiet_khz == Some(8) {
            assert!(
                lowered_modes[quiet].iter().all(|&c| c <= 11),
                "{lowered_modes:?}"
            );
        } else {
            assert_eq!(lowered_modes[quiet.clone()], steady_modes[quiet]);
        }
        // Speech after the stretch is coded in the same modes and bandwidths as by that encoder: hybrid
        // fullband again from its first frame.
        assert_eq!(lowered_modes[40..], steady_modes[40..]);
        assert!(lowered_modes[40] >= 12, "{lowered_modes:?}");
        let full_snr = snr_after_quiet(&steady);
        assert!(
            lowered > full_snr - 1.0 && lowered > 3.0,
            "SNR after the quiet stretch {lowered:.2} dB, never lowered {full_snr:.2} dB"
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut enc = OpusEncoder::new(
            20,
            EncoderSettings {
                bitrate: 24_000,
                fec: true,
                loss_hint_pct: 6,
                redundancy: 0,
            },
        )
        .unwrap();
        assert!(enc.encode(&[0; 100]).is_err());
        assert!(OpusEncoder::new(15, enc.settings.unwrap()).is_err());
        let mut dec = OpusDecoder::new(20).unwrap();
        // Garbage must not panic (libopus may accept or refuse it).
        let _ = dec.decode(&[0xff, 0xff, 0xff]);
        assert!(!has_lbrr(&[]));
        assert!(
            libopus_version().contains("libopus"),
            "{}",
            libopus_version()
        );
    }
}
