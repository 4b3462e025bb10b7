#!/usr/bin/env bash
# Set up (see setup.sh) and run xz_serve locally: a local Ray cluster serving deployments/local.yaml
# on http://127.0.0.1:8000. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
set -a; . deployments/ray.env; set +a
exec serve run deployments/local.yaml "$@"
