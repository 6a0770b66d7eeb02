//! Signing keys: a JWKS document parsed by `kid`, and a JWKS fetched from a URL, cached and
//! refreshed in the background (`app/` runs the loop; this module owns one step).

use super::*;

/// Keys by `kid`, from a JWKS document; keys of unsupported types are skipped.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, key);
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping a JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable key".into());
    }
    Ok(keys)
}

/// A JWKS fetched from a URL, cached and refreshed; an unknown `kid` triggers a refetch
/// (at most every 10 s) so key rotation needs no restart.
pub struct RemoteJwks {
    pub url: String,
    pub refresh: Duration,
    pub(super) keys: ArcSwap<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    client: reqwest::Client,
}

pub(super) const MIN_REFETCH: Duration = Duration::from_secs(10);

impl RemoteJwks {
    pub fn new(url: &str, refresh: Duration) -> RemoteJwks {
        RemoteJwks {
            url: url.to_string(),
            refresh,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: Mutex::new(None),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
        }
    }

    fn due(&self, min_age: Duration) -> bool {
        let last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= min_age)
    }

    /// Fetches the document now; keeps the old keys on failure.
    pub async fn fetch(&self) {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let result = async {
            let resp = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let text = resp
                .error_for_status()
                .map_err(|e| e.without_url().to_string())?
                .text()
                .await
                .map_err(|e| e.without_url().to_string())?;
            parse_jwks(&text)
        }
        .await;
        match result {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(e) => {
                let url = crate::diag::redact_url(&self.url);
                tracing::warn!(%url, error = %e, "JWKS fetch failed; keeping the cached keys")
            }
        }
    }

    /// Refreshes when the refresh interval has passed (called by the background refresher).
    pub async fn refresh_if_due(&self) {
        if self.due(self.refresh) {
            self.fetch().await;
        }
    }

    /// The key set holding `kid`, refetched (rate-limited) when it does not.
    pub(super) async fn keys_for(
        &self,
        kid: Option<&str>,
    ) -> Result<Arc<HashMap<String, DecodingKey>>, AuthError> {
        let keys = self.keys.load_full();
        if pick_key(&keys, kid).is_some() {
            return Ok(keys);
        }
        if self.due(MIN_REFETCH) {
            self.fetch().await;
        }
        let keys = self.keys.load_full();
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        Ok(keys)
    }
}

pub(super) fn pick_key<'a>(
    keys: &'a HashMap<String, DecodingKey>,
    kid: Option<&str>,
) -> Option<&'a DecodingKey> {
    match kid {
        Some(kid) => keys.get(kid),
        None if keys.len() == 1 => keys.values().next(),
        None => None,
    }
}

pub enum Keys {
    Single(DecodingKey),
    Set(HashMap<String, DecodingKey>),
    Remote(Arc<RemoteJwks>),
}
