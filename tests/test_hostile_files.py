"""Hostile volume files and a full disk (issue 21, items 2, 5, 6 and 10).

Each test reproduces a hole first: a header field naming a file outside the header's folder
(MetaImage parsed the way ITK's MetaIO parses it, NRRD the way pynrrd does), a declared size
read before it was checked, a compressed stream that lies about its size, a 4D file declaring
millions of volumes, and an ingest onto a full disk (SIGBUS, no message).
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
from ingest.embedders import get_embedder
from ingest.metaimage import parse_header
from ingest.pipeline import ingest_paths
from ingest.reader import Limits, open_volume
from medir.config import Settings, StoreSettings, get_settings
from medir.errors import DiskFull, VolumeError
from runner.queue.submit import expand_files
from search.store import collection_name
from search.store_edge import EdgeStore
from tests.test_cli import medir

REPO = Path(__file__).resolve().parents[1]
HEAD = "ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
SECRET = b"MEDIR_PACS__PASSWORD=planted-secret\n"


def _err(path: Path, limits: Limits | None = None) -> str:
    """The one-line error of reading ``path`` (open and read, as ingest does)."""
    with pytest.raises(VolumeError) as info:
        open_volume(path, limits).read()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def _write(path: Path, header: str, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode("latin-1") + data)
    return path


def _planted(tmp_path: Path) -> Path:
    """A secret outside the header's folder, 8 bytes long (fits a 2x2x2 MET_UCHAR image)."""
    secret = tmp_path / "secret.env"
    secret.write_bytes(SECRET[:8])
    return secret


# ---- 2. MetaImage: ElementDataFile, parsed the way MetaIO parses it ---------------------------
@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_colon_separator_cannot_smuggle_a_data_file(tmp_path: Path, suffix: str) -> None:
    """MetaIO takes ``:`` as a separator and stops at the FIRST ElementDataFile: the harmless
    ``= LOCAL`` line after it is never read, and ITK reads the planted file."""
    secret = _planted(tmp_path)
    header = _write(tmp_path / "in" / f"evil{suffix}",
                    HEAD + f"ElementDataFile : {secret}\nElementDataFile = LOCAL\n", bytes(8))
    stolen = sitk.GetArrayFromImage(sitk.ReadImage(str(header))).tobytes()
    assert stolen == SECRET[:8]  # the attack is real: ITK itself reads the secret
    assert "absolute path" in _err(header)


@pytest.mark.parametrize("name", [
    "/proc/self/environ", "../secret.env", "~/secret.env", "in/../../secret.env", "link.raw",
    "LIST", "slice%03d.raw 1 2 1", "sub\\..\\x.raw",
])
@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_element_data_file_stays_in_the_header_folder(tmp_path: Path, name: str,
                                                      suffix: str) -> None:
    secret = _planted(tmp_path)
    inner = tmp_path / "in"
    inner.mkdir()
    (inner / "link.raw").symlink_to(secret)
    header = _write(inner / f"evil{suffix}", HEAD + f"ElementDataFile = {name}\n")
    msg = _err(header)
    assert "ElementDataFile" in msg


def test_mha_may_name_a_data_file_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "data.raw").write_bytes(bytes(range(8)))
    vol = open_volume(_write(tmp_path / "ok.mha", HEAD + "ElementDataFile = data.raw\n")).read()
    assert sorted(vol.data.ravel().tolist()) == list(range(8))


@pytest.mark.parametrize("lines", [
    "ElementDataFile\rX = ok.raw\nElementDataFile = LOCAL\n",  # MetaIO ends the name at \r
    "ElementDataFile\n= ok.raw\nElementDataFile = LOCAL\n",  # ... and looks for = across lines
    "ElementDataFile\v= ok.raw\nElementDataFile = LOCAL\n",  # ... and keeps \v in the name
    "Comment\nElementDataFile = LOCAL\n",  # a line without separator
    "ElementMin =\nElementDataFile = LOCAL\n",  # an empty value: >> reads the next line
    "Name = " + "x" * 600 + "\nElementDataFile = LOCAL\n",  # past MetaIO's 500-byte lines
    # too few numbers: >> reads the next line's start, which hides the rest of it from MetaIO
    "Offset = 1 1\nElementDataFile = LOCAL\nElementDataFile = ok.raw\n",
])
def test_header_lines_metaio_reads_differently_are_refused(tmp_path: Path, lines: str) -> None:
    (tmp_path / "ok.raw").write_bytes(bytes(8))
    msg = _err(_write(tmp_path / "odd.mha", HEAD + lines, bytes(8)))
    assert "MetaImage header" in msg


def _fuzz_header(rng: random.Random) -> str:
    keys = ["ElementDataFile", " ElementDataFile", "ElementDataFile\t", "elementdatafile",
            "ElementDataFile ", "Comment", "Element DataFile", "ElementDataFileX",
            "CompressedData", "BinaryData", "Offset", "ElementSpacing", "HeaderSize"]
    seps = ["=", ":", " = ", " : ", "==", ":=", " =: ", "\t=\t", ""]
    values = ["a.raw", "b.raw", "LOCAL", "Local", "local", "LoCaL", "a.raw ", "a.raw\t",
              "../out.raw", "/OUT", "c.raw", "a", "False", "", "1 1", "1 1 1", "0"]
    ends = ["\n", "\r\n", "\r", " \n"]
    lines = [HEAD]
    for _ in range(rng.randint(1, 4)):
        lines.append(rng.choice(keys) + rng.choice(seps) + rng.choice(values) + rng.choice(ends))
    return "".join(lines)


def test_data_file_choice_agrees_with_itk(tmp_path: Path) -> None:
    """Differential check against SimpleITK: whenever medir accepts a header, ITK reads the
    very file medir checked (each candidate holds a different byte); a file outside the
    folder (0xEE bytes) is never read. Headers are random mixes of MetaIO's separators, spaces, line
    ends and spellings."""
    inner = tmp_path / "in"
    inner.mkdir()
    out = tmp_path / "out.raw"
    out.write_bytes(bytes([0xEE]) * 8)  # a byte no header text holds
    fills = {"a.raw": 1, "b.raw": 2, "a": 4}
    for name, fill in fills.items():
        (inner / name).write_bytes(bytes([fill]) * 8)
    (inner / "c.raw.gz").write_bytes(gzip.compress(bytes([5]) * 8))
    rng = random.Random(21)
    accepted = 0
    for n in range(600):
        text = _fuzz_header(rng).replace("/OUT", str(out))
        header = _write(inner / f"h{n}.mha", text, bytes([3]) * 8)
        try:
            vf = open_volume(header)
        except VolumeError:
            continue
        src = parse_header(header).source
        try:
            got = set(sitk.GetArrayFromImage(sitk.ReadImage(str(header))).ravel().tolist())
        except RuntimeError:
            continue  # ITK refuses it too
        assert 0xEE not in got, text
        if src.local:  # the data starts right after the ElementDataFile line
            assert got == set(header.read_bytes()[src.offset:src.offset + 8]), text
        else:
            assert got == {fills.get(src.path.name, 5)}, text
            assert src.path.parent == inner.resolve()
        assert vf.shape == (2, 2, 2)
        accepted += 1
    assert accepted > 50  # the check is not vacuous: ordinary headers are accepted


# ---- 5. MetaImage: declared size before reading, bounded decompression -----------------------
def test_metaimage_declaring_a_gigavoxel_is_refused_before_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path / "big.mha", "ObjectType = Image\nNDims = 3\nDimSize = 1024 1024 512\n"
               "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n", bytes(500_000))

    def no_read(*_: object) -> None:
        raise AssertionError("the pixels were read")

    monkeypatch.setattr(sitk, "ReadImage", no_read)
    lim = Limits(max_voxels=100_000, max_bytes=1 << 30)
    msg = _err(p, lim)
    assert "1024x1024x512 = 536870912 voxels" in msg and "MEDIR_LIMITS__MAX_VOXELS" in msg


def test_metaimage_limit_comes_from_the_settings(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    img = sitk.GetImageFromArray(np.ones((10, 10, 10), np.int16))
    p = tmp_path / "v.mha"
    sitk.WriteImage(img, str(p))
    monkeypatch.setenv("MEDIR_LIMITS__MAX_VOXELS", "999")
    get_settings.cache_clear()
    try:
        assert "= 1000 voxels per volume, the limit is 999" in _err(
            p, Limits.of(get_settings().limits))
    finally:
        get_settings.cache_clear()


def _compressed(tmp_path: Path, name: str, stream: bytes, declared: int | None) -> Path:
    size = "" if declared is None else f"CompressedDataSize = {declared}\n"
    return _write(tmp_path / name, HEAD + f"BinaryData = True\nCompressedData = True\n{size}"
                  "ElementDataFile = LOCAL\n", stream)


def test_compressed_metaimage_is_checked_before_itk_inflates_it(tmp_path: Path) -> None:
    good = zlib.compress(bytes([7]) * 8)
    vol = open_volume(_compressed(tmp_path, "ok.mha", good, len(good))).read()
    assert set(vol.data.ravel().tolist()) == {7.0}
    # a truncated stream: ITK fills the rest of its buffer with whatever the heap held
    short = zlib.compress(bytes([7]) * 4)
    assert "truncated" in _err(_compressed(tmp_path, "short.mha", short, len(short)))
    # 64 MiB of zeros declared as 8 bytes
    comp = zlib.compressobj(9)
    bomb = b"".join(comp.compress(bytes(1 << 20)) for _ in range(64)) + comp.flush()
    assert "decompression bomb" in _err(_compressed(tmp_path, "bomb.mha", bomb, len(bomb)))
    # a size larger than the file: ITK allocates it (bad_alloc for 100 GB)
    assert "CompressedDataSize" in _err(_compressed(tmp_path, "lie.mha", good, 10**11))
    # no size: ITK 5.4 reads garbage
    assert "CompressedDataSize" in _err(_compressed(tmp_path, "nosize.mha", good, None))


def test_compressed_metaimage_written_by_itk_reads(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    p = tmp_path / "itk.mha"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(p), True)
    q = tmp_path / "itk.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(q), True)
    a, b = open_volume(p).read(), open_volume(q).read()
    np.testing.assert_array_equal(a.data, b.data)
    assert sorted(a.data.ravel().tolist()) == list(range(arr.size))


# ---- 2. NRRD: the data file the way pynrrd picks it --------------------------------------------
def _nhdr(folder: Path, fields: str, name: str = "vol.nhdr") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n"
                 "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace: RAS\n" + fields + "\n")
    return p


def test_nrrd_datafile_spelling_is_confined_too(tmp_path: Path) -> None:
    """pynrrd prefers ``datafile`` over ``data file``: both spellings are checked, and a header
    with both is refused."""
    secret = _planted(tmp_path)
    inner = tmp_path / "in"
    (inner / "ok.raw").parent.mkdir(parents=True)
    (inner / "ok.raw").write_bytes(bytes(8))
    assert "absolute path" in _err(_nhdr(inner, f"datafile: {secret}\n"))
    assert "both" in _err(_nhdr(inner, f"data file: ok.raw\ndatafile: {secret}\n", "two.nhdr"))
    assert "outside" in _err(_nhdr(inner, "datafile: ../secret.env\n", "up.nhdr"))
    vol = open_volume(_nhdr(inner, "datafile: ok.raw\n", "fine.nhdr")).read()
    assert vol.data.shape == (2, 2, 2)


def test_nrrd_compressed_data_is_read_in_one_bounded_pass(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The voxels come from the bounded decompression, never from pynrrd's unbounded one."""
    import nrrd.reader

    data = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    p = tmp_path / "v.nrrd"
    nrrd.write(str(p), data, {"encoding": "gzip", "space": "right-anterior-superior",
                              "space directions": np.eye(3)})

    def spy(*args: object, **kwargs: object) -> object:
        raise AssertionError("pynrrd decompressed the data itself")

    monkeypatch.setattr(nrrd.reader.zlib, "decompressobj", spy)
    vol = open_volume(p).read()
    assert sorted(vol.data.ravel().tolist()) == list(range(8))


# ---- 6. a 4D file's volume count --------------------------------------------------------------
def _nifti_4d(path: Path, n_volumes: int, full: bool = True) -> Path:
    """A 2x2x2xN uint8 NIfTI-2 (64-bit dims) .nii.gz: 80 MB of zeros for 10 M volumes
    compress to a few hundred KB."""
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((2, 2, 2, n_volumes))
    hdr["vox_offset"] = 544
    comp = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [comp.compress(hdr.binaryblock + bytes(4))]
    left = 8 * n_volumes if full else 8
    block = bytes(1 << 22)
    while left > 0:
        parts.append(comp.compress(block[:left]))
        left -= len(block)
    path.write_bytes(b"".join(parts) + comp.flush())
    return path


def test_nifti_declaring_ten_million_volumes_is_one_line(tmp_path: Path) -> None:
    p = _nifti_4d(tmp_path / "many.nii.gz", 10_000_000)
    assert p.stat().st_size < 1 << 20
    msg = _err(p)
    assert "10000000 volumes" in msg and "MEDIR_LIMITS__MAX_VOLUMES_PER_FILE" in msg
    jobs = expand_files([p], None)
    assert len(jobs) == 1 and jobs[0].index_4d is None  # one job, which fails with the line


def test_volume_cap_is_a_setting_and_checked_from_the_header(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIR_LIMITS__MAX_VOLUMES_PER_FILE", "3")
    lim = Limits.of(Settings().limits)
    assert lim.max_volumes == 3
    assert open_volume(_nifti_4d(tmp_path / "three.nii.gz", 3), lim).n_volumes == 3
    # only the header: the data is never decompressed, so a short stream does not matter
    msg = _err(_nifti_4d(tmp_path / "four.nii.gz", 4, full=False), lim)
    assert "4 volumes" in msg and "the limit is 3" in msg
    nhdr = tmp_path / "four.nrrd"  # NRRD too, from its header, the data never read
    nhdr.write_text("NRRD0004\ntype: uint8\ndimension: 4\nsizes: 2 2 2 4\nencoding: gzip\n"
                    "space directions: (1,0,0) (0,1,0) (0,0,1) none\nspace: RAS\n\n")
    assert "4 volumes" in _err(nhdr, lim)


def test_ingest_of_a_file_with_too_many_volumes_fails_once(tmp_path: Path) -> None:
    p = _nifti_4d(tmp_path / "c.nii.gz", 6)
    store = EdgeStore(tmp_path / "store")
    emb = get_embedder("test-tiny", device="cpu")
    reports = ingest_paths([p], store, emb, limits=Limits(1 << 30, 1 << 34, max_volumes=4))
    assert [r.status for r in reports] == ["failed"]
    assert "6 volumes" in (reports[0].error or "")
    assert store.count(collection_name("test-tiny")) == 0
    store.close()


# ---- 10. a full disk --------------------------------------------------------------------------
def _volumes(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = folder / f"c{k}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((32, 32, 12)).astype(np.float32), np.eye(4)), str(p))
        out.append(p)
    return out


def test_ingest_refuses_to_start_below_the_free_space_margin(tmp_path: Path) -> None:
    vols = _volumes(tmp_path / "vols", 2)
    store = tmp_path / "store"
    free_mb = shutil.disk_usage(tmp_path).free >> 20
    r = medir("ingest", *vols, "--model", "test-tiny",
              env={"MEDIR_STORE_PATH": str(store), "MEDIR_STORE__MIN_FREE_MB": str(free_mb + 4096)})
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: disk full: "), r.stderr
    assert "MEDIR_STORE__MIN_FREE_MB" in errors[0] and str(store) in errors[0]
    assert "Traceback" not in r.stderr
    assert not any(store.glob("*/medir.json"))  # no collection was created


def test_store_write_below_the_margin_raises_disk_full_and_keeps_nothing_pending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vols = _volumes(tmp_path / "vols", 3)
    store = EdgeStore(tmp_path / "store", storage=StoreSettings(min_free_mb=1))
    emb = get_embedder("test-tiny", device="cpu")
    assert [r.status for r in ingest_paths(vols[:1], store, emb)] == ["indexed"]  # 12 slices
    coll = collection_name("test-tiny")
    before = store.count(coll)
    real = shutil.disk_usage
    calls = [0]

    def filling(path: str | Path) -> object:  # the disk fills up while the volume is written
        calls[0] += 1
        usage = real(path)
        if calls[0] <= 2:  # the check before the ingest and the volume's first upsert pass
            return usage
        return type(usage)(usage.total, usage.total, 0)

    monkeypatch.setattr(shutil, "disk_usage", filling)
    with pytest.raises(DiskFull) as info:
        ingest_paths(vols[1:], store, emb, upsert_batch=4)  # 12 slices: 3 upserts
    assert calls[0] == 3
    assert str(info.value).startswith("disk full: ") and "\n" not in str(info.value)
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert store.count(coll) == before  # nothing half-written: no pending slices left
    store.close()


def _can_mount_tmpfs(where: Path) -> list[str] | None:
    """The command prefix that runs a command in a private mount namespace where a small tmpfs
    can be mounted (root, or an unprivileged user namespace), or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--mount"], ["unshare", "--mount", "--map-root-user"]):
        probe = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {where}"],
                               capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


def test_full_tmpfs_gives_one_line_not_sigbus(tmp_path: Path) -> None:
    """The reproduction: the embedded store memory-maps sparse files; on a 4 MB tmpfs the old
    ingest died of SIGBUS (exit -7) in the store without a word."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = _can_mount_tmpfs(mnt)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (no mount namespace): the disk-full test needs one")
    vols = _volumes(tmp_path / "vols", 4)
    script = (f"mount -t tmpfs -o size=4m tmpfs {mnt} || exit 99; {sys.executable} -m "
              f"medir.cli ingest {' '.join(map(str, vols))} --model test-tiny; rc=$?; "
              # the store's process lock file stays (it holds no data)
              f"echo \"left: [$(ls -A {mnt}/store | grep -vx .medir-store.lock)]\"; exit $rc")
    env = {**os.environ, "MEDIR_PLUGINS": "tests.plugin_embedder", "PYTHONPATH": str(REPO),
           "MEDIR_STORE_PATH": str(mnt / "store"), "MEDIR_STORE__MIN_FREE_MB": "1"}
    r = subprocess.run([*prefix, "sh", "-c", script], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: disk full: "), r.stderr
    assert str(mnt / "store") in errors[0] and "Traceback" not in r.stderr
    assert "left: []" in r.stdout  # no half-made collection, marked or not
