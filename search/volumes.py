"""What is indexed, per volume: listing (``medir volumes``), removing volumes whose files are
gone (``medir prune``), and upgrading a store written before volume identities
(``medir migrate``), and the store statistics (``medir info``, the collection page).

Prune deletes only what it can prove gone. Each volume's source is in one of three states:

* **present**: the file (or DICOM series folder) is there, or the PACS lists the series;
* **gone**: the folder it was ingested from is there, readable and not empty, and the file is
  not in it; or the PACS, answering its study search, does not know the series (empty answer
  or HTTP 404);
* **unknown**: anything else: the ingest folder is missing (not mounted where prune runs:
  the host vs ``/data`` in a container), unreadable or empty (an unmounted mount point), the
  PACS is unreachable, refuses, or holds no study at all; a source that is no path or URL.
  Unknown volumes are kept, with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medir.errors import MedirError
from medir.ids import case_id_of
from search.store import COMPLETE, LABEL_KEYS, LAYOUT, PENDING, READY, Filter, SliceStore

OLD_GEN = "0" * 20  # the generation given to points written before generations existed


@dataclass
class VolumeInfo:
    """One indexed volume (its live version, or a write in progress / abandoned)."""

    volume_id: str
    collection: str
    source: str
    n_slices: int
    points: int
    state: str  # ready | pending
    embedder: str
    intensity: str
    content_id: str
    gen: str
    labels: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VolumeInfo:
        """The volume :meth:`to_dict` gave (a worker's answer, read back on the client);
        KeyError, TypeError or ValueError when it is not one."""
        return cls(str(data["volume_id"]), str(data["collection"]), str(data["source"]),
                   int(data["n_slices"]), int(data["points"]), str(data["state"]),
                   str(data["embedder"]), str(data["intensity"]), str(data["content_id"]),
                   str(data["gen"]), _texts(data.get("labels")), _texts(data.get("meta")))


def _texts(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}


def check_filters(filters: Mapping[str, Sequence[str]] | None) -> None:
    """Label filters name label keys only (``medir volumes --filter``): one line otherwise,
    before any store or queue is asked."""
    bad = [k for k in (filters or {}) if k not in LABEL_KEYS]
    if bad:
        raise MedirError(f"cannot filter on {bad[0]!r}; label filters: " + ", ".join(LABEL_KEYS))


_META_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined")


def list_volumes(store: SliceStore, collections: Sequence[str] | None = None,
                 filters: Mapping[str, Sequence[str]] | None = None) -> list[VolumeInfo]:
    """Every volume of the store (or of ``collections``), one row per volume id: its highest
    ready generation, or its pending write when it has no ready one. ``filters`` are label
    equalities (any of the values)."""
    must: dict[str, Any] = {"slice": 0}
    for key, values in (filters or {}).items():
        vals = [v for v in values if v]
        if vals:
            must[key] = vals if len(vals) > 1 else vals[0]
    out: list[VolumeInfo] = []
    for coll in collections or store.collections():
        best: dict[str, tuple[tuple[bool, str], Mapping[str, Any]]] = {}
        for rec in store.scroll(coll, Filter(must)):
            p = rec.payload
            vid = str(p.get("volume_id", ""))
            rank = (p.get("state") == COMPLETE, str(p.get("gen", "")))
            if vid not in best or rank > best[vid][0]:
                best[vid] = (rank, p)
        for vid in sorted(best):
            p = best[vid][1]
            points = store.count(coll, Filter({"volume_id": vid, "gen": str(p.get("gen", ""))}))
            out.append(VolumeInfo(
                vid, coll, str(p.get("source", "")), int(p.get("n_slices", 0)), points,
                str(p.get("state", PENDING)), str(p.get("embedder", "")),
                str(p.get("intensity", "")), str(p.get("content_id", "")),
                str(p.get("gen", "")), {k: str(p[k]) for k in LABEL_KEYS if p.get(k)},
                {k: str(p[k]) for k in _META_KEYS if p.get(k)}))
    return out


PRESENT, GONE, UNKNOWN = "present", "gone", "unknown"
PACS_PREFIX = "dicomweb+"  # a series ingested from a PACS (ingest/dicomweb.py)
# sources of PACS series -> (state, reason) of each: asks the PACS (runner/pacs_sources.py)
PacsCheck = Callable[[Sequence[str]], Mapping[str, tuple[str, str]]]


@dataclass
class SourceCheck:
    """Whether one volume's source is present, gone or unknown, and why (not for present)."""

    volume: VolumeInfo
    state: str  # present | gone | unknown
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**self.volume.to_dict(), "source_state": self.state, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceCheck:
        """The check :meth:`to_dict` gave (KeyError, TypeError or ValueError otherwise)."""
        state = str(data["source_state"])
        if state not in (PRESENT, GONE, UNKNOWN):
            raise ValueError(f"unknown source state {state!r}")
        return cls(VolumeInfo.from_dict(data), state, str(data.get("reason", "")))


@dataclass
class PruneResult:
    """Every volume's check, and the points deleted for the gone ones (with ``--yes``)."""

    checks: list[SourceCheck] = field(default_factory=list)
    removed_points: int = 0
    applied: bool = False

    def of(self, state: str) -> list[SourceCheck]:
        return [c for c in self.checks if c.state == state]

    def counts(self) -> dict[str, int]:
        return {s: len(self.of(s)) for s in (PRESENT, GONE, UNKNOWN)}

    def unknown_reasons(self) -> dict[str, int]:
        """Volumes kept per reason (the reasons name a folder or a server, not a file)."""
        out: dict[str, int] = {}
        for c in self.of(UNKNOWN):
            out[c.reason] = out.get(c.reason, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "removed_points": self.removed_points,
                "counts": self.counts(), "unknown_reasons": self.unknown_reasons(),
                "volumes": [c.to_dict() for c in self.checks if c.state != PRESENT]}

    def to_wire(self) -> dict[str, Any]:
        """The whole result as plain JSON (every check, the present ones too): a worker's
        answer, read back by :meth:`from_wire` (``to_dict`` is what ``--json`` prints)."""
        return {"applied": self.applied, "removed_points": self.removed_points,
                "checks": [c.to_dict() for c in self.checks]}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> PruneResult:
        """The result :meth:`to_wire` gave (KeyError, TypeError or ValueError otherwise)."""
        checks = data["checks"]
        if not isinstance(checks, list):
            raise TypeError("checks must be a list")
        applied = data["applied"]
        if not isinstance(applied, bool):
            raise TypeError("applied must be true or false")
        return cls([SourceCheck.from_dict(c) for c in checks], int(data["removed_points"]),
                   applied)


def ingest_root(volume_id: str, source: str) -> Path:
    """The folder a file volume was ingested from, as far as its payload tells.

    A folder ingest gives the id ``<path relative to the folder without suffix>[#k]`` and
    stores the absolute file as the source, so ``/data/p001/ct.nii.gz`` under ``p001/ct`` came
    from ``/data``. Any other id (a file given directly, a labels table's id, a DICOM series'
    UID with its folder as the source) gives the source's parent folder.
    """
    src = Path(source)
    dirs = volume_id.split("#")[0].split("/")[:-1]
    if dirs and len(src.parent.parts) > len(dirs) and \
            list(src.parent.parts[-len(dirs):]) == dirs:
        return src.parents[len(dirs)]
    return src.parent


def _dir_state(folder: Path) -> str:
    """"" for a readable folder with entries, else why it proves nothing."""
    try:
        if not folder.is_dir():
            return "is not there (not mounted here?)"
        with os.scandir(folder) as entries:
            if next(entries, None) is None:
                return "is empty (not mounted here?)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    return ""


def check_file_source(volume_id: str, source: str) -> tuple[str, str]:
    """(state, reason) of a file or DICOM-folder source; see the module docstring."""
    if not source:
        return UNKNOWN, "no source recorded"
    if "://" in source:
        return UNKNOWN, f"source {source.split('://')[0]}://… is not a file path"
    src = Path(source)
    if not src.is_absolute():
        return UNKNOWN, "source is not an absolute path"
    try:
        src.stat()
        return PRESENT, ""
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:  # EACCES, ESTALE, EIO: there may be a file we cannot see
        return UNKNOWN, f"{src.parent} cannot be read ({exc.strerror or type(exc).__name__})"
    root = ingest_root(volume_id, source)
    why = _dir_state(root)
    if why:
        return UNKNOWN, f"ingest folder {root} {why}"
    # the deepest folder left on the way down to the file must be a real, listed folder too:
    # an unmounted mount point under the root is an empty folder
    deepest = src.parent
    while deepest != root and not deepest.exists():
        deepest = deepest.parent
    if deepest != root:
        why = _dir_state(deepest)
        if why:
            return UNKNOWN, f"folder {deepest} {why}"
    return GONE, f"not in {root}"


def gone_volumes(store: SliceStore, pacs_check: PacsCheck | None = None) -> list[VolumeInfo]:
    """The volumes whose source is proved gone (unknown ones are not among them)."""
    return [c.volume for c in check_sources(list_volumes(store), pacs_check)
            if c.state == GONE]


def check_sources(volumes: Sequence[VolumeInfo],
                  pacs_check: PacsCheck | None = None) -> list[SourceCheck]:
    """The state of every volume's source: files here, PACS series through ``pacs_check``
    (without it they are unknown)."""
    checks = [SourceCheck(v, UNKNOWN, "PACS series are not checked here") for v in volumes]
    on_pacs = [c for c in checks if c.volume.source.startswith(PACS_PREFIX)]
    for c in checks:
        if not c.volume.source.startswith(PACS_PREFIX):
            c.state, c.reason = check_file_source(c.volume.volume_id, c.volume.source)
    if on_pacs and pacs_check is not None:
        states = pacs_check(sorted({c.volume.source for c in on_pacs}))
        for c in on_pacs:
            c.state, c.reason = states.get(c.volume.source,
                                           (UNKNOWN, "the PACS check gave no answer"))
    return checks


def prune(store: SliceStore, gone: Sequence[VolumeInfo]) -> int:
    """Delete every point (all generations) of the ``gone`` volumes, each only while its live
    version is still the one checked (same generation and source: nothing written since);
    returns the points deleted."""
    checked = {(v.collection, v.volume_id): (v.gen, v.source) for v in gone}
    colls = sorted({c for c, _ in checked} & set(store.collections()))
    n = 0
    for v in list_volumes(store, colls) if colls else []:
        if checked.get((v.collection, v.volume_id)) != (v.gen, v.source):
            continue
        flt = Filter({"volume_id": v.volume_id})
        n += store.count(v.collection, flt)
        store.delete(v.collection, flt)
    store.flush()
    return n


def old_points(store: SliceStore, coll: str) -> int:
    """Points written by a release before volume identities (no ``layout`` marker)."""
    return store.count(coll, Filter(must_not={"layout": LAYOUT}))


def migrate(store: SliceStore, roots: Sequence[Path] = ()) -> dict[str, int]:
    """Upgrade collections written before volume identities, in place (no re-embedding).

    Old points get the missing keyword indexes, generation :data:`OLD_GEN` and the layout
    marker; abandoned pending points are removed. Old volume ids were file stems; with
    ``roots``, a volume whose source lies under one of them gets the new id (path relative to
    the root, without the suffix), the id a folder ingest of that root now gives. Returns the
    points upgraded per collection.
    """
    done: dict[str, int] = {}
    for coll in store.collections():
        n = old_points(store, coll)
        if not n:
            continue
        store.ensure_indexes(coll)
        old = Filter(must_not={"layout": LAYOUT})
        store.delete(coll, old.and_(Filter({"state": PENDING})))
        if roots:
            _rekey(store, coll, [r.expanduser().absolute() for r in roots], old)
        store.set_payload(coll, old, {"gen": OLD_GEN, "layout": LAYOUT})
        done[coll] = n
    store.flush()
    return done


def _rekey(store: SliceStore, coll: str, roots: Sequence[Path], old: Filter) -> None:
    seen: set[tuple[str, str]] = set()
    for rec in store.scroll(coll, old.and_(Filter({"slice": 0}))):
        vid, source = str(rec.payload.get("volume_id", "")), str(rec.payload.get("source", ""))
        if (vid, source) in seen or not source:
            continue
        seen.add((vid, source))
        src = Path(source).absolute()
        for root in roots:
            if root in src.parents:
                rel = src.relative_to(root)
                base = "/".join([*rel.parts[:-1], case_id_of(rel.name)])
                index = rec.payload.get("index_4d")
                new = base if index is None else f"{base}#{index}"
                store.set_payload(coll, old.and_(Filter({"volume_id": vid, "source": source})),
                                  {"volume_id": new, "case_id": base})
                break


def store_stats(store: SliceStore) -> dict[str, Any]:
    """Collections, volumes and points per model, label facets (the collection page, info)."""
    collections = []
    for name in store.collections():
        facets = {key: _volumes_per_value(store, name, key) for key in LABEL_KEYS}
        collections.append({
            "name": name,
            "dim": store.collection_dim(name),
            "points": store.count(name),
            "ready_points": store.count(name, READY),
            "volumes": len(store.facet(name, "volume_id", READY, limit=1_000_000)),
            "embedders": sorted(map(str, store.facet(name, "embedder", READY))),
            "facets": facets,
        })
    return {"mode": store.mode, "location": store.location, "collections": collections}


def _volumes_per_value(store: SliceStore, name: str, key: str) -> dict[str, int]:
    """Number of complete volumes per value of a label (facets count points, not volumes)."""
    out: dict[str, int] = {}
    for value in store.facet(name, key, READY):
        flt = READY.and_(Filter({key: value}))
        out[str(value)] = len(store.facet(name, "volume_id", flt, limit=1_000_000))
    return dict(sorted(out.items()))
