//! The profile's other files, read through `Profile` as the CLI and the daemon read them: the identity
//! file (`public`, `is_encrypted`, `unlock` without a passphrase), the API token, the daemon's info file
//! and the saved DHT nodes. (The configuration has its own target, `config`. An identity encrypted under
//! a passphrase is read up to the passphrase: its Argon2 at the profile's 64 MiB would make each input
//! take a second, and so is a backup's.)
//!
//! Input: a byte choosing the file, then its contents.
//! Invariants: an identity that unlocks has the public keys the file shows and a matching device
//! certificate; the token is read trimmed; the daemon info and the DHT nodes written back read the same.
#![no_main]

use kith_node::profile::{
    DAEMON_FILE, DHT_NODES_FILE, DaemonInfo, IDENTITY_FILE, Profile, TOKEN_FILE,
};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static PROFILE: LazyLock<Profile> =
    LazyLock::new(|| Profile::new(kith_fuzz::scratch_dir("profile")));

const FILES: [&str; 4] = [IDENTITY_FILE, TOKEN_FILE, DAEMON_FILE, DHT_NODES_FILE];

fn seeds() -> Vec<Vec<u8>> {
    let home = kith_fuzz::scratch_dir("profile-seed");
    let p = Profile::new(home.join("p"));
    p.init("Alice", None, 4433, true).unwrap();
    p.write_daemon_info(&DaemonInfo {
        pid: 42,
        api: "127.0.0.1:9000".parse().unwrap(),
    })
    .unwrap();
    p.save_dht_nodes(&["192.0.2.1:6881".into(), "[2001:db8::1]:6881".into()])
        .unwrap();
    let out = FILES
        .iter()
        .enumerate()
        .map(|(i, f)| [&[i as u8][..], &std::fs::read(p.path(f)).unwrap()].concat())
        .collect();
    let _ = std::fs::remove_dir_all(&home);
    out
}

fuzz_target!(
    init: { kith_fuzz::write_seeds("profile_files", seeds); },
    |data: &[u8]| {
    let Some((&i, contents)) = data.split_first() else { return };
    let p = &*PROFILE;
    let file = FILES[usize::from(i) % FILES.len()];
    if file != IDENTITY_FILE {
        // Everything but the identity file is read only in a complete profile: one with an identity.
        std::fs::write(p.path(IDENTITY_FILE), b"{}").unwrap();
    }
    std::fs::write(p.path(file), contents).unwrap();
    match file {
        IDENTITY_FILE => {
            let public = p.public();
            let encrypted = p.is_encrypted();
            if let Ok(id) = p.unlock(None) {
                let public = public.expect("an identity that unlocks has public keys");
                assert_eq!(public.account, id.account_key);
                assert_eq!(public.device, id.device.public());
                assert_eq!(public.name, id.name);
                assert_eq!(encrypted.ok(), Some(false));
                assert_eq!(id.device_cert.account, id.account_key);
                assert!(id.device_cert.verify().is_ok());
            }
        }
        TOKEN_FILE => {
            if let Ok(t) = p.token() {
                assert_eq!(t, t.trim());
                assert_eq!(Some(t.as_str()), std::str::from_utf8(contents).ok().map(str::trim));
            }
        }
        DAEMON_FILE => {
            if let Some(d) = p.daemon_info() {
                p.write_daemon_info(&d).unwrap();
                let again = p.daemon_info().expect("written daemon info is read back");
                assert_eq!((again.pid, again.api), (d.pid, d.api));
            }
        }
        _ => {
            let nodes = p.saved_dht_nodes();
            p.save_dht_nodes(&nodes).unwrap();
            assert_eq!(p.saved_dht_nodes(), nodes);
        }
    }
});
