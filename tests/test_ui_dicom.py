"""DICOM series in the UI (issue 25, items 4 and 2): a zip or several .dcm files as a Search
query and on the Ingest page, hostile zips refused in one line without writing outside the
private folder, the cohort export buttons, and text from outside shown literally in markdown."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from medir.config import get_settings
from tests.dicom_fixtures import PHI, volume_to_datasets, write_series
from tests.test_pipeline import _blob_volume
from tests.test_ui_apptest import _page, _plain, _shown, _texts
from tests.test_ui_apptest import _ui_dirs as _ui_dirs  # noqa: F401 - autouse fixture
from tests.test_ui_uploads import tiny_store as tiny_store  # noqa: F401 - fixture

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _series(folder: Path, kind: int, seed: int, n: int = 12) -> list[Path]:
    """A CT series (one file per slice) of a synthetic anatomy ``kind``, PHI planted."""
    return write_series(volume_to_datasets(_blob_volume(kind, n=n, seed=seed), AFFINE, "CT"),
                        folder)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _series_zip(files: list[Path], prefix: str = "study/series/") -> bytes:
    return _zip({f"{prefix}{p.name}": p.read_bytes() for p in files})


def _files_outside(root: Path, private: Path) -> set[Path]:
    """The files under ``root`` outside the private folder and the store (which the page
    opens, touching its journals)."""
    store = get_settings().store_path.resolve()
    return {p for p in root.rglob("*") if p.is_file() and not p.is_relative_to(private)
            and not p.resolve().is_relative_to(store)}


def _private_files(private: Path) -> list[Path]:
    return [p for p in private.rglob("*") if p.is_file() and p.name != ".medir-private"] \
        if private.exists() else []


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The bytes each st.download_button hands the browser, by file name."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    files: dict[str, bytes] = {}
    add = MediaFileManager.add

    def record(self: MediaFileManager, data: Any, *args: Any, **kwargs: Any) -> str:
        name = kwargs.get("file_name")
        if name:
            files[name] = data if isinstance(data, bytes) else str(data).encode()
        return add(self, data, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", record)
    return files


def _dicom_query(at: Any, uploads: list[tuple[str, bytes]]) -> Any:
    at.radio(key="source").set_value("Upload a DICOM series").run()
    at.file_uploader(key="upload_dicom").set_value(
        [(n, d, "application/zip" if n.endswith(".zip") else "application/dicom")
         for n, d in uploads])
    return at.run()


def test_a_zipped_dicom_series_query_answers_and_leaves_nothing(
        tiny_store: Path, tmp_path: Path, captured: dict[str, bytes]) -> None:  # noqa: F811
    s = get_settings()
    data = _series_zip(_series(tmp_path / "series", kind=1, seed=9))
    before = _files_outside(tmp_path, s.query_uploads)
    at = _dicom_query(_page("search_page").run(), [("ct series.zip", data)])
    assert not at.exception, at.exception
    assert "DICOM series: CT · CHEST · 12 slices" in _texts(at)
    assert not at.button(key="go").disabled, _texts(at)
    assert not _private_files(s.query_uploads)  # checked, not kept
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    assert any("Prediction" in x for x in _shown(at.success)), _texts(at)
    table = at.dataframe[0].value
    assert table.iloc[0]["volume"] == "case1", table  # the same anatomy as the query
    # nothing kept: not in the private folder, nothing new anywhere else
    assert not _private_files(s.query_uploads), _private_files(s.query_uploads)
    assert _files_outside(tmp_path, s.query_uploads) == before
    # the pair viewer shows the query's kept slices
    captions = [" ".join(map(str, getattr(i, "captions", []))) for i in at.get("image")]
    assert len(captions) == 2 and "Query · slice" in captions[0], (captions, _texts(at))
    # no patient-identifying attribute anywhere on the page or in the export
    shown = _texts(at) + "".join(b.decode() for b in captured.values())
    assert not [v for v in PHI.values() if v in shown]
    # the export buttons hand out the ranking
    assert {b.label for b in at.get("download_button")} == {"Cohort CSV", "Cohort JSON"}
    cohort = pd.read_csv(io.BytesIO(captured["cohort.csv"]), keep_default_na=False)
    assert list(cohort["volume_id"]) == list(table["volume"])
    assert list(cohort["rank"]) == list(table["rank"])
    assert cohort["source"].iloc[0].endswith("case1.nii.gz")
    assert cohort["query_slices"].iloc[0] and cohort["db_slices"].iloc[0]
    assert (cohort["file"] == cohort["volume_id"]).all()  # a labels CSV as well
    js = pd.read_json(io.BytesIO(captured["cohort.json"]))
    assert list(js["volume_id"]) == list(table["volume"])


def test_several_dcm_files_of_two_series_query_with_the_largest(
        tiny_store: Path, tmp_path: Path) -> None:  # noqa: F811
    s = get_settings()
    big = _series(tmp_path / "a", kind=2, seed=4, n=12)
    small = _series(tmp_path / "b", kind=0, seed=5, n=6)
    at = _dicom_query(_page("search_page").run(),
                      [(f"{p.parent.name}{p.name}", p.read_bytes()) for p in big + small])
    assert not at.exception, at.exception
    assert "2 image series in the upload: the largest (CT · CHEST · 12 slices) is the query" \
        in _texts(at), _texts(at)
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value.iloc[0]["volume"] == "case2"  # the larger series' anatomy
    assert at.session_state["search_result"]["query"]["n_slices"] == 12
    assert not _private_files(s.query_uploads)


def _lying_sizes(data: bytes, declared: int) -> bytes:
    """A one-member zip whose local and central headers declare ``declared`` bytes."""
    out = bytearray(data)
    struct.pack_into("<L", out, 22, declared)  # local file header: uncompressed size
    cd = out.find(b"PK\x01\x02")
    struct.pack_into("<L", out, cd + 24, declared)  # central directory entry
    return bytes(out)


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("series/link.dcm")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


HOSTILE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "traversal": (lambda one: _zip({"series/a.dcm": one, "../x.dcm": one}),
                  "member '../x.dcm' has a path outside the archive"),
    "absolute": (lambda one: _zip({"/tmp/x.dcm": one}), "path outside the archive"),
    "declared bomb": (lambda one: _zip({"a.dcm": one, "big.dcm": b"\0" * (3 << 20)}),
                      "too large once unzipped"),
    "lying bomb": (lambda one: _lying_sizes(_zip({"big.dcm": b"\0" * (3 << 20)}), 4096),
                   "not a readable zip archive (BadZipFile"),
    "too many members": (lambda one: _zip({f"s/{i}.dcm": one for i in range(6)}),
                         "too many files"),
    "symlink": (lambda one: _symlink_zip(), "is a symbolic link"),
    "nested zip": (lambda one: _zip({"inner.zip": _zip({"a.dcm": one})}), "a zip inside the zip"),
    "zip renamed": (lambda one: _zip({"inner.dcm": _zip({"a.dcm": one}, zipfile.ZIP_STORED)},
                                     zipfile.ZIP_STORED), "a zip inside the zip"),
    "bzip2": (lambda one: _zip({"a.dcm": one}, zipfile.ZIP_BZIP2), "compression method 12"),
    "not a zip": (lambda one: b"PK\x03\x04 garbage", "not a zip archive"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_zips_are_refused_in_one_line(
        case: str, tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    monkeypatch.setenv("MEDIR_UI__DICOM_UNZIPPED_LIMIT_MB", "2")
    monkeypatch.setenv("MEDIR_UI__DICOM_MAX_FILES", "5")
    get_settings.cache_clear()
    s = get_settings()
    one = _series(tmp_path / "one", kind=0, seed=1, n=2)[0].read_bytes()
    make, reason = HOSTILE[case]
    data = make(one)
    before = _files_outside(tmp_path, s.query_uploads)
    at = _dicom_query(_page("search_page").run(), [("evil.zip", data)])
    assert not at.exception, at.exception
    errors = _shown(at.error)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("**Bad upload.** evil.zip: ") and reason in errors[0], errors
    assert at.button(key="go").disabled
    assert _files_outside(tmp_path, s.query_uploads) == before  # nothing written outside
    assert not _private_files(s.query_uploads)  # and nothing left inside


def test_the_zip_directory_is_counted_before_it_is_parsed(tmp_path: Path) -> None:
    """The entry count comes from the end record, so a huge directory is refused before
    zipfile builds it (and a ZIP64 record is read too)."""
    from ui.dicom_uploads import central_directory

    data = _zip({f"{i}.dcm": b"x" for i in range(7)})
    entries, size = central_directory("a.zip", data)
    assert entries == 7 and size > 7 * 46
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", allowZip64=True) as zf:
        for i in range(3):
            zf.writestr(f"{i}.dcm", b"y")
    raw = bytearray(buf.getvalue())
    at = raw.rfind(b"PK\x05\x06")
    # force the ZIP64 path: the classic record says 0xFFFF, the ZIP64 record the truth
    import zipfile as zf_mod
    end64 = struct.pack(zf_mod.structEndArchive64, zf_mod.stringEndArchive64, 44, 45, 45, 0, 0,
                        3, 3, struct.unpack("<L", raw[at + 12:at + 16])[0],
                        struct.unpack("<L", raw[at + 16:at + 20])[0])
    locator = struct.pack(zf_mod.structEndArchive64Locator, zf_mod.stringEndArchive64Locator, 0,
                          at, 1)
    tail = bytearray(raw[at:at + 22])
    struct.pack_into("<HH", tail, 8, 0xFFFF, 0xFFFF)
    zip64 = bytes(raw[:at]) + end64 + locator + bytes(tail)
    assert central_directory("b.zip", zip64)[0] == 3


def test_ingest_page_indexes_each_series_of_a_zip(
        tiny_store: Path, tmp_path: Path) -> None:  # noqa: F811
    from pydicom import dcmread

    s = get_settings()
    a = _series(tmp_path / "a", kind=2, seed=4, n=12)
    b = _series(tmp_path / "b", kind=0, seed=5, n=6)
    members = {f"a/{p.name}": p.read_bytes() for p in a}
    members |= {f"b/{p.name}": p.read_bytes() for p in b}
    members["README.txt"] = b"two series"
    uids = {str(dcmread(a[0]).SeriesInstanceUID), str(dcmread(b[0]).SeriesInstanceUID)}
    at = _page("ingest_page").run()
    at.file_uploader(key="ingest_uploads").set_value(("study.zip", _zip(members),
                                                      "application/zip"))
    at.run()
    at.button(key="ingest_upload_go").click().run()
    assert not at.exception, at.exception
    assert "DICOM upload: 2 image series; left out: 1 unknown type" in _texts(at), _texts(at)
    reports = at.dataframe[0].value
    assert set(reports["volume_id"]) == uids and set(reports["status"]) == {"indexed"}
    assert sorted(reports["n_slices"]) == [6, 12]
    saved = list((s.data_dir / "uploads").glob("dicom-*"))
    assert len(saved) == 1 and len(list(saved[0].iterdir())) == 19, saved
    assert not [v for v in PHI.values() if v in _texts(at)]
    at = _page("collection_page").run()
    assert at.dataframe[0].value.iloc[0]["volumes"] == 5  # three NIfTI + two series
    # the same upload again: the same folder and the same volumes (already present)
    at = _page("ingest_page").run()
    at.file_uploader(key="ingest_uploads").set_value(("again.zip", _zip(members),
                                                      "application/zip"))
    at.run()
    at.button(key="ingest_upload_go").click().run()
    assert not at.exception and "2 volume(s) indexed or already present" in _texts(at)
    assert len(list((s.data_dir / "uploads").glob("dicom-*"))) == 1


def test_ingest_page_refuses_a_hostile_zip_and_ingests_the_rest(
        tiny_store: Path, tmp_path: Path, make_nifti: Any) -> None:  # noqa: F811
    s = get_settings()
    good = make_nifti(_blob_volume(0, seed=3), AFFINE, name="ok.nii.gz")
    one = _series(tmp_path / "one", kind=0, seed=1, n=2)[0].read_bytes()
    at = _page("ingest_page").run()
    at.file_uploader(key="ingest_uploads").set_value([
        ("ok.nii.gz", good.read_bytes(), "application/gzip"),
        ("evil.zip", _zip({"../x.dcm": one}), "application/zip")])
    at.run()
    at.button(key="ingest_upload_go").click().run()
    assert not at.exception, at.exception
    errors = _shown(at.error)
    assert len(errors) == 1 and "evil.zip: member '../x.dcm' has a path outside" in errors[0]
    assert set(at.dataframe[0].value["status"]) == {"indexed"}
    assert not list((s.data_dir / "uploads").glob("*dicom-*"))
    assert not (s.data_dir / "x.dcm").exists() and not (tmp_path / "x.dcm").exists()


# ---- text from outside in markdown ------------------------------------------------------------
HOSTILE_TEXT = [
    "**bold** <script>alert(1)</script>",
    "`code` [link](http://evil.example) ![img](x.png)",
    ":red[red] :material/home: :smile: :-1: $x^2$",
    "# heading", "- item", "1. one", "> quote", "~~strike~~ | a | b |",
    "a\\*b \\ &amp; &lt;", "esc \x1b[2J bell \x07 bidi \u202e",
]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_md_shows_text_literally(text: str) -> None:
    """Rendered as CommonMark (markdown-it, as rich uses it), the escaped text is the text:
    no markup, no HTML, control characters visible as the CLI shows them."""
    import html
    import re

    from markdown_it import MarkdownIt

    from medir.terminal import visible_text
    from ui.common import md

    rendered = MarkdownIt("commonmark").enable("strikethrough").enable("table").render(md(text))
    assert re.fullmatch(r"<p>.*</p>\n", rendered, re.S), rendered
    inner = rendered[3:-5]
    assert "<" not in inner.replace("&lt;", ""), rendered  # no element at all
    assert html.unescape(inner).replace("\u2060", "") == visible_text(text)
    assert not re.search(r":[\w+/-]+:", html.unescape(inner))  # no shortcode survives


@pytest.fixture
def labelled_store(tiny_store: Path, tmp_path: Path) -> Path:  # noqa: F811
    """The tiny store with hostile labels on case1 (the answer to the query) and a hostile id."""
    from ingest.embedders import get_embedder
    from ingest.pipeline import ingest_paths
    from search.store_edge import EdgeStore

    with EdgeStore(get_settings().store_path) as store:
        ingest_paths([tmp_path / "db" / "case1.nii.gz"], store,
                     get_embedder("test-tiny", device="cpu"), force=True,
                     labels={"case1": {"modality": "**bold** <script>", "region": ":red[x]"}})
    return tiny_store


def test_a_hostile_label_shows_literally(labelled_store: Path) -> None:
    at = _page("search_page").run()
    at.file_uploader(key="upload").set_value(("q.nii.gz", labelled_store.read_bytes(),
                                              "application/gzip"))
    at.run()
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    raw = [x.value for x in at.success]
    assert len(raw) == 1 and "**bold** <script>" not in raw[0] and "<script" not in raw[0]
    assert "\\*\\*bold\\*\\* &lt;script&gt;" in raw[0], raw
    assert "Prediction: **bold** <script> · :red[x]" in _plain(raw[0]), raw


def test_limits_of_the_settings_bound_the_displayed_files(
        tiny_store: Path, tmp_path: Path, make_nifti: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The result thumbnails read files with every limit of the settings, the 4D one too
    (MEDIR_LIMITS__MAX_VOLUMES_PER_FILE)."""
    from ingest.embedders import get_embedder
    from ingest.pipeline import ingest_paths
    from search.store_edge import EdgeStore

    four = make_nifti(np.stack([_blob_volume(1, seed=9)] * 3, axis=-1), AFFINE,
                      name="db/four.nii.gz")
    with EdgeStore(get_settings().store_path) as store:
        ingest_paths([four], store, get_embedder("test-tiny", device="cpu"))
    monkeypatch.setenv("MEDIR_LIMITS__MAX_VOLUMES_PER_FILE", "2")
    get_settings.cache_clear()
    at = _page("search_page").run()
    at.radio(key="source").set_value("An indexed volume").run()
    at.selectbox(key="volume_id").set_value("case1").run()
    at.button(key="go").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    thumbs = dict(zip(table["volume"], table["thumbnail"], strict=True))
    assert any(v.startswith("four#") for v in thumbs), thumbs
    assert all(thumbs[v] is None for v in thumbs if v.startswith("four#")), thumbs
    assert all(str(thumbs[v]).startswith("data:image/png") for v in thumbs
               if not v.startswith("four#"))
