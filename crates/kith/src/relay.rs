//! `kith relay`: an iroh relay server anyone can host. Nodes that cannot reach each other directly (NATs,
//! firewalls, or a relay-only privacy policy) exchange their encrypted QUIC packets through it; the relay
//! sees endpoint keys (rotating every period) and ciphertext, never an account.
//!
//! With `--announce-via`, the relay announces itself in the Mainline DHT under [`RELAY_INFOHASH`] (BEP5),
//! so nodes find relays without any operator list.

use iroh_relay::server::{RelayConfig, Server, ServerConfig};
use kith_net::dht::{DhtConfig, KithDht};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use kith_net::dht::RELAY_INFOHASH;

/// Starts a relay on `listen` (plain HTTP) and returns it with its URL.
pub async fn start(listen: SocketAddr) -> anyhow::Result<(Server, String)> {
    let mut relay = RelayConfig::new(listen);
    relay.key_cache_capacity = Some(4096);
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    let server = Server::spawn(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the relay on {listen}: {e}"))?;
    let addr = server
        .http_addr()
        .ok_or_else(|| anyhow::anyhow!("relay has no HTTP address"))?;
    Ok((server, format!("http://{addr}/")))
}

pub async fn run(listen: SocketAddr, announce_via: Option<Vec<String>>) -> anyhow::Result<()> {
    let (server, url) = start(listen).await?;
    crate::say!("{url}");
    eprintln!(
        "kith relay: serving on {url}; nodes use it with `kith daemon --relay {url}`. Ctrl-C stops."
    );
    let announcer = match announce_via {
        Some(bootstrap) => {
            let bind = match listen.ip() {
                std::net::IpAddr::V4(ip) => ip,
                _ => Ipv4Addr::LOCALHOST,
            };
            let dht = KithDht::start(&DhtConfig {
                bootstrap,
                bind,
                port: None,
                server: false,
            })?;
            let port = server
                .http_addr()
                .map(|a| a.port())
                .unwrap_or(listen.port());
            Some(tokio::spawn(async move {
                loop {
                    match dht.announce(RELAY_INFOHASH, port).await {
                        Ok(()) => eprintln!("kith relay: announced in the DHT"),
                        Err(e) => eprintln!("kith relay: announcing failed ({e}); retrying"),
                    }
                    // Peers announced with BEP5 are kept for about 30 minutes.
                    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
                }
            }))
        }
        None => None,
    };
    tokio::signal::ctrl_c().await?;
    if let Some(a) = announcer {
        a.abort();
    }
    server
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("relay shutdown: {e}"))?;
    Ok(())
}
