//! A local Mainline DHT for demos, tests and benchmarks: N server nodes, each on its own loopback address
//! (127.0.0.2, 127.0.0.3, ...) because Mainline nodes discount many peers on one IP as a Sybil attack.
//! Nothing here reaches the public DHT: the first node starts with no bootstrap and the others join it.

use crate::dht::{DhtConfig, DhtError, KithDht};
use std::net::Ipv4Addr;

pub struct Testnet {
    nodes: Vec<KithDht>,
    bootstrap: Vec<String>,
}

/// The loopback address of node `i`.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (i / 250) as u8 + 1, (i % 250) as u8 + 2)
}

impl Testnet {
    pub async fn start(count: usize) -> Result<Self, DhtError> {
        Self::start_on(count, None).await
    }

    /// Like [`Self::start`], but with `bind` every node shares that address (on its own port): for
    /// networks in namespaces, where the testnet must be reachable from other hosts.
    pub async fn start_on(count: usize, bind: Option<Ipv4Addr>) -> Result<Self, DhtError> {
        Self::start_joining(count, bind, vec![]).await
    }

    /// Like [`Self::start_on`], with the first nodes joining `seeds` (e.g. an observer node started before).
    pub async fn start_joining(
        count: usize,
        bind: Option<Ipv4Addr>,
        seeds: Vec<String>,
    ) -> Result<Self, DhtError> {
        let mut nodes = Vec::with_capacity(count);
        let mut bootstrap: Vec<String> = seeds;
        for i in 0..count {
            let config = DhtConfig {
                bootstrap: bootstrap.iter().take(8).cloned().collect(),
                bind: bind.unwrap_or_else(|| node_ip(i)),
                port: None,
                server: true,
            };
            let node = KithDht::start(&config)?;
            bootstrap.push(node.local_addr().await);
            nodes.push(node);
        }
        Ok(Self { nodes, bootstrap })
    }

    /// `host:port` of every node.
    pub fn bootstrap(&self) -> Vec<String> {
        self.bootstrap.clone()
    }

    pub fn nodes(&self) -> &[KithDht] {
        &self.nodes
    }

    /// Stops `count` nodes chosen by `seed` (their sockets close): part of the network gone.
    pub fn kill(&mut self, count: usize, seed: u64) {
        use rand::{SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..self.nodes.len()).collect();
        idx.shuffle(&mut rng);
        let mut doomed: Vec<usize> = idx.into_iter().take(count).collect();
        doomed.sort_unstable_by(|a, b| b.cmp(a));
        for i in doomed {
            self.nodes.remove(i);
            self.bootstrap.remove(i);
        }
    }
}
