"""The Table III grid on a tiny MSD-layout dataset made in code (nibabel, tmp folder)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmarks.cache import EmbeddingCache, build_cache
from benchmarks.datasets import LEAVE_ONE_OUT, SPLIT, load_dataset
from benchmarks.grid import GridConfig, parse_variant, run_grid
from benchmarks.report import write_report
from medir.errors import ConfigError

SHAPE = (32, 32)  # in-plane voxels (x, y)


class TinyEmbedder:
    """Deterministic 64-d features: 8×8 block means of the slice, L2-normalised."""

    name = "tiny"
    embedder_id = "tiny@1"
    dim = 64
    batch_size = 16

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.slices = 0
        self.fail_after = fail_after

    def embed(self, slices: np.ndarray) -> np.ndarray:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        x = np.asarray(slices, np.float32)
        n, h, w = x.shape
        ph, pw = h // 8, w // 8
        f = x[:, : ph * 8, : pw * 8].reshape(n, 8, ph, 8, pw).mean(axis=(2, 4)).reshape(n, 64)
        f = f + 1e-3
        self.slices += n
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


def _pattern(task: str, rng: np.random.Generator, nz: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SHAPE[1], 0:SHAPE[0]] / (SHAPE[0] - 1)
    if task == "brain":  # a bright central disk
        img = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).astype(np.float32)
    elif task == "spleen":  # a block on one side
        img = ((xx < 0.35) & (yy > 0.3)).astype(np.float32)
    else:  # lung: horizontal stripes
        img = (np.sin(yy * 18.0) > 0).astype(np.float32)
    vol = np.repeat(img.T[:, :, None], nz, axis=2) * 100.0
    return (vol + rng.normal(0.0, 4.0, vol.shape)).astype(np.float32)


def _write(path: Path, data: np.ndarray, zoom: float) -> None:
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, zoom, 1.0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    """Three tasks: BRATS-like 4D (2 protocols), spleen, lung; 3 train and 2 test files each."""
    root = tmp_path / "msd"
    rng = np.random.default_rng(0)
    tasks = {"Task01_BrainTumour": "brain", "Task09_Spleen": "spleen", "Task06_Lung": "lung"}
    for folder, kind in tasks.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "dataset.json").write_text(json.dumps({"name": folder, "modality": {"0": "x"}}))
        for split, n in (("imagesTr", 3), ("imagesTs", 2)):
            for i in range(n):
                nz = int(rng.integers(6, 12))
                vol = _pattern(kind, rng, nz)
                if kind == "brain":
                    vol = np.stack([vol, vol * 0.5 + 10.0], axis=3)
                _write(d / split / f"{kind}_{split}_{i:03d}.nii.gz", vol, float(rng.choice([2, 3])))
        (d / "imagesTr" / "._brain_resource_fork.nii.gz").write_bytes(b"junk")
    return root


def test_msd_layout_labels_split_and_4d(msd: Path, tmp_path: Path) -> None:
    ds = load_dataset(msd)
    assert ds.protocol == SPLIT
    assert len(ds.database) == 9 and len(ds.queries) == 6
    brain = [c for c in ds.cases if c.group == "Task01_BrainTumour"]
    assert {c.labels["organ"] for c in brain} == {"brain"}
    assert brain[0].labels == {"modality": "MR", "region": "head", "organ": "brain"}
    lung = next(c for c in ds.cases if c.group == "Task06_Lung")
    assert lung.labels == {"modality": "CT", "region": "chest", "organ": "lung"}
    cache = EmbeddingCache(tmp_path / "cache", "tiny")
    entries = build_cache(cache, [c.path for c in brain[:1]], TinyEmbedder(), progress=False)
    (got,) = entries.values()
    assert [e.index_4d for e in got] == [0, 1]  # one 3D volume per protocol
    assert load_dataset(msd, tasks=[9], limit=1).summary()["n_cases"] == 2


def test_unknown_task_is_a_config_error(tmp_path: Path) -> None:
    d = tmp_path / "Task42_Mystery"
    d.mkdir()
    (d / "dataset.json").write_text("{}")
    with pytest.raises(ConfigError, match="Table I"):
        load_dataset(tmp_path)


def test_cache_resumes_after_a_killed_run(msd: Path, tmp_path: Path) -> None:
    files = sorted(msd.rglob("*_imagesTr_*.nii.gz"))
    cache_dir = tmp_path / "cache"
    dying = TinyEmbedder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        build_cache(EmbeddingCache(cache_dir, "tiny"), files, dying, progress=False)
    done = len(EmbeddingCache(cache_dir, "tiny"))
    assert 0 < done < 12  # whole volumes kept, the rest still missing
    assert not list(cache_dir.rglob("*.part"))
    again = TinyEmbedder()
    build_cache(EmbeddingCache(cache_dir, "tiny"), files, again, progress=False)
    cache = EmbeddingCache(cache_dir, "tiny")
    assert len(cache) == 12  # 3 brain files × 2 protocols + 6 others
    assert 0 < again.calls < 12 + 3  # only what was missing was embedded
    third = TinyEmbedder()
    build_cache(cache, files, third, progress=False)
    assert third.calls == 0
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["n_volumes"] == 12
    assert manifest["n_slices"] == sum(e.n_slices for e in cache.entries)


def test_variants_parse() -> None:
    assert parse_variant("W").weighting.kind == "gaussian"
    assert parse_variant("SW").slice_wise
    v = parse_variant("every-mm:7")
    assert (v.group, v.column, v.sampling.kind) == ("every-mm", "7", "every-mm")
    assert parse_variant("random:5").sampling.value == 5
    with pytest.raises(ConfigError):
        parse_variant("sometimes")


def test_grid_on_tiny_msd(msd: Path, tmp_path: Path) -> None:
    cfg = GridConfig.load()
    assert len(cfg.variants) == 17  # the paper's Table III columns
    cfg.indexes = ["flat", "hnsw:M=8,efC=32,efS=32", "lsh:nbits=128"]
    emb = TinyEmbedder()
    run = run_grid(load_dataset(msd), ["tiny"], cfg, tmp_path / "cache", lambda _: emb,
                   progress=False)
    assert len(run.cells) == 3 * 17
    assert run.models[0]["n_volumes"] == 15 + 5  # 4D brain files count twice
    flat_all = next(c for c in run.cells if c.index == "flat" and c.variant.name == "all")
    assert flat_all.n_queries == 6  # cases, not protocols
    # The three synthetic tasks are trivially separable: exact search gets them all right.
    for level in ("modality", "region", "organ"):
        assert flat_all.metrics[level].accuracy == 1.0
    sw = next(c for c in run.cells if c.index == "flat" and c.variant.name == "SW")
    assert sw.n_queries == run.models[0]["query_slices"]  # SW scores every query slice
    for q, p in flat_all.predictions:  # database cases are train files of the same task
        assert "imagesTr" not in q and "_imagesTr_" in p and q.split("/")[0] == p.split("/")[0]

    files = write_report(run, tmp_path / "out")
    doc = json.loads(files["json"].read_text())
    assert len(doc["cells"]) == 51 and doc["git"]["commit"]
    assert doc["dataset"]["n_queries"] == 6 and doc["timings"]["total_seconds"] > 0
    table = files["table_region_precision"].read_text()
    assert "| abdomen | flat | tiny |" in table and "Overall average" in table
    header = next(line for line in table.splitlines() if line.startswith("| Region"))
    assert header.count("|") == 3 + 17 + 1
    with open(files["classes_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    head = [r for r in rows if r["index"] == "flat" and r["variant"] == "all"
            and r["level"] == "region" and r["class"] == "head"]
    assert head and head[0]["support"] == "2" and float(head[0]["recall"]) == 1.0
    for name in ("heatmap_region_recall", "heatmap_organ_precision"):
        assert files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(files[k].name for k in files if k.startswith("confusion_"))[0].startswith(
        "confusion_organ_tiny_flat_")


def test_leave_one_out_never_finds_itself(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "coll"
    rows = ["case_id,file,modality,region,organ,dataset,split,source,license,sha256"]
    for i, kind in enumerate(["brain", "brain", "lung", "lung", "spleen", "spleen"]):
        name = f"{kind}{i}"
        _write(root / f"{name}.nii.gz", _pattern(kind, rng, 8), 2.0)
        region = {"brain": "head", "lung": "chest", "spleen": "abdomen"}[kind]
        rows.append(f"{name},{name}.nii.gz,CT,{region},{kind},t,,x,x,x")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(root)
    assert ds.protocol == LEAVE_ONE_OUT
    cfg = GridConfig(k=3, indexes=["flat", "qdrant"], variants=["all", "SW"])
    run = run_grid(ds, ["tiny"], cfg, tmp_path / "cache", lambda _: TinyEmbedder(),
                   progress=False)
    for cell in run.cells:
        if cell.variant.slice_wise:
            continue
        assert all(q != p for q, p in cell.predictions)
        # each case's only other same-task case is the answer
        assert cell.metrics["organ"].accuracy == 1.0
