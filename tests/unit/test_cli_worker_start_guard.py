"""A SIGTERM during the worker's start stops the start step wherever it waits.

The regression: the SIGTERM handler used to raise from the signal handler,
and the exception landed in whichever task or callback ran at that instant.
With a busy background task (aiokafka's, aiohttp's) the raise was kept by
that task and the start kept waiting on a silent ClickHouse.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest

from tokenpulse.cli.worker import TerminatedWhileStarting, _StartGuard


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.close()


def test_sigterm_while_a_busy_task_runs_cancels_the_waiting_step(
    loop: asyncio.AbstractEventLoop,
) -> None:
    guard = _StartGuard(loop)
    spins = 0

    async def busy() -> None:
        nonlocal spins
        while True:  # the signal most likely arrives during this task's steps
            spins += 1
            sum(range(2_000))
            await asyncio.sleep(0)

    async def start_step() -> None:
        loop.create_task(busy())
        loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
        await asyncio.Event().wait()  # a ClickHouse that never answers

    with pytest.raises(TerminatedWhileStarting):
        guard.run(start_step())
    assert guard.terminated
    assert spins > 0
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))


def test_sigterm_between_steps_stops_the_next_step_before_it_runs(
    loop: asyncio.AbstractEventLoop,
) -> None:
    guard = _StartGuard(loop)
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def second() -> None:
        await asyncio.sleep(5)
        ran.append("second")

    guard.run(first())
    os.kill(os.getpid(), signal.SIGTERM)  # arrives during synchronous work (build_worker)
    with pytest.raises(TerminatedWhileStarting):
        guard.run(second())
    assert ran == ["first"]


def test_a_step_that_fails_raises_its_own_error(loop: asyncio.AbstractEventLoop) -> None:
    guard = _StartGuard(loop)

    async def broken() -> None:
        raise OSError("kafka unreachable")

    with pytest.raises(OSError, match="kafka unreachable"):
        guard.run(broken())
    assert not guard.terminated
