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
    /// Context switches of each of its threads (by thread id): each is a thread going to sleep and being
    /// woken (or preempted), which costs tens of microseconds of CPU on a virtual machine.
    switches: std::collections::HashMap<u32, u64>,
}

impl Usage {
    /// Context switches from `self` to `later`. Threads come and go (the runtime's blocking threads), so
    /// this adds up each thread's own increase; a thread that started since counts from zero.
    fn switches_until(&self, later: &Usage) -> u64 {
        later
            .switches
            .iter()
            .map(|(tid, n)| n.saturating_sub(self.switches.get(tid).copied().unwrap_or(0)))
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
    let mut switches = std::collections::HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let tid = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
        if let (Some(tid), Ok(s)) = (tid, std::fs::read_to_string(t.path().join("status"))) {
            let n =
                field(&s, "voluntary_ctxt_switches:") + field(&s, "nonvoluntary_ctxt_switches:");
            switches.insert(tid, n);
        }
    }
    Some(Usage {
        cpu_secs: ticks as f64 / hz,
        rss_kib: field(&status, "VmRSS:"),
        peak_rss_kib: field(&status, "VmHWM:"),
        switches,
    })
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
                    "steady_cpu_pct_of_one_core": m0.as_ref().zip(m1.as_ref()).map(|(x, y)| (y.cpu_secs - x.cpu_secs) / steady_secs * 100.0),
                    "steady_wakeups_per_sec": m0.as_ref().zip(m1.as_ref()).map(|(x, y)| x.switches_until(y) as f64 / steady_secs),
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
    let path = out.join("kith.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&json!({
            "libopus": kith_media::codec::libopus_version(),
            "runs": runs,
        }))?,
    )?;
    println!("kith runs written to {}", path.display());
    Ok(())
}

fn slug(cond: &str) -> String {
    cond.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .replace("__", "_")
}
