//! Metrics, access log, trace context and the admin API, scraped and parsed after real
//! traffic; and secrets never showing up in logs or `/config`.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

type Labels = BTreeMap<String, String>;

/// Parses the Prometheus text format into (name, labels, value) samples.
fn samples(text: &str) -> Vec<(String, Labels, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (head, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect()
}

fn value(all: &[(String, Labels, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
                && l.len() == labels.len()
        })
        .map(|(_, _, v)| *v)
}

fn scrape(gw: &Gateway) -> Vec<(String, Labels, f64)> {
    samples(&metrics_text(gw))
}

fn config(up: &TestUpstream, extra: &str) -> String {
    format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  hs: {{ algorithms: [HS256], secret_env: PORTICO_TEST_OBS_SECRET }}
rate_limits:
  one: {{ requests: 1, per: 1h }}
{extra}routes:
  - {{ name: api, match: {{ path_prefix: /api/ }}, upstream: svc }}
  - {{ name: limited, match: {{ path: /limited }}, respond: {{ text: ok }}, rate_limit: one }}
  - {{ name: secure, match: {{ path_prefix: /secure/ }}, upstream: svc, auth: hs }}
"#,
        up = up.addr
    )
}

const SECRET: &str = "obs-test-secret-never-shown-3f9a";

fn start(up: &TestUpstream, extra: &str) -> Gateway {
    Gateway::start_with_env(&[("PORTICO_TEST_OBS_SECRET", SECRET)], &config(up, extra))
}

fn token(sub: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": 4_000_000_000u64});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A metric, its labels and the value it should have (None: no such series).
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<f64>);

fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // The gateway's own records (JSON too, as stderr is a file here) have a level.
        .filter(|v| v.get("level").is_none())
        .collect()
}

#[test]
fn metrics_count_exactly_with_bounded_labels() {
    let up = TestUpstream::start("svc");
    let gw = start(&up, "");
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/api/x?id=1")).send().unwrap().status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(
            c.post(gw.url("/api/x?status=503")).send().unwrap().status(),
            503
        );
    }
    c.get(gw.url("/nope/123")).send().unwrap();
    c.get(gw.url("/limited")).send().unwrap();
    c.get(gw.url("/limited")).send().unwrap();
    c.get(gw.url("/secure/x")).send().unwrap();
    c.get(gw.url("/secure/x"))
        .bearer_auth("garbage")
        .send()
        .unwrap();
    c.request(
        reqwest::Method::from_bytes(b"BREW").unwrap(),
        gw.url("/api/x"),
    )
    .send()
    .unwrap();

    // A request is counted after its response is sent: read the metrics once all 11 are.
    let total = |m: &[(String, Labels, f64)]| {
        m.iter()
            .filter(|(name, _, _)| name == "portico_requests_total")
            .map(|(_, _, v)| v)
            .sum::<f64>()
    };
    let counted = wait_until(Duration::from_secs(5), || total(&scrape(&gw)) == 11.0);
    assert!(counted.is_some(), "{:?}", scrape(&gw));
    let m = scrape(&gw);
    let req = |route, upstream, method, status| {
        value(
            &m,
            "portico_requests_total",
            &[
                ("route", route),
                ("upstream", upstream),
                ("method", method),
                ("status", status),
            ],
        )
    };
    assert_eq!(req("api", "svc", "GET", "200"), Some(3.0));
    assert_eq!(req("api", "svc", "POST", "503"), Some(2.0));
    assert_eq!(
        req("api", "svc", "OTHER", "200"),
        Some(1.0),
        "unknown methods share one label"
    );
    assert_eq!(req("none", "none", "GET", "404"), Some(1.0));
    assert_eq!(req("limited", "none", "GET", "200"), Some(1.0));
    assert_eq!(req("limited", "none", "GET", "429"), Some(1.0));
    assert_eq!(req("secure", "svc", "GET", "401"), Some(2.0));
    let target = up.addr.to_string();
    let target_labels = [("upstream", "svc"), ("target", target.as_str())];
    let expected: [Expected; 9] = [
        (
            "portico_rate_limited_total",
            &[("route", "limited")],
            Some(1.0),
        ),
        (
            "portico_auth_failures_total",
            &[("route", "secure"), ("reason", "token_missing")],
            Some(1.0),
        ),
        (
            "portico_auth_failures_total",
            &[("route", "secure"), ("reason", "token_malformed")],
            Some(1.0),
        ),
        (
            "portico_request_duration_seconds_count",
            &[("route", "api")],
            Some(6.0),
        ),
        (
            "portico_upstream_duration_seconds_count",
            &[("route", "api"), ("upstream", "svc")],
            Some(6.0),
        ),
        (
            "portico_upstream_duration_seconds_count",
            &[("route", "limited")],
            None,
        ),
        ("portico_requests_in_flight", &[], Some(0.0)),
        ("portico_upstream_target_healthy", &target_labels, Some(1.0)),
        ("portico_upstream_breaker_state", &target_labels, Some(0.0)),
    ];
    for (metric, labels, want) in expected {
        assert_eq!(value(&m, metric, labels), want, "{metric} {labels:?}");
    }
    let hash = gw.admin_config()["config_hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        value(
            &m,
            "portico_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("config_hash", &hash)
            ]
        ),
        Some(1.0)
    );
    assert!(
        m.iter()
            .all(|(_, labels, _)| labels.values().all(|v| !v.contains('/'))),
        "no raw paths in labels"
    );

    // The process's own resources, and log lines without colour codes (not a terminal).
    for name in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(value(&m, name, &[]).is_some_and(|v| v > 0.0), "{name}");
    }
    assert!(value(&m, "process_cpu_seconds_total", &[]).is_some());
    assert!(!gw.log().contains('\u{1b}'), "ANSI escapes in a log file");
    // Present from the start, before any reload.
    for result in ["ok", "failed"] {
        assert_eq!(
            value(&m, "portico_config_reloads_total", &[("result", result)]),
            Some(0.0)
        );
    }
    assert!(value(
        &m,
        "portico_config_last_reload_success_timestamp_seconds",
        &[]
    )
    .is_some_and(|t| t > 1.0e9));
    gw.write_config(&config(&up, "").replace("per: 1h", "per: 2h"));
    assert!(wait_until(Duration::from_secs(3), || value(
        &scrape(&gw),
        "portico_config_reloads_total",
        &[("result", "ok")]
    ) == Some(1.0))
    .is_some());
    gw.write_config("routes: [");
    assert!(wait_until(Duration::from_secs(3), || value(
        &scrape(&gw),
        "portico_config_reloads_total",
        &[("result", "failed")]
    ) == Some(1.0))
    .is_some());
    let last = value(
        &scrape(&gw),
        "portico_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(last > 1.7e9, "{last}");
}

#[test]
fn access_log_lines_carry_the_request() {
    let up = TestUpstream::start("svc");
    let gw = start(&up, "");
    let c = client();
    let resp = c
        .post(gw.url("/api/items?api_key=hunter2"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("user-agent", "probe/1.0 \"quoted\"")
        .header(
            "referer",
            format!("https://app.example/{}", "r".repeat(400)),
        )
        .body("0123456789")
        .send()
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body_len = resp.bytes().unwrap().len() as u64;
    c.get(gw.url("/secure/x"))
        .bearer_auth(token("alice"))
        .send()
        .unwrap();
    c.get(gw.url("/nope")).send().unwrap();
    let upstream_traceparent = up.seen()[0].headers["traceparent"][0].clone();
    assert!(
        upstream_traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{upstream_traceparent}"
    );
    assert!(
        !upstream_traceparent.contains("00f067aa0ba902b7"),
        "a new span id for the upstream hop"
    );
    let generated = up.seen()[1].headers["traceparent"][0].clone();
    assert_eq!(generated.len(), 55, "generated when absent: {generated}");

    let lines = wait_for_lines(&gw, 3);
    let post = lines
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .expect("line for the POST");
    assert_eq!(post["method"], "POST");
    assert_eq!(post["path"], "/api/items", "no query string by default");
    assert_eq!(post["route"], "api");
    assert_eq!(post["upstream"], "svc");
    assert_eq!(post["target"], up.addr.to_string());
    assert_eq!(post["status"], 200);
    assert_eq!(post["client_ip"], "127.0.0.1");
    assert_eq!(post["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(post["span_id"].as_str(), upstream_traceparent.get(36..52));
    assert_eq!(post["protocol"], "HTTP/1.1");
    assert_eq!(post["host"], gw.proxy.to_string());
    assert_eq!(post["user_agent"], "probe/1.0 \"quoted\"");
    let referer = post["referer"].as_str().unwrap();
    assert_eq!(referer.len(), 256, "client header text is cut");
    assert!(referer.starts_with("https://app.example/rrr"));
    assert_eq!(post["bytes_in"], 10);
    assert!(post["bytes_out"].as_u64().unwrap() >= body_len);
    assert!(post["duration_ms"].as_f64().unwrap() >= post["upstream_ms"].as_f64().unwrap());
    assert!(post["time"].as_str().unwrap().ends_with('Z'));
    assert!(post.get("error").is_none() && post.get("user").is_none());
    let secure = lines.iter().find(|l| l["route"] == "secure").unwrap();
    assert_eq!(secure["user"], "alice");
    let missing = lines.iter().find(|l| l["path"] == "/nope").unwrap();
    assert_eq!(
        (missing["status"].as_u64(), missing["error"].as_str()),
        (Some(404), Some("route_not_found"))
    );
    assert!(
        !gw.log().contains("hunter2"),
        "query strings are not logged by default"
    );
}

fn wait_for_lines(gw: &Gateway, n: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    wait_until(Duration::from_secs(3), || {
        lines = access_lines(gw);
        lines.len() >= n
    });
    lines
}

#[test]
fn access_log_sampling_exclusion_and_query_are_configurable() {
    let up = TestUpstream::start("svc");
    let gw = start(
        &up,
        "telemetry:\n  access_log: { exclude: [client_ip, trace_id], query: true }\n",
    );
    client().get(gw.url("/api/x?page=2")).send().unwrap();
    let line = &wait_for_lines(&gw, 1)[0];
    assert_eq!(line["path"], "/api/x?page=2");
    assert!(line.get("client_ip").is_none() && line.get("trace_id").is_none());
    // The log is complete once the gateway has stopped (its exit writes out the buffer).
    let mut gw = start(&up, "telemetry:\n  access_log: { sample: 0.0 }\n");
    for _ in 0..20 {
        client().get(gw.url("/api/x")).send().unwrap();
    }
    gw.stop();
    assert!(access_lines(&gw).is_empty(), "sample: 0 logs nothing");
    let mut gw = start(&up, "telemetry:\n  access_log: { enabled: false }\n");
    client().get(gw.url("/api/x")).send().unwrap();
    gw.stop();
    assert!(access_lines(&gw).is_empty());
}

#[test]
fn admin_api_shows_config_routes_and_upstreams_without_secrets() {
    let up = TestUpstream::start("svc");
    let redis = "redis: { url: \"redis://:redis-pass-77@127.0.0.1:1/0\" }\n";
    let mut gw = start(&up, redis);
    let t = token("bob");
    client()
        .get(gw.url("/secure/x"))
        .bearer_auth(&t)
        .send()
        .unwrap();
    let cfg = gw.admin_config();
    assert_eq!(
        cfg["config"]["auth"]["hs"]["secret_env"], "PORTICO_TEST_OBS_SECRET",
        "the variable is named, not shown"
    );
    assert_eq!(cfg["config"]["redis"]["url"], "redis://***@127.0.0.1:1/0");
    assert_eq!(cfg["config"]["routes"][0]["name"], "api");
    let text = cfg.to_string();
    let routes: Value = client()
        .get(gw.admin_url("/routes"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(routes["routes"][2]["name"], "secure");
    assert_eq!(routes["routes"][2]["auth"], "hs");
    assert_eq!(routes["routes"][1]["rate_limit"], "one");
    assert_eq!(routes["routes"][0]["action"]["upstream"], "svc");
    let ups: Value = client()
        .get(gw.admin_url("/upstreams"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let target = &ups["upstreams"]["svc"]["targets"][0];
    assert_eq!(target["target"], up.addr.to_string());
    assert_eq!(
        (target["healthy"].as_bool(), target["breaker"].as_str()),
        (Some(true), Some("closed"))
    );
    gw.stop();
    let log = gw.log();
    for secret in [SECRET, "redis-pass-77", t.as_str()] {
        assert!(!text.contains(secret), "secret in /config");
        assert!(!log.contains(secret), "secret in the logs");
    }
}

/// Answers every connection (for at most 10 s) with a response head that does not parse,
/// echoing a cookie: what a hostile or broken upstream sends.
fn broken_upstream() -> std::net::SocketAddr {
    scripted_upstream(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: session=ECHOED-SECRET\r\nbroken header line\r\n\r\n",
    )
}

/// What an operator reads during an incident: a malformed answer has its own code, and the
/// failure, breaker and health lines name the upstream and the target (in `addr`: a field
/// called `target` would collide with the record's module).
#[test]
fn incident_log_lines_name_the_upstream_and_target() {
    let broken = broken_upstream();
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  broken: {{ targets: ["{broken}"], retries: {{ attempts: 0 }}, breaker: {{ consecutive_failures: 1, open_for: 1m }} }}
  dead: {{ targets: ["{dead}"], health_check: {{ path: /health, interval: 1s, unhealthy_after: 1 }} }}
routes:
  - {{ name: bad, match: {{ path_prefix: /bad }}, upstream: broken }}
  - {{ name: gone, match: {{ path_prefix: /gone }}, upstream: dead }}
"#
    ));
    let resp = client().get(gw.url("/bad/x")).send().unwrap();
    assert_json_error(resp, 502, "upstream_bad_response");
    let records = || -> Vec<Value> {
        gw.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let find = |message: &str| records().into_iter().find(|r| r["message"] == message);
    // The request's lines (its failure, then the breaker's) are written once its answer is
    // out; the health check runs apart.
    let logged = wait_until(Duration::from_secs(10), || {
        [
            "target unhealthy: removed from balancing",
            "request failed",
            "circuit opened",
        ]
        .iter()
        .all(|m| find(m).is_some())
    });
    assert!(logged.is_some(), "{}", gw.log());
    let failed = find("request failed").unwrap();
    assert_eq!(
        (&failed["code"], &failed["upstream"], &failed["addr"]),
        (
            &"upstream_bad_response".into(),
            &"broken".into(),
            &broken.to_string().into()
        ),
        "{failed}"
    );
    assert_eq!(
        (&failed["cause"], &failed["side"]),
        (&"InvalidHTTPHeader".into(), &"upstream".into())
    );
    let opened = find("circuit opened").unwrap();
    assert_eq!(
        (&opened["upstream"], &opened["addr"]),
        (&"broken".into(), &broken.to_string().into())
    );
    let health = find("target unhealthy: removed from balancing").unwrap();
    assert_eq!(
        (&health["upstream"], &health["addr"]),
        (&"dead".into(), &dead.to_string().into())
    );
    assert!(
        health["target"].as_str().unwrap().starts_with("portico"),
        "{health}"
    );
}

/// Credentials in URLs, query strings and bytes echoed by an upstream never reach the log,
/// `/health` or a refused reload's error.
#[test]
fn secrets_in_urls_queries_and_upstream_bytes_are_never_logged() {
    let broken = broken_upstream();
    let dead = dead_addr();
    let body = format!(
        "server: {{ threads: 1 }}\nupstreams:\n  bad: {{ targets: [\"{broken}\"], retries: {{ attempts: 0 }} }}\nauth:\n  remote: {{ algorithms: [RS256], jwks_url: \"http://user:p@ss-URLSECRET@{dead}/jwks?token=QUERY-URLSECRET\", jwks_refresh: 1s }}\nroutes:\n  - {{ name: bad, match: {{ path_prefix: /bad }}, upstream: bad }}\n  - {{ name: secure, match: {{ path_prefix: /secure }}, respond: {{ text: x }}, auth: remote }}\n"
    );
    let mut gw = Gateway::start(&body);
    let resp = client()
        .get(gw.url("/bad/x?token=REQUEST-QUERY-SECRET"))
        .send()
        .unwrap();
    assert_json_error(resp, 502, "upstream_bad_response");
    let fetched = wait_until(Duration::from_secs(10), || {
        gw.log().contains("JWKS fetch failed")
    });
    assert!(fetched.is_some(), "{}", gw.log());
    gw.write_config(&body.replace("http://user", "ftp://user"));
    let refused = wait_until(Duration::from_secs(10), || {
        gw.admin_json("/health")["last_reload"]["result"] == "failed"
    });
    assert!(refused.is_some(), "{}", gw.log());
    let health = gw.admin_json("/health").to_string();
    assert!(health.contains("ftp://***@"), "{health}");
    gw.stop();
    let log = gw.log();
    assert!(log.contains("request failed"), "{log}");
    for secret in ["URLSECRET", "ECHOED-SECRET", "REQUEST-QUERY-SECRET", "p@ss"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
        assert!(!health.contains(secret), "`{secret}` in /health: {health}");
    }
}

/// `server.log_format`: JSON records one per line (a refused reload is one record with its
/// diagnostics as a field), text on request, and `PORTICO_LOG_FORMAT` over the config.
#[test]
fn log_records_are_json_or_text_as_configured() {
    let config = |format: &str, route: &str| {
        format!(
            "server: {{ log_format: {format} }}\nroutes:\n  - {{ name: v, match: {{ {route}: /v }}, respond: {{ text: one }} }}\n"
        )
    };
    let gw = Gateway::start(&config("json", "path"));
    gw.overwrite_config(&config("json", "pathx"));
    let refused = wait_until(Duration::from_secs(10), || {
        gw.log().contains("config refused")
    });
    assert!(refused.is_some(), "{}", gw.log());
    let records: Vec<Value> = gw
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|r| r["message"] == "config refused, the running config stays")
        .collect();
    assert_eq!(refusals.len(), 1, "{records:?}");
    let refusal = refusals[0];
    assert_eq!(refusal["level"], "ERROR");
    assert_eq!(refusal["trigger"], "file_change");
    let errors = refusal["errors"].as_str().unwrap();
    assert!(
        errors.contains("gateway.yaml:")
            && errors.contains("unknown field `pathx`")
            && errors.contains("help: did you mean `path`?"),
        "{errors}"
    );
    assert!(records
        .iter()
        .all(|r| r["timestamp"].is_string() || r["request_id"].is_string()));

    // Text, asked for by the environment over the config's `json`.
    let gw = Gateway::start_with_env(&[("PORTICO_LOG_FORMAT", "text")], &config("json", "path"));
    assert_eq!(client().get(gw.url("/v")).send().unwrap().status(), 200);
    let started = wait_until(Duration::from_secs(10), || {
        gw.log().contains("portico starting")
    });
    assert!(started.is_some(), "{}", gw.log());
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("portico starting"))
        .unwrap();
    assert!(line.contains(" INFO ") && !line.starts_with('{'), "{line}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file");
    // A refused reload is one line in text too, its diagnostics in `errors`.
    gw.overwrite_config(&config("json", "pathx"));
    let refused = wait_until(Duration::from_secs(10), || {
        gw.log().contains("config refused")
    });
    assert!(refused.is_some(), "{}", gw.log());
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("config refused")).unwrap();
    assert!(
        line.contains(" ERROR ")
            && line.contains("errors=")
            && line.contains("unknown field `pathx`")
            && line.contains("(help: did you mean `path`?"),
        "{line}"
    );
}
