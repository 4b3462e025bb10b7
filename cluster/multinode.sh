#!/usr/bin/env bash
# A real multi-node Ray cluster on this one machine, serving xz_serve:
#   head      GCS, Serve controller, HAProxy (the one URL); --num-cpus 0, so it takes no replicas.
#             Its GCS is backed by a redis-server of its own (Ray's external-Redis GCS fault
#             tolerance, what KubeRay's gcsFaultToleranceOptions sets up), with a password.
#   workers   a and b, each its own CPU count (1 and 2: shares of this machine's cores; Ray wants
#             whole numbers per node, the replicas take half a CPU each), a custom resource
#             (xz_node_a / xz_node_b) and a label (xz-node=a / b), so where a replica runs is visible.
#   redis     the cache's (allkeys-lru, no persistence) and the store's (AOF, noeviction), shared by
#             every replica on every node, and the GCS's: three redis-servers on their own ports.
# Everything listens on 127.0.0.1, lives under $XZ_MN_DIR (default .run/multinode) and a short Ray
# temp dir, and is stopped by pid: `ray stop` would stop every Ray on the machine.
#
#   cluster/multinode.sh up              redis-servers, head, workers a and b
#   cluster/multinode.sh config          print the Serve config `deploy` uses (deployments/local.yaml
#                                        with the cluster's port, 2..3 fused replicas, API keys on)
#   cluster/multinode.sh deploy [FILE]   serve deploy it (or FILE) and wait for /readyz
#   cluster/multinode.sh status          serve status
#   cluster/multinode.sh api PATH        GET PATH from the dashboard's REST API (with the token), e.g.
#                                        /api/serve/applications/ (replicas and their nodes)
#   cluster/multinode.sh load SECONDS CONNECTIONS INTERVAL_MS ["Name: value|..."]
#                                        paced wrk on /v1/analyze: each connection one request every
#                                        INTERVAL_MS (0: closed loop); prints WRK_EVENTS, one
#                                        [done_ms, latency_ms, status, class] per request
#   cluster/multinode.sh kill-node a|b   SIGKILL that worker's raylet: the node and its replicas die
#   cluster/multinode.sh start-node a|b  start that worker again
#   cluster/multinode.sh kill-gcs        SIGKILL the GCS, keeping its command line and environment
#   cluster/multinode.sh restart-gcs     start the GCS again from them; it reloads the cluster from Redis
#   cluster/multinode.sh down            stop all of it, by pid
#
# Env: XZ_MN_DIR, XZ_MN_CPUS_A (1), XZ_MN_CPUS_B (2). `up` writes $XZ_MN_DIR/cluster.env
# (ports, URLs, the Ray temp dir), which every other command and tests/integration/test_multinode.py
# read. Ray and the model take a few GiB of memory; run one such cluster at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=${XZ_MN_DIR:-$ROOT/.run/multinode}
STATE=$RUN/cluster.env
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$ROOT/.venv/bin/activate" ]; then
  . "$ROOT/.venv/bin/activate"
fi
PY=python

die() { echo "multinode: $*" >&2; exit 1; }
# Ray's token authentication, on every node and for every client of the cluster (serve deploy,
# the dashboard's REST API: `Authorization: Bearer $RAY_AUTH_TOKEN`), with this cluster's own token.
state() {
  [ -f "$STATE" ] || die "no cluster under $RUN (run: cluster/multinode.sh up)"
  . "$STATE"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
}

free_ports() {  # N distinct ports nothing listens on (held open together while chosen)
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

pids_matching() {  # pids whose command line contains $1, and all their descendants
  "$PY" - "$1" <<'EOF'
import os, sys
needle, me = sys.argv[1].encode(), os.getpid()
parent, found = {}, set()
for d in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{d}/cmdline", "rb").read()
        stat = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    if needle in cmd and int(d) != me:
        found.add(int(d))
grew = True
while grew:
    grew = False
    for pid, ppid in parent.items():
        if ppid in found and pid not in found and pid != me:
            found.add(pid)
            grew = True
print(" ".join(map(str, sorted(found))))
EOF
}

raylet_pid() {  # the raylet of node $1 (head, a, b): its node-manager port is in its command line
  local var="NM_PORT_$1"
  "$PY" - "--node_manager_port=${!var}" <<'EOF'
import os, sys
flag = sys.argv[1].encode()
for d in filter(str.isdigit, os.listdir("/proc")):
    try:
        args = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    if args and args[0].endswith(b"/raylet") and flag in args:
        print(d)
EOF
}

gcs_pid() {
  "$PY" - "--gcs_server_port=$GCS_PORT" "$RAY_TMP" <<'EOF'
import os, sys
flag, tmp = sys.argv[1].encode(), sys.argv[2].encode()
for d in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{d}/cmdline", "rb").read()
    except OSError:
        continue
    args = cmd.split(b"\0")
    if args and args[0].endswith(b"/gcs_server") and flag in args and tmp in cmd:
        print(d)
EOF
}

start_redis() {  # name port extra-args...
  local name=$1 port=$2; shift 2
  local dir=$RUN/redis-$name
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log" --daemonize yes --save "" "$@"
  for _ in $(seq 100); do
    [ -s "$dir/redis.pid" ] && REDISCLI_AUTH=${REDIS_AUTH:-} redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return
    sleep 0.05
  done
  die "redis-server ($name) did not start on port $port; see $dir/redis.log"
}

# The environment of every node: Ray's process flags (deployments/ray.env), the app's Redis URLs
# (as production passes them), and this cluster's own ports for Serve's side listeners, so another
# Ray on the machine keeps its defaults.
node_env() {
  set -a
  . "$ROOT/deployments/ray.env"
  set +a
  export XZ_CACHE__REDIS_URL="redis://127.0.0.1:$CACHE_PORT/0"
  export XZ_STORE__REDIS_URL="redis://127.0.0.1:$STORE_PORT/0"
  export RAY_SERVE_HAPROXY_STATS_PORT=$HAPROXY_STATS_PORT RAY_SERVE_HAPROXY_METRICS_PORT=$HAPROXY_METRICS_PORT
  export RAY_SERVE_FALLBACK_PROXY_HTTP_PORT=$FALLBACK_HTTP_PORT RAY_SERVE_FALLBACK_PROXY_GRPC_PORT=$FALLBACK_GRPC_PORT
  export RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=$RAY_TMP/haproxy/haproxy.cfg
  export RAY_SERVE_HAPROXY_SOCKET_PATH=$RAY_TMP/haproxy/admin.sock
  export RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=$RAY_TMP/haproxy/metrics.sock
  # Replicas' own HTTP/gRPC ports (HAProxy connects to them directly), below the ephemeral range.
  export RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=$((PORT_BASE + 600)) RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=$((PORT_BASE + 799))
  export RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT=$((PORT_BASE + 800)) RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT=$((PORT_BASE + 999))
}

start_worker() {  # a | b
  local name=$1 cpus_var="CPUS_$1" nm_var="NM_PORT_$1" om_var="OM_PORT_$1" agent_var="AGENT_PORTS_$1"
  local base=$((PORT_BASE + 200)) listen grpc env_port metrics
  [ "$name" = a ] || base=$((PORT_BASE + 400))
  read -r listen grpc env_port metrics <<<"${!agent_var}"
  (
    node_env
    ray start --address="127.0.0.1:$GCS_PORT" --node-ip-address=127.0.0.1 --num-cpus="${!cpus_var}" \
      --resources="{\"xz_node_$name\": 1}" --labels="xz-node=$name" \
      --node-manager-port="${!nm_var}" --object-manager-port="${!om_var}" \
      --min-worker-port="$base" --max-worker-port="$((base + 199))" \
      --dashboard-agent-listen-port="$listen" --dashboard-agent-grpc-port="$grpc" \
      --runtime-env-agent-port="$env_port" --metrics-export-port="$metrics" \
      --object-store-memory=100000000 --temp-dir="$RAY_TMP" --disable-usage-stats
  ) >"$RUN/ray-$name.log" 2>&1 || { cat "$RUN/ray-$name.log" >&2; die "worker $name did not start"; }
}

cmd_up() {
  [ -f "$STATE" ] && die "a cluster is already up under $RUN (cluster/multinode.sh down first)"
  mkdir -p "$RUN"
  local ports; ports=($(free_ports 29))
  # A 1,000-port block for worker processes and replica listeners, below the ephemeral range and
  # away from Ray's defaults (workers 10002-19999, replicas 30000-31000).
  local base=$((20000 + (ports[0] % 9) * 1000))
  local password token
  password=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
  token=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  cat >"$STATE" <<EOF
RUN=$RUN
RAY_TMP=/tmp/xzmn-${ports[0]}
PORT_BASE=$base
GCS_PORT=${ports[0]}
DASH_PORT=${ports[1]}
HTTP_PORT=${ports[2]}
CACHE_PORT=${ports[3]}
STORE_PORT=${ports[4]}
GCS_REDIS_PORT=${ports[5]}
GCS_REDIS_PASSWORD=$password
RAY_AUTH_TOKEN=$token
NM_PORT_head=${ports[6]}
NM_PORT_a=${ports[7]}
NM_PORT_b=${ports[8]}
OM_PORT_head=${ports[9]}
OM_PORT_a=${ports[10]}
OM_PORT_b=${ports[11]}
AGENT_PORTS_head="${ports[12]} ${ports[13]} ${ports[14]} ${ports[15]}"
AGENT_PORTS_a="${ports[16]} ${ports[17]} ${ports[18]} ${ports[19]}"
AGENT_PORTS_b="${ports[20]} ${ports[21]} ${ports[22]} ${ports[23]}"
HAPROXY_STATS_PORT=${ports[24]}
HAPROXY_METRICS_PORT=${ports[25]}
FALLBACK_HTTP_PORT=${ports[26]}
FALLBACK_GRPC_PORT=${ports[27]}
CLIENT_PORT=${ports[28]}
CPUS_a=${XZ_MN_CPUS_A:-1}
CPUS_b=${XZ_MN_CPUS_B:-2}
NAMESPACE=xz-multinode-${ports[0]}
EOF
  state
  mkdir -p "$RAY_TMP/haproxy"
  start_redis cache "$CACHE_PORT" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru
  start_redis store "$STORE_PORT" --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
  # The GCS's Redis: durable, never evicting (losing a key loses cluster state), password-protected.
  REDIS_AUTH=$GCS_REDIS_PASSWORD start_redis gcs "$GCS_REDIS_PORT" --requirepass "$GCS_REDIS_PASSWORD" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
  local listen grpc env_port metrics
  read -r listen grpc env_port metrics <<<"$AGENT_PORTS_head"
  (
    node_env
    # External-Redis GCS: the GCS writes every table to that Redis and reloads them on a restart.
    # The namespace keeps this cluster's keys apart from any other cluster's in the same Redis.
    export RAY_REDIS_ADDRESS=127.0.0.1:$GCS_REDIS_PORT RAY_external_storage_namespace=$NAMESPACE
    ray start --head --node-ip-address=127.0.0.1 --port="$GCS_PORT" --num-cpus=0 \
      --redis-username=default --redis-password="$GCS_REDIS_PASSWORD" \
      --resources='{"xz_head": 1}' --labels="xz-node=head" \
      --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT" \
      --ray-client-server-port="$CLIENT_PORT" \
      --node-manager-port="$NM_PORT_head" --object-manager-port="$OM_PORT_head" \
      --min-worker-port="$PORT_BASE" --max-worker-port="$((PORT_BASE + 199))" \
      --dashboard-agent-listen-port="$listen" --dashboard-agent-grpc-port="$grpc" \
      --runtime-env-agent-port="$env_port" --metrics-export-port="$metrics" \
      --object-store-memory=100000000 --temp-dir="$RAY_TMP" --disable-usage-stats
  ) >"$RUN/ray-head.log" 2>&1 || { cat "$RUN/ray-head.log" >&2; die "the head did not start"; }
  start_worker a
  start_worker b
  echo "multinode: up: Ray at 127.0.0.1:$GCS_PORT (dashboard http://127.0.0.1:$DASH_PORT);" \
    "GCS Redis 127.0.0.1:$GCS_REDIS_PORT; cache :$CACHE_PORT, store :$STORE_PORT; state in $STATE"
}

cmd_config() {
  state
  "$PY" - "$ROOT" "$HTTP_PORT" <<'EOF'
import sys
from pathlib import Path

import yaml

root, port = Path(sys.argv[1]), int(sys.argv[2])
config = yaml.safe_load((root / "deployments" / "local.yaml").read_text())
config["proxy_location"] = "HeadOnly"  # HAProxy on the head reaches the replicas on the workers
config["http_options"] = {"host": "127.0.0.1", "port": port}
(app,) = config["applications"]
args = app["args"]
# Absolute paths: the app is built and served in worker processes, not in this shell. local.yaml
# leaves them to XzSettings' defaults (so the environment can pick another model), resolved here.
from xz_serve.settings import XzSettings

defaults = XzSettings()
model_dir = {name: str((root / getattr(defaults.model, name)).resolve()) for name in ("artifacts_dir", "data_dir")}
args["model"] |= {**model_dir, "intra_op_threads": 1}
args.setdefault("dialog", {})["policy_path"] = str(defaults.dialog.policy_path)  # already absolute
# Two replicas to start (Serve spreads them over the two workers), up to three under load; half a
# CPU each, so a surviving worker has room for the replicas of a lost one. The look-back is longer
# than Serve's 10 s metrics interval, as Serve requires.
args["nlu"] |= {"min_replicas": 2, "max_replicas": 3, "num_cpus": 0.5, "max_ongoing_requests": 64,
                "max_queued_requests": 128, "target_ongoing_requests": 4, "upscale_delay_s": 2,
                "downscale_delay_s": 120, "look_back_period_s": 12, "graceful_shutdown_timeout_s": 5}  # fmt: skip
# API keys and limits on, as in production: a key's limit is one budget in the shared store.
args["access"] = {"auth_enabled": True, "limits_fail_mode": "open", "key_stale_s": 300}
print(yaml.safe_dump(config, sort_keys=False), end="")
EOF
}

http_get() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" || true; }
dashboard() { curl -s --max-time "${2:-5}" -H "Authorization: Bearer $RAY_AUTH_TOKEN" "http://127.0.0.1:$DASH_PORT$1"; }

cmd_deploy() {
  state
  local file=${1:-$RUN/serve.yaml}
  [ $# -gt 0 ] || cmd_config >"$file"
  serve deploy --address "http://127.0.0.1:$DASH_PORT" "$file"
  local deadline=$((SECONDS + ${XZ_MN_READY_TIMEOUT_S:-300}))
  # Ready: every application RUNNING (all its replicas up) and /readyz answering 200 through HAProxy.
  until [ "$(dashboard /api/serve/applications/ | "$PY" -c '
import json, sys
try:
    apps = json.load(sys.stdin)["applications"]
    print("yes" if apps and all(a["status"] == "RUNNING" for a in apps.values()) else "no")
except (ValueError, KeyError, TypeError):
    print("no")')" = yes ] && [ "$(http_get "http://127.0.0.1:$HTTP_PORT/readyz")" = 200 ]; do
    [ $SECONDS -lt $deadline ] || { serve status --address "http://127.0.0.1:$DASH_PORT" >&2; die "not ready"; }
    sleep 1
  done
  echo "multinode: serving at http://127.0.0.1:$HTTP_PORT"
}

cmd_status() { state; serve status --address "http://127.0.0.1:$DASH_PORT"; }

cmd_api() { state; dashboard "$1" "${2:-5}"; }

cmd_load() {
  state
  local seconds=$1 connections=$2 interval=$3 headers=${4:-}
  cat >"$RUN/load.lua" <<'EOF'
-- One request per connection every WRK_INTERVAL_MS (0: closed loop), bodies from WRK_TEXTS,
-- extra headers from WRK_HEADERS ("Name: value|Name: value"). done() prints every request as
-- [done_ms, latency_ms, status, class] (CLOCK_MONOTONIC ms, Python's time.monotonic() * 1000):
-- class is "" for a 200, the JSON error code of an app error, "proxy" for a plain-text error from
-- HAProxy / Ray's errorfile, "socket" for a request whose connection broke before any answer.
local now_ms = dofile(os.getenv("WRK_CLOCK"))
local bodies = dofile(os.getenv("WRK_TEXTS"))
local interval = tonumber(os.getenv("WRK_INTERVAL_MS") or "0")
local headers = { ["Content-Type"] = "application/json" }
for extra in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^|]+") do
  local name, value = string.match(extra, "^%s*([^:]+):%s*(.-)%s*$")
  if name then headers[name] = value end
end
local threads, thread_id = {}, 0

function setup(thread)
  thread:set("offset", thread_id * 7919)
  thread_id = thread_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = offset or 0
  math.randomseed(counter + 1)
  events = {}
  pending = false
  sent_at = 0
  slot = nil
  started = false -- wrk calls request() once on the first thread before sending anything
end

function request()
  local t = now_ms()
  if pending then -- the previous request got no answer: its connection broke
    events[#events + 1] = string.format('[%.1f,%.1f,0,"socket"]', t, t - sent_at)
  end
  pending = started -- wrk asks delay() before every request it sends, the first one too
  sent_at = t
  counter = counter + 1
  return wrk.format("POST", "/v1/analyze", headers, bodies[(counter % #bodies) + 1])
end

function delay()
  started = true
  if interval <= 0 then return 0 end
  local t = now_ms()
  if slot == nil then slot = t + math.random() * interval else slot = math.max(slot + interval, t) end
  return math.floor(slot - t)
end

function response(status, hdrs, body)
  local t = now_ms()
  pending = false
  local class = ""
  if status ~= 200 then
    class = string.match(body or "", '"code"%s*:%s*"([^"]+)"') or "proxy"
  end
  events[#events + 1] = string.format('[%.1f,%.1f,%d,"%s"]', t, t - sent_at, status, class)
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for _, e in ipairs(t:get("events") or {}) do all[#all + 1] = e end
  end
  local e = summary.errors
  io.write(string.format('WRK_SUMMARY {"requests":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d}\n',
    summary.requests, e.connect, e.read, e.write, e.timeout))
  io.write("WRK_EVENTS [" .. table.concat(all, ",") .. "]\n")
end
EOF
  WRK_CLOCK=$ROOT/bench/wrk_clock.lua WRK_TEXTS=$ROOT/bench/texts.lua WRK_INTERVAL_MS=$interval \
    WRK_HEADERS=$headers exec wrk -t"$connections" -c"$connections" -d"${seconds}s" --timeout 30s \
    -s "$RUN/load.lua" "http://127.0.0.1:$HTTP_PORT"
}

cmd_kill_node() {
  state
  local pid; pid=$(raylet_pid "$1")
  [ -n "$pid" ] || die "no raylet for node $1"
  kill -KILL "$pid"
  echo "multinode: killed node $1's raylet (pid $pid)"
}

cmd_start_node() { state; start_worker "$1"; echo "multinode: node $1 started"; }

cmd_kill_gcs() {
  state
  local pid; pid=$(gcs_pid)
  [ -n "$pid" ] || die "no GCS running"
  cp "/proc/$pid/cmdline" "$RUN/gcs.cmdline"
  cp "/proc/$pid/environ" "$RUN/gcs.environ"
  kill -KILL "$pid"
  echo "multinode: killed the GCS (pid $pid)"
}

cmd_restart_gcs() {
  state
  [ -f "$RUN/gcs.cmdline" ] || die "kill-gcs first"
  [ -z "$(gcs_pid)" ] || die "the GCS is running"
  "$PY" - "$RUN" <<'EOF'
import os, subprocess, sys
run = sys.argv[1]
args = [a.decode() for a in open(f"{run}/gcs.cmdline", "rb").read().split(b"\0") if a]
env = dict(e.decode().split("=", 1) for e in open(f"{run}/gcs.environ", "rb").read().split(b"\0") if b"=" in e)
with open(f"{run}/gcs-restart.log", "ab") as log:
    proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
print(f"multinode: GCS restarted (pid {proc.pid})")
EOF
}

cmd_down() {
  [ -f "$STATE" ] || { echo "multinode: nothing under $RUN"; return; }
  . "$STATE"
  local pids; pids=$(pids_matching "$RAY_TMP")
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
      local alive=""
      for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
      [ -z "$alive" ] && break
      sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  for name in cache store gcs; do
    local pidfile=$RUN/redis-$name/redis.pid
    if [ -s "$pidfile" ]; then kill -KILL "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  rm -rf "$RAY_TMP"
  rm -f "$STATE"
  echo "multinode: down"
}

command=${1:-}
shift || true
case "$command" in
  up) cmd_up ;;
  config) cmd_config ;;
  deploy) cmd_deploy "$@" ;;
  status) cmd_status ;;
  api) cmd_api "$@" ;;
  load) cmd_load "$@" ;;
  kill-node) cmd_kill_node "$@" ;;
  start-node) cmd_start_node "$@" ;;
  kill-gcs) cmd_kill_gcs ;;
  restart-gcs) cmd_restart_gcs ;;
  down) cmd_down ;;
  *) sed -n "2,30p" "$0" >&2; exit 2 ;;
esac
