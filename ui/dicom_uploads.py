"""DICOM series uploaded to the UI: a ``.zip`` of a series, or several ``.dcm`` files.

An upload is turned into a flat folder of files and then read exactly as the CLI reads a folder:
the Search page opens it with the CLI's query reader (``open_dicom_folder``) and the Ingest page
walks it with the CLI's folder walker (``scan_paths``), with the settings' limits and the same
PHI rules (only the few fields :mod:`ingest.dicom` copies out are ever shown).

A zip is hostile until proven otherwise, so nothing in it chooses where or how much is written:

- its entry count is read from the archive's end record before :mod:`zipfile` parses the
  directory, and every upload together holds at most ``MEDIR_UI__DICOM_MAX_FILES`` files;
- the sizes the members declare are summed against ``MEDIR_UI__DICOM_UNZIPPED_LIMIT_MB`` before
  anything is extracted, and the bytes actually inflated are counted again while extracting
  (a member yielding more than it declared is refused);
- a member is written to a name chosen here (``00000.dcm``, ``00001``, ...) in a folder created
  here, never to its own path; a member whose path leaves the archive (``../x``, ``/x``, ``C:``),
  a symbolic link or other special file, an encrypted member, a zip inside the zip, or a
  compression other than stored and deflate (bzip2 and LZMA inflate without a bound per read)
  refuse the whole upload with one line; folders and macOS ``__MACOSX`` entries are ignored.

Every problem is an :class:`~ui.uploads.UploadError` naming the uploaded file; what was written
for a refused upload is removed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from medir.config import Settings
from medir.errors import MedirError
from ui import backend
from ui.uploads import UploadError, query_session_folder, upload_dir

DICOM_TYPES = ("zip", "dcm")  # st.file_uploader matches the last suffix
CHUNK = 1 << 20  # bytes inflated and written per step
CD_ENTRY_BYTES = 1024  # central-directory bytes allowed per allowed entry (names, extras)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_EOCD, _EOCD64, _LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
               ValueError, struct.error)


def is_dicom_upload(name: str) -> bool:
    """An upload handled here: a ``.zip`` or a ``.dcm`` file."""
    return name.lower().endswith((".zip", ".dcm"))


@dataclass
class _Budget:
    """What the uploads together may still write: files and bytes."""

    files: int
    bytes: int
    written: list[Path] = field(default_factory=list)

    def take(self, what: str, files: int, nbytes: int, s_files: int, s_bytes: int) -> None:
        if files > self.files:
            raise UploadError(f"{what}: too many files: {files} more, at most {s_files} in one "
                              "DICOM upload (MEDIR_UI__DICOM_MAX_FILES)")
        if nbytes > self.bytes:
            raise UploadError(f"{what}: too large once unzipped: {nbytes} bytes declared, at most "
                              f"{s_bytes} in one DICOM upload (MEDIR_UI__DICOM_UNZIPPED_LIMIT_MB)")

    def next_path(self, dest: Path, dicom_suffix: bool) -> Path:
        path = dest / f"{len(self.written):05d}{'.dcm' if dicom_suffix else ''}"
        self.written.append(path)
        return path


class _Writer:
    """Writes the files of one DICOM upload into ``dest`` within the settings' bounds."""

    def __init__(self, dest: Path, s: Settings) -> None:
        self.dest = dest
        self.max_files = s.ui.dicom_max_files
        self.max_bytes = s.ui.dicom_unzipped_limit_mb * 1024 * 1024
        self.upload_limit = s.ui.upload_limit_mb * 1024 * 1024
        self.upload_limit_mb = s.ui.upload_limit_mb
        self.budget = _Budget(self.max_files, self.max_bytes)

    def add(self, name: str, data: bytes) -> None:
        """One uploaded file: a zip is extracted, a ``.dcm`` file written as it is."""
        if not is_dicom_upload(name):
            raise UploadError(f"{name}: not a DICOM upload (expected a .zip of a series or "
                              ".dcm files)")
        if not data:
            raise UploadError(f"{name}: the file is empty")
        if len(data) > self.upload_limit:
            raise UploadError(f"{name}: {len(data) / 1024 / 1024:.1f} MB is over the upload "
                              f"limit of {self.upload_limit_mb} MB (MEDIR_UI__UPLOAD_LIMIT_MB)")
        if name.lower().endswith(".zip"):
            self._zip(name, data)
            return
        if data.startswith(_ZIP_MAGIC):
            raise UploadError(f"{name}: a zip archive named .dcm (upload it as .zip)")
        self._take(name, 1, len(data))
        self._write(name, self.budget.next_path(self.dest, True), [data])

    def _take(self, what: str, files: int, nbytes: int) -> None:
        self.budget.take(what, files, nbytes, self.max_files, self.max_bytes)
        self.budget.files -= files
        self.budget.bytes -= nbytes

    def _zip(self, name: str, data: bytes) -> None:
        entries, cd_bytes = central_directory(name, data)
        if entries > self.budget.files or cd_bytes > self.budget.files * CD_ENTRY_BYTES:
            raise UploadError(f"{name}: too many files: the archive lists {entries} entries "
                              f"({cd_bytes} directory bytes), at most {self.max_files} in one "
                              "DICOM upload (MEDIR_UI__DICOM_MAX_FILES)")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                infos = zf.infolist()
                members = [i for i in infos if _member_kind(name, i) == "file"]
                declared = sum(i.file_size for i in members)
                self._take(name, len(members), declared)
                for info in members:
                    suffix = info.filename.lower().endswith(".dcm")
                    self._member(name, zf, info, self.budget.next_path(self.dest, suffix))
        except _ZIP_ERRORS as exc:
            raise UploadError(f"{name}: not a readable zip archive "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
        if not members:
            raise UploadError(f"{name}: the archive holds no files")

    def _member(self, name: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
        """Inflate one member in bounded steps: never more than it declared (its share of the
        budget, taken before extracting)."""
        shown = _shown(info.filename)
        with zf.open(info) as src:
            def chunks() -> Iterator[bytes]:
                got = 0
                while chunk := src.read(CHUNK):
                    if got == 0 and chunk.startswith(_ZIP_MAGIC):
                        raise UploadError(f"{name}: member {shown} is a zip inside the zip "
                                          "(nested archives are refused)")
                    got += len(chunk)
                    if got > info.file_size:
                        raise UploadError(f"{name}: member {shown} inflates beyond the "
                                          f"{info.file_size} bytes it declares")
                    yield chunk
            self._write(name, path, chunks())

    def _write(self, name: str, path: Path, chunks: Iterator[bytes] | list[bytes]) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
        except OSError as exc:  # a full disk, the folder swept away meanwhile
            raise UploadError(f"{name}: cannot save the upload ({exc.strerror or exc})") from None


def central_directory(name: str, data: bytes) -> tuple[int, int]:
    """(entries, bytes) of a zip's central directory, from its end record (ZIP64 aware): read
    before :mod:`zipfile` parses the whole directory into memory."""
    at = data.rfind(_EOCD, max(0, len(data) - 22 - 0xFFFF))
    if at < 0 or len(data) - at < 22:
        raise UploadError(f"{name}: not a zip archive (no end of central directory record)")
    entries, size = struct.unpack("<HL", data[at + 10:at + 16])
    if entries == 0xFFFF or size == 0xFFFFFFFF:  # ZIP64: the real values are further back
        loc = at - 20
        if loc < 0 or data[loc:loc + 4] != _LOCATOR64:
            raise UploadError(f"{name}: not a readable zip archive (broken ZIP64 end record)")
        (offset,) = struct.unpack("<Q", data[loc + 8:loc + 16])
        record = data[offset:offset + 56]
        if len(record) < 56 or record[:4] != _EOCD64:
            raise UploadError(f"{name}: not a readable zip archive (broken ZIP64 end record)")
        entries, size = struct.unpack("<QQ", record[32:48])
    return int(entries), int(size)


def _member_kind(name: str, info: zipfile.ZipInfo) -> str:
    """``file`` (to extract) or ``skip``; a member that makes the archive unsafe raises."""
    member = info.filename
    shown = _shown(member)
    parts = re.split(r"[\\/]", member)
    if member.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", member) or ".." in parts:
        raise UploadError(f"{name}: member {shown} has a path outside the archive (refused)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"{name}: member {shown} is a symbolic link (refused)")
    if info.is_dir() or stat.S_ISDIR(mode):
        return "skip"
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise UploadError(f"{name}: member {shown} is not a regular file (refused)")
    if parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        return "skip"  # macOS resource forks
    if info.flag_bits & 0x1:
        raise UploadError(f"{name}: member {shown} is encrypted")
    if member.lower().endswith(".zip"):
        raise UploadError(f"{name}: member {shown} is a zip inside the zip (nested archives "
                          "are refused)")
    if info.compress_type not in _COMPRESSIONS:
        raise UploadError(f"{name}: member {shown} uses compression method "
                          f"{info.compress_type}; only stored and deflate are read")
    return "file"


def _shown(text: str) -> str:
    """An archive member's name for a message (quoted, control characters visible, cut)."""
    return repr(text[:200])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def upload_label(names: Sequence[str]) -> str:
    """How messages name a DICOM upload: its file, or the first files and a count."""
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:3])
    return f"{shown} and {len(names) - 3} more" if len(names) > 3 else shown


def write_dicom_upload(uploads: Sequence[tuple[str, bytes]], dest: Path, s: Settings) -> int:
    """Write the files of a DICOM upload (zips extracted) flat into ``dest``, which must exist;
    returns the number of files written. Raises :class:`UploadError`."""
    writer = _Writer(dest, s)
    for name, data in uploads:
        writer.add(name, data)
    return len(writer.budget.written)


def _contents_digest(folder: Path) -> str:
    """sha256 over the sorted sha256 of each file of ``folder``: the same files, whatever
    their order or names, the same value."""
    total = hashlib.sha256()
    digests = []
    for path in folder.iterdir():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        digests.append(h.hexdigest())
    for d in sorted(digests):
        total.update(d.encode())
    return total.hexdigest()


def _reason(exc: MedirError, folder: Path, label: str) -> str:
    """A reader's message about the extracted folder, naming the upload instead."""
    text = str(getattr(exc, "reason", exc))
    return f"{label}: {text.replace(str(folder), label)}"


# ---- queries (Search page) ---------------------------------------------------------------------
@dataclass(frozen=True)
class DicomQuery:
    """A DICOM upload ready to query: the folder of its one (largest) series and what it held."""

    folder: Path
    n_series: int  # image series in the upload; the largest is the query
    n_images: int  # slices of the chosen series
    description: str  # its modality, body part and slices (no identifiers)
    left_out: dict[str, int]  # files or series left out, by kind


@contextmanager
def query_dicom_upload(uploads: Sequence[tuple[str, bytes]], s: Settings, session: str
                       ) -> Iterator[DicomQuery]:
    """A DICOM query upload in the browser session's private folder (:mod:`ui.uploads`' rules)
    for the duration of the ``with`` block, then deleted: the files are written, grouped into
    series by the CLI's reader, every series but the largest removed, and the rest opened as the
    CLI opens a query folder (declared size and geometry checked). Raises
    :class:`UploadError` with a one-line reason; nothing is left behind."""
    label = upload_label([n for n, _ in uploads]) or "upload"
    base, session_dir = query_session_folder(s, session)
    folder = session_dir / f"dicom-{secrets.token_hex(6)}"
    try:
        folder.mkdir(mode=0o700)
    except OSError as exc:
        raise UploadError(f"cannot create the query upload folder {folder} ({exc})") from None
    try:
        query = _prepare_query(uploads, folder, s, label)
        yield query
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            session_dir.rmdir()  # only when empty
        except OSError:
            pass


def _prepare_query(uploads: Sequence[tuple[str, bytes]], folder: Path, s: Settings,
                   label: str) -> DicomQuery:
    write_dicom_upload(uploads, folder, s)
    try:
        series, skipped = backend.dicom_query_series(folder, s)
    except MedirError as exc:
        raise UploadError(_reason(exc, folder, label)) from None
    left: dict[str, int] = {}
    for sk in skipped:
        left[sk.kind] = left.get(sk.kind, 0) + 1
    if not series:
        why = "; ".join(sorted({f"{k.kind}: {k.reason}" for k in skipped}))[:300]
        raise UploadError(f"{label}: no DICOM image series in the upload"
                          f"{' (skipped ' + why.replace(str(folder), label) + ')' if why else ''}")
    chosen = max(series, key=lambda x: (x.n_slices, len(x.files), x.series_uid))
    keep = {Path(f).name for f in chosen.files}
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink()
    try:
        n_images = backend.check_dicom_query(folder, s)
    except MedirError as exc:
        raise UploadError(_reason(exc, folder, label)) from None
    meta = chosen.meta
    what = " · ".join(v for v in (meta.get("Modality", ""), meta.get("BodyPartExamined", ""))
                      if v) or "DICOM"
    return DicomQuery(folder, len(series), n_images, f"{what} · {n_images} slices", left)


# ---- ingest (Ingest page) ----------------------------------------------------------------------
@dataclass
class DicomIngest:
    """A DICOM upload saved for ingest: its series (as the CLI's walker finds them) and what
    was left out, by kind."""

    folder: Path
    sources: list[backend.VolumeSource]
    left_out: dict[str, int]


def save_dicom_upload(uploads: Sequence[tuple[str, bytes]], s: Settings) -> DicomIngest:
    """Save a DICOM upload for ingest under ``<data_dir>/uploads/dicom-<sha256[:12]>/`` (the
    hash of the extracted files' contents: the same files again, zipped in any order, are the
    same folder) and walk it as ``medir ingest`` walks a folder: each image series is one
    volume, its id the SeriesInstanceUID. Raises :class:`UploadError`; a refused upload leaves
    nothing."""
    label = upload_label([n for n, _ in uploads]) or "upload"
    root = upload_dir(s.data_dir)
    tmp = root / f".dicom-{secrets.token_hex(8)}.part"
    try:
        tmp.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise UploadError(f"{label}: cannot save the upload ({exc.strerror or exc})") from None
    try:
        write_dicom_upload(uploads, tmp, s)
        folder = root / f"dicom-{_contents_digest(tmp)[:12]}"
        try:
            tmp.replace(folder)
        except OSError:
            if not folder.is_dir():  # else: the same files, saved before (or meanwhile)
                raise
    except OSError as exc:
        raise UploadError(f"{label}: cannot save the upload ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # refused, or the same files saved before
    scan = backend.scan_upload_folder(folder)
    if not scan.sources:
        why = "; ".join(sorted({f"{k.kind}: {k.reason}" for k in scan.skipped}))[:300]
        shutil.rmtree(folder, ignore_errors=True)
        raise UploadError(f"{label}: no DICOM image series in the upload"
                          f"{' (skipped ' + why.replace(str(folder), label) + ')' if why else ''}")
    return DicomIngest(folder, scan.sources, scan.skipped_by_kind())
