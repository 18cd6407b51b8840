"""What ``medir ingest dicomweb+http://...`` and ``medir follow`` run (for medir/cli/root.py)."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from ingest.dicomweb import PacsError, PacsSeries, QidoFilters, list_series, mask, parse_source
from ingest.pipeline import IngestReport, LabelMap
from medir.config import Settings, get_settings
from medir.errors import MedirError


def _report_line(r: IngestReport) -> str:
    if r.status == "failed":
        return f"failed   {r.error}"
    if r.error:
        return f"{r.status:8s} {r.volume_id}: {r.error}"
    return f"{r.status:8s} {r.volume_id} ({r.n_slices} slices) {r.path}"


@contextmanager
def _embedding(settings: Settings, model: str) -> Iterator[tuple[Any, Any]]:
    """The store and the model of an in-process PACS ingest (the runner's)."""
    from runner.local import LocalRunner

    runner = LocalRunner(settings)
    with runner.session() as store:
        yield store, runner.embedder(model)


def ingest_from_pacs(sources: Sequence[str], filters: QidoFilters, *, model: str,
                     intensity: str | None, queue: bool, wait: bool,
                     labels: LabelMap | None, console: Console) -> bool:
    """Index every matching series of each source; True when none failed."""
    from ingest.preprocess import check_preprocessing

    settings = get_settings()
    intensity = check_preprocessing(intensity or settings.intensity)  # before any PACS call
    ok = True
    for source in sources:
        spec = parse_source(source, settings)
        series = list_series(spec, filters,
                             warn=lambda text: console.print(text, highlight=False))
        console.print(f"{spec.target.display}: {len(series)} series match", highlight=False)
        if not series:
            continue
        if queue:
            from runner.queue.submit import _app, follow, submit_series

            jobs = submit_series(series, model, intensity or settings.intensity, settings)
            console.print(f"submitted {len(jobs)} series to the ingest queue (model {model})",
                          highlight=False)
            if wait:
                ok = follow(_app(settings), jobs, console) and ok
            continue
        from ingest.pacs_ingest import ingest_series

        with _embedding(settings, model) as (store, embedder):
            reports = ingest_series(
                series, store, embedder, target=spec.target, labels=labels,
                intensity=intensity or settings.intensity, upsert_batch=settings.upsert_batch,
                on_report=lambda r: console.print(_report_line(r), highlight=False))
        counts = Counter(r.status for r in reports)
        console.print(f"{spec.target.display}: " + ", ".join(
            f"{counts[k]} {k}" for k in ("indexed", "skipped", "failed")), highlight=False)
        ok = ok and not counts["failed"]
    return ok


def follow_pacs(source: str | None, *, model: str, mode: str, once: bool, from_now: bool,
                queue: bool, interval: float | None, console: Console) -> None:
    """Follow a PACS; each new series is indexed here, or queued when ``queue`` is on."""
    from ingest.follow import Follower

    settings = get_settings()
    spec = parse_source(source or "pacs", settings)
    stop = threading.Event()
    secrets = spec.target.secrets

    def say(text: str) -> None:
        console.print(mask(text, secrets), highlight=False)

    def run(handle: Callable[[PacsSeries], str | None]) -> None:
        f = Follower(spec.target, settings.pacs.follow_state, handle, mode=mode,
                     changes_url=settings.pacs.changes_url, log=say)
        try:
            if from_now and not settings.pacs.follow_state.exists():
                f.start_from_now()
            say(f"following {spec.target.display} ({f.mode} feed, state "
                f"{settings.pacs.follow_state}){' once' if once else ''}")
            previous = signal.getsignal(signal.SIGTERM)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                f.run(interval or settings.pacs.poll_interval, once=once, stop=stop)
            finally:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, previous)
        finally:
            f.close()
        say(f"stopped at {f.mode} position "
            f"{f.state.last_change if f.mode == 'changes' else f.state.qido_since or '-'}"
            + (f"; {len(f.state.failed)} failed series listed in {settings.pacs.follow_state}"
               " (retry one with medir ingest SOURCE)" if f.state.failed else ""))

    if queue:
        from runner.queue.submit import submit_series

        def enqueue(s: PacsSeries) -> None:
            submit_series([s], model, settings.intensity, settings)
            say(f"queued   {s.volume_id} {s.source}")

        run(enqueue)
        return

    from ingest.pacs_ingest import ingest_series

    with _embedding(settings, model) as (store, embedder):
        def index(s: PacsSeries) -> str | None:
            reports = ingest_series([s], store, embedder, target=spec.target,
                                    intensity=settings.intensity,
                                    upsert_batch=settings.upsert_batch)
            for r in reports:
                say(_report_line(r))
            return next((r.error for r in reports if r.status == "failed"), None)

        try:
            run(index)
        except PacsError:
            raise
        except MedirError:
            raise
