"""Downloads against a hostile local HTTP server: cache keyed by URL, timeouts, size caps, redirects,
hash and HTTP errors; no partial file is ever left in the cache."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitattn import download as dl
from splitattn.errors import ConfigError, WeightsError

A = b"content of a" * 100
B = b"content of b, which differs" * 50
STOP = threading.Event()
HITS: dict[str, int] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    """Endpoints: /a/w.bin, /b/w.bin (same name, other content), /hang, /stall, /endless, /huge, /short,
    /r/N (N redirects, then /a/w.bin), /loop/x, /to-file, /w-deadbeef.bin (wrong hash), else 404."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, body: bytes, length: int | None = None, code: int = 200) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

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
