//! The local control API: HTTP + JSON on loopback, every request carrying `Authorization: Bearer <token>`
//! (the token is in the profile's `api-token`, mode 0600). The CLI uses it; later a web UI will.
//!
//! Errors are `{"error": "...", "kind": "user" | "internal"}` with status 4xx for the caller's input and
//! 5xx for the node's own faults.

use crate::node::{Node, NodeError};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
struct Ctx {
    node: Arc<Node>,
    token: Arc<String>,
    shutdown: watch::Sender<bool>,
}

struct ApiError(StatusCode, String);

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::Store(
                kith_store::StoreError::UnknownContact(_)
                | kith_store::StoreError::UnknownRequest(_),
            ) => StatusCode::NOT_FOUND,
            NodeError::Store(
                kith_store::StoreError::NameTaken(_)
                | kith_store::StoreError::AmbiguousContact { .. }
                | kith_store::StoreError::KeyReused,
            )
            | NodeError::KeyChanged(_) => StatusCode::CONFLICT,
            e if e.is_user_error() => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.0.is_client_error() {
            "user"
        } else {
            "internal"
        };
        (self.0, Json(json!({ "error": self.1, "kind": kind }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(Json(v).into_response())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), ctx.token.as_bytes()) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token (see the profile's api-token file)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

pub fn router(node: Arc<Node>, token: String, stop: watch::Sender<bool>) -> Router {
    let ctx = Ctx {
        node,
        token: Arc::new(token),
        shutdown: stop,
    };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/card", get(card))
        .route("/v1/contacts", get(contacts).post(add_contact))
        .route("/v1/contacts/{name}", delete(remove_contact))
        .route("/v1/contacts/{name}/safety-number", get(safety_number))
        .route("/v1/contacts/{name}/verified", post(confirm_verified))
        .route("/v1/lookup/{who}", get(lookup))
        .route("/v1/org/{domain}", get(org_verify).delete(org_forget))
        .route("/v1/calls", get(calls).post(place_call))
        .route("/v1/calls/answer", post(answer_call))
        .route("/v1/calls/reject", post(reject_call))
        .route("/v1/calls/hangup", post(hangup_call))
        .route("/v1/calls/dtmf", post(send_dtmf))
        .route("/v1/messages", post(send))
        .route("/v1/chat/{name}", get(chat))
        .route("/v1/requests", get(requests))
        .route("/v1/requests/accept", post(accept))
        .route("/v1/events", get(events))
        .route("/v1/mailbox", get(mailbox))
        .route("/v1/mailbox/host", post(mailbox_host))
        .route("/v1/mailbox/use", post(mailbox_use))
        .route("/v1/shutdown", post(shutdown))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .layer(middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// Every error leaves in the one shape, `{error, kind}`: also those that axum itself answers (an unknown
/// path, a wrong method, a body that is not the JSON expected), which come as plain text.
async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let message = match status {
        StatusCode::NOT_FOUND => format!(
            "no such API path: {method} {path} (a name or address in a path must not be empty; the README lists the paths)"
        ),
        StatusCode::METHOD_NOT_ALLOWED => format!("{path} does not take {method}"),
        _ if text.is_empty() => format!("{status}"),
        _ => text,
    };
    ApiError(status, message).into_response()
}

async fn status(State(c): State<Ctx>) -> ApiResult {
    let mut v = serde_json::to_value(c.node.status()?).unwrap_or_default();
    v["dht"] = c.node.dht_status().await;
    v["relay_report"] = serde_json::to_value(c.node.relay_report().await).unwrap_or_default();
    ok(v)
}

async fn card(State(c): State<Ctx>) -> ApiResult {
    let card = c.node.card();
    ok(
        json!({ "card": card.to_link(), "address": card.address().to_string(), "name": card.name() }),
    )
}

async fn contacts(State(c): State<Ctx>) -> ApiResult {
    ok(c.node.contacts()?)
}

#[derive(Debug, Deserialize)]
struct AddContact {
    contact: String,
    name: Option<String>,
}

async fn add_contact(State(c): State<Ctx>, Json(body): Json<AddContact>) -> ApiResult {
    // `service@domain`: an organization's service, verified before it is added.
    if crate::node::org_service(&body.contact).is_some() {
        let (contact, org) = c
            .node
            .add_org_contact(&body.contact, body.name.as_deref())
            .await?;
        let mut v = serde_json::to_value(contact).unwrap_or_default();
        v["org"] = serde_json::to_value(org).unwrap_or_default();
        return ok(v);
    }
    ok(c.node.add_contact(&body.contact, body.name.as_deref())?)
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

async fn mailbox(State(c): State<Ctx>) -> ApiResult {
    ok(c.node.mailbox_view()?)
}

async fn mailbox_host(State(c): State<Ctx>, Json(body): Json<Named>) -> ApiResult {
    ok(json!({ "keeping_mail_for": body.name, "address": c.node.mailbox_host(&body.name)? }))
}

async fn mailbox_use(State(c): State<Ctx>, Json(body): Json<Named>) -> ApiResult {
    ok(json!({ "mailbox": body.name, "address": c.node.mailbox_use(&body.name)? }))
}

async fn remove_contact(State(c): State<Ctx>, Path(name): Path<String>) -> ApiResult {
    c.node.remove_contact(&name)?;
    ok(json!({ "removed": name }))
}

#[derive(Debug, Deserialize)]
struct CallRequest {
    to: String,
    /// A service of the organization whose gateway `to` is (`service@domain` in `to` says it too).
    #[serde(default)]
    service: Option<String>,
    #[serde(flatten)]
    audio: crate::media::AudioOptions,
}

#[derive(Debug, Deserialize)]
struct CallAction {
    call: Option<String>,
    #[serde(flatten)]
    audio: crate::media::AudioOptions,
}

async fn calls(State(c): State<Ctx>) -> ApiResult {
    ok(c.node.calls_view(100)?)
}

async fn place_call(State(c): State<Ctx>, Json(body): Json<CallRequest>) -> ApiResult {
    // `service@domain`: an organization's service, verified before every call (also when it is a contact).
    if crate::node::org_service(&body.to).is_some() {
        let (call, org) = c.node.place_org_call(&body.to, body.audio).await?;
        return ok(json!({ "call": call, "org": org }));
    }
    let peer = c.node.contact_account(&body.to)?;
    ok(json!({ "call": c.node.place_call_to(peer, body.service, body.audio)? }))
}

#[derive(Debug, Deserialize)]
struct DtmfRequest {
    call: Option<String>,
    keys: String,
    #[serde(default = "key_ms")]
    duration_ms: u16,
}

fn key_ms() -> u16 {
    100
}

async fn send_dtmf(State(c): State<Ctx>, Json(body): Json<DtmfRequest>) -> ApiResult {
    ok(
        json!({ "call": c.node.send_dtmf(body.call.as_deref(), &body.keys, body.duration_ms.clamp(40, 2000))? }),
    )
}

async fn answer_call(State(c): State<Ctx>, Json(body): Json<CallAction>) -> ApiResult {
    ok(json!({ "call": c.node.answer_call(body.call.as_deref(), body.audio)? }))
}

async fn reject_call(State(c): State<Ctx>, Json(body): Json<CallAction>) -> ApiResult {
    ok(json!({ "call": c.node.reject_call(body.call.as_deref())? }))
}

async fn hangup_call(State(c): State<Ctx>, Json(body): Json<CallAction>) -> ApiResult {
    ok(json!({ "call": c.node.hangup_call(body.call.as_deref())? }))
}

async fn lookup(State(c): State<Ctx>, Path(who): Path<String>) -> ApiResult {
    ok(c.node.lookup_report(&who).await?)
}

async fn confirm_verified(State(c): State<Ctx>, Path(name): Path<String>) -> ApiResult {
    ok(c.node.confirm_verified(&name)?)
}

async fn org_verify(State(c): State<Ctx>, Path(domain): Path<String>) -> ApiResult {
    ok(c.node.org_verify(&domain).await?)
}

async fn org_forget(State(c): State<Ctx>, Path(domain): Path<String>) -> ApiResult {
    let forgotten = c.node.org_forget(&domain)?;
    ok(json!({ "domain": kith_core::org::normalize_domain(&domain), "forgotten": forgotten }))
}

async fn safety_number(State(c): State<Ctx>, Path(name): Path<String>) -> ApiResult {
    let (number, address, name) = c.node.safety_number(&name)?;
    ok(json!({ "name": name, "address": address, "safety_number": number }))
}

#[derive(Debug, Deserialize)]
struct Send {
    to: String,
    text: String,
    /// Sending again with the same key gives the message queued the first time, not a second one.
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// An idempotency key: 1 to 128 ASCII letters, digits, `-` or `_`.
fn check_idempotency_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty()
        || key.len() > 128
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "idempotency_key must be 1 to 128 ASCII letters, digits, '-' or '_'".into(),
        ));
    }
    Ok(())
}

async fn send(State(c): State<Ctx>, Json(body): Json<Send>) -> ApiResult {
    if let Some(key) = &body.idempotency_key {
        check_idempotency_key(key)?;
    }
    // `service@domain` that is not a contact's name: verified, and sent to the organization's account (added
    // as a contact if it is not one yet).
    let to = if crate::node::org_service(&body.to).is_some()
        && c.node.contact_account(&body.to).is_err()
    {
        c.node.org_contact_name(&body.to).await?
    } else {
        body.to.clone()
    };
    ok(c.node
        .send_once(&to, &body.text, body.idempotency_key.as_deref())?)
}

#[derive(Debug, Deserialize)]
struct ChatQuery {
    limit: Option<usize>,
}

async fn chat(
    State(c): State<Ctx>,
    Path(name): Path<String>,
    Query(q): Query<ChatQuery>,
) -> ApiResult {
    ok(c.node.chat(&name, q.limit.unwrap_or(100).min(100_000))?)
}

async fn requests(State(c): State<Ctx>) -> ApiResult {
    ok(c.node.requests()?)
}

#[derive(Debug, Deserialize)]
struct Accept {
    request: String,
    name: Option<String>,
}

async fn accept(State(c): State<Ctx>, Json(body): Json<Accept>) -> ApiResult {
    ok(c.node.accept_request(&body.request, body.name.as_deref())?)
}

async fn events(State(c): State<Ctx>) -> Response {
    let rx = c.node.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let data = match rx.recv().await {
            Ok(ev) => serde_json::to_string(&ev).unwrap_or_default(),
            // A slow reader missed events: say so, so it can re-read state from the API.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                json!({ "type": "lagged", "missed": n }).to_string()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((
            Ok::<_, std::convert::Infallible>(SseEvent::default().data(data)),
            rx,
        ))
    });
    // End the stream when the daemon stops, or graceful shutdown would wait for every subscriber forever.
    let mut stopping = c.shutdown.subscribe();
    let stream = futures_util::StreamExt::take_until(
        stream,
        Box::pin(async move {
            let _ = stopping.wait_for(|v| *v).await;
        }),
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn shutdown(State(c): State<Ctx>) -> ApiResult {
    let _ = c.shutdown.send(true);
    ok(json!({ "stopping": true }))
}

/// The routes that take a JSON body (and `/v1/chat/{name}`, which takes a query string), for
/// [`parse_body`].
#[doc(hidden)]
pub const BODY_ROUTES: [&str; 10] = [
    "/v1/contacts",
    "/v1/mailbox/host",
    "/v1/mailbox/use",
    "/v1/calls",
    "/v1/calls/answer",
    "/v1/calls/reject",
    "/v1/calls/hangup",
    "/v1/messages",
    "/v1/requests/accept",
    "/v1/chat/{name}",
];

/// Parses a request body for `route` (one of [`BODY_ROUTES`]) as the server's extractors do (`Json`, and
/// `Query` for the chat's query string), without a node: for the fuzz targets (`fuzz/`). Returns the
/// parsed body's `Debug` text, or the rejection's; None for a route that takes no body.
#[doc(hidden)]
pub fn parse_body(route: &str, body: &[u8]) -> Option<Result<String, String>> {
    fn json<T: serde::de::DeserializeOwned + std::fmt::Debug>(b: &[u8]) -> Result<String, String> {
        Json::<T>::from_bytes(b)
            .map(|Json(v)| format!("{v:?}"))
            .map_err(|e| e.body_text())
    }
    Some(match route {
        "/v1/contacts" => json::<AddContact>(body),
        "/v1/mailbox/host" | "/v1/mailbox/use" => json::<Named>(body),
        "/v1/calls" => json::<CallRequest>(body),
        "/v1/calls/answer" | "/v1/calls/reject" | "/v1/calls/hangup" => json::<CallAction>(body),
        "/v1/messages" => json::<Send>(body),
        "/v1/requests/accept" => json::<Accept>(body),
        "/v1/chat/{name}" => {
            let uri = std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|q| {
                    format!("/v1/chat/x?{q}")
                        .parse::<axum::http::Uri>()
                        .map_err(|e| e.to_string())
                });
            uri.and_then(|u| {
                Query::<ChatQuery>::try_from_uri(&u)
                    .map(|Query(q)| format!("{q:?}"))
                    .map_err(|e| e.body_text())
            })
        }
        _ => return None,
    })
}
