"""Real `nim-serve` replicas on loopback: started, read (prefix-cache counters), stopped."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from nim_server.model_source import embedded_gguf_path, prepare_gguf
from tests.support.server_process import ServerProcess, start_server
from tests.support.tiny_model import build_tiny_model

__all__ = ["MODEL_ID", "PrefixCache", "prefix_cache", "prepare_model", "replica_env", "replicas"]

MODEL_ID = "bench"
MAX_MODEL_LEN = 4096
KV_CACHE_BYTES = "512MiB"
READY = "/v1/health/ready"


def prepare_model(name: str, work: Path) -> Path:
    """The tiny Llama built here, or the SmolLM2 GGUF the image embeds: nothing downloads."""
    if name == "tiny":
        return build_tiny_model(work / "tiny", max_position_embeddings=MAX_MODEL_LEN)
    if name == "smollm2":
        return prepare_gguf(embedded_gguf_path(), work / "model-cache")
    raise ValueError(f"unknown model {name!r} (tiny or smollm2)")


def replica_env(model: Path, cache: Path) -> dict[str, str]:
    return {
        "NIM_MODEL_NAME": str(model),
        "NIM_SERVED_MODEL_NAME": MODEL_ID,
        "NIM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "NIM_KV_CACHE_BYTES": KV_CACHE_BYTES,
        "NIM_CACHE_PATH": str(cache),
        # vLLM's default too; said here because the whole benchmark is about it.
        "NIM_ENABLE_KV_CACHE_REUSE": "true",
    }


@contextlib.contextmanager
def replicas(count: int, model: Path, work: Path) -> Iterator[list[ServerProcess]]:
    """`count` replicas, started together (loading overlaps), all ready; stopped on exit.

    Each replica's model worker gets a core of its own, as pods on separate nodes (or with CPU
    limits) would: vLLM's CPU backend otherwise pins every engine's worker to core 0, and two
    replicas would share one core while the other runs everything else.
    """
    started: list[ServerProcess] = []
    cores = os.cpu_count() or 1
    try:
        for index in range(count):
            env = replica_env(model, work / f"replica-{index}" / "cache")
            env["VLLM_CPU_OMP_THREADS_BIND"] = str(index % cores)
            started.append(start_server(work / f"replica-{index}", env))
        for server in started:
            server.wait_until(READY, 200, timeout=900)
        yield started
    finally:
        for server in started:
            server.stop()


@dataclass(frozen=True)
class PrefixCache:
    """vLLM's prefix-cache counters, in prompt tokens: looked up, and found cached."""

    queries: float
    hits: float

    def __sub__(self, earlier: PrefixCache) -> PrefixCache:
        return PrefixCache(self.queries - earlier.queries, self.hits - earlier.hits)

    def __add__(self, other: PrefixCache) -> PrefixCache:
        return PrefixCache(self.queries + other.queries, self.hits + other.hits)


def prefix_cache(server: ServerProcess) -> PrefixCache:
    """`vllm:prefix_cache_queries` and `vllm:prefix_cache_hits` from the replica's /metrics."""
    response = httpx.get(server.base_url + "/metrics", timeout=60)
    response.raise_for_status()
    totals = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    for family in text_string_to_metric_families(response.text):
        if family.name in totals:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[family.name] += sample.value
    return PrefixCache(totals["vllm:prefix_cache_queries"], totals["vllm:prefix_cache_hits"])


def wait_ready(server: ServerProcess, poll: float, timeout: float) -> float:
    """Poll readiness every `poll` seconds, as a gateway holding a request would; when it was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"nim-serve exited:\n{server.log()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.base_url + READY, timeout=5).status_code == 200:
                return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"nim-serve never became ready:\n{server.log()[-3000:]}")
