//! gRPC through the real gateway: a real tonic client and server (the standard gRPC health
//! service), HTTP/2 on both sides (cleartext to the client, `protocol: h2` upstream).
//! Unary and server-streaming calls, statuses carried in trailers, and the gateway's own
//! refusals as gRPC errors.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;

const SECRET: &str = "a-grpc-test-secret";

struct GrpcServer {
    addr: SocketAddr,
    reporter: HealthReporter,
}

async fn grpc_server() -> GrpcServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    GrpcServer { addr, reporter }
}

fn gateway(up: SocketAddr, dir: &std::path::Path, route_extra: &str) -> Gateway {
    let secret = dir.join("hs.secret");
    std::fs::write(&secret, SECRET).unwrap();
    Gateway::start(&format!(
        r#"  h2c: true
server: {{ threads: 2 }}
upstreams:
  grpc: {{ targets: ["{up}"], protocol: h2 }}
auth:
  hs: {{ algorithms: [HS256], secret_file: "{secret}" }}
routes:
  - {{ name: health, match: {{ path_prefix: /grpc.health.v1.Health/ }}, upstream: grpc{route_extra} }}
"#,
        secret = secret.display()
    ))
}

async fn health_client(gw: &Gateway) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.proxy))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[test]
fn unary_and_streaming_calls_keep_their_statuses_and_trailers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(grpc_server());
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(server.addr, dir.path(), "");
    rt.block_on(async {
        let mut client = health_client(&gw).await;
        let ok = client.check(check("shop")).await.unwrap();
        assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);
        assert!(ok.metadata().contains_key("x-request-id"));
        // The upstream's error status arrives in its trailers, untouched.
        let missing = client.check(check("nope")).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
        // A server stream: the first status, then each change as it happens.
        let mut stream = client.watch(check("shop")).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        server
            .reporter
            .set_service_status("shop", tonic_health::ServingStatus::NotServing)
            .await;
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a streamed update")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32);
    });
}

#[test]
fn the_gateways_own_refusals_are_grpc_errors() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(grpc_server());
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(server.addr, dir.path(), ", auth: hs");
    rt.block_on(async {
        let mut client = health_client(&gw).await;
        let refused = client.check(check("shop")).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("token_missing"), "{refused:?}");
        let mut req = tonic::Request::new(check("shop"));
        let bearer: MetadataValue<_> = format!("Bearer {}", hs256_token(SECRET, "svc"))
            .parse()
            .unwrap();
        req.metadata_mut().insert("authorization", bearer);
        let ok = client.check(req).await.unwrap();
        assert_eq!(ok.get_ref().status, ServingStatus::Serving as i32);
    });
    // A gRPC call that no route takes.
    let other = gateway(server.addr, dir.path(), "");
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", other.proxy))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/other.Service/Call");
        let codec = tonic::codec::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
        let unrouted = grpc
            .unary(tonic::Request::new(check("x")), path, codec)
            .await
            .unwrap_err();
        assert_eq!(unrouted.code(), Code::Unimplemented, "{unrouted:?}");
    });
}
