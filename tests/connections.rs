//! Client connections cannot be held forever: slowloris heads and idle keep-alive
//! connections are closed by their deadlines, open connections are capped, and pipelined
//! requests are answered in order.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn gateway(server: &str, up: &TestUpstream) -> Gateway {
    Gateway::start(&format!(
        "server: {{ threads: 1, {server} }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ))
}

/// Whether the gateway closes `conn` before `limit` (reading and dropping what it sends).
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => {}
        }
    }
    false
}

#[test]
fn a_slowloris_head_is_cut_off_at_the_header_deadline() {
    let up = TestUpstream::start("svc");
    let gw = gateway("timeouts: { header: 1s }", &up);
    let mut conn = TcpStream::connect(gw.proxy).unwrap();
    conn.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n").unwrap();
    // A header line every 200 ms: each read is quick, the head never ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut closed = false;
    while Instant::now() < deadline && !closed {
        if conn.write_all(b"X-Slow: 1\r\n").is_err() {
            closed = true;
            break;
        }
        closed = closed_within(&mut conn, Duration::from_millis(200));
    }
    assert!(closed, "a head trickling in for 10 s was never cut off");
    assert_eq!(up.count(), 0);
    let counted = wait_until(Duration::from_secs(5), || {
        metric(&gw, "portico_downstream_timeouts_total{reason=\"header\"}") == 1.0
    });
    assert!(counted.is_some(), "{}", metrics_text(&gw));
}

#[test]
fn idle_keep_alive_connections_are_closed_at_the_idle_deadline() {
    let up = TestUpstream::start("svc");
    let gw = gateway("timeouts: { idle: 1s }", &up);
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut c = TcpStream::connect(gw.proxy).unwrap();
            c.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            c
        })
        .collect();
    let answered = wait_until(Duration::from_secs(10), || up.count() == 20);
    assert!(
        answered.is_some(),
        "every connection got its request through"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            closed_within(c, Duration::from_secs(10)),
            "connection {i} stayed open"
        );
    }
    let counted = wait_until(Duration::from_secs(5), || {
        metric(&gw, "portico_downstream_timeouts_total{reason=\"idle\"}") == 20.0
    });
    assert!(counted.is_some());
    assert_eq!(metric(&gw, "portico_downstream_connections"), 0.0);
}

#[test]
fn open_connections_are_capped_and_counted() {
    let up = TestUpstream::start("svc");
    let gw = gateway("max_connections: 3, timeouts: { header: 30s }", &up);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(gw.proxy).unwrap())
        .collect();
    let opened = wait_until(Duration::from_secs(5), || {
        metric(&gw, "portico_downstream_connections") == 3.0
    });
    assert!(opened.is_some());
    let mut extra = TcpStream::connect(gw.proxy).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)),
        "a fourth connection is closed"
    );
    assert_eq!(
        metric(&gw, "portico_downstream_connections_refused_total"),
        1.0
    );
    drop(held.pop());
    let freed = wait_until(Duration::from_secs(5), || {
        metric(&gw, "portico_downstream_connections") == 2.0
    });
    assert!(freed.is_some());
    let resp = raw_request(
        gw.proxy,
        "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 200, "a freed place serves again");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = TestUpstream::start("svc");
    let gw = gateway("timeouts: { idle: 5s }", &up);
    let mut conn = TcpStream::connect(gw.proxy).unwrap();
    conn.write_all(
        b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = String::new();
    let _ = conn.read_to_string(&mut all);
    let first = all.find("\"uri\":\"/first\"").expect(&all);
    let second = all.find("\"uri\":\"/second\"").expect(&all);
    assert!(first < second, "in request order:\n{all}");
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
}

/// `server.max_requests_per_connection` (nginx's `keepalive_requests`): an HTTP/1.1
/// connection's last request is answered with `Connection: close`, even when more were
/// pipelined behind it.
#[test]
fn an_http1_connection_makes_at_most_its_requests() {
    let up = TestUpstream::start("svc");
    let gw = gateway("max_requests_per_connection: 2", &up);
    let mut conn = TcpStream::connect(gw.proxy).unwrap();
    conn.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = String::new();
    let _ = conn.read_to_string(&mut all);
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
    let second = &all[all.rfind("HTTP/1.1 200 OK").unwrap()..];
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
    assert!(!all.contains("\"uri\":\"/3\""), "{all}");
}

/// An HTTP/2 connection past its streams is sent GOAWAY: a client cannot open streams
/// without end on one connection (17,100 in 10 s reached the upstream before).
#[test]
fn an_http2_connection_is_sent_goaway_after_its_streams() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "  h2c: true\nserver: {{ threads: 1, max_requests_per_connection: 10 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answered = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(connection);
        let mut answered = 0;
        for i in 0..30 {
            let Ok(ready) = client.ready().await else {
                break;
            };
            client = ready;
            let req = http::Request::get(format!("http://{}/s/{i}", gw.proxy))
                .body(())
                .unwrap();
            let Ok((response, _)) = client.send_request(req, true) else {
                break;
            };
            match response.await {
                Ok(r) if r.status() == 200 => answered += 1,
                _ => break,
            }
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(
            closed.is_ok(),
            "the gateway closes the connection after GOAWAY"
        );
        answered
    });
    // GOAWAY goes out as the 10th stream starts; a stream the client opened before it
    // arrived is still served (RFC 9113 §6.8).
    assert!((10..=12).contains(&answered), "{answered} streams answered");
    assert!(up.count() <= 12, "{} reached the upstream", up.count());
}

/// `server.timeouts.send`: a client that asks for a large body and never reads holds a
/// client socket, an upstream socket and buffers; once writing to it makes no progress for
/// the deadline, the request ends (both sides freed) while other clients are served.
#[test]
fn a_client_that_stops_reading_is_let_go() {
    let up = TestUpstream::start("svc");
    let gw = gateway("timeouts: { send: 1s }", &up);
    let mut stalled = TcpStream::connect(gw.proxy).unwrap();
    stalled
        .write_all(b"GET /big?download=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let in_flight = || metric(&gw, "portico_requests_in_flight");
    let started = wait_until(Duration::from_secs(10), || in_flight() == 1.0);
    assert!(started.is_some(), "{}", gw.log());
    let served = client().get(gw.url("/other")).send().unwrap();
    assert_eq!(served.status(), 200, "another client is served meanwhile");
    let freed = wait_until(Duration::from_secs(30), || in_flight() == 0.0);
    assert!(
        freed.is_some(),
        "the stalled request is still held:\n{}",
        gw.log()
    );
}

/// The same for an HTTP/2 stream whose window stays 0: the client never lets the body come.
#[test]
fn an_http2_stream_at_window_zero_is_let_go() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "  h2c: true\nserver: {{ threads: 1, timeouts: {{ send: 1s }} }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let in_flight = || metric(&gw, "portico_requests_in_flight");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::get(format!("http://{}/big?download=50000000", gw.proxy))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        let head = response.await.unwrap();
        assert_eq!(head.status(), 200);
        // The body never flows (window 0); the client keeps the connection open meanwhile.
        let freed = tokio::task::block_in_place(|| {
            wait_until(Duration::from_secs(30), || in_flight() == 0.0)
        });
        drop(head);
        assert!(freed.is_some(), "the stream at window 0 is still held");
    });
}

/// An upstream that holds every request it reads until `release` is set (or 30 s pass),
/// then answers 200; `held` counts the requests it holds.
struct GatedUpstream {
    addr: std::net::SocketAddr,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GatedUpstream {
    fn start() -> GatedUpstream {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let (h, r) = (held.clone(), release.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let (Ok(mut conn), h, r) = (conn, h.clone(), r.clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    if conn.read(&mut buf).unwrap_or(0) == 0 {
                        return;
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_secs(30);
                    while !r.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    );
                });
            }
        });
        GatedUpstream {
            addr,
            held,
            release,
        }
    }
}

/// `ulimit -n 1024` and `max_connections: 100`: the reserve (256 + two idle pools of 128)
/// leaves 512 descriptors, 100 for clients and 412 for upstream connections. Ten HTTP/2
/// connections of 100 slow streams each get 412 upstream connections and 588 answers of
/// 503 at once; a new client and the admin port are served meanwhile, and nothing runs
/// out of descriptors.
#[test]
fn upstream_connections_keep_to_their_share_of_descriptors() {
    use std::sync::atomic::Ordering;
    let up = GatedUpstream::start();
    let gw = Gateway::start_with_fd_limit(
        1024,
        &format!(
            "  h2c: true\nserver: {{ threads: 1, max_connections: 100 }}\nupstreams:\n  slow: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: ping, match: {{ path: /ping }}, respond: {{ status: 200, text: pong }} }}\n  - {{ name: slow, match: {{ path_prefix: / }}, upstream: slow }}\n",
            up.addr
        ),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u16>();
    rt.block_on(async {
        for c in 0..10 {
            let tcp = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
            let (client, connection) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(connection);
            for s in 0..100 {
                let mut client = client.clone().ready().await.unwrap();
                let req = http::Request::get(format!("http://{}/s/{c}/{s}", gw.proxy))
                    .body(())
                    .unwrap();
                let (response, _) = client.send_request(req, true).unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let status = response.await.map_or(0, |r| r.status().as_u16());
                    let _ = tx.send(status);
                });
            }
        }
    });
    let mut statuses = Vec::new();
    let refused = wait_until(Duration::from_secs(30), || {
        statuses.extend(rx.try_iter());
        up.held.load(Ordering::SeqCst) == 412 && statuses.len() == 588
    });
    assert!(
        refused.is_some(),
        "{} held, {} answered:\n{}",
        up.held.load(Ordering::SeqCst),
        statuses.len(),
        gw.log()
    );
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    // Headroom: a new client, a route with no upstream, and the admin port still work.
    let c = client();
    let ping = c.get(gw.url("/ping")).send().unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(c.get(gw.admin_url("/health")).send().unwrap().status(), 200);
    let busy = c.get(gw.url("/more")).send().unwrap();
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_json_error(busy, 503, "gateway_overloaded");
    up.release.store(true, Ordering::SeqCst);
    let done = wait_until(Duration::from_secs(30), || {
        statuses.extend(rx.try_iter());
        statuses.len() == 1000
    });
    assert!(done.is_some(), "{} answered", statuses.len());
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 412);
    assert!(!gw.log().contains("Too many open files"), "{}", gw.log());
    drop(rt);
}

/// A burst of pipelined requests answered in one go spends the connection task's tokio
/// budget; the connection's idle deadline must still be kept afterwards (a timer polled
/// on a spent budget is never registered, and the connection would stay open for good).
#[test]
fn a_connection_that_goes_quiet_after_a_pipelined_burst_is_closed_at_the_idle_deadline() {
    let gw = Gateway::start(
        "server: { threads: 1, timeouts: { idle: 1s } }\nroutes:\n  \
         - { name: hi, match: { path_prefix: / }, respond: { text: hi } }\n",
    );
    let mut c = TcpStream::connect(gw.proxy).unwrap();
    let burst = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n".repeat(400);
    c.write_all(burst.as_bytes()).unwrap();
    // Every answer read before the quiet starts (the bound only stops a broken test).
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut seen, mut buf) = (Vec::new(), [0u8; 16384]);
    let answers = |seen: &[u8]| seen.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    while answers(&seen) < 400 {
        match c.read(&mut buf) {
            Ok(n @ 1..) => seen.extend_from_slice(&buf[..n]),
            other => panic!("after {} answers: {other:?}", answers(&seen)),
        }
    }
    assert!(
        closed_within(&mut c, Duration::from_secs(10)),
        "the quiet connection stayed open past its 1 s idle deadline"
    );
}
