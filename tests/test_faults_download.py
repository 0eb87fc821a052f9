"""Downloads against a hostile local HTTP server: cache keyed by URL, timeouts, a total deadline, size caps,
redirects, web pages, cut bodies, hash and HTTP errors, a bad cache folder; no partial file is ever left in
the cache, and a cached file that does not load is moved aside."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitattn.errors import ConfigError, InputError, WeightsError
from splitattn.models import _download as dl

A = b"content of a" * 100
B = b"content of b, which differs" * 50
STOP = threading.Event()
HITS: dict[str, int] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Endpoints: /a/w.bin, /b/w.bin (same name, other content), /hang, /stall, /endless, /huge, /short,
    /r/N (N redirects, then /a/w.bin), /loop/x, /to-file, /w-deadbeef.bin (wrong hash), /trickle and
    /trickle-headers (a byte every 20 ms, in the body or the headers), /page and /page-sniff (HTML, by
    Content-Type or by content), /chunk-cut (a chunked body cut short), else 404."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, length: int | None = None, code: int = 200,
              ctype: str | None = None) -> None:
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self) -> None:
        """A byte every 20 ms (never a read timeout) for at most 10 s, or until the client hangs up."""
        deadline = time.monotonic() + 10
        try:
            while not STOP.is_set() and time.monotonic() < deadline:
                self.wfile.write(b"x")
                STOP.wait(0.02)
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        p = self.path
        HITS[p] = HITS.get(p, 0) + 1
        if p in ("/a/w.bin", "/w-deadbeef.bin"):
            self._send(A)
        elif p == "/b/w.bin":
            self._send(B)
        elif p == "/hang":
            STOP.wait(10)  # accepts, never answers (bounded so the thread ends)
        elif p == "/stall":
            self._send(A[:10], length=len(A))
            self.wfile.flush()
            STOP.wait(10)
        elif p == "/short":
            self._send(A[:10], length=len(A))  # then the connection closes
        elif p == "/huge":
            self._send(b"", length=10**12)
        elif p == "/endless":
            self.send_response(200)
            self.end_headers()
            deadline = time.monotonic() + 10
            try:
                while not STOP.is_set() and time.monotonic() < deadline:
                    self.wfile.write(b"x" * 65536)
            except OSError:  # the client hung up
                pass
        elif p.startswith("/r/"):
            n = int(p[3:])
            self._redirect(f"/r/{n - 1}" if n > 0 else "/a/w.bin")
        elif p == "/loop/a":
            self._redirect("/loop/b")
        elif p == "/loop/b":
            self._redirect("/loop/a")
        elif p == "/to-file":
            self._redirect("file:///etc/passwd")
        elif p == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self._trickle()
        elif p == "/trickle-headers":
            self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
            self._trickle()
        elif p == "/page":
            self._send(b"<p>Sign in to continue</p>" * 20, ctype="text/html; charset=utf-8")
        elif p == "/page-sniff":
            self._send(b"\n  <!DOCTYPE html>\n<html><body>Not found</body></html>" * 20,
                       ctype="application/octet-stream")
        elif p == "/chunk-cut":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"a\r\n0123456789\r\n")  # then the connection closes, with no last chunk
        else:
            self.send_error(404, "Not Found")


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    STOP.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        STOP.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("SPLITATTN_CACHE", str(d))
    monkeypatch.setenv("SPLITATTN_DOWNLOAD_TIMEOUT", "5")  # nothing in this file may block for long
    monkeypatch.delenv("SPLITATTN_MAX_DOWNLOAD_BYTES", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return d


def _files(cache: Path) -> list[str]:
    """Every file under the cache, relative (temp and .partial files included)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_same_file_name_under_two_urls_gets_two_cache_entries(base: str, cache: Path) -> None:
    a, b = dl.download(f"{base}/a/w.bin"), dl.download(f"{base}/b/w.bin")
    assert a != b and a.name == b.name == "w.bin"
    assert a.read_bytes() == A and b.read_bytes() == B
    hits = HITS["/a/w.bin"]
    assert dl.download(f"{base}/a/w.bin").read_bytes() == A  # from the cache: no new request
    assert HITS["/a/w.bin"] == hits
    assert a.parent.name == hashlib.sha256(f"{base}/a/w.bin".encode()).hexdigest()[:16]
    assert len(_files(cache)) == 2
    # A name carrying the expected hash prefix uses torch.hub's flat layout (its content is pinned).
    sha = hashlib.sha256(A).hexdigest()[:8]
    assert dl.cache_path(f"{base}/x/m-{sha}.pth", sha) == cache / f"m-{sha}.pth"
    assert dl.cache_path(f"{base}/x/m-{sha}.pth", None).parent.parent == cache
    assert dl.url_file_name("http://h/a/..") == "download"
    assert dl.url_file_name("http://h/%2e%2e/x y") == "x_y"


@pytest.mark.parametrize("path", ["/hang", "/stall"])
def test_a_server_that_stops_answering_times_out(base: str, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                 path: str) -> None:
    monkeypatch.setenv("SPLITATTN_DOWNLOAD_TIMEOUT", "0.5")
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match=rf"{base}{path}: no answer within the 0\.5 s timeout.*"
                                           r"SPLITATTN_DOWNLOAD_TIMEOUT"):
        dl.download(f"{base}{path}")
    assert time.monotonic() - t0 < 4
    assert _files(cache) == []
    with pytest.raises(WeightsError, match=r"0\.3 s timeout"):  # the argument overrides the variable
        dl.download(f"{base}{path}", timeout=0.3)
    assert _files(cache) == []


def test_an_endless_body_is_cut_at_the_size_cap(base: str, cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITATTN_MAX_DOWNLOAD_BYTES", "200000")
    t0 = time.monotonic()
    with pytest.raises(WeightsError, match=rf"{base}/endless stopped: the body grew past 200,000 bytes"):
        dl.download(f"{base}/endless")
    assert time.monotonic() - t0 < 4 and _files(cache) == []
    with pytest.raises(WeightsError, match="grew past 70,000 bytes"):
        dl.download(f"{base}/endless", max_bytes=70_000)
    assert _files(cache) == []


def test_content_length_over_the_cap_or_expected_size_is_refused(base: str, cache: Path) -> None:
    with pytest.raises(WeightsError, match=r"/huge is 1,000,000,000,000 bytes \(Content-Length\), over the "
                                           r"4,294,967,296-byte limit"):
        dl.download(f"{base}/huge")
    with pytest.raises(WeightsError, match=rf"/a/w.bin is {len(A):,} bytes \(Content-Length\), expected 10"):
        dl.download(f"{base}/a/w.bin", expected_size=10)
    assert _files(cache) == []


def test_an_incomplete_body_is_refused(base: str, cache: Path) -> None:
    with pytest.raises(WeightsError, match=rf"{base}/short"):
        dl.download(f"{base}/short")
    assert _files(cache) == []


def test_redirects_are_followed_within_limits(base: str, cache: Path) -> None:
    assert dl.download(f"{base}/r/3").read_bytes() == A
    with pytest.raises(WeightsError, match=r"/loop/a: the redirects loop \(.*/loop/a -> .*/loop/b -> "
                                           r".*/loop/a\)"):
        dl.download(f"{base}/loop/a")
    with pytest.raises(WeightsError, match=rf"/r/9: more than {dl.MAX_REDIRECTS} redirects"):
        dl.download(f"{base}/r/9")
    with pytest.raises(WeightsError, match=r"/to-file: a redirect to a non-HTTP\(S\) URL "
                                           r"\(file:///etc/passwd\) is refused"):
        dl.download(f"{base}/to-file")
    assert _files(cache) == [str(dl.cache_path(f"{base}/r/3").relative_to(cache))]


def test_a_wrong_hash_removes_the_download_and_shows_both(base: str, cache: Path) -> None:
    got = hashlib.sha256(A).hexdigest()
    with pytest.raises(WeightsError, match=rf"hash mismatch for {base}/w-deadbeef.bin: expected a prefix "
                                           rf"deadbeef, got {got[:12]}\.\.\.; the download was deleted"):
        dl.download(f"{base}/w-deadbeef.bin", dl.hash_prefix_in_name(f"{base}/w-deadbeef.bin"))
    assert _files(cache) == []
    # The right prefix downloads into torch.hub's layout; a corrupted entry is then reported, not used.
    path = dl.download(f"{base}/a/w.bin", got[:8])
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match=rf"cached weights {path} have SHA-256 .* expected a prefix "
                                           rf"{got[:8]}"):
        dl.download(f"{base}/a/w.bin", got[:8])


def test_http_errors_name_url_and_status(base: str, cache: Path) -> None:
    with pytest.raises(WeightsError, match=rf"could not download {base}/nope.pth: HTTP 404 Not Found"):
        dl.download(f"{base}/nope.pth")
    with pytest.raises(WeightsError, match=r"only http\(s\):// and file:// URLs"):
        dl.download("ftp://127.0.0.1/w.pth")
    assert _files(cache) == []


def test_ctrl_c_mid_download_leaves_no_partial_file(base: str, cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(resp, tmp, *args):  # type: ignore[no-untyped-def]
        Path(tmp).write_bytes(resp.read(5))
        assert _files(cache), "the temp file exists while downloading"
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_copy_body", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dl.download(f"{base}/b/w.bin")
    assert _files(cache) == []


def test_bad_environment_values_are_named(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    monkeypatch.setenv("SPLITATTN_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match=r"\$SPLITATTN_DOWNLOAD_TIMEOUT must be a positive number, "
                                          r"got 'soon'"):
        dl.download_timeout()
    monkeypatch.setenv("SPLITATTN_MAX_DOWNLOAD_BYTES", "-5")
    with pytest.raises(ConfigError, match=r"\$SPLITATTN_MAX_DOWNLOAD_BYTES must be a positive integer"):
        dl.max_download_bytes()
    monkeypatch.setenv("SPLITATTN_MAX_DOWNLOAD_BYTES", "1000")
    assert dl.max_download_bytes() == 1000


def test_a_server_trickling_bytes_is_stopped_at_the_total_deadline(base: str, cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A byte every 20 ms never trips the 5 s read timeout; only the deadline ends these (the server
    # gives up after 10 s, which would fail the download with another message).
    with pytest.raises(WeightsError, match=rf"download of {base}/trickle stopped at its 1 s deadline, "
                                           r"(after [\d,]+ of 100,000 bytes|before the response headers "
                                           r"arrived); check the network, or raise "
                                           r"\$SPLITATTN_DOWNLOAD_DEADLINE \(or deadline=\)"):
        dl.download(f"{base}/trickle", deadline=1)
    assert _files(cache) == []
    monkeypatch.setenv("SPLITATTN_DOWNLOAD_DEADLINE", "0.5")  # the variable, when no argument is given
    with pytest.raises(WeightsError, match=rf"{base}/trickle-headers stopped at its 0.5 s deadline, before "
                                           "the response headers arrived"):
        dl.download(f"{base}/trickle-headers")
    assert _files(cache) == []
    assert dl.download_deadline() == 0.5
    monkeypatch.setenv("SPLITATTN_DOWNLOAD_DEADLINE", "nan")
    with pytest.raises(ConfigError, match=r"\$SPLITATTN_DOWNLOAD_DEADLINE must be a positive number, "
                                          r"got 'nan'"):
        dl.download_deadline()


def test_the_deadline_message_says_how_far_the_download_got() -> None:
    guard = dl.Deadline(30)
    assert "before the response headers arrived" in str(guard.error("http://h/w.pth"))
    guard.received, guard.length = 1234, 10**6
    assert str(guard.error("http://h/w.pth")) == (
        "download of http://h/w.pth stopped at its 30 s deadline, after 1,234 of 1,000,000 bytes; check the "
        "network, or raise $SPLITATTN_DOWNLOAD_DEADLINE (or deadline=)")
    guard.length = None
    assert "after 1,234 bytes;" in str(guard.error("http://h/w.pth"))


@pytest.mark.parametrize("path, got", [
    ("/page", r"Content-Type text/html; charset=utf-8"),
    ("/page-sniff", r"a body starting b'<!DOCTYPE html>\\n<html><b'"),
])
def test_a_web_page_is_refused_and_not_cached(base: str, cache: Path, path: str, got: str) -> None:
    with pytest.raises(WeightsError, match=rf"{base}{path} answered with a web page \({got}\), not a weights "
                                           r"file .*check the URL.*nothing was cached"):
        dl.download(f"{base}{path}")
    assert _files(cache) == []


def test_a_body_cut_short_is_refused_and_not_cached(base: str, cache: Path) -> None:
    with pytest.raises(WeightsError, match=rf"download of {base}/short is incomplete: got 10 of {len(A):,} "
                                           r"bytes \(the connection closed early\); try again"):
        dl.download(f"{base}/short")
    with pytest.raises(WeightsError, match=rf"download of {base}/chunk-cut is incomplete: the connection "
                                           "closed after 10 bytes; try again; nothing was cached"):
        dl.download(f"{base}/chunk-cut")
    assert _files(cache) == []
    # file:// of something endless that stat() calls empty (/dev/zero) stops at once
    with pytest.raises(WeightsError, match=r"file:///dev/zero stopped: the body is longer than its "
                                           "Content-Length of 0 bytes"):
        dl.download("file:///dev/zero")
    assert _files(cache) == []


def test_a_cache_that_cannot_hold_files_is_named_not_blamed_on_the_network(
        base: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    monkeypatch.setenv("SPLITATTN_CACHE", str(not_a_folder))
    hits = HITS.get("/a/w.bin", 0)
    where = re.escape(str(not_a_folder))
    with pytest.raises(ConfigError, match=rf"^\$SPLITATTN_CACHE={where} cannot hold downloads: {where} is "
                                          r"not a folder; point \$SPLITATTN_CACHE at a writable folder$"):
        dl.download(f"{base}/a/w.bin")
    assert HITS.get("/a/w.bin", 0) == hits  # refused before any request
    # A file where the URL's subfolder of the cache should be
    monkeypatch.setenv("SPLITATTN_CACHE", str(cache))
    blocker = dl.cache_path(f"{base}/a/w.bin").parent
    cache.mkdir(parents=True, exist_ok=True)
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=rf"cannot hold downloads: {re.escape(str(blocker))} is not a "
                                          "folder"):
        dl.download(f"{base}/a/w.bin")
    assert _files(cache) == [blocker.name]


def test_a_cached_download_that_does_not_load_is_moved_aside(base: str, cache: Path, tmp_path: Path) -> None:
    path = dl.download(f"{base}/b/w.bin")
    path.write_bytes(b"truncated")  # as if the server had sent a cut file
    hits = HITS["/b/w.bin"]
    bad = dl.discard_download(path, "not a zip file")
    assert bad == path.with_name("w.bin.bad") and bad.read_bytes() == b"truncated" and not path.exists()
    assert dl.download(f"{base}/b/w.bin").read_bytes() == B  # fetched again
    assert HITS["/b/w.bin"] == hits + 1
    path.write_bytes(b"cut again")
    assert dl.discard_download(path, "cut") == bad and bad.read_bytes() == b"cut again"  # replaces the old
    assert sorted(_files(cache)) == [str(bad.relative_to(cache))]
    # A user's own file is never moved
    own = tmp_path / "mine.pth"
    own.write_bytes(b"x")
    with pytest.raises(InputError, match=rf"{re.escape(str(own))} is not a file in the download cache "
                                         r".*only cached downloads are moved aside"):
        dl.discard_download(own, "not a zip file")
    assert own.read_bytes() == b"x"
