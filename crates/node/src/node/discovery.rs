//! Being found and finding others: the card, the discovery records published in the DHT every period,
//! lookups, and relays found in the network.

use super::*;

/// The seed of the contact endpoint of `period` and contact-key `generation`. A gateway device's is
/// fixed: its organization's list of gateways names it, and there is no contact to hide it from.
pub(super) fn endpoint_seed(
    id: &Identity,
    period: u64,
    generation: u64,
) -> zeroize::Zeroizing<[u8; 32]> {
    if id.is_gateway_device() {
        id.device.gateway_endpoint_seed()
    } else {
        id.device.endpoint_seed(period, generation)
    }
}

/// What a DHT lookup of someone found (`kith lookup`).
#[derive(Debug, Serialize)]
pub struct LookupView {
    pub address: String,
    pub found: bool,
    /// The record's sequence number (changes only when its content does).
    pub seq: Option<i64>,
    /// Endpoints anyone with the address may dial (request endpoints).
    pub public_endpoints: usize,
    pub public_relays: Vec<String>,
    /// IP addresses in the public part (only with `publish_direct`).
    pub public_direct: usize,
    pub contact_part: String,
    pub contact_endpoints: usize,
    /// Mailboxes the contacts-only part names.
    pub contact_mailboxes: usize,
}

/// How often the node republishes its discovery records (BEP44 items expire after about two hours).
pub(super) const REPUBLISH: Duration = Duration::from_secs(20 * 60);

impl Node {
    /// Our card for contacts: where our device is now, the contact key and, with `mail`, our Olm keys and
    /// mailboxes (so that a contact who has only the card can leave mail while we are away).
    pub(super) fn make_card(
        id: &Identity,
        net: &Net,
        discovery: &NodeDiscovery,
        contact_key: &[u8; 32],
        mail: Option<kith_core::mailbox::MailInfo>,
        now: u64,
    ) -> Result<ContactCard, NodeError> {
        let direct: Vec<SocketAddr> = net
            .local_addrs()
            .into_iter()
            .filter(|a| !a.ip().is_unspecified())
            .take(8)
            .collect();
        let hints = Hints {
            endpoint: Some(net.endpoint_key()),
            direct,
            relays: net.relays().into_iter().take(4).collect(),
            dht: discovery.dht_hints(kith_core::card::MAX_DHT_HINTS),
            contact_key: Some(*contact_key),
        };
        // A gateway device shows the card its account signed when it was enrolled.
        let Some(account) = &id.account else {
            return id
                .gateway_card
                .clone()
                .ok_or_else(|| NodeError::Gateway(NOT_ENROLLED.into()));
        };
        Ok(match mail {
            Some(mail) => ContactCard::issue_with_mail(account, &id.name, hints, mail, now)?,
            None => ContactCard::issue(account, &id.name, hints, now)?,
        })
    }

    /// Issues our card again from what is current (relays, contact key, Olm keys, mailboxes).
    pub(super) fn refresh_card(&self) -> Result<(), NodeError> {
        let card = Self::make_card(
            &self.id,
            &self.net(),
            &self.discovery,
            &self.contact_key(),
            self.card_mail(),
            unix_now(),
        )?;
        self.set_card(card);
        Ok(())
    }

    /// Puts `card` in place as our card and tells the user (`card_changed`).
    pub(super) fn set_card(&self, card: ContactCard) {
        let (mailboxes, keyed) = card.mail().map_or((0, 0), |m| {
            let keyed = m.mailboxes.iter().filter(|b| !b.keys.is_empty()).count();
            (m.mailboxes.len(), keyed)
        });
        lock(&self.state).card = card;
        self.emit(Event::CardChanged { mailboxes, keyed });
    }

    /// [`Self::refresh_card`] where a card that cannot be issued must not stop what goes on: the card
    /// before stays, and the log says why.
    pub(super) fn refresh_card_or_log(&self) {
        if let Err(e) = self.refresh_card() {
            tracing::warn!(error = %e, "cannot issue our card again");
        }
    }

    /// Offers the DHT nodes a contact's card names as bootstrap nodes; if our DHT has no node yet, it
    /// starts again from them.
    pub(super) fn offer_card_dht_hints(&self, card: &ContactCard) {
        let Some(dhts) = &self.discovery.dht else {
            return;
        };
        if dhts.add_bootstrap(
            crate::discovery::BootstrapSource::ContactCards,
            &card.hints().dht,
        ) > 0
        {
            let discovery = self.discovery.clone();
            tokio::spawn(async move {
                if let Some(d) = &discovery.dht {
                    d.rejoin_if_alone().await;
                }
            });
        }
    }

    /// The seed of our contact endpoint in `period`, of the current contact-key generation (it moves on
    /// when a contact is removed, and the endpoint with it).
    pub(super) fn contact_endpoint_seed(&self, period: u64) -> zeroize::Zeroizing<[u8; 32]> {
        let generation = lock(&self.state).contact_key_gen;
        endpoint_seed(&self.id, period, generation)
    }

    /// The account's secret, which a gateway device does not hold: what needs it (sealed mail) says so.
    pub(super) fn account_secret(&self) -> Result<&kith_core::AccountSecret, String> {
        self.id.account.as_ref().ok_or_else(|| {
            "an organization's gateway device holds no account key: it has no mailboxes".to_string()
        })
    }

    /// Our current contact key.
    pub(super) fn contact_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.id.contact_key(lock(&self.state).contact_key_gen)
    }

    /// Finds relays announced in the DHT (and in contacts' records) when none is configured, probes them and
    /// uses the ones that answer fastest. Repeats while no relay is connected.
    pub(super) async fn relay_finder(self: Arc<Self>) {
        if !self.config.net.relays.is_empty() || self.discovery.dht.is_none() {
            return;
        }
        let mut finder_wait = Duration::from_secs(2);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let now = unix_now();
            let period = kith_core::blind::period_at(now, self.config.discovery.period_minutes);
            let mut timed = vec![];
            if let Some(dhts) = &self.discovery.dht
                && let Ok(client) = dhts.client(period, period)
            {
                let mut announced = client
                    .get_peers(kith_net::dht::RELAY_INFOHASH, 16, Duration::from_secs(3))
                    .await;
                announced.sort();
                announced.dedup();
                for peer in announced {
                    // An announcement is an address and a port, no pin: trust the certificate seen at
                    // first contact and pin it in the URL used and published from now on (DESIGN.md,
                    // "Relays").
                    let first = format!("https://{peer}/");
                    match kith_net::relay_tls::probe_first_use(&first).await {
                        Ok((rtt, pin)) => timed.push((
                            rtt,
                            kith_net::relay_tls::pinned_url(
                                &peer.ip().to_string(),
                                peer.port(),
                                &pin,
                            ),
                        )),
                        Err(e) => {
                            tracing::debug!(reason = %e, "a relay announced in the DHT does not answer over TLS")
                        }
                    }
                }
            }
            let mut named = self.discovery.contact_relays();
            named.sort();
            named.dedup();
            for url in named {
                if let Ok(rtt) = crate::discovery::probe_relay(&url).await {
                    timed.push((rtt, url));
                }
            }
            timed.sort();
            let mut added = 0;
            for (rtt, url) in timed.into_iter().take(2) {
                if self.net().add_relay(&url).await.is_ok() {
                    tracing::info!(
                        rtt_ms = rtt.as_millis() as u64,
                        "using a relay found in the network"
                    );
                    self.emit(Event::RelayAdded {
                        url: url.clone(),
                        rtt_ms: rtt.as_millis() as u64,
                    });
                    added += 1;
                }
            }
            if added > 0 {
                // Peers that could not be reached without a relay may be reachable now: dial at once
                // rather than after the backoff of the failures before.
                {
                    let now = Instant::now();
                    let mut st = lock(&self.state);
                    for p in st.peers.values_mut() {
                        p.outbox.route_changed(now);
                    }
                }
                self.wake.notify_one();
                self.refresh_card_or_log();
                if let Some(r) = self.request_net() {
                    for url in self.net().relays() {
                        let _ = r.add_relay(&url).await;
                    }
                    if let Ok(card) = Self::make_public_card(&self.id, &r, unix_now())
                        && let Some((_, c)) = lock(&self.state).request.as_mut()
                    {
                        *c = card;
                    }
                } else {
                    self.ensure_request_endpoint().await;
                }
                self.republish.notify_one();
            }
            // Without a relay, look again soon (2, 4, 8 ... 30 s): a relay that appears is used within
            // seconds, not half a minute later.
            let wait = if self.net().relays().is_empty() {
                let w = finder_wait;
                finder_wait = (finder_wait * 2).min(Duration::from_secs(30));
                w
            } else {
                finder_wait = Duration::from_secs(2);
                Duration::from_secs(30 * 60)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Publishes the discovery records now and then every [`REPUBLISH`].
    pub(super) async fn publisher(self: Arc<Self>) {
        // A gateway device publishes no record (it has no account secret to sign one): its
        // organization's list of gateways says where it is.
        if self.discovery.dht.is_none() || self.id.is_gateway_device() {
            return;
        }
        // A fresh DHT client may fail its first publish (it has not joined yet): retry quickly, then back off.
        let mut retry = Duration::from_millis(300);
        loop {
            // Each period's record names that period's endpoints (the next ones are bound at the boundary).
            // Contacts read the contact endpoint and its addresses in the part sealed under our contact key.
            // Strangers get the relay-only request endpoint; the contact endpoint only if we have no relay
            // (then with addresses only if the user chose to publish them); nothing if we take no requests.
            // Each endpoint's home relay first: a record without room for every relay keeps the first.
            // The home relays as they are now: the record is published again when they change (also
            // while this publish runs).
            let (net, request_net) = (self.net(), self.request_net());
            let homes = (
                net.home_relays(),
                request_net
                    .as_ref()
                    .map(|r| r.home_relays())
                    .unwrap_or_default(),
            );
            let relays: Vec<String> = self.net().relays_home_first().into_iter().take(4).collect();
            let request_relays: Vec<String> = self
                .request_net()
                .map(|r| r.relays_home_first())
                .unwrap_or_else(|| relays.clone())
                .into_iter()
                .take(4)
                .collect();
            let direct: Vec<SocketAddr> = self.net().direct_addrs().into_iter().take(8).collect();
            let has_request_endpoint = self.request_net().is_some();
            let publish_direct = self.config.discovery.publish_direct;
            // Our mailboxes, as their cards name them: for contacts to deposit while we are away.
            let mailboxes = self.my_mailbox_addrs();
            let entries = |period: kith_core::blind::PeriodNum| {
                let contact_endpoint =
                    kith_core::EndpointKey::from_seed(&self.contact_endpoint_seed(period.0));
                let public = if !self.config.accept_requests {
                    vec![]
                } else if has_request_endpoint && !publish_direct {
                    vec![DeviceEntry {
                        cert: self.id.device_cert.clone(),
                        endpoint: kith_core::EndpointKey::from_seed(
                            &self.id.device.request_endpoint_seed(period.0),
                        ),
                        relays: request_relays.clone(),
                        direct: vec![],
                    }]
                } else {
                    vec![DeviceEntry {
                        cert: self.id.device_cert.clone(),
                        endpoint: contact_endpoint,
                        relays: relays.clone(),
                        direct: direct.clone(),
                    }]
                };
                let contact = kith_core::record::ContactEntry {
                    endpoint: contact_endpoint,
                    relays: relays.clone(),
                    direct: if self.config.net.relay_only {
                        vec![]
                    } else {
                        direct.clone()
                    },
                };
                (
                    public,
                    kith_core::record::ContactPart {
                        entries: vec![contact],
                        mailboxes: Self::my_mailbox_entries(&mailboxes, period.0),
                    },
                )
            };
            let contact_key = self.contact_key();
            let delay = match self
                .discovery
                .publish(&self.id, entries, &contact_key, unix_now())
                .await
            {
                Ok(done) => {
                    // Keep the nodes we name in our card fresh.
                    if let Some(d) = &self.discovery.dht {
                        d.routing_table().await;
                    }
                    let thin = done
                        .iter()
                        .any(|p| p.stored_at < kith_net::dht::WELL_STORED);
                    for p in done {
                        self.emit(Event::RecordPublished {
                            period: p.period.0,
                            seq: p.seq,
                            stored_at: p.stored_at,
                        });
                    }
                    if thin {
                        // Stored by a few nodes only (the client had barely joined): again soon, by then
                        // at the closest nodes.
                        tracing::info!(
                            "the discovery record was stored by few DHT nodes; publishing again soon"
                        );
                        let delay = retry;
                        retry = (retry * 2).min(Duration::from_secs(60));
                        delay
                    } else {
                        retry = Duration::from_millis(300);
                        REPUBLISH
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "publishing the discovery record failed; retrying soon");
                    let delay = retry;
                    retry = (retry * 2).min(Duration::from_secs(60));
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.republish.notified() => {}
                // A new home relay goes first in the record (contacts and strangers dial through it).
                _ = net.home_relays_changed(&homes.0) => {}
                _ = async {
                    match &request_net {
                        Some(r) => r.home_relays_changed(&homes.1).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// The DHT clients' routing tables, to save for the next start.
    pub async fn dht_routing_table(&self) -> Vec<String> {
        match &self.discovery.dht {
            Some(d) => d.routing_table().await,
            None => vec![],
        }
    }

    /// Looks an account up in the DHT now (bypassing cached card hints); true if a valid record came back.
    pub async fn lookup(&self, account: AccountKey) -> bool {
        self.discovery.lookup(account, unix_now()).await.is_some()
    }

    /// Looks a contact (by name) or any address up in the DHT now and says what its record tells us: what
    /// anyone with the address sees, and whether we can read the contacts-only part.
    pub async fn lookup_report(&self, who: &str) -> Result<LookupView, NodeError> {
        let account = match lock(&self.store).contact_by_name(who.trim()) {
            Ok(p) => p.account,
            Err(StoreError::UnknownContact(_)) => {
                kith_core::ParsedContact::parse(who)?.address().account()
            }
            Err(e) => return Err(e.into()),
        };
        if self.discovery.dht.is_none() {
            return Err(NodeError::NoDht);
        }
        let record = self.discovery.lookup_newest(account, unix_now()).await;
        let key = lock(&self.store)
            .peer(&account)?
            .filter(|p| p.state == PeerState::Contact)
            .and_then(|p| p.card)
            .and_then(|c| c.hints().contact_key);
        Ok(match record {
            None => LookupView {
                address: Address::new(account).to_string(),
                found: false,
                seq: None,
                public_endpoints: 0,
                public_relays: vec![],
                public_direct: 0,
                contact_part: "absent".into(),
                contact_endpoints: 0,
                contact_mailboxes: 0,
            },
            Some(rec) => {
                let body = rec.body();
                let (contact_part, contact_endpoints, contact_mailboxes) =
                    match (&body.contacts, key) {
                        (None, _) => ("absent", 0, 0),
                        (Some(_), None) => ("sealed: only the person's contacts can read it", 0, 0),
                        (Some(_), Some(k)) => match rec.contact_part(&k) {
                            Ok(p) => ("readable", p.entries.len(), p.mailboxes.len()),
                            Err(_) => ("sealed under a key we do not hold (a newer card?)", 0, 0),
                        },
                    };
                LookupView {
                    address: Address::new(account).to_string(),
                    found: true,
                    seq: Some(rec.seq()),
                    public_endpoints: body.devices.len(),
                    public_relays: body.devices.iter().flat_map(|d| d.relays.clone()).collect(),
                    public_direct: body.devices.iter().map(|d| d.direct.len()).sum(),
                    contact_part: contact_part.into(),
                    contact_endpoints,
                    contact_mailboxes,
                }
            }
        })
    }

    pub async fn dht_status(&self) -> serde_json::Value {
        let stats = self
            .discovery
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        match &self.discovery.dht {
            None => serde_json::json!({ "enabled": false, "sources": stats }),
            Some(d) => {
                let clients = d.clients();
                let mut size_estimate = 0;
                let mut firewalled = true;
                for c in &clients {
                    let info: DhtInfo = c.info().await;
                    size_estimate = size_estimate.max(info.size_estimate);
                    firewalled &= info.firewalled;
                }
                let nodes = d.routing_table().await.len();
                let bootstrap = d.source_report().await;
                serde_json::json!({
                    "enabled": true,
                    "bootstrap": bootstrap,
                    "joined": nodes > 0,
                    "period_clients": clients.len(),
                    "routing_table_nodes": nodes,
                    "size_estimate": size_estimate,
                    "firewalled": firewalled,
                    "sources": stats,
                })
            }
        }
    }
}
