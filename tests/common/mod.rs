//! Test harness: real upstream HTTP servers on 127.0.0.1:0 and the real `portico` binary.
#![allow(dead_code)]

pub mod upstream;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use upstream::TestUpstream;

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns the time it took.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A free port for a listener that a child process (gateway, Redis) binds itself.
///
/// Ports come from below the kernel's ephemeral range (32768+), so no `bind(0)` in a
/// parallel test can take one between this check and the child's bind, and each is
/// handed out once per test process. (A port released by `bind(0)` is not safe: Pingora
/// retries a busy address instead of failing, so two gateways could share a port and a
/// test would talk to the wrong one.)
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: std::sync::Mutex<Option<u32>> = std::sync::Mutex::new(None);
    let mut next = NEXT.lock().unwrap();
    // Each test binary starts elsewhere, so a lingering child of the last one is no clash.
    let n = next.get_or_insert_with(|| std::process::id().wrapping_mul(7919) % SPAN);
    loop {
        let port = (LOW + *n % SPAN) as u16;
        *n += 1;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A loopback address where nothing listens.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

pub struct Gateway {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Gateway {
    /// Starts `portico run` on `body` (the config after `listen:`), with fresh ports.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_cmd("run", body)
    }

    /// The full config text for `body` with this gateway's listeners.
    pub fn config_text(&self, body: &str) -> String {
        format!(
            "version: 1\nlisten:\n  proxy: {}\n  admin: {}\n{body}",
            self.proxy, self.admin
        )
    }

    /// Replaces the config the way editors and `mv` do: write aside, rename over.
    pub fn write_config(&self, body: &str) {
        let tmp = self.dir.path().join(".gateway.yaml.tmp");
        std::fs::write(&tmp, self.config_text(body)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// Rewrites the config file in place (truncate + write), as `cp` or `>` do.
    pub fn overwrite_config(&self, body: &str) {
        std::fs::write(&self.config, self.config_text(body)).unwrap();
    }

    /// The admin `/config` document.
    pub fn admin_config(&self) -> serde_json::Value {
        self.admin_json("/config")
    }

    /// An admin endpoint's JSON document.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        client()
            .get(self.admin_url(path))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Starts `portico run --upgrade` on this gateway's config: the successor that takes
    /// over its sockets once it gets SIGQUIT. Killed when dropped, even by a failing test.
    pub fn successor(&self) -> Successor {
        Successor(
            Command::new(bin())
                .args(["run", "--upgrade", "-c"])
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    pub fn start_cmd(cmd: &str, body: &str) -> Gateway {
        Gateway::start_with(&[cmd], body, |dir, text| {
            let config = dir.join("gateway.yaml");
            std::fs::write(&config, text).unwrap();
            config
        })
    }

    /// Starts `portico ARGS -c CONFIG`, where `place` writes the config text into the
    /// gateway's directory and returns the path to pass.
    pub fn start_with(
        args: &[&str],
        body: &str,
        place: impl FnOnce(&Path, &str) -> PathBuf,
    ) -> Gateway {
        Gateway::start_env(args, &[], body, place)
    }

    /// Starts `run` with `envs` set for the gateway process only: tests never change
    /// their own environment, which parallel tests share.
    pub fn start_with_env(envs: &[(&str, &str)], body: &str) -> Gateway {
        Gateway::start_env(&["run"], envs, body, |dir, text| {
            let config = dir.join("gateway.yaml");
            std::fs::write(&config, text).unwrap();
            config
        })
    }

    /// Starts `run` with at most `limit` open file descriptors (`prlimit`, which execs it:
    /// the child is the gateway).
    pub fn start_with_fd_limit(limit: u32, body: &str) -> Gateway {
        let nofile = format!("--nofile={limit}:{limit}");
        let wrapped = ["prlimit", &nofile, "--", bin(), "run"];
        Gateway::start_env(&wrapped, &[], body, |dir, text| {
            let config = dir.join("gateway.yaml");
            std::fs::write(&config, text).unwrap();
            config
        })
    }

    pub fn start_env(
        args: &[&str],
        envs: &[(&str, &str)],
        body: &str,
        place: impl FnOnce(&Path, &str) -> PathBuf,
    ) -> Gateway {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = format!("version: 1\nlisten:\n  proxy: {proxy}\n  admin: {admin}\n{body}");
        let config = place(dir.path(), &text);
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        // Run in the config's directory, so a relative `-c` works as a user would type it.
        // `args` may name the program first (a wrapper such as `prlimit`).
        let (program, args) = match args.first() {
            Some(&"prlimit") => ("prlimit", &args[1..]),
            _ => (bin(), args),
        };
        let child = Command::new(program)
            .current_dir(dir.path())
            .envs(envs.iter().copied())
            .args(args)
            .arg("-c")
            .arg(&config)
            .env(
                "PORTICO_LOG",
                std::env::var("TEST_PORTICO_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let config = dir.path().join(config);
        let mut gw = Gateway {
            child,
            proxy,
            admin,
            dir,
            config,
        };
        gw.wait_healthy();
        gw
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("gateway exited with {status}:\n{}", self.log());
            }
            let ready = raw_request(
                self.admin,
                "GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200);
            // A TLS-only config has no plain listener to wait for.
            let base = match self.config.is_dir() {
                true => self.config.join("gateway.yaml"),
                false => self.config.clone(),
            };
            let plain = std::fs::read_to_string(base).is_ok_and(|t| t.contains("  proxy: "));
            let proxy_up = !plain || TcpStream::connect(self.proxy).is_ok();
            if ready && proxy_up {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not become healthy:\n{}", self.log());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the gateway process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Stops the gateway with SIGTERM and waits for its drained exit, which writes out
    /// every buffered access-log line: after this the log is complete.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let exited = wait_until(Duration::from_secs(15), || {
            self.child.try_wait().unwrap().is_some()
        });
        assert!(
            exited.is_some(),
            "the gateway did not stop:\n{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on a free loopback port, stopped on drop.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts on a given port (e.g. to bring a stopped server back where it was).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make deps / .ci/run install it)");
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up.is_some(), "redis-server did not start");
        RedisServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An upstream that answers every connection (for at most 10 s) with the same bytes,
/// whatever it was asked: a broken or hostile peer, scripted.
pub fn scripted_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Ok((mut conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            conn.set_nonblocking(false).unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer);
        }
    });
    addr
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Asserts the gateway's JSON error shape and returns the body.
pub fn assert_json_error(
    resp: reqwest::blocking::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status);
    let header_id = resp
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["error"]["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["request_id"], header_id.as_str(), "{body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    body
}

/// A child process killed when dropped.
pub struct Successor(pub Child);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads up to and including the blank line that ends an HTTP head (less if the
/// connection ends first).
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends bytes as they are (no client-side path cleanup) and reads one response.
pub fn raw_request(addr: SocketAddr, request: &str) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// `portico ARGS...`: (exit code, stdout, stderr).
pub fn portico(args: &[&str], cwd: &Path) -> (i32, String, String) {
    portico_env(args, cwd, &[])
}

/// `portico ARGS...` with `envs` set for that process only: (exit code, stdout, stderr).
pub fn portico_env(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The admin `/metrics` text.
pub fn metrics_text(gw: &Gateway) -> String {
    client()
        .get(gw.admin_url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// The value of one metric series (`name{labels}` exactly as rendered), or -1 when absent.
pub fn metric(gw: &Gateway, series: &str) -> f64 {
    metrics_text(gw)
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(-1.0)
}

/// An HS256 token for `sub`, valid for ten minutes, signed with `secret`.
pub fn hs256_token(secret: &str, sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": sub, "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
