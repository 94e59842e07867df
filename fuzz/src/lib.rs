//! Fixtures shared by the fuzz targets: fixed keys (a layer that needs a key gets one), valid values to
//! seed the corpus with, and the seed writer.
//!
//! Seeds: `KITH_FUZZ_WRITE_SEEDS=<dir> cargo +nightly fuzz run <target> -- -runs=0` writes the target's seeds to
//! `<dir>/<target>/` (see docs/FUZZING.md); they are committed in `fuzz/seeds/`.

use kith_core::blind::{BlindedKey, BlindedSecret, PeriodNum, blind_secret};
use kith_core::identity::{
    AccountKey, AccountSecret, DeviceCert, DeviceSecret, EndpointCert, EndpointKey,
};
use kith_core::{ContactCard, Hints};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The fuzz targets' clock (Unix seconds): every fixture is valid at this time.
pub const NOW: u64 = 1_800_000_000;
/// Discovery periods of one day, as the daemon's default.
pub const PERIOD_MINUTES: u64 = 24 * 60;

/// Made once: key derivations and signatures cost more than most decodings.
macro_rules! once {
    ($t:ty, $e:expr) => {{
        static V: std::sync::LazyLock<$t> = std::sync::LazyLock::new(|| $e);
        &*V
    }};
}

pub fn account() -> &'static AccountSecret {
    once!(AccountSecret, AccountSecret::from_bytes(&[1; 32]))
}

/// A second account (the other side of a pair).
pub fn other_account() -> &'static AccountSecret {
    once!(AccountSecret, AccountSecret::from_bytes(&[7; 32]))
}

pub fn device() -> &'static DeviceSecret {
    once!(DeviceSecret, DeviceSecret::from_bytes(&[2; 32]))
}

pub fn endpoint() -> EndpointKey {
    *once!(EndpointKey, EndpointKey::from_seed(&[3; 32]))
}

pub fn device_cert() -> DeviceCert {
    once!(
        DeviceCert,
        DeviceCert::issue(account(), device().public(), NOW - 86_400)
    )
    .clone()
}

pub fn endpoint_cert() -> EndpointCert {
    once!(
        EndpointCert,
        EndpointCert::issue(device(), endpoint(), NOW - 3_600, NOW + 3_600)
    )
    .clone()
}

pub fn hints() -> Hints {
    Hints {
        endpoint: Some(endpoint()),
        direct: vec!["192.0.2.1:4433".parse().unwrap()],
        relays: vec!["https://relay.example/".into()],
        dht: vec!["[2001:db8::1]:6881".parse().unwrap()],
        contact_key: Some([9; 32]),
    }
}

pub fn card() -> ContactCard {
    once!(
        ContactCard,
        ContactCard::issue(account(), "Alice", hints(), NOW).unwrap()
    )
    .clone()
}

pub fn period() -> PeriodNum {
    kith_core::blind::period_at(NOW, PERIOD_MINUTES)
}

pub fn blinded_secret() -> &'static BlindedSecret {
    once!(
        BlindedSecret,
        blind_secret(account(), period(), PERIOD_MINUTES)
    )
}

pub fn blinded() -> BlindedKey {
    *once!(BlindedKey, blinded_secret().public())
}

/// The contact key whose contacts-only record part the targets open.
pub const CONTACT_KEY: [u8; 32] = [9; 32];

/// The key of a record's value, derived as `kith_core::record` does (private there): the record target
/// encrypts the fuzzer's plaintext with it, so the fuzzer gets past the AEAD. The target checks that the
/// record then decrypts, so a change of the derivation is noticed, not silently fuzzing the AEAD only.
pub fn record_key(account: &AccountKey, blinded: &BlindedKey) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"kith record key v1")
        .chain_update(account.as_bytes())
        .chain_update(blinded.as_bytes())
        .finalize()
        .into()
}

/// The key of a record's contacts-only part, derived as `kith_core::record` does (see [`record_key`]).
pub fn contacts_key(contact_key: &[u8; 32], blinded: &BlindedKey) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"kith record contacts key v1")
        .chain_update(contact_key)
        .chain_update(blinded.as_bytes())
        .finalize()
        .into()
}

/// `nonce | XChaCha20-Poly1305(key, plain, aad = blinded key)`, the layout of both record layers.
pub fn aead_seal(key: &[u8; 32], blinded: &BlindedKey, plain: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    let nonce = [5u8; 24];
    let cipher = XChaCha20Poly1305::new_from_slice(key).unwrap();
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: blinded.as_bytes(),
            },
        )
        .unwrap();
    let mut out = nonce.to_vec();
    out.extend(ct);
    out
}

/// A deterministic RNG for the targets (what they seal need not be secret).
pub fn rng() -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(42)
}

/// A directory of this process for targets that read files (the profile's).
/// On /dev/shm where there is one: the profile writes its files with fsync.
pub fn scratch_dir(name: &str) -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("kith-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `seeds()` to `$KITH_FUZZ_WRITE_SEEDS/<target>/`, if that variable is set (once, at start-up).
pub fn write_seeds(target: &str, seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::var_os("KITH_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    for s in seeds() {
        let name = hex(&Sha256::digest(&s)[..10]);
        std::fs::write(dir.join(name), &s).unwrap();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
