"""What the store holds, and its upkeep: ``medir info``, ``volumes``, ``prune`` and ``migrate``.

Each asks the runner (``get_runner``) and prints its answer, or its JSON with ``--json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medir.cli.common import console as make_console
from medir.cli.common import parse_filters, user_errors
from medir.config import get_settings
from medir.secrets import mask_secrets, safe_url
from medir.terminal import safe_text

out = make_console()


@user_errors
def info(
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] =
    False,
) -> None:
    """Store mode, collections, volumes and points per model, label facets."""
    from runner import get_runner
    from runner.base import queue_on

    settings = get_settings()
    with get_runner(settings) as runner:
        stats = runner.stats()
    if as_json:
        print(json.dumps({**stats, "default_model": settings.model,
                          "queue": queue_on(settings)}, indent=2, default=str))
        return
    out.print(safe_text(mask_secrets(f"store: {stats['mode']} at {stats['location']}")),
              highlight=False)
    out.print(safe_text(f"default model: {settings.model}; queue: "
                        f"{safe_url(settings.redis_url) if queue_on(settings) else 'off'}"),
              highlight=False)
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
        rows = runner.volumes(model, parse_filters(filter))
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
