//! The profile's `config.toml`, read as the daemon reads it (`Profile::config`, from the file).
//!
//! Invariants: a configuration that is accepted writes back (`toml::to_string`, as `kith init` writes
//! it) to text that is read as the same configuration; and the daemon can use what it accepts: the
//! values `run_daemon` and the node derive from it (mailbox quotas, the wait before mailboxes, the
//! period in seconds) are computed without overflow or panic.
#![no_main]

use kith_node::profile::{CONFIG_FILE, Config, IDENTITY_FILE, Profile};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use std::time::Duration;

static PROFILE: LazyLock<Profile> = LazyLock::new(|| {
    let p = Profile::new(kith_fuzz::scratch_dir("config"));
    // `config` reads only a complete profile: one with an identity file.
    std::fs::write(p.path(IDENTITY_FILE), b"{}").unwrap();
    p
});

fn read(text: &[u8]) -> Option<Config> {
    std::fs::write(PROFILE.path(CONFIG_FILE), text).unwrap();
    PROFILE.config().ok()
}

fn seeds() -> Vec<Vec<u8>> {
    let home = kith_fuzz::scratch_dir("config-seed");
    let p = Profile::new(home.join("p"));
    p.init("Alice", None, 4433, true).unwrap();
    let text = std::fs::read(p.path(CONFIG_FILE)).unwrap();
    let _ = std::fs::remove_dir_all(&home);
    vec![
        text,
        b"listen = \"0.0.0.0:1\"\napi_listen = \"127.0.0.1:0\"\nrelays = [\"https://relay.example/\"]\nmailbox_after_secs = 2.5\n".to_vec(),
    ]
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("config", seeds); },
    |data: &[u8]| {
    let Some(c) = read(data) else { return };
    let written = toml::to_string(&c).expect("an accepted configuration writes back");
    let again = read(written.as_bytes()).expect("a written configuration is read back");
    assert_eq!(format!("{again:?}"), format!("{c:?}"));
    // What run_daemon derives (crates/node/src/lib.rs) and the node computes from the period length.
    let _ = c.mailbox_quotas();
    assert!(
        Duration::try_from_secs_f64(c.mailbox_after_secs.max(0.0)).is_ok(),
        "mailbox_after_secs = {} is accepted but is no duration",
        c.mailbox_after_secs
    );
    let minutes = c.period_minutes.max(1);
    let secs = minutes.checked_mul(60).expect("the period in seconds overflows");
    let current = kith_fuzz::NOW / 60 / minutes;
    assert!((current + 1).checked_mul(secs).is_some(), "the next period's start overflows");
});
