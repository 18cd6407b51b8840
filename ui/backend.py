"""The UI's adapter over the runner (:mod:`runner`): store statistics, indexed volumes,
searches and ingests, with queue failures turned into one message saying what to start.

Where the work runs is the runner's choice, made once from the settings: in queue mode
(``MEDIR_REDIS_URL`` set) a worker owns the model (and, with the embedded store, the store);
otherwise this Streamlit process embeds and searches itself, with its embedders loaded once,
opening the embedded store per request under a process-wide lock (the runner's) and closing it
after: the store's process lock (:mod:`search.store_lock`) is held only while a request is
served, so ``medir info`` and the other commands work in a shell while the UI runs (and wait,
bounded, while it serves a request; the UI waits for them the same way).

No Streamlit here: the pages render, this module computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medir.config import Settings
from medir.errors import MedirError, QueueUnavailable, StoreUnavailable
from medir.secrets import mask_secrets, safe_url
from runner import IngestOptions, get_runner, queue_on, store_is_server
from runner.library import (
    CollectionScan,
    DicomSeries,
    IngestReport,
    Limits,
    QueryOptions,
    Skipped,
    VolumeSource,
    cohort_rows,
    dicom_folder_series,
    open_dicom_folder,
    scan_paths,
)
from runner.library import cohort_text as cohort_file_text

__all__ = ["QueueUnavailable", "check_dicom_query", "cohort_text", "dicom_query_series",
           "indexed_volumes", "ingest_here", "mode_text", "queue_calls", "queue_error",
           "queue_mode", "scan_upload_folder", "search", "stats"]


def queue_mode(settings: Settings) -> bool:
    """Whether work goes to the queue (the runner's decision, :func:`runner.queue_on`)."""
    return queue_on(settings)


def mode_text(settings: Settings) -> str:
    """One line naming where searches run and which store they use."""
    store = f"Qdrant server {safe_url(settings.qdrant_url)}" if store_is_server(settings) else (
        f"embedded store {settings.store_path}")
    runner = (f"queue at {safe_url(settings.redis_url)}" if queue_mode(settings)
              else "in this process")
    return mask_secrets(f"{store} · searches run {runner}")


def queue_error(exc: BaseException, settings: Settings) -> QueueUnavailable:
    """A clear 'worker not running / queue unavailable' error for any queue failure."""
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return QueueUnavailable(mask_secrets(
        f"The queue at {safe_url(settings.redis_url)} did not answer: is redis-server running "
        f"and is a worker started (medir worker)? ({detail})"
    ))


@contextmanager
def queue_calls(settings: Settings) -> Iterator[None]:
    """Turn a broker or worker that does not answer into :class:`QueueUnavailable`.

    The queue client reports both as StoreUnavailable (no broker, no answer in time); any other
    non-medir exception (ImportError, connection errors) is the same failure seen from here.
    In-process calls pass through untouched.
    """
    if not queue_mode(settings):
        yield
        return
    try:
        yield
    except QueueUnavailable:
        raise
    except StoreUnavailable as exc:
        raise QueueUnavailable(f"{exc}") from exc
    except MedirError:
        raise
    except Exception as exc:  # ImportError, redis/kombu connection errors, Celery timeouts
        raise queue_error(exc, settings) from exc


def stats(settings: Settings) -> dict[str, Any]:
    """Store mode, and per collection volumes, points and label facets."""
    with queue_calls(settings), get_runner(settings) as runner:
        return runner.stats()


def indexed_volumes(settings: Settings, model: str) -> list[str]:
    """Ids of the complete volumes indexed with ``model`` (in queue mode with the embedded
    store, the worker that owns it answers)."""
    with queue_calls(settings), get_runner(settings) as runner:
        return runner.volume_ids(model)


def search(
    settings: Settings,
    query: str,
    model: str,
    options: QueryOptions,
    *,
    by_id: bool = False,
) -> dict[str, Any]:
    """One volume query (a file path, or an indexed volume id with ``by_id``) → result dict
    (``options`` were validated, and their specs parsed, when they were built)."""
    with queue_calls(settings), get_runner(settings) as runner:
        return runner.search(query, options, model=model, by_id=by_id)


ProgressFn = Callable[[str, int, int], None]
ReportFn = Callable[[IngestReport], None]


def ingest_here(
    settings: Settings,
    files: Sequence[VolumeSource | Path],
    model: str,
    labels: Mapping[str, Mapping[str, str]] | None,
    progress: ProgressFn | None = None,
    on_report: ReportFn | None = None,
) -> list[IngestReport]:
    """Ingest in this process (no broker): every volume of every file; bad files are reported."""
    options = IngestOptions(model=model, intensity=settings.intensity, labels=labels)
    with get_runner(settings, queue=False) as runner:
        return runner.ingest(files, options, progress=progress, on_report=on_report).reports


# ---- DICOM uploads: the CLI's reader and folder walker, with the settings' limits ---------------
def dicom_query_series(folder: Path, settings: Settings) -> tuple[list[DicomSeries], list[Skipped]]:
    """The image series of a flat folder of uploaded DICOM files, grouped as ``medir search
    FOLDER`` groups them (:func:`runner.library.dicom_folder_series`)."""
    return dicom_folder_series(folder, Limits.of(settings.limits))


def check_dicom_query(folder: Path, settings: Settings) -> int:
    """Open a folder of one DICOM series as ``medir search FOLDER`` opens it (declared size
    against the settings' limits, geometry; no pixel decoded); returns its number of slices."""
    return int(open_dicom_folder(folder, Limits.of(settings.limits)).shape[2])


def scan_upload_folder(folder: Path) -> CollectionScan:
    """The volumes of a folder as ``medir ingest FOLDER`` walks it (a DICOM series: one volume,
    its id the SeriesInstanceUID), and what it leaves out."""
    return scan_paths([folder])


# ---- cohort export: the CLI's cohort table of a search result -----------------------------------
def cohort_text(result: Mapping[str, Any], fmt: str) -> str:
    """The ranking of a search result (the dict the runner returns) as cohort CSV (``.csv``) or
    JSON (``.json``), as ``medir search --export`` writes it; the answer's confidence when the
    result carries one."""
    confidence = (result.get("confidence") if isinstance(result, Mapping)
                  else getattr(result, "confidence", None))
    if not isinstance(confidence, (int, float, Mapping)) or isinstance(confidence, bool):
        confidence = None  # absent, or a shape this export does not know
    return cohort_file_text(cohort_rows(result["ranking"], confidence), fmt)
