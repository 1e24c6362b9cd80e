"""The warm trial process (`isolated.Warm`): many calls in one child; a crash, a hang or a
cancelled call costs that call only (a fresh child serves the next); the child dies with its
parent and at `close`; the niceness of every isolated child is the caller's to choose."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from services.inference.candidate import TRIAL_NICE, Trial, trial_process, try_candidate
from services.inference.config import InferenceSettings
from services.inference.isolated import Warm, run_isolated, run_isolated_async
from services.inference.model import ModelBlob
from shared.errors import ModelError
from tests.helpers import Probe, until
from tests.inference import models
from tests.inference.helpers import echo as identity
from tests.inference.helpers import hang, huge, niceness, noisy, segfault
from tests.inference.live import publish_config, serving, status_where


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (not yet reaped by its parent) is dead too
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def test_one_child_serves_every_call() -> None:
    warm = Warm("services.inference.candidate")
    try:
        answers = [await warm.run(identity, i, 60, "input", "echo") for i in range(5)]
    finally:
        await warm.close()
    assert [a["arg"] for a in answers] == list(range(5))
    assert len({a["pid"] for a in answers}) == 1 and warm.started == 1
    assert answers[0]["pid"] != os.getpid()


async def test_what_the_work_prints_is_not_taken_for_its_answer() -> None:
    warm = Warm("json")
    try:
        assert await warm.run(noisy, None, 60, "input", "printing") == "answer"
        assert await warm.run(noisy, None, 60, "input", "printing") == "answer"
    finally:
        await warm.close()


async def test_a_crash_costs_that_call_only() -> None:
    warm = Warm("json")
    try:
        first = (await warm.run(identity, 1, 60, "input", "echo"))["pid"]
        with pytest.raises(ModelError, match=r"model m\.onnx crashed the process .*SIGSEGV"):
            await warm.run(segfault, None, 60, "model m.onnx", "loading")
        after = await warm.run(identity, 2, 60, "input", "echo")
    finally:
        await warm.close()
    assert after["arg"] == 2 and after["pid"] != first and warm.started == 2


async def test_a_hang_is_killed_at_its_timeout_and_the_next_call_is_served() -> None:
    warm = Warm("json")
    try:
        hung = (await warm.run(identity, 0, 60, "input", "echo"))["pid"]
        with pytest.raises(ModelError, match=r"candidate c did not finish trying within 1 s"):
            await warm.run(hang, None, 1, "candidate c", "trying")
        assert not alive(hung)
        assert (await warm.run(identity, 3, 60, "input", "echo"))["arg"] == 3
    finally:
        await warm.close()


async def test_an_answer_past_the_limit_is_an_error_and_the_next_call_is_served() -> None:
    warm = Warm("json")
    try:
        with pytest.raises(ModelError, match="answer garbage"):
            await warm.run(huge, None, 60, "input", "answering")
        assert (await warm.run(identity, 5, 60, "input", "echo"))["arg"] == 5
    finally:
        await warm.close()


async def test_a_cancelled_call_never_answers_the_next(tmp_path: Path) -> None:
    warm = Warm("json")
    marker = tmp_path / "begun"
    try:
        call = asyncio.create_task(warm.run(hang, str(marker), 60, "input", "hanging"))
        await until(marker.exists, timeout=30)
        pid = warm.pid
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pid is not None and not alive(pid)
        assert (await warm.run(identity, 4, 60, "input", "echo"))["arg"] == 4
    finally:
        await warm.close()


async def test_close_kills_the_child() -> None:
    warm = Warm("json")
    await warm.start()
    pid = warm.pid
    assert pid is not None and alive(pid)
    await warm.close()
    assert not alive(pid) and warm.pid is None


PARENT = textwrap.dedent(
    """
    import asyncio
    from services.inference.isolated import Warm

    async def main():
        warm = Warm("json")
        await warm.start()
        print(warm.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_the_child_dies_with_its_parent_killed() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        child = int(await parent.stdout.readline())
        await until(lambda: b"--warm" in Path(f"/proc/{child}/cmdline").read_bytes())
        parent.kill()
        await parent.wait()
        await until(lambda: not alive(child), timeout=30)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_children_run_at_the_niceness_asked_for() -> None:
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    default = run_isolated(niceness, None, 60, "input", "niceness")
    zero = run_isolated(niceness, None, 60, "input", "niceness", nice=0)
    five = await run_isolated_async(niceness, None, 60, "input", "niceness", nice=5)
    warm = trial_process()
    try:
        trials = await warm.run(niceness, None, 60, "input", "niceness")
    finally:
        await warm.close()
    assert (default, zero, five) == (min(19, mine + 10), mine, min(19, mine + 5))
    assert trials == min(19, mine + TRIAL_NICE)


async def test_a_candidate_trial_in_the_warm_process(tmp_path: Path) -> None:
    path = models.linear(tmp_path / "m.onnx")
    settings = InferenceSettings.model_validate(
        {"flow": "f1", "model": {"path": str(path)}, "features": models.FEATURES}
    )
    x = np.zeros((2, len(models.FEATURES)), np.float32)
    trial = Trial(
        ModelBlob(path.read_bytes(), "m", None, str(path)), settings, len(models.FEATURES), x
    )
    warm = trial_process()
    try:
        shapes = await try_candidate(trial, 60, warm)
        again = await try_candidate(trial, 60, warm)
    finally:
        await warm.close()
    assert shapes == again and shapes and warm.started == 1


def trial_processes() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "--warm" in p.cmdline() and "services.inference.candidate" in p.cmdline()
    ]


async def test_an_instance_tries_every_candidate_in_its_one_trial_process(
    base_config: dict[str, Any], probe: Probe, site: str, tmp_path: Path
) -> None:
    live = models.isolation_forest(tmp_path / "live.onnx")
    wrong = models.linear(tmp_path / "wrong.onnx", f=3)  # the flow has 4 features
    async with serving(base_config, probe, site, live, candidate_timeout_s=60) as topics:
        [trials] = trial_processes()  # started with the instance
        for revision in (1, 2):
            await publish_config(probe, topics, revision, model={"path": str(wrong)})
            await status_where(probe, topics, lambda s, r=revision: s["swaps"]["refused"] == r)
        assert [p.pid for p in trial_processes()] == [trials.pid]  # both tried there
    await asyncio.to_thread(psutil.wait_procs, [trials], 30)
    assert not trials.is_running() and not trial_processes()  # stopped with the instance
