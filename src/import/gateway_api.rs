//! Gateway API objects (`gateway.networking.k8s.io/v1`) → a config directory: each
//! `Gateway`'s listeners and certificates in the base, and its attached `HTTPRoute`s and
//! `GRPCRoute`s in one file per namespace.
//!
//! Matches are ordered by the Gateway API's precedence (across every route of a file):
//! a hostname before none, `Exact` paths, then `PathPrefix` by length (longest first), then
//! regex paths; then a method before none, more header matches, more query matches; then
//! the order written. A `PathPrefix` `/v2` matches by path segment (`/v2`, `/v2/x`, not
//! `/v2x`): it becomes `/v2` exactly and everything under `/v2/`.

use super::{map, name_of, yaml_file, Note, Options, Outcome, Output};
use serde_yaml::Value;
use std::collections::BTreeMap;

/// One route of the output, with its precedence.
struct Route {
    key: (
        bool,
        u8,
        std::cmp::Reverse<usize>,
        bool,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        usize,
    ),
    value: Value,
}

#[derive(Default)]
struct Team {
    upstreams: BTreeMap<String, Value>,
    routes: Vec<Route>,
}

struct Translation<'o> {
    opts: &'o Options,
    out: Output,
    teams: BTreeMap<String, Team>,
    certificates: Vec<(String, String)>,
    seq: usize,
    /// A GRPCRoute was translated: the plain listener takes HTTP/2 (h2c) too.
    grpc: bool,
    /// Upstream names defined so far.
    defined: std::collections::BTreeSet<String>,
    /// The ReferenceGrants read: what lets a route use another namespace's Service.
    grants: Vec<Value>,
    /// A redirect-to-https route on HTTP listeners was read.
    redirect_https: bool,
}

/// Translates the Gateways, HTTPRoutes and GRPCRoutes among `objects`.
pub fn translate(objects: &[Value], opts: &Options) -> Output {
    let mut t = Translation {
        opts,
        out: Output::default(),
        teams: BTreeMap::new(),
        certificates: Vec::new(),
        seq: 0,
        grpc: false,
        defined: Default::default(),
        grants: Vec::new(),
        redirect_https: false,
    };
    t.out.read = objects.len();
    let kind = |o: &Value| {
        o.get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut listeners = Vec::new();
    for g in objects.iter().filter(|o| kind(o) == "Gateway") {
        t.gateway(g);
        listeners.extend(listeners_of(g));
    }
    t.grants = objects
        .iter()
        .filter(|o| kind(o) == "ReferenceGrant")
        .cloned()
        .collect();
    for o in objects {
        let (k, object) = (kind(o), format!("{}/{}", namespace(o), name(o)));
        if k != "HTTPRoute" && k != "GRPCRoute" {
            continue;
        }
        let attached: Vec<&Listener> = listeners.iter().filter(|l| l.admits(o)).collect();
        let Some(hostnames) = hostnames(o, &attached) else {
            let why = "attached to no listener among the files read (parentRefs, sectionName, port, allowedRoutes and hostnames decide): pass its Gateway, or fix the reference";
            t.note(&object, "spec.parentRefs", Outcome::NotTranslated, why);
            continue;
        };
        if attached.iter().all(|l| l.protocol == "HTTP") && t.https_redirect_only(o) {
            // The usual HTTP listener's route that sends everything to HTTPS: Portico's
            // redirect_https does that for the plain listener.
            t.redirect_https = true;
            let why =
                "a redirect to https on HTTP listeners only: translated as listen.redirect_https";
            t.note(&object, "rules", Outcome::Translated, why);
            t.out.translated += 1;
            continue;
        }
        if attached.iter().all(|l| l.protocol == "HTTPS") {
            let why = "attached to HTTPS listeners only: Portico serves every route on its plain listener too (turn listen.redirect_https on to send plain requests to HTTPS)";
            t.note(&object, "spec.parentRefs", Outcome::Translated, why);
        }
        t.out.translated += 1;
        t.grpc |= k == "GRPCRoute";
        let port = attached.first().map_or(80, |l| l.port);
        t.route(o, k == "GRPCRoute", &hostnames, port);
    }
    t.finish()
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn name(o: &Value) -> String {
    o.get("metadata")
        .and_then(|m| text(m, "name"))
        .unwrap_or_default()
        .to_string()
}

fn namespace(o: &Value) -> String {
    o.get("metadata")
        .and_then(|m| text(m, "namespace"))
        .unwrap_or("default")
        .to_string()
}

fn seq_of(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A Gateway listener, as far as attaching routes goes.
struct Listener {
    gateway: (String, String),
    name: String,
    port: u64,
    protocol: String,
    hostname: Option<String>,
    /// `Same` (the default), `All` or `Selector` (taken as `All`: labels are not read).
    from: String,
}

fn listeners_of(g: &Value) -> Vec<Listener> {
    let spec = g.get("spec");
    seq_of(spec.and_then(|s| s.get("listeners")))
        .iter()
        .map(|l| Listener {
            gateway: (namespace(g), name(g)),
            name: text(l, "name").unwrap_or_default().into(),
            port: l.get("port").and_then(Value::as_u64).unwrap_or(0),
            protocol: text(l, "protocol").unwrap_or("HTTP").into(),
            hostname: text(l, "hostname").map(String::from),
            from: l
                .get("allowedRoutes")
                .and_then(|a| a.get("namespaces"))
                .and_then(|n| text(n, "from"))
                .unwrap_or("Same")
                .into(),
        })
        .collect()
}

impl Listener {
    /// Whether `route` attaches here: a parentRef naming this Gateway (and this listener,
    /// by sectionName or port, when it says), from a namespace the listener allows.
    fn admits(&self, route: &Value) -> bool {
        let ns = namespace(route);
        let allowed = match self.from.as_str() {
            "Same" => ns == self.gateway.0,
            _ => true,
        };
        allowed
            && seq_of(route.get("spec").and_then(|s| s.get("parentRefs")))
                .iter()
                .any(|p| {
                    let gw = (
                        text(p, "namespace").unwrap_or(&ns).to_string(),
                        text(p, "name").unwrap_or_default().to_string(),
                    );
                    let section = text(p, "sectionName").is_none_or(|s| s == self.name);
                    let port = p
                        .get("port")
                        .and_then(Value::as_u64)
                        .is_none_or(|p| p == self.port);
                    gw == self.gateway && section && port
                })
    }
}

/// The hostnames a route serves on its listeners: its own where a listener's hostname
/// allows them (a wildcard listener narrows to the route's names under it), the
/// listener's when the route has none. None when no listener admits it, or no name is
/// left.
fn hostnames(route: &Value, listeners: &[&Listener]) -> Option<Vec<Option<String>>> {
    let own: Vec<String> = seq_of(route.get("spec").and_then(|s| s.get("hostnames")))
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let mut out: Vec<Option<String>> = Vec::new();
    for l in listeners {
        match (&l.hostname, own.is_empty()) {
            (None, true) => out.push(None),
            (None, false) => out.extend(own.iter().cloned().map(Some)),
            (Some(lh), true) => out.push(Some(lh.clone())),
            (Some(lh), false) => {
                for h in &own {
                    let under = |wild: &str, name: &str| {
                        wild.strip_prefix('*')
                            .is_some_and(|suffix| name.ends_with(suffix))
                    };
                    if h == lh || under(lh, h) {
                        out.push(Some(h.clone()));
                    } else if under(h, lh) {
                        out.push(Some(lh.clone()));
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

impl Translation<'_> {
    fn note(&mut self, object: &str, what: &str, outcome: Outcome, why: impl Into<String>) {
        self.out.notes.push(Note {
            object: object.into(),
            what: what.into(),
            outcome,
            why: why.into(),
        });
    }

    /// Whether a ReferenceGrant in `to_ns` lets routes of `from_ns` use Service `svc`.
    fn granted(&self, from_ns: &str, to_ns: &str, svc: &str) -> bool {
        self.grants
            .iter()
            .filter(|g| namespace(g) == to_ns)
            .any(|g| {
                let spec = g.get("spec");
                let from = seq_of(spec.and_then(|s| s.get("from"))).iter().any(|f| {
                    matches!(text(f, "kind"), Some("HTTPRoute" | "GRPCRoute"))
                        && text(f, "namespace") == Some(from_ns)
                });
                let to = seq_of(spec.and_then(|s| s.get("to"))).iter().any(|t| {
                    text(t, "kind") == Some("Service") && text(t, "name").is_none_or(|n| n == svc)
                });
                from && to
            })
    }

    /// Whether every rule of a route only redirects to https (the HTTP listener's route of
    /// the usual HTTP → HTTPS pattern).
    fn https_redirect_only(&self, route: &Value) -> bool {
        let rules = seq_of(route.get("spec").and_then(|s| s.get("rules")));
        !rules.is_empty()
            && rules.iter().all(|r| {
                let filters = seq_of(r.get("filters"));
                filters.len() == 1
                    && text(&filters[0], "type") == Some("RequestRedirect")
                    && filters[0]
                        .get("requestRedirect")
                        .and_then(|rr| text(rr, "scheme"))
                        == Some("https")
                    && filters[0]
                        .get("requestRedirect")
                        .and_then(|rr| rr.get("hostname"))
                        .is_none()
                    && filters[0]
                        .get("requestRedirect")
                        .and_then(|rr| rr.get("path"))
                        .is_none()
            })
    }

    fn gateway(&mut self, g: &Value) {
        let object = format!("{}/{}", namespace(g), name(g));
        let listeners = seq_of(g.get("spec").and_then(|s| s.get("listeners")));
        for l in listeners {
            let protocol = text(l, "protocol").unwrap_or("HTTP");
            let port = l.get("port").and_then(Value::as_u64).unwrap_or(0);
            match protocol {
                "HTTP" | "HTTPS" => {}
                other => {
                    let why = format!("a `{other}` listener: Portico serves HTTP and HTTPS");
                    self.note(&object, "spec.listeners", Outcome::NotTranslated, why);
                    continue;
                }
            }
            let why = format!("{protocol} port {port}: Portico listens on 8080 (HTTP) and 8443 (HTTPS); map the Service's port to them");
            self.note(&object, "spec.listeners.port", Outcome::Translated, why);
            let refs = l.get("tls").and_then(|t| t.get("certificateRefs"));
            for r in seq_of(refs) {
                let ns = text(r, "namespace")
                    .map(String::from)
                    .unwrap_or_else(|| namespace(g));
                let entry = (ns, text(r, "name").unwrap_or_default().to_string());
                if !self.certificates.contains(&entry) {
                    self.certificates.push(entry);
                }
            }
        }
    }

    /// `listener_port`: the port of the listener it attached to (a redirect's default).
    fn route(&mut self, o: &Value, grpc: bool, hostnames: &[Option<String>], listener_port: u64) {
        let ns = namespace(o);
        let object = format!("{ns}/{}", name(o));
        let spec = o.get("spec").cloned().unwrap_or(Value::Null);
        // A redirect without a port keeps the port clients used: the Gateway listener's.
        for (r, rule) in seq_of(spec.get("rules")).iter().enumerate() {
            let Some(action) = self.action(&object, &ns, rule, grpc, listener_port) else {
                continue;
            };
            let default_match = [Value::Null];
            let matches = match seq_of(rule.get("matches")) {
                [] => &default_match[..],
                m => m,
            };
            for (m, matched) in matches.iter().enumerate() {
                for (h, host) in hostnames.iter().enumerate() {
                    let id = format!("r{r}m{m}h{h}");
                    let base = name_of(&[&ns, &name(o), &id]);
                    let routes = match grpc {
                        true => self.grpc_routes(&object, &base, host.as_deref(), matched, &action),
                        false => self.http_routes(
                            &object,
                            &base,
                            host.as_deref(),
                            matched,
                            rule,
                            &action,
                        ),
                    };
                    let team = self.teams.entry(ns.clone()).or_default();
                    team.routes.extend(routes);
                }
            }
        }
    }

    /// What a rule does: its backends (or a redirect), its header edits, mirror, timeout.
    fn action(
        &mut self,
        object: &str,
        ns: &str,
        rule: &Value,
        grpc: bool,
        listener_port: u64,
    ) -> Option<Vec<(&'static str, Value)>> {
        let mut fields: Vec<(&'static str, Value)> = Vec::new();
        let mut request = Vec::new();
        let mut response = Vec::new();
        let mut redirect = None;
        for f in seq_of(rule.get("filters")) {
            match text(f, "type").unwrap_or_default() {
                "RequestHeaderModifier" => request.push(edits(f.get("requestHeaderModifier"))),
                "ResponseHeaderModifier" => response.push(edits(f.get("responseHeaderModifier"))),
                "RequestRedirect" => redirect = f.get("requestRedirect").cloned(),
                "URLRewrite" => {}
                "RequestMirror" => {
                    let mirror = f.get("requestMirror").and_then(|m| m.get("backendRef"));
                    if let Some(upstream) = mirror.and_then(|b| self.upstream(object, ns, b, grpc))
                    {
                        let percent = f
                            .get("requestMirror")
                            .and_then(|m| m.get("percent"))
                            .and_then(Value::as_u64)
                            .unwrap_or(100);
                        fields.push((
                            "mirror",
                            map(vec![
                                ("upstream", upstream.into()),
                                ("percent", percent.into()),
                            ]),
                        ));
                    }
                }
                other => {
                    let why = format!("the `{other}` filter has no Portico equivalent");
                    self.note(object, "filters", Outcome::NotTranslated, why);
                }
            }
        }
        if let Some(mut redirect) = redirect {
            if redirect.get("port").is_none() {
                // The scheme's well-known port when the redirect names one, else the listener's.
                let port = match redirect.get("scheme").and_then(Value::as_str) {
                    Some("https") => 443,
                    Some(_) => 80,
                    None => listener_port,
                };
                if let Some(m) = redirect.as_mapping_mut() {
                    m.insert("port".into(), port.into());
                }
            }
            fields.push(("redirect", redirect));
        } else {
            let backends: Vec<(String, u64)> = seq_of(rule.get("backendRefs"))
                .iter()
                .filter_map(|b| {
                    // A backend of weight 0 takes no traffic: no upstream for it.
                    let weight = b.get("weight").and_then(Value::as_u64).unwrap_or(1);
                    (weight > 0).then_some(())?;
                    Some((self.upstream(object, ns, b, grpc)?, weight))
                })
                .collect();
            match backends.as_slice() {
                [] => {
                    // As the Gateway API does: its requests get 500, not another route.
                    let why =
                        "a rule with no usable backend: it answers 500, as the Gateway API does";
                    self.note(object, "backendRefs", Outcome::Translated, why);
                    let body = map(vec![("error", "no usable backend".into())]);
                    fields.push(("respond", map(vec![("status", 500.into()), ("json", body)])));
                }
                [(one, _)] => fields.push(("upstream", one.clone().into())),
                many => {
                    let list = many.iter().map(|(u, w)| {
                        map(vec![
                            ("upstream", u.clone().into()),
                            ("weight", (*w).into()),
                        ])
                    });
                    fields.push(("backends", Value::Sequence(list.collect())));
                }
            }
        }
        let headers = map(vec![
            ("request", merge_edits(request)),
            ("response", merge_edits(response)),
        ]);
        if headers.as_mapping().is_some_and(|m| !m.is_empty()) {
            fields.push(("headers", headers));
        }
        if let Some(timeout) = rule.get("timeouts").and_then(|t| text(t, "request")) {
            match go_duration(timeout) {
                Some(Some(d)) => fields.push(("timeout", d.into())),
                Some(None) => {}
                None => self.note(
                    object,
                    "timeouts.request",
                    Outcome::NotTranslated,
                    format!("`{timeout}` is not a duration"),
                ),
            }
        }
        if rule
            .get("timeouts")
            .and_then(|t| t.get("backendRequest"))
            .is_some()
        {
            self.note(
                object,
                "timeouts.backendRequest",
                Outcome::NotTranslated,
                "per-try timeouts are the upstream's `timeouts.read`; set it there",
            );
        }
        Some(fields)
    }

    /// The upstream for a Service backendRef (one per Service, port and protocol).
    fn upstream(&mut self, object: &str, ns: &str, b: &Value, grpc: bool) -> Option<String> {
        if text(b, "kind").is_some_and(|k| k != "Service") {
            self.note(
                object,
                "backendRefs",
                Outcome::NotTranslated,
                "only Service backends are proxied",
            );
            return None;
        }
        let svc = text(b, "name")?;
        let svc_ns = text(b, "namespace").unwrap_or(ns);
        let Some(port) = b.get("port").and_then(Value::as_u64) else {
            self.note(
                object,
                "backendRefs.port",
                Outcome::NotTranslated,
                format!("`{svc}` has no port"),
            );
            return None;
        };
        if svc_ns != ns && !self.granted(ns, svc_ns, svc) {
            let why = format!("`{svc_ns}/{svc}` is in another namespace and no ReferenceGrant there allows it: the Gateway API refuses it (500)");
            self.note(object, "backendRefs", Outcome::NotTranslated, why);
            return None;
        }
        let target = format!("{svc}.{svc_ns}.svc.{}:{port}", self.opts.cluster_domain);
        let definition = map(vec![
            ("targets", Value::Sequence(vec![target.into()])),
            ("protocol", if grpc { "h2".into() } else { Value::Null }),
        ]);
        // One upstream per Service port and protocol, in the file of the first route that
        // names it (names are global across files).
        let protocol = if grpc { "-h2" } else { "" };
        let name = name_of(&[svc_ns, svc, &format!("{port}{protocol}")]);
        if self.defined.insert(name.clone()) {
            let team = self.teams.entry(ns.to_string()).or_default();
            team.upstreams.insert(name.clone(), definition);
        }
        Some(name)
    }

    fn http_routes(
        &mut self,
        object: &str,
        base: &str,
        host: Option<&str>,
        m: &Value,
        rule: &Value,
        action: &[(&'static str, Value)],
    ) -> Vec<Route> {
        let path = m.get("path");
        let kind = path.and_then(|p| text(p, "type")).unwrap_or("PathPrefix");
        let value = path
            .and_then(|p| text(p, "value"))
            .unwrap_or("/")
            .to_string();
        let method = m.get("method").and_then(Value::as_str);
        if method == Some("GET") {
            self.note(object, "matches.method", Outcome::Translated, "GET: a Portico route for GET also takes HEAD (HEAD is GET without the body), where the Gateway API's match is exact");
        }
        let headers = self.conditions(object, m.get("headers"), "headers");
        let query = self.conditions(object, m.get("queryParams"), "queryParams");
        let rewrite = self.rewrite(object, rule);
        self.seq += 1;
        let precedence = |rank: u8, len: usize, seq: usize| {
            use std::cmp::Reverse;
            (
                host.is_none(),
                rank,
                Reverse(len),
                method.is_none(),
                Reverse(count(&headers)),
                Reverse(count(&query)),
                seq,
            )
        };
        let extra = |matcher: Vec<(&str, Value)>| {
            let mut matcher = matcher;
            matcher.push(("host", host.map(Value::from).unwrap_or(Value::Null)));
            matcher.push((
                "methods",
                method
                    .map(|m| Value::Sequence(vec![m.into()]))
                    .unwrap_or(Value::Null),
            ));
            matcher.push(("headers", headers.clone()));
            matcher.push(("query", query.clone()));
            map(matcher)
        };
        let route = |name: String,
                     matcher: Value,
                     rewrite: Option<String>,
                     redirect_path: Option<Value>| {
            let mut fields = vec![("name", Value::from(name)), ("match", matcher)];
            for (k, v) in action {
                let v = match (*k, &redirect_path) {
                    ("redirect", Some(path)) => with_redirect_path(v, path.clone()),
                    ("redirect", None) => with_redirect_path(v, Value::Null),
                    _ => v.clone(),
                };
                fields.push((k, v));
            }
            if let Some(r) = rewrite {
                fields.push(("rewrite", r.into()));
            }
            map(fields)
        };
        let redirect = action
            .iter()
            .find(|(k, _)| *k == "redirect")
            .map(|(_, v)| v.clone());
        let (full, prefix) = match &rewrite {
            Some(Rewrite::Full(f)) => (Some(f.clone()), None),
            Some(Rewrite::Prefix(p)) => (None, Some(p.clone())),
            None => (None, None),
        };
        let redirect_full = redirect
            .as_ref()
            .and_then(|r| r.get("path"))
            .and_then(|p| match text(p, "type") {
                Some("ReplaceFullPath") => text(p, "replaceFullPath").map(String::from),
                _ => None,
            });
        let redirect_prefix =
            redirect
                .as_ref()
                .and_then(|r| r.get("path"))
                .and_then(|p| match text(p, "type") {
                    Some("ReplacePrefixMatch") => text(p, "replacePrefixMatch").map(String::from),
                    _ => None,
                });
        let seq = self.seq;
        match kind {
            "Exact" => {
                let rewrite = full.or(prefix);
                let path = redirect_full.or(redirect_prefix).map(Value::from);
                vec![Route {
                    key: precedence(0, value.len(), seq),
                    value: route(
                        base.into(),
                        extra(vec![("path", value.clone().into())]),
                        rewrite,
                        path,
                    ),
                }]
            }
            "RegularExpression" => {
                if rewrite.is_some() {
                    self.note(
                        object,
                        "filters.urlRewrite",
                        Outcome::NotTranslated,
                        "a rewrite on a regex path: the path is proxied unchanged",
                    );
                }
                vec![Route {
                    key: precedence(2, 0, seq),
                    value: route(
                        base.into(),
                        extra(vec![("path_regex", value.clone().into())]),
                        None,
                        None,
                    ),
                }]
            }
            _ => {
                let trimmed = value.trim_end_matches('/').to_string();
                let mut out = Vec::new();
                if !trimmed.is_empty() {
                    let path = redirect_full
                        .clone()
                        .or(redirect_prefix.clone())
                        .map(Value::from);
                    let exact = route(
                        format!("{base}-exact"),
                        extra(vec![("path", trimmed.clone().into())]),
                        full.clone().or(prefix.clone()),
                        path,
                    );
                    out.push(Route {
                        key: precedence(1, trimmed.len(), seq),
                        value: exact,
                    });
                }
                let under = format!("{trimmed}/");
                let (matcher, rewrite) = match (&full, &prefix) {
                    // A full rewrite needs a template match: its rewrite is the whole path.
                    (Some(f), _) => (
                        vec![(
                            "path_template",
                            Value::from(format!("{trimmed}/{{rest...}}")),
                        )],
                        Some(f.clone()),
                    ),
                    (None, Some(p)) => (
                        vec![("path_prefix", Value::from(under.clone()))],
                        Some(slash(p)),
                    ),
                    (None, None) => (vec![("path_prefix", Value::from(under.clone()))], None),
                };
                let redirect_path = match (&redirect_full, &redirect_prefix) {
                    (Some(f), _) => Some(Value::from(f.clone())),
                    (None, Some(p)) => Some(map(vec![("prefix", slash(p).into())])),
                    _ => None,
                };
                out.push(Route {
                    key: precedence(1, trimmed.len(), seq),
                    value: route(base.into(), extra(matcher), rewrite, redirect_path),
                });
                out
            }
        }
    }

    fn grpc_routes(
        &mut self,
        object: &str,
        base: &str,
        host: Option<&str>,
        m: &Value,
        action: &[(&'static str, Value)],
    ) -> Vec<Route> {
        let method = m.get("method");
        let service = method.and_then(|m| text(m, "service"));
        let rpc = method.and_then(|m| text(m, "method"));
        if method.and_then(|m| text(m, "type")) == Some("RegularExpression") {
            self.note(
                object,
                "matches.method",
                Outcome::NotTranslated,
                "a regex gRPC method match: left out",
            );
            return Vec::new();
        }
        let headers = self.conditions(object, m.get("headers"), "headers");
        let (key, path, rank) = match (service, rpc) {
            (Some(s), Some(r)) => ("path", format!("/{s}/{r}"), 0),
            (Some(s), None) => ("path_prefix", format!("/{s}/"), 1),
            (None, Some(r)) => ("path_regex", format!("/[^/]+/{}", regex::escape(r)), 2),
            (None, None) => ("path_prefix", "/".to_string(), 1),
        };
        self.seq += 1;
        let mut fields = vec![
            ("name", Value::from(base)),
            (
                "match",
                map(vec![
                    (key, path.clone().into()),
                    ("host", host.map(Value::from).unwrap_or(Value::Null)),
                    ("headers", headers.clone()),
                ]),
            ),
        ];
        fields.extend(action.iter().filter(|(k, _)| *k != "redirect").cloned());
        use std::cmp::Reverse;
        let key = (
            host.is_none(),
            rank,
            Reverse(path.len()),
            true,
            Reverse(count(&headers)),
            Reverse(0),
            self.seq,
        );
        vec![Route {
            key,
            value: map(fields),
        }]
    }

    /// Header or query conditions (Exact; a query RegularExpression too).
    fn conditions(&mut self, object: &str, list: Option<&Value>, what: &str) -> Value {
        let mut out = serde_yaml::Mapping::new();
        for c in seq_of(list) {
            let (Some(name), Some(value)) = (text(c, "name"), text(c, "value")) else {
                continue;
            };
            let cond = match (text(c, "type").unwrap_or("Exact"), what) {
                ("Exact", _) => Value::from(value),
                ("RegularExpression", "queryParams") => map(vec![("regex", value.into())]),
                (other, _) => {
                    let why = format!("a `{other}` {what} match on `{name}`: Portico matches header values exactly; the condition is left out");
                    self.note(object, what, Outcome::NotTranslated, why);
                    continue;
                }
            };
            out.insert(name.into(), cond);
        }
        if out.is_empty() {
            Value::Null
        } else {
            Value::Mapping(out)
        }
    }

    fn rewrite(&mut self, object: &str, rule: &Value) -> Option<Rewrite> {
        let f = seq_of(rule.get("filters"))
            .iter()
            .find(|f| text(f, "type") == Some("URLRewrite"))?;
        let rewrite = f.get("urlRewrite")?;
        if text(rewrite, "hostname").is_some() {
            self.note(
                object,
                "filters.urlRewrite.hostname",
                Outcome::NotTranslated,
                "set the Host header with a RequestHeaderModifier instead",
            );
        }
        let path = rewrite.get("path")?;
        match text(path, "type")? {
            "ReplaceFullPath" => text(path, "replaceFullPath").map(|p| Rewrite::Full(p.into())),
            // An empty replacement strips the prefix: the path keeps its leading `/`.
            _ => text(path, "replacePrefixMatch")
                .map(|p| Rewrite::Prefix(if p.is_empty() { "/".into() } else { p.into() })),
        }
    }

    fn finish(mut self) -> Output {
        let redirect = self.redirect_https && !self.certificates.is_empty();
        let listen = vec![
            ("h2c", if self.grpc { true.into() } else { Value::Null }),
            (
                "redirect_https",
                if redirect { true.into() } else { Value::Null },
            ),
        ];
        let base = super::base_file("gateway-api", listen, &self.certificates, &mut self.out);
        self.out.files.insert("gateway.yaml".into(), base);
        for (ns, mut team) in std::mem::take(&mut self.teams) {
            team.routes.sort_by_key(|r| r.key);
            let upstreams: serde_yaml::Mapping = team
                .upstreams
                .into_iter()
                .map(|(k, v)| (k.into(), v))
                .collect();
            let body = map(vec![
                ("upstreams", Value::Mapping(upstreams)),
                (
                    "routes",
                    Value::Sequence(team.routes.into_iter().map(|r| r.value).collect()),
                ),
            ]);
            let header = format!("Namespace `{ns}`, imported by `portico import gateway-api`.");
            self.out
                .files
                .insert(super::file_for(&ns), yaml_file(&header, &body));
        }
        self.out
    }
}

enum Rewrite {
    Full(String),
    Prefix(String),
}

/// A Gateway API duration (`1m30s`, `500ms`) as Portico writes one (`1m 30s`); Some(None)
/// for zero (no timeout), None when it is not one.
fn go_duration(text: &str) -> Option<Option<String>> {
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        if number.is_empty() || !["h", "m", "s", "ms"].contains(&unit) {
            return None;
        }
        if number.trim_start_matches('0').is_empty() {
            rest = tail;
            continue;
        }
        parts.push(format!("{number}{unit}"));
        rest = tail;
    }
    Some((!parts.is_empty()).then(|| parts.join(" ")))
}

fn count(v: &Value) -> usize {
    v.as_mapping().map_or(0, |m| m.len())
}

/// A RequestRedirect as Portico's `redirect` (status, scheme, host, port; the path given).
fn with_redirect_path(r: &Value, path: Value) -> Value {
    let status = r.get("statusCode").and_then(Value::as_u64).unwrap_or(302);
    let (path, prefix) = match path {
        Value::Mapping(m) => (Value::Null, m.get("prefix").cloned().unwrap_or(Value::Null)),
        other => (other, Value::Null),
    };
    map(vec![
        ("status", status.into()),
        ("scheme", r.get("scheme").cloned().unwrap_or(Value::Null)),
        ("host", r.get("hostname").cloned().unwrap_or(Value::Null)),
        ("port", r.get("port").cloned().unwrap_or(Value::Null)),
        ("path", path),
        ("prefix", prefix),
    ])
}

/// A header modifier as Portico's `set`/`add`/`remove`.
fn edits(m: Option<&Value>) -> Value {
    let Some(m) = m else { return Value::Null };
    let pairs = |key: &str| -> Value {
        let list = seq_of(m.get(key));
        if list.is_empty() {
            return Value::Null;
        }
        let map: serde_yaml::Mapping = list
            .iter()
            .filter_map(|h| {
                Some((
                    Value::from(text(h, "name")?),
                    Value::from(text(h, "value")?),
                ))
            })
            .collect();
        Value::Mapping(map)
    };
    let remove = seq_of(m.get("remove"));
    map(vec![
        ("set", pairs("set")),
        ("add", pairs("add")),
        (
            "remove",
            if remove.is_empty() {
                Value::Null
            } else {
                Value::Sequence(remove.to_vec())
            },
        ),
    ])
}

/// Several modifiers of one direction, as one.
fn merge_edits(list: Vec<Value>) -> Value {
    let mut out = serde_yaml::Mapping::new();
    for edit in list.into_iter().filter_map(|v| v.as_mapping().cloned()) {
        for (k, v) in edit {
            out.insert(k, v);
        }
    }
    if out.is_empty() {
        Value::Null
    } else {
        Value::Mapping(out)
    }
}

fn slash(target: &str) -> String {
    match target.ends_with('/') {
        true => target.to_string(),
        false => format!("{target}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::go_duration;

    #[test]
    fn gateway_api_durations_become_portico_durations() {
        assert_eq!(go_duration("1m30s"), Some(Some("1m 30s".into())));
        assert_eq!(go_duration("500ms"), Some(Some("500ms".into())));
        assert_eq!(go_duration("0s"), Some(None));
        assert_eq!(go_duration("1h0m5s"), Some(Some("1h 5s".into())));
        assert_eq!(go_duration("soon"), None);
    }
}
