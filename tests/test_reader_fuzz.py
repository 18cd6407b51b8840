"""Property-based fuzzing of the reader: corrupted headers and truncated files either read as a
valid volume or fail with a VolumeError naming the file, never with any other exception."""

from __future__ import annotations

import gzip
import io
import tempfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.reader import read_volumes
from medir.errors import VolumeError


def _nifti_bytes() -> bytes:
    rng = np.random.default_rng(0)
    img = nib.Nifti1Image(rng.normal(size=(6, 5, 4)).astype(np.float32),
                          np.diag([1.0, 2.0, 3.0, 1.0]))
    bio = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": bio})
    img.to_file_map(file_map)
    return bio.getvalue()


def _nrrd_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.nrrd"
        nrrd.write(str(p), np.arange(60, dtype=np.int16).reshape(5, 4, 3),
                   {"space": "left-posterior-superior", "space directions": np.eye(3)})
        return p.read_bytes()


NIFTI = _nifti_bytes()
NRRD = _nrrd_bytes()


def _check(path: Path) -> None:
    try:
        for vol in read_volumes(path):
            assert vol.data.ndim == 3 and all(s > 0 for s in vol.data.shape)
            assert np.all(np.isfinite(vol.data))
            assert all(np.isfinite(s) and s > 0 for s in vol.spacing)
    except VolumeError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


mutations = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1,
                     max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations, st.booleans())
def test_corrupted_nifti_header(tmp_path_factory, muts: list[tuple[int, int]], gz: bool) -> None:
    raw = bytearray(NIFTI)
    for pos, val in muts:
        raw[pos] = val
    path = tmp_path_factory.mktemp("fz") / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    _check(path)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(NIFTI)), st.booleans())
def test_truncated_nifti(tmp_path_factory, cut: int, gz: bool) -> None:
    data = gzip.compress(NIFTI) if gz else NIFTI
    cut = min(cut, len(data))
    path = tmp_path_factory.mktemp("tr") / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(data[:cut])
    _check(path)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(NRRD)), st.lists(st.tuples(st.integers(0, 200), st.integers(32, 126)),
                                           max_size=4))
def test_corrupted_nrrd(tmp_path_factory, cut: int, muts: list[tuple[int, int]]) -> None:
    raw = bytearray(NRRD[:cut])
    for pos, val in muts:
        if pos < len(raw):
            raw[pos] = val
    path = tmp_path_factory.mktemp("nr") / "v.nrrd"
    path.write_bytes(bytes(raw))
    _check(path)
