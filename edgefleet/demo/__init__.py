"""`edgefleet demo`: the fleet story (story.py) by default, the single-site story (single.py)
with `--site`."""

from __future__ import annotations

from pathlib import Path


def run_demo(
    workdir: Path,
    port: int = 0,
    duration: float | None = None,
    fast: bool = False,
    site: bool = False,
    json: bool = False,
) -> int:
    """`port` is unused (kept for the old signature): the demo picks free ports."""
    if site:
        from edgefleet.demo.single import run_single

        return run_single(workdir, duration=duration, fast=fast)
    from edgefleet.demo.story import run_story

    return run_story(workdir, fast=fast, duration=duration, json=json)
