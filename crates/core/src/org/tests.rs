use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;

fn key(seed: u64) -> AccountSecret {
    AccountSecret::generate(&mut StdRng::seed_from_u64(seed))
}

fn statement(account: &AccountSecret) -> OrgStatement {
    OrgStatement::new(
        account.public(),
        vec!["support".into(), "sales".into()],
        NOW + 86_400,
    )
}

#[test]
fn both_channels_naming_one_key_verify_it() {
    let org = key(1);
    let mut https = statement(&org);
    https.services = vec!["support".into()];
    let v = judge(
        "Example.org.",
        Lookup::Found(statement(&org)),
        Lookup::Found(https),
        NOW,
    )
    .unwrap();
    assert_eq!(v.account, org.public());
    assert!(v.is_full());
    assert_eq!(v.label(), "Verified: example.org (DNSSEC + HTTPS)");
    assert_eq!(v.services, ["support"], "a service both list");
    assert_eq!(fingerprint(&v.account).len(), 39);
}

#[test]
fn two_keys_are_a_possible_compromise() {
    let (org, impostor) = (key(1), key(2));
    let refused = judge(
        "example.org",
        Lookup::Found(statement(&org)),
        Lookup::Found(statement(&impostor)),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(refused, Refused::Disagree { .. }));
    assert!(
        refused.to_string().contains("possible compromise"),
        "{refused}"
    );
}

#[test]
fn a_failed_check_refuses_and_never_falls_back_to_the_other_channel() {
    let org = key(1);
    let mut alone = statement(&org);
    alone.alone = true;
    for (dns, https, channel) in [
        (
            Lookup::Failed("the answer is not signed (bogus)".into()),
            Lookup::Found(alone.clone()),
            Channel::Dns,
        ),
        (
            Lookup::Found(alone.clone()),
            Lookup::Failed("certificate signed by an unknown authority".into()),
            Channel::Https,
        ),
    ] {
        let refused = judge("example.org", dns, https, NOW).unwrap_err();
        assert!(
            matches!(&refused, Refused::ChannelFailed { channel: c, .. } if *c == channel),
            "{refused}"
        );
        assert!(refused.to_string().contains("possible attack"));
    }
}

#[test]
fn one_channel_counts_only_where_the_organization_allows_it() {
    let org = key(1);
    let refused = judge(
        "example.org",
        Lookup::Found(statement(&org)),
        Lookup::Absent,
        NOW,
    )
    .unwrap_err();
    assert!(matches!(
        refused,
        Refused::OneChannel {
            channel: Channel::Dns,
            ..
        }
    ));
    let mut alone = statement(&org);
    alone.alone = true;
    let v = judge(
        "example.org",
        Lookup::Unreachable("timed out".into()),
        Lookup::Found(alone),
        NOW,
    )
    .unwrap();
    assert!(!v.is_full());
    assert_eq!(v.label(), "Verified (HTTPS only): example.org");
    assert!(v.missing.unwrap().contains("timed out"));
    assert!(matches!(
        judge("example.org", Lookup::Absent, Lookup::Absent, NOW),
        Err(Refused::NotPublished { .. })
    ));
}

#[test]
fn an_expired_statement_is_refused() {
    let org = key(1);
    let mut old = statement(&org);
    old.expires = NOW;
    let refused = judge(
        "example.org",
        Lookup::Found(statement(&org)),
        Lookup::Found(old),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(
        refused,
        Refused::Expired {
            channel: Channel::Https,
            ..
        }
    ));
    assert!(refused.to_string().contains("expired"));
}

#[test]
fn a_new_key_needs_the_pinned_keys_signature() {
    let (old, new, stranger) = (key(1), key(2), key(3));
    let first = judge(
        "example.org",
        Lookup::Found(statement(&old)),
        Lookup::Found(statement(&old)),
        NOW,
    )
    .unwrap();
    assert_eq!(check_pin(&first, None), Ok(Pin::New(old.public())));
    assert_eq!(check_pin(&first, Some(old.public())), Ok(Pin::Same));

    // A new key with no signature from the pinned one: refused loudly.
    let bare = judge(
        "example.org",
        Lookup::Found(statement(&new)),
        Lookup::Found(statement(&new)),
        NOW,
    )
    .unwrap();
    let refused = check_pin(&bare, Some(old.public())).unwrap_err();
    assert!(
        refused.to_string().contains("possible impostor"),
        "{refused}"
    );

    // Signed by the pinned key, for this domain: the pin moves.
    let mut rotated = statement(&new);
    rotated.rotation = Some(Rotation::issue(&old, "example.org", new.public(), NOW));
    let v = judge(
        "example.org",
        Lookup::Found(rotated.clone()),
        Lookup::Found(rotated.clone()),
        NOW,
    )
    .unwrap();
    assert_eq!(
        check_pin(&v, Some(old.public())),
        Ok(Pin::Rotated {
            from: old.public(),
            to: new.public()
        })
    );
    // Signed by anyone else, or for another domain: refused.
    for proof in [
        Rotation::issue(&stranger, "example.org", new.public(), NOW),
        Rotation::issue(&old, "example.net", new.public(), NOW),
    ] {
        let mut s = statement(&new);
        s.rotation = Some(proof);
        let v = judge(
            "example.org",
            Lookup::Found(s.clone()),
            Lookup::Found(s),
            NOW,
        )
        .unwrap();
        assert!(matches!(
            check_pin(&v, Some(old.public())),
            Err(Refused::KeyChanged { .. })
        ));
    }
    // A forged signature (another key change's, moved over) does not verify.
    let mut forged = Rotation::issue(&old, "example.org", stranger.public(), NOW);
    forged.to = new.public();
    assert!(!forged.verify("example.org"));
}

#[test]
fn txt_records_round_trip_and_refuse_what_is_ambiguous_or_incomplete() {
    let (old, org) = (key(1), key(2));
    let mut s = statement(&org);
    s.alone = true;
    s.rotation = Some(Rotation::issue(&old, "example.org", org.public(), NOW));
    let txt = format_txt(&s);
    assert!(txt.starts_with("v=kith1 a=kith:"), "{txt}");
    let other = "google-site-verification=abc".to_string();
    assert_eq!(parse_txt(&[other.clone(), txt.clone()]).unwrap(), Some(s));
    assert_eq!(parse_txt(std::slice::from_ref(&other)).unwrap(), None);
    assert!(
        parse_txt(&[txt.clone(), txt.clone()])
            .unwrap_err()
            .contains("more than one")
    );
    let no_exp = format!("v=kith1; a={}", Address::new(org.public()));
    assert!(parse_txt(&[no_exp]).unwrap_err().contains("exp="));
    assert!(
        parse_txt(&["v=kith1 a=kith:nonsense exp=5".into()])
            .unwrap_err()
            .contains("not a kith address")
    );
    assert!(
        parse_txt(&[format!(
            "v=kith1 a={} exp=5 svc=Support!",
            Address::new(org.public())
        )])
        .unwrap_err()
        .contains("service")
    );
}

#[test]
fn documents_round_trip_delegate_once_and_must_name_the_domain() {
    let org = key(2);
    let s = statement(&org);
    let doc = format_document(&s, "Example.org");
    assert_eq!(
        parse_document(doc.as_bytes(), "example.org").unwrap(),
        Document::Statement(s)
    );
    assert!(
        parse_document(doc.as_bytes(), "example.net")
            .unwrap_err()
            .contains("not \"example.net\"")
    );
    let delegate = br#"{"kith": 1, "domain": "example.org", "delegate": "https://gw.hoster.example/o/example.org.json", "later": true}"#;
    assert_eq!(
        parse_document(delegate, "example.org").unwrap(),
        Document::Delegate("https://gw.hoster.example/o/example.org.json".into())
    );
    let plain = br#"{"kith": 1, "domain": "example.org", "delegate": "http://gw.example/"}"#;
    assert!(
        parse_document(plain, "example.org")
            .unwrap_err()
            .contains("https")
    );
    assert!(
        parse_document(b"<html>", "example.org")
            .unwrap_err()
            .contains("not a kith.json")
    );
    assert!(
        parse_document(&vec![b' '; 20_000], "example.org")
            .unwrap_err()
            .contains("16 KiB")
    );
}

fn roster_of(org: &AccountSecret, seq: u64, expires: u64) -> roster::Roster {
    let device = crate::DeviceSecret::generate(&mut StdRng::seed_from_u64(seq + 100));
    let gateway = roster::Gateway {
        name: "gw1".into(),
        device: device.public(),
        endpoint: crate::EndpointKey::from_seed(&device.gateway_endpoint_seed()),
        direct: vec!["192.0.2.10:7000".parse().unwrap()],
        relays: vec![],
    };
    roster::Roster::issue(org, "example.org", seq, NOW, expires, vec![gateway]).unwrap()
}

/// The list of gateways travels whole in the HTTPS document and as a digest in the TXT record; the
/// verdict carries it only when both name the same one, it is the account's, and it is current.
#[test]
fn the_gateways_both_channels_name_are_the_verified_ones() {
    let org = key(1);
    let roster = roster_of(&org, 2, NOW + 3600);
    // Through the two formats, as a client reads them.
    let published = statement(&org).with_roster(roster.clone());
    let txt = format_txt(&published);
    assert!(txt.contains(&format!("dev={}", roster.digest())), "{txt}");
    let dns = parse_txt(&[txt]).unwrap().unwrap();
    assert_eq!(dns.roster, None, "the TXT record holds only the digest");
    let Document::Statement(https) = parse_document(
        format_document(&published, "example.org").as_bytes(),
        "example.org",
    )
    .unwrap() else {
        panic!("a statement")
    };
    let v = judge(
        "example.org",
        Lookup::Found(dns.clone()),
        Lookup::Found(https.clone()),
        NOW,
    )
    .unwrap();
    assert_eq!(v.roster, Some(roster.clone()));

    // Another list in HTTPS than DNSSEC names (a newer one DNS does not vouch for, or none).
    let newer = statement(&org).with_roster(roster_of(&org, 3, NOW + 3600));
    for other in [newer, statement(&org)] {
        let refused = judge(
            "example.org",
            Lookup::Found(dns.clone()),
            Lookup::Found(other),
            NOW,
        )
        .unwrap_err();
        assert!(
            matches!(refused, Refused::GatewaysDisagree { .. }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("possible compromise"),
            "{refused}"
        );
    }

    // A list signed by another key than the account both name, and an expired one.
    let impostor = key(9);
    let mut foreign = roster_of(&impostor, 2, NOW + 3600);
    foreign.account = org.public();
    for (bad, cause) in [
        (foreign, "not signed by its account key"),
        (roster_of(&org, 2, NOW), "expired"),
    ] {
        let both = statement(&org).with_roster(bad);
        let refused = judge(
            "example.org",
            Lookup::Found(both.clone()),
            Lookup::Found(both),
            NOW,
        )
        .unwrap_err();
        assert!(matches!(refused, Refused::Gateways { .. }), "{refused}");
        assert!(refused.to_string().contains(cause), "{refused}");
    }

    // A document whose list does not decode is the channel's failure, with the field named.
    let broken = format_document(&published, "example.org").replace(&roster.encode(), "yyyy");
    let err = parse_document(broken.as_bytes(), "example.org").unwrap_err();
    assert!(err.contains("\"gateways\""), "{err}");
}
