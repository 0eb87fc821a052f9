"""Opening download URLs with urllib: at most :data:`MAX_REDIRECTS` redirects, only to http(s) URLs and
never in a loop, and a total deadline (:class:`Deadline`) that shuts the connection when it is up: the
socket timeout bounds each read only, and a server sending a byte now and then never trips it."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.request
from typing import IO, Any
from urllib.parse import urljoin, urlparse

from ..errors import WeightsError

MAX_REDIRECTS = 5


def _redirect_chain(req: urllib.request.Request, newurl: str) -> list[str]:
    return [*getattr(req, "splitattn_chain", [req.full_url]), newurl]


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows at most :data:`MAX_REDIRECTS` redirects, to http(s) only, and refuses loops."""

    def http_error_302(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                       headers: Any) -> Any:
        target = headers.get("location") or headers.get("uri") or ""
        chain = _redirect_chain(req, urljoin(req.full_url, target))
        problem = None
        if urlparse(chain[-1]).scheme not in ("http", "https"):
            problem = f"a redirect to a non-HTTP(S) URL ({chain[-1]}) is refused"
        elif chain[-1] in chain[:-1]:
            problem = f"the redirects loop ({' -> '.join(chain)})"
        elif len(chain) - 1 > MAX_REDIRECTS:
            problem = f"more than {MAX_REDIRECTS} redirects ({' -> '.join(chain[:3])} -> ...)"
        if problem:
            fp.close()
            raise WeightsError(f"could not download {chain[0]}: {problem}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.splitattn_chain = _redirect_chain(req, newurl)  # type: ignore[attr-defined]
        return new


class Deadline:
    """The total time one download may take: when it is up, the connection's socket is shut down, so a
    read blocked on a slow server returns at once, and :attr:`expired` tells that from the server closing.

    Attributes:
        received: body bytes read so far (None before the response headers), for the message.
        length: the body's announced size, when known.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds, self.expired = seconds, False
        self.received: int | None = None
        self.length: int | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    def track(self, sock: socket.socket) -> None:
        """Shut ``sock`` down at the deadline (at once when it has passed)."""
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shutdown(sock)

    def connection_class(self, base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        """``base`` (HTTP or HTTPS connection) whose socket this deadline tracks."""
        guard = self

        class Guarded(base):  # type: ignore[valid-type,misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                create = getattr(self, "_create_connection", None)
                if create is not None:  # track the TCP socket before a TLS handshake, which can be slow too
                    def tracked(*a: Any, **kw: Any) -> socket.socket:
                        sock = create(*a, **kw)
                        guard.track(sock)
                        return sock

                    self._create_connection = tracked

            def connect(self) -> None:
                super().connect()
                guard.track(self.sock)

        return Guarded

    def error(self, url: str) -> WeightsError:
        """The one-line error of a download stopped by this deadline, saying how far it got."""
        if self.received is None:
            got = "before the response headers arrived"
        else:
            of = f" of {self.length:,}" if self.length is not None else ""
            got = f"after {self.received:,}{of} bytes"
        return WeightsError(f"download of {url} stopped at its {self.seconds:g} s deadline, {got}; check the "
                            "network, or raise $SPLITATTN_DOWNLOAD_DEADLINE (or deadline=)")


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


def _guarded_handlers(guard: Deadline) -> list[urllib.request.BaseHandler]:
    """urllib's HTTP(S) handlers, opening connections whose sockets ``guard`` shuts at its deadline."""
    bases = [urllib.request.HTTPHandler]
    if hasattr(urllib.request, "HTTPSHandler"):  # Python built with ssl
        bases.append(urllib.request.HTTPSHandler)
    handlers = []
    for base in bases:
        # do_open is the one method both handlers call, whatever the Python version's https_open passes.
        def do_open(self: Any, http_class: Any, req: Any, _base: Any = base, **kw: Any) -> Any:
            return _base.do_open(self, guard.connection_class(http_class), req, **kw)

        handlers.append(type(f"Guarded{base.__name__}", (base,), {"do_open": do_open})())
    return handlers


def open_url(url: str, timeout: float, guard: Deadline) -> http.client.HTTPResponse:
    """The response to a GET of ``url`` (http(s) or file), redirects within limits, connections under
    ``guard``.

    Raises:
        WeightsError: an unsupported scheme, a redirect loop, too many redirects, or one to a non-HTTP URL.
        urllib.error.URLError, http.client.HTTPException, OSError: the request failed.
    """
    if urlparse(url).scheme not in ("http", "https", "file"):
        raise WeightsError(f"cannot download {url}: only http(s):// and file:// URLs are supported")
    opener = urllib.request.build_opener(_RedirectHandler, *_guarded_handlers(guard))
    req = urllib.request.Request(url, headers={"User-Agent": "splitattn"})
    return opener.open(req, timeout=timeout)


__all__ = ["MAX_REDIRECTS", "Deadline", "open_url"]
