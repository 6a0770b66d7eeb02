//! OpenTelemetry export: a real OTLP/HTTP receiver (hyper) decodes what the gateway sends
//! (protobuf `ExportTraceServiceRequest`) and the spans are checked against the access log
//! and the `traceparent` the upstream received.

mod common;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every span received, with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on 127.0.0.1 (its thread ends with the test process).
fn receiver() -> (SocketAddr, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| match &kv.value.as_ref()?.value {
                                        Some(Any::StringValue(s)) => Some(s.clone()),
                                        _ => None,
                                    })
                                    .unwrap_or_default();
                                for ss in rs.scope_spans {
                                    for span in ss.spans {
                                        store.lock().unwrap().push((service.clone(), span));
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    (addr, received)
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn spans_of(received: &Received, trace_id: &str) -> Vec<(String, Span)> {
    let id = hex::decode(trace_id).unwrap();
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.trace_id == id)
        .cloned()
        .collect()
}

#[test]
fn requests_and_upstream_attempts_are_exported_as_spans_of_the_callers_trace() {
    let (otlp, received) = receiver();
    let up = TestUpstream::start("svc");
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        r#"upstreams:
  svc:
    targets: ["{dead}", "{live}"]
    retries: {{ attempts: 1, on: [connect_failure] }}
telemetry:
  tracing: {{ otlp_endpoint: "http://{otlp}", sample: 0, service_name: edge }}
routes:
  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}
"#,
        live = up.addr,
    ));
    let c = client();
    let traced = |trace: &str, flags: &str, path: &str| {
        let tp = format!("00-{trace}-00f067aa0ba902b7-{flags}");
        let r = c
            .get(gw.url(path))
            .header("traceparent", tp)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    // Not sampled by its caller, and new traces (sample: 0): nothing exported, and the
    // upstream is told so.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    traced(unsampled, "00", "/quiet");
    assert_eq!(c.get(gw.url("/new")).send().unwrap().status(), 200);
    // Sampled by its caller: exported whatever `sample` says. Round robin alternates over
    // two targets and each request takes two picks, so each starts on the dead target
    // and is retried on the live one: two attempts each.
    let sampled = [
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5bf92f3577b34da6a3ce929d0e0e4737",
    ];
    for (i, trace) in sampled.iter().enumerate() {
        traced(trace, "01", &format!("/traced/{i}"));
    }
    let all_in = wait_until(Duration::from_secs(15), || {
        sampled
            .iter()
            .map(|t| spans_of(&received, t).len())
            .sum::<usize>()
            == 6
    });
    assert!(
        all_in.is_some(),
        "{:#?}",
        received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| (
                hex::encode(&s.trace_id),
                s.name.clone(),
                s.kind,
                attr(s, "error.type").cloned()
            ))
            .collect::<Vec<_>>()
    );
    assert!(spans_of(&received, unsampled).is_empty());
    assert_eq!(
        received.lock().unwrap().len(),
        6,
        "only the sampled requests' spans"
    );
    let seen = up.seen();
    let header = |path: &str| -> String {
        seen.iter().find(|s| s.uri == path).unwrap().headers["traceparent"][0].clone()
    };
    assert!(header("/quiet").ends_with("-00"));
    assert!(
        header("/new").ends_with("-00"),
        "sample: 0 tells the upstream"
    );

    let log: Vec<serde_json::Value> = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("level").is_none())
        .collect();
    let mut retried = 0;
    for (i, trace) in sampled.iter().enumerate() {
        let spans = spans_of(&received, trace);
        let (servers, clients): (Vec<_>, Vec<_>) = spans
            .iter()
            .map(|(service, s)| {
                assert_eq!(service, "edge");
                s
            })
            .partition(|s| s.kind == SpanKind::Server as i32);
        assert_eq!(servers.len(), 1);
        let server = servers[0];
        assert_eq!(
            server.parent_span_id,
            hex::decode("00f067aa0ba902b7").unwrap(),
            "the caller's span is the parent"
        );
        assert_eq!(server.name, "GET svc");
        assert_eq!(
            attr(server, "http.route"),
            Some(&Any::StringValue("svc".into()))
        );
        assert_eq!(
            attr(server, "http.response.status_code"),
            Some(&Any::IntValue(200))
        );
        let path = format!("/traced/{i}");
        let line = log.iter().find(|l| l["path"] == path.as_str()).unwrap();
        assert_eq!(line["trace_id"], *trace);
        assert_eq!(
            hex::encode(&server.span_id),
            line["span_id"].as_str().unwrap(),
            "the access log's span is the server span"
        );
        assert!(clients.iter().all(|c| c.parent_span_id == server.span_id));
        assert!(clients.iter().all(|c| c.kind == SpanKind::Client as i32));
        // The attempt that reached the upstream is the parent the upstream was given.
        let answered = clients
            .iter()
            .find(|c| attr(c, "http.response.status_code") == Some(&Any::IntValue(200)))
            .unwrap();
        assert_eq!(
            header(&path),
            format!("00-{trace}-{}-01", hex::encode(&answered.span_id))
        );
        assert_eq!(
            attr(answered, "server.address"),
            Some(&Any::StringValue(up.addr.to_string()))
        );
        if clients.len() == 2 {
            retried += 1;
            let failed = clients
                .iter()
                .find(|c| c.span_id != answered.span_id)
                .unwrap();
            assert_eq!(
                attr(failed, "error.type"),
                Some(&Any::StringValue("upstream_unreachable".into()))
            );
            assert_eq!(
                attr(failed, "server.address"),
                Some(&Any::StringValue(dead.to_string()))
            );
        }
        assert!(server.start_time_unix_nano <= clients[0].start_time_unix_nano);
        assert!(server.end_time_unix_nano >= answered.end_time_unix_nano);
    }
    assert_eq!(retried, 2, "each request tried the dead target first");
}

#[test]
fn a_bad_tracing_section_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "version: 1\nlisten: { proxy: 127.0.0.1:18081, admin: 127.0.0.1:19902 }\ntelemetry:\n  tracing: { otlp_endpoint: collector:4318, sample: 2 }\nroutes:\n  - { name: a, match: { path: /a }, respond: { text: a } }\n",
    )
    .unwrap();
    let (code, _, err) = portico(&["check", "gateway.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("gateway.yaml:4:29: error: `collector:4318` is not an http(s) URL"),
        "{err}"
    );
    assert!(
        err.contains("gateway.yaml:4:53: error: sample is a share between 0 and 1"),
        "{err}"
    );
}
