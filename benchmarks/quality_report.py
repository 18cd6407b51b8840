"""Write a ``medir bench quality`` run: ``quality.json`` (with machine and git commit),
``quality.md`` (LOCO per level, per class, the perturbation table, query time) and
``quality_perturb.png`` (per-perturbation bars) and ``quality_confusion.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.cache import atomic_path
from benchmarks.machine import BenchGuard, stamp
from benchmarks.quality import QualityRun


def _pct(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def _frac(correct: int | None, n: int | None) -> str:
    return "" if not n else f"{correct}/{n}"


BASELINE = ("auto", "W")  # medir's default query: all slices, Gaussian vote, intensity auto


def verdicts(run: QualityRun) -> list[dict[str, Any]]:
    """The default rule for every method against the baseline (same model): better overall
    (LOCO class correct + perturbation class@1 and self@1 hits) and no class (LOCO, per
    modality/region) worse by more than one case."""
    out: list[dict[str, Any]] = []
    for base in run.results:
        if (base["prep"], base["method"]) != BASELINE:
            continue
        bpc = base["loco"]["per_class"].get("class", {})
        for r in run.results:
            if r["model"] != base["model"] or r is base or r["method"] == "SW":
                continue
            pc = r["loco"]["per_class"].get("class", {})
            worst = min((pc.get(c, {"correct": 0})["correct"] - v["correct"]
                         for c, v in bpc.items()), default=0)
            d_loco = r["loco"]["correct"].get("class", 0) - base["loco"]["correct"].get(
                "class", 0)
            shared = [p for p in r["perturb"] if p in base["perturb"]]
            d_pert = sum(r["perturb"][p]["class"] + r["perturb"][p]["self"]
                         - base["perturb"][p]["class"] - base["perturb"][p]["self"]
                         for p in shared)
            out.append({"model": r["model"], "prep": r["prep"], "method": r["method"],
                        "d_loco_class": d_loco, "d_perturb_hits": d_pert,
                        "perturbations_compared": len(shared), "worst_class_delta": worst,
                        "default_worthy": (d_loco + d_pert) > 0 and worst >= -1})
    return out


def markdown(run: QualityRun, meta: dict[str, Any]) -> str:
    rows = run.results
    dirty = " (dirty)" if meta["git"].get("dirty") else ""
    lines = [f"# medir bench quality: {run.dataset['name']}", "",
             f"{run.dataset['n_volumes']} volumes, {run.dataset['n_cases']} cases; "
             f"git {str(meta['git'].get('commit'))[:10]}{dirty}; "
             f"{meta['machine'].get('cpu')} × {meta['machine'].get('cpus_usable')}; "
             f"config {json.dumps(run.config)}", "",
             "## Leave-one-case-out (top-1 volume's labels; SW: per slice)", "",
             "| model | prep | method | modality | region | organ | modality/region | "
             "query ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo = r["loco"]
        cells = [_frac(lo["correct"].get(lv), lo["n"].get(lv))
                 for lv in ("modality", "region", "organ", "class")]
        lines.append(f"| {r['model']} | {r['prep']} | {r['method']} | " + " | ".join(cells)
                     + f" | {r['query_ms']['mean']:.2f} |")
    timed = [m for m in run.models if m.get("store_query_ms")]
    if timed:
        lines += ["", "## Query time through the embedded store (search_indexed, all slices, "
                  "Gaussian vote, k=1)", "",
                  "| model | prep | re-rank | query ms mean | p95 | of which re-rank ms |",
                  "|---|---|---|---|---|---|"]
        for m in timed:
            for rr, t in m["store_query_ms"].items():
                lines.append(f"| {m['model']} | {m['prep']} | {rr} | {t['query_ms_mean']} | "
                             f"{t['query_ms_p95']} | {t['rerank_ms_mean']} |")
    classes = sorted({c for r in rows for c in r["loco"]["per_class"].get("class", {})})
    lines += ["", "## Leave-one-case-out per class (modality/region), correct/n", "",
              "| model | prep | method | " + " | ".join(classes) + " |",
              "|---|---|---|" + "---|" * len(classes)]
    for r in rows:
        pc = r["loco"]["per_class"].get("class", {})
        lines.append(f"| {r['model']} | {r['prep']} | {r['method']} | " + " | ".join(
            _frac(pc[c]["correct"], pc[c]["n"]) if c in pc else "" for c in classes) + " |")
    perts = list(dict.fromkeys(p for r in rows for p in r["perturb"]))
    if perts:
        lines += ["", "## Perturbations: self@1 / class@1 (fraction of queries)", "",
                  "| model | prep | method | " + " | ".join(perts) + " |",
                  "|---|---|---|" + "---|" * len(perts)]
        for r in rows:
            lines.append(f"| {r['model']} | {r['prep']} | {r['method']} | " + " | ".join(
                f"{_pct(r['perturb'][p]['self_at_1'])} / {_pct(r['perturb'][p]['class_at_1'])}"
                if p in r["perturb"] else "" for p in perts) + " |")
        n_row = next(r for r in rows if r["perturb"])
        lines += ["", "Queries per perturbation: " + ", ".join(
            f"{p} {n_row['perturb'][p]['n']}" for p in perts if p in n_row["perturb"]) + "."]
    vs = verdicts(run)
    if vs:
        lines += ["", f"## Against the default ({BASELINE[0]}, {BASELINE[1]}): better overall "
                  "and no class worse by more than one case?", "",
                  "| model | prep | method | Δ LOCO class | Δ perturbation hits (self+class) | "
                  "worst class Δ | rule met |", "|---|---|---|---|---|---|---|"]
        for v in vs:
            met = "yes" if v["default_worthy"] else "no"
            lines.append(f"| {v['model']} | {v['prep']} | {v['method']} | "
                         f"{v['d_loco_class']:+d} | {v['d_perturb_hits']:+d} "
                         f"({v['perturbations_compared']}) | {v['worst_class_delta']:+d} | "
                         f"{met} |")
    return "\n".join(lines) + "\n"


def plots(run: QualityRun, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files: list[Path] = []
    rows = [r for r in run.results if r["perturb"]]
    if rows:
        perts = list(dict.fromkeys(p for r in rows for p in r["perturb"]))
        fig, axes = plt.subplots(2, 1, figsize=(max(8, len(perts) * 1.1), 7), sharex=True)
        width = 0.8 / len(rows)
        x = np.arange(len(perts))
        for ax, key, title in ((axes[0], "self_at_1", "self@1 (own case first)"),
                               (axes[1], "class_at_1", "class@1 (own case left out)")):
            for i, r in enumerate(rows):
                vals = [r["perturb"].get(p, {}).get(key) or 0.0 for p in perts]
                ax.bar(x + i * width, vals, width, label=f"{r['prep']} {r['method']}")
            ax.set_ylim(0, 1.05)
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        axes[1].set_xticks(x + 0.4 - width / 2, perts, rotation=30, ha="right")
        axes[0].legend(fontsize=7, ncol=3, loc="lower left")
        fig.tight_layout()
        path = out / "quality_perturb.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        files.append(path)
    # confusion of the first method (the paper's vote), modality/region level
    if run.results:
        r = run.results[0]
        conf = r["loco"]["confusion"].get("class", {})
        labels = sorted(set(conf) | {p for row in conf.values() for p in row})
        m = np.array([[conf.get(t, {}).get(p, 0) for p in labels] for t in labels])
        fig, ax = plt.subplots(figsize=(1 + 0.7 * len(labels), 1 + 0.6 * len(labels)))
        ax.imshow(m, cmap="Blues")
        for i in range(len(labels)):
            for j in range(len(labels)):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"LOCO {r['prep']} {r['method']}", fontsize=9)
        fig.tight_layout()
        path = out / "quality_confusion.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        files.append(path)
    return files


def write_quality(run: QualityRun, out: Path, *, with_plots: bool = True,
                  guard: BenchGuard | None = None) -> dict[str, Path]:
    """``quality.json`` (with ``guard``'s load record), ``quality.md`` and the plots."""
    out.mkdir(parents=True, exist_ok=True)
    meta = stamp(guard)
    doc = {**meta, "dataset": run.dataset, "config": run.config, "models": run.models,
           "results": run.results, "verdicts": verdicts(run), "seconds": run.seconds}
    files = {"json": out / "quality.json", "markdown": out / "quality.md"}
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text(markdown(run, meta))
    if with_plots:
        for p in plots(run, out):
            files[p.stem] = p
    return files
