//! A local Mainline DHT for demos, tests and benchmarks: N server nodes, each on its own loopback address
//! (127.0.0.2, 127.0.0.3, ...) because Mainline nodes discount many peers on one IP as a Sybil attack.
//! Nothing here reaches the public DHT: the first node starts with no bootstrap and the others join it.

use crate::dht::{DhtConfig, DhtError, KithDht};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Testnet {
    nodes: Vec<KithDht>,
    /// Per node: its `host:port`, and whether it has gone silent (see [`Testnet::silence`]).
    addrs: Vec<String>,
    silent: Vec<Arc<AtomicBool>>,
    /// Nodes outside the testnet its first nodes joined through.
    seeds: Vec<String>,
}

/// Drops every request while its flag is set: a node that stays in others' routing tables (it keeps
/// querying them itself) and is handed out as a contact, but never answers. As kith's read-only clients look
/// to DHT implementations that ignore BEP 43's read-only flag.
#[derive(Debug, Clone)]
struct Silence(Arc<AtomicBool>);

impl mainline::RequestFilter for Silence {
    fn allow_request(&self, _request: &mainline::RequestSpecific, _from: SocketAddrV4) -> bool {
        !self.0.load(Ordering::Relaxed)
    }
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
        let mut silent = Vec::with_capacity(count);
        let mut addrs = Vec::with_capacity(count);
        let mut bootstrap: Vec<String> = seeds.clone();
        for i in 0..count {
            let config = DhtConfig {
                bootstrap: bootstrap.iter().take(8).cloned().collect(),
                bind: bind.unwrap_or_else(|| node_ip(i)),
                port: None,
                server: true,
            };
            let flag = Arc::new(AtomicBool::new(false));
            let node = KithDht::start_observed(&config, Box::new(Silence(flag.clone())))?;
            let addr = node.local_addr().await;
            bootstrap.push(addr.clone());
            addrs.push(addr);
            nodes.push(node);
            silent.push(flag);
        }
        Ok(Self {
            nodes,
            addrs,
            silent,
            seeds,
        })
    }

    /// `host:port` of every node.
    pub fn bootstrap(&self) -> Vec<String> {
        let answering = self
            .addrs
            .iter()
            .zip(&self.silent)
            .filter(|(_, s)| !s.load(Ordering::Relaxed))
            .map(|(a, _)| a.clone());
        self.seeds.iter().cloned().chain(answering).collect()
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
            self.addrs.remove(i);
            self.silent.remove(i);
        }
    }

    /// Makes `count` nodes chosen by `seed` silent: they keep running and stay in the others' routing
    /// tables, so lookups are handed them as contacts, but they answer nothing. They leave the bootstrap list
    /// (a client joins through nodes that answer, as in the real network).
    pub fn silence(&mut self, count: usize, seed: u64) {
        use rand::{SeedableRng, seq::SliceRandom};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut idx: Vec<usize> = (0..self.nodes.len()).collect();
        idx.shuffle(&mut rng);
        let mut chosen: Vec<usize> = idx.into_iter().take(count).collect();
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        for i in chosen {
            self.silent[i].store(true, Ordering::Relaxed);
        }
    }
}
