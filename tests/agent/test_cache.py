"""The agent's blob cache against a real HTTP server: only verified blobs ever reach their name."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.cache import BlobCache, CacheError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on a free loopback port: (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def blob(folder: Path, name: str, data: bytes) -> str:
    (folder / name).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def names(cache: BlobCache) -> list[str]:
    return sorted(p.name for p in cache.folder.iterdir())


async def test_fetch_verifies_and_reuses(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    data = os.urandom(3 << 20)
    sha = blob(folder, "m.onnx", data)
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30)
    seen: list[int] = []
    first = await cache.fetch(sha, len(data), f"{url}/m.onnx", progress=seen.append)
    assert first.downloaded and seen[-1] == len(data)
    assert cache.verify(sha).read_bytes() == data
    again = await cache.fetch(sha, len(data), f"{url}/nowhere")  # no download: it is there
    assert not again.downloaded
    assert names(cache) == [sha]


@pytest.mark.parametrize(
    ("served_bytes", "declared", "error"),
    [
        (b"tampered  model!", b"the signed model", "sha256 of what came"),
        (b"short", b"longer than what came", "bytes received"),
        (b"longer than declared", b"short", "more than the"),
    ],
)
async def test_wrong_blob_never_reaches_its_name(
    served: tuple[Path, str],
    tmp_path: Path,
    served_bytes: bytes,
    declared: bytes,
    error: str,
) -> None:
    folder, url = served
    (folder / "m.onnx").write_bytes(served_bytes)
    sha = hashlib.sha256(declared).hexdigest()
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30)
    with pytest.raises(CacheError, match=error):
        await cache.fetch(sha, len(declared), f"{url}/m.onnx")
    assert names(cache) == []  # nothing under its name, no partial file left


async def test_unreachable_and_missing(served: tuple[Path, str], tmp_path: Path) -> None:
    _, url = served
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30)
    with pytest.raises(CacheError, match="download failed"):
        await cache.fetch("a" * 64, 10, f"{url}/missing")
    with pytest.raises(CacheError, match="not a sha256"):
        await cache.fetch("../../etc/passwd", 10, f"{url}/x")
    with pytest.raises(CacheError, match="not in the cache"):
        cache.verify("b" * 64)


async def test_not_enough_disk_is_refused_before_download(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, url = served
    sha = blob(folder, "m.onnx", b"model")
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30, reserve_bytes=1 << 62)
    with pytest.raises(CacheError, match="not enough disk"):
        await cache.fetch(sha, 5, f"{url}/m.onnx")


async def test_changed_on_disk_is_refused_and_removed(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    folder, url = served
    sha = blob(folder, "m.onnx", b"model bytes")
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30)
    await cache.fetch(sha, 11, f"{url}/m.onnx")
    cache.path(sha).write_bytes(b"model bytez")
    with pytest.raises(CacheError, match="changed on disk"):
        cache.verify(sha)
    assert not cache.has(sha)


def test_leftover_partial_download_is_removed_at_start(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1 << 30)
    (cache.folder / f".{'c' * 64}.123.part").write_bytes(b"half")
    assert names(BlobCache(tmp_path / "cache", max_bytes=1 << 30)) == []


async def test_evict_keeps_current_and_last_good(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    cache = BlobCache(tmp_path / "cache", max_bytes=2500)
    shas = []
    for i in range(4):
        sha = blob(folder, f"b{i}", bytes([i]) * 1000)
        await cache.fetch(sha, 1000, f"{url}/b{i}")
        os.utime(cache.path(sha), (i, i))  # b0 least recently used
        shas.append(sha)
    removed = cache.evict(keep=[shas[0], shas[3]])
    assert removed == [shas[1], shas[2]]  # oldest unkept first, until under 2,500 bytes
    assert names(cache) == sorted([shas[0], shas[3]])
    assert cache.size() == 2000
