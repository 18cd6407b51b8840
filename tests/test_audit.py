"""The near-duplicate audit on volumes made in code, indexed with a small real embedder.

Known duplicates: an exact re-saved copy, a z-crop, a copy with noise. Known non-duplicates:
volumes of other synthetic anatomies (and other random textures of the same shape)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.pipeline import ingest_paths
from search.audit import audit_duplicates, combine, directed_matches, similarity_matrix
from search.store import Hit, collection_name
from search.store_edge import EdgeStore
from search.volumes import VolumeInfo

COLL = collection_name("test-tiny")


def _textured(seed: int, n: int = 16) -> np.ndarray:
    """A volume whose slices are smooth random textures changing slowly along z."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (6, 6, n // 4 + 2))
    from scipy.ndimage import zoom

    vol = zoom(coarse, (48 / 6, 48 / 6, (n + 8) / coarse.shape[2]), order=3)[:, :, :n]
    return (vol * 300 + 200).astype(np.float32)


@pytest.fixture
def audited(tmp_path: Path, make_nifti):
    base = [_textured(s) for s in range(4)]
    rng = np.random.default_rng(7)
    files = [make_nifti(v, np.diag([1, 1, 2.0, 1]), name=f"case{i}.nii.gz")
             for i, v in enumerate(base)]
    files.append(make_nifti(base[0].copy(), np.diag([1, 1, 2.0, 1]), name="copy0.nii.gz"))
    files.append(make_nifti(base[1][:, :, 4:12].copy(), np.diag([1, 1, 2.0, 1]),
                            name="zcrop1.nii.gz"))
    files.append(make_nifti(base[2] + rng.normal(0, 5, base[2].shape).astype(np.float32),
                            np.diag([1, 1, 2.0, 1]), name="noisy2.nii.gz"))
    labels = {"case0": {"split": "train"}, "case1": {"split": "train"},
              "case2": {"split": "train"}, "case3": {"split": "train"},
              "copy0": {"split": "test"}, "zcrop1": {"split": "test"},
              "noisy2": {"split": "train"}}
    emb = get_embedder("test-tiny", device="cpu")
    store = EdgeStore(tmp_path / "s")
    reports = ingest_paths(files, store, emb, labels=labels, intensity="percentile")
    assert [r.status for r in reports] == ["indexed"] * len(files)
    yield store
    store.close()


def test_audit_finds_copies_and_crops_not_distinct_cases(audited: EdgeStore) -> None:
    pairs = audit_duplicates(audited, COLL, slice_min=0.99, pair_min=0.5)
    found = {frozenset((p.a, p.b)) for p in pairs}
    assert frozenset(("case0", "copy0")) in found
    assert frozenset(("case1", "zcrop1")) in found
    assert frozenset(("case2", "noisy2")) in found
    distinct = {frozenset((f"case{i}", f"case{j}")) for i in range(4) for j in range(i + 1, 4)}
    assert not (found & distinct), sorted(map(sorted, found & distinct))
    crop = next(p for p in pairs if {p.a, p.b} == {"case1", "zcrop1"})
    # the crop is covered whole; its range in case1 is the cropped slices 4..11 (z 8..22 mm)
    crop_cov = crop.coverage_b if crop.b == "zcrop1" else crop.coverage_a
    assert crop_cov == pytest.approx(1.0)
    rng = crop.a_range if crop.a == "case1" else crop.b_range
    assert rng is not None and 3 <= rng.first <= 5 and 10 <= rng.last <= 12
    copy = next(p for p in pairs if {p.a, p.b} == {"case0", "copy0"})
    assert copy.score > 0.99 and copy.coverage_a == pytest.approx(1.0)


def test_audit_across_a_label_keeps_only_pairs_that_cross_it(audited: EdgeStore) -> None:
    pairs = audit_duplicates(audited, COLL, slice_min=0.99, across="split")
    assert {frozenset((p.a, p.b)) for p in pairs} == {
        frozenset(("case0", "copy0")), frozenset(("case1", "zcrop1"))}
    ids, m = similarity_matrix(pairs)
    assert m.shape == (len(ids), len(ids)) and np.allclose(m, m.T)
    with pytest.raises(ValueError, match="label keys"):
        audit_duplicates(audited, COLL, across="patient")


def test_directed_matches_and_combine_are_pure() -> None:
    def hit(vid: str, s: int, score: float) -> Hit:
        return Hit(f"{vid}{s}", score, {"volume_id": vid, "slice": s, "z_mm": 2.0 * s})

    q = [(0, 0.0), (1, 2.0), (2, 4.0), (3, 6.0)]
    hits = [[hit("b", 5, 0.99), hit("c", 0, 0.5)], [hit("b", 6, 0.98)], [hit("c", 1, 0.97)],
            [hit("b", 8, 0.9)]]
    d = directed_matches(q, hits, slice_min=0.95)
    assert set(d) == {"b", "c"} and d["b"].matched == 2 and d["c"].matched == 1
    info = {vid: VolumeInfo(vid, COLL, "", n, n, "ready", "e", "none", "", "g")
            for vid, n in (("a", 4), ("b", 20))}
    pair = combine(info["a"], info["b"], d["b"], None)
    assert pair.coverage_a == pytest.approx(0.5) and pair.coverage_b == 0.0
    assert pair.score == pytest.approx(0.5 * np.median([0.99, 0.98]))
    assert pair.b_range is not None and (pair.b_range.first, pair.b_range.last) == (5, 6)
    assert pair.row()["b_z_mm"] == "10.0-12.0"


def test_bench_audit_scores_known_duplicates(tmp_path: Path) -> None:
    """The audit bench on a synthetic collection: perturbed copies are the known duplicates,
    distinct cases the known non-duplicates; its JSON says how many of each it got right."""
    import json

    import nibabel as nib
    from typer.testing import CliRunner

    from ingest.labels import EVAL_MANIFEST_COLUMNS, write_manifest
    from medir.cli import app

    coll = tmp_path / "coll"
    coll.mkdir()
    rows = []
    for name, seed, study in (("ct_a", 0, "s1"), ("ct_a_crop", 0, "s1"), ("ct_b", 1, "s2"),
                              ("mr_a", 2, "s3"), ("mr_b", 3, "s4")):
        vol = _textured(seed, n=24)
        vol = vol[:, :, 6:18] if name.endswith("crop") else vol
        nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1.0])),
                 str(coll / f"{name}.nii.gz"))
        rows.append({"case_id": name, "file": f"{name}.nii.gz", "modality": name[:2].upper(),
                     "region": "x", "case": study, "dataset": "t"})
    write_manifest(coll / "manifest.csv", rows, EVAL_MANIFEST_COLUMNS)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [
        "bench", "audit", "--dataset", str(coll), "--model", "test-tiny", "--perturb",
        "z50,lps,noise", "--cache", str(tmp_path / "c"), "--out", str(out), "--no-progress",
        "--allow-busy"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "audit.json").read_text())
    assert doc["git"]["commit"] and doc["n_originals"] == 5
    assert doc["n_volumes"] == 5 * 4  # each volume and its three copies
    best = doc["best"]
    # known duplicates: case s1 holds ct_a and ct_a_crop with 3 copies each (28 pairs, 6 of
    # them copy~copy of one volume, not judged); the 3 other cases 3 (volume, copy) pairs each
    assert best["tp"] + best["fn"] == 22 + 3 * 3
    assert best["recall"] >= 0.8 and best["precision"] >= 0.9, best
    assert len(doc["grid"]) == 5 * 7


def test_cli_audit_export_and_feedback(tmp_path: Path, make_nifti) -> None:
    """`medir audit duplicates` (table, --json, --csv, --plot) and `medir search --like
    --export` through the real command line, in-process."""
    import json

    import pandas as pd

    from tests.test_cli import medir

    base = [_textured(s) for s in range(3)]
    files = [make_nifti(v, np.diag([1, 1, 2.0, 1]), name=f"case{i}.nii.gz")
             for i, v in enumerate(base)]
    files.append(make_nifti(base[0][:, :, 2:14].copy(), np.diag([1, 1, 2.0, 1]),
                            name="crop0.nii.gz"))
    env = {"MEDIR_STORE_PATH": str(tmp_path / "store"), "MEDIR_MODEL": "test-tiny"}
    r = medir("ingest", *files, env=env)
    assert r.returncode == 0, r.stderr
    r = medir("audit", "duplicates", "--slice-min", "0.99", "--json", env=env)
    assert r.returncode == 0, r.stderr
    pairs = json.loads(r.stdout)
    assert [(p["a"], p["b"]) for p in pairs] == [("case0", "crop0")]
    assert pairs[0]["coverage_b"] == 1.0 and pairs[0]["b_range"]["last"] == 11
    csv, png = tmp_path / "pairs.csv", tmp_path / "pairs.png"
    r = medir("audit", "duplicates", "--slice-min", "0.99", "--csv", csv, "--plot", png, env=env)
    assert r.returncode == 0, r.stderr
    assert "case0" in r.stdout and "1 pairs" in r.stdout
    assert list(pd.read_csv(csv)["b"]) == ["crop0"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    r = medir("audit", "duplicates", "--across", "patient", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "label keys" in r.stderr
    # a cohort export of a query refined by a mark: the marked volume is left out
    cohort = tmp_path / "cohort.csv"
    r = medir("search", "case0", "--id", "--k", "5", "--unlike", "case1", "--export", cohort,
              env=env)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert "case1" not in list(df["volume_id"]) and list(df["file"]) == list(df["volume_id"])
    assert df["rank"].tolist() == [str(i + 1) for i in range(len(df))]
    r = medir("search", "--like", "case2", "--export", tmp_path / "c.xlsx", env=env)
    assert r.returncode == 2 and ".csv or .json" in r.stderr
    r = medir("search", "--like", "case2", "--json", env=env)  # no query: the first mark is
    assert r.returncode == 0, r.stderr
    assert "case2" not in [x["volume_id"] for x in json.loads(r.stdout)]
