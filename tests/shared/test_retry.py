"""Retry loops and cancellation: a cancel must end a loop even when asyncio hid it."""

from __future__ import annotations

import asyncio

import pytest

from shared.retry import raise_if_cancelled


async def test_a_cancel_that_wait_for_turned_into_the_inner_error_still_ends_the_loop() -> None:
    """Python 3.11's wait_for returns the inner call's error when the cancel lands as that call
    fails (a refused OPC UA session, under load): a loop retrying on that error must stop."""
    refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    attempts = 0

    async def retrying() -> None:
        nonlocal attempts
        while True:
            try:
                await asyncio.wait_for(refused, 5)
            except OSError:
                attempts += 1
                raise_if_cancelled()
            await asyncio.sleep(0)

    task = asyncio.create_task(retrying())
    await asyncio.sleep(0)  # the task waits in wait_for
    refused.set_exception(OSError("refused"))
    task.cancel()  # in the same turn of the loop: wait_for sees its inner call done
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert attempts == 1  # the error came instead of the cancel; the loop did not retry


async def test_a_timeout_that_fired_is_no_cancel_of_the_loop() -> None:
    raise_if_cancelled()  # nothing asked this task to stop
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(5)
    raise_if_cancelled()  # the timeout took its own cancel back: a retry loop goes on
