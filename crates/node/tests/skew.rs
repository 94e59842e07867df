//! Lookups near a period boundary succeed when the publisher's and the looker's clocks differ by up to five
//! minutes either way.

use kith_core::blind;
use kith_core::record::DeviceEntry;
use kith_net::dht::DhtConfig;
use kith_net::testnet::Testnet;
use kith_node::discovery::{DiscoveryConfig, NodeDiscovery, lookup_periods};
use kith_node::profile::{Identity, Profile};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

const MINUTES: u64 = 60;

fn user(dir: &std::path::Path, name: &str, bootstrap: &[String]) -> (Identity, NodeDiscovery) {
    let profile = Profile::new(dir.join(name));
    profile.init(name, None, 0, true).unwrap();
    let id = profile.unlock(None).unwrap();
    let store = profile.open_store(None).unwrap();
    let dht = DhtConfig {
        bootstrap: bootstrap.to_vec(),
        bind: Ipv4Addr::LOCALHOST,
        port: None,
        server: false,
    };
    let disc = NodeDiscovery::new(
        Arc::new(Mutex::new(store)),
        Some(dht),
        DiscoveryConfig {
            period_minutes: MINUTES,
            ..Default::default()
        },
    );
    (id, disc)
}

#[test]
fn lookup_periods_cover_the_skew_margin() {
    let boundary = 500_001 * MINUTES * 60;
    assert_eq!(
        lookup_periods(boundary - 30 * 60, MINUTES).len(),
        1,
        "mid-period: one period"
    );
    let near = lookup_periods(boundary - 60, MINUTES);
    assert!(near.contains(&blind::PeriodNum(500_000)) && near.contains(&blind::PeriodNum(500_001)));
    let after = lookup_periods(boundary + 60, MINUTES);
    assert!(
        after.contains(&blind::PeriodNum(500_000)) && after.contains(&blind::PeriodNum(500_001))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_across_a_boundary_with_five_minutes_of_skew() {
    let net = Testnet::start(8).await.unwrap();
    let bootstrap = net.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let boundary = 500_001 * MINUTES * 60;
    // (publisher's clock, looker's clock): the looker is up to 4.5 minutes ahead or behind, across the boundary.
    let cases = [
        (boundary - 60, boundary + 210),
        (boundary + 60, boundary - 210),
        (boundary - 200, boundary + 70),
    ];
    for (n, (publisher_now, looker_now)) in cases.into_iter().enumerate() {
        let (pid, pdisc) = user(dir.path(), &format!("p{n}"), &bootstrap);
        let (_lid, ldisc) = user(dir.path(), &format!("l{n}"), &bootstrap);
        let entry = |p: blind::PeriodNum| {
            let endpoint = kith_core::EndpointKey::from_seed(&pid.device.endpoint_seed(p.0, 0));
            (
                vec![DeviceEntry {
                    cert: pid.device_cert.clone(),
                    endpoint,
                    relays: vec![],
                    direct: vec![],
                }],
                kith_core::record::ContactPart {
                    entries: vec![kith_core::record::ContactEntry {
                        endpoint,
                        relays: vec![],
                        direct: vec![],
                    }],
                    mailboxes: vec![],
                },
            )
        };
        pdisc
            .publish(&pid, entry, &pid.contact_key(0), publisher_now)
            .await
            .unwrap();
        let found = ldisc.lookup(pid.account_key, looker_now).await;
        assert!(
            found.is_some(),
            "case {n}: published at {publisher_now}, looked up at {looker_now}"
        );
    }
    drop(net);
}
