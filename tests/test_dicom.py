"""DICOM series reading: geometry, rescale, enhanced multi-frame, skips, PHI, real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import inv_ornt_aff, io_orientation
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ingest import dicom
from ingest.reader import VolumeFile, open_volume
from medir.errors import VolumeError
from tests.dicom_fixtures import (
    PHI,
    enhanced_from,
    sr_dataset,
    volume_to_datasets,
    write_series,
)


def _crop(samples_dir: Path, name: str, box: tuple[slice, slice, slice], out: Path) -> Path:
    """A small real sub-volume of a sample, saved as NIfTI (the reference read)."""
    img = nib.Nifti1Image.from_filename(str(samples_dir / name))
    sub = img.slicer[box]
    path = out / name
    nib.save(nib.Nifti1Image(np.asarray(sub.dataobj), sub.affine), str(path))
    return path


def _canonical_affine(vf: VolumeFile) -> np.ndarray:
    """Affine of the RAS-reoriented grid: world coordinates of the canonical voxels."""
    ornt = io_orientation(vf.affine)
    return np.asarray(vf.affine @ inv_ornt_aff(ornt, vf.shape[:3]))


def _assert_same(dcm: VolumeFile, ref: VolumeFile) -> None:
    a, b = dcm.read(), ref.read()
    assert a.data.shape == b.data.shape
    np.testing.assert_allclose(a.data, b.data, atol=1e-3)
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-5)
    np.testing.assert_allclose(_canonical_affine(dcm), _canonical_affine(ref), atol=1e-3)


@pytest.fixture(scope="module")
def ct_ref(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    return _crop(samples_dir, "ct_chest_lung1_pyradiomics.nii.gz",
                 (slice(180, 260), slice(200, 264), slice(10, 22)), out)


@pytest.fixture(scope="module")
def mr_ref(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    return _crop(samples_dir, "mr_head_t1c_pyradiomics.nii.gz",
                 (slice(90, 170), slice(80, 150), slice(5, 15)), out)


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.Nifti1Image.from_filename(str(path))
    return np.asarray(img.dataobj).astype(np.float64), np.asarray(img.affine)


def test_ct_hu_rescale_shuffled_files(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    # stored as uint16 with slope/intercept: the reader must give back HU
    dss = volume_to_datasets(data, affine, "CT", slope=1.0, intercept=-1024.0, signed=False)
    assert min(int(np.frombuffer(d.PixelData, np.uint16).min()) for d in dss) >= 0
    files = write_series(dss, tmp_path / "ct")
    series, skipped = dicom.scan_dicom(files)
    assert skipped == []
    assert len(series) == 1
    s = series[0]
    assert s.series_uid == dss[0].SeriesInstanceUID
    vf = s.open()
    assert vf.case_id == s.series_uid
    assert vf.path == tmp_path / "ct"
    _assert_same(vf, open_volume(ct_ref))
    assert float(vf.read().data.min()) < -500  # HU, not stored values


def test_order_ignores_names_and_instance_numbers(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    dss = volume_to_datasets(data, affine, "CT")
    files = write_series(dss, tmp_path / "a", seed=1)
    # hash is stable whatever the order the files are given in
    s1, _ = dicom.scan_dicom(files)
    s2, _ = dicom.scan_dicom(list(reversed(files)))
    v1, v2 = s1[0].open(), s2[0].open()
    assert v1.sha256 == v2.sha256
    np.testing.assert_array_equal(v1.read().data, v2.read().data)
    _assert_same(v1, open_volume(ct_ref))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mr_series_any_slice_axis(mr_ref: Path, tmp_path: Path, axis: int) -> None:
    """Sagittal, coronal and axial acquisitions of the same real MR: one canonical volume."""
    data, affine = _load(mr_ref)
    dss = volume_to_datasets(data, affine, "MR", axis=axis)
    series, skipped = dicom.scan_dicom(write_series(dss, tmp_path / f"mr{axis}"))
    assert skipped == [] and len(series) == 1
    assert series[0].meta["Modality"] == "MR"
    _assert_same(series[0].open(), open_volume(mr_ref))


def test_non_identity_orientation(mr_ref: Path, tmp_path: Path) -> None:
    """The MR sample is LAS: its DICOM column direction is posterior-to-anterior (0,-1,0)."""
    data, affine = _load(mr_ref)
    dss = volume_to_datasets(data, affine, "MR")
    assert [round(float(v)) for v in dss[0].ImageOrientationPatient] == [1, 0, 0, 0, -1, 0]


def test_enhanced_multiframe(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    ds = enhanced_from(data, affine, slope=0.5, intercept=-1024.0)
    path = tmp_path / "enh" / "one.dcm"
    path.parent.mkdir()
    ds.save_as(str(path), enforce_file_format=True)
    series, skipped = dicom.scan_dicom([path])
    assert skipped == [] and len(series) == 1
    _assert_same(series[0].open(), open_volume(ct_ref))


def test_sr_scout_tilt_mixed_in(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    study = generate_uid()
    good = volume_to_datasets(data, affine, "CT", study=study)
    # a scout inside the series: coronal orientation, flagged LOCALIZER in ImageType
    scout = volume_to_datasets(data, affine, "CT", axis=1, study=study,
                               series=good[0].SeriesInstanceUID)[:1]
    scout[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    # another slice whose orientation differs, without the LOCALIZER flag
    stray = volume_to_datasets(data, affine, "CT", axis=0, study=study,
                               series=good[0].SeriesInstanceUID)[:1]
    tilted = volume_to_datasets(data, affine, "CT", study=study)
    for k, ds in enumerate(tilted):  # 15 degrees gantry tilt: positions shift along y
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + np.tan(np.radians(15)) * k * 5.0, z]
    files = write_series(good, tmp_path / "ct") + write_series(tilted, tmp_path / "tilt")
    for ds, name in ((scout[0], "scout.dcm"), (stray[0], "stray.dcm"),
                     (sr_dataset(study), "report.dcm")):
        ds.save_as(str(tmp_path / "ct" / name), enforce_file_format=True)
        files.append(tmp_path / "ct" / name)
    rtstruct = get_testdata_file("rtstruct.dcm", download=False)
    assert rtstruct
    shutil.copy(rtstruct, tmp_path / "rts.dcm")
    files.append(tmp_path / "rts.dcm")
    series, skipped = dicom.scan_dicom(files)
    assert [s.series_uid for s in series] == [good[0].SeriesInstanceUID]
    assert len(series[0].files) == len(good)
    _assert_same(series[0].open(), open_volume(ct_ref))
    kinds = {Path(s.path).name if s.kind != dicom.INCONSISTENT_SERIES else "tilt": s.kind
             for s in skipped}
    assert kinds == {"scout.dcm": dicom.LOCALIZER, "stray.dcm": dicom.LOCALIZER,
                     "report.dcm": dicom.NON_IMAGE_DICOM, "rts.dcm": dicom.NON_IMAGE_DICOM,
                     "tilt": dicom.INCONSISTENT_SERIES}
    tilt = next(s for s in skipped if s.kind == dicom.INCONSISTENT_SERIES)
    assert "tilt" in tilt.reason and "15.0 degrees" in tilt.reason
    assert tilted[0].SeriesInstanceUID in tilt.path


def _skip_reason(dss: list[pydicom.Dataset], tmp_path: Path) -> str:
    series, skipped = dicom.scan_dicom(write_series(dss, tmp_path / generate_uid()))
    assert series == [] and len(skipped) == 1
    assert skipped[0].kind == dicom.INCONSISTENT_SERIES
    return skipped[0].reason


def test_inconsistent_geometry_skipped(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)

    missing = volume_to_datasets(data, affine)
    del missing[5]  # a gap
    assert "non-uniform slice spacing" in _skip_reason(missing, tmp_path)

    dup = volume_to_datasets(data, affine)
    dup[3].ImagePositionPatient = dup[4].ImagePositionPatient
    assert "duplicate slice positions" in _skip_reason(dup, tmp_path)

    nopos = volume_to_datasets(data, affine)
    del nopos[2].ImagePositionPatient
    assert "no ImagePositionPatient" in _skip_reason(nopos, tmp_path)

    sizes = volume_to_datasets(data, affine)
    small = volume_to_datasets(data[:40], affine, series=sizes[0].SeriesInstanceUID)
    mixed = sizes[:6] + small[6:]
    assert "mixed image sizes" in _skip_reason(mixed, tmp_path)

    spacing = volume_to_datasets(data, affine)
    spacing[4].PixelSpacing = [0.9, 0.9]
    assert "mixed pixel spacings" in _skip_reason(spacing, tmp_path)

    uneven = volume_to_datasets(data, affine)
    for k, ds in enumerate(uneven):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 0.2 * k * k]
    assert "non-uniform" in _skip_reason(uneven, tmp_path)


def test_no_patient_identifiers_anywhere(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    dss = volume_to_datasets(data, affine, "CT", slope=1.0, intercept=-1024.0, signed=False)
    bad = volume_to_datasets(data, affine, "CT")
    bad[1].ImagePositionPatient = bad[2].ImagePositionPatient
    series, skipped = dicom.scan_dicom(write_series(dss, tmp_path / "a")
                                       + write_series(bad, tmp_path / "b"))
    vol = series[0].open().read()
    assert set(vol.meta) == {"StudyInstanceUID", "SeriesInstanceUID", "Modality",
                             "BodyPartExamined"}
    text = json.dumps(vol.payload()) + json.dumps([s.__dict__ for s in skipped])
    text += repr(series[0].meta)
    broken = tmp_path / "a" / "zz.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    try:
        dicom.DicomSeries(series[0].series_uid, [*series[0].files, broken]).open()
    except VolumeError as exc:
        text += str(exc)
    for value in PHI.values():
        for part in value.split("^"):
            assert part not in text


def test_bad_files_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")
    series, skipped = dicom.scan_dicom([junk])
    assert series == [] and len(skipped) == 1
    assert skipped[0].kind == dicom.BAD_FILE and "\n" not in skipped[0].reason
    assert dicom.looks_like_dicom(junk)
    assert not dicom.looks_like_dicom(tmp_path / "missing.dcm")


def test_truncated_pixels_named(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    files = write_series(volume_to_datasets(data, affine), tmp_path / "t")
    series, _ = dicom.scan_dicom(files)
    vf = series[0].open()
    victim = files[0]
    victim.write_bytes(victim.read_bytes()[:-3000])
    with pytest.raises(VolumeError) as err:
        vf.read()
    assert str(victim) in str(err.value) and "\n" not in str(err.value)


# ---- real DICOM files shipped with pydicom -------------------------------------------------

def _testfile(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not installed")
    return Path(str(path))


def test_real_ct_small() -> None:
    path = _testfile("CT_small.dcm")
    series, skipped = dicom.scan_dicom([path])
    assert skipped == [] and len(series) == 1
    vol = series[0].open().read()
    ds = pydicom.dcmread(str(path))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.data.shape == (1, ds.Rows, ds.Columns)
    assert sorted(vol.data.ravel().tolist()) == sorted(hu.ravel().tolist())
    assert vol.spacing[2] == pytest.approx(float(ds.SliceThickness))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_real_compressed_equal_uncompressed(name: str) -> None:
    ref_series, _ = dicom.scan_dicom([_testfile("MR_small.dcm")])
    series, skipped = dicom.scan_dicom([_testfile(name)])
    assert skipped == [] and len(series) == 1
    np.testing.assert_array_equal(series[0].open().read().data,
                                  ref_series[0].open().read().data)


def test_real_jpeg2000_ct() -> None:
    series, skipped = dicom.scan_dicom([_testfile("693_J2KI.dcm")])
    assert skipped == [] and len(series) == 1
    vol = series[0].open().read()
    assert vol.data.shape[0] == 1 and float(vol.data.std()) > 0


def test_real_non_image_objects_skipped() -> None:
    names = ["test-SR.dcm", "rtstruct.dcm", "rtplan.dcm", "rtdose.dcm", "liver_1frame.dcm"]
    series, skipped = dicom.scan_dicom([_testfile(n) for n in names])
    assert series == []
    assert [s.kind for s in skipped] == [dicom.NON_IMAGE_DICOM] * len(names)
    # 2D images without patient geometry are not volumes
    series, skipped = dicom.scan_dicom([_testfile("JPEG2000.dcm")])
    assert series == [] and skipped[0].kind == dicom.INCONSISTENT_SERIES


def test_in_memory_datasets_equal_files(ct_ref: Path, tmp_path: Path) -> None:
    """The DICOMweb path: the same series built from datasets, any order, same volume."""
    data, affine = _load(ct_ref)
    dss = volume_to_datasets(data, affine, "CT", slope=1.0, intercept=-1024.0, signed=False)
    a, skipped = dicom.series_from_datasets(dss, label="dicomweb+http://pacs/dw")
    b, _ = dicom.series_from_datasets(list(reversed(dss)), label="dicomweb+http://pacs/dw")
    assert skipped == [] and len(a) == 1
    va, vb = a[0].open(), b[0].open()
    assert va.sha256 == vb.sha256 and va.read().source == "dicomweb+http://pacs/dw"
    _assert_same(va, open_volume(ct_ref))
    # a changed pixel changes the content hash
    dss[3].PixelData = bytes(len(dss[3].PixelData))
    c, _ = dicom.series_from_datasets(dss)
    assert c[0].open().sha256 != va.sha256


def test_duplicates_colour_and_enhanced_without_positions(ct_ref: Path, tmp_path: Path) -> None:
    data, affine = _load(ct_ref)
    dss = volume_to_datasets(data, affine)
    files = write_series(dss, tmp_path / "d")
    copy = tmp_path / "d" / "copy.dcm"
    shutil.copy(files[0], copy)
    series, skipped = dicom.scan_dicom([*files, copy])
    assert len(series) == 1 and len(series[0].files) == len(dss)
    assert [(Path(s.path).name, s.kind) for s in skipped] in (
        [("copy.dcm", dicom.DUPLICATE)], [(files[0].name, dicom.DUPLICATE)])

    enh = enhanced_from(data, affine, slope=1.0, intercept=-1024.0)
    del enh.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    path = tmp_path / "enh.dcm"
    enh.save_as(str(path), enforce_file_format=True)
    series, skipped = dicom.scan_dicom([path])
    assert series == [] and skipped[0].kind == dicom.INCONSISTENT_SERIES
    assert "no ImagePositionPatient" in skipped[0].reason

    rgb = get_testdata_file("SC_rgb_rle.dcm", download=False)
    if rgb:
        series, skipped = dicom.scan_dicom([Path(str(rgb))])
        assert series == [] and skipped[0].kind == dicom.UNSUPPORTED_IMAGE


def test_query_with_a_dicom_folder_finds_its_nifti_twin(ct_ref: Path, mr_ref: Path,
                                                        tmp_path: Path) -> None:
    import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
    from ingest.embedders import get_embedder
    from ingest.pipeline import index_volume
    from runner.query_service import search_file
    from search.query import QueryOptions
    from search.store_edge import EdgeStore

    data, affine = _load(mr_ref)
    folder = tmp_path / "mrseries"
    write_series(volume_to_datasets(data, affine, "MR", axis=0), folder)
    embedder = get_embedder("test-tiny", device="cpu")
    with EdgeStore(tmp_path / "store") as store:
        for ref in (ct_ref, mr_ref):
            vol = open_volume(ref).read()
            vol.volume_id = vol.case_id = ref.parent.name + "/" + ref.name
            index_volume(store, embedder, vol)
        result = search_file(folder, store, embedder, QueryOptions(top=2))
    assert result.ranking[0].volume_id.endswith(mr_ref.name)
    assert result.ranking[0].similarity > 0.999  # the same slices, read from DICOM
    with pytest.raises(VolumeError, match="no DICOM files"):
        dicom.open_dicom_folder(tmp_path / "store")
