"""``medir ingest``: index volume files and folders, or the series of a PACS, into the store.

Three ways to run one ingest, each a step below: a PACS source goes to :mod:`medir.cli.pacs`;
files with ``--queue`` are submitted to the Celery queue (and followed with ``--wait``);
otherwise they are embedded here, with a progress bar and one line per volume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from medir.cli.common import console as make_console
from medir.cli.common import user_errors
from medir.config import get_settings
from medir.errors import MedirError
from medir.ids import split_index
from medir.terminal import safe_text

if TYPE_CHECKING:
    from ingest.collection import VolumeSource
    from ingest.summary import IngestSummary
    from runner import IngestOptions, Runner

console = make_console(stderr=True)
out = make_console()


@user_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Volume files, DICOM files or folders "
                                                "(recursive).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with case_id or file, plus "
                                                "modality, region, organ, dataset, split.")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model (see medir models).")] = None,
    intensity: Annotated[str | None, typer.Option(
        help="Preprocessing: auto | percentile | ct | ct-windows | auto-windows, optionally "
             "+fov:<mm> (physical scale, e.g. auto+fov:400). Default: MEDIR_INTENSITY.")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="Submit to the Celery queue.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                                       help="With --queue: follow the jobs until done.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Re-embed volumes already indexed "
                                        "and unchanged.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] =
    False,
    study: Annotated[str | None, typer.Option(help="PACS: StudyInstanceUID.")] = None,
    series: Annotated[str | None, typer.Option(help="PACS: SeriesInstanceUID.")] = None,
    modality: Annotated[str | None, typer.Option(help="PACS: Modality (CT, MR, ...).")] = None,
    date_from: Annotated[str | None, typer.Option(help="PACS: StudyDate from (YYYYMMDD).")] =
    None,
    date_to: Annotated[str | None, typer.Option(help="PACS: StudyDate to (YYYYMMDD).")] = None,
    body_part: Annotated[str | None, typer.Option(help="PACS: BodyPartExamined.")] = None,
) -> None:
    """Index volumes (NIfTI 3D/4D, NRRD, MetaImage, DICOM series), or the series of a PACS
    (dicomweb+http://host/dicom-web, or pacs for MEDIR_PACS__URL) into the store.

    Volume ids: the path relative to the folder given (p001/ct), a file given directly its
    name without suffix, a DICOM series its SeriesInstanceUID (docs/collections.md).
    """
    settings = get_settings()
    model_name = model or settings.model
    label_map, ids = _read_labels(labels)
    from ingest.dicomweb import is_dicomweb_source, normalise_source

    pacs_sources = [normalise_source(str(p)) for p in paths if is_dicomweb_source(str(p))]
    if pacs_sources:
        if len(pacs_sources) != len(paths):
            raise MedirError("give either PACS sources or files/folders, not both")
        from ingest.dicomweb import QidoFilters
        from medir.cli.pacs import ingest_from_pacs

        qido = QidoFilters(study_uid=study, series_uid=series, modality=modality,
                           date_from=date_from, date_to=date_to, body_part=body_part)
        ok = ingest_from_pacs(pacs_sources, qido, model=model_name, intensity=intensity,
                              queue=queue, wait=wait, labels=label_map, console=out)
        raise typer.Exit(0 if ok else 1)
    sources, summary = _scan(paths, ids)
    from runner import IngestOptions, get_runner

    options = IngestOptions(model=model_name, intensity=intensity or settings.intensity,
                            force=force, labels=label_map, ids=ids)
    # without --queue, ingest here even with a broker
    runner = get_runner(settings, queue=queue)
    if queue:
        ok = _submit(runner, sources, options, wait)
        _print_left_out(summary)
        raise typer.Exit(0 if ok else 1)
    _ingest_here(runner, sources, options, summary)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        out.print(safe_text(summary.line()), highlight=False)
        _print_left_out(summary)
    if summary.failed:
        console.print(f"[red]{summary.failed} volume(s) failed[/], the others were indexed")
        raise typer.Exit(1)


def _read_labels(labels: Path | None) -> tuple[dict[str, dict[str, str]] | None, dict[str, str]]:
    """The labels CSV's labels by volume name, and the volume ids it gives (none without one)."""
    if labels is None:
        return None, {}
    from ingest.labels import load_labels_csv, load_volume_ids

    return load_labels_csv(labels), load_volume_ids(labels)


def _scan(paths: Sequence[Path], ids: dict[str, str]) -> tuple[list[VolumeSource], IngestSummary]:
    """The volumes under ``paths``, and a summary holding what the walk left out; none found
    is a user error naming what was left out."""
    from ingest.collection import scan_paths
    from ingest.summary import IngestSummary

    scan = scan_paths(list(paths), ids)
    summary = IngestSummary(skipped=scan.skipped)
    if not scan.sources:
        left = ", ".join(f"{n} {k}" for k, n in scan.skipped_by_kind().items())
        raise MedirError(f"no volume files found in {', '.join(map(str, paths))}"
                         + (f" (left out: {left})" if left else ""))
    return scan.sources, summary


def _submit(runner: Runner, sources: list[VolumeSource], options: IngestOptions,
            wait: bool) -> bool:
    """``--queue``: one job per volume; followed until done with ``wait``, else listed.
    Returns whether every job followed succeeded."""
    outcome = runner.ingest(sources, options)
    out.print(f"submitted {len(outcome.job_ids)} volume(s) from {len(sources)} file(s) "
              f"to queue 'ingest' (model {safe_text(options.model)})", highlight=False)
    if wait:
        from medir.cli.progress import follow_jobs

        return follow_jobs(runner, outcome.job_ids, out)
    for j in outcome.job_ids:
        out.print(f"  {j}  {safe_text(outcome.job_volumes.get(j, ''))}",
                  highlight=False)
    out.print("follow them with: medir jobs", highlight=False)
    return True


def _ingest_here(runner: Runner, sources: list[VolumeSource], options: IngestOptions,
                 summary: IngestSummary) -> None:
    """Embed in this process: a bar of volumes and one of the current volume's slices, one
    line per volume (status, warnings); each report is added to ``summary``."""
    from ingest.pipeline import IngestReport

    t0 = time.perf_counter()
    total_slices = 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
        transient=False,
    ) as bar:
        files_task = bar.add_task("volumes", total=len(sources), rate="")
        vol_task = bar.add_task("slices", total=1, rate="")

        def progress(vid: str, done: int, total: int) -> None:
            bar.update(vol_task, description=f"  {safe_text(vid[:40])}", completed=done,
                       total=total)

        seen: set[str] = set()

        def on_report(r: IngestReport) -> None:
            nonlocal total_slices
            summary.reports.append(r)
            if r.status == "failed":
                bar.console.print(f"[red]failed[/] {safe_text(r.error)}", highlight=False)
            else:
                total_slices += r.n_slices if r.status == "indexed" else 0
                dup = f", same content as {', '.join(r.duplicate_of)}" if r.duplicate_of else ""
                bar.console.print(f"{r.status:8s} {safe_text(r.volume_id)} ({r.n_slices} slices"
                                  f"{safe_text(dup)})", highlight=False)
                for w in r.warnings:
                    bar.console.print(f"[yellow]warning[/] {safe_text(r.volume_id)}: "
                                      f"{safe_text(w)}", highlight=False)
            seen.add(split_index(r.volume_id)[0])
            rate = total_slices / max(time.perf_counter() - t0, 1e-9)
            bar.update(files_task, completed=len(seen), rate=f"{rate:.1f} slices/s")

        # One call for all sources: reading overlaps embedding, small volumes share batches.
        runner.ingest(sources, options, progress=progress, on_report=on_report)


def _print_left_out(summary: IngestSummary) -> None:
    for kind, items in summary.left_out().items():
        shown = ", ".join(s.path for s in items[:3]) + (" ..." if len(items) > 3 else "")
        out.print(f"  left out ({kind}): {len(items)}: {safe_text(shown)}", highlight=False)
