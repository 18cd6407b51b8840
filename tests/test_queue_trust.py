"""The worker trusts no Redis client (issue 21, item 11): a raw task naming a file outside the
folders the worker reads from is refused and nothing is stored, oversized message fields are
refused, and a worker refuses to start on a broker without a password outside development.

A real ``redis-server`` (with a password) and real ``medir worker`` processes
(tests/queue_fixtures.py). Each test fails on the code before the fix.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medir.config import Settings, get_settings
from medir.errors import ConfigError
from tests.queue_fixtures import (  # noqa: F401 - fixtures used by name
    StartWorker,
    queue_env,
    redis_server,
    worker,
)
from tests.test_cli import medir
from tests.test_pipeline import _blob_volume

pytestmark = [pytest.mark.queue, pytest.mark.timeout(600)]

TINY = {"MEDIR_PLUGINS": "tests.plugin_embedder", "MEDIR_MODEL": "test-tiny"}
WAIT_S = 120.0


def _outcome(app: Any, task_id: str) -> tuple[str, str]:
    """The final state and error (or status) of a task, waited for with a bounded deadline."""
    res = app.AsyncResult(task_id)
    deadline = time.monotonic() + WAIT_S
    while not res.ready():
        assert time.monotonic() < deadline, f"task {task_id} did not finish"
        time.sleep(0.05)
    if res.state == "SUCCESS":
        return "SUCCESS", str(res.result.get("status"))
    return res.state, str(res.result)


def test_raw_tasks_outside_the_roots_are_refused_and_nothing_is_stored(
        worker: StartWorker, queue_env: str, make_nifti, tmp_path: Path,  # noqa: F811
) -> None:
    from runner.queue import INGEST_QUEUE, INGEST_TASK, SEARCH_QUEUE, SEARCH_TASK
    from runner.queue.app import get_app
    from runner.queue.jobs import job_store
    from runner.queue.submit import submit_stats
    from search.store import collection_name

    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    affine = np.diag([1, 1, 2.0, 1])
    good = make_nifti(_blob_volume(0, seed=1), affine, name="root/good.nii.gz")
    outside = make_nifti(_blob_volume(1, seed=2), affine, name="elsewhere/secret.nii.gz")
    (root / "link.nii.gz").symlink_to(outside)
    (root / "sub").mkdir()
    w = worker(store_path=tmp_path / "store", env={
        **TINY, "MEDIR_DATA_DIR": str(root / "data"), "MEDIR_UI__INGEST_ROOTS": json.dumps([
            str(root)]), "MEDIR_QUEUE__ROOTS": "[]"})
    app = get_app(get_settings())
    records = job_store(get_settings())

    def ingest(task_id: str, **kwargs: Any) -> tuple[str, str]:
        from runner.queue.jobs import Job

        records.create(Job(task_id, kind="ingest"))
        app.send_task(INGEST_TASK, task_id=task_id, queue=INGEST_QUEUE,
                      kwargs={"index_4d": None, "model": "test-tiny", **kwargs})
        return _outcome(app, task_id)

    refused = {
        "passwd": dict(path="/etc/passwd"),
        "outside": dict(path=str(outside), volume_id="secret"),
        "link": dict(path=str(root / "link.nii.gz"), volume_id="link"),
        "dotdot": dict(path=str(root / "sub" / ".." / ".." / "elsewhere" / "secret.nii.gz"),
                       volume_id="dotdot"),
        "relative": dict(path="elsewhere/secret.nii.gz", volume_id="rel"),
        "series": dict(path=str(good), volume_id="1.2.3", files=[str(good), str(outside)]),
        "pacs": dict(path="dicomweb+http://127.0.0.1:9/dicom-web/studies/1/series/2"),
        "labels": dict(path=str(good), volume_id="good",
                       labels={f"k{i}": "v" for i in range(10_000)}),
        "long id": dict(path=str(good), volume_id="x" * 100_000),
        "bad type": dict(path=str(good), volume_id="good", index_4d="0; rm -rf /"),
    }
    for name, kwargs in refused.items():
        state, error = ingest(f"refused-{name.replace(' ', '-')}", **kwargs)
        assert state == "FAILURE" and "refused" in error, (name, state, error, w.tail())
        record = records.get(f"refused-{name.replace(' ', '-')}")
        assert record is not None and record.state == "FAILURE"
        assert "refused" in record.error and len(record.error) < 2000, record.error
    assert "outside the folders" in ingest("again", path=str(outside))[1]

    res = app.send_task(SEARCH_TASK, queue=SEARCH_QUEUE,
                        kwargs={"volume": str(outside), "model": "test-tiny", "options": {}})
    state, error = _outcome(app, res.id)
    assert state == "FAILURE" and "outside the folders" in error, error
    res = app.send_task(SEARCH_TASK, queue=SEARCH_QUEUE, kwargs={
        "volume": "good", "by_id": True, "model": "test-tiny", "options": {"nope": 1}})
    state, error = _outcome(app, res.id)
    assert state == "FAILURE" and "refused" in error and "nope" in error, error

    assert ingest("good", path=str(good), volume_id="good") == ("SUCCESS", "indexed")
    stats = submit_stats(get_settings())
    coll = next(c for c in stats["collections"] if c["name"] == collection_name("test-tiny"))
    assert coll["volumes"] == 1 and coll["points"] == coll["ready_points"]
    assert w.alive


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def test_worker_refuses_a_broker_without_a_password(redis_server: str) -> None:  # noqa: F811
    url = _without_password(redis_server)
    r = medir("worker", env={"MEDIR_REDIS_URL": url, "MEDIR_QUEUE__ALLOW_INSECURE_BROKER": "0",
                             "MEDIR_REQUIRE_SECRETS": "0"})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no password" in lines[0], r.stderr
    assert "MEDIR_QUEUE__ALLOW_INSECURE_BROKER" in lines[0]


def test_broker_password_check() -> None:
    from runner.queue.worker import check_broker_auth

    with pytest.raises(ConfigError, match="no password"):
        check_broker_auth(Settings(redis_url="redis://127.0.0.1:6379/0"))
    with pytest.raises(ConfigError, match="no password"):
        check_broker_auth(Settings(redis_url="rediss://user@redis.example:6380/0"))
    check_broker_auth(Settings(redis_url="redis://:0123456789abcdef0123@redis:6379/0"))
    check_broker_auth(Settings(redis_url="redis://redis:6379/0?password=0123456789abcdef0123"))
    check_broker_auth(Settings.model_validate({
        "redis_url": "redis://127.0.0.1:6379/0", "queue": {"allow_insecure_broker": True}}))
    with pytest.raises(ConfigError, match="no password"):  # production asks for secrets
        check_broker_auth(Settings.model_validate({
            "redis_url": "redis://127.0.0.1:6379/0", "require_secrets": True,
            "queue": {"allow_insecure_broker": True}}))


def test_queue_progress_and_jobs_show_hostile_names_literally(
        worker: StartWorker, queue_env: str, make_nifti, tmp_path: Path,  # noqa: F811
) -> None:
    """Item 8 through the queue: the follow bars and lines of ``ingest --queue`` and the table
    of ``medir jobs`` show markup and escapes in names literally."""
    esc = "\x1b"
    coll = tmp_path / "coll"
    (coll / "p001[").mkdir(parents=True)
    affine = np.diag([1, 1, 2.0, 1])
    make_nifti(_blob_volume(0, seed=1), affine, name="coll/p001[/]ct.nii.gz")
    make_nifti(_blob_volume(1, seed=2), affine, name=f"coll/{esc}[2Kok.nii.gz")
    (coll / f"bad{esc}[31m[x].nii.gz").write_bytes(b"not a volume")
    worker(store_path=tmp_path / "store", env=TINY)
    r = medir("ingest", "--queue", coll, "--model", "test-tiny", env={"COLUMNS": "300"})
    out = r.stdout + r.stderr
    assert "MarkupError" not in out and "Traceback" not in out and esc not in out, out
    assert r.returncode == 1, out  # the bad file fails alone
    assert "p001[/]ct" in out and "\\x1b[2Kok" in out and "bad\\x1b[31m[x]" in out, out
    r = medir("jobs", env={"COLUMNS": "300"})
    out = r.stdout + r.stderr
    assert r.returncode == 0 and esc not in out and "MarkupError" not in out, out
    assert "p001[/]ct" in out and "\\x1b[2Kok" in out, out


def test_maintenance_task_arguments_are_checked(tmp_path: Path) -> None:
    """The store-maintenance tasks (volumes, volume ids, prune, migrate) check every argument
    before the store is touched: types, sizes, label keys, migrate roots inside the worker's
    folders (links resolved); what passes comes out as the runner takes it."""
    from runner.queue import TaskRefused
    from runner.queue.checks import (
        MAX_FILTER_VALUES,
        MAX_ROOTS,
        check_migrate,
        check_prune,
        check_volume_ids,
        check_volumes,
    )

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "old").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    s = Settings.model_validate({"data_dir": root, "model": "test-tiny",
                                 "ui": {"ingest_roots": []}, "queue": {"roots": []}})

    a = check_volumes("test-tiny", {"modality": ["CT", "MR"], "region": ("chest",)})
    assert (a.model, a.filters) == ("test-tiny", {"modality": ["CT", "MR"], "region": ["chest"]})
    assert check_volumes(None, None).filters == {} and check_volumes(None, None).model is None
    assert check_volume_ids(s, None) == "test-tiny" and check_volume_ids(s, "m") == "m"
    assert check_prune(True) is True and check_prune(False) is False
    assert check_migrate(s, [str(root / "old"), str(root)]) == [root / "old", root]
    assert check_migrate(s, None) == []
    refused: list[tuple[Any, str]] = [
        (lambda: check_volumes(7, None), "model must be a string"),
        (lambda: check_volumes(None, ["modality"]), "filters must be a mapping"),
        (lambda: check_volumes(None, {"patient_name": ["x"]}), "cannot filter on"),
        (lambda: check_volumes(None, {"modality": "CT"}), "must be a list"),
        (lambda: check_volumes(None, {"modality": ["x"] * (MAX_FILTER_VALUES + 1)}),
         f"at most {MAX_FILTER_VALUES}"),
        (lambda: check_volumes(None, {"modality": ["x" * 300]}), "longer than 256"),
        (lambda: check_volumes(None, {"modality": [None]}), "must be a string"),
        (lambda: check_volume_ids(s, "m" * 201), "longer than 200"),
        (lambda: check_volume_ids(s, "m\x00"), "NUL"),
        (lambda: check_prune("yes"), "apply must be true or false"),
        (lambda: check_prune(1), "apply must be true or false"),
        (lambda: check_migrate(s, str(root)), "roots must be a list"),
        (lambda: check_migrate(s, [str(root)] * (MAX_ROOTS + 1)), f"at most {MAX_ROOTS}"),
        (lambda: check_migrate(s, [str(outside)]), "outside the folders"),
        (lambda: check_migrate(s, [str(root / "escape")]), "outside the folders"),
        (lambda: check_migrate(s, [str(root / ".." / "outside")]), "outside the folders"),
        (lambda: check_migrate(s, ["old"]), "not an absolute path"),
        (lambda: check_migrate(s, [3]), "must be a string"),
    ]
    for call, why in refused:
        with pytest.raises(TaskRefused, match=why):
            call()
