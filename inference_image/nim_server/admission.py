"""Bounded admission and in-flight accounting.

vLLM queues without bound; here a request is admitted only while the sequences in flight stay
within the engine's concurrent capacity plus `NIM_MAX_QUEUE` waiting ones. The same count tells a
draining server when its last request has finished.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from nim_server.errors import APIError, service_unavailable

# What a client should wait before retrying a rejected request.
OVERLOADED_RETRY_AFTER = 1


@dataclass(frozen=True)
class Ticket:
    weight: int


class Admission:
    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
        self._capacity: int | None = None  # known once the engine reports its concurrency
        self._in_flight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def limit(self) -> int | None:
        return self._capacity

    @property
    def draining(self) -> bool:
        return self._draining

    def set_engine_concurrency(self, max_num_seqs: int) -> None:
        self._capacity = max_num_seqs + self._max_queue

    def rate_limit_headers(self) -> dict[str, str]:
        if self._capacity is None:
            return {}
        return {
            "x-ratelimit-limit-requests": str(self._capacity),
            "x-ratelimit-remaining-requests": str(max(0, self._capacity - self._in_flight)),
        }

    def admit(self, weight: int) -> Ticket:
        """Take ``weight`` sequences (a request's `n` times its prompts) or raise 429/503."""
        if self._draining:
            raise service_unavailable(
                "The server is shutting down; retry on another replica.",
                retry_after=1,
                code="shutting_down",
            )
        # A request bigger than the whole capacity still gets in when nothing else runs,
        # rather than being refused forever.
        over = self._capacity is not None and self._in_flight + weight > self._capacity
        if over and self._in_flight > 0:
            raise APIError(
                429,
                f"The server is at capacity ({self._in_flight} sequences in flight, "
                f"limit {self._capacity}); retry after {OVERLOADED_RETRY_AFTER} second.",
                type="rate_limit_exceeded",
                code="server_overloaded",
                headers={"Retry-After": str(OVERLOADED_RETRY_AFTER), **self.rate_limit_headers()},
            )
        self._in_flight += weight
        self._idle.clear()
        return Ticket(weight)

    def release(self, ticket: Ticket) -> None:
        self._in_flight -= ticket.weight
        if self._in_flight == 0:
            self._idle.set()

    def start_draining(self) -> None:
        self._draining = True

    async def wait_idle(self, within: float) -> bool:
        """Wait until nothing is in flight; False if ``within`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), None if math.isinf(within) else within)
        except TimeoutError:
            return False
        return True
