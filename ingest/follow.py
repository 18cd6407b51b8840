"""Follow a PACS: index every new series as it arrives, surviving restarts.

Two feeds:

- **Orthanc changes** (``/changes``, not part of DICOMweb): every ``StableSeries`` event is a
  series that stopped receiving instances. The position is the change sequence number.
- **QIDO-RS by date** (any DICOMweb server): series with StudyDate on or after the newest date
  seen; the series already handled on that date are remembered. A series that arrives late
  with an older StudyDate is not seen by this feed (use the Orthanc feed where available).

The position is kept in a small JSON file (``pacs.follow_state``), replaced atomically
(write, fsync, rename) after each handled series. A restart resumes from the last handled
series: nothing is lost, and a series handled just before a crash is at most offered again,
where the idempotent ingest (SeriesInstanceUID + content hash + embedder) skips it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.dicomweb import PacsClient, PacsError, PacsSeries, QidoFilters, SeriesRef, Target
from medir.errors import ConfigError

CHANGES = "changes"
QIDO = "qido"
PAGE = 100


@dataclass
class FollowState:
    """Where a follower stands (one file per followed server)."""

    server: str = ""
    mode: str = ""
    last_change: int = 0  # Orthanc change sequence number handled last
    qido_since: str = ""  # YYYYMMDD: the newest StudyDate seen
    qido_seen: list[str] = field(default_factory=list)  # series handled with that date or later
    handled: int = 0  # series handled in total

    @classmethod
    def load(cls, path: Path) -> FollowState:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
            state = cls(**known)
            state.last_change = int(state.last_change)
            return state
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable follow state ({type(exc).__name__}); fix "
                              "or remove it (removing re-offers every series, which the "
                              "ingest skips when unchanged)") from None

    def save(self, path: Path) -> None:
        """Atomic replace: the file is always either the old or the new position."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(self), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


Handler = Callable[[PacsSeries], None]


def rest_root(target: Target, changes_url: str | None) -> str:
    """Orthanc's REST root: the setting, else the DICOMweb root minus its last path part."""
    if changes_url:
        return changes_url.rstrip("/")
    base = target.base_url
    for suffix in ("/dicom-web", "/dicomweb", "/wado-rs"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


class Follower:
    """Polls one feed and calls ``handle`` once per new series, in feed order."""

    def __init__(self, target: Target, state_path: Path, handle: Handler, *,
                 mode: str = "auto", changes_url: str | None = None,
                 log: Callable[[str], None] = print) -> None:
        if mode not in ("auto", CHANGES, QIDO):
            raise ConfigError(f"bad follow mode {mode!r}: auto | changes | qido")
        self.target = target
        self.client = PacsClient(target)
        self.rest = rest_root(target, changes_url)
        self.state_path = state_path
        self.handle = handle
        self.log = log
        self.state = FollowState.load(state_path)
        if self.state.server and self.state.server != target.display:
            raise ConfigError(f"{state_path}: follow state belongs to {self.state.server}, "
                              f"not {target.display}; use another MEDIR_PACS__FOLLOW_STATE")
        self.state.server = target.display
        self.mode = self.state.mode or (self._detect() if mode == "auto" else mode)
        if mode != "auto" and self.state.mode and self.state.mode != mode:
            raise ConfigError(f"{state_path}: position is for the {self.state.mode} feed")
        self.state.mode = self.mode

    def close(self) -> None:
        self.client.close()

    # -- feeds --------------------------------------------------------------------------------
    def _get(self, path: str, what: str) -> Any:
        def fetch() -> Any:
            r = self.client.session.get(self.rest + path, timeout=self.target.timeout)
            r.raise_for_status()
            return r.json()
        return self.client.call(what, fetch)

    def _detect(self) -> str:
        try:
            answer = self._get("/changes?limit=0", "change feed probe")
        except PacsError as exc:
            if "HTTP 404" in str(exc) or "unusable answer" in str(exc):
                return QIDO
            raise
        return CHANGES if isinstance(answer, dict) and "Last" in answer else QIDO

    def start_from_now(self) -> None:
        """Skip everything already on the server (only series arriving from now on)."""
        if self.mode == CHANGES:
            self.state.last_change = self._last_seq()
        else:
            refs = self.client.search_series(QidoFilters())
            dates = [r.study_date for r in refs if r.study_date]
            self.state.qido_since = max(dates) if dates else ""
            self.state.qido_seen = sorted(r.series_uid for r in refs
                                          if r.study_date >= self.state.qido_since)
        self.state.save(self.state_path)

    def _last_seq(self) -> int:
        answer = self._get("/changes?limit=0", "change feed")
        return int(answer.get("Last", 0))

    def poll(self, stop: threading.Event | None = None) -> int:
        """Handle every series that arrived since the saved position; returns how many."""
        if self.mode == CHANGES:
            return self._poll_changes(stop)
        return self._poll_qido(stop)

    def _poll_changes(self, stop: threading.Event | None) -> int:
        n = 0
        while not (stop and stop.is_set()):
            page = self._get(f"/changes?since={self.state.last_change}&limit={PAGE}",
                             "change feed")
            changes = page.get("Changes") or []
            for ch in changes:
                if stop and stop.is_set():
                    return n
                seq = int(ch.get("Seq", 0))
                handled = False
                if ch.get("ChangeType") == "StableSeries":
                    ref = self._series_of(str(ch.get("ID", "")))
                    if ref is not None:
                        self.handle(PacsSeries(self.target, ref))
                        n += 1
                        self.state.handled += 1
                        handled = True
                self.state.last_change = max(self.state.last_change, seq)
                if handled:  # other changes are cheap to read again after a crash
                    self.state.save(self.state_path)
            if changes:
                self.state.save(self.state_path)
            if page.get("Done", True) or not changes:
                last = int(page.get("Last", self.state.last_change))
                if last > self.state.last_change:  # only non-series changes remained
                    self.state.last_change = last
                    self.state.save(self.state_path)
                return n
        return n

    def _series_of(self, orthanc_id: str) -> SeriesRef | None:
        if not orthanc_id or "/" in orthanc_id or ".." in orthanc_id:
            return None
        try:
            series = self._get(f"/series/{orthanc_id}", "series lookup")
            study = self._get(f"/series/{orthanc_id}/study", "study lookup")
        except PacsError as exc:
            if "HTTP 404" in str(exc):  # deleted since the change was recorded
                self.log(f"gone     series {orthanc_id} (deleted from the PACS)")
                return None
            raise
        tags = series.get("MainDicomTags") or {}
        uid = str(tags.get("SeriesInstanceUID", ""))
        st = str((study.get("MainDicomTags") or {}).get("StudyInstanceUID", ""))
        if not uid or not st:
            return None
        return SeriesRef(st, uid, str(tags.get("Modality", "")),
                         str(tags.get("BodyPartExamined", "")))

    def _poll_qido(self, stop: threading.Event | None) -> int:
        refs = self.client.search_series(QidoFilters(date_from=self.state.qido_since or None))
        seen = set(self.state.qido_seen)
        n = 0
        for ref in refs:  # sorted by StudyDate
            if stop and stop.is_set():
                break
            if ref.series_uid in seen:
                continue
            self.handle(PacsSeries(self.target, ref))
            n += 1
            self.state.handled += 1
            seen.add(ref.series_uid)
            if ref.study_date > self.state.qido_since:
                self.state.qido_since = ref.study_date
            self.state.qido_seen = sorted(
                r.series_uid for r in refs
                if r.series_uid in seen and r.study_date >= self.state.qido_since)
            self.state.save(self.state_path)
        return n

    def run(self, interval: float, once: bool = False,
            stop: threading.Event | None = None) -> None:
        """Poll until ``stop`` is set (or once); waits ``interval`` seconds between polls."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.poll(stop)
            if once:
                return
            stop.wait(interval)
