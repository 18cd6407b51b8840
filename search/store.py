"""The store interface shared by the embedded engine and the Qdrant server.

One collection per embedder (``medir_<model>``): models have different dimensions, each gets
its own HNSW graph tuned to it, several models live side by side without touching each other,
and dropping or re-indexing one model is dropping one collection. Named vectors would force
every point to carry every model's vector and re-upsert all points when a model is added.

A volume becomes searchable only once complete: its points are upserted with ``state="pending"``
and switched to ``state="ready"`` in one filtered payload update after the last batch; searches
always filter on ``state="ready"``. Every write of a volume is one *generation* (``gen``, a
sortable keyword): point ids are uuid5 of the volume id, content id, slice index, embedder id and
generation, so a retried upsert of one write overwrites instead of duplicating, two volume ids
never share a point, and a new version never overwrites the live one. A query keeps, per volume
id, only the hits of the highest ready generation (docs/collections.md).
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medir.ids import with_index

POINT_NAMESPACE = uuid.UUID("6f1d3c1e-8a51-5f0b-9d43-6d6564697221")
LABEL_KEYS = ("modality", "region", "organ", "dataset", "split")
INDEXED_KEYWORDS = ("volume_id", "case_id", "content_id", "embedder", "state", "gen", "layout",
                    "domain", *LABEL_KEYS)
# Display metadata of DICOM sources (never used for ranking; see META_KEYS in
# ingest/dicom_grouping.py).
DICOM_META_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined")
HIT_PAYLOAD_KEYS = ["volume_id", "case_id", "slice", "z_mm", "n_slices", "source", "gen",
                    *LABEL_KEYS, *DICOM_META_KEYS]
# Every point written by this release carries ``layout=LAYOUT``; a collection with points
# without it was written by an older release (file-stem ids, no generations): ``medir migrate``.
LAYOUT = "2"

Scalar = str | int | bool
Condition = Scalar | Sequence[Scalar]


def collection_name(model: str) -> str:
    """The collection holding one model's slice vectors."""
    return "medir_" + re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_").lower()


def point_id(volume_id: str, content: str, slice_index: int, embedder_id: str,
             gen: str = "") -> str:
    """Deterministic id of one slice point of one write (generation) of one volume.

    ``content`` is the :func:`content_id` (file hash, plus the 4D index).
    """
    key = f"{volume_id}\0{content}\0{slice_index}\0{embedder_id}\0{gen}"
    return str(uuid.uuid5(POINT_NAMESPACE, key))


def new_generation() -> str:
    """A fresh write generation: sortable (nanosecond clock, zero-padded), unique (random tail).

    Two writers of one volume compare generations; the highest one is kept.
    """
    return f"{time.time_ns():020d}-{secrets.token_hex(4)}"


def content_id(sha256: str, index_4d: int | None) -> str:
    """Identifies a volume by content: the file hash plus the index in a 4D file."""
    return with_index(sha256, index_4d)


@dataclass(frozen=True)
class Filter:
    """Equality conditions: ``must`` all match, ``must_not`` none. A list value means any-of."""

    must: Mapping[str, Condition] = field(default_factory=dict)
    must_not: Mapping[str, Condition] = field(default_factory=dict)

    def and_(self, other: Filter) -> Filter:
        return Filter({**self.must, **other.must}, {**self.must_not, **other.must_not})

    @property
    def empty(self) -> bool:
        return not self.must and not self.must_not


# The completeness marker is a keyword, not a bool: keyword matching behaves the same in every
# engine (Qdrant Edge 0.9 does not match a Python ``True`` against a bool index).
PENDING, COMPLETE = "pending", "ready"
READY = Filter({"state": COMPLETE})


@dataclass
class SlicePoint:
    id: str
    vector: np.ndarray
    payload: dict[str, Any]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Record:
    id: str
    payload: Mapping[str, Any]
    vector: np.ndarray | None = None


class SliceStore(ABC):
    """What medir needs from a vector store; implemented by the embedded engine and Qdrant."""

    mode: str = "abstract"  # "embedded" | "server" | "local"
    location: str = ""

    @abstractmethod
    def collections(self) -> list[str]: ...

    def has_collection(self, name: str) -> bool:
        return name in self.collections()

    @abstractmethod
    def ensure_collection(self, name: str, dim: int) -> None:
        """Create the collection (cosine, HNSW from settings, payload indexes) if missing."""

    @abstractmethod
    def collection_dim(self, name: str) -> int: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def upsert(self, name: str, points: Sequence[SlicePoint]) -> None: ...

    @abstractmethod
    def delete(self, name: str, flt: Filter) -> None:
        """Delete every point matching ``flt`` (must not be empty)."""

    @abstractmethod
    def set_payload(self, name: str, flt: Filter, payload: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def delete_payload(self, name: str, flt: Filter, keys: Sequence[str]) -> None:
        """Remove payload ``keys`` from every point matching ``flt``."""

    @abstractmethod
    def ensure_indexes(self, name: str) -> None:
        """Create any missing keyword index of :data:`INDEXED_KEYWORDS` (migration)."""

    @abstractmethod
    def search_batch(
        self,
        name: str,
        vectors: np.ndarray,
        k: int,
        flt: Filter | None = None,
        *,
        exact: bool = False,
        payload_keys: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """One batched k-NN request: the ``k`` nearest points of each row of ``vectors``."""

    @abstractmethod
    def count(self, name: str, flt: Filter | None = None) -> int: ...

    @abstractmethod
    def facet(self, name: str, key: str, flt: Filter | None = None,
              limit: int = 1000) -> dict[Any, int]:
        """Number of points per value of a payload key."""

    @abstractmethod
    def scroll(
        self, name: str, flt: Filter | None = None, *, with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[Record]: ...

    def check_space(self) -> None:  # noqa: B027 - optional hook
        """Raise :class:`~medir.errors.DiskFull` when a write could fill the disk (the
        embedded store checks its folder; a server manages its own disk)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Persist pending writes (embedded engines)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    def __enter__(self) -> SliceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
