#!/usr/bin/env bash
# Run the whole test suite: installs what it needs (venv, redis-server, chromium), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
