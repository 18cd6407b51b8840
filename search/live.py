"""What queries see of a volume in the store: its live version (the highest ready generation).

The write protocol that makes these generations is :mod:`ingest.versions` (docs/collections.md);
this is its read side, shared by ingest (what a re-ingest replaces) and search (which vectors a
query compares), so search never imports ingest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

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


@dataclass(frozen=True)
class LiveVectors:
    """A volume's live version as stored vectors, in slice order: what a query by id, a
    relevance mark and the duplicate audit read back instead of embedding again."""

    payload: Mapping[str, Any]  # the first slice's payload (labels, source, spacing, domain)
    vectors: NDArray[np.float32]  # (rows, dim)
    slices: NDArray[np.int64]  # the slice index of each row
    z_mm: NDArray[np.float64]  # its position along z (the slice index where none is stored)

    @property
    def n_slices(self) -> int:
        return int(self.payload.get("n_slices") or int(self.slices[-1]) + 1)

    @property
    def z_spacing(self) -> float:
        return float((self.payload.get("spacing") or (1.0, 1.0, 1.0))[2])


def live_vectors(store: SliceStore, coll: str, volume_id: str, embedder: str | None = None
                 ) -> LiveVectors | None:
    """The stored vectors of ``volume_id``'s live version (points of vector space
    ``embedder`` only, when given), in one filtered scroll; None when it is not indexed."""
    must: dict[str, Any] = {"volume_id": volume_id, "state": COMPLETE}
    if embedder:
        must["embedder"] = embedder
    records = sorted((r for r in live_records(list(store.scroll(coll, Filter(must),
                                                                with_vectors=True)))
                      if r.vector is not None), key=lambda r: int(r.payload.get("slice", 0)))
    if not records:
        return None
    z = [r.payload.get("z_mm") for r in records]
    slices = np.asarray([int(r.payload.get("slice", 0)) for r in records], np.int64)
    return LiveVectors(records[0].payload,
                       np.stack([np.asarray(r.vector, np.float32) for r in records]), slices,
                       np.asarray([float(v) if v is not None else float(s)
                                   for v, s in zip(z, slices, strict=True)], np.float64))


def check_layout(store: SliceStore, coll: str) -> None:
    """Refuse a collection written by a release before volume identities (one clear line)."""
    if store.count(coll, Filter(must_not={"layout": LAYOUT})) > 0:
        raise MedirError(f"collection {coll} at {store.location} was written by an older medir "
                         "(file-name volume ids); run `medir migrate` once to upgrade it")
