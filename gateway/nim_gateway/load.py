"""Each replica's load and model list, read from its /metrics and /v1/models every interval.

nim-serve exports NIM 1.x's unprefixed gauges next to vLLM's `vllm:` families
(inference_image/nim_server/metrics.py); a plain vLLM server has only the latter, so both are
read, the NIM name first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from nim_gateway.backends import BackendTable, Endpoint

__all__ = ["LoadSample", "Scraper", "parse_load"]

log = logging.getLogger(__name__)

RUNNING = ("num_requests_running", "vllm:num_requests_running")
WAITING = ("num_requests_waiting", "vllm:num_requests_waiting")
KV_USAGE = ("gpu_cache_usage_perc", "kv_cache_usage_perc", "vllm:kv_cache_usage_perc")

LoadSample = tuple[float, float, float]


def parse_load(text: str) -> LoadSample:
    """(running, waiting, KV-cache usage) from Prometheus text, each summed over its labels.

    A line scan for three gauges, not a full exposition parser: the page is mostly histograms
    the gateway never reads, and it is read every second from every replica.
    """
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in _WANTED:
            continue
        # After the labels if any (`name{...} value`), else after the name (`name value`).
        rest = line[name_end:]
        value_text = (rest.rsplit("}", 1)[-1] if rest[0] == "{" else rest).split()
        with contextlib.suppress(ValueError, IndexError):
            value = float(value_text[0])
            if math.isfinite(value):
                sums[name] = sums.get(name, 0.0) + value
    return _first(sums, RUNNING), _first(sums, WAITING), _first(sums, KV_USAGE)


_WANTED = frozenset((*RUNNING, *WAITING, *KV_USAGE))


def _first(sums: Mapping[str, float], names: Iterable[str]) -> float:
    return next((sums[name] for name in names if name in sums), 0.0)


class Scraper:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        table: BackendTable,
        *,
        interval: float,
        timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._session = session
        self._table = table
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = dict(headers or {})

    async def run(self) -> None:
        while True:
            self._table.changed.clear()
            endpoints = list(self._table.endpoints())
            await asyncio.gather(*(self.scrape(e) for e in endpoints))
            # A new replica is read at once rather than up to an interval later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._table.changed.wait(), self._interval)

    async def scrape(self, endpoint: Endpoint) -> None:
        try:
            cards = await self._models(endpoint)
            finished_before = endpoint.finished
            async with self._session.get(
                endpoint.url + "/metrics", headers=self._headers, timeout=self._timeout
            ) as response:
                response.raise_for_status()
                # The replica wrote the page at some moment between the ask and its headers (a
                # busy one takes a while). Our requests open then are open now or have finished
                # since the ask: all of those count as ours, so our requests that ended while it
                # answered are not taken for other clients' until the next scrape.
                ours = endpoint.inflight + endpoint.finished - finished_before
                running, waiting, kv_usage = parse_load(await response.text())
            endpoint.running, endpoint.waiting, endpoint.kv_usage = running, waiting, kv_usage
            endpoint.inflight_at_scrape = ours
        except TimeoutError:
            # A slow answer is a busy replica (on CPU, generation starves its event loop), not
            # a dead one: it keeps its place and its last known load.
            log.debug("replica %s was slow to answer its scrape", endpoint.url)
            return
        except (aiohttp.ClientError, ValueError) as error:
            # Refused, reset, or an error status (503 while its model loads): not serving now.
            if endpoint.healthy is not False:
                log.warning("replica %s did not answer: %s", endpoint.url, error)
            endpoint.healthy = False
            return
        if cards is not None:
            self._table.record_models(endpoint, cards)
        endpoint.healthy = True

    async def _models(self, endpoint: Endpoint) -> list[dict[str, Any]] | None:
        """The replica's model cards; None when it will not say (e.g. it needs a key we lack),
        which leaves the declared models in place."""
        async with self._session.get(
            endpoint.url + "/v1/models", headers=self._headers, timeout=self._timeout
        ) as response:
            if response.status in (401, 403):
                return None
            response.raise_for_status()
            data = await response.json()
        return [card for card in data.get("data") or [] if isinstance(card, dict)]
