"""Query uploads of the Search page (issue 21, item 9): they live outside every ingest root, one
folder per browser session, only while the query runs; an age limit removes what is left behind;
the Ingest page and the folder walk never pick them up. Each test fails on the code before the
fix."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.collection import PRIVATE_MARKER, scan_paths
from medir.config import get_settings
from tests.conftest import MakeNifti
from tests.test_pipeline import _blob_volume
from tests.test_ui_apptest import _page, _texts
from tests.test_ui_apptest import _ui_dirs as _ui_dirs  # noqa: F401 - autouse fixture

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".part")


def _volume_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(VOLUME_SUFFIXES)] \
        if folder.exists() else []


@pytest.fixture
def tiny_store(make_nifti: MakeNifti, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three volumes indexed with the test embedder; the query uploads go to ``tmp/queries``;
    returns a query file (not indexed)."""
    from ingest.embedders import get_embedder
    from ingest.pipeline import ingest_paths
    from search.store_edge import EdgeStore

    monkeypatch.setenv("MEDIR_PLUGINS", "tests.plugin_embedder")
    monkeypatch.setenv("MEDIR_MODEL", "test-tiny")
    monkeypatch.setenv("MEDIR_SEARCH__SAMPLING", "all")
    monkeypatch.setenv("MEDIR_UI__QUERY_UPLOAD_DIR", str(tmp_path / "queries"))
    get_settings.cache_clear()
    affine = np.diag([1, 1, 2.0, 1])
    (tmp_path / "db").mkdir()
    (tmp_path / "elsewhere").mkdir()
    files = [make_nifti(_blob_volume(k, seed=k), affine, name=f"db/case{k}.nii.gz")
             for k in range(3)]
    with EdgeStore(get_settings().store_path) as store:
        ingest_paths(files, store, get_embedder("test-tiny", device="cpu"))
    return make_nifti(_blob_volume(1, seed=9), affine, name="elsewhere/patient x.nii.gz")


def test_a_query_upload_is_gone_after_the_answer(tiny_store: Path, tmp_path: Path) -> None:
    s = get_settings()
    at = _page("search_page").run()
    at.file_uploader(key="upload").set_value(("patient x.nii.gz", tiny_store.read_bytes(),
                                              "application/gzip"))
    at.run()
    assert not at.exception, at.exception
    assert not at.button(key="go").disabled, _texts(at)
    assert not _volume_files(s.query_uploads)  # checked, not kept
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    assert any("Prediction" in x.value for x in at.success), _texts(at)
    # nothing under the data folder (an ingest root), nothing left in the upload folder
    assert not _volume_files(s.data_dir), _volume_files(s.data_dir)
    assert not _volume_files(s.query_uploads), _volume_files(s.query_uploads)
    # the slice-pair viewer still shows the query (its slices were kept in the session)
    captions = [" ".join(map(str, getattr(i, "captions", []))) for i in at.get("image")]
    assert len(captions) == 2 and "Query · slice" in captions[0], (captions, _texts(at))
    slider = at.select_slider(key="pair_slice")
    slider.set_value(slider.options[-1]).run()
    assert not at.exception and len(at.get("image")) == 2
    assert not _volume_files(s.query_uploads) and not _volume_files(s.data_dir)


def test_query_uploads_outside_ingest_roots_are_refused(
        tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _ui_dirs: Path,  # noqa: F811
) -> None:
    monkeypatch.setenv("MEDIR_UI__QUERY_UPLOAD_DIR", str(_ui_dirs / "tmp"))
    get_settings.cache_clear()
    at = _page("search_page").run()
    at.file_uploader(key="upload").set_value(("q.nii.gz", tiny_store.read_bytes(),
                                              "application/gzip"))
    at.run()
    assert any("inside the ingest root" in e.value for e in at.error), _texts(at)
    assert at.button(key="go").disabled
    assert not _volume_files(_ui_dirs)


def test_the_walk_and_the_ingest_page_never_pick_up_query_uploads(
        tiny_store: Path, tmp_path: Path, make_nifti: MakeNifti, monkeypatch: pytest.MonkeyPatch,
        _ui_dirs: Path,  # noqa: F811
) -> None:
    from ui.uploads import query_upload

    s = get_settings()
    with query_upload("q.nii.gz", tiny_store.read_bytes(), s, "session1") as path:
        assert path.exists() and path.is_relative_to(s.query_uploads)
        assert (s.query_uploads / PRIVATE_MARKER).exists()
        # a walk above the folder leaves it out, with the reason
        scan = scan_paths([tmp_path])
        assert not any(src.path.is_relative_to(s.query_uploads) for src in scan.sources)
        assert any("private" in x.reason for x in scan.skipped), scan.skipped
        scan = scan_paths([s.query_uploads])
        assert not scan.sources
        # the Ingest page refuses it even when an ingest root holds it
        monkeypatch.setenv("MEDIR_UI__INGEST_ROOTS", f'["{_ui_dirs}", "{tmp_path}"]')
        get_settings.cache_clear()
        at = _page("ingest_page").run()
        at.text_input(key="ingest_folder").set_value(str(path.parent)).run()
        at.button(key="ingest_folder_go").click().run()
        assert any("Folder not allowed" in e.value for e in at.error), _texts(at)
        assert not at.dataframe
    assert not path.exists()


def test_query_upload_folders_per_session_and_private(tiny_store: Path, tmp_path: Path) -> None:
    from ui.uploads import UploadError, query_upload

    s = get_settings()
    data = tiny_store.read_bytes()
    with query_upload("a.nii.gz", data, s, "one") as a, \
            query_upload("a.nii.gz", data, s, "two") as b:
        assert a != b and a.parent.parent != b.parent.parent
        assert (s.query_uploads.stat().st_mode & 0o777) == 0o700
    assert not a.exists() and not b.exists()
    with pytest.raises(UploadError, match="session"):
        with query_upload("a.nii.gz", data, s, "../../etc"):
            pass
    with pytest.raises(UploadError):  # a corrupt file: the reason, and nothing kept
        with query_upload("bad.nii.gz", b"not a volume", s, "one"):
            pass
    assert not _volume_files(s.query_uploads)
    link = tmp_path / "link-uploads"
    link.symlink_to(tmp_path / "db")
    s2 = s.model_copy(update={"ui": s.ui.model_copy(update={"query_upload_dir": link})})
    with pytest.raises(UploadError, match="not a private folder"):
        with query_upload("a.nii.gz", data, s2, "one"):
            pass


def test_sweep_removes_what_is_older_than_the_age_limit(tmp_path: Path) -> None:
    from ui.uploads import sweep_query_uploads

    base = tmp_path / "queries"
    old, new = base / "s1" / "abc" / "old.nii.gz", base / "s2" / "def" / "new.nii.gz"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    (base / PRIVATE_MARKER).write_text("")
    hour_ago = time.time() - 3600
    for p in (old, old.parent, old.parent.parent):
        os.utime(p, (hour_ago, hour_ago))
    assert sweep_query_uploads(base, max_age_s=1800) == 1
    assert not old.exists() and not (base / "s1").exists()
    assert new.exists() and (base / PRIVATE_MARKER).exists()
    assert sweep_query_uploads(tmp_path / "missing", max_age_s=1) == 0
