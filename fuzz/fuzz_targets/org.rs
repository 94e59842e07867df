//! An organization's statements and gateway lists: the `_kith` TXT record (`org::parse_txt`), the HTTPS
//! document (`org::parse_document`), and the enrollment and grant texts pasted between a gateway and its
//! organization's admin (`roster::Enrollment::decode`, `roster::Grant::decode`).
//!
//! Input: a mode byte, then: (0) TXT record text; (1) document bytes; (2) enrollment text; (3) grant text
//! (for the fixture's device); (4) the bytes of a list of gateways (`Roster::from_bytes`).
//! Invariants: a statement read back from the record or document it formats is the same statement; a
//! document's list of gateways has the digest the statement carries; an enrollment or grant that decodes
//! encodes to a text that decodes to it; a list of gateways that verifies still verifies after a round
//! trip through its text form.
#![no_main]

use kith_core::org::roster::{Enrollment, Gateway, Grant, Roster};
use kith_core::org::{self, Document, OrgStatement};
use kith_core::EndpointKey;
use libfuzzer_sys::fuzz_target;

const DOMAIN: &str = "example.org";

fn gateway() -> Gateway {
    let device = kith_fuzz::device();
    Gateway {
        name: "gw1".into(),
        device: device.public(),
        endpoint: EndpointKey::from_seed(&device.gateway_endpoint_seed()),
        direct: vec!["192.0.2.10:7000".parse().unwrap()],
        relays: vec!["https://relay.example.org/".into()],
    }
}

fn roster() -> Roster {
    Roster::issue(kith_fuzz::account(), DOMAIN, 3, 100, u64::MAX, vec![gateway()]).unwrap()
}

fn statement() -> OrgStatement {
    OrgStatement::new(kith_fuzz::account().public(), vec!["support".into()], 2_000_000_000)
        .with_roster(roster())
}

fn seeds() -> Vec<Vec<u8>> {
    let grant = Grant {
        domain: DOMAIN.into(),
        cert: kith_fuzz::device_cert(),
        card: kith_fuzz::card().to_bytes(),
    };
    vec![
        [&[0u8][..], org::format_txt(&statement()).as_bytes()].concat(),
        [&[1u8][..], org::format_document(&statement(), DOMAIN).as_bytes()].concat(),
        [
            &[2u8][..],
            Enrollment::issue(kith_fuzz::device(), gateway())
                .unwrap()
                .encode()
                .as_bytes(),
        ]
        .concat(),
        [&[3u8][..], grant.encode().as_bytes()].concat(),
        [&[4u8][..], &roster().to_bytes()].concat(),
    ]
}

fn check_statement(s: &OrgStatement) {
    let txt = org::format_txt(s);
    let mut from_txt = org::parse_txt(&[txt]).unwrap().unwrap();
    // The record carries the list's digest only.
    from_txt.roster = s.roster.clone();
    assert_eq!(&from_txt, s);
    match org::parse_document(org::format_document(s, DOMAIN).as_bytes(), DOMAIN) {
        Ok(Document::Statement(d)) => {
            assert_eq!(d.roster, s.roster);
            if let Some(r) = &d.roster {
                assert_eq!(d.roster_digest.as_deref(), Some(r.digest().as_str()));
            }
        }
        other => panic!("a formatted document parsed as {other:?}"),
    }
}

fn check_roster(r: &Roster) {
    assert_eq!(Roster::decode(&r.encode()).as_ref(), Ok(r));
    assert_eq!(Roster::from_bytes(&r.to_bytes()).as_ref(), Ok(r));
    if r.verify(DOMAIN, &kith_fuzz::account().public(), 0).is_ok() {
        let back = Roster::decode(&r.encode()).unwrap();
        assert!(back.verify(DOMAIN, &kith_fuzz::account().public(), 0).is_ok());
        assert_eq!(back.digest(), r.digest());
    }
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("org", seeds); },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(Some(s)) = org::parse_txt(&[text.to_owned()])
            {
                // A digest the record names need not be a list's: compare as read.
                let again = org::parse_txt(&[org::format_txt(&s)]).unwrap().unwrap();
                assert_eq!(again, s);
            }
        }
        1 => {
            if let Ok(Document::Statement(s)) = org::parse_document(rest, DOMAIN) {
                if let Some(r) = &s.roster {
                    check_roster(r);
                }
                check_statement(&s);
            }
        }
        2 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(e) = Enrollment::decode(text)
            {
                assert_eq!(Enrollment::decode(&e.encode()).as_ref(), Ok(&e));
            }
        }
        3 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok((g, card)) = Grant::decode(text, &kith_fuzz::device().public())
            {
                assert_eq!(card.account(), g.cert.account);
                let (again, _) = Grant::decode(&g.encode(), &kith_fuzz::device().public()).unwrap();
                assert_eq!(again, g);
            }
        }
        _ => {
            if let Ok(r) = Roster::from_bytes(rest) {
                check_roster(&r);
            }
        }
    }
});
