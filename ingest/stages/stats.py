"""What one bulk ingest measured (:class:`PipelineStats`): busy seconds per stage, counters,
and the high-water marks that show memory stays bounded. Benchmarks (``medir bench perf``)
record :meth:`PipelineStats.to_dict` as JSON, so its field names are fixed; add, never rename.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PREFETCH = 4  # chunks of batch_size slices between the reader and the embedder

#: Each stage and the field holding its busy seconds (in pipeline order).
STAGE_FIELDS = {"read": "read_s", "prepare": "intensity_resize_s", "settle": "settle_s",
                "embed": "embed_s", "write": "upsert_s"}


@dataclass
class PipelineStats:
    """What one :func:`ingest.pipeline.ingest_paths` run measured, per stage and for memory
    boundedness.

    Stage times are busy seconds of the thread that runs the stage: ``read_s`` and
    ``intensity_resize_s`` on the reader thread, ``settle_s``, ``embed_s`` and ``upsert_s``
    on the calling thread; with overlap their sum exceeds ``wall_s``. ``peak_*`` are
    high-water marks.
    """

    prefetch: int = DEFAULT_PREFETCH
    batch_size: int = 0
    read_s: float = 0.0  # read stage: open, hash, read + decompress (a PACS retrieval), reorient
    intensity_resize_s: float = 0.0  # prepare stage: window + (CPU) resize/normalise of chunks
    embed_s: float = 0.0  # embed stage: device moves, (CUDA) resize, forward, L2 normalisation
    upsert_s: float = 0.0  # write stage: points, upserts, retire, pending → ready, flushes
    wait_s: float = 0.0  # embedder thread waiting for the reader (starved)
    wall_s: float = 0.0
    slices: int = 0  # embedded slices
    volumes: int = 0  # indexed volumes
    batches: int = 0
    flushes: int = 0
    mixed_batches: int = 0  # batches holding slices of more than one volume
    peak_queue_chunks: int = 0
    peak_buffered_bytes: int = 0  # prepared slices queued or waiting for a batch
    peak_open_volumes: int = 0  # volumes started but not yet written
    # write stage, before embedding: skip/relabel decisions, a source's pre-check (a PACS
    # series' QIDO-RS comparison)
    settle_s: float = 0.0
    _buffered: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_buffered(self, nbytes: int) -> None:
        """Prepared slices entering (> 0) or leaving (< 0) the buffers (either thread)."""
        with self._lock:
            self._buffered += nbytes
            self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffered)

    def stages(self) -> dict[str, float]:
        """Busy seconds of each stage by name (``read``, ``prepare``, ``settle``, ``embed``,
        ``write``)."""
        return {name: float(getattr(self, f)) for name, f in STAGE_FIELDS.items()}

    def summary(self) -> str:
        """One line of stage times, for a log."""
        parts = [f"{name} {s:.2f} s" for name, s in self.stages().items()]
        return (f"{', '.join(parts)}; waiting for the reader {self.wait_s:.2f} s, wall "
                f"{self.wall_s:.2f} s")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if not f.name.startswith("_")}
        out["stages"] = self.stages()
        return out
