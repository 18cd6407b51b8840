"""Reading volumes: orientation to RAS, spacing, 4D split, NRRD, and every bad-input case."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from ingest.reader import open_volume, read_volumes
from medir.errors import VolumeError
from medir.ids import case_id_of


def _ramp(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def test_ras_volume_slices_and_spacing(make_nifti) -> None:
    data = _ramp((4, 5, 6))  # x, y, z
    aff = np.diag([0.5, 0.8, 2.0, 1.0])
    vol = next(read_volumes(make_nifti(data, aff)))
    assert vol.data.shape == (6, 5, 4)  # (Z, Y, X)
    assert vol.spacing == pytest.approx((0.5, 0.8, 2.0))
    # slice k is data[:, :, k] with anterior up (y flipped) and x flipped (radiological)
    for k in range(6):
        np.testing.assert_array_equal(vol.data[k], data[:, :, k].T[::-1, ::-1])
    np.testing.assert_allclose(vol.z_mm, np.arange(6) * 2.0)


@pytest.mark.parametrize("flip", ["x", "y", "z"])
def test_flipped_axes_give_the_same_canonical_volume(make_nifti, flip: str) -> None:
    data = _ramp((4, 5, 6))
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    ref = next(read_volumes(make_nifti(data, aff, name="ref.nii.gz")))
    ax = "xyz".index(flip)
    flipped = np.flip(data, axis=ax)
    aff2 = aff.copy()
    aff2[ax, ax] *= -1
    aff2[ax, 3] = (data.shape[ax] - 1) * aff[ax, ax]
    vol = next(read_volumes(make_nifti(flipped, aff2, name="flip.nii.gz")))
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.spacing == pytest.approx(ref.spacing)


def test_permuted_axes_lps_to_ras(make_nifti) -> None:
    """Stored as (z, x, y) in LPS: canonical result equals the plain RAS volume."""
    data = _ramp((4, 5, 6))  # x, y, z in RAS
    ref = next(read_volumes(make_nifti(data, np.diag([1.0, 2.0, 3.0, 1.0]), name="r.nii.gz")))
    stored = np.transpose(data[::-1, ::-1, :], (2, 0, 1))  # axes: S, L, P
    aff = np.zeros((4, 4))
    aff[2, 0] = 3.0  # stored axis 0 -> +z (S)
    aff[0, 1] = -1.0  # stored axis 1 -> -x (L)
    aff[1, 2] = -2.0  # stored axis 2 -> -y (P)
    aff[3, 3] = 1.0
    vol = next(read_volumes(make_nifti(stored, aff, name="lps.nii.gz")))
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.spacing == pytest.approx((1.0, 2.0, 3.0))


def test_4d_split_reads_one_volume_at_a_time(make_nifti) -> None:
    data = np.stack([_ramp((3, 4, 5)) + 1000 * t for t in range(3)], axis=-1)
    path = make_nifti(data, np.diag([1.0, 1.0, 2.0, 1.0]), name="case7.nii.gz")
    vf = open_volume(path)
    assert vf.is_4d and vf.n_volumes == 3
    assert vf.volume_ids() == ["case7#0", "case7#1", "case7#2"]
    vols = list(vf)
    assert [v.volume_id for v in vols] == vf.volume_ids()
    assert [v.index_4d for v in vols] == [0, 1, 2]
    for t, v in enumerate(vols):
        assert v.data.shape == (5, 4, 3)
        assert v.data.min() == 1000 * t
        assert v.case_id == "case7"
    assert len({v.sha256 for v in vols}) == 1


def test_4d_with_trailing_singleton_is_3d(make_nifti) -> None:
    vf = open_volume(make_nifti(_ramp((3, 4, 5, 1))))
    assert not vf.is_4d and vf.n_volumes == 1


def test_nrrd_lps_matches_nifti(tmp_path: Path, make_nifti) -> None:
    data = _ramp((4, 5, 6))
    ref = next(read_volumes(make_nifti(data, np.diag([0.5, 0.5, 2.0, 1.0]))))
    # the same voxels in LPS: index axes map to -x, -y, +z
    header = {"space": "left-posterior-superior",
              "space directions": np.diag([0.5, 0.5, 2.0]),
              "space origin": np.zeros(3)}
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), data[::-1, ::-1, :].copy(), header)
    vol = next(read_volumes(path))
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.spacing == pytest.approx((0.5, 0.5, 2.0))
    assert vol.case_id == "v"


def test_case_ids() -> None:
    assert case_id_of("/a/b/ct_01.nii.gz") == "ct_01"
    assert case_id_of("x.NII") == "x"
    assert case_id_of("lung.nrrd") == "lung"


# ---- bad input: one clear line naming the file and the problem ---------------------------------
def _err(path: Path) -> str:
    with pytest.raises(VolumeError) as info:
        for _ in read_volumes(path):
            pass
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _err(tmp_path / "nope.nii.gz")


def test_not_a_volume(tmp_path: Path) -> None:
    p = tmp_path / "text.nii.gz"
    p.write_bytes(gzip.compress(b"hello, this is not a NIfTI file at all" * 20))
    assert "not a readable NIfTI" in _err(p)
    q = tmp_path / "notes.txt"
    q.write_text("x")
    assert "unsupported file type" in _err(q)


def test_truncated_gzip(make_nifti) -> None:
    p = make_nifti(np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    msg = _err(p)
    assert "truncated" in msg or "not a readable" in msg


def test_2d_and_5d(make_nifti) -> None:
    assert "2D image" in _err(make_nifti(np.zeros((8, 8), np.float32)))
    assert "5D image" in _err(make_nifti(np.zeros((2, 2, 2, 2, 2), np.float32)))


def test_zero_length_axis(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4))
    p = tmp_path / "zero.nii"
    nib.save(img, str(p))
    raw = bytearray(p.read_bytes())
    raw[46:48] = np.int16(0).tobytes()  # dim[3] = 0 (the header's dim array starts at byte 40)
    p.write_bytes(bytes(raw))
    assert "length zero" in _err(p)


def test_nan_and_inf(make_nifti) -> None:
    """A few non-finite voxels become the background (with a warning); mostly NaN is refused."""
    data = np.full((4, 4, 4), 5.0, np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    data[3, 3, 3] = 2.0
    vol = open_volume(make_nifti(data)).read()
    assert np.all(np.isfinite(vol.data)) and float(vol.data.min()) == 2.0
    assert int(np.count_nonzero(vol.data == 2.0)) == 3
    assert any("2 NaN/Inf voxels" in w for w in vol.warnings)
    data[:3] = np.nan
    assert "NaN or Inf" in _err(make_nifti(data))


@pytest.mark.parametrize("bad", [0.0, -2.0])
def test_non_positive_spacing(tmp_path: Path, bad: float) -> None:
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(np.eye(4), code=1)
    p = tmp_path / "spacing.nii"
    nib.save(img, str(p))
    raw = bytearray(p.read_bytes())
    raw[88:92] = np.float32(bad).tobytes()  # pixdim[3] (pixdim starts at byte 76)
    p.write_bytes(bytes(raw))
    msg = _err(p)
    assert "spacing" in msg or "degenerate" in msg


def test_index_out_of_range(make_nifti) -> None:
    vf = open_volume(make_nifti(np.zeros((2, 2, 2, 2), np.float32)))
    with pytest.raises(VolumeError, match="out of range"):
        vf.read(5)


@pytest.mark.parametrize("slope", [1.0, 0.5])
def test_gzip_read_equals_nibabel(tmp_path: Path, slope: float) -> None:
    """The zlib-ng read of a .nii.gz gives nibabel's own voxels, scaling and 4D indexing, for
    a file written as several gzip members too."""
    rng = np.random.default_rng(3)
    data = rng.integers(-1024, 3000, size=(20, 17, 9, 3)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(slope, -7.0)
    one = tmp_path / "one.nii.gz"
    nib.save(img, one)
    raw = gzip.decompress(one.read_bytes())
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    ref = nib.load(one)
    for path in (one, multi):
        vf = open_volume(path)
        for k in range(3):
            expected = np.asanyarray(ref.dataobj[..., k])
            got = np.asarray(vf._proxy[..., k])  # type: ignore[index]
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)
