#!/usr/bin/env bash
# Cache memory: what a full cache costs in resident memory against its `max_size`.
# One Portico (release, one thread) in front of an nginx origin whose every path answers
# BYTES bytes with `Cache-Control: max-age=3600`; wrk asks KEYS distinct paths round and
# round for SECONDS, so the cache fills and keeps evicting. The same run without `cache:`
# is the baseline; the goal is RSS(cached) - RSS(uncached) <= 1.5 x max_size + 16 MiB.
# Usage: bench/cache_memory.sh [MAX_MIB] [BYTES] [KEYS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_MIB=${1:-32}
BYTES=${2:-100}
KEYS=${3:-300000}
DURATION=${4:-30}
. bench/common.sh

install_missing nginx-light wrk
cargo build --release --quiet --bin portico

ORIGIN=$(port)
chmod 755 "$work"
mkdir -p "$work/www"
head -c "$BYTES" /dev/zero | tr '\0' 'x' > "$work/www/body"
cat > "$work/origin.conf" <<CONF
worker_processes 1;
daemon off; pid $work/origin.pid; error_log $work/origin.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$ORIGIN; keepalive_requests 1000000;
    location / { root $work/www; default_type text/plain; try_files /body =404;
      add_header Cache-Control "max-age=3600"; } } }
CONF
nginx -c "$work/origin.conf" & pids+=($!)

cat > "$work/keys.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/k/" .. (n % $KEYS))
end
LUA

wait_port "$ORIGIN"

# run CACHE: starts Portico (with `cache: api` on the route or not), drives it, prints
# its RSS in KiB and the cache's entry count and accounted size.
run() {
  local proxy admin pid cache=${1:+, cache: api}
  proxy=$(port); admin=$(port)
  cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$proxy, admin: 127.0.0.1:$admin }
server: { threads: 1 }
telemetry: { access_log: { enabled: false } }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
caches:
  api: { max_size: ${MAX_MIB}MiB }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin$cache }
CONF
  PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null &
  pid=$!; pids+=($pid)
  wait_port "$proxy"
  wrk -t1 -c16 -d"${DURATION}s" -s "$work/keys.lua" "http://127.0.0.1:$proxy" | awk '/Requests\/sec/ {print "  requests/s " $2}' >&2
  local rss size
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  size=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^portico_cache_size_bytes/ {print $2}')
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  echo "$rss ${size:-0}"
}

echo "max_size ${MAX_MIB} MiB, body ${BYTES} B, ${KEYS} keys, ${DURATION}s" >&2
read -r base _ < <(run "")
read -r cached size < <(run yes)
over=$(( (cached - base) / 1024 ))
limit=$(( MAX_MIB * 3 / 2 + 16 ))
echo "uncached RSS $((base / 1024)) MiB, cached RSS $((cached / 1024)) MiB: +${over} MiB (limit ${limit} MiB); accounted size $(( ${size%.*} / 1048576 )) MiB"
[ "$over" -le "$limit" ] && echo "within the goal" || { echo "over the goal"; exit 1; }
