//! The memory store behind a `caches:` entry: pingora-cache's `Storage` over a TinyUFO
//! cache (admission by frequency, eviction by weight, so `max_size` holds under any load),
//! plus an index by path for purges. Hits only read TinyUFO; writes and evictions take
//! the index lock, so the index and the cache never disagree.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::http::header_value_from_raw;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use prometheus::{IntCounter, IntGauge};
use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tinyufo::TinyUfo;

/// TinyUFO weighs entries in u16 units; a unit is 1 KiB, so an entry is at most 64 MiB.
const UNIT: u64 = 1024;
pub const MAX_OBJECT: u64 = u16::MAX as u64 * UNIT;

/// Bytes an entry costs beyond its own, per header field and per entry.
const PER_FIELD: usize = 200;
const PER_OBJECT: usize = 1024;

/// A stored copy of a response header that owns its bytes. A parsed header's names and
/// values are slices of the buffer its head was read into (4 KiB or more), which a stored
/// entry would otherwise keep whole: here the values share one buffer of their own size.
fn compact(header: &ResponseHeader) -> Result<ResponseHeader> {
    let fields: Vec<_> = header.case_header_iter().collect();
    let values = Bytes::from(
        fields
            .iter()
            .flat_map(|(_, value)| value.as_bytes())
            .copied()
            .collect::<Vec<u8>>(),
    );
    let mut out = ResponseHeader::build(header.status, Some(fields.len()))?;
    out.set_version(header.version);
    out.set_reason_phrase(header.get_reason_phrase())?;
    let mut at = 0;
    for (name, value) in fields {
        let value_at = at..at + value.len();
        at = value_at.end;
        // A name as it was written (header names are ASCII).
        let name = String::from_utf8_lossy(name.as_slice()).into_owned();
        out.append_header(name, header_value_from_raw(values.slice(value_at)))?;
    }
    Ok(out)
}

/// One stored response: its cache metadata (serialized), its header (parsed: decoding
/// Pingora's compressed header form cost a third of a hit), body and path (for purges).
struct Object {
    key: HashBinary,
    path: Box<str>,
    internal: Vec<u8>,
    header: ResponseHeader,
    body: Bytes,
    size: u64,
}

impl Object {
    fn new(key: HashBinary, path: Box<str>, meta: &CacheMeta, body: Bytes) -> Result<Object> {
        let (mut internal, _) = meta.serialize()?;
        internal.shrink_to_fit();
        let header = compact(meta.response_header())?;
        // What the entry really takes (measured with bench/cache_memory.sh): its bytes,
        // two maps' worth per field (the header and its case map), and a fixed part for
        // the header, the object, its TinyUFO and index entries and the allocator's rounding.
        let fields: usize = header
            .headers
            .iter()
            .map(|(name, value)| 2 * name.as_str().len() + value.len() + PER_FIELD)
            .sum();
        let size = (body.len() + internal.len() + fields + 2 * path.len() + PER_OBJECT) as u64;
        Ok(Object {
            key,
            path,
            internal,
            header,
            body,
            size,
        })
    }
}

impl Object {
    fn weight(&self) -> u16 {
        self.size.div_ceil(UNIT).min(u16::MAX as u64) as u16
    }
}

/// The metric handles of one cache.
pub struct StoreMetrics {
    pub size: IntGauge,
    pub evictions: IntCounter,
}

pub struct MemoryStore {
    objects: TinyUfo<HashBinary, Arc<Object>>,
    /// A serialized placeholder header: a hit decodes its metadata with this, then puts
    /// the stored header in.
    blank_header: Vec<u8>,
    /// Path → keys stored under it, for purge by path or prefix.
    by_path: Mutex<BTreeMap<Box<str>, HashSet<HashBinary>>>,
    metrics: StoreMetrics,
}

impl MemoryStore {
    pub fn new(max_size: u64, metrics: StoreMetrics) -> MemoryStore {
        let units = (max_size / UNIT).max(1) as usize;
        metrics.size.set(0);
        MemoryStore {
            // The estimate sizes TinyUFO's frequency sketch: entries of ~4 KiB.
            objects: TinyUfo::new(units, (units / 4).max(64)),
            blank_header: blank_header(),
            by_path: Mutex::default(),
            metrics,
        }
    }

    fn meta(&self, object: &Object) -> Result<CacheMeta> {
        let mut meta = CacheMeta::deserialize(&object.internal, &self.blank_header)?;
        *meta.response_header_mut() = object.header.clone();
        Ok(meta)
    }

    fn index(&self) -> MutexGuard<'_, BTreeMap<Box<str>, HashSet<HashBinary>>> {
        self.by_path.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &HashBinary) -> Option<Arc<Object>> {
        // TinyUFO keys by a 64-bit hash of the key: check it is this entry.
        self.objects.get(key).filter(|o| o.key == *key)
    }

    fn insert(&self, object: Object) {
        let mut index = self.index();
        self.remove_locked(&mut index, &object.key);
        let (key, weight, size) = (object.key, object.weight(), object.size);
        index
            .entry(object.path.clone())
            .or_default()
            .insert(object.key);
        self.metrics.size.add(size as i64);
        let evicted = self.objects.put(key, Arc::new(object), weight);
        for kv in evicted {
            // A refused admission comes back here too: it is not stored either.
            self.unindex(&mut index, &kv.data);
            if kv.data.key != key {
                self.metrics.evictions.inc();
            }
        }
    }

    fn unindex(&self, index: &mut BTreeMap<Box<str>, HashSet<HashBinary>>, object: &Object) {
        self.metrics.size.sub(object.size as i64);
        if let Some(keys) = index.get_mut(&object.path) {
            keys.remove(&object.key);
            if keys.is_empty() {
                index.remove(&object.path);
            }
        }
    }

    fn remove_locked(
        &self,
        index: &mut BTreeMap<Box<str>, HashSet<HashBinary>>,
        key: &HashBinary,
    ) -> bool {
        match self.get(key).and_then(|_| self.objects.remove(key)) {
            Some(object) => {
                self.unindex(index, &object);
                true
            }
            None => false,
        }
    }

    fn remove(&self, key: &HashBinary) -> bool {
        self.remove_locked(&mut self.index(), key)
    }

    /// Removes every entry stored for `path` (any host, query, variant or user).
    pub fn purge_path(&self, path: &str) -> usize {
        let mut index = self.index();
        let keys: Vec<HashBinary> = index.get(path).into_iter().flatten().copied().collect();
        keys.iter()
            .filter(|k| self.remove_locked(&mut index, k))
            .count()
    }

    /// Removes every entry whose path starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let mut index = self.index();
        let keys: Vec<HashBinary> = index
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(path, _)| path.starts_with(prefix))
            .flat_map(|(_, keys)| keys.iter().copied())
            .collect();
        keys.iter()
            .filter(|k| self.remove_locked(&mut index, k))
            .count()
    }

    /// Frees every entry (the cache was redefined or removed by a reload).
    pub fn clear(&self) {
        self.purge_prefix("");
    }

    pub fn entries(&self) -> usize {
        self.index().values().map(HashSet::len).sum()
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(object) = self.get(&key.combined_bin()) else {
            return Ok(None);
        };
        let meta = self.meta(&object)?;
        let end = object.body.len();
        let hit = Hit {
            body: object.body.clone(),
            range: 0..end,
            done: false,
        };
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // The meta is only known now; stored once the body is complete.
        let placeholder = Object::new(
            key.combined_bin(),
            key.user_tag.as_str().into(),
            meta,
            Bytes::new(),
        )?;
        // Sized by the declared length, so the stored body has no slack to keep.
        let declared = meta
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .filter(|len| *len <= MAX_OBJECT);
        Ok(Box::new(Miss {
            store: self,
            object: placeholder,
            body: BytesMut::with_capacity(declared.unwrap_or(0) as usize),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        Ok(match self.remove(&target.key().combined_bin()) {
            true => PurgeOutcome::Purged(None),
            false => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let key = key.combined_bin();
        let Some(old) = self.get(&key) else {
            return Ok(false);
        };
        self.insert(Object::new(key, old.path.clone(), meta, old.body.clone())?);
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads a stored body: one zero-copy slice, seekable for Range requests.
struct Hit {
    body: Bytes,
    range: std::ops::Range<usize>,
    done: bool,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.range.clone())))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        if start >= len {
            return Error::e_explain(ErrorType::InternalError, "seek past the end of the body");
        }
        self.range = start..end.map_or(len, |e| e.min(len));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response body; stored whole when the response ends.
struct Miss {
    store: &'static MemoryStore,
    object: Object,
    body: BytesMut,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let Miss {
            store,
            mut object,
            body,
        } = *self;
        object.size += body.len() as u64;
        // A body of unknown length grew by doubling: store it without the slack.
        object.body = match body.capacity() - body.len() > body.len() / 8 {
            true => Bytes::copy_from_slice(&body),
            false => body.freeze(),
        };
        if object.size > MAX_OBJECT {
            return Ok(MissFinishType::Created(0));
        }
        let size = object.size as usize;
        store.insert(object);
        Ok(MissFinishType::Created(size))
    }
}

fn blank_header() -> Vec<u8> {
    let header = ResponseHeader::build(200, None).expect("a valid status");
    let now = std::time::SystemTime::now();
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .expect("a minimal header serializes")
        .1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: u64) -> MemoryStore {
        MemoryStore::new(
            max,
            StoreMetrics {
                size: IntGauge::new("s", "s").unwrap(),
                evictions: IntCounter::new("e", "e").unwrap(),
            },
        )
    }

    fn object(n: u8, path: &str, size: usize) -> Object {
        Object {
            key: [n; 16],
            path: path.into(),
            internal: Vec::new(),
            header: ResponseHeader::build(200, None).unwrap(),
            body: Bytes::from(vec![0; size]),
            size: size as u64,
        }
    }

    #[test]
    fn a_stored_meta_reads_back_whole() {
        let s = store(1 << 20);
        let mut header = ResponseHeader::build(203, None).unwrap();
        header.insert_header("etag", "\"v1\"").unwrap();
        let now = std::time::SystemTime::now();
        let mut meta = CacheMeta::new(now + std::time::Duration::from_secs(60), now, 5, 7, header);
        meta.set_variance([9; 16]);
        let object = Object::new([1; 16], "/a".into(), &meta, Bytes::from_static(b"body")).unwrap();
        let back = s.meta(&object).unwrap();
        assert_eq!(back.response_header().status, 203);
        assert_eq!(back.headers()["etag"], "\"v1\"");
        assert_eq!(
            (
                back.fresh_sec(),
                back.stale_while_revalidate_sec(),
                back.stale_if_error_sec()
            ),
            (60, 5, 7)
        );
        assert_eq!(back.variance(), Some([9; 16]));
    }

    /// A parsed header's values are slices of the buffer the head was read into; an entry
    /// must not keep that buffer (it made a 32 MiB cache of small answers take 250 MiB).
    #[test]
    fn a_stored_header_keeps_nothing_of_the_buffer_it_was_read_into() {
        let read_buffer = Bytes::from(vec![b'v'; 64 * 1024]);
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .append_header("X-Case", header_value_from_raw(read_buffer.slice(0..5)))
            .unwrap();
        let now = std::time::SystemTime::now();
        let meta = CacheMeta::new(now, now, 0, 0, header);
        let object = Object::new([1; 16], "/a".into(), &meta, Bytes::new()).unwrap();
        drop(meta);
        assert!(read_buffer.is_unique(), "the entry keeps the read buffer");
        assert_eq!(object.header.headers["x-case"], "vvvvv");
        let mut wire = Vec::new();
        object.header.header_to_h1_wire(&mut wire);
        assert_eq!(wire, b"X-Case: vvvvv\r\n", "the name's case is kept");
    }

    #[test]
    fn purges_by_path_and_prefix() {
        let s = store(1 << 20);
        s.insert(object(1, "/p/1", 10));
        s.insert(object(2, "/p/1", 10));
        s.insert(object(3, "/p/2", 10));
        s.insert(object(4, "/q", 10));
        assert_eq!(s.purge_path("/p/1"), 2);
        assert!(s.get(&[1; 16]).is_none());
        assert_eq!(s.purge_prefix("/p/"), 1);
        assert_eq!(s.entries(), 1);
        assert_eq!(s.metrics.size.get(), 10);
        s.clear();
        assert_eq!((s.entries(), s.metrics.size.get()), (0, 0));
    }

    #[test]
    fn size_stays_bounded_and_evictions_are_counted() {
        let s = store(64 * 1024);
        for n in 0..=255u8 {
            s.insert(object(n, &format!("/{n}"), 4096));
        }
        assert!(
            s.metrics.size.get() <= 64 * 1024,
            "{}",
            s.metrics.size.get()
        );
        assert!(s.metrics.evictions.get() > 0);
        assert_eq!(s.entries() as i64 * 4096, s.metrics.size.get());
    }

    #[test]
    fn replacing_an_entry_keeps_the_accounting() {
        let s = store(1 << 20);
        s.insert(object(1, "/a", 100));
        s.insert(object(1, "/a", 300));
        assert_eq!((s.entries(), s.metrics.size.get()), (1, 300));
    }
}
