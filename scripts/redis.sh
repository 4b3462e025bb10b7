#!/usr/bin/env bash
# Start (idempotently) the two local redis-servers xz_serve uses, under .run/:
#   cache  127.0.0.1:${XZ_REDIS_CACHE_PORT:-6379}: bounded memory, allkeys-lru, no persistence
#          (a cache may lose anything, and should evict rather than refuse writes);
#   store  127.0.0.1:${XZ_REDIS_STORE_PORT:-6380}: AOF (fsync every second), noeviction
#          (API keys, sessions and rate-limit counters must survive restarts and never be evicted).
# `bash scripts/redis.sh stop` stops both (by pid file).
set -euo pipefail
cd "$(dirname "$0")/.."
cache_port=${XZ_REDIS_CACHE_PORT:-6379}
store_port=${XZ_REDIS_STORE_PORT:-6380}
run=.run
mkdir -p "$run/redis-cache" "$run/redis-store"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "${1:-start}" = stop ]; then
  for name in cache store; do
    pidfile="$run/redis-$name/redis.pid"
    if alive "$pidfile"; then kill "$(cat "$pidfile")"; fi
  done
  exit 0
fi

start() {  # name port extra-args...
  local name=$1 port=$2; shift 2
  local dir; dir="$(pwd)/$run/redis-$name"
  if alive "$dir/redis.pid"; then return; fi
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --pidfile "$dir/redis.pid" \
    --logfile "$dir/redis.log" --daemonize yes "$@"
  for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "redis-server ($name) did not start on port $port; see $dir/redis.log" >&2
  exit 1
}

start cache "$cache_port" --save "" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru
start store "$store_port" --save "" --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
echo "redis: cache redis://127.0.0.1:$cache_port/0, store redis://127.0.0.1:$store_port/0"
