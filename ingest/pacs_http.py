"""HTTP exchanges bounded in everything the server controls: time and bytes.

``requests``' ``timeout`` bounds one connect and each read, not an exchange: a server that sends
one byte every few seconds keeps a request alive forever, and an answer is held in memory
whatever its size. :class:`BoundedSession` (the session dicomweb-client is given) bounds each
exchange — its redirects included — by

- a **deadline**: the connect and every read wait at most the read timeout and never past the
  deadline; the status line and headers are cut off at the deadline by a watchdog that shuts
  the socket down; the body is read one network read at a time, the deadline checked between
  reads (so an overrun is stopped within one read timeout);
- **bytes per answer**: a declared ``Content-Length`` above the limit is refused before the
  body is read, and a body is cut off as soon as it passes the limit (after decompression).

An exchange that overruns raises :class:`DeadlineExceeded` or :class:`AnswerTooLarge` (both
``requests.RequestException``, naming the URL path, never the query or credentials), and the
connection is closed. The caller (``ingest.dicomweb.PacsClient``) turns them into one line.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

READ_CHUNK = 1 << 16
MAX_REDIRECTS = 5

# the deadline (time.monotonic()) of the exchange this thread is running, if any
_LOCAL = threading.local()


class ExchangeError(requests.RequestException):
    """An exchange stopped by its bounds; ``path`` is the URL path (no query, no user info)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class DeadlineExceeded(ExchangeError):
    """The exchange took longer than its deadline (``seconds``)."""

    def __init__(self, path: str, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(path, f"GET {path} took longer than {seconds:g} s")


class AnswerTooLarge(ExchangeError):
    """The answer is (or declares itself) larger than ``limit`` bytes."""

    def __init__(self, path: str, limit: int) -> None:
        self.limit = limit
        super().__init__(path, f"the answer to GET {path} is larger than {limit} bytes")


def url_path(url: str | None) -> str:
    return urlsplit(url or "").path or "/"


class BoundedSession(requests.Session):
    """A ``requests.Session`` whose every exchange is bounded in time and bytes (module doc)."""

    def __init__(self, *, read_timeout: float, request_timeout: float, max_bytes: int) -> None:
        super().__init__()
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.max_bytes = max_bytes  # of one answer, for exchanges outside :meth:`exchange`
        self.max_redirects = MAX_REDIRECTS
        self._limit: int | None = None
        adapter = _WatchdogAdapter()
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    @contextmanager
    def exchange(self, max_bytes: int | None = None) -> Iterator[None]:
        """One logical exchange: one deadline for every request made inside (the outermost
        context sets it), and ``max_bytes`` per answer (default: the session's)."""
        outer = getattr(_LOCAL, "deadline", None) is None
        if outer:
            _LOCAL.deadline = time.monotonic() + self.request_timeout
        previous, self._limit = self._limit, max_bytes
        try:
            yield
        finally:
            self._limit = previous
            if outer:
                _LOCAL.deadline = None

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        outer = getattr(_LOCAL, "deadline", None) is None
        if outer:  # a request outside exchange(): it is an exchange of its own
            _LOCAL.deadline = time.monotonic() + self.request_timeout
        deadline: float = _LOCAL.deadline
        path = url_path(request.url)
        limit = self._limit if self._limit is not None else self.max_bytes
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(path, self.request_timeout)
            wait = min(self.read_timeout, left)
            want_stream = bool(kwargs.get("stream"))
            kwargs.update(stream=True, timeout=(wait, wait))
            try:
                response = super().send(request, **kwargs)
            except ExchangeError:
                raise
            except requests.RequestException:
                if time.monotonic() >= deadline:  # the watchdog cut the headers off
                    raise DeadlineExceeded(path, self.request_timeout) from None
                raise
            try:
                self._bound(response, path, deadline, limit)
                if not want_stream:
                    response.content  # noqa: B018 - read now, within the bounds
            except BaseException:
                response.close()
                raise
            return response
        finally:
            if outer:
                _LOCAL.deadline = None

    def _bound(self, response: requests.Response, path: str, deadline: float,
               limit: int) -> None:
        declared = response.headers.get("Content-Length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            raise AnswerTooLarge(path, limit)
        if not isinstance(response.raw, _BoundedBody):  # a redirect's answer is bound already
            response.raw = _BoundedBody(response.raw, path, deadline, self.request_timeout,
                                        limit)


class _BoundedBody:
    """A response's raw body (urllib3), read one network read at a time: at most ``limit``
    bytes (decoded), and no read started after ``deadline``. Everything else is the raw's."""

    def __init__(self, raw: Any, path: str, deadline: float, seconds: float,
                 limit: int) -> None:
        self._raw = raw
        self._path = path
        self._deadline = deadline
        self._seconds = seconds
        self._limit = limit
        self._read = 0

    def stream(self, amt: int | None = READ_CHUNK,
               decode_content: bool | None = None) -> Iterator[bytes]:
        """What ``requests`` iterates (``iter_content``, ``.content``): ``read1`` returns after
        a single network read, so a trickle cannot hold one call for long."""
        while True:
            if time.monotonic() > self._deadline:
                self._raw.close()
                raise DeadlineExceeded(self._path, self._seconds)
            chunk = self._raw.read1(amt or READ_CHUNK, decode_content=decode_content)
            if not chunk:
                return
            self._read += len(chunk)
            if self._read > self._limit:
                self._raw.close()
                raise AnswerTooLarge(self._path, self._limit)
            yield chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


# ---------------------------------------------------------------------------------------------
# the watchdog: urllib3 connections whose wait for the status line and headers ends at the
# deadline of the exchange (a server trickling its headers is bounded per read only)
def _shut(sock: socket.socket) -> None:
    try:  # socket.socket's own shutdown, also for an SSL socket: wakes the blocked read
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _until_deadline(sock: socket.socket | None, getresponse: Callable[[], Any]) -> Any:
    deadline = getattr(_LOCAL, "deadline", None)
    if deadline is None or sock is None:
        return getresponse()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (sock,))
    timer.daemon = True
    timer.start()
    try:
        return getresponse()
    finally:
        timer.cancel()


class _WatchdogHTTPConnection(HTTPConnection):
    def getresponse(self) -> Any:  # type: ignore[override]
        return _until_deadline(self.sock, super().getresponse)


class _WatchdogHTTPSConnection(HTTPSConnection):
    def getresponse(self) -> Any:  # type: ignore[override]
        return _until_deadline(self.sock, super().getresponse)


class _WatchdogHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchdogHTTPConnection


class _WatchdogHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchdogHTTPSConnection


_POOLS = {"http": _WatchdogHTTPPool, "https": _WatchdogHTTPSPool}


class _WatchdogAdapter(HTTPAdapter):
    """requests' adapter whose connection pools (direct or through an HTTP proxy) use the
    watchdog connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager
