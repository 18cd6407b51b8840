"""The ``medir`` command: ingest, search --json, info, and one clear line per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_pipeline import _blob_volume

REPO = Path(__file__).resolve().parents[1]


def medir(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "MEDIR_PLUGINS": "tests.plugin_embedder", "COLUMNS": "200",
            **(env or {})}
    return subprocess.run([sys.executable, "-m", "medir.cli", *map(str, args)], cwd=REPO,
                          env=full, capture_output=True, text=True, timeout=300)


@pytest.fixture
def cohort(make_nifti, tmp_path: Path) -> tuple[list[Path], Path]:
    files = [make_nifti(_blob_volume(k % 3, seed=k), np.diag([1, 1, 2.0, 1]),
                        name=f"case{k}.nii.gz") for k in range(6)]
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,modality,region\n" + "".join(
        f"case{k},{['CT', 'MR', 'CT'][k % 3]},{['chest', 'head', 'abdomen'][k % 3]}\n"
        for k in range(6)))
    return files, labels


def test_ingest_search_json_info(cohort: tuple[list[Path], Path], make_nifti) -> None:
    files, labels = cohort
    r = medir("ingest", *files, "--labels", labels, "--model", "test-tiny")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("indexed") >= 6
    query = make_nifti(_blob_volume(1, seed=42), name="query.nii.gz")
    r = medir("search", query, "--model", "test-tiny", "--json", "--top", "3", "--k", "30")
    assert r.returncode == 0, r.stderr
    ranking = json.loads(r.stdout)
    assert isinstance(ranking, list) and len(ranking) == 3
    assert ranking[0]["volume_id"] in ("case1", "case4")
    assert ranking[0]["labels"] == {"modality": "MR", "region": "head"}
    assert ranking[0]["matches"][0]["query_slice"] >= 0
    r = medir("search", query, "--model", "test-tiny", "--filter", "modality=CT", "--json")
    assert {x["labels"]["modality"] for x in json.loads(r.stdout)} == {"CT"}
    r = medir("search", "case0", "--id", "--model", "test-tiny", "--json")
    assert json.loads(r.stdout)[0]["volume_id"] == "case3"
    r = medir("search", query, "--model", "test-tiny", "--sampling", "every-n:4")
    assert r.returncode == 0 and "case" in r.stdout
    # the slice cap (issue 24): an option, and the setting behind its default
    r = medir("search", query, "--model", "test-tiny", "--sampling", "all", "--max-slices", "3")
    assert r.returncode == 0 and "3 chosen" in r.stdout, r.stdout + r.stderr
    r = medir("search", query, "--model", "test-tiny", "--sampling", "all",
              env={"MEDIR_SEARCH__MAX_SLICES": "2"})
    assert r.returncode == 0 and "2 chosen" in r.stdout, r.stdout + r.stderr
    r = medir("info")
    assert r.returncode == 0 and "6 volumes" in r.stdout and "modality: CT=4, MR=2" in r.stdout


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert any("error" in ln or "failed" in ln for ln in lines), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr.replace("\n", ""), r.stderr


def test_bad_inputs_each_get_one_clear_line(cohort: tuple[list[Path], Path], tmp_path: Path,
                                            make_nifti) -> None:
    files, _ = cohort
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    trunc = tmp_path / "trunc.nii.gz"
    raw = files[0].read_bytes()
    trunc.write_bytes(raw[: len(raw) // 3])
    nan = _blob_volume(0)
    nan[:, :, :8] = np.inf  # mostly non-finite (a few become the background, see test_hostile)
    cases = {
        junk: "junk.nii.gz",
        trunc: "trunc.nii.gz",
        make_nifti(np.zeros((4, 4), np.float32), name="two_d.nii.gz"): "2D image",
        make_nifti(np.zeros((2, 2, 2, 2, 2), np.float32), name="five.nii.gz"): "5D image",
        make_nifti(nan, name="inf.nii.gz"): "NaN or Inf",
        tmp_path / "missing.nii.gz": "no such file",
    }
    for path, needle in cases.items():
        r = medir("ingest", path, "--model", "test-tiny")
        _one_line_error(r, str(path.name), needle)
    # a failed volume does not stop the others; exit status says something failed
    r = medir("ingest", files[0], tmp_path / "missing.nii.gz", files[1], "--model", "test-tiny")
    assert r.returncode == 1 and r.stderr.count("indexed  case") == 2, r.stderr
    # unknown model with a suggestion
    _one_line_error(medir("ingest", files[0], "--model", "dinov2-s-onx"), "did you mean",
                    "dinov2-s-onnx")
    # query with another model than the collection's
    _one_line_error(medir("search", files[2], "--model", "mobilenetv2-imagenet"),
                    "test_tiny")
    # bad options
    _one_line_error(medir("search", files[2], "--model", "test-tiny", "--sampling", "every-n:0"),
                    "bad sampling")


def test_empty_store(cohort: tuple[list[Path], Path]) -> None:
    files, _ = cohort
    _one_line_error(medir("search", files[0], "--model", "test-tiny"), "empty")


def test_queue_progress_is_drawn_from_the_runner_events() -> None:
    """``medir ingest --queue`` draws the runner's events (medir/cli/progress.py): one line per
    finished volume (its report, or its error), the "no worker" hint once, the summary."""
    import io

    from rich.console import Console

    from medir.cli.progress import JobsProgress
    from runner import JobState, JobsUpdate

    console = Console(file=io.StringIO(), width=200)
    report = {"status": "indexed", "n_slices": 12, "task_seconds": 0.25}
    looks = [
        JobsUpdate([JobState("1", "p1/ct", "PENDING"), JobState("2", "bad[/x]", "PENDING")],
                   no_worker=True),
        JobsUpdate([JobState("1", "p1/ct", "PENDING"), JobState("2", "bad[/x]", "PENDING")],
                   no_worker=True),
        JobsUpdate([JobState("1", "p1/ct", "PROGRESS", 6, 12),
                    JobState("2", "bad[/x]", "FAILURE", error="/d/bad: truncated")]),
        JobsUpdate([JobState("1", "p1/ct", "SUCCESS", 6, 12, result=report),
                    JobState("2", "bad[/x]", "FAILURE", error="/d/bad: truncated")]),
    ]
    with JobsProgress(console, 2) as view:
        for u in looks:
            view.update(u)
    view.summary()
    text = console.file.getvalue()  # type: ignore[attr-defined]
    lines = [x.rstrip() for x in text.splitlines()]
    assert text.count("no worker answers: start one with `medir worker`") == 1
    assert "indexed  p1/ct (12 slices, 0.2 s)" in lines
    assert "failed   bad[/x]: /d/bad: truncated" in lines
    assert text.count("failed   bad[/x]") == 1  # a finished job is shown once
    assert any(x.startswith("1 of 2 volume(s) done in ") and ", 12 slices embedded (" in x
               for x in lines), text
    assert "1 volume(s) failed, the others were indexed" in lines
