//! Every config shipped in the repo: it matches the JSON Schema generated from the code,
//! passes `portico check`, and the deployment manifests are wired as documented.

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    let expanded = portico::config::env::expand(text, |n| std::env::var(n).ok()).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&expanded).unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn the_committed_schema_matches_the_code() {
    let (code, out, err) = portico(&["schema"], &root());
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(root().join("schemas/gateway.schema.json")).unwrap();
    assert!(out == committed, "schemas/gateway.schema.json is stale: run `cargo run -- schema > schemas/gateway.schema.json`");
    let (code, out, err) = portico(&["schema", "--team-file"], &root());
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(root().join("schemas/team.schema.json")).unwrap();
    assert!(out == committed, "schemas/team.schema.json is stale: run `cargo run -- schema --team-file > schemas/team.schema.json`");
}

fn assert_valid(config: &Path, env: &[(&str, &str)]) {
    assert_valid_with("schemas/gateway.schema.json", config, config, env);
}

/// Validates `file` against `schema` and runs `portico check` on `config` (the file, or
/// the directory holding it).
fn assert_valid_with(schema: &str, file: &Path, config: &Path, env: &[(&str, &str)]) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(schema)).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema="),
        "{} starts with the $schema modeline",
        file.display()
    );
    let value = yaml_to_json(&text);
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{} breaks the schema: {errors:?}",
        file.display()
    );
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} fails check:\n{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_example_config_validates_and_passes_check() {
    assert_valid(&root().join("gateway.yaml"), &[]);
    assert_valid(
        &root().join("deploy/compose/samples.yaml"),
        &[("SAMPLE", "messages")],
    );

    // The container layout: /etc/portico/{gateway.yaml,schemas/}.
    let etc = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("deploy/gateway.yaml"),
        etc.path().join("gateway.yaml"),
    )
    .unwrap();
    std::fs::create_dir(etc.path().join("schemas")).unwrap();
    for f in ["user.create.json", "address.json"] {
        std::fs::copy(
            root().join("schemas").join(f),
            etc.path().join("schemas").join(f),
        )
        .unwrap();
    }
    assert_valid(&etc.path().join("gateway.yaml"), &[]);

    // The ConfigMaps, as Kubernetes projects them: one file per data key, one directory.
    let mount = tempfile::tempdir().unwrap();
    for file in ["configmap.yaml", "team-messages.yaml"] {
        let cm = &docs(&format!("deploy/kubernetes/{file}"))[0];
        for (key, value) in cm["data"].as_mapping().unwrap() {
            std::fs::write(
                mount.path().join(key.as_str().unwrap()),
                value.as_str().unwrap(),
            )
            .unwrap();
        }
    }
    assert_valid(
        &mount.path().join("gateway.yaml"),
        &[("JWT_SECRET", "test")],
    );
    assert_valid_with(
        "schemas/team.schema.json",
        &mount.path().join("messages.yaml"),
        mount.path(),
        &[("JWT_SECRET", "test")],
    );
}

fn docs(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

/// Every manifest is checked against the Kubernetes API schemas, unknown fields refused
/// (PyPI `kubernetes-validate`, which carries its schemas; `make deps` installs it). The
/// kustomization is kustomize's own kind, which it has no schema for.
#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "kustomization.yaml")
        .map(|name| format!("deploy/kubernetes/{name}"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(&files)
        .current_dir(root())
        .output()
        .expect("kubernetes-validate is not installed: run `make deps`");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        files.len(),
        "{text}"
    );
}

#[test]
fn manifests_parse_and_mount_the_configmap_as_a_directory() {
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let docs = docs(path.strip_prefix(root()).unwrap().to_str().unwrap());
        assert!(
            docs.iter()
                .all(|d| d["apiVersion"].is_string() && d["kind"].is_string()),
            "{}",
            path.display()
        );
    }
    let deployment = &docs("deploy/kubernetes/deployment.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never receive ConfigMap updates"
    );
    assert_eq!(mount["mountPath"], "/etc/portico");
    assert_eq!(container["args"][2], "/etc/portico");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .unwrap();
    // The base and each team's ConfigMap, projected into one directory.
    let sources: Vec<&serde_yaml::Value> = volume["projected"]["sources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| &s["configMap"]["name"])
        .collect();
    let base = &docs("deploy/kubernetes/configmap.yaml")[0];
    let team = &docs("deploy/kubernetes/team-messages.yaml")[0];
    assert_eq!(
        sources,
        [&base["metadata"]["name"], &team["metadata"]["name"]]
    );
    // Pod Security Standards, restricted level.
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    let tmp = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .expect("a writable /tmp");
    let tmp_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == tmp["name"])
        .unwrap();
    assert!(tmp_volume["emptyDir"].is_mapping());
    // The admin port stays inside the cluster's monitoring, out of the Service.
    let service = &docs("deploy/kubernetes/service.yaml")[0];
    let ports = service["spec"]["ports"].as_sequence().unwrap();
    assert!(
        ports.iter().all(|p| p["targetPort"] != "admin"),
        "{ports:?}"
    );
    let policy = &docs("deploy/kubernetes/networkpolicy.yaml")[0];
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app"],
        "portico"
    );
    // The kustomization lists every manifest here, into one namespace.
    let kustomization = &docs("deploy/kubernetes/kustomization.yaml")[0];
    assert_eq!(kustomization["namespace"], "portico");
    let listed: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for entry in std::fs::read_dir(root().join("deploy/kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name != "kustomization.yaml" {
            assert!(
                listed.contains(&name.as_str()),
                "{name} is not in the kustomization"
            );
        }
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(
        container["resources"]["requests"].is_mapping()
            && container["resources"]["limits"].is_mapping()
    );
    let secret = &docs("deploy/kubernetes/secret.yaml")[0];
    let env = &container["env"][0]["valueFrom"]["secretKeyRef"];
    assert_eq!(env["name"], secret["metadata"]["name"]);

    // Termination must outlast the drain: drain_delay + grace_period + shutdown_timeout.
    let config: serde_yaml::Value =
        serde_yaml::from_str(base["data"]["gateway.yaml"].as_str().unwrap()).unwrap();
    let secs = |v: &serde_yaml::Value| {
        humantime::parse_duration(v.as_str().unwrap())
            .unwrap()
            .as_secs()
    };
    let drain = secs(&config["server"]["drain_delay"])
        + secs(&config["server"]["grace_period"])
        + secs(&config["server"]["shutdown_timeout"]);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > drain);

    let compose = &docs("deploy/docker-compose.yml")[0];
    for (name, service) in compose["services"].as_mapping().unwrap() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(
                root().join("deploy").join(host).exists(),
                "{name:?}: {host} does not exist"
            );
        }
    }
    assert!(compose["services"]["redis"].is_mapping());
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_healthcheck() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for needle in [
        "cmake",
        "USER 10001",
        r#"CMD ["portico", "health"]"#,
        "ENV PORTICO_CONFIG=/etc/portico/gateway.yaml",
        "AS build",
        "COPY Cargo.toml Cargo.lock ./",
        "--mount=type=cache,target=/usr/local/cargo/registry",
        "--mount=type=cache,target=/src/target",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks {needle}");
    }
    // Base images pinned to a release: `rust:1.95-…`, `debian:12.12-…`, never `latest`
    // or a bare major version.
    let images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ARG ")?.split_once("_IMAGE="))
        .map(|(_, image)| image)
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in images {
        let tag = image.split_once(':').map_or("", |(_, t)| t);
        let version = tag.split('-').next().unwrap();
        assert!(
            version.split('.').count() >= 2 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{image} is not pinned to a release"
        );
    }
    assert!(
        !dockerfile.contains("curl"),
        "the healthcheck needs no curl in the image"
    );
    for copied in ["deploy/gateway.yaml", "schemas"] {
        assert!(root().join(copied).exists());
    }
}

/// Editors show each key's description on hover: every property of the schema has one.
#[test]
fn every_schema_property_is_described() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schemas/gateway.schema.json")).unwrap(),
    )
    .unwrap();
    fn undescribed(node: &serde_json::Value, path: &str, out: &mut Vec<String>) {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::Object(props)) = map.get("properties") {
                    for (name, prop) in props {
                        if prop.get("description").is_none() {
                            out.push(format!("{path}.{name}"));
                        }
                    }
                }
                for (key, value) in map {
                    undescribed(value, &format!("{path}/{key}"), out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    undescribed(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    undescribed(&schema, "", &mut missing);
    assert!(
        missing.is_empty(),
        "properties without a description: {missing:?}"
    );
}
