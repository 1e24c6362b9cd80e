"""The agent's content-addressed blob cache: `{root}/sha256/{hex}`.

A blob is downloaded to a temporary name in the cache's own folder, hashed while it streams,
fsynced, and renamed to its address only when its size and sha256 are the ones the signed
desired state names; a partial or wrong download is never used and never left behind. The free
disk is checked before a download starts. Before use a blob is hashed again (`verify`): a file
changed on disk after download is refused, not run. `evict` keeps what the node runs and what it
would roll back to, and removes the least recently used rest while the cache is over its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import EdgefleetError
from shared.files import fsync_dir

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HEX = re.compile(r"[0-9a-f]{64}")
Progress = Callable[[int], None]  # bytes received so far


class CacheError(EdgefleetError):
    """A blob could not be fetched or does not match the digest it must have."""


@dataclass(frozen=True)
class Fetched:
    sha256: str
    size: int
    downloaded: bool  # False: it was in the cache already


def _check_hex(sha256: str) -> str:
    if not HEX.fullmatch(sha256):
        raise CacheError(f"not a sha256 digest: {sha256!r}")
    return sha256


class BlobCache:
    def __init__(self, root: Path, max_bytes: int, reserve_bytes: int = 64 << 20) -> None:
        self.root = root
        self.folder = root / "sha256"
        self.max_bytes, self.reserve_bytes = max_bytes, reserve_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()

    def path(self, sha256: str) -> Path:
        return self.folder / _check_hex(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def _remove_leftovers(self) -> None:
        """Temporary files of a download cut short (SIGKILL, power cut) are never used."""
        for tmp in self.folder.glob(".*.part"):
            log.info("cache: removing an unfinished download %s", tmp.name)
            tmp.unlink(missing_ok=True)

    async def fetch(
        self, sha256: str, size: int, url: str, progress: Progress | None = None
    ) -> Fetched:
        """Make the blob `sha256` of `size` bytes present, downloading it from `url` if needed."""
        if self.has(sha256):
            return Fetched(sha256, size, downloaded=False)
        self._check_space(size)
        await asyncio.to_thread(self._download, sha256, size, url, progress)
        return Fetched(sha256, size, downloaded=True)

    def _check_space(self, size: int) -> None:
        free = shutil.disk_usage(self.folder).free
        if free - size < self.reserve_bytes:
            raise CacheError(
                f"not enough disk for a blob of {size} bytes: {free} free in {self.folder}, "
                f"{self.reserve_bytes} kept in reserve"
            )

    def _download(self, sha256: str, size: int, url: str, progress: Progress | None) -> None:
        final = self.path(sha256)
        tmp = self.folder / f".{sha256}.{os.getpid()}.part"
        digest, got = hashlib.sha256(), 0
        try:
            view = memoryview(bytearray(CHUNK))  # reused: no allocation and copy per chunk
            with (
                urllib.request.urlopen(url, timeout=30) as response,
                open(tmp, "wb") as out,
            ):
                while n := response.readinto(view):
                    got += n
                    if got > size:
                        raise CacheError(f"blob {sha256[:12]}: more than the {size} bytes named")
                    digest.update(view[:n])
                    out.write(view[:n])
                    if progress is not None:
                        progress(got)
                out.flush()
                os.fsync(out.fileno())
            if got != size:
                raise CacheError(f"blob {sha256[:12]}: {got} bytes received, {size} named")
            if digest.hexdigest() != sha256:
                raise CacheError(
                    f"blob {sha256[:12]}: sha256 of what came is {digest.hexdigest()[:12]}"
                )
            os.replace(tmp, final)
            fsync_dir(self.folder)
        except urllib.error.URLError as exc:
            raise CacheError(f"blob {sha256[:12]}: download failed: {exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def verify(self, sha256: str) -> Path:
        """The blob's path, after hashing it again; `CacheError` if it is missing or changed."""
        path = self.path(sha256)
        try:
            with open(path, "rb") as f:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            raise CacheError(f"blob {sha256[:12]} is not in the cache") from None
        if actual != sha256:
            path.unlink(missing_ok=True)  # never to be used again
            raise CacheError(f"blob {sha256[:12]} changed on disk (now {actual[:12]}); removed")
        os.utime(path)  # recently used, for eviction
        return path

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if HEX.fullmatch(p.name))

    def evict(self, keep: Iterable[str]) -> list[str]:
        """Remove least recently used blobs not in `keep` while over `max_bytes`."""
        kept = set(keep)
        blobs = [p for p in self.folder.iterdir() if HEX.fullmatch(p.name)]
        total = sum(p.stat().st_size for p in blobs)
        removed: list[str] = []
        for p in sorted(blobs, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if p.name in kept:
                continue
            total -= p.stat().st_size
            p.unlink()
            removed.append(p.name)
        return removed
