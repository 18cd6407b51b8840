"""What ``medir ingest dicomweb+http://...`` and ``medir follow`` run (for medir/cli/root.py)."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable, Sequence

from rich.console import Console

from ingest.dicomweb import PacsError, PacsSeries, QidoFilters, list_series, mask, parse_source
from ingest.pipeline import IngestReport, LabelMap
from medir.cli.progress import follow_jobs
from medir.config import get_settings
from medir.errors import MedirError
from medir.terminal import safe_text
from runner import IngestOptions, get_runner


def _report_line(r: IngestReport) -> str:
    """One report as plain text (ids, paths and errors come from the PACS: print it through
    :func:`medir.terminal.safe_text`)."""
    if r.status == "failed":
        return f"failed   {r.error}"
    if r.error:
        return f"{r.status:8s} {r.volume_id}: {r.error}"
    return f"{r.status:8s} {r.volume_id} ({r.n_slices} slices) {r.path}"


def ingest_from_pacs(sources: Sequence[str], filters: QidoFilters, *, model: str,
                     intensity: str | None, queue: bool, wait: bool,
                     labels: LabelMap | None, console: Console) -> bool:
    """Index every matching series of each source; True when none failed."""
    settings = get_settings()
    options = IngestOptions(model=model, intensity=intensity or settings.intensity,
                            labels=labels)
    runner = get_runner(settings, queue=queue)
    ok = True
    for source in sources:
        spec = parse_source(source, settings)
        series = list_series(spec, filters,
                             warn=lambda text: console.print(safe_text(text), highlight=False))
        console.print(f"{safe_text(spec.target.display)}: {len(series)} series match",
                      highlight=False)
        if not series:
            continue
        outcome = runner.ingest_pacs(
            series, options, target=spec.target,
            on_report=lambda r: console.print(safe_text(_report_line(r)), highlight=False))
        if outcome.queued:
            console.print(f"submitted {len(outcome.job_ids)} series to the ingest queue "
                          f"(model {safe_text(model)})", highlight=False)
            if wait:
                ok = follow_jobs(runner, outcome.job_ids, console) and ok
            continue
        counts = Counter(r.status for r in outcome.reports)
        console.print(safe_text(f"{spec.target.display}: " + ", ".join(
            f"{counts[k]} {k}" for k in ("indexed", "skipped", "failed"))), highlight=False)
        ok = ok and outcome.failed == 0 and not counts["failed"]
    return ok


def follow_pacs(source: str | None, *, model: str, mode: str, once: bool, from_now: bool,
                queue: bool, interval: float | None, console: Console) -> None:
    """Follow a PACS; each new series is indexed here, or queued when ``queue`` is on."""
    from ingest.follow import Follower

    settings = get_settings()
    spec = parse_source(source or "pacs", settings)
    stop = threading.Event()
    secrets = spec.target.secrets

    def say(text: str) -> None:  # text from the PACS: ids, sources, errors
        console.print(safe_text(mask(text, secrets)), highlight=False)

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

    options = IngestOptions(model=model, intensity=settings.intensity)
    if queue:
        queued = get_runner(settings, queue=True)

        def enqueue(s: PacsSeries) -> None:
            queued.ingest_pacs([s], options, target=spec.target)
            say(f"queued   {s.volume_id} {s.source}")

        run(enqueue)
        return

    # in this process: the store stays open while following, the model loads once
    with get_runner(settings, queue=False, keep_store_open=True) as here:
        def index(s: PacsSeries) -> str | None:
            outcome = here.ingest_pacs([s], options, target=spec.target)
            for r in outcome.reports:
                say(_report_line(r))
            return next((r.error for r in outcome.reports if r.status == "failed"), None)

        try:
            run(index)
        except PacsError:
            raise
        except MedirError:
            raise
