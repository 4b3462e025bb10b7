#!/usr/bin/env bash
# Set up everything xz_serve needs on a fresh machine: system packages, venv, Python packages,
# and the model artifacts (built once; rebuilt only when their inputs change).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v prometheus >/dev/null || need_apt+=(prometheus)            # tests/monitoring, promtool
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (install them as root)" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# torch is pinned to the CPU build; install it first so nothing pulls a CUDA build.
pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
python -c "import xz_serve, ray, onnxruntime, torch" # fail here, not later, if an install broke

if [ "${XZ_SKIP_BUILD:-0}" != 1 ]; then
  xz-build
fi
