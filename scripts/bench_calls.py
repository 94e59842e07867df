#!/usr/bin/env python3
"""The call benchmark: kith and baresip side by side on the same material, the same machine, one run.

    scripts/bench-calls.sh            # installs what it needs, builds kith, runs this

Steps (each also callable alone, see --help):
  material   speech clips (natural: Debian's asterisk-core-sounds-en-g722 prompts, CC-BY-SA-3.0;
             synthetic: espeak-ng reading Harvard sentences) at 48 kHz mono, active speech level -26 dBFS,
             0.3 s of silence at both ends; and a latency probe: 10 s of silence with 19 chirps
             (40 ms, 300-3400 Hz, Hann window, -20 dBFS peak, every 0.5 s + a seeded 0-50 ms offset).
  kith       `kith bench-calls`: real calls between two kith daemons on loopback.
  baresip    the same clips through two baresip 1.0 user agents (Debian package, Opus 32 kbit/s with
             in-band FEC and a 10 % loss hint, jitter buffer 1-10 frames), run inside a fresh network
             namespace (`unshare --net`, only loopback up) because baresip binds RTP to every interface.
             Loss is put on alice -> bob RTP by nftables rules in the kernel's output path, with the same
             loss model as kith's shim (random, or Gilbert-Elliott with mean burst 3). What bob heard is
             baresip's own recording of its decoder output (sndfile module, "-dec"): it holds the frames
             that were decoded, so a lost frame that baresip neither rebuilt from FEC nor concealed is
             missing from it rather than silent; PESQ's own realignment of utterances absorbs part of that
             shift (see BENCHMARKS.md).
  score      PESQ-WB (ITU-T P.862.2, the `pesq` package) after removing the constant delay found by
             cross-correlation at 16 kHz, for kith, baresip, and "codec alone": kith's Opus settings run
             offline (crates/media/examples/lossy.rs) over the very loss pattern each kith call met, every
             lost frame rebuilt from the next packet's FEC when that arrived (the ceiling for the pattern);
             mouth-to-ear latency from the chirps (matched filter, parabolic
             interpolation, matches below 0.5 dropped); CPU and memory; call set-up. Prints the table and
             writes OUT/results.json and OUT/results.txt.
  soundcards mouth-to-ear through sound cards, kith and baresip alike: a PulseAudio server of the
             benchmark's own with null sinks (clocked virtual cards) for each side's microphone and
             loudspeaker; the probe is played into the caller's microphone, and one stereo recording holds
             that microphone (left) and the callee's loudspeaker (right), so both share one clock. kith
             through cpal's PulseAudio host, baresip through its ALSA module and ALSA's PulseAudio plugin.
             A 60 ms PulseAudio loopback in place of a call checks the harness first. Each runs twice: on
             the loopback, and with 30 +- 10 ms each way (kith through its in-process shim, baresip in two
             network namespaces joined by a link of this script that delays every packet the same way).

Needs root for the baresip part (network namespace, nftables); without it that part is skipped and said.
"""

import argparse
import contextlib
import ctypes
import fcntl
import heapq
import json
import math
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

import numpy as np

RATE = 48000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLIPS = ["nat_a", "nat_b", "syn_m", "syn_f"]
QUALITY = [("0%", 0.0, 1.0), ("5%", 5.0, 1.0), ("10%", 10.0, 1.0), ("20%", 20.0, 1.0), ("10% bursty", 10.0, 3.0)]


# ---------------------------------------------------------------- WAV helpers

def read_wav(path, channel=0):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            sys.exit(f"{path}: not 16-bit PCM")
        n = w.getnframes()
        if n == 0:
            sys.exit(f"{path}: empty (or its writer never finished it)")
        x = np.frombuffer(w.readframes(n), dtype="<i2").astype(np.float64) / 32768.0
        ch = w.getnchannels()
        if ch > 1:
            x = x.reshape(-1, ch)[:, channel]
        return x, w.getframerate()


def write_wav(path, x, rate=RATE):
    s = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(s.tobytes())


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------- material

def active_level_db(x, rate):
    """Simplified P.56: RMS over 10 ms frames within 40 dB of the loudest frame."""
    n = rate // 100
    frames = x[: len(x) // n * n].reshape(-1, n)
    e = (frames ** 2).mean(axis=1)
    active = e[e > e.max() * 1e-4]
    return 10 * math.log10(active.mean())


def finish_clip(raw48, out, start, length):
    x, rate = read_wav(raw48)
    assert rate == RATE
    x = x[int(start * RATE): int((start + length) * RATE)]
    x = x * 10 ** ((-26.0 - active_level_db(x, RATE)) / 20)
    pad = np.zeros(int(0.3 * RATE))
    write_wav(out, np.concatenate([pad, x, pad]))


def material(outdir):
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        prompts = {"nat_a": ("demo-congrats", 0.5, 10.0), "nat_b": ("demo-instruct", 2.0, 10.0)}
        sounds = "/usr/share/asterisk/sounds/en_US_f_Allison"
        for name, (prompt, start, length) in prompts.items():
            src = os.path.join(sounds, prompt + ".g722")
            if not os.path.exists(src):
                sys.exit(f"{src} is missing: install asterisk-core-sounds-en-g722 (scripts/bench-calls.sh does)")
            dec = os.path.join(tmp, name + "_16k.wav")
            run(["ffmpeg", "-loglevel", "error", "-y", "-f", "g722", "-i", src, "-ar", "16000", "-ac", "1", dec])
            up = os.path.join(tmp, name + "_48k.wav")
            run(["sox", "-D", "-R", dec, "-r", str(RATE), "-c", "1", "-b", "16", up, "rate", "-v", str(RATE)])
            finish_clip(up, os.path.join(outdir, name + ".wav"), start, length)
        texts = {
            "syn_m": ("en-us", "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue "
                      "background. It's easy to tell the depth of a well. These days a chicken leg is a rare dish."),
            "syn_f": ("en-us+f3", "Rice is often served in round bowls. The juice of lemons makes fine punch. "
                      "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage."),
        }
        for name, (voice, text) in texts.items():
            raw = os.path.join(tmp, name + ".wav")
            run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text])
            up = os.path.join(tmp, name + "_48k.wav")
            run(["sox", "-D", "-R", raw, "-r", str(RATE), "-c", "1", "-b", "16", up, "rate", "-v", str(RATE)])
            finish_clip(up, os.path.join(outdir, name + ".wav"), 0.0, 10.0)
        # Latency probe.
        rng = random.Random(7)
        x = np.zeros(10 * RATE)
        chirp = make_chirp()
        onsets = []
        t = 0.25
        while t + 0.05 + len(chirp) / RATE < 10.0 - 0.2:
            o = int((t + rng.uniform(0, 0.05)) * RATE)
            x[o: o + len(chirp)] += chirp
            onsets.append(o)
            t += 0.5
        write_wav(os.path.join(outdir, "probe48.wav"), x)
        with open(os.path.join(outdir, "probe48.json"), "w") as f:
            json.dump({"rate": RATE, "onsets": onsets}, f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"material in {outdir}: {', '.join(CLIPS)}, probe48 ({len(onsets)} chirps)")


def make_chirp():
    n = int(0.04 * RATE)
    t = np.arange(n) / RATE
    f0, f1 = 300.0, 3400.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) / (2 * 0.04) * t ** 2)
    return np.sin(phase) * np.hanning(n) * 10 ** (-20 / 20)


# ---------------------------------------------------------------- scoring

def to16k(x, rate):
    from scipy.signal import resample_poly
    if rate == 16000:
        return x
    g = math.gcd(rate, 16000)
    return resample_poly(x, 16000 // g, rate // g)


def align(ref, deg, max_lag):
    """Delay of deg behind ref (samples) at the peak of |cross-correlation| within +-max_lag."""
    n = 1 << (len(ref) + len(deg)).bit_length()
    c = np.fft.irfft(np.fft.rfft(deg, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    vals = np.concatenate([c[: max_lag + 1], c[-max_lag:]])
    return int(lags[np.argmax(np.abs(vals))])


def pesq_wb(ref_path, deg_path):
    from pesq import pesq
    r, rr = read_wav(ref_path)
    d, dr = read_wav(deg_path)
    r, d = to16k(r, rr), to16k(d, dr)
    lag = align(r, d, 16000)
    if lag >= 0:
        d = d[lag:]
    else:
        r = r[-lag:]
    n = min(len(r), len(d))
    r, d = r[:n], d[:n]
    coverage = n / (len(read_wav(ref_path)[0]) * 16000 / rr)
    xc = float(np.dot(r, d) / (np.linalg.norm(r) * np.linalg.norm(d) + 1e-12))
    score = pesq(16000, r.astype(np.float32), d.astype(np.float32), "wb")
    return {"pesq_wb": round(float(score), 3), "delay_ms": lag / 16.0, "xcorr": round(xc, 4),
            "coverage": round(coverage, 3)}


def matched(x, chirp):
    """Normalised matched-filter response of `x` to `chirp` at every offset (|.|: polarity is unheard)."""
    from scipy.signal import fftconvolve
    c = np.abs(fftconvolve(x, chirp[::-1], mode="valid"))
    sq = np.concatenate([[0.0], np.cumsum(x ** 2)])
    energy = np.sqrt(np.maximum(sq[len(chirp):] - sq[:-len(chirp)], 0)) * np.linalg.norm(chirp)
    return c / (energy + 1e-9)


def refine(m, k):
    """Parabolic interpolation of a peak of `m` at `k`."""
    if 0 < k < len(m) - 1:
        a, b, c = m[k - 1], m[k], m[k + 1]
        den = a - 2 * b + c
        if den != 0:
            return k + 0.5 * (a - c) / den
    return float(k)


def chirp_positions(probe_path, rec, onsets, coarse=None):
    """Where each chirp of the probe is in `rec` (fractional samples), with its normalised match. `coarse`:
    where the probe starts in `rec`, if known (else found by cross-correlation within 2 s)."""
    probe, _ = read_wav(probe_path)
    chirp = make_chirp()
    if coarse is None:
        coarse = align(probe, rec[: len(probe) + 2 * RATE] if len(rec) > len(probe) else rec, 2 * RATE)
    out = []
    w = int(0.15 * RATE)
    for o in onsets:
        lo = max(0, o + coarse - w)
        seg = rec[lo: o + coarse + w + len(chirp)]
        if len(seg) < len(chirp):
            continue
        m = matched(seg, chirp)
        k = int(np.argmax(m))
        out.append((o, lo + refine(m, k), float(m[k])))
    return out


def latency_ms(probe_path, rec_path, origin_offset_s):
    """Mouth-to-ear latency per chirp: the recording's clock starts origin_offset_s after the input's."""
    onsets = json.load(open(os.path.splitext(probe_path)[0] + ".json"))["onsets"]
    rec, rate = read_wav(rec_path)
    assert rate == RATE, rec_path
    found = [(o, pos, m) for o, pos, m in chirp_positions(probe_path, rec, onsets) if m >= 0.5]
    lat = [origin_offset_s * 1000 + (pos - o) / RATE * 1000 for o, pos, _ in found]
    if not lat:
        return None
    lat.sort()
    return {"median_ms": round(float(np.median(lat)), 2), "min_ms": round(float(lat[0]), 2), "max_ms": round(float(lat[-1]), 2),
            "found": len(found), "expected": len(onsets)}


def first_sound_s(path, threshold=0.01):
    x, rate = read_wav(path)
    idx = np.nonzero(np.abs(x) > threshold)[0]
    return None if len(idx) == 0 else idx[0] / rate


# ---------------------------------------------------------------- baresip

def impair_rules(port, loss_pct, burst):
    """nftables rules that drop RTP to `port` by the same loss model as kith's shim: random, or
    Gilbert-Elliott (enter the bad state with p, leave it with r = 1/burst, every packet in the bad state is
    lost; stationary loss p / (p + r)). The state lives in the flow's conntrack mark. Dropping in the
    kernel's output path changes no address or port, so baresip sees its peer exactly as without it."""
    scale = 1_000_000
    rules = [f"  udp dport {port} counter name seen"]
    if loss_pct > 0 and burst <= 1.0:
        rules.append(f"  udp dport {port} numgen random mod {scale} < {int(loss_pct / 100 * scale)} counter name lost drop")
    elif loss_pct > 0:
        r = 1.0 / burst
        p = loss_pct / 100 * r / (1 - loss_pct / 100)
        rules += [
            f"  udp dport {port} ct mark 0x1 numgen random mod {scale} < {int(r * scale)} ct mark set 0x0 accept",
            f"  udp dport {port} ct mark 0x1 counter name lost drop",
            f"  udp dport {port} numgen random mod {scale} < {int(p * scale)} ct mark set 0x1 counter name lost drop",
        ]
    text = ("table ip kbench {\n counter seen {}\n counter lost {}\n chain out {\n"
            "  type filter hook output priority 0;\n" + "\n".join(rules) + "\n }\n}\n")
    subprocess.run(["nft", "delete", "table", "ip", "kbench"], capture_output=True)
    run(["nft", "-f", "-"], input=text.encode())


def nft_counter(name):
    out = subprocess.run(["nft", "-j", "list", "counter", "ip", "kbench", name], capture_output=True,
                         text=True, check=True).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return item["counter"]["packets"]
    return 0


def netstring(obj):
    b = json.dumps(obj).encode()
    return str(len(b)).encode() + b":" + b + b","


class Ctrl:
    """A baresip ctrl_tcp connection: commands and events (netstring JSON)."""

    def __init__(self, port):
        for _ in range(100):
            try:
                self.s = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"baresip ctrl_tcp on port {port} did not come up")
        self.buf = b""
        self.events = []
        self.s.settimeout(0.1)

    def send(self, command, params=""):
        self.s.sendall(netstring({"command": command, "params": params, "token": "t"}))

    def poll(self):
        try:
            data = self.s.recv(65536)
            if data:
                self.buf += data
        except socket.timeout:
            pass
        except OSError:
            return
        while b":" in self.buf:
            n, rest = self.buf.split(b":", 1)
            n = int(n)
            if len(rest) < n + 1:
                break
            msg = json.loads(rest[:n])
            self.buf = rest[n + 1:]
            if msg.get("event"):
                self.events.append((time.time(), msg.get("type")))

    def wait(self, kind, timeout):
        end = time.time() + timeout
        while time.time() < end:
            for t, k in self.events:
                if k == kind:
                    return t
            self.poll()
        return None


def usage(pid):
    """CPU seconds, resident memory now and at peak (KiB), and context switches of all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    kb = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                kb[line.split(":")[0]] = int(line.split()[1])
    switches = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                switches += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except OSError:
            pass
    return cpu, kb.get("VmRSS", 0), kb.get("VmHWM", 0), switches


BARESIP_CONFIG = """poll_method epoll
sip_listen {ip}:{sip}
net_interface {ip}
call_local_timeout 120
call_max_calls 4
audio_player aubridge,{name}
audio_source {src}
audio_alert aubridge,{name}
ausrc_srate 48000
auplay_srate 48000
ausrc_channels 1
auplay_channels 1
audio_level no
rtp_ports {rtp}-{rtp1}
rtcp_mux no
jitter_buffer_delay 1-10
rtp_stats yes
opus_bitrate 32000
opus_stereo no
opus_sprop_stereo no
opus_inbandfec yes
opus_packet_loss 10
opus_application voip
opus_complexity 10
module_path {modules}
module opus.so
module aufile.so
module aubridge.so
module sndfile.so
module_tmp uuid.so
module_tmp account.so
module_app menu.so
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:{ctrl}
snd_path {rec}
"""


class Baresip:
    def __init__(self, work, name, base, src, account, config=None, env=None, netns=None, ip="127.0.0.1"):
        """`config`: the config template (BARESIP_CONFIG by default); `env`: the process environment;
        `netns`: a Netns to run in, where it listens on `ip`."""
        self.dir = os.path.join(work, name)
        self.rec = os.path.join(self.dir, "rec")
        os.makedirs(self.rec, exist_ok=True)
        self.sip, self.ctrl_port, self.rtp = base, base + 2, base + 10
        modules = next(d for d in ["/usr/lib/baresip/modules", "/usr/local/lib/baresip/modules"]
                       if os.path.exists(os.path.join(d, "opus.so")))
        with open(os.path.join(self.dir, "config"), "w") as f:
            f.write((config or BARESIP_CONFIG).format(ip=ip, sip=base, rtp=self.rtp, rtp1=self.rtp + 1, src=src,
                                                      modules=modules, name=name, ctrl=self.ctrl_port, rec=self.rec))
        with open(os.path.join(self.dir, "accounts"), "w") as f:
            f.write(account + "\n")
        open(os.path.join(self.dir, "contacts"), "w").close()
        self.log = open(os.path.join(self.dir, "log.txt"), "w")
        inside = ["ip", "netns", "exec", netns.name] if netns else []
        self.proc = subprocess.Popen(inside + ["baresip", "-f", self.dir], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # Its control port listens on the loopback of its own namespace.
        with netns.entered() if netns else contextlib.nullcontext():
            self.ctrl = Ctrl(self.ctrl_port)

    def close(self):
        try:
            self.ctrl.send("quit")
        except OSError:
            pass
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Netns:
    """A network namespace of the benchmark's own (root), removed by close()."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, name):
        self.name = f"{name}-{os.getpid()}"
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")

    def ip(self, *args):
        run(["ip", "-n", self.name, *args])

    @contextlib.contextmanager
    def entered(self):
        """The calling thread in this namespace (sockets made meanwhile stay in it)."""
        libc = ctypes.CDLL(None, use_errno=True)
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        to = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(to, self.CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter network namespace {self.name}")
            yield
        finally:
            libc.setns(back, self.CLONE_NEWNET)
            os.close(back)
            os.close(to)

    def close(self):
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)


class DelayLink:
    """Two network namespaces joined by a link of this process: a TUN device in each, and a thread that
    hands every IP packet from one to the other after 30 +- 10 ms (uniform, drawn per packet, so packets
    may overtake each other), as kith's in-process shim does with `--impair delay=30,jitter=10`. The
    kernel has no netem; this is its stand-in for programs whose packets kith cannot touch."""

    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000

    def __init__(self, delay_ms, jitter_ms, seed=7):
        self.delay, self.jitter = delay_ms / 1000, jitter_ms / 1000
        self.rng = random.Random(seed)
        self.ns, self.fds, self.addr = [], [], []
        self.stop, self.thread, self.moved = threading.Event(), None, 0
        try:
            for i, side in enumerate(["a", "b"]):
                ns = Netns(f"kbench-{side}")
                self.ns.append(ns)
                dev = f"kb{side}{os.getpid() % 100000}"
                fd = os.open("/dev/net/tun", os.O_RDWR)
                self.fds.append(fd)
                fcntl.ioctl(fd, self.TUNSETIFF, struct.pack("16sH", dev.encode(), self.IFF_TUN | self.IFF_NO_PI))
                run(["ip", "link", "set", dev, "netns", ns.name])  # the device moves; this fd stays on it
                addr = f"10.77.0.{i + 1}"
                ns.ip("addr", "add", f"{addr}/24", "dev", dev)
                ns.ip("link", "set", dev, "up")
                self.addr.append(addr)
        except BaseException:
            self.close()
            raise
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        queue, n = [], 0
        other = {self.fds[0]: self.fds[1], self.fds[1]: self.fds[0]}
        while not self.stop.is_set():
            wait = 0.05 if not queue else max(0.0, queue[0][0] - time.monotonic())
            ready, _, _ = select.select(self.fds, [], [], min(wait, 0.05))
            for fd in ready:
                packet = os.read(fd, 65536)
                due = time.monotonic() + max(0.0, self.delay + self.rng.uniform(-self.jitter, self.jitter))
                n += 1
                heapq.heappush(queue, (due, n, other[fd], packet))
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, fd, packet = heapq.heappop(queue)
                os.write(fd, packet)
                self.moved += 1

    def close(self):
        self.stop.set()
        if self.thread:
            self.thread.join(2)
        for fd in self.fds:
            os.close(fd)
        for ns in self.ns:
            ns.close()


def baresip_call(work, clip_path, loss, burst, base, tag):
    """One baresip call alice -> bob with alice's RTP impaired; returns the run record. Each call uses its
    own ports (from `base`), so no conntrack state of an earlier call is reused."""
    silence = os.path.join(work, "silence.wav")
    if not os.path.exists(silence):
        write_wav(silence, np.zeros(RATE * 30))
    bob = Baresip(work, f"bob_{tag}", base + 40, f"aufile,{silence}",
                  "<sip:bob@127.0.0.1>;regint=0;answermode=auto")
    alice = Baresip(work, f"alice_{tag}", base, f"aufile,{clip_path}", "<sip:alice@127.0.0.1>;regint=0")
    impair_rules(bob.rtp, loss, burst)
    try:
        u0 = (usage(alice.proc.pid), usage(bob.proc.pid))
        t_dial = time.time()
        alice.ctrl.send("dial", f"sip:bob@127.0.0.1:{bob.sip}")
        t_est = bob.ctrl.wait("CALL_ESTABLISHED", 20)
        t_rtp = bob.ctrl.wait("CALL_RTPESTAB", 20)
        t_end = alice.ctrl.wait("CALL_CLOSED", 60)
        u1 = (usage(alice.proc.pid), usage(bob.proc.pid))
        talked = (t_end or time.time()) - (t_est or t_dial)
        seen, lost = nft_counter("seen"), nft_counter("lost")
    finally:
        alice.close()
        bob.close()
    recs = sorted(f for f in os.listdir(bob.rec) if f.endswith("-dec.wav"))
    return {
        "recording": os.path.join(bob.rec, recs[0]) if recs else None,
        "rtp_seen": seen, "rtp_dropped": lost,
        "setup_ms": None if t_rtp is None else (t_rtp - t_dial) * 1000,
        "talked_secs": talked,
        "caller_usage": {"cpu_pct_of_one_core": (u1[0][0] - u0[0][0]) / talked * 100, "rss_kib": u1[0][1],
                         "peak_rss_kib": u1[0][2], "wakeups_per_sec": (u1[0][3] - u0[0][3]) / talked},
        "callee_usage": {"cpu_pct_of_one_core": (u1[1][0] - u0[1][0]) / talked * 100, "rss_kib": u1[1][1],
                         "peak_rss_kib": u1[1][2], "wakeups_per_sec": (u1[1][3] - u0[1][3]) / talked},
    }


def baresip_inner(material_dir, out):
    """Runs inside `unshare --net`: loopback only, RTP to bob's port goes through the loss proxy."""
    run(["ip", "link", "set", "lo", "up"])
    work = os.path.join(out, "baresip")
    shutil.rmtree(work, ignore_errors=True)  # recordings of an earlier run must not be scored again
    os.makedirs(work, exist_ok=True)
    runs = []
    base = 20000
    for cond, loss, burst in QUALITY:
        for clip in CLIPS:
            src = os.path.join(material_dir, clip + ".wav")
            tag = f"{cond.replace('%', '').replace(' ', '_')}_{clip}"
            base += 100
            r = baresip_call(work, src, loss, burst, base, tag)
            r.update(kind="quality", condition=cond, clip=clip, reference=src)
            seen = max(1, r["rtp_seen"])
            print(f"baresip quality {cond:>11} {clip}: RTP {r['rtp_seen']} packets, "
                  f"{100 * r['rtp_dropped'] / seen:.1f} % dropped", file=sys.stderr)
            runs.append(r)
    with open(os.path.join(out, "baresip.json"), "w") as f:
        json.dump({"version": baresip_version(), "runs": runs}, f, indent=1)


def baresip_version():
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "baresip-core"], capture_output=True,
                             text=True).stdout
        return f"baresip {out} (Debian), libopus {opus_version()}"
    except OSError:
        return "baresip"


def opus_version():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libopus0"], capture_output=True, text=True).stdout
    return out or "?"


def baresip_outer(material_dir, out):
    if shutil.which("baresip") is None:
        return "baresip is not installed (scripts/bench-calls.sh installs baresip-core)"
    if os.geteuid() != 0:
        return "not root: baresip runs in its own network namespace with an nftables rule, which needs root"
    r = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__), "baresip-inner",
                        "--material", material_dir, "--out", out])
    if r.returncode != 0:
        return f"the baresip run failed (exit {r.returncode})"
    return None


# ---------------------------------------------------------------- through sound cards (PulseAudio)

class Pulse:
    """A PulseAudio server of the benchmark's own, with clocked virtual sound cards (null sinks; no
    hardware): "mic" (its monitor is the caller's microphone; the probe is played into it), "drain" (the
    caller's loudspeaker), "quiet" (its monitor is the callee's silent microphone), "spk" (the callee's
    loudspeaker), and a stereo "rec" into which loopbacks copy mic.monitor (left) and spk.monitor
    (right): one recording, one clock, so left to right is mouth to ear."""

    def __init__(self, work):
        self.dir = os.path.join(work, "pulse")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=self.dir, HOME=self.dir,
                        PULSE_SERVER="unix:" + os.path.join(self.dir, "pulse", "native"))
        mono = "rate=48000 channels=1"
        run(["pulseaudio", "--daemonize=yes", "-n", "--exit-idle-time=-1", "--log-target=stderr",
             "--load=module-native-protocol-unix auth-anonymous=1",
             f"--load=module-null-sink sink_name=mic {mono}", f"--load=module-null-sink sink_name=drain {mono}",
             f"--load=module-null-sink sink_name=quiet {mono}", f"--load=module-null-sink sink_name=spk {mono}",
             "--load=module-null-sink sink_name=rec rate=48000 channels=2 channel_map=front-left,front-right"],
            env=self.env, capture_output=True)
        for side, source in [("front-left", "mic.monitor"), ("front-right", "spk.monitor")]:
            sink = "rec_" + side
            self.pactl("load-module", "module-remap-sink", f"sink_name={sink}", "master=rec", "channels=1",
                       f"master_channel_map={side}", "channel_map=mono", "remix=no")
            self.pactl("load-module", "module-loopback", f"source={source}", f"sink={sink}", "latency_msec=20")
        # Microphones that run the whole time, as real ones do (an idle null sink renders in 2 s pieces):
        # silence plays into both, each stream asking for 10 ms.
        silence = os.path.join(work, "silence-60s.wav")
        write_wav(silence, np.zeros(RATE * 60))
        self.hums = [subprocess.Popen(["paplay", "--latency-msec=10", "-d", sink, silence], env=self.env,
                                      stderr=subprocess.DEVNULL) for sink in ["mic", "quiet"]]
        time.sleep(2.5)

    def pactl(self, *args):
        return run(["pactl", *args], env=self.env, capture_output=True, text=True).stdout.strip()

    def record(self, path):
        return subprocess.Popen(["parecord", "--latency-msec=10", "-d", "rec.monitor", "--rate=48000",
                                 "--channels=2", "--format=s16le", "--file-format=wav", path], env=self.env)

    def play_probe(self, probe):
        run(["paplay", "--latency-msec=10", "-d", "mic", probe], env=self.env)

    def close(self):
        for h in self.hums:
            h.kill()
            h.wait()
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True)


def stop_recording(proc):
    proc.send_signal(2)  # SIGINT: parecord finishes the WAV header
    proc.wait(10)


def soundcard_latency(probe, rec):
    """Mouth-to-ear per chirp from one stereo recording: each chirp as it reached the caller's microphone
    (left), found by its matched filter anywhere in the recording, and the same chirp on the callee's
    loudspeaker (right) within the 450 ms after it (chirps are at least 450 ms apart, so the window holds
    exactly one). Found one by one, so a sound server that stretches the probe's timeline (an underrun
    under load) cannot misplace the rest."""
    chirp = make_chirp()
    expected = len(json.load(open(os.path.splitext(probe)[0] + ".json"))["onsets"])
    left, _ = read_wav(rec, 0)
    right, _ = read_wav(rec, 1)
    ml = matched(left, chirp)
    sent = []
    order = np.argsort(-ml)
    taken = np.zeros(len(ml), dtype=bool)
    for k in order:
        if ml[k] < 0.5 or len(sent) >= expected:
            break
        if taken[k]:
            continue
        sent.append(refine(ml, int(k)))
        taken[max(0, k - int(0.3 * RATE)): k + int(0.3 * RATE)] = True
    lat = []
    for s in sorted(sent):
        lo = int(s)
        seg = right[lo: lo + int(0.45 * RATE) + len(chirp)]
        if len(seg) <= len(chirp):
            continue
        mr = matched(seg, chirp)
        k = int(np.argmax(mr))
        if mr[k] >= 0.5:
            lat.append((lo + refine(mr, k) - s) / RATE * 1000)
    if not lat:
        return None
    lat.sort()
    return {"median_ms": round(float(np.median(lat)), 2), "min_ms": round(float(lat[0]), 2),
            "max_ms": round(float(lat[-1]), 2), "found": len(lat), "expected": expected}


def kith_soundcard_call(kith, work, pulse, probe, impair=None):
    """A kith call through the virtual sound cards: alice speaks into mic.monitor, bob plays on spk.
    `impair`: both daemons' `--impair` (their media datagrams delayed, for example)."""
    env = dict(pulse.env)
    env.pop("KITH_PASSPHRASE", None)
    homes = {n: os.path.join(work, "kith", n) for n in ["alice", "bob"]}
    procs = []

    def k(name, *args, **kw):
        return subprocess.run([kith, "--home", homes[name], *args], env=env, check=True, capture_output=True,
                              text=True, **kw).stdout

    try:
        for n in homes:
            shutil.rmtree(homes[n], ignore_errors=True)
            k(n, "init", "--name", n)
            log = open(os.path.join(work, f"kith-{n}.log"), "w")
            d = subprocess.Popen([kith, "--home", homes[n], "daemon", "--no-dht"]
                                 + (["--impair", impair] if impair else []), env=env,
                                 stdout=subprocess.PIPE, stderr=log, text=True)
            procs.append(d)
            for line in d.stdout:  # the daemon says when its API is up
                if line.startswith("kith daemon ready"):
                    break
            # The rest of its output is read (and dropped) so that it never blocks on a full pipe.
            threading.Thread(target=lambda s=d.stdout: [None for _ in s], daemon=True).start()
        for a, b in [("alice", "bob"), ("bob", "alice")]:
            card = json.loads(k(b, "--json", "card"))["card"]
            k(a, "add", card, "--name", b)
        rec = os.path.join(work, f"kith-soundcards{'-impaired' if impair else ''}.wav")
        recorder = pulse.record(rec)
        secs = len(read_wav(probe)[0]) / RATE + 6
        caller = subprocess.Popen([kith, "--home", homes["alice"], "call", "bob", "--input-device", "mic.monitor",
                                   "--output-device", "drain", "--duration", str(secs), "--json"], env=env,
                                  stdout=open(os.path.join(work, "kith-caller.json"), "w"),
                                  stderr=subprocess.DEVNULL)
        answered = None
        for _ in range(200):
            a = subprocess.Popen([kith, "--home", homes["bob"], "answer", "--input-device", "quiet.monitor",
                                  "--output-device", "spk", "--json"], env=env,
                                 stdout=open(os.path.join(work, "kith-callee.json"), "w"),
                                 stderr=subprocess.DEVNULL)
            try:
                a.wait(1)
            except subprocess.TimeoutExpired:
                answered = a  # it stays for the call: answered
                break
            time.sleep(0.05)
        if answered is None:
            raise RuntimeError("bob never saw the call ring")
        time.sleep(3)  # the sound cards open beside the call
        pulse.play_probe(probe)
        caller.wait(secs + 30)
        answered.wait(30)
        stop_recording(recorder)
        return rec
    finally:
        for d in procs:
            d.terminate()
            d.wait(10)


BARESIP_PULSE_CONFIG = BARESIP_CONFIG.replace("audio_player aubridge,{name}", "audio_player alsa,pulse") \
    .replace("audio_source {src}", "audio_source alsa,pulse").replace("audio_alert aubridge,{name}", "audio_alert alsa,pulse") \
    .replace("module aufile.so\nmodule aubridge.so\nmodule sndfile.so", "module alsa.so")


def baresip_soundcard_inner(material_dir, out, delayed):
    """Inside `unshare --net` (loopback only): a baresip call through the same virtual sound cards, the
    ALSA module through ALSA's PulseAudio plugin, each user agent pointed at its cards by PULSE_SOURCE and
    PULSE_SINK. `delayed`: each user agent in a namespace of its own, joined by a DelayLink of 30 +- 10 ms
    each way; else both on the loopback."""
    run(["ip", "link", "set", "lo", "up"])
    work = os.path.join(out, "soundcards")
    pulse = Pulse(work)
    probe = os.path.join(material_dir, "probe48.wav")
    link = DelayLink(30, 10) if delayed else None
    try:
        rec = os.path.join(work, f"baresip-soundcards{'-impaired' if delayed else ''}.wav")
        where = {"bob": (link.ns[1], link.addr[1]) if link else (None, "127.0.0.1"),
                 "alice": (link.ns[0], link.addr[0]) if link else (None, "127.0.0.1")}
        ua = {name: Baresip(work, "baresip_" + name, base, None, f"<sip:{name}@{where[name][1]}>;regint=0" + extra,
                            config=BARESIP_PULSE_CONFIG, env=dict(pulse.env, PULSE_SOURCE=source, PULSE_SINK=sink),
                            netns=where[name][0], ip=where[name][1])
              for name, base, source, sink, extra in [
                  ("bob", 30040, "quiet.monitor", "spk", ";answermode=auto"),
                  ("alice", 30000, "mic.monitor", "drain", "")]}
        recorder = pulse.record(rec)
        ua["alice"].ctrl.send("dial", f"sip:bob@{where['bob'][1]}:{ua['bob'].sip}")
        ok = ua["bob"].ctrl.wait("CALL_ESTABLISHED", 20)
        time.sleep(3)  # the sound cards open
        pulse.play_probe(probe)
        time.sleep(1)  # the last chirp reaches the loudspeaker
        ua["alice"].ctrl.send("hangup")
        time.sleep(0.5)
        stop_recording(recorder)
        for u in ua.values():
            u.close()
        with open(os.path.join(out, "soundcards-baresip.json"), "w") as f:
            json.dump({"recording": rec if ok else None, "link_packets": link.moved if link else None}, f)
    finally:
        if link:
            link.close()
        pulse.close()


def soundcards(kith, material_dir, out):
    """Mouth-to-ear through sound cards, kith and baresip on the same virtual cards; writes
    OUT/soundcards.json."""
    if shutil.which("pulseaudio") is None:
        return "pulseaudio is not installed (scripts/bench-calls.sh installs it)"
    probe = os.path.join(material_dir, "probe48.wav")
    work = os.path.join(out, "soundcards")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    result = {"kith": None, "baresip": None, "kith_delayed": None, "baresip_delayed": None,
              "baresip_skipped": None, "harness_check_60ms": None}
    pulse = Pulse(work)
    try:
        # The harness itself: a PulseAudio loopback of 60 ms from the microphone to the loudspeaker in
        # place of a call must read 60 ms.
        stand_in = pulse.pactl("load-module", "module-loopback", "source=mic.monitor", "sink=spk",
                               "latency_msec=60")
        time.sleep(1)
        rec = os.path.join(work, "harness-check.wav")
        recorder = pulse.record(rec)
        time.sleep(1)
        pulse.play_probe(probe)
        time.sleep(1)
        stop_recording(recorder)
        pulse.pactl("unload-module", stand_in)
        result["harness_check_60ms"] = soundcard_latency(probe, rec)
        print(f"sound-card harness, a 60 ms loopback: {result['harness_check_60ms']}", file=sys.stderr)
        rec = kith_soundcard_call(kith, work, pulse, probe)
        result["kith"] = soundcard_latency(probe, rec)
        print(f"kith through sound cards: {result['kith']}", file=sys.stderr)
        rec = kith_soundcard_call(kith, work, pulse, probe, impair="delay=30,jitter=10,seed=7")
        result["kith_delayed"] = soundcard_latency(probe, rec)
        print(f"kith through sound cards, 30 +- 10 ms each way: {result['kith_delayed']}", file=sys.stderr)
    finally:
        pulse.close()
    if shutil.which("baresip") is None:
        result["baresip_skipped"] = "baresip is not installed"
    elif os.geteuid() != 0:
        result["baresip_skipped"] = "not root (baresip runs in its own network namespace)"
    else:
        for key, extra in [("baresip", []), ("baresip_delayed", ["--delayed"])]:
            r = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__),
                                "baresip-soundcards", "--material", material_dir, "--out", out] + extra)
            path = os.path.join(out, "soundcards-baresip.json")
            if r.returncode == 0 and os.path.exists(path) and json.load(open(path))["recording"]:
                result[key] = soundcard_latency(probe, json.load(open(path))["recording"])
            else:
                result["baresip_skipped"] = f"the baresip sound-card call failed (exit {r.returncode})"
            print(f"{key} through sound cards: {result[key]}", file=sys.stderr)
    with open(os.path.join(out, "soundcards.json"), "w") as f:
        json.dump(result, f, indent=1)
    return None


# ---------------------------------------------------------------- report

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def codec_alone(lossy, r, out):
    """The codec by itself over the loss pattern this kith call met (the packets bob's daemon recorded as
    arrived), with every lost frame rebuilt from the next packet's FEC when that arrived (or, when the call
    ended sending redundant copies, played whole from the copy in the next packet, from the first frame on):
    kith's own ceiling for this pattern, without the network's timing or the jitter buffer."""
    if not r.get("arrivals") or not os.path.exists(lossy):
        return None
    deg = os.path.splitext(r["recording"])[0] + "_codec.wav"
    hint = max(6, int(r["caller_stats"].get("loss_hint_pct") or 0))
    red = ["--red"] if r["caller_stats"].get("redundancy") else []
    # With DTX as kith sends and plays it: frames it did not send are not in the arrivals and are not losses,
    # and the decoder starts afresh after them.
    subprocess.run([lossy, r["reference"], deg, "0", "--hint", str(hint), "--dtx", "--dtx-reset", "--arrived",
                    r["arrivals"]] + red,
                   check=True, capture_output=True)
    return pesq_wb(r["reference"], deg)["pesq_wb"]


def score(material_dir, out, baresip_skipped, lossy):
    kith = json.load(open(os.path.join(out, "kith.json")))
    bpath = os.path.join(out, "baresip.json")
    bare = json.load(open(bpath)) if os.path.exists(bpath) and not baresip_skipped else None
    result = {"kith": {"libopus": kith["libopus"]}, "baresip": {"version": bare["version"]} if bare else None,
              "quality": [], "latency": [], "setup": {}, "usage": {}}
    lines = []
    lines.append("Voice quality, PESQ-WB (P.862.2 MOS-LQO), mean over clips " + ", ".join(CLIPS))
    lines.append(f"{'condition':<12} {'kith':>6} {'baresip':>8} {'codec alone':>12}   kith loss before/after FEC"
                 "   baresip RTP dropped")
    for cond, _, _ in QUALITY:
        kr = [r for r in kith["runs"] if r["kind"] == "quality" and r["condition"] == cond]
        ks = [pesq_wb(r["reference"], r["recording"]) for r in kr]
        row = {"condition": cond, "kith": [dict(s, clip=r["clip"]) for s, r in zip(ks, kr)],
               "kith_mean": mean([s["pesq_wb"] for s in ks]),
               "kith_loss_before_fec_pct": mean([r["callee_stats"]["loss_before_fec_pct"] for r in kr]),
               "kith_loss_after_fec_pct": mean([r["callee_stats"]["loss_after_fec_pct"] for r in kr]),
               "codec_alone_mean": mean([codec_alone(lossy, r, out) for r in kr])}
        bline = ""
        if bare:
            br = [r for r in bare["runs"] if r["kind"] == "quality" and r["condition"] == cond and r["recording"]]
            bs = [pesq_wb(r["reference"], r["recording"]) for r in br]
            row["baresip"] = [dict(s, clip=r["clip"]) for s, r in zip(bs, br)]
            row["baresip_mean"] = mean([s["pesq_wb"] for s in bs])
            row["baresip_dropped_pct"] = mean([100 * r["rtp_dropped"] / max(1, r["rtp_seen"]) for r in br])
            bline = f"{fmt(row['baresip_dropped_pct'], '.1f')} %"
        result["quality"].append(row)
        lines.append(f"{cond:<12} {fmt(row['kith_mean']):>6} {fmt(row.get('baresip_mean')):>8} "
                     f"{fmt(row['codec_alone_mean']):>12}   "
                     f"{fmt(row['kith_loss_before_fec_pct'], '.1f'):>5} % / {fmt(row['kith_loss_after_fec_pct'], '.1f'):>4} %"
                     f"               {bline}")
    lines.append("")
    lines.append("Mouth-to-ear latency, kith (chirp probe; input clock to the callee's playout clock)")
    for r in [r for r in kith["runs"] if r["kind"] == "latency"]:
        cs, es = r["caller_stats"], r["callee_stats"]
        off = (es["record_origin_unix_us"] - cs["input_origin_unix_us"]) / 1e6
        lat = latency_ms(r["reference"], r["recording"], off)
        row = {"condition": r["condition"], "latency": lat, "frame_ms": cs["frame_ms"],
               "jitter_buffer_ms": es["jitter_buffer_ms"], "jitter_ms": es["jitter_ms"]}
        result["latency"].append(row)
        if lat:
            lines.append(f"  {r['condition']:<12} median {lat['median_ms']:.1f} ms (min {lat['min_ms']:.1f}, max "
                         f"{lat['max_ms']:.1f}; {lat['found']}/{lat['expected']} chirps); frame {cs['frame_ms']} ms, "
                         f"jitter buffer {es['jitter_buffer_ms']:.1f} ms, measured jitter {es['jitter_ms']:.1f} ms")
        else:
            lines.append(f"  {r['condition']:<12} no chirp found")
    sc_path = os.path.join(out, "soundcards.json")
    if os.path.exists(sc_path):
        sc = json.load(open(sc_path))
        result["soundcards"] = sc
        lines.append("")
        lines.append("Mouth-to-ear through sound cards (PulseAudio null sinks; one stereo recording of the caller's "
                     "microphone and the callee's loudspeaker)")
        for who in ["kith", "baresip", "kith_delayed", "baresip_delayed", "harness_check_60ms"]:
            lat = sc.get(who)
            label = "harness (60 ms loopback)" if who.startswith("harness") else \
                who.replace("_delayed", ", 30 +- 10 ms")
            if lat:
                lines.append(f"  {label:<24} median {lat['median_ms']:.1f} ms (min {lat['min_ms']:.1f}, max "
                             f"{lat['max_ms']:.1f}; {lat['found']}/{lat['expected']} chirps)")
            else:
                why = sc.get("baresip_skipped") if who.startswith("baresip") else None
                lines.append(f"  {label:<24} {'skipped: ' + why if why else 'no chirp found'}")
    lines.append("")
    lines.append("Call set-up, dial to first audio at the callee (ms)")
    for cond in ["warm", "cold"]:
        vals = []
        for r in [r for r in kith["runs"] if r["kind"] == "setup" and r["condition"] == cond]:
            fs = first_sound_s(r["recording"])
            if fs is not None:
                vals.append((r["callee_stats"]["record_origin_unix_us"] - r["dial_unix_us"]) / 1000 + fs * 1000)
        vals.sort()
        result["setup"][f"kith_{cond}"] = vals
        lines.append(f"  kith {cond:<5} median {fmt(float(np.median(vals)) if vals else None, '.1f')} "
                     f"(runs: {', '.join(f'{v:.0f}' for v in vals)})")
    if bare:
        vals = sorted(r["setup_ms"] for r in bare["runs"] if r["kind"] == "quality" and r["setup_ms"] is not None)
        result["setup"]["baresip_fresh_processes"] = vals
        lines.append(f"  baresip (fresh processes, dial to callee's first RTP packet) median "
                     f"{fmt(float(np.median(vals)) if vals else None, '.1f')} over {len(vals)} calls")
    lines.append("")
    lines.append("CPU (% of one core, per second of call) and memory, 0% loss calls, mean over clips")
    for who, data in [("kith", kith), ("baresip", bare)]:
        if not data:
            continue
        rs = [r for r in data["runs"] if r["kind"] == "quality" and r["condition"] == "0%"]
        if not rs:
            continue
        u = {side: {k: mean([r[side][k] for r in rs if r.get(side)]) for k in
                    ["cpu_pct_of_one_core", "rss_kib", "peak_rss_kib"]} for side in ["caller_usage", "callee_usage"]}
        result["usage"][who] = u
        steady = {side: mean([r[side].get("steady_cpu_pct_of_one_core") for r in rs if r.get(side)])
                  for side in ["caller_usage", "callee_usage"]}
        wakeups = {side: mean([r[side].get("steady_wakeups_per_sec", r[side].get("wakeups_per_sec"))
                               for r in rs if r.get(side)]) for side in ["caller_usage", "callee_usage"]}
        if steady["caller_usage"] is not None:
            u["steady"] = steady
            lines.append(f"  {who:<8} steady state (2 s after the dial to 1 s before the end): caller "
                         f"{fmt(steady['caller_usage'])} %, callee {fmt(steady['callee_usage'])} %")
        if wakeups["caller_usage"] is not None:
            u["wakeups_per_sec"] = wakeups
            lines.append(f"  {who:<8} context switches per second (all threads): caller "
                         f"{fmt(wakeups['caller_usage'], '.0f')}, callee {fmt(wakeups['callee_usage'], '.0f')}")
        lines.append(f"  {who:<8} caller {fmt(u['caller_usage']['cpu_pct_of_one_core'])} % CPU, RSS "
                     f"{fmt(u['caller_usage']['rss_kib'] / 1024, '.1f')} MiB; callee "
                     f"{fmt(u['callee_usage']['cpu_pct_of_one_core'])} % CPU, RSS "
                     f"{fmt(u['callee_usage']['rss_kib'] / 1024, '.1f')} MiB")
    machine = kith.get("machine") or []
    if machine:
        # What the machine charged this run for a wake-up and for Opus alone (start and end of the kith
        # half): the floor any call pays, whoever built it, and how fast the machine was that hour.
        def avg(k):
            return mean([m[k] for m in machine])
        wake = avg("wakeup_us")
        codec = {"caller_usage": (avg("opus_encode_speech_us_per_frame") + avg("opus_decode_silence_us_per_frame")) * 50 / 1e4,
                 "callee_usage": (avg("opus_encode_silence_us_per_frame") + avg("opus_decode_speech_us_per_frame")) * 50 / 1e4}
        result["machine"] = {"runs": machine, "codec_alone_pct": codec}
        def both(k):
            return " / ".join(f"{m[k]:.0f}" for m in machine)
        lines.append(f"  this machine, this run (start / end): a thread's wake-up costs {both('wakeup_us')} us of "
                     f"CPU; Opus alone (32 kbit/s, warm caches) encodes a frame of speech in "
                     f"{both('opus_encode_speech_us_per_frame')} us and decodes one in "
                     f"{both('opus_decode_speech_us_per_frame')} us")
        u = result["usage"].get("kith", {})
        if u.get("steady") and u.get("wakeups_per_sec"):
            for side, name in [("caller_usage", "caller"), ("callee_usage", "callee")]:
                total = u["steady"][side]
                wk = u["wakeups_per_sec"][side] * wake / 1e4
                lines.append(f"  kith {name} steady {total:.2f} % = Opus alone {codec[side]:.2f} % + "
                             f"{u['wakeups_per_sec'][side]:.0f} wake-ups/s x {wake:.0f} us = {wk:.2f} % + "
                             f"the rest (QUIC, UDP, jitter buffer, recording, cold caches) {total - codec[side] - wk:.2f} %")
    if not bare:
        lines.append("")
        lines.append(f"baresip: skipped ({baresip_skipped})")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "results.txt"), "w") as f:
        f.write(text + "\n")
    print(f"\nresults in {out}/results.json and results.txt")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["all", "material", "kith", "baresip", "baresip-inner", "soundcards",
                                     "baresip-soundcards", "score"])
    ap.add_argument("--material", default=os.path.join(ROOT, "target/bench/calls/material"))
    ap.add_argument("--out", default=os.path.join(ROOT, "target/bench/calls"))
    ap.add_argument("--kith", default=os.path.join(ROOT, "target/release/kith"))
    ap.add_argument("--setup-runs", type=int, default=5)
    ap.add_argument("--lossy", default=os.path.join(ROOT, "target/release/examples/lossy"))
    ap.add_argument("--delayed", action="store_true", help="baresip-soundcards: 30 +- 10 ms each way")
    a = ap.parse_args()
    a.material, a.out = os.path.abspath(a.material), os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    if a.step == "baresip-inner":
        return baresip_inner(a.material, a.out)
    if a.step == "baresip-soundcards":
        return baresip_soundcard_inner(a.material, a.out, a.delayed)
    if a.step in ("all", "material"):
        material(a.material)
    if a.step in ("all", "kith"):
        run([a.kith, "bench-calls", "--material", a.material, "--clips", ",".join(CLIPS),
             "--setup-runs", str(a.setup_runs), "--out", a.out])
    skipped = None
    if a.step in ("all", "baresip"):
        skipped = baresip_outer(a.material, a.out)
        if skipped:
            print(f"baresip: skipped ({skipped})", file=sys.stderr)
    if a.step in ("all", "soundcards"):
        why = soundcards(a.kith, a.material, a.out)
        if why:
            print(f"sound cards: skipped ({why})", file=sys.stderr)
    if a.step in ("all", "score"):
        score(a.material, a.out, skipped, a.lossy)


if __name__ == "__main__":
    main()
