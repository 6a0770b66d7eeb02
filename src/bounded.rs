//! A map that stays bounded under a flood of distinct keys: split into shards (each its own
//! lock), each holding at most its share of the entries. A full shard first drops the
//! entries its owner calls stale, then, if every entry is live, an arbitrary one. Used for
//! rate-limit buckets and verified tokens.

use crate::hashing::fnv1a;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Keys come from clients (tokens, header values): hashed with ahash's randomly seeded
/// hasher, which resists collision floods like std's SipHash at a fraction of its cost on
/// long keys such as tokens.
type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

pub struct Bounded<V> {
    shards: Vec<Mutex<Map<V>>>,
    per_shard: usize,
}

/// One locked shard.
pub struct Shard<'a, V> {
    map: MutexGuard<'a, Map<V>>,
    limit: usize,
}

impl<V> Bounded<V> {
    /// At most `entries` entries (rounded to whole shards, at least one per shard).
    pub fn new(shards: usize, entries: usize) -> Bounded<V> {
        Bounded {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: (entries / shards).max(1),
        }
    }

    /// The shard for `key`, chosen by `hash_of` (the part of the key that spreads best).
    pub fn shard(&self, hash_of: &[u8]) -> Shard<'_, V> {
        let shard = &self.shards[fnv1a(hash_of) as usize % self.shards.len()];
        Shard {
            map: shard.lock().unwrap_or_else(|e| e.into_inner()),
            limit: self.per_shard,
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<V> Shard<'_, V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    pub fn remove(&mut self, key: &str) {
        self.map.remove(key);
    }

    /// Inserts, making room first: stale entries go, then (all live) an arbitrary one.
    pub fn insert(&mut self, key: &str, value: V, stale: impl Fn(&V) -> bool) {
        if self.map.len() >= self.limit && !self.map.contains_key(key) {
            self.map.retain(|_, v| !stale(v));
            if self.map.len() >= self.limit {
                if let Some(victim) = self.map.keys().next().cloned() {
                    self.map.remove(&victim);
                }
            }
        }
        self.map.insert(key.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_go_first_then_any_to_stay_bounded() {
        let map: Bounded<u32> = Bounded::new(1, 3);
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            map.shard(k.as_bytes()).insert(k, v, |_| false);
        }
        map.shard(b"d").insert("d", 4, |v| *v == 2);
        assert!(map.shard(b"b").get("b").is_none(), "the stale entry went");
        assert_eq!(map.shard(b"a").get("a"), Some(&1));
        map.shard(b"e").insert("e", 5, |_| false);
        assert_eq!(map.len(), 3, "every entry live: one went anyway");
        let flood: Bounded<u32> = Bounded::new(8, 100);
        for i in 0..10_000 {
            let key = format!("k{i}");
            flood.shard(key.as_bytes()).insert(&key, i, |_| false);
        }
        assert!(flood.len() <= 100, "{}", flood.len());
    }
}
