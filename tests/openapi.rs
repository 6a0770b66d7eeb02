//! `portico openapi` and admin `/openapi.json`: an OpenAPI 3.1 document of the routes,
//! checked by a real validator (PyPI `openapi-spec-validator`; `make deps` installs it).

mod common;
use common::*;
use serde_json::{json, Value};

fn config(schemas: &str) -> String {
    format!(
        r#"upstreams:
  users: {{ targets: ["127.0.0.1:9"] }}
auth:
  bearer: {{ algorithms: [HS256], secret_env: JWT_SECRET }}
  keyed: {{ algorithms: [HS256], secret_env: JWT_SECRET, token: "header:X-Api-Token" }}
rate_limits:
  per_ip: {{ requests: 10, per: 1s, key: client_ip }}
routes:
  - name: user
    match: {{ path_template: "/users/{{id}}", methods: [GET, PUT] }}
    upstream: users
    auth: bearer
    rate_limit: per_ip
    validate: {{ body: "{schemas}/user.create.json", headers: [X-Tenant], query: [dry_run] }}
  - name: files
    match: {{ path_template: "/files/{{rest...}}", headers: {{ X-Beta: "1" }} }}
    upstream: users
    auth: keyed
  - name: api
    match: {{ path_prefix: /api/ }}
    upstream: users
  - name: ping
    match: {{ path: /ping, methods: [GET] }}
    respond: {{ json: {{ status: ok }} }}
  - name: legacy
    match: {{ path_regex: "^/v[0-9]+/old$" }}
    upstream: users
"#
    )
}

#[test]
fn the_document_is_valid_openapi_and_describes_every_route() {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    let gw = Gateway::start_with_env(&[("JWT_SECRET", "s3cret-value")], &config(schemas));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, gw.config_text(&config(schemas))).unwrap();
    let (code, stdout, stderr) = portico_env(
        &["openapi", "-c", file.to_str().unwrap()],
        dir.path(),
        &[("JWT_SECRET", "s3cret-value")],
    );
    assert_eq!(code, 0, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        doc,
        gw.admin_json("/openapi.json"),
        "the CLI and the admin endpoint agree"
    );
    std::fs::write(dir.path().join("openapi.json"), &stdout).unwrap();
    let checked = std::process::Command::new("openapi-spec-validator")
        .arg(dir.path().join("openapi.json"))
        .output()
        .expect("openapi-spec-validator is not installed: run `make deps`");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"][0]["url"], format!("http://{}", gw.proxy));
    let paths = doc["paths"].as_object().unwrap();
    let listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        listed,
        ["/api/{path}", "/files/{rest}", "/ping", "/users/{id}"]
    );
    assert_eq!(doc["x-portico-unlisted-routes"], json!(["legacy"]));

    // Methods, auth, limits, validation rules and the bundled body schema.
    let user = &paths["/users/{id}"];
    assert_eq!(
        user.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["get", "put"]
    );
    let put = &user["put"];
    assert_eq!(put["security"], json!([{"bearer": []}]));
    let names: Vec<(&str, &str)> = put["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["in"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("path", "id"), ("header", "X-Tenant"), ("query", "dry_run")]
    );
    assert_eq!(
        put["requestBody"]["content"]["application/json"]["schema"],
        json!({"$ref": "#/components/schemas/user.create"})
    );
    assert!(
        user["get"].get("requestBody").is_none(),
        "GET bodies are not validated"
    );
    let statuses: Vec<&str> = put["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for status in [
        "default", "400", "401", "403", "413", "415", "429", "502", "503", "504",
    ] {
        assert!(statuses.contains(&status), "{status} in {statuses:?}");
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["user.create"]["properties"]["address"],
        json!({"$ref": "#/components/schemas/address"}),
        "a $ref to another file is bundled"
    );
    assert!(schemas["address"]["properties"].is_object());
    assert_eq!(
        schemas["Error"]["properties"]["error"]["required"],
        json!(["status", "code", "message", "request_id"])
    );

    // Other token sources, header conditions, prefixes and fixed answers.
    assert_eq!(
        doc["components"]["securitySchemes"]["keyed"],
        json!({"type": "apiKey", "in": "header", "name": "X-Api-Token", "description": "JWT (HS256), verified by the gateway"})
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let files = &paths["/files/{rest}"]["get"];
    assert_eq!(files["parameters"][1]["name"], "X-Beta");
    assert_eq!(files["parameters"][1]["schema"]["enum"], json!(["1"]));
    assert_eq!(
        paths["/ping"]["get"]["responses"]["200"]["content"]["application/json"]["example"],
        json!({"status": "ok"})
    );
    assert_eq!(paths["/api/{path}"]["get"]["tags"], json!(["users"]));
    let any: Vec<&String> = paths["/api/{path}"].as_object().unwrap().keys().collect();
    assert_eq!(
        any,
        ["delete", "get", "head", "options", "patch", "post", "put", "trace"],
        "a route without methods takes any"
    );
}
