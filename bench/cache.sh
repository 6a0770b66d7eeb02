#!/usr/bin/env bash
# Cache-hit benchmark: nginx (proxy_cache), Varnish, Portico (a `caches:` route) and
# "pingora" (examples/bare_pingora.rs with `cache`: Pingora's own cache phases and Portico's
# store, no gateway logic: the floor Portico builds on) and "fixed" (Portico answering a
# `respond:` route from memory, no cache and no upstream: the ceiling of any hit path in
# Portico), one worker each (Varnish: one thread pool), in front of the same loopback
# origin, whose
# answers say `Cache-Control: max-age=3600`. After one warming request every request is
# a hit; wrk measures requests/s and p99 at CONNECTIONS for a 30 B and a 17 KB body.
# Loopback only; every server is stopped on exit. Usage: bench/cache.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-64}
. bench/common.sh

install_missing nginx-light varnish wrk
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); NGINX=$(port); VARNISH=$(port); PORTICO=$(port); ADMIN=$(port); PINGORA=$(port)
# nginx workers run unprivileged: they read the files and write their cache here.
chmod 755 "$work"
mkdir -p "$work/www"
printf 'a thirty byte cached response\n' > "$work/www/small"
head -c 17408 /dev/zero | tr '\0' 'x' > "$work/www/big"
cat > "$work/origin.conf" <<CONF
worker_processes 1;
daemon off; pid $work/origin.pid; error_log $work/origin.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$ORIGIN; keepalive_requests 100000;
    location / { root $work/www; default_type text/plain; add_header Cache-Control "max-age=3600"; } } }
CONF
mkdir -p "$work/nginx-cache" && chmod 777 "$work/nginx-cache"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  proxy_cache_path $work/nginx-cache keys_zone=api:10m max_size=256m;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  server { listen 127.0.0.1:$NGINX; keepalive_requests 100000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache api; proxy_cache_lock on; add_header X-Cache \$upstream_cache_status; } } }
CONF
cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PORTICO, admin: 127.0.0.1:$ADMIN }
server: { threads: 1 }
telemetry: { access_log: { enabled: false } }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
caches:
  api: { max_size: 256MiB }
routes:
  - { name: fixed-small, match: { path: /fixed/small }, respond: { status: 200, text: "a thirty byte cached response" } }
  - { name: fixed-big, match: { path: /fixed/big }, respond: { status: 200, text: "$(head -c 17408 /dev/zero | tr '\0' 'x')" } }
  - { name: cached, match: { path_prefix: / }, upstream: origin, cache: api }
CONF

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/nginx.conf" & pids+=($!)
varnishd -F -j none -n "$work/varnish" -a "127.0.0.1:$VARNISH" -b "127.0.0.1:$ORIGIN" \
  -s malloc,256m -p thread_pools=1 -p thread_pool_min=100 >"$work/varnish.err" 2>&1 & pids+=($!)
PORTICO_LOG=warn target/release/portico run -c "$work/gateway.yaml" 2>"$work/portico.err" >/dev/null & pids+=($!)
target/release/examples/bare_pingora "127.0.0.1:$PINGORA" "127.0.0.1:$ORIGIN" cache 2>"$work/pingora.err" >/dev/null & pids+=($!)

for p in $ORIGIN $NGINX $VARNISH $PORTICO $PINGORA; do wait_port "$p"; done

SERVERS="nginx varnish pingora portico fixed"
for size in small big; do
  for name in $SERVERS; do
    path=/$size
    case $name in nginx) p=$NGINX;; varnish) p=$VARNISH;; pingora) p=$PINGORA;; portico) p=$PORTICO;; fixed) p=$PORTICO; path=/fixed/$size;; esac
    url="http://127.0.0.1:$p$path"
    curl -s -o /dev/null "$url"   # the one miss
    wrk -t1 -c"$CONNS" -d2s "$url" >/dev/null   # warm-up
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
    [ -z "$errors" ] || echo "$name $size: $errors" >&2
    RPS[$name.$size]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    P99[$name.$size]=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
  done
done
origin_hits=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^portico_cache_requests_total.*result="MISS"/ {s+=$2} END {print s+0}')

printf '%-8s %-6s %12s %10s\n' server body 'requests/s' 'p99 ms'
for size in small big; do
  for name in $SERVERS; do printf '%-8s %-6s %12s %10s\n' "$name" "$size" "${RPS[$name.$size]}" "${P99[$name.$size]}"; done
done
for size in small big; do
  echo "$size: pingora/nginx requests/s $(ratio "${RPS[pingora.$size]}" "${RPS[nginx.$size]}")x; fixed/nginx $(ratio "${RPS[fixed.$size]}" "${RPS[nginx.$size]}")x; portico/pingora $(ratio "${RPS[portico.$size]}" "${RPS[pingora.$size]}")x"
  echo "$size: portico/nginx requests/s $(ratio "${RPS[portico.$size]}" "${RPS[nginx.$size]}")x, p99 $(ratio "${P99[portico.$size]}" "${P99[nginx.$size]}")x; portico/varnish requests/s $(ratio "${RPS[portico.$size]}" "${RPS[varnish.$size]}")x, p99 $(ratio "${P99[portico.$size]}" "${P99[varnish.$size]}")x"
done
echo "portico misses (requests that went to the origin): $origin_hits"
