"""Pixels of a DICOM series, decoded lazily, one instance at a time.

The decoder is reached only after each instance's header is read again and found to declare
what the scan saw, so that no decoder allocates more than the size checked against the limits
(a file replaced after the scan is refused from its header).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ingest.dicom_geometry import Frame
from ingest.dicom_header import (
    HEADER_ERRORS,
    HEADER_MAX_BYTES,
    declared_itemsize,
    declared_shape,
    read_header,
)
from medir.errors import VolumeError, exception_line


class SeriesPixels:
    """Array proxy: ``proxy[...]`` decodes the slices into a (columns, rows, slices) array."""

    def __init__(self, sources: list[Path | Dataset], frames: list[Frame], label: str,
                 itemsize: int = 8) -> None:
        self.sources = sources
        self.frames = frames
        self.label = label
        self.itemsize = itemsize  # largest stored sample the scan saw, bytes
        self.shape = (frames[0].cols, frames[0].rows, len(frames))

    def __getitem__(self, index: object) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        by_instance: dict[int, list[tuple[int, Frame]]] = {}
        for k, f in enumerate(self.frames):
            by_instance.setdefault(f.instance, []).append((k, f))
        for inst, items in by_instance.items():
            pixels = self._decode(inst, items[0][1], len(items))
            for k, f in items:
                plane = pixels[f.frame] if f.frame is not None else pixels
                if plane.ndim != 2 or plane.shape != (f.rows, f.cols):
                    raise VolumeError(self._name(inst), f"decoded frame has shape {plane.shape},"
                                                        f" expected {(f.rows, f.cols)}")
                vals = plane.astype(np.float64) * f.slope + f.intercept
                out[:, :, k] = vals.T
        return np.asarray(out[index])  # type: ignore[call-overload]

    def _name(self, inst: int) -> str:
        src = self.sources[inst]
        if isinstance(src, Dataset):
            return f"{self.label} instance {src.get('SOPInstanceUID', '?')}"
        return str(src)

    def _decode(self, inst: int, frame: Frame, n_frames: int) -> np.ndarray:
        """The pixels of one instance, after checking that its header still declares what
        the scan saw (``n_frames`` frames like ``frame``), so that a decoder never allocates
        more than the checked size; a deflated file inflates no more than that plus a header."""
        src = self.sources[inst]
        name = self._name(inst)
        expected = frame.rows * frame.cols * n_frames * self.itemsize
        ds = src if isinstance(src, Dataset) else read_header(
            src, pixels=True, max_inflated=HEADER_MAX_BYTES + expected,
            why=f" (a header and the {expected} bytes of pixel data the scan saw declared)")
        try:
            rows, cols, frames = declared_shape(ds)
            itemsize = declared_itemsize(ds)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
        except HEADER_ERRORS as exc:
            raise VolumeError(name, f"unreadable header ({exception_line(exc)})") from None
        if ((rows, cols, frames, samples) != (frame.rows, frame.cols, n_frames, 1)
                or itemsize > self.itemsize):
            raise VolumeError(name, f"the header declares {rows}x{cols} pixels x {frames} "
                                    f"frames x {samples} samples of {itemsize} bytes; the "
                                    f"series was scanned as {frame.rows}x{frame.cols} x "
                                    f"{n_frames} x 1 of at most {self.itemsize} (changed "
                                    "since the scan?); not decoded")
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise VolumeError(name, "no pixel data")
        try:
            arr = ds.pixel_array
        except MemoryError:
            raise VolumeError(name, "pixel data does not fit in memory") from None
        except Exception as exc:  # decoders raise many types (missing plugin, corrupt stream)
            ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
            ts_name = UID(str(ts)).name if ts else "unknown transfer syntax"
            raise VolumeError(name, f"cannot decode pixel data ({ts_name}: "
                                    f"{exception_line(exc)})") from None
        return np.asarray(arr)


__all__ = ["SeriesPixels"]
