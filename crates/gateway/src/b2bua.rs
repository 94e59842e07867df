//! The back-to-back user agent: each call through the gateway is a kith call (on the node) and a SIP call
//! (on ezk's INVITE session), bridged: audio through a [`Bridge`] and the SIP leg's RTP task, signalling
//! mapped both ways (ringing, answer, refusals, hang-up from either side, keys).
//!
//! kith -> SIP: a kith caller asks for a service; the gateway rings the service's SIP addresses in turn
//! (a hunt group) and answers the kith call once a phone answers. SIP -> kith: a phone dials a number of
//! the dial plan (or a kith address); the gateway calls that kith user and answers the phone once the kith
//! user answers.

use crate::config::GatewayConfig;
use crate::leg::{self, Key};
use ezk_sip_auth::{DigestAuthenticator, DigestCredentials, DigestUser};
use ezk_sip_core::{Endpoint, IncomingRequest, Layer, MayTake};
use ezk_sip_types::header::typed::{Contact, FromTo};
use ezk_sip_types::uri::NameAddr;
use ezk_sip_types::uri::{SipUri, SipUriUserPart};
use ezk_sip_types::{Method, Name, StatusCode};
use ezk_sip_ua::dialog::DialogLayer;
use ezk_sip_ua::invite::InviteLayer;
use ezk_sip_ua::{Call, CallEvent, InboundCall, NoMedia, RegistrarConfig, Registration};
use kith_core::address::Address;
use kith_core::call::RejectReason;
use kith_node::Node;
use kith_node::events::Event;
use kith_node::media::{AudioInput, AudioOptions, Bridge};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen for SIP on {addr}: {source} (is another program using it?)")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register with {registrar} as {user}: {message}")]
    Register {
        registrar: String,
        user: String,
        message: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's call events, routed to the task of each call. Events of a call whose task has not
/// registered yet are kept (the most recent few hundred) and handed over when it does, so a call placed
/// and reported before its task took its route loses nothing.
#[derive(Default)]
struct Routes {
    by_call: HashMap<String, mpsc::UnboundedSender<Event>>,
    recent: VecDeque<(String, Event)>,
}

const RECENT: usize = 512;

fn call_of(e: &Event) -> Option<&str> {
    match e {
        Event::CallIncoming { call, .. }
        | Event::CallRinging { call, .. }
        | Event::CallAnswered { call, .. }
        | Event::CallEnded { call, .. }
        | Event::CallDtmf { call, .. } => Some(call),
        _ => None,
    }
}

/// Only the PBX may send the gateway SIP: requests from elsewhere are dropped unanswered (a scanner learns
/// nothing), before any other layer reads them.
struct PbxOnly {
    allowed: Vec<IpAddr>,
}

#[async_trait::async_trait]
impl Layer for PbxOnly {
    fn name(&self) -> &'static str {
        "kith-pbx-only"
    }

    async fn receive(&self, _endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        let from = request.tp_info.source.ip();
        if !self.allowed.contains(&from) {
            tracing::warn!(%from, method = %request.line.method, "SIP from an address that is not the PBX's: dropped");
            drop(request.take());
        }
    }
}

/// Hands new INVITEs to the gateway.
struct Invites {
    tx: mpsc::UnboundedSender<IncomingRequest>,
}

#[async_trait::async_trait]
impl Layer for Invites {
    fn name(&self) -> &'static str {
        "kith-invites"
    }

    async fn receive(&self, _endpoint: &Endpoint, request: MayTake<'_, IncomingRequest>) {
        if request.line.method == Method::INVITE {
            let _ = self.tx.send(request.take());
        }
    }
}

pub struct Gateway {
    node: Arc<Node>,
    config: GatewayConfig,
    endpoint: Endpoint,
    registration: Registration,
    credentials: DigestCredentials,
    routes: Mutex<Routes>,
}

impl Gateway {
    /// Listens for SIP, registers with the PBX and bridges calls until the node stops.
    pub async fn start(node: Arc<Node>, config: GatewayConfig) -> Result<Arc<Self>, GatewayError> {
        let (invites_tx, mut invites) = mpsc::unbounded_channel();
        let mut builder = Endpoint::builder();
        builder.add_layer(PbxOnly {
            allowed: config.sip.pbx.clone(),
        });
        builder.add_layer(DialogLayer::default());
        builder.add_layer(InviteLayer::default());
        builder.add_layer(Invites { tx: invites_tx });
        builder
            .bind_udp(config.sip.listen)
            .await
            .map_err(|source| GatewayError::Listen {
                addr: config.sip.listen,
                source,
            })?;
        let endpoint = builder.build();
        let mut credentials = DigestCredentials::new();
        credentials.set_default(DigestUser::new(
            config.sip.user.clone(),
            config.sip.password.clone(),
        ));
        let registrar: SipUri =
            config
                .sip
                .registrar
                .parse()
                .map_err(|_| GatewayError::Register {
                    registrar: config.sip.registrar.clone(),
                    user: config.sip.user.clone(),
                    message: "not a SIP address".into(),
                })?;
        let registration = Registration::register(
            endpoint.clone(),
            RegistrarConfig::new(config.sip.user.clone(), registrar),
            DigestAuthenticator::new(credentials.clone()),
        )
        .await
        .map_err(|e| GatewayError::Register {
            registrar: config.sip.registrar.clone(),
            user: config.sip.user.clone(),
            message: e.to_string(),
        })?;
        tracing::info!(registrar = %config.sip.registrar, user = %config.sip.user, "registered with the PBX");
        let gw = Arc::new(Self {
            node,
            config,
            endpoint,
            registration,
            credentials,
            routes: Mutex::new(Routes::default()),
        });
        let g = gw.clone();
        let mut events = g.node.subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => g.dispatch(e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "gateway fell behind the node's events");
                    }
                    Err(_) => return,
                }
            }
        });
        let g = gw.clone();
        tokio::spawn(async move {
            while let Some(invite) = invites.recv().await {
                let g = g.clone();
                tokio::spawn(async move { g.sip_to_kith(invite).await });
            }
        });
        Ok(gw)
    }

    fn dispatch(self: &Arc<Self>, e: Event) {
        if let Event::CallIncoming {
            call,
            service: Some(service),
            from,
            address,
            ..
        } = &e
        {
            let rx = self.route(call);
            let g = self.clone();
            let (call, service, from, address) =
                (call.clone(), service.clone(), from.clone(), address.clone());
            tokio::spawn(async move { g.kith_to_sip(call, service, from, address, rx).await });
            return;
        }
        let Some(call) = call_of(&e) else { return };
        let mut r = lock(&self.routes);
        let ended = matches!(e, Event::CallEnded { .. });
        match r.by_call.get(call) {
            Some(tx) => {
                let _ = tx.send(e.clone());
                if ended {
                    let call = call.to_owned();
                    r.by_call.remove(&call);
                }
            }
            None => {
                r.recent.push_back((call.to_owned(), e.clone()));
                if r.recent.len() > RECENT {
                    r.recent.pop_front();
                }
            }
        }
    }

    /// The events of `call` from now on (and those that came before its task asked).
    fn route(&self, call: &str) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut r = lock(&self.routes);
        for (_, e) in r.recent.iter().filter(|(c, _)| c == call) {
            let _ = tx.send(e.clone());
        }
        r.recent.retain(|(c, _)| c != call);
        r.by_call.insert(call.to_owned(), tx);
        rx
    }

    fn bridged() -> (Bridge, AudioOptions) {
        // Telephone audio (G.711: nothing above 4 kHz) until the SIP side agrees on a codec; the leg sets
        // the band then (8 kHz for G.722).
        let bridge = Bridge::with_band(crate::g711::BAND_KHZ);
        let options = AudioOptions {
            input: Some(AudioInput::Bridge(bridge.clone())),
            ..Default::default()
        };
        (bridge, options)
    }

    /// A kith caller asked for `service`: ring its SIP addresses in turn; bridge the first that answers.
    async fn kith_to_sip(
        self: Arc<Self>,
        call: String,
        service: String,
        from: String,
        address: String,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let Some(targets) = self.config.services.get(&service).cloned() else {
            // The node admits only configured services; a mismatch is refused all the same.
            let _ = self.node.reject_call_with(&call, RejectReason::NotAccepted);
            return;
        };
        let (bridge, options) = Self::bridged();
        let (keys_tx, mut keys_from_sip) = mpsc::channel(64);
        let mut last = RejectReason::NoAnswer;
        // The identity the gateway asserts toward the PBX: the kith caller's address (what kith proved in
        // the handshake) and its name, with nothing the caller wrote taken as an identity.
        let host = self.config.domain();
        let user = address.trim_start_matches("kith:").to_owned();
        let display = display_name(&from);
        for target in targets {
            let Ok(uri) = target.parse::<SipUri>() else {
                continue;
            };
            let mut leg = match leg::start(
                self.config.rtp_address(),
                self.config.sip.rtp_ports,
                bridge.clone(),
                keys_tx.clone(),
            )
            .await
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "no RTP socket for the SIP leg");
                    break;
                }
            };
            let Some(media) = leg.media.take() else { break };
            let pai = format!("\"{display}\" <sip:{user}@{host}>");
            let shown = display.clone();
            let customize = move |req: &mut ezk_sip_core::Request| {
                req.headers.remove(&Name::from("P-Asserted-Identity"));
                req.headers.insert("P-Asserted-Identity", pai.clone());
                if let Ok(mut from) = req.headers.get::<FromTo>(Name::FROM) {
                    from.uri.name = Some(shown.clone().into());
                    req.headers.remove(&Name::FROM);
                    req.headers.insert_type(Name::FROM, &from);
                }
            };
            tracing::info!(%service, %target, "kith caller: ringing the SIP side");
            let auth = DigestAuthenticator::new(self.credentials.clone());
            let ring = Duration::from_secs(self.config.limits.ring_secs);
            let make = self
                .registration
                .make_call_to_uri_with(uri, auth, media, customize);
            tokio::pin!(make);
            let made = tokio::select! {
                r = &mut make => r,
                e = wait_end(&mut events) => {
                    tracing::info!(outcome = %e, "kith caller gave up before the SIP side answered");
                    // The INVITE may already ring a phone whose answer has not come yet: wait for it and
                    // cancel (dropping the attempt would leave the phone ringing).
                    if let Ok(Ok(outbound)) = tokio::time::timeout(ring, make).await {
                        let _ = outbound.cancel().await;
                    }
                    return;
                }
            };
            let mut outbound = match made {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!(%target, error = %e, "SIP side did not take the call");
                    last = match &e {
                        ezk_sip_ua::MakeCallError::Failed(line) => refusal(line.code.into_u16()),
                        _ => RejectReason::NoAnswer,
                    };
                    continue;
                }
            };
            let answered = tokio::select! {
                r = tokio::time::timeout(ring, outbound.wait_for_completion()) => r,
                e = wait_end(&mut events) => {
                    tracing::info!(outcome = %e, "kith caller gave up while the SIP side rang");
                    let _ = outbound.cancel().await;
                    return;
                }
            };
            let unacked = match answered {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    tracing::info!(%target, error = %e, "SIP side refused the call");
                    last = match &e {
                        ezk_sip_ua::MakeCallCompletionError::Failed(line) => {
                            refusal(line.code.into_u16())
                        }
                        _ => RejectReason::NoAnswer,
                    };
                    continue;
                }
                Err(_) => {
                    let _ = outbound.cancel().await;
                    last = RejectReason::NoAnswer;
                    continue;
                }
            };
            let sip_call = match unacked.finish().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "SIP call could not be completed");
                    last = RejectReason::Declined;
                    continue;
                }
            };
            if let Err(e) = self.node.answer_call(Some(&call), options.clone()) {
                tracing::info!(error = %e, "kith call ended before the bridge");
                let _ = sip_call.terminate().await;
                return;
            }
            self.bridge(sip_call, &call, &mut events, &leg, &mut keys_from_sip)
                .await;
            return;
        }
        let _ = self.node.reject_call_with(&call, last);
    }

    /// A SIP phone dialled the gateway: call the kith user its number stands for; answer the phone once
    /// they answer.
    async fn sip_to_kith(self: Arc<Self>, invite: IncomingRequest) {
        let dialled = match &invite.line.uri.user_part {
            SipUriUserPart::User(u) => u.to_string(),
            _ => String::new(),
        };
        let contact = Contact::new(NameAddr::uri(
            SipUri::new(self.config.sip.listen.into()).user("kith".into()),
        ));
        let inbound = match InboundCall::from_invite(self.endpoint.clone(), invite, contact) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e.1, "an INVITE the gateway cannot take");
                return;
            }
        };
        let peer = match self.config.dialplan.get(&dialled) {
            Some(name) => self.node.contact_account(name).ok(),
            None => dialled.parse::<Address>().ok().map(|a| a.account()),
        };
        let Some(peer) = peer else {
            tracing::info!(%dialled, "SIP call to a number the dial plan does not know");
            let _ = decline(inbound, StatusCode::NOT_FOUND).await;
            return;
        };
        let mut inbound: InboundCall<NoMedia> = inbound;
        let _ = inbound.respond_provisional(StatusCode::TRYING).await;
        let (bridge, options) = Self::bridged();
        let (keys_tx, mut keys_from_sip) = mpsc::channel(64);
        let mut leg = match leg::start(
            self.config.rtp_address(),
            self.config.sip.rtp_ports,
            bridge,
            keys_tx,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "no RTP socket for the SIP leg");
                let _ = decline(inbound, StatusCode::SERVICE_UNAVAILABLE).await;
                return;
            }
        };
        let Some(media) = leg.media.take() else {
            return;
        };
        let call = match self.node.place_call_to(peer, None, options) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "cannot call the kith side");
                let _ = decline(inbound, StatusCode::BUSY_HERE).await;
                return;
            }
        };
        let mut events = self.route(&call);
        let mut inbound = inbound.with_media(media);
        let mut rang = false;
        loop {
            tokio::select! {
                _ = inbound.cancelled() => {
                    tracing::info!("the SIP caller gave up");
                    let _ = self.node.hangup_call(Some(&call));
                    return;
                }
                e = events.recv() => match e {
                    Some(Event::CallRinging { .. }) if !rang => {
                        rang = true;
                        let _ = inbound.respond_provisional(StatusCode::RINGING).await;
                    }
                    Some(Event::CallAnswered { .. }) => break,
                    Some(Event::CallEnded { outcome, .. }) => {
                        let _ = decline(inbound, sip_refusal(&outcome)).await;
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
            }
        }
        let sip_call = match inbound.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(error = %e, "the SIP side went away at the answer");
                let _ = self.node.hangup_call(Some(&call));
                return;
            }
        };
        self.bridge(sip_call, &call, &mut events, &leg, &mut keys_from_sip)
            .await;
    }

    /// Runs an answered call until either side hangs up.
    async fn bridge(
        &self,
        mut sip: Call<leg::SipMedia>,
        call: &str,
        events: &mut mpsc::UnboundedReceiver<Event>,
        leg: &leg::Leg,
        keys_from_sip: &mut mpsc::Receiver<Key>,
    ) {
        tracing::info!("call bridged");
        let mut held = leg.held.clone();
        loop {
            tokio::select! {
                Ok(()) = held.changed() => {
                    // The phone put the call on hold (a re-INVITE to send only, or nothing) or took it
                    // off: the kith caller is told; the leg stops or resumes sending.
                    let on_hold = *held.borrow_and_update();
                    tracing::info!(on_hold, "the SIP side changed hold");
                    let _ = self.node.hold_call(Some(call), on_hold);
                }
                r = sip.run() => match r {
                    Ok(CallEvent::Internal(e)) => {
                        if let Err(e) = sip.handle_internal_event(e).await {
                            tracing::info!(error = %e, "SIP session failed");
                            let _ = self.node.hangup_call(Some(call));
                            return;
                        }
                    }
                    Ok(CallEvent::Media(())) => {}
                    Ok(CallEvent::Terminated) => {
                        tracing::info!("the SIP side hung up");
                        let _ = self.node.hangup_call(Some(call));
                        return;
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "SIP session failed");
                        let _ = self.node.hangup_call(Some(call));
                        return;
                    }
                },
                e = events.recv() => match e {
                    Some(Event::CallEnded { .. }) | None => {
                        tracing::info!("the kith side hung up");
                        let _ = sip.terminate().await;
                        return;
                    }
                    Some(Event::CallDtmf { key, duration_ms, .. }) => {
                        if let Some(event) = key.chars().next().and_then(kith_core::call::dtmf_event) {
                            let _ = leg.keys.try_send(Key { event, duration_ms: duration_ms.clamp(40, 2000) });
                        }
                    }
                    Some(_) => {}
                },
                Some(k) = keys_from_sip.recv() => {
                    if let Some(key) = kith_core::call::dtmf_key(k.event) {
                        let _ = self.node.send_dtmf(Some(call), &key.to_string(), k.duration_ms);
                    }
                }
            }
        }
    }
}

/// Waits for the kith call's end; returns its outcome.
async fn wait_end(events: &mut mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        match events.recv().await {
            Some(Event::CallEnded { outcome, .. }) => return outcome,
            Some(_) => {}
            None => return "gone".into(),
        }
    }
}

async fn decline<M>(inbound: InboundCall<M>, code: StatusCode) -> Result<(), ()> {
    inbound.decline(code, None).await.map_err(|_| ())
}

/// What a SIP refusal means for the kith caller.
fn refusal(code: u16) -> RejectReason {
    match code {
        486 | 600 => RejectReason::Busy,
        403 | 603 => RejectReason::Declined,
        _ => RejectReason::NoAnswer,
    }
}

/// What a kith call's outcome means for the SIP caller.
fn sip_refusal(outcome: &str) -> StatusCode {
    match outcome {
        "busy" => StatusCode::BUSY_HERE,
        "declined" => StatusCode::DECLINE,
        "refused" => StatusCode::FORBIDDEN,
        _ => StatusCode::TEMPORARILY_UNAVAILABLE,
    }
}

/// A caller's name as a SIP display name: printable, no quotes or brackets, at most 64 characters (a
/// name cannot break out of its quotes and pose as another header or address).
pub fn display_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\' | '<' | '>'))
        .take(64)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_and_refusals_map_both_ways() {
        assert_eq!(
            display_name("Mallory\" <sip:ceo@example.org>\r\nP-Asserted-Identity: x"),
            "Mallory sip:ceo@example.orgP-Asserted-Identity: x"
        );
        assert_eq!(refusal(486), RejectReason::Busy);
        assert_eq!(refusal(603), RejectReason::Declined);
        assert_eq!(refusal(480), RejectReason::NoAnswer);
        assert_eq!(sip_refusal("busy"), StatusCode::BUSY_HERE);
        assert_eq!(
            sip_refusal("no answer"),
            StatusCode::TEMPORARILY_UNAVAILABLE
        );
    }
}
