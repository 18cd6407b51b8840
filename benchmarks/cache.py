"""The embedding cache: every axial slice of every volume, embedded once per model.

Layout under ``<root>/<model>/``::

    vectors/<key>.npz    vectors (Z, dim) float32 unit rows, z_mm (Z,) float64
    vectors/<key>.json   the entry: volume id, 4D index, slices, spacing, file identity, timing
    manifest.json        all entries, for people and tools (rewritten now and then, atomically)

``key`` is derived from the file's sha256, the 4D index, the embedder id and the intensity
mode, so a cache is shared by every dataset holding the same file and a changed file or model
version is embedded again. Each ``.npz`` is written to a temporary name and renamed, then its
``.json`` (the completeness marker) likewise: a killed run leaves whole entries only, and the
next run resumes after the last complete volume. Files are recognised without re-hashing by
(path, size, mtime) when nothing changed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from ingest.pipeline import embed_volume
from ingest.preprocess import resolve_intensity
from ingest.reader import open_volume
from medir.errors import MedirError
from medir.files import atomic_path
from search.query import ModelId


class SliceEmbedder(ModelId, Protocol):
    """What the cache needs from an embedder (an :class:`ingest.embedders.Embedder` or a test
    double): a query's :class:`search.query.ModelId` (name, an id that changes with the
    weights, dimension), a batch size and ``embed``."""

    batch_size: int

    def embed(self, slices: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class CacheEntry:
    """One cached 3D volume."""

    key: str
    volume_id: str
    case_id: str
    index_4d: int | None
    n_slices: int
    spacing: tuple[float, float, float]
    path: str
    size: int
    mtime_ns: int
    sha256: str
    embedder_id: str
    intensity: str  # the requested mode (auto/percentile/ct)
    resolved_intensity: str  # what auto became for this volume
    seconds: float
    n_volumes: int = 1  # 3D volumes in the file (a 4D file's protocols)

    @property
    def z_spacing(self) -> float:
        return float(self.spacing[2])


@dataclass
class CachedVolume:
    entry: CacheEntry
    vectors: NDArray[np.float32]
    z_mm: NDArray[np.float64]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _entry_key(sha256: str, index_4d: int | None, embedder_id: str, intensity: str) -> str:
    idx = "" if index_4d is None else f"-{index_4d}"
    return f"{sha256[:24]}{idx}-{_slug(embedder_id)[:48]}-{intensity}"


class EmbeddingCache:
    """Cached slice embeddings of one model, under ``root/<model>``."""

    MANIFEST_EVERY_S = 30.0

    def __init__(self, root: Path, model: str, intensity: str = "auto") -> None:
        self.root = Path(root)
        self.model = model
        self.intensity = intensity
        self.dir = self.root / _slug(model)
        self.vectors_dir = self.dir / "vectors"
        self.vectors_dir.mkdir(parents=True, exist_ok=True)
        self._entries: dict[str, CacheEntry] = {}
        self._by_file: dict[tuple[str, int, int], list[CacheEntry]] = {}
        self._load_entries()
        self._manifest_written = 0.0

    # ---- reading ----------------------------------------------------------------------------
    def _load_entries(self) -> None:
        for side in sorted(self.vectors_dir.glob("*.json")):
            try:
                raw = json.loads(side.read_text())
                raw["spacing"] = tuple(raw["spacing"])
                entry = CacheEntry(**raw)
            except (OSError, ValueError, TypeError):
                continue  # a foreign or damaged file: that volume is embedded again
            if (self.vectors_dir / f"{entry.key}.npz").is_file():
                self._add(entry)

    def _add(self, entry: CacheEntry) -> None:
        self._entries[entry.key] = entry
        ident = (entry.path, entry.size, entry.mtime_ns)
        group = [e for e in self._by_file.get(ident, []) if e.key != entry.key]
        self._by_file[ident] = [*group, entry]

    @property
    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, path: Path, embedder_id: str) -> list[CacheEntry] | None:
        """The cached volumes of an unchanged file for this model, in 4D order; else None."""
        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError:
            return None
        group = [e for e in self._by_file.get((str(p), st.st_size, st.st_mtime_ns), [])
                 if e.embedder_id == embedder_id and e.intensity == self.intensity]
        if not group:
            return None
        group.sort(key=lambda e: -1 if e.index_4d is None else e.index_4d)
        expected = {-1} if group[0].index_4d is None else set(range(group[0].n_volumes))
        got = {-1 if e.index_4d is None else e.index_4d for e in group}
        return group if got == expected else None

    def load(self, entry: CacheEntry) -> CachedVolume:
        with np.load(self.vectors_dir / f"{entry.key}.npz") as npz:
            vectors = np.ascontiguousarray(npz["vectors"], dtype=np.float32)
            z_mm = np.asarray(npz["z_mm"], dtype=np.float64)
        if vectors.shape[0] != entry.n_slices:
            raise MedirError(f"{self.vectors_dir / entry.key}.npz: {vectors.shape[0]} rows, "
                             f"expected {entry.n_slices}; delete it and run again")
        return CachedVolume(entry, vectors, z_mm)

    # ---- writing ----------------------------------------------------------------------------
    def put(self, entry: CacheEntry, vectors: NDArray[np.float32],
            z_mm: NDArray[np.float64]) -> None:
        """Store one volume: vectors first, then the entry that marks it complete."""
        with atomic_path(self.vectors_dir / f"{entry.key}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, vectors=np.asarray(vectors, np.float32),
                         z_mm=np.asarray(z_mm, np.float64))
        with atomic_path(self.vectors_dir / f"{entry.key}.json") as tmp:
            tmp.write_text(json.dumps(asdict(entry)))
        self._add(entry)
        if time.monotonic() - self._manifest_written > self.MANIFEST_EVERY_S:
            self.write_manifest()

    def write_manifest(self) -> Path:
        path = self.dir / "manifest.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({
                "model": self.model,
                "intensity": self.intensity,
                "n_volumes": len(self._entries),
                "n_slices": sum(e.n_slices for e in self._entries.values()),
                "volumes": [asdict(e) for e in sorted(self._entries.values(),
                                                      key=lambda e: e.key)],
            }, indent=1))
        self._manifest_written = time.monotonic()
        return path

    def embed_file(self, path: Path, embedder: SliceEmbedder) -> list[CacheEntry]:
        """Every 3D volume of a file, from the cache or embedded now (and cached)."""
        cached = self.lookup(path, embedder.embedder_id)
        if cached is not None:
            return cached
        p = Path(path).resolve()
        st = p.stat()
        vf = open_volume(p)
        out: list[CacheEntry] = []
        for k in range(vf.n_volumes):
            index = k if vf.is_4d else None
            key = _entry_key(vf.sha256, index, embedder.embedder_id, self.intensity)
            done = self._entries.get(key)
            if done is not None and (self.vectors_dir / f"{key}.npz").is_file():
                # same content under a new path or mtime: re-label the entry, keep the vectors
                done = CacheEntry(**{**asdict(done), "path": str(p), "size": st.st_size,
                                     "mtime_ns": st.st_mtime_ns})
                with atomic_path(self.vectors_dir / f"{key}.json") as tmp:
                    tmp.write_text(json.dumps(asdict(done)))
                self._add(done)
                out.append(done)
                continue
            t0 = time.perf_counter()
            vol = vf.read(index)
            mode = resolve_intensity(vol.data, self.intensity)
            vectors = embed_volume(vol, embedder, mode)  # type: ignore[arg-type]
            entry = CacheEntry(
                key=key, volume_id=vol.volume_id, case_id=vol.case_id, index_4d=index,
                n_slices=vol.n_slices, spacing=tuple(float(s) for s in vol.spacing),  # type: ignore[arg-type]
                path=str(p), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=vf.sha256,
                embedder_id=embedder.embedder_id, intensity=self.intensity,
                resolved_intensity=mode, seconds=round(time.perf_counter() - t0, 4),
                n_volumes=vf.n_volumes,
            )
            self.put(entry, vectors, vol.z_mm)
            out.append(entry)
        return out


def build_cache(
    cache: EmbeddingCache,
    files: Iterable[Path],
    embedder: SliceEmbedder,
    *,
    progress: bool = True,
    on_file: Callable[[Path, list[CacheEntry]], None] | None = None,
) -> dict[str, list[CacheEntry]]:
    """Embed (or find in the cache) every file; returns the entries per file path (as given).

    Shows a progress bar over files; the bar's postfix counts slices embedded in this run.
    """
    files = list(files)
    out: dict[str, list[CacheEntry]] = {}
    embedded = 0
    bar = tqdm(files, desc=f"embed {cache.model}", unit="file", disable=not progress,
               dynamic_ncols=True)
    try:
        for f in bar:
            before = len(cache)
            entries = cache.embed_file(f, embedder)
            if len(cache) > before:
                embedded += sum(e.n_slices for e in entries)
                bar.set_postfix_str(f"{embedded} slices embedded")
            out[str(f)] = entries
            if on_file is not None:
                on_file(f, entries)
    finally:
        cache.write_manifest()
    return out


def cache_summary(entries: Iterable[CacheEntry]) -> dict[str, Any]:
    """Volumes, slices and embedding seconds of a set of entries."""
    es = list(entries)
    return {"n_volumes": len(es), "n_slices": sum(e.n_slices for e in es),
            "embed_seconds": round(sum(e.seconds for e in es), 3)}


class ArrayCache:
    """Slice vectors of in-memory volumes (perturbed queries, other preprocessing), by content.

    ``key`` is a sha256 over the voxels, the spacing, the chosen slices, the preprocessing and
    the embedder id (:meth:`key_of`), so a volume changed in code is embedded once per change
    and model, and reused by later runs. Files ``<root>/<model>/arrays/<key>.npy``, written to a
    temporary name and renamed (a killed run never leaves half a file).
    """

    def __init__(self, root: Path, model: str) -> None:
        self.dir = Path(root) / _slug(model) / "arrays"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key_of(data: np.ndarray, spacing: Iterable[float], slices: Iterable[int],
               prep: str, embedder_id: str) -> str:
        import hashlib

        h = hashlib.sha256()
        arr = np.ascontiguousarray(data)
        h.update(f"{arr.dtype}|{arr.shape}|{[round(float(s), 6) for s in spacing]}|"
                 f"{list(map(int, slices))}|{prep}|{embedder_id}".encode())
        h.update(arr.tobytes())
        return h.hexdigest()[:40]

    def get_or_embed(self, key: str, compute: Callable[[], NDArray[np.float32]],
                     ) -> NDArray[np.float32]:
        """The cached vectors under ``key``, or ``compute()`` stored under it."""
        path = self.dir / f"{key}.npy"
        if path.is_file():
            try:
                out = np.load(path)
                self.hits += 1
                return np.ascontiguousarray(out, dtype=np.float32)
            except (OSError, ValueError):
                pass  # damaged: embed again
        vectors = np.ascontiguousarray(compute(), dtype=np.float32)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vectors)
        self.misses += 1
        return vectors
