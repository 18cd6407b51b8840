"""Benchmarks measure the machine they claim to (issue 24): every ``medir bench`` command records
the load at its start and end, refuses a busy machine in one line, and with ``--allow-busy``
marks its JSON ``"busy": true``. The load is read from a fake procfs tree, never timed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import machine
from medir.cli import app


def fake_proc(root: Path, load_1min: float, load_5min: float = 0.5,
              states: tuple[str, ...] = ("S", "R", "R", "D")) -> Path:
    """A procfs tree with ``loadavg`` and one ``<pid>/stat`` per state (pids 100, 101, ...),
    plus this process in state R (never counted)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "loadavg").write_text(f"{load_1min:.2f} {load_5min:.2f} 0.10 3/245 4242\n")
    for i, state in enumerate(states):
        pid = root / str(100 + i)
        pid.mkdir()
        # a command name with spaces and ')' must not shift the fields
        (pid / "stat").write_text(f"{100 + i} (my) job {i}) {state} 1 1 1 0 -1 4194304 0\n")
    me = root / str(os.getpid())
    me.mkdir(exist_ok=True)
    (me / "stat").write_text(f"{os.getpid()} (python) R 1 1 1 0 -1 0\n")
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored
    return root


@pytest.fixture
def busy_load() -> float:
    """A 1-minute load above the threshold of this machine's CPU count."""
    return round(machine.busy_threshold() + 1.25, 2)


def test_read_load_counts_other_running_processes(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path / "proc", 2.5, 1.75)
    reading = machine.read_load(proc)
    assert (reading.load_1min, reading.load_5min) == (2.5, 1.75)
    assert reading.other_running == 2  # two of pids 100..103 run; this process is left out
    assert machine.read_load(tmp_path / "nowhere").other_running is None


def test_threshold_is_three_quarters_of_a_load_per_cpu() -> None:
    assert machine.busy_threshold(2) == 1.5
    assert machine.busy_threshold(16) == 12.0


def test_check_machine_decides_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "PROC", fake_proc(tmp_path / "proc", 1.6))
    with pytest.raises(machine.MachineBusy, match=r"^machine busy: load 1\.60; rerun on a quiet "
                                                  r"machine$"):
        machine.check_machine(False, cpus=2)
    guard = machine.check_machine(True, cpus=2)
    assert guard.busy and guard.threshold == 1.5
    assert not machine.check_machine(False, cpus=4).busy  # 1.6 < 3.0
    # parts of one run (``perf all``) inherit its decision: the load it raised is its own
    quiet = machine.check_machine(False, cpus=4)
    with quiet.covering():
        part = machine.check_machine(False, cpus=2)
    assert not part.busy and part.start.load_1min == 1.6
    with guard.covering():
        assert machine.check_machine(False, cpus=2).busy


BENCHES = [
    ["bench", "paper"], ["bench", "quality"], ["bench", "audit"], ["bench", "engines"],
    ["bench", "speed"],
    ["bench", "perf", "ingest"], ["bench", "perf", "query"], ["bench", "perf", "query-latency"],
    ["bench", "perf", "store"], ["bench", "perf", "memory"], ["bench", "perf", "peak"],
    ["bench", "perf", "all"],
]


@pytest.mark.parametrize("command", BENCHES, ids=lambda c: " ".join(c[1:]))
def test_busy_machine_refused_in_one_line(command: list[str], tmp_path: Path, busy_load: float,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "PROC", fake_proc(tmp_path / "proc", busy_load))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [*command, "--out", str(out / "x.json")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].endswith(f"machine busy: load {busy_load:.2f}; rerun on a quiet machine")
    assert not out.exists()  # refused before anything was measured or written


def test_allow_busy_marks_the_json(tmp_path: Path, busy_load: float,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "PROC", fake_proc(tmp_path / "proc", busy_load, 3.0))
    args = ["bench", "engines", "--sizes", "300", "--dim", "8", "--engines", "flat",
            "--queries", "5", "--volume-queries", "1", "--single", "1", "--no-progress"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "busy"), "--allow-busy"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "busy" / "engines.json").read_text())
    assert doc["busy"] is True
    load = doc["load"]
    assert load["busy_threshold_1min"] == machine.busy_threshold()
    for when in ("start", "end"):
        assert load[when]["load_1min"] == busy_load and load[when]["load_5min"] == 3.0
        assert load[when]["other_running_processes"] == 2

    monkeypatch.setattr(machine, "PROC", fake_proc(tmp_path / "quiet", 0.2))
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ok" / "engines.json").read_text())
    assert doc["busy"] is False and doc["load"]["start"]["load_1min"] == 0.2


def test_perf_json_carries_the_load(tmp_path: Path, busy_load: float,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_result`` (every ``bench perf`` command) stamps the run's guard."""
    from benchmarks.perf.common import write_result

    monkeypatch.setattr(machine, "PROC", fake_proc(tmp_path / "proc", busy_load))
    guard = machine.check_machine(True)
    path = write_result(tmp_path / "r.json", "x", {}, {}, guard)
    doc = json.loads(path.read_text())
    assert doc["busy"] is True and doc["load"]["start"]["other_running_processes"] == 2
