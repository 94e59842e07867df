//! Organization identity: which kith account speaks for a domain (sans-IO).
//!
//! An organization is a kith account. It publishes the account's key under its domain in two independent
//! places: a DNSSEC-signed TXT record at `_kith.<domain>` ([`parse_txt`]) and an HTTPS document at
//! `https://<domain>/.well-known/kith.json` ([`parse_document`]; it may delegate to a hoster's URL). The
//! caller looks both up, checking each channel its own way (the DNSSEC chain to a trust anchor; the
//! WebPKI certificate of the domain), and hands what it found to [`judge`]:
//!
//! * both found and naming the same key: **verified**;
//! * one found, the other proven absent or unreachable: **weaker**, and only if the statement found
//!   allows one channel alone (`alone`); refused otherwise;
//! * both found and naming different keys: **refused** ("possible compromise");
//! * a channel whose check failed (a forged or unsigned answer where a signed one is due, a certificate
//!   nobody vouches for, a statement that does not parse) or an expired statement: **refused**, whatever
//!   the other says: an attacker must not be able to downgrade a domain to its other channel.
//!
//! Then [`check_pin`]: the key first verified for a domain is pinned; a later key is taken only with a
//! [`Rotation`] signed by the pinned key, carried by the statements.

pub mod roster;

use crate::address::Address;
use crate::identity::{AccountKey, AccountSecret, Signature, domain_signed_bytes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The DNS name of an organization's TXT record: `_kith.` before the domain.
pub const TXT_LABEL: &str = "_kith";
/// Where the HTTPS document is.
pub const WELL_KNOWN_PATH: &str = "/.well-known/kith.json";
/// The version tag of the TXT record (`v=kith1`) and the document (`"kith": 1`).
pub const VERSION: u32 = 1;
/// Services a statement may list, and the longest service name.
pub const MAX_SERVICES: usize = 32;
pub const MAX_SERVICE_LEN: usize = 32;

/// What one channel says for the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgStatement {
    pub account: AccountKey,
    /// The services reachable through the organization's gateways (`support`, `sales`, ...).
    pub services: Vec<String>,
    /// Unix seconds after which the statement must not be believed.
    pub expires: u64,
    /// Whether a client may believe this channel alone, when the other has nothing.
    pub alone: bool,
    /// The key change that led to `account`, signed by the key before.
    pub rotation: Option<Rotation>,
    /// Which gateway devices speak for the account ([`roster::Roster::digest`]): the TXT record's `dev=`,
    /// or the digest of the document's roster.
    pub roster_digest: Option<String>,
    /// The signed list of gateways itself (the HTTPS document carries it; the TXT record only its digest).
    pub roster: Option<roster::Roster>,
}

impl OrgStatement {
    /// A statement of `account` with `services` until `expires`, one channel not enough alone, no key
    /// change and no list of gateways (the account's own node answers).
    pub fn new(account: AccountKey, services: Vec<String>, expires: u64) -> Self {
        Self {
            account,
            services,
            expires,
            alone: false,
            rotation: None,
            roster_digest: None,
            roster: None,
        }
    }

    /// The same statement naming `roster` as the organization's gateways.
    pub fn with_roster(mut self, roster: roster::Roster) -> Self {
        self.roster_digest = Some(roster.digest());
        self.roster = Some(roster);
        self
    }
}

/// A key change of the organization, signed by the key it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub domain: String,
    pub from: AccountKey,
    pub to: AccountKey,
    /// Unix seconds.
    pub issued: u64,
    pub signature: Signature,
}

const ROTATION_DOMAIN: &str = "kith org rotation v1";

impl Rotation {
    /// `old` hands `domain` over to the account `to`.
    pub fn issue(old: &AccountSecret, domain: &str, to: AccountKey, issued: u64) -> Self {
        let domain = normalize_domain(domain);
        let from = old.public();
        let signature = old.sign(&domain_signed_bytes(
            ROTATION_DOMAIN,
            &(&domain, from, to, issued),
        ));
        Self {
            domain,
            from,
            to,
            issued,
            signature,
        }
    }

    /// Whether `from` signed this hand-over of `domain`.
    pub fn verify(&self, domain: &str) -> bool {
        normalize_domain(domain) == self.domain
            && self
                .from
                .verify(
                    &domain_signed_bytes(
                        ROTATION_DOMAIN,
                        &(&self.domain, self.from, self.to, self.issued),
                    ),
                    &self.signature,
                )
                .is_ok()
    }

    /// The form in a TXT record and the document: z-base-32 of its postcard encoding.
    pub fn encode(&self) -> String {
        crate::zbase32::encode(&postcard::to_allocvec(self).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        let bytes = crate::zbase32::decode(text).map_err(|e| format!("rotation: {e}"))?;
        match postcard::take_from_bytes::<Self>(&bytes) {
            Ok((r, [])) => Ok(r),
            _ => Err("rotation: not a kith key change".into()),
        }
    }
}

/// Lower case, without a final dot.
pub fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `domain` normalized, if it is a domain name as DNS writes it (labels of letters, digits and '-', not
/// at either end, joined by dots; at least two labels).
pub fn valid_domain(domain: &str) -> Option<String> {
    let d = normalize_domain(domain);
    let ok = d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(d)
}

/// The two places an organization publishes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Dns,
    Https,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Dns => "DNSSEC",
            Channel::Https => "HTTPS",
        })
    }
}

/// How looking in one channel went. (One per lookup: the size of the variants does not matter.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// Found, and the channel's own check passed.
    Found(OrgStatement),
    /// The channel proved there is nothing: a validated "no such record"; HTTP 404.
    Absent,
    /// The channel's check failed (the reason says how): an answer forged or unsigned where a signed one
    /// is due, a certificate nobody vouches for, a statement that does not parse.
    Failed(String),
    /// No answer (timeout, network): no proof either way.
    Unreachable(String),
}

/// A key a client may use for the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub domain: String,
    pub account: AccountKey,
    pub services: Vec<String>,
    /// The earlier of the statements' expiries.
    pub expires: u64,
    /// The channels that named it: both, or the one the organization allows alone.
    pub channels: Vec<Channel>,
    /// Why the other channel is missing, when one is.
    pub missing: Option<String>,
    /// The key changes the statements carry (to check a pinned key against).
    pub rotations: Vec<Rotation>,
    /// The organization's gateway devices, when it publishes a list of them (checked: signed by the
    /// account, for this domain, not expired, and the one both channels name).
    pub roster: Option<roster::Roster>,
}

impl Verified {
    /// Both channels named the key.
    pub fn is_full(&self) -> bool {
        self.channels.len() == 2
    }

    /// What the user is shown in every command and event: `Verified: example.org (DNSSEC + HTTPS)`,
    /// or for one channel `Verified (DNSSEC only): ...`.
    pub fn label(&self) -> String {
        match self.channels.as_slice() {
            [a, b] => format!("Verified: {} ({a} + {b})", self.domain),
            [one] => format!("Verified ({one} only): {}", self.domain),
            _ => format!("Not verified: {}", self.domain),
        }
    }
}

/// Why a domain's key is not believed. Each message names the cause and what the user can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "{domain} publishes no kith key (no {TXT_LABEL} TXT record and no {WELL_KNOWN_PATH}): it has no \
         kith gateway, or the name is mistyped"
    )]
    NotPublished { domain: String },
    #[error(
        "{domain}: DNSSEC names key {dns} but HTTPS names {https}: possible compromise of one of them, so \
         neither is trusted. Ask the organization by another way (its fingerprint) before calling"
    )]
    Disagree {
        domain: String,
        dns: String,
        https: String,
    },
    #[error(
        "{domain}: the {channel} check failed ({reason}): possible attack, so nothing is trusted for \
         {domain} now. Try again on another network, or ask the organization"
    )]
    ChannelFailed {
        domain: String,
        channel: Channel,
        reason: String,
    },
    #[error(
        "{domain}: only {channel} names a key ({missing}), and the organization does not allow one \
         channel alone"
    )]
    OneChannel {
        domain: String,
        channel: Channel,
        missing: String,
    },
    #[error(
        "{domain}: the {channel} record expired (at Unix time {expires}): the organization has not \
         renewed it; nothing is trusted for {domain} until it does"
    )]
    Expired {
        domain: String,
        channel: Channel,
        expires: u64,
    },
    #[error(
        "{domain}: DNSSEC names the list of gateways {dns} but HTTPS carries {https}: possible compromise \
         of one of them, so neither is trusted. Ask the organization by another way before calling"
    )]
    GatewaysDisagree {
        domain: String,
        dns: String,
        https: String,
    },
    #[error("{reason}")]
    Gateways {
        domain: String,
        reason: roster::RosterError,
    },
    #[error(
        "{domain} now names key {now}, not the key {pinned} you reached before, and no key change signed \
         by that key comes with it: refused, possible impostor. If the organization really changed its \
         key, check the new fingerprint with it and remove the old pin (`kith org forget {domain}`)"
    )]
    KeyChanged {
        domain: String,
        pinned: String,
        now: String,
    },
}

/// Weighs what the two channels said for `domain` at `now` (Unix seconds).
pub fn judge(domain: &str, dns: Lookup, https: Lookup, now: u64) -> Result<Verified, Refused> {
    let domain = normalize_domain(domain);
    let mut found: Vec<(Channel, OrgStatement)> = vec![];
    let mut missing: Vec<(Channel, String)> = vec![];
    for (channel, lookup) in [(Channel::Dns, dns), (Channel::Https, https)] {
        match lookup {
            Lookup::Found(s) if s.expires <= now => {
                return Err(Refused::Expired {
                    domain,
                    channel,
                    expires: s.expires,
                });
            }
            Lookup::Found(s) => found.push((channel, s)),
            Lookup::Failed(reason) => {
                return Err(Refused::ChannelFailed {
                    domain,
                    channel,
                    reason,
                });
            }
            Lookup::Absent => missing.push((channel, format!("no {channel} record"))),
            Lookup::Unreachable(why) => {
                missing.push((channel, format!("{channel} did not answer: {why}")))
            }
        }
    }
    let rotations = found
        .iter()
        .filter_map(|(_, s)| s.rotation.clone())
        .collect();
    // Two keys is the first thing to say; then whether the lists of gateways agree.
    if let [(_, a), (_, b)] = found.as_slice()
        && a.account != b.account
    {
        return Err(Refused::Disagree {
            domain,
            dns: fingerprint(&a.account),
            https: fingerprint(&b.account),
        });
    }
    let roster = gateways_of(&domain, &found, now)?;
    match found.as_slice() {
        [] => Err(Refused::NotPublished { domain }),
        [(_, a), (_, b)] => Ok(Verified {
            domain,
            account: a.account,
            // A service is reachable if both list it.
            services: a
                .services
                .iter()
                .filter(|s| b.services.contains(s))
                .cloned()
                .collect(),
            expires: a.expires.min(b.expires),
            channels: vec![Channel::Dns, Channel::Https],
            missing: None,
            rotations,
            roster,
        }),
        [(channel, s)] => {
            let why = missing
                .into_iter()
                .map(|(_, w)| w)
                .next()
                .unwrap_or_default();
            if !s.alone {
                return Err(Refused::OneChannel {
                    domain,
                    channel: *channel,
                    missing: why,
                });
            }
            Ok(Verified {
                domain,
                account: s.account,
                services: s.services.clone(),
                expires: s.expires,
                channels: vec![*channel],
                missing: Some(why),
                rotations,
                roster,
            })
        }
        _ => unreachable!("two channels at most"),
    }
}

/// The list of gateways the statements name: the same one in both (by digest), signed by the account
/// they name, for this domain, not expired. None when the organization publishes none (its account then
/// speaks for itself through the DHT), or when only the TXT record's digest was found.
fn gateways_of(
    domain: &str,
    found: &[(Channel, OrgStatement)],
    now: u64,
) -> Result<Option<roster::Roster>, Refused> {
    if let [(_, a), (_, b)] = found
        && a.roster_digest != b.roster_digest
    {
        let name = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
        return Err(Refused::GatewaysDisagree {
            domain: domain.to_owned(),
            dns: name(&a.roster_digest),
            https: name(&b.roster_digest),
        });
    }
    let Some((_, s)) = found.iter().find(|(_, s)| s.roster.is_some()) else {
        return Ok(None);
    };
    let roster = s.roster.clone().expect("found by is_some");
    roster
        .verify(domain, &s.account, now)
        .map_err(|reason| Refused::Gateways {
            domain: domain.to_owned(),
            reason,
        })?;
    Ok(Some(roster))
}

/// What to do with the domain's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// No pin yet: pin this key.
    New(AccountKey),
    /// The pinned key: nothing changes.
    Same,
    /// A key change signed by the pinned key: pin the new key.
    Rotated { from: AccountKey, to: AccountKey },
}

/// Checks a verified key against the domain's pin (`None`: first contact).
pub fn check_pin(verified: &Verified, pinned: Option<AccountKey>) -> Result<Pin, Refused> {
    match pinned {
        None => Ok(Pin::New(verified.account)),
        Some(p) if p == verified.account => Ok(Pin::Same),
        Some(p) => {
            let signed = verified
                .rotations
                .iter()
                .any(|r| r.from == p && r.to == verified.account && r.verify(&verified.domain));
            if signed {
                Ok(Pin::Rotated {
                    from: p,
                    to: verified.account,
                })
            } else {
                Err(Refused::KeyChanged {
                    domain: verified.domain.clone(),
                    pinned: fingerprint(&p),
                    now: fingerprint(&verified.account),
                })
            }
        }
    }
}

/// A short form of an organization's key to compare out of band (read aloud, printed on a bill): eight
/// groups of four hex digits of SHA-256 over the key.
pub fn fingerprint(account: &AccountKey) -> String {
    let digest = Sha256::new()
        .chain_update(b"kith org fingerprint v1")
        .chain_update(account.as_bytes())
        .finalize();
    digest[..16]
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_services(list: &[String]) -> Result<(), String> {
    if list.len() > MAX_SERVICES {
        return Err(format!("more than {MAX_SERVICES} services"));
    }
    for s in list {
        if s.is_empty()
            || s.len() > MAX_SERVICE_LEN
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "service {s:?}: 1-{MAX_SERVICE_LEN} of a-z, 0-9, '-', '_'"
            ));
        }
    }
    Ok(())
}

/// Reads the TXT record(s) found at `_kith.<domain>` (each one string: its character-strings joined).
/// Exactly one must start with `v=kith1`; records of other kinds are ignored. Fields, separated by
/// spaces or `;`: `v=kith1`, `a=<kith address>`, `exp=<Unix seconds>`, optional `svc=a,b`, `alone=1`,
/// `rot=<rotation>`; unknown fields are ignored (a newer version may add some).
pub fn parse_txt(records: &[String]) -> Result<Option<OrgStatement>, String> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.split([' ', ';'])
                .find(|f| !f.is_empty())
                .is_some_and(|f| f.eq_ignore_ascii_case("v=kith1"))
        })
        .collect();
    let record = match ours.as_slice() {
        [] => return Ok(None),
        [one] => one,
        _ => return Err("more than one v=kith1 TXT record".into()),
    };
    let (mut account, mut expires, mut services, mut alone, mut rotation, mut roster_digest) =
        (None, None, vec![], false, None, None);
    for field in record.split([' ', ';']).filter(|f| !f.is_empty()) {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("field {field:?} has no '='"))?;
        match k.to_ascii_lowercase().as_str() {
            "v" => {}
            "a" => {
                account = Some(
                    v.parse::<Address>()
                        .map_err(|e| format!("a= is not a kith address: {e}"))?
                        .account(),
                )
            }
            "exp" => {
                expires = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("exp={v} is not Unix seconds"))?,
                )
            }
            "svc" => services = v.split(',').map(str::to_owned).collect(),
            "alone" => alone = v == "1",
            "rot" => rotation = Some(Rotation::decode(v)?),
            "dev" => roster_digest = Some(v.to_ascii_lowercase()),
            _ => {}
        }
    }
    check_services(&services)?;
    Ok(Some(OrgStatement {
        account: account.ok_or("no a= (the organization's kith address)")?,
        expires: expires.ok_or("no exp= (when the record expires)")?,
        services,
        alone,
        rotation,
        roster_digest,
        roster: None,
    }))
}

/// The TXT record for a statement, as an organization publishes it.
pub fn format_txt(s: &OrgStatement) -> String {
    let mut out = format!("v=kith1 a={} exp={}", Address::new(s.account), s.expires);
    if !s.services.is_empty() {
        out += &format!(" svc={}", s.services.join(","));
    }
    if s.alone {
        out += " alone=1";
    }
    if let Some(r) = &s.rotation {
        out += &format!(" rot={}", r.encode());
    }
    if let Some(d) = &s.roster_digest {
        out += &format!(" dev={d}");
    }
    out
}

/// The document at [`WELL_KNOWN_PATH`].
/// Unknown fields are ignored (a newer version may add some), as in the TXT record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DocumentJson {
    kith: u32,
    domain: String,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    expires: Option<u64>,
    #[serde(default)]
    alone: bool,
    #[serde(default)]
    rotation: Option<String>,
    /// The signed list of the organization's gateways ([`roster::Roster::encode`]).
    #[serde(default)]
    gateways: Option<String>,
    /// A hoster's HTTPS URL that serves the document instead (one level).
    #[serde(default)]
    delegate: Option<String>,
}

/// What an HTTPS document says. (One per lookup: the size of the variants does not matter.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Document {
    Statement(OrgStatement),
    /// Fetch this `https://` URL instead (a hosted gateway); its document must name the same domain and
    /// may not delegate again.
    Delegate(String),
}

/// Parses the HTTPS document of `domain` (at most 16 KiB).
pub fn parse_document(bytes: &[u8], domain: &str) -> Result<Document, String> {
    if bytes.len() > 16 * 1024 {
        return Err(format!("{} bytes, more than 16 KiB", bytes.len()));
    }
    let doc: DocumentJson =
        serde_json::from_slice(bytes).map_err(|e| format!("not a kith.json document: {e}"))?;
    if doc.kith != VERSION {
        return Err(format!("kith.json version {} is not supported", doc.kith));
    }
    if normalize_domain(&doc.domain) != normalize_domain(domain) {
        return Err(format!(
            "the document is for {:?}, not {domain:?}",
            doc.domain
        ));
    }
    if let Some(url) = doc.delegate {
        if !url.starts_with("https://") {
            return Err(format!("delegate {url:?} is not an https:// URL"));
        }
        return Ok(Document::Delegate(url));
    }
    check_services(&doc.services)?;
    let account = doc
        .account
        .ok_or("no \"account\" (the organization's kith address)")?
        .parse::<Address>()
        .map_err(|e| format!("\"account\" is not a kith address: {e}"))?
        .account();
    let roster = doc
        .gateways
        .as_deref()
        .map(roster::Roster::decode)
        .transpose()
        .map_err(|e| format!("\"gateways\": {e}"))?;
    Ok(Document::Statement(OrgStatement {
        account,
        services: doc.services,
        expires: doc.expires.ok_or("no \"expires\" (Unix seconds)")?,
        alone: doc.alone,
        rotation: doc.rotation.as_deref().map(Rotation::decode).transpose()?,
        roster_digest: roster.as_ref().map(roster::Roster::digest),
        roster,
    }))
}

/// The document for a statement, as an organization publishes it.
pub fn format_document(s: &OrgStatement, domain: &str) -> String {
    let doc = DocumentJson {
        kith: VERSION,
        domain: normalize_domain(domain),
        account: Some(Address::new(s.account).to_string()),
        services: s.services.clone(),
        expires: Some(s.expires),
        alone: s.alone,
        rotation: s.rotation.as_ref().map(Rotation::encode),
        gateways: s.roster.as_ref().map(roster::Roster::encode),
        delegate: None,
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests;
