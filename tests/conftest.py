"""Shared fixtures: NIfTI volumes made in code, the real sample collection, an indexed store."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medir.config import DEFAULT_MODEL, Settings, get_settings

REPO = Path(__file__).resolve().parents[1]

# The tests assert what was measured with plain windowing (see _isolated_settings); set here
# too, for the session- and module-scoped fixtures and the worker processes they start.
os.environ["MEDIR_INTENSITY"] = os.environ.get("MEDIR_TEST_INTENSITY", "auto")

# Redis server, per-test broker databases and worker subprocesses (issue: background queue).
pytest_plugins = ["tests.queue_fixtures"]

#: Fixtures that fetch the real sample collection or load a real model's weights: a test using
#: one (directly or through another fixture) is ``slow`` without saying so.
SLOW_FIXTURES = frozenset({"samples_dir", "indexed_samples", "sample_store", "onnx_cache"})


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test whose fixtures need the samples or a real model, so
    ``-m "not slow"`` never downloads or embeds with a real model."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test gets its own store path and no broker unless it asks for one."""
    monkeypatch.setenv("MEDIR_STORE_PATH", str(tmp_path / "store"))
    monkeypatch.delenv("MEDIR_QDRANT_URL", raising=False)
    if "MEDIR_TEST_REDIS_URL" not in os.environ:
        monkeypatch.delenv("MEDIR_REDIS_URL", raising=False)
    # The tests assert what was measured with plain windowing: most use synthetic volumes a
    # few centimetres across, which the product default's physical scale (a 400 mm field of
    # view, MEDIR_INTENSITY=auto+fov:400) would shrink to a few pixels. The default itself and
    # the +fov option are tested by name (test_settings.py, test_trust.py, test_trust_real.py).
    monkeypatch.setenv("MEDIR_INTENSITY", os.environ.get("MEDIR_TEST_INTENSITY", "auto"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


MakeNifti = Callable[..., Path]


@pytest.fixture
def make_nifti(tmp_path: Path) -> MakeNifti:
    """Write a NIfTI file: ``make_nifti(data, affine=None, name="vol.nii.gz", zooms=None)``."""
    counter = {"n": 0}

    def _make(
        data: np.ndarray,
        affine: np.ndarray | None = None,
        name: str | None = None,
        zooms: tuple[float, ...] | None = None,
    ) -> Path:
        counter["n"] += 1
        aff = np.eye(4) if affine is None else affine
        img = nib.Nifti1Image(np.asarray(data), aff)
        if zooms is not None:
            img.header.set_zooms(zooms)
        path = tmp_path / (name or f"vol{counter['n']}.nii.gz")
        nib.save(img, str(path))
        return path

    return _make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real sample collection (fetched once into data/samples, reused afterwards)."""
    from ingest.samples import fetch_samples

    dest = Path(os.environ.get("MEDIR_TEST_SAMPLES", REPO / "data" / "samples"))
    manifest = fetch_samples(dest, progress=False)
    return manifest.parent


@pytest.fixture(scope="session")
def indexed_samples(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded store holding every sample volume, embedded once per test session with the
    default model. Closed after building: copy it (``copy_store``) before opening it."""
    from ingest.embedders import get_embedder
    from ingest.labels import load_labels_csv, read_manifest
    from ingest.pipeline import ingest_paths
    from search.store_edge import EdgeStore

    path = tmp_path_factory.mktemp("indexed") / "store"
    manifest = samples_dir / "manifest.csv"
    labels = load_labels_csv(manifest)
    files = [samples_dir / r["file"] for r in read_manifest(manifest)]
    embedder = get_embedder(DEFAULT_MODEL, device="cpu")
    with EdgeStore(path) as store:
        reports = ingest_paths(files, store, embedder, labels=labels)
    assert all(r.status == "indexed" for r in reports), reports
    return path


def copy_store(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.fixture
def sample_store(indexed_samples: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the indexed sample store, selected through MEDIR_STORE_PATH."""
    path = copy_store(indexed_samples, tmp_path / "sample-store")
    monkeypatch.setenv("MEDIR_STORE_PATH", str(path))
    get_settings.cache_clear()
    return path


def settings_for(store_path: Path) -> Settings:
    return Settings(store_path=store_path)
