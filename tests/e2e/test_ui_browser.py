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

from medir.config import get_settings
from tests.conftest import REPO, free_port
from tests.test_ui_uploads import tiny_store as tiny_store  # noqa: F401 - fixture

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
    yield from _serve(tmp_path, {"MEDIR_STORE_PATH": str(sample_store)})


@pytest.fixture
def tiny_ui_server(tiny_store: Path, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """The UI on the tiny store of three synthetic volumes (the test embedder: no model
    download, seconds on a CPU); query uploads in ``tmp/queries``."""
    yield from _serve(tmp_path, {"MEDIR_STORE_PATH": str(get_settings().store_path),
                                 "MEDIR_PLUGINS": "tests.plugin_embedder",
                                 "MEDIR_MODEL": "test-tiny", "MEDIR_SEARCH__SAMPLING": "all",
                                 "MEDIR_UI__QUERY_UPLOAD_DIR": str(tmp_path / "queries")})


def _serve(tmp_path: Path, settings: dict[str, str]) -> Iterator[str]:
    """``streamlit run ui/app.py`` on a free port with these ``MEDIR_`` settings."""
    port = free_port()
    env = {**os.environ, **settings, "MEDIR_DATA_DIR": str(tmp_path / "data"),
           "PYTHONUNBUFFERED": "1"}
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


def test_dicom_zip_query_and_cohort_download(tiny_ui_server: str, tmp_path: Path) -> None:
    """A zipped DICOM series uploaded on the Search page answers; its cohort CSV downloads;
    the upload is gone afterwards."""
    import io
    import zipfile

    import pandas as pd

    from tests.test_ui_dicom import _series

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (no browser download needed)")
    zipped = tmp_path / "ct series.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in _series(tmp_path / "series", kind=1, seed=9):
            zf.write(p, f"series/{p.name}")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "ui-search-dicom.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
        try:
            page.goto(tiny_ui_server, wait_until="domcontentloaded")
            page.get_by_role("heading", name="Search similar volumes").wait_for(timeout=60_000)
            page.get_by_text("Upload a DICOM series").click()
            page.get_by_text("A DICOM series: a .zip").wait_for(timeout=30_000)
            page.locator("input[type=file]").first.set_input_files(str(zipped))
            page.get_by_text("DICOM series: CT · CHEST · 12 slices").wait_for(timeout=60_000)
            button = page.get_by_role("button", name="Search", exact=True)
            deadline = time.monotonic() + 30
            while button.is_disabled() and time.monotonic() < deadline:
                time.sleep(0.25)
            button.click()
            page.get_by_text("Prediction:").wait_for(timeout=120_000)
            page.get_by_text("Matched slices").wait_for(timeout=30_000)
            with page.expect_download(timeout=30_000) as dl:
                page.get_by_role("button", name="Cohort CSV").click()
            cohort = pd.read_csv(io.BytesIO(Path(dl.value.path()).read_bytes()),
                                 keep_default_na=False)
        finally:
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    assert cohort["volume_id"].iloc[0] == "case1", cohort
    assert {"source", "score", "confidence", "query_slices", "db_slices"} <= set(cohort.columns)
    queries = tmp_path / "queries"
    assert not [p for p in queries.rglob("*") if p.is_file() and p.name != ".medir-private"]
