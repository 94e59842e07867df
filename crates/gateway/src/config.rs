//! `gateway.toml`: where the PBX is, which services kith callers may reach and on which SIP addresses, and
//! which numbers SIP phones dial to reach kith users.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub sip: SipConfig,
    /// Service name -> the SIP addresses that ring for it, tried in order (a hunt group).
    pub services: BTreeMap<String, Vec<String>>,
    /// What SIP phones dial -> the kith contact (a name in the gateway's profile) it reaches. A phone may
    /// also dial a kith address itself (`sip:<address>@gateway`, without `kith:`).
    #[serde(default)]
    pub dialplan: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// The gateway's SIP address (UDP).
    pub listen: SocketAddr,
    /// The registrar the gateway registers with, e.g. `sip:pbx.example.org`.
    pub registrar: String,
    /// The gateway's account there.
    pub user: String,
    pub password: String,
    /// The addresses that may send the gateway SIP (the PBX, the proxy). Anything else is dropped unread.
    pub pbx: Vec<IpAddr>,
    /// The address RTP is sent from and to (default: the SIP address's).
    #[serde(default)]
    pub rtp_address: Option<IpAddr>,
    /// RTP ports, first and last (default: any free port).
    #[serde(default)]
    pub rtp_ports: Option<(u16, u16)>,
    /// The host in the SIP identities the gateway asserts for kith callers (default: the SIP address).
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Calls through the gateway at once (each kith caller has at most one).
    #[serde(default = "max_calls")]
    pub max_calls: usize,
    /// How long a SIP phone may ring before the kith caller hears "no answer".
    #[serde(default = "ring_secs")]
    pub ring_secs: u64,
}

fn max_calls() -> usize {
    100
}

fn ring_secs() -> u64 {
    60
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_calls: max_calls(),
            ring_secs: ring_secs(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid gateway configuration: {message}")]
    Invalid { path: String, message: String },
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let c: GatewayConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        let uri = |u: &str| -> Result<(), String> {
            u.parse::<ezk_sip_types::uri::SipUri>()
                .map(|_| ())
                .map_err(|_| {
                    format!(
                        "{u:?} is not a SIP address (write it as sip:user@host or sip:host:port)"
                    )
                })
        };
        uri(&self.sip.registrar)?;
        if self.services.is_empty() {
            return Err("no [services]: name at least one, e.g. support = [\"sip:support@pbx.example.org\"]".into());
        }
        for (name, targets) in &self.services {
            if name.is_empty()
                || name.len() > kith_core::call::MAX_SERVICE_LEN
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "service {name:?}: use letters, digits, '-', '_' or '.', at most {} of them",
                    kith_core::call::MAX_SERVICE_LEN
                ));
            }
            if targets.is_empty() {
                return Err(format!(
                    "service {name:?} rings no SIP address: list at least one"
                ));
            }
            for t in targets {
                uri(t)?;
            }
        }
        if self.sip.pbx.is_empty() {
            return Err(
                "sip.pbx is empty: list the addresses of the PBX or proxy that may send SIP".into(),
            );
        }
        if let Some((lo, hi)) = self.sip.rtp_ports
            && (lo > hi || hi - lo < 1)
        {
            return Err(format!(
                "rtp_ports [{lo}, {hi}]: give the first and the last port of a range of at least two"
            ));
        }
        if self.limits.max_calls == 0 {
            return Err("limits.max_calls is 0: the gateway would take no call".into());
        }
        Ok(())
    }

    pub fn rtp_address(&self) -> IpAddr {
        self.sip.rtp_address.unwrap_or(self.sip.listen.ip())
    }

    pub fn domain(&self) -> String {
        self.sip
            .domain
            .clone()
            .unwrap_or_else(|| self.sip.listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[sip]
listen = "127.0.0.1:5070"
registrar = "sip:127.0.0.1:5060"
user = "kithgw"
password = "secret"
pbx = ["127.0.0.1"]

[services]
support = ["sip:support@127.0.0.1:5060", "sip:backup@127.0.0.1:5060"]

[dialplan]
"200" = "alice"
"#;

    #[test]
    fn a_configuration_is_read_and_each_mistake_is_named() {
        let c = GatewayConfig::parse(GOOD).unwrap();
        assert_eq!(c.services["support"].len(), 2);
        assert_eq!(c.limits.max_calls, 100);
        assert_eq!(c.dialplan["200"], "alice");
        let bad = |from: &str, to: &str, says: &str| {
            let e = GatewayConfig::parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(says), "{e}");
        };
        bad(
            "sip:127.0.0.1:5060\"\n",
            "http://x\"\n",
            "not a SIP address",
        );
        bad("support = [", "\"sup port\" = [", "service \"sup port\"");
        bad("pbx = [\"127.0.0.1\"]", "pbx = []", "sip.pbx is empty");
        bad("user = ", "usr = ", "unknown field");
        bad(
            "[\"sip:support@127.0.0.1:5060\", \"sip:backup@127.0.0.1:5060\"]",
            "[]",
            "rings no SIP address",
        );
    }
}
