# Deployment targets (docker-compose). Other targets may be added beside these.
SHELL := /bin/bash
COMPOSE_ENV ?= .env.example

.PHONY: compose-config e2e-compose

# Validate docker-compose.yml (both profiles) with whichever compose is installed:
# the v2 plugin (`docker compose`) or Debian's docker-compose 1.29 (`apt-get install docker-compose`).
compose-config:
	@if docker compose version >/dev/null 2>&1; then dc="docker compose"; \
	elif command -v docker-compose >/dev/null 2>&1; then dc="docker-compose"; \
	else echo "compose-config: neither 'docker compose' nor 'docker-compose' is installed" >&2; exit 2; fi; \
	set -e; \
	$$dc --env-file $(COMPOSE_ENV) -f docker-compose.yml config -q; \
	$$dc --env-file $(COMPOSE_ENV) -f docker-compose.yml --profile cpu config -q; \
	echo "docker-compose.yml is valid ($$dc)"

# Bring the stack up with Docker, run tests/e2e against it, tear it down (needs a Docker engine).
e2e-compose:
	scripts/e2e_compose.sh
