//! Verified tokens kept until their `exp`, so a repeated token costs a lookup.

use super::*;

/// Verified tokens by their whole text, bounded, each until its `exp` (never later). An
/// entry verified with a key set fetched from a URL is dropped once its `kid` leaves the
/// set. The cache belongs to the compiled policy, so a reload starts it afresh.
pub struct TokenCache {
    entries: Bounded<Verified>,
}

pub(super) struct Verified {
    claims: Arc<Value>,
    /// Unix seconds of `exp`.
    expires: u64,
    kid: Option<String>,
}

pub(super) const CACHE_SHARDS: usize = 16;
pub(super) const CACHE_ENTRIES: usize = 10_000;

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(CACHE_ENTRIES)
    }
}

impl TokenCache {
    pub fn new(entries: usize) -> TokenCache {
        TokenCache {
            entries: Bounded::new(CACHE_SHARDS, entries),
        }
    }

    /// The shard of a token: by its signature's last bytes, as good as random.
    fn shard(&self, token: &str) -> crate::bounded::Shard<'_, Verified> {
        let tail = &token.as_bytes()[token.len().saturating_sub(16)..];
        self.entries.shard(tail)
    }

    /// The claims of a token verified before, while it is unexpired and (with `keys`, a
    /// fetched set) its key is still in the set.
    pub(super) fn get(
        &self,
        token: &str,
        now: u64,
        keys: Option<&HashMap<String, DecodingKey>>,
    ) -> Option<Arc<Value>> {
        let mut shard = self.shard(token);
        let hit = shard.get(token)?;
        let key_gone =
            keys.is_some_and(|k| hit.kid.as_ref().is_none_or(|kid| !k.contains_key(kid)));
        if now >= hit.expires || key_gone {
            shard.remove(token);
            return None;
        }
        Some(hit.claims.clone())
    }

    pub(super) fn put(&self, token: &str, claims: Arc<Value>, kid: Option<&str>, now: u64) {
        let Some(expires) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let verified = Verified {
            claims,
            expires,
            kid: kid.map(str::to_string),
        };
        self.shard(token)
            .insert(token, verified, |v| v.expires <= now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
