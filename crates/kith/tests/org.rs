//! `kith org`: a real daemon looks an organization up in a signed zone and an HTTPS server on this
//! machine (kith_org::lab), shows whether it is verified, and pins its key.

use kith::process::Daemon;
use kith_core::AccountSecret;
use kith_core::org::{OrgStatement, Rotation, format_document};
use kith_org::lab::Lab;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn now() -> u64 {
    kith_node::node::unix_now()
}

fn statement(account: &AccountSecret) -> OrgStatement {
    OrgStatement::new(
        account.public(),
        vec!["support".into(), "sales".into()],
        now() + 86_400,
    )
}

fn kith(home: &Path, args: &[&str]) -> Output {
    Command::new(exe())
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

/// A refused command: exit status 2, and `text` in what it said on standard error.
fn assert_refused(out: &Output, text: &str) {
    assert_eq!(out.status.code(), Some(2), "{:?}", said(out));
    assert!(said(out).1.contains(text), "{:?}", said(out));
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
    assert_refused(
        &nope,
        "example.org offers no service \"billing\"; it offers: support, sales",
    );

    // Another key with no signature from the pinned one: refused loudly, nothing pinned.
    let impostor = AccountSecret::generate(&mut StdRng::seed_from_u64(2));
    lab.publish(&statement(&impostor)).await.unwrap();
    let refused = kith(&home, &["org", "verify", "example.org"]);
    assert_refused(&refused, "possible impostor");

    // The two channels disagree: refused, "possible compromise".
    lab.web.set(Some(format_document(&s, "example.org")));
    let split = kith(&home, &["org", "verify", "example.org"]);
    assert_refused(&split, "possible compromise");

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
    assert_refused(&bad, "is not a domain name");
}

use kith::sip_peers::block_on;

fn nft(rules: &str) {
    let out = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(rules.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 22's negative cases with real daemons: nodes whose keys example.org does not publish. Someone on
/// the path between a customer and the organization (here a NAT rule in the test's own network namespace:
/// what a router or a relay could do) sends the customer's packets to a node of its own; a node takes
/// over the organization's address once the real one is gone; a node names itself
/// "support@example.org" and writes to the customer. The customer's kith sends nothing to any of them,
/// says why, and never shows them as the organization.
#[test]
fn impostors_of_the_organization_are_refused() {
    if !kith::sip_peers::rerun_in_namespace("impostors_of_the_organization_are_refused", &["nft"]) {
        return;
    }
    block_on(impostors());
    kith::sip_peers::namespace_done();
}

async fn impostors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut org = Daemon::init(exe(), &d.join("org"), "example").unwrap();
    org.start().await.unwrap();
    let account = kith_node::Profile::new(&org.home).public().unwrap().account;
    let lab = kith::sip_peers::publish_org(account, &["support"])
        .await
        .unwrap();
    let mut alice = Daemon::init(exe(), &d.join("alice"), "alice").unwrap();
    configure(&alice.home, &lab);
    alice.start().await.unwrap();
    kith::process::introduce(&alice, &org).await.unwrap();
    kith::process::introduce(&org, &alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let first = alice.client().send("example", "hello").await.unwrap();
    assert!(wa.delivered_within("example", first, 30).await);
    let org_port = kith_node::Profile::new(&org.home)
        .config()
        .unwrap()
        .listen
        .port();
    let mut impostor = Daemon::init(exe(), &d.join("impostor"), "support@example.org").unwrap();
    impostor.start().await.unwrap();
    let impostor_port = kith_node::Profile::new(&impostor.home)
        .config()
        .unwrap()
        .listen
        .port();
    let refusal = "could not prove it holds their key";

    // 1. On the path: from now on the customer's packets for the organization's port go to the impostor's
    // node. Alice starts again (so she dials afresh), writes and calls: nothing reaches the impostor, the
    // call ends as unreachable with the reason, the message waits.
    alice.kill();
    nft(&format!(
        "table ip onpath {{\n  chain out {{\n    type nat hook output priority -100;\n    \
         udp dport {org_port} dnat to 127.0.0.1:{impostor_port}\n  }}\n}}\n"
    ));
    alice.start().await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let sent = kith(
        &alice.home,
        &["send", "support@example.org", "my card number is ..."],
    );
    assert!(sent.status.success(), "{:?}", said(&sent));
    let call = kith(
        &alice.home,
        &["call", "support@example.org", "--null", "--duration", "2"],
    );
    let (out, err) = said(&call);
    assert!(
        out.contains("Verified: example.org (DNSSEC + HTTPS)"),
        "{out}{err}"
    );
    assert!(
        out.contains("call ended: unreachable") && out.contains(refusal),
        "{out}{err}"
    );
    let contacts = said(&kith(&alice.home, &["contacts"])).0;
    assert!(
        contacts.contains(refusal) && contacts.contains("(1 message waiting)"),
        "{contacts}"
    );
    let nothing = impostor.client().get("/v1/requests").await.unwrap();
    assert_eq!(nothing, json!([]), "the impostor got something: {nothing}");
    assert!(!wa.any("message_state", |e| e["state"] == "delivered"));

    // The path is clean again: the message waiting goes to the real organization, once.
    nft("delete table ip onpath\n");
    alice.kill();
    alice.start().await.unwrap();
    let wa = alice.watcher().await.unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w
            .any("message_state", |e| e["state"] == "delivered"))
            .await,
        "the waiting message never reached the organization"
    );
    let chat = said(&kith(&org.home, &["chat", "alice"])).0;
    assert_eq!(chat.matches("my card number is").count(), 1, "{chat}");

    // 2. The organization's node is gone and another takes its address: the same refusal.
    org.stop().await;
    impostor.stop().await;
    impostor.extra_args = vec!["--listen".into(), format!("127.0.0.1:{org_port}")];
    impostor.start().await.unwrap();
    let call = kith(
        &alice.home,
        &["call", "support@example.org", "--null", "--duration", "2"],
    );
    let (out, err) = said(&call);
    assert!(
        out.contains("call ended: unreachable") && out.contains(refusal),
        "{out}{err}"
    );
    assert_eq!(
        impostor.client().get("/v1/requests").await.unwrap(),
        json!([])
    );

    // 3. The impostor calls itself "support@example.org" and writes to alice: she sees a name it gave
    // itself, marked so, never the organization; kith gives no contact a name with @ unless the
    // organization publishes its key.
    kith::process::introduce(&impostor, &alice).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    impostor
        .client()
        .send("alice", "this is support: confirm your card number")
        .await
        .unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w.last("request").is_some())
            .await,
        "no request from the impostor"
    );
    let shown = wa.last("request").unwrap()["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        shown,
        "\"support@example.org\" (a name they gave themselves, not verified)"
    );
    let requests = said(&kith(&alice.home, &["requests"])).0;
    assert!(requests.contains("not verified"), "{requests}");
    let impostor_address = impostor.address().unwrap();
    let accept = kith(&alice.home, &["accept", &impostor_address]);
    assert_refused(
        &accept,
        "they call themselves \"support@example.org\", an organization's form",
    );
    let card = impostor.client().get("/v1/card").await.unwrap()["card"]
        .as_str()
        .unwrap()
        .to_owned();
    let add = kith(&alice.home, &["add", &card]);
    assert_refused(&add, "the card names itself \"support@example.org\"");
    let add = kith(&alice.home, &["add", &card, "--name", "sales@example.org"]);
    assert_refused(&add, "kith add service@domain");
    let ok = kith(
        &alice.home,
        &["accept", &impostor_address, "--name", "stranger"],
    );
    assert!(ok.status.success(), "{:?}", said(&ok));
}

/// Whether `daemon` holds a contact request whose messages include `text`.
async fn got(daemon: &Daemon, text: &str) -> bool {
    let requests = daemon.client().get("/v1/requests").await.unwrap();
    requests.to_string().contains(text)
}

/// Sends `text` to support@example.org from `alice` and waits until it is delivered.
async fn send_delivered(alice: &Daemon, text: &str) {
    let wa = alice.watcher().await.unwrap();
    let sent = kith(
        &alice.home,
        &["--json", "send", "support@example.org", text],
    );
    assert!(sent.status.success(), "{:?}", said(&sent));
    let sent: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    let seq = sent["seq"].as_u64().unwrap_or_else(|| panic!("{sent}"));
    // Events name the organization with what was verified.
    assert!(
        wa.wait_for(Duration::from_secs(60), |w| w.any("message_state", |e| {
            e["seq"] == seq
                && e["state"] == "delivered"
                && e["to"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("support@example.org (Verified"))
        }))
        .await,
        "{text:?} was not delivered"
    );
}

/// Issue 22: an organization's account key stays with its admin (never on a running node); each gateway
/// is a device of that account, enrolled with a grant, and the account signs the list of gateways that
/// both channels publish. A customer reaches a listed gateway and, when that one is down, the other; once
/// the admin revokes a gateway, the customer refuses that device (its certificate still verifies) when it
/// answers or calls, reaches the remaining one, and refuses the older list when it is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_devices_share_the_organization_and_a_revoked_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The admin's profile holds the account key; no daemon of it ever runs.
    let admin = Daemon::init(exe(), &d.join("admin"), "example.org").unwrap();
    let (mut gw1, _) =
        Daemon::enroll_gateway(exe(), &admin.home, "example.org", &d.join("gw1"), "gw1").unwrap();
    let (mut gw2, two) =
        Daemon::enroll_gateway(exe(), &admin.home, "example.org", &d.join("gw2"), "gw2").unwrap();
    assert_eq!(two["gateways"], json!(["gw1", "gw2"]));
    let publish = |p: &serde_json::Value| {
        (
            p["txt"].as_str().unwrap().to_owned(),
            p["document"].as_str().unwrap().to_owned(),
        )
    };
    let (txt2, doc2) = publish(&two);
    let lab = Lab::start(
        "example.org",
        std::slice::from_ref(&txt2),
        Some(doc2.clone()),
    )
    .await
    .unwrap();
    let mut alice = Daemon::init(exe(), &d.join("alice"), "alice").unwrap();
    configure(&alice.home, &lab);
    alice.start().await.unwrap();
    gw1.start().await.unwrap();
    gw2.start().await.unwrap();

    let verify = said(&kith(&alice.home, &["org", "verify", "example.org"])).0;
    assert!(
        verify.contains("Verified: example.org (DNSSEC + HTTPS)")
            && verify.contains("gateways    gw1, gw2 (list number 2, signed by the account)"),
        "{verify}"
    );
    // The gateways speak for the account the admin holds.
    let org_address = admin.address().unwrap();
    assert!(verify.contains(&org_address), "{verify}");

    // 1. The customer writes: one gateway takes it.
    send_delivered(&alice, "first words").await;
    let (first, second) = match (
        got(&gw1, "first words").await,
        got(&gw2, "first words").await,
    ) {
        (true, false) => (&mut gw1, &mut gw2),
        (false, true) => (&mut gw2, &mut gw1),
        other => panic!("first words reached (gw1, gw2) = {other:?}"),
    };

    // 2. That gateway goes down: the next message goes to the other one.
    first.stop().await;
    send_delivered(&alice, "second words").await;
    assert!(got(second, "second words").await);
    first.start().await.unwrap();

    // 3. The admin revokes the gateway that took the second message, and publishes the new list.
    let revoked_name = second.name.clone();
    let out = Command::new(exe())
        .arg("--home")
        .arg(&admin.home)
        .args(["--json", "org", "revoke", "example.org", &revoked_name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", said(&out));
    let three: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(three["gateways"], json!([first.name]));
    let (txt3, doc3) = publish(&three);
    lab.publish_text(&txt3, &doc3).await.unwrap();
    let verify = said(&kith(&alice.home, &["org", "verify", "example.org"])).0;
    assert!(
        verify.contains(&format!("gateways    {} (list number 3", first.name)),
        "{verify}"
    );
    // Only the listed gateway takes the customer's words now.
    send_delivered(&alice, "third words").await;
    assert!(got(first, "third words").await);
    assert!(!got(second, "third words").await);

    // 4. The revoked gateway writes to the customer as the organization: refused before its hello is
    // answered, and said so.
    let wa = alice.watcher().await.unwrap();
    kith::process::introduce(second, &alice).await.unwrap();
    second
        .client()
        .send("alice", "this is example.org: your card number please")
        .await
        .unwrap();
    assert!(
        wa.wait_for(Duration::from_secs(30), |w| w.any("gateway_refused", |e| e
            ["domain"]
            == "example.org"
            && e["reason"].as_str().is_some_and(
                |r| r.contains("not on its list of gateways (number 3)")
            )))
        .await,
        "the revoked gateway was not refused"
    );
    let chat = said(&kith(&alice.home, &["chat", "support@example.org"])).0;
    assert!(!chat.contains("your card number"), "{chat}");
    assert!(
        !alice
            .client()
            .get("/v1/requests")
            .await
            .unwrap()
            .to_string()
            .contains("your card number")
    );

    // 5. The older list is served again (both channels, still unexpired): a replay, refused.
    lab.publish_text(&txt2, &doc2).await.unwrap();
    let replay = kith(&alice.home, &["org", "verify", "example.org"]);
    assert_refused(
        &replay,
        "shows an older list of its gateways (number 2) than one seen before (number 3)",
    );
}
