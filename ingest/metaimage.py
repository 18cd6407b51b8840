"""MetaImage (``.mha``, ``.mhd`` + raw data) read with SimpleITK into canonical RAS volumes.

ITK's physical space is LPS; the affine is converted to RAS, so a MetaImage and the NIfTI of
the same data give the same canonical volume. The header is read first
(``ReadImageInformation``); pixels are read on :meth:`VolumeFile.read`.

A MetaImage header, ``.mha`` as well as ``.mhd``, may name its data file (``ElementDataFile``),
and ITK opens whatever it names. So before SimpleITK opens anything the header is parsed here
with the rules of ITK's own parser (MetaIO's ``MET_Read``; tests/test_hostile_files.py checks
the two agree, by experiment): a field name ends at the first ``=`` or ``:`` (both separate), the
value starts after every ``=``, ``:``, space and tab that follow, a field read again replaces
its value, and reading stops at the FIRST ``ElementDataFile``. Where MetaIO would read a header
otherwise than line by line (a name cut at a lone carriage return, a separator or a number
looked for on the next line, control characters, lines past its 500-byte buffers) the header is
refused, so the file checked here is the file ITK opens. That file must be the header itself
(``LOCAL``) or one file inside the header's folder, after symlinks, and so must MetaIO's
``.gz``/``.Z`` fallbacks; lists and file-name patterns are refused.

Sizes: the dimensions and pixel type ITK will allocate are checked against the limits before a
pixel is read; compressed data must declare ``CompressedDataSize`` within the file and inflate,
bounded, to exactly the declared bytes (ITK 5.4 leaves uninitialised memory in the image when the
stream is short, and allocates whatever ``CompressedDataSize`` says).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.digest import files_sha256
from ingest.limits import Limits, check_declared_size, check_stream
from medir.errors import VolumeError

MAX_HEADER_BYTES = 64 * 1024
MAX_LINE = 400  # MetaIO reads names and values into 500-byte buffers
LOCAL_NAMES = frozenset({"Local", "LOCAL", "local"})  # the three MetaImage::Read compares
FALLBACK_SUFFIXES = ("", ".gz", ".Z")  # MetaImage::Read opens the first that opens
# MetaIO's array fields (metaObject.cxx, metaImage.cxx): ``>>`` reads this many numbers and, if
# the line holds fewer, goes on reading on the next lines. Length: "n" = NDims, "nn" = NDims².
_ARRAYS = {
    "Color": "4", "Position": "n", "Origin": "n", "Offset": "n", "CenterOfRotation": "n",
    "ElementSpacing": "n", "DimSize": "n", "ImagePosition": "n", "ElementOrigin": "n",
    "SequenceID": "n", "ElementSize": "n", "TransformMatrix": "nn", "Rotation": "nn",
    "Orientation": "nn", "ElementDirection": "nn",
}
_NUMBERS = {"FileFormatVersion", "NDims", "ID", "ParentID", "CompressedDataSize", "HeaderSize",
            "ElementMin", "ElementMax", "ElementNumberOfChannels", "ElementNBits",
            "ElementToIntensityFunctionSlope", "ElementToIntensityFunctionOffset"}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TEXT = bytes(range(0x20, 0x7F)) + b"\t"


@dataclass(frozen=True)
class DataSource:
    """Where ITK will read the element data: the header (LOCAL) or one checked file."""

    path: Path  # resolved
    offset: int  # first byte of the element data in ``path``
    local: bool
    compressed: bool


@dataclass(frozen=True)
class MetaHeader:
    """A MetaImage header as MetaIO reads it: each field's last value up to the first
    ``ElementDataFile``, and the checked data source."""

    fields: dict[str, str]
    source: DataSource


def parse_header(path: Path) -> MetaHeader:
    """The header of ``path``, parsed as MetaIO parses it, with its data file checked."""
    fields, end = _read_fields(path)
    return MetaHeader(fields, _data_source(path, fields, end))


def _read_fields(path: Path) -> tuple[dict[str, str], int]:
    """The fields up to ``ElementDataFile`` and the offset just after its line."""
    with open(path, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    fields: dict[str, str] = {}
    pos, number = 0, 0
    while True:
        nl = head.find(b"\n", pos)
        if nl < 0:
            raise VolumeError(path, f"MetaImage header without ElementDataFile in its first "
                                    f"{min(len(head), MAX_HEADER_BYTES)} bytes")
        number += 1
        line = head[pos:nl].removesuffix(b"\r")
        pos = nl + 1
        key, value = _field(path, number, line)
        if key is None:
            continue
        _check_numbers(path, number, key, value, fields)
        fields[key] = value
        if key == "ElementDataFile":
            return fields, pos


def _field(path: Path, number: int, line: bytes) -> tuple[str | None, str]:
    """(name, value) of one header line as MetaIO splits it; (None, "") for a blank line.
    Lines MetaIO would not read on their own are refused."""
    def refuse(why: str) -> VolumeError:
        return VolumeError(path, f"MetaImage header line {number} {why}; refusing a header "
                                 "ITK's parser may read differently")

    if len(line) > MAX_LINE:
        raise refuse(f"is longer than {MAX_LINE} bytes")
    if line.translate(None, _TEXT):
        raise refuse("holds a control or non-ASCII character")
    text = line.decode("ascii")
    if not text.strip(" \t"):
        return None, ""
    cuts = [i for i in (text.find("="), text.find(":")) if i >= 0]
    if not cuts:
        raise refuse("has no '=' or ':'")
    key = text[:min(cuts)].strip(" \t")
    value = text[min(cuts):].lstrip("=: \t").rstrip(" \t")
    if not value:
        raise refuse(f"gives {key or 'a field'} no value")
    return key, value


def _check_numbers(path: Path, number: int, key: str, value: str,
                   fields: dict[str, str]) -> None:
    """A numeric field's numbers must all be on its line (MetaIO's ``>>`` reads on into the
    next lines, hiding them from its parser but not from a line reader)."""
    if key not in _ARRAYS and key not in _NUMBERS:
        return
    want = 1
    if key in _ARRAYS:
        kind = _ARRAYS[key]
        ndims = fields.get("NDims", "")
        if kind != "4" and not _NUMBER.fullmatch(ndims):
            raise VolumeError(path, f"MetaImage header line {number}: {key} before NDims")
        n = int(float(ndims)) if kind != "4" else 2
        if not 1 <= n <= 16:
            raise VolumeError(path, f"MetaImage header: NDims {ndims} out of range")
        want = {"4": 4, "n": n, "nn": n * n}[kind]
    tokens = value.split()
    if len(tokens) < want or not all(_NUMBER.fullmatch(t) for t in tokens[:want]):
        raise VolumeError(path, f"MetaImage header line {number}: {key} needs {want} "
                                f"number(s) on its line, it has {value[:40]!r}")


def _data_source(path: Path, fields: dict[str, str], end: int) -> DataSource:
    """Where ITK reads the data from, checked: LOCAL, or one file in the header's folder."""
    name = fields["ElementDataFile"]
    compressed = fields.get("CompressedData", "F")[0] in "Tt1"
    header_size = _int_field(path, fields, "HeaderSize", 0)
    if name in LOCAL_NAMES:
        offset = header_size if header_size > 0 else end
        return DataSource(path.resolve(), offset, True, compressed)

    def refuse(why: str) -> VolumeError:
        return VolumeError(path, f"unsafe path: ElementDataFile {name!r} {why}")

    if name.startswith("LIST") or "%" in name:
        raise refuse("is a list or a file pattern (not read)")
    if name[0] in "/~":  # MetaImage::FileIsFullPath: used as it is, not in the folder
        raise refuse("is an absolute path; it must be a file next to the header")
    if "\\" in name or ".." in name.split("/"):
        raise refuse("leaves the header's folder")
    # MetaImage::Read: the header's path up to its last '/' or '\', then the name
    header = str(path)
    cut = max(header.rfind("/"), header.rfind("\\"))
    fname = header[:cut + 1] + name
    folder = os.path.realpath(os.path.dirname(header) or ".")
    chosen: str | None = None
    for suffix in FALLBACK_SUFFIXES:
        candidate = fname + suffix
        if not os.path.lexists(candidate):
            continue
        real = os.path.realpath(candidate)
        if os.path.dirname(real) != folder and not real.startswith(folder + os.sep):
            raise refuse(f"leads out of {os.path.dirname(header) or '.'}")
        if chosen is None and os.path.exists(candidate):
            chosen = candidate
            compressed = compressed or bool(suffix)
    if chosen is None:
        raise VolumeError(path, f"data file {name!r} is missing")
    target = Path(os.path.realpath(chosen))
    if not stat.S_ISREG(target.stat().st_mode):
        raise VolumeError(path, f"data file {name!r} is not a regular file")
    return DataSource(target, max(header_size, 0), False, compressed)


def _int_field(path: Path, fields: dict[str, str], key: str, default: int) -> int:
    raw = fields.get(key)
    if raw is None:
        return default
    try:
        return int(float(raw.split()[0]))
    except (ValueError, OverflowError):
        raise VolumeError(path, f"MetaImage {key} {raw!r} is not a number") from None


def check_compressed(path: Path, header: MetaHeader, nbytes: int) -> None:
    """Compressed element data: ``CompressedDataSize`` present and within the file, and the
    stream inflating (bounded) to exactly the ``nbytes`` the dimensions declare."""
    src = header.source
    declared = _int_field(path, header.fields, "CompressedDataSize", 0)
    if declared <= 0:
        raise VolumeError(path, "compressed MetaImage data without CompressedDataSize")
    avail = src.path.stat().st_size - src.offset
    if declared > avail:
        raise VolumeError(path, f"truncated: CompressedDataSize declares {declared} bytes, "
                                f"{src.path.name} holds {max(avail, 0)} after the header")
    with open(src.path, "rb") as fh:
        fh.seek(src.offset)
        check_stream(path, _Window(fh, declared), nbytes, "zlib")


class _Window:
    """The next ``size`` bytes of a file, as a readable object."""

    def __init__(self, fh: object, size: int) -> None:
        self.fh, self.left = fh, size

    def read(self, n: int) -> bytes:
        data: bytes = self.fh.read(min(n, self.left))  # type: ignore[attr-defined]
        self.left -= len(data)
        return data


class _SitkPixels:
    """Array proxy: ``proxy[...]`` reads the pixels as an (x, y, z) array."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getitem__(self, index: object) -> np.ndarray:
        import SimpleITK as sitk

        try:
            img = sitk.ReadImage(str(self.path))
        except RuntimeError as exc:
            raise VolumeError(self.path, f"unreadable MetaImage data ({_first_line(exc)})") \
                from None
        arr = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
        return np.asarray(arr[index])  # type: ignore[call-overload]


def _itemsize(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type (from the library, not a table)."""
    import SimpleITK as sitk

    return int(sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype.itemsize)


def read_metaimage_header(p: Path, limits: Limits | None = None
                          ) -> tuple[str, tuple[int, ...], np.ndarray, _SitkPixels]:
    """The content hash, size, RAS affine and lazy pixel reader of a MetaImage file (the
    header only is read here; :func:`ingest.reader.open_volume` makes the VolumeFile).
    ``limits``: what the header may declare (None: the defaults)."""
    import SimpleITK as sitk

    header = parse_header(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.SetImageIO("MetaImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise VolumeError(p, f"not a readable MetaImage file ({_first_line(exc)})") from None
    dim = reader.GetDimension()
    if dim != 3:
        raise VolumeError(p, f"{dim}D MetaImage; only 3D volumes are read")
    if reader.GetNumberOfComponents() != 1:
        raise VolumeError(p, f"{reader.GetNumberOfComponents()} components per voxel; only "
                             "scalar volumes are read")
    size = tuple(int(s) for s in reader.GetSize())
    if min(size) <= 0:
        raise VolumeError(p, f"an axis has length zero (size {size})")
    nbytes = check_declared_size(p, size, _itemsize(reader.GetPixelID()), limits)
    if header.source.compressed:
        check_compressed(p, header, nbytes)
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.asarray(reader.GetOrigin(), dtype=np.float64)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        raise VolumeError(p, f"non-positive or non-finite spacing {tuple(spacing)}")
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(p, "degenerate orientation (TransformMatrix)")
    files = [p] if header.source.local else [p, header.source.path]
    return files_sha256(files), size, affine, _SitkPixels(p)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with the source location; the reason is the last line
    return (lines[-1] if lines else type(exc).__name__)[:200]
