"""A cohort: the ranked volumes of a query as a table another tool can read.

One row per volume: its id (also written as ``file``, so the CSV is a valid labels CSV for
``medir ingest --labels``), where it comes from (a file path, or the PACS Study/Series UIDs), its
labels, the vote's score and similarity, the answer's confidence when the query computed one,
and the matched slice ranges (query slices and database slices, first-last). CSV for pandas and
spreadsheets, JSON for programs.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from search.store import LABEL_KEYS
from search.vote import VolumeResult

COHORT_COLUMNS = ("rank", "volume_id", "file", "source", "study_uid", "series_uid",
                  *LABEL_KEYS, "score", "votes", "hits", "similarity", "confidence",
                  "query_slices", "db_slices")
COHORT_FORMATS = (".csv", ".json")


def slice_range(slices: Iterable[int]) -> str:
    """``first-last`` of a set of slice indices ("" when empty)."""
    s = sorted(set(int(i) for i in slices))
    return f"{s[0]}-{s[-1]}" if s else ""


def cohort_row(r: Mapping[str, Any], confidence: float | None = None) -> dict[str, Any]:
    """One volume of a ranking (a :class:`VolumeResult` as ``to_dict()`` gives it: the form a
    query result has in the CLI, the UI and the queue) as a flat row (:data:`COHORT_COLUMNS`)."""
    matches: Sequence[Mapping[str, Any]] = r.get("matches") or []
    labels: Mapping[str, str] = r.get("labels") or {}
    dicom: Mapping[str, str] = r.get("dicom") or {}
    return {
        "rank": r["rank"], "volume_id": r["volume_id"], "file": r["volume_id"],
        "source": r.get("source", ""),
        "study_uid": dicom.get("StudyInstanceUID", ""),
        "series_uid": dicom.get("SeriesInstanceUID", ""),
        **{k: labels.get(k, "") for k in LABEL_KEYS},
        "score": round(float(r["score"]), 6), "votes": round(float(r["votes"]), 6),
        "hits": r.get("hits", 0), "similarity": round(float(r["similarity"]), 6),
        "confidence": "" if confidence is None else round(confidence, 6),
        "query_slices": slice_range(int(m["query_slice"]) for m in matches),
        "db_slices": slice_range(int(m["db_slice"]) for m in matches),
    }


def cohort_rows(ranking: Sequence[Mapping[str, Any] | VolumeResult],
                confidence: Mapping[str, float] | float | None = None) -> list[dict[str, Any]]:
    """Rows of a ranking; ``confidence`` is one value for the answer (its first row) or one
    per volume id."""
    rows = []
    for i, item in enumerate(ranking):
        r = item.to_dict() if isinstance(item, VolumeResult) else item
        if isinstance(confidence, Mapping):
            c = confidence.get(str(r["volume_id"]))
        else:
            c = confidence if i == 0 else None
        rows.append(cohort_row(r, c))
    return rows


def cohort_text(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The rows as CSV (``.csv``) or JSON (``.json``) text."""
    if fmt == ".json":
        return json.dumps(list(rows), indent=2) + "\n"
    if fmt != ".csv":
        raise ValueError(f"cohort format {fmt!r}: choose one of {', '.join(COHORT_FORMATS)}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COHORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: spreadsheet_safe(row.get(k, "")) for k in COHORT_COLUMNS})
    return buf.getvalue()


def spreadsheet_safe(value: Any) -> Any:
    """Neutralise spreadsheet formulas in untrusted text (a label or path starting with
    ``=``, ``+``, ``-``, ``@``): OWASP's CSV-injection rule, a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
