"""k-NN indexes behind one interface: FAISS exact / LSH / HNSW, and medir's Qdrant stores.

Every index answers the same call: :meth:`VectorIndex.search` of a batch of unit query vectors
returns, per query, the ``k`` nearest database rows (ids are insertion positions 0..n-1) with
their cosine similarity (= inner product of unit vectors), best first, padded with id −1.
FAISS LSH ranks by Hamming distance between binary codes; its reported scores are the true
cosines of the rows it returned (so scores are comparable between engines), in LSH's order.

Specs are short strings, so a grid lives in a config file (benchmarks/configs/):

- ``flat``: ``faiss.IndexFlatIP``, exact;
- ``lsh[:nbits=N]``: ``faiss.IndexLSH`` with a random rotation, N bits (default 2·dim);
- ``hnsw[:M=32,efC=128,efS=128]``: ``faiss.IndexHNSWFlat`` on inner product;
- ``qdrant[:m=16,efc=128,ef=128,exact]``: the production embedded store
  (:class:`search.store_edge.EdgeStore`, Qdrant Edge) in a temporary directory;
- ``qdrant-local[:exact]``: qdrant-client's local mode (:class:`search.store_qdrant.QdrantStore`,
  brute force, slow upserts: tests and small sets only).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from medir.config import HnswSettings, StoreSettings
from medir.errors import ConfigError
from search.store import SlicePoint, SliceStore, collection_name

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
_NS = uuid.UUID("0b6c1f0e-5d0e-4b8e-9a57-62656e636821")


@dataclass
class Neighbours:
    """The k nearest rows of each query: ``scores`` (nq, k) cosine similarities and ``ids``
    (nq, k) row positions, −1 = none."""

    scores: F32
    ids: I64


def as_unit(x: np.ndarray) -> F32:
    """Contiguous float32 rows scaled to unit length (zero rows stay zero)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D array of vectors, got shape {a.shape}")
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return np.ascontiguousarray(a / np.where(n > 0, n, 1.0), dtype=np.float32)


class VectorIndex(ABC):
    """A k-NN index over unit vectors by cosine similarity; rows are ids 0..n-1."""

    kind: str = "abstract"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ntotal = 0
        self.build_seconds = 0.0

    @property
    @abstractmethod
    def spec(self) -> str:
        """The spec string that rebuilds this index (its name in reports)."""

    def build(self, vectors: np.ndarray) -> VectorIndex:
        """Index ``vectors`` (once; rows become ids 0..n-1); records the build time."""
        x = as_unit(vectors)
        if x.shape[1] != self.dim:
            raise ValueError(f"index is {self.dim}-d, vectors are {x.shape[1]}-d")
        if self.ntotal:
            raise RuntimeError("index already built")
        t0 = time.perf_counter()
        self._build(x)
        self.build_seconds = time.perf_counter() - t0
        self.ntotal = int(x.shape[0])
        return self

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        """The ``k`` nearest rows of each query, best first."""
        q = as_unit(queries)
        if q.shape[0] == 0 or k <= 0:
            return Neighbours(np.zeros((q.shape[0], max(k, 0)), np.float32),
                                np.full((q.shape[0], max(k, 0)), -1, np.int64))
        return self._search(q, k)

    def set_ef(self, ef: int) -> None:  # noqa: B027 - only graph indexes have one
        """Query-time beam width (HNSW ``efSearch`` / Qdrant ``hnsw_ef``); others ignore it."""

    def stored_bytes(self) -> int | None:
        """Bytes the index occupies serialised, when the engine can tell."""
        return None

    def close(self) -> None:  # noqa: B027 - optional
        """Release memory and temporary files."""

    @abstractmethod
    def _build(self, x: F32) -> None: ...

    @abstractmethod
    def _search(self, q: F32, k: int) -> Neighbours: ...


class _FaissIndex(VectorIndex):
    _index: Any = None

    def _search(self, q: F32, k: int) -> Neighbours:
        d, i = self._index.search(q, k)
        return Neighbours(np.asarray(d, np.float32), np.asarray(i, np.int64))

    def stored_bytes(self) -> int | None:
        import faiss

        if self._index is None:
            return None
        return int(faiss.serialize_index(self._index).size)

    def close(self) -> None:
        self._index = None


class FlatIndex(_FaissIndex):
    """Exact inner-product search (``IndexFlatIP``): the ground truth."""

    kind = "flat"

    @property
    def spec(self) -> str:
        return "flat"

    def _build(self, x: F32) -> None:
        import faiss

        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(x)


class LSHIndex(_FaissIndex):
    """``IndexLSH``: sign bits of a random rotation, searched by Hamming distance (the paper's
    "LSH"). Scores returned are the true cosines of the returned rows."""

    kind = "lsh"

    def __init__(self, dim: int, nbits: int | None = None) -> None:
        super().__init__(dim)
        self.nbits = int(nbits or 2 * dim)
        self._x: F32 | None = None

    @property
    def spec(self) -> str:
        return f"lsh:nbits={self.nbits}"

    def _build(self, x: F32) -> None:
        import faiss

        self._index = faiss.IndexLSH(self.dim, self.nbits, True, False)
        if not self._index.is_trained:
            self._index.train(x)
        self._index.add(x)
        self._x = x

    def _search(self, q: F32, k: int) -> Neighbours:
        assert self._x is not None
        _, ids = self._index.search(q, k)
        ids = np.asarray(ids, np.int64)
        safe = np.where(ids >= 0, ids, 0)
        scores = np.einsum("qd,qkd->qk", q, self._x[safe]).astype(np.float32)
        scores[ids < 0] = -np.inf
        return Neighbours(scores, ids)

    def close(self) -> None:
        super().close()
        self._x = None


class HNSWIndex(_FaissIndex):
    """``IndexHNSWFlat`` on inner product: M links per node, efConstruction, efSearch."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int = 32, ef_construction: int = 128,
                 ef_search: int = 128) -> None:
        super().__init__(dim)
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)

    @property
    def spec(self) -> str:
        return f"hnsw:M={self.m},efC={self.ef_construction},efS={self.ef_search}"

    def _build(self, x: F32) -> None:
        import faiss

        self._index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = self.ef_construction
        self._index.hnsw.efSearch = self.ef_search
        self._index.add(x)

    def set_ef(self, ef: int) -> None:
        self.ef_search = int(ef)
        if self._index is not None:
            self._index.hnsw.efSearch = self.ef_search


class StoreIndex(VectorIndex):
    """Adapter: a medir :class:`SliceStore` as a :class:`VectorIndex` (row id in the payload).

    ``engine="edge"`` is the production embedded store (Qdrant Edge, HNSW built by
    ``optimize()`` after the upserts); ``engine="local"`` is qdrant-client's local mode.
    ``exact=True`` asks the store for a full scan.
    """

    def __init__(self, dim: int, engine: str = "edge", hnsw: HnswSettings | None = None,
                 exact: bool = False, upsert_batch: int = 2048,
                 storage: StoreSettings | None = None) -> None:
        super().__init__(dim)
        self.storage = storage or StoreSettings()
        if engine not in ("edge", "local"):
            raise ConfigError(f"unknown store engine {engine!r}; use edge or local")
        self.engine = engine
        self.hnsw = hnsw or HnswSettings()
        self.exact = exact
        self.upsert_batch = upsert_batch
        self.kind = "qdrant" if engine == "edge" else "qdrant-local"
        self._tmp: str | None = None
        self._store: SliceStore | None = None
        self._name = collection_name("bench")

    @property
    def spec(self) -> str:
        if self.engine == "local":
            return "qdrant-local" + (":exact" if self.exact else "")
        h = self.hnsw
        tail = ",exact" if self.exact else ""
        st = self.storage
        if st.quantization != "none":
            tail += f",q={st.quantization},os={st.oversampling:g}"
        if st.datatype != "float32":
            tail += f",dt={st.datatype}"
        return f"qdrant:m={h.m},efc={h.ef_construct},ef={h.ef}{tail}"

    def _open(self) -> SliceStore:
        if self.engine == "edge":
            from search.store_edge import EdgeStore

            self._tmp = tempfile.mkdtemp(prefix="medir-bench-edge-")
            return EdgeStore(self._tmp, hnsw=self.hnsw, storage=self.storage)
        from search.store_qdrant import QdrantStore

        return QdrantStore(path=":memory:", hnsw=self.hnsw, storage=self.storage)

    def _build(self, x: F32) -> None:
        store = self._store = self._open()
        store.ensure_collection(self._name, self.dim)
        for start in range(0, x.shape[0], self.upsert_batch):
            stop = min(x.shape[0], start + self.upsert_batch)
            store.upsert(self._name, [
                SlicePoint(str(uuid.uuid5(_NS, str(i))), x[i], {"row": i})
                for i in range(start, stop)
            ])
        store.flush()
        optimize = getattr(store, "optimize", None)
        if callable(optimize):
            optimize(self._name)

    def set_ef(self, ef: int) -> None:
        self.hnsw = self.hnsw.model_copy(update={"ef": int(ef)})
        if self._store is not None and hasattr(self._store, "hnsw"):
            self._store.hnsw = self.hnsw

    def _search(self, q: F32, k: int) -> Neighbours:
        assert self._store is not None, "build() first"
        rows = self._store.search_batch(self._name, q, k, exact=self.exact, payload_keys=["row"])
        ids = np.full((q.shape[0], k), -1, np.int64)
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        for i, hits in enumerate(rows):
            for j, h in enumerate(hits[:k]):
                ids[i, j] = int(h.payload["row"])
                scores[i, j] = h.score
        return Neighbours(scores, ids)

    def stored_bytes(self) -> int | None:
        if self._tmp is None:
            return None
        from pathlib import Path

        # Blocks actually allocated: the engine pre-allocates sparse WAL and mmap files.
        return sum(p.stat().st_blocks * 512 for p in Path(self._tmp).rglob("*") if p.is_file())

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


INDEX_KINDS = ("flat", "lsh", "hnsw", "qdrant", "qdrant-local")


def _params(spec: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        out[key.strip().lower()] = val.strip() if sep else "true"
    return out


def _storage(p: dict[str, str]) -> StoreSettings:
    return StoreSettings(
        quantization=p.get("q", "none"),  # type: ignore[arg-type]
        oversampling=float(p.get("os", 2.0)),
        datatype=p.get("dt", "float32"),  # type: ignore[arg-type]
    )


def parse_storage(text: str) -> StoreSettings:
    """``q=int8,os=2,dt=float16`` (the store part of a ``qdrant:`` spec) → store settings;
    :class:`ConfigError` on a bad one."""
    try:
        p = _params(text, text)
        _only(text, p, {"q", "os", "dt"})
        return _storage(p)
    except (ValueError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        why = str(exc).splitlines()[0]
        if isinstance(exc, ValidationError):
            e = exc.errors()[0]
            why = f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
        raise ConfigError(f"bad storage {text!r} ({why}); use e.g. q=int8,os=2,dt=float16"
                          ) from None


def make_index(spec: str, dim: int) -> VectorIndex:
    """An (empty) index from a spec string; :class:`ConfigError` on a bad spec."""
    kind, _, rest = spec.strip().partition(":")
    kind = kind.lower()
    try:
        p = _params(spec, rest)
        if kind in ("flat", "exact"):
            return FlatIndex(dim)
        if kind == "lsh":
            _only(spec, p, {"nbits"})
            return LSHIndex(dim, int(p["nbits"]) if "nbits" in p else None)
        if kind == "hnsw":
            _only(spec, p, {"m", "efc", "efs"})
            return HNSWIndex(dim, int(p.get("m", 32)), int(p.get("efc", 128)),
                             int(p.get("efs", 128)))
        if kind in ("qdrant", "qdrant-edge"):
            _only(spec, p, {"m", "efc", "ef", "exact", "q", "os", "dt"})
            base = HnswSettings()
            storage = _storage(p)
            hnsw = HnswSettings(m=int(p.get("m", base.m)),
                                ef_construct=int(p.get("efc", base.ef_construct)),
                                ef=int(p.get("ef", base.ef)),
                                full_scan_threshold_kb=base.full_scan_threshold_kb)
            return StoreIndex(dim, "edge", hnsw, exact="exact" in p, storage=storage)
        if kind == "qdrant-local":
            _only(spec, p, {"exact"})
            return StoreIndex(dim, "local", exact="exact" in p)
    except (ValueError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad index spec {spec!r}: {exc}") from None
    raise ConfigError(f"unknown index {spec!r}; use one of {', '.join(INDEX_KINDS)} "
                      "(e.g. hnsw:M=32,efC=128,efS=128 or lsh:nbits=768)")


def _only(spec: str, params: dict[str, str], allowed: set[str]) -> None:
    bad = sorted(set(params) - allowed)
    if bad:
        raise ConfigError(f"bad index spec {spec!r}: unknown parameter(s) {', '.join(bad)} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def exact_search(db: np.ndarray, queries: np.ndarray, k: int) -> Neighbours:
    """Brute-force cosine k-NN in numpy (the reference of the congruence tests)."""
    x, q = as_unit(db), as_unit(queries)
    sims = q @ x.T
    k_eff = min(k, x.shape[0])
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k_eff].astype(np.int64)
    scores = np.take_along_axis(sims, ids, axis=1).astype(np.float32)
    if k_eff < k:
        pad = k - k_eff
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Neighbours(scores, ids)


def tie_aware_recall(found: I64, queries: np.ndarray, db: np.ndarray, truth_scores: F32,
                     k: int, eps: float = 1e-5) -> float:
    """Recall@k counting a returned row as correct when its true cosine reaches the k-th true
    score (less ``eps``): duplicate vectors (blank slices) make id-based recall undercount."""
    q, x = as_unit(queries), as_unit(db)
    ids = found[:, :k]
    sims = np.einsum("qd,qkd->qk", q, x[np.where(ids >= 0, ids, 0)])
    ok = (sims >= truth_scores[:, k - 1:k] - eps) & (ids >= 0)
    return float(np.minimum(ok.sum(axis=1), k).sum() / (k * ids.shape[0])) if ids.size else 1.0


def recall_at_k(found: I64, truth: I64, k: int | None = None) -> float:
    """Mean fraction of the true k nearest rows that were found (ids, order ignored)."""
    k = k or truth.shape[1]
    hits = 0
    total = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        ts = {int(v) for v in t if v >= 0}
        hits += len(ts & {int(v) for v in f if v >= 0})
        total += len(ts)
    return hits / total if total else 1.0
