#!/usr/bin/env bash
# Portico against nginx configured as an API gateway doing the same work (issue 15): each
# checks an HS256 bearer token (signature with the algorithm pinned, exp, iss, aud and a
# role claim), rate-limits by the token's subject, answers CORS for an allowed origin,
# forwards the subject as X-User-Id and writes a JSON access line, in front of the same
# loopback origin; nginx does the token check in njs (libnginx-mod-http-js). Also the
# plain proxies: bare Pingora (examples/bare_pingora.rs) and Portico's plain route.
# One worker each, wrk -t1, every peer in one run; prints requests/s, p99 and the ratios.
# Loopback only; every server is stopped on exit. Usage: bench/gateway.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light libnginx-mod-http-js wrk
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); NJS=$(port); PINGORA=$(port); PORTICO=$(port); ADMIN=$(port)
origin_conf "$ORIGIN"
cat > "$work/njs.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
worker_processes 1;
env JWT_SECRET;
daemon off; pid $work/njs.pid; error_log $work/njs.err;
events { worker_connections 4096; }
http {
  js_import jwt from $PWD/bench/njs/jwt.js;
  js_set \$jwt_sub jwt.sub;
  limit_req_zone \$jwt_sub zone=per_sub:10m rate=1000000r/s;
  map \$http_origin \$cors_origin { "https://app.example.com" \$http_origin; default ""; }
  log_format json escape=json '{"time":"\$time_iso8601","request_id":"\$request_id","client_ip":"\$remote_addr","method":"\$request_method","path":"\$uri","status":\$status,"duration_ms":\$request_time,"upstream_ms":"\$upstream_response_time","bytes_in":\$request_length,"bytes_out":\$bytes_sent,"user":"\$jwt_sub"}';
  access_log $work/njs.access.log json;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; keepalive_requests 100000; }
  server { listen 127.0.0.1:$NJS; keepalive_requests 100000;
    location / {
      if (\$jwt_sub = "") { return 401; }
      limit_req zone=per_sub burst=1000000 nodelay;
      add_header Access-Control-Allow-Origin \$cors_origin always;
      add_header Vary Origin always;
      proxy_set_header X-User-Id \$jwt_sub;
      proxy_set_header X-Request-Id \$request_id;
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
    } } }
CONF
gateway_yaml "$PORTICO" "$ADMIN" "$ORIGIN"   # its /gw/ route runs the same policies

TOKEN=$(hs256_token)

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/njs.conf" & pids+=($!)
target/release/examples/bare_pingora "127.0.0.1:$PINGORA" "127.0.0.1:$ORIGIN" 2>"$work/pingora.err" >/dev/null & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >"$work/portico.access.log" & pids+=($!)

for p in $ORIGIN $NJS $PINGORA $PORTICO; do wait_port "$p"; done

# Both gateways must accept the token and refuse a forged one before anything is measured.
check() {
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $2" -H 'Origin: https://app.example.com' "http://127.0.0.1:$1/gw/x")
  [ "$got" = "$3" ] || { echo "port $1: expected $3, got $got" >&2; exit 1; }
}
for p in $NJS $PORTICO; do check "$p" "$TOKEN" 200; check "$p" "${TOKEN%?}x" 401; done

SERVERS="nginx-njs portico-gw pingora portico"
GW=(-H "Authorization: Bearer $TOKEN" -H 'Origin: https://app.example.com')
measure nginx-njs "$NJS" /gw/x "${GW[@]}"
measure portico-gw "$PORTICO" /gw/x "${GW[@]}"
measure pingora "$PINGORA" /
measure portico "$PORTICO" /

printf '%-11s %12s %10s\n' server 'requests/s' 'p99 ms'
for name in $SERVERS; do printf '%-11s %12s %10s\n' "$name" "${RPS[$name]}" "${P99[$name]}"; done
echo "gateway work:  portico/nginx-njs requests/s $(ratio "${RPS[portico-gw]}" "${RPS[nginx-njs]}")x (goal >= 1.1), p99 $(ratio "${P99[portico-gw]}" "${P99[nginx-njs]}")x"
echo "plain proxy:   portico/pingora requests/s $(ratio "${RPS[portico]}" "${RPS[pingora]}")x (goal >= 0.95), p99 $(ratio "${P99[portico]}" "${P99[pingora]}")x"
