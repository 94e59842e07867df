//! The node's status as `kith status` shows it: address, endpoints, connections, queues, relays.

use super::*;

#[derive(Debug, Serialize)]
pub struct ConnectionView {
    pub peer: String,
    pub path: String,
    pub since_ms: i64,
    /// Open paths of this connection that run over IP (0 when only relays are used: the peer's endpoint
    /// then knows no IP address of ours, nor we of theirs).
    pub ip_paths: usize,
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    pub name: String,
    pub address: String,
    pub endpoint: String,
    pub listen: Vec<SocketAddr>,
    pub connections: Vec<ConnectionView>,
    pub outbox: u64,
    pub held: u64,
    pub in_flight: usize,
    pub contacts: usize,
    pub requests: u64,
    pub uptime_secs: u64,
    pub relays: Vec<String>,
    pub relay_connected: bool,
    pub relay_only: bool,
    /// The relay-only endpoint named in the public record (where strangers' requests arrive), if any.
    pub request_endpoint: Option<String>,
}

/// One relay as `kith status` reports it.
#[derive(Debug, Serialize)]
pub struct RelayView {
    pub url: String,
    /// Answered a probe of `/ping` just now (over TLS for https relays, checked as the endpoint checks
    /// it), or is the endpoint's connected home relay.
    pub reachable: bool,
    pub rtt_ms: Option<f64>,
    pub home: bool,
    /// Why the relay is not reachable: the probe's error, or the endpoint's own (e.g. a certificate that
    /// does not match the pin in the URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Node {
    pub fn status(&self) -> Result<StatusView, NodeError> {
        let (outbox, held) = lock(&self.store).queue_sizes()?;
        let requests = lock(&self.store).request_count()?;
        let contacts = lock(&self.store).contacts()?.len();
        let (conns, in_flight) = {
            let st = lock(&self.state);
            let conns: Vec<(AccountKey, i64, PathKind, usize)> = st
                .peers
                .iter()
                .filter_map(|(a, p)| {
                    p.conns.last().map(|c| {
                        (
                            *a,
                            c.since_ms,
                            kith_net::path_kind(&c.conn),
                            kith_net::ip_paths(&c.conn),
                        )
                    })
                })
                .collect();
            (conns, st.peers.values().map(|p| p.outbox.in_flight()).sum())
        };
        Ok(StatusView {
            name: self.id.name.clone(),
            address: self.address().to_string(),
            endpoint: kith_core::zbase32::encode(self.net().endpoint_key().as_bytes()),
            listen: self.net().local_addrs(),
            connections: conns
                .into_iter()
                .map(|(a, since_ms, kind, ip_paths)| ConnectionView {
                    peer: self.label(&a),
                    path: path_name(kind).into(),
                    since_ms,
                    ip_paths,
                })
                .collect(),
            outbox,
            held,
            in_flight,
            contacts,
            requests,
            uptime_secs: self.started.elapsed().as_secs(),
            relays: self.net().relays(),
            relay_connected: self.net().relay_connected(),
            relay_only: self.config.net.relay_only,
            request_endpoint: self
                .request_net()
                .map(|r| kith_core::zbase32::encode(r.endpoint_key().as_bytes())),
        })
    }

    /// Probes every relay the node uses, concurrently.
    pub async fn relay_report(&self) -> Vec<RelayView> {
        let net = self.net();
        let home = net.home_relays();
        let endpoint_errors = net.relay_errors();
        let probes = net.relays().into_iter().map(|url| {
            let home = home.contains(&url);
            let endpoint_error = endpoint_errors
                .iter()
                .find(|(u, _)| *u == url)
                .map(|(_, e)| e.clone());
            async move {
                let probe = crate::discovery::probe_relay(&url).await;
                let reachable = probe.is_ok() || home;
                RelayView {
                    reachable,
                    rtt_ms: probe.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
                    home,
                    error: match probe {
                        Err(e) if !reachable => Some(e.to_string()),
                        _ if !reachable => endpoint_error,
                        _ => None,
                    },
                    url,
                }
            }
        });
        futures_util::future::join_all(probes).await
    }
}
