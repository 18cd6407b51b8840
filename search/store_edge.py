"""The embedded store: Qdrant Edge (``qdrant-edge-py``), Qdrant's in-process engine.

Real segments, WAL, HNSW and payload indexes in a local directory, no server. One directory per
collection under the store path, each an ``EdgeShard`` plus a small ``medir.json`` with the
vector size. Only one process may open a store directory at a time (in queue mode the worker
owns it and serves both ingest and search): the constructor takes the store's process lock
(:mod:`search.store_lock`) before any shard is loaded, and :meth:`EdgeStore.close` releases it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from medir.config import HnswSettings, StoreSettings
from medir.errors import StoreUnavailable
from search.disk import check_free, disk_full_error, is_disk_full
from search.store import INDEXED_KEYWORDS, Filter, Hit, Record, SlicePoint, SliceStore
from search.store_lock import StoreLock

_META = "medir.json"
_VECTOR = "slice"


def _condition(key: str, value: Any) -> Any:
    if isinstance(value, list | tuple):
        return qe.FieldCondition(key=key, match=qe.MatchAny(any=list(value)))
    return qe.FieldCondition(key=key, match=qe.MatchValue(value=value))


def _allocated(root: Path) -> int:
    """Bytes of disk the files under ``root`` occupy."""
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def to_edge_filter(flt: Filter | None) -> qe.Filter | None:
    if flt is None or flt.empty:
        return None
    must = [_condition(k, v) for k, v in flt.must.items()] or None
    must_not = [_condition(k, v) for k, v in flt.must_not.items()] or None
    return qe.Filter(must=must, must_not=must_not)


class EdgeStore(SliceStore):
    """:class:`SliceStore` on Qdrant Edge shards in ``path``."""

    mode = "embedded"

    def __init__(self, path: str | Path, hnsw: HnswSettings | None = None,
                 storage: StoreSettings | None = None, lock_wait_s: float | None = None) -> None:
        """Open (lock) the store folder ``path``; ``lock_wait_s`` (default: the storage
        settings') bounds the wait for another process holding it."""
        self.path = Path(path)
        self.location = str(self.path)
        self.hnsw = hnsw or HnswSettings()
        self.storage = storage or StoreSettings()
        wait = self.storage.lock_wait_s if lock_wait_s is None else lock_wait_s
        self._lock = StoreLock(self.path, wait)
        self._lock.acquire()  # before anything reads or writes the store's files
        self._shards: dict[str, qe.EdgeShard] = {}

    def _locked(self) -> None:
        """Take the lock again for a store used after :meth:`close` (it reopens lazily)."""
        if not self._lock.held:
            self._lock.acquire()

    # ---- collections ------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self.path / name

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if (p / _META).is_file())

    def collection_dim(self, name: str) -> int:
        return int(json.loads((self._dir(name) / _META).read_text())["dim"])

    def _config(self, dim: int) -> qe.EdgeConfig:
        h, st = self.hnsw, self.storage
        quantization = None
        if st.quantization == "int8":
            quantization = qe.ScalarQuantizationConfig(
                type=qe.ScalarType.Int8, quantile=st.quantile, always_ram=st.always_ram)
        datatype = (qe.VectorStorageDatatype.Float16 if st.datatype == "float16"
                    else qe.VectorStorageDatatype.Float32)
        return qe.EdgeConfig(
            vectors={_VECTOR: qe.EdgeVectorParams(
                size=dim, distance=qe.Distance.Cosine, on_disk=st.on_disk, datatype=datatype,
                quantization_config=quantization)},
            hnsw_config=qe.HnswIndexConfig(
                m=h.m, ef_construct=h.ef_construct, full_scan_threshold=h.full_scan_threshold_kb
            ),
        )

    def _shard(self, name: str) -> qe.EdgeShard:
        shard = self._shards.get(name)
        if shard is None:
            self._locked()
            d = self._dir(name)
            if not (d / _META).is_file():
                raise KeyError(name)
            try:
                shard = qe.EdgeShard.load(str(d / "shard"))
            except Exception as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise StoreUnavailable(
                    f"{d}: cannot open the embedded store ({first}); is a process other "
                    "than medir (or an older medir) using it?"
                ) from None
            self._shards[name] = shard
        return shard

    def check_space(self) -> None:
        """Refuse (DiskFull) to write when the disk cannot hold what the store's memory-mapped
        files may still claim plus ``MEDIR_STORE__MIN_FREE_MB`` (:mod:`search.disk`)."""
        check_free(self.path, self.storage.min_free_mb)

    def ensure_collection(self, name: str, dim: int) -> None:
        d = self._dir(name)
        if (d / _META).is_file():
            return
        self._locked()
        self.check_space()
        d.mkdir(parents=True, exist_ok=True)
        try:
            shard = qe.EdgeShard.create(str(d / "shard"), self._config(dim))
        except Exception as exc:
            shutil.rmtree(d, ignore_errors=True)  # never marked: nothing to keep
            if is_disk_full(exc):
                raise disk_full_error(d, exc) from None
            raise StoreUnavailable(f"{d}: cannot create the embedded store ({exc})") from None
        try:
            self.check_space()  # the new shard's sparse files are now counted
            for key in INDEXED_KEYWORDS:
                shard.update(qe.UpdateOperation.create_field_index(key,
                                                                   qe.PayloadSchemaType.Keyword))
            shard.flush()
            tmp = d / (_META + ".tmp")
            tmp.write_text(json.dumps({"dim": dim, "vector": _VECTOR, "engine": "qdrant-edge",
                                       "storage": self.storage.model_dump(
                                           exclude={"lock_wait_s"})}))
        except Exception as exc:  # a half-made collection is removed, not left unmarked
            try:
                shard.close()
            except Exception:
                pass
            shutil.rmtree(d, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full_error(d, exc) from None
            raise
        self._shards[name] = shard
        tmp.replace(d / _META)  # the marker makes the collection visible, last

    def drop_collection(self, name: str) -> None:
        self._locked()
        shard = self._shards.pop(name, None)
        if shard is not None:
            shard.close()
        shutil.rmtree(self._dir(name), ignore_errors=True)

    # ---- writes -----------------------------------------------------------------------------
    def upsert(self, name: str, points: Sequence[SlicePoint]) -> None:
        if not points:
            return
        shard = self._shard(name)
        self.check_space()  # a full disk under a memory map is a SIGBUS, not an error
        try:
            shard.update(qe.UpdateOperation.upsert_points([
                qe.Point(id=p.id, vector={_VECTOR: np.asarray(p.vector, np.float32).tolist()},
                         payload=p.payload)
                for p in points
            ]))
        except Exception as exc:
            if is_disk_full(exc):
                raise disk_full_error(self._dir(name), exc) from None
            raise

    def delete(self, name: str, flt: Filter) -> None:
        if flt.empty:
            raise ValueError("refusing to delete with an empty filter")
        edge_filter = to_edge_filter(flt)
        assert edge_filter is not None
        self._shard(name).update(qe.UpdateOperation.delete_points_by_filter(edge_filter))

    def set_payload(self, name: str, flt: Filter, payload: Mapping[str, Any]) -> None:
        edge_filter = to_edge_filter(flt) or qe.Filter()
        self._shard(name).update(
            qe.UpdateOperation.set_payload_by_filter(edge_filter, dict(payload))
        )

    def delete_payload(self, name: str, flt: Filter, keys: Sequence[str]) -> None:
        if not keys:
            return
        edge_filter = to_edge_filter(flt) or qe.Filter()
        self._shard(name).update(
            qe.UpdateOperation.delete_payload_by_filter(edge_filter, list(keys))
        )

    def ensure_indexes(self, name: str) -> None:
        shard = self._shard(name)
        self.check_space()
        for key in INDEXED_KEYWORDS:  # creating an existing index again is a no-op
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))

    def flush(self) -> None:
        for shard in self._shards.values():
            shard.flush()

    def optimize(self, name: str) -> None:
        """Build the HNSW index now (otherwise the engine does it when it decides); the new
        segments may need as much disk as the collection holds."""
        check_free(self.path, self.storage.min_free_mb, extra=_allocated(self._dir(name)))
        self._shard(name).optimize()

    # ---- reads ------------------------------------------------------------------------------
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
        shard = self._shard(name)
        quant = None
        if self.storage.quantization != "none" and not exact:
            quant = qe.QuantizationSearchParams(rescore=self.storage.rescore,
                                                oversampling=self.storage.oversampling)
        ef = qe.SearchParams(hnsw_ef=max(self.hnsw.ef, k), exact=exact, quantization=quant)
        with_payload: Any = list(payload_keys) if payload_keys is not None else True
        edge_filter = to_edge_filter(flt)
        requests = [
            qe.QueryRequest(limit=k, query=qe.Query.Nearest(v.tolist(), using=_VECTOR),
                            filter=edge_filter, with_payload=with_payload, params=ef)
            for v in np.asarray(vectors, dtype=np.float32)
        ]
        if not requests:
            return []
        results = shard.query_batch(qe.QueryBatchRequest(requests))
        return [[Hit(str(p.id), float(p.score), p.payload or {}) for p in row]
                for row in results]

    def count(self, name: str, flt: Filter | None = None) -> int:
        return int(self._shard(name).count(qe.CountRequest(exact=True,
                                                           filter=to_edge_filter(flt))))

    def facet(self, name: str, key: str, flt: Filter | None = None,
              limit: int = 1000) -> dict[Any, int]:
        resp = self._shard(name).facet(
            qe.FacetRequest(key=key, limit=limit, exact=True, filter=to_edge_filter(flt))
        )
        return {h.value: int(h.count) for h in resp.hits}

    def scroll(
        self, name: str, flt: Filter | None = None, *, with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[Record]:
        shard = self._shard(name)
        offset: Any = None
        edge_filter = to_edge_filter(flt)
        while True:
            records, offset = shard.scroll(qe.ScrollRequest(
                offset=offset, limit=batch, filter=edge_filter, with_payload=True,
                with_vector=with_vectors,
            ))
            for r in records:
                vec = None
                if with_vectors and r.vector is not None:
                    raw = r.vector[_VECTOR] if isinstance(r.vector, dict) else r.vector
                    vec = np.asarray(raw, dtype=np.float32)
                yield Record(str(r.id), r.payload or {}, vec)
            if offset is None or not records:
                return

    def close(self) -> None:
        """Flush and close every shard, then let the next process in."""
        try:
            for shard in self._shards.values():
                try:
                    shard.flush()
                    shard.close()
                except Exception:  # closing twice or after a failed op must not mask errors
                    pass
            self._shards.clear()
        finally:
            self._lock.release()
