#!/usr/bin/env bash
# Set up (see setup.sh) and run xz_serve locally: a local Ray cluster serving deployments/local.yaml
# on http://127.0.0.1:8000. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/redis.sh
export XZ_CACHE__REDIS_URL=${XZ_CACHE__REDIS_URL:-redis://127.0.0.1:${XZ_REDIS_CACHE_PORT:-6379}/0}
export XZ_STORE__REDIS_URL=${XZ_STORE__REDIS_URL:-redis://127.0.0.1:${XZ_REDIS_STORE_PORT:-6380}/0}
set -a; . deployments/ray.env; set +a
exec serve run deployments/local.yaml "$@"
