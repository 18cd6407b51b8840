"""Peak memory (RSS) of ingesting one large 4D volume, and whether it depends on the number of
volumes: the same per-volume shape is ingested from a file of ``K`` volumes and from one of
``K / 4``; each ingest runs in a fresh child process whose peak RSS (``ru_maxrss``) is read.

The files are written volume by volume (never held whole in memory), uncompressed by default
(``.nii``; ``gz=True`` writes ``.nii.gz``, slower to make).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from benchmarks.machine import rss_bytes
from benchmarks.perf.common import log, synthetic_volume

VOLUME_SHAPE = (512, 512, 64)  # int16: 32 MiB per 3D volume


def write_4d(path: Path, shape: tuple[int, int, int], n_volumes: int, gz: bool = False,
             seed: int = 0) -> Path:
    """A 4D int16 NIfTI of ``n_volumes`` volumes of ``shape``, written one volume at a time."""
    if gz and path.suffix != ".gz":
        path = path.with_name(path.name + ".gz")
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((*shape, n_volumes))
    hdr.set_zooms((1.0, 1.0, 2.5, 1.0))
    hdr.set_sform(np.diag([1.0, 1.0, 2.5, 1.0]), code=1)
    hdr.set_qform(np.diag([1.0, 1.0, 2.5, 1.0]), code=1)
    hdr["vox_offset"] = 352
    base = synthetic_volume(shape, seed, ct=True)
    opener = nib.openers.Opener(str(path), "wb", compresslevel=1) if gz else open(path, "wb")
    with opener as fh:
        hdr.write_to(fh)
        fh.write(b"\x00" * 4)  # no extensions
        for k in range(n_volumes):
            vol = np.roll(base, k, axis=2)  # distinct content per volume
            fh.write(vol.tobytes(order="F"))
    return path


def _child(file: Path, model: str, device: str, batch_size: int, store: Path) -> dict[str, Any]:
    """Runs in the child: load the model, ingest ``file``, report peak RSS and stats."""
    from benchmarks.perf.common import make_embedder
    from ingest.limits import DEFAULT_LIMITS
    from ingest.pipeline import PipelineStats, ingest_paths
    from search.store_edge import EdgeStore

    emb = make_embedder(model, device, batch_size)
    rss_loaded = rss_bytes()
    peak_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = PipelineStats()
    t0 = time.perf_counter()
    # the bench's own 4D file holds more volumes than a file from outside may declare
    limits = replace(DEFAULT_LIMITS, max_volumes=1 << 20)
    with EdgeStore(store) as st:
        reports = ingest_paths([file], st, emb, stats=stats, limits=limits)
    return {
        "wall_s": time.perf_counter() - t0,
        "volumes": len(reports),
        "indexed": sum(r.status == "indexed" for r in reports),
        "rss_after_model_load_bytes": rss_loaded,
        "peak_rss_before_ingest_bytes": peak_loaded,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "pipeline": stats.to_dict(),
    }


def measure(file: Path, model: str, device: str, batch_size: int, timeout: float = 900.0
            ) -> dict[str, Any]:
    """Ingest ``file`` in a child process; its peak RSS and pipeline stats."""
    with tempfile.TemporaryDirectory(prefix="medir-perf-mem-") as tmp:
        cmd = [sys.executable, "-m", "benchmarks.perf.memory", str(file), model, device,
               str(batch_size), str(Path(tmp) / "store")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parents[2], check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_memory(size_gb: float, model: str, device: str, batch_size: int,
                 shape: tuple[int, int, int] = VOLUME_SHAPE, gz: bool = False,
                 workdir: Path | None = None) -> dict[str, Any]:
    """Peak RSS of ingesting a ``size_gb`` 4D file and of one with a quarter of its volumes."""
    vol_bytes = int(np.prod(shape)) * 2
    n_full = max(2, round(size_gb * 1e9 / vol_bytes))
    n_small = max(1, n_full // 4)
    out: dict[str, Any] = {"volume_shape": list(shape), "dtype": "int16",
                           "volume_bytes": vol_bytes, "gz": gz, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="medir-perf-4d-", dir=workdir) as tmp:
        for label, n in (("small", n_small), ("full", n_full)):
            path = Path(tmp) / f"big4d_{n}.nii"
            t0 = time.perf_counter()
            path = write_4d(path, shape, n, gz=gz)
            size = path.stat().st_size
            log(f"memory: wrote {path.name} ({size / 1e9:.2f} GB, {n} volumes) in "
                f"{time.perf_counter() - t0:.0f} s; ingesting")
            res = measure(path, model, device, batch_size)
            res.update(file_bytes=size, n_volumes=n, slices=n * shape[2])
            res["ingest_growth_bytes"] = res["peak_rss_bytes"] - res["peak_rss_before_ingest_bytes"]
            out["runs"][label] = res
            stages = ", ".join(f"{k} {v:.1f} s" for k, v in res["pipeline"]["stages"].items())
            log(f"memory {label}: peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB; {stages}")
            path.unlink()
    full, small = out["runs"]["full"], out["runs"]["small"]
    out["file_bytes"] = full["file_bytes"]
    out["peak_rss_bytes"] = full["peak_rss_bytes"]
    out["peak_ratio_full_vs_quarter"] = full["peak_rss_bytes"] / small["peak_rss_bytes"]
    return out


if __name__ == "__main__":  # the child process of :func:`measure`
    f, m, d, b, s = sys.argv[1:6]
    print(json.dumps(_child(Path(f), m, d, int(b), Path(s))))
