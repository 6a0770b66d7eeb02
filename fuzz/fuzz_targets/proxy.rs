//! The proxy's request handling, bytes in: the real gateway (built by the library, as
//! `portico run` builds it) in front of a loopback upstream receives each input on a new
//! connection. A panic anywhere aborts the process; after each input the gateway must
//! still answer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An upstream that answers every request with a small JSON body.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 65536];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
                    if conn.write_all(reply).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn gateway() -> SocketAddr {
    static PROXY: OnceLock<SocketAddr> = OnceLock::new();
    *PROXY.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::abort();
        }));
        let (proxy, admin, up) = (free_addr(), free_addr(), upstream());
        let dir = std::env::temp_dir().join(format!("portico-fuzz-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "version: 1\nlisten: {{ proxy: \"{proxy}\", admin: \"{admin}\" }}\nserver: {{ threads: 1, timeouts: {{ header: 1s, idle: 1s, body: 1s }} }}\ntelemetry: {{ access_log: {{ enabled: false }} }}\nupstreams:\n  svc: {{ targets: [\"{up}\"], retries: {{ attempts: 0 }} }}\nroutes:\n  - {{ name: alive, match: {{ path: /alive }}, respond: {{ text: ok }} }}\n  - {{ name: t, match: {{ path_template: \"/t/{{id}}\" }}, upstream: svc, rewrite: \"/x/{{id}}\" }}\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: svc }}\n"
            ),
        )
        .unwrap();
        std::thread::spawn(move || {
            let opts = portico::app::RunOptions { config: &config, watch: false, upgrade: false };
            portico::app::serve(portico::app::build(&opts).expect("the fuzz gateway starts"));
        });
        for _ in 0..200 {
            if TcpStream::connect(proxy).is_ok() {
                return proxy;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the fuzz gateway did not start");
    })
}

fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut conn) = TcpStream::connect(proxy) else {
        return Vec::new();
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = conn.write_all(bytes);
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    out
}

fuzz_target!(|bytes: &[u8]| {
    let proxy = gateway();
    exchange(proxy, bytes);
    let alive = exchange(
        proxy,
        b"GET /alive HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n",
    );
    assert!(
        alive.starts_with(b"HTTP/1.1 200"),
        "the gateway stopped answering"
    );
});
