"""Soak the real `nim-serve` on loopback: many requests, mixed kinds, some abandoned.

    python -m bench.soak [--requests 2000] [--concurrency 32]

Starts the server on the tiny test model (built locally, no download), sends the requests
(streaming and not, chat and completions, a share of streams abandoned after a few chunks),
and checks that nothing unexpected happened: every answer is 200 (or 429 with Retry-After, the
documented overload answer), no 5xx, the engine is idle at the end, and the server's memory did
not keep growing. Writes `bench/results/soak.json` and `.md`; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import stop_cleanly_on_sigterm
from tests.support.server_process import start_server
from tests.support.tiny_model import build_tiny_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
KINDS = ("chat", "chat_stream", "completion", "completion_stream", "abandoned_stream")
WEIGHTS = (30, 30, 10, 15, 15)


async def one_request(client: httpx.AsyncClient, kind: str, rng: random.Random) -> str:
    max_tokens = rng.randint(4, 64)
    messages = [{"role": "user", "content": f"Tell me about pods number {rng.randint(0, 999)}"}]
    if kind.startswith("chat") or kind == "abandoned_stream":
        path, body = "/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens}
    else:
        path, body = "/v1/completions", {"prompt": messages[0]["content"], "max_tokens": max_tokens}
    if kind == "abandoned_stream":
        body["max_tokens"] = 2000
        body["ignore_eos"] = True
    streaming = kind.endswith("stream")
    body["stream"] = streaming
    if not streaming:
        response = await client.post(path, json=body)
        return outcome(response.status_code, response.headers)
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return outcome(response.status_code, response.headers)
        lines = response.aiter_lines()
        if kind == "abandoned_stream":
            for _ in range(3):
                await anext(lines)
            return "abandoned"
        payloads = [line async for line in lines if line.startswith("data: ")]
        if payloads[-1] != "data: [DONE]" or '"error"' in payloads[-2]:
            return "broken_stream"
        return "200"


def outcome(status: int, headers: httpx.Headers) -> str:
    if status == 429 and "retry-after" in headers:
        return "429"
    return str(status)


async def soak(
    base_url: str, requests: int, concurrency: int, seed: int, pid: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    kinds = rng.choices(KINDS, WEIGHTS, k=requests)
    process = psutil.Process(pid)
    rss: list[int] = []
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    failures: list[str] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for kind in kinds:
        queue.put_nowait(kind)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            kind = queue.get_nowait()
            started = time.perf_counter()
            try:
                result = await one_request(client, kind, rng)
            except httpx.HTTPError as error:
                result = f"transport:{type(error).__name__}"
                failures.append(f"{kind} after {time.perf_counter() - started:.1f} s: {error!r}")
            latencies.append(time.perf_counter() - started)
            outcomes[result] += 1
            done = sum(outcomes.values())
            if done % max(1, requests // 20) == 0:
                rss.append(process.memory_info().rss)

    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        await asyncio.sleep(1)
        metrics = (await client.get("/metrics")).text
    running = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("num_requests_running{", "num_sequences_admitted "))
    )
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(time.perf_counter() - started, 1),
        "outcomes": dict(outcomes),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p99_s": round(statistics.quantiles(latencies, n=100)[98], 3),
        "rss_mib": [round(r / 2**20) for r in rss],
        "in_flight_at_end": running,
        "transport_failures": failures[:20],
    }


def violations(report: dict[str, Any]) -> list[str]:
    problems = []
    unexpected = {
        k: v for k, v in report["outcomes"].items() if k not in {"200", "429", "abandoned"}
    }
    if unexpected:
        problems.append(f"unexpected outcomes: {unexpected}")
    if report["in_flight_at_end"]:
        problems.append(f"still in flight at the end: {report['in_flight_at_end']}")
    rss = report["rss_mib"]
    if len(rss) >= 4:
        # After warm-up (the first quarter), memory must level off, not keep climbing.
        warm = rss[len(rss) // 4]
        if rss[-1] - warm > 128:
            problems.append(f"memory grew {rss[-1] - warm} MiB after warm-up")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nim-soak-") as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", max_position_embeddings=4096)
        env = {
            "NIM_MODEL_NAME": str(model),
            "NIM_CACHE_PATH": str(work / "cache"),
            "NIM_KV_CACHE_BYTES": "256MiB",
        }
        server = start_server(work, env)
        try:
            server.wait_until("/v1/health/ready", 200, timeout=600)
            report = asyncio.run(
                soak(
                    server.base_url, args.requests, args.concurrency, args.seed, server.process.pid
                )
            )
        finally:
            server.stop()
            server_log = server.log()
    report["violations"] = violations(report)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if report["violations"]:
        (out / "soak-server.log").write_text(server_log)
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in report.items()]
    (out / "soak.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=2))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
