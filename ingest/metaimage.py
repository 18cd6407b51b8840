"""MetaImage (``.mha``, ``.mhd`` + raw data) read with SimpleITK into canonical RAS volumes.

ITK's physical space is LPS; the affine is converted to RAS, so a MetaImage and the NIfTI of
the same data give the same canonical volume. The header is read first
(``ReadImageInformation``); pixels are read on :meth:`VolumeFile.read`.

A ``.mhd`` names its data file (``ElementDataFile``). That name is checked before SimpleITK
opens anything: it must be one file inside the header's folder (no absolute path, no ``..``,
no symlink leading out, no ``LIST`` or file-name pattern), so a hostile header cannot make
medir read another file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ingest.digest import files_sha256
from medir.errors import VolumeError

MAX_HEADER_BYTES = 64 * 1024


def _header_fields(path: Path) -> dict[str, str]:
    """``key = value`` lines of a MetaImage header, up to ``ElementDataFile`` (the last)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        head = fh.read(MAX_HEADER_BYTES)
    for raw in head.split(b"\n"):
        key, sep, value = raw.decode("latin-1").partition("=")
        if not sep:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields


def data_file_of(path: Path) -> Path | None:
    """The checked data file of a ``.mhd`` (None when the data is in the header: LOCAL)."""
    fields = _header_fields(path)
    name = fields.get("ElementDataFile")
    if name is None:
        raise VolumeError(path, "MetaImage header without ElementDataFile")
    if name.upper() == "LOCAL":
        return None
    if name.upper().startswith("LIST") or "%" in name or " " in name:
        raise VolumeError(path, f"unsafe path: ElementDataFile {name!r} (lists and file "
                                "patterns are not read)")
    candidate = Path(name)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise VolumeError(path, f"unsafe path: ElementDataFile {name!r} leaves the header's "
                                "folder")
    folder = path.parent.resolve()
    target = (folder / candidate).resolve()
    if not target.is_relative_to(folder):
        raise VolumeError(path, f"unsafe path: ElementDataFile {name!r} leads out of "
                                f"{path.parent}")
    if not target.is_file():
        raise VolumeError(path, f"data file {name!r} is missing")
    return target


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


def read_metaimage_header(p: Path) -> tuple[str, tuple[int, ...], np.ndarray, _SitkPixels]:
    """The content hash, size, RAS affine and lazy pixel reader of a MetaImage file (the
    header only is read here; :func:`ingest.reader.open_volume` makes the VolumeFile)."""
    import SimpleITK as sitk

    data_file = data_file_of(p) if p.name.lower().endswith(".mhd") else None
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
    sha = files_sha256([p] + ([data_file] if data_file else []))
    return sha, size, affine, _SitkPixels(p)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with the source location; the reason is the last line
    return (lines[-1] if lines else type(exc).__name__)[:200]
