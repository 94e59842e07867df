//! `kith bench-gateway`: how many bridged calls the gateway's media path carries on this machine with every
//! frame on time, and what a call costs beside the codecs alone.
//!
//! Each call is what the gateway runs for one call: the kith call's media loop (Opus over QUIC datagrams,
//! jitter buffer, the call's clocks; `kith_node::media`) bridged to the SIP leg (`kith_gateway::leg`: RTP,
//! 48 <-> 8 kHz, G.711 mu-law, its jitter buffer and clock). The far ends run in the same process on a
//! runtime of their own and send what callers and phones send: a kith caller's Opus datagrams (speech,
//! encoded once beforehand and replayed) on a QUIC connection of its own per call, and a phone's PCMU RTP
//! packets (speech) to the leg. The gateway's CPU is its own threads' (the scheduler's count per thread,
//! `/proc/self/task/*/schedstat`); the far ends' is reported beside it.
//!
//! A frame is late when it reaches the far end more than one frame (20 ms) after its place in the
//! stream's schedule (the stream's own timestamps, anchored at its earliest frame), in either direction.
//! Steps go up until a step has late frames; the answer is the last step without.

use anyhow::Context;
use kith_gateway::{g711, leg, resample, sdp};
use kith_media::codec::{OpusDecoder, OpusEncoder};
use kith_media::packet::{self, AudioPacket, Datagram};
use kith_node::media::{AudioInput, AudioOptions, Bridge};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SPEECH: &[u8] = include_bytes!("../tests/data/speech-a.wav");
const ALPN: &[u8] = b"kith-bench-gateway";
const FRAME: Duration = Duration::from_millis(20);

/// The speech both far ends say: 48 kHz samples.
fn speech() -> anyhow::Result<Vec<i16>> {
    Ok(hound::WavReader::new(std::io::Cursor::new(SPEECH))?
        .samples::<i16>()
        .collect::<Result<_, _>>()?)
}

/// What this process's threads whose name starts with `prefix` used so far: CPU nanoseconds (the
/// scheduler's count, `schedstat`) and voluntary context switches (a thread went to sleep and was woken:
/// each is a wake-up).
fn threads(prefix: &str) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with(prefix))
        })
        .map(|t| {
            let cpu = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let switches = std::fs::read_to_string(t.path().join("status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0);
            (cpu, switches)
        })
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// Arrivals of one stream at a far end: (frame number, when).
#[derive(Default)]
struct Arrivals(Vec<(u64, Instant)>);

impl Arrivals {
    /// Frames in all, and those more than a frame behind their place in the schedule (anchored at the
    /// stream's earliest frame: the smallest arrival minus its place).
    fn late(&self, frame: Duration) -> (u64, u64, f64) {
        let Some(&(f0, t0)) = self.0.first() else {
            return (0, 0, 0.0);
        };
        let offset = |&(f, t): &(u64, Instant)| {
            let place = frame * (f.saturating_sub(f0)) as u32;
            t.duration_since(t0).as_secs_f64() - place.as_secs_f64()
        };
        let anchor = self.0.iter().map(offset).fold(f64::MAX, f64::min);
        let mut worst = 0.0f64;
        let late = self
            .0
            .iter()
            .map(|a| offset(a) - anchor)
            .inspect(|l| worst = worst.max(*l))
            .filter(|l| *l > frame.as_secs_f64())
            .count();
        (self.0.len() as u64, late as u64, worst * 1000.0)
    }
}

/// A call's encoder settings on a clean path (32 kbit/s, no FEC, no copies).
fn clean_path() -> kith_media::rate::EncoderSettings {
    kith_media::rate::EncoderSettings {
        bitrate: 32_000,
        fec: false,
        loss_hint_pct: 0,
        redundancy: 0,
    }
}

/// The codecs alone, per call: what one call's transcoding costs per second on one core (Opus encode and
/// decode at 48 kHz, resampling both ways, mu-law both ways), in a tight loop. Percent of a core.
/// `band_khz`: the encoder's bandwidth cap (the gateway's: G.711's band), or none (fullband).
fn codecs_alone(speech: &[i16], band_khz: Option<u8>) -> anyhow::Result<f64> {
    let mut enc = OpusEncoder::new(20, clean_path())?;
    if let Some(khz) = band_khz {
        enc.set_max_bandwidth_khz(khz)?;
    }
    let mut dec = OpusDecoder::new(20)?;
    let (mut down, mut up) = (resample::Down::default(), resample::Up::default());
    let frames: Vec<&[i16]> = speech.chunks_exact(960).collect();
    let n = 500;
    let (mut narrow, mut wide) = (Vec::with_capacity(160), Vec::with_capacity(960));
    let started = Instant::now();
    for i in 0..n {
        let pcm = frames[i % frames.len()];
        // Phone -> kith: mu-law decode, upsample, Opus encode.
        narrow.clear();
        down.process(pcm, &mut narrow);
        let mu: Vec<u8> = narrow.iter().map(|&s| g711::ulaw_encode(s)).collect();
        let back: Vec<i16> = mu.iter().map(|&b| g711::ulaw_decode(b)).collect();
        wide.clear();
        up.process(&back, &mut wide);
        let opus = enc.encode(&wide)?;
        // kith -> phone: Opus decode (and the resampling and mu-law above stand for this direction's).
        std::hint::black_box(dec.decode(&opus)?);
    }
    let per_frame = started.elapsed() / n as u32;
    Ok(per_frame.as_secs_f64() / FRAME.as_secs_f64() * 100.0)
}

struct Step {
    calls: usize,
    frames_kith: u64,
    late_kith: u64,
    worst_kith_ms: f64,
    frames_sip: u64,
    late_sip: u64,
    worst_sip_ms: f64,
    gateway_cpu_pct: f64,
    /// The gateway threads' wake-ups a second.
    gateway_wakeups: f64,
    far_cpu_pct: f64,
    /// The first call's delays through the gateway (see [`Delays`]).
    delays: Delays,
}

/// What the first call of a step heard at its far ends, for the delays through the gateway.
#[derive(Default)]
struct Probe {
    /// When each of the far ends' frames left (both send on one tick).
    sent_at: Vec<Instant>,
    /// Packets that reached the phone: RTP timestamp (8 kHz), arrival, PCMU payload.
    to_phone: Vec<(u32, Instant, Vec<u8>)>,
    /// Datagrams that reached the kith caller: timestamp (48 kHz), arrival, Opus payload.
    to_caller: Vec<(u32, Instant, Vec<u8>)>,
}

/// One call's delays through the gateway, each way, in ms: from the far end sending a frame to the
/// packet that carries the last of its audio reaching the other far end (median), the gateway's jitter
/// buffer on the way in, and what the gateway adds beyond that buffer (the bridge between the two media
/// clocks, resampling, transcoding, its own encoder's lookahead); the caller's own encoder's lookahead is
/// not the gateway's and is taken out.
#[derive(Default, Clone, Copy)]
struct Delays {
    kith_to_sip: Option<f64>,
    kith_buffer: f64,
    sip_to_kith: Option<f64>,
    sip_buffer: f64,
}

impl Delays {
    fn added(&self, lookahead_ms: f64) -> (Option<f64>, Option<f64>) {
        let filter = f64::from(resample::DELAY_US) / 1000.0;
        (
            // The reference went through the same down-sampling filter as the gateway's audio, which hides
            // the gateway's filter delay: added back. The caller's encoder lookahead: taken out.
            self.kith_to_sip
                .map(|t| t - self.kith_buffer - lookahead_ms + filter),
            // The analysis down-samples what the caller heard: its filter delay is the measurement's own.
            self.sip_to_kith.map(|t| t - self.sip_buffer - filter),
        )
    }
}

/// The median delay of one direction: `timeline` is the received audio at 8 kHz placed by its
/// timestamps, `packets` its packets (first sample on the timeline, samples, arrival), `sent(i)` the
/// sender's sample `i` (8 kHz; frame `i / 160`), `sent_at[n]` when frame n left. The offset between the
/// two timelines is where the audio matches best (normalised cross-correlation over delays of 0 to
/// 300 ms); each packet's delay is its arrival minus the departure of the frame holding its last sample.
fn transit(
    timeline: &[f32],
    packets: &[(usize, usize, Instant)],
    sent: impl Fn(usize) -> f32,
    sent_at: &[Instant],
) -> Option<f64> {
    let &(j0, _, a0) = packets.iter().min_by_key(|p| p.2)?;
    // At no delay, the first packet would carry the frame that left just before it arrived.
    let n0 = sent_at.partition_point(|t| *t <= a0) as i64;
    let zero = n0 * 160 - j0 as i64;
    let limit = sent_at.len() as i64 * 160;
    let mut best = (f64::MIN, zero);
    for d in -160..2400i64 {
        let c = zero - d;
        let (mut dot, mut energy) = (0.0f64, 0.0f64);
        for (j, r) in timeline.iter().enumerate() {
            let i = j as i64 + c;
            if i < 0 || i >= limit {
                continue;
            }
            let x = f64::from(sent(i as usize));
            dot += f64::from(*r) * x;
            energy += x * x;
        }
        if energy > 0.0 && dot / energy.sqrt() > best.0 {
            best = (dot / energy.sqrt(), c);
        }
    }
    let c = best.1;
    let mut delays: Vec<f64> = packets
        .iter()
        .filter_map(|&(j, len, at)| {
            let n = usize::try_from((j + len) as i64 - 1 + c).ok()? / 160;
            let left = sent_at.get(n)?;
            Some(at.checked_duration_since(*left)?.as_secs_f64() * 1000.0)
        })
        .collect();
    delays.sort_by(f64::total_cmp);
    delays.get(delays.len() / 2).copied()
}

/// The first call's delays from what its far ends heard.
fn delays(
    probe: &Probe,
    reference8: &[i16],
    pcmu: &[Vec<u8>],
    kith_buffer: f64,
    sip_buffer: f64,
) -> Delays {
    let frames = reference8.len() / 160;
    // kith -> SIP: what the phone got (mu-law, 8 kHz), against the speech the caller sent (the 8 kHz
    // reference: the caller's frame n is the speech's frame n mod its length).
    let kith_to_sip = (|| {
        let t0 = probe.to_phone.iter().map(|p| p.0).min()?;
        let mut timeline = vec![];
        let mut packets = vec![];
        for (ts, at, payload) in &probe.to_phone {
            let j = ts.wrapping_sub(t0) as usize;
            if j + payload.len() > timeline.len() {
                timeline.resize(j + payload.len(), 0.0);
            }
            for (k, b) in payload.iter().enumerate() {
                timeline[j + k] = f32::from(g711::ulaw_decode(*b));
            }
            packets.push((j, payload.len(), *at));
        }
        let sent = |i: usize| f32::from(reference8[(i / 160 % frames) * 160 + i % 160]);
        transit(&timeline, &packets, sent, &probe.sent_at)
    })();
    // SIP -> kith: what the caller got (Opus), decoded and down-sampled to 8 kHz, against the phone's
    // mu-law frames.
    let sip_to_kith = (|| {
        let t0 = probe.to_caller.iter().map(|p| p.0).min()?;
        let mut dec = OpusDecoder::new(20).ok()?;
        let mut wide: Vec<i16> = vec![];
        let mut packets = vec![];
        let mut sorted: Vec<&(u32, Instant, Vec<u8>)> = probe.to_caller.iter().collect();
        sorted.sort_by_key(|p| p.0.wrapping_sub(t0));
        for (ts, at, payload) in sorted {
            let j = ts.wrapping_sub(t0) as usize;
            let pcm = dec.decode(payload).ok()?;
            if j + pcm.len() > wide.len() {
                wide.resize(j + pcm.len(), 0);
            }
            wide[j..j + pcm.len()].copy_from_slice(&pcm);
            packets.push((j / 6, pcm.len() / 6, *at));
        }
        let mut narrow = vec![];
        resample::Down::default().process(&wide[..wide.len() / 6 * 6], &mut narrow);
        let timeline: Vec<f32> = narrow.iter().map(|&x| f32::from(x)).collect();
        let sent = |i: usize| f32::from(g711::ulaw_decode(pcmu[i / 160 % pcmu.len()][i % 160]));
        transit(&timeline, &packets, sent, &probe.sent_at)
    })();
    Delays {
        kith_to_sip,
        kith_buffer,
        sip_to_kith,
        sip_buffer,
    }
}

async fn endpoint() -> anyhow::Result<iroh::Endpoint> {
    use iroh::endpoint::{PortmapperConfig, presets};
    iroh::Endpoint::builder(presets::Minimal)
        .alpns(vec![ALPN.to_vec()])
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .portmapper_config(PortmapperConfig::Disabled)
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<SocketAddr>()?)?
        .bind()
        .await
        .context("binding a QUIC endpoint on 127.0.0.1")
}

/// One step: `calls` calls for `secs` seconds after a second of warm-up.
fn step(
    gw: &tokio::runtime::Runtime,
    far: &tokio::runtime::Runtime,
    calls: usize,
    secs: f64,
    opus_frames: Arc<Vec<Vec<u8>>>,
    pcmu_frames: Arc<Vec<Vec<u8>>>,
    reference8: &[i16],
) -> anyhow::Result<Step> {
    let gw_ep = gw.block_on(endpoint())?;
    let far_ep = far.block_on(endpoint())?;
    let gw_addr = gw_ep.addr();
    let arrivals_kith: Arc<Mutex<HashMap<usize, Arrivals>>> = Default::default();
    let arrivals_sip: Arc<Mutex<HashMap<usize, Arrivals>>> = Default::default();
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe: Arc<Mutex<Probe>> = Default::default();
    let mut keep = vec![];
    let mut far_tasks = vec![];
    for i in 0..calls {
        let mut id = [0u8; 16];
        rand::RngExt::fill(&mut rand::rng(), &mut id[..]);
        // The caller's QUIC connection, and the gateway's end of it.
        let (gw_ep2, addr) = (gw_ep.clone(), gw_addr.clone());
        let accept = gw.spawn(async move {
            let incoming = gw_ep2.accept().await.context("no connection")?;
            anyhow::Ok(incoming.await?)
        });
        let caller = far.block_on(far_ep.connect(addr, ALPN))?;
        let gw_conn = gw.block_on(accept)??;
        // The phone's RTP socket.
        let phone = far.block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))?;
        let phone_addr = phone.local_addr()?;
        // The gateway's side of the call: the kith media loop bridged to the SIP leg.
        let bridge = Bridge::with_band(g711::BAND_KHZ);
        let (keys_tx, _keys_rx) = tokio::sync::mpsc::channel(4);
        let conn = gw_conn.clone();
        let (media, leg, leg_addr) = gw.block_on(async {
            let conn_of: kith_node::media::ConnOf = Arc::new(move || Some(conn.clone()));
            let media = kith_node::media::start(
                id,
                kith_core::call::MediaParams::default(),
                AudioOptions {
                    input: Some(AudioInput::Bridge(bridge.clone())),
                    ..Default::default()
                },
                conn_of,
                None,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let incoming = media.incoming.clone();
            let reader = gw_conn.clone();
            tokio::spawn(async move {
                while let Ok(d) = reader.read_datagram().await {
                    let _ = incoming.try_send(d);
                }
            });
            let mut leg = leg::start("127.0.0.1".parse()?, None, bridge, keys_tx).await?;
            let mut sip = leg.media.take().context("the leg's SDP side")?;
            let offer = sdp::describe(
                phone_addr.ip(),
                phone_addr.port(),
                &[sdp::Codec::Pcmu],
                1,
                1,
                "sendrecv",
            );
            let answer = sip.answer(&sdp::parse(&offer)?)?;
            let leg_addr = sdp::negotiate(&answer)?.remote;
            anyhow::Ok((media, (leg, sip), leg_addr))
        })?;
        keep.push((media, leg, gw_conn));
        // The far ends: the caller sends Opus and records the gateway's; the phone sends PCMU and records
        // the gateway's.
        let tag = packet::call_tag(&id);
        let (opus, pcmu) = (opus_frames.clone(), pcmu_frames.clone());
        let (ak, asip, on) = (
            arrivals_kith.clone(),
            arrivals_sip.clone(),
            measuring.clone(),
        );
        let probe = (i == 0).then(|| probe.clone());
        far_tasks.push(far.spawn(async move {
            let phone = Arc::new(phone);
            let (rx_conn, rx_phone) = (caller.clone(), phone.clone());
            let (ak2, on2) = (ak.clone(), on.clone());
            let (probe_kith, probe_sip) = (probe.clone(), probe.clone());
            let from_gateway = tokio::spawn(async move {
                let mut ts = packet::Unwrap::default();
                while let Ok(d) = rx_conn.read_datagram().await {
                    if let Ok(Datagram::Audio(a)) = Datagram::decode(&d)
                        && on2.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        let now = Instant::now();
                        if let Some(p) = &probe_kith {
                            p.lock().unwrap_or_else(|e| e.into_inner()).to_caller.push((
                                a.timestamp,
                                now,
                                a.payload.to_vec(),
                            ));
                        }
                        let f = ts.extend(a.timestamp) / 960;
                        ak2.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(i)
                            .or_default()
                            .0
                            .push((f, now));
                    }
                }
            });
            let from_leg = tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut ts = packet::Unwrap::default();
                while let Ok((n, _)) = rx_phone.recv_from(&mut buf).await {
                    if let Ok(p) = kith_gateway::rtp::Packet::parse(&buf[..n])
                        && on.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        let now = Instant::now();
                        if let Some(pr) = &probe_sip {
                            pr.lock().unwrap_or_else(|e| e.into_inner()).to_phone.push((
                                p.timestamp,
                                now,
                                p.payload.to_vec(),
                            ));
                        }
                        let f = ts.extend(p.timestamp) / 160;
                        asip.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(i)
                            .or_default()
                            .0
                            .push((f, now));
                    }
                }
            });
            let mut tick = tokio::time::interval(FRAME);
            let ssrc: u32 = rand::random();
            for n in 0u32.. {
                let now = tick.tick().await;
                if let Some(p) = &probe {
                    p.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .sent_at
                        .push(now.into_std());
                }
                let k = n as usize;
                let a = AudioPacket {
                    tag,
                    seq: n,
                    timestamp: n.wrapping_mul(960),
                    flags: 0,
                    payload: opus[k % opus.len()].clone(),
                    redundant: vec![],
                };
                if caller.send_datagram(a.encode().into()).is_err() {
                    break;
                }
                let p = kith_gateway::rtp::Packet {
                    marker: n == 0,
                    payload_type: 0,
                    seq: n as u16,
                    timestamp: n.wrapping_mul(160),
                    ssrc,
                    payload: &pcmu[k % pcmu.len()],
                };
                let _ = phone.send_to(&p.encode(), leg_addr).await;
            }
            from_gateway.abort();
            from_leg.abort();
        }));
    }
    // A second of warm-up (jitter buffers fill, encoders settle), then the measurement.
    std::thread::sleep(Duration::from_secs(1));
    // The measurement window is wall-clock time by design: it is what the CPU shares are shares of.
    let ((gw_cpu0, gw_sw0), (far_cpu0, _), t0) =
        (threads("kith-gw"), threads("kith-far"), Instant::now());
    measuring.store(true, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(secs));
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let ((gw_cpu1, gw_sw1), (far_cpu1, _)) = (threads("kith-gw"), threads("kith-far"));
    // The first call's buffers on the way in, as the measurement ends: the kith call's jitter buffer
    // and the SIP leg's.
    let (kith_buffer, sip_buffer) = keep.first().map_or((0.0, 0.0), |(media, leg, _)| {
        (
            media.stats.lock().map_or(0.0, |s| s.jitter_buffer_ms),
            leg.0.stats.borrow().buffered_ms,
        )
    });
    let gw_cpu = gw_cpu1.saturating_sub(gw_cpu0) as f64 / 1e9 / wall * 100.0;
    let far_cpu = far_cpu1.saturating_sub(far_cpu0) as f64 / 1e9 / wall * 100.0;
    let wakeups = gw_sw1.saturating_sub(gw_sw0) as f64 / wall;
    for t in far_tasks {
        t.abort();
    }
    for (media, _leg, conn) in keep {
        conn.close(iroh::endpoint::VarInt::from_u32(0), b"done");
        gw.block_on(media.stop());
    }
    gw.block_on(gw_ep.close());
    far.block_on(far_ep.close());
    let sum = |m: &Arc<Mutex<HashMap<usize, Arrivals>>>| {
        let m = m.lock().unwrap_or_else(|e| e.into_inner());
        m.values().fold((0u64, 0u64, 0.0f64), |acc, a| {
            let (f, l, w) = a.late(FRAME);
            (acc.0 + f, acc.1 + l, acc.2.max(w))
        })
    };
    let delays = delays(
        &probe.lock().unwrap_or_else(|e| e.into_inner()),
        reference8,
        &pcmu_frames,
        kith_buffer,
        sip_buffer,
    );
    let (fk, lk, wk) = sum(&arrivals_kith);
    let (fs, ls, ws) = sum(&arrivals_sip);
    Ok(Step {
        calls,
        frames_kith: fk,
        late_kith: lk,
        worst_kith_ms: wk,
        frames_sip: fs,
        late_sip: ls,
        worst_sip_ms: ws,
        gateway_cpu_pct: gw_cpu,
        gateway_wakeups: wakeups,
        far_cpu_pct: far_cpu,
        delays,
    })
}

/// Runs the steps; prints a row each and saves them all to `out` (JSON).
pub fn run(steps: Vec<usize>, secs: f64, out: PathBuf) -> anyhow::Result<()> {
    let speech = speech()?;
    let alone = codecs_alone(&speech, Some(g711::BAND_KHZ))?;
    let alone_fullband = codecs_alone(&speech, None)?;
    // What the far ends send: the speech, encoded once.
    let mut enc = OpusEncoder::new(20, clean_path())?;
    // The far caller's encoder's lookahead: its audio comes out of any decoder that much later; not the
    // gateway's doing.
    let lookahead_ms = enc.lookahead() as f64 / 48.0;
    let opus: Vec<Vec<u8>> = speech
        .chunks_exact(960)
        .map(|f| enc.encode(f))
        .collect::<Result<_, _>>()?;
    let mut down = resample::Down::default();
    let mut narrow = vec![];
    down.process(&speech[..speech.len() / 960 * 960], &mut narrow);
    let pcmu: Vec<Vec<u8>> = narrow
        .chunks_exact(160)
        .map(|f| f.iter().map(|&s| g711::ulaw_encode(s)).collect())
        .collect();
    let (opus, pcmu) = (Arc::new(opus), Arc::new(pcmu));
    let runtime = |name: &'static str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .build()
    };
    let (gw, far) = (runtime("kith-gw")?, runtime("kith-far")?);
    crate::say!(
        "kith bench-gateway: bridged calls (Opus over QUIC <-> PCMU over RTP) through the gateway's media path, \
         {secs:.0} s a step, on {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    crate::say!(
        "  the codecs alone, per call: {alone:.2} % of a core (Opus encode capped at G.711's 4 kHz band, as the \
         gateway does, + decode, 48 <-> 8 kHz, mu-law both ways); with a fullband encoder: {alone_fullband:.2} %"
    );
    crate::say!(
        "  delays: from a far end's frame leaving to the packet with the last of its audio reaching the other \
         far end (median, the first call of each step); added: beyond the gateway's jitter buffer on the way \
         in (and without the far caller's Opus lookahead, {lookahead_ms:.1} ms)"
    );
    crate::say!(
        "  calls | late frames kith / SIP side | worst lateness kith / SIP | gateway CPU (per call) | gateway wake-ups/s (per call) | far ends' CPU"
    );
    let mut rows = vec![];
    let mut best = 0;
    for n in steps {
        let s = step(&gw, &far, n, secs, opus.clone(), pcmu.clone(), &narrow)?;
        crate::say!(
            "  {:>5} | {} of {} / {} of {} | {:.1} / {:.1} ms | {:.1} % ({:.2} %) | {:.0} ({:.0}) | {:.1} %",
            s.calls,
            s.late_kith,
            s.frames_kith,
            s.late_sip,
            s.frames_sip,
            s.worst_kith_ms,
            s.worst_sip_ms,
            s.gateway_cpu_pct,
            s.gateway_cpu_pct / s.calls as f64,
            s.gateway_wakeups,
            s.gateway_wakeups / s.calls as f64,
            s.far_cpu_pct
        );
        let d = s.delays;
        let (added_k2s, added_s2k) = d.added(lookahead_ms);
        let shown = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.1}"));
        crate::say!(
            "        first call: kith -> SIP {} ms (the gateway's kith jitter buffer {:.1}, added {}); \
             SIP -> kith {} ms (the SIP leg's jitter buffer {:.1}, added {})",
            shown(d.kith_to_sip),
            d.kith_buffer,
            shown(added_k2s),
            shown(d.sip_to_kith),
            d.sip_buffer,
            shown(added_s2k)
        );
        let on_time = s.late_kith == 0 && s.late_sip == 0 && s.frames_kith > 0 && s.frames_sip > 0;
        rows.push(json!({
            "calls": s.calls, "frames_kith": s.frames_kith, "late_kith": s.late_kith,
            "worst_kith_ms": s.worst_kith_ms, "frames_sip": s.frames_sip, "late_sip": s.late_sip,
            "worst_sip_ms": s.worst_sip_ms, "gateway_cpu_pct": s.gateway_cpu_pct,
            "gateway_cpu_pct_per_call": s.gateway_cpu_pct / s.calls as f64, "far_cpu_pct": s.far_cpu_pct,
            "gateway_wakeups_per_sec": s.gateway_wakeups,
            "kith_to_sip_ms": d.kith_to_sip, "kith_buffer_ms": d.kith_buffer, "kith_to_sip_added_ms": added_k2s,
            "sip_to_kith_ms": d.sip_to_kith, "sip_buffer_ms": d.sip_buffer, "sip_to_kith_added_ms": added_s2k,
            "every_frame_on_time": on_time,
        }));
        if !on_time {
            break;
        }
        best = s.calls;
    }
    crate::say!(
        "  most calls with every frame on time: {best} (the codecs alone would allow about {:.0} on this machine's cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get()) as f64 * 100.0 / alone
    );
    let report: Value = json!({ "codecs_alone_pct_per_call": alone, "codecs_alone_fullband_pct_per_call": alone_fullband, "steps": rows, "max_calls_on_time": best, "secs": secs });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    crate::say!("  saved to {}", out.display());
    drop(gw);
    drop(far);
    Ok(())
}
