"""`started`: how a stream's first item is pulled, failures mapped, and cancellation kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nim_server.errors import APIError
from nim_server.serving.common import started


class Probe:
    """An engine-like stream that records whether it was closed (closing aborts a request)."""

    def __init__(self, first: asyncio.Future[str] | Exception) -> None:
        self.first = first
        self.closed = False

    async def stream(self) -> AsyncIterator[str]:
        try:
            if isinstance(self.first, Exception):
                raise self.first
            yield await self.first
            yield "second"
        finally:
            self.closed = True


async def test_started_pulls_the_first_item_and_keeps_the_rest() -> None:
    first: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    first.set_result("first")
    items = [item async for item in await started(Probe(first).stream())]
    assert items == ["first", "second"]


async def test_a_failure_before_the_first_item_is_an_api_error_and_closes_the_stream() -> None:
    probe = Probe(RuntimeError("boom"))
    with pytest.raises(APIError) as raised:
        await started(probe.stream())
    assert raised.value.status == 500
    assert probe.closed


async def test_cancellation_before_the_first_item_stays_a_cancellation() -> None:
    """A client that leaves cancels the work: no error is reported, the stream is closed."""
    probe = Probe(asyncio.get_running_loop().create_future())
    task = asyncio.create_task(started(probe.stream()))
    await asyncio.sleep(0)  # let it block on the first item
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.closed
