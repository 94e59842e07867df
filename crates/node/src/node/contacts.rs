//! Contacts and contact requests: adding, naming, removing, verifying (safety numbers, a new device of
//! theirs), and how each is shown.

use super::*;

/// A contact as the API shows it.
#[derive(Debug, Serialize)]
pub struct ContactView {
    pub name: String,
    pub address: String,
    pub display_name: Option<String>,
    pub reachability: String,
    pub last_seen_ms: Option<i64>,
    pub added_at_ms: i64,
    pub has_route: bool,
    /// The latest card the contact sent us (a `kith:` link), if any.
    pub card: Option<String>,
    /// Messages to the contact not yet delivered.
    pub waiting: u64,
    /// While offline: why the last attempt to reach the contact failed.
    pub why_unreached: Option<String>,
    /// The user confirmed the safety number, and no new device of theirs appeared since.
    pub verified: bool,
    /// A device of theirs appeared that the user has not confirmed: sending is held.
    pub key_changed: bool,
    /// After `add`: "added", "renamed" (the address was a contact under `previous_name`) or
    /// "already a contact" (same address, same name: nothing changed but a newer card).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RequestView {
    pub name: String,
    pub address: String,
    pub messages: Vec<ChatMessage>,
    pub first_seen_ms: i64,
}

impl Node {
    /// The name the user knows a peer by: petname, else the name on its card, else its address.
    pub(super) fn label(&self, account: &AccountKey) -> String {
        if let Some(l) = lock(&self.org_labels).get(account) {
            return l.clone();
        }
        match lock(&self.store).peer(account) {
            Ok(Some(p)) => peer_name(&p).unwrap_or_else(|| Address::new(*account).to_string()),
            _ => Address::new(*account).to_string(),
        }
    }

    /// The account of the contact called `name`.
    pub fn contact_account(&self, name: &str) -> Result<AccountKey, NodeError> {
        Ok(lock(&self.store).contact_by_name(name)?.account)
    }

    pub fn add_contact(
        self: &Arc<Self>,
        text: &str,
        name: Option<&str>,
    ) -> Result<ContactView, NodeError> {
        self.add_contact_as(text, name, false)
    }

    /// Adds a contact; `verified_org`: the account is the one an organization publishes for the
    /// `service@domain` name given (names with @ are kept for those).
    pub(super) fn add_contact_as(
        self: &Arc<Self>,
        text: &str,
        name: Option<&str>,
        verified_org: bool,
    ) -> Result<ContactView, NodeError> {
        let parsed = ParsedContact::parse(text)?;
        let account = parsed.address().account();
        if account == self.account {
            return Err(NodeError::SelfContact);
        }
        let card = match &parsed {
            ParsedContact::Card(c) => Some(c.as_ref()),
            ParsedContact::Address(_) => None,
        };
        let name_given = name.is_some();
        let name = match (name, card) {
            (Some(n), _) => n.trim().to_owned(),
            (None, Some(c)) => c.name().to_owned(),
            (None, None) => {
                return Err(NodeError::Contact(kith_core::CardError::InvalidName(
                    "an address carries no name: give one with --name",
                )));
            }
        };
        kith_core::card::check_name(&name)?;
        if name.contains('@') && !verified_org {
            return Err(org_form(&name, name_given, "the card names itself"));
        }
        // The same address again: say what happened (renamed, or nothing new) rather than "added".
        let before = lock(&self.store)
            .peer(&account)?
            .filter(|p| p.state == PeerState::Contact)
            .and_then(|p| p.petname);
        let outcome = match &before {
            None => "added",
            Some(old) if *old == name => "already a contact",
            Some(_) => "renamed",
        };
        lock(&self.store).add_contact(&account, &name, card, unix_ms())?;
        if let Some(card) = card {
            self.offer_card_dht_hints(card);
            self.take_card_mail(card);
        }
        // Messages queued for this account before it was removed go out again now that it is back.
        self.requeue(account)?;
        self.contacts_changed(Some(account));
        let mut view = self.contact_view(&lock(&self.store).contact_by_name(&name)?);
        view.outcome = Some(outcome);
        view.previous_name = before.filter(|_| outcome == "renamed");
        // Say hello now: the peer learns our card, and we learn whether they are reachable.
        self.say_hello(account);
        Ok(view)
    }

    pub(super) fn contact_view(&self, p: &Peer) -> ContactView {
        let (reachability, waiting, why) = {
            let st = lock(&self.state);
            let rt = st.peers.get(&p.account);
            let waiting = rt.map_or(0, |rt| rt.outbox.pending() as u64);
            match rt.and_then(|rt| rt.conns.last()) {
                Some(c) => (
                    format!("online {}", path_name(kith_net::path_kind(&c.conn))),
                    waiting,
                    None,
                ),
                None => (
                    "offline".into(),
                    waiting,
                    rt.and_then(|rt| rt.last_dial_error.clone()),
                ),
            }
        };
        ContactView {
            name: p.petname.clone().unwrap_or_default(),
            address: Address::new(p.account).to_string(),
            display_name: p.display_name.clone(),
            reachability,
            last_seen_ms: p.last_seen_ms,
            added_at_ms: p.added_at_ms,
            has_route: p
                .card
                .as_ref()
                .is_some_and(|c| c.hints().endpoint.is_some()),
            card: p.card.as_ref().map(|c| c.to_link()),
            waiting,
            why_unreached: why,
            verified: p.verified_ms.is_some() && p.key_changed_ms.is_none(),
            key_changed: p.key_changed_ms.is_some(),
            outcome: None,
            previous_name: None,
        }
    }

    pub fn contacts(&self) -> Result<Vec<ContactView>, NodeError> {
        let contacts = lock(&self.store).contacts()?;
        Ok(contacts.iter().map(|p| self.contact_view(p)).collect())
    }

    /// Removes a contact. Our contact key moves to its next generation, so the removed person can no longer
    /// read where we are from our records, and our contact endpoint moves to a new key at once (the removed
    /// person knew the old one); the remaining contacts get the new key and endpoint in our card on the
    /// reconnection that follows (we dial them all).
    pub fn remove_contact(self: &Arc<Self>, name: &str) -> Result<(), NodeError> {
        let account = lock(&self.store).remove_contact(name)?;
        {
            let mut st = lock(&self.state);
            if let Some(p) = st.peers.remove(&account) {
                for c in p.conns {
                    c.conn.close(0u32.into(), b"contact removed");
                }
            }
        }
        let generation = lock(&self.state).contact_key_gen + 1;
        lock(&self.store).set_setting(CONTACT_KEY_GEN, generation as i64)?;
        lock(&self.state).contact_key_gen = generation;
        self.refresh_card()?;
        self.contacts_changed(None);
        // The new endpoint closes every connection of the old one; then the records are published again
        // and every contact is dialled, and so gets the new card.
        tokio::spawn(self.clone().rotate_after_removal());
        Ok(())
    }

    /// The user compared safety numbers with the contact `name` and confirms: it is shown as verified,
    /// and a key change is accepted (sending resumes).
    pub fn confirm_verified(&self, name: &str) -> Result<ContactView, NodeError> {
        let peer = {
            let store = lock(&self.store);
            let peer = store.contact_by_name(name)?;
            store.set_verified(&peer.account, unix_ms())?;
            store.contact_by_name(name)?
        };
        if let Some(p) = lock(&self.state).peers.get_mut(&peer.account) {
            p.held = false;
        }
        self.wake.notify_one();
        Ok(self.contact_view(&peer))
    }

    /// The safety number with a contact, their address, and their name as stored (`name` may differ
    /// in case).
    pub fn safety_number(&self, name: &str) -> Result<(String, String, String), NodeError> {
        let peer = lock(&self.store).contact_by_name(name)?;
        Ok((
            kith_core::safety::safety_number(&self.account, &peer.account),
            Address::new(peer.account).to_string(),
            peer.petname.unwrap_or_else(|| name.to_owned()),
        ))
    }

    pub fn requests(&self) -> Result<Vec<RequestView>, NodeError> {
        let store = lock(&self.store);
        let mut out = vec![];
        for p in store.requests()? {
            out.push(RequestView {
                name: peer_name(&p).unwrap_or_else(|| Address::new(p.account).to_string()),
                address: Address::new(p.account).to_string(),
                messages: store.chat(&p.account, 20)?,
                first_seen_ms: p.added_at_ms,
            });
        }
        Ok(out)
    }

    pub fn accept_request(
        self: &Arc<Self>,
        request: &str,
        name: Option<&str>,
    ) -> Result<ContactView, NodeError> {
        let store = lock(&self.store);
        let peer = store.find_request(request)?;
        let name_given = name.is_some();
        let name = name
            .map(str::to_owned)
            .or(peer.display_name.clone())
            .unwrap_or_else(|| request.to_owned());
        kith_core::card::check_name(&name)?;
        if name.contains('@') {
            return Err(org_form(&name, name_given, "they call themselves"));
        }
        store.add_contact(&peer.account, &name, None, unix_ms())?;
        let p = store.contact_by_name(&name)?;
        drop(store);
        // Close the stranger-era connections and dial afresh: the new connection makes their outbox resend
        // at once what the rate limit held back.
        if let Some(rt) = lock(&self.state).peers.get_mut(&p.account) {
            for c in rt.conns.drain(..) {
                c.conn.close(0u32.into(), b"request accepted, reconnecting");
            }
        }
        self.say_hello(p.account);
        self.contacts_changed(None);
        Ok(self.contact_view(&p))
    }
}

/// What to call a peer: the user's name for it, else the name its own card gives, marked as such when it
/// looks like an organization's `service@domain` or a verification (a user's name with @ is given only to
/// the account an organization publishes: see [`Node::add_contact_as`]).
pub(super) fn peer_name(p: &Peer) -> Option<String> {
    p.petname.clone().or_else(|| {
        p.display_name.as_ref().map(|n| {
            if n.contains('@') || n.to_lowercase().contains("verified") {
                format!("{n:?} (a name they gave themselves, not verified)")
            } else {
                n.clone()
            }
        })
    })
}

/// The refusal of a contact name with @ (kept for verified organizations): given by the user, or taken
/// from what the peer calls itself (`theirs` says where).
fn org_form(name: &str, given: bool, theirs: &str) -> NodeError {
    NodeError::OrgName(if given {
        format!("the name {name:?} has an organization's form")
    } else {
        format!(
            "{theirs} {name:?}, an organization's form: give them a name of your own with --name"
        )
    })
}
