//! The baseline for the benchmarks: the smallest Pingora 0.9 proxy (default settings, one
//! thread, no policies), so they show what Portico costs on top of Pingora itself. With
//! `cache`, it also caches with Pingora's own cache phases, the URI as the key, Pingora's
//! stock freshness rules and Portico's memory store: the floor under `bench/cache.sh`.
//! With `headers`, it only adds the headers Portico's plain route adds (X-Forwarded-For,
//! -Proto, -Host, X-Request-Id and traceparent upstream; X-Request-Id downstream), with
//! constant values; `gw-headers` adds those of the API-gateway policies too (X-User-Id
//! upstream; Vary, Access-Control-Allow-Origin and three RateLimit headers downstream).
//! They show what Pingora's header API alone costs (`bench/instructions.sh`).
//! Usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR [cache|headers|gw-headers]

use async_trait::async_trait;
use pingora::cache::cache_control::CacheControl;
use pingora::cache::filters::resp_cacheable;
use pingora::cache::{CacheKey, CacheMetaDefaults, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use portico::policy::cache::store::{MemoryStore, StoreMetrics};

struct Bare {
    origin: String,
    cache: Option<&'static MemoryStore>,
    headers: Headers,
}

#[derive(PartialEq)]
enum Headers {
    None,
    Plain,
    Gateway,
}

const DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(&*self.origin, false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        if self.headers == Headers::None {
            return Ok(());
        }
        req.insert_header("x-forwarded-for", "127.0.0.1")?;
        req.insert_header("x-forwarded-proto", "http")?;
        req.insert_header("x-forwarded-host", "127.0.0.1:8080")?;
        req.insert_header("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736")?;
        req.insert_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )?;
        if self.headers == Headers::Gateway {
            req.insert_header("x-user-id", "bench-user")?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _: &mut Session,
        resp: &mut ResponseHeader,
        _: &mut (),
    ) -> Result<()> {
        if self.headers == Headers::None {
            return Ok(());
        }
        resp.insert_header("x-request-id", "4bf92f3577b34da6a3ce929d0e0e4736")?;
        if self.headers == Headers::Gateway {
            resp.append_header(http::header::VARY, "Origin")?;
            let origin = "https://app.example.com";
            resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)?;
            resp.insert_header("ratelimit-limit", "1000000")?;
            resp.insert_header("ratelimit-remaining", "999999")?;
            resp.insert_header("ratelimit-reset", "1")?;
        }
        Ok(())
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
        eprintln!("usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR [cache|headers|gw-headers]");
        std::process::exit(2);
    };
    let mode = args.next();
    let headers = match mode.as_deref() {
        Some("headers") => Headers::Plain,
        Some("gw-headers") => Headers::Gateway,
        _ => Headers::None,
    };
    let cache = (mode.as_deref() == Some("cache")).then(|| {
        let metrics = StoreMetrics {
            size: prometheus::IntGauge::new("size", "size").expect("valid"),
            evictions: prometheus::IntCounter::new("evictions", "evictions").expect("valid"),
        };
        &*Box::leak(Box::new(MemoryStore::new(256 << 20, metrics)))
    });
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let bare = Bare {
        origin,
        cache,
        headers,
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
