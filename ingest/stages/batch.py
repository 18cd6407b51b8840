"""The batch stage (calling thread): prepared chunks → batches of exactly ``batch_size`` rows,
and the embedded rows back to the volumes they came from.

Chunks arrive in volume order, each at most ``batch_size`` slices of one volume. Small volumes
share a batch (a batch may hold the tail of one volume and the head of the next); a chunk
that overflows the batch being filled is split, its tail waits for the next one. After the
forward pass :func:`route` gives each piece its rows, so a volume's vectors are in slice
order whatever batches its slices travelled in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ingest.stages.handover import Chunk
from ingest.stages.stats import PipelineStats


class Batcher:
    """Fills batches of exactly ``size`` rows from chunks, in order."""

    def __init__(self, size: int, stats: PipelineStats) -> None:
        self.size = max(size, 1)
        self.stats = stats
        self.pending: list[Chunk] = []  # the batch being filled
        self.rows = 0

    def add(self, chunk: Chunk) -> list[list[Chunk]]:
        """Queue ``chunk``; the full batches it completes, in order (run each before the
        next ``add``)."""
        full = []
        rest: Chunk | None = chunk
        while rest is not None:
            room = self.size - self.rows
            if rest.rows > room:
                head = Chunk(rest.seq, rest.start, rest.x[:room], rest.prepared)
                rest = Chunk(rest.seq, rest.start + room, rest.x[room:], rest.prepared)
            else:
                head, rest = rest, None
            self.pending.append(head)
            self.rows += head.rows
            if self.rows >= self.size:
                full.append(self.take())
        return full

    def take(self) -> list[Chunk]:
        """The pending chunks as a batch (the last, partial one at the end of the stream);
        their buffered bytes leave the buffers."""
        batch, self.pending, self.rows = self.pending, [], 0
        for c in batch:
            self.stats.add_buffered(-c.nbytes)
        return batch

    def drop(self, keep: Callable[[int], bool]) -> None:
        """Discard the pending chunks of volumes no longer wanted (``keep(seq)`` false: a
        volume that failed while part of it was waiting here)."""
        gone = [c for c in self.pending if not keep(c.seq)]
        self.pending = [c for c in self.pending if keep(c.seq)]
        self.rows = sum(c.rows for c in self.pending)
        for c in gone:
            self.stats.add_buffered(-c.nbytes)


def route(batch: list[Chunk], y: np.ndarray) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Each chunk of ``batch`` with its rows of the batch's output ``y``."""
    row = 0
    for c in batch:
        yield c, y[row:row + c.rows]
        row += c.rows
