//! Discovery through a local Mainline DHT testnet (never the public DHT): real daemons that know only each
//! other's address.

use kith::process::Daemon;
use kith::testnet::Testnet;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kith"))
}

fn address(d: &Daemon) -> String {
    kith_core::Address::new(kith_node::Profile::new(&d.home).public().unwrap().account).to_string()
}

async fn daemon(dir: &Path, name: &str, bootstrap: Vec<String>) -> Daemon {
    let mut d = Daemon::init(exe(), &dir.join(name), name).unwrap();
    d.bootstrap = Some(bootstrap);
    d.extra_args = vec!["--publish-direct".into()];
    d.start().await.unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_alone_is_enough_through_the_dht() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    alice.client().post("/v1/contacts", json!({ "contact": address(&bob), "name": "bob" })).await.unwrap();
    bob.client().post("/v1/contacts", json!({ "contact": address(&alice), "name": "alice" })).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let wb = bob.watcher().await.unwrap();
    let s1 = alice.client().send("bob", "hi bob").await.unwrap();
    let s2 = bob.client().send("alice", "hi alice").await.unwrap();
    assert!(wa.wait_for(Duration::from_secs(60), |w| w.delivered_at("bob", s1).is_some()).await, "alice -> bob by address");
    assert!(wb.wait_for(Duration::from_secs(60), |w| w.delivered_at("alice", s2).is_some()).await, "bob -> alice by address");
    let st = alice.client().get("/v1/status").await.unwrap();
    assert!(st["dht"]["sources"]["dht_records"].as_u64().unwrap() >= 1, "found through a DHT record: {st}");
    assert!(st["dht"]["sources"]["published"].as_u64().unwrap() >= 1, "{st}");
    // Records for this and the next period: wait for publish events until the status counts both.
    let mut published = 0;
    for _ in 0..60 {
        published = alice.client().get("/v1/status").await.unwrap()["dht"]["sources"]["published"].as_u64().unwrap();
        if published >= 2 {
            break;
        }
        let seen = wa.count("record_published");
        wa.wait_for(Duration::from_secs(1), |w| w.count("record_published") > seen).await;
    }
    assert!(published >= 2, "published for this and the next period");
    assert!(st["dht"]["routing_table_nodes"].as_u64().unwrap() > 0);
}

/// The routing table saved at shutdown lets a node rejoin with its bootstrap list removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_routing_table_rejoins_without_bootstrap() {
    let net = Testnet::start(12).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = daemon(dir.path(), "alice", net.bootstrap()).await;
    let bob = daemon(dir.path(), "bob", net.bootstrap()).await;
    // Let alice's node learn the network, then stop her cleanly: the table is saved.
    let joined = alice.client().get("/v1/status").await.unwrap()["dht"]["routing_table_nodes"].as_u64().unwrap();
    assert!(joined > 0);
    alice.stop().await;
    let saved: Vec<String> =
        serde_json::from_slice(&std::fs::read(alice.home.join("dht-nodes.json")).expect("routing table saved")).unwrap();
    assert!(!saved.is_empty());
    // Restart with an empty bootstrap list.
    alice.bootstrap = Some(vec![]);
    alice.start().await.unwrap();
    alice.client().post("/v1/contacts", json!({ "contact": address(&bob), "name": "bob" })).await.unwrap();
    let wa = alice.watcher().await.unwrap();
    let seq = alice.client().send("bob", "back without bootstrap hosts").await.unwrap();
    assert!(wa.wait_for(Duration::from_secs(60), |w| w.delivered_at("bob", seq).is_some()).await);
    let st = alice.client().get("/v1/status").await.unwrap();
    assert!(st["dht"]["routing_table_nodes"].as_u64().unwrap() > 0, "{st}");
    assert!(st["dht"]["sources"]["dht_records"].as_u64().unwrap() >= 1, "{st}");
}
