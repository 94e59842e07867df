//! A client of the daemon's local control API, shared by the CLI, `kith demo`, the benchmark and tests.

use futures_util::StreamExt;
use kith_node::Profile;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// An error meant for a person, with the exit status the CLI uses: 2 for anything the user can fix.
#[derive(Debug, Clone)]
pub struct UserError(pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UserError {}

pub fn user(msg: impl Into<String>) -> anyhow::Error {
    UserError(msg.into()).into()
}

/// No daemon answers for the profile (none started, or it stopped): nothing was sent to it. A user
/// error (exit status 2) like [`UserError`].
#[derive(Debug, Clone)]
pub struct NotRunning(pub String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotRunning {}

/// The request reached the daemon but no answer came back (the connection broke: the daemon stopped or
/// crashed meanwhile), so whether it was carried out is unknown.
#[derive(Debug, Clone)]
pub struct Unanswered(pub String);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Unanswered {}

/// The message of an error meant for a person ([`UserError`] or [`NotRunning`]), if it is one.
pub fn user_message(e: &anyhow::Error) -> Option<String> {
    e.downcast_ref::<UserError>()
        .map(ToString::to_string)
        .or_else(|| e.downcast_ref::<NotRunning>().map(ToString::to_string))
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    home: String,
}

fn not_running(home: &Path) -> anyhow::Error {
    NotRunning(format!(
        "the kith daemon is not running for the profile in {}: start it with `kith --home {} daemon`",
        home.display(),
        home.display()
    ))
    .into()
}

impl Client {
    /// Connects to the daemon of the profile in `home`.
    pub fn for_profile(home: &Path) -> anyhow::Result<Self> {
        let profile = Profile::new(home);
        if !profile.exists() {
            return Err(user(
                kith_node::ProfileError::Missing(home.to_owned()).to_string(),
            ));
        }
        let info = profile.daemon_info().ok_or_else(|| not_running(home))?;
        let token = profile.token().map_err(|e| user(e.to_string()))?;
        Ok(Self::new(&format!("http://{}", info.api), &token, home))
    }

    pub fn new(base: &str, token: &str, home: &Path) -> Self {
        // reqwest comes with rustls but no crypto provider (iroh's choice); the API is plain HTTP on loopback,
        // yet the client builder insists on a provider: install ring, which iroh already uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.to_owned(),
            token: token.to_owned(),
            home: home.display().to_string(),
        }
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.bearer_auth(&self.token).send().await.map_err(|e| {
            if e.is_connect() {
                not_running(Path::new(&self.home))
            } else {
                Unanswered(format!("control API: {e}")).into()
            }
        })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Unanswered(format!("control API: {e}")))?;
        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        // Every error of the API has this shape; anything else (a daemon of another version, a proxy in
        // the way) is named by its status rather than as "unknown error".
        let msg = match value.get("error").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => format!(
                "the daemon answered {status} without saying why ({}): is it the same kith version? \
                 (`kith --version`, and the daemon's log)",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            ),
        };
        if status.is_client_error() {
            Err(user(msg))
        } else {
            Err(anyhow::anyhow!(msg))
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?);
        self.call(req).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Sends a message; returns its sequence number in the conversation.
    pub async fn send(&self, to: &str, text: &str) -> anyhow::Result<u64> {
        self.send_once(to, text, None).await
    }

    /// Sends a message under an idempotency key: sending again with the same key (after an answer that
    /// never came) gives the same message, not a second one.
    pub async fn send_once(&self, to: &str, text: &str, key: Option<&str>) -> anyhow::Result<u64> {
        let v = self
            .post(
                "/v1/messages",
                serde_json::json!({ "to": to, "text": text, "idempotency_key": key }),
            )
            .await?;
        v.get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow::anyhow!("no seq in reply"))
    }

    /// Opens the event stream; events are delivered to `f` until the stream ends.
    pub async fn events(&self) -> anyhow::Result<impl futures_util::Stream<Item = Value> + use<>> {
        let resp = self
            .http
            .get(format!("{}/v1/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|_| not_running(Path::new(&self.home)))?;
        if !resp.status().is_success() {
            anyhow::bail!("event stream refused: {}", resp.status());
        }
        let bytes = resp.bytes_stream();
        Ok(futures_util::stream::unfold(
            (bytes, String::new()),
            |(mut bytes, mut buf)| async move {
                loop {
                    if let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        let data: String = block
                            .lines()
                            .filter_map(|l| l.strip_prefix("data:"))
                            .map(str::trim_start)
                            .collect::<Vec<_>>()
                            .join("\n");
                        if data.is_empty() {
                            continue;
                        }
                        if let Ok(v) = serde_json::from_str::<Value>(&data) {
                            return Some((v, (bytes, buf)));
                        }
                        continue;
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk)),
                        _ => return None,
                    }
                }
            },
        ))
    }
}

/// Follows a daemon's event stream and remembers when each message was delivered and received, so a
/// driver (demo, benchmark, test) can wait for conditions without polling the API.
#[derive(Clone, Default)]
pub struct Watcher {
    inner: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct Seen {
    /// (peer label, seq) -> when the delivered receipt was seen.
    delivered: HashMap<(String, u64), Instant>,
    /// peer label -> seqs of received messages, in the order shown.
    received: HashMap<String, Vec<u64>>,
    /// event type -> how many were seen.
    counts: HashMap<String, u64>,
    /// Call events (`call_*`), in order.
    calls: Vec<Value>,
    /// The last event of each type.
    last: HashMap<String, Value>,
    /// Every event of each type, in order (a wait for one particular event must not miss it because
    /// another of the same type came right after).
    all: HashMap<String, Vec<Value>>,
    /// "type.field" -> sum of that numeric field over the events of that type.
    sums: HashMap<String, u64>,
}

impl Watcher {
    /// Starts following `client`'s events. The stream is open when this returns.
    pub async fn start(client: &Client) -> anyhow::Result<Self> {
        let w = Watcher::default();
        let stream = client.events().await?;
        let w2 = w.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let now = Instant::now();
                let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
                let mut seen = w2.inner.lock().unwrap_or_else(|e| e.into_inner());
                *seen.counts.entry(kind.to_owned()).or_default() += 1;
                seen.last.insert(kind.to_owned(), ev.clone());
                seen.all
                    .entry(kind.to_owned())
                    .or_default()
                    .push(ev.clone());
                if let Some(fields) = ev.as_object() {
                    for (k, v) in fields {
                        if let Some(n) = v.as_u64() {
                            *seen.sums.entry(format!("{kind}.{k}")).or_default() += n;
                        }
                    }
                }
                if kind.starts_with("call_") {
                    seen.calls.push(ev.clone());
                }
                match kind {
                    "message_state"
                        if ev.get("state").and_then(Value::as_str) == Some("delivered") =>
                    {
                        let to = ev
                            .get("to")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        let seq = ev.get("seq").and_then(Value::as_u64).unwrap_or(0);
                        seen.delivered.entry((to, seq)).or_insert(now);
                    }
                    "message" => {
                        let from = ev
                            .get("from")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        let seq = ev.get("seq").and_then(Value::as_u64).unwrap_or(0);
                        seen.received.entry(from).or_default().push(seq);
                    }
                    _ => {}
                }
                drop(seen);
                w2.changed.notify_waiters();
            }
        });
        Ok(w)
    }

    pub fn delivered_at(&self, to: &str, seq: u64) -> Option<Instant> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delivered
            .get(&(to.to_owned(), seq))
            .copied()
    }

    /// Waits up to `secs` for the delivered receipt of message `seq` to `to`; true if it came.
    pub async fn delivered_within(&self, to: &str, seq: u64, secs: u64) -> bool {
        self.wait_for(Duration::from_secs(secs), |w| {
            w.delivered_at(to, seq).is_some()
        })
        .await
    }

    pub fn delivered_count(&self, to: &str, seqs: &[u64]) -> usize {
        let seen = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        seqs.iter()
            .filter(|s| seen.delivered.contains_key(&(to.to_owned(), **s)))
            .count()
    }

    /// How many events of this type were seen (e.g. "record_published").
    pub fn count(&self, kind: &str) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// The sum of the numeric `field` over the events of type `kind` seen (e.g. how many messages all
    /// `mail_deposited` events reported).
    pub fn sum(&self, kind: &str, field: &str) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sums
            .get(&format!("{kind}.{field}"))
            .copied()
            .unwrap_or(0)
    }

    /// The last event of type `kind` seen.
    pub fn last(&self, kind: &str) -> Option<Value> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .get(kind)
            .cloned()
    }

    /// The last event of type `kind` seen so far that satisfies `pred`.
    pub fn last_where(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .get(kind)
            .and_then(|evs| evs.iter().rev().find(|e| pred(e)).cloned())
    }

    /// Whether any event of type `kind` seen so far satisfies `pred`.
    pub fn any(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .get(kind)
            .is_some_and(|evs| evs.iter().any(&pred))
    }

    /// The call events seen so far (`call_incoming`, `call_ringing`, `call_answered`, `call_ended`).
    pub fn call_events(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .clone()
    }

    /// The first event of `kind` about call `call` (any call if `None`).
    pub fn call_event(&self, kind: &str, call: Option<&str>) -> Option<Value> {
        self.call_events()
            .into_iter()
            .find(|e| e["type"] == kind && call.is_none_or(|c| e["call"].as_str() == Some(c)))
    }

    pub fn received(&self, from: &str) -> Vec<u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .received
            .get(from)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `cond` holds or `timeout` passes; returns whether it held.
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&Watcher) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(self);
            }
        }
    }
}
