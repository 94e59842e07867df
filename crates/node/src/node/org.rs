//! Organizations: which kith account speaks for a domain (`kith org verify`), with its key pinned per
//! domain ([`kith_org`] looks it up, [`kith_core::org`] judges).

use super::*;
use kith_core::org::{Pin, check_pin, fingerprint};

/// What `kith org verify` shows.
#[derive(Debug, Clone, Serialize)]
pub struct OrgView {
    pub domain: String,
    pub address: String,
    /// `Verified: example.org (DNSSEC + HTTPS)`, or `Verified (DNSSEC only): ...`.
    pub label: String,
    /// To compare out of band.
    pub fingerprint: String,
    pub channels: Vec<String>,
    /// Why one channel is missing, when one is.
    pub missing: Option<String>,
    pub services: Vec<String>,
    pub expires: u64,
    /// `new` (first seen: pinned now), `same` (the pinned key), `rotated` (a change signed by the pinned
    /// key: pinned now).
    pub pin: &'static str,
    /// The gateway devices the organization lists (their names), and the list's number; empty when it
    /// lists none (its account's own node answers).
    pub gateways: Vec<String>,
    pub gateways_seq: Option<u64>,
}

/// Whether `domain` is a domain name as DNS writes it.
fn check_domain(domain: &str) -> Result<String, NodeError> {
    kith_core::org::valid_domain(domain).ok_or_else(|| NodeError::NotADomain(domain.to_owned()))
}

/// `service@domain` split in two, if `who` is written so (a domain with a dot after the last `@`, and not a
/// kith address or card).
pub fn org_service(who: &str) -> Option<(&str, &str)> {
    let (service, domain) = who.rsplit_once('@')?;
    (!service.is_empty() && domain.contains('.') && !who.starts_with("kith:"))
        .then_some((service, domain))
}

impl Node {
    /// Whether `peer` may speak for its account here: for an organization that lists its gateways, only
    /// a device on the list (one taken off it, revoked, still holds a valid certificate). `Err` says why
    /// not, for the log, the event and the refused side.
    pub(super) fn check_gateway(&self, peer: &VerifiedPeer) -> Result<(), String> {
        let lists = self.discovery.gateways(&peer.account());
        let Some((domain, roster)) = lists.first() else {
            return Ok(());
        };
        // A device on the list of any domain the account speaks for.
        if lists
            .iter()
            .any(|(_, r)| r.gateway(&peer.device()).is_some())
        {
            return Ok(());
        }
        let why = format!(
            "device {} speaks for {domain}'s account but is not on its list of gateways (number {}): \
             revoked by the organization, or a stolen old certificate; refused",
            peer.device().short(),
            roster.seq
        );
        tracing::warn!("{why}");
        self.emit(Event::GatewayRefused {
            domain: domain.clone(),
            device: peer.device().short(),
            reason: why.clone(),
        });
        Err(why)
    }

    /// Closes the connections with devices of `account` that none of its lists of gateways names (a
    /// gateway the organization revoked since they were made); what they carried goes again to a listed
    /// one.
    fn close_unlisted(&self, account: &AccountKey) {
        let lists = self.discovery.gateways(account);
        let listed = |d: &kith_core::DeviceKey| lists.iter().any(|(_, r)| r.gateway(d).is_some());
        let mut st = lock(&self.state);
        let Some(p) = st.peers.get_mut(account) else {
            return;
        };
        for c in p.conns.iter().filter(|c| !listed(&c.device)) {
            tracing::info!(
                device = %c.device.short(),
                "closing a connection to a gateway no longer on its organization's list"
            );
            c.conn.close(
                0u32.into(),
                b"this device is not on its organization's list of gateways",
            );
        }
    }

    async fn org_resolver(&self) -> Result<Arc<kith_org::OrgResolver>, NodeError> {
        self.org
            .get_or_try_init(|| async {
                kith_org::OrgResolver::new(self.config.org.clone())
                    .map(Arc::new)
                    .map_err(NodeError::from)
            })
            .await
            .cloned()
    }

    /// Looks `domain` up in both channels, judges, and checks the key against the domain's pin (pinning
    /// a first key, or a change the pinned key signed).
    pub async fn org_verify(&self, domain: &str) -> Result<OrgView, NodeError> {
        let domain = check_domain(domain)?;
        let resolver = self.org_resolver().await?;
        let verified = resolver.verify(&domain, unix_now()).await?;
        let pinned = lock(&self.store).org_pin(&verified.domain)?;
        // Before anything is pinned: a list of gateways older than one seen is a replay.
        if let Some(roster) = &verified.roster {
            let seen = lock(&self.store).org_roster_seq(&verified.domain)?;
            roster
                .check_newer(seen)
                .map_err(|reason| kith_core::org::Refused::Gateways {
                    domain: verified.domain.clone(),
                    reason,
                })?;
        }
        let pin = match check_pin(&verified, pinned)? {
            Pin::Same => "same",
            Pin::New(account) => {
                lock(&self.store).set_org_pin(&verified.domain, &account, unix_ms())?;
                tracing::info!(domain = %verified.domain, "organization key pinned");
                "new"
            }
            Pin::Rotated { to, .. } => {
                lock(&self.store).set_org_pin(&verified.domain, &to, unix_ms())?;
                tracing::info!(domain = %verified.domain, "organization key changed, signed by the pinned key");
                "rotated"
            }
        };
        let roster = verified.roster.as_ref();
        lock(&self.store).set_org_roster(
            &verified.domain,
            roster
                .map(|r| (r.seq, r.to_bytes()))
                .as_ref()
                .map(|(s, b)| (*s, &b[..])),
        )?;
        if roster.is_some() {
            self.close_unlisted(&verified.account);
        }
        Ok(OrgView {
            gateways: roster
                .map(|r| r.gateways.iter().map(|g| g.name.clone()).collect())
                .unwrap_or_default(),
            gateways_seq: roster.map(|r| r.seq),
            address: Address::new(verified.account).to_string(),
            label: verified.label(),
            fingerprint: fingerprint(&verified.account),
            channels: verified.channels.iter().map(|c| c.to_string()).collect(),
            missing: verified.missing.clone(),
            services: verified.services.clone(),
            expires: verified.expires,
            domain: verified.domain,
            pin,
        })
    }

    /// Calls `service@domain`: verifies the organization (both channels, the pin), checks that it offers
    /// the service, and calls its account for it. The kith handshake then proves that the gateway that
    /// answers holds a device of that very account. Returns the call id and what was verified.
    pub async fn place_org_call(
        self: &Arc<Self>,
        who: &str,
        options: crate::media::AudioOptions,
    ) -> Result<(String, OrgView), NodeError> {
        let (account, service, view) = self.org_account(who).await?;
        let call = self.place_call_to(account, Some(service), options)?;
        Ok((call, view))
    }

    /// Verifies `service@domain` (both channels, the pin, the service listed) and returns the account that
    /// speaks for it, remembered so that calls and events name it with what was verified.
    async fn org_account(&self, who: &str) -> Result<(AccountKey, String, OrgView), NodeError> {
        let (service, domain) = org_service(who).ok_or_else(|| {
            NodeError::Call(format!(
                "{who}: write an organization's service as service@domain"
            ))
        })?;
        let view = self.org_verify(domain).await?;
        if !view.services.iter().any(|s| s == service) {
            return Err(NodeError::Call(format!(
                "{} offers no service {service:?}; it offers: {} ({})",
                view.domain,
                if view.services.is_empty() {
                    "none".to_string()
                } else {
                    view.services.join(", ")
                },
                view.label
            )));
        }
        let account = view
            .address
            .parse::<Address>()
            .map_err(|e| NodeError::Call(e.to_string()))?
            .account();
        lock(&self.org_labels).insert(
            account,
            format!("{service}@{} ({})", view.domain, view.label),
        );
        Ok((account, service.to_owned(), view))
    }

    /// Adds an organization's service as a contact (named `service@domain` unless `name` is given), once
    /// the organization is verified: `kith add support@example.org`, and `kith send` to it.
    pub async fn add_org_contact(
        self: &Arc<Self>,
        who: &str,
        name: Option<&str>,
    ) -> Result<(ContactView, OrgView), NodeError> {
        let (_, _, view) = self.org_account(who).await?;
        // A name with @ only for this very service@domain: another one could pose as another organization.
        let name = name.unwrap_or(who);
        let contact = self.add_contact_as(&view.address, Some(name), name == who)?;
        Ok((contact, view))
    }

    /// The contact to write to for `service@domain`: verified first; the organization's account under the
    /// name it already has as a contact, or added under `service@domain`.
    pub async fn org_contact_name(self: &Arc<Self>, who: &str) -> Result<String, NodeError> {
        let (account, _, _) = self.org_account(who).await?;
        let known = lock(&self.store)
            .peer(&account)?
            .filter(|p| p.state == kith_store::PeerState::Contact)
            .and_then(|p| p.petname);
        match known {
            Some(name) => Ok(name),
            None => Ok(self.add_org_contact(who, None).await?.0.name),
        }
    }

    /// Forgets the key pinned for `domain` (the organization changed it and the user checked the new
    /// fingerprint with it). False if none was pinned.
    pub fn org_forget(&self, domain: &str) -> Result<bool, NodeError> {
        let domain = check_domain(domain)?;
        Ok(lock(&self.store).forget_org_pin(&domain)?)
    }
}
