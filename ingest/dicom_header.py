"""One DICOM header, read within bounds: the hostile-input protections of the DICOM reader.

A header is read with pydicom, its reads counted (:data:`MAX_HEADER_READS`: parsing amplifies
tiny sequence items into large Python objects); a Deflated Explicit VR Little Endian data set
is inflated as a bounded stream (:class:`_BoundedInflate`), never whole: at most
:data:`HEADER_MAX_BYTES` before the pixel data while scanning, and the header plus the declared
pixel bytes when decoding. Also here: what a header declares of its pixels
(:func:`declared_shape`, :func:`declared_itemsize`), which the scan, the series and the decoder
all check against the limits, and the one-line reason of an exception shown to users.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medir.errors import VolumeError, exception_line

# What pydicom raises on hostile header values (bad VRs, numbers that are not numbers, ...).
HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)

# Hostile-file bounds (see docs/dicom.md, "Hostile files").
#: Inflated bytes a deflated data set may hold before its pixel data (its header). Enhanced
#: multi-frame headers with per-frame functional groups for thousands of frames are a few MB.
HEADER_MAX_BYTES = 64 << 20
#: While scanning, values longer than this are not read (pydicom ``defer_size``); grouping needs
#: none of them (UIDs, Rows/Columns, positions and orientations are short).
DEFER_BYTES = 256 << 10
#: Reads pydicom may make to parse one header (about two per element or sequence item): bounds
#: the Python objects a small file of tiny sequence items makes (each costs about 300 bytes and
#: 15 us; a 5,000-frame enhanced MR header needs under a million).
MAX_HEADER_READS = 1 << 20
_INFLATE_CHUNK = 1 << 20  # bytes inflated per step
_INFLATE_KEEP = 1 << 20  # inflated bytes kept behind the read position (pydicom seeks back a few)
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # (Double)Float/PixelData


_READ_ERRORS = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError,
                AttributeError, OverflowError, IndexError)


def read_header(path: Path, pixels: bool = False, max_inflated: int = HEADER_MAX_BYTES,
                why: str = "", max_reads: int | None = None) -> Dataset:
    """A DICOM header (Part 10, or a bare data set without preamble that names its SOP class).

    Without ``pixels``: stops before the pixel data and leaves values over
    :data:`DEFER_BYTES` unread. A deflated data set is inflated as a bounded stream: more than
    ``max_inflated`` bytes (before the pixel data, or in all with ``pixels``) is refused, with
    ``why`` (what the bound comes from) in the message. Parsing may take ``max_reads`` reads
    (None: :data:`MAX_HEADER_READS`, looked up at each call)."""
    reads = MAX_HEADER_READS if max_reads is None else max_reads
    try:
        deflated = _deflated_start(path)
    except _READ_ERRORS:
        deflated = None  # not a Part 10 file meta: the reads below say what it is
    ds: Dataset
    if deflated is not None:
        try:
            ds = _read_deflated(path, *deflated, pixels, max_inflated, why, reads)
        except _READ_ERRORS as exc:
            raise VolumeError(path, f"not a readable DICOM file ({exception_line(exc)})") from None
        if "SOPClassUID" not in ds:
            raise VolumeError(path, "not a DICOM object (no SOP Class UID)")
        return ds
    try:
        ds = _dcmread(path, pixels, False, reads)
        if "SOPClassUID" not in ds:
            raise VolumeError(path, "not a DICOM object (no SOP Class UID)")
        return ds
    except InvalidDicomError:
        pass
    except _READ_ERRORS as exc:
        raise VolumeError(path, f"not a readable DICOM file ({exception_line(exc)})") from None
    try:  # old files without the 128-byte preamble and "DICM"
        ds = _dcmread(path, pixels, True, reads)
        if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
            return ds
    except _READ_ERRORS:
        pass
    raise VolumeError(path, "not a DICOM file (no DICM header and no SOP Class UID)")


def _dcmread(path: Path, pixels: bool, force: bool, max_reads: int) -> Dataset:
    """pydicom's read of a file (not deflated), its reads counted (at most ``max_reads``);
    without ``pixels`` it stops before them and defers long values (read from the file if
    ever used)."""
    with _CountedFile(path, max_reads) as fh:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=not pixels, force=force,
                                   defer_size=None if pixels else DEFER_BYTES)
        except Exception:
            if fh.refused is not None:  # pydicom rewraps some read errors as OSError
                raise fh.refused from None
            raise


def _too_many_reads(name: str, max_reads: int) -> VolumeError:
    return VolumeError(name, f"the header needs more than {max_reads} reads to parse "
                             "(elements and sequence items); refused")


class _CountedFile(io.BufferedReader):
    """A file whose reads are counted: one header may take ``max_reads``."""

    def __init__(self, path: Path, max_reads: int) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self.reads = 0
        self.max_reads = max_reads
        self.refused: VolumeError | None = None

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > self.max_reads:
            self.refused = _too_many_reads(str(self.name), self.max_reads)
            raise self.refused
        return super().read(size)


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _deflated_start(path: Path) -> tuple[bytes | None, FileMetaDataset, int] | None:
    """(preamble, file meta, offset of the data set) of a file whose transfer syntax is
    Deflated Explicit VR Little Endian, read the way pydicom reads them; None for any other
    file (pydicom inflates a deflated data set whole, unbounded, so medir does it)."""
    with open(path, "rb") as fh:
        preamble = read_preamble(fh, True)
        meta = FileMetaDataset(read_dataset(fh, is_implicit_VR=False, is_little_endian=True,
                                            stop_when=_not_file_meta))
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        return preamble, meta, fh.tell()


def _read_deflated(path: Path, preamble: bytes | None, meta: FileMetaDataset, offset: int,
                   pixels: bool, max_inflated: int, why: str, max_reads: int) -> FileDataset:
    """The deflated data set of ``path`` (from ``offset``), inflated through a bounded stream;
    its file meta says Explicit VR Little Endian, the encoding of the inflated data set (so
    the pixels decode as native ones)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        stream = _BoundedInflate(fh, path, max_inflated,
                                 why or ("" if pixels else " before its pixel data"), max_reads)
        try:
            dataset = read_dataset(cast(BinaryIO, stream), is_implicit_VR=False,
                                   is_little_endian=True,
                                   stop_when=None if pixels else _at_pixels,
                                   defer_size=None if pixels else DEFER_BYTES)
        except Exception:
            if stream.refused is not None:  # pydicom rewraps some read errors as OSError
                raise stream.refused from None
            raise
        if stream.refused is not None:
            raise stream.refused
    inflated_meta = FileMetaDataset(meta)
    inflated_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = FileDataset(str(path), dataset, preamble, inflated_meta, is_implicit_VR=False,
                     is_little_endian=True)
    ds.set_original_encoding(False, True, dataset.original_character_set)
    return ds


class _BoundedInflate:
    """A read-only file object over a raw deflate stream that never inflates more than
    ``limit`` bytes and keeps only a window of them: a read or seek past the limit raises
    (and records) one :class:`VolumeError` naming the file, without inflating further; more
    than ``max_reads`` reads are refused the same way."""

    def __init__(self, raw: Any, path: Path, limit: int, where: str, max_reads: int) -> None:
        self._raw = raw
        self._dec = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._start = 0  # stream offset of _buf[0]
        self._pos = 0
        self._eof = False
        self.limit = limit
        self.name = str(path)
        self._where = where
        self.reads = 0
        self.max_reads = max_reads
        self.refused: VolumeError | None = None

    def _refuse(self) -> VolumeError:
        self.refused = VolumeError(self.name, f"deflated data set inflates to more than "
                                              f"{self.limit} bytes{self._where}; refused")
        return self.refused

    def _fill(self, upto: int) -> None:
        """Inflate until the stream holds ``upto`` bytes (or ends); drop what lies more than
        the kept window behind the read position."""
        while self._start + len(self._buf) < upto and not self._eof:
            data = self._dec.unconsumed_tail or self._raw.read(_INFLATE_CHUNK)
            out = self._dec.decompress(data, _INFLATE_CHUNK) if data else self._dec.flush()
            self._eof = not data or self._dec.eof
            drop = min(self._pos - _INFLATE_KEEP - self._start, len(self._buf))
            if drop > 0:
                del self._buf[:drop]
                self._start += drop
            self._buf += out
            if self._start + len(self._buf) > self.limit:
                raise self._refuse()

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > self.max_reads:
            self.refused = _too_many_reads(self.name, self.max_reads)
            raise self.refused
        if size is None or size < 0:
            size = self.limit + 1 - self._pos
        if self._pos + size > self.limit:
            raise self._refuse()
        self._fill(self._pos + size)
        if self._pos < self._start:
            raise OSError("deflated stream: cannot seek that far back")
        i = self._pos - self._start
        with memoryview(self._buf) as view:
            out = bytes(view[i:i + size])
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset + (self._pos if whence == 1 else 0)
        if whence not in (0, 1) or target < self._start:
            raise OSError("deflated stream: cannot seek that far back")
        self._pos = target
        return target

    def tell(self) -> int:
        return self._pos


def declared_itemsize(ds: Dataset) -> int:
    """Bytes of one decoded stored sample (BitsAllocated 1 to 64, rounded up to whole bytes)."""
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if not 1 <= bits <= 64:
        raise ValueError(f"BitsAllocated {bits}")
    return (bits + 7) // 8


def declared_shape(ds: Dataset) -> tuple[int, int, int]:
    """(Rows, Columns, NumberOfFrames) as the header declares them."""
    return (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
            int(ds.get("NumberOfFrames", 1) or 1))


__all__ = [
    "DEFER_BYTES",
    "HEADER_ERRORS",
    "HEADER_MAX_BYTES",
    "MAX_HEADER_READS",
    "declared_itemsize",
    "declared_shape",
    "read_header",
]
