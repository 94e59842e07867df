//! Sound cards, through cpal: listing devices, opening one by name, and the two ends of a call (capture and
//! playback) as sample queues that the media task reads and writes on its own 10/20 ms clock.
//!
//! Devices run at whatever rate and channel count they offer (48 kHz mono preferred); samples are converted
//! to and from 48 kHz mono here. The queues are bounded so that a device whose clock runs a little faster
//! or slower than the call's cannot build up delay: capture keeps at most [`MAX_QUEUE`], playback drops the
//! oldest audio beyond it. cpal streams are not `Send` on every platform, so they live on a thread of
//! their own for the length of the call.

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat, SizedSample};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The call's sample rate.
pub const RATE: u32 = 48_000;
/// Most audio a queue holds (samples at 48 kHz): 120 ms.
pub const MAX_QUEUE: usize = 48 * 120;

/// One device as `kith audio devices` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub id: String,
    pub input: bool,
    pub output: bool,
    pub default_input: bool,
    pub default_output: bool,
    /// The configuration a call would open, per direction (rate, channels, sample format).
    pub input_config: Option<String>,
    pub output_config: Option<String>,
}

/// Keeps alsa-lib's own complaints (it prints to stderr while probing devices) off the terminal.
fn quiet_alsa() {
    #[cfg(target_os = "linux")]
    {
        thread_local! {
            static SINK: std::cell::RefCell<Option<std::rc::Rc<std::cell::RefCell<alsa::Output>>>> =
                const { std::cell::RefCell::new(None) };
        }
        SINK.with_borrow_mut(|s| {
            if s.is_none() {
                *s = alsa::Output::local_error_handler().ok();
            }
        });
    }
}

fn name_of(d: &cpal::Device) -> String {
    d.description()
        .map(|x| x.name().to_string())
        .or_else(|_| d.id().map(|i| i.to_string()))
        .unwrap_or_else(|_| "?".into())
}

fn id_of(d: &cpal::Device) -> String {
    d.id().map(|i| i.to_string()).unwrap_or_default()
}

/// How long a PulseAudio server whose socket is there gets to answer before calls fall back to ALSA.
/// cpal gives each connection attempt 2 s; a server busy with other clients (or a loaded machine) can take
/// longer than that to answer the first one, and ALSA's list then lacks the server's sound cards.
const PULSEAUDIO_PATIENCE: Duration = Duration::from_secs(12);

/// The audio system calls go through: PulseAudio (or PipeWire through pipewire-pulse) when its server
/// answers, else ALSA. `why_not_pulseaudio` says why PulseAudio was not used (cpal's own choice falls back
/// silently, and the list then lacks the server's devices).
#[derive(Debug, Clone, Serialize)]
pub struct AudioSystem {
    pub name: String,
    pub why_not_pulseaudio: Option<String>,
}

impl std::fmt::Display for AudioSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.why_not_pulseaudio {
            Some(why) => write!(f, "{} (not PulseAudio: {why})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Connects to the audio system. A PulseAudio server whose socket exists is tried again until it answers
/// or [`PULSEAUDIO_PATIENCE`] has passed; with no socket at all ALSA is used at once.
fn host() -> (cpal::Host, AudioSystem) {
    #[cfg(target_os = "linux")]
    {
        let why = pulseaudio_host(PULSEAUDIO_PATIENCE);
        let why = match why {
            Ok(h) => {
                return (
                    h,
                    AudioSystem {
                        name: "PulseAudio".into(),
                        why_not_pulseaudio: None,
                    },
                );
            }
            Err(why) => why,
        };
        if let Ok(h) = cpal::host_from_id(cpal::HostId::Alsa) {
            return (
                h,
                AudioSystem {
                    name: "ALSA".into(),
                    why_not_pulseaudio: Some(why),
                },
            );
        }
    }
    let h = cpal::default_host();
    let name = h.id().name().to_string();
    (
        h,
        AudioSystem {
            name,
            why_not_pulseaudio: None,
        },
    )
}

/// PulseAudio's host, tried until `patience` has passed while its server's socket is there. The error says
/// why not, in words a person can act on.
#[cfg(target_os = "linux")]
fn pulseaudio_host(patience: Duration) -> Result<cpal::Host, String> {
    ensure_pulse_cookie();
    let started = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        // cpal's check: PULSE_SERVER (unix:PATH), PULSE_RUNTIME_PATH or XDG_RUNTIME_DIR names a socket that
        // exists. Without one there is no server to wait for.
        if !cpal::available_hosts().contains(&cpal::HostId::PulseAudio) {
            return Err(if attempts == 0 {
                "no PulseAudio server socket (PULSE_SERVER, or pulse/native under XDG_RUNTIME_DIR): \
                 start PulseAudio or PipeWire's pipewire-pulse to use its sound cards"
                    .into()
            } else {
                "the PulseAudio server went away while kith connected to it".into()
            });
        }
        attempts += 1;
        let why = match cpal::host_from_id(cpal::HostId::PulseAudio) {
            Ok(h) => {
                if attempts > 1 {
                    tracing::info!(
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "PulseAudio answered"
                    );
                }
                return Ok(h);
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= patience {
            return Err(format!(
                "its server did not answer in {} attempts over {:.0} s ({why}): check that it runs \
                 (`pactl info`)",
                attempts,
                started.elapsed().as_secs_f64()
            ));
        }
        // A refused or broken connection fails at once: do not spin on it.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The PulseAudio client under cpal sends the cookie it finds (`PULSE_COOKIE`, `~/.config/pulse/cookie`,
/// `~/.pulse-cookie`), or an empty one when there is none, and the server takes an empty cookie for a
/// protocol error and hangs up, even where it lets anyone in (`auth-anonymous`) or checks the socket's
/// owner instead. libpulse, which every other client uses, makes the cookie file on first use when there is
/// none: so does kith, the same way (256 random bytes, mode 0600). Without this a fresh account's first
/// listing fell back to ALSA, whose own PulseAudio plugin (libpulse) then made the file, and the next
/// listing said PulseAudio.
#[cfg(target_os = "linux")]
fn ensure_pulse_cookie() {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if std::env::var_os("PULSE_COOKIE").is_some() {
        return;
    }
    let Some(home) = std::env::var_os("HOME").map(std::path::PathBuf::from) else {
        return;
    };
    let dir = home.join(".config/pulse");
    let cookie = dir.join("cookie");
    if cookie.exists() || home.join(".pulse-cookie").exists() {
        return;
    }
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let mut bytes = [0u8; 256];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&cookie)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes));
    if let Err(e) = written {
        tracing::debug!(error = %e, "cannot make a PulseAudio cookie");
    }
}

/// The sound cards the audio system offers, and which system that is.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub system: AudioSystem,
    pub devices: Vec<DeviceInfo>,
}

/// Every device of the audio system calls use.
pub fn devices() -> Result<Listing, String> {
    quiet_alsa();
    let (host, system) = host();
    let default_in = host.default_input_device().map(|d| id_of(&d));
    let default_out = host.default_output_device().map(|d| id_of(&d));
    let list = host
        .devices()
        .map_err(|e| format!("cannot list audio devices ({system}): {e}"))?;
    let mut out = Vec::new();
    for d in list {
        let id = id_of(&d);
        let input_config = if d.supports_input() {
            choose(&d, true).ok().map(|c| describe(&c))
        } else {
            None
        };
        let output_config = if d.supports_output() {
            choose(&d, false).ok().map(|c| describe(&c))
        } else {
            None
        };
        out.push(DeviceInfo {
            name: name_of(&d),
            default_input: default_in.as_deref() == Some(id.as_str()),
            default_output: default_out.as_deref() == Some(id.as_str()),
            input: input_config.is_some(),
            output: output_config.is_some(),
            input_config,
            output_config,
            id,
        });
    }
    Ok(Listing {
        system,
        devices: out,
    })
}

fn describe(c: &cpal::SupportedStreamConfig) -> String {
    format!(
        "{} Hz, {} ch, {}",
        c.sample_rate(),
        c.channels(),
        c.sample_format()
    )
}

/// Finds a device by name: "default" (the system's), an exact name or id, or a part of one name
/// (case-insensitive) that matches exactly one device.
fn find(name: &str, input: bool) -> Result<cpal::Device, String> {
    quiet_alsa();
    let (host, _) = host();
    let dir = if input { "input" } else { "output" };
    if name.eq_ignore_ascii_case("default") {
        let d = if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        };
        return d.ok_or_else(|| {
            format!("no default audio {dir} device (no sound card?); see `kith audio devices`")
        });
    }
    let all: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| format!("cannot list audio devices: {e}"))?
        .filter(|d| {
            if input {
                d.supports_input()
            } else {
                d.supports_output()
            }
        })
        .collect();
    if let Some(d) = all.iter().find(|d| name_of(d) == name || id_of(d) == name) {
        return Ok(d.clone());
    }
    let needle = name.to_lowercase();
    let partial: Vec<&cpal::Device> = all
        .iter()
        .filter(|d| {
            name_of(d).to_lowercase().contains(&needle) || id_of(d).to_lowercase().contains(&needle)
        })
        .collect();
    match partial.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no audio {dir} device named {name:?}; there are: {} (see `kith audio devices`)",
            if all.is_empty() {
                "none".to_string()
            } else {
                all.iter().map(name_of).collect::<Vec<_>>().join(", ")
            }
        )),
        many => Err(format!(
            "{name:?} matches several audio {dir} devices: {}; give more of the name",
            many.iter()
                .map(|d| name_of(d))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The configuration to open: 48 kHz if the device has it (fewest channels, a format we convert),
/// else its default.
fn choose(d: &cpal::Device, input: bool) -> Result<cpal::SupportedStreamConfig, String> {
    let usable = |f: SampleFormat| {
        matches!(
            f,
            SampleFormat::I16 | SampleFormat::F32 | SampleFormat::I32 | SampleFormat::U16
        )
    };
    let ranges: Vec<cpal::SupportedStreamConfigRange> = if input {
        d.supported_input_configs().map(|c| c.collect())
    } else {
        d.supported_output_configs().map(|c| c.collect())
    }
    .map_err(|e| e.to_string())?;
    let best = ranges
        .iter()
        .filter(|r| usable(r.sample_format()) && r.contains_rate(RATE))
        .min_by_key(|r| (r.channels(), r.sample_format() != SampleFormat::I16))
        .map(|r| r.with_sample_rate(RATE));
    if let Some(b) = best {
        return Ok(b);
    }
    let def = if input {
        d.default_input_config()
    } else {
        d.default_output_config()
    }
    .map_err(|e| e.to_string())?;
    if usable(def.sample_format()) {
        Ok(def)
    } else {
        Err(format!(
            "the device offers only {} samples",
            def.sample_format()
        ))
    }
}

/// Converts between the device's rate and 48 kHz, linearly (good enough for voice; most devices run at
/// 48 kHz and skip it).
struct Resampler {
    step: f64,
    pos: f64,
    prev: f32,
}

impl Resampler {
    fn new(from: u32, to: u32) -> Self {
        Resampler {
            step: f64::from(from) / f64::from(to),
            pos: 0.0,
            prev: 0.0,
        }
    }

    /// Feeds `input` (at the source rate) and appends the samples due at the target rate.
    fn run(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.step == 1.0 {
            out.extend_from_slice(input);
            return;
        }
        // pos is measured from the sample before input[0] (= prev).
        while self.pos < input.len() as f64 {
            let i = self.pos.floor() as usize;
            let frac = (self.pos - i as f64) as f32;
            let a = if i == 0 { self.prev } else { input[i - 1] };
            let b = input[i];
            out.push(a + (b - a) * frac);
            self.pos += self.step;
        }
        self.pos -= input.len() as f64;
        if let Some(l) = input.last() {
            self.prev = *l;
        }
    }
}

/// A bounded queue of 48 kHz mono samples shared with a device callback.
#[derive(Clone, Default)]
pub struct Queue(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    q: VecDeque<i16>,
    /// Largest piece the device has delivered at once.
    chunk: usize,
    /// Capture: frames are being taken (the queue had filled to its working level).
    primed: bool,
    /// Capture: the queue has been primed once (silence before that is the device starting up).
    started: bool,
    /// Samples of silence put in because the device had not delivered in time, and samples of the
    /// device's audio thrown away because too much had piled up (it delivered in a burst after a stall,
    /// or its clock runs fast).
    filled: u64,
    dropped: u64,
    /// Playback: the fewest samples found waiting when a frame came, over the current window.
    low: Option<usize>,
    /// Playback: frames put in the current window.
    puts: usize,
    /// Playback: samples of standing delay still to take out, from quiet frames.
    trim: usize,
}

/// Playback: frames over which the queue's lowest level is watched (one second of 20 ms frames).
const LOW_WINDOW: usize = 50;

/// Glitches of one device queue, in milliseconds of audio.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Glitches {
    pub filled_ms: f64,
    pub dropped_ms: f64,
}

impl Queue {
    fn push(&self, samples: impl IntoIterator<Item = i16>) {
        if let Ok(mut i) = self.0.lock() {
            let before = i.q.len();
            i.q.extend(samples);
            i.chunk = i.chunk.max(i.q.len() - before);
            let excess = i.q.len().saturating_sub(MAX_QUEUE);
            i.q.drain(..excess);
            i.dropped += excess as u64;
        }
    }

    /// Silence put in and audio dropped so far.
    pub fn glitches(&self) -> Glitches {
        let ms = |n: u64| n as f64 * 1000.0 / f64::from(RATE);
        self.0.lock().map_or(Glitches::default(), |i| Glitches {
            filled_ms: ms(i.filled),
            dropped_ms: ms(i.dropped),
        })
    }

    /// Capture side: takes one frame on the media clock from audio the device delivers on its own clock,
    /// in pieces of its own size. Frames are taken once the queue holds a frame plus the device's largest
    /// piece (so the two clocks' phases never make a frame come up short); if it runs dry anyway (the device
    /// clock is slower) that costs one silent frame and the queue fills up again; if it holds more than two
    /// frames beyond that (the device clock is faster), the excess is dropped. Latency stays bounded and
    /// the timeline jumps only when the clocks drift a whole frame apart.
    pub fn take_frame(&self, out: &mut [i16]) {
        let Ok(mut i) = self.0.lock() else {
            out.fill(0);
            return;
        };
        let level = out.len() + i.chunk;
        if !i.primed && i.q.len() >= level {
            i.primed = true;
            i.started = true;
        }
        if !i.primed || i.q.len() < out.len() {
            if i.primed {
                tracing::debug!(queued = i.q.len(), "capture ran dry");
            }
            if i.started {
                i.filled += out.len() as u64;
            }
            i.primed = false;
            out.fill(0);
            return;
        }
        let excess = i.q.len().saturating_sub(level + 2 * out.len());
        if excess > 0 {
            let surplus = i.q.len() - level;
            tracing::debug!(surplus, "capture ahead of the media clock: dropped");
            i.q.drain(..surplus);
            i.dropped += surplus as u64;
        }
        for s in out.iter_mut() {
            *s = i.q.pop_front().unwrap_or(0);
        }
    }

    /// Takes `n` samples; what is missing is silence.
    pub fn take(&self, out: &mut [i16]) {
        let Ok(mut i) = self.0.lock() else {
            out.fill(0);
            return;
        };
        i.chunk = i.chunk.max(out.len());
        for s in out.iter_mut() {
            *s = i.q.pop_front().unwrap_or(0);
        }
    }

    pub fn put(&self, samples: &[i16]) {
        self.push(samples.iter().copied());
    }

    /// Playback side: puts one frame of the media clock for the device to take on its own clock, in
    /// pieces of its own size.
    ///
    /// What the device never needed is delay: the queue watches the fewest samples it held when a frame
    /// came, over each 50 frames (a second of 20 ms frames), and takes out what stood above half a frame
    /// (at least 5 ms) throughout, from the next quiet frames, where cutting is not heard. A device that
    /// started late, stalled without catching up, or pulled a big piece once leaves no delay behind. More
    /// than two frames beyond the device's largest piece and a frame is dropped at once, quiet or not.
    pub fn put_frame(&self, frame: &[i16], quiet: bool) {
        let Ok(mut i) = self.0.lock() else { return };
        let waiting = i.q.len();
        i.low = Some(i.low.map_or(waiting, |l| l.min(waiting)));
        i.puts += 1;
        if i.puts >= LOW_WINDOW {
            let margin = (frame.len() / 2).max(RATE as usize / 200);
            i.trim = i.low.unwrap_or(0).saturating_sub(margin);
            i.low = None;
            i.puts = 0;
        }
        let cut = if quiet { i.trim.min(frame.len()) } else { 0 };
        if cut > 0 {
            tracing::debug!(
                cut,
                "playback delay the device never needed: cut from a quiet frame"
            );
            i.trim -= cut;
            i.dropped += cut as u64;
        }
        i.q.extend(frame[..frame.len() - cut].iter().copied());
        let level = (i.chunk + frame.len()).min(MAX_QUEUE);
        if i.q.len() > level + 2 * frame.len() || i.q.len() > MAX_QUEUE {
            let surplus = i.q.len() - level;
            tracing::debug!(surplus, "playback behind the media clock: dropped");
            i.q.drain(..surplus);
            i.dropped += surplus as u64;
            // The window starts again from what is left.
            i.low = None;
            i.puts = 0;
            i.trim = 0;
        }
    }

    /// Drops all but the newest `n` samples (counted as dropped): a bridged call's first frame, after
    /// what the other side put before the call's media ran.
    pub fn keep_last(&self, n: usize) {
        if let Ok(mut i) = self.0.lock() {
            let excess = i.q.len().saturating_sub(n);
            i.q.drain(..excess);
            i.dropped += excess as u64;
        }
    }

    /// Whether both are the same queue.
    pub fn same(&self, other: &Queue) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|i| i.q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open devices of one call. Dropping it closes them.
pub struct Devices {
    pub capture: Option<Queue>,
    pub playback: Option<Queue>,
    /// What was opened, for the call's statistics.
    pub input_name: Option<String>,
    pub output_name: Option<String>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Devices {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn build_input<T>(
    d: &cpal::Device,
    cfg: &cpal::SupportedStreamConfig,
    q: Queue,
) -> Result<cpal::Stream, String>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(cfg.channels().max(1));
    let mut rs = Resampler::new(cfg.sample_rate(), RATE);
    let mut mono = Vec::new();
    let mut out = Vec::new();
    let mut config: cpal::StreamConfig = cfg.config();
    config.buffer_size = small_buffer(cfg);
    d.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            mono.clear();
            mono.extend(
                data.chunks(channels)
                    .map(|c| c.iter().map(|s| f32::from_sample(*s)).sum::<f32>() / c.len() as f32),
            );
            out.clear();
            rs.run(&mono, &mut out);
            q.push(out.iter().map(|s| i16::from_sample(*s)));
        },
        |e| tracing::warn!(error = %e, "audio input"),
        Some(Duration::from_secs(2)),
    )
    .map_err(|e| e.to_string())
}

fn build_output<T>(
    d: &cpal::Device,
    cfg: &cpal::SupportedStreamConfig,
    q: Queue,
) -> Result<cpal::Stream, String>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(cfg.channels().max(1));
    let mut rs = Resampler::new(RATE, cfg.sample_rate());
    let mut pending: VecDeque<f32> = VecDeque::new();
    let mut chunk = vec![0i16; 0];
    let (mut conv, mut float) = (Vec::new(), Vec::new());
    let mut config: cpal::StreamConfig = cfg.config();
    config.buffer_size = small_buffer(cfg);
    d.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], _| {
            let frames = data.len() / channels;
            // Pull enough 48 kHz audio for this callback's frames at the device rate.
            while pending.len() < frames {
                let need = ((frames - pending.len()) as f64 * rs.step).ceil() as usize + 1;
                chunk.resize(need, 0);
                q.take(&mut chunk);
                conv.clear();
                float.clear();
                float.extend(chunk.iter().map(|s| f32::from_sample(*s)));
                rs.run(&float, &mut conv);
                pending.extend(conv.iter().copied());
            }
            for frame in data.chunks_mut(channels) {
                let v = pending.pop_front().unwrap_or(0.0);
                for s in frame {
                    *s = T::from_sample(v);
                }
            }
        },
        |e| tracing::warn!(error = %e, "audio output"),
        Some(Duration::from_secs(2)),
    )
    .map_err(|e| e.to_string())
}

/// 10 ms buffers, unless the device says it cannot (the default of some backends, PulseAudio's among them,
/// is seconds long).
fn small_buffer(cfg: &cpal::SupportedStreamConfig) -> cpal::BufferSize {
    let want = cfg.sample_rate() / 100;
    match cfg.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } if want < *min || want > *max => {
            cpal::BufferSize::Default
        }
        _ => cpal::BufferSize::Fixed(want),
    }
}

fn open_stream(name: &str, input: bool, q: Queue) -> Result<(cpal::Stream, String), String> {
    let t0 = std::time::Instant::now();
    let d = find(name, input)?;
    let shown = if name_of(&d) == id_of(&d) {
        name_of(&d)
    } else {
        format!("{} [{}]", name_of(&d), id_of(&d))
    };
    let cfg = choose(&d, input).map_err(|e| format!("cannot use audio device {shown}: {e}"))?;
    let stream = match (input, cfg.sample_format()) {
        (true, SampleFormat::I16) => build_input::<i16>(&d, &cfg, q),
        (true, SampleFormat::I32) => build_input::<i32>(&d, &cfg, q),
        (true, SampleFormat::U16) => build_input::<u16>(&d, &cfg, q),
        (true, _) => build_input::<f32>(&d, &cfg, q),
        (false, SampleFormat::I16) => build_output::<i16>(&d, &cfg, q),
        (false, SampleFormat::I32) => build_output::<i32>(&d, &cfg, q),
        (false, SampleFormat::U16) => build_output::<u16>(&d, &cfg, q),
        (false, _) => build_output::<f32>(&d, &cfg, q),
    }
    .map_err(|e| format!("cannot open audio device {shown}: {e}"))?;
    let built = t0.elapsed();
    stream
        .play()
        .map_err(|e| format!("cannot start audio device {shown}: {e}"))?;
    tracing::info!(device = %shown, input, built_ms = built.as_millis() as u64, started_ms = t0.elapsed().as_millis() as u64, "audio device open");
    Ok((stream, format!("{shown} ({})", describe(&cfg))))
}

/// Opens the named input and/or output device. Either failing is an error naming the cause; the caller
/// decides whether to go on without a sound card.
pub fn open(input: Option<&str>, output: Option<&str>) -> Result<Devices, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let capture = input.map(|_| Queue::default());
    let playback = output.map(|_| Queue::default());
    let (input, output) = (input.map(str::to_string), output.map(str::to_string));
    let (cq, pq) = (capture.clone(), playback.clone());
    let thread = std::thread::Builder::new()
        .name("kith-audio".into())
        .spawn(move || {
            let mut streams = Vec::new();
            let mut names = (None, None);
            let mut result = Ok(());
            if let (Some(n), Some(q)) = (&input, cq) {
                match open_stream(n, true, q) {
                    Ok((s, shown)) => {
                        streams.push(s);
                        names.0 = Some(shown);
                    }
                    Err(e) => result = Err(e),
                }
            }
            if result.is_ok()
                && let (Some(n), Some(q)) = (&output, pq)
            {
                match open_stream(n, false, q) {
                    Ok((s, shown)) => {
                        streams.push(s);
                        names.1 = Some(shown);
                    }
                    Err(e) => result = Err(e),
                }
            }
            let failed = result.is_err();
            let _ = ready_tx.send(result.map(|()| names));
            if failed {
                return;
            }
            // Keep the streams until the call ends (the sender is dropped).
            let _ = stop_rx.recv();
            drop(streams);
        })
        .map_err(|e| format!("cannot start the audio thread: {e}"))?;
    let (input_name, output_name) = match ready_rx.recv() {
        Ok(Ok(names)) => names,
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => return Err("the audio thread stopped".into()),
    };
    Ok(Devices {
        capture,
        playback,
        input_name,
        output_name,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampling_keeps_the_rate_ratio_and_the_waveform() {
        // 44.1 kHz -> 48 kHz: a 1 s ramp in 10 ms pieces comes out as 48000 +- 1 samples, still a ramp.
        let mut rs = Resampler::new(44_100, 48_000);
        let input: Vec<f32> = (0..44_100).map(|i| i as f32 / 44_100.0).collect();
        let mut out = Vec::new();
        for piece in input.chunks(441) {
            rs.run(piece, &mut out);
        }
        assert!((out.len() as i64 - 48_000).abs() <= 1, "{}", out.len());
        for w in out.windows(2).skip(1) {
            assert!(w[1] >= w[0], "not monotonic: {w:?}");
        }
        let mid = out[24_000];
        assert!((mid - 0.5).abs() < 0.001, "{mid}");
        // Same rate: passes through untouched.
        let mut same = Resampler::new(48_000, 48_000);
        let mut o = Vec::new();
        same.run(&[0.1, 0.2], &mut o);
        assert_eq!(o, vec![0.1, 0.2]);
    }

    #[test]
    fn queues_are_bounded_and_pad_with_silence() {
        let q = Queue::default();
        q.put(&vec![1i16; MAX_QUEUE + 500]);
        assert_eq!(q.len(), MAX_QUEUE);
        let mut out = vec![9i16; MAX_QUEUE + 10];
        q.take(&mut out);
        assert!(out[..MAX_QUEUE].iter().all(|s| *s == 1));
        assert!(out[MAX_QUEUE..].iter().all(|s| *s == 0));
        assert!(q.is_empty());
    }

    #[test]
    fn capture_frames_survive_the_two_clocks_phases() {
        // The device delivers 10 ms pieces, the media clock takes 20 ms frames; whatever their phase, once
        // primed every frame is whole and the samples come out in order with none lost.
        for phase in 0..3 {
            let q = Queue::default();
            let mut next = 0i16;
            let mut got = vec![];
            let mut frame = vec![0i16; 960];
            for t in 0..600 {
                // One device piece every 10 "ms", one frame taken every 20, at a phase offset.
                if t % 10 == 0 {
                    q.push((0..480).map(|_| {
                        next = next.wrapping_add(1);
                        next
                    }));
                }
                if t % 20 == phase * 7 {
                    q.take_frame(&mut frame);
                    got.push(frame.clone());
                }
            }
            let whole: Vec<i16> = got
                .into_iter()
                .skip_while(|f| f[0] == 0)
                .flatten()
                .collect();
            assert!(whole.len() >= 960 * 25, "phase {phase}: {}", whole.len());
            assert!(
                whole.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
                "phase {phase}: a gap or a silent frame once primed"
            );
        }
    }

    /// What [`play_into_a_device`] saw.
    struct Played {
        /// Samples waiting after each pull.
        levels: Vec<usize>,
        /// What the device played.
        played: Vec<i16>,
        /// Pulls that found too little waiting.
        short: usize,
        dropped_ms: f64,
    }

    /// Plays 8 s of 20 ms frames of numbered samples into a device that pulls 10 ms pieces from `start`
    /// ms on, and at 2 s stalls for `stall` ms without catching up. Frames are quiet where
    /// `quiet(frame number)` says so.
    fn play_into_a_device(start: usize, stall: usize, quiet: impl Fn(usize) -> bool) -> Played {
        let q = Queue::default();
        let mut next = 0i16;
        let mut frame = vec![0i16; 960];
        let mut piece = vec![0i16; 480];
        let (mut levels, mut played, mut short) = (vec![], vec![], 0);
        let mut device = start;
        for t in 0..8000 {
            if t % 20 == 0 {
                for s in frame.iter_mut() {
                    next = next.wrapping_add(1);
                    *s = next;
                }
                q.put_frame(&frame, quiet(t / 20));
            }
            if t == device {
                short += usize::from(q.len() < piece.len());
                q.take(&mut piece);
                played.extend_from_slice(&piece);
                levels.push(q.len());
                device += if t == 2005 { 10 + stall } else { 10 };
            }
        }
        Played {
            levels,
            played,
            short,
            dropped_ms: q.glitches().dropped_ms,
        }
    }

    #[test]
    fn playback_keeps_no_backlog() {
        // The device starts 200 ms into the call (frames pile up meanwhile), then pulls 10 ms pieces on
        // time: what waits in the queue comes down to its working level and stays there.
        let Played {
            levels,
            played,
            dropped_ms,
            ..
        } = play_into_a_device(205, 0, |_| false);
        assert!(dropped_ms > 0.0, "the backlog went");
        // Once settled: at most the piece and a frame wait (30 ms), and what plays is in order.
        assert!(levels[20..].iter().all(|l| *l <= 480 + 960), "{levels:?}");
        let tail = &played[48_000..];
        assert!(tail.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
    }

    #[test]
    fn a_stalled_output_leaves_no_standing_delay() {
        // A 40 ms stall leaves 40 ms more waiting, below the point where the queue drops at once.
        let Played {
            levels,
            played,
            short,
            ..
        } = play_into_a_device(5, 40, |_| true);
        let before = *levels[100..199].iter().max().unwrap();
        let just_after = *levels[205..230].iter().max().unwrap();
        let settled = *levels[500..].iter().max().unwrap();
        assert!(
            just_after >= before + 40 * 48,
            "the stall left delay: {before} then {just_after}"
        );
        // What stays is half a frame (480 samples) of margin above what the pulls need.
        assert!(
            settled <= before + 480,
            "it went again: {before} before, {settled} at the end"
        );
        assert!(
            settled < just_after - 1000,
            "{settled} against {just_after}"
        );
        assert_eq!(short, 0, "no pull found the queue short");
        let gaps = played
            .windows(2)
            .filter(|w| w[1] != w[0].wrapping_add(1))
            .count();
        assert!(gaps >= 1, "the delay was taken out by cutting");
    }

    #[test]
    fn speech_is_not_cut_to_take_out_delay() {
        // Frames 100-300 (2-6 s) are speech: the standing delay waits for the quiet frames after them.
        let Played {
            levels,
            played,
            short,
            ..
        } = play_into_a_device(5, 40, |n| !(100..300).contains(&n));
        assert_eq!(short, 0);
        let before = *levels[100..199].iter().max().unwrap();
        let speech: Vec<i16> = (100 * 960 + 1..300 * 960 + 1).map(|n| n as i16).collect();
        let at = played
            .windows(speech.len())
            .position(|w| w == speech.as_slice());
        assert!(at.is_some(), "the speech frames played whole and in order");
        assert!(
            *levels[299..560].iter().min().unwrap() >= before + 40 * 48 - 480,
            "kept during speech"
        );
        assert!(
            *levels[700..].iter().max().unwrap() <= before + 480,
            "taken out after it"
        );
    }

    #[test]
    fn a_stalled_then_bursting_microphone_is_counted() {
        // 10 ms pieces on time, then a 100 ms stall, then the 100 ms in one burst.
        let q = Queue::default();
        let mut frame = vec![0i16; 960];
        let piece = |q: &Queue| q.push(std::iter::repeat_n(1000i16, 480));
        for _ in 0..6 {
            piece(&q);
            piece(&q);
            q.take_frame(&mut frame);
        }
        assert_eq!(
            q.glitches(),
            Glitches::default(),
            "no glitch while the device keeps time"
        );
        for _ in 0..5 {
            q.take_frame(&mut frame);
        }
        let g = q.glitches();
        assert!(g.filled_ms >= 80.0 && g.filled_ms <= 100.0, "{g:?}");
        for _ in 0..10 {
            piece(&q);
        }
        for _ in 0..2 {
            piece(&q);
            piece(&q);
            q.take_frame(&mut frame);
        }
        let g = q.glitches();
        assert!(
            g.dropped_ms > 0.0,
            "the burst beyond the working level is dropped: {g:?}"
        );
    }

    #[test]
    fn an_unknown_device_is_refused_with_the_list() {
        let e = find("no such card 7f3a", true).expect_err("must fail");
        assert!(e.contains("no audio input device named"), "{e}");
        assert!(e.contains("kith audio devices"), "{e}");
    }
}
