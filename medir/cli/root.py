"""The ``medir`` root app: the top-level commands, registered in the order ``medir --help``
lists them, and the groups mounted at the end.

The commands live in modules by topic (``ingest.py``, ``search.py``, ``store.py``: info,
volumes, prune, migrate); the short ones that start a whole job (``demo``, ``follow``,
``worker``) are here. Every user error prints one line and exits with status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from medir.cli import audit, bench, jobs, models, samples
from medir.cli.common import console as make_console
from medir.cli.common import user_errors
from medir.cli.ingest import ingest
from medir.cli.search import search
from medir.cli.store import info, migrate, prune, volumes
from medir.config import get_settings
from medir.errors import MedirError
from medir.secrets import install_log_filter
from medir.terminal import safe_text

app = typer.Typer(help="medir: search 3D medical volumes by weighted slice voting.",
                  no_args_is_help=True, add_completion=False)
out = make_console()

app.command()(ingest)
app.command()(search)
app.command()(info)
app.command()(volumes)
app.command()(prune)
app.command()(migrate)


@app.command()
@user_errors
def demo(
    query: Annotated[str, typer.Option(help="Case id of the held-out query volume.")] =
    "ct_chest_lung1_pyradiomics",
    model: Annotated[str | None, typer.Option(help="Embedding model.")] = None,
) -> None:
    """The main job: fetch the samples, index all but one, query with the held-out one."""
    from ingest.labels import read_manifest
    from ingest.samples import fetch_samples

    settings = get_settings()
    manifest = fetch_samples(None, settings=settings)
    rows = read_manifest(manifest)
    held = [r for r in rows if r["case_id"] == query]
    if not held:
        raise MedirError(f"{manifest}: no case {query!r}; cases: "
                         + ", ".join(r["case_id"] for r in rows))
    files = [manifest.parent / r["file"] for r in rows if r["case_id"] != query]
    ingest(files, labels=manifest, model=model, intensity=None, queue=False, wait=True,
           force=False, as_json=False)
    out.print("\n" + safe_text(f"query: {query} (held out, not in the index; truth: "
                                f"{held[0]['modality']} {held[0]['region']})"), highlight=False)
    search(str(manifest.parent / held[0]["file"]), model=model or settings.model,
           sampling=None, weighting=None, k=None, top=5, filter=None, by_id=False,
           index_4d=None, exact=False, as_json=False, explain=3, intensity=None)


@app.command()
@user_errors
def follow(
    source: Annotated[str | None, typer.Argument(
        help="dicomweb+http://host/dicom-web (default: MEDIR_PACS__URL).")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model.")] = None,
    mode: Annotated[str, typer.Option(help="auto | changes (Orthanc) | qido (by date)")] =
    "auto",
    once: Annotated[bool, typer.Option("--once", help="Handle what is new, then exit.")] =
    False,
    from_now: Annotated[bool, typer.Option(
        "--from-now", help="First start: skip the series already on the PACS.")] = False,
    interval: Annotated[float | None, typer.Option(help="Seconds between polls.")] = None,
) -> None:
    """Follow a PACS and index every new series (queued when MEDIR_REDIS_URL is set)."""
    from medir.cli.pacs import follow_pacs
    from runner import queue_on

    settings = get_settings()
    follow_pacs(source, model=model or settings.model, mode=mode, once=once, from_now=from_now,
                queue=queue_on(settings), interval=interval, console=out)


@app.command()
@user_errors
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = "ingest,search",
    device: Annotated[str | None, typer.Option(help="auto | cuda | cuda:N | cpu")] = None,
    pool: Annotated[str | None, typer.Option(help="Celery pool (default: solo).")] = None,
    concurrency: Annotated[int, typer.Option(help="Processes (prefork pool only).")] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
) -> None:
    """Run a Celery worker that owns the model (and the embedded store)."""
    try:
        from runner.queue.worker import run_worker
    except ModuleNotFoundError as exc:
        raise MedirError(f"the queue is not available in this build ({exc})") from None
    run_worker(queues=queues, device=device, pool=pool, concurrency=concurrency,
               loglevel=loglevel)


# The groups, in the order `medir --help` lists them (after the commands).
app.add_typer(samples.app, name="samples")
app.add_typer(models.app, name="models", help="List models and install their weights.")
app.add_typer(bench.app, name="bench", help="Benchmarks: the paper's grid, engines, performance.")
app.add_typer(jobs.app, name="jobs", help="Background jobs on the Celery queue.")
app.add_typer(audit.app, name="audit",
              help="Audits of a collection: near-duplicates and leakage between splits.")


def _start() -> None:
    """Process start: mask credentials in logs; the settings' embedder plugins (imported at
    the first model lookup)."""
    from ingest.embedders import use_plugins

    install_log_filter()
    try:
        settings = get_settings()
    except Exception:  # a bad setting: the command that reads them says which, in one line
        return
    use_plugins(settings.plugin_modules)


def main() -> None:  # pragma: no cover - console entry
    _start()
    app()
