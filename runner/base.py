"""Where the work runs: one interface, an in-process and a queued implementation.

The CLI, the UI and the Celery tasks call a :class:`Runner`; :func:`runner.get_runner` picks
the implementation once from the settings (like ``QdrantClient`` picks local or remote in its
constructor), and every call above it is the same whichever runs the work:

* :class:`runner.local.LocalRunner` embeds and searches in this process; it owns the
  process's embedders (one cache) and the store (opened per call, or kept open by a worker).
* :class:`runner.queued.QueueRunner` sends the same calls to Celery workers, each of which
  runs them on its own ``LocalRunner``.

Options arrive parsed and validated (:class:`search.query.QueryOptions`, :class:`IngestOptions`),
so a bad option fails before the queue or the model is touched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medir.config import Settings

if TYPE_CHECKING:
    from ingest.collection import VolumeSource
    from ingest.dicomweb import PacsSeries, Target
    from ingest.pipeline import IngestReport
    from search.audit import AuditOptions
    from search.query import QueryOptions
    from search.volumes import PruneResult, VolumeInfo

ProgressFn = Callable[[str, int, int], None]
ReportFn = Callable[["IngestReport"], None]

FINISHED = ("SUCCESS", "FAILURE", "REVOKED")


# ---- where the work runs: decided here, once, from the settings ------------------------------
def queue_on(settings: Settings) -> bool:
    """Whether work goes to the Celery queue: a broker is configured (``MEDIR_REDIS_URL``)."""
    return bool(settings.redis_url)


def store_is_server(settings: Settings) -> bool:
    """Whether the store is a Qdrant server (``MEDIR_QDRANT_URL``), which any number of
    processes open at once; otherwise it is the embedded store, which one process opens."""
    return bool(settings.qdrant_url)

@dataclass(frozen=True)
class IngestOptions:
    """What to ingest with: the model, the intensity mode, re-embedding, labels per volume id.

    ``labels`` None means "no labels table" (stored labels are kept on re-ingest); ``ids`` maps
    a file to the volume id a labels table gave it (the folder walk uses it).
    """

    model: str
    intensity: str
    force: bool = False
    labels: Mapping[str, Mapping[str, str]] | None = None
    ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medir.config import check_intensity
        from medir.errors import MedirError

        if not self.model:
            raise MedirError("no model given")
        check_intensity(self.intensity)


@dataclass
class JobState:
    """Where one queued job stands: its record in Redis, written by the worker
    (:meth:`Runner.jobs`), or its Celery result, report included (:meth:`Runner.watch`)."""

    id: str
    name: str
    state: str  # PENDING | STARTED | PROGRESS | RETRY | SUCCESS | FAILURE | REVOKED
    done: int = 0
    total: int = 0
    error: str = ""
    submitted: float = 0.0
    #: The class of the error (a :class:`medir.errors.MedirError` subclass's name), if any.
    error_type: str = ""
    #: A finished job's answer (an ingest job's report: ``status``, ``n_slices``,
    #: ``task_seconds``, ...); empty until it succeeded, or when only its record was read.
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def started(self) -> bool:
        """A worker took the job (it runs, or ran)."""
        return self.state in ("STARTED", "PROGRESS") or self.finished

    @property
    def fraction(self) -> float:
        if self.state == "SUCCESS":
            return 1.0
        return min(self.done / self.total, 1.0) if self.total else 0.0


@dataclass(frozen=True)
class JobsUpdate:
    """One look at the jobs :meth:`Runner.watch` follows: each job's state, in the order the
    ids were given. It carries what a display needs and no display: the command line draws its
    bars from it (``medir/cli/progress.py``), a test waits on it."""

    jobs: list[JobState]
    #: Seconds since the watch began.
    waited_s: float = 0.0
    #: None of the jobs has started and no worker answered a ping (asked once, when nothing
    #: had started :data:`NO_WORKER_HINT_S` after the watch began): the jobs wait in the
    #: queue for a worker to be started.
    no_worker: bool = False

    @property
    def finished(self) -> bool:
        return all(j.finished for j in self.jobs)

    @property
    def succeeded(self) -> bool:
        """Every job finished, successfully."""
        return all(j.state == "SUCCESS" for j in self.jobs)


UpdateFn = Callable[[JobsUpdate], None]
#: How often :meth:`Runner.watch` looks at the jobs, and after how long with none started it
#: asks whether any worker answers.
POLL_S = 0.5
NO_WORKER_HINT_S = 10.0


@dataclass
class IngestOutcome:
    """What an ingest call gave: the reports (work done here) or the job ids (work queued)."""

    reports: list[IngestReport] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    #: The volume id each job indexes (job id → volume id).
    job_volumes: dict[str, str] = field(default_factory=dict)

    @property
    def queued(self) -> bool:
        return bool(self.job_ids)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.reports if r.status == "failed")


class Runner(ABC):
    """The one door to medir's work: ingest, search, statistics, volumes and jobs."""

    mode: str  # "local" | "queue"

    @abstractmethod
    def ingest(self, sources: Sequence[VolumeSource | Path], options: IngestOptions, *,
               progress: ProgressFn | None = None,
               on_report: ReportFn | None = None) -> IngestOutcome:
        """Index ``sources``: here (reports, through ``on_report`` as each volume ends) or on
        the queue (one job per 3D volume; their ids)."""

    @abstractmethod
    def ingest_pacs(self, series: Sequence[PacsSeries], options: IngestOptions, *,
                    target: Target, on_report: ReportFn | None = None) -> IngestOutcome:
        """Index series of a PACS (found with :func:`ingest.dicomweb.list_series` on
        ``target``): here, one at a time, or on the queue (one job per series)."""

    @abstractmethod
    def watch(self, ids: Sequence[str], on_update: UpdateFn | None = None, *,
              poll_s: float = POLL_S) -> bool:
        """Look at the jobs ``ids`` every ``poll_s`` seconds until all finished, handing each
        look to ``on_update`` (:class:`JobsUpdate`); True when every one succeeded. In-process
        work has no jobs: True at once, no update."""

    @abstractmethod
    def workers_alive(self) -> bool:
        """Whether a worker would run submitted jobs (in-process: this process, always)."""

    @abstractmethod
    def search(self, query: str, options: QueryOptions, *, model: str, by_id: bool = False,
               index_4d: int | None = None) -> dict[str, Any]:
        """One volume query (a file, or an indexed volume id with ``by_id``) → result dict."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Store mode and location; per collection volumes, points and label facets."""

    @abstractmethod
    def audit(self, model: str, options: AuditOptions,
              progress: ProgressFn | None = None) -> list[dict[str, Any]]:
        """Near-duplicate pairs of one model's collection (:mod:`search.audit`), best first."""

    @abstractmethod
    def volumes(self, model: str | None = None,
                filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
        """The indexed volumes (one model's collection, or all), with label ``filters``."""

    @abstractmethod
    def volume_ids(self, model: str) -> list[str]:
        """Ids of the complete volumes indexed with ``model`` (none without its collection)."""

    @abstractmethod
    def prune(self, apply: bool) -> PruneResult:
        """Every volume's source checked: present, gone or unknown (kept, with the reason);
        with ``apply`` the gone ones are deleted."""

    @abstractmethod
    def migrate(self, roots: Sequence[Path]) -> dict[str, int]:
        """Upgrade a store written before volume identities (in place, no re-embedding)."""

    @abstractmethod
    def jobs(self, ids: Sequence[str]) -> list[JobState]:
        """The state of each job id an ingest returned (none in-process)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the runner holds (a store kept open)."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
