#!/usr/bin/env bash
# Mirroring to a slow shadow: Portico (one thread) in front of the nginx origin, with a
# route that copies 100 % of its requests to a shadow answering after 200 ms (nginx + njs),
# and the same route without the mirror, measured alternately (twice each, wrk -t1) in one
# run. The client's p99 with the mirror should match the plain route's within the noise
# between the two plain runs: copies go out after the client's answer, and at most
# max_in_flight (64) are held by the slow shadow; the rest are dropped and counted. The
# `wide` rows lift max_in_flight to 4096, so nearly every copy is sent: the cost of the
# copies themselves on one thread, for scale.
# Loopback only; every server is stopped on exit. Usage: bench/mirror.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light libnginx-mod-http-js wrk
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); SHADOW=$(port); PORTICO=$(port); ADMIN=$(port)
origin_conf "$ORIGIN"
cat > "$work/shadow.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_http_js_module.so;
worker_processes 1;
daemon off; pid $work/shadow.pid; error_log $work/shadow.err;
events { worker_connections 8192; }
http { access_log off; js_import slow from $PWD/bench/njs/slow.js;
  server { listen 127.0.0.1:$SHADOW; keepalive_requests 100000;
    location / { js_content slow.answer; } } }
CONF
cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PORTICO, admin: 127.0.0.1:$ADMIN }
server: { threads: 1 }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
  shadow: { targets: ["127.0.0.1:$SHADOW"] }
routes:
  - { name: mirrored, match: { path_prefix: /mirrored/ }, upstream: origin, mirror: { upstream: shadow } }
  - { name: wide, match: { path_prefix: /wide/ }, upstream: origin, mirror: { upstream: shadow, max_in_flight: 4096 } }
  - { name: plain, match: { path_prefix: / }, upstream: origin }
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/shadow.conf" & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & pids+=($!)
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
for p in $ORIGIN $SHADOW $PORTICO $ADMIN; do wait_port "$p"; done

ROWS="plain-1 mirrored-1 plain-2 mirrored-2 wide"
for name in $ROWS; do
  case $name in plain-*) path=/x;; mirrored-*) path=/mirrored/x;; wide) path=/wide/x;; esac
  measure "$name" "$PORTICO" "$path"
done
outcomes() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v r="route=\"$1\"" '/^portico_mirror_requests_total/ && index($0, r) {sub(/.*outcome="/, ""); sub(/",.*\}/, ""); printf "%s %s  ", $1, $2}'; }

printf '%-12s %12s %10s\n' route 'requests/s' 'p99 ms'
for name in $ROWS; do printf '%-12s %12s %10s\n' "$name" "${RPS[$name]}" "${P99[$name]}"; done
echo "copies (mirrored): $(outcomes mirrored)"
echo "copies (wide):     $(outcomes wide)"
plain=$(awk -v a="${P99[plain-1]}" -v b="${P99[plain-2]}" 'BEGIN {print (a > b ? a : b)}')
low=$(awk -v a="${P99[plain-1]}" -v b="${P99[plain-2]}" 'BEGIN {print (a < b ? a : b)}')
mirrored=$(awk -v a="${P99[mirrored-1]}" -v b="${P99[mirrored-2]}" 'BEGIN {print (a > b ? a : b)}')
echo "p99 mirrored/plain (worst runs): $(ratio "$mirrored" "$plain")x; plain run to run: $(ratio "$plain" "$low")x (the noise)"
