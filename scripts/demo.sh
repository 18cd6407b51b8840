#!/usr/bin/env bash
# The main job: install, fetch the real sample volumes, index them in the embedded store with
# the offline default model, query with a held-out CT chest volume and print the ranking.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/medir demo "$@"
