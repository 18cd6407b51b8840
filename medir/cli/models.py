"""``medir models``: list the registered embedders and put the paper's weights in place.

- ``medir models`` / ``medir models list``: every registered model with its dimension,
  licence, source and whether its weights are on this machine (``--json`` for scripts);
- ``medir models prepare NAME --from PATH``: copy or convert upstream weight files into
  ``MEDIR_WEIGHTS_DIR/NAME/`` and check them with one forward pass.

User errors (unknown model, wrong file) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ingest.embedders.base import Embedder
from ingest.embedders.registry import all_models, model_class
from ingest.embedders.weights import weights_root
from medir.errors import MedirError
from medir.terminal import visible_text

app = typer.Typer(
    help="The embedding models: list them, put their weights in place.",
    add_completion=False,
)

WeightsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights-dir",
        help="Parent of the per-model weight folders (default: MEDIR_WEIGHTS_DIR).",
    ),
]


def _fail(exc: MedirError) -> typer.Exit:
    typer.echo(f"error: {visible_text(exc)}", err=True)
    return typer.Exit(2)


def model_rows(weights_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per registered model: name, dim, license, source, weights present, paper."""
    rows = []
    for info in all_models():
        cls = model_class(info.name)
        emb: Embedder = cls(device="cpu", weights_dir=weights_dir)
        try:
            present = bool(emb.weights_present())
        except MedirError:
            present = False
        rows.append(
            {
                "name": info.name,
                "dim": info.dim,
                "license": info.license,
                "source": info.source,
                "weights": present,
                "paper": info.paper,
                "input_size": info.input_size,
                "mean": list(info.mean),
                "std": list(info.std),
            }
        )
    return rows


def _weights_dir(given: Path | None) -> Path:
    """``--weights-dir``, else the settings' (``MEDIR_WEIGHTS_DIR``)."""
    from medir.config import get_settings

    return given if given is not None else get_settings().weights_dir


def _print_table(weights_dir: Path | None, as_json: bool) -> None:
    weights_dir = _weights_dir(weights_dir)
    rows = model_rows(weights_dir)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "dim", "weights", "paper", "license", "source")
    table = [header] + [
        (
            r["name"],
            str(r["dim"]),
            "yes" if r["weights"] else "no",
            "yes" if r["paper"] else "",
            r["license"],
            r["source"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        typer.echo("  ".join([*cells, row[-1]]).rstrip())
    typer.echo(f"\nweights directory: {weights_root(weights_dir)}/<name>/")


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    weights_dir: WeightsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every registered model (the same as ``medir models list``)."""
    if ctx.invoked_subcommand is None:
        _print_table(weights_dir, as_json)


@app.command("list")
def list_models(
    weights_dir: WeightsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every registered model: dimension, licence, source, weights present."""
    _print_table(weights_dir, as_json)


@app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help="Model name, e.g. dinov1-vitb16.")],
    src: Annotated[
        Path,
        typer.Option("--from", help="Upstream weights: a file, a folder or a release zip."),
    ],
    weights_dir: WeightsDirOpt = None,
    device: Annotated[str, typer.Option(help="Device of the check (auto, cpu, cuda).")] = "auto",
) -> None:
    """Copy or convert weights into MEDIR_WEIGHTS_DIR/NAME/ and check them with one forward."""
    from ingest.embedders.paper_install import prepare_model

    try:
        report = prepare_model(name, src, weights_dir=_weights_dir(weights_dir), device=device)
    except MedirError as exc:
        raise _fail(exc) from None
    for f in report.files:
        typer.echo(f"wrote {f}")
    typer.echo(f"ok: {name} loads from {report.directory} ({report.dim}-d on {report.device})")
