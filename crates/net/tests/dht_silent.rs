//! DHT queries among nodes that never answer (vendored mainline, vendor/README.md): a query ends once the
//! closest nodes that answer have answered, not when its requests to silent nodes time out.
//!
//! The request timeout is made long (60 s here) so that the two behaviours cannot be confused on a busy
//! machine: a query that waits for its silent nodes takes at least the timeout, one that does not ends
//! within a few round trips. Only the lower bound of the reference is timed, which load cannot break.

use kith_net::testnet::Testnet;
use mainline::{Dht, MutableItem, SigningKey};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// A client of `net` with the given request timeout, adaptive queries on or off.
fn client(net: &Testnet, timeout: Duration, adaptive: bool) -> mainline::async_dht::AsyncDht {
    Dht::builder()
        .bootstrap(&net.bootstrap())
        .bind_address(Ipv4Addr::LOCALHOST)
        .request_timeout(timeout)
        .adaptive_queries(adaptive)
        .build()
        .unwrap()
        .as_async()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_among_silent_nodes_does_not_wait_for_them() {
    // As `kith bench-discovery`'s silent series: 100 nodes, a record stored while all answer, then 30
    // nodes gone and half of the others silent (they stay in routing tables and are handed out as
    // contacts, and leave the bootstrap list).
    let mut net = Testnet::start(100).await.unwrap();
    let signer = SigningKey::from_bytes(&[7u8; 32]);
    let publisher = client(&net, Duration::from_secs(2), true);
    let item = MutableItem::new(signer.clone(), b"where I am", 1, None);
    publisher.put_mutable(item, None).await.unwrap();
    net.kill(30, 42);
    net.silence(35, 7);
    let key = signer.verifying_key().to_bytes();

    // The reference: mainline's queries as published wait for every request, so a lookup among silent
    // nodes takes at least the request timeout (3 s here).
    let reference = client(&net, Duration::from_secs(3), false);
    let t = Instant::now();
    let found = reference.get_mutable_most_recent(&key, None).await;
    let waited = t.elapsed();
    assert!(found.is_some(), "the reference did not find the record");
    assert!(
        waited >= Duration::from_secs(3),
        "the reference query ended after {waited:?}, before its silent nodes' requests timed out: \
         this test no longer tells the two apart"
    );

    // kith's queries: the nodes that answered count among the closest, overdue nodes give their place,
    // and the query ends once the 20 closest answering nodes answered, far within a 60 s timeout.
    let kith = client(&net, Duration::from_secs(60), true);
    let t = Instant::now();
    let found = kith.get_mutable_most_recent(&key, None).await;
    let took = t.elapsed();
    assert_eq!(
        found.map(|i| i.value().to_vec()),
        Some(b"where I am".to_vec()),
        "kith's query did not find the record"
    );
    assert!(
        took < Duration::from_secs(30),
        "kith's query took {took:?}: it waited for the requests to its silent nodes to time out (60 s)"
    );
}
