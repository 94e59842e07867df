//! kith-store: one SQLite file per profile holding contacts, contact requests and message history.
//!
//! What it is: a thin, typed layer over `rusqlite` (bundled SQLite, WAL, `synchronous=FULL` so a message
//! acknowledged to a peer survives a crash of the process or the machine) with schema migrations keyed on
//! `PRAGMA user_version`.
//!
//! What it does not do: decide anything. The delivery state machines in `kith-core` decide what to store
//! and when; this crate makes it durable. Every write that a protocol step depends on is one transaction.
//!
//! Message states: outgoing `queued` (in the outbox, not yet on the wire) -> `sent` (written to a
//! connection) -> `delivered` (the peer stored it and said so); incoming `held` (stored, waiting for an
//! earlier message of the same sender) -> `received` (shown, with its place in the chat: `shown_idx`).
#![forbid(unsafe_code)]

use kith_core::{AccountKey, ContactCard, DeviceKey};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the name {0:?} belongs to another contact, with another address: if they have a new key, \
         compare safety numbers with them (`kith verify`) before you remove the old contact and add \
         the new address; otherwise choose another name with --name"
    )]
    NameTaken(String),
    #[error("no contact named {0:?}: `kith contacts` lists them")]
    UnknownContact(String),
    #[error("{name:?} could be any of {}: give the name as `kith contacts` shows it", .names.join(", "))]
    AmbiguousContact { name: String, names: Vec<String> },
    #[error("no contact request from {0:?}: `kith requests` lists them")]
    UnknownRequest(String),
    #[error("the profile database was made by a newer kith (schema {0}): update kith")]
    TooNew(i64),
    #[error(
        "this idempotency key was used for another message (another recipient or text): give each \
         message a key of its own"
    )]
    KeyReused,
    #[error(
        "the store {0} is missing: this profile's contacts, history and message state are not there. \
         Restore the profile from a backup (`kith restore FILE`); nothing was created in its place"
    )]
    Missing(std::path::PathBuf),
    #[error(
        "the store {0} is empty (0 bytes: it was truncated or overwritten), so this profile's contacts, \
         history and message state are not in it. Restore the profile from a backup (`kith restore \
         FILE`); kith did not open it, so nothing was written over it"
    )]
    Emptied(std::path::PathBuf),
    #[error(
        "the store {path} is damaged ({reason}). Restore the profile from a backup (`kith restore \
         FILE`); kith did not open it, so nothing was written over it"
    )]
    Damaged {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot open the store {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

impl StoreError {
    /// Whether the user can act on it (a store to restore, a name to change), rather than a fault of kith.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, StoreError::Sqlite(_) | StoreError::Io { .. })
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The key a profile's store is encrypted under (32 bytes, derived by the caller from the profile's
/// secret keys, so it is as well protected as they are: by the passphrase, when there is one).
pub struct StoreKey(zeroize::Zeroizing<[u8; 32]>);

impl StoreKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    /// `PRAGMA key` with the raw key (64 hex digits in `x'...'`: SQLCipher then uses it as it is, with
    /// the random salt in the file's first bytes, instead of running its own KDF).
    fn apply(&self, conn: &Connection) -> Result<()> {
        // SQLCipher logs failed HMAC checks to stderr by default; a wrong key is reported as an error here.
        let _ = conn.pragma_update(None, "cipher_log_level", "NONE");
        let hex: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(self.0.iter().map(|b| format!("{b:02x}")).collect());
        conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", hex.as_str()))?;
        Ok(())
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

/// Whether `path` is an unencrypted SQLite database (its header says so in clear).
fn is_plain_sqlite(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(n == 16 && &head == b"SQLite format 3\0")
}

/// Encrypts the unencrypted store at `path` under `key`: exported (SQLCipher's `sqlcipher_export`) into a
/// new file beside it, which then takes its place in one rename. A crash leaves the old file or the new
/// one, never half of either.
fn encrypt_in_place(path: &Path, key: &StoreKey) -> Result<()> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("db.encrypting");
    let _ = std::fs::remove_file(&tmp);
    {
        let conn = Connection::open(path)?;
        // Everything in the WAL into the main file first, so the export reads it all.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let hex: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(key.0.iter().map(|b| format!("{b:02x}")).collect());
        let tmp_str = tmp
            .to_str()
            .ok_or_else(|| io(std::io::Error::other("the path is not UTF-8")))?;
        conn.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            params![tmp_str, format!("x'{}'", hex.as_str())],
        )?;
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        // The export copies the schema and the rows, not the schema version.
        conn.execute_batch(&format!("PRAGMA encrypted.user_version = {version};"))?;
        conn.execute_batch("DETACH DATABASE encrypted;")?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(ext));
    }
    Ok(())
}

/// Whether two contact names are the same name: they may differ in case (`bob` finds "Bob").
fn same_name(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

/// Relationship to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Contact,
    Request,
}

#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    #[serde(skip)]
    pub account: AccountKey,
    pub state: PeerState,
    /// Our local name for a contact (None for a request).
    pub petname: Option<String>,
    /// The name their card gives.
    pub display_name: Option<String>,
    #[serde(skip)]
    pub card: Option<ContactCard>,
    pub added_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    /// When the user confirmed the safety number (`kith verify NAME --confirm`).
    pub verified_ms: Option<i64>,
    /// When a device of theirs appeared that we had not seen before (a new phone, a restored backup, or
    /// someone holding their account key): until the user confirms again, sending is held.
    pub key_changed_ms: Option<i64>,
}

/// What [`Store::record_device`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSeen {
    /// Seen before.
    Known,
    /// The first device of this peer.
    First,
    /// A device not seen before beside others: their key set changed.
    Changed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Queued,
    Sent,
    Delivered,
    Held,
    Received,
    /// Outgoing, not delivered, and deposited in at least one of the recipient's mailboxes: the recipient
    /// gets it when they come back, even if this device is off then. (Shown, not stored: the stored state
    /// stays what the direct path knows.)
    #[serde(rename = "in_mailbox")]
    InMailbox,
}

impl MessageState {
    fn parse(s: &str) -> Self {
        match s {
            "sent" => Self::Sent,
            "delivered" => Self::Delivered,
            "held" => Self::Held,
            "received" => Self::Received,
            "in_mailbox" => Self::InMailbox,
            _ => Self::Queued,
        }
    }
}

/// One message of a chat, as shown to the user.
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub outgoing: bool,
    pub seq: u64,
    pub id: String,
    pub text: String,
    pub sent_at_ms: i64,
    pub received_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    pub state: MessageState,
}

/// A stored message loaded by sequence number.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: u64,
    pub id: [u8; 16],
    pub text: String,
    pub sent_at_ms: u64,
}

/// An incoming message to store.
#[derive(Debug, Clone)]
pub struct Incoming<'a> {
    pub seq: u64,
    pub id: [u8; 16],
    pub text: &'a str,
    pub sent_at_ms: u64,
}

const SCHEMA_VERSION: i64 = 8;

/// How long an idempotency key of a send is remembered.
pub const SEND_KEY_DAYS: i64 = 7;

/// A message queued by [`Store::enqueue_outgoing_once`]: its sequence number and id, and whether it had
/// been queued before under the same key (nothing was queued now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub seq: u64,
    pub id: [u8; 16],
    /// `queued`, or for a repeat the state the message is in now (`sent`, `delivered`, ...).
    pub state: String,
    pub repeated: bool,
}

const SCHEMA_V1: &str = "
CREATE TABLE peers (
    account       BLOB PRIMARY KEY,
    state         TEXT NOT NULL,
    petname       TEXT UNIQUE,
    display_name  TEXT,
    card          BLOB,
    card_issued   INTEGER,
    added_at_ms   INTEGER NOT NULL,
    last_seen_ms  INTEGER
);
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    peer            BLOB NOT NULL,
    outgoing        INTEGER NOT NULL,
    device          BLOB NOT NULL,
    seq             INTEGER NOT NULL,
    msg_id          BLOB NOT NULL,
    body            TEXT NOT NULL,
    sent_at_ms      INTEGER NOT NULL,
    received_at_ms  INTEGER,
    delivered_at_ms INTEGER,
    state           TEXT NOT NULL,
    shown_idx       INTEGER,
    UNIQUE (peer, outgoing, device, seq)
);
CREATE INDEX messages_pending ON messages (outgoing, state, peer);
CREATE INDEX messages_chat ON messages (peer, shown_idx);
";

/// One stored Olm session (its state encrypted by the caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlmSessionRow {
    pub device: DeviceKey,
    pub session_id: String,
    pub pickle: String,
}

fn save_sessions(
    tx: &rusqlite::Transaction<'_>,
    account: &AccountKey,
    sessions: &[(OlmSessionRow, bool)],
    now_ms: i64,
) -> Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO olm_sessions (account, device, session_id, pickle, created_ms, last_rx_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (account, device, session_id) DO UPDATE SET pickle = excluded.pickle,
             last_rx_ms = MAX(olm_sessions.last_rx_ms, excluded.last_rx_ms)",
    )?;
    for (s, received) in sessions {
        st.execute(params![
            account.as_bytes(),
            s.device.as_bytes(),
            s.session_id,
            s.pickle,
            now_ms,
            if *received { now_ms } else { 0 }
        ])?;
    }
    Ok(())
}

fn key_of(blob: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    blob.try_into().map_err(|_| {
        rusqlite::Error::InvalidColumnType(0, "key".into(), rusqlite::types::Type::Blob)
    })
}

pub struct Store {
    conn: Connection,
}

/// One line of the call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub id: [u8; 16],
    pub peer: AccountKey,
    /// "outgoing" or "incoming".
    pub direction: String,
    pub started_ms: i64,
    pub answered_ms: Option<i64>,
    pub ended_ms: i64,
    /// How it ended (e.g. "completed", "declined", "busy", "missed", "unreachable").
    pub outcome: String,
    /// Final call statistics, JSON.
    pub stats: Option<String>,
}

/// A discovery record item as published (see `Store::published_item`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedItem {
    /// Digest of the inputs the record was sealed from: the same inputs republish the same item.
    pub inputs: Vec<u8>,
    pub seq: i64,
    pub value: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    /// Opens the store at `path` unencrypted, creating it (mode 0600) if there is none. A file that is
    /// there but empty or not a sound database is refused, never opened over.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, None, true)
    }

    /// Opens the store at `path`, which must exist: a profile's store is made by `kith init`, so a missing
    /// one is a lost one, and a new empty store in its place would hide that.
    pub fn open_existing(path: &Path) -> Result<Self> {
        Self::open_with(path, None, false)
    }

    /// Opens (and with `create`, makes) the store at `path`, encrypted at rest under `key` (SQLCipher 4:
    /// AES-256 pages with an HMAC each; the raw key, no KDF inside, since the caller derives it). A store
    /// still unencrypted from before is encrypted now, in a new file put in its place in one rename.
    pub fn open_with(path: &Path, key: Option<&StoreKey>, create: bool) -> Result<Self> {
        if !create && !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        if let Some(key) = key
            && path.exists()
            && is_plain_sqlite(path)?
        {
            encrypt_in_place(path, key)?;
        }
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Io {
                    path: path.to_owned(),
                    source,
                })?;
            return Self::open_checked(path, key, true);
        }
        Self::open_checked(path, key, false)
    }

    fn open_checked(path: &Path, key: Option<&StoreKey>, new: bool) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        // SQLite takes an empty file for a new database, and would build a fresh store in it.
        if meta.len() == 0 && !new {
            return Err(StoreError::Emptied(path.to_owned()));
        }
        // History, contacts and ratchet state are for this user alone (older profiles made it 0644). The
        // -wal and -shm files take the database's mode.
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StoreError::Io {
                    path: path.to_owned(),
                    source,
                },
            )?;
        }
        let damaged = |reason: String| StoreError::Damaged {
            path: path.to_owned(),
            reason,
        };
        let conn = Connection::open(path)?;
        // The key goes first: any other statement would read (or, on a new file, write) page 1 without it.
        if let Some(key) = key {
            key.apply(&conn)?;
        }
        if !new {
            // Reading the header and the pages' structure finds a file that is not a database (or was
            // overwritten, or is encrypted under another key) before anything is written.
            let check: std::result::Result<String, _> =
                conn.pragma_query_value(None, "quick_check", |r| r.get(0));
            match check {
                Ok(ok) if ok == "ok" => {}
                Ok(problem) => return Err(damaged(problem)),
                Err(e) => return Err(damaged(e.to_string())),
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew(version));
        }
        if version < 1 {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))?;
        }
        if version < 2 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE settings (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 CREATE TABLE published (
                     period INTEGER PRIMARY KEY,
                     inputs BLOB NOT NULL,
                     seq INTEGER NOT NULL,
                     value BLOB NOT NULL,
                     signature BLOB NOT NULL
                 );
                 CREATE TABLE calls (
                     id BLOB PRIMARY KEY,
                     peer BLOB NOT NULL,
                     direction TEXT NOT NULL,
                     started_ms INTEGER NOT NULL,
                     answered_ms INTEGER,
                     ended_ms INTEGER NOT NULL,
                     outcome TEXT NOT NULL,
                     stats TEXT
                 );
                 CREATE INDEX calls_by_time ON calls (ended_ms);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE mailbox_owners (owner BLOB PRIMARY KEY, added_ms INTEGER NOT NULL);
                 CREATE TABLE mailbox_tokens (
                     token BLOB PRIMARY KEY,
                     owner BLOB NOT NULL REFERENCES mailbox_owners (owner) ON DELETE CASCADE,
                     period INTEGER NOT NULL
                 );
                 CREATE TABLE mailbox_items (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     owner BLOB NOT NULL REFERENCES mailbox_owners (owner) ON DELETE CASCADE,
                     token BLOB NOT NULL,
                     digest BLOB NOT NULL UNIQUE,
                     envelope BLOB NOT NULL,
                     at_ms INTEGER NOT NULL,
                     expires_ms INTEGER NOT NULL
                 );
                 CREATE INDEX mailbox_items_by_owner ON mailbox_items (owner, id);
                 CREATE INDEX mailbox_items_by_token ON mailbox_items (token);
                 CREATE TABLE ratchet (key TEXT PRIMARY KEY, pickle TEXT NOT NULL);
                 CREATE TABLE my_mailboxes (account BLOB PRIMARY KEY, added_ms INTEGER NOT NULL);
                 CREATE TABLE mail_info (account BLOB PRIMARY KEY, info BLOB NOT NULL, at_ms INTEGER NOT NULL);
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE sealed_out (
                     peer BLOB NOT NULL,
                     device BLOB NOT NULL,
                     seq INTEGER NOT NULL,
                     envelope BLOB NOT NULL,
                     sealed_ms INTEGER NOT NULL,
                     deposited_ms INTEGER,
                     PRIMARY KEY (peer, device, seq)
                 );
                 CREATE TABLE olm_sessions (
                     account BLOB NOT NULL,
                     device BLOB NOT NULL,
                     session_id TEXT NOT NULL,
                     pickle TEXT NOT NULL,
                     created_ms INTEGER NOT NULL,
                     last_rx_ms INTEGER NOT NULL DEFAULT 0,
                     PRIMARY KEY (account, device, session_id)
                 );
                 CREATE TABLE my_mailbox_keys (
                     account BLOB PRIMARY KEY,
                     first_period INTEGER NOT NULL,
                     keys BLOB NOT NULL
                 );
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        if version < 5 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE peer_devices (
                     peer BLOB NOT NULL,
                     device BLOB NOT NULL,
                     first_seen_ms INTEGER NOT NULL,
                     PRIMARY KEY (peer, device)
                 );
                 ALTER TABLE peers ADD COLUMN verified_ms INTEGER;
                 ALTER TABLE peers ADD COLUMN key_changed_ms INTEGER;
                 PRAGMA user_version = 5;
                 COMMIT;",
            )?;
        }
        if version < 6 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE send_keys (
                     key TEXT PRIMARY KEY,
                     peer BLOB NOT NULL,
                     device BLOB NOT NULL,
                     seq INTEGER NOT NULL,
                     at_ms INTEGER NOT NULL
                 );
                 CREATE INDEX send_keys_by_time ON send_keys (at_ms);
                 PRAGMA user_version = 6;
                 COMMIT;",
            )?;
        }
        if version < 7 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE org_pins (
                     domain TEXT PRIMARY KEY,
                     account BLOB NOT NULL,
                     pinned_ms INTEGER NOT NULL
                 );
                 PRAGMA user_version = 7;
                 COMMIT;",
            )?;
        }
        if version < 8 {
            // The organization's list of gateway devices (kith_core::org::roster), kept with the pin: the
            // newest seen, so an older one is refused as a replay, and calls dial its gateways.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE org_pins ADD COLUMN roster_seq INTEGER;
                 ALTER TABLE org_pins ADD COLUMN roster BLOB;
                 PRAGMA user_version = 8;
                 COMMIT;",
            )?;
        }
        Ok(Self { conn })
    }

    /// The Olm sessions with the devices of `account`, the one to send on first (the one that last
    /// received, then the newest).
    pub fn olm_sessions(&self, account: &AccountKey) -> Result<Vec<OlmSessionRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT device, session_id, pickle FROM olm_sessions WHERE account = ?1
             ORDER BY last_rx_ms DESC, created_ms DESC",
        )?;
        let rows = st.query_map([account.as_bytes().as_slice()], |r| {
            Ok((key_of(r.get(0)?)?, r.get(1)?, r.get(2)?))
        })?;
        let mut out = vec![];
        for row in rows {
            let (device, session_id, pickle) = row?;
            if let Ok(device) = DeviceKey::from_bytes(device) {
                out.push(OlmSessionRow {
                    device,
                    session_id,
                    pickle,
                });
            }
        }
        Ok(out)
    }

    /// Saves Olm sessions of `account` after use; `received` marks those that just decrypted a message
    /// (they become the ones to send on).
    pub fn save_olm_sessions(
        &mut self,
        account: &AccountKey,
        sessions: &[(OlmSessionRow, bool)],
        now_ms: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        save_sessions(&tx, account, sessions, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Outgoing messages to seal for mailboxes: not delivered, queued at or before `queued_before_ms`,
    /// to a peer that told us its mail info, not sealed yet; per peer in order, at most `limit`.
    pub fn unsealed(
        &self,
        device: &DeviceKey,
        queued_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(AccountKey, Outgoing)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT m.peer, m.seq, m.msg_id, m.body, m.sent_at_ms FROM messages m
             WHERE m.outgoing = 1 AND m.device = ?1 AND m.state != 'delivered' AND m.sent_at_ms <= ?2
               AND EXISTS (SELECT 1 FROM mail_info i WHERE i.account = m.peer)
               AND NOT EXISTS (SELECT 1 FROM sealed_out s
                               WHERE s.peer = m.peer AND s.device = m.device AND s.seq = m.seq)
             ORDER BY m.peer, m.seq LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![device.as_bytes(), queued_before_ms, limit as i64],
            |r| {
                let id: Vec<u8> = r.get(2)?;
                Ok((
                    key_of(r.get(0)?)?,
                    Outgoing {
                        seq: r.get::<_, i64>(1)? as u64,
                        id: id.try_into().unwrap_or([0; 16]),
                        text: r.get(3)?,
                        sent_at_ms: r.get::<_, i64>(4)? as u64,
                    },
                ))
            },
        )?;
        let mut out = vec![];
        for row in rows {
            let (k, m) = row?;
            if let Ok(k) = AccountKey::from_bytes(k) {
                out.push((k, m));
            }
        }
        Ok(out)
    }

    /// Stores sealed envelopes of outgoing messages together with the state of the ratchet session that
    /// sealed them, in one transaction: a crash can never leave a ratchet that would use a message key
    /// twice, nor an envelope whose session state was lost.
    pub fn save_sealed(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        envelopes: &[(u64, Vec<u8>)],
        session: &OlmSessionRow,
        now_ms: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO sealed_out (peer, device, seq, envelope, sealed_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (seq, env) in envelopes {
                st.execute(params![
                    peer.as_bytes(),
                    device.as_bytes(),
                    *seq as i64,
                    env,
                    now_ms
                ])?;
            }
        }
        save_sessions(&tx, peer, &[(session.clone(), false)], now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Sealed envelopes of undelivered messages that are due for a deposit: never deposited, or last
    /// deposited before `redeposit_before_ms`. Per peer in order, at most `limit`.
    pub fn deposits_due(
        &self,
        device: &DeviceKey,
        redeposit_before_ms: i64,
        limit: usize,
    ) -> Result<Vec<(AccountKey, u64, Vec<u8>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT s.peer, s.seq, s.envelope FROM sealed_out s JOIN messages m
               ON m.peer = s.peer AND m.outgoing = 1 AND m.device = s.device AND m.seq = s.seq
             WHERE s.device = ?1 AND m.state != 'delivered'
               AND (s.deposited_ms IS NULL OR s.deposited_ms < ?2)
             ORDER BY s.peer, s.seq LIMIT ?3",
        )?;
        let rows = st.query_map(
            params![device.as_bytes(), redeposit_before_ms, limit as i64],
            |r| Ok((key_of(r.get(0)?)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
        )?;
        let mut out = vec![];
        for row in rows {
            let (k, seq, env) = row?;
            if let Ok(k) = AccountKey::from_bytes(k) {
                out.push((k, seq, env));
            }
        }
        Ok(out)
    }

    pub fn mark_deposited(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        seqs: &[u64],
        now_ms: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "UPDATE sealed_out SET deposited_ms = ?4 WHERE peer = ?1 AND device = ?2 AND seq = ?3",
            )?;
            for seq in seqs {
                st.execute(params![
                    peer.as_bytes(),
                    device.as_bytes(),
                    *seq as i64,
                    now_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// How many of the outgoing messages to `peer` are in a mailbox (deposited, not yet delivered).
    pub fn deposited_count(&self, peer: &AccountKey, device: &DeviceKey) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM sealed_out WHERE peer = ?1 AND device = ?2 AND deposited_ms IS NOT NULL",
            params![peer.as_bytes(), device.as_bytes()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// The endpoint keys one of our mailboxes named for the periods from `first_period` on (32 bytes each,
    /// concatenated). Returns whether they changed.
    pub fn save_my_mailbox_keys(
        &self,
        account: &AccountKey,
        first_period: u64,
        keys: &[u8],
    ) -> Result<bool> {
        let before = self.my_mailbox_keys(account)?;
        if before
            .as_ref()
            .is_some_and(|(f, k)| *f == first_period && k == keys)
        {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT INTO my_mailbox_keys (account, first_period, keys) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET first_period = excluded.first_period, keys = excluded.keys",
            params![account.as_bytes().as_slice(), first_period as i64, keys],
        )?;
        Ok(true)
    }

    pub fn my_mailbox_keys(&self, account: &AccountKey) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT first_period, keys FROM my_mailbox_keys WHERE account = ?1",
                [account.as_bytes().as_slice()],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
    }

    /// The owner of a deposit token this mailbox holds, if any.
    pub fn mailbox_token_owner(&self, token: &[u8; 32]) -> Result<Option<AccountKey>> {
        let owner: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT owner FROM mailbox_tokens WHERE token = ?1",
                [&token[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(owner
            .and_then(|o| <[u8; 32]>::try_from(o.as_slice()).ok())
            .and_then(|b| AccountKey::from_bytes(b).ok()))
    }

    /// Stored ratchet state (an encrypted Olm pickle) under `key`: "account", or "session:<device>".
    pub fn ratchet(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT pickle FROM ratchet WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn save_ratchet(&self, key: &str, pickle: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO ratchet (key, pickle) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET pickle = excluded.pickle",
            params![key, pickle],
        )?;
        Ok(())
    }

    /// This node keeps mail for `owner` (its own account on an always-on machine, or a contact it hosts).
    pub fn mailbox_add_owner(&self, owner: &AccountKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO mailbox_owners (owner, added_ms) VALUES (?1, ?2)",
            params![owner.as_bytes().as_slice(), now_ms],
        )?;
        Ok(())
    }

    pub fn mailbox_owners(&self) -> Result<Vec<AccountKey>> {
        self.accounts("SELECT owner FROM mailbox_owners ORDER BY added_ms")
    }

    /// Our own mailboxes: contacts that keep mail for us while we are away.
    pub fn add_my_mailbox(&self, account: &AccountKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO my_mailboxes (account, added_ms) VALUES (?1, ?2)",
            params![account.as_bytes().as_slice(), now_ms],
        )?;
        Ok(())
    }

    pub fn my_mailboxes(&self) -> Result<Vec<AccountKey>> {
        self.accounts("SELECT account FROM my_mailboxes ORDER BY added_ms")
    }

    /// What a contact last told us of its Olm keys and mailboxes (postcard bytes of
    /// `kith_core::mailbox::MailInfo`).
    pub fn save_mail_info(&self, account: &AccountKey, info: &[u8], now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO mail_info (account, info, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET info = excluded.info, at_ms = excluded.at_ms",
            params![account.as_bytes().as_slice(), info, now_ms],
        )?;
        Ok(())
    }

    /// Keeps `info` only if it is newer than what is stored (`at_ms`: when it was current, e.g. when the
    /// card that carried it was issued). Returns whether it was kept.
    pub fn save_mail_info_if_newer(
        &self,
        account: &AccountKey,
        info: &[u8],
        at_ms: i64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT INTO mail_info (account, info, at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET info = excluded.info, at_ms = excluded.at_ms
             WHERE excluded.at_ms > mail_info.at_ms",
            params![account.as_bytes().as_slice(), info, at_ms],
        )?;
        Ok(n > 0)
    }

    pub fn mail_info(&self, account: &AccountKey) -> Result<Option<Vec<u8>>> {
        Ok(self.mail_info_at(account)?.map(|(info, _)| info))
    }

    /// The mail info with when it was current (milliseconds).
    pub fn mail_info_at(&self, account: &AccountKey) -> Result<Option<(Vec<u8>, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT info, at_ms FROM mail_info WHERE account = ?1",
                [account.as_bytes().as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn accounts(&self, sql: &str) -> Result<Vec<AccountKey>> {
        let mut st = self.conn.prepare(sql)?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = vec![];
        for r in rows {
            if let Some(k) = <[u8; 32]>::try_from(r?.as_slice())
                .ok()
                .and_then(|b| AccountKey::from_bytes(b).ok())
            {
                out.push(k);
            }
        }
        Ok(out)
    }

    /// The owner's deposit tokens for `period`, replacing those it gave before for that period; tokens of
    /// periods before `keep_from` are forgotten.
    pub fn mailbox_set_tokens(
        &mut self,
        owner: &AccountKey,
        period: u64,
        tokens: &[[u8; 32]],
        keep_from: u64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        let o = owner.as_bytes().as_slice();
        tx.execute(
            "DELETE FROM mailbox_tokens WHERE owner = ?1 AND (period = ?2 OR period < ?3)",
            params![o, period as i64, keep_from as i64],
        )?;
        for t in tokens {
            tx.execute(
                "INSERT OR REPLACE INTO mailbox_tokens (token, owner, period) VALUES (?1, ?2, ?3)",
                params![t.as_slice(), o, period as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A deposit: stored (its id; the same envelope again gives the same id and is not stored twice) or
    /// refused with the reason. One transaction, so a crash leaves it stored or not, never half.
    pub fn mailbox_deposit(
        &mut self,
        token: &[u8; 32],
        envelope: &[u8],
        periods: &[u64],
        quotas: &kith_core::mailbox::Quotas,
        now_ms: i64,
    ) -> Result<std::result::Result<u64, kith_core::mailbox::Refusal>> {
        use kith_core::mailbox::{Refusal, Usage};
        use sha2::Digest;
        let tx = self.conn.transaction()?;
        let found: Option<(Vec<u8>, i64)> = tx
            .query_row(
                "SELECT owner, period FROM mailbox_tokens WHERE token = ?1",
                [token.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((owner, period)) = found else {
            return Ok(Err(Refusal::UnknownToken));
        };
        if !periods.contains(&(period as u64)) {
            return Ok(Err(Refusal::UnknownToken));
        }
        let digest = sha2::Sha256::digest(envelope).to_vec();
        if let Some(id) = tx
            .query_row(
                "SELECT id FROM mailbox_items WHERE digest = ?1",
                [&digest],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
        {
            return Ok(Ok(id as u64));
        }
        let usage = |sql: &str, key: &[u8]| -> Result<Usage> {
            Ok(tx.query_row(sql, params![key, now_ms], |r| {
                Ok(Usage {
                    bytes: r.get::<_, i64>(0)? as u64,
                    messages: r.get::<_, i64>(1)? as u64,
                })
            })?)
        };
        let by_token = usage(
            "SELECT COALESCE(SUM(length(envelope)), 0), COUNT(*) FROM mailbox_items
             WHERE token = ?1 AND expires_ms > ?2",
            token,
        )?;
        let total = usage(
            "SELECT COALESCE(SUM(length(envelope)), 0), COUNT(*) FROM mailbox_items
             WHERE owner = ?1 AND expires_ms > ?2",
            &owner,
        )?;
        if let Err(r) = quotas.admit(envelope.len(), by_token, total) {
            return Ok(Err(r));
        }
        let expires = now_ms.saturating_add((quotas.expiry_secs as i64).saturating_mul(1000));
        tx.execute(
            "INSERT INTO mailbox_items (owner, token, digest, envelope, at_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![owner, token.as_slice(), digest, envelope, now_ms, expires],
        )?;
        let id = tx.last_insert_rowid() as u64;
        tx.commit()?;
        Ok(Ok(id))
    }

    /// What the mailbox holds for `owner` after id `after` (unexpired), at most `max`; and whether there
    /// is more.
    pub fn mailbox_fetch(
        &self,
        owner: &AccountKey,
        after: u64,
        max: usize,
        now_ms: i64,
    ) -> Result<(Vec<kith_core::mailbox::Held>, bool)> {
        let mut st = self.conn.prepare(
            "SELECT id, token, envelope, at_ms FROM mailbox_items
             WHERE owner = ?1 AND id > ?2 AND expires_ms > ?3 ORDER BY id LIMIT ?4",
        )?;
        let rows = st.query_map(
            params![
                owner.as_bytes().as_slice(),
                after as i64,
                now_ms,
                max as i64 + 1
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )?;
        let mut items = vec![];
        for r in rows {
            let (id, token, envelope, at) = r?;
            items.push(kith_core::mailbox::Held {
                id: id as u64,
                token: token.try_into().unwrap_or([0; 32]),
                envelope,
                at_ms: at as u64,
            });
        }
        let more = items.len() > max;
        items.truncate(max);
        Ok((items, more))
    }

    /// The owner has what these ids hold: delete them.
    pub fn mailbox_delete(&mut self, owner: &AccountKey, ids: &[u64]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for id in ids {
            n += tx.execute(
                "DELETE FROM mailbox_items WHERE owner = ?1 AND id = ?2",
                params![owner.as_bytes().as_slice(), *id as i64],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Drops what has expired; returns how many.
    pub fn mailbox_expire(&self, now_ms: i64) -> Result<usize> {
        Ok(self
            .conn
            .execute("DELETE FROM mailbox_items WHERE expires_ms <= ?1", [now_ms])?)
    }

    /// A numeric setting of the node (e.g. the contact key generation); `None` if never set.
    pub fn setting(&self, key: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The discovery record item last published for `period`, with a digest of what it was made from.
    pub fn published_item(&self, period: u64) -> Result<Option<PublishedItem>> {
        Ok(self
            .conn
            .query_row(
                "SELECT inputs, seq, value, signature FROM published WHERE period = ?1",
                [period as i64],
                |r| {
                    Ok(PublishedItem {
                        inputs: r.get(0)?,
                        seq: r.get(1)?,
                        value: r.get(2)?,
                        signature: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Remembers the item published for `period` and forgets those of periods before `period - 1`.
    pub fn save_published_item(&self, period: u64, item: &PublishedItem) -> Result<()> {
        self.conn.execute(
            "INSERT INTO published (period, inputs, seq, value, signature) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(period) DO UPDATE SET inputs = excluded.inputs, seq = excluded.seq,
                 value = excluded.value, signature = excluded.signature",
            params![
                period as i64,
                item.inputs,
                item.seq,
                item.value,
                item.signature
            ],
        )?;
        self.conn.execute(
            "DELETE FROM published WHERE period < ?1",
            [period as i64 - 1],
        )?;
        Ok(())
    }

    pub fn set_setting(&self, key: &str, value: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )?;
        Ok(())
    }

    fn peer_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Peer> {
        let account = key_of(row.get(0)?)?;
        let card: Option<Vec<u8>> = row.get(4)?;
        Ok(Peer {
            account: AccountKey::from_bytes(account).map_err(|_| {
                rusqlite::Error::InvalidColumnType(0, "account".into(), rusqlite::types::Type::Blob)
            })?,
            state: if row.get::<_, String>(1)? == "contact" {
                PeerState::Contact
            } else {
                PeerState::Request
            },
            petname: row.get(2)?,
            display_name: row.get(3)?,
            card: card.and_then(|c| ContactCard::from_bytes(&c).ok()),
            added_at_ms: row.get(5)?,
            last_seen_ms: row.get(6)?,
            verified_ms: row.get(7)?,
            key_changed_ms: row.get(8)?,
        })
    }

    const PEER_COLS: &'static str = "account, state, petname, display_name, card, added_at_ms, last_seen_ms, verified_ms, key_changed_ms";

    /// Records that `peer` spoke through `device` (a device certified by their account key).
    pub fn record_device(
        &self,
        peer: &AccountKey,
        device: &DeviceKey,
        now_ms: i64,
    ) -> Result<DeviceSeen> {
        let before: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM peer_devices WHERE peer = ?1",
            params![peer.as_bytes()],
            |r| r.get(0),
        )?;
        let added = self.conn.execute(
            "INSERT INTO peer_devices (peer, device, first_seen_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![peer.as_bytes(), device.as_bytes(), now_ms],
        )?;
        Ok(match (added, before) {
            (0, _) => DeviceSeen::Known,
            (_, 0) => DeviceSeen::First,
            _ => {
                self.conn.execute(
                    "UPDATE peers SET key_changed_ms = ?2 WHERE account = ?1",
                    params![peer.as_bytes(), now_ms],
                )?;
                DeviceSeen::Changed
            }
        })
    }

    /// Remembers `device` of `peer` without taking a first sight of it for a key change: a device the
    /// peer vouches for otherwise (an organization's gateway on the list its account signed).
    pub fn note_device(&self, peer: &AccountKey, device: &DeviceKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO peer_devices (peer, device, first_seen_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![peer.as_bytes(), device.as_bytes(), now_ms],
        )?;
        Ok(())
    }

    /// The user compared safety numbers with the contact and confirms: verified, and a key change, if
    /// any, is accepted.
    pub fn set_verified(&self, peer: &AccountKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE peers SET verified_ms = ?2, key_changed_ms = NULL WHERE account = ?1",
            params![peer.as_bytes(), now_ms],
        )?;
        Ok(())
    }

    pub fn peer(&self, account: &AccountKey) -> Result<Option<Peer>> {
        let sql = format!("SELECT {} FROM peers WHERE account = ?1", Self::PEER_COLS);
        Ok(self
            .conn
            .query_row(&sql, params![account.as_bytes()], Self::peer_from_row)
            .optional()?)
    }

    /// The contact with this name: as written, or else the one whose name differs from it only in case
    /// (`kith call bob` for "Bob").
    pub fn contact_by_name(&self, name: &str) -> Result<Peer> {
        let sql = format!(
            "SELECT {} FROM peers WHERE state = 'contact' AND petname = ?1",
            Self::PEER_COLS
        );
        if let Some(p) = self
            .conn
            .query_row(&sql, params![name], Self::peer_from_row)
            .optional()?
        {
            return Ok(p);
        }
        let mut found: Vec<Peer> = self
            .contacts()?
            .into_iter()
            .filter(|p| p.petname.as_deref().is_some_and(|n| same_name(n, name)))
            .collect();
        match found.len() {
            0 => Err(StoreError::UnknownContact(name.to_owned())),
            1 => Ok(found.remove(0)),
            _ => Err(StoreError::AmbiguousContact {
                name: name.to_owned(),
                names: found.into_iter().filter_map(|p| p.petname).collect(),
            }),
        }
    }

    fn list(&self, state: &str) -> Result<Vec<Peer>> {
        let sql = format!(
            "SELECT {} FROM peers WHERE state = ?1 ORDER BY petname, added_at_ms",
            Self::PEER_COLS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![state], Self::peer_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn contacts(&self) -> Result<Vec<Peer>> {
        self.list("contact")
    }

    pub fn requests(&self) -> Result<Vec<Peer>> {
        self.list("request")
    }

    /// Adds a contact, or turns a request into one, or updates the card of an existing contact.
    pub fn add_contact(
        &self,
        account: &AccountKey,
        petname: &str,
        card: Option<&ContactCard>,
        now_ms: i64,
    ) -> Result<()> {
        // Names are looked up regardless of case, so two that differ only in case would be ambiguous.
        let taken = self
            .conn
            .prepare("SELECT account, petname FROM peers WHERE petname IS NOT NULL")?
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .any(|(other, name)| other != account.as_bytes() && same_name(&name, petname));
        if taken {
            return Err(StoreError::NameTaken(petname.to_owned()));
        }
        self.conn.execute(
            "INSERT INTO peers (account, state, petname, added_at_ms) VALUES (?1, 'contact', ?2, ?3)
             ON CONFLICT (account) DO UPDATE SET state = 'contact', petname = ?2",
            params![account.as_bytes(), petname, now_ms],
        )?;
        if let Some(card) = card {
            self.update_card(card)?;
        }
        Ok(())
    }

    /// Records a card if it is newer than the one stored. Returns whether it was stored.
    pub fn update_card(&self, card: &ContactCard) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE peers SET card = ?2, card_issued = ?3, display_name = ?4
             WHERE account = ?1 AND (card_issued IS NULL OR card_issued <= ?3)",
            params![
                card.account().as_bytes(),
                card.to_bytes(),
                card.issued() as i64,
                card.name()
            ],
        )?;
        Ok(n > 0)
    }

    pub fn remove_contact(&self, petname: &str) -> Result<AccountKey> {
        let peer = self.contact_by_name(petname)?;
        self.conn.execute(
            "DELETE FROM peers WHERE account = ?1",
            params![peer.account.as_bytes()],
        )?;
        Ok(peer.account)
    }

    /// Records that a stranger wrote to us. Returns false if they are already a contact.
    pub fn record_request(
        &self,
        account: &AccountKey,
        card: Option<&ContactCard>,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO peers (account, state, added_at_ms) VALUES (?1, 'request', ?2) ON CONFLICT (account) DO NOTHING",
            params![account.as_bytes(), now_ms],
        )?;
        if let Some(card) = card {
            self.update_card(card)?;
        }
        Ok(())
    }

    pub fn request_count(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM peers WHERE state = 'request'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Finds a request by the display name on its card or by its address.
    pub fn find_request(&self, name_or_address: &str) -> Result<Peer> {
        let wanted = name_or_address.trim();
        self.requests()?
            .into_iter()
            .find(|p| {
                p.display_name.as_deref() == Some(wanted)
                    || kith_core::Address::new(p.account)
                        .to_string()
                        .eq_ignore_ascii_case(wanted)
            })
            .ok_or_else(|| StoreError::UnknownRequest(wanted.to_owned()))
    }

    /// Adds a finished call to the call log.
    pub fn log_call(&self, call: &CallRecord) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO calls (id, peer, direction, started_ms, answered_ms, ended_ms, outcome, stats)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                call.id.as_slice(),
                call.peer.as_bytes(),
                call.direction,
                call.started_ms,
                call.answered_ms,
                call.ended_ms,
                call.outcome,
                call.stats
            ],
        )?;
        Ok(())
    }

    /// The call log, newest first.
    pub fn call_log(&self, limit: usize) -> Result<Vec<CallRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, peer, direction, started_ms, answered_ms, ended_ms, outcome, stats
             FROM calls ORDER BY ended_ms DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let id: Vec<u8> = r.get(0)?;
            let peer: Vec<u8> = r.get(1)?;
            let bad = |i| {
                rusqlite::Error::InvalidColumnType(i, "key".into(), rusqlite::types::Type::Blob)
            };
            Ok(CallRecord {
                id: id.try_into().map_err(|_| bad(0))?,
                peer: AccountKey::from_bytes(key_of(peer)?).map_err(|_| bad(1))?,
                direction: r.get(2)?,
                started_ms: r.get(3)?,
                answered_ms: r.get(4)?,
                ended_ms: r.get(5)?,
                outcome: r.get(6)?,
                stats: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn touch(&self, account: &AccountKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE peers SET last_seen_ms = ?2 WHERE account = ?1",
            params![account.as_bytes(), now_ms],
        )?;
        Ok(())
    }

    /// Copies the store at `src` into the new file `dest`: one consistent state, also while a daemon
    /// writes to it (SQLite's `VACUUM INTO`, through a read-only connection that changes nothing). The
    /// copy is encrypted under the same key as the store.
    pub fn snapshot(src: &Path, dest: &Path, key: Option<&StoreKey>) -> Result<()> {
        if !src.exists() {
            return Err(StoreError::Missing(src.to_owned()));
        }
        let conn = Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        if let Some(key) = key {
            key.apply(&conn)?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let dest = dest.to_str().ok_or_else(|| StoreError::Io {
            path: dest.to_owned(),
            source: std::io::Error::other("the path is not UTF-8"),
        })?;
        conn.execute("VACUUM INTO ?1", [dest])?;
        Ok(())
    }

    /// Makes a store restored from a backup the store of a new device `new` of the same account (the
    /// device that wrote it was `old`). Its message numbers and ratchet state were `old`'s, and may be
    /// behind what contacts saw from `old` after the backup: numbers they already have would be taken
    /// for duplicates, and a ratchet behind theirs cannot read their next mail. So: the Olm account and
    /// sessions are dropped (the new device makes its own, and tells contacts); messages not yet
    /// delivered get numbers of the new device, in their order, and go out again (their sealed copies,
    /// sealed by the old device, are dropped). History stays as it was. Returns the messages requeued.
    pub fn move_to_new_device(&mut self, old: &DeviceKey, new: &DeviceKey) -> Result<u64> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM ratchet", [])?;
        tx.execute("DELETE FROM olm_sessions", [])?;
        tx.execute(
            "DELETE FROM sealed_out WHERE device = ?1",
            params![old.as_bytes()],
        )?;
        let pending: Vec<(i64, Vec<u8>)> = tx
            .prepare(
                "SELECT id, peer FROM messages WHERE outgoing = 1 AND device = ?1 AND state != 'delivered'
                 ORDER BY peer, seq",
            )?
            .query_map(params![old.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut next: std::collections::HashMap<Vec<u8>, i64> = Default::default();
        for (id, peer) in &pending {
            let seq = next.entry(peer.clone()).or_insert(0);
            *seq += 1;
            tx.execute(
                "UPDATE messages SET device = ?2, seq = ?3, state = 'queued' WHERE id = ?1",
                params![id, new.as_bytes(), *seq],
            )?;
        }
        tx.commit()?;
        Ok(pending.len() as u64)
    }

    /// Puts a new outgoing message in the outbox (durably) and returns its sequence number.
    pub fn enqueue_outgoing(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        id: [u8; 16],
        text: &str,
        now_ms: i64,
    ) -> Result<u64> {
        Ok(self
            .enqueue_outgoing_once(peer, device, id, text, now_ms, None)?
            .seq)
    }

    /// The key pinned for an organization's domain (the first verified, or the last signed change).
    pub fn org_pin(&self, domain: &str) -> Result<Option<AccountKey>> {
        let key: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT account FROM org_pins WHERE domain = ?1",
                [domain],
                |r| r.get(0),
            )
            .optional()?;
        Ok(key
            .and_then(|k| key_of(k).ok())
            .and_then(|k| AccountKey::from_bytes(k).ok()))
    }

    pub fn set_org_pin(&self, domain: &str, account: &AccountKey, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO org_pins (domain, account, pinned_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (domain) DO UPDATE SET account = ?2, pinned_ms = ?3",
            params![domain, account.as_bytes(), now_ms],
        )?;
        Ok(())
    }

    /// The number of the newest list of gateways seen for `domain` (kept even when the organization no
    /// longer publishes one, so an old one cannot come back).
    pub fn org_roster_seq(&self, domain: &str) -> Result<Option<u64>> {
        let seq: Option<Option<i64>> = self
            .conn
            .query_row(
                "SELECT roster_seq FROM org_pins WHERE domain = ?1",
                [domain],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.flatten().map(|s| s.max(0) as u64))
    }

    /// Keeps the list of gateways the organization of `domain` (pinned) publishes now: `None` when it
    /// publishes none any more (its number stays).
    pub fn set_org_roster(&self, domain: &str, roster: Option<(u64, &[u8])>) -> Result<()> {
        match roster {
            Some((seq, bytes)) => self.conn.execute(
                "UPDATE org_pins SET roster_seq = ?2, roster = ?3 WHERE domain = ?1",
                params![domain, seq as i64, bytes],
            )?,
            None => self.conn.execute(
                "UPDATE org_pins SET roster = NULL WHERE domain = ?1",
                [domain],
            )?,
        };
        Ok(())
    }

    /// The domains and lists of gateways kept for the organization whose account is `account` (one per
    /// domain it speaks for), by domain.
    pub fn org_rosters_of(&self, account: &AccountKey) -> Result<Vec<(String, Vec<u8>)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT domain, roster FROM org_pins WHERE account = ?1 AND roster IS NOT NULL
             ORDER BY domain",
        )?;
        let rows = st.query_map([account.as_bytes().as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a domain's pin; false if there was none.
    pub fn forget_org_pin(&self, domain: &str) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM org_pins WHERE domain = ?1", [domain])?
            > 0)
    }

    /// Like [`Store::enqueue_outgoing`], under an idempotency `key`: if a message was queued under it
    /// (kept [`SEND_KEY_DAYS`] days), that message is the answer and nothing is queued again; the key
    /// with another recipient or text is refused. Looked up and recorded in the message's transaction,
    /// so a crash leaves both or neither.
    pub fn enqueue_outgoing_once(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        id: [u8; 16],
        text: &str,
        now_ms: i64,
        key: Option<&str>,
    ) -> Result<Enqueued> {
        let tx = self.conn.transaction()?;
        if let Some(key) = key {
            let earlier = tx
                .query_row(
                    "SELECT k.peer, k.seq, m.msg_id, m.body, m.state FROM send_keys k
                     JOIN messages m ON m.peer = k.peer AND m.outgoing = 1 AND m.device = k.device
                         AND m.seq = k.seq
                     WHERE k.key = ?1",
                    [key],
                    |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    },
                )
                .optional()?;
            if let Some((to, seq, msg_id, body, state)) = earlier {
                if to != peer.as_bytes() || body != text {
                    return Err(StoreError::KeyReused);
                }
                return Ok(Enqueued {
                    seq: seq as u64,
                    id: msg_id.try_into().unwrap_or_default(),
                    state,
                    repeated: true,
                });
            }
        }
        let seq: i64 = tx.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE peer = ?1 AND outgoing = 1 AND device = ?2",
            params![peer.as_bytes(), device.as_bytes()],
            |r| r.get(0),
        )?;
        let idx: i64 = tx.query_row(
            "SELECT COALESCE(MAX(shown_idx), 0) + 1 FROM messages",
            [],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO messages (peer, outgoing, device, seq, msg_id, body, sent_at_ms, state, shown_idx)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7)",
            params![peer.as_bytes(), device.as_bytes(), seq, &id[..], text, now_ms, idx],
        )?;
        if let Some(key) = key {
            tx.execute(
                "DELETE FROM send_keys WHERE at_ms < ?1",
                [now_ms - SEND_KEY_DAYS * 24 * 3600 * 1000],
            )?;
            tx.execute(
                "INSERT INTO send_keys (key, peer, device, seq, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, peer.as_bytes(), device.as_bytes(), seq, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(Enqueued {
            seq: seq as u64,
            id,
            state: "queued".into(),
            repeated: false,
        })
    }

    /// An outgoing message by sequence number.
    pub fn outgoing(
        &self,
        peer: &AccountKey,
        device: &DeviceKey,
        seq: u64,
    ) -> Result<Option<Outgoing>> {
        self.message(peer, device, seq, true)
    }

    /// A stored incoming message by sequence number.
    pub fn incoming(
        &self,
        peer: &AccountKey,
        device: &DeviceKey,
        seq: u64,
    ) -> Result<Option<Outgoing>> {
        self.message(peer, device, seq, false)
    }

    fn message(
        &self,
        peer: &AccountKey,
        device: &DeviceKey,
        seq: u64,
        outgoing: bool,
    ) -> Result<Option<Outgoing>> {
        Ok(self
            .conn
            .query_row(
                "SELECT msg_id, body, sent_at_ms FROM messages WHERE peer = ?1 AND outgoing = ?4 AND device = ?2 AND seq = ?3",
                params![peer.as_bytes(), device.as_bytes(), seq as i64, outgoing as i64],
                |r| {
                    let id: Vec<u8> = r.get(0)?;
                    Ok(Outgoing {
                        seq,
                        id: id.try_into().unwrap_or([0; 16]),
                        text: r.get(1)?,
                        sent_at_ms: r.get::<_, i64>(2)? as u64,
                    })
                },
            )
            .optional()?)
    }

    /// Whether any outgoing message of `device` waits for its receipt.
    pub fn has_undelivered(&self, device: &DeviceKey) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE outgoing = 1 AND device = ?1 AND state != 'delivered')",
            params![device.as_bytes()],
            |r| r.get::<_, bool>(0),
        )?)
    }

    /// Every (peer, seq) not yet delivered, for rebuilding outboxes at start.
    pub fn undelivered(&self, device: &DeviceKey) -> Result<Vec<(AccountKey, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT peer, seq FROM messages WHERE outgoing = 1 AND device = ?1 AND state != 'delivered' ORDER BY peer, seq",
        )?;
        let rows = stmt.query_map(params![device.as_bytes()], |r| {
            Ok((key_of(r.get(0)?)?, r.get::<_, i64>(1)? as u64))
        })?;
        let mut out = vec![];
        for row in rows {
            let (k, seq) = row?;
            if let Ok(k) = AccountKey::from_bytes(k) {
                out.push((k, seq));
            }
        }
        Ok(out)
    }

    pub fn mark_sent(&mut self, peer: &AccountKey, device: &DeviceKey, seqs: &[u64]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE messages SET state = 'sent' WHERE peer = ?1 AND outgoing = 1 AND device = ?2 AND seq = ?3 AND state = 'queued'",
            )?;
            for seq in seqs {
                stmt.execute(params![peer.as_bytes(), device.as_bytes(), *seq as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn mark_delivered(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        seqs: &[u64],
        now_ms: i64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE messages SET state = 'delivered', delivered_at_ms = ?4
                 WHERE peer = ?1 AND outgoing = 1 AND device = ?2 AND seq = ?3 AND state != 'delivered'",
            )?;
            // A delivered message's sealed copy is no longer needed.
            let mut sealed = tx.prepare_cached(
                "DELETE FROM sealed_out WHERE peer = ?1 AND device = ?2 AND seq = ?3",
            )?;
            for seq in seqs {
                stmt.execute(params![
                    peer.as_bytes(),
                    device.as_bytes(),
                    *seq as i64,
                    now_ms
                ])?;
                sealed.execute(params![peer.as_bytes(), device.as_bytes(), *seq as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores incoming messages (held) and marks `show` as shown, in that order, in one transaction.
    /// Messages already stored are ignored, so a retransmission never creates a second copy. A message
    /// whose id was already shown from this peer (sent again by a device restored from a backup, under a
    /// new number) counts as received but is not shown a second time. Returns the seqs shown.
    pub fn store_incoming(
        &mut self,
        peer: &AccountKey,
        device: &DeviceKey,
        messages: &[Incoming<'_>],
        show: &[u64],
        now_ms: i64,
    ) -> Result<Vec<u64>> {
        let mut shown_seqs = Vec::with_capacity(show.len());
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (peer, outgoing, device, seq, msg_id, body, sent_at_ms, received_at_ms, state)
                 VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6, ?7, 'held') ON CONFLICT DO NOTHING",
            )?;
            for m in messages {
                insert.execute(params![
                    peer.as_bytes(),
                    device.as_bytes(),
                    m.seq as i64,
                    &m.id[..],
                    m.text,
                    m.sent_at_ms as i64,
                    now_ms
                ])?;
            }
            let mut idx: i64 = tx.query_row(
                "SELECT COALESCE(MAX(shown_idx), 0) + 1 FROM messages",
                [],
                |r| r.get(0),
            )?;
            let mut seen_before = tx.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM messages o JOIN messages m
                    ON o.peer = m.peer AND o.outgoing = 0 AND o.msg_id = m.msg_id AND o.shown_idx IS NOT NULL
                 WHERE m.peer = ?1 AND m.outgoing = 0 AND m.device = ?2 AND m.seq = ?3)",
            )?;
            let mut shown = tx.prepare_cached(
                "UPDATE messages SET state = 'received', shown_idx = ?4
                 WHERE peer = ?1 AND outgoing = 0 AND device = ?2 AND seq = ?3 AND state = 'held'",
            )?;
            for seq in show {
                let again: bool = seen_before.query_row(
                    params![peer.as_bytes(), device.as_bytes(), *seq as i64],
                    |r| r.get(0),
                )?;
                let n = shown.execute(params![
                    peer.as_bytes(),
                    device.as_bytes(),
                    *seq as i64,
                    if again { None } else { Some(idx) }
                ])? as i64;
                if n > 0 && !again {
                    idx += 1;
                    shown_seqs.push(*seq);
                }
            }
        }
        tx.commit()?;
        Ok(shown_seqs)
    }

    /// What an inbox needs after a restart: the highest seq shown contiguously and the held seqs beyond.
    pub fn inbox_state(&self, peer: &AccountKey, device: &DeviceKey) -> Result<(u64, Vec<u64>)> {
        // The end of the run of shown messages that starts at 1. Shown messages are that run, except on
        // an organization's gateway, which shows messages behind a gap too (the gap went to another
        // gateway): those count as held here, so that the gap's messages are still taken if they come.
        let shown: i64 = self.conn.query_row(
            "SELECT COALESCE(MIN(m.seq), 0) FROM messages m
             WHERE m.peer = ?1 AND m.outgoing = 0 AND m.device = ?2 AND m.state = 'received'
               AND EXISTS (SELECT 1 FROM messages f WHERE f.peer = ?1 AND f.outgoing = 0 AND f.device = ?2
                           AND f.seq = 1 AND f.state = 'received')
               AND NOT EXISTS (SELECT 1 FROM messages n WHERE n.peer = ?1 AND n.outgoing = 0
                               AND n.device = ?2 AND n.seq = m.seq + 1 AND n.state = 'received')",
            params![peer.as_bytes(), device.as_bytes()],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(
            "SELECT seq FROM messages WHERE peer = ?1 AND outgoing = 0 AND device = ?2
               AND (state = 'held' OR seq > ?3) ORDER BY seq",
        )?;
        let held = stmt
            .query_map(params![peer.as_bytes(), device.as_bytes(), shown], |r| {
                r.get::<_, i64>(0)
            })?
            .map(|r| r.map(|s| s as u64))
            .collect::<rusqlite::Result<_>>()?;
        Ok((shown as u64, held))
    }

    /// The last `limit` shown messages with a peer, oldest first.
    pub fn chat(&self, peer: &AccountKey, limit: usize) -> Result<Vec<ChatMessage>> {
        let mut stmt = self.conn.prepare(
            "SELECT outgoing, seq, msg_id, body, sent_at_ms, received_at_ms, delivered_at_ms,
                    CASE WHEN outgoing = 1 AND state != 'delivered' AND EXISTS (
                        SELECT 1 FROM sealed_out s WHERE s.peer = m.peer AND s.device = m.device
                          AND s.seq = m.seq AND s.deposited_ms IS NOT NULL
                    ) THEN 'in_mailbox' ELSE state END
             FROM (
                SELECT * FROM messages WHERE peer = ?1 AND shown_idx IS NOT NULL ORDER BY shown_idx DESC LIMIT ?2
             ) m ORDER BY shown_idx ASC",
        )?;
        let rows = stmt.query_map(params![peer.as_bytes(), limit as i64], |r| {
            let id: Vec<u8> = r.get(2)?;
            Ok(ChatMessage {
                outgoing: r.get::<_, i64>(0)? == 1,
                seq: r.get::<_, i64>(1)? as u64,
                id: id.iter().map(|b| format!("{b:02x}")).collect(),
                text: r.get(3)?,
                sent_at_ms: r.get(4)?,
                received_at_ms: r.get(5)?,
                delivered_at_ms: r.get(6)?,
                state: MessageState::parse(&r.get::<_, String>(7)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// (outgoing not yet delivered, incoming held back waiting for a gap).
    pub fn queue_sizes(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(outgoing = 1 AND state != 'delivered'), 0), COALESCE(SUM(outgoing = 0 AND state = 'held'), 0) FROM messages",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// Number of stored messages from a peer (used to cap what a stranger may leave).
    pub fn incoming_count(&self, peer: &AccountKey) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE peer = ?1 AND outgoing = 0",
            params![peer.as_bytes()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_core::{AccountSecret, DeviceSecret, Hints};
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn settings_survive_reopening_and_v1_databases_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kith.db");
        {
            // A database as the first schema left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
            ))
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.setting("contact_key_generation").unwrap(), None);
        s.set_setting("contact_key_generation", 3).unwrap();
        s.set_setting("contact_key_generation", 4).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.setting("contact_key_generation").unwrap(), Some(4));
    }

    fn keys() -> (AccountSecret, DeviceKey, AccountKey) {
        let mut rng = StdRng::seed_from_u64(3);
        let me = AccountSecret::generate(&mut rng);
        let dev = DeviceSecret::generate(&mut rng).public();
        let peer = AccountSecret::generate(&mut rng).public();
        (me, dev, peer)
    }

    #[test]
    fn contacts_names_and_cards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (me, _, peer) = keys();
        store.add_contact(&peer, "bob", None, 1).unwrap();
        assert_eq!(
            store.contact_by_name("BoB").unwrap().account,
            peer,
            "a name that differs only in case finds the contact"
        );
        assert!(matches!(
            store.add_contact(&me.public(), "bob", None, 1),
            Err(StoreError::NameTaken(_))
        ));
        assert!(
            matches!(
                store.add_contact(&me.public(), "Bob", None, 1),
                Err(StoreError::NameTaken(_))
            ),
            "a name that differs only in case is taken too"
        );
        let card = ContactCard::issue(&me, "Me", Hints::default(), 10).unwrap();
        store
            .add_contact(&me.public(), "me", Some(&card), 1)
            .unwrap();
        let older = ContactCard::issue(&me, "Old", Hints::default(), 5).unwrap();
        assert!(!store.update_card(&older).unwrap());
        assert_eq!(
            store.contact_by_name("me").unwrap().display_name.as_deref(),
            Some("Me")
        );
        assert_eq!(store.contacts().unwrap().len(), 2);
        store.remove_contact("bob").unwrap();
        assert!(matches!(
            store.contact_by_name("bob"),
            Err(StoreError::UnknownContact(_))
        ));
    }

    #[test]
    fn names_that_differ_only_in_case_are_ambiguous_unless_written_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (me, _, peer) = keys();
        store.add_contact(&peer, "bob", None, 1).unwrap();
        // Such a pair can only come from a database written before names were compared regardless of case.
        store
            .conn
            .execute(
                "INSERT INTO peers (account, state, petname, added_at_ms) VALUES (?1, 'contact', 'Bob', 1)",
                params![me.public().as_bytes()],
            )
            .unwrap();
        assert_eq!(store.contact_by_name("bob").unwrap().account, peer);
        assert_eq!(store.contact_by_name("Bob").unwrap().account, me.public());
        let e = store.contact_by_name("BOB").unwrap_err();
        assert!(
            matches!(&e, StoreError::AmbiguousContact { names, .. } if names.len() == 2),
            "{e}"
        );
        assert!(e.to_string().contains("Bob, bob"), "{e}");
    }

    #[test]
    fn the_store_is_encrypted_at_rest_and_an_old_plain_one_is_encrypted_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (_, dev, peer) = keys();
        let key = || StoreKey::new([7; 32]);
        let contains = |path: &Path, needle: &[u8]| {
            ["", "-wal"].iter().any(|ext| {
                let p = format!("{}{ext}", path.display());
                std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            })
        };
        // New, encrypted.
        let path = dir.path().join("kith.db");
        {
            let mut store = Store::open_with(&path, Some(&key()), true).unwrap();
            store.add_contact(&peer, "bob", None, 1).unwrap();
            store
                .enqueue_outgoing(&peer, &dev, [1; 16], "attack at dawn", 2)
                .unwrap();
        }
        assert!(!contains(&path, b"SQLite format 3"), "no clear header");
        assert!(
            !contains(&path, b"attack at dawn") && !contains(&path, b"bob"),
            "nothing readable"
        );
        let store = Store::open_with(&path, Some(&key()), false).unwrap();
        assert_eq!(store.chat(&peer, 10).unwrap()[0].text, "attack at dawn");
        drop(store);
        // Without the key, or with another: refused as not a sound store, and not written over.
        let before = std::fs::read(&path).unwrap();
        for other in [None, Some(StoreKey::new([8; 32]))] {
            let Err(e) = Store::open_with(&path, other.as_ref(), false) else {
                panic!("opened without the right key");
            };
            assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A snapshot is encrypted under the same key.
        let copy = dir.path().join("copy.db");
        Store::snapshot(&path, &copy, Some(&key())).unwrap();
        assert!(!contains(&copy, b"attack at dawn"));
        assert_eq!(
            Store::open_with(&copy, Some(&key()), false)
                .unwrap()
                .chat(&peer, 10)
                .unwrap()
                .len(),
            1
        );
        // A store from before encryption: encrypted in place at the first keyed open, rows and schema
        // version kept.
        let old = dir.path().join("old.db");
        {
            let mut store = Store::open(&old).unwrap();
            store.add_contact(&peer, "bob", None, 1).unwrap();
            store
                .enqueue_outgoing(&peer, &dev, [2; 16], "plain words", 2)
                .unwrap();
        }
        assert!(contains(&old, b"plain words"));
        let store = Store::open_with(&old, Some(&key()), false).unwrap();
        assert_eq!(store.chat(&peer, 10).unwrap()[0].text, "plain words");
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        drop(store);
        assert!(!contains(&old, b"plain words") && !contains(&old, b"SQLite format 3"));
    }

    /// An organization's list of gateways is kept with its pin, found by its account, survives a reopen,
    /// and its number stays when the organization stops publishing one (so an older cannot come back).
    #[test]
    fn an_organizations_gateways_are_kept_with_its_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (_, _, org) = keys();
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.org_rosters_of(&org).unwrap(), vec![]);
            s.set_org_pin("example.org", &org, 1).unwrap();
            assert_eq!(s.org_roster_seq("example.org").unwrap(), None);
            s.set_org_roster("example.org", Some((4, b"list four")))
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.org_rosters_of(&org).unwrap(),
            vec![("example.org".to_string(), b"list four".to_vec())]
        );
        // The same account speaking for a second domain, with a list of its own there.
        s.set_org_pin("example.com", &org, 2).unwrap();
        s.set_org_roster("example.com", Some((1, b"list one")))
            .unwrap();
        assert_eq!(s.org_rosters_of(&org).unwrap().len(), 2);
        assert!(s.forget_org_pin("example.com").unwrap());
        assert_eq!(s.org_roster_seq("example.org").unwrap(), Some(4));
        s.set_org_roster("example.org", None).unwrap();
        assert_eq!(s.org_rosters_of(&org).unwrap(), vec![]);
        assert_eq!(s.org_roster_seq("example.org").unwrap(), Some(4));
        assert!(s.forget_org_pin("example.org").unwrap());
        assert_eq!(s.org_roster_seq("example.org").unwrap(), None);
    }

    /// Issue 21, point 9: a send under an idempotency key is queued once, however often it is repeated
    /// (also after reopening: a crashed daemon); the key with another text or recipient is refused;
    /// keys older than [`SEND_KEY_DAYS`] are forgotten.
    #[test]
    fn a_send_under_one_key_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (_, dev, peer) = keys();
        let other = AccountSecret::generate(&mut StdRng::seed_from_u64(77)).public();
        {
            let mut s = Store::open(&path).unwrap();
            s.add_contact(&peer, "bob", None, 1).unwrap();
            s.add_contact(&other, "carol", None, 1).unwrap();
            let first = s
                .enqueue_outgoing_once(&peer, &dev, [1; 16], "hi", 10, Some("k"))
                .unwrap();
            assert_eq!((first.seq, first.repeated), (1, false));
            let again = s
                .enqueue_outgoing_once(&peer, &dev, [2; 16], "hi", 11, Some("k"))
                .unwrap();
            assert_eq!((again.seq, again.id, again.repeated), (1, [1; 16], true));
            assert_eq!(again.state, "queued");
        }
        let mut s = Store::open(&path).unwrap();
        s.mark_delivered(&peer, &dev, &[1], 20).unwrap();
        let after = s
            .enqueue_outgoing_once(&peer, &dev, [3; 16], "hi", 30, Some("k"))
            .unwrap();
        assert_eq!((after.seq, after.repeated), (1, true));
        assert_eq!(after.state, "delivered");
        assert!(matches!(
            s.enqueue_outgoing_once(&peer, &dev, [4; 16], "other text", 31, Some("k")),
            Err(StoreError::KeyReused)
        ));
        assert!(matches!(
            s.enqueue_outgoing_once(&other, &dev, [4; 16], "hi", 31, Some("k")),
            Err(StoreError::KeyReused)
        ));
        assert_eq!(s.chat(&peer, 10).unwrap().len(), 1);
        // A week later another send (with another key) forgets the old key.
        let week = SEND_KEY_DAYS * 24 * 3600 * 1000;
        s.enqueue_outgoing_once(&peer, &dev, [5; 16], "later", 40 + week, Some("j"))
            .unwrap();
        let reused = s
            .enqueue_outgoing_once(&peer, &dev, [6; 16], "hi", 41 + week, Some("k"))
            .unwrap();
        assert_eq!((reused.seq, reused.repeated), (3, false));
    }

    #[test]
    fn a_restored_device_renumbers_what_waits_and_is_shown_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_, old, peer) = keys();
        let new = DeviceSecret::generate(&mut StdRng::seed_from_u64(9)).public();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        store.add_contact(&peer, "bob", None, 1).unwrap();
        for (i, t) in ["a", "b", "c"].iter().enumerate() {
            store
                .enqueue_outgoing(&peer, &old, [i as u8; 16], t, 1)
                .unwrap();
        }
        store.mark_delivered(&peer, &old, &[1], 2).unwrap();
        store.save_ratchet("account", "pickle").unwrap();
        assert_eq!(store.move_to_new_device(&old, &new).unwrap(), 2);
        assert_eq!(
            store.ratchet("account").unwrap(),
            None,
            "the new device makes its own"
        );
        // b and c wait under the new device's numbers 1 and 2, in their order; a stays as it was.
        let mut waiting = store.undelivered(&new).unwrap();
        waiting.sort();
        assert_eq!(waiting, vec![(peer, 1), (peer, 2)]);
        assert!(store.undelivered(&old).unwrap().is_empty());
        let texts: Vec<String> = store
            .chat(&peer, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);

        // The receiving side: the same message id from a second device is received, not shown twice.
        let m = |seq: u64, id: u8| Incoming {
            seq,
            id: [id; 16],
            text: "hello",
            sent_at_ms: 0,
        };
        assert_eq!(
            store
                .store_incoming(&peer, &old, &[m(1, 7)], &[1], 3)
                .unwrap(),
            vec![1]
        );
        assert_eq!(
            store
                .store_incoming(&peer, &new, &[m(1, 7)], &[1], 4)
                .unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(
            store.inbox_state(&peer, &new).unwrap(),
            (1, vec![]),
            "counted as received"
        );
        assert_eq!(
            store
                .store_incoming(&peer, &new, &[m(2, 8)], &[2], 5)
                .unwrap(),
            vec![2]
        );
        let incoming = store
            .chat(&peer, 10)
            .unwrap()
            .into_iter()
            .filter(|m| !m.outgoing)
            .count();
        assert_eq!(incoming, 2);
    }

    #[test]
    fn a_new_device_beside_known_ones_is_a_key_change_until_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first, peer) = keys();
        let second = DeviceSecret::generate(&mut StdRng::seed_from_u64(9)).public();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.add_contact(&peer, "bob", None, 1).unwrap();
        assert_eq!(
            store.record_device(&peer, &first, 1).unwrap(),
            DeviceSeen::First
        );
        assert_eq!(
            store.record_device(&peer, &first, 2).unwrap(),
            DeviceSeen::Known
        );
        assert_eq!(store.peer(&peer).unwrap().unwrap().key_changed_ms, None);
        store.set_verified(&peer, 3).unwrap();
        assert_eq!(
            store.record_device(&peer, &second, 4).unwrap(),
            DeviceSeen::Changed
        );
        let p = store.peer(&peer).unwrap().unwrap();
        assert_eq!((p.verified_ms, p.key_changed_ms), (Some(3), Some(4)));
        store.set_verified(&peer, 5).unwrap();
        let p = store.peer(&peer).unwrap().unwrap();
        assert_eq!((p.verified_ms, p.key_changed_ms), (Some(5), None));
        assert_eq!(
            store.record_device(&peer, &second, 6).unwrap(),
            DeviceSeen::Known
        );
    }

    #[test]
    fn outbox_and_inbox_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (_, dev, peer) = keys();
        {
            let mut store = Store::open(&path).unwrap();
            assert_eq!(
                store
                    .enqueue_outgoing(&peer, &dev, [1; 16], "a", 1)
                    .unwrap(),
                1
            );
            assert_eq!(
                store
                    .enqueue_outgoing(&peer, &dev, [2; 16], "b", 2)
                    .unwrap(),
                2
            );
            store.mark_delivered(&peer, &dev, &[1], 3).unwrap();
            let m = |seq| Incoming {
                seq,
                id: [seq as u8; 16],
                text: "x",
                sent_at_ms: 0,
            };
            store
                .store_incoming(&peer, &dev, &[m(1), m(3)], &[1], 5)
                .unwrap();
            // A retransmission is not stored twice.
            store.store_incoming(&peer, &dev, &[m(1)], &[], 6).unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.undelivered(&dev).unwrap(), vec![(peer, 2)]);
        assert_eq!(store.inbox_state(&peer, &dev).unwrap(), (1, vec![3]));
        let chat = store.chat(&peer, 10).unwrap();
        assert_eq!(chat.len(), 3, "two outgoing and one shown incoming");
        assert_eq!(store.queue_sizes().unwrap(), (1, 1));

        // An organization's gateway shows messages behind a gap (the gap went to another gateway): they
        // still count as beyond the gap, so the gap's messages are taken if they come after all.
        let gw_dev =
            DeviceKey::from_bytes(*AccountSecret::from_bytes(&[7; 32]).public().as_bytes())
                .unwrap();
        let m = |seq| Incoming {
            seq,
            id: [100 + seq as u8; 16],
            text: "y",
            sent_at_ms: 0,
        };
        assert_eq!(store.inbox_state(&peer, &gw_dev).unwrap(), (0, vec![]));
        store
            .store_incoming(&peer, &gw_dev, &[m(2), m(3)], &[2, 3], 7)
            .unwrap();
        assert_eq!(store.inbox_state(&peer, &gw_dev).unwrap(), (0, vec![2, 3]));
        store
            .store_incoming(&peer, &gw_dev, &[m(1)], &[1], 8)
            .unwrap();
        assert_eq!(store.inbox_state(&peer, &gw_dev).unwrap(), (3, vec![]));
    }

    /// Issue 21, point 5: one contact's deposits under its tokens of all the periods a mailbox accepts
    /// together stay within the contact's limit. Before, the limit held per token, and tokens change every
    /// period: three periods' tokens held three times it.
    #[test]
    fn one_contact_holds_at_most_its_limit_across_periods() {
        use kith_core::mailbox::{Quotas, Refusal, accepted_periods};
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("db")).unwrap();
        let owner = AccountSecret::generate(&mut StdRng::seed_from_u64(5)).public();
        let q = Quotas {
            per_contact_bytes: 1 << 20,
            per_contact_messages: 6,
            total_bytes: 1 << 30,
            total_messages: 1000,
            expiry_secs: 3600,
        };
        s.mailbox_add_owner(&owner, 0).unwrap();
        // One contact's token in each of periods 9, 10, 11 (as the owner hands them over at period 10).
        let token = |p: u8| [p; 32];
        for p in 9..=11u8 {
            s.mailbox_set_tokens(&owner, p as u64, &[token(p)], 9)
                .unwrap();
        }
        let mut held = 0;
        let mut n = 0u8;
        for p in 9..=11u8 {
            loop {
                n += 1;
                match s
                    .mailbox_deposit(&token(p), &[n; 512], &accepted_periods(10), &q, 1000)
                    .unwrap()
                {
                    Ok(_) => held += 1,
                    Err(Refusal::ContactFull { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert_eq!(
            held, q.per_contact_messages,
            "one contact's mail in all periods"
        );
    }

    #[test]
    fn deposits_are_admitted_by_token_and_quota_once_each_and_expire() {
        use kith_core::mailbox::{Quotas, Refusal};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut rng = StdRng::seed_from_u64(9);
        let owner = AccountSecret::generate(&mut rng).public();
        let q = Quotas {
            // A token's share: a third of these.
            per_contact_bytes: 3 * 2048,
            per_contact_messages: 9,
            total_bytes: 1 << 20,
            total_messages: 4,
            expiry_secs: 60,
        };
        let (t1, t2, stranger) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let env = |b: u8| vec![b; 512];
        {
            let mut s = Store::open(&path).unwrap();
            s.mailbox_add_owner(&owner, 0).unwrap();
            s.mailbox_set_tokens(&owner, 10, &[t1, t2], 9).unwrap();
            assert_eq!(
                s.mailbox_deposit(&stranger, &env(1), &[9, 10, 11], &q, 0)
                    .unwrap(),
                Err(Refusal::UnknownToken)
            );
            // A token of a period no longer accepted is refused like a wrong one.
            assert_eq!(
                s.mailbox_deposit(&t1, &env(1), &[11, 12, 13], &q, 0)
                    .unwrap(),
                Err(Refusal::UnknownToken)
            );
            let a = s
                .mailbox_deposit(&t1, &env(1), &[9, 10, 11], &q, 1000)
                .unwrap()
                .unwrap();
            // The same envelope again (a sender that lost the answer): the same id, stored once.
            assert_eq!(
                s.mailbox_deposit(&t1, &env(1), &[9, 10, 11], &q, 1001)
                    .unwrap(),
                Ok(a)
            );
            s.mailbox_deposit(&t1, &env(2), &[9, 10, 11], &q, 1002)
                .unwrap()
                .unwrap();
            s.mailbox_deposit(&t1, &env(3), &[9, 10, 11], &q, 1003)
                .unwrap()
                .unwrap();
            assert!(matches!(
                s.mailbox_deposit(&t1, &env(4), &[9, 10, 11], &q, 1004)
                    .unwrap(),
                Err(Refusal::ContactFull { .. })
            ));
            s.mailbox_deposit(&t2, &env(5), &[9, 10, 11], &q, 1005)
                .unwrap()
                .unwrap();
            assert!(matches!(
                s.mailbox_deposit(&t2, &env(6), &[9, 10, 11], &q, 1006)
                    .unwrap(),
                Err(Refusal::MailboxFull { .. })
            ));
            assert!(matches!(
                s.mailbox_deposit(&t2, &[0u8; 100], &[9, 10, 11], &q, 1006)
                    .unwrap(),
                Err(Refusal::BadSize(100))
            ));
        }
        // All of it survives reopening; the owner fetches in pages and deletes what it stored.
        let mut s = Store::open(&path).unwrap();
        let (page, more) = s.mailbox_fetch(&owner, 0, 3, 2000).unwrap();
        assert_eq!((page.len(), more), (3, true));
        assert_eq!(page[0].envelope, env(1));
        assert_eq!(page[0].token, t1);
        let (rest, more) = s.mailbox_fetch(&owner, page[2].id, 3, 2000).unwrap();
        assert_eq!((rest.len(), more), (1, false));
        assert_eq!(rest[0].envelope, env(5));
        assert_eq!(
            s.mailbox_delete(&owner, &[page[0].id, page[1].id]).unwrap(),
            2
        );
        assert_eq!(s.mailbox_fetch(&owner, 0, 10, 2000).unwrap().0.len(), 2);
        // Space freed: the contact may deposit again. After the expiry everything is gone.
        s.mailbox_deposit(&t1, &env(7), &[9, 10, 11], &q, 3000)
            .unwrap()
            .unwrap();
        // (Held: deposited at 1003, 1005 and 3000 ms, each for 60 s.)
        assert_eq!(s.mailbox_expire(62_000).unwrap(), 2, "the two older ones");
        let left = s.mailbox_fetch(&owner, 0, 10, 62_000).unwrap().0;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].envelope, env(7));
        assert_eq!(s.mailbox_owners().unwrap(), vec![owner]);
        assert_eq!(s.my_mailboxes().unwrap(), vec![]);
        s.add_my_mailbox(&owner, 1).unwrap();
        s.add_my_mailbox(&owner, 2).unwrap();
        assert_eq!(s.my_mailboxes().unwrap(), vec![owner]);
        assert_eq!(s.mail_info(&owner).unwrap(), None);
        s.save_mail_info(&owner, b"one", 1).unwrap();
        s.save_mail_info(&owner, b"two", 2).unwrap();
        assert_eq!(s.mail_info(&owner).unwrap().as_deref(), Some(&b"two"[..]));
        // What a card carried is kept only if newer than what is stored.
        assert!(!s.save_mail_info_if_newer(&owner, b"older card", 1).unwrap());
        assert_eq!(s.mail_info_at(&owner).unwrap(), Some((b"two".to_vec(), 2)));
        assert!(s.save_mail_info_if_newer(&owner, b"newer card", 3).unwrap());
        assert_eq!(
            s.mail_info_at(&owner).unwrap(),
            Some((b"newer card".to_vec(), 3))
        );
        let other = AccountSecret::generate(&mut rand::rng()).public();
        assert!(s.save_mail_info_if_newer(&other, b"first", 1).unwrap());
        // Ratchet state is kept by key.
        assert_eq!(s.ratchet("account").unwrap(), None);
        s.save_ratchet("account", "p1").unwrap();
        s.save_ratchet("account", "p2").unwrap();
        assert_eq!(s.ratchet("account").unwrap().as_deref(), Some("p2"));
    }
}
