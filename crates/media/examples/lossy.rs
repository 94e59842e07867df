//! Opus through a lossy channel, offline: `cargo run -p kith-media --release --example lossy -- IN.wav OUT.wav
//! LOSS_PCT [--hint PCT] [--bitrate BPS] [--seed N] [--burst B] [--complexity C] [--quiet-complexity C|off] [--quiet-khz K] [--cbr] [--dtx [--dtx-reset]] [--red] [--arrived TRACE]`.
//! Each lost frame is rebuilt from the next packet's FEC when that packet arrived (with `--red`: played whole
//! from the copy the next packet carries, and LBRR off, as kith sends under steady loss), else concealed:
//! the codec's best case, without a network or a jitter buffer. With `--dtx` the DTX frames are not sent
//! (so not lost either) and are played as comfort noise; with `--dtx-reset` the decoder is reset before the
//! first packet after them, as kith's player does. For comparing encoder settings with PESQ.

use kith_media::codec::{OpusDecoder, OpusEncoder, has_lbrr, is_dtx};
use kith_media::rate::EncoderSettings;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: lossy IN.wav OUT.wav LOSS_PCT [--hint PCT] [--bitrate BPS] [--seed N] [--burst B] [--complexity C] [--quiet-complexity C|off] [--quiet-khz K] [--cbr] [--dtx [--dtx-reset]] [--red] [--arrived TRACE]"
        );
        std::process::exit(2);
    }
    let loss: f64 = args[3].parse().expect("LOSS_PCT");
    let hint = arg(&args, "--hint", loss.max(6.0)) as u8;
    let bitrate = arg(&args, "--bitrate", 32_000.0) as u32;
    let seed = arg(&args, "--seed", 7.0) as u64;
    let burst = arg(&args, "--burst", 1.0);
    let red = args.iter().any(|a| a == "--red");
    let mut r = hound::WavReader::open(&args[1]).expect("input");
    let spec = r.spec();
    let pcm: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let mut enc = OpusEncoder::new(
        20,
        EncoderSettings {
            bitrate,
            fec: !red && (loss > 0.0 || hint > 0),
            loss_hint_pct: hint,
            redundancy: u8::from(red),
        },
    )
    .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--complexity") {
        enc.set_complexity(args[i + 1].parse().expect("--complexity 0-10"))
            .unwrap();
    }
    if let Some(i) = args.iter().position(|a| a == "--quiet-complexity") {
        let v = &args[i + 1];
        enc.set_quiet_complexity(if v == "off" {
            None
        } else {
            Some(v.parse().expect("--quiet-complexity 0-10 or off"))
        })
        .unwrap();
    }
    if let Some(i) = args.iter().position(|a| a == "--quiet-khz") {
        enc.set_quiet_max_bandwidth_khz(args[i + 1].parse().expect("--quiet-khz 8, 12 or 20"))
            .unwrap();
    }
    let dtx = args.iter().any(|a| a == "--dtx");
    let reset_after_dtx = args.iter().any(|a| a == "--dtx-reset");
    enc.set_dtx(dtx).unwrap();
    if args.iter().any(|a| a == "--cbr") {
        enc.set_vbr(false).unwrap();
    }
    if let Some(i) = args.iter().position(|a| a == "--max-khz") {
        enc.set_max_bandwidth_khz(args[i + 1].parse().expect("--max-khz 8, 12 or 20"))
            .unwrap();
    }
    let complexity = enc.complexity().unwrap();
    let mut dec = OpusDecoder::new(20).unwrap();
    let frame = enc.frame_samples();
    let mut rng = StdRng::seed_from_u64(seed);
    let (p_loss, r_leave) = if burst > 1.0 {
        let r = 1.0 / burst;
        (loss / 100.0 * r / (1.0 - loss / 100.0), r)
    } else {
        (loss / 100.0, 1.0)
    };
    let mut bad = false;
    // --arrived TRACE: lose exactly the frames missing from a KITH_MEDIA_TRACE file ("seq arrival_us").
    let arrived: Option<std::collections::BTreeSet<u64>> =
        args.iter().position(|a| a == "--arrived").map(|i| {
            std::fs::read_to_string(&args[i + 1])
                .expect("trace")
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                .collect()
        });
    // --pace-ms N: sleep N ms between frames, as a call's capture clock does (each frame then meets cold
    // caches); the encode time counts only the encoder's calls.
    let pace = args
        .iter()
        .position(|a| a == "--pace-ms")
        .map(|i| std::time::Duration::from_millis(args[i + 1].parse().expect("--pace-ms N")));
    let mut index = 0u64;
    let mut enc_time = std::time::Duration::ZERO;
    let packets: Vec<(Vec<u8>, bool)> = pcm
        .chunks(frame)
        .filter(|c| c.len() == frame)
        .map(|c| {
            if let Some(d) = pace {
                std::thread::sleep(d);
            }
            let t0 = std::time::Instant::now();
            let p = enc.encode(c).unwrap();
            enc_time += t0.elapsed();
            index += 1;
            let lost = if let Some(a) = &arrived {
                !a.contains(&(index - 1))
            } else if burst > 1.0 {
                bad = if bad {
                    rng.random::<f64>() >= r_leave
                } else {
                    rng.random::<f64>() < p_loss
                };
                bad
            } else {
                rng.random::<f64>() < p_loss
            };
            // A DTX frame is not sent, so not lost (drawn all the same: the same frames are lost with and
            // without DTX).
            let lost = lost && !is_dtx(&p);
            (p, lost)
        })
        .collect();
    let t1 = std::time::Instant::now();
    let (mut fec, mut copies, mut conceal, mut lbrr, mut unsent) = (0, 0, 0, 0, 0);
    let mut w = hound::WavWriter::create(&args[2], spec).unwrap();
    for i in 0..packets.len() {
        let (p, lost) = &packets[i];
        if has_lbrr(p) {
            lbrr += 1;
        }
        let next_arrived = matches!(packets.get(i + 1), Some((n, false)) if !is_dtx(n));
        let out = if is_dtx(p) {
            unsent += 1;
            dec.conceal().unwrap()
        } else if !lost {
            if reset_after_dtx && i > 0 && is_dtx(&packets[i - 1].0) {
                dec.reset().unwrap();
            }
            dec.decode(p).unwrap()
        } else if red && next_arrived {
            copies += 1;
            dec.decode(p).unwrap()
        } else if let Some((next, false)) = packets.get(i + 1).filter(|n| !is_dtx(&n.0)) {
            fec += 1;
            dec.decode_fec(next).unwrap()
        } else {
            conceal += 1;
            dec.conceal().unwrap()
        };
        for s in out {
            w.write_sample(s).unwrap();
        }
    }
    let dec_time = t1.elapsed();
    w.finalize().unwrap();
    let n = packets.len().max(1) as f64;
    eprintln!(
        "{} frames, {unsent} not sent (DTX), {} lost, {fec} from FEC, {copies} from copies, {conceal} concealed, LBRR in {lbrr}; complexity {complexity}: \
         encode {:.0} us/frame, decode {:.0} us/frame ({:.2} % of a core at 50 frames/s)",
        packets.len(),
        fec + copies + conceal,
        enc_time.as_micros() as f64 / n,
        dec_time.as_micros() as f64 / n,
        (enc_time + dec_time).as_secs_f64() / n * 50.0 * 100.0
    );
}
