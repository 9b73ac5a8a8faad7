"""nim-gateway's routing on real replicas: prefix affinity against round robin.

    python -m bench.gateway [--model smollm2] [--replicas 2] [--rounds 2] [--out bench/results]

Starts `--replicas` real `nim-serve` processes on loopback and, per arm, a fresh `nim-gateway`
in front of them; every arm runs the same shared-prefix workload (multi-turn chats under one
long system prompt, bench/gateway/workload.py) with a tenant of its own, so no arm reuses
another's cache. Arms (`--arms`), in an order that rotates each round:

  round-robin                  each replica in turn: a plain Service, the baseline
  least-load                   the gateway's default: the shortest queue
  prefix-affinity              the gateway's defaults: a key of the system prompt and the first
                               512 characters after it
  prefix-affinity-key-from-start   the 512 characters counted from the prompt's start (all system
                               prompt here: one key for every conversation)

Reported per arm (medians over rounds) and as ratios over round-robin from the same run: TTFT
p50/p99, throughput, the replicas' prefix-cache hit rate (vllm:prefix_cache_hits / queries),
prompt tokens computed, the gateway's CPU per token. Then the gateway's added latency (through
it vs straight to the same replica), and a cold start through the gateway's scale from zero
(bench/gateway/scale_from_zero.py: a real replica started when the gateway scales the
Deployment from 0 to 1 on the API-server emulator), with and without the gateway's part.
Writes bench/results/gateway.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

from bench import stop_cleanly_on_sigterm
from bench.gateway.gateway_process import running_gateway
from bench.gateway.replicas import prepare_model, replicas
from bench.gateway.report import BASELINE, merge_rounds, ratios, write
from bench.gateway.run import gateway_overhead, measure_arm, warm_up
from bench.gateway.scale_from_zero import scale_from_zero
from bench.gateway.stub_replica import stub_replica
from bench.gateway.workload import Shape, conversations
from nim_gateway.settings import GatewaySettings
from tests.support.server_process import free_port

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
ARMS = (BASELINE, "least-load", "prefix-affinity", "prefix-affinity-key-from-start")


def arm_gateway(arm: str) -> tuple[str, dict[str, str]]:
    """The gateway's routing and NIM_GATEWAY_* settings for `arm`."""
    if arm == "prefix-affinity-key-from-start":
        return "prefix-affinity", {"NIM_GATEWAY_PREFIX_CHARS_FROM": "start"}
    return arm, {}


def describe_setting(routing: str, env: dict[str, str]) -> str:
    if routing != "prefix-affinity":
        return routing
    defaults = GatewaySettings()
    chars = env.get("NIM_GATEWAY_PREFIX_CHARS", str(defaults.prefix_chars))
    start = env.get("NIM_GATEWAY_PREFIX_CHARS_FROM", defaults.prefix_chars_from)
    return f"prefix-affinity, PREFIX_CHARS={chars}, PREFIX_CHARS_FROM={start}"


def source_version() -> str:
    """The commit measured, and whether the gateway's code in the working tree differs from it
    (the tree is shared: a change in progress would be measured too). Compared through a private
    index read from HEAD, as the shared index may lag behind HEAD."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}

        def git(*argv: str) -> str:
            done = subprocess.run(
                ["git", *argv], cwd=REPO, env=env, capture_output=True, text=True, check=True
            )
            return done.stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        git("read-tree", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=all", "--", "gateway/nim_gateway")
    return commit + (" + uncommitted gateway changes" if changed else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated, {BASELINE} among them"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--system-chars", type=int, default=1500)
    # CPU vLLM caches prefixes in 128-token blocks: a turn shorter than a block adds no
    # cacheable history.
    parser.add_argument("--question-chars", type=int, default=800)
    parser.add_argument("--think-seconds", type=float, default=1.0, help="longest user pause")
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="gateway idle CPU window, per arm"
    )
    parser.add_argument("--overhead-pairs", type=int, default=200)
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold start")
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown or BASELINE not in args.arms.split(","):
        sys.exit(f"--arms: from {', '.join(ARMS)}, with {BASELINE}; unknown: {sorted(unknown)}")
    shape = Shape(
        conversations=args.conversations,
        turns=args.turns,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        system_chars=args.system_chars,
        question_chars=args.question_chars,
        think_seconds=args.think_seconds,
    )
    load_before = [round(x, 2) for x in os.getloadavg()]
    source = source_version()  # at the start: others commit to the shared tree during the run
    chosen = tuple(args.arms.split(","))
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in chosen}
    settings: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="nim-bench-gateway-") as tmp:
        work = Path(tmp)
        model = prepare_model(args.model, work)
        with replicas(args.replicas, model, work) as servers:
            urls = [server.base_url for server in servers]
            warm_up(servers)
            for round_index in range(args.rounds):
                # Rotate the order so drift in the machine's load hits every arm alike.
                shift = round_index % len(chosen)
                for arm in chosen[shift:] + chosen[:shift]:
                    chats = conversations(shape, f"{round_index}-{arm}", args.seed)
                    routing, env = arm_gateway(arm)
                    settings[arm] = describe_setting(routing, env)
                    with running_gateway(work / "gateway", urls, routing, env) as gateway:
                        metrics = measure_arm(gateway, servers, chats, shape, args.idle_seconds)
                        runs[arm].append(metrics)
                    print(f"round {round_index + 1} {arm}: {runs[arm][-1]}", flush=True)
            with running_gateway(work / "gateway", urls[:1], BASELINE) as gateway:
                overhead = gateway_overhead(servers[0].base_url, gateway, args.overhead_pairs)
        # The same in front of a stub that answers at once: the gateway's own part, without the
        # engine's jitter or the replica's processes on the same cores.
        with (
            stub_replica(free_port()) as stub,
            running_gateway(work / "gateway", [stub], BASELINE) as gateway,
        ):
            overhead_stub = gateway_overhead(stub, gateway, args.overhead_pairs)
        # After the replicas are gone: the cold start has the machine to itself.
        cold: dict[str, Any] = (
            {"skipped": "--no-cold-start"}
            if args.no_cold_start
            else scale_from_zero(model, work, args.max_tokens)
        )
    arms = {arm: merge_rounds(rounds) for arm, rounds in runs.items()}
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.python_version()}",
        "load_average": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},
        "source": source,
        "model": args.model,
        "replicas": args.replicas,
        "rounds": args.rounds,
        "workload": asdict(shape),
        "settings": settings,
        "arms": {
            arm: {k: round(v, 4) for k, v in metrics.items()} for arm, metrics in arms.items()
        },
        "ratios": ratios(arms),
        "gateway_overhead": {k: round(v, 3) for k, v in overhead.items()},
        "gateway_overhead_stub_replica": {k: round(v, 3) for k, v in overhead_stub.items()},
        "cold_start": {k: round(v, 3) if isinstance(v, float) else v for k, v in cold.items()},
    }
    print(write(report, args.out))
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
