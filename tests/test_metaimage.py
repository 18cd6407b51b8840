"""MetaImage (.mha/.mhd) through SimpleITK: same canonical volume as NIfTI; safe data paths."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ingest.reader import open_volume
from medir.errors import VolumeError

sitk = pytest.importorskip("SimpleITK")


def _to_sitk(data: np.ndarray, affine: np.ndarray) -> object:
    """An ITK image (LPS physical space) of a RAS-affine NIfTI array."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    img = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)).copy())
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (lps[:, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in lps[:, 3]])
    return img


@pytest.fixture(scope="module")
def mr_ref(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = nib.Nifti1Image.from_filename(str(samples_dir / "mr_head_t1c_pyradiomics.nii.gz"))
    sub = img.slicer[90:150, 80:140, 5:12]
    path = tmp_path_factory.mktemp("ref") / "mr.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(sub.dataobj), sub.affine), str(path))
    return path


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_metaimage_equals_nifti(mr_ref: Path, tmp_path: Path, suffix: str) -> None:
    ref = nib.Nifti1Image.from_filename(str(mr_ref))
    out = tmp_path / f"case{suffix}"
    sitk.WriteImage(_to_sitk(np.asarray(ref.dataobj), ref.affine), str(out))
    a, b = open_volume(out).read(), open_volume(mr_ref).read()
    assert a.volume_id == "case"
    np.testing.assert_allclose(a.data, b.data)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(open_volume(out).affine, open_volume(mr_ref).affine, atol=1e-4)


def _mhd(tmp_path: Path, data_file: str) -> Path:
    header = tmp_path / "evil.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\n"
                      "ElementType = MET_UCHAR\nElementDataFile = " + data_file + "\n")
    return header


@pytest.mark.parametrize("name", ["../secret.raw", "/etc/passwd", "LIST", "slice%03d.raw 1 2 1",
                                  "link.raw"])
def test_mhd_data_file_must_stay_in_its_folder(tmp_path: Path, name: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(8))
    (inner / "link.raw").symlink_to(tmp_path / "secret.raw")
    header = _mhd(inner, name)
    with pytest.raises(VolumeError) as err:
        open_volume(header)
    assert "unsafe path" in str(err.value) and str(header) in str(err.value)


def test_mhd_missing_data_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="missing"):
        open_volume(_mhd(tmp_path, "nothere.raw"))
    bad = tmp_path / "bad.mha"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(VolumeError) as err:
        open_volume(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
