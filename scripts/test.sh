#!/usr/bin/env bash
# Run the whole test suite: installs what it needs (venv, redis-server, chromium), then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
# The run fails when a test is skipped for any reason but a missing GPU (scripts/check_skips.py
# reads the JUnit XML, test-artifacts/junit.xml) and when no test was collected (exit 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh
bash scripts/bootstrap.sh
junit="${MEDIR_JUNIT_XML:-test-artifacts/junit.xml}"
mkdir -p "$(dirname "$junit")"
rm -f "$junit"
rc=0
.venv/bin/python -m pytest -rs --junitxml="$junit" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] no test was collected (pytest exit 5): check the arguments" >&2
  exit 5
fi
skips=0
.venv/bin/python scripts/check_skips.py "$junit" || skips=$?
if [ "$rc" -eq 0 ] && [ "$skips" -ne 0 ]; then rc=$skips; fi
exit "$rc"
