"""What passes from the reader thread (read, prepare) to the calling thread (batch, embed,
write), and the bounded queue it passes through (:class:`Handover`).

The queue holds at most ``prefetch`` items, so memory is one volume being read plus a fixed
number of chunks, whatever the number of volumes. All store calls stay on the calling thread
(an embedded engine handle is not safe for concurrent calls): a source that must consult the
store before it is opened (a PACS series already indexed is not retrieved) sends an
:class:`Ask` and waits for the write stage's answer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ingest.report import IngestReport
from ingest.stages.read import Source
from ingest.stages.stats import PipelineStats
from ingest.volume import Volume

POLL_S = 0.1  # how often a blocked reader looks whether the ingest was stopped


@dataclass
class Start:
    """A volume read and windowed; ``volume.data`` is a (Z, 0, 0) placeholder (the pixels
    travel in chunks). The write stage sets ``cancel`` when it skips or fails the volume."""

    seq: int
    volume: Volume
    mode: str
    t0: float
    gen: str
    source: Source
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Chunk:
    """Slices ``start:start + len(x)`` of volume ``seq``: model input (``prepared``, CPU) or
    windowed slices in pinned host memory (CUDA)."""

    seq: int
    start: int
    x: torch.Tensor
    prepared: bool

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.x.element_size() * self.x.nelement())


@dataclass
class Settled:
    """A report decided on the reader thread (a file that cannot be opened or read)."""

    report: IngestReport


@dataclass
class Ask:
    """A source asking the write stage, before it is opened, whether to read it at all:
    ``report`` is the answer's report when it is not read (skipped, failed)."""

    source: Source
    report: IngestReport | None = None
    answered: threading.Event = field(default_factory=threading.Event)


@dataclass
class End:
    """End of stream; ``error`` is an unexpected exception raised on the reader thread."""

    error: BaseException | None = None


Item = Start | Chunk | Settled | Ask | End


class Handover:
    """The bounded queue between the two threads, and the reader thread itself."""

    def __init__(self, prefetch: int, stats: PipelineStats) -> None:
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=max(1, prefetch))
        self.stats = stats
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, produce: Callable[[], None]) -> None:
        """Run ``produce`` on the reader thread; an exception there ends the stream with it
        (raised again on the calling thread by :meth:`get`'s caller)."""
        def run() -> None:
            try:
                produce()
                self.put(End())
            except BaseException as exc:  # surfaced on the calling thread
                self.put(End(exc))

        self.thread = threading.Thread(target=run, name="medir-ingest-reader", daemon=True)
        self.thread.start()

    def put(self, item: Item) -> bool:
        """Hand ``item`` over, waiting for room; False when the ingest was stopped."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
            except queue.Full:
                continue
            self.stats.peak_queue_chunks = max(self.stats.peak_queue_chunks, self.queue.qsize())
            return True
        return False

    def ask(self, question: Ask) -> bool:
        """Hand ``question`` over and wait for its answer; False when the ingest was stopped
        (the write stage never answers a question it failed on)."""
        if not self.put(question):
            return False
        while not question.answered.wait(POLL_S):
            if self.stop.is_set():
                return False
        return True

    def get(self) -> Item:
        """The next item (calling thread); the wait counts as ``wait_s``."""
        t0 = time.perf_counter()
        item = self.queue.get()
        self.stats.wait_s += time.perf_counter() - t0
        return item

    def close(self) -> None:
        """Stop the reader thread and join it, unblocking it if it waits on a full queue."""
        self.stop.set()
        while self.thread is not None and self.thread.is_alive():
            try:
                self.queue.get_nowait()
            except queue.Empty:
                self.thread.join(timeout=0.05)
