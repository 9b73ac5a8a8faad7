"""`python -m bench.operator`: N NIMServices against the real operator process, measured.

For each N (`--counts`, default 1,100,1000) and each repeat, one run (see scenario.py) with
`nim-operator run -m nim_operator.handlers`, as the image runs it, and one with the no-op kopf
operator (noop_operator.py), alternating which goes first; each run gets a fresh API-server
emulator (or, with KUBECONFIG set, a fresh namespace on that cluster). Prints every measurement
next to issue 6's target, and writes bench/results/operator.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import stop_cleanly_on_sigterm
from bench.operator import report
from bench.operator.backends import Backend, ClusterBackend, EmulatorBackend
from bench.operator.scenario import RunConfig, run

RESULTS = Path(__file__).resolve().parents[1] / "results"


def machine() -> str:
    return (
        f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def make_backend(kind: str, workdir: Path) -> Backend:
    if kind == "cluster":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            raise SystemExit("--backend cluster needs KUBECONFIG")
        return ClusterBackend(Path(kubeconfig).expanduser())
    return EmulatorBackend(workdir)


async def one_run(kind: str, config: RunConfig, workdir: Path) -> dict[str, Any]:
    backend = make_backend(kind, workdir)
    await backend.start()
    try:
        return await run(backend, config, workdir)
    finally:
        await backend.stop()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    operators = ["nimstack"] + ([] if args.no_baseline else ["noop"])
    results = []
    for count in args.counts:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in operators}
        for repeat in range(args.repeat):
            # Alternate the order, so neither always runs on a machine the other just warmed.
            order = operators if repeat % 2 == 0 else operators[::-1]
            for name in order:
                config = RunConfig(
                    count=count,
                    operator=name,
                    interval=args.interval,
                    window=args.window if args.window is not None else args.interval,
                    settle=args.settle,
                    settle_max=args.settle_max,
                    probes=args.probes,
                    replicas=args.replicas,
                    concurrency=args.concurrency,
                )
                log(f"N={count} {name} repeat {repeat + 1}/{args.repeat}")
                outcome = await one_run(args.backend, config, workdir)
                runs[name].append(outcome)
                log(
                    f"  converged in {outcome['burst']['converge_s']}s, "
                    f"settled {outcome['settle']['took_s']}s later, "
                    f"idle RSS {outcome['idle']['rss_mib']} MiB, "
                    f"idle CPU {outcome['idle']['cpu_pct']}%, "
                    f"operator writes in the idle window {outcome['idle']['operator_writes']}"
                )
        ours = report.summarize(runs["nimstack"])
        result: dict[str, Any] = {
            "count": count,
            "ours": ours,
            "checks": [c.as_dict() for c in report.checks(count, ours)],
            "runs": runs,
        }
        if "noop" in runs:
            result["noop"] = report.summarize(runs["noop"])
            result["ratios"] = report.ratios(ours, result["noop"])
        results.append(result)
    return {
        "machine": machine(),
        "backend": "a Kubernetes cluster" if args.backend == "cluster" else "the kmock emulator",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "counts": args.counts,
            "repeat": args.repeat,
            "reconcile_interval_s": args.interval,
            "idle_window_s": args.window if args.window is not None else args.interval,
            "settle_quiet_s": args.settle,
            "settle_max_s": args.settle_max,
            "probes": args.probes,
            "replicas": args.replicas,
            "create_concurrency": args.concurrency,
        },
        "results": results,
    }


def markdown(data: dict[str, Any]) -> str:
    settings = data["settings"]
    counts = ",".join(str(c) for c in settings["counts"])
    lines = [
        "# Operator benchmark",
        "",
        f"`python -m bench.operator --counts {counts} --repeat {settings['repeat']}` on "
        f"{data['backend']}; machine: {data['machine']} (load average "
        f"{', '.join(str(x) for x in data['load_average'])} at the end: the machine is shared). "
        f"Timer interval {settings['reconcile_interval_s']:g} s (the default), idle window "
        f"{settings['idle_window_s']:g} s once nobody but the operator had changed anything for "
        f"{settings['settle_quiet_s']:g} s (at most {settings['settle_max_s']:g} s after "
        f"convergence), {settings['probes']} single applies per N, "
        f"`replicas: {settings['replicas']}`. Medians of {settings['repeat']} run(s). "
        "What each number means: docs/benchmarks-operator.md.",
        "",
        "## Targets (issue 6)",
        "",
        *report.check_table(data["results"]),
        "",
    ]
    if all(r.get("ratios") for r in data["results"]):
        lines += [
            "## nim_operator / a no-op kopf operator, same run",
            "",
            "The no-op operator has nim_operator's kopf registrations and settings and does "
            "nothing: the floor that kopf and Python set.",
            "",
            *report.ratio_table(data["results"]),
            "",
        ]
    for result in data["results"]:
        lines += [f"## N = {result['count']}", "", *report.detail_table(result), ""]
        lines += report.writes_section(result)
    return "\n".join(lines)


def parse_counts(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError("counts are positive integers, e.g. 1,100,1000")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator", description=__doc__)
    parser.add_argument("--counts", type=parse_counts, default=[1, 100, 1000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per N and operator")
    parser.add_argument(
        "--backend",
        choices=("kmock", "cluster"),
        default="cluster" if os.environ.get("KUBECONFIG") else "kmock",
        help="default: the cluster KUBECONFIG points at if set, else the emulator",
    )
    parser.add_argument(
        "--interval", type=float, default=60.0, help="NIM_OPERATOR_RECONCILE_INTERVAL (s)"
    )
    parser.add_argument("--window", type=float, help="idle window (s); default: one interval")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="before the idle window, wait until nobody but the operator changed anything for "
        "this long (s)",
    )
    parser.add_argument(
        "--settle-max", type=float, default=300.0, help="the most to wait for that (s)"
    )
    parser.add_argument("--probes", type=int, default=20, help="single applies per N")
    parser.add_argument("--replicas", type=int, default=1, help="spec.replicas of each")
    parser.add_argument("--concurrency", type=int, default=8, help="creates in flight")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-op operator")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nim-bench-operator-") as tmp:
        try:
            data = asyncio.run(measure(args, Path(tmp)))
        except (TimeoutError, RuntimeError) as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator.json").write_text(json.dumps(data, indent=1) + "\n")
    text = markdown(data)
    (args.out / "operator.md").write_text(text)
    report.plot(data, args.out / "operator.png")
    print(text)
    print(f"wrote {args.out / 'operator.json'}, .md and .png")
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()
    sys.exit(main())
