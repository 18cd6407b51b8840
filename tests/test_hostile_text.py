"""Untrusted text on the terminal (issue 21, item 8): file names, folder names, labels and error
messages are shown literally, never parsed as Rich markup, and never reach the terminal as raw
control characters. Each test fails on the code before the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from medir.terminal import safe_text
from tests.test_cli import medir
from tests.test_pipeline import _blob_volume

ESC = "\x1b"
# a name that would clear the line and move the cursor up (spoofing an earlier line)
SPOOF = f"{ESC}[2K{ESC}[1Aok"


def test_safe_text_escapes_markup_and_control_characters() -> None:
    from rich.console import Console

    text = f"p001[/]ct [bold]x[/bold] {SPOOF}\r\nnext\x07\x9b\u202eevil :smile:"
    shown = safe_text(text)
    assert ESC not in shown and "\r" not in shown and "\n" not in shown
    assert "\x9b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "\\x1b[2K" in shown and "\\x0d\\x0a" in shown and "\\u202e" in shown
    c = Console(width=300, record=True, emoji=False, color_system=None)
    c.print(shown, highlight=False)  # no MarkupError
    out = c.export_text()
    assert "p001[/]ct [bold]x[/bold] \\x1b[2K\\x1b[1Aok" in out
    assert safe_text(12) == "12"
    assert safe_text("ends with a backslash\\")  # rich's escape keeps it from eating a tag


@pytest.fixture
def hostile(make_nifti, tmp_path: Path) -> tuple[Path, Path]:
    """A folder whose names and labels are markup and terminal escapes."""
    coll = tmp_path / "coll"
    (coll / "p001[").mkdir(parents=True)
    affine = np.diag([1, 1, 2.0, 1])
    make_nifti(_blob_volume(0, seed=1), affine, name="coll/p001[/]ct.nii.gz")
    make_nifti(_blob_volume(1, seed=2), affine, name=f"coll/{SPOOF}.nii.gz")
    make_nifti(_blob_volume(2, seed=3), affine, name="coll/[bold red]plain.nii.gz")
    (coll / f"broken{ESC}[31m[red]x.nii.gz").write_bytes(b"not a volume at all")
    labels = tmp_path / "labels.csv"
    labels.write_text("case_id,modality,region,organ\n"
                      "p001[/]ct,CT,lung[/],[bold]\n"
                      f"{SPOOF},MR,head{ESC}[2J,brain\n")
    return coll, labels


WIDE = {"COLUMNS": "400"}  # table cells on one line


def _clean(r: object) -> str:
    out = r.stdout + r.stderr  # type: ignore[attr-defined]
    assert "MarkupError" not in out and "Traceback" not in out, out
    assert ESC not in out, out
    return out


def test_cli_shows_hostile_names_and_labels_literally(hostile: tuple[Path, Path]) -> None:
    coll, labels = hostile
    r = medir("ingest", coll, "--labels", labels, "--model", "test-tiny")
    out = _clean(r)
    assert r.returncode == 1, out  # the broken file fails alone; the others are indexed
    assert "indexed  p001[/]ct" in out and "indexed  [bold red]plain" in out
    assert "indexed  \\x1b[2K\\x1b[1Aok" in out
    assert "broken\\x1b[31m[red]x.nii.gz" in out

    r = medir("volumes", env=WIDE)
    out = _clean(r)
    assert r.returncode == 0, out
    assert "p001[/]ct" in out and "lung[/]" in out and "organ=[bold]" in out
    assert "\\x1b[2K\\x1b[1Aok" in out and "head\\x1b[2j" in out

    r = medir("info", env=WIDE)
    out = _clean(r)
    assert r.returncode == 0, out
    assert "lung[/]=1" in out and "head\\x1b[2j=1" in out

    shown = ""
    for args in (["--id", "p001[/]ct"], [str(coll / f"{SPOOF}.nii.gz")]):
        r = medir("search", *args, "--model", "test-tiny", "--top", "3", env=WIDE)
        out = _clean(r)
        assert r.returncode == 0, out
        shown += out
    assert "query p001[/]ct" in shown and "query \\x1b[2K\\x1b[1Aok" in shown
    assert "lung[/]" in shown and "│ \\x1b[2K\\x1b[1Aok" in shown

    r = medir("prune")
    assert r.returncode == 0, _clean(r)


def test_error_lines_show_hostile_paths_literally(tmp_path: Path) -> None:
    missing = tmp_path / f"q[/]{ESC}[31mred.nii.gz"
    r = medir("search", missing, "--model", "test-tiny")
    out = _clean(r)
    assert r.returncode == 2, out
    assert "error:" in out and "q[/]\\x1b[31mred.nii.gz" in out
    r = medir("ingest", tmp_path / f"none[/]{ESC}[2K", "--model", "test-tiny")
    out = _clean(r)
    assert r.returncode in (1, 2), out
    assert "none[/]\\x1b[2K" in out
