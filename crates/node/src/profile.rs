//! A profile: one user's keys, configuration, API token and database in one directory.
//!
//! Layout of `--home DIR`:
//! * `identity.json` (0600): public keys, the device certificate and the secret keys, encrypted with
//!   XChaCha20-Poly1305 under an argon2id key when a passphrase was given.
//! * `config.toml`: the listen address (a port chosen at `init`, so contact cards stay valid across
//!   restarts) and the control API address.
//! * `api-token` (0600): the bearer token of the local control API.
//! * `kith.db`: the SQLite store. `daemon.json` (0600) exists while a daemon runs: its pid and API address.
//! * `daemon.lock`: held (flock) by the running daemon, so two daemons never share a profile.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kith_core::{AccountKey, AccountSecret, DeviceCert, DeviceKey, DeviceSecret};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const IDENTITY_FILE: &str = "identity.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const TOKEN_FILE: &str = "api-token";
pub const DB_FILE: &str = "kith.db";
pub const DAEMON_FILE: &str = "daemon.json";
pub const LOCK_FILE: &str = "daemon.lock";
pub const DHT_NODES_FILE: &str = "dht-nodes.json";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "a profile already exists in {0}: refusing to overwrite it (use another --home to make a second one)"
    )]
    Exists(PathBuf),
    #[error("no kith profile in {0}: create one with `kith init`")]
    Missing(PathBuf),
    #[error(
        "the profile is locked with a passphrase: set KITH_PASSPHRASE or run in a terminal to be asked"
    )]
    Locked,
    #[error("wrong passphrase for this profile")]
    WrongPassphrase,
    #[error(
        "cannot open the backup {0}: the passphrase is wrong, or the file is damaged (give the passphrase \
         the profile had when the backup was made)"
    )]
    WrongPassphraseOrDamaged(PathBuf),
    #[error("the profile file {file} is damaged ({reason}); restore it from a backup")]
    Damaged { file: PathBuf, reason: String },
    #[error("the profile in {0} is in use by another kith daemon (pid {1}); stop it first")]
    InUse(PathBuf, String),
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid display name: {0}")]
    Name(String),
    #[error(
        "the profile in {0} is an organization's gateway device, not enrolled yet: print its enrollment \
         with `kith device request`, have the organization's admin run `kith org enroll DOMAIN \
         <enrollment>` with the account, and install the grant it prints with `kith device grant <grant>`"
    )]
    NotEnrolled(PathBuf),
    #[error("{0}")]
    Gateway(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ProfileError + '_ {
    move |source| ProfileError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    version: u32,
    name: String,
    account: String,
    device: String,
    endpoint: String,
    device_cert: String,
    secrets: SecretBlob,
    /// Set on an organization's gateway device: it holds no account secret (its secrets are the device's
    /// and the endpoint's); `account` and `device_cert` are empty until its grant is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<GatewayFile>,
}

#[derive(Serialize, Deserialize, Clone)]
struct GatewayFile {
    /// The grant the organization's admin made for this device (`kith-grant:...`), once installed.
    #[serde(default)]
    grant: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SecretBlob {
    /// No passphrase: the file's 0600 mode is the only protection.
    Plain { keys: String },
    Argon2idXchacha20poly1305 {
        m_cost: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
        nonce: String,
        ciphertext: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address of the QUIC endpoint.
    pub listen: SocketAddr,
    /// TCP address of the local control API (always loopback unless changed by hand).
    pub api_listen: SocketAddr,
    /// Mainline DHT nodes to join through (host:port). The routing table saved at shutdown is used too.
    #[serde(default = "default_bootstrap")]
    pub bootstrap: Vec<String>,
    /// Local IPv4 address of the DHT node.
    #[serde(default = "default_dht_bind")]
    pub dht_bind: std::net::Ipv4Addr,
    /// Run the DHT node in server mode (for always-on machines).
    #[serde(default)]
    pub dht_server: bool,
    /// Length of a discovery period in minutes (blinded keys and records change every period).
    #[serde(default = "default_period")]
    pub period_minutes: u64,
    /// Publish direct IP addresses in the discovery record, readable by anyone who knows your address.
    #[serde(default)]
    pub publish_direct: bool,
    /// Relay servers to be reachable through (URLs).
    #[serde(default)]
    pub relays: Vec<String>,
    /// Send everything through relays: no peer ever learns this machine's IP address.
    #[serde(default)]
    pub relay_only: bool,
    /// Ask the local network for DHT nodes (multicast; only when `dht_bind` is not loopback).
    #[serde(default = "default_true")]
    pub lan_discovery: bool,
    /// Take contact requests from people who know only your address. Off: strangers learn nothing about
    /// whether or where you are reachable, and only contacts can reach you.
    #[serde(default = "default_true")]
    pub accept_requests: bool,
    /// Sound card for calls, by name (`kith audio devices`): "default" is the system's, "none" means
    /// silence in / nothing out. `kith call`/`kith answer` flags override these per call.
    #[serde(default = "default_device")]
    pub audio_input: String,
    #[serde(default = "default_device")]
    pub audio_output: String,
    /// Seconds a message waits for a direct delivery before it is also deposited into the contact's
    /// mailboxes.
    #[serde(default = "default_mailbox_after")]
    pub mailbox_after_secs: f64,
    /// Limits of the mailboxes this node keeps for contacts (`kith mailbox host`): per contact and in
    /// total, and how long mail is kept.
    #[serde(default = "default_per_contact_messages")]
    pub mailbox_per_contact_messages: u64,
    #[serde(default = "default_per_contact_mb")]
    pub mailbox_per_contact_mb: u64,
    #[serde(default = "default_total_messages")]
    pub mailbox_total_messages: u64,
    #[serde(default = "default_total_mb")]
    pub mailbox_total_mb: u64,
    #[serde(default = "default_expiry_days")]
    pub mailbox_expiry_days: u64,
    /// Where organizations' keys are looked up (`kith org verify`).
    #[serde(default, skip_serializing_if = "OrgSettings::is_default")]
    pub org: OrgSettings,
}

/// `[org]` in config.toml: how organizations' keys are looked up. The defaults are the real world's: the
/// system's DNS servers, the root zone's DNSSEC keys, the Mozilla roots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    /// DNS servers (`ip:port`) to ask; empty: those of /etc/resolv.conf. Answers are validated here.
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    /// A file of DNSKEY records (zone-file form) trusted in place of the root zone's keys.
    #[serde(default)]
    pub trust_anchor_file: Option<PathBuf>,
    /// PEM files of certificate authorities trusted in place of the Mozilla roots.
    #[serde(default)]
    pub https_roots: Vec<PathBuf>,
    /// `"host" = "ip:port"`: where to reach a host's HTTPS instead of where its DNS points (tests).
    #[serde(default)]
    pub https_addrs: std::collections::BTreeMap<String, SocketAddr>,
}

impl OrgSettings {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The lookups these settings ask for (files read now).
    pub fn resolver_config(&self) -> Result<kith_org::OrgConfig, kith_org::SetupError> {
        let trust_anchor = match &self.trust_anchor_file {
            Some(path) => Some(
                fs::read_to_string(path)
                    .map_err(|e| kith_org::SetupError::AnchorFile(path.clone(), e.to_string()))?,
            ),
            None => None,
        };
        let https_roots = match self.https_roots.is_empty() {
            true => None,
            false => Some(kith_org::roots_from_pem_files(&self.https_roots)?),
        };
        Ok(kith_org::OrgConfig {
            dns_servers: self.dns_servers.clone(),
            trust_anchor,
            https_roots,
            https_addrs: self
                .https_addrs
                .iter()
                .map(|(h, a)| (h.clone(), *a))
                .collect(),
            ..Default::default()
        })
    }
}

impl Config {
    /// The mailbox limits this configuration sets.
    pub fn mailbox_quotas(&self) -> kith_core::mailbox::Quotas {
        // Saturating: a limit too large to count in bytes or seconds is no limit, not a small one (a
        // shift would drop its high bits) nor an overflow.
        kith_core::mailbox::Quotas {
            per_contact_bytes: self.mailbox_per_contact_mb.saturating_mul(1 << 20),
            per_contact_messages: self.mailbox_per_contact_messages,
            total_bytes: self.mailbox_total_mb.saturating_mul(1 << 20),
            total_messages: self.mailbox_total_messages,
            expiry_secs: self.mailbox_expiry_days.saturating_mul(24 * 3600),
        }
    }
}

fn default_mailbox_after() -> f64 {
    10.0
}

fn default_per_contact_messages() -> u64 {
    kith_core::mailbox::Quotas::default().per_contact_messages
}

fn default_per_contact_mb() -> u64 {
    kith_core::mailbox::Quotas::default().per_contact_bytes >> 20
}

fn default_total_messages() -> u64 {
    kith_core::mailbox::Quotas::default().total_messages
}

fn default_total_mb() -> u64 {
    kith_core::mailbox::Quotas::default().total_bytes >> 20
}

fn default_expiry_days() -> u64 {
    kith_core::mailbox::Quotas::default().expiry_secs / (24 * 3600)
}

fn default_device() -> String {
    "default".into()
}

fn default_true() -> bool {
    true
}

fn default_bootstrap() -> Vec<String> {
    kith_net::dht::DEFAULT_BOOTSTRAP
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_dht_bind() -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::LOCALHOST
}
fn default_period() -> u64 {
    24 * 60
}

/// The longest discovery period a configuration may set: a year, in minutes.
pub const MAX_PERIOD_MINUTES: u64 = 366 * 24 * 60;

/// What a running daemon leaves for the CLI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub api: SocketAddr,
}

/// The unlocked identity of a profile.
pub struct Identity {
    pub name: String,
    /// The account's secret key; None on an organization's gateway device, whose account key stays
    /// offline (the device holds only its own key and the certificate the account gave it).
    pub account: Option<AccountSecret>,
    pub account_key: AccountKey,
    pub device: DeviceSecret,
    pub device_cert: DeviceCert,
    /// A gateway device's card, signed by the account when the device was enrolled (it cannot sign one).
    pub gateway_card: Option<kith_core::ContactCard>,
    pub endpoint_secret: Zeroizing<[u8; 32]>,
}

/// The key the store of the profile whose account secret is `account` is encrypted under.
fn store_key_of(account: &AccountSecret) -> kith_store::StoreKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"kith store key v1");
    h.update(&account.to_bytes()[..]);
    kith_store::StoreKey::new(h.finalize().into())
}

/// The store key of a gateway device's profile: from its device secret (it holds no account secret).
fn gateway_store_key_of(device: &DeviceSecret) -> kith_store::StoreKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"kith gateway store key v1");
    h.update(&device.to_bytes()[..]);
    kith_store::StoreKey::new(h.finalize().into())
}

impl Identity {
    /// The key the profile's store is encrypted under: derived from the account secret, so the store is
    /// as well protected as the keys (by the passphrase, when the profile has one), a restored backup
    /// opens under it on a new device, and a new passphrase needs no re-encryption.
    pub fn store_key(&self) -> kith_store::StoreKey {
        match &self.account {
            Some(account) => store_key_of(account),
            None => gateway_store_key_of(&self.device),
        }
    }

    /// Whether this is an organization's gateway device (no account secret here).
    pub fn is_gateway_device(&self) -> bool {
        self.account.is_none()
    }

    /// The secret whose derivations are this profile's own: the account's, or a gateway device's.
    fn root_secret(&self) -> Zeroizing<[u8; 32]> {
        match &self.account {
            Some(a) => a.to_bytes(),
            None => self.device.to_bytes(),
        }
    }

    /// The contact key of `generation`: it opens the contacts-only part of our discovery records and
    /// travels in the card we give contacts. Derived, so only the generation is stored; removing a contact
    /// moves to the next generation, so the removed one can no longer read where we are.
    pub fn contact_key(&self, generation: u64) -> zeroize::Zeroizing<[u8; 32]> {
        use sha2::Digest;
        let secret = self.root_secret();
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        sha2::Sha256::new()
            .chain_update(b"kith contact key v1")
            .chain_update(&secret[..])
            .chain_update(generation.to_be_bytes())
            .finalize_into((&mut *key).into());
        key
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(Secret(..))")
    }
}

/// The public part of a profile, readable without the passphrase.
#[derive(Debug, Clone)]
pub struct PublicIdentity {
    pub name: String,
    pub account: AccountKey,
    pub device: DeviceKey,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub home: PathBuf,
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ProfileError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))
}

/// The secret keys as the identity file keeps them: encrypted under `passphrase` (Argon2id, then
/// XChaCha20-Poly1305), or plain when there is none.
fn seal_secrets(plain: &[u8], passphrase: Option<&str>) -> Result<SecretBlob, ProfileError> {
    let Some(pass) = passphrase.filter(|p| !p.is_empty()) else {
        return Ok(SecretBlob::Plain {
            keys: hex::encode(plain),
        });
    };
    let mut rng = rand::rng();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut nonce);
    let key = derive_key(pass, &salt, M_COST, T_COST, P_COST)?;
    let cipher =
        XChaCha20Poly1305::new_from_slice(&key[..]).map_err(|_| ProfileError::WrongPassphrase)?;
    let ct = cipher
        .encrypt(&XNonce::from(nonce), plain)
        .map_err(|_| ProfileError::Damaged {
            file: IDENTITY_FILE.into(),
            reason: "encryption failed".into(),
        })?;
    Ok(SecretBlob::Argon2idXchacha20poly1305 {
        m_cost: M_COST,
        t_cost: T_COST,
        p_cost: P_COST,
        salt: hex::encode(salt),
        nonce: hex::encode(nonce),
        ciphertext: hex::encode(ct),
    })
}

const M_COST: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

fn derive_key(
    passphrase: &str,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, ProfileError> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| ProfileError::Damaged {
        file: IDENTITY_FILE.into(),
        reason: format!("bad argon2 parameters: {e}"),
    })?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key[..])
        .map_err(|e| ProfileError::Damaged {
            file: IDENTITY_FILE.into(),
            reason: format!("argon2: {e}"),
        })?;
    Ok(key)
}

fn unhex(file: &Path, s: &str) -> Result<Vec<u8>, ProfileError> {
    hex::decode(s).map_err(|_| ProfileError::Damaged {
        file: file.to_owned(),
        reason: "not hexadecimal".into(),
    })
}

impl Profile {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into() }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.home.join(file)
    }

    pub fn exists(&self) -> bool {
        self.path(IDENTITY_FILE).exists()
    }

    /// Creates a new profile. `passphrase` (non-empty) encrypts the secret keys. The node listens (QUIC and
    /// DHT) on every interface, or with `local` on 127.0.0.1 only (tests, demos, trying kith on one machine).
    pub fn init(
        &self,
        name: &str,
        passphrase: Option<&str>,
        listen_port: u16,
        local: bool,
    ) -> Result<PublicIdentity, ProfileError> {
        let account = AccountSecret::generate(&mut rand::rng());
        let public = account.public();
        let device = self.create(name, passphrase, listen_port, local, Some(account))?;
        Ok(PublicIdentity {
            name: name.to_owned(),
            account: public,
            device,
        })
    }

    /// Creates the profile of an organization's gateway device: a device key and nothing of the
    /// account's. It runs once its enrollment (`kith device request`, [`Profile::enrollment`]) has been
    /// granted by the account ([`Profile::install_grant`]). Returns the device key.
    pub fn init_gateway(
        &self,
        name: &str,
        passphrase: Option<&str>,
        listen_port: u16,
        local: bool,
    ) -> Result<DeviceKey, ProfileError> {
        kith_core::org::roster::check_gateway_name(name)
            .map_err(|e| ProfileError::Name(e.to_string()))?;
        self.create(name, passphrase, listen_port, local, None)
    }

    fn create(
        &self,
        name: &str,
        passphrase: Option<&str>,
        listen_port: u16,
        local: bool,
        account: Option<AccountSecret>,
    ) -> Result<DeviceKey, ProfileError> {
        kith_core::card::check_name(name).map_err(|e| ProfileError::Name(e.to_string()))?;
        if self.exists() {
            return Err(ProfileError::Exists(self.home.clone()));
        }
        fs::create_dir_all(&self.home).map_err(io(&self.home))?;
        fs::set_permissions(&self.home, fs::Permissions::from_mode(0o700))
            .map_err(io(&self.home))?;
        let mut rng = rand::rng();
        let device = DeviceSecret::generate(&mut rng);
        let mut endpoint = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut endpoint[..]);
        let endpoint_public = iroh::SecretKey::from_bytes(&endpoint).public();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);

        let mut plain = Zeroizing::new(Vec::with_capacity(96));
        if let Some(account) = &account {
            plain.extend_from_slice(&account.to_bytes()[..]);
        }
        plain.extend_from_slice(&device.to_bytes()[..]);
        plain.extend_from_slice(&endpoint[..]);
        let secrets = seal_secrets(&plain, passphrase)?;
        let file = IdentityFile {
            version: 1,
            name: name.to_owned(),
            account: account
                .as_ref()
                .map(|a| hex::encode(a.public().as_bytes()))
                .unwrap_or_default(),
            device: hex::encode(device.public().as_bytes()),
            endpoint: hex::encode(endpoint_public.as_bytes()),
            device_cert: account
                .as_ref()
                .map(|a| {
                    let cert = DeviceCert::issue(a, device.public(), created);
                    hex::encode(postcard::to_allocvec(&cert).unwrap_or_default())
                })
                .unwrap_or_default(),
            secrets,
            gateway: account.is_none().then_some(GatewayFile { grant: None }),
        };
        let mut token = [0u8; 32];
        rng.fill_bytes(&mut token);
        let config = Config {
            listen: SocketAddr::from((
                if local { [127, 0, 0, 1] } else { [0, 0, 0, 0] },
                listen_port,
            )),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap: default_bootstrap(),
            dht_bind: if local {
                std::net::Ipv4Addr::LOCALHOST
            } else {
                std::net::Ipv4Addr::UNSPECIFIED
            },
            dht_server: false,
            period_minutes: default_period(),
            publish_direct: false,
            relays: vec![],
            relay_only: false,
            lan_discovery: true,
            accept_requests: true,
            audio_input: default_device(),
            audio_output: default_device(),
            mailbox_after_secs: default_mailbox_after(),
            mailbox_per_contact_messages: default_per_contact_messages(),
            mailbox_per_contact_mb: default_per_contact_mb(),
            mailbox_total_messages: default_total_messages(),
            mailbox_total_mb: default_total_mb(),
            mailbox_expiry_days: default_expiry_days(),
            org: OrgSettings::default(),
        };
        write_private(&self.path(TOKEN_FILE), hex::encode(token).as_bytes())?;
        let config_text = format!(
            "# kith profile configuration (TOML). Settings:\n\
             #   listen          UDP address of the QUIC endpoint (the port is kept so contact cards stay valid)\n\
             #   api_listen      TCP address of the local control API (token in ./api-token)\n\
             #   bootstrap       Mainline DHT nodes to join through; the routing table saved at exit is used too\n\
             #   dht_bind        local IPv4 address of the DHT node; dht_server: answer other nodes' queries\n\
             #   period_minutes  length of a discovery period\n\
             #   publish_direct  put your IP addresses in your discovery record (anyone with your address reads it)\n\
             #   relays          relay servers (URLs) to be reachable through; relay_only: never use a direct path\n\
             #   lan_discovery   ask the local network for DHT nodes (when dht_bind is not loopback)\n\
             #   accept_requests take contact requests from people who know only your address (off: only\n\
             #                   contacts can reach you or learn whether you are online)\n\
             #   audio_input, audio_output  sound cards for calls by name (`kith audio devices`; \"default\" or \"none\")\n\
             #   mailbox_after_secs  how long a message waits for a direct delivery before it also goes to\n\
             #                   the contact's mailboxes\n\
             #   mailbox_per_contact_messages, mailbox_per_contact_mb, mailbox_total_messages, mailbox_total_mb,\n\
             #   mailbox_expiry_days  limits of the mailboxes you keep for contacts (`kith mailbox host`)\n{}",
            toml::to_string(&config).unwrap_or_default()
        );
        write_private(&self.path(CONFIG_FILE), config_text.as_bytes())?;
        // The store is made now, so that a daemon never takes a missing store for a new profile.
        let store_key = match &account {
            Some(a) => store_key_of(a),
            None => gateway_store_key_of(&device),
        };
        kith_store::Store::open_with(&self.path(DB_FILE), Some(&store_key), true).map_err(|e| {
            ProfileError::Damaged {
                file: self.path(DB_FILE),
                reason: e.to_string(),
            }
        })?;
        let json = serde_json::to_vec_pretty(&file).unwrap_or_default();
        // The identity file is written last: its presence is what marks a complete profile.
        write_private(&self.path(IDENTITY_FILE), &json)?;
        Ok(device.public())
    }

    /// What a gateway device sends the organization's admin to be enrolled: its device key, its fixed
    /// endpoint, and where it is reached (`direct`: the addresses customers dial; `relays`).
    pub fn enrollment(
        &self,
        passphrase: Option<&str>,
        direct: Vec<SocketAddr>,
        relays: Vec<String>,
    ) -> Result<kith_core::org::roster::Enrollment, ProfileError> {
        let f = self.read_identity_file()?;
        if f.gateway.is_none() {
            return Err(ProfileError::Gateway(
                "this profile is a person's, not a gateway device's (make one with `kith init --gateway`)"
                    .into(),
            ));
        }
        let plain = self.secret_bytes(&f, passphrase)?;
        let device = DeviceSecret::from_bytes(&plain[..32].try_into().unwrap_or([0; 32]));
        let gateway = kith_core::org::roster::Gateway {
            name: f.name.clone(),
            device: device.public(),
            endpoint: kith_core::EndpointKey::from_seed(&device.gateway_endpoint_seed()),
            direct,
            relays,
        };
        kith_core::org::roster::Enrollment::issue(&device, gateway)
            .map_err(|e| ProfileError::Gateway(e.to_string()))
    }

    /// Installs the grant the organization's admin made from this device's enrollment: the device
    /// certificate and the account's card. Returns the domain and the account. A later grant (the same
    /// device enrolled again) replaces the earlier one.
    pub fn install_grant(&self, text: &str) -> Result<(String, AccountKey), ProfileError> {
        let mut f = self.read_identity_file()?;
        let path = self.path(IDENTITY_FILE);
        let Some(gateway) = f.gateway.as_mut() else {
            return Err(ProfileError::Gateway(
                "this profile is a person's, not a gateway device's: a grant is for a gateway device"
                    .into(),
            ));
        };
        let device = DeviceKey::from_bytes(unhex(&path, &f.device)?.try_into().map_err(|_| {
            ProfileError::Damaged {
                file: path.clone(),
                reason: "bad device key".into(),
            }
        })?)
        .map_err(|_| ProfileError::Damaged {
            file: path.clone(),
            reason: "bad device key".into(),
        })?;
        let (grant, _) = kith_core::org::roster::Grant::decode(text, &device)
            .map_err(|e| ProfileError::Gateway(format!("the grant is refused: {e}")))?;
        if !f.account.is_empty() && f.account != hex::encode(grant.cert.account.as_bytes()) {
            return Err(ProfileError::Gateway(
                "this grant is another organization's account than the one this device was enrolled \
                 with: make a new gateway profile for it"
                    .into(),
            ));
        }
        gateway.grant = Some(text.trim().to_owned());
        f.account = hex::encode(grant.cert.account.as_bytes());
        f.device_cert = hex::encode(postcard::to_allocvec(&grant.cert).unwrap_or_default());
        let json = serde_json::to_vec_pretty(&f).unwrap_or_default();
        write_private(&path, &json)?;
        Ok((grant.domain, grant.cert.account))
    }

    fn read_identity_file(&self) -> Result<IdentityFile, ProfileError> {
        let path = self.path(IDENTITY_FILE);
        if !path.exists() {
            return Err(ProfileError::Missing(self.home.clone()));
        }
        let bytes = fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| ProfileError::Damaged {
            file: path,
            reason: e.to_string(),
        })
    }

    pub fn public(&self) -> Result<PublicIdentity, ProfileError> {
        let f = self.read_identity_file()?;
        if f.account.is_empty() && f.gateway.is_some() {
            return Err(ProfileError::NotEnrolled(self.home.clone()));
        }
        let path = self.path(IDENTITY_FILE);
        let key = |s: &str| -> Result<[u8; 32], ProfileError> {
            unhex(&path, s)?
                .try_into()
                .map_err(|_| ProfileError::Damaged {
                    file: path.clone(),
                    reason: "bad key length".into(),
                })
        };
        let damaged = |r: &str| ProfileError::Damaged {
            file: path.clone(),
            reason: r.into(),
        };
        Ok(PublicIdentity {
            name: f.name.clone(),
            account: AccountKey::from_bytes(key(&f.account)?)
                .map_err(|_| damaged("bad account key"))?,
            device: DeviceKey::from_bytes(key(&f.device)?)
                .map_err(|_| damaged("bad device key"))?,
        })
    }

    /// Opens this profile's store (for tools beside a running daemon, tests and benchmarks), unlocking the
    /// keys with `passphrase` to derive the store's key.
    pub fn open_store(&self, passphrase: Option<&str>) -> Result<kith_store::Store, ProfileError> {
        let id = self.unlock(passphrase)?;
        kith_store::Store::open_with(&self.path(DB_FILE), Some(&id.store_key()), false).map_err(
            |e| ProfileError::Damaged {
                file: self.path(DB_FILE),
                reason: e.to_string(),
            },
        )
    }

    /// Whether the secret keys need a passphrase.
    pub fn is_encrypted(&self) -> Result<bool, ProfileError> {
        Ok(matches!(
            self.read_identity_file()?.secrets,
            SecretBlob::Argon2idXchacha20poly1305 { .. }
        ))
    }

    /// Replaces the passphrase that encrypts the secret keys (`new` None or empty: none, the keys are
    /// then protected by the file's mode alone). `old` must unlock them first. Returns whether the keys
    /// are encrypted now. The file is replaced in one rename: a crash leaves the old one or the new one.
    pub fn change_passphrase(
        &self,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<bool, ProfileError> {
        let mut f = self.read_identity_file()?;
        let plain = self.secret_bytes(&f, old)?;
        f.secrets = seal_secrets(&plain, new)?;
        let json = serde_json::to_vec_pretty(&f).unwrap_or_default();
        write_private(&self.path(IDENTITY_FILE), &json)?;
        Ok(matches!(
            f.secrets,
            SecretBlob::Argon2idXchacha20poly1305 { .. }
        ))
    }

    /// The secret keys of the identity file, decrypted with `passphrase` if they are encrypted.
    fn secret_bytes(
        &self,
        f: &IdentityFile,
        passphrase: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProfileError> {
        let path = self.path(IDENTITY_FILE);
        let plain: Zeroizing<Vec<u8>> = match &f.secrets {
            SecretBlob::Plain { keys } => Zeroizing::new(unhex(&path, keys)?),
            SecretBlob::Argon2idXchacha20poly1305 {
                m_cost,
                t_cost,
                p_cost,
                salt,
                nonce,
                ciphertext,
            } => {
                let pass = passphrase
                    .filter(|p| !p.is_empty())
                    .ok_or(ProfileError::Locked)?;
                let key = derive_key(pass, &unhex(&path, salt)?, *m_cost, *t_cost, *p_cost)?;
                let nonce: [u8; 24] =
                    unhex(&path, nonce)?
                        .try_into()
                        .map_err(|_| ProfileError::Damaged {
                            file: path.clone(),
                            reason: "bad nonce".into(),
                        })?;
                let cipher = XChaCha20Poly1305::new_from_slice(&key[..])
                    .map_err(|_| ProfileError::WrongPassphrase)?;
                Zeroizing::new(
                    cipher
                        .decrypt(&XNonce::from(nonce), &unhex(&path, ciphertext)?[..])
                        .map_err(|_| ProfileError::WrongPassphrase)?,
                )
            }
        };
        let expected = if f.gateway.is_some() { 64 } else { 96 };
        if plain.len() != expected {
            return Err(ProfileError::Damaged {
                file: path,
                reason: "wrong secret length".into(),
            });
        }
        Ok(plain)
    }

    /// Unlocks the secret keys.
    pub fn unlock(&self, passphrase: Option<&str>) -> Result<Identity, ProfileError> {
        let f = self.read_identity_file()?;
        let path = self.path(IDENTITY_FILE);
        let plain = self.secret_bytes(&f, passphrase)?;
        let part =
            |i: usize| -> [u8; 32] { plain[i * 32..(i + 1) * 32].try_into().unwrap_or([0; 32]) };
        let damaged = |reason: &str| ProfileError::Damaged {
            file: path.clone(),
            reason: reason.into(),
        };
        if f.gateway.is_some() && f.account.is_empty() {
            return Err(ProfileError::NotEnrolled(self.home.clone()));
        }
        // A gateway device's secrets are its device's and endpoint's; a person's start with the account's.
        let (account, first) = match f.gateway {
            Some(_) => (None, 0),
            None => (Some(AccountSecret::from_bytes(&part(0))), 1),
        };
        let device = DeviceSecret::from_bytes(&part(first));
        let cert_bytes = unhex(&path, &f.device_cert)?;
        let device_cert: DeviceCert =
            postcard::from_bytes(&cert_bytes).map_err(|_| damaged("bad device certificate"))?;
        let account_key = device_cert.account;
        if account.as_ref().is_some_and(|a| a.public() != account_key)
            || device_cert.device != device.public()
            || device_cert.verify().is_err()
        {
            return Err(damaged("device certificate does not match the keys"));
        }
        // The public keys the file shows (what `public` reads without the passphrase) are the keys'.
        let shown = |s: &str| unhex(&path, s).ok();
        if shown(&f.account).as_deref() != Some(&account_key.as_bytes()[..])
            || shown(&f.device).as_deref() != Some(&device.public().as_bytes()[..])
        {
            return Err(damaged(
                "the public keys it shows do not match its secret keys",
            ));
        }
        let gateway_card = match f.gateway.as_ref().and_then(|g| g.grant.as_deref()) {
            Some(grant) => Some(
                kith_core::org::roster::Grant::decode(grant, &device.public())
                    .map_err(|e| damaged(&format!("its grant: {e}")))?
                    .1,
            ),
            None => None,
        };
        Ok(Identity {
            name: f.name,
            account,
            account_key,
            device,
            device_cert,
            gateway_card,
            endpoint_secret: Zeroizing::new(part(first + 1)),
        })
    }

    pub fn config(&self) -> Result<Config, ProfileError> {
        let path = self.path(CONFIG_FILE);
        if !self.exists() {
            return Err(ProfileError::Missing(self.home.clone()));
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let config: Config = toml::from_str(&text).map_err(|e| ProfileError::Damaged {
            file: path.clone(),
            reason: e.to_string(),
        })?;
        // Values the daemon cannot use are refused here, with their name, rather than panicking later
        // (a wait that is no duration, a period whose length in seconds overflows).
        let invalid = |reason: String| ProfileError::Damaged {
            file: path.clone(),
            reason,
        };
        if std::time::Duration::try_from_secs_f64(config.mailbox_after_secs.max(0.0)).is_err() {
            return Err(invalid(format!(
                "mailbox_after_secs = {}: give a number of seconds",
                config.mailbox_after_secs
            )));
        }
        if config.period_minutes > MAX_PERIOD_MINUTES {
            return Err(invalid(format!(
                "period_minutes = {}: at most {MAX_PERIOD_MINUTES} (a year)",
                config.period_minutes
            )));
        }
        Ok(config)
    }

    pub fn token(&self) -> Result<String, ProfileError> {
        let path = self.path(TOKEN_FILE);
        if !self.exists() {
            return Err(ProfileError::Missing(self.home.clone()));
        }
        Ok(fs::read_to_string(&path)
            .map_err(io(&path))?
            .trim()
            .to_owned())
    }

    pub fn daemon_info(&self) -> Option<DaemonInfo> {
        let bytes = fs::read(self.path(DAEMON_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn write_daemon_info(&self, info: &DaemonInfo) -> Result<(), ProfileError> {
        write_private(
            &self.path(DAEMON_FILE),
            &serde_json::to_vec(info).unwrap_or_default(),
        )
    }

    /// DHT nodes saved at the last shutdown (empty if none).
    pub fn saved_dht_nodes(&self) -> Vec<String> {
        fs::read(self.path(DHT_NODES_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_dht_nodes(&self, nodes: &[String]) -> Result<(), ProfileError> {
        write_private(
            &self.path(DHT_NODES_FILE),
            &serde_json::to_vec(nodes).unwrap_or_default(),
        )
    }

    pub fn remove_daemon_info(&self) {
        let _ = fs::remove_file(self.path(DAEMON_FILE));
    }

    /// Takes the daemon lock; held until the returned value is dropped (or the process dies).
    pub fn lock(&self) -> Result<ProfileLock, ProfileError> {
        if !self.exists() {
            return Err(ProfileError::Missing(self.home.clone()));
        }
        let path = self.path(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        if file.try_lock().is_err() {
            let pid = self
                .daemon_info()
                .map(|d| d.pid.to_string())
                .unwrap_or_else(|| "unknown".into());
            return Err(ProfileError::InUse(self.home.clone(), pid));
        }
        Ok(ProfileLock { _file: file })
    }
}

/// The first bytes of a backup file.
const BACKUP_MAGIC: &[u8] = b"kith backup v1\n";

/// What a backup holds (encrypted as a whole, see [`Profile::backup`]).
#[derive(Serialize, Deserialize)]
struct BackupBody {
    created_unix: u64,
    /// identity.json as it was (its keys encrypted under the profile's passphrase, if it had one).
    identity: String,
    config: String,
    /// A snapshot of kith.db: contacts, history, outbox, mailbox state.
    store: Vec<u8>,
}

/// What `kith backup` wrote.
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub file: PathBuf,
    pub bytes: u64,
    pub store_bytes: u64,
}

/// What `kith restore` did.
#[derive(Debug, Serialize)]
pub struct RestoreSummary {
    pub address: String,
    pub name: String,
    /// When the backup was made (Unix seconds).
    pub backup_created_unix: u64,
    /// Undelivered messages of the backup that go out again from the restored profile.
    pub requeued: u64,
    /// Where the files of the profile that was there before were moved (nothing is deleted).
    pub replaced: Option<PathBuf>,
}

impl Profile {
    /// Writes a backup of the whole profile to `file`: the identity (keys), the configuration and a
    /// consistent snapshot of the store (also while the daemon runs), encrypted as one piece under
    /// `passphrase` (Argon2id, XChaCha20-Poly1305). If the profile's keys are encrypted, `passphrase`
    /// must be the profile's. The file is written in one rename, mode 0600.
    pub fn backup(&self, file: &Path, passphrase: &str) -> Result<BackupSummary, ProfileError> {
        if passphrase.is_empty() {
            return Err(ProfileError::Locked);
        }
        let f = self.read_identity_file()?;
        if matches!(f.secrets, SecretBlob::Argon2idXchacha20poly1305 { .. }) {
            // The same passphrase for both: a restore needs one, not two.
            self.secret_bytes(&f, Some(passphrase))?;
        }
        let identity =
            fs::read_to_string(self.path(IDENTITY_FILE)).map_err(io(&self.path(IDENTITY_FILE)))?;
        let config =
            fs::read_to_string(self.path(CONFIG_FILE)).map_err(io(&self.path(CONFIG_FILE)))?;
        let snapshot = self.path("kith.db.backup-snapshot");
        let _ = fs::remove_file(&snapshot);
        let plain_keys = self.secret_bytes(&f, Some(passphrase))?;
        let account = AccountSecret::from_bytes(&plain_keys[..32].try_into().unwrap_or([0; 32]));
        let taken = kith_store::Store::snapshot(
            &self.path(DB_FILE),
            &snapshot,
            Some(&store_key_of(&account)),
        );
        let store = taken.map_err(|e| ProfileError::Damaged {
            file: self.path(DB_FILE),
            reason: e.to_string(),
        });
        let store = store.and_then(|()| fs::read(&snapshot).map_err(io(&snapshot)));
        let _ = fs::remove_file(&snapshot);
        let store = store?;
        let body = BackupBody {
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            identity,
            config,
            store,
        };
        let plain =
            Zeroizing::new(
                postcard::to_allocvec(&body).map_err(|e| ProfileError::Damaged {
                    file: self.path(DB_FILE),
                    reason: e.to_string(),
                })?,
            );
        let mut rng = rand::rng();
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        let key = derive_key(passphrase, &salt, M_COST, T_COST, P_COST)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key[..])
            .map_err(|_| ProfileError::WrongPassphrase)?;
        let ct = cipher
            .encrypt(&XNonce::from(nonce), &plain[..])
            .map_err(|_| ProfileError::Damaged {
                file: file.to_owned(),
                reason: "encryption failed".into(),
            })?;
        let mut out = Vec::with_capacity(BACKUP_MAGIC.len() + 40 + ct.len());
        out.extend_from_slice(BACKUP_MAGIC);
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        write_private(file, &out)?;
        Ok(BackupSummary {
            file: file.to_owned(),
            bytes: out.len() as u64,
            store_bytes: body.store.len() as u64,
        })
    }

    /// Restores the backup `file` into this profile's folder, as a new device of the same account: keys,
    /// contacts, history and undelivered messages come back; the device key, its endpoints and its
    /// ratchet state are new (see `Store::move_to_new_device`), so that contacts who saw the old device
    /// after the backup take the restored one's messages as new, not as duplicates. A profile already in
    /// the folder is moved aside into `replaced-by-restore-<time>/` (refused while its daemon runs).
    pub fn restore(&self, file: &Path, passphrase: &str) -> Result<RestoreSummary, ProfileError> {
        let bytes = fs::read(file).map_err(io(file))?;
        let damaged = |reason: &str| ProfileError::Damaged {
            file: file.to_owned(),
            reason: reason.into(),
        };
        let rest = bytes
            .strip_prefix(BACKUP_MAGIC)
            .ok_or_else(|| damaged("not a kith backup"))?;
        if rest.len() < 40 + 16 {
            return Err(damaged("truncated"));
        }
        let (salt, rest) = rest.split_at(16);
        let (nonce, ct) = rest.split_at(24);
        let key = derive_key(passphrase, salt, M_COST, T_COST, P_COST)?;
        let cipher = XChaCha20Poly1305::new_from_slice(&key[..])
            .map_err(|_| ProfileError::WrongPassphrase)?;
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| damaged("truncated"))?;
        // A wrong passphrase and a damaged file look the same to an AEAD: say both.
        let plain = Zeroizing::new(
            cipher
                .decrypt(&XNonce::from(nonce), ct)
                .map_err(|_| ProfileError::WrongPassphraseOrDamaged(file.to_owned()))?,
        );
        let body: BackupBody =
            postcard::from_bytes(&plain).map_err(|_| damaged("its contents do not parse"))?;
        let mut f: IdentityFile = serde_json::from_str(&body.identity)
            .map_err(|_| damaged("its identity does not parse"))?;
        if f.gateway.is_some() {
            return Err(ProfileError::Gateway(
                "this is the backup of an organization's gateway device: a gateway is not restored \
                 but made anew (`kith init --gateway`) and enrolled, and the lost one revoked \
                 (`kith org revoke`)"
                    .into(),
            ));
        }
        let encrypted = matches!(f.secrets, SecretBlob::Argon2idXchacha20poly1305 { .. });
        let secrets = self.secret_bytes(&f, encrypted.then_some(passphrase))?;
        let account = AccountSecret::from_bytes(&secrets[..32].try_into().unwrap_or([0; 32]));
        let old_device = DeviceSecret::from_bytes(&secrets[32..64].try_into().unwrap_or([0; 32]));
        if hex::encode(account.public().as_bytes()) != f.account {
            return Err(damaged("its keys do not match its address"));
        }

        // Make room: the profile there now (if any) moves aside, whole.
        fs::create_dir_all(&self.home).map_err(io(&self.home))?;
        fs::set_permissions(&self.home, fs::Permissions::from_mode(0o700))
            .map_err(io(&self.home))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let present: Vec<&str> = [
            IDENTITY_FILE,
            CONFIG_FILE,
            TOKEN_FILE,
            DB_FILE,
            "kith.db-wal",
            "kith.db-shm",
            DHT_NODES_FILE,
            DAEMON_FILE,
        ]
        .into_iter()
        .filter(|n| self.path(n).exists())
        .collect();
        let _lock = if self.exists() {
            Some(self.lock()?)
        } else {
            None
        };
        let replaced = if present.is_empty() {
            None
        } else {
            let aside = self.path(&format!("replaced-by-restore-{now}"));
            fs::create_dir(&aside).map_err(io(&aside))?;
            for n in &present {
                fs::rename(self.path(n), aside.join(n)).map_err(io(&self.path(n)))?;
            }
            Some(aside)
        };

        // A new device of the same account.
        let mut rng = rand::rng();
        let device = DeviceSecret::generate(&mut rng);
        let mut endpoint = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut endpoint[..]);
        let cert = DeviceCert::issue(&account, device.public(), now);
        let mut plain_keys = Zeroizing::new(Vec::with_capacity(96));
        plain_keys.extend_from_slice(&account.to_bytes()[..]);
        plain_keys.extend_from_slice(&device.to_bytes()[..]);
        plain_keys.extend_from_slice(&endpoint[..]);
        f.device = hex::encode(device.public().as_bytes());
        f.endpoint = hex::encode(iroh::SecretKey::from_bytes(&endpoint).public().as_bytes());
        f.device_cert = hex::encode(postcard::to_allocvec(&cert).unwrap_or_default());
        f.secrets = seal_secrets(&plain_keys, encrypted.then_some(passphrase))?;

        let db = self.path(DB_FILE);
        write_private(&db, &body.store)?;
        let requeued = kith_store::Store::open_with(&db, Some(&store_key_of(&account)), false)
            .and_then(|mut store| store.move_to_new_device(&old_device.public(), &device.public()))
            .map_err(|e| ProfileError::Damaged {
                file: file.to_owned(),
                reason: format!("its store: {e}"),
            })?;
        write_private(&self.path(CONFIG_FILE), body.config.as_bytes())?;
        let mut token = [0u8; 32];
        rng.fill_bytes(&mut token);
        write_private(&self.path(TOKEN_FILE), hex::encode(token).as_bytes())?;
        let json = serde_json::to_vec_pretty(&f).unwrap_or_default();
        // Last, as at init: the identity file marks a complete profile.
        write_private(&self.path(IDENTITY_FILE), &json)?;
        Ok(RestoreSummary {
            address: kith_core::Address::new(account.public()).to_string(),
            name: f.name,
            backup_created_unix: body.created_unix,
            requeued,
            replaced,
        })
    }
}

/// Holds the profile lock.
pub struct ProfileLock {
    _file: fs::File,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21, point 8: the contact key is a secret shared with contacts only; every copy the profile
    /// derives is wiped when dropped (a plain array before).
    #[test]
    fn the_contact_key_is_wiped_on_drop() {
        fn wiped<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path().join("a"));
        p.init("Alice", None, 4000, true).unwrap();
        let id = p.unlock(None).unwrap();
        let key = id.contact_key(3);
        wiped(&key);
        assert_ne!(*key, *id.contact_key(4), "each generation has its own key");
    }

    #[test]
    fn init_unlock_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path().join("a"));
        let public = p.init("Alice", Some("correct horse"), 4000, true).unwrap();
        assert!(matches!(
            p.init("Alice", None, 4000, true),
            Err(ProfileError::Exists(_))
        ));
        assert!(matches!(p.unlock(None), Err(ProfileError::Locked)));
        assert!(matches!(
            p.unlock(Some("wrong")),
            Err(ProfileError::WrongPassphrase)
        ));
        let id = p.unlock(Some("correct horse")).unwrap();
        assert_eq!(id.account.as_ref().unwrap().public(), public.account);
        let mode = fs::metadata(p.path(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(p.config().unwrap().listen.port(), 4000);
        // The secret keys are not in the file in clear.
        let text = fs::read_to_string(p.path(IDENTITY_FILE)).unwrap();
        assert!(!text.contains(&hex::encode(&id.account.as_ref().unwrap().to_bytes()[..])));
    }

    /// Caught by the `config` fuzz target (its check that the daemon can use what is accepted):
    /// `run_daemon` turns `mailbox_after_secs` into a `Duration`, which panics for infinity or seconds
    /// beyond its range; such a file is refused when read.
    #[test]
    fn a_config_whose_mailbox_wait_is_no_duration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path());
        p.init("Bob", None, 0, true).unwrap();
        let text = fs::read_to_string(p.path(CONFIG_FILE)).unwrap();
        for bad in ["inf", "1e300"] {
            let changed = text.replace(
                "mailbox_after_secs = 10.0",
                &format!("mailbox_after_secs = {bad}"),
            );
            assert_ne!(changed, text);
            fs::write(p.path(CONFIG_FILE), changed).unwrap();
            match p.config() {
                Err(ProfileError::Damaged { reason, .. }) => {
                    assert!(reason.contains("mailbox_after_secs"), "{reason}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Negative and NaN mean no wait, as before.
        for fine in ["-1.0", "nan"] {
            fs::write(
                p.path(CONFIG_FILE),
                text.replace(
                    "mailbox_after_secs = 10.0",
                    &format!("mailbox_after_secs = {fine}"),
                ),
            )
            .unwrap();
            assert!(p.config().is_ok(), "{fine}");
        }
    }

    /// Caught by the `config` fuzz target: the node counts a period in seconds (`period_minutes * 60`),
    /// which overflowed for a huge `period_minutes`.
    #[test]
    fn a_config_with_a_period_beyond_a_year_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path());
        p.init("Bob", None, 0, true).unwrap();
        let text = fs::read_to_string(p.path(CONFIG_FILE)).unwrap();
        for (minutes, ok) in [
            (MAX_PERIOD_MINUTES, true),
            (MAX_PERIOD_MINUTES + 1, false),
            (i64::MAX as u64, false),
        ] {
            let changed = text.replace(
                "period_minutes = 1440",
                &format!("period_minutes = {minutes}"),
            );
            assert_ne!(changed, text);
            fs::write(p.path(CONFIG_FILE), changed).unwrap();
            assert_eq!(p.config().is_ok(), ok, "{minutes}");
        }
    }

    /// Caught by the `config` fuzz target: `mailbox_expiry_days * 24 * 3600` overflowed (a panic in a
    /// debug build), and `mb << 20` dropped the high bits of a huge limit, making it a small one.
    #[test]
    fn huge_mailbox_limits_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path());
        p.init("Bob", None, 0, true).unwrap();
        let mut c = p.config().unwrap();
        c.mailbox_expiry_days = i64::MAX as u64;
        c.mailbox_per_contact_mb = 1 << 44;
        c.mailbox_total_mb = i64::MAX as u64;
        let q = c.mailbox_quotas();
        assert_eq!(q.expiry_secs, u64::MAX);
        assert_eq!(q.per_contact_bytes, u64::MAX);
        assert_eq!(q.total_bytes, u64::MAX);
    }

    /// Found by the `profile_files` fuzz target: an identity file whose public keys had been changed
    /// unlocked with its secret keys, so the daemon ran as one account while `public` (the CLI without
    /// the passphrase) showed another.
    #[test]
    fn an_identity_showing_other_public_keys_does_not_unlock() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path());
        let public = p.init("Bob", None, 0, true).unwrap();
        let text = fs::read_to_string(p.path(IDENTITY_FILE)).unwrap();
        let other = AccountSecret::from_bytes(&[5; 32]).public();
        // Only the field, not the same bytes inside the device certificate.
        let field = |name: &str, key: &[u8; 32]| format!("\"{name}\": \"{}\"", hex::encode(key));
        for (shown, by) in [
            (
                field("account", public.account.as_bytes()),
                field("account", other.as_bytes()),
            ),
            (
                field("device", public.device.as_bytes()),
                field("device", other.as_bytes()),
            ),
        ] {
            assert!(text.contains(&shown), "{text}");
            fs::write(p.path(IDENTITY_FILE), text.replace(&shown, &by)).unwrap();
            assert!(
                matches!(p.unlock(None), Err(ProfileError::Damaged { .. })),
                "{shown} shown as {by}"
            );
        }
        // Upper-case hex is the same key.
        fs::write(
            p.path(IDENTITY_FILE),
            text.replace(
                &field("account", public.account.as_bytes()),
                &format!(
                    "\"account\": \"{}\"",
                    hex::encode_upper(public.account.as_bytes())
                ),
            ),
        )
        .unwrap();
        assert!(p.unlock(None).is_ok());
    }

    #[test]
    fn plain_profile_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::new(dir.path());
        p.init("Bob", None, 0, true).unwrap();
        assert!(p.unlock(None).is_ok());
        let _held = p.lock().unwrap();
        assert!(matches!(p.lock(), Err(ProfileError::InUse(..))));
    }
}
