//! NAT traversal in a small internet of network namespaces (needs root: CI runs it; elsewhere it is skipped
//! with a printed reason, never silently, and never in CI).
//!
//! Topology (every address lives only inside namespaces this test creates and removes):
//!   pub   198.18.0.10      "public" host: a DHT testnet and a relay
//!   nat1  198.18.0.1 | 10.201.1.1  endpoint-independent NAT (masquerade)
//!   nat2  198.18.0.2 | 10.201.2.1  symmetric-style NAT (masquerade random,fully-random)
//!   a     10.201.1.2 behind nat1;  c 10.201.1.3 behind nat1 (same LAN);  b 10.201.2.2 behind nat2
//!   l     10.201.1.4 behind nat1 (same LAN), started with no bootstrap node at all

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Lab {
    prefix: String,
    children: Vec<Child>,
    /// Logs of the spawned processes, printed if the test fails.
    logs: Vec<PathBuf>,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn up(prefix: &str) -> Result<Self, String> {
        let lab = Lab {
            prefix: prefix.to_owned(),
            children: vec![],
            logs: vec![],
        };
        let p = prefix;
        let ns = |h: &str| lab.ns(h);
        for h in ["ix", "pub", "nat1", "nat2", "a", "b", "c", "l"] {
            sh(&["ip", "netns", "add", &ns(h)])?;
            sh(&["ip", "-n", &ns(h), "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "-n",
            &ns("ix"),
            "link",
            "add",
            "br0",
            "type",
            "bridge",
        ])?;
        sh(&["ip", "-n", &ns("ix"), "link", "set", "br0", "up"])?;
        for (i, h) in ["pub", "nat1", "nat2"].iter().enumerate() {
            let (x, u) = (format!("{p}-x{i}"), format!("{p}-u{i}"));
            sh(&["ip", "link", "add", &x, "type", "veth", "peer", "name", &u])?;
            sh(&["ip", "link", "set", &x, "netns", &ns("ix")])?;
            sh(&["ip", "link", "set", &u, "netns", &ns(h)])?;
            sh(&["ip", "-n", &ns("ix"), "link", "set", &x, "master", "br0"])?;
            sh(&["ip", "-n", &ns("ix"), "link", "set", &x, "up"])?;
            sh(&["ip", "-n", &ns(h), "link", "set", &u, "name", "wan"])?;
            sh(&["ip", "-n", &ns(h), "link", "set", "wan", "up"])?;
        }
        sh(&[
            "ip",
            "-n",
            &ns("pub"),
            "addr",
            "add",
            "198.18.0.10/24",
            "dev",
            "wan",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns("nat1"),
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            "wan",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns("nat2"),
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            "wan",
        ])?;
        // nat1's LAN is a bridge, so a and c share it.
        sh(&[
            "ip",
            "-n",
            &ns("nat1"),
            "link",
            "add",
            "lan",
            "type",
            "bridge",
        ])?;
        sh(&[
            "ip",
            "-n",
            &ns("nat1"),
            "addr",
            "add",
            "10.201.1.1/24",
            "dev",
            "lan",
        ])?;
        sh(&["ip", "-n", &ns("nat1"), "link", "set", "lan", "up"])?;
        for (router, host, addr, gw) in [
            ("nat1", "a", "10.201.1.2", "10.201.1.1"),
            ("nat1", "c", "10.201.1.3", "10.201.1.1"),
            ("nat1", "l", "10.201.1.4", "10.201.1.1"),
            ("nat2", "b", "10.201.2.2", "10.201.2.1"),
        ] {
            let (l, r) = (format!("{p}-l{host}"), format!("{p}-r{host}"));
            sh(&["ip", "link", "add", &l, "type", "veth", "peer", "name", &r])?;
            sh(&["ip", "link", "set", &l, "netns", &ns(host)])?;
            sh(&["ip", "link", "set", &r, "netns", &ns(router)])?;
            sh(&["ip", "-n", &ns(host), "link", "set", &l, "name", "eth0"])?;
            sh(&["ip", "-n", &ns(host), "link", "set", "eth0", "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns(host),
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns(host), "route", "add", "default", "via", gw])?;
            if router == "nat1" {
                sh(&["ip", "-n", &ns(router), "link", "set", &r, "master", "lan"])?;
            } else {
                sh(&[
                    "ip",
                    "-n",
                    &ns(router),
                    "addr",
                    "add",
                    &format!("{gw}/24"),
                    "dev",
                    &r,
                ])?;
            }
            sh(&["ip", "-n", &ns(router), "link", "set", &r, "up"])?;
        }
        for (router, rule) in [
            ("nat1", "masquerade"),
            ("nat2", "masquerade random,fully-random"),
        ] {
            let n = ns(router);
            sh(&[
                "ip",
                "netns",
                "exec",
                &n,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            sh(&[
                "ip", "netns", "exec", &n, "nft", "add", "table", "ip", "nat",
            ])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &n,
                "nft",
                "add chain ip nat post { type nat hook postrouting priority 100; }",
            ])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &n,
                "nft",
                &format!("add rule ip nat post oifname wan {rule}"),
            ])?;
        }
        Ok(lab)
    }

    /// Starts a long-running command inside `host`; its standard output arrives line by line on the
    /// returned channel (and in `log`, with its standard error).
    fn spawn(
        &mut self,
        host: &str,
        args: &[&str],
        log: &Path,
    ) -> std::sync::mpsc::Receiver<String> {
        use std::io::{BufRead, Write};
        let f = std::fs::File::create(log).unwrap();
        self.logs.push(log.to_owned());
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(f.try_clone().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut f = f;
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = writeln!(f, "{line}");
                let _ = tx.send(line);
            }
        });
        self.children.push(child);
        rx
    }

    /// Waits for a line on `rx` that satisfies `want`; bounded.
    fn expect_line(
        rx: &std::sync::mpsc::Receiver<String>,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> String {
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if want(&line) => return line,
                Ok(_) => continue,
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    }

    fn run(&self, host: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ----", log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in ["a", "b", "c", "l", "nat1", "nat2", "pub", "ix"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .output();
        }
    }
}

fn can_run() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (network namespaces need root)".into());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            return Err(format!(
                "`{tool}` is not installed (scripts/setup.sh installs it)"
            ));
        }
    }
    Ok(())
}

fn status(lab: &Lab, host: &str, home: &Path) -> serde_json::Value {
    let (ok, out, err) = lab.run(
        host,
        &[exe(), "--home", home.to_str().unwrap(), "--json", "status"],
    );
    assert!(ok, "status in {host}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_kith")
}

fn connection(s: &serde_json::Value, peer: &str) -> serde_json::Value {
    s["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"] == peer)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn nat_traversal_in_network_namespaces() {
    if let Err(reason) = can_run() {
        if std::env::var_os("CI").is_some() {
            panic!("the NAT lab must run in CI, but: {reason}");
        }
        println!("SKIPPED nat_traversal_in_network_namespaces: {reason}");
        return;
    }
    // Declared before the lab, so the logs still exist when the lab prints them after a failure.
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("kn{}", std::process::id() % 100_000);
    let mut lab = Lab::up(&prefix).unwrap_or_else(|e| panic!("building the NAT lab: {e}"));
    let d = dir.path();
    let testnet = lab.spawn(
        "pub",
        &[exe(), "testnet", "--nodes", "4", "--bind", "198.18.0.10"],
        &d.join("testnet.log"),
    );
    // A relay as it runs in public: TLS with a self-signed certificate (kept in its state folder), pinned
    // by the URL it prints.
    let relay_state = d.join("relay-state");
    let relay_out = lab.spawn(
        "pub",
        &[
            exe(),
            "relay",
            "--listen",
            "198.18.0.10:3340",
            "--state",
            relay_state.to_str().unwrap(),
        ],
        &d.join("relay.log"),
    );
    // `kith testnet` prints its nodes in one line as --bootstrap takes them, `kith relay` its URL.
    let boot = Lab::expect_line(&testnet, "the testnet", |l| l.contains(':'));
    assert_eq!(boot.split(',').count(), 4, "{boot}");
    let relay = Lab::expect_line(&relay_out, "the relay URL", |l| {
        l.starts_with("https://198.18.0.10:3340/?pin=")
    });
    let homes: Vec<(&str, &str, PathBuf)> = vec![
        ("a", "10.201.1.2", d.join("a")),
        ("b", "10.201.2.2", d.join("b")),
        ("c", "10.201.1.3", d.join("c")),
    ];
    let start = |lab: &mut Lab, host: &str, ip: &str, home: &Path, extra: &[&str]| {
        let listen = format!("{ip}:4433");
        let mut args = vec![
            exe(),
            "--home",
            home.to_str().unwrap(),
            "daemon",
            "--listen",
            &listen,
            "--dht-bind",
            ip,
            "--bootstrap",
            &boot,
            "--relay",
            &relay,
        ];
        args.extend_from_slice(extra);
        let out = lab.spawn(host, &args, &home.with_extension("log"));
        // The daemon prints one line once its API is up.
        Lab::expect_line(&out, &format!("the daemon in {host}"), |l| {
            l.starts_with("kith daemon ready")
        });
        lab.children.len() - 1
    };
    let mut daemon_of = vec![];
    for (host, ip, home) in &homes {
        let (ok, _, err) = lab.run(
            host,
            &[
                exe(),
                "--home",
                home.to_str().unwrap(),
                "init",
                "--name",
                host,
            ],
        );
        assert!(ok, "{err}");
        daemon_of.push(start(&mut lab, host, ip, home, &[]));
    }
    let address = |home: &Path| -> String {
        let (_, out, _) = lab.run("a", &[exe(), "--home", home.to_str().unwrap(), "id"]);
        out.trim().to_owned()
    };
    let addrs: Vec<String> = homes.iter().map(|(_, _, h)| address(h)).collect();
    for (i, (host, _, home)) in homes.iter().enumerate() {
        for (j, (other, _, _)) in homes.iter().enumerate() {
            if i != j {
                let (ok, _, err) = lab.run(
                    host,
                    &[
                        exe(),
                        "--home",
                        home.to_str().unwrap(),
                        "add",
                        &addrs[j],
                        "--name",
                        other,
                    ],
                );
                assert!(ok, "{err}");
            }
        }
    }
    let send = |lab: &Lab, from: usize, to: &str, text: &str| {
        let (host, _, home) = &homes[from];
        let (ok, out, err) = lab.run(
            host,
            &[
                exe(),
                "--home",
                home.to_str().unwrap(),
                "send",
                to,
                text,
                "--wait",
                "60",
            ],
        );
        assert!(ok, "{host} -> {to} not delivered: {out} {err}");
    };
    // a (endpoint-independent NAT) <-> b (symmetric NAT), found by address alone.
    send(&lab, 0, "b", "hello from behind nat1");
    send(&lab, 1, "a", "hello from behind nat2");
    // a <-> c behind the same NAT.
    send(&lab, 0, "c", "hello, neighbour");
    send(&lab, 2, "a", "hi");
    // The path between a and c starts relayed and moves to direct once a hole is punched, which on a loaded
    // machine takes a while: wait for that (bounded), reading a's status.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sa = loop {
        let sa = status(&lab, "a", &homes[0].2);
        if connection(&sa, "c")["path"] == "direct" || std::time::Instant::now() > deadline {
            break sa;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (ab, ac) = (connection(&sa, "b"), connection(&sa, "c"));
    println!(
        "NAT lab: a (EIM NAT) <-> b (symmetric NAT): {} ({} IP paths)",
        ab["path"], ab["ip_paths"]
    );
    println!(
        "NAT lab: a <-> c (same NAT): {} ({} IP paths)",
        ac["path"], ac["ip_paths"]
    );
    assert_eq!(
        ac["path"], "direct",
        "two clients behind the same NAT connect directly"
    );

    // b switches to relay-only: a must never see an IP path to b.
    let b = &mut lab.children[daemon_of[1]];
    assert!(
        Command::new("kill")
            .args(["-TERM", &b.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    b.wait().unwrap();
    start(&mut lab, "b", "10.201.2.2", &homes[1].2, &["--relay-only"]);
    send(&lab, 0, "b", "only through the relay now");
    send(&lab, 1, "a", "and back");
    let sa = status(&lab, "a", &homes[0].2);
    let sb = status(&lab, "b", &homes[1].2);
    println!(
        "NAT lab: a <-> b with b relay-only: {} ({} IP paths)",
        connection(&sa, "b")["path"],
        connection(&sa, "b")["ip_paths"]
    );
    assert_eq!(
        sb["listen"],
        serde_json::json!([]),
        "relay-only b has no IP socket"
    );
    assert_eq!(
        connection(&sa, "b")["ip_paths"],
        0,
        "a's endpoint saw no IP path to b"
    );
    assert_eq!(connection(&sa, "b")["path"], "relayed");
    // The relayed path runs over TLS to the pinned relay, which b (behind its NAT) probes as reachable.
    let report = &sb["relay_report"][0];
    assert_eq!(report["url"], serde_json::json!(relay), "{report}");
    assert_eq!(report["reachable"], true, "{report}");

    // l joins with no bootstrap node and no saved table: it asks its LAN, where a and c answer with the
    // DHT nodes they know, and then finds a by address alone.
    let lhome = d.join("l");
    let (ok, _, err) = lab.run(
        "l",
        &[
            exe(),
            "--home",
            lhome.to_str().unwrap(),
            "init",
            "--name",
            "l",
        ],
    );
    assert!(ok, "{err}");
    let out = lab.spawn(
        "l",
        &[
            exe(),
            "--home",
            lhome.to_str().unwrap(),
            "daemon",
            "--listen",
            "10.201.1.4:4433",
            "--dht-bind",
            "10.201.1.4",
            "--bootstrap=",
            "--relay",
            &relay,
        ],
        &d.join("l.log"),
    );
    Lab::expect_line(&out, "the daemon in l", |l| {
        l.starts_with("kith daemon ready")
    });
    let (ok, _, err) = lab.run(
        "l",
        &[
            exe(),
            "--home",
            lhome.to_str().unwrap(),
            "add",
            &addrs[0],
            "--name",
            "a",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = lab.run(
        "l",
        &[
            exe(),
            "--home",
            lhome.to_str().unwrap(),
            "send",
            "a",
            "found you through the LAN",
            "--wait",
            "60",
        ],
    );
    assert!(ok, "l -> a not delivered: {out} {err}");
    let sl = status(&lab, "l", &lhome);
    let lan = &sl["dht"]["bootstrap"]["lan"];
    println!(
        "NAT lab: l started with no bootstrap node; LAN discovery offered {} DHT nodes, {} in its routing table",
        lan["offered"], lan["answered"]
    );
    assert_eq!(sl["dht"]["bootstrap"]["configured"]["offered"], 0);
    assert!(
        lan["answered"].as_u64() > Some(0),
        "the DHT nodes in l's routing table came from the LAN: {}",
        sl["dht"]
    );
}
