//! A bounded cache whose entries expire.
//!
//! Resolving a user name costs a request from the same budget as the action itself, so ids are
//! cached; but an id can go stale (a user deleted and re-created gets a new one), so entries
//! expire. The bound keeps memory flat whatever the number of distinct users seen. Expiry reads
//! tokio's clock so that tests can move past a TTL without sleeping.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

pub struct TtlCache<K: Hash + Eq, V: Clone> {
    ttl: Duration,
    entries: Mutex<LruCache<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            ttl,
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<K, (V, Instant)>> {
        // Entries are plain values; a poisoned lock still holds a usable cache.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((v, expires)) if *expires > Instant::now() => Some(v.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        self.lock().put(key, (value, Instant::now() + self.ttl));
    }

    pub fn remove(&self, key: &K) {
        self.lock().pop(key);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl() {
        let c = TtlCache::new(10, Duration::from_secs(60));
        c.insert("a", 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(c.get(&"a"), Some(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.get(&"a"), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_evicts_the_least_recently_used() {
        let c = TtlCache::new(2, Duration::from_secs(60));
        c.insert("a", 1);
        c.insert("b", 2);
        assert_eq!(c.get(&"a"), Some(1));
        c.insert("c", 3);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&"b"), None);
        assert_eq!(c.get(&"a"), Some(1));
        c.remove(&"a");
        assert_eq!(c.get(&"a"), None);
    }
}
