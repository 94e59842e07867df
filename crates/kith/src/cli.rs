//! Argument parsing and the commands a person types.
//!
//! Exit status: 0 success, 2 for anything the user can fix (bad input, missing profile, daemon not running,
//! unknown contact, wrong passphrase), 1 for internal failures. Errors go to stderr as one sentence that
//! names the cause and what to do.

use crate::client::{Client, user};
use crate::text::{visible, visible_lines};
use anyhow::Context;
use clap::{Parser, Subcommand};
use kith_core::ParsedContact;
use kith_node::Profile;
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "kith",
    version,
    about = "A phone and messenger with no servers: a user is a key."
)]
struct Cli {
    /// Profile directory (default: the platform data directory, e.g. ~/.local/share/kith).
    #[arg(long, global = true, env = "KITH_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print data as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a profile: account key, device key, store. Set KITH_PASSPHRASE (or answer the prompt) to
    /// encrypt the secret keys.
    Init {
        /// Display name shown on your contact card.
        #[arg(long)]
        name: Option<String>,
        /// Listen on every interface (QUIC endpoint and DHT), to be reachable from other machines and to join
        /// the public DHT. Without it the node stays on 127.0.0.1.
        #[arg(long)]
        all_interfaces: bool,
        /// Make an organization's gateway device instead of a person's profile: it holds a device key
        /// only (the organization's account key stays with its admin). --name is the gateway's name
        /// (gw1). Next: `kith device request`, the admin's `kith org enroll`, `kith device grant`.
        #[arg(long)]
        gateway: bool,
        /// The UDP port of the QUIC endpoint (default: a free one, kept from then on).
        #[arg(long)]
        port: Option<u16>,
    },
    /// An organization's gateway device: its enrollment, and the grant that makes it one of the
    /// organization's gateways.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Set, change or remove the passphrase that encrypts your secret keys. The current one comes from
    /// KITH_PASSPHRASE or a prompt; the new one from KITH_NEW_PASSPHRASE or a prompt (empty: none).
    Passphrase,
    /// Write a backup of this profile (keys, contacts, history, undelivered messages) to FILE, encrypted
    /// with the profile's passphrase (or, for a profile without one, a passphrase for the backup). Works
    /// while the daemon runs.
    Backup { file: PathBuf },
    /// Restore a backup into this profile's folder (a profile there is moved aside, not deleted). The
    /// restored profile is a new device of the same account: contacts and history come back, and
    /// messages flow both ways again.
    Restore { file: PathBuf },
    /// Run the node in the foreground.
    Daemon {
        #[command(flatten)]
        args: DaemonArgs,
    },
    /// Run a relay server that kith nodes (anyone's) can use to reach each other through NATs. It serves
    /// TLS: by default with a self-signed certificate kept in --state, pinned by the URL it prints.
    Relay {
        /// TCP address to serve HTTPS on.
        #[arg(long, default_value = "127.0.0.1:3340")]
        listen: std::net::SocketAddr,
        /// The name or IP address nodes reach the relay at, for the printed URL (default: the --listen
        /// address; needed with an unspecified one such as 0.0.0.0).
        #[arg(long)]
        host: Option<String>,
        /// Certificate chain (PEM, the relay's certificate first), e.g. from an ACME client; the URL then
        /// needs no pin. With --tls-key.
        #[arg(long, requires = "tls_key", conflicts_with_all = ["self_signed", "plain_http"])]
        tls_cert: Option<PathBuf>,
        /// Private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// A self-signed certificate, made at the first start and kept in --state (the default).
        #[arg(long, conflicts_with = "plain_http")]
        self_signed: bool,
        /// Folder for the self-signed certificate and its key (default: kith-relay in the data folder,
        /// e.g. ~/.local/share/kith-relay). Keep it: the pin, and the URL, change with a new certificate.
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Serve plain HTTP: endpoint ids then pass in the clear between the relay and every node. For
        /// tests on loopback only.
        #[arg(long)]
        plain_http: bool,
        /// Announce this relay in the DHT (BEP5, well-known infohash) through these bootstrap nodes.
        #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
        announce_via: Option<Vec<String>>,
    },
    /// Measure finding people by address on a local DHT testnet (cold, warm, 30% of nodes killed) against
    /// an unblinded reference; print and save numbers.
    BenchDiscovery {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The kith half of the call benchmark (scripts/bench-calls.sh runs it with baresip and scores both):
    /// real calls between two daemons on loopback at several loss and jitter conditions.
    BenchCalls {
        /// Folder with the clips (CLIP.wav, 48 kHz mono 16-bit) and the chirp probe probe48.wav.
        #[arg(long)]
        material: PathBuf,
        /// Clip names (without .wav), comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        clips: Vec<String>,
        /// Set-up measurements of each kind (warm, cold).
        #[arg(long, default_value_t = 5)]
        setup_runs: usize,
        /// Only these quality conditions (comma-separated names as printed, e.g. "10%,10% bursty");
        /// default: all of them.
        #[arg(long, value_delimiter = ',')]
        conditions: Vec<String>,
        /// Skip the latency runs.
        #[arg(long)]
        no_latency: bool,
        /// Folder for the recordings and kith.json.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a local Mainline DHT of N nodes on 127.0.0.x for demos and tests; prints its bootstrap list.
    Testnet {
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Bind every node to this IPv4 address (distinct ports) instead of one 127.0.x.y address each.
        #[arg(long)]
        bind: Option<std::net::Ipv4Addr>,
        /// Also write the bootstrap list (host:port,host:port,..., as --bootstrap takes it) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print your address.
    Id {
        /// Also show it as a QR code.
        #[arg(long)]
        qr: bool,
    },
    /// Print your signed contact card as one kith: link.
    Card {
        #[arg(long)]
        qr: bool,
    },
    /// Add a contact from a card link or an address.
    Add {
        /// A `kith:...` card link or address.
        card_or_address: String,
        /// Your name for the contact (required for a bare address).
        #[arg(long)]
        name: Option<String>,
    },
    /// List contacts with their reachability.
    Contacts,
    /// Remove a contact (the message history stays).
    Remove { name: String },
    /// Show the safety number shared with a contact: compare it in person.
    Verify {
        name: String,
        /// You compared the numbers and every digit matched: mark the contact verified (and accept a new
        /// device of theirs, if one appeared).
        #[arg(long)]
        confirm: bool,
    },
    /// Look a contact (by name) or any address up in the DHT now: what anyone with the address can see of
    /// the record, and whether you can read its contacts-only part.
    Lookup { who: String },
    /// Send a message to a contact: TEXT, or "-" (or nothing) to read it from standard input, or --file.
    Send {
        name: String,
        #[arg(conflicts_with = "file")]
        text: Option<String>,
        /// Send the contents of this UTF-8 text file.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Wait until the message is delivered (the recipient stored it), up to this many seconds.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Send at most once under this key (1-128 letters, digits, `-` or `_`): the same command again
        /// with it, after the daemon stopped before answering, does not send a second message. Without
        /// it, each run makes a key of its own (and retries with it for a while if no answer comes).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Show the history with a contact: when each message was sent, its state, and when it was delivered.
    Chat {
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Stay and show new messages and state changes as they happen (Ctrl-C ends).
        #[arg(long)]
        follow: bool,
    },
    /// Call a contact; stays until the call ends (Ctrl-C hangs up).
    Call {
        /// A contact's name, or an organization's service as `service@domain` (verified first).
        name: String,
        /// The service to ask for when NAME is an organization's gateway added as a contact.
        #[arg(long)]
        service: Option<String>,
        /// Keys to press once the call is answered (an IVR's menu): 0-9, *, #, A-D.
        #[arg(long, value_name = "KEYS")]
        dtmf: Option<String>,
        #[command(flatten)]
        audio: AudioArgs,
    },
    /// Press keys in the call in progress (an IVR's menu): 0-9, *, #, A-D.
    Dtmf {
        keys: String,
        #[arg(long)]
        call: Option<String>,
    },
    /// Answer a ringing call (the only one, or the one named); stays until it ends.
    Answer {
        call: Option<String>,
        #[command(flatten)]
        audio: AudioArgs,
    },
    /// Decline a ringing call.
    Reject { call: Option<String> },
    /// Sound cards.
    Audio {
        #[command(subcommand)]
        command: AudioCommand,
    },
    /// Mailboxes: contacts' nodes that keep sealed messages for you while you are away, and yours for them.
    /// Without a subcommand: your mailboxes (reachable or not) and whom this node keeps mail for.
    Mailbox {
        #[command(subcommand)]
        command: Option<MailboxCommand>,
    },
    /// Organizations: check which kith account speaks for a domain (its DNSSEC record and its HTTPS
    /// document must agree), and the key pinned for it.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Run an organization's gateway: this profile's daemon, taking kith calls to the services of
    /// gateway.toml and bridging them to the organization's SIP phones, and SIP calls to kith users.
    Gateway {
        /// The gateway's configuration (PBX, services, dial plan): see README, "Running a gateway".
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        args: DaemonArgs,
    },
    /// End a call (or stop calling).
    Hangup { call: Option<String> },
    /// Calls in progress and the call log (duration, outcome, statistics).
    Calls {
        /// Stay and show calls as they come, ring, are answered and end (Ctrl-C ends).
        #[arg(long)]
        watch: bool,
    },
    /// Follow what the daemon does, live: messages, deliveries, calls, contacts online, mail (Ctrl-C
    /// ends). With --json, one JSON object a line.
    Events {
        /// Only these event types (comma-separated, e.g. message,call_incoming).
        #[arg(long = "type", value_delimiter = ',', value_name = "TYPE")]
        types: Vec<String>,
    },
    /// List contact requests (messages from people who are not your contacts).
    Requests,
    /// Accept a contact request: the person becomes a contact and their messages a chat.
    Accept {
        /// The request's name or address, as `kith requests` shows it.
        request: String,
        /// Your name for the new contact (default: the name on their card).
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the node: address, endpoint, connections, queues.
    Status,
    /// Start three nodes on loopback, exchange cards and messages, crash and restart one, print what happened.
    Demo {
        /// Messages per direction.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Keep the temporary profiles and logs instead of removing them.
        #[arg(long)]
        keep: bool,
    },
    /// Measure how many bridged calls (Opus over QUIC <-> PCMU over RTP) the gateway's media path carries
    /// with every frame on time, and its CPU per call beside the codecs alone; print and save numbers.
    BenchGateway {
        /// Calls at once, step by step (stops at the first step with late frames).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10,25,50,75,100,125,150,200"
        )]
        steps: Vec<usize>,
        /// Seconds measured per step.
        #[arg(long, default_value_t = 8.0)]
        secs: f64,
        /// Where the numbers are saved (JSON; the set-up times beside it, in NAME-setup.json).
        #[arg(long, default_value = "bench-gateway.json")]
        out: PathBuf,
        /// Then this many calls each way through real SIP peers (Kamailio, baresip), timing how long
        /// they take to ring (0: not measured).
        #[arg(long, default_value_t = 10)]
        setup_calls: usize,
        /// Only the set-up times (no media steps).
        #[arg(long)]
        setup_only: bool,
    },
    /// The set-up part of `kith bench-gateway`, inside its own network namespace.
    #[command(hide = true)]
    BenchGatewaySetup {
        #[arg(long)]
        calls: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// The organization part of `kith demo`, inside its own network namespace (run by `kith demo`).
    #[command(hide = true)]
    DemoOrg {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Measure offline delivery through a mailbox (time to show a backlog, deposits per second, bytes per
    /// message, ratchet cost) beside the direct path; print and save numbers.
    BenchMailbox {
        /// Backlog sizes to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        messages: Vec<usize>,
        /// Write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure messaging latency and throughput between two daemons on loopback; print and save numbers.
    Bench {
        /// Messages for the latency run.
        #[arg(long, default_value_t = 500)]
        latency_messages: usize,
        /// Messages for the throughput run.
        #[arg(long, default_value_t = 5000)]
        throughput_messages: usize,
        /// Write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Options of a running node (`kith daemon`, `kith mailbox`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
struct DaemonArgs {
    /// UDP address to listen on (default: the one in config.toml).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// DHT nodes to join through, host:port (comma-separated or repeated); replaces config.toml's list.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    bootstrap: Option<Vec<String>>,
    /// Do not join the DHT (contacts are then reached only through their card hints).
    #[arg(long)]
    no_dht: bool,
    /// Publish direct IP addresses in the discovery record (anyone with your address can read them).
    #[arg(long)]
    publish_direct: bool,
    /// Discovery period length in minutes (default from config.toml: 1440).
    #[arg(long, value_name = "MINUTES")]
    period_minutes: Option<u64>,
    /// Relay server URL (comma-separated or repeated); replaces config.toml's list.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    relay: Option<Vec<String>>,
    /// Send everything through the relays: no peer ever learns this machine's IP address.
    #[arg(long)]
    relay_only: bool,
    /// Local IPv4 address of the DHT node (default from config.toml).
    #[arg(long, value_name = "IP")]
    dht_bind: Option<std::net::Ipv4Addr>,
    /// Take no contact requests: only contacts can reach you or learn whether you are online.
    #[arg(long)]
    no_requests: bool,
    /// Impair outgoing call media, for tests and benchmarks: `loss=20,burst=3,delay=30,jitter=10,seed=1`
    /// (loss in percent, times in ms).
    #[arg(long, value_name = "SPEC")]
    impair: Option<String>,
    /// Seconds a message waits for a direct delivery before it also goes to the contact's mailboxes
    /// (default from config.toml: 10).
    #[arg(long, value_name = "SECONDS")]
    mailbox_after: Option<f64>,
    /// Most messages the mailboxes this node keeps take from one contact (default from config.toml).
    #[arg(long, value_name = "N")]
    mailbox_per_contact_messages: Option<u64>,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Print this gateway device's enrollment for the organization's admin (`kith org enroll DOMAIN
    /// <enrollment>`): its device key, its fixed endpoint and where customers reach it.
    Request {
        /// An address customers dial (the gateway's public IP and its kith port); repeat for several.
        /// Default: the profile's listen address, unless it is every interface.
        #[arg(long = "addr", value_name = "IP:PORT")]
        addrs: Vec<std::net::SocketAddr>,
        /// A relay URL it is reachable through; repeat for several (default: the profile's relays).
        #[arg(long = "relay", value_name = "URL")]
        relays: Vec<String>,
    },
    /// Install the grant the admin printed (`kith-grant:...`): this device then speaks for the
    /// organization's account.
    Grant { grant: String },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Look the domain up (DNSSEC-validated `_kith` TXT record and https://DOMAIN/.well-known/kith.json),
    /// show whether it is verified and the fingerprint to compare out of band, and pin its key.
    Verify { domain: String },
    /// Forget the key pinned for the domain: only after checking the new fingerprint with the
    /// organization by another way.
    Forget { domain: String },
    /// (Admin, with the organization's account profile; no daemon.) Enroll a gateway device from the
    /// enrollment it printed (`kith device request`): prints the grant to install on it and what to
    /// publish (the TXT record and kith.json, with the new list of gateways).
    Enroll {
        domain: String,
        enrollment: String,
        /// Also write the TXT record and kith.json to this folder.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// (Admin.) Take the gateway NAME off the domain's list: once the new list is published, customers
    /// refuse that device. Prints what to publish.
    Revoke {
        domain: String,
        name: String,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// (Admin.) Sign the domain's list of gateways again and print what to publish: also what renews it
    /// before it expires, and where the services and validity are set.
    Publish {
        domain: String,
        /// The services customers may call (comma-separated; default: as before, or "support").
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<String>>,
        /// How many days the statements and the list hold (default: as before, or 30).
        #[arg(long)]
        days: Option<u64>,
        /// Whether clients may believe one channel when the other has nothing (default: as before, no).
        #[arg(long)]
        alone: Option<bool>,
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum MailboxCommand {
    /// Keep sealed mail for the contact NAME while it is away (it cannot be read here, nor its senders
    /// told apart by more than a token that changes every period).
    Host { name: String },
    /// Use the contact NAME as one of your mailboxes (it runs `kith mailbox host` for you).
    Use { name: String },
    /// Your mailboxes (reachable or not), and whom this node keeps mail for (the same as no subcommand).
    List,
    /// Run this profile as a headless mailbox in the foreground (for an always-on machine of your own): it
    /// keeps mail for each of its contacts that names it, and declines calls.
    Serve {
        /// Node options (as for `kith daemon`).
        #[command(flatten)]
        args: DaemonArgs,
    },
}

#[derive(Subcommand)]
enum AudioCommand {
    /// List the sound cards calls can use (names for --input-device/--output-device and config.toml's
    /// audio_input/audio_output).
    Devices,
}

/// Where a call's audio comes from and goes to (the daemon plays and records; paths are on its machine).
#[derive(clap::Args, Debug, Clone)]
pub struct AudioArgs {
    /// Send this 48 kHz mono 16-bit WAV file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tone", "null", "input_device"])]
    input_wav: Option<PathBuf>,
    /// Speak into this sound card (a name from `kith audio devices`, or "default"). Without any input
    /// option the profile's audio_input is used.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["tone", "null"])]
    input_device: Option<String>,
    /// Hear on this sound card. Without it: the profile's audio_output, unless --record-wav or --null.
    #[arg(long, value_name = "NAME")]
    output_device: Option<String>,
    /// Send a sine tone (Hz).
    #[arg(long, value_name = "HZ", num_args = 0..=1, default_missing_value = "440")]
    tone: Option<f32>,
    /// Send silence and use no sound card (for machines without one).
    #[arg(long)]
    null: bool,
    /// Record what you hear into this WAV file.
    #[arg(long, value_name = "FILE")]
    record_wav: Option<PathBuf>,
    /// Hang up after this many seconds of talk.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Frame length of a call you place: 10 or 20 ms (the callee follows the caller).
    #[arg(long, value_name = "MS")]
    frame_ms: Option<u8>,
    /// Print the call statistics every second.
    #[arg(long)]
    stats: bool,
}

impl AudioArgs {
    fn body(&self) -> Value {
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let input = match (&self.input_wav, self.tone, self.null, &self.input_device) {
            (Some(p), _, _, _) => json!({ "wav": abs(p) }),
            (None, Some(hz), _, _) => json!({ "tone": hz }),
            (None, None, true, _) => json!("null"),
            (None, None, false, Some(d)) => json!({ "device": d }),
            (None, None, false, None) => Value::Null,
        };
        json!({
            "input": input,
            "output_device": self.output_device,
            "record_wav": self.record_wav.as_ref().map(abs),
            "duration_secs": self.duration,
            "frame_ms": self.frame_ms,
        })
    }
}

/// Follows call `id` on the event stream until it ends; prints progress (and statistics with `stats`).
/// Ctrl-C hangs up. Returns the final event.
async fn follow_call(
    client: &Client,
    watcher: &crate::client::Watcher,
    id: &str,
    stats: bool,
    json_mode: bool,
) -> anyhow::Result<Value> {
    let mut printed = std::collections::HashSet::new();
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let events = watcher.call_events();
        let seen = events.len();
        for e in events {
            if e["call"].as_str() != Some(id) {
                continue;
            }
            let kind = e["type"].as_str().unwrap_or("").to_owned();
            if kind == "call_held" && !json_mode {
                if e["held"] == true {
                    crate::say!("{} put the call on hold", s(&e, "with"));
                } else {
                    crate::say!("{} took the call off hold", s(&e, "with"));
                }
                continue;
            }
            if !printed.insert(kind.clone()) {
                continue;
            }
            match kind.as_str() {
                "call_ringing" if !json_mode => crate::say!("ringing {}...", s(&e, "to")),
                "call_answered" if !json_mode => crate::say!("in a call with {}", s(&e, "with")),
                "call_ended" => {
                    if json_mode {
                        crate::say!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
                    } else {
                        let talked = e["talked_secs"]
                            .as_f64()
                            .map(|t| format!(", talked {t:.1} s"))
                            .unwrap_or_default();
                        crate::say!("call ended: {}{talked}", s(&e, "outcome"));
                        if let Some(why) = e["reason"].as_str() {
                            crate::say!("  {}", crate::text::visible(why));
                        }
                        if !e["stats"].is_null() {
                            crate::say!("  {}", stats_line(&e["stats"]));
                            crate::say!(
                                "  audio in: {}; out: {}",
                                s(&e["stats"], "input"),
                                s(&e["stats"], "output")
                            );
                        }
                    }
                    return Ok(e);
                }
                _ => {}
            }
        }
        tokio::select! {
            _ = watcher.wait_for(Duration::from_millis(500), |w| w.call_events().len() > seen) => {}
            _ = tick.tick(), if stats => {
                if let Ok(v) = client.get("/v1/calls").await
                    && let Some(c) = v["live"].as_array().and_then(|l| l.iter().find(|c| c["call"].as_str() == Some(id)))
                    && !c["stats"].is_null()
                {
                    crate::say!("  {}", stats_line(&c["stats"]));
                }
            }
            _ = &mut ctrl_c => {
                let _ = client.post("/v1/calls/hangup", json!({ "call": id })).await;
            }
        }
    }
}

fn stats_line(s: &Value) -> String {
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    format!(
        "{} | {} ms frames, {:.0} kbit/s, FEC {} (loss hint {} %), {} redundant cop{} | rtt {} | loss {:.1} % before FEC, {:.1} % after | {} FEC frames, {} from copies, {} concealed, {} late, {} of comfort noise (pauses) | jitter {:.1} ms, buffer {:.0} ms",
        s["codec"].as_str().unwrap_or("?"),
        s["frame_ms"],
        f("bitrate") / 1000.0,
        if s["fec"] == true { "on" } else { "off" },
        s["loss_hint_pct"],
        s["redundancy"],
        if s["redundancy"] == 1 { "y" } else { "ies" },
        s["rtt_ms"]
            .as_f64()
            .map(|r| format!("{r:.1} ms"))
            .unwrap_or_else(|| "-".into()),
        f("loss_before_fec_pct"),
        f("loss_after_fec_pct"),
        s["fec_frames"],
        s["red_frames"],
        s["concealed_frames"],
        s["late"],
        s["comfort_noise_frames"],
        f("jitter_ms"),
        f("jitter_buffer_ms"),
    )
}

/// An error and its causes, each said once: error types that show their source in their own text
/// (`#[error("{0}")]` over a `#[from]`) would otherwise print the same words two or three times.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

/// An error as `--json` prints it (on standard output, in place of the data; the exit status tells which),
/// in the shape the control API uses: `{"error": "...", "kind": "user" | "internal"}`.
fn json_error(message: &str, user: bool) {
    let v = json!({ "error": message, "kind": if user { "user" } else { "internal" } });
    crate::say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if !e.use_stderr() {
                // --help, --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // The flag may stand anywhere, also after the mistake clap stopped at.
            if std::env::args_os().skip(1).any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("bad arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                json_error(&format!("{first} (`kith --help` lists the commands)"), true);
            } else {
                let _ = e.print();
            }
            return ExitCode::from(2);
        }
    };
    let json_mode = cli.json;
    if std::env::var_os(crate::bench_discovery::DHT_AS_PUBLISHED).is_some_and(|v| v == "1") {
        // The benchmark's reference: DHT queries as mainline published them.
        kith_net::dht::set_adaptive_queries(false);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let message = format!("cannot start the async runtime: {e}");
            if json_mode {
                json_error(&message, false);
            } else {
                eprintln!("kith: {message}");
            }
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (message, user) = match crate::client::user_message(&e) {
                Some(u) => (u, true),
                None => (error_text(&e), false),
            };
            if json_mode {
                json_error(&message, user);
            } else {
                eprintln!("kith: {message}");
            }
            ExitCode::from(if user { 2 } else { 1 })
        }
    }
}

/// Runs `f` with this process's standard error going to /dev/null. Probing sound cards loads ALSA's
/// plugins, and some (JACK's, when no JACK server runs) print their failures there: noise to someone
/// listing devices. `f` returns its own errors, printed afterwards; standard error comes back even if
/// `f` panics.
fn without_stderr<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(Option<std::os::fd::OwnedFd>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(fd) = self.0.take() {
                let _ = rustix::stdio::dup2_stderr(&fd);
            }
        }
    }
    let saved = rustix::io::dup(std::io::stderr()).ok();
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .ok();
    let _restore = match (saved, null) {
        (Some(saved), Some(null)) if rustix::stdio::dup2_stderr(&null).is_ok() => {
            Restore(Some(saved))
        }
        _ => Restore(None),
    };
    f()
}

fn home_dir(cli_home: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match cli_home {
        Some(h) => Ok(h),
        None => directories::ProjectDirs::from("", "", "kith")
            .map(|d| d.data_dir().to_owned())
            .ok_or_else(|| user("cannot find a home directory for the profile: pass --home DIR or set KITH_HOME")),
    }
}

/// A free UDP port on 127.0.0.1 (`local`) or every interface, for a new profile to keep.
fn free_port(local: bool) -> u16 {
    std::net::UdpSocket::bind((
        if local {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            std::net::Ipv4Addr::UNSPECIFIED
        },
        0,
    ))
    .and_then(|s| s.local_addr())
    .map(|a| a.port())
    .unwrap_or(0)
}

/// Opens the profile in `home` and unlocks its keys (the passphrase from KITH_PASSPHRASE or a prompt).
fn unlock_profile(
    home: &std::path::Path,
) -> anyhow::Result<(Profile, kith_node::profile::Identity)> {
    let profile = Profile::new(home);
    if !profile.exists() {
        return Err(profile_error(kith_node::ProfileError::Missing(
            home.to_owned(),
        )));
    }
    let pass = if profile.is_encrypted().map_err(profile_error)? {
        passphrase("Passphrase: ", false)?
    } else {
        None
    };
    let id = profile.unlock(pass.as_deref()).map_err(profile_error)?;
    Ok((profile, id))
}

/// Prints what an organization publishes (and writes it to `dir`): the TXT record as a zone file line
/// (split in strings of 255 bytes at most) and the HTTPS document.
fn print_publication(
    json_mode: bool,
    p: &kith_node::org_admin::Publication,
    dir: Option<&std::path::Path>,
    grant: Option<&str>,
) -> anyhow::Result<()> {
    let zone_line = format!(
        "_kith.{}. 300 IN TXT {}",
        p.domain,
        p.txt
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, text) in [
            ("kith.txt", &p.txt),
            ("kith.zone", &zone_line),
            ("kith.json", &p.document),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, format!("{text}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["zone_line"] = json!(zone_line);
    if let Some(g) = grant {
        v["grant"] = json!(g);
    }
    out(json_mode, &v, |_| {
        if let Some(g) = grant {
            crate::say!("Grant for the gateway (install with `kith device grant <grant>` on it):");
            crate::say!("{g}");
            crate::say!("");
        }
        crate::say!(
            "{}: list of gateways number {} ({}), services {}, valid until Unix time {} ({} days). Publish both:",
            p.domain,
            p.seq,
            if p.gateways.is_empty() {
                "none".to_string()
            } else {
                p.gateways.join(", ")
            },
            p.services.join(","),
            p.expires,
            (p.expires.saturating_sub(kith_node::node::unix_now()) + 43_199) / 86_400
        );
        crate::say!("In the DNSSEC-signed zone of {}:", p.domain);
        crate::say!("{zone_line}");
        crate::say!("At https://{}/.well-known/kith.json:", p.domain);
        crate::say!("{}", p.document);
        crate::say!("Fingerprint for customers to compare: {}", p.fingerprint);
        if let Some(dir) = dir {
            crate::say!(
                "(also written to {}: kith.txt, kith.zone, kith.json)",
                dir.display()
            );
        }
    });
    Ok(())
}

/// The passphrase: KITH_PASSPHRASE if set, else a prompt when a terminal is attached and `needed`.
fn passphrase(prompt: &str, confirm: bool) -> anyhow::Result<Option<String>> {
    if let Ok(p) = std::env::var("KITH_PASSPHRASE") {
        return Ok(Some(p));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let p = rpassword::prompt_password(prompt).context("reading the passphrase")?;
    if confirm && !p.is_empty() {
        let again = rpassword::prompt_password("Repeat the passphrase: ")
            .context("reading the passphrase")?;
        if again != p {
            return Err(user("the two passphrases differ: nothing was created"));
        }
    }
    Ok(Some(p))
}

fn profile_error(e: kith_node::ProfileError) -> anyhow::Error {
    match e {
        // A file that is not there or not ours to read is the user's to fix; other I/O failures are not.
        kith_node::ProfileError::Io { ref source, .. }
            if !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            anyhow::Error::from(e)
        }
        other => user(other.to_string()),
    }
}

fn print_qr(text: &str) -> anyhow::Result<()> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.to_uppercase().as_bytes())
        .map_err(|e| anyhow::anyhow!("QR code: {e}"))?;
    let image = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    crate::say!("{image}");
    Ok(())
}

fn out(json_mode: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json_mode {
        crate::say!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

/// A string field for text output, with control characters shown rather than sent to the terminal
/// (names, texts and reasons may come from other people: `crate::text`).
fn s<'a>(v: &'a Value, k: &str) -> std::borrow::Cow<'a, str> {
    visible(v.get(k).and_then(Value::as_str).unwrap_or(""))
}

/// The contact `name` as `/v1/contacts` lists it (names compared regardless of case).
async fn contact_of(client: &Client, name: &str) -> Option<Value> {
    let list = client.get("/v1/contacts").await.ok()?;
    list.as_array()?
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.to_lowercase() == name.to_lowercase())
        })
        .cloned()
}

/// Why messages to contact `c` wait, when its last dial failed: "bob is not reachable now: ...".
fn unreached(c: &Value) -> Option<String> {
    let why = c["why_unreached"].as_str()?;
    Some(format!(
        "{} is not reachable now: {}{}",
        s(c, "name"),
        visible(why),
        match c["waiting"].as_u64() {
            Some(n) if n > 0 => format!(" ({n} message{} waiting)", if n == 1 { "" } else { "s" }),
            _ => String::new(),
        }
    ))
}

/// Prints the daemon's events as they come, those whose type `want` takes, until Ctrl-C or the daemon
/// stops.
/// How long `kith send` keeps trying when the daemon stopped before it answered.
const UNANSWERED_RETRY: std::time::Duration = std::time::Duration::from_secs(15);

/// Posts `body`, which carries the idempotency key `key`, and if the daemon stops before it answers
/// (so whether it was carried out is unknown) posts it again, to the daemon as it comes back, for up to
/// [`UNANSWERED_RETRY`]: the key makes the repeat harmless. A daemon that was not running at the first
/// try received nothing, and is reported at once.
async fn post_at_most_once(
    home: &Path,
    path: &str,
    body: Value,
    key: &str,
) -> anyhow::Result<Value> {
    use crate::client::{NotRunning, Unanswered};
    let deadline = std::time::Instant::now() + UNANSWERED_RETRY;
    let mut wait = std::time::Duration::from_millis(100);
    let mut first = true;
    loop {
        let attempt = match Client::for_profile(home) {
            Ok(client) => client.post(path, body.clone()).await,
            Err(e) => Err(e),
        };
        let unknown = match attempt {
            Ok(v) => return Ok(v),
            Err(e) if e.is::<Unanswered>() => e,
            // Gone after an unanswered try: it may be restarting.
            Err(e) if !first && e.is::<NotRunning>() => e,
            Err(e) => return Err(e),
        };
        first = false;
        if std::time::Instant::now() + wait > deadline {
            return Err(user(format!(
                "{unknown}: the daemon stopped before it answered, so whether the message was queued \
                 is unknown. Once the daemon runs, send again with `--idempotency-key {key}`: if it \
                 was queued, it is not sent a second time"
            )));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(std::time::Duration::from_secs(2));
    }
}

async fn follow_events(
    client: &Client,
    json_mode: bool,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let events = client.events().await?;
    // On standard error also with --json: whoever reads the JSON lines knows the subscription stands.
    eprintln!("Following the daemon's events (Ctrl-C ends).");
    print_events(events, json_mode, want).await;
    Ok(())
}

async fn print_events(
    events: impl futures_util::Stream<Item = Value>,
    json_mode: bool,
    want: impl Fn(&str) -> bool,
) {
    use futures_util::StreamExt;
    let mut events = std::pin::pin!(events);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let e = tokio::select! {
            e = events.next() => match e {
                Some(e) => e,
                None => {
                    eprintln!("kith: the daemon closed the event stream (it stopped)");
                    return;
                }
            },
            _ = &mut ctrl_c => return,
        };
        let kind = e["type"].as_str().unwrap_or("");
        if !want(kind) {
            continue;
        }
        if json_mode {
            crate::say!("{}", serde_json::to_string(&e).unwrap_or_default());
        } else {
            let at = chrono::Local::now().format("%H:%M:%S");
            crate::say!("{at}  {}", describe_event(&e));
        }
    }
}

/// One event in words.
fn describe_event(e: &Value) -> String {
    let short = |k: &str| {
        let id = s(e, k);
        id.chars().take(8).collect::<String>()
    };
    match e["type"].as_str().unwrap_or("") {
        "message" if e["request"] == true => format!(
            "contact request from {}: {}",
            s(e, "from"),
            visible_lines(e["text"].as_str().unwrap_or("")).join(" / ")
        ),
        "message" => format!(
            "{}: {}",
            s(e, "from"),
            visible_lines(e["text"].as_str().unwrap_or("")).join(" / ")
        ),
        "message_state" => format!(
            "#{} to {}: {}",
            e["seq"],
            s(e, "to"),
            s(e, "state").replace('_', " ")
        ),
        "peer" if e["online"] == true => format!("{} is online ({})", s(e, "name"), s(e, "path")),
        "peer" => format!("{} went offline", s(e, "name")),
        "call_incoming" => format!(
            "incoming call from {} ({}), call {}: `kith answer` or `kith reject`",
            s(e, "from"),
            if e["verified"] == true {
                "verified"
            } else {
                "not verified"
            },
            short("call")
        ),
        "call_ringing" => format!("ringing {} (call {})", s(e, "to"), short("call")),
        "call_held" => format!(
            "{} {} (call {})",
            s(e, "with"),
            if e["held"] == true {
                "put the call on hold"
            } else {
                "took the call off hold"
            },
            short("call")
        ),
        "call_answered" => format!("in a call with {} (call {})", s(e, "with"), short("call")),
        "call_ended" => format!(
            "call with {} ended: {}{}{}",
            s(e, "with"),
            s(e, "outcome"),
            e["talked_secs"]
                .as_f64()
                .map(|t| format!(", talked {t:.0} s"))
                .unwrap_or_default(),
            e["reason"]
                .as_str()
                .map(|r| format!(" ({})", crate::text::visible(r)))
                .unwrap_or_default()
        ),
        "key_changed" => format!(
            "WARNING: {} connected from a device you have not seen before: nothing is sent until you run `kith verify {} --confirm`",
            s(e, "name"),
            s(e, "name")
        ),
        "request" => format!("new contact request from {}", s(e, "name")),
        "mail_deposited" => format!(
            "{} message(s) for {} left in their mailboxes",
            e["messages"],
            s(e, "to")
        ),
        "mail_deposit_failed" => format!(
            "{} message(s) for {} wait: {}",
            e["left"],
            s(e, "to"),
            s(e, "reason")
        ),
        "mail_fetched" => format!(
            "{} message(s) fetched from mailbox {}",
            e["messages"],
            s(e, "mailbox")
        ),
        "relay_added" => format!("using relay {} ({} ms)", s(e, "url"), e["rtt_ms"]),
        other => {
            let mut rest = e.clone();
            if let Some(o) = rest.as_object_mut() {
                o.remove("type");
            }
            format!("{}: {}", visible(other), visible(&rest.to_string()))
        }
    }
}

/// What `kith chat` has shown: each message once, and again only when its state changed.
#[derive(Default)]
struct ChatShown {
    states: std::collections::HashMap<(bool, u64), String>,
    day: Option<chrono::NaiveDate>,
}

impl ChatShown {
    /// Records `m`; returns whether it is new or its state changed.
    fn seen(&mut self, m: &Value) -> bool {
        let key = (m["outgoing"] == true, m["seq"].as_u64().unwrap_or(0));
        let state = m["state"].as_str().unwrap_or("").to_owned();
        self.states.insert(key, state.clone()) != Some(state)
    }

    /// Prints the messages of `v` not shown yet, and a line for each whose state changed since.
    fn print(&mut self, v: &Value, name: &str) {
        for m in v.as_array().cloned().unwrap_or_default() {
            let key = (m["outgoing"] == true, m["seq"].as_u64().unwrap_or(0));
            let known = self.states.contains_key(&key);
            if !self.seen(&m) {
                continue;
            }
            if known {
                crate::say!(
                    "{:>5}  (#{} to {}: {})",
                    "",
                    key.1,
                    visible(name),
                    state_of(&m)
                );
                continue;
            }
            let sent = local_time(m["sent_at_ms"].as_i64());
            if let Some(t) = sent
                && self.day != Some(t.date_naive())
            {
                self.day = Some(t.date_naive());
                crate::say!("-- {} --", t.format("%A %-d %B %Y"));
            }
            let at = sent
                .map(|t| t.format("%H:%M").to_string())
                .unwrap_or_default();
            let who = if key.0 {
                "me".to_string()
            } else {
                visible(name).into_owned()
            };
            let text = m["text"].as_str().unwrap_or("");
            let mut lines = visible_lines(text).into_iter();
            let first = lines.next().unwrap_or_default();
            let tail = if key.0 {
                format!("  [{}]", state_of(&m))
            } else {
                String::new()
            };
            crate::say!("{at:>5}  {who}: {first}{tail}");
            // Further lines of a multi-line message, indented under its first.
            for l in lines {
                crate::say!("{:>5}  {:width$}  {l}", "", "", width = who.chars().count());
            }
        }
    }
}

/// A message's state as a person reads it: "delivered 14:02", "in a mailbox", "queued".
fn state_of(m: &Value) -> String {
    let state = m["state"].as_str().unwrap_or("");
    match (state, local_time(m["delivered_at_ms"].as_i64())) {
        ("delivered", Some(t)) => format!("delivered {}", t.format("%H:%M")),
        _ => state.replace('_', " "),
    }
}

fn local_time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Local>> {
    chrono::DateTime::from_timestamp_millis(ms?).map(|t| t.with_timezone(&chrono::Local))
}

/// A name or address the user typed must not be empty (an empty one reached the API as a missing path
/// segment, and came back as "unknown error").
fn named(what: &str, value: &str) -> anyhow::Result<()> {
    if value.trim().is_empty() {
        return Err(user(format!(
            "the {what} name is empty: give a name as `kith contacts` shows it, or an address"
        )));
    }
    Ok(())
}

/// The text `kith send` sends: the argument, or standard input for "-" (or no argument), or a file.
fn message_text(text: Option<String>, file: Option<PathBuf>) -> anyhow::Result<String> {
    use std::io::Read;
    let from = |what: String, bytes: std::io::Result<Vec<u8>>| -> anyhow::Result<String> {
        let bytes = bytes.map_err(|e| user(format!("cannot read {what}: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            user(format!(
                "{what} is not UTF-8 text: kith sends text messages"
            ))
        })?;
        // What a shell or an editor puts at the end is not part of the message.
        Ok(text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text)
            .to_owned())
    };
    match (text, file) {
        (Some(t), None) if t != "-" => Ok(t),
        (_, Some(path)) => from(path.display().to_string(), std::fs::read(&path)),
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!("Type the message; end it with Ctrl-D on a line of its own.");
            }
            let mut buf = Vec::new();
            let read = std::io::stdin().read_to_end(&mut buf).map(|_| buf);
            from("standard input".into(), read)
        }
    }
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            let now = kith_node::node::unix_ms();
            let ago = (now - ms).max(0) / 1000;
            match ago {
                0..=59 => format!("{ago}s ago"),
                60..=3599 => format!("{}m ago", ago / 60),
                3600..=86399 => format!("{}h ago", ago / 3600),
                _ => format!("{}d ago", ago / 86400),
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let json_mode = cli.json;
    let home = || home_dir(cli.home.clone());
    match cli.command {
        Command::Init {
            name,
            all_interfaces,
            gateway,
            port,
        } => {
            let local = !all_interfaces;
            let home = home()?;
            let profile = Profile::new(&home);
            if profile.exists() {
                return Err(profile_error(kith_node::ProfileError::Exists(home)));
            }
            let name = name.unwrap_or_else(|| {
                std::env::var("USER")
                    .ok()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "kith user".into())
            });
            kith_core::card::check_name(&name).map_err(|e| user(e.to_string()))?;
            if gateway {
                kith_core::org::roster::check_gateway_name(&name)
                    .map_err(|e| user(format!("--name: {e}")))?;
            }
            let pass = passphrase("Passphrase to encrypt your keys (empty for none): ", true)?;
            if pass.as_deref().is_none_or(str::is_empty) {
                // Said on stderr, so that a script that reads the address from stdout still sees it.
                eprintln!(
                    "kith: warning: {}: your secret keys are stored unencrypted in {}, protected only by \
                     the file's permissions. Set a passphrase with `kith passphrase` (or KITH_PASSPHRASE at init).",
                    if pass.is_none() {
                        "no passphrase was given (KITH_PASSPHRASE is unset and there is no terminal to ask at)"
                    } else {
                        "the passphrase is empty"
                    },
                    home.join(kith_node::profile::IDENTITY_FILE).display()
                );
            }
            // Pick the UDP port now, so the contact cards we hand out stay valid across restarts.
            let port = port.unwrap_or_else(|| free_port(local));
            if gateway {
                let device = profile
                    .init_gateway(&name, pass.as_deref(), port, local)
                    .map_err(profile_error)?;
                out(
                    json_mode,
                    &json!({ "gateway": name, "device": hex::encode(device.as_bytes()), "home": home, "port": port }),
                    |_| {
                        crate::say!(
                            "Created gateway device {:?} in {} (kith port {port})",
                            name,
                            home.display(),
                        );
                        crate::say!(
                            "Next: `kith --home {} device request --addr <public IP>:{port}`, give what it \
                             prints to the organization's admin (`kith org enroll DOMAIN <enrollment>`), then \
                             install the grant with `kith device grant <grant>` and run `kith gateway`.",
                            home.display(),
                        );
                    },
                );
                return Ok(());
            }
            let public = profile
                .init(&name, pass.as_deref(), port, local)
                .map_err(profile_error)?;
            let address = kith_core::Address::new(public.account).to_string();
            out(
                json_mode,
                &json!({ "address": address, "name": name, "home": home, "encrypted": pass.is_some_and(|p| !p.is_empty()) }),
                |v| {
                    crate::say!("Created profile {:?} in {}", name, home.display());
                    crate::say!("Your address: {}", s(v, "address"));
                    crate::say!(
                        "Next: `kith --home {} daemon`, then `kith card` to share your contact card.",
                        home.display()
                    );
                },
            );
        }
        Command::Backup { file } => {
            let home = home()?;
            let profile = Profile::new(&home);
            if !profile.exists() {
                return Err(profile_error(kith_node::ProfileError::Missing(home)));
            }
            let encrypted = profile.is_encrypted().map_err(profile_error)?;
            let pass = if encrypted {
                passphrase("Passphrase: ", false)?
            } else {
                passphrase("Passphrase for the backup: ", true)?
            };
            let Some(pass) = pass.filter(|p| !p.is_empty()) else {
                return Err(user(
                    "a backup holds your secret keys and your history: give it a passphrase (KITH_PASSPHRASE, or run in a terminal to be asked)",
                ));
            };
            let summary = profile.backup(&file, &pass).map_err(profile_error)?;
            out(json_mode, &serde_json::to_value(&summary)?, |_| {
                crate::say!(
                    "Backup written to {} ({} bytes, encrypted). Restore it with `kith restore {}`.",
                    file.display(),
                    summary.bytes,
                    file.display()
                );
            });
        }
        Command::Restore { file } => {
            let home = home()?;
            let profile = Profile::new(&home);
            let Some(pass) =
                passphrase("Passphrase of the backup: ", false)?.filter(|p| !p.is_empty())
            else {
                return Err(user(
                    "the backup is encrypted: give its passphrase (KITH_PASSPHRASE, or run in a terminal to be asked)",
                ));
            };
            let summary = profile.restore(&file, &pass).map_err(profile_error)?;
            out(json_mode, &serde_json::to_value(&summary)?, |_| {
                crate::say!(
                    "Restored {:?} ({}) from {} into {}, as a new device of the same account.",
                    summary.name,
                    summary.address,
                    file.display(),
                    home.display()
                );
                if summary.requeued > 0 {
                    crate::say!(
                        "{} undelivered message{} will go out again when the daemon runs.",
                        summary.requeued,
                        if summary.requeued == 1 { "" } else { "s" }
                    );
                }
                if let Some(aside) = &summary.replaced {
                    crate::say!("The profile that was there is kept in {}.", aside.display());
                }
                crate::say!("Start it with `kith --home {} daemon`.", home.display());
            });
        }
        Command::Passphrase => {
            let home = home()?;
            let profile = Profile::new(&home);
            if !profile.exists() {
                return Err(profile_error(kith_node::ProfileError::Missing(home)));
            }
            let old = if profile.is_encrypted().map_err(profile_error)? {
                Some(
                    passphrase("Current passphrase: ", false)?
                        .ok_or_else(|| profile_error(kith_node::ProfileError::Locked))?,
                )
            } else {
                None
            };
            // Check the current one before asking for a new one.
            profile.unlock(old.as_deref()).map_err(profile_error)?;
            let new = match std::env::var("KITH_NEW_PASSPHRASE") {
                Ok(p) => p,
                Err(_) if std::io::stdin().is_terminal() => {
                    let p = rpassword::prompt_password("New passphrase (empty for none): ")
                        .context("reading the passphrase")?;
                    let again = rpassword::prompt_password("Repeat the new passphrase: ")
                        .context("reading the passphrase")?;
                    if again != p {
                        return Err(user("the two passphrases differ: nothing was changed"));
                    }
                    p
                }
                Err(_) => {
                    return Err(user(
                        "no new passphrase: set KITH_NEW_PASSPHRASE (empty for none) or run in a terminal to be asked",
                    ));
                }
            };
            let encrypted = profile
                .change_passphrase(old.as_deref(), Some(&new))
                .map_err(profile_error)?;
            out(json_mode, &json!({ "encrypted": encrypted }), |_| {
                if encrypted {
                    crate::say!(
                        "Passphrase changed: your secret keys are encrypted with the new one."
                    );
                } else {
                    crate::say!(
                        "Passphrase removed: your secret keys are stored unencrypted, protected only by the file's permissions."
                    );
                }
            });
        }
        Command::Testnet { nodes, out, bind } => {
            if nodes == 0 || nodes > 2000 {
                return Err(user("--nodes must be between 1 and 2000"));
            }
            let net = crate::testnet::Testnet::start_on(nodes, bind)
                .await
                .map_err(|e| user(format!("cannot start the testnet: {e}")))?;
            // One line, in the form `--bootstrap` takes.
            let list = net.bootstrap().join(",");
            if let Some(path) = out {
                std::fs::write(&path, format!("{list}\n"))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            crate::say!("{list}");
            eprintln!(
                "kith testnet: {nodes} DHT nodes running; pass them with `kith daemon --bootstrap ...`. Ctrl-C stops."
            );
            tokio::signal::ctrl_c().await?;
        }
        Command::Relay {
            listen,
            host,
            tls_cert,
            tls_key,
            self_signed: _,
            state,
            plain_http,
            announce_via,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => crate::relay::RelayTls::Files { cert, key },
                _ if plain_http => crate::relay::RelayTls::PlainHttp,
                _ => crate::relay::RelayTls::SelfSigned {
                    state: match state {
                        Some(s) => s,
                        None => crate::relay::default_state()?,
                    },
                },
            };
            crate::relay::run(listen, tls, host, announce_via).await?
        }
        Command::Daemon { args } => run_daemon(home()?, daemon_options(args, false)?).await?,
        Command::Id { qr } => {
            let home = home()?;
            let public = Profile::new(&home).public().map_err(profile_error)?;
            let address = kith_core::Address::new(public.account).to_string();
            out(
                json_mode,
                &json!({ "address": address, "name": public.name }),
                |_| crate::say!("{address}"),
            );
            if qr && !json_mode {
                print_qr(&address)?;
            }
        }
        Command::Card { qr } => {
            let client = Client::for_profile(&home()?)?;
            let v = client.get("/v1/card").await?;
            out(json_mode, &v, |v| crate::say!("{}", s(v, "card")));
            if qr && !json_mode {
                print_qr(&s(&v, "card"))?;
            }
        }
        Command::Add {
            card_or_address,
            name,
        } => {
            // An organization's service (`support@example.org`) is verified by the daemon; anything else is
            // parsed here first, so a typo is reported even when the daemon is down, and nothing is written.
            let org = kith_node::node::org_service(&card_or_address).is_some();
            if let Some(n) = &name {
                kith_core::card::check_name(n).map_err(|e| user(format!("--name: {e}")))?;
            }
            if !org {
                let parsed =
                    ParsedContact::parse(&card_or_address).map_err(|e| user(e.to_string()))?;
                if name.is_none() && matches!(parsed, ParsedContact::Address(_)) {
                    return Err(user(
                        "an address carries no name: give the contact one with --name NAME",
                    ));
                }
            }
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post(
                    "/v1/contacts",
                    json!({ "contact": card_or_address, "name": name }),
                )
                .await?;
            out(json_mode, &v, |v| {
                match v["outcome"].as_str() {
                    Some("renamed") => crate::say!(
                        "{} was already a contact, as {}: renamed to {}",
                        s(v, "address"),
                        s(v, "previous_name"),
                        s(v, "name")
                    ),
                    Some("already a contact") => crate::say!(
                        "{} is already a contact ({}): nothing changed",
                        s(v, "name"),
                        s(v, "address")
                    ),
                    _ => crate::say!("Added {} ({})", s(v, "name"), s(v, "address")),
                }
                if v["org"].is_object() {
                    crate::say!(
                        "{}  fingerprint {}",
                        s(&v["org"], "label"),
                        s(&v["org"], "fingerprint")
                    );
                }
                if v.get("has_route") == Some(&Value::Bool(false)) {
                    crate::say!(
                        "Their card was not given: kith will look them up by address in the DHT."
                    );
                }
            });
        }
        Command::Contacts => {
            let client = Client::for_profile(&home()?)?;
            let v = client.get("/v1/contacts").await?;
            out(json_mode, &v, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    crate::say!("No contacts yet. Add one with `kith add CARD --name NAME`.");
                }
                for c in list {
                    let trust = if c["key_changed"] == true {
                        "NEW DEVICE"
                    } else if c["verified"] == true {
                        "verified"
                    } else {
                        "unverified"
                    };
                    crate::say!(
                        "{:<20} {:<10} {:<18} last seen {:<10} {}",
                        s(&c, "name"),
                        trust,
                        s(&c, "reachability"),
                        fmt_ms(c["last_seen_ms"].as_i64()),
                        s(&c, "address")
                    );
                    if c["key_changed"] == true {
                        crate::say!(
                            "{:<20} !! {} connected from a device you have not seen before: nothing is sent until you check with them and run `kith verify {} --confirm`",
                            "",
                            s(&c, "name"),
                            s(&c, "name")
                        );
                    }
                    if let Some(why) = unreached(&c) {
                        crate::say!("{:<20} {why}", "");
                    }
                }
            });
        }
        Command::Remove { name } => {
            named("contact", &name)?;
            let client = Client::for_profile(&home()?)?;
            let v = client
                .delete(&format!("/v1/contacts/{}", urlencode(&name)))
                .await?;
            out(json_mode, &v, |_| {
                crate::say!("Removed {name}. The message history stays.")
            });
        }
        Command::Verify {
            name,
            confirm: true,
        } => {
            named("contact", &name)?;
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post(
                    &format!("/v1/contacts/{}/verified", urlencode(&name)),
                    json!({}),
                )
                .await?;
            out(json_mode, &v, |v| {
                crate::say!(
                    "{} is verified. Messages held for a new device of theirs go out now.",
                    s(v, "name")
                );
            });
        }
        Command::Verify { name, .. } => {
            named("contact", &name)?;
            let client = Client::for_profile(&home()?)?;
            let v = client
                .get(&format!("/v1/contacts/{}/safety-number", urlencode(&name)))
                .await?;
            out(json_mode, &v, |v| {
                // The contact's name as stored (`name` may differ in case).
                let name = v["name"].as_str().unwrap_or(&name);
                crate::say!("Safety number with {name}:");
                let number = s(v, "safety_number");
                let digits = number.split(' ').collect::<Vec<_>>();
                for row in digits.chunks(4) {
                    crate::say!("  {}", row.join(" "));
                }
                crate::say!(
                    "Compare it with what {name}'s kith shows for you. If every digit matches, no one is in between: then run `kith verify {name} --confirm`."
                );
            });
        }
        Command::Lookup { who } => {
            named("contact", &who)?;
            let client = Client::for_profile(&home()?)?;
            let v = client
                .get(&format!("/v1/lookup/{}", urlencode(&who)))
                .await?;
            out(json_mode, &v, |v| {
                if v["found"] != true {
                    crate::say!(
                        "No current record for {} in the DHT: the person has not been online in the last hours, or the DHT is not reachable (see `kith status`).",
                        s(v, "address")
                    );
                    return;
                }
                crate::say!("Record found for {}", s(v, "address"));
                crate::say!(
                    "  anyone with the address sees: {} request endpoint(s), relays {}, {} IP address(es)",
                    v["public_endpoints"],
                    v["public_relays"],
                    v["public_direct"]
                );
                crate::say!(
                    "  contacts-only part: {} ({} endpoint(s))",
                    s(v, "contact_part"),
                    v["contact_endpoints"]
                );
            });
        }
        Command::Send {
            name,
            text,
            file,
            wait,
            idempotency_key,
        } => {
            named("contact", &name)?;
            let text = message_text(text, file)?;
            let home = home()?;
            let client = Client::for_profile(&home)?;
            // Subscribe before sending, so the delivered event cannot be missed.
            let watcher = match wait {
                Some(_) => Some(crate::client::Watcher::start(&client).await?),
                None => None,
            };
            let key = idempotency_key.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
            let body = json!({ "to": name, "text": text, "idempotency_key": key });
            let mut v = post_at_most_once(&home, "/v1/messages", body, &key).await?;
            if let (Some(w), Some(secs)) = (watcher, wait) {
                let seq = v["seq"].as_u64().unwrap_or(0);
                // The contact's name as stored, which the events use (`name` may differ in case).
                let to = v["to"].as_str().unwrap_or(&name).to_owned();
                let t0 = std::time::Instant::now();
                if !w
                    .wait_for(std::time::Duration::from_secs(secs), |w| {
                        w.delivered_at(&to, seq).is_some()
                    })
                    .await
                {
                    let why = contact_of(&client, &to)
                        .await
                        .and_then(|c| unreached(&c))
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default();
                    return Err(user(format!(
                        "message #{seq} to {to} is queued but was not delivered within {secs} s{why}; kith keeps trying"
                    )));
                }
                v["state"] = json!("delivered");
                v["delivered_after_ms"] = json!(t0.elapsed().as_millis() as u64);
            }
            out(json_mode, &v, |v| match v["delivered_after_ms"].as_u64() {
                Some(ms) => crate::say!("delivered #{} to {} ({ms} ms)", v["seq"], s(v, "to")),
                None if v["repeated"] == true => crate::say!(
                    "already sent under this key: #{} to {} ({}), not sent again",
                    v["seq"],
                    s(v, "to"),
                    s(v, "state")
                ),
                None => crate::say!("queued #{} to {}", v["seq"], s(v, "to")),
            });
        }
        Command::Chat {
            name,
            limit,
            follow,
        } => {
            named("contact", &name)?;
            let client = Client::for_profile(&home()?)?;
            let path = format!("/v1/chat/{}?limit={limit}", urlencode(&name));
            // Subscribe before reading the history, so that nothing between the two is missed.
            let watcher = match follow {
                true => Some(crate::client::Watcher::start(&client).await?),
                false => None,
            };
            // What the watcher has counted before each read of the chat: an event that comes in while
            // a read is under way wakes the next one.
            let count = |w: &crate::client::Watcher| w.count("message") + w.count("message_state");
            let mut seen = watcher.as_ref().map(count).unwrap_or(0);
            let v = client.get(&path).await?;
            let mut shown = ChatShown::default();
            if json_mode {
                for m in v.as_array().into_iter().flatten() {
                    shown.seen(m);
                }
                crate::say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                shown.print(&v, &name);
                let waiting = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["outgoing"] == true && m["state"] != "delivered");
                if waiting
                    && let Some(why) = contact_of(&client, &name).await.and_then(|c| unreached(&c))
                {
                    crate::say!("{why}");
                }
            }
            if let Some(w) = watcher {
                let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
                loop {
                    tokio::select! {
                        _ = w.wait_for(Duration::from_secs(3600), |w| count(w) > seen) => {}
                        _ = &mut ctrl_c => return Ok(()),
                    }
                    seen = count(&w);
                    let v = client.get(&path).await?;
                    if json_mode {
                        // One JSON object a line for each new or changed message.
                        for m in v.as_array().into_iter().flatten() {
                            if shown.seen(m) {
                                crate::say!("{}", serde_json::to_string(m).unwrap_or_default());
                            }
                        }
                    } else {
                        shown.print(&v, &name);
                    }
                }
            }
        }
        Command::Call {
            name,
            service,
            dtmf,
            audio,
        } => {
            named("contact", &name)?;
            if let Some(k) = &dtmf
                && let Some(bad) = k
                    .chars()
                    .find(|c| kith_core::call::dtmf_event(*c).is_none())
            {
                return Err(user(format!(
                    "--dtmf {k}: {bad:?} is not a phone key; use 0-9, *, #, A-D"
                )));
            }
            let client = Client::for_profile(&home()?)?;
            let watcher = crate::client::Watcher::start(&client).await?;
            let mut body = audio.body();
            body["to"] = json!(name);
            body["service"] = json!(service);
            let v = client.post("/v1/calls", body).await?;
            let id = s(&v, "call").into_owned();
            if !json_mode && v["org"].is_object() {
                crate::say!("{}", s(&v["org"], "label"));
                crate::say!("  fingerprint {}", s(&v["org"], "fingerprint"));
            }
            if !json_mode {
                crate::say!("calling {name} (call {})", &id[..8.min(id.len())]);
            }
            if let Some(keys) = dtmf {
                let (client, watcher, id) = (client.clone(), watcher.clone(), id.clone());
                tokio::spawn(async move {
                    let answered = |w: &crate::client::Watcher| {
                        w.call_event("call_answered", Some(&id)).is_some()
                    };
                    if watcher.wait_for(Duration::from_secs(3600), answered).await {
                        let body = json!({ "call": id, "keys": keys });
                        if let Err(e) = client.post("/v1/calls/dtmf", body).await {
                            eprintln!("kith: the keys were not sent: {e}");
                        }
                    }
                });
            }
            follow_call(&client, &watcher, &id, audio.stats, json_mode).await?;
        }
        Command::Answer { call, audio } => {
            let client = Client::for_profile(&home()?)?;
            let watcher = crate::client::Watcher::start(&client).await?;
            let mut body = audio.body();
            body["call"] = json!(call);
            let v = client.post("/v1/calls/answer", body).await?;
            let id = s(&v, "call").into_owned();
            if !json_mode {
                crate::say!("answered (call {})", &id[..8.min(id.len())]);
            }
            follow_call(&client, &watcher, &id, audio.stats, json_mode).await?;
        }
        Command::Dtmf { keys, call } => {
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post("/v1/calls/dtmf", json!({ "call": call, "keys": keys }))
                .await?;
            out(json_mode, &v, |v| {
                crate::say!(
                    "pressed {keys} in call {}",
                    &s(v, "call")[..8.min(s(v, "call").len())]
                )
            });
        }
        Command::Reject { call } => {
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post("/v1/calls/reject", json!({ "call": call }))
                .await?;
            out(json_mode, &v, |v| {
                crate::say!("declined call {}", s(v, "call"))
            });
        }
        Command::Hangup { call } => {
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post("/v1/calls/hangup", json!({ "call": call }))
                .await?;
            out(json_mode, &v, |v| {
                crate::say!("hung up call {}", s(v, "call"))
            });
        }
        Command::Mailbox {
            command: Some(MailboxCommand::Serve { args }),
        } => run_daemon(home()?, daemon_options(args, true)?).await?,
        Command::Gateway { config, args } => {
            let gw = kith_gateway::GatewayConfig::load(&config).map_err(|e| user(e.to_string()))?;
            let mut options = daemon_options(args, false)?;
            options.services = gw.services.keys().cloned().collect();
            options.max_calls = gw.limits.max_calls;
            run_daemon_with(home()?, options, Some(gw)).await?
        }
        Command::Device { command } => {
            let (profile, home) = (Profile::new(home()?), home()?);
            match command {
                DeviceCommand::Request { addrs, relays } => {
                    let config = profile.config().map_err(profile_error)?;
                    let addrs = if addrs.is_empty() {
                        if config.listen.ip().is_unspecified() {
                            return Err(user(
                                "this gateway listens on every interface: name the address customers dial \
                                 with --addr <public IP>:<port>",
                            ));
                        }
                        vec![config.listen]
                    } else {
                        addrs
                    };
                    let relays = if relays.is_empty() {
                        config.relays.clone()
                    } else {
                        relays
                    };
                    let pass = if profile.is_encrypted().map_err(profile_error)? {
                        passphrase("Passphrase: ", false)?
                    } else {
                        None
                    };
                    let e = profile
                        .enrollment(pass.as_deref(), addrs, relays)
                        .map_err(profile_error)?;
                    let text = e.encode();
                    out(json_mode, &json!({ "enrollment": text }), |_| {
                        crate::say!(
                            "Give this to the organization's admin (`kith org enroll DOMAIN <enrollment>`):"
                        );
                        crate::say!("{text}");
                    });
                }
                DeviceCommand::Grant { grant } => {
                    let (domain, account) = profile.install_grant(&grant).map_err(profile_error)?;
                    let address = kith_core::Address::new(account).to_string();
                    out(
                        json_mode,
                        &json!({ "domain": domain, "address": address, "home": home }),
                        |v| {
                            crate::say!(
                                "This device is now a gateway of {} (account {}). Next: `kith --home {} gateway \
                                 --config gateway.toml`.",
                                s(v, "domain"),
                                s(v, "address"),
                                home.display()
                            );
                        },
                    );
                }
            }
        }
        Command::Org {
            command:
                OrgCommand::Enroll {
                    domain,
                    enrollment,
                    out: dir,
                },
        } => {
            let (profile, id) = unlock_profile(&home()?)?;
            let (grant, p) = kith_node::org_admin::enroll(
                &profile,
                &id,
                &domain,
                &enrollment,
                kith_node::node::unix_now(),
            )
            .map_err(profile_error)?;
            print_publication(json_mode, &p, dir.as_deref(), Some(&grant))?;
        }
        Command::Org {
            command:
                OrgCommand::Revoke {
                    domain,
                    name,
                    out: dir,
                },
        } => {
            let (profile, id) = unlock_profile(&home()?)?;
            let p = kith_node::org_admin::revoke(
                &profile,
                &id,
                &domain,
                &name,
                kith_node::node::unix_now(),
            )
            .map_err(profile_error)?;
            print_publication(json_mode, &p, dir.as_deref(), None)?;
        }
        Command::Org {
            command:
                OrgCommand::Publish {
                    domain,
                    services,
                    days,
                    alone,
                    out: dir,
                },
        } => {
            let (profile, id) = unlock_profile(&home()?)?;
            let options = kith_node::org_admin::PublishOptions {
                services,
                days,
                alone,
            };
            let p = kith_node::org_admin::publish(
                &profile,
                &id,
                &domain,
                &options,
                kith_node::node::unix_now(),
            )
            .map_err(profile_error)?;
            print_publication(json_mode, &p, dir.as_deref(), None)?;
        }
        Command::Org { command } => {
            let client = Client::for_profile(&home()?)?;
            match command {
                OrgCommand::Verify { domain } => {
                    let v = client
                        .get(&format!("/v1/org/{}", urlencode(&domain)))
                        .await?;
                    out(json_mode, &v, |v| {
                        crate::say!("{}", s(v, "label"));
                        crate::say!("  fingerprint {}", s(v, "fingerprint"));
                        crate::say!("  address     {}", s(v, "address"));
                        if let Some(m) = v["missing"].as_str() {
                            crate::say!("  missing     {m}");
                        }
                        let services: Vec<&str> = v["services"]
                            .as_array()
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default();
                        crate::say!("  services    {}", services.join(", "));
                        if let Some(seq) = v["gateways_seq"].as_u64() {
                            let names: Vec<&str> = v["gateways"]
                                .as_array()
                                .map(|a| a.iter().filter_map(Value::as_str).collect())
                                .unwrap_or_default();
                            crate::say!(
                                "  gateways    {} (list number {seq}, signed by the account)",
                                if names.is_empty() {
                                    "none".to_string()
                                } else {
                                    names.join(", ")
                                }
                            );
                        }
                        crate::say!(
                            "  pin         {}",
                            match v["pin"].as_str() {
                                Some("new") => "first seen: this key is pinned for the domain now",
                                Some("rotated") =>
                                    "the key changed, signed by the pinned key: the new one is pinned",
                                _ => "the key pinned before",
                            }
                        );
                    });
                }
                OrgCommand::Enroll { .. }
                | OrgCommand::Revoke { .. }
                | OrgCommand::Publish { .. } => {
                    unreachable!("run above, without a daemon")
                }
                OrgCommand::Forget { domain } => {
                    let v = client
                        .delete(&format!("/v1/org/{}", urlencode(&domain)))
                        .await?;
                    out(json_mode, &v, |v| {
                        if v["forgotten"] == true {
                            crate::say!("forgot the key pinned for {}", s(v, "domain"));
                        } else {
                            crate::say!("no key was pinned for {}", s(v, "domain"));
                        }
                    });
                }
            }
        }
        Command::Mailbox { command } => {
            let client = Client::for_profile(&home()?)?;
            match command.unwrap_or(MailboxCommand::List) {
                MailboxCommand::Serve { .. } => unreachable!("served above"),
                MailboxCommand::Host { name } => {
                    let v = client
                        .post("/v1/mailbox/host", json!({ "name": name }))
                        .await?;
                    out(json_mode, &v, |_| {
                        crate::say!(
                            "This node now keeps sealed mail for {name} while {name} is away; {name} runs: kith mailbox use <your name>"
                        )
                    });
                }
                MailboxCommand::Use { name } => {
                    let v = client
                        .post("/v1/mailbox/use", json!({ "name": name }))
                        .await?;
                    out(json_mode, &v, |_| {
                        crate::say!(
                            "{name} is now one of your mailboxes (it must run: kith mailbox host <its name for you>)"
                        )
                    });
                }
                MailboxCommand::List => {
                    let v = client.get("/v1/mailbox").await?;
                    out(json_mode, &v, |v| {
                        let list = |k: &str| {
                            let l: Vec<String> = v[k]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect();
                            if l.is_empty() {
                                "nobody".to_string()
                            } else {
                                l.join(", ")
                            }
                        };
                        crate::say!("your mailboxes: {}", list("my_mailboxes"));
                        if let Some(reach) = v["my_mailboxes_reach"].as_object() {
                            for (name, r) in reach {
                                let state = if r["connected"] == true {
                                    "connected".to_string()
                                } else if let Some(e) = r["error"].as_str() {
                                    format!(
                                        "unreachable ({}); trying again in {} s",
                                        e, r["retry_in_secs"]
                                    )
                                } else {
                                    "connecting".to_string()
                                };
                                crate::say!("  {}: {state}", visible(name));
                            }
                        }
                        crate::say!("keeping mail for: {}", list("keeping_mail_for"));
                    });
                }
            }
        }
        Command::Audio {
            command: AudioCommand::Devices,
        } => {
            let listing = tokio::task::spawn_blocking(|| without_stderr(kith_node::audio::devices))
                .await?
                .map_err(|e| anyhow::anyhow!(e))?;
            // JSON: the audio system ({name, why_not_pulseaudio}) and the devices; the text names the
            // system first.
            let v = serde_json::to_value(&listing)?;
            let list = listing.devices;
            out(json_mode, &v, |_| {
                crate::say!("Audio system: {}", listing.system);
                if list.is_empty() {
                    crate::say!(
                        "No sound cards found. Calls still work: use --input-wav/--record-wav, --tone or --null."
                    );
                }
                // Devices that cannot be opened now (ALSA plugins with nothing behind them, such as JACK
                // without a JACK server) go last, by name only.
                let (usable, closed): (Vec<_>, Vec<_>) =
                    list.iter().partition(|d| d.input || d.output);
                for d in usable {
                    let mut tags = Vec::new();
                    if d.default_input {
                        tags.push("default input");
                    }
                    if d.default_output {
                        tags.push("default output");
                    }
                    crate::say!(
                        "{}{}",
                        d.name,
                        if tags.is_empty() {
                            String::new()
                        } else {
                            format!("  [{}]", tags.join(", "))
                        }
                    );
                    if d.id != d.name {
                        crate::say!("    id:     {}", d.id);
                    }
                    if let Some(c) = &d.input_config {
                        crate::say!("    input:  {c}");
                    }
                    if let Some(c) = &d.output_config {
                        crate::say!("    output: {c}");
                    }
                }
                if !closed.is_empty() {
                    crate::say!("Listed, but cannot be opened now:");
                    for d in closed {
                        crate::say!("  {} ({})", d.name, d.id);
                    }
                }
            });
        }
        Command::Events { types } => {
            let client = Client::for_profile(&home()?)?;
            follow_events(&client, json_mode, |t| {
                types.is_empty() || types.iter().any(|w| w == t)
            })
            .await?;
        }
        Command::Calls { watch } => {
            let client = Client::for_profile(&home()?)?;
            // Subscribed before the listing, so that nothing between the two is missed.
            let events = match watch {
                true => Some(client.events().await?),
                false => None,
            };
            let v = client.get("/v1/calls").await?;
            out(json_mode, &v, |v| {
                let live = v["live"].as_array().cloned().unwrap_or_default();
                for c in &live {
                    crate::say!(
                        "now: {} {} call with {} ({})",
                        s(c, "state"),
                        s(c, "direction"),
                        s(c, "with"),
                        &s(c, "call")[..8.min(s(c, "call").len())]
                    );
                    if !c["stats"].is_null() {
                        crate::say!("  {}", stats_line(&c["stats"]));
                    }
                }
                let log = v["log"].as_array().cloned().unwrap_or_default();
                if live.is_empty() && log.is_empty() {
                    crate::say!("No calls yet. Call a contact with `kith call NAME`.");
                }
                for c in log {
                    let dur = c["duration_secs"]
                        .as_f64()
                        .map(|d| format!("{d:.0} s"))
                        .unwrap_or_else(|| "-".into());
                    crate::say!(
                        "{:<10} {:<9} {:<20} {:<16} {:>6}",
                        fmt_ms(c["started_ms"].as_i64()),
                        s(&c, "direction"),
                        s(&c, "with"),
                        s(&c, "outcome"),
                        dur
                    );
                    if !c["stats"].is_null() {
                        crate::say!("  {}", stats_line(&c["stats"]));
                    }
                }
            });
            if let Some(events) = events {
                print_events(events, json_mode, |t| t.starts_with("call_")).await;
            }
        }
        Command::Requests => {
            let client = Client::for_profile(&home()?)?;
            let v = client.get("/v1/requests").await?;
            out(json_mode, &v, |v| {
                let list = v.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    crate::say!("No contact requests.");
                }
                for r in list {
                    crate::say!("{} ({}):", s(&r, "name"), s(&r, "address"));
                    for m in r["messages"].as_array().cloned().unwrap_or_default() {
                        crate::say!("    {}", s(&m, "text"));
                    }
                    crate::say!("  accept with: kith accept {:?}", s(&r, "name"));
                }
            });
        }
        Command::Accept { request, name } => {
            let client = Client::for_profile(&home()?)?;
            let v = client
                .post(
                    "/v1/requests/accept",
                    json!({ "request": request, "name": name }),
                )
                .await?;
            out(json_mode, &v, |v| {
                crate::say!("{} is now a contact.", s(v, "name"))
            });
        }
        Command::Status => {
            let client = Client::for_profile(&home()?)?;
            let v = client.get("/v1/status").await?;
            out(json_mode, &v, |v| {
                crate::say!("name:        {}", s(v, "name"));
                crate::say!("address:     {}", s(v, "address"));
                crate::say!("endpoint:    {}", s(v, "endpoint"));
                crate::say!(
                    "listening:   {}",
                    v["listen"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
                crate::say!("uptime:      {} s", v["uptime_secs"]);
                crate::say!(
                    "contacts:    {} ({} requests)",
                    v["contacts"],
                    v["requests"]
                );
                crate::say!(
                    "outbox:      {} waiting for delivery ({} in flight)",
                    v["outbox"],
                    v["in_flight"]
                );
                crate::say!(
                    "held:        {} received, waiting for an earlier message",
                    v["held"]
                );
                match v["request_endpoint"].as_str() {
                    Some(e) => crate::say!(
                        "requests:    via relays only, at endpoint {e} (strangers never see your IP)"
                    ),
                    None => crate::say!(
                        "requests:    no relay yet: strangers who have your address cannot reach you"
                    ),
                }
                let relays = v["relay_report"].as_array().cloned().unwrap_or_default();
                crate::say!("relays:      {}", relays.len());
                for r in relays {
                    let state = match (r["reachable"].as_bool(), r["rtt_ms"].as_f64()) {
                        (Some(true), Some(ms)) => format!("reachable, {ms:.1} ms"),
                        (Some(true), None) => "reachable".into(),
                        _ => match r["error"].as_str() {
                            Some(why) => format!("NOT reachable: {why}"),
                            None => "NOT reachable".into(),
                        },
                    };
                    let home = if r["home"] == true { " (home)" } else { "" };
                    crate::say!("  {}  {state}{home}", s(&r, "url"));
                }
                let dht = &v["dht"];
                if dht["enabled"] == true {
                    crate::say!(
                        "dht:         {} nodes known, joined: {}, network size ~{}",
                        dht["routing_table_nodes"],
                        dht["joined"],
                        dht["size_estimate"]
                    );
                    let b = &dht["bootstrap"];
                    let part = |k: &str, label: &str| {
                        format!(
                            "{label} {}/{}",
                            b[k]["answered"].as_u64().unwrap_or(0),
                            b[k]["offered"].as_u64().unwrap_or(0)
                        )
                    };
                    crate::say!(
                        "  bootstrap (in routing table / offered): {}, {}, {}, {}",
                        part("configured", "configured list"),
                        part("saved_table", "saved table"),
                        part("contact_cards", "contact cards"),
                        part("lan", "LAN")
                    );
                    let src = &dht["sources"];
                    crate::say!(
                        "  lookups:   {} answered by DHT records, {} by cached records, {} used card hints, {} found nothing",
                        src["dht_records"],
                        src["cache_hits"],
                        src["card_hints"],
                        src["dht_misses"]
                    );
                } else {
                    crate::say!("dht:         off");
                }
                let conns = v["connections"].as_array().cloned().unwrap_or_default();
                crate::say!("connections: {}", conns.len());
                for c in conns {
                    crate::say!(
                        "  {:<20} {} ({} IP paths)",
                        s(&c, "peer"),
                        s(&c, "path"),
                        c["ip_paths"]
                    );
                }
            });
        }
        Command::BenchDiscovery { nodes, runs, out } => {
            crate::bench_discovery::run(nodes, runs, out).await?
        }
        Command::BenchCalls {
            material,
            clips,
            setup_runs,
            conditions,
            no_latency,
            out,
        } => {
            let what = crate::bench_calls::Selection {
                conditions,
                latency: !no_latency,
                setup_runs,
            };
            crate::bench_calls::run(material, clips, what, out).await?
        }
        Command::Demo { messages, keep } => crate::demo::run(messages, keep).await?,
        Command::BenchGateway {
            steps,
            secs,
            out,
            setup_calls,
            setup_only,
        } => {
            if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
                return Err(user(format!(
                    "--secs {secs}: give seconds above 0, at most 3600"
                )));
            }
            if steps.is_empty() || steps.contains(&0) {
                return Err(user(
                    "--steps: give numbers of calls above 0, e.g. 10,50,100",
                ));
            }
            if setup_only && setup_calls == 0 {
                return Err(user("--setup-only with --setup-calls 0 measures nothing"));
            }
            let setup_out = out.with_file_name(format!(
                "{}-setup.json",
                out.file_stem()
                    .map_or("bench-gateway".into(), |s| s.to_string_lossy())
            ));
            if !setup_only {
                tokio::task::spawn_blocking(move || crate::bench_gateway::run(steps, secs, out))
                    .await??;
            }
            if setup_calls > 0 {
                tokio::task::spawn_blocking(move || {
                    crate::bench_setup::run(setup_calls, &setup_out)
                })
                .await??;
            }
        }
        Command::DemoOrg { dir } => crate::demo_org::inside(&dir).await?,
        Command::BenchGatewaySetup { calls, out } => {
            crate::bench_setup::inside(calls, &out).await?
        }
        Command::BenchMailbox { messages, out } => crate::bench_mailbox::run(messages, out).await?,
        Command::Bench {
            latency_messages,
            throughput_messages,
            out,
        } => crate::bench::run(latency_messages, throughput_messages, out).await?,
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The node options the command line gives; bad values are named.
fn daemon_options(
    a: DaemonArgs,
    headless_mailbox: bool,
) -> anyhow::Result<kith_node::DaemonOptions> {
    if let Some(s) = a.mailbox_after
        && !(s.is_finite() && s >= 0.0)
    {
        return Err(user(format!(
            "--mailbox-after {s}: give a number of seconds, 0 or more"
        )));
    }
    let impair = a
        .impair
        .map(|s| kith_node::media::Impairment::parse(&s))
        .transpose()
        .map_err(|e| user(format!("--impair: {e}")))?;
    // A list pasted from a file or `kith testnet` may be separated by commas, spaces or line breaks.
    let bootstrap = a.bootstrap.map(|list| {
        list.iter()
            .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    });
    Ok(kith_node::DaemonOptions {
        listen: a.listen,
        bootstrap,
        no_dht: a.no_dht,
        publish_direct: a.publish_direct.then_some(true),
        period_minutes: a.period_minutes,
        relays: a.relay,
        relay_only: a.relay_only,
        dht_bind: a.dht_bind,
        no_requests: a.no_requests,
        impair,
        mailbox_after_secs: a.mailbox_after,
        mailbox_per_contact_messages: a.mailbox_per_contact_messages,
        headless_mailbox,
        ..Default::default()
    })
}

/// Runs the daemon of the profile in the foreground until it is stopped.
async fn run_daemon(home: PathBuf, options: kith_node::DaemonOptions) -> anyhow::Result<()> {
    run_daemon_with(home, options, None).await
}

/// Runs the daemon, and with `gateway` the organization's gateway on it.
async fn run_daemon_with(
    home: PathBuf,
    options: kith_node::DaemonOptions,
    gateway: Option<kith_gateway::GatewayConfig>,
) -> anyhow::Result<()> {
    let profile = Profile::new(&home);
    if !profile.exists() {
        return Err(profile_error(kith_node::ProfileError::Missing(home)));
    }
    let pass = if profile.is_encrypted().map_err(profile_error)? {
        passphrase("Passphrase: ", false)?
    } else {
        None
    };
    init_logging();
    let headless = options.headless_mailbox;
    // A gateway that cannot start (its SIP port taken, the PBX refusing it) stops the daemon with the reason.
    let gateway_failed: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let failed = gateway_failed.clone();
    let result = kith_node::run_daemon(&profile, pass.as_deref(), options, |node, api, stop| {
        let ready = format!(
            "kith daemon ready: {} (control API on {api})",
            node.address()
        );
        // A gateway's daemon is ready once its SIP side is (registered with the PBX).
        let gatewayed = gateway.is_some();
        if let Some(config) = gateway {
            let node = node.clone();
            let services: Vec<String> = config.services.keys().cloned().collect();
            let listen = config.sip.listen;
            let ready = ready.clone();
            tokio::spawn(async move {
                match kith_gateway::Gateway::start(node, config).await {
                    Ok(gw) => {
                        crate::say!(
                            "kith gateway ready: SIP on {listen}, services {}",
                            services.join(", ")
                        );
                        crate::say!("{ready}");
                        // Runs as long as the daemon.
                        std::mem::forget(gw);
                    }
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        let _ = stop.send(true);
                    }
                }
            });
        }
        if headless {
            crate::say!(
                "kith mailbox ready: {} keeps sealed mail for each of its contacts that names it \
                 (`kith mailbox use <name>`); calls are declined (control API on {api})",
                node.address()
            );
            crate::say!(
                "its card, for the people whose mail it keeps: {}",
                node.card().to_link()
            );
        }
        if !gatewayed {
            crate::say!("{ready}");
        }
        // What a person at the daemon's terminal must hear about at once: who calls, and a contact's new
        // device.
        let mut events = node.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    // A gateway answers its calls itself (bridged to the SIP side): one line per call.
                    Ok(kith_node::events::Event::CallIncoming {
                        call,
                        from,
                        service: Some(service),
                        ..
                    }) if gatewayed => crate::say!(
                        "call {} from {} for {}",
                        &call[..8.min(call.len())],
                        visible(&from),
                        visible(&service)
                    ),
                    Ok(kith_node::events::Event::CallIncoming {
                        call,
                        from,
                        verified,
                        ..
                    }) => crate::say!(
                        "incoming call from {} ({}), call {}: `kith answer` or `kith reject`",
                        visible(&from),
                        if verified { "verified" } else { "not verified" },
                        &call[..8.min(call.len())]
                    ),
                    Ok(kith_node::events::Event::KeyChanged { name, .. }) => crate::say!(
                        "WARNING: {} connected from a device you have not seen before; nothing is sent to them until you check with them and run `kith verify {} --confirm`",
                        visible(&name),
                        visible(&name)
                    ),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
    })
    .await;
    if let Some(why) = gateway_failed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(user(format!(
            "the gateway cannot start: {why}; check [sip] in the gateway's configuration"
        )));
    }
    match result {
        Ok(()) => Ok(()),
        Err(kith_node::DaemonError::Profile(e)) => Err(profile_error(e)),
        Err(kith_node::DaemonError::Node(kith_node::NodeError::Net(e))) => Err(user(format!(
            "cannot start the network endpoint: {e}; change `listen` in config.toml or pass --listen"
        ))),
        Err(kith_node::DaemonError::Store(e)) if e.is_user_error() => Err(user(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Dependencies log addresses at info; kith's own info lines never carry an IP or a key. The
        // PulseAudio client logs an ERROR at every normal close of a stream; cpal hands its real errors to
        // the stream's error callback, which kith logs.
        .unwrap_or_else(|_| {
            "info,iroh=warn,iroh_relay=warn,noq=warn,noq_proto=warn,mainline=warn,pulseaudio=off"
                .into()
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only on a terminal: in a log file or a pipe they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
