"""HTTP transfers of presigned URLs: a connection for a URL, and a sha256 that follows the bytes.

The fleet's client (upload, pull) and the inspecting child (a model read from S3) move 100 MB
objects through these; hashing them in the reading thread would add its time to the transfer,
so `HashBehind` hashes in a thread of its own (hashlib lets go of the GIL for large updates)
over views the caller does not change until they are hashed.
"""

from __future__ import annotations

import hashlib
import http.client
import queue
import threading
from collections.abc import Callable
from urllib.parse import urlsplit


def connection(url: str, timeout_s: float = 60) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the URL's host (HTTPS for https://) and the request target to send."""
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return cls(parts.netloc, timeout=timeout_s), target


class HashBehind:
    """sha256 of the views given to `update`, in that order, computed in another thread.
    A view must not change until it is hashed: `then` (if given) is called once it is, so a
    caller can reuse its buffer. `hexdigest` waits for the last one; leaving the `with` block
    ends the thread."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.views: queue.Queue[tuple[memoryview, Callable[[], object] | None] | None]
        self.views = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="hash-behind", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.views.get()) is not None:
            view, then = item
            self.digest.update(view)
            if then is not None:
                then()

    def update(self, view: memoryview, then: Callable[[], object] | None = None) -> None:
        self.views.put((view, then))

    def hexdigest(self) -> str:
        self._stop()
        return self.digest.hexdigest()

    def _stop(self) -> None:
        if self.thread.is_alive():
            self.views.put(None)
            self.thread.join()

    def __enter__(self) -> HashBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()
