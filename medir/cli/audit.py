"""``medir audit``: near-duplicate and leakage audits of a collection (``search.audit``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medir.cli.common import console, err_console, user_errors
from medir.config import get_settings
from medir.errors import MedirError
from medir.terminal import safe_text

app = typer.Typer(help="Audits of a collection: near-duplicates and leakage between splits.",
                  no_args_is_help=True, add_completion=False)
out = console()
PAIR_COLUMNS = ("a", "b", "score", "coverage_a", "coverage_b", "similarity", "a_slices",
                "b_slices", "a_z_mm", "b_z_mm")


@app.command("duplicates")
@user_errors
def duplicates(
    model: Annotated[str | None, typer.Option(help="Embedding model (its collection).")] = None,
    across: Annotated[str | None, typer.Option(
        help="Only pairs whose values of this label differ, e.g. split or dataset "
             "(a leakage audit).")] = None,
    slice_min: Annotated[float | None, typer.Option(
        help="Similarity at which a slice matches another volume's slice "
             "(default: measured, docs/audit.md).")] = None,
    pair_min: Annotated[float | None, typer.Option(
        help="Pair score (coverage x similarity) at which a pair is reported.")] = None,
    k: Annotated[int | None, typer.Option(help="Neighbours per slice.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the pairs as JSON.")] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write the pairs as CSV.")
                       ] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw the pair-score matrix of the volumes involved (PNG).")] = None,
) -> None:
    """Every pair of indexed volumes that are the same scan or overlap (a z-crop, an in-plane
    crop, a resampled or re-saved copy), with a score and the matched slice ranges; found
    with the k-NN index, never by comparing every pair."""
    from runner import get_runner
    from search.audit import (
        DEFAULT_AUDIT_K,
        DEFAULT_PAIR_MIN,
        DEFAULT_SLICE_MIN,
        AuditOptions,
        DuplicatePair,
    )

    settings = get_settings()
    options = AuditOptions(across=across, k=DEFAULT_AUDIT_K if k is None else k,
                           slice_min=DEFAULT_SLICE_MIN if slice_min is None else slice_min,
                           pair_min=DEFAULT_PAIR_MIN if pair_min is None else pair_min)
    for path in (csv_out, plot):
        if path is not None and not path.parent.is_dir():
            raise MedirError(f"{path}: folder {path.parent} does not exist")
    name = model or settings.model
    with get_runner(settings) as runner, Progress(
            TextColumn("audit"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=err_console, transient=True, disable=as_json) as bar:
        task = bar.add_task("audit", total=None)
        pairs = runner.audit(name, options,
                             progress=lambda _, i, n: bar.update(task, completed=i, total=n))
    rows = [DuplicatePair.from_dict(p).row() for p in pairs]
    if csv_out is not None:
        _write_csv(csv_out, rows)
    if plot is not None:
        _plot(plot, [DuplicatePair.from_dict(p) for p in pairs])
    if as_json:
        print(json.dumps(pairs, indent=2))
        return
    _print(rows, options.across)


def _print(rows: list[dict[str, Any]], across: str | None) -> None:
    if not rows:
        out.print("no near-duplicate pairs" + (f" across {safe_text(across)}" if across else ""),
                  highlight=False)
        return
    table = Table("a", "b", "score", "cov a", "cov b", "sim", "slices a", "slices b")
    for r in rows:
        table.add_row(safe_text(r["a"]), safe_text(r["b"]), f"{r['score']:.2f}",
                      f"{r['coverage_a']:.2f}", f"{r['coverage_b']:.2f}",
                      f"{r['similarity']:.3f}", r["a_slices"], r["b_slices"])
    out.print(table)
    out.print(f"{len(rows)} pairs", highlight=False)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    from medir.files import atomic_write_text
    from search.cohort import spreadsheet_safe

    buf = io.StringIO()
    fields = list(rows[0]) if rows else list(PAIR_COLUMNS)
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: spreadsheet_safe(v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    err_console.print(f"{len(rows)} pairs → {safe_text(str(path))}", highlight=False)


def _plot(path: Path, pairs: list[Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medir.files import atomic_path
    from search.audit import similarity_matrix

    ids, m = similarity_matrix(pairs)
    n = max(len(ids), 1)
    fig, ax = plt.subplots(figsize=(min(2 + 0.35 * n, 24), min(1.5 + 0.35 * n, 24)))
    im = ax.imshow(m if len(ids) else [[0.0]], vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ids)), ids, fontsize=7)
    ax.set_title("near-duplicate pair scores (coverage x similarity)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    err_console.print(f"pair-score matrix → {safe_text(str(path))}", highlight=False)
