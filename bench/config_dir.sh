#!/usr/bin/env bash
# Reloading a large config directory: a base file and 100 team files of 100 routes each
# (10,000 routes, 100 upstreams), served by the release build. One team file is edited
# ROUNDS times (a route's answer changes); each time the script waits until the new answer
# is served and reads how long the reload took to read, check and compile the directory
# (`took_ms` of the "config reloaded" record, also in /health). `portico check` of the
# same directory (a fresh process parsing every file) is shown for scale.
# Usage: bench/config_dir.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
. bench/common.sh

cargo build --release --quiet --bin portico
PROXY=$(port); ADMIN=$(port)
conf="$work/conf"
mkdir -p "$conf"
cat > "$conf/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$PROXY, admin: 127.0.0.1:$ADMIN }
telemetry: { access_log: { enabled: false } }
CONF
# team-NNN.yaml: an upstream, a rate limit and 99 proxied routes, plus one `respond`
# route whose answer shows which version is live.
team() {
  local t=$1 answer=$2
  printf 'defaults: { rate_limit: t%s-limit }\n' "$t"
  printf 'upstreams:\n  t%s: { targets: [127.0.0.1:%d] }\n' "$t" $((20000 + 10#$t))
  printf 'rate_limits:\n  t%s-limit: { requests: 100, per: 1s }\n' "$t"
  printf 'routes:\n'
  printf '  - { name: t%s-version, match: { path: /t%s/version }, respond: { text: %s } }\n' "$t" "$t" "$answer"
  for r in $(seq 1 99); do
    printf '  - { name: t%s-r%d, match: { path_prefix: /t%s/r%d/, methods: [GET, POST] }, upstream: t%s }\n' "$t" "$r" "$t" "$r" "$t"
  done
}
for t in $(seq -w 0 99); do team "$t" v0 > "$conf/team-$t.yaml"; done

start=$(date +%s%N)
./target/release/portico check "$conf" >/dev/null 2>&1
echo "portico check: $(( ($(date +%s%N) - start) / 1000000 )) ms"
./target/release/portico run -c "$conf" > "$work/portico.log" 2>&1 &
pids+=($!)
wait_port "$PROXY"
until curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null; do sleep 0.1; done
routes=$(curl -s "http://127.0.0.1:$ADMIN/routes" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["routes"]))')
echo "routes: $routes in $(ls "$conf" | wc -l) files"

took=()
for i in $(seq 1 "$ROUNDS"); do
  team 42 "v$i" > "$work/team-42.yaml"
  mv "$work/team-42.yaml" "$conf/team-42.yaml"
  deadline=$((SECONDS + 30))
  until [ "$(curl -s "http://127.0.0.1:$PROXY/t42/version")" = "v$i" ]; do
    [ $SECONDS -lt $deadline ] || { echo "round $i: not live after 30 s"; tail -5 "$work/portico.log"; exit 1; }
    sleep 0.05
  done
  took+=("$(curl -s "http://127.0.0.1:$ADMIN/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_reload"]["took_ms"])')")
done
printf 'reload took (ms): %s\n' "${took[*]}"
printf '%s\n' "${took[@]}" | sort -n | awk '{a[NR]=$1} END {print "median " a[int((NR+1)/2)] " ms, max " a[NR] " ms over " NR " reloads"}'
rss=$(awk '/VmHWM/ {print $2}' "/proc/${pids[0]}/status")
echo "peak RSS: $((rss / 1024)) MiB"
