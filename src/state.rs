//! State kept across reloads: breaker, health and DNS state of targets, rate-limit buckets,
//! the Redis link, cached JWKS. Each piece is keyed by its kind, its stable name in the
//! config and a hash of only the fields that define it, so a reload that changes anything
//! else (a timeout, a route) keeps it, and one that redefines it starts it afresh.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

type Key = (&'static str, String);
type Entry = (u64, Arc<dyn Any + Send + Sync>);

/// The state the active snapshot uses; a compile takes from it, a swap replaces it.
#[derive(Default)]
pub struct Stores {
    kept: Mutex<HashMap<Key, Entry>>,
}

/// The state one compiled snapshot holds, committed to [`Stores`] when it goes live.
#[derive(Default)]
pub struct Kept(HashMap<Key, Entry>);

impl Stores {
    /// Keeps exactly the state `kept` names; everything else is dropped.
    pub fn remember(&self, kept: &Kept) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = kept.0.clone();
    }

    /// A compile-time view that records what the new snapshot takes.
    pub fn begin(&self) -> StateCx<'_> {
        StateCx {
            stores: self,
            taken: Kept::default(),
        }
    }
}

/// Hands out state during one compile.
pub struct StateCx<'a> {
    stores: &'a Stores,
    taken: Kept,
}

impl StateCx<'_> {
    /// The stored `kind`/`name` state when `defining` hashes the same as when it was made,
    /// else a new one from `make`.
    pub fn keep<T: Any + Send + Sync>(
        &mut self,
        kind: &'static str,
        name: &str,
        defining: &impl Hash,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let key = (kind, name.to_string());
        let hash = hash_of(defining);
        let found = {
            let kept = self.stores.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.get(&key)
                .filter(|(h, _)| *h == hash)
                .and_then(|(_, v)| v.clone().downcast::<T>().ok())
        };
        let value = found.unwrap_or_else(|| Arc::new(make()));
        self.taken.0.insert(key, (hash, value.clone()));
        value
    }

    pub fn finish(self) -> Kept {
        self.taken
    }
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn state_is_reused_while_its_defining_fields_stay() {
        let stores = Stores::default();
        let mut cx = stores.begin();
        let first = cx.keep("limit", "a", &("10/s",), || AtomicU32::new(0));
        first.store(7, Ordering::Relaxed);
        stores.remember(&cx.finish());

        let mut cx = stores.begin();
        let same = cx.keep("limit", "a", &("10/s",), || AtomicU32::new(0));
        assert_eq!(
            same.load(Ordering::Relaxed),
            7,
            "unchanged definition keeps state"
        );
        let other = cx.keep("limit", "b", &("10/s",), || AtomicU32::new(0));
        assert_eq!(
            other.load(Ordering::Relaxed),
            0,
            "another name is other state"
        );
        stores.remember(&cx.finish());

        let mut cx = stores.begin();
        let redefined = cx.keep("limit", "a", &("20/s",), || AtomicU32::new(0));
        assert_eq!(
            redefined.load(Ordering::Relaxed),
            0,
            "a new definition starts afresh"
        );
    }

    #[test]
    fn an_uncommitted_compile_changes_nothing() {
        let stores = Stores::default();
        let mut cx = stores.begin();
        cx.keep("k", "a", &1, || AtomicU32::new(5));
        stores.remember(&cx.finish());
        let mut refused = stores.begin();
        refused.keep("k", "a", &2, || AtomicU32::new(9));
        drop(refused);
        let mut cx = stores.begin();
        assert_eq!(
            cx.keep("k", "a", &1, || AtomicU32::new(0))
                .load(Ordering::Relaxed),
            5
        );
    }
}
