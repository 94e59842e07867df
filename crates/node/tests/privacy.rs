//! Privacy as a test: an honest-but-curious node joins a local DHT testnet and records every request it
//! receives (requester id, source address, keys, targets, values, sequence numbers) while three users
//! publish their discovery records and look each other up across two periods.
//!
//! It must learn no account, device or endpoint key; every record value must have the same length; and
//! nothing it saw may tie one user's blinded keys of different periods together, unless one knows the
//! address (which the test uses, at the end, to show the observations were really of these users).

use kith_core::blind::{self, PeriodNum};
use kith_core::record::{DeviceEntry, RECORD_VALUE_LEN};
use kith_net::dht::{DhtConfig, KithDht, RequestFilter, RequestSpecific};
use kith_net::testnet::Testnet;
use kith_node::discovery::{DiscoveryConfig, NodeDiscovery};
use kith_node::profile::{Identity, Profile};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

const PERIOD_MINUTES: u64 = 60;

#[derive(Debug, Clone, Default)]
struct Spy(Arc<Mutex<Vec<(SocketAddrV4, String)>>>);

impl RequestFilter for Spy {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        self.0.lock().unwrap().push((from, format!("{request:?}")));
        true
    }
}

/// Every `field: [n, n, ...]` byte list in a Debug string.
fn byte_lists(s: &str, field: &str) -> Vec<Vec<u8>> {
    let pat = format!("{field}: [");
    let mut out = vec![];
    let mut rest = s;
    while let Some(i) = rest.find(&pat) {
        let after = &rest[i + pat.len()..];
        let end = after.find(']').unwrap_or(after.len());
        let bytes: Vec<u8> = after[..end]
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect();
        out.push(bytes);
        rest = &after[end..];
    }
    out
}

fn number(s: &str, field: &str) -> Option<i64> {
    let i = s.find(&format!("{field}: "))? + field.len() + 2;
    s[i..]
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()?
        .parse()
        .ok()
}

struct User {
    id: Identity,
    disc: NodeDiscovery,
    device_hex: String,
}

struct Put {
    from: SocketAddrV4,
    key: Vec<u8>,
    value: Vec<u8>,
    seq: i64,
    sig: Vec<u8>,
}

fn shares_window(a: &[u8], b: &[u8], n: usize) -> bool {
    let windows: std::collections::HashSet<&[u8]> = a.windows(n).collect();
    b.windows(n).any(|w| windows.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curious_dht_node_learns_nothing_it_can_link() {
    // The testnet: ten honest servers and the spy, each on its own loopback address.
    let spy = Spy::default();
    let mut bootstrap: Vec<String> = vec![];
    let spy_node = KithDht::start_observed(
        &DhtConfig {
            bootstrap: vec![],
            bind: Ipv4Addr::new(127, 0, 3, 1),
            port: None,
            server: true,
        },
        Box::new(spy.clone()),
    )
    .unwrap();
    bootstrap.push(spy_node.local_addr().await);
    // Ten honest servers join through the spy, so it is in their routing tables.
    let servers = Testnet::start_joining(10, None, bootstrap.clone())
        .await
        .unwrap();
    bootstrap = servers.bootstrap();
    bootstrap.insert(0, spy_node.local_addr().await);

    let dir = tempfile::tempdir().unwrap();
    let mut users = vec![];
    for name in ["ann", "ben", "cat"] {
        let profile = Profile::new(dir.path().join(name));
        profile.init(name, None, 0, true).unwrap();
        let id = profile.unlock(None).unwrap();
        let store = profile.open_store(None).unwrap();
        let dht = DhtConfig {
            bootstrap: bootstrap.clone(),
            bind: Ipv4Addr::LOCALHOST,
            port: None,
            server: false,
        };
        let config = DiscoveryConfig {
            period_minutes: PERIOD_MINUTES,
            ..Default::default()
        };
        let disc = NodeDiscovery::new(Arc::new(Mutex::new(store)), Some(dht), config);
        let device_hex = hex::encode(id.device.public().as_bytes());
        users.push(User {
            id,
            disc,
            device_hex,
        });
    }
    let endpoint =
        |u: &User| kith_core::EndpointKey::from_bytes(*iroh_public(&u.id.endpoint_secret)).unwrap();

    // Two periods, in the middle of each (far from a boundary).
    let t0 = (blind::period_at(1_800_000_000, PERIOD_MINUTES).0 * PERIOD_MINUTES * 60) + 30 * 60;
    let p0 = blind::period_at(t0, PERIOD_MINUTES);
    for now in [t0, t0 + PERIOD_MINUTES * 60] {
        for u in &users {
            let entry = |_p: PeriodNum| {
                (
                    vec![DeviceEntry {
                        cert: u.id.device_cert.clone(),
                        endpoint: endpoint(u),
                        relays: vec!["https://relay.example./".into()],
                        direct: vec![],
                    }],
                    kith_core::record::ContactPart {
                        entries: vec![kith_core::record::ContactEntry {
                            endpoint: endpoint(u),
                            relays: vec!["https://relay.example./".into()],
                            direct: vec!["192.0.2.44:4433".parse().unwrap()],
                        }],
                        mailboxes: vec![],
                    },
                )
            };
            let done = u
                .disc
                .publish(&u.id, entry, &u.id.contact_key(0), now)
                .await
                .unwrap();
            assert_eq!(done.len(), 2, "published for this and the next period");
        }
        for a in &users {
            for b in &users {
                if a.id.account_key != b.id.account_key {
                    let rec = a.disc.lookup(b.id.account_key, now).await;
                    assert!(
                        rec.is_some(),
                        "lookup at {now} must succeed, or the test would prove nothing"
                    );
                }
            }
        }
    }

    let log = spy.0.lock().unwrap().clone();
    let puts: Vec<Put> = log
        .iter()
        .filter(|(_, s)| s.contains("PutMutable"))
        .map(|(from, s)| Put {
            from: *from,
            key: byte_lists(s, "k").pop().unwrap_or_default(),
            value: byte_lists(s, "v").pop().unwrap_or_default(),
            seq: number(s, "seq").unwrap_or(i64::MIN),
            sig: byte_lists(s, "sig").pop().unwrap_or_default(),
        })
        .collect();
    assert!(
        puts.len() >= users.len() * 3,
        "the spy saw the records being stored ({} puts)",
        puts.len()
    );
    assert!(
        log.iter().any(|(_, s)| s.contains("GetValue")),
        "the spy saw lookups"
    );

    // 1. No account, device or endpoint key of any user, in any form.
    let whole = log
        .iter()
        .map(|(_, s)| s.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for u in &users {
        let keys: [[u8; 32]; 3] = [
            *u.id.account_key.as_bytes(),
            *u.id.device.public().as_bytes(),
            *endpoint(u).as_bytes(),
        ];
        for key in keys {
            assert!(!whole.contains(&hex::encode(key)), "a key in hex");
            assert!(
                !whole.contains(&format!("{:?}", &key[..])),
                "a key as a byte list"
            );
            for p in &puts {
                assert!(
                    !shares_window(&p.value, &key, 32) && p.key != key,
                    "a key inside a stored item"
                );
            }
        }
        assert!(!whole.contains(&u.device_hex));
    }

    // 2. Every record value has the same length.
    assert!(
        puts.iter().all(|p| p.value.len() == RECORD_VALUE_LEN),
        "all values are {RECORD_VALUE_LEN} bytes"
    );

    // 3. Unlinkability: group the spy's observations by blinded key, then check that no observable
    //    ties two keys of the same user together.
    let mut by_key: std::collections::BTreeMap<Vec<u8>, Vec<&Put>> = Default::default();
    for p in &puts {
        by_key.entry(p.key.clone()).or_default().push(p);
    }
    let owner = |k: &[u8]| -> Option<(usize, u64)> {
        // Only the test knows the addresses: map a blinded key back to (user, period).
        for (i, u) in users.iter().enumerate() {
            for d in 0..3 {
                let b = blind::blind_public(&u.id.account_key, PeriodNum(p0.0 + d), PERIOD_MINUTES)
                    .unwrap();
                if b.as_bytes()[..] == *k {
                    return Some((i, p0.0 + d));
                }
            }
        }
        None
    };
    let mut same_user_pairs = 0;
    let keys: Vec<&Vec<u8>> = by_key.keys().collect();
    for (x, kx) in keys.iter().enumerate() {
        for ky in keys.iter().skip(x + 1) {
            let (Some((ux, px)), Some((uy, py))) = (owner(kx), owner(ky)) else {
                panic!("the spy saw a key that belongs to no user");
            };
            if ux != uy || px == py {
                continue;
            }
            same_user_pairs += 1;
            for a in &by_key[*kx] {
                for b in &by_key[*ky] {
                    assert_ne!(
                        a.from, b.from,
                        "user {ux}: periods {px} and {py} published from the same source"
                    );
                    assert_ne!(
                        a.seq, b.seq,
                        "user {ux}: equal sequence numbers link periods {px} and {py}"
                    );
                    assert!(
                        !shares_window(&a.value, &b.value, 8),
                        "user {ux}: values of periods {px}/{py} share bytes"
                    );
                    assert!(
                        !shares_window(&a.sig, &b.sig, 8),
                        "user {ux}: item signatures of periods {px}/{py} share bytes"
                    );
                }
            }
        }
    }
    assert!(
        same_user_pairs >= users.len() * 2,
        "pairs of one user's keys across periods were checked ({same_user_pairs})"
    );
    // Lookups of one target in two periods come from different sources too.
    let gets: Vec<(SocketAddrV4, String)> = log
        .iter()
        .filter(|(_, s)| s.contains("GetValue"))
        .cloned()
        .collect();
    for u in &users {
        let targets: Vec<String> = (0..2)
            .map(|d| {
                let b = blind::blind_public(&u.id.account_key, PeriodNum(p0.0 + d), PERIOD_MINUTES)
                    .unwrap();
                mainline_target(b.as_bytes())
            })
            .collect();
        let sources = |t: &str| -> Vec<SocketAddrV4> {
            gets.iter()
                .filter(|(_, s)| s.contains(t))
                .map(|(f, _)| *f)
                .collect()
        };
        let (s0, s1) = (sources(&targets[0]), sources(&targets[1]));
        assert!(
            s0.iter().all(|a| !s1.contains(a)),
            "lookups of one user in two periods came from one source"
        );
    }
    drop(servers);
}

/// The BEP44 target of a key without salt: SHA-1 of the key, as mainline prints it (hex).
fn mainline_target(key: &[u8; 32]) -> String {
    hex::encode(sha1(key))
}

fn sha1(data: &[u8]) -> [u8; 20] {
    use sha1_smol::Sha1;
    Sha1::from(data).digest().bytes()
}

fn iroh_public(secret: &[u8; 32]) -> &'static [u8; 32] {
    Box::leak(Box::new(
        *iroh::SecretKey::from_bytes(secret).public().as_bytes(),
    ))
}
