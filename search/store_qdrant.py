"""The Qdrant store through ``qdrant-client``: a Qdrant server (``MEDIR_QDRANT_URL``, production
and docker-compose), or qdrant-client's local mode (``:memory:`` or a path), which runs the same
client code path without a server and is used by the tests of that path.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx
import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from medir.config import HnswSettings, StoreSettings
from medir.errors import StoreUnavailable
from search.store import INDEXED_KEYWORDS, Filter, Hit, Record, SlicePoint, SliceStore
from search.store_lock import StoreLock

_VECTOR = "slice"
_TRANSIENT = (ConnectionError, TimeoutError)
F = TypeVar("F", bound=Callable[..., Any])


def classify(exc: BaseException, where: str) -> StoreUnavailable | None:
    """A :class:`StoreUnavailable` (transient: retried with backoff by the queue) for a server
    that is restarting or unreachable; None for an error that a retry would not change."""
    transient = False
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError
                  | TimeoutError):
        transient = True  # connection refused or reset, timeouts: the server is away
    elif isinstance(exc, UnexpectedResponse):
        transient = exc.status_code is not None and (exc.status_code >= 500
                                                     or exc.status_code == 429)
    if not transient:
        return None
    from medir.secrets import mask_secrets

    return StoreUnavailable(mask_secrets(f"Qdrant at {where} is unavailable "
                                         f"({type(exc).__name__}: {exc})".splitlines()[0]))


@contextlib.contextmanager
def _transient_errors(where: str) -> Iterator[None]:
    """Re-raise the transient failures of a store call as :class:`StoreUnavailable`."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        mapped = classify(exc, where)
        if mapped is None:
            raise
        raise mapped from None


def _transient(fn: F) -> F:
    """Raise :class:`StoreUnavailable` for the transient failures of a store call."""

    @functools.wraps(fn)
    def wrapper(self: QdrantStore, *args: Any, **kwargs: Any) -> Any:
        with _transient_errors(self.location):
            return fn(self, *args, **kwargs)

    return cast(F, wrapper)


def _condition(key: str, value: Any) -> models.FieldCondition:
    if isinstance(value, list | tuple):
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(value)))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def to_qdrant_filter(flt: Filter | None) -> models.Filter | None:
    if flt is None or flt.empty:
        return None
    return models.Filter(
        must=[_condition(k, v) for k, v in flt.must.items()] or None,  # type: ignore[arg-type]
        must_not=[_condition(k, v) for k, v in flt.must_not.items()] or None,  # type: ignore[arg-type]
    )


class QdrantStore(SliceStore):
    """:class:`SliceStore` on a Qdrant server (``url``) or qdrant-client local mode (``path``)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        hnsw: HnswSettings | None = None,
        timeout: int = 60,
        storage: StoreSettings | None = None,
        lock_wait_s: float | None = None,
    ) -> None:
        """A server client (``url``), or local mode on the folder ``path`` (locked like the
        embedded store, :mod:`search.store_lock`, before qdrant-client reads it)."""
        self.hnsw = hnsw or HnswSettings()
        self.storage = storage or StoreSettings()
        self._lock: StoreLock | None = None
        loc = path or ":memory:"
        if not url and loc != ":memory:":
            wait = self.storage.lock_wait_s if lock_wait_s is None else lock_wait_s
            self._lock = StoreLock(loc, wait)
            self._lock.acquire()
        try:
            if url:
                self.client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
                self.mode, self.location = "server", url
                self.client.get_collections()  # fail now, clearly, if unreachable
            else:
                self.client = (QdrantClient(location=":memory:") if loc == ":memory:"
                               else QdrantClient(path=loc))
                self.mode, self.location = "local", loc
        except Exception as exc:
            if self._lock is not None:
                self._lock.release()
            where = url or path
            raise StoreUnavailable(f"Qdrant at {where} is not reachable ({exc})") from None

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections
                      if c.name.startswith("medir_"))

    def collection_dim(self, name: str) -> int:
        params = self.client.get_collection(name).config.params.vectors
        if isinstance(params, dict):
            return int(params[_VECTOR].size)
        assert params is not None
        return int(params.size)

    def ensure_collection(self, name: str, dim: int) -> None:
        if self.client.collection_exists(name):
            return
        h, st = self.hnsw, self.storage
        quantization = None
        if st.quantization == "int8":
            quantization = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=st.quantile, always_ram=st.always_ram))
        datatype = models.Datatype.FLOAT16 if st.datatype == "float16" else None
        # Shards and replicas: a Qdrant cluster spreads and copies the collection's points over
        # its nodes (docs/scaling.md); local mode and single nodes ignore them.
        cluster: dict[str, Any] = {}
        if self.mode == "server":
            cluster = {"shard_number": st.shards, "replication_factor": st.replicas}
        self.client.create_collection(
            name,
            vectors_config={_VECTOR: models.VectorParams(
                size=dim, distance=models.Distance.COSINE, on_disk=st.on_disk or None,
                datatype=datatype)},
            hnsw_config=models.HnswConfigDiff(m=h.m, ef_construct=h.ef_construct,
                                              full_scan_threshold=h.full_scan_threshold_kb),
            quantization_config=quantization,
            **cluster,
        )
        for key in INDEXED_KEYWORDS:
            self.client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)

    def drop_collection(self, name: str) -> None:
        self.client.delete_collection(name)

    def upsert(self, name: str, points: Sequence[SlicePoint]) -> None:
        if not points:
            return
        self.client.upsert(name, points=[
            models.PointStruct(id=p.id, vector={_VECTOR: np.asarray(p.vector, np.float32).tolist()},
                               payload=p.payload)
            for p in points
        ], wait=True)

    def delete(self, name: str, flt: Filter) -> None:
        if flt.empty:
            raise ValueError("refusing to delete with an empty filter")
        selector = models.FilterSelector(filter=to_qdrant_filter(flt))
        self.client.delete(name, points_selector=selector, wait=True)

    def set_payload(self, name: str, flt: Filter, payload: Mapping[str, Any]) -> None:
        self.client.set_payload(name, payload=dict(payload),
                                points=to_qdrant_filter(flt) or models.Filter(), wait=True)

    def delete_payload(self, name: str, flt: Filter, keys: Sequence[str]) -> None:
        if keys:
            self.client.delete_payload(name, keys=list(keys),
                                       points=to_qdrant_filter(flt) or models.Filter(), wait=True)

    def ensure_indexes(self, name: str) -> None:
        have = set((self.client.get_collection(name).payload_schema or {}).keys())
        for key in INDEXED_KEYWORDS:
            if key not in have:
                self.client.create_payload_index(name, key, models.PayloadSchemaType.KEYWORD)

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
        qf = to_qdrant_filter(flt)
        quant = None
        if self.storage.quantization != "none" and not exact:
            quant = models.QuantizationSearchParams(rescore=self.storage.rescore,
                                                    oversampling=self.storage.oversampling)
        params = models.SearchParams(hnsw_ef=max(self.hnsw.ef, k), exact=exact,
                                     quantization=quant)
        with_payload: Any = list(payload_keys) if payload_keys is not None else True
        requests = [
            models.QueryRequest(query=v.tolist(), using=_VECTOR, limit=k, filter=qf,
                                params=params, with_payload=with_payload)
            for v in np.asarray(vectors, dtype=np.float32)
        ]
        if not requests:
            return []
        responses = self.client.query_batch_points(name, requests=requests)
        return [[Hit(str(p.id), float(p.score), p.payload or {}) for p in r.points]
                for r in responses]

    def count(self, name: str, flt: Filter | None = None) -> int:
        return int(self.client.count(name, count_filter=to_qdrant_filter(flt), exact=True).count)

    def facet(self, name: str, key: str, flt: Filter | None = None,
              limit: int = 1000) -> dict[Any, int]:
        if self.mode == "local":  # local mode has no facet API: count from a scroll
            counts: dict[Any, int] = {}
            for rec in self.scroll(name, flt):
                value = rec.payload.get(key)
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1
            return counts
        resp = self.client.facet(name, key=key, facet_filter=to_qdrant_filter(flt), limit=limit,
                                 exact=True)
        return {h.value: int(h.count) for h in resp.hits}

    def scroll(
        self, name: str, flt: Filter | None = None, *, with_vectors: bool = False,
        batch: int = 1024,
    ) -> Iterator[Record]:
        return self._scroll_guarded(self._scroll(name, flt, with_vectors=with_vectors,
                                                 batch=batch))

    def _scroll(self, name: str, flt: Filter | None, *, with_vectors: bool,
                batch: int) -> Iterator[Record]:
        offset: Any = None
        qf = to_qdrant_filter(flt)
        while True:
            records, offset = self.client.scroll(name, scroll_filter=qf, limit=batch,
                                                 offset=offset, with_payload=True,
                                                 with_vectors=with_vectors)
            for r in records:
                vec = None
                if with_vectors and r.vector is not None:
                    raw = r.vector[_VECTOR] if isinstance(r.vector, dict) else r.vector
                    vec = np.asarray(raw, dtype=np.float32)
                yield Record(str(r.id), r.payload or {}, vec)
            if offset is None:
                return

    def _scroll_guarded(self, it: Iterator[Record]) -> Iterator[Record]:
        with _transient_errors(self.location):
            yield from it

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
        finally:
            if self._lock is not None:
                self._lock.release()


for _name in ("collections", "collection_dim", "ensure_collection", "drop_collection", "upsert",
              "delete", "set_payload", "search_batch", "count", "facet"):
    setattr(QdrantStore, _name, _transient(getattr(QdrantStore, _name)))
