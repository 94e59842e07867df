//! Both channels against real servers in-process ([`crate::lab`]): a DNSSEC-signed zone and an HTTPS
//! server with certificates from a test authority.

use super::*;
use crate::lab::{Authority, Lab, Signing, Web, Zone, self_signed};
use kith_core::AccountSecret;
use kith_core::org::{Channel, OrgStatement, Rotation, check_pin, format_document, format_txt};
use rand::SeedableRng;
use rand::rngs::StdRng;

const DOMAIN: &str = "example.org";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn statement(account: &AccountSecret) -> OrgStatement {
    OrgStatement::new(account.public(), vec!["support".into()], now() + 86_400)
}

fn key(seed: u64) -> AccountSecret {
    AccountSecret::generate(&mut StdRng::seed_from_u64(seed))
}

/// A lab whose zone is signed as `signing` and whose web server shows `cert`.
async fn custom(
    txt: &[String],
    signing: Signing,
    authority: &Authority,
    cert: (Vec<u8>, Vec<u8>),
    document: Option<String>,
) -> (Zone, Web, OrgResolver) {
    let zone = Zone::start(DOMAIN, txt, signing).await.unwrap();
    let web = Web::start(cert, org::WELL_KNOWN_PATH, document)
        .await
        .unwrap();
    let resolver = OrgResolver::new(OrgConfig {
        dns_servers: vec![zone.addr()],
        trust_anchor: Some(zone.anchor().to_owned()),
        https_roots: Some(vec![authority.der().to_vec()]),
        https_addrs: vec![(DOMAIN.into(), web.addr())],
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    (zone, web, resolver)
}

#[track_caller]
fn assert_channel_failed(refused: &Refused, channel: Channel, says: &str) {
    assert!(
        matches!(refused, Refused::ChannelFailed { channel: c, .. } if *c == channel),
        "{refused}"
    );
    assert!(refused.to_string().contains(says), "{refused}");
}

async fn lab(txt: &[String], document: Option<String>) -> (Lab, OrgResolver) {
    let lab = Lab::start(DOMAIN, txt, document).await.unwrap();
    let r = OrgResolver::new(lab.config()).unwrap();
    (lab, r)
}

#[tokio::test]
async fn both_channels_agreeing_verify_the_organization() {
    let account = key(1);
    let s = statement(&account);
    let (_lab, r) = lab(
        &[format_txt(&s), "v=spf1 -all".into()],
        Some(format_document(&s, DOMAIN)),
    )
    .await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert_eq!(v.account, account.public());
    assert_eq!(v.label(), "Verified: example.org (DNSSEC + HTTPS)");
    assert_eq!(v.services, ["support"]);
}

#[tokio::test]
async fn a_forged_or_wrongly_signed_zone_is_refused() {
    let s = statement(&key(1));
    let authority = Authority::new();
    for signing in [Signing::Unsigned, Signing::OtherKey] {
        let (_z, _w, r) = custom(
            &[format_txt(&s)],
            signing,
            &authority,
            authority.leaf(&[DOMAIN]),
            Some(format_document(&s, DOMAIN)),
        )
        .await;
        let refused = r.verify(DOMAIN, now()).await.unwrap_err();
        assert_channel_failed(&refused, Channel::Dns, "possible attack");
    }
}

#[tokio::test]
async fn a_self_signed_or_wrong_authority_certificate_is_refused() {
    let s = statement(&key(1));
    let authority = Authority::new();
    for cert in [self_signed(&[DOMAIN]), Authority::new().leaf(&[DOMAIN])] {
        let (_z, _w, r) = custom(
            &[format_txt(&s)],
            Signing::Good,
            &authority,
            cert,
            Some(format_document(&s, DOMAIN)),
        )
        .await;
        let refused = r.verify(DOMAIN, now()).await.unwrap_err();
        assert_channel_failed(&refused, Channel::Https, "TLS");
    }
}

#[tokio::test]
async fn another_key_in_the_document_than_in_dns_is_a_possible_compromise() {
    let (account, impostor) = (key(1), key(2));
    let (_lab, r) = lab(
        &[format_txt(&statement(&account))],
        Some(format_document(&statement(&impostor), DOMAIN)),
    )
    .await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::Disagree { .. }), "{refused}");
}

#[tokio::test]
async fn an_expired_record_is_refused() {
    let mut s = statement(&key(1));
    let document = Some(format_document(&s, DOMAIN));
    s.expires = now() - 1;
    let (_lab, r) = lab(&[format_txt(&s)], document).await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Refused::Expired {
                channel: Channel::Dns,
                ..
            }
        ),
        "{refused}"
    );
}

#[tokio::test]
async fn one_channel_counts_only_where_allowed_and_nothing_at_all_is_not_published() {
    let mut s = statement(&key(1));
    let (lab, r) = lab(&[format_txt(&s)], None).await;
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::OneChannel { .. }), "{refused}");

    s.alone = true;
    lab.zone.publish(&[format_txt(&s)]).await.unwrap();
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert_eq!(v.label(), "Verified (DNSSEC only): example.org");

    // No TXT record (a signed "no such record") and no document.
    lab.zone.publish(&[]).await.unwrap();
    let refused = r.verify(DOMAIN, now()).await.unwrap_err();
    assert!(matches!(refused, Refused::NotPublished { .. }), "{refused}");
}

#[tokio::test]
async fn a_key_change_is_taken_only_with_the_pinned_keys_signature() {
    let (old, new) = (key(1), key(2));
    let mut s = statement(&new);
    let (lab, r) = lab(&[format_txt(&s)], Some(format_document(&s, DOMAIN))).await;
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(matches!(
        check_pin(&v, Some(old.public())),
        Err(Refused::KeyChanged { .. })
    ));

    s.rotation = Some(Rotation::issue(&old, DOMAIN, new.public(), now()));
    lab.publish(&s).await.unwrap();
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(matches!(
        check_pin(&v, Some(old.public())),
        Ok(kith_core::org::Pin::Rotated { .. })
    ));
}

#[tokio::test]
async fn a_hosted_gateways_document_is_followed_once() {
    let s = statement(&key(1));
    let authority = Authority::new();
    let hoster = Web::start(
        authority.leaf(&["gw.hoster.test"]),
        "/orgs/example.org.json",
        Some(format_document(&s, DOMAIN)),
    )
    .await
    .unwrap();
    let delegate = format!(
        r#"{{"kith": 1, "domain": "example.org", "delegate": "https://gw.hoster.test:{}/orgs/example.org.json"}}"#,
        hoster.addr().port()
    );
    let zone = Zone::start(DOMAIN, &[format_txt(&s)], Signing::Good)
        .await
        .unwrap();
    let web = Web::start(
        authority.leaf(&[DOMAIN]),
        org::WELL_KNOWN_PATH,
        Some(delegate),
    )
    .await
    .unwrap();
    let r = OrgResolver::new(OrgConfig {
        dns_servers: vec![zone.addr()],
        trust_anchor: Some(zone.anchor().to_owned()),
        https_roots: Some(vec![authority.der().to_vec()]),
        https_addrs: vec![
            (DOMAIN.into(), web.addr()),
            ("gw.hoster.test".into(), hoster.addr()),
        ],
        timeout: Duration::from_secs(10),
    })
    .unwrap();
    let v = r.verify(DOMAIN, now()).await.unwrap();
    assert!(v.is_full(), "{}", v.label());
}
