# Shared by the benchmark scripts (sourced from the repository root): packages, a scratch
# directory, servers stopped on exit, free ports, and the origin/proxy configs they share.

SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

# Installs the Debian packages given that are missing.
install_missing() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
  fi
}

work=$(mktemp -d)
pids=()
# Servers are stopped with SIGINT, then SIGKILL: there is no drain to wait for.
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# origin_conf PORT: the nginx origin every proxy is measured against; /big is a 17.7 KB body.
origin_conf() {
  # In a folder of its own: opening a file beside gateway.yaml wakes Portico's watcher.
  # nginx's workers (www-data) read it: the scratch folder is made 0700.
  chmod 755 "$work"
  mkdir -p "$work/www"
  head -c 17700 /dev/zero | tr '\0' 'x' > "$work/www/big"
  cat > "$work/origin.conf" <<CONF
worker_processes 1;
daemon off; pid $work/origin.pid; error_log $work/origin.err;
events { worker_connections 4096; }
http { access_log off;
  server { listen 127.0.0.1:$1; keepalive_requests 100000;
    location / { default_type text/plain; return 200 "hello from origin\n"; }
    location = /big { default_type text/plain; alias $work/www/big; }
    location /json/ { default_type application/json; return 200 '{"id": 7, "name": "origin", "total": 3}'; } } }
CONF
}

# nginx_conf PORT ORIGIN [DIRECTIVES]: nginx as a keep-alive reverse proxy, one worker.
nginx_conf() {
  cat > "$work/nginx.conf" <<CONF
worker_processes 1; ${3:-}
daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off;
  upstream origin { server 127.0.0.1:$2; keepalive 128; keepalive_requests 100000; }
  server { listen 127.0.0.1:$1; keepalive_requests 100000;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
}

# rs256_token KEY: a JWT signed with the test RSA key (openssl), valid until 2096.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
rs256_token() {
  local h p s
  h=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
  p=$(printf '{"sub":"bench","exp":4000000000}' | b64url)
  s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$1" | b64url)
  echo "$h.$p.$s"
}

# The HMAC secret of the HS256 policy in gateway_yaml (and bench/gateway.sh).
export JWT_SECRET=bench-secret-0123456789abcdef0123456789

# hs256_token: a token for that policy (sub, role, iss, aud), valid until 2096.
hs256_token() {
  local h p s
  h=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
  p=$(printf '{"sub":"bench-user","role":"user","iss":"https://idp.example.com","aud":"api","exp":4000000000}' | b64url)
  s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)
  echo "$h.$p.$s"
}

# The API key of the api_key policy in gateway_yaml (its consumer: bench-partner).
export API_KEY=bench-key-0123456789abcdef

# gateway_yaml PORT ADMIN ORIGIN: Portico with one thread; /gw/ runs the API-gateway policies
# (HS256 token with a role claim, a limit keyed by its subject, CORS), / is a plain route;
# /jwt/ and /key/ authenticate alone (an HS256 token, an API key), each making one
# identity header.
gateway_yaml() {
  printf -- '- { consumer: bench-partner, key_sha256: %s }\n' \
    "$(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)" > "$work/keys.yaml"
  cat > "$work/gateway.yaml" <<CONF
version: 1
listen: { proxy: 127.0.0.1:$1, admin: 127.0.0.1:$2 }
server: { threads: 1 }
upstreams:
  origin: { targets: ["127.0.0.1:$3"] }
  origin-b: { targets: ["127.0.0.1:$3"] }
auth:
  rs: { algorithms: [RS256], public_key_file: "$PWD/tests/keys/rsa1.pub.pem" }
  hs: { algorithms: [HS256], secret_env: JWT_SECRET, issuer: https://idp.example.com, audience: api, forward_claims: { sub: X-User-Id } }
  partners: { type: api_key, keys_file: keys.yaml, forward: { consumer: X-Consumer } }
rate_limits:
  per_user: { requests: 1000000, per: 1s, burst: 1000000, key: "claim:sub" }
cors:
  web: { allow_origins: ["https://app.example.com"] }
routes:
  - name: gw
    match: { path_prefix: /gw/ }
    upstream: origin
    auth: hs
    require: { claims: { role: [admin, user] } }
    rate_limit: per_user
    cors: web
  - name: jwt
    match: { path_prefix: /jwt/ }
    upstream: origin
    auth: hs
  - name: key
    match: { path_prefix: /key/ }
    upstream: origin
    auth: partners
  - name: rs256
    match: { path_prefix: /rs/ }
    upstream: origin
    auth: rs
  - name: agg
    match: { path_template: "/agg/{id}" }
    aggregate:
      calls:
        - { name: user, upstream: origin, path: "/json/users/{id}" }
        - { name: orders, upstream: origin, path: "/json/orders?user={id}", allow: [id, total] }
        - { name: prefs, upstream: origin, path: "/json/prefs/{id}", merge: true }
  - name: single
    match: { path_prefix: /single/ }
    upstream: origin
  - name: split
    match: { path_prefix: /split/ }
    backends: [{ upstream: origin, weight: 9 }, { upstream: origin-b, weight: 1 }]
  - name: all
    match: { path_prefix: / }
    upstream: origin
CONF
}

# measure NAME PORT PATH [WRK ARGS...]: a 2 s warm-up, then wrk -t1 -c$CONNS for $DURATION
# seconds; sets RPS[NAME] and P99[NAME] (milliseconds) and reports any error responses.
declare -A RPS P99
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.3f", v}'; }
measure() {
  local name=$1 url="http://127.0.0.1:$2$3" out errors
  shift 3
  wrk -t1 -c"$CONNS" -d2s "$@" "$url" >/dev/null
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
  errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
  [ -z "$errors" ] || echo "$name: $errors" >&2
  RPS[$name]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  P99[$name]=$(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)
}
# ratio A B [DIGITS]: A/B with DIGITS decimals (default 2).
ratio() { awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN {printf "%." d "f", a/b}'; }

# wait_port PORT: waits up to 10 s for a listener; on failure shows the servers' error logs.
wait_port() {
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2
  for f in "$work"/*.err; do echo "== $f"; tail -n 5 "$f"; done >&2
  exit 1
}
