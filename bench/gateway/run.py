"""One arm of the benchmark (every conversation through one gateway), and the gateway's added
latency (through it and around it to the same replica)."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bench.gateway.gateway_process import GatewayProcess
from bench.gateway.replicas import (
    MODEL_ID,
    PrefixCache,
    prefix_cache,
)
from bench.gateway.workload import Conversation, Shape
from nim_gateway.proxy import BACKEND_HEADER
from tests.support.server_process import ServerProcess

__all__ = [
    "gateway_overhead",
    "measure_arm",
    "percentile",
    "probe_request",
    "stream_chat",
    "warm_up",
]

# Idle pooled connections are dropped before uvicorn's 5 s keep-alive closes them under us (a
# reset on reuse would measure that race; see bench/server).
KEEPALIVE_EXPIRY = 2.0
# Tokens of each request measuring the gateway's added latency: short, so the engine's own
# time (and its jitter) is small next to what is measured.
PROBE_TOKENS = 8


@dataclass
class Sample:
    ttft: float
    latency: float
    tokens: int
    text: str
    backend: str


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> Sample:
    """One streamed chat completion: when its first token came, its text, who served it.

    The first token is the first chunk with text. nim-serve sends the role chunk before any
    token, and skips tokens that decode to nothing yet (part of a UTF-8 character): an answer
    that never has text (the tiny model's random weights, on a few tokens) counts its first
    chunk after the role chunk instead, the last one.
    """
    started = time.perf_counter()
    ttft: float | None = None
    after_role: float | None = None
    tokens = 0
    pieces: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        backend = response.headers.get(BACKEND_HEADER, "direct")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if after_role is None and not any("role" in c["delta"] for c in chunk["choices"]):
                after_role = time.perf_counter() - started
            if chunk.get("usage") and not chunk["choices"]:
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    pieces.append(content)
    ttft = ttft if ttft is not None else after_role
    if ttft is None:
        raise RuntimeError(f"a stream with nothing after its role: {body['messages'][-1]}")
    return Sample(ttft, time.perf_counter() - started, tokens, "".join(pieces), backend)


async def _chats(
    base_url: str, conversations: Sequence[Conversation], shape: Shape
) -> tuple[list[Sample], float]:
    """Every conversation at once, each turn a pause after the previous answer, at most
    `concurrency` requests open."""
    slots = asyncio.Semaphore(shape.concurrency)
    limits = httpx.Limits(max_connections=shape.concurrency + 4, keepalive_expiry=KEEPALIVE_EXPIRY)
    samples: list[Sample] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits) as client:

        async def chat(conversation: Conversation) -> None:
            answers: list[str] = []
            for pause in conversation.pauses:
                await asyncio.sleep(pause)
                body = conversation.request(MODEL_ID, answers, shape.max_tokens)
                async with slots:
                    sample = await stream_chat(client, body)
                samples.append(sample)
                answers.append(sample.text)

        started = time.perf_counter()
        await asyncio.gather(*(chat(c) for c in conversations))
        return samples, time.perf_counter() - started


def warm_up(replicas: Sequence[ServerProcess]) -> None:
    """One long request straight to each replica: the first prefill of a new process is slow
    (allocations, first kernel runs), which would be charged to whichever arm comes first."""

    async def each() -> None:
        for replica in replicas:
            async with httpx.AsyncClient(base_url=replica.base_url, timeout=600) as client:
                body = probe_request(-1, 16)
                body["messages"][0]["content"] += " Warm up." * 200
                await stream_chat(client, body)

    asyncio.run(each())


def _prefix_cache(replicas: Sequence[ServerProcess]) -> PrefixCache:
    total = PrefixCache(0.0, 0.0)
    for replica in replicas:
        total += prefix_cache(replica)
    return total


def measure_arm(
    gateway: GatewayProcess,
    replicas: Sequence[ServerProcess],
    conversations: Sequence[Conversation],
    shape: Shape,
    idle_seconds: float,
) -> dict[str, float]:
    # What the gateway spends with no traffic (its scrapes of every replica's /metrics and
    # /v1/models each second), so the per-token cost can be given without it too.
    cpu_before = gateway.cpu_seconds()
    time.sleep(idle_seconds)
    idle_cpu_share = (gateway.cpu_seconds() - cpu_before) / idle_seconds
    cache_before = _prefix_cache(replicas)
    cpu_before = gateway.cpu_seconds()
    samples, wall = asyncio.run(_chats(gateway.base_url, conversations, shape))
    gateway_cpu = gateway.cpu_seconds() - cpu_before
    forwarding_cpu = max(0.0, gateway_cpu - idle_cpu_share * wall)
    cache = _prefix_cache(replicas) - cache_before
    tokens = sum(s.tokens for s in samples)
    ttfts = [s.ttft for s in samples]
    served = Counter(s.backend for s in samples)
    return {
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p99_ms": 1000 * percentile(ttfts, 99),
        "latency_p50_s": statistics.median(s.latency for s in samples),
        "throughput_tok_s": tokens / wall,
        "prefix_cache_hit_rate": cache.hits / cache.queries if cache.queries else 0.0,
        "prompt_tokens_computed": cache.queries - cache.hits,
        # How evenly the requests were spread: 1/replicas is even, 1.0 is all on one.
        "busiest_replica_share": max(served.values()) / len(samples),
        # Everything the gateway process spent during the arm (forwarding, routing, its 1 s
        # scrapes of every replica), per token it passed on ...
        "gateway_cpu_us_per_token": 1e6 * gateway_cpu / tokens,
        # ... and without the scrapes (the idle rate times the arm's duration taken off).
        "gateway_forwarding_cpu_us_per_token": 1e6 * forwarding_cpu / tokens,
        "gateway_forwarding_cpu_ms_per_request": 1e3 * forwarding_cpu / len(samples),
        "gateway_idle_cpu_percent": 100 * idle_cpu_share,
    }


def probe_request(index: int, max_tokens: int) -> dict[str, Any]:
    """A short streamed chat request (under one 128-token KV block: never a prefix-cache hit)."""
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"Say a number ({index})."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _pairs(direct_url: str, gateway_url: str, pairs: int) -> dict[str, list[Sample]]:
    """`pairs` requests each way, one at a time, alternating which goes first."""
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)
    results: dict[str, list[Sample]] = {"direct": [], "gateway": []}
    async with (
        httpx.AsyncClient(base_url=direct_url, timeout=300, limits=limits) as direct,
        httpx.AsyncClient(base_url=gateway_url, timeout=300, limits=limits) as through,
    ):
        clients = {"direct": direct, "gateway": through}
        for warm_up in clients.values():
            await stream_chat(warm_up, probe_request(-1, PROBE_TOKENS))
        for index in range(pairs):
            order = ("direct", "gateway") if index % 2 == 0 else ("gateway", "direct")
            for way in order:
                results[way].append(
                    await stream_chat(clients[way], probe_request(index, PROBE_TOKENS))
                )
    return results


def gateway_overhead(replica_url: str, gateway: GatewayProcess, pairs: int) -> dict[str, float]:
    """What the gateway adds to a request, against the same request sent straight to the same
    (otherwise idle) replica: the difference of the two distributions' p50 and p99, for the
    first token and for the whole (PROBE_TOKENS) stream."""
    cpu_before = gateway.cpu_seconds()
    samples = asyncio.run(_pairs(replica_url, gateway.base_url, pairs))
    # Everything the gateway spent (its scrapes included) over the requests it forwarded.
    cpu = gateway.cpu_seconds() - cpu_before
    result: dict[str, float] = {
        "pairs": pairs,
        "probe_tokens": PROBE_TOKENS,
        "gateway_cpu_ms_per_request": 1000 * cpu / (pairs + 1),  # + the warm-up
    }
    for metric in ("ttft", "latency"):
        direct = [getattr(s, metric) for s in samples["direct"]]
        through = [getattr(s, metric) for s in samples["gateway"]]
        for q in (50, 99):
            result[f"direct_{metric}_p{q}_ms"] = 1000 * percentile(direct, q)
            result[f"added_{metric}_p{q}_ms"] = 1000 * (
                percentile(through, q) - percentile(direct, q)
            )
        # The two requests of a pair ran back to back, under the same machine load: the median
        # of their differences is less moved by load drift, and its bootstrap interval says how
        # far the engine's own jitter leaves the estimate from the truth.
        differences = [1000 * (t - d) for t, d in zip(through, direct, strict=True)]
        result[f"added_{metric}_paired_median_ms"] = statistics.median(differences)
        low, high = bootstrap_median_interval(differences)
        result[f"added_{metric}_paired_median_ci95_low_ms"] = low
        result[f"added_{metric}_paired_median_ci95_high_ms"] = high
    return result


def bootstrap_median_interval(
    values: Sequence[float], resamples: int = 2000
) -> tuple[float, float]:
    """The 95 % percentile-bootstrap interval of the median (seeded: the same data, the same
    interval)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def percentile(values: Sequence[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
