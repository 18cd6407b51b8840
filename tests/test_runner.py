"""The runner as the one way in: the factory decides queue and store ownership once; the
in-process runner's methods (the queued one's against Redis are in tests/test_queue.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from medir.config import Settings
from runner import IngestOptions, JobState, Runner, get_runner, queue_on, store_is_server
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
    # the embedded store belongs to the worker: this process does not read it
    assert get_runner(queued).volume_ids("test-tiny") is None
    kept = get_runner(plain, queue=False, keep_store_open=True)
    assert isinstance(kept, LocalRunner) and kept.keep_store_open


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
        assert runner.follow([], console=None) is True  # type: ignore[arg-type]
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


def _wait_finished(runner: Runner, ids: list[str], timeout: float = 180.0) -> list[JobState]:
    """The jobs' states once all finished (polled from their records, bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        states = runner.jobs(ids)
        if all(s.finished for s in states):
            return states
        assert time.monotonic() < deadline, f"jobs not finished: {states}"
        time.sleep(0.2)


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
            outcome = runner.ingest(files, options)
            if outcome.queued:
                assert runner.mode == "queue"
                assert sorted(outcome.job_volumes.values()) == ["copy0", "v0", "v1", "v2", "v3"]
                states = _wait_finished(runner, outcome.job_ids)
                assert {s.state for s in states} == {"SUCCESS"}
            else:
                assert runner.mode == "local" and outcome.failed == 0
            stats = runner.stats()
            by_file = runner.search(str(files[0]), query, model="test-tiny")
            by_id = runner.search("v2", query, model="test-tiny", by_id=True)
            liked = runner.search("v2", replace(query, like=["v1"], unlike=["v3"]),
                                  model="test-tiny", by_id=True)
            pairs = runner.audit("test-tiny", AuditOptions(slice_min=0.99))
        assert {(p["a"], p["b"]) for p in pairs} == {("copy0", "v0")}
        assert "v1" not in [r["volume_id"] for r in liked["ranking"]]
        answers.append((
            [(c["name"], c["volumes"], c["points"]) for c in stats["collections"]],
            [(r["volume_id"], round(r["votes"], 5)) for r in by_file["ranking"]],
            by_file["query"]["vectors"],
            [(r["volume_id"], round(r["votes"], 5)) for r in by_id["ranking"]],
            [(r["volume_id"], round(r["rerank_score"], 5)) for r in liked["ranking"]],
            [(p["a"], p["b"], round(p["score"], 5)) for p in pairs],
        ))
    assert modes == ["local", "queue"]
    assert answers[0] == answers[1]
    assert answers[0][0] == [("medir_test_tiny", 5, 30)]


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
