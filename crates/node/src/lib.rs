//! kith-node: the daemon. It owns a profile ([`profile`]), runs the protocol ([`node`]) over the network
//! driver and the store, and serves the local control API ([`api`]) with its event stream ([`events`]).
//!
//! What it does not do: parse user input beyond what the API receives, or print for humans; the `kith`
//! binary does that.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod audio;
pub mod clock;
pub mod discovery;
pub mod events;
pub mod lan;
pub mod limiter;
pub mod mailbox;
pub mod media;
pub mod node;
pub mod org_admin;
pub mod profile;

pub use node::{Node, NodeConfig, NodeError};
pub use profile::{Profile, ProfileError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Profile(#[from] ProfileError),
    #[error("{0}")]
    Store(#[from] kith_store::StoreError),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("cannot listen for the control API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Command-line overrides of the profile's configuration.
#[derive(Debug, Default, Clone)]
pub struct DaemonOptions {
    pub listen: Option<SocketAddr>,
    /// Replaces the configured bootstrap list.
    pub bootstrap: Option<Vec<String>>,
    pub no_dht: bool,
    pub publish_direct: Option<bool>,
    pub period_minutes: Option<u64>,
    /// Replaces the configured relays.
    pub relays: Option<Vec<String>>,
    pub relay_only: bool,
    pub dht_bind: Option<std::net::Ipv4Addr>,
    /// Take no contact requests from strangers, whatever the configuration says.
    pub no_requests: bool,
    /// Impair outgoing media datagrams (tests and benchmarks).
    pub impair: Option<media::Impairment>,
    /// Replace the configured wait before mail goes to mailboxes, and the per-contact message quota of
    /// the mailboxes this node keeps.
    pub mailbox_after_secs: Option<f64>,
    pub mailbox_per_contact_messages: Option<u64>,
    /// Run as a headless mailbox: keep mail for every contact that asks, decline calls.
    pub headless_mailbox: bool,
    /// Run as an organization's gateway: these services take calls from anyone, up to `max_calls` at
    /// once (0: one, as a person's phone).
    pub services: Vec<String>,
    pub max_calls: usize,
}

/// Runs a daemon for `profile` until Ctrl-C, SIGTERM or `POST /v1/shutdown`. `ready` is called once the
/// node and the API are up, with the API address and a switch that stops the daemon (set it to true).
pub async fn run_daemon(
    profile: &Profile,
    passphrase: Option<&str>,
    options: DaemonOptions,
    ready: impl FnOnce(&Arc<Node>, SocketAddr, watch::Sender<bool>),
) -> Result<(), DaemonError> {
    let _lock = profile.lock()?;
    let identity = profile.unlock(passphrase)?;
    let config = profile.config()?;
    let token = profile.token()?;
    let store = kith_store::Store::open_with(
        &profile.path(profile::DB_FILE),
        Some(&identity.store_key()),
        false,
    )?;
    let bootstrap: Vec<String> = options
        .bootstrap
        .clone()
        .unwrap_or(config.bootstrap.clone())
        .into_iter()
        .filter(|b| !b.trim().is_empty())
        .collect();
    let dht_bind = options.dht_bind.unwrap_or(config.dht_bind);
    let dht = (!options.no_dht).then_some(kith_net::dht::DhtConfig {
        bootstrap,
        bind: dht_bind,
        port: None,
        server: config.dht_server,
    });
    let node_config = NodeConfig {
        listen: options.listen.unwrap_or(config.listen),
        outbox: Default::default(),
        limiter: Default::default(),
        discovery: discovery::DiscoveryConfig {
            period_minutes: options
                .period_minutes
                .unwrap_or(config.period_minutes)
                .max(1),
            publish_direct: options.publish_direct.unwrap_or(config.publish_direct),
            // The routing table of the last run: joining works even when every bootstrap host is gone.
            saved_dht_nodes: profile.saved_dht_nodes(),
            lan: config.lan_discovery && !dht_bind.is_loopback(),
        },
        dht,
        net: kith_net::NetOptions {
            relays: options
                .relays
                .clone()
                .unwrap_or(config.relays.clone())
                .into_iter()
                .filter(|r| !r.trim().is_empty())
                .collect(),
            relay_only: options.relay_only || config.relay_only,
            extra_roots: vec![],
        },
        accept_requests: !options.no_requests && config.accept_requests,
        impair: options.impair.clone(),
        audio_input: config.audio_input.clone(),
        audio_output: config.audio_output.clone(),
        mailbox_after: Duration::from_secs_f64(
            options
                .mailbox_after_secs
                .unwrap_or(config.mailbox_after_secs)
                .max(0.0),
        ),
        headless_mailbox: options.headless_mailbox,
        services: options.services.clone(),
        max_calls: options.max_calls.max(1),
        org: config.org.resolver_config().map_err(NodeError::from)?,
        mailbox_quotas: kith_core::mailbox::Quotas {
            per_contact_messages: options
                .mailbox_per_contact_messages
                .unwrap_or(config.mailbox_per_contact_messages),
            ..config.mailbox_quotas()
        },
    };
    let node = Node::start(identity, store, node_config).await?;
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| DaemonError::Api {
            addr: config.api_listen,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| DaemonError::Api {
        addr: config.api_listen,
        source,
    })?;
    // Small JSON replies and event-stream lines must not wait for Nagle's algorithm.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let app = api::router(node.clone(), token, stop_tx.clone());
    profile.write_daemon_info(&profile::DaemonInfo {
        pid: std::process::id(),
        api: api_addr,
    })?;
    ready(&node, api_addr, stop_tx.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = stop_rx.wait_for(|v| *v) => {}
        }
        // Whatever stopped us, tell the event streams to end so the graceful shutdown can finish.
        let _ = stop_tx.send(true);
    });
    let result = server.await;
    let table = node.dht_routing_table().await;
    if !table.is_empty()
        && let Err(e) = profile.save_dht_nodes(&table)
    {
        tracing::warn!(error = %e, "cannot save the DHT routing table");
    }
    node.shutdown().await;
    profile.remove_daemon_info();
    drop(Arc::clone(&node));
    result.map_err(|source| DaemonError::Api {
        addr: api_addr,
        source,
    })
}
