"""Library models for replay: `--model pump-ae@3` fetched from the fleet, cached by digest.

The fleet names the version's sha256, size and a presigned GET URL (`library.download_url`,
the path every agent takes); the blob lands in the same content-addressed cache the agent uses
(`{cache}/sha256/{hex}`: written aside, hashed, renamed) and is hashed again before each use,
so a replay of a version already fetched needs only the fleet's answer, not a download.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from edgefleet.agent.cache import BlobCache
from edgefleet.fleet.client import connect
from edgefleet.flow import FlowSpec

REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}@[1-9][0-9]*$")
CACHE_MAX_BYTES = 2 << 30  # models only; the cache evicts the oldest past this


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet" / "models"


def is_ref(text: str) -> bool:
    """`name@N` that is not a file of that name."""
    return bool(REF.match(text)) and not Path(text).exists()


async def _fetch(ref: str, fleet: str | None, prefix: str, cache: BlobCache) -> Path:
    async with connect(fleet, prefix) as client:
        where = await client.call("library.download_url", {"ref": ref})
    await cache.fetch(where["sha256"], int(where["size"]), where["url"])
    return await asyncio.to_thread(cache.verify, where["sha256"])


def fetch_model(ref: str, fleet: str | None, prefix: str, cache_dir: Path | None = None) -> Path:
    """The verified local file of the library model `ref` (downloaded once per digest)."""
    folder = cache_dir or default_cache()
    folder.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_fetch(ref, fleet, prefix, BlobCache(folder, CACHE_MAX_BYTES)))


def resolve_flow_model(
    flow: FlowSpec, fleet: str | None, prefix: str, cache_dir: Path | None
) -> FlowSpec:
    """A flow whose model is a library reference (`{ref: name@N}`), with the fetched file."""
    if flow.model is None or flow.model.ref is None:
        return flow
    path = fetch_model(flow.model.ref, fleet, prefix, cache_dir)
    name, _, version = flow.model.ref.partition("@")
    spec = flow.model.model_copy(
        update={
            "path": path,
            "ref": None,
            "name": flow.model.name or name,
            "version": flow.model.version or version,
        }
    )
    return flow.model_copy(update={"model": spec})
