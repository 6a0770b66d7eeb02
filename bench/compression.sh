#!/usr/bin/env bash
# Compressed responses: a 17.7 KB JSON document from the same loopback origin, gzip level 5,
# compressed by nginx (`gzip on`) and by Portico (a `compression:` policy), one worker each,
# wrk -t1 with `Accept-Encoding: gzip`, both in one run. Prints requests/s, p99 and the CPU
# each server used per request (user + system time from /proc, in µs). The -plain rows are
# the same servers and document without compression, for scale.
# Loopback only; every server is stopped on exit. Usage: bench/compression.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light wrk
# The same build as the other benchmarks (examples bring dev-dependency features).
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); NGINX=$(port); PORTICO=$(port); ADMIN=$(port)
origin_conf "$ORIGIN"
# The document: 200 items, as tests/compression.rs serves (about 17.7 KB).
python3 - "$work/www/doc.json" <<'PY'
import json, sys
items = [{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 3 + 0.5, "in_stock": True} for i in range(200)]
open(sys.argv[1], "w").write(json.dumps({"items": items}, separators=(",", ":")))
PY
sed -i "s|location = /big|location = /doc.json { default_type application/json; alias $work/www/doc.json; }\n    location = /big|" "$work/origin.conf"
# One process (no master), so its CPU time is the worker's.
nginx_conf "$NGINX" "$ORIGIN" "master_process off;"
sed -i 's|^http { access_log off;|http { access_log off; gzip on; gzip_comp_level 5; gzip_min_length 1024; gzip_types application/json; gzip_proxied any; gzip_vary on;|' "$work/nginx.conf"
cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PORTICO, admin: 127.0.0.1:$ADMIN }
server: { threads: 1 }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
compression:
  gzip5: { algorithms: [gzip], level: { gzip: 5 }, min_size: 1KiB, types: [application/json] }
routes:
  - { name: doc, match: { path_prefix: / }, upstream: origin, compression: gzip5 }
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & NGINX_PID=$! pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & PORTICO_PID=$! pids+=($!)

for p in $ORIGIN $NGINX $PORTICO; do wait_port "$p"; done
encoding=$(curl -s -o /dev/null -w '%header{content-encoding}' -H 'Accept-Encoding: gzip' "http://127.0.0.1:$PORTICO/doc.json")
[ "$encoding" = gzip ] || { echo "portico did not compress (content-encoding: '$encoding')" >&2; exit 1; }
encoding=$(curl -s -o /dev/null -w '%header{content-encoding}' -H 'Accept-Encoding: gzip' "http://127.0.0.1:$NGINX/doc.json")
[ "$encoding" = gzip ] || { echo "nginx did not compress (content-encoding: '$encoding')" >&2; exit 1; }

# CPU time (user + system) of a process in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A CPU
SERVERS="nginx-gzip portico-gzip nginx-plain portico-plain"
for name in $SERVERS; do
  case $name in nginx-*) p=$NGINX pid=$NGINX_PID;; portico-*) p=$PORTICO pid=$PORTICO_PID;; esac
  case $name in *-gzip) enc=gzip;; *) enc=identity;; esac
  url="http://127.0.0.1:$p/doc.json"
  wrk -t1 -c"$CONNS" -d2s -H "Accept-Encoding: $enc" "$url" >/dev/null
  before=$(ticks "$pid")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Accept-Encoding: $enc" "$url")
  used=$(( $(ticks "$pid") - before ))
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
  [ -z "$errors" ] || echo "$name: $errors" >&2
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  RPS[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P99[$name]=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  CPU[$name]=$(awk -v t="$used" -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
done

printf '%-14s %12s %10s %16s\n' server 'requests/s' 'p99 ms' 'CPU µs/request'
for name in $SERVERS; do printf '%-14s %12s %10s %16s\n' "$name" "${RPS[$name]}" "${P99[$name]}" "${CPU[$name]}"; done
echo "gzip: portico/nginx requests/s $(ratio "${RPS[portico-gzip]}" "${RPS[nginx-gzip]}")x (goal >= 0.9), CPU per request $(ratio "${CPU[portico-gzip]}" "${CPU[nginx-gzip]}")x"
