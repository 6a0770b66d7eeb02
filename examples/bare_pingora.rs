//! The baseline for `bench/load.sh`: the smallest Pingora 0.9 proxy (default settings, one
//! thread, no policies), so the benchmark shows what Portico costs on top of Pingora itself.
//! Usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

struct Bare {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(&*self.origin, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR ORIGIN_ADDR");
        std::process::exit(2);
    };
    let mut server = Server::new(None).expect("server");
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { origin });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
