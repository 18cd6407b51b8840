"""``medir bench perf``: ingest, query, store and memory benchmarks, each writing JSON.

    medir bench perf all --out results/perf          # what docs/perf.md reports
    medir bench perf store --points 100000 --points 440000 --out results/perf

Every document carries the machine, library versions, git commit and the load at the run's
start and end; a run refuses to start on a busy machine unless ``--allow-busy`` is given
(:func:`benchmarks.machine.check_machine`), and then its JSON says ``"busy": true``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.machine import check_machine
from benchmarks.perf.common import (
    SAMPLES,
    load_average,
    log,
    make_embedder,
    sample_files,
    write_result,
    write_synthetic_set,
)
from medir.cli.common import user_errors
from medir.config import DEFAULT_MODEL, DEFAULT_SAMPLING, get_settings

app = typer.Typer(help="Performance: ingest by stage vs forward-only, query latency, store at "
                       "scale, ingest memory.", no_args_is_help=True)

OutOpt = Annotated[Path, typer.Option(help="Folder (one <bench>.json each) or a .json file.")]
ModelOpt = Annotated[str, typer.Option(help="Embedding model.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
BatchOpt = Annotated[int, typer.Option(help="Embedder batch size.")]
AllowBusyOpt = Annotated[bool, typer.Option(
    "--allow-busy", help="Run even when the 1-minute load is above 0.75 per CPU (1.5 on 2 "
                         "cores); the JSON then says \"busy\": true.")]


@app.command("ingest")
@user_errors
def ingest_cmd(
    out: OutOpt = Path("results/perf"),
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    samples: Annotated[Path, typer.Option(help="Folder of the sample collection.")] = SAMPLES,
    synthetic_scale: Annotated[float, typer.Option(
        help="Multiplier on the synthetic set's volume counts (0: skip it).")] = 1.0,
    sequential: Annotated[bool, typer.Option(
        help="Also run the sequential reference loop and compare vectors.")] = True,
    ceiling_batches: Annotated[int, typer.Option(help="Forward passes for the ceiling.")] = 8,
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """End-to-end ingest slices/s by stage vs the forward-only ceiling."""
    guard = check_machine(allow_busy)
    from benchmarks.perf.ceiling import forward_only
    from benchmarks.perf.ingest_bench import bench_collection, scaled_specs

    emb = make_embedder(model, device, batch_size)
    params = {"model": model, "device": str(emb.device), "batch_size": batch_size,
              "samples": str(samples), "synthetic_scale": synthetic_scale,
              "load_average_start": load_average()}
    log(f"ceiling: {model} on {emb.device}, batch {batch_size}")
    ceiling = forward_only(emb, batches=ceiling_batches)
    results: dict[str, Any] = {"ceiling": ceiling, "collections": {}}
    files = sample_files(samples)
    if files:
        results["collections"]["samples"] = bench_collection(
            "samples", files, emb, ceiling["slices_per_s"], sequential)
    if synthetic_scale > 0:
        with tempfile.TemporaryDirectory(prefix="medir-perf-syn-") as tmp:
            syn = write_synthetic_set(Path(tmp), scaled_specs(synthetic_scale))
            results["collections"]["synthetic"] = bench_collection(
                "synthetic", syn, emb, ceiling["slices_per_s"], sequential)
    # the ceiling again at the end: the load on a shared machine drifts during a run
    results["ceiling_end"] = forward_only(emb, batches=ceiling_batches)
    write_result(out, "ingest", params, results, guard)
    return results


@app.command("query")
@user_errors
def query_cmd(
    out: OutOpt = Path("results/perf"),
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    samples: Annotated[Path, typer.Option(help="Files to index (a folder).")] = SAMPLES,
    query: Annotated[str, typer.Option(help="Query file name inside SAMPLES.")] =
        "mr_head_face_pydeface.nii.gz",
    repeats: Annotated[int, typer.Option(help="Queries per size (median reported).")] = 5,
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """Query latency split into embed, k-NN and vote for 10, 100 and all slices."""
    guard = check_machine(allow_busy)
    from benchmarks.perf.query_bench import bench_queries

    emb = make_embedder(model, device, batch_size)
    files = sample_files(samples)
    qfile = samples / query
    if not qfile.exists():
        qfile = files[0]
    params = {"model": model, "device": str(emb.device), "batch_size": batch_size,
              "query": qfile.name, "load_average_start": load_average()}
    results = bench_queries(files, qfile, emb, repeats=repeats)
    write_result(out, "query", params, results, guard)
    return results


@app.command("query-latency")
@user_errors
def query_latency_cmd(
    out: OutOpt = Path("results/perf"),
    models: Annotated[list[str] | None, typer.Option(
        help="Models (repeatable): e.g. dinov2-s-onnx, dinov2-s-onnx-int8, the smaller inputs "
             "dinov2-s-onnx[-int8]-168 / -112.")] = None,
    sampling: Annotated[list[str] | None, typer.Option(
        help="Samplings (repeatable), with an optional cap: every-mm:7, every-mm:7,max=20.")
    ] = None,
    samples: Annotated[Path, typer.Option(help="Folder of the sample collection.")] = SAMPLES,
    index: Annotated[list[str] | None, typer.Option(help="File names to index.")] = None,
    query: Annotated[str, typer.Option(help="Query file name inside SAMPLES (or a path).")] =
        "ct_head_atlas_totalseg.nii.gz",
    resample_query: Annotated[str | None, typer.Option(
        help="Query with QUERY resampled to XxYxZ voxels (int16 .nii.gz, written to a "
             "temporary folder first), e.g. 512x512x300.")] = None,
    resample_z_mm: Annotated[float | None, typer.Option(
        help="Slice spacing of the resampled query in mm (default: the same field of view).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Interleaved rounds (medians reported).")] = 1,
    warmup: Annotated[int, typer.Option(help="Unrecorded rounds before them.")] = 1,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """A volume query end to end (read, window, embed, k-NN, vote) per model and sampling,
    interleaved round by round: medians, spread and per-round ratios to the first variant."""
    guard = check_machine(allow_busy)
    from benchmarks.methods import parse_sampling
    from benchmarks.perf.query_bench import bench_latency, resampled_query

    model_list = models or [DEFAULT_MODEL, "dinov2-s-onnx-int8"]
    samplings = sampling or [DEFAULT_SAMPLING]
    for s in samplings:
        parse_sampling(s)  # a typo is one line now, not after the indexing
    files = [samples / f for f in (index or ["mr_abdomen_totalseg.nii.gz"])]
    params = {"models": model_list, "sampling": samplings, "query": query,
              "resample_query": resample_query, "resample_z_mm": resample_z_mm,
              "index": [f.name for f in files], "repeats": repeats, "warmup": warmup,
              "batch_size": batch_size, "device": device,
              "load_average_start": load_average()}
    with tempfile.TemporaryDirectory(prefix="medir-perf-q300-") as tmp:
        qfile = samples / query
        if resample_query:
            shape = _shape(resample_query)
            qfile = resampled_query(qfile, Path(tmp) / f"{qfile.name.split('.')[0]}_"
                                    f"{resample_query}.nii.gz", shape, resample_z_mm)
            log(f"query resampled to {resample_query}: {qfile}")
        results = bench_latency(files, qfile, model_list, samplings,
                                lambda m: make_embedder(m, device, batch_size), repeats=repeats,
                                warmup=warmup)
    write_result(out, "query_latency", params, results, guard)
    return results


def _shape(text: str) -> tuple[int, int, int]:
    """``XxYxZ`` → (X, Y, Z), or one clear error."""
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise typer.BadParameter(f"shape {text!r}: expected XxYxZ, e.g. 512x512x300")
    return dims[0], dims[1], dims[2]


@app.command("store")
@user_errors
def store_cmd(
    out: OutOpt = Path("results/perf"),
    points: Annotated[list[int] | None, typer.Option(
        help="Store sizes (repeatable).")] = None,
    dim: Annotated[int, typer.Option(help="Vector dimension.")] = 384,
    m: Annotated[int, typer.Option(help="HNSW m.")] = 16,
    ef_construct: Annotated[int, typer.Option(help="HNSW ef_construct.")] = 128,
    ef: Annotated[list[int] | None, typer.Option(help="hnsw_ef at query time (repeatable).")]
        = None,
    repeats: Annotated[int, typer.Option(help="Queries per ef.")] = 20,
    storage: Annotated[str, typer.Option(
        help="Vector storage: q=none|int8 (scalar quantization), os=oversampling, "
             "dt=float32|float16, e.g. q=int8,os=2,dt=float16.")] = "",
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """The embedded store at scale: upsert rate, build time, 100-slice query p50, memory."""
    guard = check_machine(allow_busy)
    from benchmarks.indexes import parse_storage
    from benchmarks.perf.store_scale import bench_store

    sizes = points or [100_000, 440_000]
    efs = tuple(ef or [64, 128, 256])
    store_settings = parse_storage(storage)
    params = {"points": sizes, "dim": dim, "m": m, "ef_construct": ef_construct,
              "ef": list(efs), "storage": store_settings.model_dump(),
              "load_average_start": load_average()}
    results: dict[str, Any] = {}
    for n in sizes:
        log(f"store: {n} points")
        results[str(n)] = bench_store(n, dim=dim, m=m, ef_construct=ef_construct, efs=efs,
                                      repeats=repeats, storage=store_settings)
        results[str(n)]["load_average"] = load_average()
    write_result(out, "store", params, results, guard)
    return results


@app.command("memory")
@user_errors
def memory_cmd(
    out: OutOpt = Path("results/perf"),
    size_gb: Annotated[float, typer.Option(help="Size of the 4D file.")] = 2.0,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    shape: Annotated[str, typer.Option(help="Per-volume shape XxYxZ (int16).")] = "512x512x64",
    gz: Annotated[bool, typer.Option(help="Write .nii.gz instead of .nii.")] = False,
    workdir: Annotated[Path | None, typer.Option(help="Where to write the file.")] = None,
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """Peak RSS of ingesting a large 4D volume, and for a quarter of its volumes."""
    guard = check_machine(allow_busy)
    from benchmarks.perf.memory import bench_memory

    dims = _shape(shape)
    params = {"size_gb": size_gb, "model": model, "device": device, "batch_size": batch_size,
              "shape": list(dims), "gz": gz, "load_average_start": load_average()}
    results = bench_memory(size_gb, model, device, batch_size, dims,
                           gz=gz, workdir=workdir)
    write_result(out, "memory", params, results, guard)
    return results


@app.command("peak")
@user_errors
def peak_cmd(
    out: OutOpt = Path("results/perf"),
    batch_size: BatchOpt = 16,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds per runner.")] = 3,
    samples: Annotated[Path, typer.Option(help="Folder of the sample collection.")] = SAMPLES,
    allow_busy: AllowBusyOpt = False,
) -> dict[str, Any]:
    """Matrix-multiply peak vs the default model's forward pass (float, int8, torch, ORT
    options), interleaved in one run; fraction of peak = slices/s × FLOPs/slice ÷ peak."""
    guard = check_machine(allow_busy)
    from benchmarks.perf.peak import bench_peak

    params = {"batch_size": batch_size, "rounds": rounds, "load_average_start": load_average()}
    results = bench_peak(samples, batch_size=batch_size, rounds=rounds,
                         onnx_cache=get_settings().cache_dir / "onnx")
    write_result(out, "peak", params, results, guard)
    return results


@app.command("all")
@user_errors
def all_cmd(
    out: OutOpt = Path("results/perf"),
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 32,
    synthetic_scale: Annotated[float, typer.Option(help="See ``ingest``.")] = 1.0,
    points: Annotated[list[int] | None, typer.Option(help="Store sizes.")] = None,
    size_gb: Annotated[float, typer.Option(help="4D file size for ``memory``.")] = 2.0,
    memory_shape: Annotated[str, typer.Option(help="Per-volume shape for memory.")] =
        "512x512x64",
    allow_busy: AllowBusyOpt = False,
) -> None:
    """Every benchmark, one JSON each under OUT (a folder). The machine is checked once, at
    the start: each part records its own start and end load under this run's decision."""
    guard = check_machine(allow_busy)
    with guard.covering():
        ingest_cmd(out=out, model=model, device=device, batch_size=batch_size,
                   synthetic_scale=synthetic_scale)
        query_cmd(out=out, model=model, device=device, batch_size=batch_size)
        store_cmd(out=out, points=points)
        memory_cmd(out=out, size_gb=size_gb, model=model, device=device,
                   batch_size=batch_size, shape=memory_shape)

