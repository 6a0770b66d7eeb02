//! The baseline for the benchmarks: the smallest Pingora 0.9 proxy (default settings, one
//! thread, no policies), so they show what Portico costs on top of Pingora itself. With
//! `cache`, it also caches with Pingora's own cache phases, the URI as the key, Pingora's
//! stock freshness rules and Portico's memory store: the floor under `bench/cache.sh`.
//! Usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR [cache]

use async_trait::async_trait;
use pingora::cache::cache_control::CacheControl;
use pingora::cache::filters::resp_cacheable;
use pingora::cache::{CacheKey, CacheMetaDefaults, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use portico::policy::cache::store::{MemoryStore, StoreMetrics};

struct Bare {
    origin: String,
    cache: Option<&'static MemoryStore>,
}

const DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(&*self.origin, false, String::new())))
    }

    fn request_cache_filter(&self, session: &mut Session, _: &mut ()) -> Result<()> {
        if let Some(store) = self.cache {
            session.cache.enable(store, None, None, None, None);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, _: &mut ()) -> Result<CacheKey> {
        Ok(CacheKey::new(session.req_header().uri.to_string(), ""))
    }

    fn response_cache_filter(
        &self,
        _: &Session,
        resp: &ResponseHeader,
        _: &mut (),
    ) -> Result<RespCacheable> {
        let cc = CacheControl::from_resp_headers(resp);
        Ok(resp_cacheable(cc.as_ref(), resp.clone(), false, &DEFAULTS))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR [cache]");
        std::process::exit(2);
    };
    let cache = (args.next().as_deref() == Some("cache")).then(|| {
        let metrics = StoreMetrics {
            size: prometheus::IntGauge::new("size", "size").expect("valid"),
            evictions: prometheus::IntCounter::new("evictions", "evictions").expect("valid"),
        };
        &*Box::leak(Box::new(MemoryStore::new(256 << 20, metrics)))
    });
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let bare = Bare { origin, cache };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
