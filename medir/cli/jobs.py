"""``medir jobs``: recent queue jobs with their state, progress and error."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medir.cli.common import console, error_line
from medir.errors import MedirError
from medir.secrets import mask_secrets
from medir.terminal import safe_text

app = typer.Typer(help="Background jobs on the Celery queue.", invoke_without_command=True,
                  add_completion=False)
out = console()


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@app.callback()
def jobs(
    limit: Annotated[int, typer.Option(help="Number of jobs (newest first).")] = 20,
    state: Annotated[str | None, typer.Option(
        help="Only this state: PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only ingest or search jobs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON.")] = False,
) -> None:
    """List recent jobs: id, file, volume, state, progress, error and times."""
    from medir.config import get_settings
    from runner.queue.jobs import job_store

    try:
        import redis

        try:
            found = job_store(get_settings()).recent(limit, state=state, kind=kind)
        except redis.RedisError as exc:
            raise MedirError(f"cannot read job records from the broker ({exc})") from None
    except MedirError as exc:
        error_line(exc)
        raise typer.Exit(2) from None
    if as_json:
        print(mask_secrets(json.dumps([j.to_dict() for j in found], indent=2)))
        return
    if not found:
        out.print("no jobs yet: medir ingest --queue PATH...")
        return
    table = Table("id", "kind", "file", "volume", "state", "slices", "error", "submitted",
                  "seconds")
    for j in found:
        color = {"SUCCESS": "green", "FAILURE": "red", "RETRY": "yellow"}.get(j.state, "cyan")
        table.add_row(safe_text(j.id[:8]), safe_text(j.kind),
                      safe_text(Path(j.file).name if j.file else "-"), safe_text(j.volume or "-"),
                      f"[{color}]{safe_text(j.state)}[/]",
                      f"{j.done}/{j.total}" if j.total else "-",
                      safe_text(mask_secrets(j.error or "")), _when(j.submitted),
                      f"{j.seconds:.1f}" if j.started else "-")
    out.print(table)
