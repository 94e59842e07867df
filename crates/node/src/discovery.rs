//! Discovery for the node: where is an account reachable?
//!
//! Sources, raced: the hints in the contact card (and in the peer's last hello), the cache of verified DHT
//! records, and a DHT lookup of the account's blinded key for the current period (and the neighbouring
//! period near a boundary, so ±5 minutes of clock skew do not matter). The first valid record ends the DHT
//! lookup. Publishing: the node seals its record for the current and the next period and republishes well
//! inside BEP44's ~2 h expiry.
//!
//! Unlinkability across periods: everything about period `p` (publishing `A'_p`, looking up contacts' keys
//! for `p`) goes through a DHT client of its own ([`PeriodDhts`]), on its own UDP port with its own node id,
//! created for that period and dropped after it. Sequence numbers are the time plus a per-period secret
//! offset. So a DHT node sees nothing that ties `A'_p` to `A'_{p+1}`: not the key, not the ciphertext, not
//! the sequence, not the source port. (The source IP address is the machine's own; hiding it needs
//! publishing through relays, which is a later step.)

use futures_util::StreamExt;
use kith_core::blind::{self, PeriodNum};
use kith_core::org::roster::Roster;
use kith_core::record::{self, ContactPart, DeviceEntry, RecordBody, RecordCache, VerifiedRecord};
use kith_core::{AccountKey, Hints};
use kith_net::dht::{DhtConfig, KithDht};
use kith_net::{BoxFuture, Discovery};
use kith_store::Store;
use sha2::Digest;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a DHT lookup may take before the caller goes on with what it has.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval between hedged lookup rounds, and how many rounds at most.
const HEDGE: Duration = Duration::from_millis(250);
const MAX_ROUNDS: u32 = 12;
/// Clock skew tolerated around period boundaries.
const SKEW_SECS: u64 = 5 * 60;

/// Discovery settings shared by publisher and resolver.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub period_minutes: u64,
    /// Put direct IP addresses in the record (readable by anyone who knows the address). Off by default:
    /// only contacts should learn a user's IP.
    pub publish_direct: bool,
    /// The routing table saved by the last run (a bootstrap source of its own).
    pub saved_dht_nodes: Vec<String>,
    /// Ask the local network for DHT nodes (see [`crate::lan`]).
    pub lan: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            period_minutes: 24 * 60,
            publish_direct: false,
            saved_dht_nodes: vec![],
            lan: false,
        }
    }
}

/// Where a bootstrap node came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BootstrapSource {
    Configured,
    SavedTable,
    ContactCards,
    Lan,
}

/// Nodes offered by one bootstrap source, and how many of them are in a routing table now (answered).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SourceReport {
    pub offered: usize,
    pub answered: usize,
}

/// Which sources answered, for `kith status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SourceStats {
    pub card_hints: u64,
    pub dht_records: u64,
    pub dht_lookups: u64,
    pub dht_misses: u64,
    pub cache_hits: u64,
    pub published: u64,
    pub publish_failures: u64,
}

/// One DHT client per discovery period (see the module docs).
pub struct PeriodDhts {
    base: DhtConfig,
    nodes: Mutex<std::collections::BTreeMap<u64, KithDht>>,
    /// Routing table nodes learned so far, to bootstrap the next period's client quickly.
    known: Mutex<Vec<String>>,
    /// Every bootstrap node offered, with its source.
    sources: Mutex<std::collections::HashMap<String, BootstrapSource>>,
}

impl PeriodDhts {
    /// `base.bootstrap` is the configured list; `saved` the routing table of the last run.
    pub fn new(base: DhtConfig, saved: &[String]) -> Self {
        let mut sources = std::collections::HashMap::new();
        for n in saved {
            sources.insert(n.clone(), BootstrapSource::SavedTable);
        }
        for n in &base.bootstrap {
            sources.insert(n.clone(), BootstrapSource::Configured);
        }
        let mut known = base.bootstrap.clone();
        known.extend(saved.iter().cloned());
        Self {
            base,
            nodes: Mutex::new(Default::default()),
            known: Mutex::new(known),
            sources: Mutex::new(sources),
        }
    }

    /// Offers more bootstrap nodes (from contact cards or the LAN). Returns how many were new.
    pub fn add_bootstrap(&self, source: BootstrapSource, nodes: &[SocketAddr]) -> usize {
        let mut sources = lock(&self.sources);
        let mut known = lock(&self.known);
        let mut added = 0;
        for n in nodes {
            let s = n.to_string();
            if !sources.contains_key(&s) {
                sources.insert(s.clone(), source);
                known.push(s);
                added += 1;
            }
        }
        added
    }

    /// Drops the clients that know no other node, so the next use starts them afresh from every bootstrap
    /// node offered so far (a running Mainline client cannot be given new bootstrap nodes). Returns how
    /// many were restarted.
    pub async fn rejoin_if_alone(&self) -> usize {
        let mut alone = vec![];
        for (period, d) in lock(&self.nodes).clone() {
            alone.push((period, d));
        }
        let mut restarted = 0;
        for (period, d) in alone {
            if d.routing_table().await.is_empty() {
                lock(&self.nodes).remove(&period);
                restarted += 1;
            }
        }
        restarted
    }

    /// Whether some client has other nodes in its routing table.
    pub async fn joined(&self) -> bool {
        for d in self.clients() {
            if !d.routing_table().await.is_empty() {
                return true;
            }
        }
        false
    }

    /// Per source: nodes offered, and how many of them are in a routing table now.
    pub async fn source_report(&self) -> std::collections::BTreeMap<String, SourceReport> {
        let table: std::collections::HashSet<String> =
            self.routing_table().await.into_iter().collect();
        let mut out = std::collections::BTreeMap::new();
        for s in [
            BootstrapSource::Configured,
            BootstrapSource::SavedTable,
            BootstrapSource::ContactCards,
            BootstrapSource::Lan,
        ] {
            out.insert(
                serde_json::to_value(s)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                SourceReport::default(),
            );
        }
        for (node, source) in lock(&self.sources).iter() {
            let key = serde_json::to_value(source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let r = out.entry(key).or_default();
            r.offered += 1;
            if table.contains(node) {
                r.answered += 1;
            }
        }
        out
    }

    /// Up to `n` DHT nodes known to answer (from the routing tables), as IP addresses.
    pub fn sample_known(&self, n: usize) -> Vec<SocketAddr> {
        lock(&self.known)
            .iter()
            .rev()
            .filter_map(|s| s.parse().ok())
            .take(n)
            .collect()
    }

    /// The client for `period`, started on first use. Clients of periods that ended are dropped.
    pub fn client(
        &self,
        period: PeriodNum,
        current: PeriodNum,
    ) -> Result<KithDht, kith_net::dht::DhtError> {
        let mut nodes = lock(&self.nodes);
        nodes.retain(|p, _| *p + 1 >= current.0);
        if let Some(d) = nodes.get(&period.0) {
            return Ok(d.clone());
        }
        let mut config = self.base.clone();
        let known = lock(&self.known).clone();
        config.bootstrap = known.into_iter().rev().take(64).collect();
        let dht = KithDht::start(&config)?;
        nodes.insert(period.0, dht.clone());
        Ok(dht)
    }

    pub fn clients(&self) -> Vec<KithDht> {
        lock(&self.nodes).values().cloned().collect()
    }

    /// All routing-table nodes of the live clients, deduplicated (saved at shutdown, reused at start).
    pub async fn routing_table(&self) -> Vec<String> {
        let mut all = vec![];
        for d in self.clients() {
            all.extend(d.routing_table().await);
        }
        all.sort();
        all.dedup();
        if !all.is_empty() {
            *lock(&self.known) = all.clone();
        }
        all
    }
}

pub struct NodeDiscovery {
    pub(crate) store: Arc<Mutex<Store>>,
    pub(crate) dht: Option<PeriodDhts>,
    pub(crate) cache: Mutex<RecordCache>,
    pub(crate) config: DiscoveryConfig,
    pub(crate) stats: Mutex<SourceStats>,
    /// Which of an organization's gateways this node dials first (the others follow, in order, when it
    /// does not answer): drawn at random once, so clients spread over the gateways while each one's
    /// dials (a message and a call at once) go to the same gateway.
    gateway_pick: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The periods to look in at `now`: the current one, plus a neighbour within the skew margin.
pub fn lookup_periods(now: u64, period_minutes: u64) -> Vec<PeriodNum> {
    let current = blind::period_at(now, period_minutes);
    let mut out = vec![current];
    let next = blind::period_at(now + SKEW_SECS, period_minutes);
    if next != current {
        out.push(next);
    }
    let prev = blind::period_at(now.saturating_sub(SKEW_SECS), period_minutes);
    if prev != current {
        out.push(prev);
    }
    out
}

pub fn hints_of(record: &VerifiedRecord) -> Vec<Hints> {
    record
        .body()
        .devices
        .iter()
        .map(|d| Hints {
            endpoint: Some(d.endpoint),
            direct: d.direct.clone(),
            relays: d.relays.clone(),
            dht: vec![],
            contact_key: None,
        })
        .collect()
}

impl NodeDiscovery {
    /// Discovery over `store`'s contact cards and, if `dht` is given, the Mainline DHT.
    pub fn new(store: Arc<Mutex<Store>>, dht: Option<DhtConfig>, config: DiscoveryConfig) -> Self {
        Self {
            store,
            dht: dht.map(|d| PeriodDhts::new(d, &config.saved_dht_nodes)),
            cache: Mutex::new(RecordCache::default()),
            config,
            stats: Mutex::new(SourceStats::default()),
            gateway_pick: rand::random::<u16>() as usize,
        }
    }

    /// The lists of gateway devices kept for the organization whose account is `account` (see
    /// [`kith_core::org::roster`]), one per domain it speaks for, with the domain; empty for an account
    /// that lists none.
    pub fn gateways(&self, account: &AccountKey) -> Vec<(String, Roster)> {
        let kept = lock(&self.store)
            .org_rosters_of(account)
            .unwrap_or_default();
        kept.into_iter()
            .filter_map(|(domain, bytes)| match Roster::from_bytes(&bytes) {
                Ok(r) => Some((domain, r)),
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "the kept list of gateways does not read");
                    None
                }
            })
            .collect()
    }

    /// Where an organization's gateways are, this node's pick first; None if `account` lists none.
    fn gateway_hints(&self, account: &AccountKey) -> Option<Vec<Hints>> {
        let lists = self.gateways(account);
        if lists.is_empty() {
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        let mut hints: Vec<Hints> = lists
            .iter()
            .flat_map(|(_, r)| r.gateways.iter())
            .filter(|g| seen.insert(g.device))
            .map(|g| g.hints())
            .collect();
        if !hints.is_empty() {
            let n = hints.len();
            hints.rotate_left(self.gateway_pick % n);
        }
        Some(hints)
    }

    /// Looks `account` up in the DHT; returns the first valid record found for any candidate period.
    pub async fn lookup(&self, account: AccountKey, now: u64) -> Option<VerifiedRecord> {
        let dhts = self.dht.as_ref()?;
        lock(&self.stats).dht_lookups += 1;
        let current = blind::period_at(now, self.config.period_minutes);
        let targets: Vec<_> = lookup_periods(now, self.config.period_minutes)
            .into_iter()
            .filter_map(|p| {
                let key = blind::blind_public(&account, p, self.config.period_minutes).ok()?;
                Some((p, key, dhts.client(p, current).ok()?))
            })
            .collect();
        let mut streams = futures_util::stream::SelectAll::new();
        let start_round = |streams: &mut futures_util::stream::SelectAll<_>| {
            for (period, blinded, dht) in &targets {
                let (period, blinded) = (*period, *blinded);
                streams.push(
                    dht.lookup(&blinded)
                        .map(move |item| (period, blinded, item))
                        .boxed(),
                );
            }
        };
        start_round(&mut streams);
        // Hedged lookups: a query that finds nothing runs until its slowest requests time out, while a record
        // published a moment ago (a peer that just came online) is found at once by a fresh query. So start
        // a new round every HEDGE until something valid arrives.
        let mut hedge = tokio::time::interval_at(tokio::time::Instant::now() + HEDGE, HEDGE);
        let mut rounds = 1;
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, async {
            loop {
                tokio::select! {
                    next = streams.next() => match next {
                        Some((period, blinded, item)) => {
                            match record::open(&account, &blinded, period, item.seq, &item.value, &item.signature, now) {
                                Ok(rec) => match lock(&self.cache).offer(period, rec) {
                                    Ok(rec) => return Some(rec.clone()),
                                    Err(e) => tracing::debug!(reason = %e, "older record ignored"),
                                },
                                Err(e) => tracing::debug!(reason = %e, "record refused"),
                            }
                        }
                        None if rounds >= MAX_ROUNDS => return None,
                        None => {
                            hedge.tick().await;
                            rounds += 1;
                            start_round(&mut streams);
                        }
                    },
                    _ = hedge.tick(), if rounds < MAX_ROUNDS => {
                        rounds += 1;
                        start_round(&mut streams);
                    }
                }
            }
        })
        .await
        .ok()
        .flatten();
        let mut stats = lock(&self.stats);
        if found.is_some() {
            stats.dht_records += 1;
        } else {
            stats.dht_misses += 1;
        }
        found
    }

    /// DHT nodes to name in our card.
    pub fn dht_hints(&self, n: usize) -> Vec<SocketAddr> {
        self.dht
            .as_ref()
            .map(|d| d.sample_known(n))
            .unwrap_or_default()
    }

    /// A complete lookup: waits for every answer of one query per candidate period and returns the valid
    /// record with the highest sequence (DHT nodes outside the closest set may still hold older ones).
    /// Slower than [`Self::lookup`]; for `kith lookup`, where the newest record matters more than speed.
    pub async fn lookup_newest(&self, account: AccountKey, now: u64) -> Option<VerifiedRecord> {
        let dhts = self.dht.as_ref()?;
        let current = blind::period_at(now, self.config.period_minutes);
        let mut best: Option<(PeriodNum, VerifiedRecord)> = None;
        for period in lookup_periods(now, self.config.period_minutes) {
            let Ok(blinded) = blind::blind_public(&account, period, self.config.period_minutes)
            else {
                continue;
            };
            let Ok(dht) = dhts.client(period, current) else {
                continue;
            };
            let mut items = Box::pin(dht.lookup(&blinded));
            let all = async {
                while let Some(item) = items.next().await {
                    if let Ok(rec) = record::open(
                        &account,
                        &blinded,
                        period,
                        item.seq,
                        &item.value,
                        &item.signature,
                        now,
                    ) {
                        let newer = best
                            .as_ref()
                            .is_none_or(|(p, b)| (period.0, rec.seq()) > (p.0, b.seq()));
                        if newer {
                            best = Some((period, rec));
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(LOOKUP_TIMEOUT, all).await;
        }
        let (period, rec) = best?;
        let _ = lock(&self.cache).offer(period, rec.clone());
        Some(rec)
    }

    /// Relays named in cached records of contacts: candidates for our own.
    pub fn contact_relays(&self) -> Vec<String> {
        lock(&self.cache)
            .all()
            .flat_map(|r| {
                r.body()
                    .devices
                    .iter()
                    .flat_map(|d| d.relays.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn cached(&self, account: &AccountKey, now: u64) -> Option<VerifiedRecord> {
        let cache = lock(&self.cache);
        lookup_periods(now, self.config.period_minutes)
            .into_iter()
            .find_map(|p| cache.get(account, p, now).cloned())
    }

    /// Seals and publishes this node's record for the current and the next period.
    /// Returns what was published, per period.
    /// `entries(period)` gives the public device entries (request endpoints; none when strangers may not
    /// send requests) and the contacts-only entry, sealed under `contact_key`.
    pub async fn publish(
        &self,
        id: &crate::profile::Identity,
        entries: impl Fn(PeriodNum) -> (Vec<DeviceEntry>, ContactPart),
        contact_key: &[u8; 32],
        now: u64,
    ) -> Result<Vec<Published>, kith_net::dht::DhtError> {
        let Some(dhts) = &self.dht else {
            return Ok(vec![]);
        };
        // A gateway device holds no account secret: its organization's list of gateways says where
        // it is, not a record.
        let Some(account) = &id.account else {
            return Ok(vec![]);
        };
        let mut done = vec![];
        let current = blind::period_at(now, self.config.period_minutes);
        let period_secs = self.config.period_minutes * 60;
        for period in [current, PeriodNum(current.0 + 1)] {
            let secret = blind::blind_secret(account, period, self.config.period_minutes);
            let (mut devices, contact) = entries(period);
            if !self.config.publish_direct {
                for d in &mut devices {
                    d.direct.clear();
                }
            }
            let dht = dhts.client(period, current)?;
            // The same inputs republish the very same item (same value, same sequence), before and after a
            // restart: a record that changes only when its content does tells someone who polls it nothing
            // about when its owner is online.
            let inputs: Vec<u8> = sha2::Sha256::new()
                .chain_update(
                    postcard::to_allocvec(&(period.0, &devices, &contact)).unwrap_or_default(),
                )
                .chain_update(contact_key)
                .finalize()
                .to_vec();
            let previous = lock(&self.store).published_item(period.0).ok().flatten();
            if let Some(item) = previous.as_ref().filter(|i| i.inputs == inputs)
                && let Ok(signature) = <[u8; 64]>::try_from(item.signature.as_slice())
            {
                match dht
                    .publish_item(
                        *secret.public().as_bytes(),
                        kith_core::identity::Signature(signature),
                        item.seq,
                        &item.value,
                    )
                    .await
                {
                    Ok(stored_at) => {
                        lock(&self.stats).published += 1;
                        done.push(Published {
                            period,
                            seq: item.seq,
                            stored_at,
                        });
                        continue;
                    }
                    Err(e) => {
                        lock(&self.stats).publish_failures += 1;
                        return Err(e);
                    }
                }
            }
            // As many mailboxes as the record has room for, the first ones first; then, if it still does
            // not fit, fewer relays (pinned relay URLs are long: two fit in each part, three do not).
            let mut part = contact.clone();
            let mut devices = devices.clone();
            let value = loop {
                let body = RecordBody {
                    version: record::RECORD_VERSION,
                    period: period.0,
                    // Valid through the end of its period plus the skew margin.
                    expires: (period.0 + 1) * period_secs + SKEW_SECS,
                    devices: devices.clone(),
                    contacts: None,
                };
                // The contacts-only part fills the record, so its length tells nothing.
                match record::seal_filled(
                    account,
                    &secret.public(),
                    body,
                    contact_key,
                    &part,
                    &mut rand::rng(),
                ) {
                    Ok(v) => break v,
                    Err(record::RecordError::TooLarge { .. }) if !part.mailboxes.is_empty() => {
                        part.mailboxes.pop();
                        tracing::info!(
                            kept = part.mailboxes.len(),
                            "the discovery record has no room for every mailbox"
                        );
                    }
                    Err(record::RecordError::TooLarge { .. })
                        if drop_a_relay(
                            part.entries
                                .iter_mut()
                                .map(|e| &mut e.relays)
                                .chain(devices.iter_mut().map(|d| &mut d.relays)),
                        ) =>
                    {
                        tracing::info!(
                            "the discovery record has no room for every relay: the first ones are kept"
                        );
                    }
                    Err(e) => return Err(kith_net::dht::DhtError::Publish(e.to_string())),
                }
            };
            // The time (so it grows across restarts) plus an offset secret to this period's key, so sequence
            // numbers of different periods do not match up; always above the last one published.
            let seq = (now as i64 + seq_offset(&secret))
                .max(previous.as_ref().map_or(i64::MIN, |p| p.seq + 1));
            let signature = secret.sign(&record::bep44_signable(seq, &value));
            match dht
                .publish_item(*secret.public().as_bytes(), signature, seq, &value)
                .await
            {
                Ok(stored_at) => {
                    let item = kith_store::PublishedItem {
                        inputs,
                        seq,
                        value,
                        signature: signature.0.to_vec(),
                    };
                    if let Err(e) = lock(&self.store).save_published_item(period.0, &item) {
                        tracing::warn!(error = %e, "cannot remember the published record");
                    }
                    lock(&self.stats).published += 1;
                    done.push(Published {
                        period,
                        seq,
                        stored_at,
                    });
                }
                Err(e) => {
                    lock(&self.stats).publish_failures += 1;
                    return Err(e);
                }
            }
        }
        Ok(done)
    }
}

/// One record published: for which period, its BEP44 sequence number, and how many DHT nodes stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub period: PeriodNum,
    pub seq: i64,
    pub stored_at: u32,
}

/// Drops the last relay of the list that has the most, as long as one has more than one: a record that is
/// too large keeps at least one relay per entry (without one, a request endpoint cannot be reached).
fn drop_a_relay<'a>(lists: impl Iterator<Item = &'a mut Vec<String>>) -> bool {
    match lists.filter(|l| l.len() > 1).max_by_key(|l| l.len()) {
        Some(longest) => {
            longest.pop();
            true
        }
        None => false,
    }
}

/// Measures a relay's round trip with a probe of its `/ping` path (over TLS for https relays, with the
/// URL's pin or the roots); the error names why it failed (no answer, a certificate that does not match
/// the pin, ...).
pub async fn probe_relay(url: &str) -> Result<Duration, kith_net::relay_tls::ProbeError> {
    kith_net::relay_tls::probe(url, &[]).await
}

/// A per-period offset in [0, 2^32) derived from the blinded secret: constant within a period (so sequence
/// numbers still increase with time) and unrelated across periods. Derived, not signed: a signature of one
/// constant message under every period's key would repeat its nonce (see `BlindedSecret::sign`).
fn seq_offset(secret: &blind::BlindedSecret) -> i64 {
    let d = secret.derive(b"kith record sequence offset v1");
    i64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
}

impl Discovery for NodeDiscovery {
    fn resolve(&self, account: AccountKey) -> BoxFuture<'_, Vec<Hints>> {
        Box::pin(async move {
            // An organization that lists its gateways is reached at them, and nowhere else: not at an
            // address an old card named (perhaps a gateway since revoked).
            if let Some(hints) = self.gateway_hints(&account) {
                return hints;
            }
            let now = crate::clock::unix_now();
            let stored = lock(&self.store).peer(&account).ok().flatten();
            let contact_key = stored
                .as_ref()
                .filter(|p| p.state == kith_store::PeerState::Contact)
                .and_then(|p| p.card.as_ref())
                .and_then(|c| c.hints().contact_key);
            let card = stored
                .and_then(|p| p.card)
                .filter(|c| c.hints().endpoint.is_some());
            // Endpoints rotate every period and a card is re-issued with each: a card of an earlier period
            // most likely names an endpoint that is gone.
            let period = blind::period_at(now, self.config.period_minutes);
            let card_fresh = card.as_ref().is_some_and(|c| {
                blind::period_at(c.issued(), self.config.period_minutes) == period
            });
            let mut records = vec![];
            let mut record = None;
            if let Some(rec) = self.cached(&account, now) {
                lock(&self.stats).cache_hits += 1;
                record = Some(rec);
            } else if !card_fresh {
                // Nothing current to try: wait for the DHT.
                record = self.lookup(account, now).await;
            }
            if let Some(rec) = &record {
                // A contact holds the key to the contacts-only entries: the contact endpoint, which may go
                // direct, comes first.
                if let Some(key) = &contact_key {
                    match rec.contact_entries(key) {
                        Ok(entries) => records.extend(entries.into_iter().map(|e| Hints {
                            endpoint: Some(e.endpoint),
                            direct: e.direct,
                            relays: e.relays,
                            dht: vec![],
                            contact_key: None,
                        })),
                        Err(e) => {
                            tracing::debug!(reason = %e, "contacts-only part of a record does not open (we may have been removed)")
                        }
                    }
                }
                records.extend(hints_of(rec));
            }
            let mut out = vec![];
            // The card (from the peer's last hello) names its contact endpoint, which may go direct; the record
            // names the relay-only request endpoint. Net::dial races them in this order.
            if let Some(c) = card.as_ref().filter(|_| card_fresh) {
                lock(&self.stats).card_hints += 1;
                out.push(c.hints().clone());
            }
            out.extend(records);
            // One of our mailboxes named its endpoint keys for the coming periods: its card's addresses
            // with this period's key reach it after a rotation with no record to read.
            if let Some(c) = card.as_ref().filter(|_| !card_fresh)
                && let Ok(Some((first, keys))) = lock(&self.store).my_mailbox_keys(&account)
                && let Some(key) = period
                    .0
                    .checked_sub(first)
                    .and_then(|i| keys.chunks_exact(32).nth(i as usize))
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .and_then(|k| kith_core::EndpointKey::from_bytes(k).ok())
            {
                out.push(Hints {
                    endpoint: Some(key),
                    ..c.hints().clone()
                });
            }
            if let Some(c) = card.filter(|_| !card_fresh) {
                lock(&self.stats).card_hints += 1;
                out.push(c.hints().clone());
            }
            out
        })
    }
}

#[cfg(test)]
mod record_room_tests {
    use super::drop_a_relay;

    #[test]
    fn relays_are_dropped_from_the_longest_list_down_to_one_each() {
        let mut a = vec!["r1".to_string(), "r2".into(), "r3".into()];
        let mut b = vec!["s1".to_string(), "s2".into()];
        assert!(drop_a_relay([&mut a, &mut b].into_iter()));
        assert_eq!(a, ["r1", "r2"]);
        assert!(drop_a_relay([&mut a, &mut b].into_iter()));
        assert!(drop_a_relay([&mut a, &mut b].into_iter()));
        assert_eq!((a.len(), b.len()), (1, 1));
        assert!(
            !drop_a_relay([&mut a, &mut b].into_iter()),
            "one relay each is kept"
        );
        assert_eq!((a, b), (vec!["r1".to_string()], vec!["s1".to_string()]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sequence_offset_is_derived_not_signed() {
        let account = kith_core::AccountSecret::from_bytes(&[9; 32]);
        let label = b"kith record sequence offset v1";
        let offsets: Vec<i64> = [10, 11]
            .into_iter()
            .map(|p| {
                let secret = blind::blind_secret(&account, PeriodNum(p), 24 * 60);
                let offset = seq_offset(&secret);
                // Not from a signature of the label (the nonce of which repeats across periods)...
                let signed = sha2::Sha256::digest(secret.sign(label).0);
                let from_signature = i64::from(u32::from_be_bytes([
                    signed[0], signed[1], signed[2], signed[3],
                ]));
                assert_ne!(offset, from_signature);
                // ...but the derived value.
                let d = secret.derive(label);
                assert_eq!(
                    offset,
                    i64::from(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
                );
                offset
            })
            .collect();
        assert_ne!(offsets[0], offsets[1], "one offset for two periods");
    }
}
