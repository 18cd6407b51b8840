"""Real collections: one identity per file, re-ingest that never loses a volume, what a folder
ingest leaves out and why, listing and pruning (issue 12; DICOM parsing is tested elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest import dicom
from ingest.collection import VolumeSource, file_source, labels_for, scan_paths
from ingest.embedders import get_embedder
from ingest.embedders.base import Embedder
from ingest.pipeline import index_volume, ingest_paths
from ingest.reader import open_volume
from medir.errors import MedirError
from runner.query_service import search_file
from search.live import live_version
from search.query import QueryOptions, search_indexed
from search.store import COMPLETE, READY, Filter, SlicePoint, SliceStore, collection_name
from search.store_edge import EdgeStore
from search.volumes import gone_volumes, list_volumes, migrate, prune
from tests.test_cli import medir
from tests.test_pipeline import _blob_volume

COLL = collection_name("test-tiny")


def _write(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (1, 1, 2)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), str(path))
    return path


@pytest.fixture
def emb() -> Embedder:
    return get_embedder("test-tiny", device="cpu")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "store") as s:
        yield s


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """A folder-per-case tree, the same file name in every case (TotalSegmentator style)."""
    root = tmp_path / "collection"
    for k, n in enumerate((5, 7, 9)):
        _write(root / f"p00{k + 1}" / "ct.nii.gz", _blob_volume(k, n=n, seed=k))
    return root


def _slices_per_volume(store: SliceStore) -> dict[str, int]:
    return {str(k): v for k, v in store.facet(COLL, "volume_id", READY).items()}


class Counting:
    """Counts forward passes of an embedder (proves that a relabel embeds nothing)."""

    def __init__(self, emb: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.slices = 0
        real = emb._forward

        def forward(x: Any) -> Any:
            self.slices += int(x.shape[0])
            return real(x)

        monkeypatch.setattr(emb, "_forward", forward)


# ---- identity ----------------------------------------------------------------------------------
def test_folder_per_case_same_names(cases: Path, store: EdgeStore, emb: Embedder) -> None:
    scan = scan_paths([cases])
    assert [s.volume_id for s in scan.sources] == ["p001/ct", "p002/ct", "p003/ct"]
    reports = ingest_paths(scan.sources, store, emb)
    assert [r.status for r in reports] == ["indexed"] * 3
    assert _slices_per_volume(store) == {"p001/ct": 5, "p002/ct": 7, "p003/ct": 9}
    again = ingest_paths(scan_paths([cases]).sources, store, emb)
    assert [r.status for r in again] == ["skipped"] * 3
    assert store.count(COLL) == 21
    # the ids are what queries show and take
    res = search_indexed("p002/ct", store, emb, QueryOptions(weighting="none", k=20, top=5))
    assert {r.volume_id for r in res.ranking} == {"p001/ct", "p003/ct"}
    assert res.query_id == "p002/ct" and res.n_slices == 7


def test_same_content_under_two_names(tmp_path: Path, store: EdgeStore, emb: Embedder) -> None:
    root = tmp_path / "c"
    a = _write(root / "a" / "scan.nii.gz", _blob_volume(1, seed=3))
    shutil.copy(a, root / "b.nii.gz")
    _write(root / "other.nii.gz", _blob_volume(2, seed=4))
    reports = ingest_paths(scan_paths([root]).sources, store, emb)
    by_id = {r.volume_id: r for r in reports}
    assert set(by_id) == {"a/scan", "b", "other"}
    assert by_id["a/scan"].status == by_id["b"].status == "indexed"
    assert by_id["b"].duplicate_of == ["a/scan"]  # the second one written names the first
    assert _slices_per_volume(store) == {"a/scan": 12, "b": 12, "other": 12}
    # both searchable: each is the other's best match
    for q, twin in (("a/scan", "b"), ("b", "a/scan")):
        assert search_indexed(q, store, emb, QueryOptions()).ranking[0].volume_id == twin
    # a file with that content *is* that volume: excluded under both ids
    res = search_file(a, store, emb, QueryOptions())
    assert [r.volume_id for r in res.ranking] == ["other"]
    # the second run reports the duplicates again, both ways
    again = {r.volume_id: r for r in ingest_paths(scan_paths([root]).sources, store, emb)}
    assert again["a/scan"].duplicate_of == ["b"] and again["b"].duplicate_of == ["a/scan"]


def test_query_with_an_indexed_file_reuses_its_stored_vectors(
        cases: Path, store: EdgeStore, emb: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.query_service as sq

    ingest_paths(scan_paths([cases]).sources, store, emb)
    counting = Counting(emb, monkeypatch)
    query = cases / "p002" / "ct.nii.gz"
    opts = QueryOptions(weighting="none", k=20, top=5)
    res = search_file(query, store, emb, opts)
    assert res.vectors == "stored" and counting.slices == 0
    assert {r.volume_id for r in res.ranking} == {"p001/ct", "p003/ct"}
    # the same ranking as embedding the file again
    with monkeypatch.context() as m:
        m.setattr(sq, "stored_vectors", lambda *a, **k: None)
        ref = search_file(query, store, emb, opts)
    assert ref.vectors == "embedded" and counting.slices == 7
    assert [(r.volume_id, round(r.votes, 4)) for r in res.ranking] == \
        [(r.volume_id, round(r.votes, 4)) for r in ref.ranking]
    # another window than the stored one: embedded again, never mixed
    other = search_file(query, store, emb, QueryOptions(weighting="none", intensity="ct"))
    assert other.vectors == "embedded" and counting.slices == 14


def test_labels_csv_keys_by_path_and_overrides_ids(cases: Path, tmp_path: Path,
                                                  store: EdgeStore, emb: Embedder) -> None:
    from ingest.labels import load_labels_csv, load_volume_ids

    csv = tmp_path / "labels.csv"
    csv.write_text("file,case_id,modality\np001/ct.nii.gz,,CT\np002/ct.nii.gz,kidney_7,MR\n"
                   "p003/ct.nii.gz,,PET\n")
    table, ids = load_labels_csv(csv), load_volume_ids(csv)
    scan = scan_paths([cases], ids)
    assert [s.volume_id for s in scan.sources] == ["p001/ct", "kidney_7", "p003/ct"]
    assert [labels_for(table, s.volume_id, s) for s in scan.sources] == [
        {"modality": "CT"}, {"modality": "MR"}, {"modality": "PET"}]
    ingest_paths(scan.sources, store, emb, labels=table)
    rows = {v.volume_id: v.labels for v in list_volumes(store)}
    assert rows == {"p001/ct": {"modality": "CT"}, "kidney_7": {"modality": "MR"},
                    "p003/ct": {"modality": "PET"}}


def test_file_given_directly_and_4d(tmp_path: Path) -> None:
    f = _write(tmp_path / "x" / "fmri.nii.gz",
               np.stack([_blob_volume(0, n=4), _blob_volume(1, n=4)], axis=-1))
    [src] = scan_paths([f]).sources
    assert src.volume_id == "fmri" and src.open().volume_ids() == ["fmri#0", "fmri#1"]
    [src] = scan_paths([tmp_path]).sources
    assert src.open().volume_ids() == ["x/fmri#0", "x/fmri#1"]
    # the same file twice (as a file and under its folder) is ingested once
    scan = scan_paths([tmp_path, f])
    assert len(scan.sources) == 1 and scan.skipped_by_kind() == {dicom.DUPLICATE: 1}


def test_uploads_never_take_an_indexed_id(tmp_path: Path, store: EdgeStore,
                                          emb: Embedder) -> None:
    from ui.uploads import save_upload, upload_source

    indexed = _write(tmp_path / "ct.nii.gz", _blob_volume(0, seed=1))
    ingest_paths([indexed], store, emb)
    data = _write(tmp_path / "up" / "ct.nii.gz", _blob_volume(2, seed=2)).read_bytes()
    saved = save_upload("ct.nii.gz", data, tmp_path / "uploads", 50)
    src = upload_source(saved)
    assert src.volume_id.startswith("uploads/") and src.volume_id.endswith("/ct")
    ingest_paths([src], store, emb)
    assert set(_slices_per_volume(store)) == {"ct", src.volume_id}


# ---- what a folder ingest leaves out ----------------------------------------------------------
def test_walker_safety_and_skip_counts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    _write(root / "a" / "ct.nii.gz", _blob_volume(0, n=3))
    _write(outside / "secret.nii.gz", _blob_volume(1, n=3))
    (root / "a" / "notes.txt").write_text("not a volume")
    (root / "link_out.nii.gz").symlink_to(outside / "secret.nii.gz")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    (root / "inner.nii.gz").symlink_to(root / "a" / "ct.nii.gz")  # inside: followed
    (root / "loop").symlink_to(root, target_is_directory=True)
    os.mkfifo(root / "pipe.nii.gz")
    scan = scan_paths([root])
    assert sorted(s.volume_id for s in scan.sources) == ["a/ct"]  # inner.nii.gz: same file
    kinds = {s.path.rsplit("/", 1)[-1]: s.kind for s in scan.skipped}
    assert kinds == {"notes.txt": dicom.UNKNOWN_TYPE, "link_out.nii.gz": dicom.UNSAFE_PATH,
                     "dir_out": dicom.UNSAFE_PATH, "pipe.nii.gz": dicom.UNSAFE_PATH,
                     "loop": dicom.DUPLICATE, "inner.nii.gz": dicom.DUPLICATE}
    assert "FIFO" in next(s.reason for s in scan.skipped if s.path.endswith("pipe.nii.gz"))


def test_dicom_series_join_the_collection(tmp_path: Path, store: EdgeStore, emb: Embedder,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The walker hands DICOM files to scan_dicom and ingests each series under its UID (the
    series reader is replaced here by a NIfTI read of the same volume)."""
    root = tmp_path / "archive"
    nifti = _write(tmp_path / "series.nii.gz", _blob_volume(2, n=6))
    for i in range(3):
        (root / "study" / "s1").mkdir(parents=True, exist_ok=True)
        (root / "study" / "s1" / f"IM{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    sr = root / "study" / "report"
    sr.parent.mkdir(parents=True, exist_ok=True)
    sr.write_bytes(b"\0" * 128 + b"DICM")  # no suffix: found by its magic
    seen: list[list[Path]] = []

    def fake_scan(files: list[Path]) -> tuple[list[dicom.DicomSeries], list[dicom.Skipped]]:
        seen.append(sorted(files))
        images = [f for f in files if f.suffix == ".dcm"]
        return ([dicom.DicomSeries("1.2.3.4", images, {"Modality": "CT"})],
                [dicom.Skipped(str(sr), dicom.NON_IMAGE_DICOM, "SR document")])

    def fake_open(self: dicom.DicomSeries, limits: Any = None) -> Any:
        vf = open_volume(nifti)
        return type(vf)(**{**vf.__dict__, "meta": dict(self.meta)})

    monkeypatch.setattr(dicom, "scan_dicom", fake_scan)
    monkeypatch.setattr(dicom.DicomSeries, "open", fake_open)
    scan = scan_paths([root])
    assert len(seen[0]) == 4  # every DICOM file, in one call
    [src] = scan.sources
    assert src.volume_id == "1.2.3.4" and src.source == str(root / "study" / "s1")
    assert scan.skipped_by_kind() == {dicom.NON_IMAGE_DICOM: 1}
    [rep] = ingest_paths(scan.sources, store, emb)
    assert rep.status == "indexed" and rep.volume_id == "1.2.3.4"
    [row] = list_volumes(store)
    assert row.n_slices == 6 and row.meta == {"Modality": "CT"}


# ---- re-ingest ---------------------------------------------------------------------------------
def test_labels_reapplied_without_reembedding(cases: Path, tmp_path: Path, store: EdgeStore,
                                              emb: Embedder,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    count = Counting(emb, monkeypatch)
    srcs = scan_paths([cases]).sources
    ingest_paths(srcs, store, emb, labels={"p001/ct": {"modality": "CT", "region": "chest"}})
    embedded = count.slices
    assert embedded == 21
    reports = ingest_paths(srcs, store, emb, labels={"p001/ct": {"modality": "MR"}})
    assert [r.status for r in reports] == ["relabelled", "skipped", "skipped"]
    assert count.slices == embedded  # no forward pass at all
    p001 = list(store.scroll(COLL, Filter({"volume_id": "p001/ct"})))
    assert len(p001) == 5
    assert all(r.payload["modality"] == "MR" and "region" not in r.payload for r in p001)
    # no labels table: the stored labels stay
    assert [r.status for r in ingest_paths(srcs[:1], store, emb)] == ["skipped"]
    # another intensity mode re-embeds; so does --force; the labels carry on
    [r] = ingest_paths(srcs[:1], store, emb, intensity="ct")
    assert r.status == "indexed" and count.slices == embedded + 5
    [r] = ingest_paths(srcs[:1], store, emb, intensity="ct", force=True)
    assert r.status == "indexed" and count.slices == embedded + 10
    p001 = list(store.scroll(COLL, Filter({"volume_id": "p001/ct"})))
    assert len(p001) == 5 and {r.payload["intensity"] for r in p001} == {"ct"}
    assert {r.payload["modality"] for r in p001} == {"MR"}


def _check_one_version(store: SliceStore, emb: Embedder, vid: str, sizes: set[int],
                       probe: Path) -> int:
    """What a query sees of ``vid`` right now: exactly one complete version of a known size."""
    res = search_indexed(vid, store, emb, QueryOptions(weighting="none", top=10))
    assert res.n_slices in sizes and len(res.chosen_slices) == res.n_slices
    other = search_file(probe, store, emb, QueryOptions(weighting="none", k=50, top=10))
    assert vid in [r.volume_id for r in other.ranking]
    hits = [m for r in other.ranking if r.volume_id == vid for m in r.matches]
    # (from another thread the version may switch between the two queries)
    assert hits and max(m.db_slice for m in hits) < max(sizes)
    return res.n_slices


WRITES = ("upsert", "delete", "set_payload", "delete_payload")
READS = ("count", "facet", "scroll")


class Hooked:
    """A store whose every call of ``methods`` is followed by ``after(call_number, method)``."""

    def __init__(self, inner: SliceStore, after: Callable[[int, str], None],
                 methods: tuple[str, ...] = WRITES) -> None:
        self._inner, self._after, self.calls = inner, after, 0
        self._methods = methods
        self.mode, self.location = inner.mode, inner.location

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            self.calls += 1
            self._after(self.calls, name)
            return out

        return call


def test_changed_file_never_missing_while_queried(cases: Path, tmp_path: Path,
                                                  store: EdgeStore, emb: Embedder) -> None:
    srcs = scan_paths([cases]).sources
    ingest_paths(srcs, store, emb)
    probe = _write(tmp_path / "probe.nii.gz", _blob_volume(1, n=8, seed=9))
    # the file changes (5 → 11 slices); after every single store write of its re-ingest, a
    # query sees one complete version, old or new, never none and never a mix
    _write(cases / "p001" / "ct.nii.gz", _blob_volume(0, n=11, seed=7))
    seen: list[int] = []
    hooked = Hooked(store, lambda i, m: seen.append(
        _check_one_version(store, emb, "p001/ct", {5, 11}, probe)))
    reports = ingest_paths(scan_paths([cases]).sources, hooked,  # type: ignore[arg-type]
                           emb, upsert_batch=3)
    assert [(r.volume_id, r.status) for r in reports] == [
        ("p001/ct", "indexed"), ("p002/ct", "skipped"), ("p003/ct", "skipped")]
    assert len(seen) >= 5 and seen[0] == 5 and seen[-1] == 11
    assert store.count(COLL, Filter({"volume_id": "p001/ct"})) == 11  # only the new version


def test_changed_file_queried_from_another_thread(cases: Path, tmp_path: Path,
                                                  emb: Embedder) -> None:
    from runner.local import LockedStore

    with EdgeStore(tmp_path / "threads") as raw:
        store: Any = LockedStore(raw)  # the worker's store: one engine handle, many threads
        ingest_paths(scan_paths([cases]).sources, store, emb)
        probe = _write(tmp_path / "probe.nii.gz", _blob_volume(1, n=8, seed=9))
        _write(cases / "p001" / "ct.nii.gz", _blob_volume(0, n=11, seed=7))
        done, started = threading.Event(), threading.Event()
        sizes: list[int] = []
        errors: list[BaseException] = []

        def query_loop() -> None:
            try:
                while not done.is_set() or not sizes:
                    sizes.append(_check_one_version(store, emb, "p001/ct", {5, 11}, probe))
                    started.set()
            except BaseException as exc:  # surfaced below
                errors.append(exc)
                started.set()

        t = threading.Thread(target=query_loop)
        t.start()
        started.wait(60)
        ingest_paths(scan_paths([cases]).sources, store, emb, upsert_batch=2)
        done.set()
        t.join(120)
        assert not errors, errors[0]
        assert sizes and set(sizes) <= {5, 11}
        assert _check_one_version(store, emb, "p001/ct", {11}, probe) == 11
        assert store.count(COLL, Filter({"volume_id": "p001/ct"})) == 11


def _two_versions(tmp_path: Path) -> tuple[Any, Any]:
    a = open_volume(_write(tmp_path / "va" / "ct.nii.gz", _blob_volume(0, n=4, seed=1))).read()
    b = open_volume(_write(tmp_path / "vb" / "ct.nii.gz", _blob_volume(2, n=6, seed=2))).read()
    a.volume_id = b.volume_id = "case/ct"
    return a, b


def _one_complete_version(store: SliceStore) -> int:
    pts = list(store.scroll(COLL, Filter({"volume_id": "case/ct"})))
    assert len({p.payload["gen"] for p in pts}) == 1
    assert {p.payload["state"] for p in pts} == {COMPLETE}
    n = int(pts[0].payload["n_slices"])
    assert sorted(int(p.payload["slice"]) for p in pts) == list(range(n))
    return n


def test_two_writers_every_interleaving(tmp_path: Path, emb: Embedder) -> None:
    """Writer B runs whole inside each single store call of writer A: every interleaving of
    the two write protocols ends with exactly one complete version."""
    a, b = _two_versions(tmp_path)
    calls = WRITES + READS
    with EdgeStore(tmp_path / "s0") as store:  # how many store calls one write makes
        index_volume(store, emb, a, upsert_batch=2)
        hooked = Hooked(store, lambda i, m: None, calls)
        index_volume(hooked, emb, a, force=True, upsert_batch=2)  # type: ignore[arg-type]
        n_calls = hooked.calls
    assert n_calls >= 8
    winners = set()
    for i in range(1, n_calls + 1):
        with EdgeStore(tmp_path / f"s{i}") as store:
            index_volume(store, emb, a, upsert_batch=2)  # a live version to replace

            def after(call: int, _: str, at: int = i, s: EdgeStore = store) -> None:
                if call == at:
                    index_volume(s, emb, b, force=True)

            hooked = Hooked(store, after, calls)
            index_volume(hooked, emb, a, force=True, upsert_batch=2)  # type: ignore[arg-type]
            winners.add(_one_complete_version(store))
    assert winners <= {4, 6}


def test_two_writer_threads(tmp_path: Path, emb: Embedder) -> None:
    from runner.local import LockedStore

    a, b = _two_versions(tmp_path)
    with EdgeStore(tmp_path / "s") as raw:
        store: Any = LockedStore(raw)
        go = threading.Barrier(2)
        reports: list[Any] = []

        def write(vol: Any) -> None:
            go.wait()
            reports.append(index_volume(store, emb, vol, force=True, upsert_batch=1))

        threads = [threading.Thread(target=write, args=(v,)) for v in (a, b, a, b)[:2]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(reports) == 2
        n = _one_complete_version(raw)
        assert n in (4, 6) and live_version(raw, COLL, "case/ct") is not None


# ---- prune, listing, migration ----------------------------------------------------------------
def test_prune_dry_run_then_real(cases: Path, store: EdgeStore, emb: Embedder) -> None:
    ingest_paths(scan_paths([cases]).sources, store, emb)
    shutil.rmtree(cases / "p002")
    gone = gone_volumes(store)
    assert [v.volume_id for v in gone] == ["p002/ct"]
    assert store.count(COLL) == 21  # listing deletes nothing
    assert prune(store, gone) == 7
    assert _slices_per_volume(store) == {"p001/ct": 5, "p003/ct": 9}
    assert gone_volumes(store) == []


def _old_store(path: Path, emb: Embedder, files: list[Path]) -> None:
    """A store as the previous release wrote it: stem ids, no generation, no layout marker."""
    with EdgeStore(path) as s:
        s.ensure_collection(COLL, emb.dim)
        for f in files:
            vol = open_volume(f).read()
            pts = [SlicePoint(f"00000000-0000-5000-8000-{i:06d}{len(f.parent.name):06d}",
                              np.full(emb.dim, 1.0 / np.sqrt(emb.dim), np.float32),
                              {**vol.payload(), "volume_id": vol.case_id.rsplit("/")[-1],
                               "case_id": vol.case_id, "slice": i, "z_mm": 0.0,
                               "content_id": vol.sha256, "embedder": emb.embedder_id,
                               "intensity": "percentile", "state": COMPLETE})
                   for i in range(vol.n_slices)]
            s.upsert(COLL, pts)


def test_old_store_gets_one_line_then_migrates(cases: Path, tmp_path: Path,
                                               emb: Embedder) -> None:
    path = tmp_path / "old"
    _old_store(path, emb, [cases / "p001" / "ct.nii.gz"])
    with EdgeStore(path) as s:
        with pytest.raises(MedirError, match="medir migrate"):
            search_indexed("ct", s, emb, QueryOptions())
        with pytest.raises(MedirError, match="medir migrate"):
            ingest_paths([cases / "p002" / "ct.nii.gz"], s, emb)
        assert migrate(s, [cases]) == {COLL: 5}
        assert [v.volume_id for v in list_volumes(s)] == ["p001/ct"]
        assert migrate(s, [cases]) == {}
        reports = ingest_paths(scan_paths([cases]).sources, s, emb)
        # the migrated volume is kept as it is (same content, model version, intensity mode)
        assert [r.status for r in reports] == ["skipped", "indexed", "indexed"]
        assert _slices_per_volume(s) == {"p001/ct": 5, "p002/ct": 7, "p003/ct": 9}


def test_cli_ingest_json_volumes_prune(cases: Path, tmp_path: Path) -> None:
    (cases / "readme.txt").write_text("hello")
    r = medir("ingest", cases, "--model", "test-tiny", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["counts"]["indexed"] == 3 and report["left_out"] == {"unknown type": 1}
    r = medir("ingest", cases, "--model", "test-tiny")
    assert r.returncode == 0 and "0 indexed; 3 unchanged" in r.stdout
    assert "left out: 1 unknown type" in r.stdout
    r = medir("volumes", "--json")
    rows = json.loads(r.stdout)
    assert [(v["volume_id"], v["n_slices"], v["state"]) for v in rows] == [
        ("p001/ct", 5, "ready"), ("p002/ct", 7, "ready"), ("p003/ct", 9, "ready")]
    assert rows[0]["embedder"] == "test-tiny@1"
    r = medir("volumes")
    assert r.returncode == 0 and "p002/ct" in r.stdout and "3 volume(s)" in r.stdout
    _one_line = medir("volumes", "--filter", "colour=red")
    assert _one_line.returncode == 2 and "colour" in _one_line.stderr
    r = medir("info", "--json")
    stats = json.loads(r.stdout)
    assert stats["collections"][0]["volumes"] == 3
    # "is the queue on?" is the runner's answer: an empty MEDIR_REDIS_URL is off for both
    r = medir("info", "--json", env={"MEDIR_REDIS_URL": ""})
    assert r.returncode == 0 and json.loads(r.stdout)["queue"] is False, r.stdout + r.stderr
    shutil.rmtree(cases / "p003")
    r = medir("prune")
    assert r.returncode == 0 and "would remove p003/ct" in r.stdout
    assert len(json.loads(medir("volumes", "--json").stdout)) == 3
    r = medir("prune", "--yes")
    assert r.returncode == 0 and "removed 1 volume(s), 9 points" in r.stdout
    assert [v["volume_id"] for v in json.loads(medir("volumes", "--json").stdout)] == [
        "p001/ct", "p002/ct"]


def test_file_source_for_missing_file_fails_with_reason(tmp_path: Path, store: EdgeStore,
                                                        emb: Embedder) -> None:
    src: VolumeSource = file_source(tmp_path / "nope.nii.gz")
    [r] = ingest_paths([src], store, emb)
    assert r.status == "failed" and "no such file" in r.error and r.volume_id == "nope"


def test_reingest_on_the_qdrant_client_path(cases: Path, emb: Embedder) -> None:
    """The same protocol through qdrant-client (the server's code path, local mode here)."""
    from search.store_qdrant import QdrantStore

    with QdrantStore(path=":memory:") as store:
        ingest_paths(scan_paths([cases]).sources, store, emb)
        _write(cases / "p001" / "ct.nii.gz", _blob_volume(0, n=11, seed=7))
        reports = ingest_paths(scan_paths([cases]).sources, store, emb,
                               labels={"p002/ct": {"modality": "MR"}})
        assert [r.status for r in reports] == ["indexed", "relabelled", "skipped"]
        assert {str(k): v for k, v in store.facet(COLL, "volume_id", READY).items()} == {
            "p001/ct": 11, "p002/ct": 7, "p003/ct": 9}
        assert store.count(COLL) == 27
        assert search_indexed("p001/ct", store, emb, QueryOptions()).n_slices == 11
