//! The control API's request bodies, parsed as the server's extractors parse them
//! (`kith_node::api::parse_body`: axum's `Json` for each route's body type, `Query` for the chat's
//! query string).
//!
//! Input: a byte choosing the route (`api::BODY_ROUTES`), then the body.
//! Invariants: what parses depends on the JSON value only, not on how it is written (the value written
//! back by serde_json parses to the same body); a query that parses names its limit the same way again.
#![no_main]

use kith_node::api::{BODY_ROUTES, parse_body};
use libfuzzer_sys::fuzz_target;

const CHAT: &str = "/v1/chat/{name}";

fn seeds() -> Vec<Vec<u8>> {
    let bodies: [(&str, &str); 10] = [
        (
            "/v1/contacts",
            r#"{"contact":"kith:ybndrfg8ejkmcpqxot1uwisza345h769ybndrfg8ejkmcpqxot1uwisz","name":"bob"}"#,
        ),
        ("/v1/mailbox/host", r#"{"name":"bob"}"#),
        ("/v1/mailbox/use", r#"{"name":"bob"}"#),
        (
            "/v1/calls",
            r#"{"to":"bob","input":{"tone":440.0},"frame_ms":20,"duration_secs":1.5,"output_device":"none","record_wav":"x.wav"}"#,
        ),
        ("/v1/calls/answer", r#"{"call":"00ff","input":"silence"}"#),
        ("/v1/calls/reject", r#"{"call":null}"#),
        ("/v1/calls/hangup", r#"{}"#),
        ("/v1/messages", r#"{"to":"bob","text":"hello \u00e9\n"}"#),
        ("/v1/requests/accept", r#"{"request":"abc","name":"carol"}"#),
        (CHAT, "limit=20"),
    ];
    bodies
        .iter()
        .map(|(route, body)| {
            let i = BODY_ROUTES.iter().position(|r| r == route).unwrap() as u8;
            [&[i][..], body.as_bytes()].concat()
        })
        .collect()
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("api_json", seeds); },
    |data: &[u8]| {
    let Some((&i, body)) = data.split_first() else { return };
    let route = BODY_ROUTES[usize::from(i) % BODY_ROUTES.len()];
    let parsed = parse_body(route, body).expect("every route of BODY_ROUTES takes a body");
    let Ok(parsed) = parsed else { return };
    if route == CHAT {
        let again = match parsed.strip_prefix("ChatQuery { limit: Some(").and_then(|s| s.strip_suffix(") }")) {
            Some(n) => parse_body(route, format!("limit={n}").as_bytes()),
            None => {
                assert_eq!(parsed, "ChatQuery { limit: None }");
                parse_body(route, b"")
            }
        };
        assert_eq!(again, Some(Ok(parsed)));
        return;
    }
    // serde_json skips an unknown field's value without checking its strings are UTF-8, so a body
    // that parsed need not be JSON throughout: such a body has no value to write back.
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return };
    let written = serde_json::to_vec(&value).unwrap();
    assert_eq!(parse_body(route, &written), Some(Ok(parsed)), "{}", String::from_utf8_lossy(&written));
});
