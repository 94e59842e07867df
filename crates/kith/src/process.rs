//! Runs kith daemons as child processes: used by `kith demo`, the benchmark and the end-to-end tests, so
//! all of them exercise exactly what a user runs.

use crate::client::{Client, Watcher};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The kith executable: this one (a test passes the binary under test explicitly).
pub fn kith_exe() -> PathBuf {
    std::env::var_os("KITH_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| "kith".into()))
}

/// A profile directory plus its daemon process.
pub struct Daemon {
    pub name: String,
    pub home: PathBuf,
    exe: PathBuf,
    child: Option<Child>,
    pub client: Option<Client>,
    /// DHT bootstrap list passed to the daemon; `None` runs it with `--no-dht`. Never the public DHT.
    pub bootstrap: Option<Vec<String>>,
    /// Extra daemon arguments.
    pub extra_args: Vec<String>,
    /// Environment variables for the daemon process.
    pub env: Vec<(String, String)>,
    /// The subcommand that runs the node: `["daemon"]`, or `["mailbox", "serve"]` for a headless mailbox.
    pub command: Vec<String>,
}

impl Daemon {
    /// Creates a fresh profile (no passphrase) in `home`.
    pub fn init(exe: &Path, home: &Path, name: &str) -> anyhow::Result<Self> {
        let out = Command::new(exe)
            .args(["--home"])
            .arg(home)
            .args(["init", "--name", name])
            .env_remove("KITH_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .context("running kith init")?;
        if !out.status.success() {
            anyhow::bail!("kith init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self::of(exe, home, name))
    }

    /// The profile already in `home`, not started.
    fn of(exe: &Path, home: &Path, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            home: home.to_owned(),
            exe: exe.to_owned(),
            child: None,
            client: None,
            bootstrap: None,
            extra_args: vec![],
            env: vec![],
            command: vec!["daemon".into()],
        }
    }

    /// Starts the daemon and waits until its API answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("daemon.log"))?;
        // A stale daemon.json from a killed process must not be mistaken for the new daemon.
        let _ = std::fs::remove_file(self.home.join(kith_node::profile::DAEMON_FILE));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--home").arg(&self.home).args(&self.command);
        match &self.bootstrap {
            None => {
                cmd.arg("--no-dht");
            }
            Some(list) => {
                cmd.arg(format!("--bootstrap={}", list.join(",")));
            }
        }
        cmd.args(&self.extra_args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        match std::env::var("KITH_DAEMON_LOG") {
            Ok(filter) => cmd.env("RUST_LOG", filter),
            // The daemon's own default filter, whatever the caller's environment says.
            Err(_) => cmd.env_remove("RUST_LOG"),
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("daemon.out"))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting kith daemon")?;
        // The daemon prints one line when its API is up (after writing daemon.json): wait for that line
        // instead of polling. The rest of its standard output goes to daemon.out.
        let stdout = child.stdout.take().context("daemon stdout")?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let mut ready = Some(ready_tx);
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = writeln!(out, "{line}");
                if line.starts_with("kith daemon ready")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let pid = child.id();
        self.child = Some(child);
        match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let status = self.child.as_mut().and_then(|c| c.wait().ok());
                anyhow::bail!(
                    "daemon {} exited at start ({status:?}); log: {}",
                    self.name,
                    self.home.join("daemon.log").display()
                );
            }
            Err(_) => anyhow::bail!("daemon {} did not come up within 30 s", self.name),
        }
        let profile = kith_node::Profile::new(&self.home);
        let info = profile
            .daemon_info()
            .filter(|i| i.pid == pid)
            .context("daemon.json of the new daemon")?;
        self.client = Some(Client::new(
            &format!("http://{}", info.api),
            &profile.token()?,
            &self.home,
        ));
        Ok(())
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("daemon started")
    }

    pub async fn watcher(&self) -> anyhow::Result<Watcher> {
        Watcher::start(self.client()).await
    }

    /// SIGKILL: the process gets no chance to clean up, like a crash or a power cut of the app.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.client = None;
    }

    /// Asks the daemon to stop and waits for it.
    pub async fn stop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.post("/v1/shutdown", serde_json::json!({})).await;
        }
        if let Some(mut c) = self.child.take() {
            // Wait for the exit in a blocking thread; kill it if a clean stop takes more than 10 s.
            let pid = c.id();
            let waited = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || c.wait()),
            )
            .await;
            if waited.is_err() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Daemon {
    /// Creates a fresh profile and starts its daemon with these DHT and extra options.
    pub async fn spawn(
        exe: &Path,
        home: &Path,
        name: &str,
        bootstrap: Option<Vec<String>>,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut d = Self::init(exe, home, name)?;
        d.bootstrap = bootstrap;
        d.extra_args = extra_args;
        d.start().await?;
        Ok(d)
    }

    /// Creates an organization as it runs a gateway: an admin profile holding example.org's account key
    /// (in `<home>-admin`; no daemon of it runs), and in `home` a gateway device it enrolls (see
    /// [`Daemon::enroll_gateway`]) whose node runs as the gateway (`kith gateway --config CONFIG`). Start
    /// it with [`Daemon::start`]; publish what the admin printed (the second value) with
    /// [`crate::sip_peers::publish_enrolled`].
    pub fn init_gateway(
        exe: &Path,
        home: &Path,
        name: &str,
        config: &Path,
    ) -> anyhow::Result<(Self, serde_json::Value)> {
        let admin_home = home.with_file_name(format!(
            "{}-admin",
            home.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        Self::init(exe, &admin_home, "example.org")?;
        let (mut d, published) = Self::enroll_gateway(exe, &admin_home, "example.org", home, name)?;
        d.command = vec![
            "gateway".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
        ];
        Ok((d, published))
    }

    /// Makes an organization's gateway device named `name` in `home` (`kith init --gateway`) and has the
    /// admin profile in `admin` enroll it for `domain` (`kith device request`, `kith org enroll`, `kith
    /// device grant`), as an organization does. Returns the device (start it with [`Daemon::start`]; set
    /// `command` to run it as `kith gateway`) and what the admin printed to publish (`kith --json org
    /// enroll`: `txt`, `document`, `gateways`, `seq`).
    pub fn enroll_gateway(
        exe: &Path,
        admin: &Path,
        domain: &str,
        home: &Path,
        name: &str,
    ) -> anyhow::Result<(Self, serde_json::Value)> {
        let run = |home: &Path, args: &[&str]| -> anyhow::Result<serde_json::Value> {
            let out = Command::new(exe)
                .arg("--home")
                .arg(home)
                .arg("--json")
                .args(args)
                .env_remove("KITH_PASSPHRASE")
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running kith {}", args[0]))?;
            if !out.status.success() {
                anyhow::bail!(
                    "kith {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            serde_json::from_slice(&out.stdout).context("kith --json output")
        };
        run(home, &["init", "--gateway", "--name", name])?;
        let request = run(home, &["device", "request"])?;
        let enrollment = request["enrollment"].as_str().context("enrollment")?;
        let published = run(admin, &["org", "enroll", domain, enrollment])?;
        let grant = published["grant"].as_str().context("grant")?;
        run(home, &["device", "grant", grant])?;
        Ok((Self::of(exe, home, name), published))
    }

    /// This profile's `kith:` address (read from the profile, no daemon needed).
    pub fn address(&self) -> anyhow::Result<String> {
        Ok(
            kith_core::Address::new(kith_node::Profile::new(&self.home).public()?.account)
                .to_string(),
        )
    }

    /// Adds `other` as a contact by its address alone (no card, no hints), under `other`'s name.
    pub async fn add_by_address(&self, other: &Daemon) -> anyhow::Result<()> {
        self.client()
            .post(
                "/v1/contacts",
                serde_json::json!({ "contact": other.address()?, "name": other.name }),
            )
            .await?;
        Ok(())
    }
}

/// Starts one daemon per name (profile `dir/<name>`), each with `bootstrap` and `extra` arguments.
pub async fn spawn_all(
    exe: &Path,
    dir: &Path,
    names: &[&str],
    bootstrap: Option<Vec<String>>,
    extra: Vec<String>,
) -> anyhow::Result<Vec<Daemon>> {
    let mut out = vec![];
    for name in names {
        out.push(
            Daemon::spawn(exe, &dir.join(name), name, bootstrap.clone(), extra.clone()).await?,
        );
    }
    Ok(out)
}

/// Adds `b` as a contact of `a` (by `b`'s card) under `b`'s name.
pub async fn introduce(a: &Daemon, b: &Daemon) -> anyhow::Result<()> {
    let card = b.client().get("/v1/card").await?;
    let link = card["card"].as_str().context("card link")?;
    a.client()
        .post(
            "/v1/contacts",
            serde_json::json!({ "contact": link, "name": b.name }),
        )
        .await?;
    Ok(())
}

/// One call placed and answered through two daemons' control APIs (see [`call_and_answer`]).
pub struct AnsweredCall {
    pub id: String,
    /// Wall-clock times (Unix microseconds) of the dial and of the callee's `call_incoming` event.
    pub dial_unix_us: u64,
    pub incoming_unix_us: u64,
    /// The `call_incoming` event at the callee and both sides' `call_ended` events.
    pub incoming: serde_json::Value,
    pub caller_end: serde_json::Value,
    pub callee_end: serde_json::Value,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Places a call from `caller` (events `wa`) to its contact `to` with `place` (the body of `POST
/// /v1/calls` without `to`), has `callee` (events `wb`) answer with `answer` (the body of `POST
/// /v1/calls/answer` without `call`) as soon as it rings, and waits up to `within` for both sides to
/// report the end.
pub async fn call_and_answer(
    (caller, wa): (&Daemon, &Watcher),
    (callee, wb): (&Daemon, &Watcher),
    to: &str,
    mut place: serde_json::Value,
    mut answer: serde_json::Value,
    within: Duration,
) -> anyhow::Result<AnsweredCall> {
    place["to"] = serde_json::json!(to);
    let dial_unix_us = unix_us();
    let id = caller.client().post("/v1/calls", place).await?["call"]
        .as_str()
        .context("call id")?
        .to_owned();
    let incoming = |w: &Watcher| w.call_event("call_incoming", Some(&id));
    anyhow::ensure!(
        wb.wait_for(Duration::from_secs(30), |w| incoming(w).is_some())
            .await,
        "{}'s phone did not ring within 30 s",
        callee.name
    );
    let incoming_unix_us = unix_us();
    answer["call"] = serde_json::json!(id);
    callee.client().post("/v1/calls/answer", answer).await?;
    let ended = |w: &Watcher| w.call_event("call_ended", Some(&id));
    anyhow::ensure!(
        wa.wait_for(within, |w| ended(w).is_some()).await
            && wb.wait_for(within, |w| ended(w).is_some()).await,
        "the call did not end within {within:?}"
    );
    Ok(AnsweredCall {
        incoming: incoming(wb).context("call_incoming")?,
        caller_end: ended(wa).context("call_ended")?,
        callee_end: ended(wb).context("call_ended")?,
        id,
        dial_unix_us,
        incoming_unix_us,
    })
}
