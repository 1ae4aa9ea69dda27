#!/usr/bin/env bash
# Set up (idempotently) and run every check: lint, types, unit and integration tests.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k registry
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
echo "==> ruff"
.venv/bin/ruff check gateway tests bench firmware-sim
.venv/bin/ruff format --check gateway tests bench firmware-sim
echo "==> mypy (strict on gateway/)"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/pytest "$@"
