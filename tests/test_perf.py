"""The pipelined ingest is a pure speed-up: same points, bit-identical vectors, bounded memory;
and the performance benchmarks run at tiny sizes and write the documented JSON."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.pipeline import PipelineStats, index_volume, ingest_paths
from ingest.reader import open_volume
from medir.cli.bench_perf import app
from search.store import SliceStore, collection_name
from search.store_edge import EdgeStore

COLL = collection_name("test-tiny")


def _volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(100.0, 30.0, shape).astype(np.float32)
    base[tuple(slice(s // 4, 3 * s // 4) for s in shape[:3])] += 400.0
    return base


def _points(store: SliceStore) -> dict[str, tuple[dict[str, object], np.ndarray]]:
    """Points by (volume, slice); the write generation (in the id too) differs per write."""
    out = {}
    for r in store.scroll(COLL, with_vectors=True):
        assert r.vector is not None
        payload = dict(r.payload)
        assert payload.pop("gen")
        out[f"{payload['volume_id']}|{payload['slice']}"] = (payload, r.vector)
    return out


@pytest.fixture
def mixed_files(make_nifti) -> list[Path]:
    """Small volumes of several shapes (batches span volumes), a 4D .nii.gz, a bad file."""
    files = [make_nifti(_volume((20 + 4 * k, 24, 3 + k % 5), k), name=f"s{k}.nii.gz")
             for k in range(9)]
    files.append(make_nifti(_volume((16, 20, 5, 4), 42), name="four_d.nii.gz"))
    files.insert(4, make_nifti(np.zeros((5, 5), np.float32), name="flat.nii.gz"))
    files.append(make_nifti(_volume((40, 36, 37), 7), name="big.nii.gz"))
    return files


def test_pipelined_ingest_equals_sequential(tmp_path: Path, mixed_files: list[Path]) -> None:
    emb = get_embedder("test-tiny", device="cpu", batch_size=8)
    stats = PipelineStats()
    with EdgeStore(tmp_path / "p") as store:
        reports = ingest_paths(mixed_files, store, emb, stats=stats, prefetch=2)
        fast = _points(store)
    with EdgeStore(tmp_path / "s") as store:
        ref_reports = []
        for f in mixed_files:
            try:
                vf = open_volume(f)
            except Exception:
                continue
            for k in range(vf.n_volumes):
                ref_reports.append(index_volume(store, emb, vf.read(k if vf.is_4d else None)))
        slow = _points(store)
    assert [r.volume_id for r in reports if r.status == "indexed"] == \
        [r.volume_id for r in ref_reports]
    assert [r.status for r in reports][4] == "failed"  # in input order, others went on
    assert stats.mixed_batches > 0  # small volumes really shared batches
    assert fast.keys() == slow.keys()
    for pid, (payload, vec) in fast.items():
        ref_payload, ref_vec = slow[pid]
        assert payload == ref_payload
        assert np.array_equal(vec, ref_vec), pid  # bit-identical
    # re-ingest: everything skipped, nothing embedded
    again = PipelineStats()
    with EdgeStore(tmp_path / "p") as store:
        rep2 = ingest_paths(mixed_files, store, emb, stats=again)
    assert {r.status for r in rep2} == {"skipped", "failed"} and again.slices == 0


def test_memory_is_bounded_independent_of_volume_count(tmp_path: Path, make_nifti) -> None:
    emb = get_embedder("test-tiny", device="cpu", batch_size=4)
    prefetch = 2
    peaks = {}
    for n in (3, 30):
        files = [make_nifti(_volume((24, 24, 6), k), name=f"n{n}_{k}.nii.gz") for k in range(n)]
        st = PipelineStats()
        with EdgeStore(tmp_path / f"m{n}") as store:
            ingest_paths(files, store, emb, stats=st, prefetch=prefetch)
        assert st.volumes == n and st.slices == 6 * n
        slice_bytes = 3 * 32 * 32 * 4  # a prepared test-tiny slice
        # queued chunks + the partial batch + the chunk in hand, each ≤ batch_size slices
        assert st.peak_queue_chunks <= prefetch
        assert st.peak_buffered_bytes <= (prefetch + 2) * emb.batch_size * slice_bytes
        assert st.peak_open_volumes <= prefetch + emb.batch_size + 1
        peaks[n] = (st.peak_buffered_bytes, st.peak_open_volumes)
    assert peaks[30][0] <= peaks[3][0] * 2 and peaks[30][1] <= prefetch + emb.batch_size + 1


def test_4d_gz_is_decompressed_once(tmp_path: Path, make_nifti,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    k = 8
    path = make_nifti(_volume((32, 32, 6, k), 3), name="series.nii.gz")
    raw_bytes = 32 * 32 * 6 * k * 4
    decoded = [0]
    real_read = gzip._GzipReader.read  # type: ignore[attr-defined]

    def counting(self: Any, size: int = -1) -> bytes:
        data: bytes = real_read(self, size)
        decoded[0] += len(data)
        return data

    monkeypatch.setattr(gzip._GzipReader, "read", counting)  # type: ignore[attr-defined]
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "s") as store:
        reports = ingest_paths([path], store, emb)
    assert [r.status for r in reports] == ["indexed"] * k
    # volume by volume through fresh handles would decode k(k+1)/2 volumes ≈ 4.5× the file
    assert decoded[0] <= 1.3 * raw_bytes, (decoded[0], raw_bytes)


def test_perf_cli_writes_json(tmp_path: Path, make_nifti) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    for k in range(3):
        make_nifti(_volume((24, 20, 12), k), name=f"samples/v{k}.nii.gz")
    out = tmp_path / "out"
    run = CliRunner().invoke
    # --allow-busy: this checks the JSON, not figures; tests run beside other jobs
    common = ["--model", "test-tiny", "--device", "cpu", "--batch-size", "8", "--out", str(out),
              "--allow-busy"]
    res = run(app, ["ingest", *common, "--samples", str(samples), "--synthetic-scale", "0.05",
                    "--ceiling-batches", "1"])
    assert res.exit_code == 0, res.output
    res = run(app, ["query", *common, "--samples", str(samples), "--query", "v1.nii.gz",
                    "--repeats", "1"])
    assert res.exit_code == 0, res.output
    res = run(app, ["store", "--out", str(out), "--allow-busy", "--points", "1500", "--ef", "32",
                    "--repeats", "2"])
    assert res.exit_code == 0, res.output
    res = run(app, ["memory", *common, "--size-gb", "0.002", "--shape", "32x32x8"])
    assert res.exit_code == 0, res.output

    docs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(docs) == {"ingest", "query", "store", "memory"}
    for doc in docs.values():
        assert {"machine", "git", "params", "results", "time"} <= doc.keys()
        assert "commit" in doc["git"] and doc["machine"]["load_average_1min"] is not None
    ing = docs["ingest"]["results"]
    assert ing["ceiling"]["slices_per_s"] > 0
    for coll in ("samples", "synthetic"):
        c = ing["collections"][coll]
        assert {"read_s", "intensity_resize_s", "embed_s", "upsert_s", "slices_per_s"} <= \
            c["pipelined"].keys()
        assert c["equivalence"]["same_point_ids"] and c["equivalence"]["max_abs_diff"] == 0.0
        assert c["fraction_of_forward_only"] > 0
    q = docs["query"]["results"]["by_size"]
    assert set(q) == {"10", "100", "all"}
    assert {"embed_ms", "knn_ms", "vote_ms", "knn_vote_ms"} <= q["10"].keys()
    s = docs["store"]["results"]["1500"]
    assert s["points"] == 1500 and s["upsert_points_per_s"] > 0
    assert {"knn_p50_ms", "vote_p50_ms", "recall_at_1"} <= s["by_ef"]["32"].keys()
    m = docs["memory"]["results"]
    assert m["runs"]["full"]["indexed"] == m["runs"]["full"]["n_volumes"]
    assert m["peak_rss_bytes"] > 0 and m["peak_ratio_full_vs_quarter"] > 0


# ---- one pass over a .nii.gz (issue 24) -------------------------------------------------------
def _scaled_image(shape: tuple[int, ...], seed: int, kind: str) -> Any:
    """A NIfTI image whose file data is int16 with slope/intercept, uint8, float32 with a NaN,
    or big-endian int16, on an oblique, flipped affine."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    affine = np.array([[-0.9, 0.1, 0.0, 10.0], [0.0, 0.8, 0.2, -5.0], [0.0, 0.0, 2.5, 3.0],
                       [0.0, 0.0, 0.0, 1.0]])
    if kind == "scaled":
        img = nib.Nifti1Image(rng.normal(-300.0, 400.0, shape), affine)
        img.set_data_dtype(np.int16)  # nibabel picks scl_slope / scl_inter on save
    elif kind == "uint8":
        img = nib.Nifti1Image(rng.integers(0, 255, shape, dtype=np.uint8), affine)
    elif kind == "float-nan":
        data = rng.normal(0.0, 1.0, shape).astype(np.float32)
        data[0, 0, 0] = np.nan
        img = nib.Nifti1Image(data, affine)
    else:  # big-endian
        img = nib.Nifti1Image(rng.integers(-1000, 1000, shape, dtype=np.int16), affine,
                              nib.Nifti1Header(endianness=">"))
    return img


@pytest.fixture
def gz_counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of what the reader does with a .nii.gz: bytes its bounded decompression yields,
    gzip streams it (re)opens to read voxels, separate sha256 passes over the file."""
    import ingest.limits as limits
    import ingest.reader as reader

    counts = {"decompressed": 0, "reopened": 0, "hashed": 0}
    real_decompressor, real_open, real_sha = (limits.gzip_decompressor, reader.open_gzip,
                                              reader.file_sha256)

    class Counting:
        def __init__(self) -> None:
            self.inner = real_decompressor()

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out: bytes = self.inner.decompress(data, max_length)
            counts["decompressed"] += len(out)
            return out

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    def reopen(p: Any) -> Any:
        counts["reopened"] += 1
        return real_open(p)

    def sha(p: Any) -> str:
        counts["hashed"] += 1
        return real_sha(p)

    monkeypatch.setattr(limits, "gzip_decompressor", Counting)  # the bounded decompression
    monkeypatch.setattr(reader, "open_gzip", reopen)
    monkeypatch.setattr(reader, "file_sha256", sha)
    return counts


@pytest.mark.parametrize("kind", ["scaled", "uint8", "float-nan", "big-endian", "two-members"])
def test_nii_gz_read_in_one_pass(tmp_path: Path, kind: str, gz_counts: dict[str, int]) -> None:
    """Size check, content hash and voxels come from ONE decompression of a 3D .nii.gz, and
    equal bit for bit what the two-pass reading gave (hash of the file's bytes, voxels read
    through a fresh gzip stream) and what the uncompressed file gives."""
    import nibabel as nib

    from ingest.digest import file_sha256

    img = _scaled_image((40, 36, 12), 5, "scaled" if kind == "two-members" else kind)
    path = tmp_path / "vol.nii.gz"
    nib.save(img, str(path))
    plain = tmp_path / "vol.nii"
    nib.save(img, str(plain))
    if kind == "two-members":  # a valid gzip file of two members (e.g. concatenated parts)
        raw = plain.read_bytes()
        path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    decoded_size = plain.stat().st_size

    vf = open_volume(path)
    vol = vf.read()
    assert gz_counts == {"decompressed": decoded_size, "reopened": 0, "hashed": 0}
    assert vol.sha256 == file_sha256(path)  # the content identity of stored points is unchanged

    again = vf.read()  # a second read streams the file again: the two-pass path's voxels
    assert gz_counts["reopened"] == 1
    reference = open_volume(plain).read()
    for other in (again, reference):
        assert other.data.dtype == vol.data.dtype and other.spacing == vol.spacing
        assert np.array_equal(other.data, vol.data, equal_nan=True)
        assert other.data.tobytes() == vol.data.tobytes()
    assert vol.warnings == again.warnings


def test_large_or_4d_gz_not_kept_after_opening(tmp_path: Path, make_nifti,
                                               gz_counts: dict[str, int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4D file (read one volume at a time) and a 3D file above ONE_PASS_MAX_BYTES keep
    nothing from the opening pass (their voxels come from a fresh stream); the hash still
    comes from it."""
    import ingest.reader as reader
    from ingest.digest import file_sha256

    series = make_nifti(_volume((16, 16, 4, 3), 1), name="series.nii.gz")
    vf = open_volume(series)
    assert vf.sha256 == file_sha256(series) and gz_counts["hashed"] == 0
    vf.read(2)
    assert gz_counts["reopened"] == 1

    monkeypatch.setattr(reader, "ONE_PASS_MAX_BYTES", 100)
    big = make_nifti(_volume((16, 16, 4), 2), name="big.nii.gz")
    vf = open_volume(big)
    assert vf.sha256 == file_sha256(big) and gz_counts["hashed"] == 0
    assert vf.read().n_slices == 4 and gz_counts["reopened"] == 2


def test_query_latency_bench_interleaves_variants(tmp_path: Path, make_nifti) -> None:
    """``bench perf query-latency`` (issue 24's one command for the query levers): a resampled
    query, variants (model × capped sampling) interleaved over rounds, medians, spread and
    per-round ratios to the first variant, and the load. No figure is checked, only shape."""
    samples = tmp_path / "samples"
    samples.mkdir()
    make_nifti(_volume((24, 20, 12), 0), name="samples/db.nii.gz")
    make_nifti(_volume((24, 20, 10), 1), np.diag([1.0, 1.0, 3.0, 1.0]), name="samples/q.nii.gz")
    out = tmp_path / "ql.json"
    res = CliRunner().invoke(app, [
        "query-latency", "--out", str(out), "--models", "test-tiny", "--samples", str(samples),
        "--index", "db.nii.gz", "--query", "q.nii.gz", "--resample-query", "24x20x30",
        "--resample-z-mm", "1", "--sampling", "every-mm:2", "--sampling", "every-mm:2,max=4",
        "--repeats", "3", "--warmup", "1", "--batch-size", "8", "--allow-busy"])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    r = doc["results"]
    base, capped = "test-tiny|every-mm:2", "test-tiny|every-mm:2,max=4"
    assert r["baseline"] == base and set(r["rows"]) == {base, capped}
    assert r["rows"][base]["query_slices"] == 30 and r["rows"][base]["slices"] == 15
    assert r["rows"][capped]["slices"] == 4
    assert len(r["rounds"]) == 3 and r["rounds"][0]["order"] != r["rounds"][1]["order"]
    assert r["vs_baseline"][base]["total_s_ratio"] == [1.0, 1.0, 1.0]
    assert len(r["spread"][capped]["total_s"]["rounds"]) == 3
    assert {"read_s", "embed_s", "knn_s", "vote_s", "knn_vote_fraction"} <= r["rows"][capped].keys()
    assert "busy" in doc and doc["load"]["start"]["load_1min"] is not None


def test_store_bench_scores_hnsw_against_exact_search(tmp_path: Path) -> None:
    """The store bench fills a store of the asked size, queries it per ``ef`` and compares
    with exact search: a noisy copy of one volume's slices finds that volume's slices."""
    from benchmarks.perf.store_scale import bench_store

    out = bench_store(2000, dim=32, per_volume=200, query_slices=50, repeats=1, efs=(32, 64),
                      keep_dir=tmp_path)
    assert out["points"] == 2000
    assert set(out["by_ef"]) == {"32", "64"}
    for row in out["by_ef"].values():
        assert row["recall_at_1"] >= 0.9
        assert row["top_volume_matches_exact"] is True
        assert row["knn_p50_ms"] > 0
    assert list(tmp_path.iterdir()) == []  # the store is deleted afterwards
