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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ingest.dicom import series_from_datasets
from ingest.reader import VolumeFile
from medir.config import PacsSettings, Settings
from medir.errors import ConfigError, MedirError, VolumeError

SCHEME_PREFIX = "dicomweb+"
SETTINGS_SOURCE = "pacs"  # "the PACS of the settings"
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
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


class PacsError(MedirError):
    """The PACS refused, could not be reached, or answered something unusable (one line)."""


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
    timeout: float = 30.0

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
    return SourceSpec(Target(base, username, password, token, pacs.timeout), study_uid,
                      series_uid)


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


def _first(entry: dict[str, Any], tag: str) -> str:
    value = (entry.get(tag) or {}).get("Value") or [""]
    return str(value[0])


class PacsClient:
    """A dicomweb-client session on one server, with errors turned into one clear line."""

    def __init__(self, target: Target) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.target = target
        self.session = requests.Session()
        if target.token:
            self.session.headers["Authorization"] = f"Bearer {target.token}"
        elif target.username is not None:
            self.session.auth = (target.username, target.password or "")
        self.client = DICOMwebClient(target.base_url, session=self.session,
                                     timeout=target.timeout)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one DICOMweb exchange; every failure becomes a :class:`PacsError`."""
        try:
            return fn()
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise PacsError(f"PACS {self.target.display}: authentication failed (HTTP "
                                f"{code}) during {what}; check MEDIR_PACS__USERNAME / "
                                "MEDIR_PACS__PASSWORD or MEDIR_PACS__TOKEN") from None
            raise PacsError(f"PACS {self.target.display}: HTTP {code} during {what}") from None
        except requests.Timeout:
            raise PacsError(f"PACS {self.target.display}: timed out after "
                            f"{self.target.timeout:g} s during {what}") from None
        except requests.ConnectionError as exc:
            raise PacsError(f"PACS {self.target.display}: unreachable "
                            f"({_connection_reason(exc)})") from None
        except requests.RequestException as exc:
            raise PacsError(f"PACS {self.target.display}: {type(exc).__name__} during "
                            f"{what}") from None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            msg = mask(str(exc).splitlines()[0] if str(exc) else "", self.target.secrets)
            raise PacsError(f"PACS {self.target.display}: unusable answer during {what} "
                            f"({type(exc).__name__}: {msg[:200]})") from None

    def search_series(self, filters: QidoFilters) -> list[SeriesRef]:
        """Every series matching the filters (QIDO-RS, all pages)."""
        fields = ["StudyDate", "Modality", "BodyPartExamined",
                  "NumberOfSeriesRelatedInstances"]
        rows = self.call("QIDO-RS series search", lambda: self.client.search_for_series(
            study_instance_uid=filters.study_uid, search_filters=filters.search_filters(),
            fields=fields, get_remaining=True))
        refs = []
        for row in rows or []:
            st, se = _first(row, TAG_STUDY_UID), _first(row, TAG_SERIES_UID)
            if not st or not se:
                continue
            n = _first(row, TAG_N_INSTANCES)
            refs.append(SeriesRef(st, se, _first(row, TAG_MODALITY), _first(row, TAG_BODY_PART),
                                  _first(row, TAG_STUDY_DATE), int(n) if n.isdigit() else None))
        return sorted(refs, key=lambda r: (r.study_date, r.study_uid, r.series_uid))

    def find_series(self, series_uid: str, study_uid: str | None = None) -> SeriesRef:
        refs = self.search_series(QidoFilters(study_uid=study_uid, series_uid=series_uid))
        refs = [r for r in refs if r.series_uid == series_uid]
        if not refs:
            raise PacsError(f"PACS {self.target.display}: no series {series_uid}")
        return refs[0]

    def instance_uids(self, ref: SeriesRef) -> list[str]:
        rows = self.call("QIDO-RS instance search", lambda: self.client.search_for_instances(
            study_instance_uid=ref.study_uid, series_instance_uid=ref.series_uid,
            fields=["SOPInstanceUID"], get_remaining=True))
        return sorted(u for u in (_first(r, TAG_SOP_UID) for r in rows or []) if u)

    def iter_series(self, ref: SeriesRef) -> Iterator[Dataset]:
        """The series' instances as datasets, streamed one part at a time (WADO-RS)."""
        it = self.call("WADO-RS retrieve", lambda: self.client.iter_series(
            ref.study_uid, ref.series_uid))
        while True:
            ds = self.call("WADO-RS retrieve", lambda: next(it, None))
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

    def open(self, client: PacsClient | None = None) -> VolumeFile:
        """Retrieve this series (in memory) and return its volume file."""
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
        vf = s.open()
        if len(skipped):
            vf.meta["dicom_skipped_instances"] = str(len(skipped))
        return vf


def list_series(spec: SourceSpec, filters: QidoFilters) -> list[PacsSeries]:
    """The series of a source (its study/series narrow the filters), in a stable order."""
    f = QidoFilters(study_uid=spec.study_uid or filters.study_uid,
                    series_uid=spec.series_uid or filters.series_uid,
                    modality=filters.modality, date_from=filters.date_from,
                    date_to=filters.date_to, body_part=filters.body_part)
    with PacsClient(spec.target) as c:
        refs = c.search_series(f)
    return [PacsSeries(spec.target, r) for r in refs]


def open_pacs_source(source: str, settings: Settings | PacsSettings) -> VolumeFile:
    """A volume file for a PACS series source (``.../series/<uid>``), e.g. as a query."""
    spec = parse_source(source, settings)
    if not spec.series_uid:
        raise ConfigError(f"{spec.target.display}: name one series "
                          "(.../series/<SeriesInstanceUID>) to use it as a volume")
    with PacsClient(spec.target) as c:
        ref = c.find_series(spec.series_uid, spec.study_uid)
        return PacsSeries(spec.target, ref).open(c)


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
