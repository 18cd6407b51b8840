"""Ingest and query end to end on generated volumes with a small real embedder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.pipeline import ingest_paths
from ingest.reader import open_volume
from medir.errors import EmptyStore, ModelMismatch
from runner.query_service import search_file
from search.query import QueryOptions, search_indexed
from search.store import READY, Filter, collection_name
from search.store_edge import EdgeStore

COLL = collection_name("test-tiny")


def _blob_volume(kind: int, n: int = 12, seed: int = 0) -> np.ndarray:
    """Distinct synthetic 'anatomies': a disc, a ring, or stripes, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:48, :48]
    r = np.hypot(x - 24, y - 24)
    base = {0: (r < 14).astype(float), 1: ((r > 10) & (r < 18)).astype(float),
            2: ((x // 6) % 2).astype(float)}[kind]
    vol = np.stack([base * (0.5 + 0.5 * np.sin(z / n * np.pi)) for z in range(n)], axis=-1)
    return (vol * 1000 + rng.normal(0, 20, vol.shape)).astype(np.float32)


@pytest.fixture
def files(make_nifti) -> list[Path]:
    return [make_nifti(_blob_volume(k % 3, seed=k), np.diag([1, 1, 2.0, 1]),
                       name=f"case{k}.nii.gz") for k in range(6)]


def test_ingest_then_query(tmp_path: Path, files: list[Path], make_nifti) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    labels = {f"case{k}": {"modality": ["CT", "MR", "CT"][k % 3], "region": "x"}
              for k in range(6)}
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths(files, store, emb, labels=labels, upsert_batch=5)
        assert [r.status for r in reports] == ["indexed"] * 6
        assert store.count(COLL, READY) == 6 * 12
        # payload contract
        rec = next(store.scroll(COLL, Filter({"volume_id": "case1", "slice": 3})))
        p = rec.payload
        assert p["case_id"] == "case1" and p["n_slices"] == 12 and p["z_mm"] == 6.0
        assert p["spacing"] == [1.0, 1.0, 2.0] and p["modality"] == "MR"
        assert p["embedder"] == "test-tiny@1" and p["state"] == "ready"
        assert len(p["sha256"]) == 64 and p["source"].endswith("case1.nii.gz")
        # re-ingest is skipped, no duplicates
        again = ingest_paths(files[:2], store, emb, labels=labels)
        assert [r.status for r in again] == ["skipped", "skipped"]
        assert store.count(COLL) == 72
        # query with an indexed file: itself is excluded, its twin (same kind) wins
        res = search_file(files[0], store, emb, QueryOptions(weighting="none"))
        assert res.ranking[0].volume_id == "case3"
        assert "case0" not in [r.volume_id for r in res.ranking]
        assert res.ranking[0].labels["modality"] == "CT"
        assert res.chosen_slices == list(range(12))
        # the same query by id reuses stored vectors and agrees
        by_id = search_indexed("case0", store, emb, QueryOptions(weighting="none"))
        assert [r.volume_id for r in by_id.ranking] == [r.volume_id for r in res.ranking]
        # a new, unindexed volume
        new = make_nifti(_blob_volume(1, seed=99), name="new.nii.gz")
        res = search_file(new, store, emb, QueryOptions(sampling="every-n:3", k=2))
        assert res.ranking[0].volume_id in ("case1", "case4")
        assert res.chosen_slices == [0, 3, 6, 9]
        # label filter
        res = search_file(new, store, emb, QueryOptions(filters={"modality": ["CT"]}))
        assert {r.labels["modality"] for r in res.ranking} == {"CT"}


def test_changed_file_replaces_old_version(tmp_path: Path, make_nifti) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    p = make_nifti(_blob_volume(0), name="vol.nii.gz")
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths([p], store, emb)
        make_nifti(_blob_volume(2, n=7), name="vol.nii.gz")
        [r] = ingest_paths([p], store, emb)
        assert r.status == "indexed"
        assert store.count(COLL) == 7 and store.count(COLL, READY) == 7


def test_bad_files_are_reported_and_others_go_in(tmp_path: Path, files: list[Path],
                                                 make_nifti) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    bad_nan = _blob_volume(0)
    bad_nan[:, :, :-1] = np.nan  # mostly non-finite: refused (a few NaN become background)
    bad = [make_nifti(bad_nan, name="nan.nii.gz"), tmp_path / "missing.nii.gz",
           make_nifti(np.zeros((5, 5), np.float32), name="flat.nii.gz")]
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths([files[0], *bad, files[1]], store, emb)
        assert [r.status for r in reports] == ["indexed", "failed", "failed", "failed",
                                               "indexed"]
        assert "NaN" in reports[1].error and "nan.nii.gz" in reports[1].error
        assert "no such file" in reports[2].error
        assert "2D image" in reports[3].error
        assert store.count(COLL) == 24


def test_failure_mid_volume_leaves_no_points(tmp_path: Path, files: list[Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        ingest_paths(files[:1], store, emb)
        calls = {"n": 0}
        real_upsert = store.upsert

        def flaky(name: str, points: list) -> None:  # type: ignore[type-arg]
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("disk full")
            real_upsert(name, points)

        monkeypatch.setattr(store, "upsert", flaky)
        with pytest.raises(RuntimeError):
            ingest_paths(files[1:2], store, emb, upsert_batch=5)
        assert store.count(COLL) == 12  # only the first volume, nothing half-written
        assert store.count(COLL, Filter({"volume_id": "case1"})) == 0


def test_query_errors(tmp_path: Path, files: list[Path]) -> None:
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        with pytest.raises(EmptyStore, match="empty"):
            search_file(files[0], store, emb, QueryOptions())
        store.ensure_collection("medir_other_model", 8)
        with pytest.raises(ModelMismatch, match="other_model"):
            search_file(files[0], store, emb, QueryOptions())
        ingest_paths(files[:2], store, emb)
        # same name, other version: mismatch
        emb.info = type(emb.info)(**{**emb.info.__dict__, "version": "2"})
        with pytest.raises(ModelMismatch, match="test-tiny@1"):
            search_file(files[0], store, emb, QueryOptions())


def test_4d_file_gives_one_volume_per_index(tmp_path: Path, make_nifti) -> None:
    data = np.stack([_blob_volume(0, n=6), _blob_volume(1, n=6)], axis=-1)
    path = make_nifti(data, name="fmri.nii.gz")
    assert open_volume(path).n_volumes == 2
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths([path], store, emb)
        assert [r.volume_id for r in reports] == ["fmri#0", "fmri#1"]
        assert store.facet(COLL, "volume_id") == {"fmri#0": 6, "fmri#1": 6}
        res = search_file(path, store, emb, QueryOptions(), index_4d=0)
        assert [r.volume_id for r in res.ranking] == ["fmri#1"]  # itself excluded
