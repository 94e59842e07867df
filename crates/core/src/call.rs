//! Call signalling, sans-IO: one [`Calls`] per node holds every call it is part of, takes signalling messages,
//! user actions and the time, and tells its driver what to send and what happened.
//!
//! The messages ride the reliable control stream, but a connection can drop and come back, so every
//! message that needs an answer is repeated until the answer arrives (invite until ringing/answer/refusal,
//! accept until the caller confirms, cancel and hangup until acknowledged), and every message may arrive
//! twice: duplicates of a live call are answered again, duplicates of an ended call get its final answer
//! again, and nothing ever rings twice.
//!
//! Transitions (caller on the left, callee on the right):
//! ```text
//! dial ── Invite ─────────────────────────▶ (contact, idle)  Ringing back, rings      [Incoming]
//!      ◀───────────────────────── Ringing                      (busy)  Reject(Busy)
//!      ◀───────────────────────── Accept  answer              (stranger) Reject(NotAccepted), no ring
//! Connected ─────────────────────────────▶                     reject  Reject(Declined)
//! hangup ─ Hangup ───────────────────────▶ HangupAck           ring timeout Reject(NoAnswer)
//! cancel / no answer ── Cancel ──────────▶ HangupAck (a missed call)
//! ```
//! Glare (both dial each other at once): the invite with the lower call id wins; the other side drops its
//! own call and answers the winner's at once, since its user wanted the call too. A second incoming call
//! during a call is refused as busy. A call whose peer is silent for [`CallConfig::media_timeout`] (no media,
//! no signalling), or whose connection is reported lost, ends as [`EndReason::ConnectionLost`].

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A call's identifier: random, chosen by the caller.
pub type CallId = [u8; 16];

/// What one side proposes for its media: Opus, 48 kHz mono, this frame length and at most this bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaParams {
    pub frame_ms: u8,
    pub max_bitrate: u32,
}

impl Default for MediaParams {
    fn default() -> Self {
        Self {
            frame_ms: 20,
            max_bitrate: 32_000,
        }
    }
}

/// Why a callee refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The user declined.
    Declined,
    /// Already in a call.
    Busy,
    /// The caller is not a contact: refused without ringing.
    NotAccepted,
    /// Rang until the callee's ring timeout.
    NoAnswer,
}

/// The signalling messages (carried in the control stream's call frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CallMsg {
    Invite {
        call: CallId,
        media: MediaParams,
        /// The service called at an organization's gateway (`support` of `support@example.org`); none for
        /// a person. At most [`MAX_SERVICE_LEN`] bytes.
        service: Option<String>,
    },
    Ringing {
        call: CallId,
    },
    Accept {
        call: CallId,
        media: MediaParams,
    },
    /// The caller saw the accept (stops the callee repeating it).
    Connected {
        call: CallId,
    },
    Reject {
        call: CallId,
        reason: RejectReason,
    },
    /// The caller gives up before an answer.
    Cancel {
        call: CallId,
    },
    Hangup {
        call: CallId,
    },
    /// Answers a cancel or a hangup.
    HangupAck {
        call: CallId,
    },
    /// A key pressed during the call (an IVR's menu): `event` as RFC 4733 numbers it (0-9, 10 = `*`,
    /// 11 = `#`, 12-15 = A-D), held `duration_ms`. It rides the reliable control stream, so a lost
    /// datagram never loses a digit.
    Dtmf {
        call: CallId,
        event: u8,
        duration_ms: u16,
    },
    /// The sender put the answered call on hold (`held`), or took it off: an organization's phone did
    /// (a SIP re-INVITE to send only, or nothing), and its gateway says so. While held, the sender sends
    /// no speech of its own side's phone (perhaps music).
    Hold {
        call: CallId,
        held: bool,
    },
}

/// The longest service name an invite may carry (bytes).
pub const MAX_SERVICE_LEN: usize = 64;

/// The DTMF events of the keys `0-9 * # A-D` (RFC 4733 section 3.2), or None for another character.
pub fn dtmf_event(key: char) -> Option<u8> {
    match key.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        k @ 'A'..='D' => Some(k as u8 - b'A' + 12),
        _ => None,
    }
}

/// The key of a DTMF event (the inverse of [`dtmf_event`]).
pub fn dtmf_key(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

impl CallMsg {
    pub fn call(&self) -> CallId {
        match self {
            Self::Invite { call, .. }
            | Self::Ringing { call }
            | Self::Accept { call, .. }
            | Self::Connected { call }
            | Self::Reject { call, .. }
            | Self::Cancel { call }
            | Self::Hangup { call }
            | Self::HangupAck { call }
            | Self::Dtmf { call, .. }
            | Self::Hold { call, .. } => *call,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

/// Where a live call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Invite sent, nothing back yet.
    Dialing,
    /// The callee's phone rings.
    RingingOut,
    /// Our phone rings.
    RingingIn,
    Active,
}

/// How a call ended (for the call log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum EndReason {
    /// Talked, then one side hung up.
    Completed { by_us: bool },
    /// The callee declined.
    Declined { by_us: bool },
    /// The callee was in another call.
    Busy,
    /// The caller gave up before an answer (for the callee: a missed call).
    Cancelled { by_us: bool },
    /// Rang until the timeout.
    NoAnswer,
    /// The invite was never answered: the peer is offline or unreachable.
    Unreachable,
    /// The callee does not take calls from us (we are not its contact), or we refused a stranger.
    Refused,
    /// The connection went away, or the peer fell silent.
    ConnectionLost,
}

/// What the driver should do or show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutput<P> {
    Send { peer: P, msg: CallMsg },
    Event(CallEvent<P>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent<P> {
    /// Someone calls (`service`: the gateway service they called): ring.
    Incoming {
        call: CallId,
        peer: P,
        service: Option<String>,
    },
    /// The callee's phone rings.
    Ringing { call: CallId, peer: P },
    /// Both sides agreed: start the media. `replaces` names our own call dropped in favour of this one
    /// (glare).
    Answered {
        call: CallId,
        peer: P,
        direction: Direction,
        media: MediaParams,
        replaces: Option<CallId>,
    },
    /// The peer pressed a key (see [`CallMsg::Dtmf`]).
    Dtmf {
        call: CallId,
        peer: P,
        event: u8,
        duration_ms: u16,
    },
    /// The peer put the call on hold, or took it off (see [`CallMsg::Hold`]).
    Held { call: CallId, peer: P, held: bool },
    /// The call is over: stop the media, log it. `talked` is the time since the answer, if there was one.
    Ended {
        call: CallId,
        peer: P,
        direction: Direction,
        reason: EndReason,
        talked: Option<Duration>,
    },
}

/// Errors of the user actions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("already in a call: hang up first")]
    InCall,
    #[error("the call is not in progress: keys can be sent only once it is answered")]
    NotActive,
    #[error("service name longer than {MAX_SERVICE_LEN} bytes")]
    ServiceTooLong,
    #[error("no such call")]
    NoSuchCall,
    #[error("the call is not ringing here: nothing to answer or reject")]
    NotRinging,
    #[error("a call with this id exists already")]
    DuplicateId,
}

#[derive(Debug, Clone)]
pub struct CallConfig {
    /// First repeat of an unanswered invite (doubling up to 4x).
    pub invite_retry: Duration,
    /// An invite with no answer at all after this: the peer is unreachable.
    pub unreachable_after: Duration,
    /// How long a phone rings.
    pub ring_timeout: Duration,
    /// Repeat interval of accept, cancel and hangup until answered.
    pub retry: Duration,
    /// Cancels and hangups are repeated this many times at most.
    pub final_attempts: u32,
    /// An active call whose peer sends nothing (no media, no signalling) for this long is over.
    pub media_timeout: Duration,
    /// Ended calls are remembered this long, to answer late duplicates.
    pub remember_ended: Duration,
    /// Our media proposal.
    pub media: MediaParams,
    /// Calls at once (1 for a phone; a gateway takes many, each with another peer). A peer never has two
    /// calls with us at once.
    pub max_calls: usize,
}

impl Default for CallConfig {
    fn default() -> Self {
        Self {
            invite_retry: Duration::from_secs(1),
            unreachable_after: Duration::from_secs(15),
            ring_timeout: Duration::from_secs(60),
            retry: Duration::from_secs(1),
            final_attempts: 5,
            media_timeout: Duration::from_secs(10),
            remember_ended: Duration::from_secs(120),
            media: MediaParams::default(),
            max_calls: 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Live<P> {
    peer: P,
    direction: Direction,
    state: CallState,
    answered: Option<Instant>,
    /// Next repeat of the message that waits for an answer (invite, or accept on the callee side).
    next_retry: Option<Instant>,
    retry_interval: Duration,
    /// When the current phase gives up (unreachable / no answer).
    deadline: Option<Instant>,
    last_heard: Instant,
    media: Option<MediaParams>,
    /// The service an outgoing call asks for (repeated with the invite).
    service: Option<String>,
}

#[derive(Debug, Clone)]
struct Ended<P> {
    peer: P,
    /// Kept until then, to answer duplicates.
    until: Instant,
    /// The final word we said about this call, repeated to duplicates (reject, hangup, cancel).
    last_word: Option<CallMsg>,
    /// Repeats of `last_word` still to send until acknowledged (cancel and hangup only).
    attempts_left: u32,
    next_retry: Option<Instant>,
}

/// Every call of one node. `P` identifies a peer (an account key in the node).
#[derive(Debug)]
pub struct Calls<P> {
    config: CallConfig,
    live: HashMap<CallId, Live<P>>,
    ended: HashMap<CallId, Ended<P>>,
    out: VecDeque<CallOutput<P>>,
}

/// A live call as the UI lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo<P> {
    pub call: CallId,
    pub peer: P,
    pub direction: Direction,
    pub state: CallState,
    pub media: Option<MediaParams>,
}

impl<P: Copy + Eq + Hash> Calls<P> {
    pub fn new(config: CallConfig) -> Self {
        Self {
            config,
            live: HashMap::new(),
            ended: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &CallConfig {
        &self.config
    }

    /// The calls in progress.
    pub fn live(&self) -> Vec<CallInfo<P>> {
        let mut v: Vec<_> = self
            .live
            .iter()
            .map(|(id, c)| CallInfo {
                call: *id,
                peer: c.peer,
                direction: c.direction,
                state: c.state,
                media: c.media,
            })
            .collect();
        v.sort_by_key(|c| c.call);
        v
    }

    pub fn state(&self, call: &CallId) -> Option<CallState> {
        self.live.get(call).map(|c| c.state)
    }

    pub fn poll_output(&mut self) -> Option<CallOutput<P>> {
        self.out.pop_front()
    }

    fn send(&mut self, peer: P, msg: CallMsg) {
        self.out.push_back(CallOutput::Send { peer, msg });
    }

    fn emit(&mut self, e: CallEvent<P>) {
        self.out.push_back(CallOutput::Event(e));
    }

    /// Places a call. `call` must be fresh and random.
    pub fn dial(&mut self, peer: P, call: CallId, now: Instant) -> Result<(), CallError> {
        let media = self.config.media;
        self.dial_with(peer, call, media, None, now)
    }

    /// Places a call proposing `media` (e.g. 10 ms frames for this call only), to `service` at a gateway.
    pub fn dial_with(
        &mut self,
        peer: P,
        call: CallId,
        media: MediaParams,
        service: Option<String>,
        now: Instant,
    ) -> Result<(), CallError> {
        if self.live.len() >= self.config.max_calls || self.live.values().any(|c| c.peer == peer) {
            return Err(CallError::InCall);
        }
        if service.as_ref().is_some_and(|s| s.len() > MAX_SERVICE_LEN) {
            return Err(CallError::ServiceTooLong);
        }
        if self.ended.contains_key(&call) {
            return Err(CallError::DuplicateId);
        }
        self.live.insert(
            call,
            Live {
                peer,
                direction: Direction::Outgoing,
                state: CallState::Dialing,
                answered: None,
                next_retry: Some(now + self.config.invite_retry),
                retry_interval: self.config.invite_retry,
                deadline: Some(now + self.config.unreachable_after),
                last_heard: now,
                media: Some(media),
                service: service.clone(),
            },
        );
        self.send(
            peer,
            CallMsg::Invite {
                call,
                media,
                service,
            },
        );
        Ok(())
    }

    /// Answers a ringing incoming call.
    pub fn answer(&mut self, call: CallId, now: Instant) -> Result<(), CallError> {
        let c = self.live.get_mut(&call).ok_or(CallError::NoSuchCall)?;
        if c.state != CallState::RingingIn {
            return Err(CallError::NotRinging);
        }
        c.state = CallState::Active;
        c.answered = Some(now);
        c.deadline = None;
        c.last_heard = now;
        c.next_retry = Some(now + self.config.retry);
        c.retry_interval = self.config.retry;
        let (peer, media) = (c.peer, c.media.unwrap_or(self.config.media));
        let ours = self.config.media;
        self.send(peer, CallMsg::Accept { call, media: ours });
        self.emit(CallEvent::Answered {
            call,
            peer,
            direction: Direction::Incoming,
            media: negotiate(media, ours),
            replaces: None,
        });
        Ok(())
    }

    /// Declines a ringing incoming call.
    pub fn reject(&mut self, call: CallId, now: Instant) -> Result<(), CallError> {
        self.reject_with(call, RejectReason::Declined, now)
    }

    /// Refuses a ringing incoming call for `reason` (a gateway passes on what the phones behind it said:
    /// busy, no answer).
    pub fn reject_with(
        &mut self,
        call: CallId,
        reason: RejectReason,
        now: Instant,
    ) -> Result<(), CallError> {
        let c = self.live.get(&call).ok_or(CallError::NoSuchCall)?;
        if c.state != CallState::RingingIn {
            return Err(CallError::NotRinging);
        }
        let peer = c.peer;
        let msg = CallMsg::Reject { call, reason };
        self.send(peer, msg.clone());
        let ended = match reason {
            RejectReason::Declined => EndReason::Declined { by_us: true },
            RejectReason::Busy => EndReason::Busy,
            RejectReason::NotAccepted => EndReason::Refused,
            RejectReason::NoAnswer => EndReason::NoAnswer,
        };
        self.end(call, ended, Some(msg), 0, now);
        Ok(())
    }

    /// Hangs up: cancels an outgoing call not yet answered, declines a ringing one, ends an active one.
    pub fn hangup(&mut self, call: CallId, now: Instant) -> Result<(), CallError> {
        let c = self.live.get(&call).ok_or(CallError::NoSuchCall)?;
        let peer = c.peer;
        match c.state {
            CallState::RingingIn => self.reject(call, now),
            CallState::Dialing | CallState::RingingOut => {
                let msg = CallMsg::Cancel { call };
                self.send(peer, msg.clone());
                let attempts = self.config.final_attempts;
                self.end(
                    call,
                    EndReason::Cancelled { by_us: true },
                    Some(msg),
                    attempts,
                    now,
                );
                Ok(())
            }
            CallState::Active => {
                let msg = CallMsg::Hangup { call };
                self.send(peer, msg.clone());
                let attempts = self.config.final_attempts;
                self.end(
                    call,
                    EndReason::Completed { by_us: true },
                    Some(msg),
                    attempts,
                    now,
                );
                Ok(())
            }
        }
    }

    /// Sends a key press in an answered call (see [`CallMsg::Dtmf`]).
    pub fn dtmf(&mut self, call: CallId, event: u8, duration_ms: u16) -> Result<(), CallError> {
        let c = self.live.get(&call).ok_or(CallError::NoSuchCall)?;
        if c.state != CallState::Active {
            return Err(CallError::NotActive);
        }
        let peer = c.peer;
        self.send(
            peer,
            CallMsg::Dtmf {
                call,
                event: event.min(15),
                duration_ms,
            },
        );
        Ok(())
    }

    /// Tells the peer that this side put the answered call on hold, or took it off (see [`CallMsg::Hold`]).
    pub fn hold(&mut self, call: CallId, held: bool) -> Result<(), CallError> {
        let c = self.live.get(&call).ok_or(CallError::NoSuchCall)?;
        if c.state != CallState::Active {
            return Err(CallError::NotActive);
        }
        let peer = c.peer;
        self.send(peer, CallMsg::Hold { call, held });
        Ok(())
    }

    /// Media arrived for `call`: the peer is alive (and, for a callee, the caller saw the accept).
    pub fn media_received(&mut self, call: CallId, now: Instant) {
        if let Some(c) = self.live.get_mut(&call)
            && c.state == CallState::Active
        {
            c.last_heard = now;
            if c.direction == Direction::Incoming {
                c.next_retry = None;
            }
        }
    }

    /// The connection to `peer` is gone for good: its calls end.
    pub fn peer_lost(&mut self, peer: P, now: Instant) {
        let ids: Vec<CallId> = self
            .live
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end(id, EndReason::ConnectionLost, None, 0, now);
        }
    }

    /// A signalling message from `peer`. `admitted`: whether `peer` may ring this node (a contact; at a
    /// gateway, anyone calling one of its services): other callers are refused without ringing.
    pub fn handle(&mut self, peer: P, msg: CallMsg, admitted: bool, now: Instant) {
        let call = msg.call();
        // Messages about a call of another peer are ignored (call ids are random; this is a forgery or a bug).
        if let Some(c) = self.live.get(&call)
            && c.peer != peer
        {
            return;
        }
        if let Some(e) = self.ended.get(&call)
            && e.peer != peer
        {
            return;
        }
        if let Some(c) = self.live.get_mut(&call) {
            c.last_heard = now;
        }
        match msg {
            CallMsg::Invite {
                call,
                media,
                service,
            } => {
                let service = service.filter(|s| s.len() <= MAX_SERVICE_LEN);
                self.on_invite(peer, call, media, service, admitted, now)
            }
            CallMsg::Dtmf {
                call,
                event,
                duration_ms,
            } => {
                if self
                    .live
                    .get(&call)
                    .is_some_and(|c| c.state == CallState::Active)
                    && event <= 15
                {
                    self.emit(CallEvent::Dtmf {
                        call,
                        peer,
                        event,
                        duration_ms,
                    });
                }
            }
            CallMsg::Hold { call, held } => {
                if self
                    .live
                    .get(&call)
                    .is_some_and(|c| c.state == CallState::Active)
                {
                    self.emit(CallEvent::Held { call, peer, held });
                }
            }
            CallMsg::Ringing { call } => {
                if let Some(c) = self.live.get_mut(&call)
                    && c.direction == Direction::Outgoing
                    && c.state == CallState::Dialing
                {
                    c.state = CallState::RingingOut;
                    c.next_retry = None;
                    c.deadline = Some(now + self.config.ring_timeout);
                    self.emit(CallEvent::Ringing { call, peer });
                }
            }
            CallMsg::Accept { call, media } => {
                match self.live.get_mut(&call) {
                    Some(c) if c.direction == Direction::Outgoing => {
                        if c.state != CallState::Active {
                            c.state = CallState::Active;
                            c.answered = Some(now);
                            c.next_retry = None;
                            c.deadline = None;
                            let proposal = c.media.unwrap_or(self.config.media);
                            let m = negotiate(proposal, media);
                            c.media = Some(m);
                            self.emit(CallEvent::Answered {
                                call,
                                peer,
                                direction: Direction::Outgoing,
                                media: m,
                                replaces: None,
                            });
                        }
                        // Every accept (first or repeated) is confirmed.
                        self.send(peer, CallMsg::Connected { call });
                    }
                    Some(_) => {}
                    None => {
                        // We gave up on this call (or never knew it): say so again.
                        let word = self
                            .ended
                            .get(&call)
                            .and_then(|e| e.last_word.clone())
                            .unwrap_or(CallMsg::Hangup { call });
                        self.send(peer, word);
                    }
                }
            }
            CallMsg::Connected { call } => {
                if let Some(c) = self.live.get_mut(&call)
                    && c.direction == Direction::Incoming
                {
                    c.next_retry = None;
                }
            }
            CallMsg::Reject { call, reason } => {
                if let Some(c) = self.live.get(&call)
                    && c.direction == Direction::Outgoing
                    && c.state != CallState::Active
                {
                    let reason = match reason {
                        RejectReason::Declined => EndReason::Declined { by_us: false },
                        RejectReason::Busy => EndReason::Busy,
                        RejectReason::NotAccepted => EndReason::Refused,
                        RejectReason::NoAnswer => EndReason::NoAnswer,
                    };
                    self.end(call, reason, None, 0, now);
                }
            }
            CallMsg::Cancel { call } | CallMsg::Hangup { call } => {
                if let Some(c) = self.live.get(&call) {
                    let reason = match (c.state, &msg) {
                        (CallState::Active, CallMsg::Hangup { .. }) => {
                            EndReason::Completed { by_us: false }
                        }
                        (CallState::Active, _) => EndReason::Completed { by_us: false },
                        _ => EndReason::Cancelled { by_us: false },
                    };
                    self.end(call, reason, None, 0, now);
                }
                self.send(peer, CallMsg::HangupAck { call });
            }
            CallMsg::HangupAck { call } => {
                if let Some(e) = self.ended.get_mut(&call) {
                    e.attempts_left = 0;
                    e.next_retry = None;
                }
            }
        }
    }

    fn on_invite(
        &mut self,
        peer: P,
        call: CallId,
        media: MediaParams,
        service: Option<String>,
        admitted: bool,
        now: Instant,
    ) {
        // A repeated invite of a live call: answer it again.
        if let Some(c) = self.live.get(&call) {
            match c.state {
                CallState::RingingIn => self.send(peer, CallMsg::Ringing { call }),
                CallState::Active if c.direction == Direction::Incoming => {
                    let media = self.config.media;
                    self.send(peer, CallMsg::Accept { call, media })
                }
                _ => {}
            }
            return;
        }
        // A repeated invite of an ended call: its final word again, never a second ring.
        if let Some(e) = self.ended.get(&call) {
            let word = e.last_word.clone().unwrap_or(CallMsg::Hangup { call });
            self.send(peer, word);
            return;
        }
        if !admitted {
            self.refuse(
                peer,
                call,
                RejectReason::NotAccepted,
                EndReason::Refused,
                now,
            );
            return;
        }
        // Glare: we are dialing this very peer.
        let ours = self
            .live
            .iter()
            .find(|(_, c)| {
                c.peer == peer
                    && c.direction == Direction::Outgoing
                    && matches!(c.state, CallState::Dialing | CallState::RingingOut)
            })
            .map(|(id, _)| *id);
        if let Some(ours) = ours {
            if ours < call {
                // Ours wins; the peer drops its call when ours reaches it.
                return;
            }
            // Theirs wins: drop ours silently and answer theirs at once.
            self.live.remove(&ours);
            self.remember(ours, peer, None, 0, now);
            let ours_media = self.config.media;
            self.live.insert(
                call,
                Live {
                    peer,
                    direction: Direction::Incoming,
                    state: CallState::Active,
                    answered: Some(now),
                    next_retry: Some(now + self.config.retry),
                    retry_interval: self.config.retry,
                    deadline: None,
                    last_heard: now,
                    media: Some(negotiate(media, ours_media)),
                    service: service.clone(),
                },
            );
            self.send(
                peer,
                CallMsg::Accept {
                    call,
                    media: ours_media,
                },
            );
            self.emit(CallEvent::Answered {
                call,
                peer,
                direction: Direction::Incoming,
                media: negotiate(media, ours_media),
                replaces: Some(ours),
            });
            return;
        }
        if self.live.len() >= self.config.max_calls || self.live.values().any(|c| c.peer == peer) {
            self.refuse(peer, call, RejectReason::Busy, EndReason::Busy, now);
            return;
        }
        self.live.insert(
            call,
            Live {
                peer,
                direction: Direction::Incoming,
                state: CallState::RingingIn,
                answered: None,
                next_retry: None,
                retry_interval: self.config.retry,
                deadline: Some(now + self.config.ring_timeout),
                last_heard: now,
                media: Some(media),
                service: service.clone(),
            },
        );
        self.send(peer, CallMsg::Ringing { call });
        self.emit(CallEvent::Incoming {
            call,
            peer,
            service,
        });
    }

    /// Refuses an incoming call without ringing, and logs it as ended.
    fn refuse(
        &mut self,
        peer: P,
        call: CallId,
        reason: RejectReason,
        logged: EndReason,
        now: Instant,
    ) {
        let msg = CallMsg::Reject { call, reason };
        self.send(peer, msg.clone());
        self.remember(call, peer, Some(msg), 0, now);
        self.emit(CallEvent::Ended {
            call,
            peer,
            direction: Direction::Incoming,
            reason: logged,
            talked: None,
        });
    }

    fn remember(
        &mut self,
        call: CallId,
        peer: P,
        last_word: Option<CallMsg>,
        attempts: u32,
        now: Instant,
    ) {
        self.ended.insert(
            call,
            Ended {
                peer,
                until: now + self.config.remember_ended,
                last_word,
                attempts_left: attempts,
                next_retry: (attempts > 0).then_some(now + self.config.retry),
            },
        );
    }

    fn end(
        &mut self,
        call: CallId,
        reason: EndReason,
        last_word: Option<CallMsg>,
        attempts: u32,
        now: Instant,
    ) {
        let Some(c) = self.live.remove(&call) else {
            return;
        };
        self.remember(call, c.peer, last_word, attempts, now);
        self.emit(CallEvent::Ended {
            call,
            peer: c.peer,
            direction: c.direction,
            reason,
            talked: c.answered.map(|a| now.saturating_duration_since(a)),
        });
    }

    /// A connection to `peer` came up: whatever waits for an answer from it (an invite sent while there was
    /// no connection, an accept, a hangup) goes out now instead of at its next repeat.
    pub fn peer_connected(&mut self, peer: P, now: Instant) {
        for c in self.live.values_mut().filter(|c| c.peer == peer) {
            if c.next_retry.is_some() {
                c.next_retry = Some(now);
            }
        }
        for e in self.ended.values_mut().filter(|e| e.peer == peer) {
            if e.next_retry.is_some() && e.attempts_left > 0 {
                e.next_retry = Some(now);
            }
        }
        self.handle_timeout(now);
    }

    /// The next instant [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let live = self.live.values().flat_map(|c| {
            let silence =
                (c.state == CallState::Active).then(|| c.last_heard + self.config.media_timeout);
            [c.next_retry, c.deadline, silence]
        });
        let ended = self
            .ended
            .values()
            .flat_map(|e| [e.next_retry, Some(e.until)]);
        live.chain(ended).flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<CallId> = self.live.keys().copied().collect();
        for id in ids {
            let Some(c) = self.live.get(&id).cloned() else {
                continue;
            };
            match c.state {
                CallState::Dialing | CallState::RingingOut => {
                    if c.deadline.is_some_and(|d| now >= d) {
                        let reason = if c.state == CallState::Dialing {
                            EndReason::Unreachable
                        } else {
                            EndReason::NoAnswer
                        };
                        let msg = CallMsg::Cancel { call: id };
                        self.send(c.peer, msg.clone());
                        let attempts = self.config.final_attempts;
                        self.end(id, reason, Some(msg), attempts, now);
                        continue;
                    }
                    if c.next_retry.is_some_and(|t| now >= t) {
                        let interval = (c.retry_interval * 2).min(self.config.invite_retry * 4);
                        if let Some(l) = self.live.get_mut(&id) {
                            l.next_retry = Some(now + interval);
                            l.retry_interval = interval;
                        }
                        let media = c.media.unwrap_or(self.config.media);
                        self.send(
                            c.peer,
                            CallMsg::Invite {
                                call: id,
                                media,
                                service: c.service.clone(),
                            },
                        );
                    }
                }
                CallState::RingingIn => {
                    if c.deadline.is_some_and(|d| now >= d) {
                        let msg = CallMsg::Reject {
                            call: id,
                            reason: RejectReason::NoAnswer,
                        };
                        self.send(c.peer, msg.clone());
                        self.end(id, EndReason::NoAnswer, Some(msg), 0, now);
                    }
                }
                CallState::Active => {
                    if now >= c.last_heard + self.config.media_timeout {
                        let msg = CallMsg::Hangup { call: id };
                        self.send(c.peer, msg.clone());
                        let attempts = self.config.final_attempts;
                        self.end(id, EndReason::ConnectionLost, Some(msg), attempts, now);
                        continue;
                    }
                    if c.next_retry.is_some_and(|t| now >= t) {
                        if let Some(l) = self.live.get_mut(&id) {
                            l.next_retry = Some(now + self.config.retry);
                        }
                        let media = self.config.media;
                        self.send(c.peer, CallMsg::Accept { call: id, media });
                    }
                }
            }
        }
        let ended: Vec<CallId> = self.ended.keys().copied().collect();
        for id in ended {
            let Some(e) = self.ended.get_mut(&id) else {
                continue;
            };
            if now >= e.until {
                self.ended.remove(&id);
                continue;
            }
            if e.next_retry.is_some_and(|t| now >= t) && e.attempts_left > 0 {
                e.attempts_left -= 1;
                e.next_retry = (e.attempts_left > 0).then_some(now + self.config.retry);
                if let Some(word) = e.last_word.clone() {
                    let peer = e.peer;
                    self.send(peer, word);
                }
            }
        }
    }
}

/// The media of a call: the caller's frame length (both sides must play the same), and the lower of the
/// two maximum bitrates.
fn negotiate(caller: MediaParams, callee: MediaParams) -> MediaParams {
    MediaParams {
        frame_ms: caller.frame_ms,
        max_bitrate: caller.max_bitrate.min(callee.max_bitrate).max(6_000),
    }
}

#[cfg(test)]
mod tests;
