#!/usr/bin/env bash
# TLS benchmark: nginx and Portico (one worker each), terminating TLS with the same ECDSA
# P-256 certificate in front of the same loopback origin, in one run: HTTPS requests/s on
# kept-alive connections (wrk), new TLS handshakes per second (wrk, `Connection: close`),
# and HTTP/2 requests/s (h2load, 64 connections x 10 streams).
# Loopback only; every server is stopped on exit. Usage: bench/tls.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light wrk nghttp2-client openssl
cargo build --release --quiet --bin portico

ORIGIN=$(port); NGINX=$(port); PORTICO=$(port); PORTICO_TLS=$(port); ADMIN=$(port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem"
origin_conf "$ORIGIN"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; keepalive_requests 100000; }
  server { listen 127.0.0.1:$NGINX ssl http2; keepalive_requests 100000;
    ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PORTICO, admin: 127.0.0.1:$ADMIN, proxy_tls: 127.0.0.1:$PORTICO_TLS }
server: { threads: 1 }
telemetry: { access_log: { enabled: false } }
tls: { certificates: [{ cert: "$work/cert.pem", key: "$work/key.pem" }] }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin }
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & pids+=($!)
for p in $ORIGIN $NGINX $PORTICO_TLS; do wait_port "$p"; done

declare -A KEEP HAND H2
for name in nginx portico; do
  case $name in nginx) p=$NGINX;; portico) p=$PORTICO_TLS;; esac
  url="https://127.0.0.1:$p/"
  wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null   # warm-up
  KEEP[$name]=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" | awk '/Requests\/sec/ {print $2}')
  HAND[$name]=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H 'Connection: close' "$url" | awk '/Requests\/sec/ {print $2}')
  H2[$name]=$(h2load -c"$CONNS" -m10 -D "$DURATION" --warm-up-time=2 "$url" 2>/dev/null | awk '/^finished in/ {print $4}')
done

printf '%-8s %16s %16s %14s\n' server 'https keep-alive' 'handshakes/s' 'h2 req/s'
for name in nginx portico; do printf '%-8s %16s %16s %14s\n' "$name" "${KEEP[$name]}" "${HAND[$name]}" "${H2[$name]}"; done
echo "portico/nginx: https keep-alive $(ratio "${KEEP[portico]}" "${KEEP[nginx]}")x, handshakes $(ratio "${HAND[portico]}" "${HAND[nginx]}")x, h2 $(ratio "${H2[portico]}" "${H2[nginx]}")x"
