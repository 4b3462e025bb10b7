#!/usr/bin/env bash
# Start (idempotently) the two local redis-servers xz_serve uses, under .run/:
#   cache  127.0.0.1:${XZ_REDIS_CACHE_PORT:-6379}: bounded memory, allkeys-lru, no persistence
#          (a cache may lose anything, and should evict rather than refuse writes);
#   store  127.0.0.1:${XZ_REDIS_STORE_PORT:-6380}: AOF (fsync every second), noeviction
#          (API keys, sessions and rate-limit counters must survive restarts and never be evicted).
#   bash scripts/redis.sh [start] [cache] [store]   start them (both by default)
#   bash scripts/redis.sh stop [cache] [store]      stop them (by pid file), and wait until they are gone
#   bash scripts/redis.sh status NAME               exit 0 if that one runs
# A port other than the default gets its own data directory (.run/redis-store-PORT), so a second
# instance never reuses (or stops) the first one's server.
set -euo pipefail
cd "$(dirname "$0")/.."
run=.run
command=start
case "${1:-}" in start|stop|status) command=$1; shift ;; esac
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(cache store)

port_of() { if [ "$1" = cache ]; then echo "${XZ_REDIS_CACHE_PORT:-6379}"; else echo "${XZ_REDIS_STORE_PORT:-6380}"; fi; }
dir_of() {  # name -> data directory
  local port default; port=$(port_of "$1")
  if [ "$1" = cache ]; then default=6379; else default=6380; fi
  if [ "$port" = "$default" ]; then echo "$run/redis-$1"; else echo "$run/redis-$1-$port"; fi
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$command" = status ]; then
  alive "$(dir_of "${names[0]}")/redis.pid"
  exit
fi

if [ "$command" = stop ]; then
  for name in "${names[@]}"; do
    pidfile="$(dir_of "$name")/redis.pid"
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  exit 0
fi

start() {  # name port extra-args...
  local name=$1 port=$2; shift 2
  local dir; dir="$(pwd)/$(dir_of "$name")"
  mkdir -p "$dir"
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

for name in "${names[@]}"; do
  port=$(port_of "$name")
  if [ "$name" = cache ]; then
    start cache "$port" --save "" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru
  else
    start store "$port" --save "" --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
  fi
  echo "redis: $name redis://127.0.0.1:$port/0"
done
