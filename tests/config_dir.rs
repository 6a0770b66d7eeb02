//! A config directory: a base file and one file per team, merged; a team's broken file
//! keeps its last good version while the others' edits go live.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIVE_WITHIN: Duration = Duration::from_secs(10);

/// A route answering `text` at `path`.
fn respond(name: &str, path: &str, text: &str) -> String {
    format!("  - {{ name: {name}, match: {{ path: {path} }}, respond: {{ text: {text} }} }}\n")
}

fn team(routes: &[(&str, &str, &str)]) -> String {
    let mut out = String::from("routes:\n");
    for (name, path, text) in routes {
        out.push_str(&respond(name, path, text));
    }
    out
}

/// Starts `run -c conf` where conf/ holds the base (`base` after `listen:`) and `files`.
fn start_dir(base: &str, files: &[(&str, String)]) -> Gateway {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    Gateway::start_with(&["run"], base, move |dir, text| {
        let conf = dir.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("gateway.yaml"), text).unwrap();
        for (name, text) in &files {
            std::fs::write(conf.join(name), text).unwrap();
        }
        PathBuf::from("conf")
    })
}

/// Writes a team file the way editors do: aside, then renamed over.
fn put(gw: &Gateway, name: &str, text: &str) {
    let tmp = gw.config.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, gw.config.join(name)).unwrap();
}

fn body(gw: &Gateway, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn serves(gw: &Gateway, path: &str, text: &str) -> bool {
    body(gw, path) == (200, text.to_string())
}

/// Each file's `/health` entry: (file name, status, first error).
fn file_states(gw: &Gateway) -> Vec<(String, String, Option<String>)> {
    let health = gw.admin_json("/health");
    health["config_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let file = f["file"].as_str().unwrap();
            let name = Path::new(file).file_name().unwrap().to_string_lossy();
            let error = f["errors"][0].as_str().map(String::from);
            (name.into(), f["status"].as_str().unwrap().into(), error)
        })
        .collect()
}

/// A file's status and first error (`absent` when `/health` does not list it).
fn state_of(gw: &Gateway, file: &str) -> (String, Option<String>) {
    match file_states(gw)
        .into_iter()
        .find(|(name, _, _)| name == file)
    {
        Some((_, status, error)) => (status, error),
        None => ("absent".into(), None),
    }
}

#[test]
fn three_teams_and_a_base_route_in_order_and_each_file_is_shown() {
    let users = TestUpstream::start("users");
    let team_b = format!(
        "upstreams:\n  users: {{ targets: [{}] }}\nroutes:\n  - {{ name: b-users, match: {{ path_prefix: /b/users }}, upstream: users }}\n",
        users.addr
    );
    let gw = start_dir(
        &format!("routes:\n{}", respond("base-health", "/healthz", "base")),
        &[
            ("team-a.yaml", team(&[("a-one", "/a/one", "a1")])),
            ("team-b.yaml", team_b),
            ("team-c.yaml", team(&[("c-one", "/c/one", "c1")])),
        ],
    );
    assert!(serves(&gw, "/healthz", "base"));
    assert!(serves(&gw, "/a/one", "a1"));
    assert!(serves(&gw, "/c/one", "c1"));
    let r = client().get(gw.url("/b/users/7")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "users");
    let routes = gw.admin_json("/routes");
    let order: Vec<(&str, &str)> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r["defined_at"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("base-health", "conf/gateway.yaml:6:7"),
            ("a-one", "conf/team-a.yaml:2:7"),
            ("b-users", "conf/team-b.yaml:4:7"),
            ("c-one", "conf/team-c.yaml:2:7"),
        ]
    );
    let states = file_states(&gw);
    let names: Vec<(&str, &str)> = states
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("gateway.yaml", "ok"),
            ("team-a.yaml", "ok"),
            ("team-b.yaml", "ok"),
            ("team-c.yaml", "ok")
        ]
    );
    assert_eq!(
        metric(&gw, "portico_config_file_ok{file=\"team-b.yaml\"}"),
        1.0
    );
}

#[test]
fn a_broken_team_file_keeps_its_last_good_version_while_another_teams_edit_goes_live() {
    let gw = start_dir(
        "",
        &[
            ("team-a.yaml", team(&[("a-one", "/a/one", "a1")])),
            ("team-b.yaml", team(&[("b-one", "/b/one", "b1")])),
        ],
    );
    assert!(serves(&gw, "/b/one", "b1"));
    // Team a breaks its file (an unknown key, and a changed answer that must not go live).
    put(
        &gw,
        "team-a.yaml",
        "routes:\n  - { name: a-one, match: { path: /a/one }, respond: { text: broken } }\n  - { name: a-two, matc: { path: /a/two } }\n",
    );
    assert!(
        wait_until(LIVE_WITHIN, || state_of(&gw, "team-a.yaml").0 == "stale").is_some(),
        "{}",
        gw.log()
    );
    let (_, error) = state_of(&gw, "team-a.yaml");
    let error = error.unwrap();
    assert!(
        error.starts_with("conf/team-a.yaml:3:20: error:")
            && error.contains("unknown field `matc`"),
        "{error}"
    );
    // Team b's edit goes live beside team a's last good version.
    put(&gw, "team-b.yaml", &team(&[("b-one", "/b/one", "b2")]));
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/b/one", "b2")).is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a/one", "a1"));
    assert_eq!(body(&gw, "/a/two").0, 404);
    assert_eq!(state_of(&gw, "team-a.yaml").0, "stale");
    assert_eq!(state_of(&gw, "team-b.yaml").0, "ok");
    // Both reloads kept team a's last good version: partial, never ok or failed.
    let reloads = |result: &str| {
        metric(
            &gw,
            &format!("portico_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(
        (reloads("ok"), reloads("partial"), reloads("failed")),
        (0.0, 2.0, 0.0)
    );
    assert!(
        !gw.log().contains("back to the running config"),
        "{}",
        gw.log()
    );
    assert_eq!(
        metric(&gw, "portico_config_file_ok{file=\"team-a.yaml\"}"),
        0.0
    );
    let health = gw.admin_json("/health");
    assert_eq!(health["last_reload"]["result"], "partial");
    assert!(health["config_files"][1]["since"].as_u64().unwrap() > 0);
    assert!(gw.log().contains(
        r#""message":"config file refused, its last good version stays","trigger":"file_change","file":"conf/team-a.yaml""#
    ), "{}", gw.log());
    // Fixed, it goes live and is ok again.
    put(&gw, "team-a.yaml", &team(&[("a-one", "/a/one", "a3")]));
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/a/one", "a3")).is_some());
    assert_eq!(state_of(&gw, "team-a.yaml"), ("ok".into(), None));
    assert_eq!(gw.admin_json("/health")["last_reload"]["result"], "ok");
    assert_eq!(reloads("ok"), 1.0);
}

#[test]
fn a_name_a_changed_file_takes_from_an_unchanged_one_refuses_the_changed_file() {
    let gw = start_dir(
        "",
        &[
            ("alpha.yaml", team(&[("a", "/a", "a1")])),
            ("beta.yaml", team(&[("b", "/b", "b1")])),
            ("zeta.yaml", team(&[("payments", "/pay", "z1")])),
        ],
    );
    // Alpha takes zeta's route name (the duplicate is found at zeta, the later file) while
    // beta makes an edit of its own: alpha is refused, beta's edit goes live, zeta is ok.
    let dir = gw.config.clone();
    std::fs::write(
        dir.join(".alpha.tmp"),
        team(&[("a", "/a", "a2"), ("payments", "/a/pay", "a")]),
    )
    .unwrap();
    std::fs::write(dir.join(".beta.tmp"), team(&[("b", "/b", "b2")])).unwrap();
    std::fs::rename(dir.join(".alpha.tmp"), dir.join("alpha.yaml")).unwrap();
    std::fs::rename(dir.join(".beta.tmp"), dir.join("beta.yaml")).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/b", "b2")).is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a", "a1"));
    assert!(serves(&gw, "/pay", "z1"));
    assert_eq!(state_of(&gw, "zeta.yaml"), ("ok".into(), None));
    let (status, error) = state_of(&gw, "alpha.yaml");
    assert_eq!(status, "stale");
    let error = error.unwrap();
    assert!(error.contains("duplicate route name `payments`"), "{error}");
    assert_eq!(
        metric(&gw, "portico_config_file_ok{file=\"zeta.yaml\"}"),
        1.0
    );
    assert_eq!(
        metric(&gw, "portico_config_file_ok{file=\"alpha.yaml\"}"),
        0.0
    );
}

#[test]
fn a_change_that_needs_another_files_refused_version_is_refused_saying_why() {
    let gw = start_dir(
        "",
        &[
            ("team-a.yaml", team(&[("a-one", "/a/one", "a1")])),
            ("team-b.yaml", team(&[("b-one", "/b/one", "b1")])),
            ("team-c.yaml", team(&[("c-one", "/c/one", "c1")])),
        ],
    );
    let shared = TestUpstream::start("shared");
    // All at once: team a defines an upstream in a file that is refused (its limit has an
    // unknown key), team b starts using that upstream, team c makes an edit of its own.
    let dir = gw.config.clone();
    let stage = |name: &str, text: String| {
        std::fs::write(dir.join(format!(".{name}.tmp")), text).unwrap();
    };
    stage(
        "team-a.yaml",
        format!(
            "upstreams:\n  shared: {{ targets: [{}] }}\nrate_limits:\n  slow: {{ rate: 0, per: 1s }}\nroutes:\n  - {{ name: a-one, match: {{ path: /a/one }}, upstream: shared, rate_limit: slow }}\n",
            shared.addr
        ),
    );
    stage(
        "team-b.yaml",
        "routes:\n  - { name: b-one, match: { path_prefix: /b/one }, upstream: shared }\n".into(),
    );
    stage("team-c.yaml", team(&[("c-one", "/c/one", "c2")]));
    for name in ["team-a.yaml", "team-b.yaml", "team-c.yaml"] {
        std::fs::rename(dir.join(format!(".{name}.tmp")), dir.join(name)).unwrap();
    }
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/c/one", "c2")).is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a/one", "a1"));
    assert!(serves(&gw, "/b/one", "b1"));
    let (status, error) = state_of(&gw, "team-b.yaml");
    assert_eq!(status, "stale");
    let error = error.unwrap();
    assert!(
        error.starts_with("conf/team-b.yaml:2:62: error:")
            && error.contains("unknown upstream `shared`"),
        "{error}"
    );
    assert!(
        error.contains("`shared` is defined only in the new version of conf/team-a.yaml, which is refused: fix that file first"),
        "{error}"
    );
    let (status, error) = state_of(&gw, "team-a.yaml");
    assert_eq!(status, "stale");
    assert!(error.unwrap().starts_with("conf/team-a.yaml:4:"));
}

#[test]
fn a_configmap_swap_of_every_file_is_one_reload() {
    let gw = Gateway::start_with(&["run"], "", |dir, text| {
        // Kubernetes' layout: each key a symlink into ..data, ..data -> ..<timestamp>.
        let conf = dir.join("conf");
        let v1 = conf.join("..2026_01");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("gateway.yaml"), text).unwrap();
        std::fs::write(v1.join("team-a.yaml"), team(&[("a", "/a", "a1")])).unwrap();
        std::fs::write(v1.join("team-b.yaml"), team(&[("b", "/b", "b1")])).unwrap();
        std::os::unix::fs::symlink("..2026_01", conf.join("..data")).unwrap();
        for name in ["gateway.yaml", "team-a.yaml", "team-b.yaml"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), conf.join(name)).unwrap();
        }
        PathBuf::from("conf")
    });
    assert!(serves(&gw, "/a", "a1"));
    let before = gw.admin_json("/health")["last_reload"]["succeeded"]
        .as_u64()
        .unwrap();
    let conf = gw.config.clone();
    let v2 = conf.join("..2026_02");
    std::fs::create_dir(&v2).unwrap();
    let base = std::fs::read_to_string(conf.join("gateway.yaml")).unwrap();
    std::fs::write(v2.join("gateway.yaml"), base).unwrap();
    // Team b moves its route to team a's file in the same swap: apart, either file alone
    // would be a duplicate name.
    std::fs::write(
        v2.join("team-a.yaml"),
        team(&[("a", "/a", "a2"), ("b", "/b", "b2")]),
    )
    .unwrap();
    std::fs::write(v2.join("team-b.yaml"), "routes: []\n").unwrap();
    std::os::unix::fs::symlink("..2026_02", conf.join("..data_tmp")).unwrap();
    std::fs::rename(conf.join("..data_tmp"), conf.join("..data")).unwrap();
    std::fs::remove_dir_all(conf.join("..2026_01")).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/b", "b2")).is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a", "a2"));
    let health = gw.admin_json("/health");
    assert_eq!(health["last_reload"]["result"], "ok", "{health}");
    assert_eq!(
        health["last_reload"]["succeeded"].as_u64().unwrap(),
        before + 1
    );
    assert_eq!(health["last_reload"]["failed"], 0);
}

#[test]
fn a_deleted_file_takes_its_routes_and_a_new_file_brings_its_own() {
    let gw = start_dir(
        "",
        &[
            ("team-a.yaml", team(&[("a", "/a", "a1")])),
            ("team-b.yaml", team(&[("b", "/b", "b1")])),
        ],
    );
    std::fs::remove_file(gw.config.join("team-b.yaml")).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || body(&gw, "/b").0 == 404).is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a", "a1"));
    let files: Vec<String> = file_states(&gw).into_iter().map(|f| f.0).collect();
    assert_eq!(files, ["gateway.yaml", "team-a.yaml"]);
    assert!(!metrics_text(&gw).contains("team-b.yaml"));
    // A new file that is broken has no good version: it is refused and stays out.
    put(
        &gw,
        "team-c.yaml",
        "routes:\n  - { name: c, match: { path: /c } }\n",
    );
    assert!(wait_until(LIVE_WITHIN, || state_of(&gw, "team-c.yaml").0 == "refused").is_some());
    assert_eq!(body(&gw, "/c").0, 404);
    put(&gw, "team-c.yaml", &team(&[("c", "/c", "c1")]));
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/c", "c1")).is_some());
}

#[test]
fn the_base_file_is_all_or_nothing() {
    let gw = start_dir("", &[("team-a.yaml", team(&[("a", "/a", "a1")]))]);
    let base = std::fs::read_to_string(gw.config.join("gateway.yaml")).unwrap();
    // A team edit and a broken base at once: nothing of it goes live.
    put(&gw, "team-a.yaml", &team(&[("a", "/a", "a2")]));
    put(
        &gw,
        "gateway.yaml",
        &format!("{base}server: {{ threads: none }}\n"),
    );
    assert!(
        wait_until(LIVE_WITHIN, || state_of(&gw, "gateway.yaml").0 == "stale").is_some(),
        "{}",
        gw.log()
    );
    assert!(serves(&gw, "/a", "a1"));
    assert_eq!(gw.admin_json("/health")["last_reload"]["result"], "failed");
    put(&gw, "gateway.yaml", &base);
    assert!(wait_until(LIVE_WITHIN, || serves(&gw, "/a", "a2")).is_some());
}

#[test]
fn include_globs_add_team_files_to_a_base_file() {
    let gw = Gateway::start_with(&["run"], "include: [teams/*.yaml]\n", |dir, text| {
        std::fs::create_dir(dir.join("teams")).unwrap();
        std::fs::write(dir.join("teams/x.yaml"), team(&[("x", "/x", "x1")])).unwrap();
        std::fs::write(dir.join("teams/notes.txt"), "not config").unwrap();
        std::fs::write(dir.join("gateway.yaml"), text).unwrap();
        PathBuf::from("gateway.yaml")
    });
    assert!(serves(&gw, "/x", "x1"));
    let teams = gw.dir.path().join("teams");
    std::fs::write(teams.join("y.yaml"), team(&[("y", "/y", "y1")])).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/y", "y1")).is_some(),
        "{}",
        gw.log()
    );
    // A second include naming the same files (another spelling) reads each once, and a
    // directory made after the start joins when it appears.
    let base = std::fs::read_to_string(&gw.config).unwrap();
    let base = base.replace(
        "include: [teams/*.yaml]",
        "include: [teams/*.yaml, ./teams/x.yaml, later/*.yaml]",
    );
    std::fs::write(gw.dir.path().join(".g.tmp"), base).unwrap();
    std::fs::rename(gw.dir.path().join(".g.tmp"), &gw.config).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || gw.admin_json("/health")["config_files"]
            .as_array()
            .unwrap()
            .len()
            == 3)
        .is_some(),
        "{}",
        gw.log()
    );
    assert_eq!(gw.admin_json("/health")["last_reload"]["result"], "ok");
    let later = gw.dir.path().join("later");
    std::fs::create_dir(&later).unwrap();
    std::fs::write(later.join("z.yaml"), team(&[("z", "/z", "z1")])).unwrap();
    assert!(
        wait_until(LIVE_WITHIN, || serves(&gw, "/z", "z1")).is_some(),
        "{}",
        gw.log()
    );
}

/// `portico check conf` in a fresh directory holding `files`.
fn check(files: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    for (name, text) in files {
        std::fs::write(conf.join(name), text).unwrap();
    }
    let (code, _, err) = portico(&["check", "conf"], dir.path());
    (code, err)
}

const BASE: &str = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\n";

#[test]
fn a_name_defined_in_two_files_is_refused_naming_both() {
    let a = "upstreams:\n  users: { targets: [127.0.0.1:9] }\nroutes:\n  - { name: r, match: { path: /a }, upstream: users }\n";
    let b = "upstreams:\n  users: { targets: [127.0.0.1:8] }\nroutes:\n  - { name: r, match: { path: /b }, respond: { text: b } }\n";
    let (code, err) = check(&[("gateway.yaml", BASE), ("a.yaml", a), ("b.yaml", b)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("conf/b.yaml:2:12: error: `users` is defined twice in `upstreams`\n  help: the first is at conf/a.yaml:2:12; names are global across a config's files, so rename one"),
        "{err}"
    );
    let (code, err) = check(&[
        ("gateway.yaml", BASE),
        ("a.yaml", a),
        ("b.yaml", &b.replace("users:", "others:")),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("conf/b.yaml:4:13: error: duplicate route name `r`\n  help: the first is at conf/a.yaml:4:13;"),
        "{err}"
    );
}

#[test]
fn defaults_and_merge_keys_apply_and_their_errors_point_at_the_right_lines() {
    let base = format!("{BASE}cors:\n  web: {{ allow_origins: [https://app.example] }}\n");
    let team = "\
defaults: { cors: web, auth: api }
x-slow: &slow
  timeout: 2 seconds
routes:
  - name: a
    match: { path: /a }
    respond: { text: a }
    <<: *slow
  - { name: b, match: { path: /b }, respond: { text: b }, auth: none }
";
    let (code, err) = check(&[("gateway.yaml", &base), ("team.yaml", team)]);
    assert_eq!(code, 1, "{err}");
    // The merged key is reported where its anchor wrote it.
    assert!(
        err.contains("conf/team.yaml:3:12: error: invalid duration `2 seconds`"),
        "{err}"
    );
    let team = team.replace("2 seconds", "2s");
    let (code, err) = check(&[("gateway.yaml", &base), ("team.yaml", &team)]);
    assert_eq!(code, 1, "{err}");
    // The default's unknown policy is reported at the default.
    assert!(
        err.contains("conf/team.yaml:1:30: error: defaults: no `auth` entry is named `api`"),
        "{err}"
    );
    // Once it exists, `auth: none` opts b out and a takes it.
    let base = format!("{base}auth:\n  api: {{ algorithms: [HS256], secret_env: PATH }}\n");
    let (code, err) = check(&[("gateway.yaml", &base), ("team.yaml", &team)]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn defaults_reach_the_routes_that_do_not_say_otherwise() {
    let gw = start_dir(
        "cors:\n  web: { allow_origins: [https://app.example] }\n",
        &[(
            "team.yaml",
            "defaults: { cors: web }\nroutes:\n  - { name: a, match: { path: /a }, respond: { text: a } }\n  - { name: b, match: { path: /b }, respond: { text: b }, cors: none }\n".into(),
        )],
    );
    let get = |path: &str| {
        client()
            .get(gw.url(path))
            .header("origin", "https://app.example")
            .send()
            .unwrap()
    };
    assert_eq!(
        get("/a").headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(get("/b")
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[test]
fn a_broken_file_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("gateway.yaml"), BASE).unwrap();
    std::fs::write(conf.join("a.yaml"), team(&[("a", "/a", "a")])).unwrap();
    std::fs::write(
        conf.join("b.yaml"),
        "routes:\n  - { name: b, match: { path: /b } }\n",
    )
    .unwrap();
    let (code, _, err) = portico(&["run", "-c", "conf"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("conf/b.yaml:2:7: error: route `b` says nothing to do with a request"),
        "{err}"
    );
}

#[test]
fn route_test_openapi_and_diff_read_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    for (conf, text) in [("old", "a1"), ("new", "a2")] {
        let conf = dir.path().join(conf);
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("gateway.yaml"), BASE).unwrap();
        std::fs::write(conf.join("a.yaml"), team(&[("a", "/a", text)])).unwrap();
    }
    let (code, out, err) = portico(&["route", "-c", "old", "GET", "/a"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("GET /a → route `a` (old/a.yaml:2:7)"),
        "{out}"
    );
    let (code, out, err) = portico(&["openapi", "-c", "old"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"/a\""), "{out}");
    let (code, out, err) = portico(&["diff", "old", "new"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("a2"), "{out}");
}

#[test]
fn a_team_file_cannot_read_the_gateways_environment_or_files_outside_the_directory() {
    let secret_route =
        "routes:\n  - { name: s, match: { path: /s }, respond: { text: \"${ADMIN_TOKEN}\" } }\n";
    let (code, err) = check(&[("gateway.yaml", BASE), ("team.yaml", secret_route)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("conf/team.yaml:2:55: error: a team file may not read the environment variable `ADMIN_TOKEN`\n  help: list it in the base file's `team_env: [ADMIN_TOKEN]`"),
        "{err}"
    );
    // The base lists what teams may read.
    let base = format!("{BASE}team_env: [HOME]\n");
    let (code, err) = check(&[
        ("gateway.yaml", &base),
        ("team.yaml", &secret_route.replace("ADMIN_TOKEN", "HOME")),
    ]);
    assert_eq!(code, 0, "{err}");
    for file in ["/etc/hostname", "../outside.json"] {
        let validate = format!("routes:\n  - {{ name: v, match: {{ path: /v }}, respond: {{ text: x }}, validate: {{ body: \"{file}\" }} }}\n");
        let (code, err) = check(&[("gateway.yaml", BASE), ("team.yaml", &validate)]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!(
                "a team file may not name `{file}`, outside the config directory"
            )),
            "{err}"
        );
    }
}

#[test]
fn errors_about_names_with_dots_point_into_the_team_file() {
    let limits = "rate_limits:\n  team.a: { requests: 0, per: 1s }\n";
    let (code, err) = check(&[("gateway.yaml", BASE), ("team.yaml", limits)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("conf/team.yaml:2:"), "{err}");
}

#[test]
fn the_team_file_schema_accepts_anchor_keys_and_refuses_base_sections() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("schemas/team.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let ok = serde_json::json!({"x-slow": {"timeout": "10s"}, "defaults": {"auth": "api"}, "routes": []});
    assert!(validator.is_valid(&ok));
    let listen = serde_json::json!({"listen": {"proxy": "0.0.0.0:80"}});
    assert!(!validator.is_valid(&listen));
}
