//! Third-party SIP peers run as child processes, for the gateway's tests and `kith demo`: Kamailio as an
//! organization's registrar and proxy, baresip as its phones. Each runs on loopback inside a network
//! namespace the caller made (baresip binds every interface), with ports the caller names.

use crate::speech::read_wav;
use anyhow::Context;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The proxy's configuration (kith fills in `@SIP@` and `@GATEWAY@`).
pub const KAMAILIO_CFG: &str = include_str!("sip_peers/kamailio.cfg");

/// Whether `tool` is on the PATH.
pub fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `unshare --net` (with `--map-root-user` when not root), ready for the command to run in a new network
/// namespace, or why none can be made here.
pub fn namespace() -> Result<Command, String> {
    for tool in ["unshare", "ip"] {
        if !has(tool) {
            return Err(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    // A PID namespace too, whose init is the command: when it ends, however it ends, every process it
    // started (Kamailio's workers included) ends with it.
    let unshare = || {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", "--pid", "--fork", "--kill-child"]);
        if !root {
            cmd.arg("--map-root-user");
        }
        cmd
    };
    match unshare().arg("true").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(format!(
                "cannot make a network namespace (not root, and user namespaces are off): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(e) => return Err(format!("cannot run unshare: {e}")),
    }
    let mut cmd = unshare();
    // Loopback is down in a new namespace: bring it up, then run the command.
    cmd.args(["--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""]);
    Ok(cmd)
}

/// The variable that tells a test's run inside its namespace where to say that it ran to its end.
const INSIDE: &str = "KITH_TEST_IN_NETNS";

/// For a test that must run in a network namespace of its own (loopback only): whether this process
/// already runs inside it. If not, runs `test` (of the current test binary) again inside a new one,
/// asserts that it ran there to its end and passed, and returns false; without `tools` or the rights it
/// prints why it skips, and panics under CI (`CI` set), where every test must run.
pub fn rerun_in_namespace(test: &str, tools: &[&str]) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let skip = |reason: String| {
        if std::env::var_os("CI").is_some() {
            panic!("{test} must run in CI, but: {reason}");
        }
        println!("SKIPPED {test}: {reason}");
    };
    if let Some(tool) = tools.iter().find(|t| !has(t)) {
        skip(format!(
            "`{tool}` is not installed (scripts/setup.sh installs it)"
        ));
        return false;
    }
    let mut unshare = match namespace() {
        Ok(c) => c,
        Err(reason) => {
            skip(reason);
            return false;
        }
    };
    // The run inside reports that it ran the test to its end (a filter that matched nothing also exits 0).
    let marker = tempfile::NamedTempFile::new().expect("a temporary file");
    let status = unshare
        .arg(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, marker.path())
        .status()
        .expect("running the test again in its namespace");
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    assert_eq!(
        std::fs::read_to_string(marker.path()).unwrap_or_default(),
        "done",
        "{test} did not run to its end inside its network namespace"
    );
    false
}

/// Inside the namespace: says the test ran to its end (see [`rerun_in_namespace`]).
pub fn namespace_done() {
    if let Some(marker) = std::env::var_os(INSIDE) {
        std::fs::write(marker, "done").expect("writing the marker");
    }
}

/// A third-party process whose output lines are kept in a log file and handed to the caller as they come.
pub struct Peer {
    name: &'static str,
    /// The process group (the peer's pid).
    group: Option<rustix::process::Pid>,
    /// Its exit, reported by a thread that waits for it.
    exited: mpsc::Receiver<std::io::Result<std::process::ExitStatus>>,
    /// The peer's lines, each with when it was read.
    lines: mpsc::Receiver<(String, std::time::Instant)>,
    /// Its standard input (what [`Peer::say`] writes to).
    stdin: std::sync::Arc<std::sync::Mutex<Option<std::process::ChildStdin>>>,
    pub log: PathBuf,
}

impl Peer {
    pub fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> anyhow::Result<Peer> {
        Self::driven(name, cmd, log, vec![], |_| vec![])
    }

    /// [`Peer::start`] for a peer driven on its standard input: `first` is written at once, and each
    /// line the peer prints is handed to `react`, whose answer is written back.
    pub fn driven(
        name: &'static str,
        cmd: &mut Command,
        log: PathBuf,
        first: Vec<String>,
        react: impl FnMut(&str) -> Vec<String> + Send + Clone + 'static,
    ) -> anyhow::Result<Peer> {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            // A process group of its own: stopping it stops the processes it forked (Kamailio's workers).
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdin = std::sync::Arc::new(std::sync::Mutex::new(child.stdin.take()));
        let write = |stdin: &std::sync::Mutex<Option<std::process::ChildStdin>>,
                     cmds: Vec<String>| {
            use std::io::Write;
            if let Some(i) = stdin.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                for c in cmds {
                    let _ = writeln!(i, "{c}");
                }
                let _ = i.flush();
            }
        };
        write(&stdin, first);
        let (tx, lines) = mpsc::channel();
        let outs: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        ];
        for out in outs.into_iter().flatten() {
            let (tx, log, stdin, mut react) =
                (tx.clone(), log.clone(), stdin.clone(), react.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .ok();
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    let at = std::time::Instant::now();
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    write(&stdin, react(&line));
                    let _ = tx.send((line, at));
                }
            });
        }
        let group = rustix::process::Pid::from_raw(child.id() as i32);
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });
        Ok(Peer {
            name,
            group,
            exited,
            lines,
            stdin,
            log,
        })
    }

    /// Writes `line` to the peer's standard input (a command to baresip: `/hold`, `/resume`).
    pub fn say(&self, line: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut stdin = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let input = stdin
            .as_mut()
            .with_context(|| format!("{} takes no input", self.name))?;
        writeln!(input, "{line}")?;
        input.flush()?;
        Ok(())
    }

    /// Waits for a line containing `text`; returns when the peer printed it (when it was read).
    pub fn wait_for(&self, text: &str, within: Duration) -> anyhow::Result<std::time::Instant> {
        self.wait_for_any(&[text], within)
    }

    /// Waits for a line containing one of `texts`; returns when the peer printed it (when it was read).
    pub fn wait_for_any(
        &self,
        texts: &[&str],
        within: Duration,
    ) -> anyhow::Result<std::time::Instant> {
        let text = texts.join(" or ");
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((l, at)) if texts.iter().any(|t| l.contains(t)) => return Ok(at),
                Ok(_) => {}
                Err(_) => anyhow::bail!(
                    "{} did not say {text:?} within {within:?}; log: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }
}

impl Peer {
    /// Waits until the peer has exited by itself (its files written).
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        match self.exited.recv_timeout(within) {
            Ok(status) => Ok(status?),
            Err(_) => anyhow::bail!("{} did not exit within {within:?}", self.name),
        }
    }
}

impl Drop for Peer {
    /// SIGTERM to the peer's process group, SIGKILL to what is left after 3 s.
    fn drop(&mut self) {
        use rustix::process::{Signal, kill_process_group};
        let Some(group) = self.group else { return };
        let _ = kill_process_group(group, Signal::TERM);
        // What the peer forked is in its group too: whatever is left after its 3 s of grace is killed.
        let _ = self.exited.recv_timeout(Duration::from_secs(3));
        let _ = kill_process_group(group, Signal::KILL);
    }
}

/// Kamailio on `sip`, routing the gateway's numbers to `gateway`, its files under `dir`.
pub fn kamailio(dir: &Path, sip: &str, gateway: &str) -> anyhow::Result<Peer> {
    let cfg = KAMAILIO_CFG
        .replace("@SIP@", sip)
        .replace("@GATEWAY@", gateway);
    let run = dir.join("kamailio");
    std::fs::create_dir_all(&run)?;
    std::fs::write(run.join("kamailio.cfg"), cfg)?;
    Peer::start(
        "kamailio",
        Command::new("kamailio")
            .arg("-f")
            .arg(run.join("kamailio.cfg"))
            .args(["-DD", "-E", "-Y"])
            .arg(&run)
            .arg("-w")
            .arg(&run),
        dir.join("kamailio.log"),
    )
}

/// A baresip phone registered as `user` (password `pw-<user>`), answering at once, saying `wav` (8 kHz),
/// recording what it hears into `dir/<user>/rec`. `dial`: a number it calls once started.
pub fn phone(
    dir: &Path,
    registrar: &str,
    user: &str,
    port: u16,
    wav: &Path,
    dial: Option<&str>,
) -> anyhow::Result<(Peer, PathBuf)> {
    phone_answering(dir, registrar, user, port, wav, dial, "auto")
}

/// [`phone`] with baresip's answer mode: `auto`, or `manual` (it rings until the caller gives up).
pub fn phone_answering(
    dir: &Path,
    registrar: &str,
    user: &str,
    port: u16,
    wav: &Path,
    dial: Option<&str>,
    answer: &str,
) -> anyhow::Result<(Peer, PathBuf)> {
    baresip(dir, registrar, user, port, wav, dial, (answer, "g711.so"))
}

/// A wideband [`phone`]: it speaks G.722 first (then G.711), and says `wav` (16 kHz).
pub fn wideband_phone(
    dir: &Path,
    registrar: &str,
    user: &str,
    port: u16,
    wav: &Path,
) -> anyhow::Result<(Peer, PathBuf)> {
    baresip(
        dir,
        registrar,
        user,
        port,
        wav,
        None,
        ("auto", "g722.so\nmodule g711.so"),
    )
}

/// A baresip phone; `(answer, codecs)`: its answer mode and its codec modules in order of preference.
fn baresip(
    dir: &Path,
    registrar: &str,
    user: &str,
    port: u16,
    wav: &Path,
    dial: Option<&str>,
    (answer, codecs): (&str, &str),
) -> anyhow::Result<(Peer, PathBuf)> {
    let rate = if codecs.starts_with("g722") {
        16_000
    } else {
        8000
    };
    let home = dir.join(user);
    let rec = home.join("rec");
    std::fs::create_dir_all(&rec)?;
    let modules = [
        "/usr/lib/baresip/modules",
        "/usr/lib/x86_64-linux-gnu/baresip/modules",
    ]
    .into_iter()
    .find(|d| Path::new(d).join("g711.so").exists())
    .context(
        "baresip's modules (g711.so) are not installed (scripts/setup.sh installs baresip-core)",
    )?;
    std::fs::write(
        home.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{port}\nnet_interface 127.0.0.1\n\
             dns_server 127.0.0.1:53\naudio_player alsa,null\naudio_alert alsa,null\n\
             audio_source aufile,{}\nausrc_srate {rate}\nauplay_srate {rate}\nausrc_channels 1\n\
             auplay_channels 1\nrtp_ports {}-{}\nmodule_path {modules}\nmodule {codecs}\n\
             module aufile.so\nmodule alsa.so\nmodule sndfile.so\nmodule stdio.so\nmodule_tmp uuid.so\n\
             module_tmp account.so\nmodule_app menu.so\nsnd_path {}\n",
            wav.display(),
            port + 100,
            port + 109,
            rec.display()
        ),
    )?;
    std::fs::write(
        home.join("accounts"),
        format!("<sip:{user}@{registrar}>;auth_pass=pw-{user};answermode={answer};regint=600\n"),
    )?;
    std::fs::write(home.join("contacts"), "")?;
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(&home);
    if let Some(n) = dial {
        cmd.args(["-e", &format!("/dial sip:{n}@{registrar}")]);
    }
    let p = Peer::start("baresip", &mut cmd, dir.join(format!("{user}.log")))?;
    Ok((p, rec))
}

/// A 48 kHz mono WAV resampled to 8 kHz (for the phones), through the gateway's own filter.
pub fn to_8k(from: &Path, to: &Path) -> anyhow::Result<()> {
    to_rate(from, to, 8000)
}

/// A 48 kHz mono WAV resampled to `rate` (8000 or 16000), through the gateway's own filter.
pub fn to_rate(from: &Path, to: &Path, rate: u32) -> anyhow::Result<()> {
    let samples = read_wav(from)?;
    let f = kith_gateway::resample::factor_for(rate);
    let mut down = kith_gateway::resample::Down::new(f);
    let mut out = vec![];
    let whole = samples.len() / f * f;
    down.process(&samples[..whole], &mut out);
    write_wav(to, rate, &out)
}

pub fn to_48k(samples: &[i16]) -> Vec<i16> {
    let mut up = kith_gateway::resample::Up::default();
    let mut out = vec![];
    up.process(samples, &mut out);
    out
}

pub fn write_wav(path: &Path, rate: u32, samples: &[i16]) -> anyhow::Result<()> {
    let mut w = hound::WavWriter::create(
        path,
        hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .with_context(|| format!("writing {}", path.display()))?;
    for s in samples {
        w.write_sample(*s)?;
    }
    w.finalize()?;
    Ok(())
}

/// What the phone heard in its last call (baresip's sndfile dump of the decoded audio), at 48 kHz.
pub fn phone_heard(rec: &Path) -> anyhow::Result<Vec<i16>> {
    let dump = std::fs::read_dir(rec)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .max()
        .context("the phone recorded nothing")?;
    let rate = hound::WavReader::open(&dump)?.spec().sample_rate;
    let mut up = kith_gateway::resample::Up::new(kith_gateway::resample::factor_for(rate));
    let mut out = vec![];
    up.process(&read_wav(&dump)?, &mut out);
    Ok(out)
}

/// example.org on this machine (a DNSSEC-signed zone and an HTTPS document, `kith_org::lab`) publishing
/// `account` for `services`, valid for a day.
pub async fn publish_org(
    account: kith_core::AccountKey,
    services: &[&str],
) -> anyhow::Result<kith_org::lab::Lab> {
    let statement = kith_core::org::OrgStatement::new(
        account,
        services.iter().map(|s| s.to_string()).collect(),
        kith_node::node::unix_now() + 86_400,
    );
    Ok(kith_org::lab::Lab::start(
        "example.org",
        &[kith_core::org::format_txt(&statement)],
        Some(kith_core::org::format_document(&statement, "example.org")),
    )
    .await?)
}

/// example.org on this machine publishing what its admin printed when enrolling its gateway (`kith
/// --json org enroll`: the TXT record and the document with the list of gateways).
pub async fn publish_enrolled(published: &serde_json::Value) -> anyhow::Result<kith_org::lab::Lab> {
    let txt = published["txt"].as_str().context("txt")?;
    let document = published["document"].as_str().context("document")?;
    Ok(
        kith_org::lab::Lab::start("example.org", &[txt.to_owned()], Some(document.to_owned()))
            .await?,
    )
}

/// Runs a test's body on a runtime of its own (a test that runs itself again in a namespace: see
/// [`rerun_in_namespace`]).
pub fn block_on(body: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(body)
}

/// Points the profile's `[org]` settings at the lab (its zone key as the trust anchor, its authority as
/// the only root).
pub fn configure_org(home: &Path, lab: &kith_org::lab::Lab) -> anyhow::Result<()> {
    let anchor = home.join("org-anchor.txt");
    std::fs::write(&anchor, lab.zone.anchor())?;
    let ca = home.join("org-ca.pem");
    std::fs::write(&ca, lab.authority.pem())?;
    org_config(
        home,
        lab.zone.addr(),
        &anchor,
        &ca,
        &lab.domain,
        lab.web.addr(),
    )
}

/// Appends `[org]` to the profile's config.toml: ask `dns` (validating from the DNSKEY records in
/// `anchor`), trust HTTPS certificates from the authority in `ca`, and reach `domain`'s web server at `web`.
pub fn org_config(
    home: &Path,
    dns: std::net::SocketAddr,
    anchor: &Path,
    ca: &Path,
    domain: &str,
    web: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let config = home.join("config.toml");
    let mut text = std::fs::read_to_string(&config)?;
    text += &format!(
        "\n[org]\ndns_servers = [\"{dns}\"]\ntrust_anchor_file = \"{}\"\nhttps_roots = [\"{}\"]\n\n\
         [org.https_addrs]\n\"{domain}\" = \"{web}\"\n",
        anchor.display(),
        ca.display(),
    );
    std::fs::write(&config, text)?;
    Ok(())
}

/// linphonec (liblinphone's console client), a second SIP implementation beside baresip: listens on
/// `port` (UDP, loopback), answers every call at once, plays `wav` into it, records what it hears into
/// `record`, and quits when the call has ended.
pub fn linphone(dir: &Path, port: u16, wav: &Path, record: &Path) -> anyhow::Result<Peer> {
    let home = dir.join("linphone");
    // linphonec keeps a database under $HOME/.local/share/linphone.
    std::fs::create_dir_all(home.join(".local/share/linphone"))?;
    let rc = home.join("linphonerc");
    std::fs::write(
        &rc,
        format!(
            "[sip]\nsip_port={port}\nsip_tcp_port=0\nsip_tls_port=0\nbind_address=127.0.0.1\n\
             guess_hostname=0\ncontact=sip:linphone@127.0.0.1\nregister_only_when_network_is_up=0\n\
             auto_send_ringing=1\nmedia_encryption=none\ninc_timeout=30\n[net]\nipv6=0\n\
             auto_net_state_mon=0\n[rtp]\nbind_address=127.0.0.1\naudio_rtp_port={}\nvideo_rtp_port={}\n\
             text_rtp_port={}\n[sound]\nechocancellation=0\n[misc]\nmax_calls=2\n[video]\ndisplay=0\n\
             capture=0\nshow_local=0\n",
            port + 100,
            port + 102,
            port + 104
        ),
    )?;
    let (wav, record) = (wav.display().to_string(), record.display().to_string());
    let mut connected = false;
    let react = move |line: &str| -> Vec<String> {
        if line.contains(" connected.") && !connected {
            connected = true;
            return vec![format!("record {record}"), format!("play {wav}")];
        }
        if line.contains(" ended ") && connected {
            return vec!["quit".into()];
        }
        vec![]
    };
    Peer::driven(
        "linphonec",
        Command::new("linphonec")
            .arg("-c")
            .arg(&rc)
            .args(["-a", "-d", "4"])
            .env("HOME", &home),
        dir.join("linphonec.log"),
        vec!["soundcard use files".into()],
        react,
    )
}

/// Writes `dir/gateway.toml` for a gateway on `gateway` (UDP) that registers with `registrar` as
/// `kithgw` (password `pw-kithgw`), takes SIP only from 127.0.0.1, and has these services (name, SIP
/// address) and dial plan (number, contact name).
pub fn gateway_toml(
    dir: &Path,
    registrar: &str,
    gateway: &str,
    services: &[(&str, &str)],
    dialplan: &[(&str, &str)],
) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        "[sip]\nlisten = \"{gateway}\"\nregistrar = \"sip:{registrar}\"\nuser = \"kithgw\"\n\
         password = \"pw-kithgw\"\npbx = [\"127.0.0.1\"]\n\n[services]\n"
    );
    for (name, uri) in services {
        text += &format!("{name} = [\"{uri}\"]\n");
    }
    text += "\n[dialplan]\n";
    for (number, contact) in dialplan {
        text += &format!("\"{number}\" = \"{contact}\"\n");
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}
