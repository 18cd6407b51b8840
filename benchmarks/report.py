"""Write a grid run: JSON, CSV, Markdown tables shaped like the paper's Table III, PNG heatmaps
of the grid and organ confusion matrices.

Files under the results directory:

- ``results.json``: config, dataset, machine, git commit, timings, every cell's metrics and
  confusion matrices;
- ``cells.csv`` (one row per model × index × variant × level), ``classes.csv`` (per class),
  ``predictions.csv`` (query case → winning database case, per cell);
- ``table3_<level>_<metric>.md`` and ``report.md`` (all tables plus the run's facts);
- ``heatmap_<level>_<metric>.png``; ``confusion_<level>_<model>_<index>_<variant>.png`` for the
  best variant of each (model, index) by mean body-region recall.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache import atomic_path
from benchmarks.datasets import LABEL_ORDERS
from benchmarks.grid import GROUP_TITLES, CellResult, PaperRun
from benchmarks.machine import BenchGuard, stamp

METRICS = ("recall", "precision")


def fmt(v: float | None) -> str:
    """The paper's number style: ``.986``, ``1.0``; an empty cell for undefined values."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if v >= 0.9995:
        return "1.0"
    return f"{v:.3f}".lstrip("0") if v > 0 else "0"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _header(cells: Sequence[CellResult]) -> list[tuple[str, str]]:
    """(variant name, column heading) in first-seen order."""
    seen: dict[str, str] = {}
    for c in cells:
        v = c.variant
        if v.name not in seen:
            short = {"random": f"rnd {v.column}", "every-mm": f"{v.column} mm",
                     "every-n": f"n={v.column}"}.get(v.group, v.column)
            seen[v.name] = short
    return list(seen.items())


def _rows(run: PaperRun, level: str) -> list[tuple[str, str, str]]:
    """(class, index, model) rows in the paper's order: class, then index, then model."""
    classes: list[str] = []
    for c in run.cells:
        for label, score in c.metrics[level].classes.items():
            if score.support > 0 and label not in classes:
                classes.append(label)
    order = LABEL_ORDERS.get(level, ())
    classes.sort(key=lambda x: (order.index(x) if x in order else len(order), x))
    indexes = list(dict.fromkeys(c.index for c in run.cells))
    models = list(dict.fromkeys(c.model for c in run.cells))
    return [(cl, ix, m) for cl in classes for ix in indexes for m in models]


def table_values(run: PaperRun, level: str, metric: str,
                 ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]],
                            np.ndarray]:
    """The Table III matrix: rows (class, index, model) × variant columns (NaN = undefined)."""
    rows = _rows(run, level)
    cols = _header(run.cells)
    col_pos = {name: j for j, (name, _) in enumerate(cols)}
    row_pos = {r: i for i, r in enumerate(rows)}
    vals = np.full((len(rows), len(cols)), np.nan)
    for c in run.cells:
        lm = c.metrics.get(level)
        if lm is None:
            continue
        for label, score in lm.classes.items():
            key = (label, c.index, c.model)
            if key in row_pos:
                v = getattr(score, metric)
                vals[row_pos[key], col_pos[c.variant.name]] = np.nan if v is None else v
    return rows, cols, vals


def markdown_table(run: PaperRun, level: str, metric: str) -> str:
    """A Markdown table shaped like the paper's Table III (plus an overall average row)."""
    rows, cols, vals = table_values(run, level, metric)
    groups = list(dict.fromkeys(GROUP_TITLES.get(c.variant.group, c.variant.group)
                                for c in run.cells))
    lines = [
        f"**{metric.capitalize()} per {level}** — columns: {' | '.join(groups)}; "
        "rows: class, index (Id.), embedding.",
        "",
        "| " + " | ".join([level.capitalize(), "Id.", "Embedding", *[h for _, h in cols]]) + " |",
        "|" + "---|" * (3 + len(cols)),
    ]
    last_class = last_index = None
    for (cl, ix, m), row in zip(rows, vals, strict=True):
        show_cl = cl if cl != last_class else ""
        show_ix = ix if (cl, ix) != (last_class, last_index) else ""
        last_class, last_index = cl, ix
        cells = [fmt(None if np.isnan(v) else float(v)) for v in row]
        lines.append("| " + " | ".join([show_cl, show_ix, m, *cells]) + " |")
    with np.errstate(all="ignore"):
        avg = [None if np.all(np.isnan(vals[:, j])) else float(np.nanmean(vals[:, j]))
               for j in range(len(cols))]
    lines.append("| " + " | ".join(["Overall average", "", "", *[fmt(a) for a in avg]]) + " |")
    return "\n".join(lines) + "\n"


def heatmap(run: PaperRun, level: str, metric: str, path: Path) -> Path:
    """PNG heatmap of one Table III matrix (grey = undefined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, vals = table_values(run, level, metric)
    h = max(2.5, 0.32 * len(rows) + 1.5)
    w = max(5.0, 0.55 * len(cols) + 3.5)
    fig, ax = plt.subplots(figsize=(w, h))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cccccc")
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), [hd for _, hd in cols], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{c} | {i} | {m}" for c, i, m in rows], fontsize=7)
    if vals.size <= 600:
        for (i, j), v in np.ndenumerate(vals):
            if not np.isnan(v):
                ax.text(j, i, fmt(float(v)), ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
    ax.set_title(f"{metric} per {level}")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def confusion_png(cell: CellResult, level: str, path: Path) -> Path:
    """PNG of one cell's confusion matrix (rows true, columns predicted), counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lm = cell.metrics[level]
    labels, conf = lm.labels, lm.confusion
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 0.6 * n, 1.6 + 0.55 * n))
    ax.imshow(conf, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = conf.max() if conf.size else 0
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=8,
                color="white" if top and v > top / 2 else "black")
    ax.set_title(f"{level}: {cell.model}, {cell.index}, {cell.variant.name}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def best_cells(run: PaperRun, level: str = "region") -> list[CellResult]:
    """Per (model, index), the vote variant with the highest mean recall at ``level``."""
    best: dict[tuple[str, str], CellResult] = {}
    for c in run.cells:
        if c.variant.slice_wise or level not in c.metrics:
            continue
        score = c.metrics[level].macro_recall
        key = (c.model, c.index)
        cur = best.get(key)
        cur_score = cur.metrics[level].macro_recall if cur is not None else None
        if cur is None or (score or -1.0) > (cur_score or -1.0):
            best[key] = c
    return list(best.values())


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


def write_report(run: PaperRun, out: Path, *, plots: bool = True,
                 guard: BenchGuard | None = None) -> dict[str, Path]:
    """Write every output file of a grid run under ``out``; returns them by kind. ``guard``:
    the run's load record (``busy``, load at start and end) for the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    levels = list(run.config.get("levels", ["modality", "region", "organ"]))
    doc = {"benchmark": "paper", **stamp(guard), "config": run.config, "dataset": run.dataset,
           "models": run.models, "searches": run.searches, "timings": run.timings,
           "cells": [c.to_dict() for c in run.cells]}
    files["json"] = out / "results.json"
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))

    files["cells_csv"] = out / "cells.csv"
    _write_csv(files["cells_csv"],
               ["model", "index", "variant", "group", "level", "n", "accuracy",
                "macro_recall", "macro_precision", "seconds"],
               [[c.model, c.index, c.variant.name, c.variant.group, lv, m.n, _num(m.accuracy),
                 _num(m.macro_recall), _num(m.macro_precision), f"{c.seconds:.4f}"]
                for c in run.cells for lv, m in c.metrics.items()])
    files["classes_csv"] = out / "classes.csv"
    _write_csv(files["classes_csv"],
               ["model", "index", "variant", "level", "class", "support", "predicted", "tp",
                "recall", "precision"],
               [[c.model, c.index, c.variant.name, lv, s.label, s.support, s.predicted, s.tp,
                 _num(s.recall), _num(s.precision)]
                for c in run.cells for lv, m in c.metrics.items() for s in m.classes.values()])
    files["predictions_csv"] = out / "predictions.csv"
    _write_csv(files["predictions_csv"], ["model", "index", "variant", "query", "predicted"],
               [[c.model, c.index, c.variant.name, q, p] for c in run.cells
                for q, p in c.predictions])

    sections: list[str] = []
    for lv in levels:
        for metric in METRICS:
            text = markdown_table(run, lv, metric)
            p = out / f"table3_{lv}_{metric}.md"
            with atomic_path(p) as tmp:
                tmp.write_text(text)
            files[f"table_{lv}_{metric}"] = p
            sections.append(f"### {lv.capitalize()} {metric}\n\n{text}")
            if plots:
                files[f"heatmap_{lv}_{metric}"] = heatmap(
                    run, lv, metric, out / f"heatmap_{lv}_{metric}.png")
    conf_level = "organ" if "organ" in levels else levels[-1]
    best = best_cells(run, "region" if "region" in levels else conf_level)
    if plots:
        for c in best:
            name = f"confusion_{conf_level}_{_slug(c.model)}_{_slug(c.index)}_" \
                   f"{_slug(c.variant.name)}.png"
            files[f"confusion_{c.model}_{c.index}"] = confusion_png(c, conf_level, out / name)

    files["markdown"] = out / "report.md"
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text(_report_md(run, doc, best, conf_level, sections))
    return files


def _report_md(run: PaperRun, doc: dict[str, Any], best: list[CellResult], conf_level: str,
               sections: list[str]) -> str:
    ds = run.dataset
    m = doc["machine"]
    lines = [
        "# medir bench paper",
        "",
        f"- dataset: `{ds['name']}` ({ds['protocol']}), {ds['n_database']} database cases, "
        f"{ds['n_queries']} query cases",
        f"- k = {run.config['k']}; indexes: {', '.join(dict.fromkeys(c.index for c in run.cells))}",
        f"- machine: {m['cpu']}, {m['cpus_usable']} usable CPUs; commit "
        f"`{(doc['git']['commit'] or 'unknown')[:12]}`{' (dirty)' if doc['git']['dirty'] else ''}"
        f"; {doc['time']}",
        f"- total {run.timings.get('total_seconds', 0):.1f} s",
        "",
        "| model | dim | volumes | db slices | query slices | embed s (this run) |",
        "|---|---|---|---|---|---|",
    ]
    for md in run.models:
        lines.append(f"| {md['model']} | {md['dim']} | {md['n_volumes']} | {md['db_slices']} | "
                     f"{md['query_slices']} | {md['wall_seconds']:.1f} |")
    lines += ["", "| model | index | build s | search s |", "|---|---|---|---|"]
    for s in run.searches:
        lines.append(f"| {s['model']} | {s['index']} | {s['build_seconds']:.3f} | "
                     f"{s['search_seconds']:.3f} |")
    lines += ["", f"Best variant per model and index (mean body-region recall), its "
              f"{conf_level} accuracy:", ""]
    for c in best:
        region = c.metrics.get("region")
        lm = c.metrics.get(conf_level)
        lines.append(f"- {c.model}, {c.index}, **{c.variant.name}**: region mean recall "
                     f"{fmt(region.macro_recall if region else None)}, {conf_level} accuracy "
                     f"{fmt(lm.accuracy if lm else None)}")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(sections)
