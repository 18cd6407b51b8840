"""The UI's adapter over the runner (:mod:`runner`): store statistics, indexed volumes,
searches and ingests, with queue failures turned into one message saying what to start.

Where the work runs is the runner's choice, made once from the settings: in queue mode
(``MEDIR_REDIS_URL`` set) a worker owns the model (and, with the embedded store, the store);
otherwise this Streamlit process embeds and searches itself, opening the embedded store per
request under a process-wide lock (the runner's), with its embedders loaded once.

No Streamlit here: the pages render, this module computes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ingest.collection import CollectionScan, VolumeSource
from ingest.dicom import DicomSeries, Skipped
from ingest.pipeline import IngestReport
from ingest.reader import Limits, VolumeFile
from medir.config import Settings
from medir.errors import MedirError, StoreUnavailable
from medir.secrets import mask_secrets, safe_url
from runner import IngestOptions, get_runner
from runner.local import LocalRunner
from search.query import QueryOptions


class QueueUnavailable(MedirError):
    """Redis or the Celery worker cannot be reached (queue mode)."""


def queue_mode(settings: Settings) -> bool:
    return bool(settings.redis_url)


def mode_text(settings: Settings) -> str:
    """One line naming where searches run and which store they use."""
    store = f"Qdrant server {safe_url(settings.qdrant_url)}" if settings.qdrant_url else (
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
    with queue_calls(settings):
        return get_runner(settings).stats()


def indexed_volumes(settings: Settings, model: str) -> list[str] | None:
    """Ids of the complete volumes indexed with ``model``; None when this process cannot read
    the store (queue mode with the embedded store, which the worker owns)."""
    from search.store import READY, collection_name

    if queue_mode(settings) and not settings.qdrant_url:
        return None
    coll = collection_name(model)
    with LocalRunner(settings).session() as store:
        if not store.has_collection(coll):
            return []
        return sorted(str(v) for v in store.facet(coll, "volume_id", READY, limit=1_000_000))


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
    with queue_calls(settings):
        return get_runner(settings).search(query, options, model=model, by_id=by_id)


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
    return LocalRunner(settings).ingest(files, options, progress=progress,
                                        on_report=on_report).reports


# ---- DICOM uploads: the CLI's reader and folder walker, with the settings' limits ---------------
def dicom_query_series(folder: Path, settings: Settings) -> tuple[list[DicomSeries], list[Skipped]]:
    """The image series of the DICOM files of a flat upload folder, grouped as the CLI groups a
    query folder (files with the ``DICM`` magic, :func:`ingest.dicom.scan_dicom`)."""
    from ingest.dicom import looks_like_dicom, scan_dicom
    from ingest.reader import Limits

    files = sorted(p for p in folder.iterdir() if p.is_file() and looks_like_dicom(p))
    return scan_dicom(files, Limits.of(settings.limits))


def check_dicom_query(folder: Path, settings: Settings) -> int:
    """Open a folder of one DICOM series as ``medir search`` opens it (declared size against
    the settings' limits, geometry; no pixel decoded); returns its number of slices."""
    from ingest.dicom import open_dicom_folder
    from ingest.reader import Limits

    return int(open_dicom_folder(folder, Limits.of(settings.limits)).shape[2])


def scan_upload_folder(folder: Path) -> CollectionScan:
    """The volumes of a folder as ``medir ingest`` walks it (a DICOM series: one volume, its id
    the SeriesInstanceUID), and what it leaves out."""
    from ingest.collection import scan_paths

    return scan_paths([folder])


def open_volume_file(source: str | Path, limits: Limits | None = None) -> VolumeFile:
    """A volume file, or the folder of one DICOM series (an uploaded DICOM query), opened with
    ``limits`` (headers only)."""
    from ingest.reader import open_volume

    if Path(source).is_dir():
        from ingest.dicom import open_dicom_folder

        return open_dicom_folder(Path(source), limits)
    return open_volume(source, limits)


# ---- cohort export: the CLI's cohort table of a search result -----------------------------------
def cohort_text(result: Mapping[str, Any] | Any, fmt: str) -> str:
    """The ranking of a search result (the dict the runner returns) as cohort CSV (``.csv``) or
    JSON (``.json``), as ``medir search --export`` writes it (:mod:`search.cohort`); the
    answer's confidence when the result carries one."""
    from search.cohort import cohort_rows
    from search.cohort import cohort_text as text
    from search.vote import SliceMatch, VolumeResult

    ranking = [
        VolumeResult(
            rank=int(r["rank"]), volume_id=str(r["volume_id"]), votes=float(r["votes"]),
            hits=int(r["hits"]), score=float(r["score"]), similarity=float(r["similarity"]),
            labels=dict(r.get("labels") or {}), source=str(r.get("source", "")),
            matches=[SliceMatch(**m) for m in r.get("matches") or []],
            dicom=dict(r.get("dicom") or {}))
        for r in result["ranking"]]
    confidence = (result.get("confidence") if isinstance(result, Mapping)
                  else getattr(result, "confidence", None))
    if not isinstance(confidence, (int, float, Mapping)) or isinstance(confidence, bool):
        confidence = None  # absent, or a shape this export does not know
    return text(cohort_rows(ranking, confidence), fmt)
