"""DICOM series written in code with pydicom from real volumes (NIfTI samples).

``volume_to_datasets`` cuts a RAS volume into DICOM slices along any voxel axis, with LPS
geometry (ImagePositionPatient / ImageOrientationPatient / PixelSpacing) and an optional
stored-value rescale, so that a correct reader gives back the same canonical volume.
Planted patient-identifying values (:data:`PHI`) let tests check that none of them leaks.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

# Planted patient-identifying values: none of them may appear in any output of medir.
PHI = {
    "PatientName": "Doe^Jane^Planted",
    "PatientID": "PHI-ID-4711",
    "PatientBirthDate": "19390517",
    "AccessionNumber": "ACC-PHI-0815",
    "OtherPatientIDs": "OTHER-PHI-42",
    "InstitutionName": "Planted General Hospital",
    "ReferringPhysicianName": "Referrer^Planted",
}

LPS = np.diag([-1.0, -1.0, 1.0])


def _base(sop_class: str, modality: str, study: str, series: str) -> Dataset:
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = generate_uid(prefix=None, entropy_srcs=[study])
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST" if modality == "CT" else "HEAD"
    ds.StudyDate = "20240102"
    ds.SeriesNumber = 1
    for key, value in PHI.items():
        setattr(ds, key, value)
    return ds


def _pixels(ds: Dataset, plane: np.ndarray, signed: bool) -> None:
    ds.Rows, ds.Columns = int(plane.shape[-2]), int(plane.shape[-1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(plane.astype(np.int16 if signed else np.uint16)).tobytes()


def _stored(values: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    stored = np.rint((values - intercept) / slope)
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    if stored.min() < lo or stored.max() > hi:
        raise ValueError("values do not fit the stored type with this rescale")
    return stored


def slice_geometry(affine: np.ndarray, shape: tuple[int, ...], axis: int
                   ) -> tuple[int, int, list[float], list[float], list[list[float]]]:
    """In-plane axes (column axis a, row axis b), IOP, PixelSpacing, IPP per slice (LPS)."""
    a, b = [i for i in range(3) if i != axis]
    lin = LPS @ affine[:3, :3]
    org = LPS @ affine[:3, 3]
    row_dir = lin[:, a] / np.linalg.norm(lin[:, a])
    col_dir = lin[:, b] / np.linalg.norm(lin[:, b])
    spacing = [float(np.linalg.norm(lin[:, b])), float(np.linalg.norm(lin[:, a]))]
    ipp = [list(map(float, org + lin[:, axis] * t)) for t in range(shape[axis])]
    return a, b, [*map(float, row_dir), *map(float, col_dir)], spacing, ipp


def _plane(data: np.ndarray, axis: int, t: int, a: int, b: int) -> np.ndarray:
    sl: list[slice | int] = [slice(None)] * 3
    sl[axis] = t
    plane = data[tuple(sl)]  # remaining axes in order (a, b) as a < b
    return plane.T if a < b else plane  # rows follow axis b, columns axis a


def volume_to_datasets(data: np.ndarray, affine: np.ndarray, modality: str = "CT", *,
                       axis: int = 2, slope: float = 1.0, intercept: float = 0.0,
                       signed: bool = True, study: str | None = None,
                       series: str | None = None) -> list[Dataset]:
    """One classic single-frame dataset per slice along voxel ``axis`` of a RAS volume."""
    study = study or generate_uid()
    series = series or generate_uid()
    sop = CTImageStorage if modality == "CT" else MRImageStorage
    a, b, iop, spacing, ipp = slice_geometry(affine, data.shape, axis)
    out = []
    for t in range(data.shape[axis]):
        ds = _base(sop, modality, study, series)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = t + 1
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = ipp[t]
        ds.PixelSpacing = spacing
        ds.SliceThickness = float(np.linalg.norm(affine[:3, axis]))
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        _pixels(ds, _stored(_plane(data, axis, t, a, b), slope, intercept, signed), signed)
        out.append(ds)
    return out


def enhanced_from(data: np.ndarray, affine: np.ndarray, *, slope: float, intercept: float,
                  study: str | None = None, series: str | None = None,
                  shuffle_seed: int = 3) -> Dataset:
    """One Enhanced CT object (functional groups), frames in shuffled order."""
    ds = _base(EnhancedCTImageStorage, "CT", study or generate_uid(), series or generate_uid())
    a, b, iop, spacing, ipp = slice_geometry(affine, data.shape, 2)
    order = list(range(data.shape[2]))
    random.Random(shuffle_seed).shuffle(order)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(order)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = spacing
    pm.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
    po = Dataset()
    po.ImageOrientationPatient = iop
    shared.PixelMeasuresSequence = DicomSequence([pm])
    shared.PlaneOrientationSequence = DicomSequence([po])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    groups, planes = [], []
    for t in order:
        g = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = ipp[t]
        pvt = Dataset()
        pvt.RescaleSlope = slope
        pvt.RescaleIntercept = intercept
        pvt.RescaleType = "HU"
        g.PlanePositionSequence = DicomSequence([pp])
        g.PixelValueTransformationSequence = DicomSequence([pvt])
        groups.append(g)
        planes.append(_stored(_plane(data, 2, t, a, b), slope, intercept, False))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    _pixels(ds, np.stack(planes), False)
    return ds


def write_series(datasets: list[Dataset], folder: Path, seed: int = 7) -> list[Path]:
    """Write datasets under misleading names in shuffled order, InstanceNumbers scrambled."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    numbers = list(range(1, len(datasets) + 1))
    rng.shuffle(numbers)
    names = [f"IM{n:04d}.dcm" for n in numbers]
    rng.shuffle(names)
    paths = []
    for ds, name, number in zip(datasets, names, numbers, strict=True):
        ds.InstanceNumber = number
        p = folder / name
        ds.save_as(str(p), enforce_file_format=True)
        paths.append(p)
    rng.shuffle(paths)
    return paths


def sr_dataset(study: str) -> Dataset:
    """A Basic Text SR document in the same study (no pixel data)."""
    ds = _base("1.2.840.10008.5.1.4.1.1.88.11", "SR", study, generate_uid())
    ds.ValueType = "CONTAINER"
    return ds
