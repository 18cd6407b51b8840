"""``medir bench``: the paper's grid (``paper``), the quality evaluation (``quality``), the
engine comparison (``engines``), embedder throughput (``speed``); ``perf`` is mounted from
``medir.cli.bench_perf``.

The grid's defaults live in ``benchmarks/configs/paper.json``; options override them. Results
go to a folder (JSON, CSV, Markdown, PNG) with the machine and git commit recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.machine import check_machine
from benchmarks.methods import OPTION_KEYS
from medir.cli.bench_perf import AllowBusyOpt
from medir.cli.bench_perf import app as perf_app
from medir.cli.common import user_errors
from medir.config import get_settings
from medir.errors import ConfigError

app = typer.Typer(help="Benchmarks: the paper's Table III grid, FAISS vs Qdrant engines.",
                  no_args_is_help=True)

# `medir bench perf ...`: ingest throughput, query latency, store at scale, memory.
app.add_typer(perf_app, name="perf", help="Performance: ingest, query, store scale, memory.")

_errors = user_errors


def _split(values: list[str] | None) -> list[str]:
    """Repeated options and comma lists alike: ``--models a,b --models c`` → [a, b, c].
    Index specs carry commas inside (``hnsw:M=32,efC=128``), and so do methods with options
    (``W:every-mm:7,max=12``, ``all,max=20``, ``W,sigma=0.3``): a piece with '=' but no ':' is
    glued back to the previous one (a method's ``max=N`` or ``sigma=S`` piece always)."""
    out: list[str] = []
    for v in values or []:
        for piece in (p.strip() for p in v.split(",")):
            if not piece:
                continue
            glue = "=" in piece and ":" not in piece and (":" in out[-1] if out else False)
            if out and (glue or piece.lower().startswith(tuple(f"{k}=" for k in OPTION_KEYS))):
                out[-1] += "," + piece
            else:
                out.append(piece)
    return out


@app.command("paper")
@_errors
def paper(
    dataset: Annotated[Path | None, typer.Option(
        help="MSD folder (TaskXX_*/imagesTr|imagesTs, dataset.json) or a folder with "
             "manifest.csv; default: the sample collection.")] = None,
    models: Annotated[list[str] | None, typer.Option(
        help="Embedding models (repeat or comma-separate); default: the configured model.")
    ] = None,
    indexes: Annotated[list[str] | None, typer.Option(
        help="Index specs: flat, lsh[:nbits=N], hnsw[:M=32,efC=128,efS=128], qdrant[:...].")
    ] = None,
    variants: Annotated[list[str] | None, typer.Option(
        help="Grid columns, methods [W:|SW:]<sampling> [,max=N] [,sigma=S] (docs/benchmarks.md):"
             " random:K, every-mm:X, every-n:N, all, W, W:every-mm:X, SW (default: Table III).")
    ] = None,
    k: Annotated[int | None, typer.Option(help="Neighbours per query slice.")] = None,
    config: Annotated[Path | None, typer.Option(help="Grid config JSON.")] = None,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/paper"),
    cache: Annotated[Path | None, typer.Option(
        help="Embedding cache folder (default: <cache_dir>/embeddings).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Slices per model batch.")] = None,
    intensity: Annotated[str | None, typer.Option(help="auto | percentile | ct")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Keep the first N files of each split of each task (quick runs).")] = None,
    tasks: Annotated[str | None, typer.Option(help="MSD task numbers, e.g. 1,4,9.")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNGs.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    allow_busy: AllowBusyOpt = False,
) -> None:
    """Replicate the paper's Table III: every model × index × sampling/aggregation column."""
    guard = check_machine(allow_busy)
    from benchmarks.datasets import load_dataset
    from benchmarks.grid import GridConfig, run_grid
    from benchmarks.report import write_report
    from ingest.embedders import configured_embedder

    settings = get_settings()
    cfg = GridConfig.load(config)
    if indexes:
        cfg.indexes = _split(indexes)
    if variants:
        cfg.variants = _split(variants)
    if k is not None:
        cfg.k = k
    if intensity is not None:
        cfg.intensity = intensity
    cfg.validate()
    try:
        task_list = [int(t) for t in tasks.split(",")] if tasks else None
    except ValueError:
        raise ConfigError(f"bad --tasks {tasks!r}; use task numbers like 1,4,9") from None
    ds = load_dataset(dataset or settings.samples_dir, limit=limit, tasks=task_list)
    model_list = _split(models) or [settings.model]
    dev = device or settings.device
    bs = batch_size or settings.batch_size

    def factory(name: str) -> Any:
        return configured_embedder(name, settings, device=dev, batch_size=bs)

    run = run_grid(ds, model_list, cfg, cache or settings.cache_dir / "embeddings", factory,
                   progress=progress)
    files = write_report(run, out, plots=plots, guard=guard)
    typer.echo(f"{len(run.cells)} cells, {run.timings['total_seconds']:.1f} s → "
               f"{files['markdown']}", err=True)


@app.command("quality")
@_errors
def quality(
    dataset: Annotated[Path | None, typer.Option(
        help="A folder with manifest.csv (default: data/eval, `medir samples fetch "
             "--collection eval`).")] = None,
    models: Annotated[list[str] | None, typer.Option(
        help="Embedding models (repeat or comma-separate); default: the configured model.")
    ] = None,
    methods: Annotated[list[str] | None, typer.Option(
        help="Methods [W:|SW:]<sampling> [,max=N] [,sigma=S] [+maxsim|+zorder] [+domain] "
             "(docs/benchmarks.md), e.g. all, every-mm:7, W, W:every-mm:7, SW, W+zorder, "
             "W+domain (default: all, every-mm:7, W, SW, W+maxsim, W+zorder).")] = None,
    preps: Annotated[list[str] | None, typer.Option(
        help="Preprocessings: auto, auto-windows, ct-windows, percentile, ct, each optionally "
             "+fov:MM (physical scale).")] = None,
    perturb: Annotated[list[str] | None, typer.Option(
        help="Perturbations (default: the whole suite; see benchmarks/perturb.py).")] = None,
    no_perturb: Annotated[bool, typer.Option("--no-perturb", help="LOCO only.")] = False,
    store_timing: Annotated[bool, typer.Option(
        "--store-timing", help="Also time every re-ranker through an embedded store.")
    ] = False,
    k: Annotated[int, typer.Option(help="Neighbours per query slice.")] = 1,
    rerank_top: Annotated[int, typer.Option(help="Volumes a re-ranker re-orders.")] = 5,
    db_stride: Annotated[float, typer.Option(help="Stored slices every N mm.")] = 5.0,
    db_max_slices: Annotated[int, typer.Option(help="At most this many per volume.")] = 40,
    query_slices: Annotated[int, typer.Option(
        help="Evenly spaced slices per perturbed query.")] = 4,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/quality"),
    cache: Annotated[Path | None, typer.Option(
        help="Embedding cache folder (default: <cache_dir>/quality).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Slices per model batch.")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNGs.")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    allow_busy: AllowBusyOpt = False,
) -> None:
    """Leave-one-case-out and the perturbation suite for models × preprocessings × methods."""
    guard = check_machine(allow_busy)
    from benchmarks.datasets import load_dataset
    from benchmarks.methods import parse_method
    from benchmarks.perturb import get_perturbations
    from benchmarks.quality import DEFAULT_METHODS, QualityConfig, run_quality
    from benchmarks.quality_embed import Prep
    from benchmarks.quality_report import write_quality
    from ingest.embedders import configured_embedder

    settings = get_settings()
    cfg = QualityConfig(methods=_split(methods) or list(DEFAULT_METHODS),
                        preps=_split(preps) or ["auto"], perturbations=_split(perturb), k=k,
                        rerank_top=rerank_top, db_stride_mm=db_stride,
                        db_max_slices=db_max_slices, query_max_slices=query_slices,
                        run_perturbations=not no_perturb, store_timing=store_timing)
    for m in cfg.methods:
        parse_method(m)
    for p in cfg.preps:
        Prep.parse(p)
    suite = get_perturbations(cfg.perturbations or None)
    ds = load_dataset(dataset or settings.data_dir / "eval")
    dev = device or settings.device
    bs = batch_size or settings.batch_size

    def factory(name: str) -> Any:
        return configured_embedder(name, settings, device=dev, batch_size=bs)

    run = run_quality(ds, _split(models) or [settings.model], cfg,
                      cache or settings.cache_dir / "quality", factory, suite,
                      progress=progress)
    files = write_quality(run, out, with_plots=plots, guard=guard)
    typer.echo(files["markdown"].read_text(), nl=False)
    print(f"→ {files['json']}", file=sys.stderr)


EvalDatasetOpt = Annotated[Path | None, typer.Option(
    help="A folder with manifest.csv (default: data/eval).")]
EvalModelOpt = Annotated[str | None, typer.Option(help="Embedding model (default: configured).")]
QualityCacheOpt = Annotated[Path | None, typer.Option(
    help="Embedding cache folder (default: <cache_dir>/quality, shared with quality).")]


def _write_run(out: Path, bench: str, header: dict[str, Any], model: str,
               result: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """``<out>/<bench>.json``: the run's header (machine, commit, load), model and result."""
    from medir.files import atomic_write_text

    doc = {**header, "model": model, **result}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}.json"
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return doc, path


@app.command("audit")
@_errors
def audit(
    dataset: EvalDatasetOpt = None,
    model: EvalModelOpt = None,
    prep: Annotated[str, typer.Option(help="Preprocessing (as in bench quality).")] = "auto",
    perturb: Annotated[list[str] | None, typer.Option(
        help="Perturbations that make the known duplicates (default: z50, upper, crop180, "
             "half-res, thick5, lps, noise).")] = None,
    k: Annotated[int, typer.Option(help="Neighbours per slice in the audit.")] = 8,
    db_stride: Annotated[float, typer.Option(help="Stored slices every N mm.")] = 5.0,
    db_max_slices: Annotated[int, typer.Option(help="At most this many per volume.")] = 40,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/audit"),
    cache: QualityCacheOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    allow_busy: AllowBusyOpt = False,
) -> None:
    """Precision and recall of `medir audit duplicates` on known duplicates (perturbed copies)
    and known non-duplicates (distinct cases), over a grid of thresholds."""
    guard = check_machine(allow_busy)
    from benchmarks.audit_eval import AUDIT_PERTURBATIONS, run_audit_eval
    from benchmarks.cache import ArrayCache
    from benchmarks.datasets import load_dataset
    from benchmarks.machine import stamp
    from benchmarks.perturb import get_perturbations
    from ingest.embedders import configured_embedder

    settings = get_settings()
    name = model or settings.model
    suite = get_perturbations(_split(perturb) or list(AUDIT_PERTURBATIONS))
    ds = load_dataset(dataset or settings.data_dir / "eval")
    embedder = configured_embedder(name, settings)
    result = run_audit_eval(ds, embedder, ArrayCache(cache or settings.cache_dir / "quality",
                                                      name),
                            suite, prep=prep, k=k, stride_mm=db_stride,
                            max_slices=db_max_slices, progress=progress)
    result, path = _write_run(out, "audit", stamp(guard), name, result)
    b = result["best"]
    typer.echo(f"best: slice >= {b['slice_min']}, pair >= {b['pair_min']}: precision "
               f"{b['precision']:.2f}, recall {b['recall']:.2f} ({b['tp']} found, {b['fp']} "
               f"false, {b['fn']} missed) over {result['n_volumes']} volumes")
    print(f"→ {path}", file=sys.stderr)


@app.command("feedback")
@_errors
def feedback(
    dataset: EvalDatasetOpt = None,
    model: EvalModelOpt = None,
    prep: Annotated[str | None, typer.Option(
        help="Preprocessing (default: the configured intensity).")] = None,
    page: Annotated[int, typer.Option(help="Results the simulated user looks at.")] = 10,
    k: Annotated[int, typer.Option(help="precision@k.")] = 5,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/feedback"),
    cache: QualityCacheOpt = None,
    allow_busy: AllowBusyOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """How much one "more like this" / "not this" mark helps: leave-one-case-out queries
    through the product's query, before and after one simulated mark."""
    from benchmarks.cache import ArrayCache
    from benchmarks.datasets import load_dataset
    from benchmarks.feedback_eval import run_feedback_eval
    from benchmarks.machine import stamp
    from ingest.embedders import configured_embedder
    from search.query import configured_options

    guard = check_machine(allow_busy)
    settings = get_settings()
    name = model or settings.model
    spec = prep or settings.intensity
    ds = load_dataset(dataset or settings.data_dir / "eval")
    embedder = configured_embedder(name, settings)
    options = configured_options(settings.search, intensity=spec)
    result = run_feedback_eval(ds, embedder, ArrayCache(cache or settings.cache_dir / "quality",
                                                         name),
                               prep=spec, options=options, page=page, k=k, progress=progress)
    result, path = _write_run(out, "feedback", stamp(guard), name, result)
    for variant, t in result["results"].items():
        b, a = t["before"], t["after"]
        typer.echo(f"{variant:12s} {t['n']:3d} queries: rank-1 class {b['rank1']} → "
                   f"{a['rank1']}, precision@{k} {b['precision']:.2f} → {a['precision']:.2f}")
    typer.echo(f"marks: {result['marks']['like']} like, {result['marks']['unlike']} unlike")
    print(f"→ {path}", file=sys.stderr)


@app.command("engines")
@_errors
def engines(
    sizes: Annotated[str, typer.Option(
        help="Vector sets: sample (cached embeddings of --dataset) and/or synthetic sizes, "
             "e.g. sample,100k,440k.")] = "sample,100k",
    engines_: Annotated[list[str] | None, typer.Option(
        "--engines", help="Index specs (flat is also the ground truth).")] = None,
    ef: Annotated[str, typer.Option(help="Query-time ef values for HNSW and Qdrant.")
                  ] = "64,128,256",
    k: Annotated[int, typer.Option(help="k of recall@k and of the QPS searches.")] = 10,
    volume_k: Annotated[int, typer.Option(help="k of the 100-slice volume query.")] = 1,
    queries: Annotated[int, typer.Option(help="Single-slice queries (recall, batch QPS).")
                       ] = 1000,
    volume_queries: Annotated[int, typer.Option(help="100-slice volume queries timed.")] = 50,
    single: Annotated[int, typer.Option(help="Queries timed one at a time.")] = 200,
    dim: Annotated[int, typer.Option(help="Dimension of synthetic vectors.")] = 384,
    seed: Annotated[int, typer.Option()] = 0,
    dataset: Annotated[Path | None, typer.Option(help="Collection for the sample set.")] = None,
    model: Annotated[str | None, typer.Option(help="Model of the sample set.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Embedding cache folder.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    out: Annotated[Path, typer.Option(help="Results folder.")] = Path("results/engines"),
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    allow_busy: AllowBusyOpt = False,
) -> None:
    """FAISS exact, FAISS HNSW and the Qdrant store on the same vectors."""
    guard = check_machine(allow_busy)
    import numpy as np

    from benchmarks.engines import (
        DEFAULT_ENGINES,
        VectorSet,
        bench_set,
        make_queries,
        parse_size,
        synthetic_volumes,
        write_engines,
    )

    settings = get_settings()
    specs = _split(engines_) or list(DEFAULT_ENGINES)
    try:
        efs = [int(e) for e in ef.split(",") if e.strip()]
    except ValueError:
        raise ConfigError(f"bad --ef {ef!r}; use integers like 64,128,256") from None
    from benchmarks.indexes import make_index

    for s in specs:
        make_index(s, 8)
    rows: list[dict[str, Any]] = []
    config = {"sizes": sizes, "engines": specs, "ef": efs, "k": k, "volume_k": volume_k,
              "queries": queries, "volume_queries": volume_queries, "single": single,
              "dim": dim, "seed": seed}
    for size in (parse_size(s) for s in sizes.split(",") if s.strip()):
        if size == "sample":
            vectors, volume_of, name = _sample_vectors(dataset, model, cache, device)
            config["sample_model"] = model or settings.model
        else:
            assert isinstance(size, int)
            vectors, volume_of = synthetic_volumes(size, dim, seed)
            name = f"synthetic-{size}"
        q, vq = make_queries(vectors, volume_of, queries, volume_queries, seed=seed + 1)
        vs = VectorSet(name, vectors, np.asarray(volume_of, np.int64), q, vq)
        rows += bench_set(vs, specs, efs, k=k, volume_k=volume_k, n_single=single,
                          progress=progress)
        write_engines(rows, out, config, guard)  # after each set: a long run keeps what it measured
    files = write_engines(rows, out, config, guard)
    typer.echo(files["markdown"].read_text(), nl=False)
    print(f"→ {files['json']}", file=sys.stderr)


@app.command("speed")
@_errors
def speed(
    models: Annotated[list[str] | None, typer.Option(
        help="Embedding models (repeat or comma-separate); default: mobilenetv2-imagenet, "
             "efficientnet-lite0-imagenet, dinov2-s-onnx, litemedsam-encoder.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch (and onnxruntime) threads.")] = 2,
    batch: Annotated[int, typer.Option(help="Slices per model batch.")] = 32,
    slices: Annotated[int, typer.Option(help="Synthetic slices timed per pass.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed passes (best and median reported).")] = 3,
    out: Annotated[Path | None, typer.Option(help="JSON file (default: stdout).")] = None,
    allow_busy: AllowBusyOpt = False,
) -> None:
    """Embedder throughput: slices/s through Embedder.embed on synthetic 256×256 slices."""
    guard = check_machine(allow_busy)
    import torch

    from benchmarks.embedder_speed import DEFAULT_MODELS, run_speed

    def say(row: dict[str, Any]) -> None:
        print(f"{row['model']:30s} {row['slices_per_s_best']:8.2f} slices/s best, "
              f"{row['slices_per_s_median']:8.2f} median ({row['slices']} slices)",
              file=sys.stderr)

    torch.set_num_threads(threads)
    report = run_speed(_split(models) or list(DEFAULT_MODELS), device=device, batch=batch,
                       slices=slices, repeats=repeats, on_row=say)
    text = json.dumps({**report, **guard.record()}, indent=2)
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def _sample_vectors(dataset: Path | None, model: str | None, cache: Path | None,
                    device: str | None) -> tuple[Any, Any, str]:
    """The cached (or now embedded) slice vectors of a collection, with a volume index."""
    import numpy as np

    from benchmarks.cache import EmbeddingCache, build_cache
    from benchmarks.datasets import load_dataset
    from ingest.embedders import configured_embedder

    settings = get_settings()
    ds = load_dataset(dataset or settings.samples_dir)
    name = model or settings.model
    c = EmbeddingCache(cache or settings.cache_dir / "embeddings", name, settings.intensity)
    emb = configured_embedder(name, settings, device=device)
    entries = build_cache(c, sorted({x.path for x in ds.cases}), emb, progress=True)
    blocks, vol = [], []
    for i, e in enumerate(e for es in entries.values() for e in es):
        blocks.append(c.load(e).vectors)
        vol.append(np.full(e.n_slices, i, np.int64))
    return np.concatenate(blocks), np.concatenate(vol), f"sample-{name}"
