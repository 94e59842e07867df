//! An authenticated kith session: one QUIC connection whose first bidirectional stream carried both hellos.

use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use kith_core::hello::{Hello, HelloError, VerifiedPeer};
use kith_core::wire::{Frame, FrameDecoder, FrameError};
use kith_core::{AccountKey, EndpointKey};

/// QUIC application close codes kith uses.
const CLOSE_HELLO_REJECTED: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_REFUSED: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer failed to prove its identity: {0}")]
    Hello(#[from] HelloError),
    #[error("peer broke the protocol: {0}")]
    Frame(#[from] FrameError),
    #[error("peer sent {0} before its hello")]
    NoHello(&'static str),
    #[error("connection error: {0}")]
    Connection(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("the peer closed the stream")]
    Closed,
    #[error("refused: {0}")]
    Refused(&'static str),
}

/// Whether a connection currently runs directly over IP or through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Relayed,
    Unknown,
}

/// A session whose peer is verified. Split it to read and write from different tasks.
pub struct Session {
    pub peer: VerifiedPeer,
    pub conn: Connection,
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl Session {
    pub(crate) async fn handshake_dialer(
        conn: Connection,
        expected: AccountKey,
        hello: &Hello,
        now: u64,
    ) -> Result<Self, SessionError> {
        let fut = async {
            let (mut send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| SessionError::Connection(e.to_string()))?;
            write_frame(&mut send, &Frame::Hello(Box::new(hello.clone()))).await?;
            Ok::<_, SessionError>((send, recv))
        };
        let (send, recv) = tokio::time::timeout(crate::HELLO_TIMEOUT, fut)
            .await
            .map_err(|_| SessionError::Timeout)??;
        Self::finish(conn, send, recv, Some(expected), now).await
    }

    /// The acceptor reads and verifies the dialer's hello before it sends its own, so a peer that cannot
    /// prove itself learns nothing about who runs this endpoint. `hello_for` chooses the answer by who
    /// the peer proved to be; `None` refuses it (the connection is closed with the reason, no hello sent).
    pub(crate) async fn handshake_acceptor(
        conn: Connection,
        hello_for: impl FnOnce(&VerifiedPeer) -> Result<Hello, &'static str>,
        now: u64,
    ) -> Result<Self, SessionError> {
        let (send, recv) = tokio::time::timeout(crate::HELLO_TIMEOUT, conn.accept_bi())
            .await
            .map_err(|_| SessionError::Timeout)?
            .map_err(|e| SessionError::Connection(e.to_string()))?;
        let mut session = Self::finish(conn, send, recv, None, now).await?;
        let hello = match hello_for(&session.peer) {
            Ok(hello) => hello,
            Err(reason) => {
                session
                    .conn
                    .close(VarInt::from_u32(CLOSE_REFUSED), reason.as_bytes());
                return Err(SessionError::Refused(reason));
            }
        };
        write_frame(&mut session.send, &Frame::Hello(Box::new(hello))).await?;
        Ok(session)
    }

    async fn finish(
        conn: Connection,
        send: SendStream,
        mut recv: RecvStream,
        expected: Option<AccountKey>,
        now: u64,
    ) -> Result<Self, SessionError> {
        let mut decoder = FrameDecoder::new();
        let first = tokio::time::timeout(crate::HELLO_TIMEOUT, read_frame(&mut recv, &mut decoder))
            .await
            .map_err(|_| SessionError::Timeout)?;
        let result = match first {
            Ok(Frame::Hello(h)) => {
                let remote = EndpointKey::from_bytes(*conn.remote_id().as_bytes())
                    .map_err(|_| SessionError::Connection("invalid remote endpoint key".into()))?;
                h.verify(remote, expected, now).map_err(SessionError::from)
            }
            Ok(Frame::Message(_)) => Err(SessionError::NoHello("a message")),
            Ok(Frame::Receipt(_)) => Err(SessionError::NoHello("a receipt")),
            Ok(Frame::Call(_)) => Err(SessionError::NoHello("call signalling")),
            Ok(
                Frame::MailboxRequest { .. } | Frame::MailboxResponse { .. } | Frame::MailInfo(_),
            ) => Err(SessionError::NoHello("a mailbox request")),
            // The peer refused us: report its reason rather than "connection lost".
            Err(SessionError::Connection(_)) if conn.close_reason().is_some() => {
                return Err(SessionError::Connection(describe_close(&conn)));
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(peer) => Ok(Self {
                peer,
                conn,
                send,
                recv,
                decoder,
            }),
            Err(e) => {
                tracing::warn!(reason = %e, "dropping peer: hello rejected");
                let code = if matches!(e, SessionError::Hello(_)) {
                    CLOSE_HELLO_REJECTED
                } else {
                    CLOSE_PROTOCOL
                };
                conn.close(VarInt::from_u32(code), e.to_string().as_bytes());
                Err(e)
            }
        }
    }

    pub fn path_kind(&self) -> PathKind {
        path_kind(&self.conn)
    }

    pub fn split(self) -> (SessionReader, SessionWriter) {
        (
            SessionReader {
                recv: self.recv,
                decoder: self.decoder,
                conn: self.conn.clone(),
            },
            SessionWriter {
                send: self.send,
                conn: self.conn,
            },
        )
    }
}

/// How many open paths of the connection run over IP (as opposed to through a relay).
pub fn ip_paths(conn: &Connection) -> usize {
    conn.paths().iter().filter(|p| p.is_ip()).count()
}

/// Describes why a connection closed, with the peer's stated reason when it gave one.
fn describe_close(conn: &Connection) -> String {
    match conn.close_reason() {
        Some(iroh::endpoint::ConnectionError::ApplicationClosed(close)) => {
            format!(
                "the peer closed the connection: {}",
                String::from_utf8_lossy(&close.reason)
            )
        }
        Some(other) => other.to_string(),
        None => "connection lost".into(),
    }
}

/// Reports whether the connection's selected path is direct or relayed.
pub fn path_kind(conn: &Connection) -> PathKind {
    let paths = conn.paths();
    for p in paths.iter() {
        if p.is_selected() {
            return if p.is_relay() {
                PathKind::Relayed
            } else {
                PathKind::Direct
            };
        }
    }
    PathKind::Unknown
}

async fn write_frame(send: &mut SendStream, frame: &Frame) -> Result<(), SessionError> {
    let bytes = frame.encode()?;
    send.write_all(&bytes)
        .await
        .map_err(|e| SessionError::Connection(e.to_string()))
}

async fn read_frame(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Frame, SessionError> {
    loop {
        if let Some(frame) = decoder.next_frame()? {
            return Ok(frame);
        }
        match recv.read_chunk(16 * 1024).await {
            Ok(Some(chunk)) => decoder.push(&chunk),
            Ok(None) => return Err(SessionError::Closed),
            Err(e) => return Err(SessionError::Connection(e.to_string())),
        }
    }
}

/// The receiving half of a session.
pub struct SessionReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    conn: Connection,
}

impl SessionReader {
    /// The next frame. A protocol violation closes the connection with the reason and returns the error.
    pub async fn next(&mut self) -> Result<Frame, SessionError> {
        match read_frame(&mut self.recv, &mut self.decoder).await {
            Ok(Frame::Hello(_)) => {
                let e = SessionError::Frame(FrameError::Malformed {
                    kind: "second hello",
                });
                self.conn
                    .close(VarInt::from_u32(CLOSE_PROTOCOL), b"unexpected second hello");
                Err(e)
            }
            Err(SessionError::Frame(e)) => {
                tracing::warn!(reason = %e, "dropping peer: bad frame");
                self.conn
                    .close(VarInt::from_u32(CLOSE_PROTOCOL), e.to_string().as_bytes());
                Err(SessionError::Frame(e))
            }
            other => other,
        }
    }

    /// Whether more frames are already buffered (lets the caller batch work, e.g. one store transaction).
    pub fn has_buffered(&self) -> bool {
        self.decoder.buffered() >= 4
    }
}

/// The sending half of a session.
pub struct SessionWriter {
    send: SendStream,
    conn: Connection,
}

impl SessionWriter {
    pub async fn send(&mut self, frame: &Frame) -> Result<(), SessionError> {
        write_frame(&mut self.send, frame).await
    }

    /// Writes raw bytes to the stream, bypassing the encoder: for protocol-robustness tests and tools that
    /// probe how a peer handles malformed input. Production code sends [`Frame`]s.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.send
            .write_all(bytes)
            .await
            .map_err(|e| SessionError::Connection(e.to_string()))
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
