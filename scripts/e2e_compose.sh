#!/usr/bin/env bash
# Bring the docker-compose stack up, run the end-to-end test module against it, tear it down.
#
#   scripts/e2e_compose.sh [extra pytest args]     (or: make e2e-compose)
#
# GPU: MEDIR_E2E_PROFILE=gpu uses the GPU worker; the default, cpu, starts worker-cpu instead so
# the run works on any Docker host. Secrets come from .env when it exists, else throwaway ones.
# Exit status: pytest's; 2 when Docker (engine or compose v2) is not available here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die_no_docker() {
    echo "e2e_compose: $1" >&2
    echo "e2e_compose: this test needs a Docker engine and the compose v2 plugin" \
        "('docker compose'); without them run the native end-to-end test: pytest tests/e2e" >&2
    exit 2
}

command -v docker >/dev/null 2>&1 || die_no_docker "no 'docker' command on PATH"
docker info >/dev/null 2>&1 || die_no_docker "the Docker engine is not reachable ('docker info' failed)"
docker compose version >/dev/null 2>&1 || die_no_docker "'docker compose' (v2) is not installed"

PYTEST="${PYTEST:-}"
if [[ -z "$PYTEST" ]]; then
    if [[ -x .venv/bin/pytest ]]; then PYTEST=.venv/bin/pytest; else PYTEST=pytest; fi
fi

profile="${MEDIR_E2E_PROFILE:-cpu}"
case "$profile" in
    cpu) services=(qdrant redis ui worker-cpu); compose_profile=(--profile cpu) ;;
    gpu) services=(qdrant redis ui worker); compose_profile=() ;;
    *) echo "e2e_compose: MEDIR_E2E_PROFILE must be cpu or gpu, not '$profile'" >&2; exit 2 ;;
esac

# A project name of its own, so the run never touches a deployed stack on the same host.
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME_E2E:-medir-e2e}"
# Secrets: from the environment, else .env, else throwaway values for this run.
if [[ -f .env ]]; then
    set -a
    # shellcheck disable=SC1091
    source .env
    set +a
    export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME_E2E:-medir-e2e}"
fi
throwaway() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
export QDRANT_API_KEY="${QDRANT_API_KEY:-$(throwaway)}"
export QDRANT_READ_ONLY_API_KEY="${QDRANT_READ_ONLY_API_KEY:-$(throwaway)}"
export REDIS_PASSWORD="${REDIS_PASSWORD:-$(throwaway)}"
# Host ports away from the defaults, so a local Redis/Qdrant/Streamlit does not collide.
export QDRANT_HOST_PORT="${MEDIR_E2E_QDRANT_PORT:-16333}"
export REDIS_HOST_PORT="${MEDIR_E2E_REDIS_PORT:-16379}"
export MEDIR_UI_HOST_PORT="${MEDIR_E2E_UI_PORT:-18501}"
export MEDIR_UI_BIND=127.0.0.1
export MEDIR_UID="${MEDIR_UID:-$(id -u)}"
export MEDIR_GID="${MEDIR_GID:-$(id -g)}"
# The test data folder is shared with the containers at /data.
export MEDIR_DATA_HOST_DIR="${MEDIR_DATA_HOST_DIR:-$PWD/data}"
export MEDIR_MODELS_HOST_DIR="${MEDIR_MODELS_HOST_DIR:-$PWD/models}"
export QDRANT_SNAPSHOTS_HOST_DIR="${QDRANT_SNAPSHOTS_HOST_DIR:-$PWD/backups/qdrant-e2e}"
mkdir -p "$MEDIR_DATA_HOST_DIR" "$MEDIR_MODELS_HOST_DIR" "$QDRANT_SNAPSHOTS_HOST_DIR"

compose=(docker compose -f docker-compose.yml "${compose_profile[@]}")

teardown() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        "${compose[@]}" ps || true
        "${compose[@]}" logs --no-color --tail 200 || true
    fi
    "${compose[@]}" down -v --remove-orphans || true
    exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

"${compose[@]}" up -d --build --wait --wait-timeout "${MEDIR_E2E_WAIT_S:-600}" "${services[@]}"

# The end-to-end module reads its endpoints from these (the same names as medir's settings).
export MEDIR_E2E_TARGET=compose
export MEDIR_REDIS_URL="redis://:${REDIS_PASSWORD}@127.0.0.1:${REDIS_HOST_PORT}/0"
export MEDIR_QDRANT_URL="http://127.0.0.1:${QDRANT_HOST_PORT}"
export MEDIR_QDRANT_API_KEY="$QDRANT_API_KEY"
export MEDIR_UI_URL="http://127.0.0.1:${MEDIR_UI_HOST_PORT}"
# Files under the host data folder are seen by the workers under /data.
export MEDIR_E2E_DATA_HOST_DIR="$MEDIR_DATA_HOST_DIR"
export MEDIR_E2E_DATA_CONTAINER_DIR=/data

"$PYTEST" tests/e2e "$@"
