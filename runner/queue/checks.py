"""What a queue message may ask of a worker: every task argument is checked before anything is
opened.

Anyone who can write to the broker can send a task by name, so a worker trusts no message:

- a file a task names (``path``, a DICOM series' ``files``, a query ``volume``) must be an
  absolute path whose real location (symbolic links and ``..`` resolved) lies inside the folders
  this worker reads from: its data folder, the UI's ingest roots and ``MEDIR_QUEUE__ROOTS``, and
  for a query also the query-upload folder (:attr:`medir.config.Settings.query_uploads`); the
  worker then opens the resolved path, not the one in the message;
- a PACS source must name the PACS of the worker's settings (``MEDIR_PACS__URL``): a worker
  contacts no other server;
- a folder a store-maintenance task names (``migrate``'s roots, at most :data:`MAX_ROOTS`)
  must lie inside those same folders;
- every field has a type and a size: texts up to :data:`MAX_TEXT` characters, at most
  :data:`MAX_LABELS` labels of :data:`MAX_LABEL_TEXT` characters, :data:`MAX_FILES` files in a
  series, query options of known names within :data:`MAX_OPTIONS_BYTES` of JSON, label
  filters on the label keys only with at most :data:`MAX_FILTER_VALUES` values each, a
  prune's ``apply`` true or false.

A message that breaks a rule fails at once with :class:`~runner.queue.TaskRefused` (one line,
recorded in its job); nothing is read and nothing is stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from medir.config import Settings
from medir.errors import MedirError
from runner.queue import TaskRefused

MAX_TEXT = 4096  # a path, a volume id, a model name
MAX_LABELS = 32
MAX_LABEL_TEXT = 256
MAX_FILES = 65_536  # files of one DICOM series
MAX_INDEX_4D = 1 << 31
MAX_OPTIONS_BYTES = 65_536
SHOWN = 200  # characters of a refused value shown in the message


def shown(value: object) -> str:
    """A value of a message as it may appear in a message or a job record (clipped)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + f"… ({len(text)} characters)"


def _text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise TaskRefused(f"refused: {what} must be a string, got {shown(value)}")
    if len(value) > limit:
        raise TaskRefused(f"refused: {what} is longer than {limit} characters")
    if "\x00" in value:
        raise TaskRefused(f"refused: {what} contains a NUL character")
    return value


def _optional_text(value: object, what: str, limit: int = MAX_TEXT) -> str | None:
    return None if value is None else _text(value, what, limit)


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise TaskRefused(f"refused: {what} must be true or false, got {shown(value)}")
    return value


def _index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_INDEX_4D:
        raise TaskRefused(f"refused: index_4d must be a volume number, got {shown(value)}")
    return value


def worker_roots(s: Settings, *, queries: bool = False) -> list[Path]:
    """The folders this worker reads volume files from (resolved): the data folder, the UI's
    ingest roots, ``queue.roots``, and for a query the query-upload folder."""
    roots = [s.data_dir, *s.ui.ingest_roots, *s.queue.roots]
    if queries:
        roots.append(s.query_uploads)
    return list(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))


def confined(value: object, roots: Sequence[Path], what: str = "file") -> Path:
    """The real location of the file ``value`` names, when it lies inside one of ``roots``."""
    text = _text(value, what)
    path = Path(text)
    if not path.is_absolute():
        raise TaskRefused(f"refused: {what} {shown(text)} is not an absolute path")
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise TaskRefused(f"refused: {what} {shown(text)}: {exc}") from None
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise TaskRefused(
            f"refused: {shown(text)} is outside the folders this worker reads from "
            f"({', '.join(map(str, roots))}; MEDIR_QUEUE__ROOTS adds folders)")
    return real


def _pacs_source(value: str, s: Settings) -> str:
    """A PACS source of the worker's own PACS (the settings' server, scheme and path)."""
    from ingest.dicomweb import parse_source

    if not s.pacs.url:
        raise TaskRefused(f"refused: {shown(value)}: this worker has no PACS configured "
                          "(MEDIR_PACS__URL)")
    try:
        base = parse_source(value, s).target.base_url
    except MedirError as exc:
        raise TaskRefused(f"refused: {exc}") from None
    a, b = urlsplit(base), urlsplit(s.pacs.url.rstrip("/"))
    if (a.scheme, a.hostname, a.port, a.path.rstrip("/")) != \
            (b.scheme, b.hostname, b.port, b.path.rstrip("/")):
        raise TaskRefused(f"refused: {shown(value)} is not this worker's PACS "
                          "(MEDIR_PACS__URL)")
    return value


def _labels(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TaskRefused(f"refused: labels must be a mapping, got {shown(value)}")
    if len(value) > MAX_LABELS:
        raise TaskRefused(f"refused: {len(value)} labels; at most {MAX_LABELS}")
    return {_text(k, "a label name", MAX_LABEL_TEXT): _text(v, "a label", MAX_LABEL_TEXT)
            for k, v in value.items()}


def _files(value: object, roots: Sequence[Path]) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise TaskRefused(f"refused: files must be a list, got {shown(value)}")
    if len(value) > MAX_FILES:
        raise TaskRefused(f"refused: {len(value)} files in one series; at most {MAX_FILES}")
    return [str(confined(f, roots, "a series file")) for f in value]


@dataclass(frozen=True)
class IngestArgs:
    """The checked arguments of an ``ingest_volume`` task (paths resolved)."""

    path: str
    index_4d: int | None
    model: str
    labels: dict[str, str] | None
    intensity: str | None
    volume_id: str | None
    force: bool
    files: list[str] | None


def check_ingest(s: Settings, path: object, index_4d: object, model: object, labels: object,
                 intensity: object, volume_id: object, force: object,
                 files: object) -> IngestArgs:
    """The arguments of an ``ingest_volume`` message, or :class:`TaskRefused`."""
    from ingest.dicomweb import is_dicomweb_source

    text = _text(path, "path")
    roots = worker_roots(s)
    where = _pacs_source(text, s) if is_dicomweb_source(text) else str(confined(text, roots))
    return IngestArgs(where, _index(index_4d), _text(model, "model", 200), _labels(labels),
                      _optional_text(intensity, "intensity", 64),
                      _optional_text(volume_id, "volume_id"), _flag(force, "force"),
                      _files(files, roots))


@dataclass(frozen=True)
class SearchArgs:
    """The checked arguments of a ``search_volume`` task."""

    volume: str
    model: str
    options: dict[str, object]
    by_id: bool
    index_4d: int | None


def _options(value: object) -> dict[str, object]:
    from search.query import QueryOptions

    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TaskRefused(f"refused: options must be a mapping, got {shown(value)}")
    known = {f.name for f in dataclasses.fields(QueryOptions)}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise TaskRefused(f"refused: unknown query options {shown(', '.join(unknown))} "
                          f"(known: {', '.join(sorted(known))})")
    try:
        size = len(json.dumps(value))
    except (TypeError, ValueError):
        raise TaskRefused("refused: query options that are not plain JSON") from None
    if size > MAX_OPTIONS_BYTES:
        raise TaskRefused(f"refused: {size} bytes of query options; at most "
                          f"{MAX_OPTIONS_BYTES}")
    return dict(value)


def check_search(s: Settings, volume: object, model: object, options: object, by_id: object,
                 index_4d: object) -> SearchArgs:
    """The arguments of a ``search_volume`` message, or :class:`TaskRefused`: the query is an
    indexed id, this worker's PACS, or a file inside the worker's folders (query uploads
    included)."""
    from ingest.dicomweb import is_dicomweb_source

    text = _text(volume, "volume")
    flag = _flag(by_id, "by_id")
    if not flag:
        text = (_pacs_source(text, s) if is_dicomweb_source(text)
                else str(confined(text, worker_roots(s, queries=True))))
    return SearchArgs(text, _text(model, "model", 200), _options(options), flag,
                      _index(index_4d))


@dataclass(frozen=True)
class AuditArgs:
    """The checked arguments of an ``audit_duplicates`` task."""

    model: str
    options: dict[str, object]


def check_audit(s: Settings, model: object, options: object) -> AuditArgs:
    """The arguments of an ``audit_duplicates`` message, or :class:`TaskRefused`: a model
    name and the known audit options only (their values are checked by ``AuditOptions``)."""
    from search.audit import AuditOptions

    name = s.model if model is None else _text(model, "model", 200)
    if options is None:
        return AuditArgs(name, {})
    if not isinstance(options, Mapping):
        raise TaskRefused(f"refused: audit options must be a mapping, got {shown(options)}")
    known = {f.name for f in dataclasses.fields(AuditOptions)}
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise TaskRefused(f"refused: unknown audit options {shown(', '.join(unknown))}")
    return AuditArgs(name, dict(options))


# ---- store maintenance (the worker owns the embedded store) ----------------------------------
MAX_FILTER_VALUES = 256  # values of one label filter
MAX_ROOTS = 64  # folders of one migrate


def _model(s: Settings, value: object) -> str:
    return s.model if value is None else _text(value, "model", 200)


@dataclass(frozen=True)
class VolumesArgs:
    """The checked arguments of a ``list_volumes`` task."""

    model: str | None
    filters: dict[str, list[str]]


def check_volumes(model: object, filters: object) -> VolumesArgs:
    """The arguments of a ``list_volumes`` message, or :class:`TaskRefused`: a model name (or
    none: every collection) and label filters on the label keys, each a bounded list of
    bounded texts."""
    from search.store import LABEL_KEYS

    name = _optional_text(model, "model", 200)
    if filters is None:
        return VolumesArgs(name, {})
    if not isinstance(filters, Mapping):
        raise TaskRefused(f"refused: filters must be a mapping, got {shown(filters)}")
    out: dict[str, list[str]] = {}
    for key, values in filters.items():
        if key not in LABEL_KEYS:
            raise TaskRefused(f"refused: cannot filter on {shown(key)}; label filters: "
                              + ", ".join(LABEL_KEYS))
        if not isinstance(values, list | tuple):
            raise TaskRefused(f"refused: the values of filter {key} must be a list, got "
                              f"{shown(values)}")
        if len(values) > MAX_FILTER_VALUES:
            raise TaskRefused(f"refused: {len(values)} values of filter {key}; at most "
                              f"{MAX_FILTER_VALUES}")
        out[key] = [_text(v, f"a value of filter {key}", MAX_LABEL_TEXT) for v in values]
    return VolumesArgs(name, out)


def check_volume_ids(s: Settings, model: object) -> str:
    """The model of a ``volume_ids`` message (the worker's default when none), or
    :class:`TaskRefused`."""
    return _model(s, model)


def check_prune(apply: object) -> bool:
    """Whether a ``prune_volumes`` message deletes (true or false, nothing else), or
    :class:`TaskRefused`. The worker deletes only what it proves gone itself."""
    return _flag(apply, "apply")


def check_migrate(s: Settings, roots: object) -> list[Path]:
    """The folders of a ``migrate_store`` message, or :class:`TaskRefused`: at most
    :data:`MAX_ROOTS` absolute paths whose real location lies inside this worker's folders.

    Migrate reads nothing under a root: it only compares the sources stored with it, so the
    path is handed on as given (a root named through a link keeps matching the sources
    recorded through that link); the check is on where it really leads."""
    if roots is None:
        return []
    if not isinstance(roots, list | tuple):
        raise TaskRefused(f"refused: roots must be a list, got {shown(roots)}")
    if len(roots) > MAX_ROOTS:
        raise TaskRefused(f"refused: {len(roots)} roots; at most {MAX_ROOTS}")
    folders = worker_roots(s)
    out = []
    for r in roots:
        confined(r, folders, "a migrate root")
        out.append(Path(str(r)))
    return out
