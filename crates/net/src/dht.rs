//! The Mainline DHT side of discovery: a client (or server) node of the BitTorrent Mainline DHT that
//! publishes and fetches kith's discovery records as BEP44 mutable items under blinded keys.
//!
//! What it sees and sends is exactly what a DHT node sees: blinded keys, sequence numbers and fixed-size
//! ciphertext (see `kith_core::record`). Decryption and checking happen in `kith-core`.

use futures_util::StreamExt;
use kith_core::blind::{BlindedKey, BlindedSecret};
use kith_core::identity::Signature;
use kith_core::record::bep44_signable;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, MutableItem};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The well-known Mainline bootstrap hosts: the real-world default. Tests and the demo never use them;
/// they pass their own list (a local testnet) or none.
pub use mainline::{RequestFilter, RequestSpecific};

/// The BEP5 infohash under which public kith relays announce themselves: SHA-1("kith relay v1").
pub const RELAY_INFOHASH: [u8; 20] = [
    0xdf, 0xeb, 0x0f, 0xa4, 0x92, 0x01, 0xfd, 0x18, 0x75, 0xdf, 0x56, 0xe3, 0x94, 0x9c, 0x3d, 0xf1,
    0xbe, 0x75, 0x97, 0x05,
];

pub const DEFAULT_BOOTSTRAP: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];

#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// host:port of nodes to start from; empty means "only the saved routing table".
    pub bootstrap: Vec<String>,
    /// Local IPv4 address to bind (127.0.0.1 by default: loopback unless told otherwise).
    pub bind: Ipv4Addr,
    pub port: Option<u16>,
    /// Answer other nodes' queries (always-on machines); clients only ask.
    pub server: bool,
}

/// How long a DHT request may go unanswered (an answer later than this is not taken). A query asks the next
/// closest node once a request has gone unanswered for a few of the round trips heard (the vendored
/// mainline's adaptive give-up, vendor/README.md), and ends once the closest nodes that answer have all
/// answered; 500 ms still hears nodes across continents (mainline's own default is 2 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// Turns off (or on again) for this process what kith changed in mainline's queries (vendor/README.md):
/// giving up on slow nodes after a few round trips and ending once the closest answering nodes answered.
/// Off only for benchmarks' side-by-side reference.
pub use mainline::set_adaptive_queries;

/// A record stored by fewer nodes than this is stored thinly: a client that had not joined yet knew only a
/// few nodes, which need not be the closest to the record's key, so lookups may miss it. A publisher
/// publishes it again soon (BEP44 keeps 20 copies at the closest nodes).
pub const WELL_STORED: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("cannot start the DHT node: {0}")]
    Start(std::io::Error),
    #[error("publishing to the DHT failed: {0}")]
    Publish(String),
}

/// A running DHT node.
#[derive(Debug, Clone)]
pub struct KithDht {
    dht: AsyncDht,
}

/// A mutable item as found in the DHT (already signature-checked by the DHT library against its key).
#[derive(Debug, Clone)]
pub struct FoundItem {
    pub seq: i64,
    pub value: Vec<u8>,
    pub signature: Signature,
}

impl KithDht {
    pub fn start(config: &DhtConfig) -> Result<Self, DhtError> {
        Self::start_inner(config, None)
    }

    /// Starts a server node that shows every request it receives to `filter` (which should return true
    /// to let the node answer normally): used to play an honest-but-curious DHT node in privacy tests.
    pub fn start_observed(
        config: &DhtConfig,
        filter: Box<dyn mainline::RequestFilter>,
    ) -> Result<Self, DhtError> {
        Self::start_inner(config, Some(filter))
    }

    fn start_inner(
        config: &DhtConfig,
        filter: Option<Box<dyn mainline::RequestFilter>>,
    ) -> Result<Self, DhtError> {
        let mut b = Dht::builder();
        b.bootstrap(&config.bootstrap)
            .bind_address(config.bind)
            .request_timeout(REQUEST_TIMEOUT);
        if let Some(port) = config.port {
            b.port(port);
        }
        if config.server {
            b.server_mode();
        }
        if let Some(filter) = filter {
            // Observed server nodes play the existing network (other people's nodes, testnets): their own
            // queries (routing-table refreshes) run as mainline published them, so that kith's change to
            // queries does not shape the network it is measured in.
            b.adaptive_queries(false);
            b.server_mode().server_settings(mainline::ServerSettings {
                filter,
                ..Default::default()
            });
        }
        let dht = b.build().map_err(DhtError::Start)?.as_async();
        Ok(Self { dht })
    }

    /// Publishes `value` under `blinded`'s key with sequence `seq`, signed by the blinded secret.
    /// Returns how many DHT nodes acknowledged storing it.
    pub async fn publish(
        &self,
        blinded: &BlindedSecret,
        seq: i64,
        value: &[u8],
    ) -> Result<u32, DhtError> {
        let signature = blinded.sign(&bep44_signable(seq, value));
        self.publish_item(*blinded.public().as_bytes(), signature, seq, value)
            .await
    }

    /// Publishes an item already signed by `key`'s secret over [`bep44_signable`].
    pub async fn publish_item(
        &self,
        key: [u8; 32],
        signature: Signature,
        seq: i64,
        value: &[u8],
    ) -> Result<u32, DhtError> {
        let item = MutableItem::new_signed_unchecked(key, signature.0, value, seq, None);
        let outcome = self
            .dht
            .put_mutable(item, None)
            .await
            .map_err(|e| DhtError::Publish(e.to_string()))?;
        Ok(outcome.stored_at)
    }

    /// Streams the items stored under `blinded`, as they arrive (stop early once one is good).
    pub fn lookup(
        &self,
        blinded: &BlindedKey,
    ) -> impl futures_util::Stream<Item = FoundItem> + use<> {
        self.lookup_key(blinded.as_bytes())
    }

    /// Streams the items stored under any Ed25519 public key.
    pub fn lookup_key(
        &self,
        key: &[u8; 32],
    ) -> impl futures_util::Stream<Item = FoundItem> + use<> {
        self.dht.get_mutable(key, None, None).map(|item| FoundItem {
            seq: item.seq(),
            value: item.value().to_vec(),
            signature: Signature(*item.signature()),
        })
    }

    /// The node's UDP address (`host:port`).
    pub async fn local_addr(&self) -> String {
        self.dht.info().await.local_addr().to_string()
    }

    /// Nodes of the routing table as `host:port`, to save and reuse as bootstrap next time.
    pub async fn routing_table(&self) -> Vec<String> {
        self.dht.to_bootstrap().await
    }

    /// (local address, estimated network size, whether we seem firewalled).
    pub async fn info(&self) -> DhtInfo {
        let info = self.dht.info().await;
        DhtInfo {
            local: info.local_addr().to_string(),
            size_estimate: info.dht_size_estimate().0,
            firewalled: info.firewalled(),
        }
    }

    /// Peers announced under `infohash` (BEP5), as they arrive, up to `max` or `wait`.
    pub async fn get_peers(
        &self,
        infohash: [u8; 20],
        max: usize,
        wait: Duration,
    ) -> Vec<std::net::SocketAddrV4> {
        let Ok(id) = mainline::Id::from_bytes(infohash) else {
            return vec![];
        };
        let mut out = vec![];
        let mut stream = self.dht.get_peers(id);
        let _ = tokio::time::timeout(wait, async {
            while let Some(batch) = stream.next().await {
                for p in batch {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
                if out.len() >= max {
                    break;
                }
            }
        })
        .await;
        out
    }

    /// Announces `port` under `infohash` (BEP5), e.g. a relay announcing itself.
    pub async fn announce(&self, infohash: [u8; 20], port: u16) -> Result<(), DhtError> {
        let id =
            mainline::Id::from_bytes(infohash).map_err(|e| DhtError::Publish(e.to_string()))?;
        self.dht
            .announce_peer(id, Some(port))
            .await
            .map_err(|e| DhtError::Publish(e.to_string()))?;
        Ok(())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DhtInfo {
    pub local: String,
    pub size_estimate: usize,
    pub firewalled: bool,
}

#[cfg(test)]
mod tests {
    #[test]
    fn relay_infohash_is_sha1_of_its_label() {
        assert_eq!(
            super::RELAY_INFOHASH,
            sha1_smol::Sha1::from(b"kith relay v1").digest().bytes()
        );
    }
}
