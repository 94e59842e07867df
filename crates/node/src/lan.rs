//! LAN discovery of DHT nodes: a way into the Mainline DHT when no bootstrap host answers (a network
//! without internet access, blocked bootstrap hosts, a first start with no saved routing table).
//!
//! A node asks on the local network by UDP multicast to 239.192.152.143:6771 (the BitTorrent local
//! service discovery group, TTL 1, so the question never leaves the link). Every kith node that hears it
//! answers the asker directly with up to [`MAX_NODES`] DHT nodes from its routing table, plus its own DHT
//! port if it runs a server node. The asker offers them to its DHT clients as bootstrap nodes.
//!
//! What the LAN learns: that some host runs kith, and DHT nodes it knows. Not an account, address, key or
//! endpoint. Set `lan_discovery = false` in config.toml to neither ask nor answer.

use crate::discovery::{BootstrapSource, NodeDiscovery};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);
pub const PORT: u16 = 6771;
/// Nodes named in one answer.
pub const MAX_NODES: usize = 16;
/// LAN-learned nodes kept at most (a noisy or hostile LAN cannot flood the bootstrap list).
const MAX_LAN_NODES: usize = 256;
const ASK: &str = "kith-lan/1 ask ";
const ANSWER: &str = "kith-lan/1 nodes ";
/// How often to ask while the DHT has no node, and once it has.
const ASK_ALONE: Duration = Duration::from_secs(5);
const ASK_JOINED: Duration = Duration::from_secs(5 * 60);

/// Runs LAN discovery until `stopping` says so. `bind` is the DHT's local address (the interface to use).
pub async fn run(
    discovery: Arc<NodeDiscovery>,
    bind: Ipv4Addr,
    server: bool,
    stopping: impl Fn() -> bool + Send + 'static,
) {
    let Some(dhts) = discovery.dht.as_ref() else {
        return;
    };
    let listener = match listen(bind) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "LAN discovery off: cannot listen on the multicast group");
            return;
        }
    };
    let asker = match asker(bind) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "LAN discovery off: cannot open its socket");
            return;
        }
    };
    let nonce = format!("{:016x}", rand::random::<u64>());
    let ask = format!("{ASK}{nonce}\n");
    let mut next_ask = tokio::time::Instant::now();
    let mut lan_nodes = 0usize;
    let mut buf = vec![0u8; 2048];
    let mut buf2 = vec![0u8; 2048];
    loop {
        if stopping() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_ask) => {
                let _ = asker.send_to(ask.as_bytes(), SocketAddrV4::new(GROUP, PORT)).await;
                next_ask = tokio::time::Instant::now()
                    + if dhts.joined().await { ASK_JOINED } else { ASK_ALONE };
            }
            // Someone asks: answer with what we know.
            r = listener.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some(their_nonce) = std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.strip_prefix(ASK)) else {
                    continue;
                };
                if their_nonce.trim() == nonce {
                    continue;
                }
                let mut nodes: Vec<String> = dhts
                    .sample_known(MAX_NODES)
                    .into_iter()
                    .filter(|a| a.is_ipv4())
                    .map(|a| a.to_string())
                    .collect();
                let own_port = if server { own_dht_port(dhts).await } else { 0 };
                nodes.truncate(MAX_NODES);
                let answer = format!("{ANSWER}port={own_port} {}\n", nodes.join(","));
                let _ = asker.send_to(answer.as_bytes(), from).await;
            }
            // An answer to our question.
            r = asker.recv_from(&mut buf2) => {
                let Ok((n, from)) = r else { continue };
                let Some(nodes) = parse_answer(&buf2[..n], from) else { continue };
                if lan_nodes >= MAX_LAN_NODES {
                    continue;
                }
                let added = dhts.add_bootstrap(BootstrapSource::Lan, &nodes);
                lan_nodes += added;
                if added > 0 {
                    tracing::info!(added, "DHT nodes learned on the local network");
                    if dhts.rejoin_if_alone().await > 0 {
                        // Start the fresh client now, with the new nodes.
                        let now = crate::clock::unix_now();
                        let p = kith_core::blind::period_at(now, discovery.config.period_minutes);
                        if let Ok(c) = dhts.client(p, p) {
                            c.routing_table().await;
                        }
                    }
                }
            }
        }
    }
}

async fn own_dht_port(dhts: &crate::discovery::PeriodDhts) -> u16 {
    for c in dhts.clients() {
        if let Ok(addr) = c.local_addr().await.parse::<SocketAddr>() {
            return addr.port();
        }
    }
    0
}

/// Parses `kith-lan/1 nodes port=P a:b,c:d` from `from`: the nodes named, plus `from`'s own DHT node if
/// P is not 0. At most [`MAX_NODES`] + 1.
pub fn parse_answer(bytes: &[u8], from: SocketAddr) -> Option<Vec<SocketAddr>> {
    let text = std::str::from_utf8(bytes)
        .ok()?
        .strip_prefix(ANSWER)?
        .trim();
    let mut parts = text.splitn(2, ' ');
    let port: u16 = parts.next()?.strip_prefix("port=")?.parse().ok()?;
    let mut out: Vec<SocketAddr> = parts
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.trim().parse::<SocketAddrV4>().ok())
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
        .map(SocketAddr::V4)
        .take(MAX_NODES)
        .collect();
    if port != 0 {
        out.push(SocketAddr::new(from.ip(), port));
    }
    Some(out)
}

fn listen(bind: Ipv4Addr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several kith nodes (and BitTorrent clients) on one machine share the group's port.
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)).into())?;
    s.join_multicast_v4(&GROUP, &bind)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

fn asker(bind: Ipv4Addr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind(&SocketAddr::from((bind, 0)).into())?;
    if !bind.is_unspecified() {
        s.set_multicast_if_v4(&bind)?;
    }
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_are_bounded() {
        let from: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let nodes = parse_answer(
            b"kith-lan/1 nodes port=0 10.0.0.1:6881,10.0.0.2:7000\n",
            from,
        )
        .unwrap();
        assert_eq!(
            nodes,
            vec![
                "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:7000".parse().unwrap()
            ]
        );
        // A server node names its own port: reached at the address the answer came from.
        let nodes = parse_answer(b"kith-lan/1 nodes port=6881 \n", from).unwrap();
        assert_eq!(nodes, vec!["10.0.0.9:6881".parse::<SocketAddr>().unwrap()]);
        // Garbage, other protocols, unspecified addresses and floods.
        assert!(parse_answer(b"BT-SEARCH * HTTP/1.1\r\n", from).is_none());
        assert!(parse_answer(b"kith-lan/1 nodes port=x", from).is_none());
        assert_eq!(
            parse_answer(
                b"kith-lan/1 nodes port=0 0.0.0.0:1,1.2.3.4:0,bad,[::1]:5",
                from
            )
            .unwrap(),
            vec![]
        );
        let many: Vec<String> = (1..100).map(|i| format!("10.0.1.{i}:6881")).collect();
        let flood = format!("kith-lan/1 nodes port=0 {}", many.join(","));
        assert_eq!(
            parse_answer(flood.as_bytes(), from).unwrap().len(),
            MAX_NODES
        );
    }
}
