"""The UI's page logic under Streamlit's AppTest (no browser), and its pure helpers."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medir.config import DEFAULT_MODEL, get_settings
from tests.conftest import MakeNifti, free_port
from ui.paths import PathNotAllowed, resolve_in_roots
from ui.uploads import UploadError, safe_name, save_upload

TIMEOUT = 180.0
CT_CHEST = "ct_chest_lung1_pyradiomics"


def _page(module: str) -> AppTest:
    """An AppTest running one page's ``render(settings)`` (the pages are functions of
    st.navigation; ``ui/app.py`` reads the settings and hands them over, as here)."""
    return AppTest.from_string("from medir.config import get_settings\n"
                               f"from ui.{module} import render\nrender(get_settings())\n",
                               default_timeout=TIMEOUT)


def _plain(text: object) -> str:
    """What a markdown text made with :func:`ui.common.md` shows: escapes and entities undone,
    word joiners dropped."""
    return html.unescape(re.sub(r"\\(.)", r"\1", str(text).replace("\u2060", "")))


def _shown(elements: object) -> list[str]:
    """The shown text of each element (``at.error``, ``at.success``, ...)."""
    return [_plain(e.value) for e in elements]  # type: ignore[attr-defined]


def _texts(at: AppTest) -> str:
    parts = [_plain(e.value) for kind in ("error", "warning", "info", "success", "markdown",
                                          "caption") for e in getattr(at, kind)]
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def _ui_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Uploads under the test's tmp dir; the ingest root is ``tmp/roots/allowed``."""
    root = tmp_path / "roots" / "allowed"
    root.mkdir(parents=True)
    monkeypatch.setenv("MEDIR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDIR_UI__INGEST_ROOTS", f'["{root}"]')
    get_settings.cache_clear()
    return root


# ---- pure helpers -----------------------------------------------------------------------------
def test_ingest_roots_reject_traversal_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "roots" / "allowed"
    (root / "ct").mkdir()
    (tmp_path / "roots" / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "roots" / "secret")
    assert resolve_in_roots("ct", [root]) == (root / "ct").resolve()
    assert resolve_in_roots(str(root / "ct"), [root]) == (root / "ct").resolve()
    for bad in ("../secret", "ct/../../secret", str(tmp_path / "roots" / "secret"), "/etc",
                "escape", "escape/", "..", ""):
        with pytest.raises(PathNotAllowed):
            resolve_in_roots(bad, [root])
    with pytest.raises(PathNotAllowed, match="does not exist"):
        resolve_in_roots("missing", [root])


def test_uploads_are_checked_named_safely_and_validated(tmp_path: Path,
                                                        make_nifti: MakeNifti) -> None:
    assert safe_name("../../etc/pa ss?wd.NII.GZ") == "pa_ss_wd.nii.gz"
    assert safe_name("..\\evil.nrrd") == "evil.nrrd"
    dest = tmp_path / "up"
    with pytest.raises(UploadError, match="not a NIfTI or NRRD"):
        save_upload("notes.txt", b"hello", dest, 1)
    with pytest.raises(UploadError, match="over the upload limit of 1 MB"):
        save_upload("big.nii", b"\0" * (1024 * 1024 + 1), dest, 1)
    with pytest.raises(UploadError, match="corrupt.nii.gz"):
        save_upload("corrupt.nii.gz", b"this is not gzip", dest, 1)
    assert not any(dest.rglob("*.nii.gz"))  # the rejected file was removed
    good = make_nifti(np.random.default_rng(0).random((8, 8, 6)).astype(np.float32))
    saved = save_upload("../my scan.nii.gz", good.read_bytes(), dest, 1)
    assert saved.name == "my_scan.nii.gz" and saved.parent.parent == dest


# ---- pages ------------------------------------------------------------------------------------
def test_search_page_says_the_store_is_empty() -> None:
    at = _page("search_page").run()
    assert not at.exception
    assert "The store is empty" in _texts(at)


def test_collection_page_says_the_store_is_empty() -> None:
    at = _page("collection_page").run()
    assert not at.exception
    assert "The store is empty" in _texts(at)


def test_search_page_shows_queue_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIR_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    at = _page("search_page").run()
    assert not at.exception
    assert any("Worker not running or queue unavailable" in e.value for e in at.error)


@pytest.mark.parametrize(("configured", "kind", "widget", "shown"), [
    (None, "every-mm", "mm", 7.0),  # the default sampling, every-mm:7
    ("every-mm:10", "every-mm", "mm", 10.0),
    ("every-n:3", "every-n", "n", 3),
    ("random:40:2", "random", "kr", 40),
])
def test_search_page_options_start_from_the_settings(
    sample_store: Path, monkeypatch: pytest.MonkeyPatch, configured: str | None, kind: str,
    widget: str, shown: float,
) -> None:
    """The sampling widgets show the configured sampling (MEDIR_SEARCH__SAMPLING), the σ
    widget the configured sigma (MEDIR_SEARCH__SIGMA), k and top theirs."""
    if configured is not None:
        monkeypatch.setenv("MEDIR_SEARCH__SAMPLING", configured)
    monkeypatch.setenv("MEDIR_SEARCH__SIGMA", "0.4")
    monkeypatch.setenv("MEDIR_SEARCH__K", "3")
    monkeypatch.setenv("MEDIR_SEARCH__TOP", "7")
    get_settings.cache_clear()
    at = _page("search_page").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="sampling").value == kind
    assert at.number_input(key=widget).value == shown
    assert at.number_input(key="sigma").value == 0.4
    assert (at.number_input(key="k").value, at.number_input(key="top").value) == (3, 7)


def test_search_page_bad_upload(sample_store: Path) -> None:
    at = _page("search_page").run()
    at.file_uploader(key="upload").set_value(("scan.nii.gz", b"not a volume", "application/gzip"))
    at.run()
    assert any("Bad upload" in e and "scan.nii.gz" in e for e in _shown(at.error))
    assert at.button(key="go").disabled


def test_search_page_model_mismatch(sample_store: Path, samples_dir: Path) -> None:
    at = _page("search_page").run()
    at.selectbox(key="model").set_value("mobilenetv2-imagenet").run()
    assert any("No volumes are indexed with **mobilenetv2-imagenet**" in w
               for w in _shown(at.warning))
    data = (samples_dir / f"{CT_CHEST}.nii.gz").read_bytes()
    at.file_uploader(key="upload").set_value((f"{CT_CHEST}.nii.gz", data, "application/gzip"))
    at.run()
    at.button(key="go").click().run()
    assert not at.exception
    assert any("Model mismatch" in e and "mobilenetv2-imagenet" in e for e in _shown(at.error))


def test_search_page_real_search_by_indexed_volume(sample_store: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # every 5 mm: every slice of the 5 mm CT (the widget starts from the configured sampling)
    monkeypatch.setenv("MEDIR_SEARCH__SAMPLING", "every-mm:5")
    monkeypatch.setenv("MEDIR_SEARCH__MAX_SLICES", "0")  # all 48, not the default cap of 20
    get_settings.cache_clear()
    at = _page("search_page").run()
    at.radio(key="source").set_value("An indexed volume").run()
    at.selectbox(key="volume_id").set_value(CT_CHEST).run()
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    assert any("Prediction: CT · chest" in s.value for s in at.success), _texts(at)
    table = at.dataframe[0].value
    top = table.iloc[0]
    assert (top["modality"], top["region"]) == ("CT", "chest")
    assert top["volume"] != CT_CHEST  # the query itself is excluded
    assert str(table["thumbnail"].iloc[0]).startswith("data:image/png;base64,")
    # the slice-pair viewer follows the slider over the query's chosen slices
    slider = at.select_slider(key="pair_slice")
    assert slider.options and len(slider.options) == 48
    slider.set_value(slider.options[0]).run()
    assert not at.exception
    captions = [" ".join(map(str, getattr(i, "captions", []))) for i in at.get("image")]
    assert len(captions) == 2, captions
    assert f"slice {slider.options[0]} of 48" in captions[0]


def test_search_page_label_filter(sample_store: Path) -> None:
    at = _page("search_page").run()
    at.radio(key="source").set_value("An indexed volume").run()
    at.selectbox(key="volume_id").set_value(CT_CHEST).run()
    at.multiselect(key="filter_modality").set_value(["MR"]).run()
    at.button(key="go").click().run()
    # a CT query keeps to CT volumes: filtered to MR, nothing is left ...
    assert not at.dataframe and any("No volume matched" in w.value for w in at.warning)
    # ... unless the user asks for cross-modality search
    at.checkbox(key="cross_modality").check().run()
    at.button(key="go").click().run()
    table = at.dataframe[0].value
    assert set(table["modality"]) == {"MR"}


def test_collection_page_shows_volumes_and_facets(sample_store: Path) -> None:
    at = _page("collection_page").run()
    assert not at.exception
    summary = at.dataframe[0].value
    row = summary.iloc[0]
    assert row["model"] == DEFAULT_MODEL
    assert row["volumes"] == 11
    assert row["points (slices)"] == row["searchable points"] > 0
    assert {m.label: m.value for m in at.metric}["Store mode"] == "embedded"


def test_ingest_page_rejects_path_traversal(_ui_dirs: Path) -> None:
    at = _page("ingest_page").run()
    for bad in ("../", "../../etc", "/etc"):
        at.text_input(key="ingest_folder").set_value(bad).run()
        at.button(key="ingest_folder_go").click().run()
        assert any("Folder not allowed" in e.value for e in at.error), bad
    assert not at.success and not at.dataframe  # nothing was ingested


def test_ingest_page_ingests_a_folder_with_errors_per_file(
    _ui_dirs: Path, make_nifti: MakeNifti
) -> None:
    rng = np.random.default_rng(1)
    good = make_nifti(rng.random((24, 24, 6)).astype(np.float32), name="tiny_ok.nii.gz")
    (_ui_dirs / "batch").mkdir()
    good.rename(_ui_dirs / "batch" / good.name)
    (_ui_dirs / "batch" / "broken.nii.gz").write_bytes(b"corrupt")
    at = _page("ingest_page").run()
    at.text_input(key="label_modality").set_value("MR")
    at.text_input(key="ingest_folder").set_value("batch").run()
    at.button(key="ingest_folder_go").click().run()
    assert not at.exception, at.exception
    assert any("broken.nii.gz" in e and "failed" in e for e in _shown(at.error))
    assert any("1 volume(s) indexed" in w.value and "1 failed" in w.value for w in at.warning)
    reports = at.dataframe[0].value
    assert dict(zip(reports["file"], reports["status"], strict=True)) == {
        "broken.nii.gz": "failed", "tiny_ok.nii.gz": "indexed"}
    at = _page("collection_page").run()
    assert at.dataframe[0].value.iloc[0]["volumes"] == 1


def test_search_page_takes_any_k_and_top_the_settings_allow(
        sample_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The k and top a query accepts are one pair of limits (medir.config.MAX_K/MAX_TOP):
    settings at those limits open the Search page with their values, not an exception."""
    from medir.config import MAX_K, MAX_TOP

    monkeypatch.setenv("MEDIR_SEARCH__K", str(MAX_K))
    monkeypatch.setenv("MEDIR_SEARCH__TOP", str(MAX_TOP))
    get_settings.cache_clear()
    at = _page("search_page").run()
    assert not at.exception, at.exception
    assert (at.number_input(key="k").value, at.number_input(key="top").value) == (MAX_K, MAX_TOP)
