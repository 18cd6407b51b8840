"""The folder walker: files and folders given to ``ingest`` → volume sources with stable ids.

Identity (docs/collections.md): a volume file under a folder given to ``ingest`` is the path
relative to that folder without the volume suffix (``p001/ct`` for ``<root>/p001/ct.nii.gz``),
so same-named files of a folder-per-case collection never collide and the id is the same on
every machine and every run; a file given directly is its name without the suffix (``ct``); a
DICOM series is its SeriesInstanceUID, wherever its files lie; the k-th volume of a 4D file is
``<id>#<k>``. A labels CSV row giving both ``file`` and ``case_id`` overrides the id of that file
with its ``case_id``.

Everything under a folder that is not ingested is reported as a :class:`~ingest.skipped.Skipped`
with its kind (unknown type, non-image DICOM, bad file, duplicate, unsafe path, ...). Safety: a
symbolic link (to a file or a folder) under a folder given to ``ingest`` is followed only when
its target lies inside that folder; devices, FIFOs and sockets are never opened; a folder holding
a :data:`PRIVATE_MARKER` file (the UI's query uploads: other users' patient data) is never
walked.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest import dicom
from ingest.dicom import DicomSeries
from ingest.reader import Limits, VolumeFile, is_volume_file, open_volume
from ingest.skipped import BAD_FILE, DUPLICATE, UNKNOWN_TYPE, UNSAFE_PATH, Skipped
from medir.ids import case_id_of, split_index

LabelMap = Mapping[str, Mapping[str, str]]
#: A file that marks its folder private: never walked, never ingested (ui/uploads.py puts one in
#: the query-upload folder).
PRIVATE_MARKER = ".medir-private"


@dataclass
class VolumeSource:
    """One volume file or DICOM series to ingest, under its stable base volume id."""

    volume_id: str  # base id; the k-th volume of a 4D file is "<volume_id>#<k>"
    path: Path  # the file, or for a DICOM series its first file
    source: str  # shown with results: the file, or the series' folder
    series: DicomSeries | None = None
    keys: tuple[str, ...] = ()  # further names a labels table may use for it

    def open(self, limits: Limits | None = None) -> VolumeFile:
        """Open (headers only) as a :class:`VolumeFile` whose volume ids use ``volume_id``;
        ``limits``: what a volume file or DICOM series may declare
        (:func:`ingest.reader.open_volume`, :meth:`ingest.dicom.DicomSeries.open`)."""
        vf = (self.series.open(limits) if self.series is not None
              else open_volume(self.path, limits))
        return dataclasses.replace(vf, case_id=self.volume_id)

    @property
    def files(self) -> list[Path]:
        return list(self.series.files) if self.series is not None else [self.path]


@dataclass
class CollectionScan:
    """What :func:`scan_paths` found: sources to ingest and everything left out, with why."""

    sources: list[VolumeSource] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skipped_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.kind] = counts.get(s.kind, 0) + 1
        return dict(sorted(counts.items()))


def file_source(path: str | Path, volume_id: str | None = None) -> VolumeSource:
    """A source for one file given directly (id: its name without the volume suffix)."""
    p = Path(path).expanduser().absolute()
    return VolumeSource(volume_id or case_id_of(p), p, str(p), keys=(p.name, str(p)))


def _strip_suffix(rel: str) -> str:
    folder, _, name = rel.rpartition("/")
    stem = case_id_of(name)
    return f"{folder}/{stem}" if folder else stem


def _inside(target: Path, root: Path) -> bool:
    return target == root or root in target.parents


def _walk(root: Path, skipped: list[Skipped]) -> Iterable[tuple[Path, str, bool]]:
    """Regular files under ``root`` as (path, path relative to root, reached through a
    link), links checked."""
    real_root = root.resolve()
    seen_dirs = {real_root}
    stack: list[tuple[Path, str, bool]] = [(root, "", False)]
    while stack:
        folder, rel, linked = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as exc:
            skipped.append(Skipped(str(folder), BAD_FILE, f"cannot list the folder ({exc})"))
            continue
        if any(e.name == PRIVATE_MARKER for e in entries):
            skipped.append(Skipped(str(folder), UNSAFE_PATH, "a private folder (query uploads), "
                                                             "never ingested"))
            continue
        for entry in entries:
            path = Path(entry.path)
            rel_path = f"{rel}{entry.name}"
            try:
                st = os.stat(path, follow_symlinks=False)
                is_link = stat.S_ISLNK(st.st_mode)
                if is_link:
                    target = path.resolve(strict=True)
                    if not _inside(target, real_root):
                        skipped.append(Skipped(str(path), UNSAFE_PATH,
                                               f"symbolic link to {target}, outside {root}"))
                        continue
                    st = os.stat(target)
            except (OSError, RuntimeError) as exc:  # dangling link, link loop, permissions
                skipped.append(Skipped(str(path), BAD_FILE, f"cannot read ({exc})"))
                continue
            if stat.S_ISDIR(st.st_mode):
                real = path.resolve()
                if real in seen_dirs:  # a link back to a folder already walked
                    skipped.append(Skipped(str(path), DUPLICATE, f"folder {real} seen already"))
                    continue
                seen_dirs.add(real)
                stack.append((path, rel_path + "/", linked or is_link))
            elif stat.S_ISREG(st.st_mode):
                yield path, rel_path, linked or is_link
            else:
                what = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket"
                        if stat.S_ISSOCK(st.st_mode) else "device file")
                skipped.append(Skipped(str(path), UNSAFE_PATH, f"{what}, not a regular file"))


def _is_dicom(path: Path) -> bool:
    return path.name.lower().endswith(".dcm") or dicom.looks_like_dicom(path)


def scan_paths(paths: Sequence[str | Path], ids: Mapping[str, str] | None = None
               ) -> CollectionScan:
    """Expand files and folders (recursively) into volume sources; see the module docstring.

    ``ids`` maps a file (its path relative to its folder, with or without the volume suffix,
    its absolute path or its name) to the volume id a labels CSV gives it.
    """
    scan = CollectionScan()
    dicom_files: list[Path] = []
    found: list[VolumeSource] = []
    for raw in paths:
        given = Path(raw).expanduser()
        if given.is_dir():
            root = given.absolute()
            walked = sorted(_walk(root, scan.skipped), key=lambda w: (w[2], w[1]))
            for path, rel, _ in walked:  # files reached through a link after the others
                if is_volume_file(path):
                    found.append(VolumeSource(_strip_suffix(rel), path, str(path),
                                              keys=(rel, path.name, str(path))))
                elif _is_dicom(path):
                    dicom_files.append(path)
                else:
                    scan.skipped.append(Skipped(str(path), UNKNOWN_TYPE,
                                                "not a NIfTI, NRRD or DICOM file"))
        elif given.is_file() and not is_volume_file(given) and _is_dicom(given):
            dicom_files.append(given.absolute())
        else:  # a volume file, or a missing/unsupported one: its ingest fails with the reason
            found.append(file_source(given))
    if dicom_files:
        series, left = dicom.scan_dicom(dicom_files)
        scan.skipped.extend(left)
        for s in series:
            first = sorted(s.files)[0]
            folder = os.path.commonpath([str(f) for f in s.files])
            folder = folder if Path(folder).is_dir() else str(Path(folder).parent)
            found.append(VolumeSource(s.series_uid, first, folder, series=s))
    return _assign_ids(found, ids or {}, scan)


def _assign_ids(found: list[VolumeSource], ids: Mapping[str, str],
                scan: CollectionScan) -> CollectionScan:
    """Apply id overrides, drop a file given twice, refuse two sources under one id."""
    by_id: dict[str, VolumeSource] = {}
    files: set[Path] = set()
    for src in found:
        for key in (src.volume_id, *src.keys):
            if key in ids:
                src.volume_id = ids[key]
                break
        real = src.path.resolve() if src.series is None else None
        if real is not None and real in files:
            scan.skipped.append(Skipped(src.source, DUPLICATE, "the same file given twice"))
            continue
        other = by_id.get(src.volume_id)
        if other is not None:
            scan.skipped.append(Skipped(
                src.source, DUPLICATE,
                f"volume id {src.volume_id!r} is already {other.source}; ingest their common "
                "folder, or give ids in a labels CSV (file, case_id)"))
            continue
        by_id[src.volume_id] = src
        if real is not None:
            files.add(real)
        scan.sources.append(src)
    return scan


def labels_for(labels: LabelMap | None, volume_id: str,
               source: VolumeSource | None = None) -> dict[str, str]:
    """The labels of one (3D) volume from a labels table (:func:`ingest.labels.load_labels_csv`).

    Looked up by the volume id, then (for ``<id>#<k>``) the base id, then the source's other
    names (path relative to its folder, absolute path, file name), then the file name without
    its suffix. ``{}`` when the table has no entry.
    """
    if not labels:
        return {}
    keys = [volume_id]
    base, index = split_index(volume_id)
    if index is not None:
        keys.append(base)
    if source is not None:
        keys += [source.volume_id, *source.keys]
        if source.series is None:
            keys.append(case_id_of(source.path))
    for key in dict.fromkeys(keys):
        if key in labels:
            return {k: str(v) for k, v in labels[key].items() if v}
    return {}


def source_for_job(path: str | Path, volume_id: str, index_4d: int | None,
                   dicom_files: Sequence[str] | None = None) -> VolumeSource:
    """The source a queued ingest task names: a file, or the DICOM series of ``dicom_files``
    (``volume_id`` is the full id the client computed, ``#k`` included for a 4D volume)."""
    base = split_index(volume_id)[0] if index_4d is not None else volume_id
    if not dicom_files:
        return file_source(path, base)
    series, left = dicom.scan_dicom([Path(f) for f in dicom_files])
    if len(series) != 1:
        from medir.errors import VolumeError

        why = "; ".join(s.reason for s in left[:3]) or f"{len(series)} series"
        raise VolumeError(path, f"the files of this job no longer form one series ({why})")
    return VolumeSource(base, Path(path), str(Path(path).parent), series=series[0])
