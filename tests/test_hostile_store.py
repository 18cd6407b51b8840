"""Issue 21, items 1 and 3: the embedded store against a second process, and prune.

* A second medir process (``medir info``, ``volumes``, ``prune``, ``migrate``) started while
  another one holds the embedded store waits its turn (bounded, with a message) or gives up
  with one line; the holder's data is intact afterwards (item 3).
* A kept-open store (the worker's) whose engine fails recovers by reopening.
* The UI holds the store only while it serves a request.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from medir.config import Settings
from medir.errors import StoreUnavailable
from search.store import SlicePoint, point_id
from search.store_edge import EdgeStore
from search.store_qdrant import QdrantStore
from tests.orthanc_fixture import PASSWORD, Orthanc, orthanc  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 120.0
COLL = "medir_hold"

# A process holding the store the way an ingest does: it keeps writing (flushing now and then)
# until told to stop, and says when it holds the store. Run as ``python -c HOLDER READY STOP``.
HOLDER = r"""
import sys, time
from pathlib import Path
import numpy as np
from medir.config import get_settings
from search.store import SlicePoint, point_id
from search.store_factory import open_store

ready, stop = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
n = 0
with open_store(get_settings()) as store:
    store.ensure_collection("medir_hold", 16)
    i = 0
    while not (i >= 5 and stop.exists()):
        if i < 400:  # an ingest's writes, flushed every 10 batches
            store.upsert("medir_hold", [SlicePoint(
                point_id(f"v{i}", f"c{i}", s, "m@1"), rng.random(16).astype("float32"),
                {"volume_id": f"v{i}", "slice": s, "state": "ready", "embedder": "m@1",
                 "modality": "CT"}) for s in range(20)])
            n += 20
            if i % 10 == 9:
                store.flush()
        if i == 5:
            ready.write_text("holding")
        i += 1
        time.sleep(0.01)  # pace the writes; not a synchronisation
    store.flush()
    print(n, store.count("medir_hold"), flush=True)
"""


def medir(*args: str | Path, env: dict[str, str] | None = None,
          ) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "MEDIR_PLUGINS": "tests.plugin_embedder", "COLUMNS": "250",
            **(env or {})}
    return subprocess.run([sys.executable, "-m", "medir.cli", *map(str, args)], cwd=REPO,
                          env=full, capture_output=True, text=True, timeout=DEADLINE_S)


def wait_for(cond: object, what: str, timeout: float = DEADLINE_S) -> None:
    """Wait for ``cond()`` to hold (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Holder:
    proc: subprocess.Popen[str]
    ready: Path
    stop: Path

    def finish(self) -> tuple[int, int]:
        """Let it stop; (points it wrote, points it counts after its last flush)."""
        self.stop.write_text("stop")
        out, err = self.proc.communicate(timeout=DEADLINE_S)
        assert self.proc.returncode == 0, err[-3000:]
        written, counted = map(int, out.split())
        return written, counted


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    """A process holding the embedded store at ``MEDIR_STORE_PATH``, writing to it."""
    ready, stop = tmp_path / "holder.ready", tmp_path / "holder.stop"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ready), str(stop)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    h = Holder(proc, ready, stop)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, "the holder")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        yield h
    finally:
        stop.write_text("stop")
        if proc.poll() is None:
            try:
                proc.communicate(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _error_line(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---- a second process against the holder ------------------------------------------------------
def test_second_process_gives_up_with_one_line_and_the_holder_is_intact(
        holder: Holder, tmp_path: Path) -> None:
    """Every store command, run while another process holds the store, fails with one line
    naming the store and the holder's pid; the holder goes on and keeps every point."""
    store = tmp_path / "store"
    pid = str(holder.proc.pid)
    no_wait = {"MEDIR_STORE__LOCK_WAIT_S": "0"}
    results = [medir(*cmd, env=no_wait)
               for cmd in (["info"], ["volumes"], ["prune", "--yes"], ["migrate"])]
    written, counted = holder.finish()  # before: its next flush failed, the store damaged
    assert counted == written  # nothing the holder wrote was lost
    for r in results:
        _error_line(r, f"store {store} is in use by another medir process (pid {pid})",
                    "MEDIR_STORE__LOCK_WAIT_S")
    with EdgeStore(store, lock_wait_s=0) as reopened:
        assert reopened.count(COLL) == written
    r = medir("info")
    assert r.returncode == 0, r.stderr
    assert f"{written} points" in r.stdout


def test_second_process_waits_its_turn(holder: Holder, tmp_path: Path) -> None:
    """``medir info`` with time to wait says it waits, then answers once the holder is done,
    counting everything the holder wrote."""
    proc = subprocess.Popen([sys.executable, "-m", "medir.cli", "info"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MEDIR_STORE__LOCK_WAIT_S": "300",
                                 "COLUMNS": "250"})
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    err: IO[str] = proc.stderr

    def pump() -> None:
        for line in err:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = lines.get(timeout=DEADLINE_S)  # the first thing it says: that it waits
    assert f"is in use by another medir process (pid {holder.proc.pid}); waiting" in seen
    assert proc.poll() is None
    written, counted = holder.finish()
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0
    assert counted == written
    assert f"{written} points" in out


def test_qdrant_local_mode_and_edge_take_the_same_lock(tmp_path: Path) -> None:
    """qdrant-client's local mode is locked like the embedded store, before it reads."""
    path = tmp_path / "q"
    with QdrantStore(path=str(path)) as first:
        first.ensure_collection("medir_c", 4)
        with pytest.raises(StoreUnavailable, match="in use by another medir process"):
            QdrantStore(path=str(path), lock_wait_s=0)
        with pytest.raises(StoreUnavailable, match="in use by another medir process"):
            EdgeStore(path, lock_wait_s=0)
        assert first.collections() == ["medir_c"]
    with QdrantStore(path=str(path), lock_wait_s=0) as again:
        assert again.collections() == ["medir_c"]


# ---- a kept-open store (the worker's) recovers ---------------------------------------------------
def test_kept_open_store_fails_one_call_typed_then_reopens(tmp_path: Path) -> None:
    from runner.local import LocalRunner, StoreFault

    path = tmp_path / "worker-store"
    runner = LocalRunner(Settings(store_path=path), keep_store_open=True)
    try:
        store = runner.store()
        store.ensure_collection("medir_c", 4)
        store.upsert("medir_c", [SlicePoint(point_id("v", "c", s, "m@1"),
                                            np.ones(4, np.float32) + s,
                                            {"volume_id": "v", "slice": s, "state": "ready"})
                                 for s in range(3)])
        assert runner.stats()["collections"][0]["points"] == 3
        # the engine's handle goes bad behind the runner's back (what a second process did)
        runner._store._inner._shards["medir_c"].close()  # type: ignore[union-attr]
        with pytest.raises(StoreFault) as failed:
            runner.stats()
        assert "\n" not in str(failed.value) and str(path) in str(failed.value)
        assert isinstance(failed.value, StoreUnavailable)  # the queue retries it
        assert runner.stats()["collections"][0]["points"] == 3  # reopened, nothing lost
    finally:
        runner.close()
    EdgeStore(path, lock_wait_s=0).close()  # closing the runner released the store


# ---- the UI -------------------------------------------------------------------------------------
def test_ui_holds_the_store_only_while_it_serves_a_request(make_nifti, tmp_path: Path) -> None:
    from tests.test_pipeline import _blob_volume
    from ui import backend

    files = [make_nifti(_blob_volume(k, seed=k), name=f"ui{k}.nii.gz") for k in range(2)]
    settings = Settings(store_path=tmp_path / "store", plugins="tests.plugin_embedder")
    during: list[subprocess.CompletedProcess[str]] = []

    def progress(volume_id: str, done: int, total: int) -> None:
        if not during:  # mid-request: the UI process holds the store
            during.append(medir("info", env={"MEDIR_STORE__LOCK_WAIT_S": "0"}))

    reports = backend.ingest_here(settings, files, "test-tiny", None, progress)
    assert [r.status for r in reports] == ["indexed", "indexed"]
    _error_line(during[0], f"in use by another medir process (pid {os.getpid()})")
    r = medir("info")  # between requests the CLI works beside the UI
    assert r.returncode == 0 and "2 volumes" in r.stdout, r.stderr
    assert backend.stats(settings)["collections"][0]["volumes"] == 2
    assert backend.indexed_volumes(settings, "test-tiny") == ["ui0", "ui1"]
    r = medir("volumes", "--json")
    assert r.returncode == 0 and '"ui1"' in r.stdout, r.stderr


# ---- prune: only what is proved gone -------------------------------------------------------------
def _tiny_runner(store: Path) -> object:
    from runner.local import LocalRunner

    return LocalRunner(Settings(store_path=store, plugins="tests.plugin_embedder",
                                model="test-tiny"))


def _case(make_nifti, root: Path, rel: str, seed: int) -> Path:
    from tests.test_pipeline import _blob_volume

    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    made = Path(make_nifti(_blob_volume(seed % 3, n=6, seed=seed), name=f"case{seed}.nii.gz"))
    return made.rename(path)


def test_prune_removes_only_what_it_proves_gone(make_nifti, tmp_path: Path) -> None:
    """A deleted file is pruned; a PACS series on an unreachable server, a folder not mounted
    here (absent, or an empty mount point) and an unreadable one are kept, with the reason."""
    from ingest.collection import file_source, scan_paths
    from runner.base import IngestOptions
    from search.volumes import GONE, PRESENT, UNKNOWN
    from tests.conftest import free_port

    store = tmp_path / "store"
    data, nas, host = tmp_path / "data", tmp_path / "mnt" / "nas", tmp_path / "host" / "scans"
    for i, (root, rel) in enumerate([(data, "p001/ct.nii.gz"), (data, "p002/ct.nii.gz"),
                                     (data, "p002/mr.nii.gz"), (data, "p003/ct.nii.gz"),
                                     (nas, "q001/ct.nii.gz"), (host, "h001/ct.nii.gz")]):
        _case(make_nifti, root, rel, i)
    runner: Any = _tiny_runner(store)
    options = IngestOptions(model="test-tiny", intensity="auto")
    assert runner.ingest(scan_paths([data, nas, host]).sources, options).failed == 0
    # a series ingested from a PACS that cannot be reached from here
    pacs_src = (f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web/studies/1.2.3/series/"
                "1.2.3.4")
    vol = file_source(data / "p001" / "ct.nii.gz").open().read()
    vol.volume_id = vol.case_id = "1.2.3.4"
    vol.source = pacs_src
    assert runner.index_one(vol, options).status == "indexed"
    before = {v.volume_id: v.points for v in runner.volumes()}
    assert len(before) == 7

    (data / "p002" / "ct.nii.gz").unlink()            # truly deleted: gone
    shutil.rmtree(data / "p003")                       # a whole case removed: gone
    nas.rename(tmp_path / "elsewhere")                 # the share is not mounted here...
    nas.mkdir()                                        # ...its mount point is an empty folder
    host.rename(tmp_path / "moved")                    # the host folder is not in this container

    dry = runner.prune(apply=False)
    states = {c.volume.volume_id: (c.state, c.reason) for c in dry.checks}
    assert states["p001/ct"] == (PRESENT, "") and states["p002/mr"] == (PRESENT, "")
    assert states["p002/ct"] == (GONE, f"not in {data}")
    assert states["p003/ct"] == (GONE, f"not in {data}")
    assert states["q001/ct"] == (UNKNOWN, f"ingest folder {nas} is empty (not mounted here?)")
    assert states["h001/ct"] == (UNKNOWN,
                                 f"ingest folder {host} is not there (not mounted here?)")
    assert states["1.2.3.4"][0] == UNKNOWN
    assert "PACS cannot be checked" in states["1.2.3.4"][1]
    assert "unreachable" in states["1.2.3.4"][1]
    assert dry.removed_points == 0 and {v.volume_id for v in runner.volumes()} == set(before)

    done = runner.prune(apply=True)
    assert done.removed_points == before["p002/ct"] + before["p003/ct"]
    after = {v.volume_id: v.points for v in runner.volumes()}
    assert after == {k: n for k, n in before.items() if k not in ("p002/ct", "p003/ct")}
    assert done.counts() == {PRESENT: 2, GONE: 2, UNKNOWN: 3}

    # the CLI: the states in JSON, the reasons of the kept ones in lines
    r = medir("prune", "--yes", "--json", env={"MEDIR_STORE_PATH": str(store)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["counts"] == {PRESENT: 2, GONE: 0, UNKNOWN: 3}
    assert {v["volume_id"]: v["source_state"] for v in out["volumes"]} == {
        "q001/ct": UNKNOWN, "h001/ct": UNKNOWN, "1.2.3.4": UNKNOWN}
    r = medir("prune", "--yes", env={"MEDIR_STORE_PATH": str(store)})
    assert r.returncode == 0, r.stderr
    assert "keeping 1 volume(s) that cannot be checked: ingest folder " \
        f"{nas} is empty (not mounted here?)" in r.stdout
    assert "nothing to prune: 2 present, 0 gone, 3 unknown (kept)" in r.stdout
    assert {v.volume_id for v in runner.volumes()} == set(after)


def test_prune_keeps_a_file_under_an_unreadable_or_emptied_subfolder(make_nifti,
                                                                     tmp_path: Path) -> None:
    """Below a present root, an empty folder on the way to the file (a nested mount point, or
    a case folder whose only file was deleted) is no proof either; a removed folder is."""
    from ingest.collection import scan_paths
    from runner.base import IngestOptions
    from search.volumes import GONE, UNKNOWN

    data = tmp_path / "data"
    _case(make_nifti, data, "share/p001/ct.nii.gz", 0)
    _case(make_nifti, data, "local/p002/ct.nii.gz", 1)
    _case(make_nifti, data, "local/p003/ct.nii.gz", 2)
    runner: Any = _tiny_runner(tmp_path / "store")
    options = IngestOptions(model="test-tiny", intensity="auto")
    assert runner.ingest(scan_paths([data]).sources, options).failed == 0
    shutil.rmtree(data / "share")
    (data / "share").mkdir()  # the nested share is unmounted: an empty mount point
    shutil.rmtree(data / "local" / "p002")
    (data / "local" / "p003" / "ct.nii.gz").unlink()  # its folder is left, empty
    states = {c.volume.volume_id: (c.state, c.reason) for c in runner.prune(True).checks}
    assert states["share/p001/ct"] == (UNKNOWN,
                                       f"folder {data / 'share'} is empty (not mounted here?)")
    assert states["local/p002/ct"] == (GONE, f"not in {data}")
    assert states["local/p003/ct"] == (
        UNKNOWN, f"folder {data / 'local' / 'p003'} is empty (not mounted here?)")
    assert [v.volume_id for v in runner.volumes()] == ["local/p003/ct", "share/p001/ct"]


def test_prune_checks_pacs_series_against_the_pacs(orthanc: Orthanc,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """Series ingested from a real PACS survive prune while the PACS lists them (or cannot be
    asked: bad credentials); one deleted on the PACS is pruned."""
    from pydicom.uid import generate_uid

    from tests.dicom_fixtures import volume_to_datasets
    from tests.test_pipeline import _blob_volume

    series = []
    for k in range(2):
        ds = volume_to_datasets(_blob_volume(k, n=4, seed=k).astype(np.float64), np.eye(4),
                                "CT", study=generate_uid(), slope=1.0, intercept=-1024.0,
                                signed=False)
        orthanc.upload(ds)
        series.append(str(ds[0].SeriesInstanceUID))
    env = {**orthanc.env(), "MEDIR_STORE_PATH": str(tmp_path / "store"),
           "MEDIR_MODEL": "test-tiny"}
    r = medir("ingest", "pacs", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = medir("prune", "--yes", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["counts"] == {"present": 2, "gone": 0, "unknown": 0}

    gone_uid, kept_uid = series
    with orthanc.session() as s:  # the PACS deletes one series (and so its study)
        found = s.post(orthanc.rest + "/tools/lookup", data=gone_uid, timeout=30).json()
        assert s.delete(orthanc.rest + found[0]["Path"], timeout=30).status_code == 200

    wrong = medir("prune", "--yes", "--json",
                  env={**env, "MEDIR_PACS__PASSWORD": "not-the-password"})
    assert wrong.returncode == 0, wrong.stderr
    out = json.loads(wrong.stdout)
    assert out["counts"] == {"present": 0, "gone": 0, "unknown": 2}
    assert out["removed_points"] == 0
    assert all("authentication failed" in v["reason"] for v in out["volumes"])

    r = medir("prune", "--yes", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["counts"] == {"present": 1, "gone": 1, "unknown": 0}
    assert [(v["volume_id"], v["source_state"]) for v in out["volumes"]] == [(gone_uid, "gone")]
    assert out["removed_points"] == 4
    r = medir("volumes", "--json", env=env)
    assert [v["volume_id"] for v in json.loads(r.stdout)] == [kept_uid]
    for text in (wrong.stdout, wrong.stderr, r.stdout, r.stderr):
        assert PASSWORD not in text


@pytest.mark.parametrize(("series_answer", "studies_answer", "state", "reason"), [
    (404, [{"0020000D": {"vr": "UI", "Value": ["9.9"]}}], "gone", "not on PACS"),
    ([], [{"0020000D": {"vr": "UI", "Value": ["9.9"]}}], "gone", "not on PACS"),
    ([], [], "unknown", "holds no study at all"),
    (404, 404, "unknown", "HTTP 404 during QIDO-RS study search"),
    ([{"0020000E": {"vr": "UI", "Value": ["7.7"]}}], [], "unknown", "with other series"),
    ([{"0020000E": "junk"}], [], "unknown", "with other series"),
    (500, [], "unknown", "HTTP 500"),
])
def test_prune_proves_a_series_gone_only_from_a_pacs_that_answers(
        series_answer: object, studies_answer: object, state: str, reason: str) -> None:
    """What a PACS answers (one that lies or breaks included) → the series' state: gone only
    on an empty answer or 404 from a server that lists other studies."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from medir.config import PacsSettings
    from runner.pacs_sources import check_pacs_sources

    class Pacs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            answer = series_answer if "/series" in self.path else studies_answer
            code = answer if isinstance(answer, int) else 200
            body = b"" if isinstance(answer, int) else json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = (f"dicomweb+http://127.0.0.1:{server.server_port}/dicom-web/studies/1.2/series/"
               "1.2.3")
        got = check_pacs_sources([src], PacsSettings(timeout=10))[src]
    finally:
        server.shutdown()
        server.server_close()
    assert got[0] == state and reason in got[1], got
