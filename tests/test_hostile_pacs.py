"""A hostile or broken PACS: every way a DICOMweb server can lie, stall or flood, each served by
a tiny real HTTP server (http.server in a thread on a free port) that misbehaves that way.

Each test bounds what the server may cost (pages per query, bytes per answer, seconds per
exchange), or shows that one bad series is reported and passed over while the rest go on. The
servers stop misbehaving after a while (a bounded trickle, a bounded number of pages) so that the
old code failed these tests instead of hanging; no test waits on time for synchronisation.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from rich.console import Console

from ingest.dicomweb import PacsError, QidoFilters, list_series, parse_source
from ingest.follow import Follower, FollowState
from medir.config import Settings, get_settings
from medir.errors import ConfigError
from tests.dicom_fixtures import volume_to_datasets

SECRET = "Hostile-Pw-8c1d-never-shown"
BOUNDARY = "medir-hostile-boundary"
STUDY = "1.2.826.0.1.3680043.8.498.1"


class Handler(BaseHTTPRequestHandler):
    """Hands every GET to the test's ``answer``; a client that hangs up is recorded."""

    protocol_version = "HTTP/1.1"
    server: PacsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        pacs = self.server
        with pacs.lock:
            pacs.paths.append(self.path)
        try:
            pacs.answer(self)
        except (BrokenPipeError, ConnectionResetError):
            pacs.hung_up.set()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # -- answers ----------------------------------------------------------------------------
    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send_bytes(json.dumps(obj).encode(), "application/dicom+json", status)

    def send_bytes(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_stream(self, content_type: str, length: int, chunks: Iterator[bytes]) -> None:
        """Headers announcing ``length`` bytes, then ``chunks`` (counted in ``server.sent``)."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        for chunk in chunks:
            if self.server.stop.is_set():
                return
            self.wfile.write(chunk)
            self.wfile.flush()
            with self.server.lock:
                self.server.sent += len(chunk)

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    @property
    def route(self) -> str:
        return urlsplit(self.path).path


class PacsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answer: Callable[[Handler], None] = lambda h: h.send_error(404)
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()  # the test is over: stop trickling
        self.hung_up = threading.Event()  # a client closed the connection mid-answer
        self.sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/dicom-web"

    @property
    def source(self) -> str:
        return f"dicomweb+{self.url}"

    def requests_to(self, prefix: str) -> int:
        with self.lock:
            return sum(p.startswith(prefix) for p in self.paths)


@pytest.fixture
def pacs() -> Iterator[PacsServer]:
    server = PacsServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _settings(pacs: PacsServer, limits: dict[str, int] | None = None, **pacs_over: Any
              ) -> Settings:
    p: dict[str, Any] = {"url": pacs.url, "username": "medir", "password": SECRET,
                         "timeout": 5.0, "request_timeout": 30.0}
    p.update(pacs_over)
    return Settings(pacs=p, limits=limits or {})  # type: ignore[arg-type]


def _one_line(exc: BaseException, pacs: PacsServer) -> str:
    text = str(exc)
    assert "\n" not in text and SECRET not in text and "Traceback" not in text
    assert pacs.source in text, text  # names the server
    return text


def _element(vr: str, value: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def series_row(series: str, study: str = STUDY, modality: str = "CT") -> dict[str, Any]:
    return {"0020000D": _element("UI", study), "0020000E": _element("UI", series),
            "00080060": _element("CS", modality), "00080020": _element("DA", "20240102")}


# ---------------------------------------------------------------------------------------------
# QIDO-RS paging
def test_a_server_ignoring_offset_is_stopped_after_a_repeated_page(pacs: PacsServer) -> None:
    page = [series_row(f"1.2.3.{i}") for i in range(3)]

    def answer(h: Handler) -> None:  # the same rows whatever the offset; [] only much later
        h.send_json(page if pacs.requests_to("/dicom-web/series") < 300 else [])

    pacs.answer = answer
    with pytest.raises(PacsError) as err:
        list_series(parse_source("pacs", _settings(pacs)), QidoFilters())
    assert "offset" in _one_line(err.value, pacs)
    assert pacs.requests_to("/dicom-web/series") == 2  # the repeated page was the last one


def test_pages_per_query_are_capped(pacs: PacsServer) -> None:
    def answer(h: Handler) -> None:  # always one more page of new series (until much later)
        n = pacs.requests_to("/dicom-web/series")
        h.send_json([series_row(f"1.2.4.{n}.{i}") for i in range(2)] if n < 300 else [])

    pacs.answer = answer
    with pytest.raises(PacsError) as err:
        list_series(parse_source("pacs", _settings(pacs, max_pages=5)), QidoFilters())
    assert "MEDIR_PACS__MAX_PAGES" in _one_line(err.value, pacs)
    assert pacs.requests_to("/dicom-web/series") == 5


def test_paging_follows_offset_and_limit(pacs: PacsServer) -> None:
    """A well-behaved server that pages: every series once, in order, nothing repeated."""
    rows = [series_row(f"1.2.5.{i}") for i in range(7)]

    def answer(h: Handler) -> None:
        off, lim = int(h.query.get("offset", 0)), int(h.query.get("limit", 3))
        h.send_json(rows[off:off + min(lim, 3)])  # the server's own page size is 3

    pacs.answer = answer
    found = list_series(parse_source("pacs", _settings(pacs)), QidoFilters())
    assert sorted(s.volume_id for s in found) == sorted(f"1.2.5.{i}" for i in range(7))


# ---------------------------------------------------------------------------------------------
# malformed answers
def test_malformed_qido_rows_are_skipped_and_counted(pacs: PacsServer,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    good = [series_row("1.2.6.1"), series_row("1.2.6.2", modality="MR")]
    bad: list[Any] = [
        "not an object", 7, None, [],
        {"0020000E": _element("UI", "1.2.6.3")},  # no StudyInstanceUID
        {"0020000D": _element("UI", STUDY), "0020000E": _element("UI", 5)},  # not a string
        {"0020000D": _element("UI", STUDY), "0020000E": "1.2.6.4"},  # not a DICOM JSON element
        {"0020000D": _element("UI", STUDY), "0020000E": {"Value": "1.2.6.5"}},  # not a list
        {"0020000D": _element("UI", STUDY), "0020000E": _element("UI", "../../x")},  # not a UID
        {**series_row("1.2.6.6"), "00080060": {"vr": "CS", "Value": [{"x": 1}]}},
        {**series_row("1.2.6.7"), "00201209": {"vr": "IS", "Value": ["many"]}},
    ]

    def answer(h: Handler) -> None:
        h.send_json([bad[0], good[0], *bad[1:], good[1]] if h.query.get("offset", "0") == "0"
                    else [])

    pacs.answer = answer
    with caplog.at_level(logging.WARNING):
        found = list_series(parse_source("pacs", _settings(pacs)), QidoFilters())
    assert sorted(s.volume_id for s in found) == ["1.2.6.1", "1.2.6.2"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{len(bad)} malformed" in warnings[0] and pacs.source in warnings[0]
    assert SECRET not in warnings[0] and "../../x" not in warnings[0]


@pytest.mark.parametrize("body", [b"{not json", b'"a string"', b"42", b"null"])
def test_an_answer_that_is_not_a_list_of_rows_is_one_line(pacs: PacsServer,
                                                         body: bytes) -> None:
    pacs.answer = lambda h: h.send_bytes(body, "application/dicom+json")
    with pytest.raises(PacsError) as err:
        list_series(parse_source("pacs", _settings(pacs)), QidoFilters())
    _one_line(err.value, pacs)


# ---------------------------------------------------------------------------------------------
# bytes per answer
def _zeros(total: int, chunk: int = 1 << 16) -> Iterator[bytes]:
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block


def test_a_huge_qido_answer_is_cut(pacs: PacsServer) -> None:
    total = 64 << 20
    pacs.answer = lambda h: h.send_stream("application/dicom+json", total, _zeros(total))
    with pytest.raises(PacsError) as err:
        list_series(parse_source("pacs", _settings(pacs, max_response_bytes=1 << 20)),
                    QidoFilters())
    text = _one_line(err.value, pacs)
    assert "MEDIR_PACS__MAX_RESPONSE_BYTES" in text and "/dicom-web/series" in text
    assert pacs.hung_up.wait(30)  # the client hung up instead of reading 64 MiB
    assert pacs.sent < total


def test_a_huge_multipart_part_is_cut(pacs: PacsServer) -> None:
    """One WADO-RS part of 128 MiB under a 1 MiB reader limit: read no further than that."""
    total = 128 << 20
    head = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode()

    def answer(h: Handler) -> None:
        if h.route.startswith("/dicom-web/series"):
            h.send_json([series_row("1.2.7.1")] if h.query.get("offset", "0") == "0" else [])
        else:
            h.send_stream(f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                          len(head) + total, iter([head, *_zeros(total)]))

    pacs.answer = answer
    spec = parse_source("pacs", _settings(pacs, limits={"max_bytes": 1 << 20}))
    [series] = list_series(spec, QidoFilters())
    with pytest.raises(PacsError) as err:
        series.open()
    text = _one_line(err.value, pacs)
    assert "MEDIR_LIMITS__MAX_BYTES" in text and "/series/1.2.7.1" in text
    assert pacs.hung_up.wait(30)
    assert pacs.sent < total


# ---------------------------------------------------------------------------------------------
# time per exchange
def _trickle(h: Handler, phase: str) -> None:
    """One byte every 20 ms for at most 10 s: each read gets data well within the read
    timeout, so only a deadline on the whole exchange stops it early."""
    stop = h.server.stop
    if phase == "headers":
        h.wfile.write(b"HTTP/1.1 200 OK\r\n")
        filler = b"X-Slow: " + b"a" * 100_000
        for i in range(500):
            if stop.wait(0.02):
                return
            h.wfile.write(filler[i:i + 1])
            h.wfile.flush()
        h.close_connection = True
        return
    h.send_response(200)
    h.send_header("Content-Type", "application/dicom+json")
    h.send_header("Content-Length", "1000000")
    h.end_headers()
    h.wfile.write(b"[")
    for _ in range(500):
        if stop.wait(0.02):
            return
        h.wfile.write(b" ")
        h.wfile.flush()
    h.close_connection = True


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_trickling_server_hits_the_deadline(pacs: PacsServer, phase: str) -> None:
    pacs.answer = lambda h: _trickle(h, phase)
    spec = parse_source("pacs", _settings(pacs, timeout=5.0, request_timeout=1.0))
    with pytest.raises(PacsError) as err:
        list_series(spec, QidoFilters())
    text = _one_line(err.value, pacs)
    assert "MEDIR_PACS__REQUEST_TIMEOUT" in text and "/dicom-web/series" in text
    assert "medir:" not in text  # no user info either


# ---------------------------------------------------------------------------------------------
# one undeliverable series among good ones
def _datasets(series: str, seed: int) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 400, size=(16, 16, 4)).astype(np.float64)
    return volume_to_datasets(data, np.eye(4), "CT", study=STUDY, series=series)


def _multipart(datasets: list[Dataset]) -> bytes:
    out = io.BytesIO()
    for ds in datasets:
        buf = io.BytesIO()
        dcmwrite(buf, ds, enforce_file_format=True)
        out.write(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(buf.getvalue())
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


GOOD_A, BAD, GOOD_B = "1.2.8.1", "1.2.8.2", "1.2.8.3"


def _serve_three(pacs: PacsServer, failing: str = "wado") -> None:
    """Three series (Orthanc ids a, b, c): b cannot be delivered (HTTP 500 on its retrieval,
    or on its lookup in the change feed)."""
    bodies = {uid: _multipart(_datasets(uid, i)) for i, uid in enumerate((GOOD_A, GOOD_B))}
    orthanc = {"a": GOOD_A, "b": BAD, "c": GOOD_B}

    def answer(h: Handler) -> None:
        r, q = h.route, h.query
        if r == "/dicom-web/series":
            h.send_json([series_row(u) for u in (GOOD_A, BAD, GOOD_B)]
                        if q.get("offset", "0") == "0" else [])
        elif r.startswith(f"/dicom-web/studies/{STUDY}/series/") and "/instances" not in r:
            uid = r.rsplit("/", 1)[1]
            if uid in bodies:
                h.send_bytes(bodies[uid], f'multipart/related; type="application/dicom"; '
                                          f"boundary={BOUNDARY}")
            else:
                h.send_error(500)
        elif r == "/changes":
            since = int(q.get("since", 0))
            changes = [{"Seq": i + 1, "ChangeType": "StableSeries", "ID": k,
                        "ResourceType": "Series"} for i, k in enumerate("abc") if i >= since]
            h.send_json({"Changes": changes if q.get("limit") != "0" else [], "Done": True,
                         "Last": 3})
        elif r.startswith("/series/"):
            key = r.split("/")[2]
            if key == "b" and failing == "lookup":
                h.send_error(500)
            elif r.endswith("/study"):
                h.send_json({"MainDicomTags": {"StudyInstanceUID": STUDY}})
            else:
                h.send_json({"MainDicomTags": {"SeriesInstanceUID": orthanc[key],
                                               "Modality": "CT"}})
        else:
            h.send_error(404)

    pacs.answer = answer


def test_one_undeliverable_series_does_not_stop_an_ingest(pacs: PacsServer,
                                                          tmp_path: Path) -> None:
    import tests.plugin_embedder  # noqa: F401  (registers test-tiny)
    from ingest.embedders import get_embedder
    from ingest.pacs_ingest import ingest_series
    from search.store_edge import EdgeStore

    _serve_three(pacs)
    spec = parse_source("pacs", _settings(pacs))
    series = list_series(spec, QidoFilters())
    with EdgeStore(tmp_path / "store") as store:
        reports = ingest_series(series, store, get_embedder("test-tiny", device="cpu"),
                                target=spec.target)
    assert [(r.volume_id, r.status) for r in reports] == [
        (GOOD_A, "indexed"), (BAD, "failed"), (GOOD_B, "indexed")]
    assert "HTTP 500" in reports[1].error and "\n" not in reports[1].error
    assert SECRET not in reports[1].error


@pytest.mark.parametrize("failing", ["wado", "lookup"])
def test_follow_passes_an_undeliverable_series_and_records_it(
        pacs: PacsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    from medir.cli.pacs import follow_pacs

    _serve_three(pacs, failing)
    state = tmp_path / "follow.json"
    for k, v in {"MEDIR_PACS__URL": pacs.url, "MEDIR_PACS__USERNAME": "medir",
                 "MEDIR_PACS__PASSWORD": SECRET, "MEDIR_PACS__FOLLOW_STATE": str(state),
                 "MEDIR_PLUGINS": "tests.plugin_embedder"}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    out = io.StringIO()
    follow_pacs(None, model="test-tiny", mode="changes", once=True, from_now=False,
                queue=False, interval=None, console=Console(file=out, width=250))
    lines = out.getvalue().splitlines()
    handled = [ln for ln in lines if ln.split()[:1] and ln.split()[0] in ("indexed", "failed")]
    assert [ln.split()[0] for ln in handled] == ["indexed", "failed", "indexed"], lines
    assert GOOD_A in handled[0] and GOOD_B in handled[2]
    assert SECRET not in out.getvalue()
    saved = FollowState.load(state)
    assert saved.last_change == 3  # the position moved past the bad series
    assert len(saved.failed) == 1
    failed = saved.failed[0]
    assert failed["error"] and SECRET not in json.dumps(failed)
    if failing == "wado":  # known series: its source, to retry with medir ingest
        assert failed["series"] == BAD and failed["source"].endswith(f"/series/{BAD}")
    else:  # only Orthanc's id is known
        assert failed["orthanc_id"] == "b"


# ---------------------------------------------------------------------------------------------
# the change feed
def _follower(pacs: PacsServer, tmp_path: Path, log: list[str],
              handle: Callable[[Any], None] | None = None, **over: Any) -> Follower:
    spec = parse_source("pacs", _settings(pacs, **over))
    return Follower(spec.target, tmp_path / "follow.json", handle or (lambda s: None),
                    mode="changes", log=log.append)


@pytest.mark.parametrize("page", [
    {"Changes": [{"Seq": "twelve", "ChangeType": "StableSeries", "ID": "a"}], "Done": True,
     "Last": 12},
    {"Changes": [{"Seq": 1.5, "ChangeType": "NewInstance", "ID": "a"}], "Done": True, "Last": 2},
    {"Changes": [{"Seq": None}], "Done": True, "Last": 1},
    {"Changes": [], "Done": True, "Last": "x"},
    {"Changes": "none", "Done": True, "Last": 1},
    ["not", "an", "object"],
])
def test_a_bad_change_feed_is_one_line(pacs: PacsServer, tmp_path: Path, page: Any) -> None:
    pacs.answer = lambda h: h.send_json(page)
    log: list[str] = []
    f = _follower(pacs, tmp_path, log)
    with pytest.raises(PacsError) as err:
        f.poll()
    _one_line(err.value, pacs)
    assert "change feed" in str(err.value)


def test_done_false_without_progress_stops_the_poll(pacs: PacsServer, tmp_path: Path) -> None:
    handled: list[str] = []

    def answer(h: Handler) -> None:  # the same page with "more to come" (until much later)
        done = pacs.requests_to("/changes") >= 300
        h.send_json({"Changes": [{"Seq": 1, "ChangeType": "StableSeries", "ID": "a"},
                                 {"Seq": 2, "ChangeType": "NewInstance", "ID": "i"}],
                     "Done": done, "Last": 2} if h.route == "/changes" else
                    {"MainDicomTags": {"SeriesInstanceUID": "1.2.9.1",
                                       "StudyInstanceUID": STUDY}})

    pacs.answer = answer
    log: list[str] = []
    f = _follower(pacs, tmp_path, log, handle=lambda s: handled.append(s.volume_id))
    f.poll()
    assert handled == ["1.2.9.1"]  # handled once, not once per repeated page
    assert pacs.requests_to("/changes") == 2
    assert any("no progress" in line for line in log), log
    assert f.state.last_change == 2


def test_change_pages_per_poll_are_capped(pacs: PacsServer, tmp_path: Path) -> None:
    """A feed that always has more: one poll reads at most max_pages pages, keeping its place."""
    def answer(h: Handler) -> None:
        since = int(h.query.get("since", 0))
        h.send_json({"Changes": [{"Seq": since + 1, "ChangeType": "NewInstance", "ID": "i"}],
                     "Done": since >= 300, "Last": since + 1})

    pacs.answer = answer
    log: list[str] = []
    f = _follower(pacs, tmp_path, log, max_pages=4)
    f.poll()
    assert pacs.requests_to("/changes") == 4
    assert f.state.last_change == 4
    assert FollowState.load(tmp_path / "follow.json").last_change == 4


def test_follow_state_keeps_failures(tmp_path: Path) -> None:
    path = tmp_path / "follow.json"
    st = FollowState(server="dicomweb+http://h/dw", mode="changes", last_change=7,
                     failed=[{"series": "1.2.3", "orthanc_id": "", "source":
                              "dicomweb+http://h/dw/studies/1.2/series/1.2.3",
                              "error": "HTTP 500", "position": "5"}])
    st.save(path)
    assert FollowState.load(path) == st
    path.write_text(json.dumps({"last_change": 3, "failed": "nope"}))
    with pytest.raises(ConfigError):
        FollowState.load(path)
