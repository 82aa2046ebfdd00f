"""Downloads and weights resolution against a local HTTP server on 127.0.0.1 (no internet)."""

import hashlib
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pantheon.errors import Cancelled, CheckpointError, DownloadError, RegistryError
from pantheon.registry import (
    ModelCard,
    cached_path,
    default_cache_dir,
    download,
    resolve_weights,
    save_card,
    sidecar_path,
)

DATA = bytes(range(256)) * 1200  # 307,200 bytes: several chunks
SHA = hashlib.sha256(DATA).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (mode, bytes)``; mode: ok, wrong, cut (half, then close)."""

    def do_GET(self):
        self.server.hits.append(self.path)
        mode, data = self.server.routes.get(self.path, ("404", b""))
        if mode == "404":
            self.send_error(404)
            return
        if mode == "wrong":
            data = data[::-1]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if mode == "cut" else data)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.routes, srv.hits = {}, []
    srv.url = lambda path: f"http://127.0.0.1:{srv.server_address[1]}{path}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Never touch the real cache, user cards or a proxy."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PANTHEON_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("PANTHEON_BUNDLED_DIR", "PANTHEON_CARDS_PATH", "http_proxy", "HTTP_PROXY",
                "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


def leftovers(directory):
    return sorted(p.name for p in directory.rglob("*.part"))


def make_card(server, sha256=SHA, route="/w.pt", **over):
    d = {"id": "test-weights", "version": "2.0", "model": "nemesis", "task": "test",
         "description": "", "demo": sha256 is not None, "input": {"modality": "CT", "axis_order": "DHW"},
         "labels": [], "file": "pantheon_registry_test_weights.pt", "sha256": sha256,
         "url": server.url(route)}
    d.update(over)
    return ModelCard.from_dict(d)


# -- download ---------------------------------------------------------------------------------

def test_download_ok(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    seen = []
    dest = tmp_path / "dl" / "w.pt"
    digest = download(server.url("/w.pt"), dest, sha256=SHA, chunk=64 << 10,
                      progress=lambda f, m: seen.append((f, m)))
    assert digest == SHA and dest.read_bytes() == DATA
    assert leftovers(tmp_path) == []
    assert len(seen) >= 4 and seen[-1][0] == pytest.approx(1.0) and "MB" in seen[-1][1]


def test_download_checksum_mismatch(server, tmp_path):
    server.routes["/w.pt"] = ("wrong", DATA)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match=f"expected sha256 {SHA}, got [0-9a-f]{{64}}"):
        download(server.url("/w.pt"), dest, sha256=SHA)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_download_interrupted(server, tmp_path):
    server.routes["/w.pt"] = ("cut", DATA)
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match=f"received {len(DATA) // 2} of {len(DATA)} bytes"):
        download(server.url("/w.pt"), dest, sha256=SHA, chunk=32 << 10)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_download_404_and_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("/missing.pt"), tmp_path / "w.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="Could not connect"):
        download(f"http://127.0.0.1:{port}/w.pt", tmp_path / "w.pt", timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_download_cancel(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        download(server.url("/w.pt"), tmp_path / "w.pt", chunk=16 << 10, cancel=cancel,
                 progress=lambda f, m: cancel.set())
    assert list(tmp_path.iterdir()) == []


def test_concurrent_downloads_of_one_file(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    dest, results, errors = tmp_path / "w.pt", [], []

    def run():
        try:
            results.append(download(server.url("/w.pt"), dest, sha256=SHA, chunk=8 << 10))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and results == [SHA] * 3
    assert dest.read_bytes() == DATA and leftovers(tmp_path) == []


# -- resolution -------------------------------------------------------------------------------

def test_resolution_order(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    card = make_card(server)
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"anything: an explicit path is used as is")
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / card.file).write_bytes(DATA)
    cached = cached_path(card)
    assert cached == tmp_path / "cache" / "test-weights" / "2.0" / card.file
    cached.parent.mkdir(parents=True)
    cached.write_bytes(DATA)

    assert resolve_weights(card, path=explicit, bundled_dirs=[bundled]) == explicit
    assert resolve_weights(card, bundled_dirs=[bundled]) == cached
    cached.unlink()
    assert resolve_weights(card, bundled_dirs=[bundled]) == bundled / card.file
    (bundled / card.file).unlink()
    with pytest.raises(RegistryError, match=f"{server.url('/w.pt')}.*--allow-download"):
        resolve_weights(card, bundled_dirs=[bundled])
    assert server.hits == []

    assert resolve_weights(card, allow_download=True) == cached
    assert cached.read_bytes() == DATA and server.hits == ["/w.pt"]
    assert resolve_weights(card, allow_download=True) == cached  # now from the cache
    assert server.hits == ["/w.pt"]


def test_explicit_path_must_exist(server, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_weights(make_card(server), path=tmp_path / "nope.pt")


def test_bad_cached_file_is_not_used(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    card = make_card(server)
    cached = cached_path(card)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(DATA[:-1] + b"\x00")
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / card.file).write_bytes(DATA)
    messages = []
    got = resolve_weights(card, bundled_dirs=[bundled], progress=lambda f, m: messages.append(m))
    assert got == bundled / card.file
    assert not cached.exists() and any("corrupted" in m for m in messages)

    cached.write_bytes(b"truncated")
    assert resolve_weights(card, allow_download=True) == cached
    assert cached.read_bytes() == DATA


def test_bad_bundled_file_is_ignored_and_reported(server, tmp_path, monkeypatch):
    card = make_card(server)
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / card.file).write_bytes(b"stale demo weights")
    monkeypatch.setenv("PANTHEON_BUNDLED_DIR", str(bundled))
    with pytest.raises(RegistryError, match="ignored bundled"):
        resolve_weights(card)
    (bundled / card.file).write_bytes(DATA)
    assert resolve_weights(card) == bundled / card.file  # found through the environment


def test_size_bytes_checked(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    card = make_card(server, size_bytes=len(DATA) + 1)
    with pytest.raises(DownloadError, match=f"received {len(DATA)} of {len(DATA) + 1} bytes"):
        resolve_weights(card, allow_download=True)
    assert not cached_path(card).exists() and leftovers(tmp_path) == []


def test_unknown_checksum_needs_trust(server, tmp_path):
    server.routes["/w.pt"] = ("ok", DATA)
    card = make_card(server, sha256=None)
    with pytest.raises(RegistryError, match="--trust-unverified"):
        resolve_weights(card, allow_download=True)
    assert server.hits == []

    messages = []
    got = resolve_weights(card, allow_download=True, trust_unverified=True,
                          progress=lambda f, m: messages.append(m))
    assert got == cached_path(card) and got.read_bytes() == DATA
    assert sidecar_path(got).read_text().split()[0] == SHA
    assert any(SHA in m for m in messages)

    # Later runs verify against the recorded checksum, without asking for trust again.
    assert resolve_weights(card) == got
    got.write_bytes(b"corrupted")
    with pytest.raises(RegistryError, match="corrupted"):
        resolve_weights(card)
    assert not got.exists() and not sidecar_path(got).exists()


def test_resolve_by_id_and_default_cache(server, tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    save_card(make_card(server), cards / "test-weights.json")
    monkeypatch.setenv("PANTHEON_CARDS_PATH", str(cards))
    server.routes["/w.pt"] = ("ok", DATA)
    got = resolve_weights("test-weights", allow_download=True)
    assert got == tmp_path / "cache" / "test-weights" / "2.0" / "pantheon_registry_test_weights.pt"
    monkeypatch.delenv("PANTHEON_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "pantheon" / "weights"
    assert os.environ["HOME"] == str(tmp_path / "home")
