"""Read what one inference pod reports at /v1/metrics (Prometheus text) as a `PodReading`.

The server exports each figure under NIM 1.x's unprefixed name and vLLM's `vllm:` name; either
is accepted, so a plain vLLM image (or NIM 2.x) scales as well as ours. A family with several
label sets (one per engine, with data parallelism) is summed, or averaged for the KV-cache
fraction. Parsing is prometheus_client's own text parser; nothing here guesses at the format.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from nim_operator.autoscaling.algorithm import PodReading

__all__ = [
    "DEFAULT_PORT",
    "METRICS_PATHS",
    "MetricsError",
    "metrics_urls",
    "parse_metrics",
    "scrape",
]

# The server's port when a pod declares none named `api` (NIM_SERVER_PORT's default).
DEFAULT_PORT = 8000
API_PORT_NAME = "api"
# NIM serves /v1/metrics; vLLM's own server only /metrics, tried when the first is 404.
METRICS_PATHS = ("/v1/metrics", "/metrics")
# Largest body read from a pod: a metrics page is a few tens of KiB.
MAX_BODY_BYTES = 4 * 1024 * 1024

RUNNING = ("num_requests_running", "vllm:num_requests_running")
WAITING = ("num_requests_waiting", "vllm:num_requests_waiting")
KV_CACHE = (
    "gpu_cache_usage_perc",
    "kv_cache_usage_perc",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
)
CAPACITY = ("num_request_max",)
# Counters of finished requests (families are named without `_total`): NIM's request_finish or
# vLLM's request_success (every finish reason), plus NIM's request_failure (refused requests).
FINISHED = ("request_finish", "vllm:request_success")
FAILED = ("request_failure",)


class MetricsError(Exception):
    """A pod's metrics could not be read or did not say what the scaler needs."""


def _values(families: Mapping[str, list[float]], names: Iterable[str]) -> list[float] | None:
    for name in names:
        if name in families:
            return families[name]
    return None


def parse_metrics(text: str) -> PodReading:
    """The reading in one Prometheus text page; MetricsError if it lacks the request gauges."""
    families: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families(text):
            # A gauge's samples carry the family's name, a counter's the name plus `_total`.
            names = (family.name, family.name + "_total")
            samples = [s.value for s in family.samples if s.name in names]
            if samples:
                families[family.name] = samples
    except (ValueError, TypeError, IndexError) as e:
        raise MetricsError(f"unparsable Prometheus text: {e}") from e
    running = _values(families, RUNNING)
    waiting = _values(families, WAITING)
    if running is None or waiting is None:
        raise MetricsError("no num_requests_running/num_requests_waiting gauges")
    kv = _values(families, KV_CACHE)
    capacity = _values(families, CAPACITY)
    finished = _values(families, FINISHED)
    failed = _values(families, FAILED) or []
    numbers = [*running, *waiting, *(kv or []), *(capacity or []), *(finished or []), *failed]
    if not all(math.isfinite(v) and v >= 0 for v in numbers):
        raise MetricsError("a request or KV-cache gauge is negative or not a number")
    return PodReading(
        running=math.fsum(running),
        waiting=math.fsum(waiting),
        kv_cache=math.fsum(kv) / len(kv) if kv else None,
        capacity=math.fsum(capacity) if capacity else None,
        # A labelled counter has no sample before its first request: none finished yet.
        finished=math.fsum([*(finished or []), *failed]),
    )


def _api_port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == API_PORT_NAME and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return DEFAULT_PORT


def metrics_urls(pod: Mapping[str, Any]) -> list[str]:
    """Where the pod serves metrics: its IP, its `api` container port, each known path."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return []
    try:
        host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    except ValueError:
        return []
    base = f"http://{host}:{_api_port(pod)}"
    return [base + path for path in METRICS_PATHS]


async def scrape(session: aiohttp.ClientSession, urls: list[str]) -> PodReading:
    """GET the first of `urls` that exists and parse it; MetricsError says what went wrong.

    The time budget is the session's (`aiohttp.ClientTimeout`): a slow pod is an error here.
    """
    if not urls:
        raise MetricsError("the pod has no IP")
    for url in urls:
        try:
            async with session.get(url, allow_redirects=False) as response:
                if response.status == 404 and url != urls[-1]:
                    continue
                if response.status != 200:
                    raise MetricsError(f"GET {url}: HTTP {response.status}")
                body = await response.content.read(MAX_BODY_BYTES + 1)
        except (TimeoutError, aiohttp.ClientError) as e:
            reason = "timed out" if isinstance(e, TimeoutError) else str(e) or type(e).__name__
            raise MetricsError(f"GET {url}: {reason}") from e
        if len(body) > MAX_BODY_BYTES:
            raise MetricsError(f"GET {url}: more than {MAX_BODY_BYTES} bytes")
        try:
            return parse_metrics(body.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise MetricsError(f"GET {url}: not UTF-8 text") from e
    raise MetricsError("no metrics endpoint answered")
