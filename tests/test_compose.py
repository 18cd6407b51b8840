"""The deployment files: docker-compose.yml, .env.example, Dockerfile, the e2e script.

There is no Docker engine on the build machines, so the stack is never started here. What runs:
``docker-compose config -q`` (Debian's docker-compose 1.29, or the v2 plugin) when a compose
binary exists, a check against the compose-spec JSON schema that Debian's package ships, and
structural checks with PyYAML that always run.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
E2E_SCRIPT = ROOT / "scripts" / "e2e_compose.sh"
# Debian's docker-compose package vendors the compose-spec schema it validates with.
COMPOSE_SPEC_SCHEMA = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")

WORKERS = ("worker", "worker-cpu")
MEDIR_SERVICES = (*WORKERS, "ui")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


SECRETS = ("QDRANT_API_KEY", "QDRANT_READ_ONLY_API_KEY", "REDIS_PASSWORD")


def _env_with_secrets(tmp_path: Path) -> Path:
    """.env.example with the (shipped empty) secrets set, as an operator's .env would be."""
    env = {**_env_example(), **{k: f"{k.lower()}-{os.urandom(12).hex()}" for k in SECRETS}}
    path = tmp_path / "filled.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _mount(volume: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume, with ${VAR:-default} sources kept whole."""
    source = re.match(r"\$\{[^}]*\}|[^:]*", volume)
    assert source is not None
    target = volume[source.end() + 1 :].split(":")[0]
    return source.group(0), target


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


# --- validation by compose itself ----------------------------------------------------------


@pytest.mark.parametrize("profile", [None, "cpu"])
def test_compose_config_is_valid(profile: str | None, tmp_path: Path) -> None:
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose binary (apt-get install docker-compose)")
    args = [*cmd, "--env-file", str(_env_with_secrets(tmp_path)), "-f", str(COMPOSE)]
    if profile:
        args += ["--profile", profile]
    # A clean environment, so that the host's variables do not hide a gap in .env.example.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_compose_config_requires_the_secrets(tmp_path: Path) -> None:
    """Without QDRANT_API_KEY / REDIS_PASSWORD compose refuses to render, naming the variable."""
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose binary (apt-get install docker-compose)")
    env_file = tmp_path / "no-secrets.env"
    env_file.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in _env_example().items()
            if k not in {"QDRANT_API_KEY", "REDIS_PASSWORD"}
        )
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run(
        [*cmd, "--env-file", str(env_file), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode != 0
    assert "QDRANT_API_KEY" in done.stderr or "REDIS_PASSWORD" in done.stderr


def test_compose_refuses_the_shipped_env_example(tmp_path: Path) -> None:
    """.env.example ships empty secrets: the stack does not start until the operator sets them."""
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no compose binary (apt-get install docker-compose)")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run([*cmd, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config",
                           "-q"], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert any(k in done.stderr for k in SECRETS), done.stderr


def test_env_example_ships_no_secret() -> None:
    env = _env_example()
    for key in SECRETS:
        assert env[key] == "", f".env.example: {key} must ship empty"
    assert env["MEDIR_UI_BIND"] == "127.0.0.1"
    text = COMPOSE.read_text()
    for key in SECRETS:  # every use of a secret refuses an empty value
        uses = re.findall(rf"\$\{{{key}([^}}]*)\}}", text)
        assert uses and all(u.startswith(":?") for u in uses), (key, uses)


def test_ui_is_local_read_only_and_services_check_secrets(
    services: dict[str, dict[str, Any]],
) -> None:
    ui = services["ui"]
    assert ui["ports"] == ["${MEDIR_UI_BIND:-127.0.0.1}:${MEDIR_UI_HOST_PORT:-8501}:8501"]
    assert _environment(ui)["MEDIR_QDRANT_API_KEY"].startswith("${QDRANT_READ_ONLY_API_KEY:?")
    assert _environment(services["qdrant"])["QDRANT__SERVICE__READ_ONLY_API_KEY"].startswith(
        "${QDRANT_READ_ONLY_API_KEY:?")
    for name in MEDIR_SERVICES:
        assert _environment(services[name])["MEDIR_REQUIRE_SECRETS"] == "1", name
        mounts = {_mount(v)[1]: v for v in services[name]["volumes"]}
        assert mounts["/models"].endswith(":/models:ro"), name
        if name in WORKERS:  # workers only read the volumes
            assert mounts["/data"].endswith(":/data:ro"), name
    assert not services["ui"]["volumes"][0].endswith(":ro")  # uploads are written there


def test_compose_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    if not COMPOSE_SPEC_SCHEMA.exists():
        pytest.skip(f"{COMPOSE_SPEC_SCHEMA} absent (apt-get install docker-compose)")
    jsonschema = pytest.importorskip("jsonschema")
    import json

    schema = json.loads(COMPOSE_SPEC_SCHEMA.read_text())
    # The schema names draft 2019-09 with a trailing '#', which jsonschema does not look up.
    jsonschema.Draft201909Validator(schema).validate(compose)


# --- structure (always) --------------------------------------------------------------------


def test_the_four_roles_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"qdrant", "redis", "worker", "worker-cpu", "ui"} <= set(services)


def test_external_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[\w.]+)?", tag), f"{name}: {image!r} not pinned"
    assert services["qdrant"]["image"].startswith("qdrant/qdrant:v")
    assert services["redis"]["image"].startswith("redis:")


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name}: no healthcheck"
        assert not check.get("disable", False), name


def test_qdrant_healthcheck_needs_no_curl(services: dict[str, dict[str, Any]]) -> None:
    test = " ".join(services["qdrant"]["healthcheck"]["test"])
    assert "curl" not in test and "wget" not in test
    assert "/dev/tcp/127.0.0.1/6333" in test and "/readyz" in test


def test_medir_services_wait_for_healthy_backends(services: dict[str, dict[str, Any]]) -> None:
    for name in MEDIR_SERVICES:
        deps = services[name]["depends_on"]
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for backend in ("qdrant", "redis"):
            assert deps[backend]["condition"] == "service_healthy", (name, backend)


def test_qdrant_storage_and_api_key(services: dict[str, dict[str, Any]]) -> None:
    qdrant = services["qdrant"]
    assert re.fullmatch(
        r"\$\{QDRANT_API_KEY(:\?.*)?\}", _environment(qdrant)["QDRANT__SERVICE__API_KEY"]
    )
    targets = [_mount(v)[1] for v in qdrant["volumes"]]
    assert "/qdrant/storage" in targets and "/qdrant/snapshots" in targets


def test_redis_keeps_an_aof_and_a_password(services: dict[str, dict[str, Any]]) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD")
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])


def test_gpu_worker_reserves_a_gpu_and_uses_the_solo_pool(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    gpu = devices[0]
    assert gpu["driver"] == "nvidia"
    assert "gpu" in gpu["capabilities"]
    assert ("count" in gpu) != ("device_ids" in gpu)  # exclusive in the compose spec
    assert _environment(worker)["CUDA_VISIBLE_DEVICES"].startswith("${MEDIR_WORKER_GPU")
    command = worker["command"]
    assert command[:2] == ["medir", "worker"]
    assert command[command.index("--pool") + 1] == "solo"
    assert command[command.index("--device") + 1] == "cuda"
    assert set(command[command.index("--queues") + 1].split(",")) == {"ingest", "search"}
    assert "profiles" not in worker  # the GPU worker is the default deployment


def test_cpu_worker_is_a_profile_without_a_gpu(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    assert "deploy" not in worker
    assert worker["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert worker["command"][worker["command"].index("--device") + 1] == "cpu"
    assert _environment(worker)["MEDIR_DEVICE"] == "cpu"


def test_ui_listens_on_8501(services: dict[str, dict[str, Any]]) -> None:
    ui = services["ui"]
    assert any(str(p).endswith(":8501") for p in ui["ports"])
    command = ui["command"]
    assert command[:3] == ["streamlit", "run", "ui/app.py"]
    assert command[command.index("--server.port") + 1] == "8501"
    assert command[command.index("--server.address") + 1] == "0.0.0.0"


def test_volumes_for_data_models_and_store(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name in MEDIR_SERVICES:
        svc = services[name]
        targets = {_mount(v)[1] for v in svc["volumes"]}
        assert {"/data", "/models", "/store"} <= targets, name
        env = _environment(svc)
        assert env["MEDIR_DATA_DIR"] == "/data"
        assert env["MEDIR_WEIGHTS_DIR"] == "/models"
        assert env["MEDIR_STORE_PATH"].startswith("/store")
        assert env["MEDIR_QDRANT_URL"] == "http://qdrant:6333"
        key = "${QDRANT_READ_ONLY_API_KEY" if name == "ui" else "${QDRANT_API_KEY"
        assert env["MEDIR_QDRANT_API_KEY"].startswith(key), name
        assert env["MEDIR_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
        assert env["MEDIR_REDIS_URL"].endswith("@redis:6379/0")
    named = {_mount(v)[0] for s in services.values() for v in s.get("volumes", [])}
    named = {v for v in named if not v.startswith(("$", ".", "/"))}
    assert named <= set(compose["volumes"])


def test_env_example_covers_every_compose_variable() -> None:
    text = COMPOSE.read_text()
    # ${VAR}, ${VAR:-default}, ${VAR:?error}; $${...} is an escaped literal for the container.
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    used |= set(re.findall(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)", text))
    missing = used - set(_env_example())
    assert not missing, f".env.example lacks {sorted(missing)}"
    assert {"QDRANT_API_KEY", "REDIS_PASSWORD"} <= used


def test_dockerfile_has_the_torch_variant_build_arg() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"pip install \"/app", text)
    assert re.search(r"^ARG MEDIR_EXTRAS=", text, re.M)
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        assert not line.endswith(":latest"), line
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11", text, re.M)
    assert re.search(r"^USER \w+", text, re.M), "the image should not run as root"


def test_dockerignore_keeps_data_and_venv_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data", "models", ".env"} <= ignored
    assert "ui" not in ignored and "pyproject.toml" not in ignored


def test_makefile_targets() -> None:
    text = (ROOT / "Makefile").read_text()
    for target in ("e2e-compose", "compose-config"):
        assert re.search(rf"^{target}:", text, re.M), target


def test_e2e_script_without_docker_exits_with_a_message(tmp_path: Path) -> None:
    """A `docker` whose engine is unreachable (this machine): exit 2 and say what is needed."""
    assert E2E_SCRIPT.stat().st_mode & stat.S_IXUSR
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", str(E2E_SCRIPT)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Docker engine is not reachable" in done.stderr
    assert "pytest tests/e2e" in done.stderr


def test_e2e_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(E2E_SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = E2E_SCRIPT.read_text()
    assert "up -d --build --wait" in text
    assert "down -v" in text and "trap teardown EXIT" in text
