"""Index series from a PACS over DICOMweb (QIDO-RS to query, WADO-RS to retrieve).

A source is written ``dicomweb+http://host:port/dicom-web`` (or ``dicomweb+https://``), or
``pacs`` for the server of the settings (``MEDIR_PACS__URL``). It may name a study or a series:
``.../studies/<StudyInstanceUID>``, ``.../studies/<uid>/series/<SeriesInstanceUID>`` or
``.../series/<SeriesInstanceUID>``. Every HTTP exchange goes through ``dicomweb-client``.

Each matching series is a :class:`PacsSeries` — the pipeline's volume-source shape
(``volume_id``, ``source``, ``open() -> VolumeFile``). ``open()`` retrieves that one series with
WADO-RS into memory (never a whole study, never to disk) and builds the volume from the
datasets with :func:`ingest.dicom.series_from_datasets`. The volume id is the
SeriesInstanceUID; the content hash covers the SOP Instance UIDs and the pixel bytes, so a
re-run skips unchanged series, and a cheaper check (:func:`already_indexed`) compares the
series' SOP Instance UIDs (one QIDO request) before anything is retrieved.

Credentials (basic or bearer token) come from the settings or the URL's user info; they are
never part of a source string, a message or a payload (:func:`mask`).

The server is not trusted (docs/reliability.md): every exchange is bounded in time and bytes
(:mod:`ingest.pacs_http`), a query in pages (``MEDIR_PACS__MAX_PAGES``, a repeated page stops
it), and every field read from an answer is checked; a malformed row is skipped and counted. A
server that refuses or cannot be reached raises :class:`PacsUnavailable` (every series would
fail the same way); any other :class:`PacsError` concerns the one exchange, e.g. one series.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ingest.dicom import series_from_datasets
from ingest.pacs_http import AnswerTooLarge, BoundedSession, DeadlineExceeded
from ingest.reader import Limits, VolumeFile
from medir.config import LimitsSettings, PacsSettings, Settings
from medir.errors import ConfigError, MedirError, VolumeError

log = logging.getLogger(__name__)

SCHEME_PREFIX = "dicomweb+"
SETTINGS_SOURCE = "pacs"  # "the PACS of the settings"
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID = 64  # characters of a DICOM UID (PS3.5 9.1)
PAGE_ROWS = 1000  # rows asked for per QIDO-RS page (limit); more in one answer are ignored
# the payload key holding the digest of a series' SOP Instance UIDs (pre-retrieval skip)
INSTANCES_KEY = "dicom_instances_sha256"

# Series of these modalities hold no image volume; they are reported, never retrieved.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTRECORD",
                                  "DOC", "REG", "FID", "PLAN", "AU", "ECG"})

TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SOP_UID = "00080018"
TAG_MODALITY = "00080060"
TAG_BODY_PART = "00180015"
TAG_STUDY_DATE = "00080020"
TAG_N_INSTANCES = "00201209"
KEYWORDS = {TAG_STUDY_UID: "StudyInstanceUID", TAG_SERIES_UID: "SeriesInstanceUID",
            TAG_SOP_UID: "SOPInstanceUID", TAG_MODALITY: "Modality",
            TAG_BODY_PART: "BodyPartExamined", TAG_STUDY_DATE: "StudyDate",
            TAG_N_INSTANCES: "NumberOfSeriesRelatedInstances"}

T = TypeVar("T")


class PacsError(MedirError):
    """The PACS answered something unusable, too large or too slow for one exchange (one
    line); the exchanges after it may still succeed."""


class PacsUnavailable(PacsError):
    """The PACS refused us (authentication) or cannot be reached: every exchange would fail."""


def normalise_source(text: str) -> str:
    """Undo a collapsed ``//`` (``dicomweb+http:/host`` from a path-typed argument)."""
    m = re.match(r"^(dicomweb\+https?):/(?!/)", text)
    return f"{m.group(1)}://{text[m.end():]}" if m else text


def is_dicomweb_source(text: str) -> bool:
    t = normalise_source(str(text))
    return t.startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://")) or \
        t == SETTINGS_SOURCE or t.startswith(SETTINGS_SOURCE + "/")


@dataclass(frozen=True)
class Target:
    """A DICOMweb server: base URL without credentials, and how to authenticate."""

    base_url: str  # http(s)://host:port/prefix, no user info, no trailing slash
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout: float = 30.0  # seconds a connect or one read may stall
    request_timeout: float = 600.0  # seconds one exchange may take in all
    max_response_bytes: int = 16 << 20  # one JSON answer
    max_series_bytes: int = 16 << 30  # one series retrieval (the reader limit, limits.max_bytes)
    max_pages: int = 1000  # pages of one query / of the change feed per poll

    @property
    def display(self) -> str:
        return SCHEME_PREFIX + self.base_url

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]

    def series_source(self, study_uid: str, series_uid: str) -> str:
        return f"{self.display}/studies/{study_uid}/series/{series_uid}"


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: the server plus an optional study and series."""

    target: Target
    study_uid: str | None = None
    series_uid: str | None = None


def mask(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret (and URL user info) replaced by ``***``."""
    for s in secrets:
        if s:
            text = text.replace(s, "***").replace(quote(s, safe=""), "***")
    return re.sub(r"(https?://)[^/@\s]+@", r"\1***@", text)


def parse_source(source: str, settings: Settings | PacsSettings) -> SourceSpec:
    """``dicomweb+http://...[/studies/S][/series/X]`` or ``pacs[/studies/S][/series/X]``
    (``pacs``: the server of the settings, whose credentials go only to that server)."""
    pacs = settings.pacs if isinstance(settings, Settings) else settings
    limits = settings.limits if isinstance(settings, Settings) else LimitsSettings()
    text = normalise_source(source.strip())
    if text == SETTINGS_SOURCE or text.startswith(SETTINGS_SOURCE + "/"):
        if not pacs.url:
            raise ConfigError("no PACS configured: set MEDIR_PACS__URL (e.g. "
                              "http://orthanc:8042/dicom-web) or give dicomweb+http://...")
        rest = text[len(SETTINGS_SOURCE):]
        text = SCHEME_PREFIX + pacs.url.rstrip("/") + rest
    if not text.startswith(SCHEME_PREFIX):
        raise ConfigError(f"not a DICOMweb source: {mask(text, [])} (expected "
                          "dicomweb+http://host:port/dicom-web)")
    url = text[len(SCHEME_PREFIX):]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"bad DICOMweb URL {mask(text, [])}: expected "
                          "dicomweb+http(s)://host[:port]/path")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"bad port in DICOMweb URL {mask(text, [])}") from None
    path = parts.path.rstrip("/")
    series_uid = study_uid = None
    m = re.search(r"/series/([^/]+)$", path)
    if m:
        series_uid, path = m.group(1), path[:m.start()]
    m = re.search(r"/studies/([^/]+)$", path)
    if m:
        study_uid, path = m.group(1), path[:m.start()]
    for uid in (study_uid, series_uid):
        if uid is not None and not UID_RE.match(uid):
            raise ConfigError(f"bad UID {uid!r} in {mask(text, [])}")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    base = urlunsplit((parts.scheme, host, path, "", "")).rstrip("/")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    token = None
    if username is None and _same_server(base, pacs.url):
        username = pacs.username
        password = pacs.password.get_secret_value() if pacs.password else None
        token = pacs.token.get_secret_value() if pacs.token else None
    target = Target(base, username, password, token, pacs.timeout, pacs.request_timeout,
                    pacs.max_response_bytes, limits.max_bytes, pacs.max_pages)
    return SourceSpec(target, study_uid, series_uid)


def _same_server(base: str, configured: str | None) -> bool:
    """Settings credentials go only to the configured server (never to another host)."""
    if not configured:
        return False
    a, b = urlsplit(base), urlsplit(configured.rstrip("/"))
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QidoFilters:
    """QIDO-RS filters of a series search (all optional; dates as YYYYMMDD)."""

    study_uid: str | None = None
    series_uid: str | None = None
    modality: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    body_part: str | None = None

    def search_filters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.series_uid:
            out["SeriesInstanceUID"] = self.series_uid
        if self.modality:
            out["Modality"] = self.modality
        if self.body_part:
            out["BodyPartExamined"] = self.body_part
        if self.date_from or self.date_to:
            for d in (self.date_from, self.date_to):
                if d and not re.fullmatch(r"\d{8}", d):
                    raise ConfigError(f"bad date {d!r}: use YYYYMMDD")
            out["StudyDate"] = f"{self.date_from or ''}-{self.date_to or ''}"
        return out


@dataclass(frozen=True)
class SeriesRef:
    study_uid: str
    series_uid: str
    modality: str = ""
    body_part: str = ""
    study_date: str = ""
    n_instances: int | None = None


class BadRow(ValueError):
    """A QIDO-RS row that is not shaped like the DICOM JSON it should be (the reason)."""


def _value(row: object, tag: str) -> object:
    """The first value of ``tag`` in a DICOM JSON row; None when absent or empty."""
    if not isinstance(row, dict):
        raise BadRow("a row is not a JSON object")
    element = row.get(tag)
    if element is None:
        return None
    if not isinstance(element, dict):
        raise BadRow(f"{KEYWORDS[tag]} is not a DICOM JSON element")
    values = element.get("Value")
    if values is None:
        return None
    if not isinstance(values, list):
        raise BadRow(f"{KEYWORDS[tag]} has no Value list")
    return values[0] if values else None


def row_uid(row: object, tag: str) -> str:
    """A UID of the row: present, a string, digits and dots, at most 64 characters (it becomes
    part of WADO-RS URLs and sources)."""
    value = _value(row, tag)
    if value is None:
        raise BadRow(f"no {KEYWORDS[tag]}")
    if not isinstance(value, str) or len(value) > MAX_UID or not UID_RE.match(value):
        raise BadRow(f"{KEYWORDS[tag]} is not a UID")
    return value


def row_text(row: object, tag: str, max_len: int = 64) -> str:
    """A short printable text of the row, "" when absent."""
    value = _value(row, tag)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > max_len or not value.isprintable():
        raise BadRow(f"{KEYWORDS[tag]} is not a short text")
    return value.strip()


def row_count(row: object, tag: str) -> int | None:
    """An IS count of the row (JSON number or numeric string), None when absent."""
    value = _value(row, tag)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**9:
        raise BadRow(f"{KEYWORDS[tag]} is not a count")
    return value


def series_ref(row: object) -> SeriesRef:
    """A series of a QIDO-RS series answer, every field checked (:class:`BadRow`)."""
    date = row_text(row, TAG_STUDY_DATE)
    return SeriesRef(row_uid(row, TAG_STUDY_UID), row_uid(row, TAG_SERIES_UID),
                     row_text(row, TAG_MODALITY, 16), row_text(row, TAG_BODY_PART),
                     date if re.fullmatch(r"\d{8}", date) else "",
                     row_count(row, TAG_N_INSTANCES))


class PacsClient:
    """A dicomweb-client session on one server: every exchange bounded (time, bytes), every
    query paged and bounded, every error turned into one clear line."""

    def __init__(self, target: Target, warn: Callable[[str], None] | None = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.target = target
        self.warn = warn or log.warning
        self.session = BoundedSession(read_timeout=target.timeout,
                                      request_timeout=target.request_timeout,
                                      max_bytes=target.max_response_bytes)
        if target.token:
            self.session.headers["Authorization"] = f"Bearer {target.token}"
        elif target.username is not None:
            self.session.auth = (target.username, target.password or "")
        self.client = DICOMwebClient(target.base_url, session=self.session,
                                     timeout=target.timeout)
        # one attempt per exchange: dicomweb-client would retry any exception (a refused
        # connection, a cut-off answer) 5 times with growing waits
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def error(self, text: str) -> PacsError:
        return PacsError(f"PACS {self.target.display}: {text}")

    def call(self, what: str, fn: Callable[[], Any], *, series: bool = False) -> Any:
        """Run one DICOMweb exchange within its bounds (``series``: a series retrieval, bounded
        by the reader limit); every failure becomes a :class:`PacsError`."""
        t = self.target
        try:
            with self.session.exchange(t.max_series_bytes if series else None):
                return fn()
        except DeadlineExceeded as exc:
            raise self.error(f"{exc} (MEDIR_PACS__REQUEST_TIMEOUT) during {what}; the server "
                             "is too slow or stalls") from None
        except AnswerTooLarge as exc:
            setting = "MEDIR_LIMITS__MAX_BYTES" if series else "MEDIR_PACS__MAX_RESPONSE_BYTES"
            raise self.error(f"{exc} ({setting}) during {what}") from None
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise PacsUnavailable(
                    f"PACS {t.display}: authentication failed (HTTP {code}) during {what}; "
                    "check MEDIR_PACS__USERNAME / MEDIR_PACS__PASSWORD or MEDIR_PACS__TOKEN"
                ) from None
            raise self.error(f"HTTP {code} during {what}") from None
        except requests.ConnectTimeout:
            raise PacsUnavailable(f"PACS {t.display}: unreachable (timed out connecting after "
                                  f"{t.timeout:g} s)") from None
        except requests.Timeout:
            raise self.error(f"timed out after {t.timeout:g} s during {what}") from None
        except requests.ConnectionError as exc:
            if "Read timed out" in str(exc):  # a stalled body (urllib3's ReadTimeoutError)
                raise self.error(f"timed out after {t.timeout:g} s during {what}") from None
            raise PacsUnavailable(f"PACS {t.display}: unreachable "
                                  f"({_connection_reason(exc)})") from None
        except requests.RequestException as exc:
            raise self.error(f"{type(exc).__name__} during {what}") from None
        except (MedirError, InvalidDicomError):
            raise
        except Exception as exc:  # anything the server's bytes make a parser raise
            msg = mask(str(exc).splitlines()[0] if str(exc) else "", t.secrets)
            raise self.error(f"unusable answer during {what} ({type(exc).__name__}: "
                             f"{msg[:200]})") from None

    def query(self, what: str, fetch: Callable[[int], Any], parse: Callable[[Any], T],
              key: Callable[[T], Hashable]) -> list[T]:
        """Every row of a paged QIDO-RS query (``fetch(offset)``), parsed, first of each key.

        At most ``max_pages`` pages of :data:`PAGE_ROWS` rows (rows past that in one answer
        are left for the next page); a page that repeats the previous one (a server that
        ignores the offset) stops the query. Malformed rows are skipped and counted in one
        warning.
        """
        found: dict[Hashable, T] = {}
        bad: list[str] = []
        previous: list[Hashable] | None = None
        offset = 0
        for number in range(1, self.target.max_pages + 1):
            page = self.call(what, functools.partial(fetch, offset))
            if not isinstance(page, list):
                raise self.error(f"{what}: the answer is not a JSON array of rows")
            if not page:
                break
            page = page[:PAGE_ROWS]
            keys: list[Hashable] = []
            for row in page:
                try:
                    item = parse(row)
                except BadRow as exc:
                    bad.append(str(exc))
                    keys.append(None)
                    continue
                keys.append(key(item))
                found.setdefault(keys[-1], item)
            if keys == previous:
                raise self.error(f"{what}: page {number} repeats page {number - 1} (the "
                                 "server ignores the QIDO-RS offset); stopped")
            previous = keys
            offset += len(page)
        else:
            raise self.error(f"{what}: more than {self.target.max_pages} pages of "
                             f"{PAGE_ROWS} rows; narrow the query or raise "
                             "MEDIR_PACS__MAX_PAGES")
        if bad:
            reasons = "; ".join(sorted(set(bad))[:3])
            self.warn(f"PACS {self.target.display}: {what}: skipped {len(bad)} malformed "
                      f"row(s) ({reasons})")
        return list(found.values())

    def search_series(self, filters: QidoFilters) -> list[SeriesRef]:
        """Every series matching the filters (QIDO-RS, all pages)."""
        fields = ["StudyDate", "Modality", "BodyPartExamined",
                  "NumberOfSeriesRelatedInstances"]
        search = filters.search_filters()
        refs = self.query("QIDO-RS series search", lambda offset: self.client.search_for_series(
            study_instance_uid=filters.study_uid, search_filters=search, fields=fields,
            limit=PAGE_ROWS, offset=offset), series_ref, lambda r: r.series_uid)
        return sorted(refs, key=lambda r: (r.study_date, r.study_uid, r.series_uid))

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef:
        refs = self.search_series(QidoFilters(study_uid=study_uid, series_uid=series_uid))
        refs = [r for r in refs if r.series_uid == series_uid]
        if not refs:
            raise PacsError(f"PACS {self.target.display}: no series {series_uid}")
        return refs[0]

    def instance_uids(self, ref: SeriesRef) -> list[str]:
        uids = self.query("QIDO-RS instance search", lambda offset:
                          self.client.search_for_instances(
                              study_instance_uid=ref.study_uid,
                              series_instance_uid=ref.series_uid, fields=["SOPInstanceUID"],
                              limit=PAGE_ROWS, offset=offset),
                          lambda row: row_uid(row, TAG_SOP_UID), lambda u: u)
        return sorted(uids)

    def iter_series(self, ref: SeriesRef) -> Iterator[Dataset]:
        """The series' instances as datasets, streamed one part at a time (WADO-RS); the whole
        retrieval is one exchange, bounded by the reader limit (``limits.max_bytes``)."""
        it = self.call("WADO-RS retrieve", lambda: self.client.iter_series(
            ref.study_uid, ref.series_uid), series=True)
        while True:
            ds = self.call("WADO-RS retrieve", lambda: next(it, None), series=True)
            if ds is None:
                return
            yield ds


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle, reason in (("Connection refused", "connection refused"),
                           ("Name or service not known", "host not found"),
                           ("nodename nor servname", "host not found"),
                           ("Temporary failure in name resolution", "host not found"),
                           ("No route to host", "no route to host"),
                           ("timed out", "timed out")):
        if needle in text:
            return reason
    return type(exc).__name__


def instances_digest(sop_uids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
@dataclass
class PacsSeries:
    """One series of a PACS as a volume source: ``volume_id``, ``source``, ``open()``."""

    target: Target
    ref: SeriesRef
    volume_id: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        self.volume_id = self.volume_id or self.ref.series_uid
        self.source = self.source or self.target.series_source(self.ref.study_uid,
                                                               self.ref.series_uid)

    def open(self, client: PacsClient | None = None, limits: Limits | None = None
             ) -> VolumeFile:
        """Retrieve this series (in memory) and return its volume file; its declared size is
        checked against ``limits`` (the settings', :meth:`ingest.reader.Limits.of`; default
        the built-in ones) before any pixel is decoded."""
        own = client is None
        c = client or PacsClient(self.target)
        try:
            datasets = list(c.iter_series(self.ref))
        except InvalidDicomError:
            raise VolumeError(self.source, "the PACS sent an instance that is not a DICOM "
                                           "Part 10 object (no preamble/DICM)") from None
        finally:
            if own:
                c.close()
        if not datasets:
            raise VolumeError(self.source, "the PACS returned no instances for this series")
        series, skipped = series_from_datasets(datasets, label=self.source)
        mine = [s for s in series if s.series_uid == self.ref.series_uid]
        if not mine:
            why = "; ".join(sorted({f"{s.kind}: {s.reason}" for s in skipped})) or \
                "no image series"
            raise VolumeError(self.source, f"not ingested ({why[:300]})")
        s = mine[0]
        s.meta[INSTANCES_KEY] = instances_digest(
            [str(ds.get("SOPInstanceUID", "")) for ds in s.datasets])
        vf = s.open(limits)
        if len(skipped):
            vf.meta["dicom_skipped_instances"] = str(len(skipped))
        return vf


def list_series(spec: SourceSpec, filters: QidoFilters,
                warn: Callable[[str], None] | None = None) -> list[PacsSeries]:
    """The series of a source (its study/series narrow the filters), in a stable order;
    ``warn`` gets the line about malformed rows skipped (default: the log)."""
    f = QidoFilters(study_uid=spec.study_uid or filters.study_uid,
                    series_uid=spec.series_uid or filters.series_uid,
                    modality=filters.modality, date_from=filters.date_from,
                    date_to=filters.date_to, body_part=filters.body_part)
    with PacsClient(spec.target, warn) as c:
        refs = c.search_series(f)
    return [PacsSeries(spec.target, r) for r in refs]


def open_pacs_source(source: str, settings: Settings | PacsSettings) -> VolumeFile:
    """A volume file for a PACS series source (``.../series/<uid>``), e.g. as a query, under
    the settings' reader limits (full :class:`Settings`; with the PACS group alone, the
    built-in ones)."""
    spec = parse_source(source, settings)
    if not spec.series_uid:
        raise ConfigError(f"{spec.target.display}: name one series "
                          "(.../series/<SeriesInstanceUID>) to use it as a volume")
    with PacsClient(spec.target) as c:
        ref = c.find_series(spec.series_uid, spec.study_uid)
        limits = Limits.of(settings.limits) if isinstance(settings, Settings) else None
        return PacsSeries(spec.target, ref).open(c, limits)


def already_indexed(store: Any, collection: str, series: PacsSeries, embedder_id: str,
                    client: PacsClient) -> bool:
    """True when this series, with exactly these instances, is indexed for this embedder.

    One QIDO-RS request instead of a WADO-RS retrieval; a changed series (instances added,
    removed or replaced) does not match and is retrieved again.
    """
    from search.store import COMPLETE, Filter

    if collection not in store.collections():
        return False
    flt = Filter({"volume_id": series.volume_id, "embedder": embedder_id, "state": COMPLETE})
    first = next(iter(store.scroll(collection, flt, batch=1)), None)
    if first is None:
        return False
    stored = str(first.payload.get(INSTANCES_KEY, ""))
    return bool(stored) and stored == instances_digest(client.instance_uids(series.ref))


def settings_target(pacs: PacsSettings) -> Target:
    if not pacs.url:
        raise ConfigError("no PACS configured: set MEDIR_PACS__URL")
    return parse_source(SETTINGS_SOURCE, pacs).target
