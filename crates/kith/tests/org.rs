//! `kith org`: a real daemon looks an organization up in a signed zone and an HTTPS server on this
//! machine (kith_org::lab), shows whether it is verified, and pins its key.

use kith::process::Daemon;
use kith_core::AccountSecret;
use kith_core::org::{OrgStatement, Rotation, format_document};
use kith_org::lab::Lab;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::path::Path;
use std::process::{Command, Output};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn now() -> u64 {
    kith_node::node::unix_now()
}

fn statement(account: &AccountSecret) -> OrgStatement {
    OrgStatement {
        account: account.public(),
        services: vec!["support".into(), "sales".into()],
        expires: now() + 86_400,
        alone: false,
        rotation: None,
    }
}

fn kith(home: &Path, args: &[&str]) -> Output {
    Command::new(exe())
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

fn said(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Points the profile's `[org]` settings at the lab (its zone key as the trust anchor, its authority as
/// the only root).
fn configure(home: &Path, lab: &Lab) {
    kith::sip_peers::configure_org(home, lab).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kith_org_verify_shows_the_verified_organization_and_pins_its_key() {
    let org = AccountSecret::generate(&mut StdRng::seed_from_u64(1));
    let s = statement(&org);
    let lab = Lab::start(
        "example.org",
        &[kith_core::org::format_txt(&s)],
        Some(format_document(&s, "example.org")),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let mut alice = Daemon::init(exe(), &home, "alice").unwrap();
    configure(&home, &lab);
    alice.start().await.unwrap();

    let first = kith(&home, &["org", "verify", "example.org"]);
    let (out, err) = said(&first);
    assert!(first.status.success(), "{err}");
    assert!(
        out.contains("Verified: example.org (DNSSEC + HTTPS)"),
        "{out}"
    );
    assert!(
        out.contains(&kith_core::org::fingerprint(&org.public())),
        "{out}"
    );
    assert!(out.contains("services    support, sales"), "{out}");
    assert!(out.contains("first seen"), "{out}");
    let again = said(&kith(&home, &["org", "verify", "Example.Org."])).0;
    assert!(again.contains("the key pinned before"), "{again}");

    // `kith send service@domain` verifies first and writes to the organization's account, added as a
    // contact under that name; sales@example.org is the same account, so it goes to that contact; `kith
    // add` says so, with what was verified; a service not offered is refused.
    let address = kith_core::Address::new(org.public()).to_string();
    let sent = kith(&home, &["send", "support@example.org", "hello support"]);
    assert!(sent.status.success(), "{:?}", said(&sent));
    assert!(
        said(&sent).0.contains("to support@example.org"),
        "{:?}",
        said(&sent)
    );
    let sent = kith(&home, &["send", "sales@example.org", "hello sales"]);
    assert!(sent.status.success(), "{:?}", said(&sent));
    assert!(
        said(&sent).0.contains("to support@example.org"),
        "{:?}",
        said(&sent)
    );
    let added = said(&kith(&home, &["add", "support@example.org"])).0;
    assert!(
        added.contains(&format!(
            "support@example.org is already a contact ({address})"
        )) && added.contains("Verified: example.org (DNSSEC + HTTPS)"),
        "{added}"
    );
    let nope = kith(&home, &["add", "billing@example.org"]);
    assert_eq!(nope.status.code(), Some(2), "{:?}", said(&nope));
    assert!(
        said(&nope)
            .1
            .contains("example.org offers no service \"billing\"; it offers: support, sales"),
        "{:?}",
        said(&nope)
    );

    // Another key with no signature from the pinned one: refused loudly, nothing pinned.
    let impostor = AccountSecret::generate(&mut StdRng::seed_from_u64(2));
    lab.publish(&statement(&impostor)).await.unwrap();
    let refused = kith(&home, &["org", "verify", "example.org"]);
    assert_eq!(refused.status.code(), Some(2), "{:?}", said(&refused));
    assert!(
        said(&refused).1.contains("possible impostor"),
        "{:?}",
        said(&refused)
    );

    // The two channels disagree: refused, "possible compromise".
    lab.web.set(Some(format_document(&s, "example.org")));
    let split = kith(&home, &["org", "verify", "example.org"]);
    assert_eq!(split.status.code(), Some(2));
    assert!(
        said(&split).1.contains("possible compromise"),
        "{:?}",
        said(&split)
    );

    // A change the pinned key signed is taken, and pinned.
    let new = AccountSecret::generate(&mut StdRng::seed_from_u64(3));
    let mut rotated = statement(&new);
    rotated.rotation = Some(Rotation::issue(&org, "example.org", new.public(), now()));
    lab.publish(&rotated).await.unwrap();
    let moved = said(&kith(&home, &["org", "verify", "example.org"])).0;
    assert!(moved.contains("signed by the pinned key"), "{moved}");

    // After `kith org forget`, any key is taken as first seen.
    lab.publish(&statement(&impostor)).await.unwrap();
    let forgot = said(&kith(&home, &["org", "forget", "example.org"])).0;
    assert!(
        forgot.contains("forgot the key pinned for example.org"),
        "{forgot}"
    );
    let fresh = said(&kith(&home, &["org", "verify", "example.org"])).0;
    assert!(fresh.contains("first seen"), "{fresh}");

    let bad = kith(&home, &["org", "verify", "not a domain"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        said(&bad).1.contains("is not a domain name"),
        "{:?}",
        said(&bad)
    );
}
