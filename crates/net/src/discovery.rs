//! The discovery seam: "where might this account be reached?".

use kith_core::{AccountKey, Hints};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers where an account might be reached. Implementations: contact-card hints (kith-node's store);
/// later the blinded DHT records and LAN discovery. Returns every candidate, best first.
pub trait Discovery: Send + Sync + 'static {
    fn resolve(&self, account: AccountKey) -> BoxFuture<'_, Vec<Hints>>;
}

/// A fixed table of hints, for tests and tools.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    table: RwLock<HashMap<AccountKey, Hints>>,
}

impl StaticDiscovery {
    pub fn insert(&self, account: AccountKey, hints: Hints) {
        self.table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(account, hints);
    }
}

impl Discovery for StaticDiscovery {
    fn resolve(&self, account: AccountKey) -> BoxFuture<'_, Vec<Hints>> {
        let found = self
            .table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&account)
            .cloned();
        Box::pin(async move { found.into_iter().collect() })
    }
}
