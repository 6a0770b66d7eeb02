#!/usr/bin/env bash
# Instructions per proxied request (user space, counted by valgrind's callgrind), for nginx,
# the smallest Pingora proxy and Portico in front of the same loopback origin. Unlike
# requests/s, instruction counts do not depend on what else the machine is doing.
# Loopback only; every server is stopped on exit (SIGINT, then SIGKILL: no drain to wait
# for). Usage: bench/instructions.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

for pkg in nginx-light wrk valgrind; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="${missing:-} $pkg"
done
if [ -n "${missing:-}" ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
cargo build --release --quiet --bin portico --example bare_pingora

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ORIGIN=$(port); NGINX=$(port); PINGORA=$(port); PORTICO=$(port); ADMIN=$(port)

cat > "$work/origin.conf" <<CONF
worker_processes 1;
daemon off; pid $work/origin.pid; error_log $work/origin.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$ORIGIN; keepalive_requests 100000;
    location / { default_type text/plain; return 200 "hello from origin\n"; } } }
CONF
# One process (no master), so callgrind counts the worker itself.
cat > "$work/nginx.conf" <<CONF
worker_processes 1; master_process off;
daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; keepalive_requests 100000; }
  server { listen 127.0.0.1:$NGINX; keepalive_requests 100000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PORTICO, admin: 127.0.0.1:$ADMIN }
server: { threads: 1 }
upstreams:
  origin: { targets: ["127.0.0.1:$ORIGIN"] }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
CONF

nginx -c "$work/origin.conf" & pids+=($!)
grind() { valgrind --tool=callgrind --callgrind-out-file="$work/cg.$1" "${@:2}" >/dev/null 2>"$work/$1.err" & pids+=($!); }
grind nginx nginx -c "$work/nginx.conf"
grind pingora target/release/examples/bare_pingora "127.0.0.1:$PINGORA" "127.0.0.1:$ORIGIN"
PORTICO_LOG=warn grind portico target/release/portico run -c "$work/gateway.yaml"

ready() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.2; done; echo "port $1 did not answer" >&2; exit 1; }
# valgrind takes a command only while the program runs, so an idle server is woken with
# requests until the command is through; prints how many it took.
control() {
  callgrind_control "$1" "$2" >/dev/null 2>&1 & local c=$! n=0
  while kill -0 "$c" 2>/dev/null; do curl -s -o /dev/null "http://127.0.0.1:$3/"; n=$((n + 1)); sleep 0.1; done
  echo "$n"
}
printf '%-8s %10s %14s\n' server requests 'instr/request'
declare -A PER
for name in nginx pingora portico; do
  case $name in nginx) p=$NGINX;; pingora) p=$PINGORA;; portico) p=$PORTICO;; esac
  ready "$p"
  pid=$(pgrep -f "callgrind-out-file=$work/cg.$name")
  control -z "$pid" "$p" >/dev/null
  requests=$(wrk -t1 -c8 -d"${DURATION}s" "http://127.0.0.1:$p/" | awk '/requests in/ {print $1}')
  pokes=$(control -d "$pid" "$p")
  total=$(awk '/^summary:/ {print $2}' "$work/cg.$name".*)
  PER[$name]=$((total / (requests + pokes)))
  printf '%-8s %10s %14s\n' "$name" "$requests" "${PER[$name]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
echo "instructions per request: pingora/nginx $(ratio "${PER[pingora]}" "${PER[nginx]}")x, portico/pingora $(ratio "${PER[portico]}" "${PER[pingora]}")x, portico/nginx $(ratio "${PER[portico]}" "${PER[nginx]}")x"
