#!/usr/bin/env bash
# Instructions per proxied request (user space, counted by valgrind's callgrind), for nginx,
# the smallest Pingora proxy and Portico in front of the same loopback origin. Unlike
# requests/s, instruction counts do not depend on what else the machine is doing.
# Loopback only; every server is stopped on exit (SIGINT, then SIGKILL: no drain to wait
# for). Usage: bench/instructions.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-5}
. bench/common.sh

install_missing nginx-light wrk valgrind libmimalloc2.0
cargo build --release --quiet --bin portico --example bare_pingora

ORIGIN=$(port); NGINX=$(port); PINGORA=$(port); PORTICO=$(port); ADMIN=$(port)
NODASH=$(port); NODASH_ADMIN=$(port)
PINGORA_MI=$(port); HEADERS=$(port); GW_HEADERS=$(port)
origin_conf "$ORIGIN"
# One process (no master), so callgrind counts the worker itself.
nginx_conf "$NGINX" "$ORIGIN" "master_process off;"
gateway_yaml "$PORTICO" "$ADMIN" "$ORIGIN"
# The same gateway with the dashboard off: what keeping its figures costs.
mkdir "$work/nodash"
sed -e "s/127.0.0.1:$PORTICO,/127.0.0.1:$NODASH,/" -e "s/127.0.0.1:$ADMIN }/127.0.0.1:$NODASH_ADMIN }/" \
  "$work/gateway.yaml" > "$work/nodash/gateway.yaml"
echo "admin: { dashboard: false }" >> "$work/nodash/gateway.yaml"
cp "$work/keys.yaml" "$work/nodash/"

nginx -c "$work/origin.conf" & pids+=($!)
# Dumps and valgrind's messages go to a folder of their own: Portico watches its config's
# folder, and a file written beside gateway.yaml would wake its watcher during a row.
mkdir "$work/cg"
grind() { valgrind --tool=callgrind --callgrind-out-file="$work/cg/$1" "${@:2}" >/dev/null 2>"$work/cg/$1.err" & pids+=($!); }
grind nginx nginx -c "$work/nginx.conf"
grind pingora target/release/examples/bare_pingora "127.0.0.1:$PINGORA" "127.0.0.1:$ORIGIN"
# The floor under Portico's own work: bare Pingora with Portico's allocator (mimalloc,
# preloaded), then adding only the headers Portico adds (constant values), for the plain
# route and for the API-gateway policies: what Pingora's header API alone costs.
MIMALLOC=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
LD_PRELOAD=$MIMALLOC grind pingora-mi target/release/examples/bare_pingora "127.0.0.1:$PINGORA_MI" "127.0.0.1:$ORIGIN"
LD_PRELOAD=$MIMALLOC grind headers target/release/examples/bare_pingora "127.0.0.1:$HEADERS" "127.0.0.1:$ORIGIN" headers
LD_PRELOAD=$MIMALLOC grind gw-headers target/release/examples/bare_pingora "127.0.0.1:$GW_HEADERS" "127.0.0.1:$ORIGIN" gw-headers
PORTICO_LOG=warn grind portico target/release/portico run -c "$work/gateway.yaml"
PORTICO_LOG=warn grind portico-nodash target/release/portico run -c "$work/nodash/gateway.yaml"

ready() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.2; done; echo "port $1 did not answer" >&2; exit 1; }
# valgrind takes a command only while the program runs, so an idle server is woken with
# requests until the command is through; prints how many it took.
control() {
  callgrind_control "$1" "$2" >/dev/null 2>&1 & local c=$! n=0
  while kill -0 "$c" 2>/dev/null; do curl -s -o /dev/null "http://127.0.0.1:$3/"; n=$((n + 1)); sleep 0.1; done
  echo "$n"
}
TOKEN=$(hs256_token)
printf '%-11s %10s %14s\n' server requests 'instr/request'
declare -A PER
# portico-nodash is a second Portico process on the same config with `admin.dashboard: false`;
# portico-gw is the same Portico process as portico on its /gw/ route (HS256 token, role claim, a limit
# keyed by the subject, CORS), portico-split the same process on a route split 9:1 across two
# upstreams (weighted backends) and portico-single on a one-upstream route at the same depth of
# the route table (its baseline), portico-jwt and portico-key routes that only authenticate (an
# HS256 token, an API key), and the -big rows the same processes on a 17.7 KB body: each row
# zeroes the counters first and reads its own dump.
for name in nginx pingora pingora-mi headers gw-headers portico portico-nodash portico-single portico-split portico-gw portico-jwt portico-key pingora-big portico-big; do
  path=/ hdr=() proc=$name
  case $name in nginx) p=$NGINX;; pingora) p=$PINGORA;; portico) p=$PORTICO;;
    pingora-mi) p=$PINGORA_MI;; headers) p=$HEADERS;; gw-headers) p=$GW_HEADERS;;
    pingora-big) p=$PINGORA proc=pingora path=/big;; portico-big) p=$PORTICO proc=portico path=/big;;
    portico-nodash) p=$NODASH;;
    portico-single) p=$PORTICO proc=portico path=/single/x;;
    portico-split) p=$PORTICO proc=portico path=/split/x;;
    portico-gw) p=$PORTICO proc=portico path=/gw/x hdr=(-H "Authorization: Bearer $TOKEN" -H 'Origin: https://app.example.com');;
    portico-jwt) p=$PORTICO proc=portico path=/jwt/x hdr=(-H "Authorization: Bearer $TOKEN");;
    portico-key) p=$PORTICO proc=portico path=/key/x hdr=(-H "X-API-Key: $API_KEY");; esac
  ready "$p"
  pid=$(pgrep -f "callgrind-out-file=$work/cg/$proc ")
  # A warm-up on the row's own path first: the allocator's pages settle for its pattern
  # (without it, a row after another path's paid mimalloc's fresh-page path: +1.3 %).
  wrk -t1 -c8 -d2s "${hdr[@]}" "http://127.0.0.1:$p$path" >/dev/null
  control -z "$pid" "$p" >/dev/null
  out=$(wrk -t1 -c8 -d"${DURATION}s" "${hdr[@]}" "http://127.0.0.1:$p$path")
  # Only 2xx answers count: an error page would measure another path.
  if echo "$out" | grep -q 'Non-2xx'; then echo "$name: $(echo "$out" | grep 'Non-2xx')" >&2; exit 1; fi
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  pokes=$(control -d "$pid" "$p")
  total=$(awk '/^summary:/ {print $2}' "$(ls -t "$work/cg/$proc".* | head -1)")
  PER[$name]=$((total / (requests + pokes)))
  printf '%-11s %10s %14s\n' "$name" "$requests" "${PER[$name]}"
done
echo "instructions per request: pingora/nginx $(ratio "${PER[pingora]}" "${PER[nginx]}")x, portico/pingora $(ratio "${PER[portico]}" "${PER[pingora]}")x (goal <= 1.05), portico-gw/pingora $(ratio "${PER[portico-gw]}" "${PER[pingora]}")x (goal <= 1.15), portico/nginx $(ratio "${PER[portico]}" "${PER[nginx]}")x"
echo "a split route (backends 9:1) against a single-upstream route as deep in the route table: portico-split/portico-single $(ratio "${PER[portico-split]}" "${PER[portico-single]}" 3)x (goal <= 1.010)"
echo "the dashboard's figures: portico/portico-nodash $(ratio "${PER[portico]}" "${PER[portico-nodash]}" 3)x (the plain route with the dashboard on and off; goal <= 1.02)"
echo "authentication alone: portico-key/portico-jwt $(ratio "${PER[portico-key]}" "${PER[portico-jwt]}" 3)x (an API key against an HS256 token; goal <= 1.10)"
echo "17.7 KB body: portico-big/pingora-big $(ratio "${PER[portico-big]}" "${PER[pingora-big]}")x (goal <= 1.10)"
echo "with Portico's allocator: headers/pingora-mi $(ratio "${PER[headers]}" "${PER[pingora-mi]}")x and gw-headers/pingora-mi $(ratio "${PER[gw-headers]}" "${PER[pingora-mi]}")x (Pingora's header API alone), portico/headers $(ratio "${PER[portico]}" "${PER[headers]}")x and portico-gw/gw-headers $(ratio "${PER[portico-gw]}" "${PER[gw-headers]}")x (the rest of Portico)"
