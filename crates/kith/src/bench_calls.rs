//! `kith bench-calls`: the kith half of the call benchmark (`scripts/bench-calls.sh` runs it, runs the same
//! material through baresip, scores both and prints them side by side).
//!
//! Every run is a real call between two daemons on loopback. Loss, delay and jitter come from the
//! daemons' impairment shim on the sender. What each run produced goes into `OUT/kith.json`: the files
//! sent and recorded, both sides' final call statistics (with the wall-clock origins of the sender's input
//! clock and the receiver's recording, for mouth-to-ear latency), CPU time and memory of both daemons, and
//! for set-up runs the time of the dial.
//!
//! - quality: each clip at each loss condition (random 0/5/10/20 %, bursty 10 % with mean burst 3);
//! - latency: the chirp probe with no impairment and with 30 +- 10 ms delay both ways;
//! - setup: dial to first audio at the callee, warm (daemons connected) and cold (both just restarted).

use crate::process::{Daemon, call_and_answer, introduce, kith_exe};
use anyhow::Context;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Loss conditions of the quality runs: (name, impairment spec of the sender).
const QUALITY: [(&str, &str); 5] = [
    ("0%", ""),
    ("5%", "loss=5"),
    ("10%", "loss=10"),
    ("20%", "loss=20"),
    ("10% bursty", "loss=10,burst=3"),
];
/// Network conditions of the latency runs (applied to both daemons).
const LATENCY: [(&str, &str); 2] = [("no delay", ""), ("30 +- 10 ms", "delay=30,jitter=10")];

/// What a process used so far, from /proc.
#[derive(Clone)]
struct Usage {
    /// CPU seconds, user + system.
    cpu_secs: f64,
    /// Resident memory now and at its peak, KiB.
    rss_kib: u64,
    peak_rss_kib: u64,
    /// Per thread (by thread id): context switches, each a thread going to sleep and being woken (or
    /// preempted), which costs tens of microseconds of CPU on a virtual machine; and nanoseconds on a CPU
    /// (the scheduler's own count, `/proc/PID/task/TID/schedstat`: `cpu_secs` counts in 10 ms ticks,
    /// too coarse for a few seconds at 3 %).
    threads: std::collections::HashMap<u32, ThreadUsage>,
}

#[derive(Clone, Copy, Default)]
struct ThreadUsage {
    switches: u64,
    cpu_ns: u64,
}

impl Usage {
    /// Threads come and go (the runtime's blocking threads), so this adds up each thread's own increase
    /// from `self` to `later`; a thread that started since counts from zero.
    fn threads_until(&self, later: &Usage, what: impl Fn(&ThreadUsage) -> u64) -> u64 {
        later
            .threads
            .iter()
            .map(|(tid, t)| what(t).saturating_sub(self.threads.get(tid).map(&what).unwrap_or(0)))
            .sum()
    }
}

fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = 100.0; // /proc reports clock ticks in USER_HZ, 100 on Linux's common architectures
    let field = |status: &str, key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut threads = std::collections::HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let tid = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
        if let (Some(tid), Ok(s)) = (tid, std::fs::read_to_string(t.path().join("status"))) {
            let switches =
                field(&s, "voluntary_ctxt_switches:") + field(&s, "nonvoluntary_ctxt_switches:");
            let cpu_ns = schedstat_ns(&t.path().join("schedstat"));
            threads.insert(tid, ThreadUsage { switches, cpu_ns });
        }
    }
    Some(Usage {
        cpu_secs: ticks as f64 / hz,
        rss_kib: field(&status, "VmRSS:"),
        peak_rss_kib: field(&status, "VmHWM:"),
        threads,
    })
}

/// CPU time a thread has used so far, from its `schedstat` file (the scheduler's count, nanoseconds;
/// 0 if unreadable).
fn schedstat_ns(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What this machine charges, now, for the two things every call does regardless of how it is built: a
/// thread waking up (a call needs three clocks: capture, playout and the peer's packets, so about 150
/// wake-ups a second) and Opus itself (the call's encoder settings on a clean path, in a tight loop with
/// warm caches, so less than inside a call). Measured in the benchmark's own process, at the start and
/// the end of the run, so each row of results can be read against the machine's speed that hour.
fn machine_costs(clip: &Path) -> anyhow::Result<Value> {
    use kith_media::codec::{OpusDecoder, OpusEncoder};
    use kith_media::rate::EncoderSettings;
    // Wake-ups: 750 sleeps of 1/150 s (5 s), timed by the scheduler's count for this thread.
    let n = 750u32;
    // (The sleeps are what is measured here, not a wait for something.)
    let me = Path::new("/proc/thread-self/schedstat");
    let t0 = schedstat_ns(me);
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(6_667));
    }
    let wakeup_us = schedstat_ns(me).saturating_sub(t0) as f64 / 1e3 / f64::from(n);
    // Opus: speech (the clip) and digital silence, each encoded and its packets decoded; least of three.
    let mut r =
        hound::WavReader::open(clip).with_context(|| format!("reading {}", clip.display()))?;
    let speech: Vec<i16> = r.samples::<i16>().collect::<Result<_, _>>()?;
    let silence = vec![0i16; speech.len()];
    let settings = EncoderSettings {
        bitrate: 32_000,
        fec: false,
        loss_hint_pct: 0,
        redundancy: 0,
    };
    let per_frame = |pcm: &[i16]| -> anyhow::Result<(f64, f64)> {
        let (mut enc_best, mut dec_best) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let mut enc = OpusEncoder::new(20, settings)?;
            let mut dec = OpusDecoder::new(20)?;
            let frames: Vec<&[i16]> = pcm.chunks_exact(enc.frame_samples()).collect();
            let t = std::time::Instant::now();
            let packets = frames
                .iter()
                .map(|f| enc.encode(f))
                .collect::<Result<Vec<_>, _>>()?;
            let enc_us = t.elapsed().as_secs_f64() * 1e6 / frames.len() as f64;
            let t = std::time::Instant::now();
            for p in &packets {
                dec.decode(p)?;
            }
            let dec_us = t.elapsed().as_secs_f64() * 1e6 / frames.len() as f64;
            enc_best = enc_best.min(enc_us);
            dec_best = dec_best.min(dec_us);
        }
        Ok((enc_best, dec_best))
    };
    let (enc_speech, dec_speech) = per_frame(&speech)?;
    let (enc_silence, dec_silence) = per_frame(&silence)?;
    Ok(json!({
        "wakeup_us": wakeup_us,
        "opus_encode_speech_us_per_frame": enc_speech,
        "opus_decode_speech_us_per_frame": dec_speech,
        "opus_encode_silence_us_per_frame": enc_silence,
        "opus_decode_silence_us_per_frame": dec_silence,
    }))
}

fn wav_secs(path: &Path) -> anyhow::Result<f64> {
    let r = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(f64::from(r.duration()) / f64::from(r.spec().sample_rate))
}

struct Pair {
    a: Daemon,
    b: Daemon,
}

impl Pair {
    async fn new(dir: &Path) -> anyhow::Result<Self> {
        let exe = kith_exe();
        let a = Daemon::spawn(&exe, &dir.join("alice"), "alice", None, vec![]).await?;
        let b = Daemon::spawn(&exe, &dir.join("bob"), "bob", None, vec![]).await?;
        introduce(&a, &b).await?;
        introduce(&b, &a).await?;
        Ok(Pair { a, b })
    }

    /// Restarts the daemons with these impairments (empty: none).
    async fn impair(&mut self, a: &str, b: &str) -> anyhow::Result<()> {
        for (d, spec) in [(&mut self.a, a), (&mut self.b, b)] {
            d.stop().await;
            d.extra_args = if spec.is_empty() {
                vec![]
            } else {
                vec!["--impair".into(), format!("{spec},seed=7")]
            };
            d.start().await?;
        }
        Ok(())
    }

    /// One call from alice to bob: alice sends `input` (JSON audio input) for `secs`, bob answers at once
    /// and records into `rec`. Returns a JSON record of the run.
    async fn call(&self, input: Value, secs: f64, rec: &Path) -> anyhow::Result<Value> {
        let wa = self.a.watcher().await?;
        let wb = self.b.watcher().await?;
        let (pa, pb) = (self.a.pid().context("pid")?, self.b.pid().context("pid")?);
        let (ua0, ub0) = (usage(pa), usage(pb));
        // Also the steady state: from 2 s after the dial to 1 s before the hang-up, without the set-up
        // and tear-down (signalling, opening and closing the recording, the call log).
        let steady = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let t0 = std::time::Instant::now();
            let u0 = (usage(pa), usage(pb));
            tokio::time::sleep(Duration::from_secs_f64((secs - 3.0).max(1.0))).await;
            let u1 = (usage(pa), usage(pb));
            (t0.elapsed().as_secs_f64(), u0, u1)
        };
        let (c, (steady_secs, s0, s1)) = tokio::join!(
            call_and_answer(
                (&self.a, &wa),
                (&self.b, &wb),
                "bob",
                json!({ "input": input, "duration_secs": secs, "output_device": "none" }),
                json!({ "input": "null", "record_wav": rec }),
                Duration::from_secs(secs as u64 + 60),
            ),
            steady
        );
        let c = c?;
        let (ua1, ub1) = (usage(pa), usage(pb));
        let (ea, eb) = (&c.caller_end, &c.callee_end);
        let talked = ea["talked_secs"].as_f64().unwrap_or(secs);
        let cpu = |u0: Option<Usage>, u1: Option<Usage>, m0: Option<Usage>, m1: Option<Usage>| {
            match (u0, u1) {
                (Some(a), Some(b)) => json!({
                    "cpu_pct_of_one_core": (b.cpu_secs - a.cpu_secs) / talked * 100.0,
                    "steady_cpu_pct_of_one_core": m0.as_ref().zip(m1.as_ref()).map(|(x, y)| x.threads_until(y, |t| t.cpu_ns) as f64 / 1e9 / steady_secs * 100.0),
                    "steady_wakeups_per_sec": m0.as_ref().zip(m1.as_ref()).map(|(x, y)| x.threads_until(y, |t| t.switches) as f64 / steady_secs),
                    "rss_kib": b.rss_kib,
                    "peak_rss_kib": b.peak_rss_kib,
                }),
                _ => Value::Null,
            }
        };
        Ok(json!({
            "outcome": [ea["outcome"], eb["outcome"]],
            "talked_secs": talked,
            "dial_unix_us": c.dial_unix_us,
            "incoming_unix_us": c.incoming_unix_us,
            "caller_stats": ea["stats"],
            "callee_stats": eb["stats"],
            "caller_usage": cpu(ua0, ua1, s0.0, s1.0),
            "callee_usage": cpu(ub0, ub1, s0.1, s1.1),
            "recording": rec,
        }))
    }
}

/// Which runs to make (all by default; fewer to look at one thing).
pub struct Selection {
    /// Quality conditions by name (empty: all).
    pub conditions: Vec<String>,
    pub latency: bool,
    pub setup_runs: usize,
}

/// Runs the kith half of the benchmark. `material` holds the clips (`*.wav`, 48 kHz mono) named in
/// `clips` and the latency probe `probe48.wav`; results go to `out`.
pub async fn run(
    material: PathBuf,
    clips: Vec<String>,
    what: Selection,
    out: PathBuf,
) -> anyhow::Result<()> {
    if let Some(bad) = what
        .conditions
        .iter()
        .find(|c| !QUALITY.iter().any(|(n, _)| n == c))
    {
        let names: Vec<&str> = QUALITY.iter().map(|(n, _)| *n).collect();
        return Err(crate::client::user(format!(
            "unknown condition {bad:?}: the conditions are {}",
            names.join(", ")
        )));
    }
    let setup_runs = what.setup_runs;
    std::fs::create_dir_all(&out)?;
    let out = std::path::absolute(&out)?;
    let material = std::path::absolute(&material)?;
    let costs_clip = material.join(format!("{}.wav", clips.first().context("no clips named")?));
    let costs = |clip: PathBuf| async move {
        tokio::task::spawn_blocking(move || machine_costs(&clip)).await?
    };
    let machine_at_start = costs(costs_clip.clone()).await?;
    let dir = tempfile::Builder::new()
        .prefix("kith-bench-calls-")
        .tempdir()?;
    let mut pair = Pair::new(dir.path()).await?;
    // Bob's daemon writes which audio packets arrived when (the loss pattern each call actually met), so
    // the scoring can run the codec alone over the very same pattern.
    let trace = out.join("bob-arrivals.trace");
    pair.b.env = vec![("KITH_MEDIA_TRACE".into(), trace.display().to_string())];
    let mut runs = vec![];

    for (cond, spec) in QUALITY {
        if !what.conditions.is_empty() && !what.conditions.iter().any(|c| c == cond) {
            continue;
        }
        pair.impair(spec, "").await?;
        for clip in &clips {
            let src = material.join(format!("{clip}.wav"));
            let secs = wav_secs(&src)? + 1.0;
            let rec = out.join(format!("kith_{}_{clip}.wav", slug(cond)));
            let mut r = pair.call(json!({ "wav": src }), secs, &rec).await?;
            let arrivals = rec.with_extension("trace");
            std::fs::copy(&trace, &arrivals)?;
            r["arrivals"] = json!(arrivals);
            eprintln!(
                "kith quality {cond:>11} {clip}: loss before FEC {:.1} %, after {:.1} %",
                r["callee_stats"]["loss_before_fec_pct"]
                    .as_f64()
                    .unwrap_or(0.0),
                r["callee_stats"]["loss_after_fec_pct"]
                    .as_f64()
                    .unwrap_or(0.0)
            );
            r["kind"] = json!("quality");
            r["condition"] = json!(cond);
            r["clip"] = json!(clip);
            r["reference"] = json!(src);
            runs.push(r);
        }
    }

    let probe = material.join("probe48.wav");
    for (cond, spec) in LATENCY.iter().filter(|_| what.latency) {
        pair.impair(spec, spec).await?;
        let rec = out.join(format!("kith_latency_{}.wav", slug(cond)));
        let secs = wav_secs(&probe)? + 1.0;
        let mut r = pair.call(json!({ "wav": probe }), secs, &rec).await?;
        eprintln!("kith latency {cond}: recorded");
        r["kind"] = json!("latency");
        r["condition"] = json!(cond);
        r["reference"] = json!(probe);
        runs.push(r);
    }

    // Set-up: a tone from the first frame, so the first audible sample at bob is the first audio frame.
    pair.impair("", "").await?;
    for i in 0..setup_runs {
        for warm in [true, false] {
            if !warm {
                pair.a.stop().await;
                pair.b.stop().await;
                pair.b.start().await?;
                pair.a.start().await?;
            }
            let rec = out.join(format!(
                "kith_setup_{}_{i}.wav",
                if warm { "warm" } else { "cold" }
            ));
            let mut r = pair.call(json!({ "tone": 440.0 }), 1.0, &rec).await?;
            r["kind"] = json!("setup");
            r["condition"] = json!(if warm { "warm" } else { "cold" });
            runs.push(r);
        }
    }
    eprintln!("kith set-up: {} calls", setup_runs * 2);
    pair.a.stop().await;
    pair.b.stop().await;
    let machine_at_end = costs(costs_clip).await?;
    let path = out.join("kith.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({
            "libopus": kith_media::codec::libopus_version(),
            "machine": [machine_at_start, machine_at_end],
            "runs": runs,
        }))?,
    )?;
    crate::say!("kith runs written to {}", path.display());
    Ok(())
}

fn slug(cond: &str) -> String {
    cond.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .replace("__", "_")
}
