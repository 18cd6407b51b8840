"""Hostile DICOM (issue 21, items 4 and 5): deflate bombs, headers kept while walking a folder,
series and files that declare more voxels than the limits. The hostile files are written in code
(pydicom for the data sets, zlib streaming for the bombs, so the test never holds the inflated
bytes); memory is measured with tracemalloc. Each test fails on the code before the fix."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from ingest import dicom
from ingest.collection import scan_paths
from ingest.reader import Limits
from medir.config import LimitsSettings
from medir.errors import VolumeError
from tests.dicom_fixtures import sr_dataset, volume_to_datasets, write_series

T = TypeVar("T")
MIB = 1 << 20
BOMB = 96 * MIB  # inflated size of each bomb; each file is about 100 KB on disk


def _peak(fn: Callable[[], T]) -> tuple[T | BaseException, int]:
    """``fn()``'s result (or the exception it raised) and the peak traced Python memory."""
    tracemalloc.start()
    try:
        try:
            out: T | BaseException = fn()
        except Exception as exc:  # the refusal is part of what is measured
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _encode(ds: Dataset) -> bytes:
    """A data set's elements in Explicit VR Little Endian (what a deflated file deflates)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _zeros(n: int) -> Iterator[bytes]:
    chunk = b"\0" * MIB
    for _ in range(n // MIB):
        yield chunk
    yield b"\0" * (n % MIB)


def _deflated_file(path: Path, ds: Dataset, bomb: int = 0, in_pixels: bool = False,
                   tail: bytes = b"") -> Path:
    """A Part 10 file in the Deflated Explicit VR Little Endian transfer syntax.

    ``bomb`` zero bytes are added, compressed as a stream: as a private OB element before the
    pixel data (``in_pixels`` False), or as the PixelData value itself (in place of the pixels
    the header declares). ``tail``: encoded elements added after the data set's own."""
    pixels = ds.get("PixelData")
    body = ds.copy()
    if "PixelData" in body:
        del body.PixelData
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(_encode(body) + tail)]
    if bomb:
        tag, vr = ((0x7FE0, 0x0010), b"OW") if in_pixels else ((0x7001, 0x1010), b"OB")
        parts.append(comp.compress(struct.pack("<HH2sHI", *tag, vr, 0, bomb)))
        parts.extend(comp.compress(z) for z in _zeros(bomb))
    if pixels is not None and not (bomb and in_pixels):
        parts.append(comp.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0,
                                               len(pixels)) + pixels))
    parts.append(comp.flush())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + b"".join(parts))
    return path


def _ct(shape: tuple[int, int, int] = (16, 16, 1), seed: int = 0) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1000, size=shape).astype(np.float64)
    return volume_to_datasets(data, np.diag([0.7, 0.7, 2.0, 1.0]), "CT")


# ---- 4. deflate bombs --------------------------------------------------------------------------
def test_deflate_bombs_are_refused_without_inflating_them(tmp_path: Path) -> None:
    """Three ~100 KB deflated files that inflate to 96 MiB each (an SR and a CT slice with a huge
    private element, a CT slice whose pixel data is the bomb): the scan and the read refuse them
    with one line each, and memory stays far below one bomb."""
    sr = _deflated_file(tmp_path / "sr.dcm", sr_dataset(generate_uid()), BOMB)
    ct_private = _deflated_file(tmp_path / "ct_private.dcm", _ct(seed=1)[0], BOMB)
    ct_pixels = _deflated_file(tmp_path / "ct_pixels.dcm", _ct(seed=2)[0], BOMB, in_pixels=True)
    assert max(p.stat().st_size for p in (sr, ct_private, ct_pixels)) < MIB

    scanned, peak = _peak(lambda: dicom.scan_dicom([sr, ct_private, ct_pixels]))
    assert not isinstance(scanned, BaseException), scanned
    series, skipped = scanned
    assert peak < 16 * MIB, f"scanning three bombs traced {peak / MIB:.0f} MiB"
    why = {Path(s.path).name: (s.kind, s.reason) for s in skipped}
    for name in ("sr.dcm", "ct_private.dcm"):
        assert why[name][0] == dicom.BAD_FILE
        assert "deflated" in why[name][1] and "more than" in why[name][1]
    # the pixel bomb has a sane header: it becomes a series, and its read is refused
    assert [s.files for s in series] == [[ct_pixels]]
    vf = series[0].open()
    err, peak = _peak(vf.read)
    assert isinstance(err, VolumeError), err
    assert err.path == str(ct_pixels) and "deflated" in err.reason and "512 bytes" in err.reason
    assert peak < 16 * MIB, f"reading the pixel bomb traced {peak / MIB:.0f} MiB"


def test_deflated_series_still_reads_like_the_uncompressed_one(tmp_path: Path) -> None:
    dss = _ct((12, 10, 5), seed=3)
    plain = write_series(dss, tmp_path / "plain")
    (tmp_path / "deflated").mkdir()
    deflated = [_deflated_file(tmp_path / "deflated" / p.name, pydicom.dcmread(p))
                for p in plain]
    assert pydicom.dcmread(deflated[0]).file_meta.TransferSyntaxUID == \
        DeflatedExplicitVRLittleEndian
    a, skipped_a = dicom.scan_dicom(plain)
    b, skipped_b = dicom.scan_dicom(deflated)
    assert skipped_a == skipped_b == [] and len(a) == len(b) == 1
    np.testing.assert_array_equal(a[0].open().read().data, b[0].open().read().data)


def _item_bomb(path: Path, items: int, deflated: bool) -> Path:
    """An SR whose private sequence of undefined length holds ``items`` empty items (16 bytes
    each, a Python data set of ~650 bytes each once parsed), plain or deflated."""
    ds = sr_dataset(generate_uid())
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq = (struct.pack("<HH2sHI", 0x7001, 0x1010, b"SQ", 0, 0xFFFFFFFF) + item * items
           + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    if deflated:
        return _deflated_file(path, ds, tail=seq)
    ds.save_as(str(path), enforce_file_format=True)
    with open(path, "ab") as fh:
        fh.write(seq)
    return path


@pytest.mark.parametrize("deflated", [False, True])
def test_a_header_of_countless_tiny_items_is_refused(tmp_path: Path, deflated: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsing amplifies: 16 bytes of sequence item become a ~650-byte data set. The number of
    reads a header may take is bounded (lowered here so that the test is quick)."""
    p = _item_bomb(tmp_path / "items.dcm", 20_000, deflated)
    monkeypatch.setattr(dicom, "MAX_HEADER_READS", 10_000)
    series, skipped = dicom.scan_dicom([p])
    assert series == [] and [s.kind for s in skipped] == [dicom.BAD_FILE]
    assert skipped[0].path == str(p) and "more than 10000 reads" in skipped[0].reason
    monkeypatch.setattr(dicom, "MAX_HEADER_READS", 100_000)
    series, skipped = dicom.scan_dicom([p])  # within the bound it is read (an SR: skipped)
    assert [s.kind for s in skipped] == [dicom.NON_IMAGE_DICOM]


def test_scan_keeps_no_headers_of_the_files_it_walks(tmp_path: Path) -> None:
    """Thirty files with a 1 MiB private element each: the scan holds one header at a time (and
    never loads large values), not every data set of the folder."""
    files = []
    study = generate_uid()
    for k in range(30):
        ds = sr_dataset(study) if k % 2 else _ct(seed=k)[0]
        ds.add_new(0x70011010, "OB", b"\1" * MIB)
        p = tmp_path / f"f{k:02d}.dcm"
        ds.save_as(str(p), enforce_file_format=True)
        files.append(p)
    scanned, peak = _peak(lambda: dicom.scan_dicom(files))
    assert not isinstance(scanned, BaseException), scanned
    series, skipped = scanned
    assert len(skipped) == 15 and {s.kind for s in skipped} == {dicom.NON_IMAGE_DICOM}
    assert len(series) == 15  # one single-slice series per CT file
    assert peak < 8 * MIB, f"scanning 30 files traced {peak / MIB:.0f} MiB"


# ---- 5. limits apply to DICOM series -----------------------------------------------------------
def _rle_series(folder: Path, shape: tuple[int, int, int]) -> list[Path]:
    data = np.zeros(shape)
    data[shape[0] // 4: shape[0] // 2, shape[1] // 3: shape[1] // 2, :] = 300
    dss = volume_to_datasets(data, np.diag([0.7, 0.7, 2.0, 1.0]), "CT")
    for ds in dss:
        ds.compress(RLELossless)
    return write_series(dss, folder)


def test_rle_series_over_the_voxel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    files = _rle_series(tmp_path / "p001" / "rle", (256, 256, 20))  # 1.3 M voxels
    assert sum(p.stat().st_size for p in files) < 200_000
    limits = Limits.of(LimitsSettings(max_voxels=1_000_000))
    scan = scan_paths([tmp_path])
    assert len(scan.sources) == 1 and scan.skipped == []
    with pytest.raises(VolumeError) as info:
        scan.sources[0].open(limits)  # headers only: nothing decoded yet
    msg = str(info.value)
    assert str(tmp_path / "p001" / "rle") in msg and "\n" not in msg
    assert "256x256x20 = 1310720 voxels" in msg and "MEDIR_LIMITS__MAX_VOXELS" in msg
    # the byte limit too (int16: 2 bytes a voxel), and within the limits the series reads
    with pytest.raises(VolumeError, match="2621440 bytes of data, the limit is 1000000"):
        scan.sources[0].open(Limits.of(LimitsSettings(max_bytes=1_000_000)))
    assert scan.sources[0].open().read().data.shape == (20, 256, 256)


def _single_file(path: Path, rows: int, cols: int, frames: int = 1) -> Path:
    """One CT file declaring rows x cols x frames (a legacy multi-frame stack when frames > 1)
    with a few bytes of RLE pixel data: what a decoder would allocate comes from the header."""
    ds = _ct((2, 2, 1))[0]
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.GridFrameOffsetVector = [2.0 * k for k in range(frames)]
    ds.PixelData = encapsulate([struct.pack("<16I", 1, 64, *[0] * 14) + b"\0" * 8] * frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.mark.parametrize(("rows", "cols", "frames", "declared"), [
    (65535, 65535, 1, "65535x65535x1 = 4294836225 voxels"),
    (64, 64, 1000, "64x64x1000 = 4096000 voxels"),
])
def test_one_file_declaring_too_much_is_refused(tmp_path: Path, rows: int, cols: int,
                                                frames: int, declared: str) -> None:
    """A file's own Rows x Columns x NumberOfFrames against the limits: while scanning (before
    its frames are listed) and when a series is opened without a scan."""
    p = _single_file(tmp_path / "big.dcm", rows, cols, frames)
    limits = Limits.of(LimitsSettings(max_voxels=1_000_000))
    series, skipped = dicom.scan_dicom([p], limits)
    assert series == [] and [s.kind for s in skipped] == [dicom.TOO_LARGE]
    assert str(tmp_path) in skipped[0].path and declared in skipped[0].reason
    with pytest.raises(VolumeError) as info:
        dicom.DicomSeries("1.2.3", [p]).open(limits)
    assert str(p) in str(info.value) and declared in str(info.value)


def test_the_default_limits_apply_to_dicom_too(tmp_path: Path) -> None:
    """A scan without limits allows up to the absolute ceiling (the settings may raise the
    limits that far); opening the series applies the limits, the defaults when none are given."""
    series, skipped = dicom.scan_dicom([_single_file(tmp_path / "big.dcm", 65535, 65535)])
    assert skipped == [] and len(series) == 1
    with pytest.raises(VolumeError, match=f"4294836225 voxels per volume, the limit is {1 << 30}"):
        series[0].open()
    big = Limits.of(LimitsSettings(max_voxels=1 << 33, max_bytes=1 << 34))
    assert series[0].open(big).shape == (65535, 65535, 1)  # headers only: nothing decoded


def test_pydicoms_deflated_file_reads_as_pydicom_reads_it() -> None:
    """The bounded inflation gives the same data set and pixels as pydicom's own reader."""
    path = Path(str(get_testdata_file("image_dfl.dcm")))
    ref = pydicom.dcmread(path)
    assert ref.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    mine = dicom._read_header(path, pixels=True)
    assert set(mine.keys()) == set(ref.keys())
    assert all(mine[k].value == ref[k].value for k in ref.keys())
    np.testing.assert_array_equal(mine.pixel_array, ref.pixel_array)
    head = dicom._read_header(path)
    assert "PixelData" not in head and head.SOPInstanceUID == ref.SOPInstanceUID


def test_a_file_replaced_after_the_scan_is_checked_before_its_decode(tmp_path: Path) -> None:
    """The scan saw 16x16 slices; one file now declares 2048x2048: its decode is refused from
    its header (naming that file), before the decoder allocates anything."""
    files = _rle_series(tmp_path / "s", (16, 16, 4))
    series, _ = dicom.scan_dicom(files)
    vf = series[0].open()
    assert vf.read().data.shape == (4, 16, 16)  # (and the decoders are loaded)
    victim = files[1]
    ds = pydicom.dcmread(victim)
    big = volume_to_datasets(np.zeros((2048, 2048, 1)), np.eye(4))[0]
    big.compress(RLELossless)
    for key in ("Rows", "Columns", "PixelData"):
        setattr(ds, key, big[key].value)
    ds.save_as(str(victim), enforce_file_format=True)
    err, peak = _peak(vf.read)
    assert isinstance(err, VolumeError), err
    assert err.path == str(victim) and "2048x2048" in err.reason and "16x16" in err.reason
    assert peak < 4 * MIB, f"the refused decode traced {peak / MIB:.0f} MiB"


def test_in_memory_series_get_the_limits_too(tmp_path: Path) -> None:
    dss = _ct((64, 64, 10))
    series, _ = dicom.series_from_datasets(dss, label="http://pacs/series/x")
    with pytest.raises(VolumeError, match="64x64x10 = 40960 voxels"):
        series[0].open(Limits(max_voxels=10_000, max_bytes=1 << 30))
    assert series[0].open(Limits(max_voxels=40_960, max_bytes=1 << 30)).read().data.shape == \
        (10, 64, 64)


def test_explicit_little_endian_is_unchanged(tmp_path: Path) -> None:
    """The bounded reader is only for deflated files: a plain file still reads through dcmread."""
    p = write_series(_ct((8, 8, 3)), tmp_path / "x")
    assert pydicom.dcmread(p[0]).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    series, skipped = dicom.scan_dicom(p)
    assert skipped == [] and series[0].open().read().data.shape == (3, 8, 8)
