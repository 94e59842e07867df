//! An organization's admin, on the machine that holds its account key (which may otherwise stay
//! offline): enrolls gateway devices, revokes them, and makes what to publish, the `_kith` TXT record and
//! the HTTPS document with the signed list of gateways ([`kith_core::org::roster`]). No daemon runs: the
//! account key signs, and the admin copies the results to the gateways, the DNS zone and the web server.
//!
//! The admin's state is one file per domain in the profile (`org/<domain>.json`): the services, the
//! gateways' enrollments as they were pasted (checked again at each use), and the number of the last
//! list signed, which only grows.

use crate::profile::{Identity, Profile, ProfileError};
use kith_core::ContactCard;
use kith_core::identity::DeviceCert;
use kith_core::org::roster::{Enrollment, Gateway, Grant, Roster};
use kith_core::org::{self, OrgStatement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How long a list of gateways (and the statements around it) holds when no `--days` is given.
pub const DEFAULT_DAYS: u64 = 30;
/// The longest validity an admin may give.
pub const MAX_DAYS: u64 = 366;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrgFile {
    domain: String,
    services: Vec<String>,
    #[serde(default)]
    alone: bool,
    days: u64,
    /// The number of the last list of gateways signed.
    seq: u64,
    /// Gateway name -> its enrollment text (`kith-enroll:...`).
    gateways: BTreeMap<String, String>,
}

/// What to publish, and what it says.
#[derive(Debug, Clone, Serialize)]
pub struct Publication {
    pub domain: String,
    /// The TXT record's text, for `_kith.<domain>` in the signed zone.
    pub txt: String,
    /// The document for `https://<domain>/.well-known/kith.json`.
    pub document: String,
    pub address: String,
    pub fingerprint: String,
    pub services: Vec<String>,
    /// The gateways on the list, by name.
    pub gateways: Vec<String>,
    pub seq: u64,
    /// Unix seconds: publish again before (`kith org publish`).
    pub expires: u64,
}

fn admin_error(text: impl Into<String>) -> ProfileError {
    ProfileError::Gateway(text.into())
}

fn account_of(id: &Identity) -> Result<&kith_core::AccountSecret, ProfileError> {
    id.account.as_ref().ok_or_else(|| {
        admin_error(
            "this profile is a gateway device: an organization's gateways are enrolled and revoked \
             with the profile that holds the organization's account key",
        )
    })
}

fn file_of(profile: &Profile, domain: &str) -> PathBuf {
    profile.path("org").join(format!("{domain}.json"))
}

fn load(profile: &Profile, domain: &str) -> Result<Option<OrgFile>, ProfileError> {
    let path = file_of(profile, domain);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProfileError::Damaged {
                file: path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProfileError::Io { path, source }),
    }
}

fn save(profile: &Profile, f: &OrgFile) -> Result<(), ProfileError> {
    let dir = profile.path("org");
    std::fs::create_dir_all(&dir).map_err(|source| ProfileError::Io {
        path: dir.clone(),
        source,
    })?;
    let path = file_of(profile, &f.domain);
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(f).unwrap_or_default();
    std::fs::write(&tmp, json)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| ProfileError::Io { path, source })
}

fn check_domain(domain: &str) -> Result<String, ProfileError> {
    org::valid_domain(domain).ok_or_else(|| {
        admin_error(format!(
            "{domain:?} is not a domain name (like example.org)"
        ))
    })
}

/// What the admin may change when publishing.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub services: Option<Vec<String>>,
    pub days: Option<u64>,
    pub alone: Option<bool>,
}

/// Signs a new list of the domain's gateways (its number one higher) and makes the statements around
/// it, after `change` (if any) altered the state; the state is saved only if all of that succeeded.
fn sign(
    profile: &Profile,
    id: &Identity,
    domain: &str,
    options: &PublishOptions,
    now: u64,
    change: impl FnOnce(&mut OrgFile) -> Result<(), ProfileError>,
) -> Result<Publication, ProfileError> {
    let account = account_of(id)?;
    let domain = check_domain(domain)?;
    let mut f = load(profile, &domain)?.unwrap_or(OrgFile {
        domain: domain.clone(),
        services: vec!["support".into()],
        alone: false,
        days: DEFAULT_DAYS,
        seq: 0,
        gateways: BTreeMap::new(),
    });
    if let Some(services) = &options.services {
        f.services = services.clone();
    }
    if let Some(days) = options.days {
        if days == 0 || days > MAX_DAYS {
            return Err(admin_error(format!(
                "--days {days}: from 1 to {MAX_DAYS} days"
            )));
        }
        f.days = days;
    }
    if let Some(alone) = options.alone {
        f.alone = alone;
    }
    change(&mut f)?;
    let gateways: Vec<Gateway> = f
        .gateways
        .values()
        .map(|text| Enrollment::decode(text).map(|e| e.gateway))
        .collect::<Result<_, _>>()
        .map_err(|e| admin_error(format!("a kept enrollment: {e}")))?;
    f.seq += 1;
    let expires = now + f.days * 86_400;
    let roster = Roster::issue(account, &domain, f.seq, now, expires, gateways)
        .map_err(|e| admin_error(e.to_string()))?;
    let mut statement = OrgStatement::new(account.public(), f.services.clone(), expires)
        .with_roster(roster.clone());
    statement.alone = f.alone;
    // The services are checked as a client checks them, before anything is saved.
    let txt = org::format_txt(&statement);
    org::parse_txt(std::slice::from_ref(&txt))
        .map_err(|e| admin_error(format!("the TXT record would not read: {e}")))?;
    save(profile, &f)?;
    Ok(Publication {
        document: org::format_document(&statement, &domain),
        txt,
        address: kith_core::Address::new(account.public()).to_string(),
        fingerprint: org::fingerprint(&account.public()),
        services: f.services,
        gateways: roster.gateways.iter().map(|g| g.name.clone()).collect(),
        seq: roster.seq,
        expires,
        domain,
    })
}

/// Signs a new list of the domain's gateways with new settings (`kith org publish`): also what renews it
/// before it expires.
pub fn publish(
    profile: &Profile,
    id: &Identity,
    domain: &str,
    options: &PublishOptions,
    now: u64,
) -> Result<Publication, ProfileError> {
    sign(profile, id, domain, options, now, |_| Ok(()))
}

/// Enrolls the gateway whose enrollment text is `enrollment`: the account certifies its device and signs
/// its card, and the gateway joins the list. Returns the grant for the gateway and what to publish.
pub fn enroll(
    profile: &Profile,
    id: &Identity,
    domain: &str,
    enrollment: &str,
    now: u64,
) -> Result<(String, Publication), ProfileError> {
    let account = account_of(id)?;
    let e = Enrollment::decode(enrollment).map_err(|e| admin_error(e.to_string()))?;
    let gateway = e.gateway.clone();
    let publication = sign(profile, id, domain, &PublishOptions::default(), now, |f| {
        if let Some(kept) = f.gateways.get(&gateway.name)
            && Enrollment::decode(kept).is_ok_and(|k| k.gateway.device != gateway.device)
        {
            return Err(admin_error(format!(
                "a gateway named {:?} is enrolled already, with another device: revoke it first \
                 (`kith org revoke {} {}`) or name the new one otherwise",
                gateway.name, f.domain, gateway.name
            )));
        }
        f.gateways
            .insert(gateway.name.clone(), enrollment.trim().to_owned());
        Ok(())
    })?;
    let card = ContactCard::issue(account, &publication.domain, gateway.hints(), now)
        .map_err(|e| admin_error(e.to_string()))?;
    let grant = Grant {
        domain: publication.domain.clone(),
        cert: DeviceCert::issue(account, gateway.device, now),
        card: card.to_bytes(),
    };
    Ok((grant.encode(), publication))
}

/// Takes the gateway `name` off the domain's list: once the new list is published, clients refuse that
/// device (its certificate still verifies, so the list is what counts).
pub fn revoke(
    profile: &Profile,
    id: &Identity,
    domain: &str,
    name: &str,
    now: u64,
) -> Result<Publication, ProfileError> {
    sign(profile, id, domain, &PublishOptions::default(), now, |f| {
        if f.gateways.remove(name).is_none() {
            let known: Vec<&str> = f.gateways.keys().map(String::as_str).collect();
            return Err(admin_error(format!(
                "{} has no gateway named {name:?}; it has: {}",
                f.domain,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway_profile(dir: &std::path::Path, name: &str, port: u16) -> Profile {
        let p = Profile::new(dir.join(name));
        p.init_gateway(name, None, port, true).unwrap();
        p
    }

    /// The whole path of a gateway device: made without an account, enrolled by the admin, granted,
    /// unlocked as a device of the organization's account; revoked, it is off the next list.
    #[test]
    fn a_gateway_is_enrolled_granted_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let admin = Profile::new(dir.path().join("admin"));
        admin.init("example.org", None, 0, true).unwrap();
        let admin_id = admin.unlock(None).unwrap();
        let gw = gateway_profile(dir.path(), "gw1", 7001);
        // Not enrolled: it cannot run, and says what to do.
        let err = gw.unlock(None).unwrap_err().to_string();
        assert!(err.contains("kith device request"), "{err}");
        let enrollment = gw
            .enrollment(None, vec!["127.0.0.1:7001".parse().unwrap()], vec![])
            .unwrap()
            .encode();
        let (grant, first) = enroll(&admin, &admin_id, "Example.org", &enrollment, 1000).unwrap();
        assert_eq!(first.gateways, ["gw1"]);
        assert_eq!(first.seq, 1);
        // A person's profile takes no grant; the gateway takes its own.
        assert!(admin.install_grant(&grant).is_err());
        let (domain, account) = gw.install_grant(&grant).unwrap();
        assert_eq!(domain, "example.org");
        assert_eq!(account, admin_id.account_key);
        let gw_id = gw.unlock(None).unwrap();
        assert!(gw_id.is_gateway_device());
        assert_eq!(gw_id.account_key, admin_id.account_key);
        assert_eq!(
            gw_id.gateway_card.as_ref().unwrap().account(),
            admin_id.account_key
        );
        // A gateway device signs nothing for the account.
        assert!(enroll(&gw, &gw_id, "example.org", &enrollment, 1000).is_err());

        // A second gateway, then the first revoked: the list moves on and names only the second.
        let gw2 = gateway_profile(dir.path(), "gw2", 7002);
        let e2 = gw2
            .enrollment(None, vec!["127.0.0.1:7002".parse().unwrap()], vec![])
            .unwrap()
            .encode();
        let (_, second) = enroll(&admin, &admin_id, "example.org", &e2, 1001).unwrap();
        assert_eq!(second.gateways, ["gw1", "gw2"]);
        // Another device under a name in use is refused.
        let other = gateway_profile(dir.path(), "other", 7003);
        let mut e3 = other
            .enrollment(None, vec!["127.0.0.1:7003".parse().unwrap()], vec![])
            .unwrap();
        e3.gateway.name = "gw1".into();
        let forged = e3.encode();
        assert!(enroll(&admin, &admin_id, "example.org", &forged, 1002).is_err());
        let third = revoke(&admin, &admin_id, "example.org", "gw1", 1003).unwrap();
        assert_eq!(third.gateways, ["gw2"]);
        assert_eq!(third.seq, 3);
        let err = revoke(&admin, &admin_id, "example.org", "gw9", 1004)
            .unwrap_err()
            .to_string();
        assert!(err.contains("it has: gw2"), "{err}");
        // What is published reads as a client reads it, with the list both channels name.
        let txt = org::parse_txt(std::slice::from_ref(&third.txt))
            .unwrap()
            .unwrap();
        let Ok(org::Document::Statement(doc)) =
            org::parse_document(third.document.as_bytes(), "example.org")
        else {
            panic!("a statement")
        };
        let v = org::judge(
            "example.org",
            org::Lookup::Found(txt),
            org::Lookup::Found(doc),
            1005,
        )
        .unwrap();
        let roster = v.roster.unwrap();
        assert_eq!(roster.seq, 3);
        assert!(roster.gateway(&gw_id.device.public()).is_none());
        assert_eq!(third.expires, 1003 + DEFAULT_DAYS * 86_400);
    }
}
