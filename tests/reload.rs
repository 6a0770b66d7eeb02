//! Live reload under real traffic: file rewrites, a ConfigMap-style symlink swap, SIGHUP,
//! refused configs, and settings that need a restart.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A bound that only a broken reload misses (not a latency target: CI machines are slow).
const LIVE_WITHIN: Duration = Duration::from_secs(10);

fn version(n: usize, a: &TestUpstream, b: &TestUpstream) -> String {
    let stable = if n.is_multiple_of(2) { "a" } else { "b" };
    let extra = if n.is_multiple_of(3) {
        "  - { name: extra, match: { path: /extra }, respond: { text: extra } }\n"
    } else {
        ""
    };
    format!(
        "server: {{ threads: 2 }}\nupstreams:\n  a: {{ targets: [\"{}\"] }}\n  b: {{ targets: [\"{}\"] }}\nroutes:\n  - name: stable\n    match: {{ path_prefix: /stable/ }}\n    upstream: {stable}\n  - name: v{n}\n    match: {{ path: /v/{n} }}\n    respond: {{ text: \"{n}\" }}\n{extra}  - name: other\n    match: {{ path_prefix: /other/ }}\n    upstream: {}\n",
        a.addr,
        b.addr,
        if stable == "a" { "b" } else { "a" }
    )
}

fn invalid(n: usize) -> String {
    match n % 3 {
        0 => "routes:\n  - name: broken\n    match: { path: /x }\n    upstream: ghost\n".to_string(),
        1 => "routes: [ { name: x,\n".to_string(),
        _ => "routes:\n  - name: dup\n    match: { path: /a }\n    respond: { text: a }\n  - name: dup\n    match: { path: /b }\n    respond: { text: b }\n".to_string(),
    }
}

fn serves(gw: &Gateway, path: &str, body: &str) -> bool {
    client()
        .get(gw.url(path))
        .send()
        .is_ok_and(|r| r.status() == 200 && r.text().is_ok_and(|t| t == body))
}

#[test]
fn fifty_rewrites_under_load_fail_no_request() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&version(0, &a, &b));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                gw.url("/stable/x"),
            );
            std::thread::spawn(move || {
                let c = client();
                let started = std::time::Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
                {
                    match c.get(&url).send() {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let (mut last_valid, mut refused) = (0, 0);
    for n in 1..=50usize {
        if n.is_multiple_of(5) {
            let before = gw.admin_config()["last_reload"]["failed"].as_u64().unwrap();
            gw.write_config(&invalid(n));
            let seen = wait_until(LIVE_WITHIN, || {
                gw.admin_config()["last_reload"]["failed"].as_u64().unwrap() > before
            });
            assert!(
                seen.is_some(),
                "invalid version {n} was not refused in time"
            );
            let status = gw.admin_config();
            assert!(
                status["last_reload"]["error"]
                    .as_str()
                    .unwrap()
                    .contains("gateway.yaml:"),
                "{status}"
            );
            assert!(
                serves(&gw, &format!("/v/{last_valid}"), &last_valid.to_string()),
                "the last valid config keeps serving"
            );
            refused += 1;
        } else {
            if n.is_multiple_of(2) {
                gw.overwrite_config(&version(n, &a, &b))
            } else {
                gw.write_config(&version(n, &a, &b))
            }
            let took = wait_until(LIVE_WITHIN, || {
                serves(&gw, &format!("/v/{n}"), &n.to_string())
            });
            assert!(
                took.is_some(),
                "version {n} not live within {LIVE_WITHIN:?}\n{}",
                gw.log()
            );
            assert!(
                !serves(&gw, &format!("/v/{last_valid}"), &last_valid.to_string()),
                "old route {last_valid} removed"
            );
            last_valid = n;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 200, "the load loop ran ({ok} requests)");
    assert_eq!(refused, 10);
    assert!(
        a.count() > 0 && b.count() > 0,
        "the stable route moved between upstreams"
    );
}

/// The README's own invocation, `portico run -c gateway.yaml`: a bare relative name.
#[test]
fn a_bare_relative_config_name_reloads_on_change() {
    let gw = Gateway::start_with(
        &["run"],
        "routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n",
        |dir, text| {
            std::fs::write(dir.join("gateway.yaml"), text).unwrap();
            std::path::PathBuf::from("gateway.yaml")
        },
    );
    assert!(serves(&gw, "/v", "one"));
    gw.overwrite_config("routes:\n  - { name: v, match: { path: /v }, respond: { text: two } }\n");
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/v", "two")).is_some(),
        "{}",
        gw.log()
    );
}

#[test]
fn configmap_symlink_swap_reloads() {
    let gw = Gateway::start_with(
        &["run"],
        "routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n",
        |dir, text| {
            // Kubernetes' layout: gateway.yaml -> ..data/gateway.yaml, ..data -> ..<timestamp>
            std::fs::create_dir(dir.join("..2026_01")).unwrap();
            std::fs::write(dir.join("..2026_01/gateway.yaml"), text).unwrap();
            std::os::unix::fs::symlink("..2026_01", dir.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/gateway.yaml", dir.join("gateway.yaml")).unwrap();
            dir.join("gateway.yaml")
        },
    );
    assert!(serves(&gw, "/v", "one"));
    let dir = gw.dir.path();
    std::fs::create_dir(dir.join("..2026_02")).unwrap();
    let next =
        gw.config_text("routes:\n  - { name: v, match: { path: /v }, respond: { text: two } }\n");
    std::fs::write(dir.join("..2026_02/gateway.yaml"), next).unwrap();
    std::os::unix::fs::symlink("..2026_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_01")).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/v", "two")).is_some(),
        "{}",
        gw.log()
    );
}

#[test]
fn sighup_reloads_when_watching_is_off_and_restart_only_settings_are_reported() {
    let gw = Gateway::start_with(
        &["run", "--no-watch"],
        "routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n",
        |dir, text| {
            std::fs::write(dir.join("gateway.yaml"), text).unwrap();
            dir.join("gateway.yaml")
        },
    );
    // A watching gateway, edited at the same moment, is the clock: once it has reloaded,
    // the one that does not watch has had the same chance to.
    let watching =
        Gateway::start("routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n");
    let two = "server: { threads: 3 }\nroutes:\n  - { name: v, match: { path: /v }, respond: { text: two } }\n";
    gw.write_config(two);
    watching.write_config(two);
    // The clock only has to tick, not be fast: a generous bound, and the edit repeated
    // now and then (quieter than the reload debounce) in case the first was missed.
    let mut last_write = std::time::Instant::now();
    let ticked = wait_until(Duration::from_secs(20), || {
        if serves(&watching, "/v", "two") {
            return true;
        }
        if last_write.elapsed() > Duration::from_secs(2) {
            watching.write_config(two);
            last_write = std::time::Instant::now();
        }
        false
    });
    assert!(
        ticked.is_some(),
        "the watching gateway never reloaded:\n{}",
        watching.log()
    );
    assert!(
        serves(&gw, "/v", "one"),
        "no reload without a signal when not watching"
    );
    gw.signal("HUP");
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/v", "two")).is_some(),
        "{}",
        gw.log()
    );
    let status = gw.admin_config();
    assert_eq!(status["last_reload"]["trigger"], "sighup");
    let pending = status["last_reload"]["pending_restart"].to_string();
    assert!(pending.contains("server.threads"), "{status}");
    assert!(gw.log().contains("needs a restart"), "logged clearly");
}

#[test]
fn a_refused_edit_keeps_serving_and_the_next_good_save_is_picked_up() {
    let gw =
        Gateway::start("routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n");
    gw.overwrite_config(
        "routes:\n  - { name: v, match: { path: /v }, respond: { text: two }, bogus: 1 }\n",
    );
    let refused = wait_until(LIVE_WITHIN, || {
        gw.admin_config()["last_reload"]["result"] == "failed"
    });
    assert!(refused.is_some());
    let health: serde_json::Value = client()
        .get(gw.admin_url("/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let error = health["last_reload"]["error"].as_str().unwrap();
    assert!(
        error.contains("gateway.yaml:6:61:") && error.contains("unknown field `bogus`"),
        "{error}"
    );
    assert!(gw.log().contains("config refused"));
    assert!(serves(&gw, "/v", "one"));
    gw.overwrite_config(
        "routes:\n  - { name: v, match: { path: /v }, respond: { text: three } }\n",
    );
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/v", "three")).is_some());
    assert_eq!(gw.admin_config()["last_reload"]["result"], "ok");
}

/// Before any reload, /health describes the startup load; a refused edit that is undone
/// clears the error and says so, instead of keeping the old error beside "unchanged".
#[test]
fn an_undone_bad_edit_clears_the_reload_error() {
    let body = "routes:\n  - { name: v, match: { path: /v }, respond: { text: one } }\n";
    let gw = Gateway::start(body);
    let first = gw.admin_json("/health")["last_reload"].clone();
    assert_eq!(
        (&first["result"], &first["trigger"]),
        (&"ok".into(), &"startup".into())
    );
    assert!(first["at"].as_u64().unwrap() > 0, "{first}");
    gw.write_config(&body.replace("respond:", "bogus: 1, respond:"));
    let refused = wait_until(LIVE_WITHIN, || {
        gw.admin_json("/health")["last_reload"]["result"] == "failed"
    });
    assert!(refused.is_some(), "{}", gw.log());
    gw.write_config(body);
    let cleared = wait_until(LIVE_WITHIN, || {
        let status = gw.admin_json("/health")["last_reload"].clone();
        status["result"] == "unchanged" && status["error"].is_null()
    });
    assert!(cleared.is_some(), "{}", gw.admin_json("/health"));
    assert!(
        gw.log().contains("back to the running config"),
        "{}",
        gw.log()
    );
}

/// A restart-only setting changed and then changed back needs no restart: it is measured
/// against what the process started with, and warned about once.
#[test]
fn a_restart_only_change_undone_clears_pending_restart() {
    let routes = |text: &str| {
        format!("routes:\n  - {{ name: v, match: {{ path: /v }}, respond: {{ text: {text} }} }}\n")
    };
    let gw = Gateway::start(&routes("one"));
    gw.write_config(&format!("  h2c: true\n{}", routes("two")));
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/v", "two")).is_some());
    let pending = gw.admin_config()["last_reload"]["pending_restart"].clone();
    assert_eq!(pending, serde_json::json!(["listen.h2c: false → true"]));
    gw.write_config(&format!("  h2c: true\n{}", routes("three")));
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/v", "three")).is_some());
    gw.write_config(&routes("four"));
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/v", "four")).is_some());
    let pending = gw.admin_config()["last_reload"]["pending_restart"].clone();
    assert_eq!(pending, serde_json::json!([]));
    let warned = gw.log().matches("needs a restart to take effect").count();
    assert_eq!(warned, 1, "{}", gw.log());
}
