"""End to end: ``streamlit run ui/app.py`` on the indexed sample store, driven by Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package (no browser download: Playwright drives ``/usr/bin/chromium``). The screenshot of the
results is saved as ``test-artifacts/ui-search.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

CHROMIUM = os.environ.get("MEDIR_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
QUERY = "ct_chest_lung1_pyradiomics.nii.gz"

pytestmark = pytest.mark.e2e


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer at {url} within {timeout:.0f} s")


@pytest.fixture
def ui_server(sample_store: Path, tmp_path: Path) -> Iterator[str]:
    """The UI on a free port, on a private copy of the indexed sample store (in-process mode)."""
    port = free_port()
    env = {**os.environ, "MEDIR_STORE_PATH": str(sample_store),
           "MEDIR_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    env.pop("MEDIR_REDIS_URL", None)
    log = (tmp_path / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "ui" / "app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
         "--client.toolbarMode", "minimal"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "streamlit.log").read_text(errors="replace")[-3000:])


def test_upload_search_shows_top_labels(ui_server: str, samples_dir: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (no browser download needed)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "ui-search.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(ui_server, wait_until="domcontentloaded")
            page.get_by_role("heading", name="Search similar volumes").wait_for(timeout=60_000)
            page.locator("input[type=file]").first.set_input_files(str(samples_dir / QUERY))
            button = page.get_by_role("button", name="Search", exact=True)
            deadline = time.monotonic() + 60
            while button.is_disabled() and time.monotonic() < deadline:  # upload + validation
                time.sleep(0.25)
            button.click()
            prediction = page.get_by_text("Prediction:")
            prediction.wait_for(timeout=120_000)
            page.get_by_text("Matched slices").wait_for(timeout=30_000)
            page.wait_for_timeout(2000)  # let the table thumbnails and the chart draw
            text = prediction.first.inner_text()
            assert "CT · chest" in text, text
            assert QUERY.removesuffix(".nii.gz") not in text  # the query itself is excluded
            page.set_viewport_size({"width": 1400, "height": 2200})
            page.wait_for_timeout(1000)
        finally:
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    assert shot.stat().st_size > 10_000
