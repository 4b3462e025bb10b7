#!/usr/bin/env bash
# Set up (see setup.sh) and run the whole test suite: lint, the import contract, and the unit,
# config and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check xz_serve tests bench
lint-imports                           # the layer contract in pyproject.toml [tool.importlinter]
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
