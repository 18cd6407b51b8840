"""Each stage of bulk ingest on its own (ingest/stages/), and the way the runner
(:func:`ingest.pipeline.ingest_paths`) wires them: batching across volumes, reports in input
order after their flush, a source's pre-check answered on the calling thread, errors that stop
everything (the reader thread joined)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.collection import file_source
from ingest.dicomweb import PacsClient, PacsError, PacsSeries, PacsUnavailable, SeriesRef, Target
from ingest.embedders import get_embedder
from ingest.pacs_ingest import PacsSource
from ingest.pipeline import IngestReport, ingest_paths, open_collection
from ingest.reader import VolumeFile
from ingest.stages.batch import Batcher, route
from ingest.stages.handover import Chunk, Start
from ingest.stages.read import FileSource, Reader, Source
from ingest.stages.stats import PipelineStats
from ingest.stages.write import Writer
from ingest.volume import Volume
from medir.errors import DiskFull, MedirError, VolumeError
from search.store import READY, Filter, SliceStore, collection_name
from search.store_edge import EdgeStore

COLL = collection_name("test-tiny")


def _chunk(seq: int, start: int, rows: int) -> Chunk:
    """Rows whose single value is ``seq * 100 + slice``: where each row came from."""
    x = torch.arange(start, start + rows, dtype=torch.float32)[:, None] + seq * 100
    return Chunk(seq, start, x, True)


# ---- batch ----------------------------------------------------------------------------------
def test_batcher_fills_exact_batches_across_volumes_and_routes_rows_back() -> None:
    b = Batcher(4, PipelineStats())
    chunks = [_chunk(0, 0, 3), _chunk(1, 0, 4), _chunk(1, 4, 2), _chunk(2, 0, 4),
              _chunk(3, 0, 1)]
    batches = [batch for c in chunks for batch in b.add(c)]
    batches.append(b.take())
    assert [sum(c.rows for c in batch) for batch in batches] == [4, 4, 4, 2]
    assert [[(c.seq, c.start, c.rows) for c in batch] for batch in batches] == [
        [(0, 0, 3), (1, 0, 1)], [(1, 1, 3), (1, 4, 1)], [(1, 5, 1), (2, 0, 3)],
        [(2, 3, 1), (3, 0, 1)]]
    assert b.pending == [] and b.rows == 0
    vectors = {0: np.full(3, -1.0), 1: np.full(6, -1.0), 2: np.full(4, -1.0), 3: np.full(1, -1.0)}
    for batch in batches:
        y = torch.cat([c.x for c in batch]).numpy() * 2  # a "model" keeps rows apart
        for c, rows in route(batch, y):
            vectors[c.seq][c.start:c.start + c.rows] = rows[:, 0]
    for seq, v in vectors.items():  # every slice got its own row, in slice order
        assert np.array_equal(v, (seq * 100 + np.arange(len(v))) * 2), seq


def test_batcher_drops_the_waiting_slices_of_a_closed_volume() -> None:
    b = Batcher(4, PipelineStats())
    assert b.add(_chunk(0, 0, 2)) == [] and b.add(_chunk(1, 0, 1)) == []
    b.drop(lambda seq: seq != 0)
    assert [(c.seq, c.rows) for c in b.pending] == [(1, 1)] and b.rows == 1
    [batch] = b.add(_chunk(2, 0, 4))
    assert [(c.seq, c.start, c.rows) for c in batch] == [(1, 0, 1), (2, 0, 3)]


# ---- write ----------------------------------------------------------------------------------
def _start(seq: int, vid: str, n: int, source: Source | None = None) -> Start:
    vol = Volume(vid, vid, np.empty((n, 0, 0), np.float32), (1.0, 1.0, 1.0), f"/data/{vid}",
                 hashlib.sha256(vid.encode()).hexdigest())
    return Start(seq, vol, "percentile", time.perf_counter(), f"g{seq}", source or Source())


def _rows(n: int, dim: int) -> np.ndarray:
    v = np.random.default_rng(n).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _Flushes:
    """Counts ``store.flush`` and records, for each report, how many flushes preceded it."""

    def __init__(self, store: SliceStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        self.seen: list[tuple[str, str, int]] = []
        real = store.flush

        def flush() -> None:
            real()
            self.n += 1

        monkeypatch.setattr(store, "flush", flush)

    def on_report(self, r: IngestReport) -> None:
        self.seen.append((r.volume_id, r.status, self.n))


def test_writer_reports_in_input_order_and_only_after_their_flush(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        coll = open_collection(store, emb)
        flushes = _Flushes(store, monkeypatch)
        w = Writer(store, coll, emb, PipelineStats(), intensity="auto", upsert_batch=512,
                   flush_every=3600, force=False, labels_given=False,
                   on_report=flushes.on_report)
        a, c = _start(0, "a", 3), _start(1, "c", 2)
        w.begin(a)
        w.add(IngestReport("/data/b", "b", "failed", error="unreadable"))
        w.begin(c)
        w.fill(Chunk(1, 0, torch.zeros(2, 1), True), _rows(2, emb.dim))  # c complete first
        w.fill(Chunk(0, 0, torch.zeros(3, 1), True), _rows(3, emb.dim))
        w.emit()
        # both written (ready), neither flushed within the interval: nothing reported yet
        assert store.count(coll, READY) == 5
        assert flushes.n == 0 and w.reports == [] and flushes.seen == []
        w.finish()
        assert flushes.n == 1
        assert flushes.seen == [("a", "indexed", 1), ("b", "failed", 1), ("c", "indexed", 1)]
        assert [r.volume_id for r in w.reports] == ["a", "b", "c"]

        # a flush interval of 0: each volume flushed when written, reported after its flush
        w0 = Writer(store, coll, emb, PipelineStats(), intensity="auto", upsert_batch=512,
                    flush_every=0, force=False, labels_given=False, on_report=flushes.on_report)
        w0.begin(_start(2, "d", 1))
        w0.fill(Chunk(2, 0, torch.zeros(1, 1), True), _rows(1, emb.dim))
        w0.emit()
        assert flushes.seen[-1] == ("d", "indexed", 2)
        # an unchanged volume is settled (skipped) without embedding: its chunks are cancelled
        again = _start(3, "d", 1)
        w0.begin(again)
        w0.emit()
        assert again.cancel.is_set() and not w0.is_open(3)
        assert flushes.seen[-1][:2] == ("d", "skipped")


def test_writer_fails_one_volume_and_stops_on_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        coll = open_collection(store, emb)
        w = Writer(store, coll, emb, PipelineStats(), intensity="auto", upsert_batch=512,
                   flush_every=0, force=False, labels_given=False)
        real = store.upsert
        refusal: list[MedirError] = [MedirError("the store refused it")]

        def upsert(name: str, points: list) -> None:  # type: ignore[type-arg]
            if refusal:
                raise refusal[0]
            real(name, points)

        monkeypatch.setattr(store, "upsert", upsert)
        for k, vid in enumerate(("x", "y")):
            w.begin(_start(k, vid, 2))
        w.fill(Chunk(0, 0, torch.zeros(2, 1), True), _rows(2, emb.dim))  # refused: x fails
        refusal.clear()
        w.fill(Chunk(1, 0, torch.zeros(2, 1), True), _rows(2, emb.dim))  # y goes on
        w.emit()
        assert [(r.volume_id, r.status, r.error) for r in w.reports] == [
            ("x", "failed", "the store refused it"), ("y", "indexed", "")]
        assert store.count(coll, Filter({"volume_id": "x"})) == 0  # its points removed
        refusal.append(DiskFull("no space left"))
        w.begin(_start(2, "z", 1))
        with pytest.raises(DiskFull):
            w.fill(Chunk(2, 0, torch.zeros(1, 1), True), _rows(1, emb.dim))


# ---- read -----------------------------------------------------------------------------------
def test_reader_reports_a_source_that_cannot_be_opened(tmp_path: Path, make_nifti) -> None:
    reader = Reader({"good": {"modality": "CT"}}, None, PipelineStats())
    missing = reader.open(FileSource(file_source(tmp_path / "gone.nii.gz")))
    assert isinstance(missing, IngestReport) and missing.status == "failed"
    assert missing.volume_id == "gone" and "no such file" in missing.error
    good = FileSource(file_source(make_nifti(np.ones((8, 8, 3), np.float32), name="good.nii")))
    vf = reader.open(good)
    assert isinstance(vf, VolumeFile)
    vol = reader.read(good, vf, 0)
    assert vol.volume_id == "good" and vol.labels == {"modality": "CT"} and vol.n_slices == 3

    class Broken(Source):
        def open(self, limits: object = None) -> VolumeFile:
            raise MedirError("the archive is gone")

        def fatal(self, exc: MedirError) -> bool:
            return True

    with pytest.raises(MedirError, match="archive is gone"):
        reader.open(Broken())


# ---- the runner: sources that ask first, errors that stop everything -----------------------
def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "medir-ingest-reader" and t.is_alive()]


class _Checked(Source):
    """A source the write stage is asked about first; never opened when it answers."""

    checks_store = True

    def __init__(self, vid: str, answer: str | None = None, fatal: bool = False) -> None:
        self.volume_id = self.source = self.path = vid
        self.answer, self.is_fatal = answer, fatal
        self.asked_on: list[str] = []

    def precheck(self, store: object, coll: str, space: str) -> IngestReport | None:
        self.asked_on.append(threading.current_thread().name)
        if self.is_fatal:
            raise MedirError("the server is gone")
        return None if self.answer is None else IngestReport(self.source, self.volume_id,
                                                              self.answer)

    def open(self, limits: object = None) -> VolumeFile:
        raise VolumeError(self.volume_id, "opened although the write stage said no")


def _volumes(make_nifti, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    return [make_nifti(rng.random((16, 16, 5)).astype(np.float32), name=f"v{k}.nii.gz")
            for k in range(n)]


def test_a_source_skipped_by_its_precheck_is_never_opened(tmp_path: Path, make_nifti) -> None:
    files = _volumes(make_nifti, 2)
    skip, read = _Checked("s", answer="skipped"), _Checked("r")
    emb = get_embedder("test-tiny", device="cpu", batch_size=4)
    st = PipelineStats()
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths([files[0], skip, read, files[1]], store, emb, stats=st)
    assert [(r.volume_id, r.status) for r in reports] == [
        ("v0", "indexed"), ("s", "skipped"), ("r", "failed"), ("v1", "indexed")]
    assert "opened although" in reports[2].error  # asked, answered "read it", then opened
    assert skip.asked_on == read.asked_on == [threading.current_thread().name]
    assert st.volumes == 2 and st.slices == 10
    recorded = st.to_dict()  # each stage's time under its name, the fields as before
    assert list(recorded["stages"]) == ["read", "prepare", "settle", "embed", "write"]
    assert recorded["stages"]["embed"] == recorded["embed_s"] == st.embed_s
    assert {"read_s", "intensity_resize_s", "upsert_s", "wait_s", "wall_s"} <= recorded.keys()


@pytest.mark.parametrize("where", ["precheck", "open"])
def test_a_fatal_error_stops_the_ingest_and_the_reader_thread(
        tmp_path: Path, make_nifti, where: str) -> None:
    files = _volumes(make_nifti, 3)

    class Gone(_Checked):
        def open(self, limits: object = None) -> VolumeFile:
            raise MedirError("the server is gone")

        def fatal(self, exc: MedirError) -> bool:
            return True

    bad = _Checked("gone", fatal=True) if where == "precheck" else Gone("gone")
    emb = get_embedder("test-tiny", device="cpu", batch_size=4)
    with EdgeStore(tmp_path / "s") as store:
        with pytest.raises(MedirError, match="server is gone"):
            ingest_paths([files[0], bad, *files[1:]], store, emb)
        assert _reader_threads() == []
        assert store.count(COLL, Filter({"volume_id": "v2"})) == 0  # nothing after it


def test_a_failed_batch_fails_its_volumes_and_the_others_go_on(
        tmp_path: Path, make_nifti, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward pass that fails on a batch holding the tail of one volume and the head of the
    next fails both (the rest of the second, split off into the next batch, is dropped)."""
    files = _volumes(make_nifti, 4)  # 5 slices each, batches of 4
    emb = get_embedder("test-tiny", device="cpu", batch_size=4)
    real, calls = emb.forward, [0]

    def flaky(x: torch.Tensor) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 2:  # rows v0[4] + v1[0:3]
            raise MedirError("the model cannot run")
        return real(x)

    monkeypatch.setattr(emb, "forward", flaky)
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths(files, store, emb)
        assert [(r.volume_id, r.status) for r in reports] == [
            ("v0", "failed"), ("v1", "failed"), ("v2", "indexed"), ("v3", "indexed")]
        assert store.count(COLL) == 10


# ---- PACS: a series is a source ------------------------------------------------------------
def _series(modality: str = "CT") -> PacsSeries:
    return PacsSeries(Target("http://pacs.invalid/dicom-web"),
                      SeriesRef("1.2.3", "1.2.3.4", modality=modality))


def test_a_pacs_series_source(tmp_path: Path) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    with PacsClient(Target("http://pacs.invalid/dicom-web")) as client:
        with EdgeStore(tmp_path / "s") as store:  # a non-image series: skipped, no request
            coll = open_collection(store, emb)
            sr = PacsSource(_series("SR"), client).precheck(store, coll, "test-tiny@1")
        assert sr is not None
        assert (sr.status, sr.error) == ("skipped", "non-image DICOM (SR series)")
        src = PacsSource(_series(), client)
    assert src.fatal(PacsUnavailable("refused")) and not src.fatal(PacsError("HTTP 500"))
    rep = src.failed("ignored", src.volume_id, PacsError("pacs: HTTP 500"), time.perf_counter())
    assert (rep.path, rep.error) == (src.source, "1.2.3.4: pacs: HTTP 500")
    rep = src.failed("ignored", src.volume_id, VolumeError(src.source, "no image series"), 0.0)
    assert rep.error == f"{src.source}: no image series"  # it names the series already
