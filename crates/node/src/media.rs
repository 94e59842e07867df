//! The media of one call: audio in -> Opus -> QUIC datagrams -> jitter buffer -> Opus -> audio out, with
//! receiver reports once a second steering the sender's bitrate, FEC and loss hint.
//!
//! Audio comes from a sound card ([`crate::audio`]) or a headless source (WAV file, tone, silence), and goes
//! to a sound card and/or a WAV recording. The media clock is the task's 10/20 ms tick: a recording is
//! exactly as long as the call's media ran, concealment and jitter-buffer waits included, and the
//! statistics give the wall-clock origin of both the input's and the recording's sample clocks, which is
//! what mouth-to-ear latency measurements need. A machine without a sound card still calls: the device
//! that cannot be opened is replaced by silence (input) or nothing (output), and the statistics say why.

use crate::audio::Queue;
use bytes::Bytes;
use kith_core::call::{CallId, MediaParams};
use kith_media::codec::{self, OpusDecoder, OpusEncoder, SAMPLE_RATE};
use kith_media::jitter::{JitterBuffer, JitterConfig, Playout};
use kith_media::packet::{self, AudioPacket, Datagram, Report};
use kith_media::rate::RateController;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Where a call's outgoing audio comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioInput {
    /// A 48 kHz mono 16-bit WAV file, played once, then silence.
    Wav(PathBuf),
    /// A sine tone of this frequency.
    Tone(f32),
    /// Silence.
    Null,
    /// A sound card's input, by name ("default" for the system's; see `kith audio devices`).
    Device(String),
    /// Another part of this process (a gateway's SIP leg): in-process only, never through the API.
    #[serde(skip)]
    Bridge(Bridge),
}

/// A call's audio exchanged in-process instead of with a sound card. The other side's clock drives the
/// call's: each time it puts a frame of 48 kHz mono samples into `to_call` it says so on `frame_in`; the
/// call then takes that frame (as from a microphone), encodes and sends it, plays its next frame into
/// `from_call` and says so on `frame_out`, for the other side to take and send on at once. So the two
/// clocks are one, and no audio waits in the bridge for the other side's next tick (up to a frame each
/// way with two clocks). A gateway bridges its SIP leg to a kith call this way.
#[derive(Clone, Default)]
pub struct Bridge {
    pub to_call: Queue,
    pub from_call: Queue,
    /// The other side put a frame into `to_call`.
    pub frame_in: Arc<tokio::sync::Notify>,
    /// The call put a frame into `from_call`.
    pub frame_out: Arc<tokio::sync::Notify>,
    /// The audio band the other side carries, in kHz (0: full band). The call's encoder is capped at it:
    /// nothing above it is in the audio, and a narrower band costs the encoder less (narrowband Opus about
    /// half of fullband's CPU here, BENCHMARKS.md). The other side may change it during the call (a SIP
    /// phone's codec, agreed or changed after the call's media started): it is read every frame.
    pub band_khz: Arc<std::sync::atomic::AtomicU8>,
}

impl Bridge {
    /// A bridge whose other side carries `khz` of audio band.
    pub fn with_band(khz: u8) -> Self {
        let b = Self::default();
        b.set_band(khz);
        b
    }

    /// The other side now carries `khz` (0: full band).
    pub fn set_band(&self, khz: u8) {
        self.band_khz
            .store(khz, std::sync::atomic::Ordering::Relaxed);
    }
}

impl PartialEq for Bridge {
    fn eq(&self, other: &Self) -> bool {
        self.to_call.same(&other.to_call) && self.from_call.same(&other.from_call)
    }
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bridge")
    }
}

/// What happens to the received audio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AudioOptions {
    pub input: Option<AudioInput>,
    /// Record what is heard into this WAV file (48 kHz mono 16-bit).
    pub record_wav: Option<PathBuf>,
    /// Play what is heard on this sound card ("default" for the system's).
    #[serde(default)]
    pub output_device: Option<String>,
    /// Hang up after this many seconds of talk.
    pub duration_secs: Option<f64>,
    /// Frame length for a call we place: 10 or 20 ms (default 20). The callee follows the caller.
    pub frame_ms: Option<u8>,
}

/// Statistics of one call, live and final.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    pub codec: String,
    pub frame_ms: u8,
    pub bitrate: u32,
    pub fec: bool,
    pub loss_hint_pct: u8,
    /// Whole copies of earlier frames each outgoing datagram carries (redundancy, on under steady loss).
    pub redundancy: u8,
    pub rtt_ms: Option<f64>,
    /// Audio packets sent and received.
    pub sent: u64,
    pub received: u64,
    /// Frames of ours not sent because they were silence or background noise (discontinuous transmission:
    /// in a pause a frame goes only every 400 ms, for the peer's comfort noise).
    pub frames_not_sent: u64,
    /// Frames the peer did not send (its pauses), played as comfort noise; neither loss nor concealment.
    pub comfort_noise_frames: u64,
    /// Frames played while the peer paused, made on the capture clock's wake-up instead of a wake-up of
    /// their own (see the media loop).
    pub frames_played_on_capture_clock: u64,
    /// Frames lost on the way in (before FEC), and those neither FEC nor a redundant copy could rebuild
    /// (after FEC), percent.
    pub loss_before_fec_pct: f64,
    pub loss_after_fec_pct: f64,
    /// Lost frames rebuilt from the next packet's in-band FEC (LBRR), and played whole from a copy in a
    /// later packet.
    pub fec_frames: u64,
    pub red_frames: u64,
    pub concealed_frames: u64,
    pub late: u64,
    pub jitter_ms: f64,
    pub jitter_buffer_ms: f64,
    pub jitter_target_ms: f64,
    /// Times the jitter buffer grew by a frame (concealing), dropped a frame, or moved playout earlier by
    /// part of a frame in a pause (and by how much in all).
    pub jitter_grew: u64,
    pub jitter_dropped: u64,
    pub jitter_advances: u64,
    pub jitter_advanced_ms: f64,
    /// What the peer reports about our audio.
    pub peer_loss_pct: f64,
    pub peer_jitter_ms: f64,
    /// Malformed or foreign datagrams dropped.
    pub dropped_datagrams: u64,
    pub seconds: f64,
    /// Where the audio came from and went to (device names, files, or why a sound card was not used).
    pub input: String,
    pub output: String,
    /// Wall-clock time (Unix microseconds) of the input's first sample (one frame before the first frame
    /// was sent, since a frame is sent once it is complete) and of the recording's first sample.
    pub input_origin_unix_us: u64,
    pub record_origin_unix_us: u64,
    /// Sound cards' glitches, in milliseconds of audio: silence sent because the microphone had not
    /// delivered in time, microphone audio dropped because it came in a burst (or its clock runs fast),
    /// and audio the loudspeaker could not take in time (dropped).
    pub input_filled_ms: f64,
    pub input_dropped_ms: f64,
    pub output_dropped_ms: f64,
    /// UDP packets the call's connection sent while the call ran: the media datagrams, the reports, and
    /// whatever else went on that connection, acknowledgements included (counted on the connection the call
    /// started on). About one per frame sent when acknowledgements ride along in the media.
    pub udp_packets_sent: u64,
    /// Frames the encoder coded at its lower complexity for quiet input (after 200 ms of it; speech is
    /// always coded at full complexity).
    pub quiet_encoded_frames: u64,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An in-process impairment shim on outgoing datagrams: loss (random or in bursts), delay and jitter.
/// For tests and benchmarks (the kernel here has no netem).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Impairment {
    /// Fraction of datagrams lost.
    pub loss: f64,
    /// Mean burst length in packets (1 = independent losses), Gilbert-Elliott.
    pub burst: f64,
    pub delay_ms: f64,
    /// Uniform +- around the delay.
    pub jitter_ms: f64,
    pub seed: u64,
}

impl Impairment {
    /// Parses `loss=20,burst=3,delay=30,jitter=10,seed=1` (loss in percent).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut i = Impairment {
            burst: 1.0,
            seed: 1,
            ..Default::default()
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("impairment {part:?}: use key=value"))?;
            let n: f64 = v
                .trim_end_matches('%')
                .trim_end_matches("ms")
                .parse()
                .map_err(|_| format!("impairment {part:?}: {v:?} is not a number"))?;
            match k {
                "loss" => i.loss = (n / 100.0).clamp(0.0, 1.0),
                "burst" => i.burst = n.max(1.0),
                "delay" => i.delay_ms = n.max(0.0),
                "jitter" => i.jitter_ms = n.max(0.0),
                "seed" => i.seed = n as u64,
                _ => {
                    return Err(format!(
                        "impairment {k:?}: known keys are loss, burst, delay, jitter, seed"
                    ));
                }
            }
        }
        Ok(i)
    }
}

struct Shim {
    cfg: Impairment,
    rng: u64,
    in_burst: bool,
}

impl Shim {
    fn new(cfg: Impairment) -> Self {
        Self {
            rng: cfg.seed.max(1),
            cfg,
            in_burst: false,
        }
    }

    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether to drop the next datagram; bursts follow a two-state chain with the configured mean length
    /// and overall loss.
    fn lose(&mut self) -> bool {
        let p = self.cfg.loss;
        if p <= 0.0 {
            return false;
        }
        if self.cfg.burst <= 1.0 {
            return self.uniform() < p;
        }
        // Leave the bad state with 1/burst; enter it so that the stationary share is p.
        let leave = 1.0 / self.cfg.burst;
        let enter = (p * leave / (1.0 - p)).min(1.0);
        self.in_burst = if self.in_burst {
            self.uniform() >= leave
        } else {
            self.uniform() < enter
        };
        self.in_burst
    }

    fn delay(&mut self) -> Duration {
        let j = (self.uniform() * 2.0 - 1.0) * self.cfg.jitter_ms;
        Duration::from_secs_f64(((self.cfg.delay_ms + j).max(0.0)) / 1000.0)
    }
}

/// Sends datagrams on whatever connection the peer currently has.
pub type ConnOf = Arc<dyn Fn() -> Option<iroh::endpoint::Connection> + Send + Sync>;

/// A running call's media.
pub struct MediaHandle {
    pub stats: Arc<Mutex<CallStats>>,
    pub incoming: mpsc::Sender<Bytes>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<()>,
}

impl MediaHandle {
    /// Stops the media and waits until the recording is finished.
    pub async fn stop(self) -> CallStats {
        let _ = self.stop.send(true);
        let _ = self.done.await;
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn load_wav(path: &PathBuf) -> Result<Vec<i16>, String> {
    let mut r = hound::WavReader::open(path).map_err(|e| {
        format!(
            "cannot read {}: {e} (give a 48 kHz mono 16-bit WAV file)",
            path.display()
        )
    })?;
    let spec = r.spec();
    if spec.sample_rate != SAMPLE_RATE
        || spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(format!(
            "{} is {} Hz, {} channel(s), {} bit: kith plays 48 kHz mono 16-bit WAV (convert with: sox IN -r 48000 -c 1 -b 16 OUT.wav)",
            path.display(),
            spec.sample_rate,
            spec.channels,
            spec.bits_per_sample
        ));
    }
    r.samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The longest call duration a caller may set (a year, in seconds): beyond it a timer cannot be armed.
pub const MAX_CALL_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// Checks the options before a call starts (a missing or wrong input file is the user's error, said now).
pub fn check(options: &AudioOptions) -> Result<(), String> {
    if let Some(f) = options.frame_ms
        && f != 10
        && f != 20
    {
        return Err(format!("frame length {f} ms: use 10 or 20"));
    }
    if let Some(d) = options.duration_secs
        && !(d.is_finite() && d > 0.0 && d <= MAX_CALL_SECS)
    {
        return Err(format!(
            "duration {d} s: give a number of seconds above 0 and at most {MAX_CALL_SECS} (a year), or \
             no --duration to talk until hang-up"
        ));
    }
    if let Some(AudioInput::Tone(hz)) = &options.input
        && !(hz.is_finite() && *hz > 0.0 && *hz < SAMPLE_RATE as f32 / 2.0)
    {
        return Err(format!(
            "tone of {hz} Hz: give a frequency above 0 and below {} Hz",
            SAMPLE_RATE / 2
        ));
    }
    if let Some(AudioInput::Wav(p)) = &options.input {
        load_wav(p)?;
    }
    if let Some(p) = &options.record_wav
        && let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(format!(
            "cannot record to {}: folder {} does not exist",
            p.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Starts the media of `call` with negotiated `params`.
pub fn start(
    call: CallId,
    params: MediaParams,
    options: AudioOptions,
    conn_of: ConnOf,
    impair: Option<Impairment>,
) -> Result<MediaHandle, String> {
    let source: Vec<i16> = match &options.input {
        Some(AudioInput::Wav(p)) => load_wav(p)?,
        _ => vec![],
    };
    let mut writer = match &options.record_wav {
        Some(p) => Some(
            hound::WavWriter::create(
                p,
                hound::WavSpec {
                    channels: 1,
                    sample_rate: SAMPLE_RATE,
                    bits_per_sample: 16,
                    sample_format: hound::SampleFormat::Int,
                },
            )
            .map_err(|e| format!("cannot record to {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let frame_ms = params.frame_ms;
    let now = Instant::now();
    let mut rate = RateController::new(params.max_bitrate, now);
    let mut enc = OpusEncoder::new(frame_ms, rate.settings()).map_err(|e| e.to_string())?;
    // Discontinuous transmission: in a pause only a frame every 400 ms goes out, for the peer's comfort
    // noise; the peer's jitter buffer tells frames not sent from lost ones by the sequence numbers.
    enc.set_dtx(true).map_err(|e| e.to_string())?;
    // A bridge's band, applied before the first frame and whenever the other side changes it.
    let band = match &options.input {
        Some(AudioInput::Bridge(b)) => Some(b.band_khz.clone()),
        _ => None,
    };
    let mut band_applied = 0u8;
    let mut dec = OpusDecoder::new(frame_ms).map_err(|e| e.to_string())?;
    let frame = codec::frame_samples(frame_ms);
    let frame_dur = Duration::from_millis(u64::from(frame_ms));
    let mut jb = JitterBuffer::new(JitterConfig::for_frame(frame_dur));
    let stats = Arc::new(Mutex::new(CallStats {
        codec: format!("opus 48 kHz mono ({})", codec::libopus_version()),
        frame_ms,
        ..Default::default()
    }));
    let (tx, mut rx) = mpsc::channel::<Bytes>(512);
    let (stop, mut stopped) = watch::channel(false);
    let tag = packet::call_tag(&call);
    let st = stats.clone();
    let input = options.input.clone();
    let want_in = match &input {
        Some(AudioInput::Device(n)) => Some(n.clone()),
        _ => None,
    };
    let want_out = options.output_device.clone();
    let recording = options.record_wav.clone();
    let headless = match &input {
        Some(AudioInput::Wav(p)) => format!("file {}", p.display()),
        Some(AudioInput::Tone(f)) => format!("tone {f} Hz"),
        Some(AudioInput::Device(_)) => String::new(),
        Some(AudioInput::Bridge(_)) => "bridged".into(),
        Some(AudioInput::Null) | None => "silence".into(),
    };
    let bridge = match &input {
        Some(AudioInput::Bridge(b)) => Some(b.clone()),
        _ => None,
    };
    let done = tokio::spawn(async move {
        // Sound cards open beside the call (a PulseAudio capture stream can take seconds to start): until
        // they are ready the call sends silence and plays to the recording only. A missing one is
        // replaced, and said.
        let opening = |what: &Option<String>| what.as_ref().map(|n| format!("opening {n}"));
        if let Ok(mut s) = st.lock() {
            s.input = opening(&want_in).unwrap_or_else(|| headless.clone());
            s.output = opening(&want_out).unwrap_or_default();
        }
        let (opened_tx, mut opened) = tokio::sync::oneshot::channel();
        let headless_desc = headless.clone();
        let recording_desc = recording.clone();
        let bridged = bridge.is_some();
        // Detached: its result arrives through `opened` (or is dropped with the devices if the call ended).
        drop(tokio::task::spawn_blocking(move || {
            let (headless, recording) = (headless_desc, recording_desc);
            let mut devs = Vec::new();
            let input_desc = match &want_in {
                Some(n) => match crate::audio::open(Some(n), None) {
                    Ok(d) => {
                        let s = d.input_name.clone().unwrap_or_default();
                        devs.push(d);
                        s
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no audio input: sending silence");
                        format!("silence ({e})")
                    }
                },
                None => headless,
            };
            let mut outs = Vec::new();
            if let Some(n) = &want_out {
                match crate::audio::open(None, Some(n)) {
                    Ok(d) => {
                        outs.push(d.output_name.clone().unwrap_or_default());
                        devs.push(d);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "no audio output");
                        outs.push(format!("no sound card ({e})"));
                    }
                }
            }
            if let Some(p) = &recording {
                outs.push(format!("recording {}", p.display()));
            }
            if bridged {
                outs.push("bridged".into());
            }
            if outs.is_empty() {
                outs.push("nothing (no output device, no recording)".into());
            }
            let _ = opened_tx.send((devs, input_desc, outs.join(" + ")));
        }));
        let mut devices: Vec<crate::audio::Devices> = Vec::new();
        let mut devices_pending = true;
        let mut capture = bridge.as_ref().map(|b| b.to_call.clone());
        let mut playback = bridge.as_ref().map(|b| b.from_call.clone());
        let start = Instant::now();
        // KITH_MEDIA_TRACE=FILE: write "frame arrival_us" per received audio datagram (to record network
        // traces that the jitter buffer's tests replay).
        let mut trace = std::env::var_os("KITH_MEDIA_TRACE")
            .and_then(|p| std::fs::File::create(p).ok())
            .map(std::io::BufWriter::new);
        let mut shim = impair.map(Shim::new);
        // Two clocks of one frame each: capture (steady) and playout (which the jitter buffer may move
        // earlier by part of a frame, in a pause).
        let mut tick = tokio::time::interval(frame_dur);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut play = tokio::time::interval(frame_dur);
        play.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        // While the peer pauses (DTX: nothing comes but a comfort-noise refresh every 400 ms) the playout
        // clock rides on the capture clock: a frame due on the playout clock is made at the first capture
        // tick at or after its due time, so the daemon wakes once a frame instead of twice. The jitter
        // buffer is given the playout clock's due times, so it plays what it would have (a refresh that came
        // within a frame of its due time counts as on time); only the comfort noise is made up to a frame
        // later. A recording does not see that, but a sound card's queue does: frames put late, then on
        // time again when the peer talks, left it holding more, and the talk spurts played 10-20 ms later
        // (the call benchmark through sound cards: 80.9-97.2 ms against 70.1-87.7), so playout rides only
        // without a sound card (servers, gateways, tests). The peer's next packet puts the playout clock
        // back on its own, on the same schedule, unless it is marked as a comfort-noise refresh (`FLAG_CN`:
        // the peer's encoder is still in DTX); without that mark each refresh cost about six wake-ups on
        // the playout clock.
        let mut ride: Option<tokio::time::Instant> = None;
        let mut last_capture = tokio::time::Instant::now();
        let mut rode = 0u64;
        // Bridged: the jitter buffer's cuts not yet taken out (see below).
        let mut bridged_cut = Duration::ZERO;
        let mut report = tokio::time::interval(Duration::from_secs(1));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames taken from the input, and packets sent (fewer: in a pause, DTX sends a frame only every
        // 400 ms).
        let mut frame_no: u32 = 0;
        let mut seq: u32 = 0;
        let mut not_sent = 0u64;
        let mut pos = 0usize;
        let mut phase = 0.0f64;
        let mut pcm = vec![0i16; frame];
        // The last frames sent, newest first, with their numbers: copies for redundancy.
        let mut recent: std::collections::VecDeque<(u32, Vec<u8>)> = Default::default();
        // The peer's sequence numbers and timestamps, extended past their 32 bits.
        let (mut peer_seq, mut peer_ts) = (packet::Unwrap::default(), packet::Unwrap::default());
        // Receiver-side accounting for reports.
        let mut last_audio: Option<(u32, Instant)> = None;
        let mut prev_expected = 0u64;
        let mut prev_received = 0u64;
        let mut dropped = 0u64;
        let (mut rtt, mut peer_loss, mut peer_jitter) = (None, 0.0, 0.0);
        // The connection's UDP packet count when the call started, and which connection that was.
        let udp_base = conn_of().map(|c| (c.stable_id(), c.stats().udp_tx.datagrams));
        let udp_sent = |s: &mut CallStats| {
            if let (Some((id, base)), Some(c)) = (udp_base, conn_of())
                && c.stable_id() == id
            {
                s.udp_packets_sent = c.stats().udp_tx.datagrams.saturating_sub(base);
            }
        };
        let send = |bytes: Vec<u8>, shim: &mut Option<Shim>| {
            let Some(conn) = conn_of() else { return };
            match shim {
                Some(s) => {
                    if s.lose() {
                        return;
                    }
                    let d = s.delay();
                    if d.is_zero() {
                        let _ = conn.send_datagram(Bytes::from(bytes));
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(d).await;
                            let _ = conn.send_datagram(Bytes::from(bytes));
                        });
                    }
                }
                None => {
                    let _ = conn.send_datagram(Bytes::from(bytes));
                }
            }
        };
        loop {
            // A playout frame due now (on the playout clock, or riding on the capture clock).
            let mut due: Option<tokio::time::Instant> = None;
            tokio::select! {
                _ = stopped.changed() => break,
                r = &mut opened, if devices_pending => {
                    devices_pending = false;
                    if let Ok((devs, input_desc, output_desc)) = r {
                        devices = devs;
                        if let Some(c) = devices.iter().find_map(|d| d.capture.clone()) {
                            capture = Some(c);
                        }
                        if let Some(p) = devices.iter().find_map(|d| d.playback.clone()) {
                            playback = Some(p);
                        }
                        if let Ok(mut s) = st.lock() {
                            s.input = input_desc;
                            s.output = output_desc;
                        }
                    }
                }
                c = next_capture(&mut tick, bridge.as_ref()) => {
                    last_capture = c;
                    // Bridged: the other side's frame is also the moment to play one for it.
                    if bridge.is_some() {
                        due = Some(c);
                    }
                    if let Some(d) = ride
                        && d <= c
                    {
                        due = Some(d);
                    }
                    // Capture and send one frame.
                    match &input {
                        Some(AudioInput::Tone(f)) => {
                            for s in pcm.iter_mut() {
                                phase += 2.0 * std::f64::consts::PI * f64::from(*f) / f64::from(SAMPLE_RATE);
                                *s = (phase.sin() * 8000.0) as i16;
                            }
                        }
                        Some(AudioInput::Wav(_)) => {
                            for s in pcm.iter_mut() {
                                *s = source.get(pos).copied().unwrap_or(0);
                                pos += 1;
                            }
                        }
                        Some(AudioInput::Bridge(b)) => {
                            // The frame the other side just put (no priming: its clock is ours); at the
                            // start, not what it put before the call's media ran. One more waiting (it
                            // ran ahead while this loop was busy): taken next, at once.
                            if frame_no == 0 {
                                b.to_call.keep_last(pcm.len());
                            }
                            b.to_call.take(&mut pcm);
                            if b.to_call.len() >= pcm.len() {
                                b.frame_in.notify_one();
                            }
                        }
                        Some(AudioInput::Device(_)) => match &capture {
                            Some(q) => q.take_frame(&mut pcm),
                            None => pcm.fill(0),
                        },
                        _ => pcm.fill(0),
                    }
                    if frame_no == 0
                        && let Ok(mut s) = st.lock()
                    {
                        s.input_origin_unix_us = unix_us().saturating_sub(frame_dur.as_micros() as u64);
                    }
                    let this = frame_no;
                    frame_no = frame_no.wrapping_add(1);
                    if let Some(b) = &band {
                        let khz = b.load(std::sync::atomic::Ordering::Relaxed);
                        if khz != band_applied {
                            band_applied = khz;
                            let cap = if khz == 0 { 20 } else { khz };
                            if let Err(e) = enc.set_max_bandwidth_khz(cap) {
                                tracing::warn!(error = %e, "cannot cap the encoder's band");
                            }
                        }
                    }
                    match enc.encode(&pcm) {
                        // A pause: nothing to send (the peer plays comfort noise).
                        Ok(payload) if codec::is_dtx(&payload) => not_sent += 1,
                        Ok(payload) => {
                            let mut flags = if codec::has_lbrr(&payload) { packet::FLAG_FEC } else { 0 };
                            // A refresh in a pause: the peer need not leave its pause for it.
                            if enc.in_dtx() {
                                flags |= packet::FLAG_CN;
                            }
                            // Copies of the frames just before this one (not of a frame sent before a pause:
                            // its turn to play has passed).
                            let copies = u32::from(rate.settings().redundancy).min(packet::MAX_REDUNDANT as u32);
                            let redundant = recent
                                .iter()
                                .map(|(f, p)| (this.wrapping_sub(*f), p))
                                .filter(|(back, _)| (1..=copies).contains(back))
                                .map(|(back, p)| (back as u8, p.clone()))
                                .collect();
                            let p = AudioPacket {
                                tag,
                                seq,
                                timestamp: this.wrapping_mul(frame as u32),
                                flags,
                                payload,
                                redundant,
                            };
                            send(p.encode(), &mut shim);
                            recent.push_front((this, p.payload));
                            recent.truncate(packet::MAX_REDUNDANT);
                            seq = seq.wrapping_add(1);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot encode a frame"),
                    }
                }
                at = play.tick(), if ride.is_none() && bridge.is_none() => due = Some(at),
                Some(d) = rx.recv() => {
                    match Datagram::decode(&d) {
                        Ok(Datagram::Audio(a)) if a.tag == tag => {
                            last_audio = Some((a.timestamp, Instant::now()));
                            // The peer talks again: the playout clock goes back on its own, on the same
                            // schedule. (A comfort-noise refresh leaves it riding.)
                            if a.flags & packet::FLAG_CN == 0
                                && let Some(d) = ride.take()
                            {
                                play.reset_at(d);
                            }
                            let at = peer_ts.extend(a.timestamp) / frame as u64;
                            if let Some(t) = trace.as_mut() {
                                use std::io::Write;
                                let _ = writeln!(t, "{at} {}", start.elapsed().as_micros());
                            }
                            jb.push_packet(at, peer_seq.extend(a.seq), a.payload, a.flags, Instant::now());
                            for (back, copy) in a.redundant {
                                if let Some(f) = at.checked_sub(u64::from(back)) {
                                    jb.push_redundant(f, copy);
                                }
                            }
                        }
                        Ok(Datagram::Report(r)) if r.tag == tag => {
                            // Round trip: now - (when we sent the echoed audio) - how long the peer held it.
                            let sent_at = start + Duration::from_secs_f64(f64::from(r.echo_ms) / 1000.0);
                            let held = Duration::from_millis(u64::from(r.echo_hold_ms));
                            let now = Instant::now();
                            if r.received > 0 && now > sent_at + held {
                                rtt = Some(now - sent_at - held);
                            }
                            peer_loss = f64::from(r.interval_loss_bp) / 100.0;
                            peer_jitter = f64::from(r.jitter_tenth_ms) / 10.0;
                            let s = rate.on_report(peer_loss / 100.0, rtt, now);
                            let _ = enc.apply(s);
                        }
                        _ => dropped += 1,
                    }
                }
                _ = report.tick() => {
                    let js = jb.stats();
                    let expected = jb.highest_seq().map_or(0, |h| h + 1);
                    let received = js.received + js.late;
                    let (de, dr) = (expected.saturating_sub(prev_expected), received.saturating_sub(prev_received));
                    let interval_loss = if de > 0 { 1.0 - (dr as f64 / de as f64).min(1.0) } else { 0.0 };
                    prev_expected = expected;
                    prev_received = received;
                    let (echo_ms, hold_ms) = match last_audio {
                        Some((ts, at)) => (
                            (u64::from(ts) * 1000 / u64::from(SAMPLE_RATE)) as u32,
                            at.elapsed().as_millis() as u32,
                        ),
                        None => (0, 0),
                    };
                    let r = Report {
                        tag,
                        highest_seq: jb.highest_seq().unwrap_or(0) as u32,
                        received: js.received as u32,
                        lost: expected.saturating_sub(received) as u32,
                        late: js.late as u32,
                        fec: (js.fec + js.red) as u32,
                        concealed: js.concealed as u32,
                        jitter_tenth_ms: (js.jitter_rfc3550_ms * 10.0).min(65_535.0) as u16,
                        delay_ms: js.delay_ms.min(65_535.0) as u16,
                        interval_loss_bp: (interval_loss * 10_000.0) as u16,
                        echo_ms,
                        echo_hold_ms: hold_ms,
                    };
                    send(r.encode(), &mut None);
                    let settings = rate.settings();
                    if let Ok(mut s) = st.lock() {
                        s.bitrate = settings.bitrate;
                        s.fec = settings.fec;
                        s.loss_hint_pct = settings.loss_hint_pct;
                        s.redundancy = settings.redundancy;
                        s.rtt_ms = rtt.map(|r| r.as_secs_f64() * 1000.0);
                        s.peer_loss_pct = peer_loss;
                        s.peer_jitter_ms = peer_jitter;
                        fill(&mut s, &js, u64::from(seq), not_sent, dropped, start);
                        sound_glitches(&mut s, capture.as_ref(), playback.as_ref());
                        udp_sent(&mut s);
                        s.quiet_encoded_frames = enc.quiet_frames();
                        s.frames_played_on_capture_clock = rode;
                    }
                }
            }
            // Play out one frame, at its due time on the playout clock, not when this task got to run (why:
            // see `JitterBuffer::pop`).
            while let Some(at) = due.take() {
                let mut out = match jb.pop(at.into_std()) {
                    Playout::Packet {
                        payload, resume, ..
                    } => {
                        // After the peer's pause: decode as a first frame, not faded in from the comfort
                        // noise (the concealment's fade cut the start of words).
                        if resume {
                            let _ = dec.reset();
                        }
                        dec.decode(&payload)
                    }
                    Playout::Fec { payload, .. } => dec.decode_fec(&payload),
                    // Lost, or (a gap in the peer's sending) comfort noise: the decoder's concealment
                    // plays either.
                    Playout::Conceal { .. } | Playout::Gap { .. } => dec.conceal(),
                    Playout::Wait => Ok(vec![0; frame]),
                }
                .unwrap_or_else(|_| vec![0; frame]);
                let is_quiet = codec::is_quiet(&out);
                jb.set_quiet(is_quiet);
                let riding = ride.is_some();
                rode += u64::from(riding);
                let mut next = at + frame_dur;
                let mut advance = jb.advance();
                if let (Some(d), Some(_)) = (advance, &bridge) {
                    // Bridged, the clock is the other side's and does not move: the cuts are taken out
                    // once they add up to a whole frame, by dropping this quiet frame and playing the
                    // next one in the same tick (the delay then really falls by a frame).
                    bridged_cut += d;
                    advance = (bridged_cut >= frame_dur).then(|| {
                        bridged_cut -= frame_dur;
                        frame_dur
                    });
                }
                if let Some(d) = advance {
                    // A pause: play this frame shorter and the next ones that much sooner.
                    let cut = (d.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize;
                    out.truncate(out.len().saturating_sub(cut));
                    next -= d;
                    if bridge.is_some() {
                        due = Some(next);
                    }
                }
                // Ride on the capture clock (or go on riding) while the peer pauses, without a sound card.
                if playback.is_none() && jb.peer_paused() {
                    ride = Some(next);
                    // Due already (a cut moved it before the last capture tick): made now.
                    if next <= last_capture {
                        due = Some(next);
                    }
                } else {
                    ride = None;
                    // Back on the playout clock, or the clock moved earlier: its next tick.
                    if riding || advance.is_some() {
                        play.reset_at(next);
                    }
                }
                if let Some(q) = &playback {
                    q.put_frame(&out, is_quiet);
                }
                // (A frame dropped whole, bridged, is not played: the next one is, in this tick.)
                if let Some(b) = &bridge
                    && !out.is_empty()
                {
                    b.frame_out.notify_one();
                }
                if let Some(w) = writer.as_mut() {
                    if w.len() == 0
                        && let Ok(mut s) = st.lock()
                    {
                        s.record_origin_unix_us = unix_us();
                    }
                    for s in out {
                        let _ = w.write_sample(s);
                    }
                }
            }
        }
        // Final numbers.
        if let Some(c) = conn_of() {
            tracing::info!(quic = ?c.stats(), "call ended: connection statistics");
        }
        if let Ok(mut s) = st.lock() {
            fill(
                &mut s,
                &jb.stats(),
                u64::from(seq),
                not_sent,
                dropped,
                start,
            );
            sound_glitches(&mut s, capture.as_ref(), playback.as_ref());
            udp_sent(&mut s);
            s.quiet_encoded_frames = enc.quiet_frames();
            s.frames_played_on_capture_clock = rode;
        }
        drop(devices);
        if let Some(w) = writer
            && let Err(e) = w.finalize()
        {
            tracing::warn!(error = %e, "cannot finish the call recording");
        }
    });
    Ok(MediaHandle {
        stats,
        incoming: tx,
        stop,
        done,
    })
}

/// The receive-side numbers of the statistics, from the jitter buffer's.
fn fill(
    s: &mut CallStats,
    js: &kith_media::jitter::JitterStats,
    sent: u64,
    not_sent: u64,
    dropped: u64,
    start: Instant,
) {
    // `played` includes the frames played from a copy.
    let lost_frames = js.fec + js.concealed + js.red;
    let total = js.played + js.fec + js.concealed;
    s.sent = sent;
    s.frames_not_sent = not_sent;
    s.received = js.received;
    s.comfort_noise_frames = js.gaps;
    s.loss_before_fec_pct = pct(lost_frames, total);
    s.loss_after_fec_pct = pct(js.concealed, total);
    s.fec_frames = js.fec;
    s.red_frames = js.red;
    s.concealed_frames = js.concealed + js.stalls;
    s.late = js.late;
    s.jitter_ms = js.jitter_rfc3550_ms;
    s.jitter_buffer_ms = js.delay_ms;
    s.jitter_target_ms = js.target_ms;
    s.jitter_grew = js.stalls;
    s.jitter_dropped = js.dropped;
    s.jitter_advances = js.advances;
    s.jitter_advanced_ms = js.advanced_ms;
    s.dropped_datagrams = dropped;
    s.seconds = start.elapsed().as_secs_f64();
}

fn sound_glitches(s: &mut CallStats, capture: Option<&Queue>, playback: Option<&Queue>) {
    if let Some(g) = capture.map(Queue::glitches) {
        s.input_filled_ms = g.filled_ms;
        s.input_dropped_ms = g.dropped_ms;
    }
    if let Some(g) = playback.map(Queue::glitches) {
        s.output_dropped_ms = g.dropped_ms;
    }
}

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

/// The capture clock's next tick: the media clock's, or, bridged, the other side's next frame.
async fn next_capture(
    tick: &mut tokio::time::Interval,
    bridge: Option<&Bridge>,
) -> tokio::time::Instant {
    match bridge {
        Some(b) => {
            b.frame_in.notified().await;
            tokio::time::Instant::now()
        }
        None => tick.tick().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duration too large for a timer (found by the api_json fuzz target's author: 1e300 s passed the
    /// check and then panicked the task that hangs the call up) is refused with the reason.
    #[test]
    fn a_call_duration_beyond_a_year_is_refused() {
        for d in [1e300, MAX_CALL_SECS * 2.0, f64::INFINITY, 0.0, -1.0] {
            let options = AudioOptions {
                duration_secs: Some(d),
                ..Default::default()
            };
            assert!(check(&options).unwrap_err().contains("at most"), "{d}");
        }
        let fine = AudioOptions {
            duration_secs: Some(MAX_CALL_SECS),
            ..Default::default()
        };
        assert!(check(&fine).is_ok());
    }

    #[test]
    fn impairment_specs_parse_and_bad_ones_say_why() {
        let i = Impairment::parse("loss=20,burst=3,delay=30ms,jitter=10,seed=7").unwrap();
        assert_eq!(
            (i.loss, i.burst, i.delay_ms, i.jitter_ms, i.seed),
            (0.2, 3.0, 30.0, 10.0, 7)
        );
        assert!(
            Impairment::parse("lose=3")
                .unwrap_err()
                .contains("known keys")
        );
        assert!(
            Impairment::parse("loss=x")
                .unwrap_err()
                .contains("not a number")
        );
    }

    #[test]
    fn the_shim_loses_what_it_is_told() {
        for (loss, burst) in [(0.2, 1.0), (0.1, 3.0)] {
            let mut s = Shim::new(Impairment {
                loss,
                burst,
                seed: 3,
                ..Default::default()
            });
            let n = 200_000;
            let mut lost = 0;
            let mut bursts = 0;
            let mut prev = false;
            for _ in 0..n {
                let l = s.lose();
                lost += usize::from(l);
                bursts += usize::from(l && !prev);
                prev = l;
            }
            let rate = lost as f64 / n as f64;
            assert!((rate - loss).abs() < 0.01, "{loss}/{burst}: {rate}");
            let mean_burst = lost as f64 / bursts as f64;
            // Independent losses still come in runs of 1 / (1 - p) on average.
            let expected = if burst <= 1.0 {
                1.0 / (1.0 - loss)
            } else {
                burst
            };
            assert!(
                (mean_burst - expected).abs() < 0.1 * expected,
                "{loss}/{burst}: {mean_burst}"
            );
        }
    }
}
