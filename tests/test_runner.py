"""The runner as the one way in: the factory decides queue and store ownership once; the
in-process runner's methods (the queued one's against Redis are in tests/test_queue.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from medir.config import Settings
from medir.errors import MedirError
from runner import IngestOptions, JobState, JobsUpdate, get_runner, queue_on, store_is_server
from runner.local import LocalRunner
from runner.queued import QueueRunner
from tests.conftest import MakeNifti
from tests.queue_fixtures import StartWorker


def _settings(tmp_path: Path, **kw: str) -> Settings:
    return Settings.model_validate({"store_path": tmp_path / "store",
                                    "plugins": "tests.plugin_embedder", **kw})


def test_the_settings_decide_queue_and_store_ownership_once(tmp_path: Path) -> None:
    plain = _settings(tmp_path)
    queued = _settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    server = _settings(tmp_path, redis_url="redis://127.0.0.1:1/0",
                       qdrant_url="http://127.0.0.1:1")
    assert (queue_on(plain), queue_on(queued), store_is_server(server)) == (False, True, True)
    assert isinstance(get_runner(plain), LocalRunner)
    assert isinstance(get_runner(queued), QueueRunner)  # no broker contacted before a call
    # the caller's own option wins over the settings (medir ingest without --queue)
    assert isinstance(get_runner(queued, queue=False), LocalRunner)
    assert isinstance(get_runner(plain, queue=True), QueueRunner)
    # the embedded store belongs to the worker; a Qdrant server is read from here too
    owned, served = get_runner(queued), get_runner(server)
    assert isinstance(owned, QueueRunner) and owned.worker_owns_store
    assert isinstance(served, QueueRunner) and not served.worker_owns_store
    kept = get_runner(plain, queue=False, keep_store_open=True)
    assert isinstance(kept, LocalRunner) and kept.keep_store_open


def test_store_calls_go_to_whoever_owns_the_store(tmp_path: Path) -> None:
    """With the embedded store a worker owns, every store call is a queue task: here the
    broker does not answer, so each fails with that one line, and this process never opened
    the store (no store folder). A runner told the store is not the worker's reads it here."""
    from medir.errors import StoreUnavailable

    queued = _settings(tmp_path, redis_url="redis://127.0.0.1:1/0")
    owned = get_runner(queued)
    calls = {
        "stats": owned.stats, "volumes": lambda: owned.volumes("test-tiny"),
        "volume_ids": lambda: owned.volume_ids("test-tiny"),
        "prune": lambda: owned.prune(apply=False), "migrate": lambda: owned.migrate([tmp_path]),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable, match="queue broker .* does not answer"):
            call()
        assert not queued.store_path.exists(), name
    # a bad label filter is the in-process line, before the queue is asked
    with pytest.raises(MedirError, match="cannot filter on 'colour'"):
        owned.volumes(None, {"colour": ["red"]})
    here = QueueRunner(queued, worker_owns_store=False)
    assert here.volume_ids("test-tiny") == [] and here.volumes() == []
    assert here.prune(apply=False).checks == [] and here.migrate([]) == {}
    assert queued.store_path.exists()  # read here, the broker never asked


def test_queue_without_a_broker_is_one_clear_error(tmp_path: Path,
                                                    make_nifti: MakeNifti) -> None:
    from medir.errors import ConfigError

    f = make_nifti(np.zeros((8, 8, 4), np.float32), name="a.nii.gz")
    with pytest.raises(ConfigError, match="no broker configured"):
        get_runner(_settings(tmp_path), queue=True).ingest(
            [f], IngestOptions(model="test-tiny", intensity="auto"))


def test_in_process_runner_ingests_lists_and_searches(tmp_path: Path,
                                                      make_nifti: MakeNifti) -> None:
    from search.query import QueryOptions

    rng = np.random.default_rng(0)
    files = [make_nifti(rng.random((16, 16, 6), dtype=np.float32), name=f"v{i}.nii.gz")
             for i in range(3)]
    with get_runner(_settings(tmp_path)) as runner:
        assert runner.volume_ids("test-tiny") == []  # no collection yet
        seen: list[str] = []
        outcome = runner.ingest(files, IngestOptions(model="test-tiny", intensity="auto"),
                                on_report=lambda r: seen.append(r.volume_id))
        assert not outcome.queued and outcome.failed == 0
        assert sorted(seen) == ["v0", "v1", "v2"]
        assert runner.volume_ids("test-tiny") == ["v0", "v1", "v2"]
        seen_updates: list[object] = []
        assert runner.watch([], seen_updates.append) is True and seen_updates == []
        assert runner.workers_alive() and runner.jobs(["x"]) == []
        result = runner.search(str(files[0]), QueryOptions(weighting="none", k=3, top=5),
                               model="test-tiny")
        # the file is indexed: its stored vectors are reused, and it is left out of the ranking
        assert result["query"]["vectors"] == "stored"
        assert {r["volume_id"] for r in result["ranking"]} == {"v1", "v2"}
        by_id = runner.search("v1", QueryOptions(weighting="none", k=3, top=5),
                              model="test-tiny", by_id=True)
        assert {r["volume_id"] for r in by_id["ranking"]} == {"v0", "v2"}


def test_bad_intensity_is_one_config_error() -> None:
    from medir.errors import ConfigError
    from search.query import QueryOptions

    with pytest.raises(ConfigError, match="unknown intensity mode 'hu'"):
        IngestOptions(model="m", intensity="hu")
    with pytest.raises(ConfigError, match="unknown intensity mode 'hu'"):
        QueryOptions(intensity="hu")


@pytest.mark.queue
def test_the_queued_runner_answers_as_the_in_process_one(
        worker: StartWorker, queue_env: str, tmp_path: Path, make_nifti: MakeNifti) -> None:
    """One suite, both runners (as qdrant-client runs its local and remote clients through the
    same tests): the same files ingested and queried give the same volumes and rankings."""
    from dataclasses import replace

    from medir.errors import EmptyStore
    from search.audit import AuditOptions
    from search.query import QueryOptions

    rng = np.random.default_rng(1)
    files = [make_nifti(rng.random((16, 16, 6), dtype=np.float32), name=f"v{i}.nii.gz")
             for i in range(4)]
    import nibabel as nib

    files.append(make_nifti(np.asarray(nib.load(files[0]).dataobj) + np.float32(1e-3),
                            name="copy0.nii.gz"))  # a re-saved copy of v0: the audit's pair
    options = IngestOptions(model="test-tiny", intensity="auto")
    query = QueryOptions(weighting="none", k=3, top=5)
    local_settings = _settings(tmp_path / "here", redis_url="")  # (queue_env sets the env)
    queued_settings = _settings(tmp_path / "queued", redis_url=queue_env)
    worker(store_path=queued_settings.store_path,
           env={"MEDIR_PLUGINS": "tests.plugin_embedder", "MEDIR_MODEL": "test-tiny"})
    answers, modes = [], []
    for settings in (local_settings, queued_settings):
        with get_runner(settings) as runner:
            modes.append(runner.mode)
            assert runner.workers_alive()  # (a solo worker busy with a task answers no ping)
            # a worker's error keeps its type across the queue (the UI tells them apart)
            with pytest.raises(EmptyStore, match="is empty"):
                runner.search("v0", query, model="test-tiny", by_id=True)
            reports: list[tuple[str, str, int]] = []
            outcome = runner.ingest(files, options, on_report=lambda r, out=reports: out.append(
                (r.volume_id, r.status, r.n_slices)))
            updates: list[JobsUpdate] = []
            assert runner.watch(outcome.job_ids, updates.append, poll_s=0.05)
            if outcome.queued:
                assert runner.mode == "queue"
                assert sorted(outcome.job_volumes.values()) == ["copy0", "v0", "v1", "v2", "v3"]
                reports = _events_agree(updates, outcome.job_ids)
            else:
                assert runner.mode == "local" and outcome.failed == 0 and updates == []
            stats = runner.stats()
            by_file = runner.search(str(files[0]), query, model="test-tiny")
            by_id = runner.search("v2", query, model="test-tiny", by_id=True)
            liked = runner.search("v2", replace(query, like=["v1"], unlike=["v3"]),
                                  model="test-tiny", by_id=True)
            pairs = runner.audit("test-tiny", AuditOptions(slice_min=0.99))
            ids = runner.volume_ids("test-tiny")
            assert runner.volume_ids("no-such-model") == []
        assert {(p["a"], p["b"]) for p in pairs} == {("copy0", "v0")}
        assert "v1" not in [r["volume_id"] for r in liked["ranking"]]
        answers.append((
            [(c["name"], c["volumes"], c["points"]) for c in stats["collections"]],
            [(r["volume_id"], round(r["votes"], 5)) for r in by_file["ranking"]],
            by_file["query"]["vectors"],
            [(r["volume_id"], round(r["votes"], 5)) for r in by_id["ranking"]],
            [(r["volume_id"], round(r["rerank_score"], 5)) for r in liked["ranking"]],
            [(p["a"], p["b"], round(p["score"], 5)) for p in pairs],
            sorted(reports),
            ids,
        ))
    assert modes == ["local", "queue"]
    assert answers[0] == answers[1]
    assert answers[0][0] == [("medir_test_tiny", 5, 30)]
    assert answers[0][-1] == ["copy0", "v0", "v1", "v2", "v3"]
    assert answers[0][-2] == [(v, "indexed", 6) for v in ["copy0", "v0", "v1", "v2", "v3"]]


def _events_agree(updates: list[JobsUpdate], ids: list[str]) -> list[tuple[str, str, int]]:
    """The progress events of one watch are consistent (every look names every job in the
    order given; a job's slices done never go back; a finished job stays as it finished;
    the last look has all finished; a running worker is never reported missing); returns
    what the last look says of each volume, as the in-process reports say it."""
    assert updates and updates[-1].finished and updates[-1].succeeded
    seen: dict[str, JobState] = {}
    for u in updates:
        assert [j.id for j in u.jobs] == ids and not u.no_worker
        for j in u.jobs:
            last = seen.get(j.id)
            if last is not None:
                assert j.done >= last.done, (last, j)
                assert not last.finished or j == last, (last, j)
            seen[j.id] = j
    return [(j.name, j.result["status"], j.result["n_slices"]) for j in updates[-1].jobs]


def test_errors_rebuilt_by_class_name_and_shown_from_one_table() -> None:
    from medir.errors import (
        ERROR_TABLE,
        UNEXPECTED,
        EmptyStore,
        MedirError,
        ModelMismatch,
        QueueUnavailable,
        VolumeError,
        error_kind,
        error_named,
    )
    from runner.queue import TaskFailed

    again = error_named("VolumeError", "/data/a.nii: truncated")
    assert isinstance(again, VolumeError) and (again.path, again.reason) == \
        ("/data/a.nii", "truncated")
    assert type(error_named("ModelMismatch", "m")) is ModelMismatch
    assert type(error_named("NoSuchError", "m")) is MedirError
    # Celery rebuilds a task's exception from its args: the class name travels with it
    failed = TaskFailed(*TaskFailed("the store is empty", "EmptyStore").args)
    assert (str(failed), failed.kind) == ("the store is empty", "EmptyStore")
    assert error_kind(EmptyStore("x")).level == "warning"
    assert error_kind(QueueUnavailable("x")) is ERROR_TABLE[QueueUnavailable]
    assert error_kind(ValueError("bug")) is UNEXPECTED and UNEXPECTED.exit_code != 2
    assert error_kind(MedirError("x")).exit_code == 2


def test_query_options_have_one_codec() -> None:
    """The queue's message form of the options (to_dict) reads back equal (from_dict), and a
    hostile message is one ConfigError line, not a TypeError."""
    import json

    from medir.errors import ConfigError
    from search.query import QueryOptions

    opts = QueryOptions(sampling="every-mm:7,max=12", weighting="gaussian:2", k=3, top=7,
                        filters={"modality": ("CT",)}, exclude_cases=("c1",), like=("a",),
                        unlike=("b",), rerank="maxsim", max_slices=12)
    wire = json.loads(json.dumps(opts.to_dict()))
    back = QueryOptions.from_dict(wire)
    assert back.to_dict() == opts.to_dict() and back.parsed()[0] == opts.parsed()[0]
    with pytest.raises(ConfigError):
        QueryOptions.from_dict({**wire, "filters": ["modality"]})
    with pytest.raises(ConfigError):
        QueryOptions.from_dict({**wire, "like": "a"})


def _rows(volumes: list[Any]) -> list[dict[str, Any]]:
    """Volume rows without their generation (a write's time: each store has its own)."""
    from search.volumes import VolumeInfo

    assert all(isinstance(v, VolumeInfo) for v in volumes)
    return [{k: x for k, x in v.to_dict().items() if k != "gen"} for v in volumes]


def _pruned(result: Any) -> tuple[Any, ...]:
    from search.volumes import PruneResult

    assert isinstance(result, PruneResult)
    return (result.applied, result.removed_points, result.counts(), result.unknown_reasons(),
            [(c.state, c.reason, _rows([c.volume])) for c in result.checks])


@pytest.mark.queue
def test_store_maintenance_through_the_queue_answers_as_in_process(
        worker: StartWorker, queue_env: str, tmp_path: Path) -> None:
    """The volume listing (one model, label filters), volume ids, prune (a dry run, then for
    real: a volume whose files were deleted is pruned alike) and migrate (a store written
    before volume identities) answer the same in-process and from the worker that owns the
    embedded store, in the same types; a hostile maintenance message is refused, not
    retried, and changes nothing."""
    import shutil

    from ingest.collection import scan_paths
    from ingest.embedders import get_embedder
    from runner.local import NoCollection
    from tests.test_collections import _old_store, _write
    from tests.test_pipeline import _blob_volume

    cases, old = tmp_path / "cases", tmp_path / "old"
    for k, n in enumerate((5, 7, 9)):
        _write(cases / f"p00{k + 1}" / "ct.nii.gz", _blob_volume(k, n=n, seed=k))
    _write(old / "p009" / "ct.nii.gz", _blob_volume(1, n=6, seed=9))
    local_settings = _settings(tmp_path / "here", redis_url="")
    queued_settings = _settings(tmp_path / "queued", redis_url=queue_env)
    emb = get_embedder("test-tiny", device="cpu")
    for settings in (local_settings, queued_settings):  # before the worker owns its store
        _old_store(settings.store_path, emb, [old / "p009" / "ct.nii.gz"])
    worker(store_path=queued_settings.store_path,
           env={"MEDIR_PLUGINS": "tests.plugin_embedder", "MEDIR_MODEL": "test-tiny"})
    labels = {"p001/ct": {"modality": "CT", "region": "chest"}, "p002/ct": {"modality": "MR"},
              "p003/ct": {"modality": "CT", "region": "head"}}
    options = IngestOptions(model="test-tiny", intensity="auto", labels=labels)
    runs = (local_settings, queued_settings)
    listed: list[tuple[Any, ...]] = []
    for settings in runs:
        with get_runner(settings) as runner:
            migrated = (runner.migrate([old]), runner.migrate([old]))
            outcome = runner.ingest(scan_paths([cases]).sources, options)
            assert runner.watch(outcome.job_ids, poll_s=0.05) and outcome.failed == 0
            with pytest.raises(NoCollection, match="no collection for model 'no-such-model'"):
                runner.volumes("no-such-model")
            listed.append((
                migrated,
                _rows(runner.volumes()),
                _rows(runner.volumes("test-tiny", {"modality": ["CT"]})),
                _rows(runner.volumes(None, {"modality": ["CT", "MR"], "region": ["chest"]})),
                runner.volume_ids("test-tiny"),
            ))
    assert listed[0] == listed[1]
    migrated, everything, ct, chest, ids = listed[0]
    assert migrated == ({"medir_test_tiny": 6}, {})
    assert ids == [v["volume_id"] for v in everything] == ["p001/ct", "p002/ct", "p003/ct",
                                                           "p009/ct"]
    assert [v["volume_id"] for v in ct] == ["p001/ct", "p003/ct"]
    assert [v["volume_id"] for v in chest] == ["p001/ct"]

    shutil.rmtree(cases / "p002")  # its file is gone, for both stores
    pruned = []
    for settings in runs:
        with get_runner(settings) as runner:
            pruned.append((_pruned(runner.prune(apply=False)), _pruned(runner.prune(apply=True)),
                           _pruned(runner.prune(apply=False)), runner.volume_ids("test-tiny")))
    assert pruned[0] == pruned[1]
    dry, applied, after, left = pruned[0]
    assert dry[:3] == (False, 0, {"present": 3, "gone": 1, "unknown": 0})
    assert [c[2][0]["volume_id"] for c in dry[4] if c[0] == "gone"] == ["p002/ct"]
    assert applied[:3] == (True, 7, {"present": 3, "gone": 1, "unknown": 0})
    assert after[2] == {"present": 3, "gone": 0, "unknown": 0}
    assert left == ["p001/ct", "p003/ct", "p009/ct"]
    _hostile_maintenance_is_refused(queued_settings, left)


def _hostile_maintenance_is_refused(settings: Settings, ids: list[str]) -> None:
    """Raw maintenance messages that break a rule fail at once as TaskRefused (a retried one
    would end "gave up after N retries"); the worker's store is as it was."""
    from runner.queue import (
        MIGRATE_TASK,
        PRUNE_TASK,
        SEARCH_QUEUE,
        VOLUME_IDS_TASK,
        VOLUMES_TASK,
        TaskFailed,
    )
    from runner.queue.app import get_app
    from runner.queue.jobs import job_store

    app = get_app(settings)
    hostile = [
        (PRUNE_TASK, {"apply": "yes"}, "apply must be true or false"),
        (MIGRATE_TASK, {"roots": ["/etc"]}, "outside the folders"),
        (MIGRATE_TASK, {"roots": "/tmp"}, "roots must be a list"),
        (MIGRATE_TASK, {"roots": ["relative/old"]}, "not an absolute path"),
        (VOLUMES_TASK, {"filters": {"colour": ["red"]}}, "cannot filter on"),
        (VOLUMES_TASK, {"filters": {"modality": ["x"] * 10_000}}, "at most 256"),
        (VOLUMES_TASK, {"model": "m" * 100_000}, "longer than 200 characters"),
        (VOLUME_IDS_TASK, {"model": ["test-tiny"]}, "model must be a string"),
    ]
    for name, kwargs, why in hostile:
        res = app.send_task(name, queue=SEARCH_QUEUE, kwargs=kwargs)
        res.get(timeout=120, propagate=False)  # the answer: an event, bounded
        err = res.result
        assert res.state == "FAILURE" and isinstance(err, TaskFailed), (name, res.state, err)
        assert err.kind == "TaskRefused" and why in str(err), (name, str(err))
        if name in (PRUNE_TASK, MIGRATE_TASK):  # maintenance writes are recorded as jobs
            record = job_store(settings).get(res.id)
            assert record is not None and record.state == "FAILURE" and record.retries == 0
    with get_runner(settings) as runner:
        assert runner.volume_ids("test-tiny") == ids


class _FakeResult:
    """A Celery result that walks through given (state, info) looks, one per read of its
    state, then stays at the last; reads after the job finished are counted."""

    def __init__(self, looks: list[tuple[str, Any]]) -> None:
        self.looks, self.reads, self.look = looks, 0, looks[0]

    @property
    def state(self) -> str:
        self.look = self.looks[min(self.reads, len(self.looks) - 1)]
        self.reads += 1
        return str(self.look[0])

    @property
    def info(self) -> Any:
        return self.look[1]

    result = info


class _FakeApp:
    """Just what the watch uses of a Celery app; no worker answers its ping."""

    def __init__(self, results: dict[str, _FakeResult]) -> None:
        self.results, self.pings = results, 0

        class Control:
            @staticmethod
            def ping(timeout: float) -> list[Any]:
                self.pings += 1
                return []

        self.control = Control()

    def AsyncResult(self, task_id: str) -> _FakeResult:  # noqa: N802 - Celery's name
        return self.results[task_id]


def test_watch_reports_job_states_and_a_missing_worker_as_events() -> None:
    """The queue's watch hands every look to the caller, in the order of the ids: progress
    meta as slices done, a report once succeeded, the worker's error (and its class) once
    failed; a finished job is not read again; nothing started past the hint time and no
    worker answering the (single) ping is a state of the updates, not a print."""
    from runner.queue import TaskFailed
    from runner.queue.watch import watch_jobs

    report = {"status": "indexed", "n_slices": 4, "task_seconds": 0.5}
    results = {
        "a": _FakeResult([("PENDING", None), ("PENDING", None), ("STARTED", None),
                          ("PROGRESS", {"done": 2, "total": 4}), ("SUCCESS", report)]),
        "b": _FakeResult([("PENDING", None), ("PENDING", None),
                          ("FAILURE", TaskFailed("/x.nii: truncated", "VolumeError"))]),
    }
    app = _FakeApp(results)
    updates: list[JobsUpdate] = []
    ok = watch_jobs(app, ["a", "b"], {"a": "vol-a"}, updates.append,  # type: ignore[arg-type]
                    poll_s=0, hint_s=-1)
    assert ok is False and len(updates) == 5 and app.pings == 1
    assert [[j.state for j in u.jobs] for u in updates] == [
        ["PENDING", "PENDING"], ["PENDING", "PENDING"], ["STARTED", "FAILURE"],
        ["PROGRESS", "FAILURE"], ["SUCCESS", "FAILURE"]]
    assert [u.no_worker for u in updates] == [True, True, False, False, False]
    a, b = updates[-1].jobs
    assert (a.name, a.done, a.total, a.result) == ("vol-a", 2, 4, report)
    assert (b.name, b.error, b.error_type) == ("b", "/x.nii: truncated", "VolumeError")
    assert results["b"].reads == 3  # not read again once it failed
    assert updates[-1].finished and not updates[-1].succeeded
