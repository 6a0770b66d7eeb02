//! Admin endpoints and graceful shutdown with real traffic.

mod common;
use common::*;
use std::path::Path;
use std::time::Duration;

fn config(up: &TestUpstream) -> String {
    format!(
        "server: {{ threads: 1, grace_period: 2s, shutdown_timeout: 5s }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        up.addr
    )
}

#[test]
fn health_and_ready_report_version_and_config_hash() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&config(&up));
    let c = client();
    let health: serde_json::Value = c
        .get(gw.admin_url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health["config_hash"].as_str().unwrap().len(), 16);
    let ready = c.get(gw.admin_url("/ready")).send().unwrap();
    assert_eq!(ready.status(), 200);
    let missing = c.get(gw.admin_url("/nope")).send().unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        c.post(gw.admin_url("/health")).send().unwrap().status(),
        405
    );
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let up = TestUpstream::start("svc");
    let mut gw = Gateway::start(&config(&up));
    let url = gw.url("/slow?sleep_ms=1000");
    let in_flight = std::thread::spawn(move || {
        client().get(url).send().map(|r| {
            let close = r
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), close)
        })
    });
    let arrived = wait_until(Duration::from_secs(10), || up.count() > 0);
    assert!(
        arrived.is_some(),
        "the slow request never reached the upstream"
    );
    gw.signal("TERM");
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        (200, Some("close".to_string())),
        "the in-flight request completes, and its kept-alive connection is told to close"
    );
    let exited = wait_until(Duration::from_secs(15), || {
        gw.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "gateway did not exit after draining");
    assert!(
        std::net::TcpStream::connect(gw.proxy).is_err(),
        "no new connections after shutdown"
    );
}

#[test]
fn graceful_binary_upgrade_hands_over_the_sockets_without_failing_a_request() {
    let up = TestUpstream::start("svc");
    let mut old = Gateway::start(&config(&up));
    let url = old.url("/x");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Several clients, each opening a new connection per request: idle keep-alive
    // connections are closed at shutdown (as nginx does), and a client racing that close
    // must retry; what the handover guarantees is that no connection is refused and no
    // request is cut off, including those accepted as the old listeners stop.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (flag, count, url) = (stop.clone(), served.clone(), url.clone());
            std::thread::spawn(move || {
                let c = reqwest::blocking::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                let mut statuses = Vec::new();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) && statuses.len() < 20_000 {
                    statuses.push(c.get(&url).send().map_or(0, |r| r.status().as_u16()));
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
                statuses
            })
        })
        .collect();
    let new = old.successor();
    let sock = format!("/tmp/portico-upgrade-{}.sock", old.proxy.port());
    let listening = wait_until(Duration::from_secs(15), || Path::new(&sock).exists());
    assert!(
        listening.is_some(),
        "the successor waits on the default socket {sock}"
    );
    old.signal("QUIT");
    let exited = wait_until(Duration::from_secs(15), || {
        old.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "the old process hands over and exits");
    // Some requests after the handover, served by the successor alone.
    let after = served.load(std::sync::atomic::Ordering::Relaxed) + 20;
    let more = wait_until(Duration::from_secs(15), || {
        served.load(std::sync::atomic::Ordering::Relaxed) >= after
    });
    assert!(more.is_some(), "the successor does not serve");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    drop(new);
    assert!(statuses.len() > 20);
    // 0 is a request that got no answer (its connection was dropped).
    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "of {} requests during the upgrade, these failed: {failed:?}",
        statuses.len()
    );
}

/// `server.upgrade_socket` and `server.pid_file` are per gateway: the handover goes
/// through this gateway's own socket (not a shared path), and the pid file names whichever
/// process serves.
#[test]
fn upgrade_socket_and_pid_file_are_per_gateway() {
    let up = TestUpstream::start("svc");
    let files = tempfile::tempdir().unwrap();
    let (sock, pid) = (
        files.path().join("up.sock"),
        files.path().join("portico.pid"),
    );
    let body = format!(
        "server: {{ threads: 1, grace_period: 1s, shutdown_timeout: 2s, upgrade_socket: \"{}\", pid_file: \"{}\" }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: svc }}\n",
        sock.display(),
        pid.display(),
        up.addr
    );
    let mut old = Gateway::start(&body);
    let holds = |want: u32| std::fs::read_to_string(&pid).is_ok_and(|p| p == want.to_string());
    assert!(holds(old.pid()), "the pid file names the running gateway");
    let new = old.successor();
    let listening = wait_until(Duration::from_secs(15), || sock.exists());
    assert!(
        listening.is_some(),
        "the successor waits on the configured socket"
    );
    old.signal("QUIT");
    let exited = wait_until(Duration::from_secs(15), || {
        old.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "the old process hands over and exits");
    let new_pid = new.0.id();
    let named = wait_until(Duration::from_secs(15), || holds(new_pid));
    assert!(named.is_some(), "the pid file names the successor");
    let resp = client().get(old.url("/x")).send().unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the successor serves on the handed-over socket"
    );
}

/// A taken port is a clear error and a failed exit at once, not a retry loop.
#[test]
fn a_busy_listen_port_fails_fast_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version: 1\nlisten: {{ proxy: \"127.0.0.1:{port}\", admin: \"127.0.0.1:{}\" }}\n",
        free_port()
    );
    std::fs::write(dir.path().join("g.yaml"), text).unwrap();
    let mut child = Successor(
        std::process::Command::new(bin())
            .args(["run", "-c", "g.yaml"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let exited = wait_until(Duration::from_secs(10), || {
        child.0.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "the gateway keeps retrying a taken port");
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    let want = format!("listen.proxy 127.0.0.1:{port} cannot be used: Address already in use");
    assert!(err.contains(&want), "{err}");
}

/// With nothing in flight, SIGTERM ends the gateway once drained, not after the whole
/// grace period (here a minute).
#[test]
fn sigterm_with_nothing_in_flight_exits_once_drained() {
    let up = TestUpstream::start("svc");
    let mut gw = Gateway::start(&format!(
        "server: {{ threads: 1, grace_period: 60s, shutdown_timeout: 5s }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    assert_eq!(client().get(gw.url("/x")).send().unwrap().status(), 200);
    gw.signal("TERM");
    let exited = wait_until(Duration::from_secs(15), || {
        gw.child.try_wait().unwrap().is_some()
    });
    assert!(
        exited.is_some(),
        "still waiting out the grace period:\n{}",
        gw.log()
    );
    assert_eq!(gw.child.wait().unwrap().code(), Some(0));
    assert!(
        gw.log().contains("drained: no request in flight"),
        "{}",
        gw.log()
    );
}

/// `server.drain_delay`: after SIGTERM, /ready says 503 while requests are still served, so
/// a load balancer stops sending before the listeners close; then the gateway drains and
/// exits.
#[test]
fn sigterm_turns_ready_to_503_while_still_serving_for_the_drain_delay() {
    let up = TestUpstream::start("svc");
    let body = config(&up).replace("server: {", "server: { drain_delay: 30s,");
    let mut gw = Gateway::start(&body);
    let c = client();
    assert_eq!(c.get(gw.admin_url("/ready")).send().unwrap().status(), 200);
    gw.signal("TERM");
    let unready = wait_until(Duration::from_secs(10), || {
        c.get(gw.admin_url("/ready"))
            .send()
            .is_ok_and(|r| r.status() == 503)
    });
    assert!(unready.is_some(), "/ready never said 503:\n{}", gw.log());
    let r = c.get(gw.admin_url("/ready")).send().unwrap();
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(
        body,
        serde_json::json!({"ready": false, "reason": "draining"})
    );
    // Still serving, on new connections too.
    assert_eq!(
        client().get(gw.url("/during")).send().unwrap().status(),
        200
    );
    assert!(up.seen().iter().any(|s| s.uri == "/during"));
    // A second SIGTERM starts the drain without waiting out the delay.
    gw.signal("TERM");
    let exited = wait_until(Duration::from_secs(15), || {
        gw.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "gateway did not exit:\n{}", gw.log());
}

/// A client that has connected but not yet sent its request when shutdown begins is still
/// answered (Pingora drops such a connection; the handover of a binary upgrade hit this).
#[test]
fn a_connection_made_before_shutdown_gets_its_first_request_answered() {
    use std::io::{Read, Write};
    let up = TestUpstream::start("svc");
    let mut gw = Gateway::start(&format!(
        "server: {{ threads: 1, grace_period: 60s, shutdown_timeout: 5s }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    let mut early = std::net::TcpStream::connect(gw.proxy).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let accepted = wait_until(Duration::from_secs(10), || {
        metric(&gw, "portico_downstream_connections") == 1.0
    });
    assert!(accepted.is_some(), "the connection was never accepted");
    gw.signal("TERM");
    let draining = wait_until(Duration::from_secs(10), || {
        gw.log().contains("shutdown started")
    });
    assert!(draining.is_some(), "{}", gw.log());
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the drain waits for the connected client:\n{}",
        gw.log()
    );
    early
        .write_all(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = early.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer:?}\n{}",
        gw.log()
    );
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(up.last().uri, "/late");
    let exited = wait_until(Duration::from_secs(15), || {
        gw.child.try_wait().unwrap().is_some()
    });
    assert!(exited.is_some(), "exits once that request is done");
}
