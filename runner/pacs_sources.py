"""Whether series ingested from a PACS are still there, for ``medir prune``
(:func:`search.volumes.check_sources` calls :func:`check_pacs_sources` through the runner).

One QIDO-RS series search per series on its own server, through :mod:`ingest.dicomweb`'s
client (bounded in time and bytes; the settings' credentials go only to the settings'
server). Only the PACS can prove a series gone, and only by answering: an empty answer or
HTTP 404 from a server that lists at least one study means **gone**; an answer listing the
series means **present**; anything else (unreachable, refused, a broken or empty server, an
answer listing only other series) means **unknown**. A server that fails once is not asked
again: its remaining series are unknown with the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

from ingest.dicomweb import (
    TAG_SERIES_UID,
    BadRow,
    PacsClient,
    PacsError,
    SourceSpec,
    parse_source,
    row_uid,
)
from medir.config import PacsSettings
from medir.errors import MedirError
from search.volumes import GONE, PRESENT, UNKNOWN

ROWS = 10  # rows asked for: one matching series is enough


def check_pacs_sources(sources: Sequence[str],
                       pacs: PacsSettings) -> dict[str, tuple[str, str]]:
    """(state, reason) of each PACS series source (``dicomweb+http(s)://…/series/<uid>``)."""
    out: dict[str, tuple[str, str]] = {}
    by_server: dict[str, list[tuple[str, SourceSpec]]] = {}
    for source in sources:
        try:
            spec = parse_source(source, pacs)
        except MedirError as exc:
            out[source] = (UNKNOWN, f"not a usable PACS source ({exc})")
            continue
        if not spec.series_uid:
            out[source] = (UNKNOWN, "the PACS source names no series")
            continue
        by_server.setdefault(spec.target.base_url, []).append((source, spec))
    for items in by_server.values():
        out.update(_check_server(items))
    return out


def _check_server(items: Sequence[tuple[str, SourceSpec]]) -> dict[str, tuple[str, str]]:
    """The series of one server, asked one by one until the server fails."""
    target = items[0][1].target
    out: dict[str, tuple[str, str]] = {}
    failed = ""
    holds_nothing: bool | None = None  # whether the server lists no study at all
    with PacsClient(target) as client:
        for source, spec in items:
            if failed:
                out[source] = (UNKNOWN, failed)
                continue
            try:
                listed = _series_listed(client, spec.study_uid, spec.series_uid or "")
                if listed is False and holds_nothing is None:
                    holds_nothing = _holds_no_study(client)
            except PacsError as exc:
                failed = f"PACS cannot be checked: {exc}"
                out[source] = (UNKNOWN, failed)
                continue
            if listed:
                out[source] = (PRESENT, "")
            elif listed is None:
                out[source] = (UNKNOWN, f"PACS {target.display} answered a search for one "
                                        "series with other series (does it ignore the filter?)")
            elif holds_nothing:
                out[source] = (UNKNOWN, f"PACS {target.display} holds no study at all (a new "
                                        "or wiped server?)")
            else:
                out[source] = (GONE, f"not on PACS {target.display}")
    return out


def _series_listed(client: PacsClient, study_uid: str | None, series_uid: str) -> bool | None:
    """Whether the PACS lists the series: True; False for an empty answer or HTTP 404 (the
    only proof of absence); None for an answer listing only other series."""

    def search() -> Any:
        try:
            return client.client.search_for_series(
                study_instance_uid=study_uid, search_filters={"SeriesInstanceUID": series_uid},
                fields=["SeriesInstanceUID"], limit=ROWS, get_remaining=False)
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return []  # the study (or the series) is not known there
            raise

    rows = client.call("QIDO-RS series search", search)
    if not isinstance(rows, list):
        raise client.error("QIDO-RS series search: the answer is not a JSON array of rows")
    if not rows:
        return False
    return True if any(_uid(row) == series_uid for row in rows[:ROWS]) else None


def _uid(row: object) -> str:
    try:
        return row_uid(row, TAG_SERIES_UID)
    except BadRow:
        return ""


def _holds_no_study(client: PacsClient) -> bool:
    """Whether the PACS answers a study search with nothing at all (one study asked for)."""
    rows = client.call("QIDO-RS study search",
                       lambda: client.client.search_for_studies(limit=1, get_remaining=False))
    if not isinstance(rows, list):
        raise client.error("QIDO-RS study search: the answer is not a JSON array of rows")
    return not rows
