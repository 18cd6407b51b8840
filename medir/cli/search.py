"""``medir search``: rank the indexed volumes most similar to a query, and show the answer.

The command parses and validates the query options before anything is loaded, asks the runner,
then prints the ranking (a table, the answer's verdict and the timings), its JSON, or a cohort
file (``--export``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medir.cli.common import console as make_console
from medir.cli.common import err_console, parse_filters, user_errors
from medir.config import get_settings
from medir.errors import MedirError
from medir.secrets import mask_secrets
from medir.terminal import safe_text

out = make_console()


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
        filters=parse_filters(filter),
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
