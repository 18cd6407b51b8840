"""The ``medir`` root app: the top-level commands, and the groups mounted at the end.

Every user error prints one line and exits with status 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from medir.cli import audit, bench, jobs, models, samples
from medir.cli.common import console as make_console
from medir.cli.common import err_console, user_errors
from medir.config import get_settings
from medir.errors import MedirError
from medir.ids import split_index
from medir.secrets import install_log_filter, mask_secrets, safe_url
from medir.terminal import safe_text

app = typer.Typer(help="medir: search 3D medical volumes by weighted slice voting.",
                  no_args_is_help=True, add_completion=False)
console = make_console(stderr=True)
out = make_console()


def _parse_filters(values: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for raw in values or []:
        key, sep, val = raw.partition("=")
        if not sep or not key or not val:
            raise MedirError(f"bad filter {raw!r}; use KEY=VALUE, e.g. modality=MR")
        filters.setdefault(key.strip(), []).extend(v.strip() for v in val.split(","))
    return filters


# ---- ingest ------------------------------------------------------------------------------------
@app.command()
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
    label_map = None
    ids: dict[str, str] = {}
    if labels is not None:
        from ingest.labels import load_labels_csv, load_volume_ids

        label_map = load_labels_csv(labels)
        ids = load_volume_ids(labels)
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
    from ingest.collection import scan_paths
    from ingest.summary import IngestSummary

    scan = scan_paths(list(paths), ids)
    summary = IngestSummary(skipped=scan.skipped)
    if not scan.sources:
        left = ", ".join(f"{n} {k}" for k, n in scan.skipped_by_kind().items())
        raise MedirError(f"no volume files found in {', '.join(map(str, paths))}"
                         + (f" (left out: {left})" if left else ""))
    from runner import IngestOptions, get_runner

    options = IngestOptions(model=model_name, intensity=intensity or settings.intensity,
                            force=force, labels=label_map, ids=ids)
    # without --queue, ingest here even with a broker
    runner = get_runner(settings, queue=queue)
    if queue:
        outcome = runner.ingest(scan.sources, options)
        out.print(f"submitted {len(outcome.job_ids)} volume(s) from {len(scan.sources)} file(s) "
                  f"to queue 'ingest' (model {safe_text(model_name)})", highlight=False)
        if wait:
            from medir.cli.progress import follow_jobs

            ok = follow_jobs(runner, outcome.job_ids, out)
        else:
            for j in outcome.job_ids:
                out.print(f"  {j}  {safe_text(outcome.job_volumes.get(j, ''))}",
                          highlight=False)
            out.print("follow them with: medir jobs", highlight=False)
            ok = True
        _print_left_out(summary)
        raise typer.Exit(0 if ok else 1)
    from ingest.pipeline import IngestReport

    t0 = time.perf_counter()
    total_slices = 0
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
        transient=False,
    ) as bar:
        files_task = bar.add_task("volumes", total=len(scan.sources), rate="")
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
        runner.ingest(scan.sources, options, progress=progress, on_report=on_report)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        out.print(safe_text(summary.line()), highlight=False)
        _print_left_out(summary)
    if summary.failed:
        console.print(f"[red]{summary.failed} volume(s) failed[/], the others were indexed")
        raise typer.Exit(1)


def _print_left_out(summary: Any) -> None:
    for kind, items in summary.left_out().items():
        shown = ", ".join(s.path for s in items[:3]) + (" ..." if len(items) > 3 else "")
        out.print(f"  left out ({kind}): {len(items)}: {safe_text(shown)}", highlight=False)


# ---- search ------------------------------------------------------------------------------------
@app.command()
@user_errors
def search(
    volume: Annotated[str, typer.Argument(help="A volume file, or an indexed volume id with "
                                          "--id.")] = "",
    model: Annotated[str | None, typer.Option(help="Embedding model.")] = None,
    sampling: Annotated[str | None, typer.Option(
        help="all | every-n:N | every-mm:X | random:K[:SEED], optionally ,max=N")] = None,
    weighting: Annotated[str | None, typer.Option(help="none | gaussian[:SIGMA]")] = None,
    max_slices: Annotated[int | None, typer.Option(
        help="At most N query slices, evenly spaced among the sampling's (0: no cap; default "
             "MEDIR_SEARCH__MAX_SLICES).")] = None,
    k: Annotated[int | None, typer.Option(help="Neighbours per query slice.")] = None,
    top: Annotated[int | None, typer.Option(help="Number of volumes to return.")] = None,
    filter: Annotated[list[str] | None, typer.Option(
        "--filter", help="Label filter KEY=VALUE[,VALUE], repeatable.")] = None,
    by_id: Annotated[bool, typer.Option("--id", help="VOLUME is an indexed volume id.")] = False,
    index_4d: Annotated[int | None, typer.Option("--index-4d", help="Volume of a 4D file.")] = None,
    exact: Annotated[bool, typer.Option(help="Exact k-NN instead of HNSW.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as JSON.")] = False,
    explain: Annotated[int, typer.Option(help="Slice pairs shown per result.")] = 3,
    pacs_series: Annotated[str | None, typer.Option(
        "--pacs-series", help="Query with this SeriesInstanceUID of the PACS "
                              "(MEDIR_PACS__URL); VOLUME is then ignored.")] = None,
    rerank: Annotated[str, typer.Option(
        help="Stage 2 over the vote's top volumes: none | maxsim | zorder (docs/quality.md).")
    ] = "none",
    rerank_top: Annotated[int, typer.Option(help="Volumes the re-ranker re-orders.")] = 10,
    like: Annotated[list[str] | None, typer.Option(
        help="Indexed volume ids to find more like (repeat or comma-separate); without a "
             "VOLUME the first one is the query.")] = None,
    unlike: Annotated[list[str] | None, typer.Option(
        help="Indexed volume ids to find fewer like (repeat or comma-separate).")] = None,
    export: Annotated[Path | None, typer.Option(
        help="Also write the ranking as a cohort: .csv (pandas, and a labels CSV for "
             "medir ingest --labels) or .json.")] = None,
    intensity: Annotated[str | None, typer.Option(
        help="Preprocessing of the query, the collection's (e.g. auto+fov:400). Default: "
             "MEDIR_INTENSITY.")] = None,
    cross_modality: Annotated[bool, typer.Option(
        "--cross-modality", help="Also search volumes of the other intensity domain (CT in HU "
        "vs not), decided from the voxels; by default a query stays in its own.")] = False,
) -> None:
    """Rank the indexed volumes most similar to a query volume (a file, an indexed id, or a
    PACS series: dicomweb+http://host/dicom-web/series/UID)."""
    settings = get_settings()
    likes, unlikes = _ids(like), _ids(unlike)
    if export is not None:
        _check_export(export)
    if not volume and not pacs_series and likes:
        volume, by_id = likes[0], True
    from ingest.dicomweb import is_dicomweb_source, normalise_source

    if pacs_series:
        volume = f"pacs/series/{pacs_series}"
    elif is_dicomweb_source(volume):
        volume = normalise_source(volume)
    elif not volume:
        raise MedirError("give a volume file, an indexed id with --id, or --pacs-series UID")
    from runner import get_runner
    from search.query import configured_options

    opts = configured_options(  # validated (and parsed, once) before loading anything
        settings.search,
        sampling=sampling,
        weighting=weighting,
        k=k,
        top=top,
        max_slices=max_slices,
        filters=_parse_filters(filter),
        exact=exact,
        intensity=intensity or settings.intensity,
        rerank=rerank,
        rerank_top=rerank_top,
        like=likes,
        unlike=unlikes,
        cross_modality=cross_modality,
    )
    with get_runner(settings) as runner:
        result = runner.search(volume, opts, model=model or settings.model, by_id=by_id,
                               index_4d=index_4d)
    if export is not None:
        _write_export(export, result)
    if as_json:
        print(mask_secrets(json.dumps([r for r in result["ranking"]], indent=2)))
        return
    _print_ranking(result, explain)


def _ids(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists alike: ``--like a,b --like c`` → [a, b, c]."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _check_export(path: Path) -> None:
    from search.cohort import COHORT_FORMATS

    if path.suffix.lower() not in COHORT_FORMATS:
        raise MedirError(f"{path}: a cohort is written as {' or '.join(COHORT_FORMATS)}")
    if not path.parent.is_dir():
        raise MedirError(f"{path}: folder {path.parent} does not exist")


def _write_export(path: Path, result: dict[str, Any]) -> None:
    """The ranking as a cohort file, written whole or not at all."""
    from medir.files import atomic_write_text
    from search.cohort import cohort_rows, cohort_text

    rows = cohort_rows(result["ranking"], result.get("confidence"))
    atomic_write_text(path, cohort_text(rows, path.suffix.lower()))
    err_console.print(f"cohort of {len(rows)} volumes → {safe_text(str(path))}",
                      highlight=False)


def _print_ranking(result: dict[str, Any], explain: int) -> None:
    q = result["query"]
    out.print(f"query {safe_text(q['volume_id'])} ({q['n_slices']} slices, "
              f"{len(q['chosen_slices'])} chosen) model {safe_text(result['model'])}",
              highlight=False)
    out.print(safe_text(_domain_line(result)), highlight=False)
    table = Table("rank", "volume", "votes", "score", "sim", "labels", "best slice pairs q→db")
    table.columns[1].no_wrap = True
    for r in result["ranking"]:
        labels = " ".join(f"{v}" for k, v in r["labels"].items() if k != "dataset")
        best = sorted(r["matches"], key=lambda m: -m["similarity"])[:explain]
        pairs = ", ".join(f"{m['query_slice']}→{m['db_slice']}" for m in best)
        table.add_row(str(r["rank"]), safe_text(r["volume_id"]), f"{r['votes']:.2f}",
                      f"{r['score']:.3f}", f"{r['similarity']:.3f}", safe_text(labels), pairs)
    out.print(table)
    out.print(safe_text(_answer_line(result)), highlight=False)
    t = result["timings"]
    embed = (f"embed {t.get('embed_s', 0) * 1e3:.0f} ms"
             if result["query"].get("vectors", "embedded") == "embedded"
             else "stored vectors (the query is indexed: no embedding)")
    out.print(f"{embed}, k-NN {t.get('knn_s', 0) * 1e3:.0f} ms,"
              f" vote {t.get('vote_s', 0) * 1e3:.1f} ms", highlight=False)


def _answer_line(result: dict[str, Any]) -> str:
    """The answer's verdict: its confidence, or "uncertain: <reason>" (the ranking above
    still lists the nearest volumes)."""
    a = result.get("answer") or {}
    if not a:
        return "no answer: nothing matched"
    labels = " ".join(v for k, v in a.get("labels", {}).items() if k in ("modality", "region"))
    what = f"{labels or a['volume_id']} (confidence {a['confidence']:.2f})"
    return f"uncertain: {a['reason']}; nearest: {what}" if a["uncertain"] else f"answer: {what}"


def _domain_line(result: dict[str, Any]) -> str:
    """Which intensity domain the query is in, and whether the results were kept to it."""
    q = result["query"]
    name = {"hu": "CT in HU", "non-hu": "not HU (MR or other)"}.get(q.get("domain", ""))
    if not name:
        return "domain: unknown (" + (q.get("domain_reason") or "not decided") + "); all searched"
    scope = ("all domains searched (--cross-modality)" if result["options"].get("cross_modality")
             else "results kept to this domain (--cross-modality to search all)")
    return f"domain: {name}, {q.get('domain_reason', '')}; {scope}"


# ---- info / demo -------------------------------------------------------------------------------
@app.command()
@user_errors
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] =
    False,
) -> None:
    """Store mode, collections, volumes and points per model, label facets."""
    from runner import get_runner

    settings = get_settings()
    with get_runner(settings) as runner:
        stats = runner.stats()
    if as_json:
        print(json.dumps({**stats, "default_model": settings.model,
                          "queue": settings.redis_url is not None}, indent=2, default=str))
        return
    out.print(safe_text(mask_secrets(f"store: {stats['mode']} at {stats['location']}")),
              highlight=False)
    out.print(safe_text(f"default model: {settings.model}; queue: "
                        f"{safe_url(settings.redis_url) or 'off'}"), highlight=False)
    if not stats["collections"]:
        out.print("no collections yet: medir ingest PATH...")
    for c in stats["collections"]:
        out.print(safe_text(f"- {c['name']}: {c['volumes']} volumes, {c['points']} points "
                            f"(dim {c['dim']}), models {c['embedders']}"), highlight=False)
        for key, counts in c["facets"].items():
            if counts:
                out.print(safe_text(f"    {key}: "
                                    + ", ".join(f"{v}={n}" for v, n in counts.items())),
                          highlight=False)


@app.command()
@user_errors
def volumes(
    filter: Annotated[list[str] | None, typer.Option(
        "--filter", help="Label filter KEY=VALUE[,VALUE], repeatable.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model's collection.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the volumes as JSON.")] = False,
) -> None:
    """List the indexed volumes: id, source, slices, labels, embedder version, state."""
    from runner import get_runner

    with get_runner(get_settings()) as runner:
        rows = runner.volumes(model, _parse_filters(filter))
    if as_json:
        print(json.dumps([v.to_dict() for v in rows], indent=2))
        return
    table = Table("volume", "source", "slices", "labels", "embedder", "state")
    table.columns[0].no_wrap = True
    for v in rows:
        table.add_row(safe_text(v.volume_id), safe_text(v.source), str(v.n_slices),
                      safe_text(" ".join(f"{k}={x}" for k, x in v.labels.items())),
                      safe_text(v.embedder), safe_text(v.state))
    out.print(table)
    out.print(f"{len(rows)} volume(s)", highlight=False)


@app.command()
@user_errors
def prune(
    yes: Annotated[bool, typer.Option("--yes", help="Delete them (default: only list).")] =
    False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every volume's check as "
                                          "JSON.")] = False,
) -> None:
    """Remove volumes whose files are gone (a dry run listing them unless --yes).

    Only a volume proved gone is removed: its ingest folder is there and readable and the file
    is not in it, or its PACS answers and does not list the series. A volume whose folder is
    not mounted here, or whose PACS cannot be asked, is kept (unknown), with the reason.
    """
    from runner import get_runner
    from search.volumes import GONE, PRESENT, UNKNOWN

    with get_runner(get_settings()) as runner:
        result = runner.prune(apply=yes)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    gone = result.of(GONE)
    for c in gone:
        v = c.volume
        out.print(f"{'removing' if yes else 'would remove'} {safe_text(v.volume_id)} "
                  f"({safe_text(v.collection)}; {safe_text(mask_secrets(v.source))} is gone: "
                  f"{safe_text(c.reason)})", highlight=False)
    for reason, n in result.unknown_reasons().items():
        out.print(f"keeping {n} volume(s) that cannot be checked: "
                  f"{safe_text(mask_secrets(reason))}", highlight=False)
    counts = result.counts()
    summary = (f"{counts[PRESENT]} present, {counts[GONE]} gone, {counts[UNKNOWN]} unknown "
               "(kept)")
    if not gone:
        out.print(f"nothing to prune: {summary}", highlight=False)
    elif yes:
        out.print(f"removed {len(gone)} volume(s), {result.removed_points} points; {summary}",
                  highlight=False)
    else:
        out.print(f"{len(gone)} volume(s) would be removed; run `medir prune --yes`; "
                  f"{summary}", highlight=False)


@app.command()
@user_errors
def migrate(
    root: Annotated[list[Path] | None, typer.Option(
        "--root", help="Folder the old store was ingested from: its volumes get the new ids "
        "(path relative to it). Repeatable.")] = None,
) -> None:
    """Upgrade a store written before volume identities (in place, no re-embedding)."""
    from runner import get_runner

    with get_runner(get_settings()) as runner:
        done = runner.migrate(root or [])
    if not done:
        out.print("nothing to migrate: the store is current")
    for coll, n in done.items():
        out.print(f"migrated {safe_text(coll)}: {n} points", highlight=False)


@app.command()
@user_errors
def demo(
    query: Annotated[str, typer.Option(help="Case id of the held-out query volume.")] =
    "ct_chest_lung1_pyradiomics",
    model: Annotated[str | None, typer.Option(help="Embedding model.")] = None,
) -> None:
    """The main job: fetch the samples, index all but one, query with the held-out one."""
    from ingest.samples import fetch_samples, read_manifest

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


# The groups, in the order `medir --help` lists them (after the commands above).
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
