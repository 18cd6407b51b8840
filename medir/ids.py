"""Volume identities, one module: the case id of a file and the ``<case>#<k>`` id of a 4D volume.

A 3D volume's id is its case id (``p001/ct``, a SeriesInstanceUID, a file name without its
suffix); the k-th 3D volume along a 4D file's 4th axis is ``<case>#<k>`` (docs/collections.md).
The same ``#k`` tail marks a 4D volume's content id (``<sha256>#<k>``). Everything that builds
or splits such an id goes through :func:`with_index` and :func:`split_index`.
"""

from __future__ import annotations

from pathlib import Path

#: The suffixes a volume file's case id leaves out (longest first where one ends another).
CASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def case_id_of(path: str | Path) -> str:
    """File name without its volume suffix (``a/b/ct_01.nii.gz`` → ``ct_01``)."""
    name = Path(path).name
    for suffix in CASE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def with_index(base: str, index_4d: int | None) -> str:
    """The id of volume ``index_4d`` of a 4D ``base`` (``base#k``); ``base`` for a 3D one."""
    return base if index_4d is None else f"{base}#{index_4d}"


def split_index(volume_id: str) -> tuple[str, int | None]:
    """``(base, k)`` of a 4D volume id ``<base>#<k>`` (a non-empty base, digits after the last
    ``#``); ``(volume_id, None)`` for any other id."""
    base, sep, k = volume_id.rpartition("#")
    if sep and base and k.isdigit():
        return base, int(k)
    return volume_id, None
