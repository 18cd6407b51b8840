"""``medir models``: the listing and ``prepare`` (``medir/cli/models.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ingest.embedders.paper_arch import ResNet50
from ingest.embedders.registry import model_names
from medir.cli.models import app

PAPER = [
    "dinov1-vits16",
    "dinov1-vitb16",
    "dinov2-vits14",
    "dinov2-vitb14",
    "dreamsim",
    "radimagenet-resnet50",
    "radimagenet-swin",
]

runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("MEDIR_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("MEDIR_ALLOW_DOWNLOADS", raising=False)


def test_default_lists_every_model_with_dim_license_source_and_presence() -> None:
    result = runner.invoke(app, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["name", "dim", "weights", "paper"]
    for name in model_names():
        assert any(line.startswith(name + " ") for line in lines), name
    for name in PAPER:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[2] == "no"  # nothing in the empty weights dir
    assert "weights directory:" in result.output


def test_list_json_and_presence_after_prepare(tmp_path: Path) -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == set(model_names())
    assert rows["dreamsim"]["dim"] == 1792 and rows["radimagenet-resnet50"]["dim"] == 2048
    assert rows["radimagenet-resnet50"]["mean"] == [0.5, 0.5, 0.5]
    for name in PAPER:
        assert rows[name]["license"] and rows[name]["source"] and rows[name]["paper"]
        assert rows[name]["weights"] is False

    src = tmp_path / "ResNet50.pt"
    torch.save({f"backbone.{k}": v for k, v in _seq(ResNet50().state_dict()).items()}, src)
    prep = runner.invoke(
        app, ["prepare", "radimagenet-resnet50", "--from", str(src), "--device", "cpu"]
    )
    assert prep.exit_code == 0, prep.output
    assert "ok: radimagenet-resnet50 loads from" in prep.output and "2048-d" in prep.output
    assert (tmp_path / "weights" / "radimagenet-resnet50" / "ResNet50.pt").is_file()
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["--json"]).output)}
    assert rows["radimagenet-resnet50"]["weights"] is True


def _seq(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    idx = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
    return {f"{idx[k.split('.')[0]]}.{k.partition('.')[2]}": v for k, v in sd.items()}


def test_prepare_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\x00garbage")
    result = runner.invoke(app, ["prepare", "radimagenet-resnet50", "--from", str(bad)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert str(bad) in result.output
    result = runner.invoke(app, ["prepare", "dinov1-vit", "--from", str(bad)])
    assert result.exit_code == 2 and "unknown model" in result.output
    result = runner.invoke(app, ["prepare", "dinov1-vits16", "--from", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such file" in result.output
