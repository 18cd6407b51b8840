"""Ingest jobs in queue mode: submit files to the Celery queue and read each job's progress.

The queue (``ingest.queue``) is imported lazily, only when a broker is configured, so the UI
works without Celery or Redis in in-process mode. A job is one ``ingest_volume`` task; its
progress is the task state's ``done``/``total`` slices (state ``PROGRESS``), its error the
failure's message. Any failure to reach Redis becomes :class:`~ui.backend.QueueUnavailable`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medir.config import Settings
from ui.backend import _queue_calls

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class JobState:
    """Where one ingest job stands."""

    id: str
    name: str
    state: str  # PENDING | STARTED | PROGRESS | SUCCESS | FAILURE | RETRY | REVOKED
    done: int = 0
    total: int = 0
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float:
        if self.state == "SUCCESS":
            return 1.0
        return min(self.done / self.total, 1.0) if self.total else 0.0


def _ids(submitted: Any) -> list[str]:
    """Job ids from whatever ``submit_ingest`` returned (ids, AsyncResults, dicts, a group)."""
    if submitted is None or isinstance(submitted, bool):
        raise RuntimeError("submit_ingest(wait=False) returned no job ids")
    if isinstance(submitted, str):
        return [submitted]
    if hasattr(submitted, "results"):  # GroupResult
        return _ids(list(submitted.results))
    out: list[str] = []
    for item in submitted if isinstance(submitted, Sequence) else [submitted]:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(str(item.get("id") or item.get("task_id") or item.get("job_id")))
        else:
            out.append(str(item.id))
    return out


def submit(settings: Settings, files: Sequence[Path],
           model: str, labels: Mapping[str, Mapping[str, str]] | None) -> list[str]:
    """Submit one ingest job per volume of ``files``; returns the job ids."""
    with _queue_calls(settings):
        from ingest.queue.submit import submit_ingest

        return _ids(submit_ingest([Path(f).resolve() for f in files], model, labels,
                                  wait=False))


def _celery_app() -> Any:
    for module in ("ingest.queue.app", "ingest.queue.celery_app", "ingest.queue"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        for attr in ("app", "celery_app", "celery"):
            if hasattr(getattr(mod, attr, None), "AsyncResult"):
                return getattr(mod, attr)
    raise RuntimeError("no Celery app found in ingest.queue")


def _state(result: Any) -> JobState:
    info = result.info
    state = str(result.state)
    done = total = 0
    name, error = result.id, ""
    if isinstance(info, Mapping):
        done = int(info.get("done", info.get("current", 0)) or 0)
        total = int(info.get("total", 0) or 0)
        name = str(info.get("volume_id") or info.get("path") or name)
        error = str(info.get("error", ""))
    elif isinstance(info, BaseException):
        error = str(info)
    if state == "SUCCESS" and total == 0 and isinstance(info, Mapping):
        total = done = int(info.get("n_slices", 0) or 0)
    return JobState(result.id, name, state, done, total, error)


def states(settings: Settings, ids: Sequence[str]) -> list[JobState]:
    """The current state of each job."""
    with _queue_calls(settings):
        app = _celery_app()
        return [_state(app.AsyncResult(i)) for i in ids]
