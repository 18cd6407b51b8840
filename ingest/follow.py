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

A series that cannot be handled (undeliverable, too large or too slow to retrieve, not a
volume) is reported in one line, recorded in the state's ``failed`` list (its source, to retry
with ``medir ingest``) and passed over: the position moves past it. A server that refuses us or
cannot be reached (:class:`PacsUnavailable`) stops the follower with the position kept. The
feed itself is checked: a change sequence number that is not an integer is one error line; a
feed that says more changes follow (``Done: false``) without any past the position ends the
poll; a poll reads at most ``max_pages`` pages.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.dicomweb import (
    MAX_UID,
    UID_RE,
    PacsClient,
    PacsError,
    PacsSeries,
    PacsUnavailable,
    QidoFilters,
    SeriesRef,
    Target,
    mask,
)
from medir.errors import ConfigError, MedirError
from medir.files import atomic_write_text

CHANGES = "changes"
QIDO = "qido"
PAGE = 100
MAX_FAILED = 100  # failed series kept in the state (the newest)
ORTHANC_ID_RE = re.compile(r"^[0-9A-Za-z-]{1,100}$")  # Orthanc ids: SHA-1 in dash groups


@dataclass
class FollowState:
    """Where a follower stands (one file per followed server)."""

    server: str = ""
    mode: str = ""
    last_change: int = 0  # Orthanc change sequence number handled last
    qido_since: str = ""  # YYYYMMDD: the newest StudyDate seen
    qido_seen: list[str] = field(default_factory=list)  # series handled with that date or later
    handled: int = 0  # series handled in total
    # series passed over, newest last: series (UID or ""), orthanc_id, source (to retry with
    # medir ingest, "" when unknown), error, position (change number or StudyDate)
    failed: list[dict[str, str]] = field(default_factory=list)

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
            state.handled = int(state.handled)
            if not isinstance(state.qido_seen, list) or not isinstance(state.failed, list) or \
                    not all(isinstance(f, dict) for f in state.failed):
                raise TypeError("qido_seen / failed are not lists")
            state.failed = [{str(k): str(v) for k, v in f.items()} for f in state.failed]
            return state
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable follow state ({type(exc).__name__}); fix "
                              "or remove it (removing re-offers every series, which the "
                              "ingest skips when unchanged)") from None

    def save(self, path: Path) -> None:
        """Atomic replace: the file is always either the old or the new position."""
        atomic_write_text(path, json.dumps(asdict(self), indent=1))


# indexes or queues one series; returns why it failed (already reported), or None
Handler = Callable[[PacsSeries], str | None]


@dataclass
class ChangePage:
    """One page of Orthanc's change feed, checked: (Seq, ChangeType, ID) sorted by Seq."""

    changes: list[tuple[int, str, str]]
    done: bool
    last: int


def _seq(value: object) -> int | None:
    """A change sequence number: a non-negative JSON integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


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
        self.client = PacsClient(target, warn=log)
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
        except PacsUnavailable:
            raise
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
        return self._changes("/changes?limit=0").last

    def _feed_error(self, what: str) -> PacsError:
        return self.client.error(f"change feed: {what}; stopped at position "
                                 f"{self.state.last_change}")

    def _changes(self, query: str) -> ChangePage:
        """One page of the change feed, every field checked (one error line otherwise)."""
        page = self._get(query, "change feed")
        if not isinstance(page, dict):
            raise self._feed_error("the answer is not a JSON object")
        raw = page.get("Changes", [])
        if not isinstance(raw, list):
            raise self._feed_error("Changes is not a list")
        done = page.get("Done", True)
        if not isinstance(done, bool):
            raise self._feed_error("Done is not true or false")
        last = _seq(page.get("Last", self.state.last_change))
        if last is None:
            raise self._feed_error("Last is not a non-negative integer")
        changes = []
        for ch in raw:
            seq = _seq(ch.get("Seq")) if isinstance(ch, dict) else None
            if seq is None:
                raise self._feed_error("a change has no Seq that is a non-negative integer")
            kind, oid = ch.get("ChangeType"), ch.get("ID")
            changes.append((seq, kind if isinstance(kind, str) else "",
                            oid if isinstance(oid, str) else ""))
        return ChangePage(sorted(changes), done, last)

    def poll(self, stop: threading.Event | None = None) -> int:
        """Handle every series that arrived since the saved position; returns how many
        (failed ones included)."""
        if self.mode == CHANGES:
            return self._poll_changes(stop)
        return self._poll_qido(stop)

    def _poll_changes(self, stop: threading.Event | None) -> int:
        n = 0
        for _ in range(self.target.max_pages):  # the rest waits for the next poll
            if stop and stop.is_set():
                return n
            start = self.state.last_change
            page = self._changes(f"/changes?since={start}&limit={PAGE}")
            for seq, kind, oid in page.changes:
                if stop and stop.is_set():
                    return n
                if seq <= self.state.last_change:  # handled already (a feed repeating itself)
                    continue
                offered = kind == "StableSeries" and self._offer_change(oid, seq)
                n += offered
                self.state.last_change = seq
                if offered:  # other changes are cheap to read again after a crash
                    self.state.save(self.state_path)
            if page.changes:
                self.state.save(self.state_path)
            if page.done or not page.changes:
                if page.last > self.state.last_change:  # only non-series changes remained
                    self.state.last_change = page.last
                    self.state.save(self.state_path)
                return n
            if self.state.last_change <= start:
                self.log(f"PACS {self.target.display}: the change feed says more changes "
                         f"follow (Done: false) but gives none past {start}: no progress, "
                         "this poll ends here")
                return n
        return n

    def _offer_change(self, orthanc_id: str, seq: int) -> bool:
        """Handle the series of one StableSeries change; False when it is gone."""
        try:
            ref = self._series_of(orthanc_id)
        except PacsUnavailable:
            raise
        except PacsError as exc:
            self.log(f"failed   series {orthanc_id or '?'}: {exc}")
            self._failed(str(exc), position=str(seq), orthanc_id=orthanc_id)
            return True
        if ref is None:
            return False
        self._offer(ref, position=str(seq), orthanc_id=orthanc_id)
        return True

    def _offer(self, ref: SeriesRef, position: str, orthanc_id: str = "") -> None:
        """Hand one series to the handler; a failure is reported, recorded and passed over."""
        series = PacsSeries(self.target, ref)
        try:
            why = self.handle(series)
        except PacsUnavailable:
            raise
        except MedirError as exc:
            why = str(exc)
            self.log(f"failed   {series.volume_id}: {why}")
        if why:
            self._failed(why, position, orthanc_id, series)
            return
        self.state.handled += 1
        self.state.failed = [f for f in self.state.failed if f.get("series") != ref.series_uid]

    def _failed(self, error: str, position: str, orthanc_id: str = "",
                series: PacsSeries | None = None) -> None:
        uid = series.volume_id if series else ""
        entry = {"series": uid, "orthanc_id": orthanc_id,
                 "source": series.source if series else "",
                 "error": mask(error, self.target.secrets)[:500], "position": position}
        kept = [f for f in self.state.failed
                if not (uid and f.get("series") == uid) and
                not (orthanc_id and f.get("orthanc_id") == orthanc_id)]
        self.state.failed = [*kept, entry][-MAX_FAILED:]

    def _series_of(self, orthanc_id: str) -> SeriesRef | None:
        """The series of an Orthanc id (None: deleted since); PacsError when the answers are
        unusable."""
        if not ORTHANC_ID_RE.match(orthanc_id):
            raise self.client.error("change feed: a StableSeries change has no usable ID")
        try:
            series = self._get(f"/series/{orthanc_id}", "series lookup")
            study = self._get(f"/series/{orthanc_id}/study", "study lookup")
        except PacsUnavailable:
            raise
        except PacsError as exc:
            if "HTTP 404" in str(exc):  # deleted since the change was recorded
                self.log(f"gone     series {orthanc_id} (deleted from the PACS)")
                return None
            raise
        tags = series.get("MainDicomTags") if isinstance(series, dict) else None
        study_tags = study.get("MainDicomTags") if isinstance(study, dict) else None
        if not isinstance(tags, dict) or not isinstance(study_tags, dict):
            raise self.client.error(f"series lookup {orthanc_id}: no MainDicomTags object")
        uid, st = tags.get("SeriesInstanceUID"), study_tags.get("StudyInstanceUID")
        for name, value in (("SeriesInstanceUID", uid), ("StudyInstanceUID", st)):
            if not isinstance(value, str) or len(value) > MAX_UID or not UID_RE.match(value):
                raise self.client.error(f"series lookup {orthanc_id}: {name} is not a UID")
        modality, body = tags.get("Modality", ""), tags.get("BodyPartExamined", "")
        return SeriesRef(str(st), str(uid), modality if isinstance(modality, str) else "",
                         body if isinstance(body, str) else "")

    def _poll_qido(self, stop: threading.Event | None) -> int:
        refs = self.client.search_series(QidoFilters(date_from=self.state.qido_since or None))
        seen = set(self.state.qido_seen)
        n = 0
        for ref in refs:  # sorted by StudyDate
            if stop and stop.is_set():
                break
            if ref.series_uid in seen:
                continue
            self._offer(ref, position=ref.study_date)
            n += 1
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
