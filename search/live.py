"""What queries see of a volume in the store: its live version (the highest ready generation).

The write protocol that makes these generations is :mod:`ingest.versions` (docs/collections.md);
this is its read side, shared by ingest (what a re-ingest replaces) and search (which vectors a
query compares), so search never imports ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medir.errors import MedirError
from search.store import COMPLETE, LAYOUT, Filter, Record, SliceStore


@dataclass(frozen=True)
class LiveVersion:
    """The ready version of a volume that queries see: its highest ready generation."""

    gen: str
    count: int
    payload: Mapping[str, Any]

    @property
    def complete(self) -> bool:
        return self.count == int(self.payload.get("n_slices", -1))


def live_version(store: SliceStore, coll: str, volume_id: str) -> LiveVersion | None:
    """The highest ready generation of ``volume_id``, or None when it has none."""
    ready = Filter({"volume_id": volume_id, "state": COMPLETE})
    gens = [str(g) for g in store.facet(coll, "gen", ready)]
    if not gens:
        return None
    gen = max(gens)
    mine = ready.and_(Filter({"gen": gen}))
    # one record (slice 0) for the payload: a scroll of the whole version would cost a
    # request per batch (and the worker's locked store drains scrolls whole)
    first = next(iter(store.scroll(coll, mine.and_(Filter({"slice": 0})), batch=1)), None)
    count = store.count(coll, mine)
    if count == 0:  # retired between the calls
        return None
    return LiveVersion(gen, count, first.payload if first is not None else {})


def live_records(records: list[Record]) -> list[Record]:
    """The records of the highest generation among ``records`` (one volume's ready points)."""
    if not records:
        return []
    gen = max(str(r.payload.get("gen", "")) for r in records)
    return [r for r in records if str(r.payload.get("gen", "")) == gen]


def check_layout(store: SliceStore, coll: str) -> None:
    """Refuse a collection written by a release before volume identities (one clear line)."""
    if store.count(coll, Filter(must_not={"layout": LAYOUT})) > 0:
        raise MedirError(f"collection {coll} at {store.location} was written by an older medir "
                         "(file-name volume ids); run `medir migrate` once to upgrade it")
