"""The report of one ingest run: what each volume became, what was left out and why, and
which volumes hold the same content (``medir ingest`` summary line and ``--json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ingest.skipped import Skipped

if TYPE_CHECKING:
    from ingest.pipeline import IngestReport

STATUSES = ("indexed", "skipped", "relabelled", "superseded", "failed")


@dataclass
class IngestSummary:
    reports: list[IngestReport] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # files left out by the walker

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.reports:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def failed(self) -> int:
        return self.counts()["failed"]

    def left_out(self) -> dict[str, list[Skipped]]:
        by: dict[str, list[Skipped]] = {}
        for s in self.skipped:
            by.setdefault(s.kind, []).append(s)
        return dict(sorted(by.items()))

    def duplicates(self) -> list[list[str]]:
        """Groups of volume ids holding the same content (each kept as its own volume)."""
        groups: list[set[str]] = []
        for r in self.reports:
            if not r.duplicate_of:
                continue
            ids = {r.volume_id, *r.duplicate_of}
            merged = [g for g in groups if g & ids]
            for g in merged:
                ids |= g
                groups.remove(g)
            groups.append(ids)
        return sorted(sorted(g) for g in groups)

    def line(self) -> str:
        c = self.counts()
        parts = [f"{c['indexed']} indexed", f"{c['skipped']} unchanged",
                 f"{c['relabelled']} relabelled", f"{c['failed']} failed"]
        if c["superseded"]:
            parts.append(f"{c['superseded']} superseded by a concurrent write")
        left = {k: len(v) for k, v in self.left_out().items()}
        if left:
            parts.append("left out: " + ", ".join(f"{n} {k}" for k, n in left.items()))
        dups = self.duplicates()
        if dups:
            parts.append(f"{len(dups)} group(s) of duplicates: "
                         + "; ".join(" = ".join(g) for g in dups))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "left_out": {k: len(v) for k, v in self.left_out().items()},
            "duplicates": self.duplicates(),
            "volumes": [r.to_dict() for r in self.reports],
            "skipped": [asdict(s) for s in self.skipped],
        }
