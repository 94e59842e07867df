//! The mailbox ALPN on real QUIC connections on loopback: requests and responses without a hello, several
//! per connection, bounded in size; a kith session still goes through the hello on the same endpoint.

use kith_core::Hints;
use kith_net::{DialError, Incoming, MAILBOX_MAX, Net, StaticDiscovery, serve_mailbox};
use std::sync::Arc;

async fn bind(seed: u8) -> Net {
    Net::bind(
        [seed; 32],
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(StaticDiscovery::default()),
    )
    .await
    .unwrap()
}

fn hints_of(net: &Net) -> Hints {
    Hints {
        endpoint: Some(net.endpoint_key()),
        direct: net.local_addrs(),
        ..Default::default()
    }
}

#[tokio::test]
async fn mailbox_requests_are_answered_without_a_hello() {
    let (server, client) = (bind(1).await, bind(2).await);
    let s = server.clone();
    let served = tokio::spawn(async move {
        let mut connections = 0;
        while connections < 2 {
            match s
                .accept_any(|_| unreachable!("no hello on the mailbox ALPN"), || 0)
                .await
            {
                Some(Ok(Incoming::Mailbox(conn))) => {
                    connections += 1;
                    tokio::spawn(serve_mailbox(conn, |req: Vec<u8>| async move {
                        req.iter().rev().copied().collect::<Vec<u8>>()
                    }));
                }
                Some(Ok(Incoming::Session(_))) => panic!("a session where a mailbox request came"),
                Some(Err(e)) => panic!("{e}"),
                None => break,
            }
        }
    });
    let hint = hints_of(&server);
    assert_eq!(client.mailbox_request(&hint, b"abc").await.unwrap(), b"cba");
    let big = vec![7u8; MAILBOX_MAX];
    assert_eq!(client.mailbox_request(&hint, &big).await.unwrap(), big);
    // Over the limit: refused before anything is sent.
    let e = client
        .mailbox_request(&hint, &vec![0u8; MAILBOX_MAX + 1])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("over the"), "{e}");
    served.await.unwrap();
    // No endpoint in the hint: no route.
    assert!(matches!(
        client.mailbox_request(&Hints::default(), b"x").await,
        Err(DialError::NoRoute)
    ));
}
