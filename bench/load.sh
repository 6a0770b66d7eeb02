#!/usr/bin/env bash
# Load benchmark: nginx, haproxy and Portico (one worker each) in front of the same
# loopback origin; wrk against each in one run; requests/s, p99 and Portico's ratios.
# "pingora" is the smallest Pingora proxy (examples/bare_pingora.rs), the floor Portico
# builds on; "quiet" is Portico with metrics and access log off; "aggregate" is Portico
# answering a 3-call aggregate route (three origin requests per client request); "rs256"
# is Portico checking the same RS256 bearer token on every request.
# Loopback only; every server is stopped on exit (SIGINT, then SIGKILL: no drain to wait
# for). Usage: bench/load.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light haproxy wrk
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); NGINX=$(port); HAPROXY=$(port); PORTICO=$(port); ADMIN=$(port); QUIET=$(port); QUIET_ADMIN=$(port); PINGORA=$(port)
origin_conf "$ORIGIN"
nginx_conf "$NGINX" "$ORIGIN"
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$HAPROXY
  default_backend b
backend b
  server origin 127.0.0.1:$ORIGIN
CONF
gateway_yaml "$PORTICO" "$ADMIN" "$ORIGIN"

# The same gateway with metrics and access log off, to measure what telemetry costs.
sed -e "s/$PORTICO/$QUIET/; s/$ADMIN/$QUIET_ADMIN/" -e 's/^routes:/telemetry: { metrics: false, access_log: { enabled: false } }\nroutes:/' \
  "$work/gateway.yaml" > "$work/quiet.yaml"

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/quiet.yaml" 2>"$work/quiet.err" >/dev/null & pids+=($!)
target/release/examples/bare_pingora "127.0.0.1:$PINGORA" "127.0.0.1:$ORIGIN" 2>"$work/pingora.err" >/dev/null & pids+=($!)

for p in $ORIGIN $NGINX $HAPROXY $PORTICO $QUIET $PINGORA; do wait_port "$p"; done

# wrk prints latency with units; normalize p99 to milliseconds.
SERVERS="nginx haproxy pingora portico quiet aggregate rs256"
TOKEN=$(rs256_token tests/keys/rsa1.key.pem)
for name in $SERVERS; do
  path=/ auth=()
  case $name in nginx) p=$NGINX;; haproxy) p=$HAPROXY;; pingora) p=$PINGORA;; portico) p=$PORTICO;; quiet) p=$QUIET;;
    aggregate) p=$PORTICO; path=/agg/7;; rs256) p=$PORTICO; path=/rs/x; auth=(-H "Authorization: Bearer $TOKEN");; esac
  measure "$name" "$p" "$path" "${auth[@]}"
done

printf '%-9s %12s %10s\n' server 'requests/s' 'p99 ms'
for name in $SERVERS; do printf '%-9s %12s %10s\n' "$name" "${RPS[$name]}" "${P99[$name]}"; done
echo "portico/nginx:   requests/s $(ratio "${RPS[portico]}" "${RPS[nginx]}")x, p99 $(ratio "${P99[portico]}" "${P99[nginx]}")x"
echo "portico/haproxy: requests/s $(ratio "${RPS[portico]}" "${RPS[haproxy]}")x, p99 $(ratio "${P99[portico]}" "${P99[haproxy]}")x"
echo "portico/pingora: requests/s $(ratio "${RPS[portico]}" "${RPS[pingora]}")x (the smallest Pingora proxy; pingora/nginx $(ratio "${RPS[pingora]}" "${RPS[nginx]}")x)"
echo "aggregate:       3-call answers/s vs proxied requests/s $(ratio "${RPS[aggregate]}" "${RPS[portico]}")x"
echo "rs256:           requests/s with one RS256 token checked per request vs none $(ratio "${RPS[rs256]}" "${RPS[portico]}")x"
echo "telemetry cost:  requests/s with metrics+access log / without: $(ratio "${RPS[portico]}" "${RPS[quiet]}")x"
