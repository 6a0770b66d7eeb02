//! `networking.k8s.io/v1` Ingress objects and ingress-nginx's annotations → a config
//! directory: a base (listeners, TLS certificates from the Ingress `tls` sections) and one
//! file per namespace (upstreams for the Services, policies, routes).
//!
//! Route order follows nginx's: in each file, an exact host before a wildcard, both before
//! none; exact paths, then regex paths (nginx tries them before prefixes; longest first, as
//! ingress-nginx sorts them), then prefixes, longest first. ingress-nginx's defaults are
//! kept where Portico's differ: timeouts 5s to connect and 60s to read and write, bodies up
//! to 1 MiB. A `Prefix` path `/foo` is what ingress-nginx makes of it: `/foo` exactly
//! and everything under `/foo/`.

use super::{map, name_of, yaml_file, Note, Options, Outcome, Output};
use serde_yaml::Value;
use std::collections::BTreeMap;

const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// The annotations a translation reads (without the prefix).
const HANDLED: &[&str] = &[
    "auth-url",
    "auth-method",
    "auth-response-headers",
    "auth-cache-key",
    "auth-cache-duration",
    "auth-signin",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "rewrite-target",
    "use-regex",
    "ssl-redirect",
    "force-ssl-redirect",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-expose-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "limit-rps",
    "limit-rpm",
    "limit-burst-multiplier",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "backend-protocol",
    "canary",
    "canary-weight",
    "canary-weight-total",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-cookie",
    "affinity",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-expires",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "app-root",
    "upstream-vhost",
];

struct Ingress<'a> {
    namespace: String,
    name: String,
    /// ingress-nginx's annotations, without their prefix.
    nginx: BTreeMap<String, String>,
    spec: &'a Value,
}

impl Ingress<'_> {
    fn object(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn ann(&self, key: &str) -> Option<&str> {
        self.nginx.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        self.ann(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// One route, with what nginx's ordering and canaries need to know.
struct Route {
    host: Option<String>,
    path: String,
    rank: u8,
    seq: usize,
    /// The ingress it came from (`ns/name`).
    from: String,
    value: Value,
}

#[derive(Default)]
struct Team {
    upstreams: BTreeMap<String, Value>,
    auth: BTreeMap<String, Value>,
    rate_limits: BTreeMap<String, Value>,
    cors: BTreeMap<String, Value>,
    ip_access: BTreeMap<String, Value>,
    routes: Vec<Route>,
}

#[derive(Default)]
struct Translation<'o> {
    opts: Option<&'o Options>,
    out: Output,
    teams: BTreeMap<String, Team>,
    /// Default backends: a file of their own that sorts last, so no namespace's catch-all
    /// takes another namespace's routes.
    defaults: Team,
    certificates: Vec<(String, String)>,
    redirect_https: bool,
    seq: usize,
    /// Route names given so far (two Ingresses may share a name across namespaces, and a
    /// file may hold the same Ingress twice).
    names: std::collections::HashSet<String>,
    /// The hosts the Ingresses' TLS sections name.
    tls_hosts: std::collections::BTreeSet<String>,
    /// Upstream and policy names given so far (names are global across the files):
    /// the namespace and definition of each upstream.
    named: BTreeMap<String, Option<(String, Value)>>,
}

/// Translates every Ingress among `objects`.
pub fn translate(objects: &[Value], opts: &Options) -> Output {
    let mut t = Translation {
        opts: Some(opts),
        ..Translation::default()
    };
    t.out.read = objects.len();
    let ingresses: Vec<Ingress> = objects.iter().filter_map(|o| t.ingress(o)).collect();
    t.out.translated = ingresses.len();
    let (canaries, mains): (Vec<&Ingress>, Vec<&Ingress>) =
        ingresses.iter().partition(|i| i.flag("canary"));
    for ing in &mains {
        t.main(ing);
    }
    for ing in &canaries {
        t.canary(ing);
    }
    t.finish()
}

impl Translation<'_> {
    fn opts(&self) -> &Options {
        self.opts.expect("set by translate")
    }

    fn note(&mut self, ing: &Ingress, what: &str, outcome: Outcome, why: impl Into<String>) {
        let what = match HANDLED.contains(&what) {
            true => format!("{NGINX}{what}"),
            false => what.to_string(),
        };
        self.out.notes.push(Note {
            object: ing.object(),
            what,
            outcome,
            why: why.into(),
        });
    }

    /// An Ingress of `networking.k8s.io/v1`, or None (with a note for other versions).
    fn ingress<'v>(&mut self, o: &'v Value) -> Option<Ingress<'v>> {
        if o.get("kind").and_then(Value::as_str) != Some("Ingress") {
            return None;
        }
        let meta = o.get("metadata")?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
        let name = text(meta.get("name")).unwrap_or_default();
        let namespace = text(meta.get("namespace")).unwrap_or_else(|| "default".into());
        let mut nginx = BTreeMap::new();
        for (k, v) in meta
            .get("annotations")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let (Some(k), Some(v)) = (k.as_str(), value_text(v)) else {
                continue;
            };
            if let Some(key) = k.strip_prefix(NGINX) {
                nginx.insert(key.to_string(), v);
            }
        }
        let Some(spec) = o.get("spec") else {
            let object = format!("{namespace}/{name}");
            self.out.notes.push(Note {
                object,
                what: "spec".into(),
                outcome: Outcome::NotTranslated,
                why: "an Ingress without a spec: left out".into(),
            });
            return None;
        };
        let ing = Ingress {
            namespace,
            name,
            nginx,
            spec,
        };
        let class = spec
            .get("ingressClassName")
            .or(meta
                .get("annotations")
                .and_then(|a| a.get("kubernetes.io/ingress.class")))
            .and_then(Value::as_str);
        let wanted = self.opts().ingress_class.clone();
        match class {
            Some(c) if c != wanted => {
                let why = format!("class `{c}`: another controller's (`--ingress-class {wanted}` is imported): left out");
                self.note(&ing, "ingressClassName", Outcome::NotTranslated, why);
                return None;
            }
            None => {
                let why = "no ingress class: ingress-nginx serves it only with --watch-ingress-without-class; imported";
                self.note(&ing, "ingressClassName", Outcome::Translated, why);
            }
            Some(_) => {}
        }
        let version = o
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if version != "networking.k8s.io/v1" {
            let why = format!("apiVersion `{version}`: only networking.k8s.io/v1 is read (`kubectl get ingress -o yaml` gives it)");
            self.note(&ing, "apiVersion", Outcome::NotTranslated, why);
            return None;
        }
        Some(ing)
    }

    fn main(&mut self, ing: &Ingress) {
        self.annotation_notes(ing);
        if let Some(auth) = untranslatable_auth(ing) {
            // Fail closed: a route that needed authentication answers 503 in its place
            // (so no wider route takes its requests) until it is protected by hand.
            let why =
                format!("its routes answer 503: {auth}, and they must not be exposed without it");
            self.note(ing, "routes", Outcome::NotTranslated, why);
        }
        self.tls(ing);
        let policies = self.policies(ing);
        let rules = ing.spec.get("rules").and_then(Value::as_sequence);
        if let Some(backend) = ing.spec.get("defaultBackend") {
            self.default_backend(
                ing,
                backend,
                rules.map(Vec::as_slice).unwrap_or(&[]),
                &policies,
            );
        }
        for (r, rule) in rules.into_iter().flatten().enumerate() {
            let host = rule.get("host").and_then(Value::as_str).map(String::from);
            if let Some(bad) = host.as_deref().filter(|h| !is_host(h)) {
                let why = format!("host `{bad}` is not a host name: the rule is left out (a placeholder to fill in?)");
                self.note(ing, "spec.rules.host", Outcome::NotTranslated, why);
                continue;
            }
            if let Some(host) = host.as_deref().filter(|h| h.starts_with("*.")) {
                let why = format!("host `{host}`: matched as Portico's `*.` (any subdomain, not the apex), as Ingress defines it");
                self.note(ing, "spec.rules.host", Outcome::Translated, why);
            }
            let paths = rule
                .get("http")
                .and_then(|h| h.get("paths"))
                .and_then(Value::as_sequence);
            for (p, path) in paths.into_iter().flatten().enumerate() {
                self.path(ing, host.as_deref(), &format!("r{r}p{p}"), path, &policies);
            }
        }
    }

    /// An Ingress's default backend: for its own hosts when it has rules (after every
    /// namespace's routes), for any request no route takes when it has none.
    fn default_backend(
        &mut self,
        ing: &Ingress,
        backend: &Value,
        rules: &[Value],
        policies: &[(&'static str, Value)],
    ) {
        let Some(action) = self.action(ing, backend) else {
            return;
        };
        let mut hosts: Vec<Option<String>> = rules
            .iter()
            .filter_map(|r| r.get("host").and_then(Value::as_str))
            .filter(|h| is_host(h))
            .map(|h| Some(h.to_string()))
            .collect();
        hosts.dedup();
        if hosts.is_empty() || rules.iter().any(|r| r.get("host").is_none()) {
            hosts.push(None);
        }
        for (h, host) in hosts.iter().enumerate() {
            let name = name_of(&[&ing.namespace, &ing.name, &format!("default{h}")]);
            let mut route = vec![
                ("name", Value::from(self.unique_route_name(name))),
                ("match", matcher(host.as_deref(), "path_prefix", "/")),
            ];
            route.extend(action.clone());
            route.extend(policies.iter().cloned());
            let seq = self.next();
            self.defaults.routes.push(Route {
                host: host.clone(),
                path: "/".into(),
                rank: 9,
                seq,
                from: ing.object(),
                value: map(route),
            });
        }
    }

    /// What a route of the Ingress does with a backend: proxy to it, answer with the
    /// Ingress's redirect, or 503 when its authentication cannot be translated.
    fn action(&mut self, ing: &Ingress, backend: &Value) -> Option<Vec<(&'static str, Value)>> {
        if untranslatable_auth(ing).is_some() {
            let body = map(vec![("error", "authentication not migrated".into())]);
            return Some(vec![(
                "respond",
                map(vec![("status", 503.into()), ("json", body)]),
            )]);
        }
        if let Some(redirect) = self.redirect_action(ing) {
            return Some(vec![("redirect", redirect)]);
        }
        let upstream = self.upstream(ing, backend)?;
        Some(vec![("upstream", Value::from(upstream))])
    }

    /// A policy name no other file uses (names are global).
    fn unique_named(&mut self, wanted: String) -> String {
        let name = super::unique(&wanted, |n| self.named.contains_key(n));
        self.named.insert(name.clone(), None);
        name
    }

    fn unique_route_name(&mut self, wanted: String) -> String {
        let name = super::unique(&wanted, |n| self.names.contains(n));
        self.names.insert(name.clone());
        name
    }

    fn next(&mut self) -> usize {
        self.seq += 1;
        self.seq
    }

    /// The routes of one `paths` entry (two for a `Prefix`: the path itself and under it).
    fn path(
        &mut self,
        ing: &Ingress,
        host: Option<&str>,
        id: &str,
        p: &Value,
        policies: &[(&'static str, Value)],
    ) {
        let raw = p
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("/")
            .to_string();
        let kind = p
            .get("pathType")
            .and_then(Value::as_str)
            .unwrap_or("ImplementationSpecific");
        let Some(backend) = p.get("backend") else {
            self.note(
                ing,
                "spec.rules.http.paths",
                Outcome::NotTranslated,
                format!("path `{raw}` has no backend: left out"),
            );
            return;
        };
        let Some(action) = self.action(ing, backend) else {
            return;
        };
        let name = name_of(&[&ing.namespace, &ing.name, id]);
        if let Some(app_root) = ing.ann("app-root") {
            if raw == "/" {
                let redirect = map(vec![("status", 302.into()), ("path", app_root.into())]);
                self.push(
                    ing,
                    host,
                    "/",
                    0,
                    // The Ingress's policies (its allowlist too) apply to the redirect.
                    [
                        ("name", Value::from(format!("{name}-app-root"))),
                        ("match", matcher(host, "path", "/")),
                        ("redirect", redirect),
                    ]
                    .into_iter()
                    .chain(policies.iter().cloned())
                    .collect(),
                );
            }
        }
        let rewrite = ing.ann("rewrite-target");
        let route = |suffix: &str, key: &'static str, path: &str, rewrite: Option<String>| {
            let mut fields = vec![
                ("name", Value::from(format!("{name}{suffix}"))),
                ("match", matcher(host, key, path)),
            ];
            fields.extend(action.clone());
            if let Some(r) = rewrite {
                fields.push(("rewrite", r.into()));
            }
            fields.extend(policies.iter().cloned());
            fields
        };
        // With use-regex or a rewrite-target, ingress-nginx makes the path a case-insensitive
        // regex location anchored at the start, and its `rewrite` replaces the whole URI
        // with the target, `$N` being the path's groups (Portico's `{N}`).
        if ing.flag("use-regex") || rewrite.is_some() {
            let target = rewrite.map(captures);
            // nginx variables (`$host`, `$arg_x`) have no Portico form: the path is sent
            // unchanged rather than with the variable's name in it.
            let target = match target {
                Some(t) if t.contains('$') => {
                    let why = format!(
                        "`{t}` uses nginx variables: not translated, the path is proxied unchanged"
                    );
                    self.note(ing, "rewrite-target", Outcome::NotTranslated, why);
                    None
                }
                other => other,
            };
            let fields = route("", "path_regex", &format!("(?i)(?:{raw}).*"), target);
            self.push(ing, host, &raw, 2, fields);
            return;
        }
        match kind {
            "Exact" => {
                let fields = route("", "path", &raw, None);
                self.push(ing, host, &raw, 1, fields);
            }
            "Prefix" if raw.trim_end_matches('/').is_empty() => {
                let fields = route("", "path_prefix", "/", None);
                self.push(ing, host, "/", 3, fields);
            }
            "Prefix" => {
                let base = raw.trim_end_matches('/').to_string();
                let exact = route("-exact", "path", &base, None);
                self.push(ing, host, &base, 1, exact);
                let under = route("", "path_prefix", &format!("{base}/"), None);
                self.push(ing, host, &format!("{base}/"), 3, under);
            }
            _ => {
                // ImplementationSpecific: nginx's `location /foo`, a string prefix.
                let fields = route("", "path_prefix", &raw, None);
                self.push(ing, host, &raw, 3, fields);
            }
        }
    }

    fn push(
        &mut self,
        ing: &Ingress,
        host: Option<&str>,
        path: &str,
        rank: u8,
        mut fields: Vec<(&str, Value)>,
    ) {
        let seq = self.next();
        if let Some((_, name)) = fields.iter_mut().find(|(k, _)| *k == "name") {
            let wanted = name.as_str().unwrap_or_default().to_string();
            *name = self.unique_route_name(wanted).into();
        }
        let team = self.teams.entry(ing.namespace.clone()).or_default();
        team.routes.push(Route {
            host: host.map(String::from),
            path: path.to_string(),
            rank,
            seq,
            from: ing.object(),
            value: map(fields),
        });
    }

    /// `permanent-redirect` / `temporal-redirect`: the route answers with the redirect.
    fn redirect_action(&mut self, ing: &Ingress) -> Option<Value> {
        let (key, target, status) =
            match (ing.ann("permanent-redirect"), ing.ann("temporal-redirect")) {
                (Some(url), _) => (
                    "permanent-redirect",
                    url,
                    ing.ann("permanent-redirect-code")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(301u16),
                ),
                (None, Some(url)) => ("temporal-redirect", url, 302),
                (None, None) => return None,
            };
        // `https://new.example.com$request_uri`: keep the request's path (and query).
        let keeps_path = target.ends_with("$request_uri");
        let target = target.strip_suffix("$request_uri").unwrap_or(target);
        if target.contains('$') {
            let why = format!("`{target}` uses nginx variables: Portico keeps the request's path and query, other variables are not translated");
            self.note(ing, key, Outcome::NotTranslated, why);
            return None;
        }
        let Ok(uri) = target.parse::<http::Uri>() else {
            self.note(
                ing,
                key,
                Outcome::NotTranslated,
                format!("`{target}` is not a URL"),
            );
            return None;
        };
        let path = uri
            .path_and_query()
            .map(|p| p.path().to_string())
            .filter(|p| !p.is_empty() && !keeps_path);
        let redirect = map(vec![
            ("status", status.into()),
            (
                "scheme",
                uri.scheme_str().map(Value::from).unwrap_or(Value::Null),
            ),
            ("host", uri.host().map(Value::from).unwrap_or(Value::Null)),
            (
                "port",
                uri.port_u16().map(Value::from).unwrap_or(Value::Null),
            ),
            ("path", path.map(Value::from).unwrap_or(Value::Null)),
        ]);
        let why = "the request's query string is kept on the redirect (nginx's `return` drops it)";
        self.note(ing, key, Outcome::Translated, why);
        Some(redirect)
    }

    /// The named policies and route keys every route of the Ingress gets.
    fn policies(&mut self, ing: &Ingress) -> Vec<(&'static str, Value)> {
        let mut keys = Vec::new();
        let base = name_of(&[&ing.namespace, &ing.name]);
        if let Some(policy) = self.auth_policy(ing) {
            let name = self.unique_named(format!("{base}-auth"));
            self.team(ing).auth.insert(name.clone(), policy);
            keys.push(("auth", Value::from(name)));
        }
        if ing.flag("enable-cors") {
            let name = self.unique_named(format!("{base}-cors"));
            let cors = self.cors(ing);
            self.team(ing).cors.insert(name.clone(), cors);
            keys.push(("cors", Value::from(name)));
        }
        if let Some(limit) = self.rate_limit(ing) {
            let why = "over the limit Portico answers 429 with Retry-After (ingress-nginx's default limit-req-status-code is 503)";
            self.note(ing, "limit-rps", Outcome::Translated, why);
            let name = self.unique_named(format!("{base}-limit"));
            self.team(ing).rate_limits.insert(name.clone(), limit);
            keys.push(("rate_limit", Value::from(name)));
        }
        if let Some(rule) = self.ip_access(ing) {
            let why = "the client address is the connection's peer unless the base's server.trusted_proxies names the load balancers in front (as ingress-nginx's use-forwarded-headers did): set it, or the load balancer's address is what is allowed";
            self.note(ing, "whitelist-source-range", Outcome::Translated, why);
            let name = self.unique_named(format!("{base}-ip"));
            self.team(ing).ip_access.insert(name.clone(), rule);
            keys.push(("ip_access", Value::from(name)));
        }
        // ingress-nginx's default body limit is 1m, Portico's 100 MiB: keep nginx's.
        if ing.ann("proxy-body-size").is_none() {
            keys.push(("max_body", Value::from("1MiB")));
        }
        if let Some(size) = ing.ann("proxy-body-size") {
            match byte_size(size) {
                Some(Some(size)) => keys.push(("max_body", Value::from(size))),
                Some(None) => self.note(ing, "proxy-body-size", Outcome::NotTranslated, "`0` (no limit): Portico always has one; server.max_body (100 MiB by default) applies"),
                None => self.note(ing, "proxy-body-size", Outcome::NotTranslated, format!("`{size}` is not a size")),
            }
        }
        if let Some(host) = ing.ann("upstream-vhost") {
            let set = map(vec![("Host", host.into())]);
            keys.push(("headers", map(vec![("request", map(vec![("set", set)]))])));
        }
        if ing.ann("affinity") == Some("cookie") {
            let why = "per-pod session affinity: Portico balances the Service's address, not its pods (route to a headless Service's pods to balance them); on a canary split the cookie keeps the backend instead";
            self.note(ing, "affinity", Outcome::NotTranslated, why);
        }
        keys
    }

    /// The auth policy of an Ingress's `auth-url` (forward auth) or `auth-type: basic`;
    /// None without one, or when it cannot be translated (its routes then answer 503).
    fn auth_policy(&mut self, ing: &Ingress) -> Option<Value> {
        if untranslatable_auth(ing).is_some() {
            return None;
        }
        if let Some(url) = ing.ann("auth-url") {
            return Some(self.forward_auth(ing, url));
        }
        if ing.ann("auth-type") != Some("basic") {
            if ing.ann("auth-secret").is_some() {
                let why = "`auth-secret` without `auth-type: basic`: ingress-nginx applies no authentication either";
                self.note(ing, "auth-secret", Outcome::NotTranslated, why);
            }
            return None;
        }
        let secret = ing.ann("auth-secret")?;
        let (namespace, name) = secret.split_once('/').unwrap_or((&ing.namespace, secret));
        // Namespaces hold no dot, so `NAMESPACE.SECRET` names one Secret only.
        let file = format!("{namespace}.{name}.htpasswd");
        let key = match ing.ann("auth-secret-type") {
            Some("auth-map") => "every key (`user: hash`, written `user:hash`)",
            _ => "its `auth` key",
        };
        let fill = format!("kubectl -n {namespace} get secret {name} -o json, then {key}, one `user:hash` line each");
        let placeholder = format!("# Users of Secret {namespace}/{name} (portico import). Fill from:\n#   {fill}\n# Only bcrypt (htpasswd -B) and SHA-512-crypt (openssl passwd -6) hashes are accepted.\n");
        self.out.files.insert(file.clone(), placeholder);
        let why = format!("the users go in `{file}` beside gateway.yaml (empty until filled: every request is refused): {fill}; apr1-MD5 and crypt hashes, htpasswd's defaults, are refused at check, so hash them again with `htpasswd -B`");
        self.note(ing, "auth-secret", Outcome::Translated, why);
        let realm = ing.ann("auth-realm").unwrap_or("Authentication Required");
        let realm: String = realm
            .chars()
            .filter(|c| !matches!(c, '"' | '\\') && !c.is_control())
            .collect();
        Some(map(vec![
            ("type", "basic".into()),
            ("realm", realm.into()),
            ("htpasswd_file", file.into()),
        ]))
    }

    /// `auth-url` as forward auth: the same service asked, its headers copied.
    fn forward_auth(&mut self, ing: &Ingress, url: &str) -> Value {
        let list = |key| -> Vec<Value> {
            ing.ann(key)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(Value::from)
                .collect()
        };
        let why = "the auth service gets Authorization and Cookie (nginx sent every header) and X-Forwarded-Method/-Uri/-Host/-Proto/-For; add what else it reads to `send`. It is asked with GET and given 5s";
        self.note(ing, "auth-url", Outcome::Translated, why);
        if ing
            .ann("auth-method")
            .is_some_and(|m| !m.eq_ignore_ascii_case("GET"))
        {
            self.note(
                ing,
                "auth-method",
                Outcome::NotTranslated,
                "Portico asks the auth service with GET",
            );
        }
        if let Some(signin) = ing.ann("auth-signin") {
            let why = format!("Portico passes the auth service's own 401, 403 or redirect on: to send browsers to `{signin}`, let the service answer 302 to it");
            self.note(ing, "auth-signin", Outcome::NotTranslated, why);
        }
        let cache = ing
            .ann("auth-cache-key")
            .and(ing.ann("auth-cache-duration"))
            .and_then(|d| d.split_whitespace().last())
            .filter(|d| crate::units::duration::parse(d).is_ok());
        if let Some(d) = cache {
            let why = format!("allows are cached {d} per method, host, path and sent headers (not by `auth-cache-key`); denials never are");
            self.note(ing, "auth-cache-key", Outcome::Translated, why);
        }
        map(vec![
            ("type", "forward".into()),
            ("url", url.into()),
            (
                "send",
                Value::Sequence(vec!["Authorization".into(), "Cookie".into()]),
            ),
            ("copy", Value::Sequence(list("auth-response-headers"))),
            ("cache", cache.map_or(Value::Null, Value::from)),
            ("timeout", "5s".into()),
        ])
    }

    fn team(&mut self, ing: &Ingress) -> &mut Team {
        self.teams.entry(ing.namespace.clone()).or_default()
    }

    fn cors(&mut self, ing: &Ingress) -> Value {
        let list = |v: Option<&str>, default: &str| -> Vec<Value> {
            v.unwrap_or(default)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Value::from)
                .collect()
        };
        let origins = list(ing.ann("cors-allow-origin"), "*");
        let any = origins.iter().any(|o| o.as_str() == Some("*"));
        let mut credentials = ing
            .ann("cors-allow-credentials")
            .is_none_or(|v| v == "true");
        if any && credentials {
            credentials = false;
            self.note(ing, "cors-allow-credentials", Outcome::Translated, "off: `*` with credentials is refused by browsers, and by Portico (list the origins to allow credentials)");
        }
        let max_age = match ing
            .ann("cors-max-age")
            .map(|a| (a, a.trim().parse::<u64>()))
        {
            None => Some(1_728_000),
            Some((_, Ok(seconds))) => Some(seconds),
            Some((text, Err(_))) => {
                let why = format!("`{text}` is not a number of seconds: left out");
                self.note(ing, "cors-max-age", Outcome::NotTranslated, why);
                None
            }
        };
        map(vec![
            ("allow_origins", Value::Sequence(origins)),
            ("allow_methods", Value::Sequence(list(ing.ann("cors-allow-methods"), "GET, PUT, POST, DELETE, PATCH, OPTIONS"))),
            ("allow_headers", Value::Sequence(list(ing.ann("cors-allow-headers"), "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"))),
            ("expose_headers", Value::Sequence(list(ing.ann("cors-expose-headers"), ""))),
            ("allow_credentials", credentials.into()),
            ("max_age", max_age.map_or(Value::Null, |s| format!("{s}s").into())),
        ])
    }

    fn rate_limit(&mut self, ing: &Ingress) -> Option<Value> {
        let (key, per, value) = match (ing.ann("limit-rps"), ing.ann("limit-rpm")) {
            (Some(rps), rpm) => {
                if rpm.is_some() {
                    self.note(
                        ing,
                        "limit-rpm",
                        Outcome::NotTranslated,
                        "with limit-rps too: a Portico route has one limit; limit-rps is kept",
                    );
                }
                ("limit-rps", "1s", rps)
            }
            (None, Some(rpm)) => ("limit-rpm", "1m", rpm),
            (None, None) => return None,
        };
        let Ok(requests) = value.trim().parse::<u64>() else {
            self.note(
                ing,
                key,
                Outcome::NotTranslated,
                format!("`{value}` is not a number"),
            );
            return None;
        };
        let multiplier: u64 = ing
            .ann("limit-burst-multiplier")
            .and_then(|m| m.parse().ok())
            .unwrap_or(5);
        Some(map(vec![
            ("requests", requests.into()),
            ("per", per.into()),
            ("burst", requests.saturating_mul(multiplier).into()),
            ("key", "client_ip".into()),
        ]))
    }

    fn ip_access(&mut self, ing: &Ingress) -> Option<Value> {
        let cidrs = |v: &str| -> Vec<Value> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Value::from)
                .collect()
        };
        let allow = ing
            .ann("allowlist-source-range")
            .or(ing.ann("whitelist-source-range"));
        let deny = ing.ann("denylist-source-range");
        if allow.is_none() && deny.is_none() {
            return None;
        }
        Some(map(vec![
            (
                "allow",
                allow
                    .map(|a| Value::Sequence(cidrs(a)))
                    .unwrap_or(Value::Null),
            ),
            (
                "deny",
                deny.map(|d| Value::Sequence(cidrs(d)))
                    .unwrap_or(Value::Null),
            ),
        ]))
    }

    /// The upstream for a backend Service (made once per Service, port, protocol and
    /// timeouts), or None with a note.
    fn upstream(&mut self, ing: &Ingress, backend: &Value) -> Option<String> {
        let Some(service) = backend.get("service") else {
            self.note(
                ing,
                "backend.resource",
                Outcome::NotTranslated,
                "a resource backend: only Service backends are proxied",
            );
            return None;
        };
        let svc = service
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let port = service.get("port");
        // The upstream is named as ingress-nginx names it in its log
        // (`NAMESPACE-SERVICE-PORT`, the port's name when it has one).
        let (number, port_label) = match (
            port.and_then(|p| p.get("number")).and_then(Value::as_u64),
            port.and_then(|p| p.get("name")).and_then(Value::as_str),
        ) {
            (Some(n), _) if (1..=65535).contains(&n) => (n as u16, n.to_string()),
            (None, Some(name)) => match self.opts().named_port(&ing.namespace, &svc, name) {
                Some(n) => (n, name.to_string()),
                None => {
                    let why = format!("Service `{svc}` port `{name}` is named: give its number with `--port-map {}/{svc}:{name}=NUMBER`", ing.namespace);
                    self.note(ing, "backend.service.port", Outcome::NotTranslated, why);
                    return None;
                }
            },
            _ => {
                let why = format!("Service `{svc}` has no valid port (`port.number` 1 to 65535, or `port.name`): left out");
                self.note(ing, "backend.service.port", Outcome::NotTranslated, why);
                return None;
            }
        };
        let target = format!(
            "{svc}.{}.svc.{}:{number}",
            ing.namespace,
            self.opts().cluster_domain
        );
        let protocol = ing
            .ann("backend-protocol")
            .unwrap_or("HTTP")
            .to_ascii_uppercase();
        let (h2, tls) = match protocol.as_str() {
            "HTTP" => (false, false),
            "HTTPS" => (false, true),
            "GRPC" => (true, false),
            "GRPCS" => (true, true),
            other => {
                let why = format!("`{other}`: Portico speaks HTTP/1.1, HTTP/2 and gRPC to upstreams; proxied as HTTP");
                self.note(ing, "backend-protocol", Outcome::NotTranslated, why);
                (false, false)
            }
        };
        if tls {
            self.note(ing, "backend-protocol", Outcome::Translated, "Portico verifies the backend's certificate (ingress-nginx did not by default): set the upstream's `tls.ca_file` to its CA, or `verify: false`");
        }
        let seconds = |key: &str| {
            ing.ann(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Value::from(format!("{s}s")))
        };
        let timeouts = map(vec![
            (
                "connect",
                seconds("proxy-connect-timeout").unwrap_or("5s".into()),
            ),
            (
                "read",
                seconds("proxy-read-timeout").unwrap_or("60s".into()),
            ),
            (
                "write",
                seconds("proxy-send-timeout").unwrap_or("60s".into()),
            ),
        ]);
        let definition = map(vec![
            ("targets", Value::Sequence(vec![target.into()])),
            ("protocol", if h2 { "h2".into() } else { Value::Null }),
            ("tls", if tls { map(vec![]) } else { Value::Null }),
            (
                "timeouts",
                if timeouts.as_mapping().is_some_and(|m| m.is_empty()) {
                    Value::Null
                } else {
                    timeouts
                },
            ),
        ]);
        let base = name_of(&[&ing.namespace, &svc, &port_label]);
        let mine = Some((ing.namespace.clone(), definition.clone()));
        let mut name = base.clone();
        for n in 2.. {
            match self.named.get(&name) {
                Some(existing) if *existing == mine => return Some(name),
                None => break,
                Some(_) => name = format!("{base}-{n}"),
            }
        }
        self.named.insert(name.clone(), mine);
        let team = self.teams.entry(ing.namespace.clone()).or_default();
        team.upstreams.insert(name.clone(), definition);
        Some(name)
    }

    /// Certificates from the `tls` sections (the Secrets to mount), and whether plain
    /// requests are redirected.
    fn tls(&mut self, ing: &Ingress) {
        let sections = ing.spec.get("tls").and_then(Value::as_sequence);
        let mut has_tls = false;
        for section in sections.into_iter().flatten() {
            let Some(secret) = section.get("secretName").and_then(Value::as_str) else {
                self.note(ing, "spec.tls", Outcome::NotTranslated, "a TLS section without secretName (the controller's default certificate): give Portico a certificate for these hosts");
                continue;
            };
            has_tls = true;
            let hosts = section.get("hosts").and_then(Value::as_sequence);
            let hosts = hosts.into_iter().flatten().filter_map(Value::as_str);
            self.tls_hosts.extend(hosts.map(String::from));
            let entry = (ing.namespace.clone(), secret.to_string());
            if !self.certificates.contains(&entry) {
                self.certificates.push(entry);
            }
        }
        let redirect = match (ing.ann("force-ssl-redirect"), ing.ann("ssl-redirect")) {
            (Some("true"), _) => true,
            (_, Some("false")) => false,
            _ => has_tls,
        };
        if redirect {
            self.redirect_https = true;
            if !has_tls {
                let why = "`force-ssl-redirect` without a TLS section: Portico redirects only when it has a TLS listener, so this Ingress's own redirect needs a certificate for its hosts";
                self.note(ing, "force-ssl-redirect", Outcome::NotTranslated, why);
            }
        } else if has_tls {
            self.note(ing, "ssl-redirect", Outcome::NotTranslated, "`false`: Portico's listen.redirect_https applies to every host of the plain listener; it is on because another Ingress redirects, or off for all");
        }
    }

    /// `redirect_https` is the plain listener's: it redirects hosts without a certificate
    /// too (to a TLS listener that has none for them), and ACME HTTP-01 challenges.
    fn report_global_redirect(&mut self) {
        let routed = self
            .teams
            .values()
            .flat_map(|t| &t.routes)
            .filter_map(|r| r.host.clone());
        let plain: std::collections::BTreeSet<String> =
            routed.filter(|h| !self.tls_hosts.contains(h)).collect();
        let mut why = String::from("on for every host of the plain listener (Portico's is global, ingress-nginx's per host); `/.well-known/acme-challenge/` requests are redirected too");
        if !plain.is_empty() {
            let list: Vec<&str> = plain.iter().map(String::as_str).collect();
            why.push_str(&format!(
                "; hosts without a TLS section are redirected as well: {}",
                list.join(", ")
            ));
        }
        self.out.notes.push(Note {
            object: "*".into(),
            what: "listen.redirect_https".into(),
            outcome: Outcome::Translated,
            why,
        });
    }

    /// nginx picks the longest match across every Ingress of a host; Portico tries the
    /// namespace files by name. A prefix route that would take the requests of a more
    /// specific route in a later file moves to a file tried after the namespaces, with a
    /// note. Returns those routes.
    fn move_shadowing_routes(&mut self) -> Team {
        let mut files: Vec<String> = self.teams.keys().cloned().collect();
        files.sort_by_key(|ns| super::file_for(ns));
        let mut moving: Vec<(String, usize, String)> = Vec::new();
        for (a, ns_a) in files.iter().enumerate() {
            for later in &files[a + 1..] {
                let (early, late) = (&self.teams[ns_a], &self.teams[later]);
                for (i, r1) in early.routes.iter().enumerate() {
                    if let Some(r2) = late.routes.iter().find(|r2| covers(r1, r2)) {
                        let name = r2.value["name"].as_str().unwrap_or_default().to_string();
                        moving.push((ns_a.clone(), i, format!("{later}'s `{name}`")));
                    }
                }
            }
        }
        moving.sort();
        moving.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        let mut moved = Team::default();
        for (ns, i, shadowed) in moving.into_iter().rev() {
            let route = self
                .teams
                .get_mut(&ns)
                .expect("a namespace read")
                .routes
                .remove(i);
            let name = route.value["name"].as_str().unwrap_or_default().to_string();
            self.out.notes.push(Note {
                object: route.from.clone(),
                what: format!("route `{name}`"),
                outcome: Outcome::Translated,
                why: format!("moved to zz-broad-routes.yaml: in {} it would take the requests of namespace {shadowed}, which nginx prefers (the longer match)", super::file_for(&ns)),
            });
            moved.routes.push(route);
        }
        moved
    }

    /// A canary Ingress: its backend joins the main route of the same host and path.
    fn canary(&mut self, ing: &Ingress) {
        self.annotation_notes(ing);
        let rules = ing.spec.get("rules").and_then(Value::as_sequence);
        for rule in rules.into_iter().flatten() {
            let host = rule.get("host").and_then(Value::as_str);
            let paths = rule
                .get("http")
                .and_then(|h| h.get("paths"))
                .and_then(Value::as_sequence);
            for p in paths.into_iter().flatten() {
                let path = p.get("path").and_then(Value::as_str).unwrap_or("/");
                let Some(canary) = p.get("backend").and_then(|b| self.upstream(ing, b)) else {
                    continue;
                };
                self.attach_canary(ing, host, path, &canary);
            }
        }
    }

    fn attach_canary(&mut self, ing: &Ingress, host: Option<&str>, path: &str, canary: &str) {
        let weight: u64 = ing
            .ann("canary-weight")
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        let total: u64 = ing
            .ann("canary-weight-total")
            .and_then(|w| w.parse().ok())
            .unwrap_or(100);
        let header = ing.ann("canary-by-header").map(String::from);
        let header_value = ing.ann("canary-by-header-value").map(String::from);
        let cookie_name = ing.ann("canary-by-cookie").map(String::from);
        let affinity = ing.ann("affinity") == Some("cookie");
        let cookie = ing
            .ann("session-cookie-name")
            .unwrap_or("INGRESSCOOKIE")
            .to_string();
        let base = path.trim_end_matches('/');
        let mains: Vec<usize> = match self.teams.get(&ing.namespace) {
            Some(team) => (0..team.routes.len())
                .filter(|&i| {
                    let r = &team.routes[i];
                    r.host.as_deref() == host
                        && r.path.trim_end_matches('/') == base
                        && r.value.get("upstream").is_some()
                })
                .collect(),
            None => Vec::new(),
        };
        if mains.is_empty() {
            let why = format!(
                "no main Ingress has host `{}` and path `{path}`",
                host.unwrap_or("*")
            );
            self.note(ing, "canary", Outcome::NotTranslated, why);
            return;
        }
        let team = self.teams.entry(ing.namespace.clone()).or_default();
        let mut added = Vec::new();
        let mut sticky = false;
        // The cookie's lifetime: max-age, else expires (both in seconds).
        let ttl = ing
            .ann("session-cookie-max-age")
            .or(ing.ann("session-cookie-expires"))
            .and_then(|s| s.trim().parse::<u64>().ok());
        for &i in &mains {
            let route = &mut team.routes[i];
            let main = route.value.get("upstream").cloned().unwrap_or(Value::Null);
            let name = route
                .value
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if weight > 0 {
                let m = route.value.as_mapping_mut().expect("a route is a mapping");
                m.remove("upstream");
                let backends = vec![
                    map(vec![
                        ("upstream", main.clone()),
                        ("weight", total.saturating_sub(weight).into()),
                    ]),
                    map(vec![("upstream", canary.into()), ("weight", weight.into())]),
                ];
                m.insert("backends".into(), Value::Sequence(backends));
                if affinity {
                    let ttl = ttl.map(|s| Value::from(format!("{s}s")));
                    let fields = vec![
                        ("cookie", cookie.clone().into()),
                        ("ttl", ttl.unwrap_or(Value::Null)),
                    ];
                    m.insert("sticky".into(), map(fields));
                    sticky = true;
                }
            }
            // Before the main route: the header decides, then the cookie, then the
            // weight (ingress-nginx's order).
            let header_rule = header
                .as_deref()
                .map(|h| ("headers", h, header_value.as_deref()));
            let cookie_rule = cookie_name.as_deref().map(|c| ("cookies", c, None));
            for (key, on, value) in header_rule.into_iter().chain(cookie_rule) {
                let kind = if key == "headers" { "header" } else { "cookie" };
                let mut when = |suffix: &str, value: &str, upstream: Value| {
                    let mut v = route.value.clone();
                    let m = v.as_mapping_mut().expect("a route is a mapping");
                    m.insert("name".into(), format!("{name}-{kind}-{suffix}").into());
                    m.remove("backends");
                    m.remove("sticky");
                    m.insert("upstream".into(), upstream);
                    let matcher = m
                        .get_mut("match")
                        .and_then(Value::as_mapping_mut)
                        .expect("a route matches");
                    matcher.insert(key.into(), map(vec![(on, value.into())]));
                    added.push(Route {
                        host: route.host.clone(),
                        path: route.path.clone(),
                        rank: route.rank,
                        seq: route.seq,
                        from: route.from.clone(),
                        value: v,
                    });
                };
                match value {
                    Some(value) => when("canary", value, canary.into()),
                    None => {
                        when("canary", "always", canary.into());
                        when("main", "never", main.clone());
                    }
                }
            }
        }
        // Header routes sort before their main route (same rank and place; earlier seq).
        for mut r in added {
            r.seq = r.seq.saturating_sub(1);
            team.routes.push(r);
        }
        if sticky {
            let why = "the split keeps each client on its backend with a signed cookie: set PORTICO_STICKY_KEY (32 bytes or more) in the gateway's environment";
            self.note(ing, "affinity", Outcome::Translated, why);
        }
    }

    /// What each annotation of the Ingress becomes.
    fn annotation_notes(&mut self, ing: &Ingress) {
        for key in ing.nginx.keys() {
            let (outcome, why) = if key.ends_with("-snippet") {
                (Outcome::NeverExecuted, "raw nginx configuration: Portico never runs it (such snippets are how IngressNightmare became remote code execution); translate its intent by hand")
            } else if HANDLED.contains(&key.as_str()) {
                continue;
            } else {
                (
                    Outcome::NotTranslated,
                    "no Portico equivalent is translated; review it by hand",
                )
            };
            self.note(ing, &format!("{NGINX}{key}"), outcome, why);
        }
    }

    fn finish(mut self) -> Output {
        // Files made along the way (htpasswd placeholders) come first.
        let mut files = std::mem::take(&mut self.out.files);
        let redirect = self.redirect_https && !self.certificates.is_empty();
        if redirect {
            self.report_global_redirect();
        }
        let listen = vec![(
            "redirect_https",
            if redirect { true.into() } else { Value::Null },
        )];
        let base = super::base_file("ingress", listen, &self.certificates, &mut self.out);
        files.insert("gateway.yaml".to_string(), base);
        let moved = self.move_shadowing_routes();
        for (ns, team) in std::mem::take(&mut self.teams) {
            let header = format!("Namespace `{ns}`, imported by `portico import ingress`.");
            files.insert(super::file_for(&ns), yaml_file(&header, &team_value(team)));
        }
        if !moved.routes.is_empty() {
            let header = "Routes that would take a later namespace's more specific routes' requests\n(nginx picks the longest match across namespaces; files are tried by name):\ntried after every namespace's routes.";
            files.insert(
                "zz-broad-routes.yaml".into(),
                yaml_file(header, &team_value(moved)),
            );
        }
        if !self.defaults.routes.is_empty() {
            let defaults = std::mem::take(&mut self.defaults);
            let header =
                "Default backends of the imported Ingresses: tried after every namespace's routes.";
            files.insert(
                "zz-default-backends.yaml".into(),
                yaml_file(header, &team_value(defaults)),
            );
        }
        self.out.files = files;
        self.out
    }
}

/// A prefix route that takes every request of `other`: no other condition, the same host
/// (or none), and `other`'s path under its prefix.
fn covers(route: &Route, other: &Route) -> bool {
    let m = &route.value["match"];
    let plain =
        m.get("headers").is_none() && m.get("cookies").is_none() && m.get("methods").is_none();
    let host = route.host.is_none() || route.host == other.host;
    let path = other.rank != 2 && other.path.starts_with(&route.path);
    route.rank == 3 && plain && host && path
}

/// An exact host before a wildcard, both before none (nginx's server choice).
fn host_rank(host: &Option<String>) -> u8 {
    match host {
        Some(h) if h.starts_with("*.") => 1,
        Some(_) => 0,
        None => 2,
    }
}

fn team_value(mut team: Team) -> Value {
    team.routes.sort_by(|a, b| {
        (
            host_rank(&a.host),
            a.rank,
            std::cmp::Reverse(if a.rank >= 2 { a.path.len() } else { 0 }),
            a.seq,
        )
            .cmp(&(
                host_rank(&b.host),
                b.rank,
                std::cmp::Reverse(if b.rank >= 2 { b.path.len() } else { 0 }),
                b.seq,
            ))
    });
    let section = |m: BTreeMap<String, Value>| -> Value {
        if m.is_empty() {
            return Value::Null;
        }
        Value::Mapping(m.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    };
    map(vec![
        ("upstreams", section(team.upstreams)),
        ("auth", section(team.auth)),
        ("rate_limits", section(team.rate_limits)),
        ("cors", section(team.cors)),
        ("ip_access", section(team.ip_access)),
        (
            "routes",
            Value::Sequence(team.routes.into_iter().map(|r| r.value).collect()),
        ),
    ])
}

fn matcher(host: Option<&str>, key: &str, path: &str) -> Value {
    map(vec![
        ("host", host.map(Value::from).unwrap_or(Value::Null)),
        (key, path.into()),
    ])
}

/// nginx's `$1` / `${1}` / `${name}` in a rewrite target as Portico's `{1}` / `{name}`.
fn captures(target: &str) -> String {
    static GROUP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = GROUP
        .get_or_init(|| regex::Regex::new(r"\$(?:\{(\w+)\}|(\d+))").expect("the pattern compiles"));
    re.replace_all(target, |c: &regex::Captures| {
        let name = c.get(1).or(c.get(2)).map_or("", |m| m.as_str());
        format!("{{{name}}}")
    })
    .into_owned()
}

/// Why an Ingress's authentication cannot be translated: client certificates, digest,
/// forward and basic at once, an `auth-url` built of nginx variables.
fn untranslatable_auth(ing: &Ingress) -> Option<String> {
    if let Some(key) = ing.nginx.keys().find(|k| k.starts_with("auth-tls-")) {
        return Some(format!(
            "`{key}` needs client-certificate authentication, which Portico does not have"
        ));
    }
    if let Some(kind) = ing.ann("auth-type").filter(|t| *t != "basic") {
        return Some(format!("`auth-type: {kind}` is not available (basic is)"));
    }
    if ing.ann("auth-type").is_some() && ing.ann("auth-url").is_some() {
        return Some("`auth-url` and `auth-type: basic` together need both checks, and a Portico route applies one auth policy".into());
    }
    if ing.ann("auth-type").is_some() && ing.ann("auth-secret").is_none() {
        return Some("`auth-type: basic` names no `auth-secret`".into());
    }
    let url = ing.ann("auth-url")?;
    let plain = (url.starts_with("http://") || url.starts_with("https://")) && !url.contains('$');
    (!plain).then(|| {
        format!(
            "`auth-url` `{url}` is not a fixed http(s) URL (nginx variables are not translated)"
        )
    })
}

/// A DNS name, or `*.` and one.
fn is_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// nginx's size (`8m`, `512k`, `1g`, bytes): Some(None) for `0` (no limit).
fn byte_size(text: &str) -> Option<Option<String>> {
    let text = text.trim().to_ascii_lowercase();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = digits.parse().ok()?;
    if n == 0 {
        return Some(None);
    }
    let unit = match unit {
        "" => "B",
        "k" => "KiB",
        "m" => "MiB",
        "g" => "GiB",
        _ => return None,
    };
    Some(Some(format!("{n}{unit}")))
}

/// An annotation's value as text (YAML may give a number or a boolean).
fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_groups_become_portico_placeholders() {
        assert_eq!(captures("/items/$1/${2}/${id}"), "/items/{1}/{2}/{id}");
    }

    #[test]
    fn sizes_are_nginx_sizes() {
        assert_eq!(byte_size("8m"), Some(Some("8MiB".into())));
        assert_eq!(byte_size("512K"), Some(Some("512KiB".into())));
        assert_eq!(byte_size("100"), Some(Some("100B".into())));
        assert_eq!(byte_size("0"), Some(None));
        assert_eq!(byte_size("lots"), None);
    }
}
