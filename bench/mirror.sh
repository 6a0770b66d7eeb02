#!/usr/bin/env bash
# Mirroring to a slow shadow: Portico (one thread) in front of the nginx origin, with a
# route that copies 100 % of its requests to a shadow answering after 200 ms (nginx + njs),
# and the same route without the mirror, measured alternately (twice each, wrk -t1) in one
# run. The client's p99 with the mirror should match the plain route's within the noise
# between the two plain runs: copies go out after the client's answer, and at most
# max_in_flight (64) are held by the slow shadow; the rest are dropped and counted. The
# `paced` rows repeat both with each connection pausing 10 ms between requests (the load a
# gateway runs at, rather than all one CPU can give). The `wide` row lifts max_in_flight
# to 4096, so nearly every copy is sent: the cost of the copies themselves, for scale.
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
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & PORTICO_PID=$! pids+=($!)
for p in $ORIGIN $SHADOW $PORTICO $ADMIN; do wait_port "$p"; done

# CPU time (user + system) of Portico in clock ticks, per row: what each request costs it.
ticks() { awk '{print $14 + $15}' "/proc/$PORTICO_PID/stat"; }
declare -A CPU
# The paced rows: each connection waits 10 ms after each answer (wrk's delay()), so the
# machine is not saturated and p99 shows waiting, not a share of a full CPU.
echo 'function delay() return 10 end' > "$work/paced.lua"
ROWS="plain-1 mirrored-1 plain-2 mirrored-2 wide plain-paced-1 mirrored-paced-1 plain-paced-2 mirrored-paced-2"
for name in $ROWS; do
  case $name in plain-*) path=/x;; mirrored-*) path=/mirrored/x;; wide) path=/wide/x;; esac
  pace=(); case $name in *-paced-*) pace=(-s "$work/paced.lua");; esac
  wrk -t1 -c"$CONNS" -d2s "${pace[@]}" "http://127.0.0.1:$PORTICO$path" >/dev/null
  before=$(ticks)
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${pace[@]}" "http://127.0.0.1:$PORTICO$path")
  used=$(( $(ticks) - before ))
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  RPS[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P99[$name]=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  CPU[$name]=$(awk -v t="$used" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
done
outcomes() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v r="route=\"$1\"" '/^portico_mirror_requests_total/ && index($0, r) {sub(/.*outcome="/, ""); sub(/",.*\}/, ""); printf "%s %s  ", $1, $2}'; }

printf '%-17s %12s %10s %16s\n' route 'requests/s' 'p99 ms' 'CPU µs/request'
for name in $ROWS; do printf '%-17s %12s %10s %16s\n' "$name" "${RPS[$name]}" "${P99[$name]}" "${CPU[$name]}"; done
echo "copies (mirrored): $(outcomes mirrored)"
echo "copies (wide):     $(outcomes wide)"
# verdict PLAIN MIRRORED: the mirrored rows' worst p99 over the plain rows' worst, and the
# plain rows' run-to-run spread (the noise).
worst() { awk -v a="${P99[$1-1]}" -v b="${P99[$1-2]}" 'BEGIN {print (a > b ? a : b)}'; }
best() { awk -v a="${P99[$1-1]}" -v b="${P99[$1-2]}" 'BEGIN {print (a < b ? a : b)}'; }
verdict() { echo "$(ratio "$(worst "$2")" "$(worst "$1")")x; plain run to run: $(ratio "$(worst "$1")" "$(best "$1")")x (the noise)"; }
echo "p99 mirrored/plain, saturated: $(verdict plain mirrored)"
echo "p99 mirrored/plain, paced:     $(verdict plain-paced mirrored-paced)"
