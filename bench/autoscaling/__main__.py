"""`python -m bench.autoscaling`: replay one bursty trace against three autoscalers.

Prints a table and the ratios of the built-in autoscaler to the Kubernetes HPA algorithm (same
signal, same target) and to KubeAI's moving-average rule, and writes
bench/results/autoscaling.{json,md,png}. docs/autoscaling.md describes the model and its limits.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.autoscaling.scalers import BuiltIn, KubeAIMovingAverage, KubernetesHPA
from bench.autoscaling.simulation import Cluster, Result, Scaler, simulate
from bench.autoscaling.trace import Trace, TraceSpec, generate
from nim_operator.autoscaling.algorithm import Metric, Policy

RESULTS = Path(__file__).resolve().parents[1] / "results"
MIN_REPLICAS, MAX_REPLICAS = 1, 20
INTERVAL = 15.0  # our default spec.autoscaling.interval, and the HPA's sync period
DOWN_WINDOW = 300.0  # our default, and the HPA's default scale-down stabilization


@dataclass(frozen=True)
class Comparison:
    """One signal, one target, the scalers that read it."""

    title: str
    metric: Metric
    target: float
    results: tuple[Result, ...]


def scalers_for(metric: Metric, target: float, *, kubeai: bool) -> list[Scaler]:
    policy = Policy(
        MIN_REPLICAS, MAX_REPLICAS, metric, target, tolerance=0.1, down_window=DOWN_WINDOW
    )
    scalers: list[Scaler] = [
        BuiltIn(policy, interval=INTERVAL),
        KubernetesHPA(metric, target, MIN_REPLICAS, MAX_REPLICAS, interval=INTERVAL),
    ]
    if kubeai:
        # Its defaults: 10 s interval, 10 min window, 30 s scale-down delay; its signal is the
        # requests in flight, i.e. our `running` metric.
        scalers.append(KubeAIMovingAverage(target, MIN_REPLICAS, MAX_REPLICAS))
    return scalers


def run(trace: Trace, cluster: Cluster) -> list[Comparison]:
    # `running` target: 6 of the 8 requests a replica runs at once (75%).
    in_flight = tuple(simulate(trace, s, cluster) for s in scalers_for("running", 6.0, kubeai=True))
    # `queue`: 2 waiting per pod, the Prometheus Adapter / KEDA recipe on num_requests_waiting.
    queue = tuple(simulate(trace, s, cluster) for s in scalers_for("queue", 2.0, kubeai=False))
    return [
        Comparison("requests in flight per pod (running), target 6", "running", 6.0, in_flight),
        Comparison("requests waiting per pod (queue), target 2", "queue", 2.0, queue),
    ]


def summary(result: Result) -> dict[str, Any]:
    return {
        "scaler": result.scaler,
        "replica_hours": round(result.replica_seconds / 3600, 2),
        "p50_wait_s": round(result.wait_percentile(0.50), 2),
        "p95_wait_s": round(result.p95_wait, 2),
        "p99_wait_s": round(result.wait_percentile(0.99), 2),
        "scale_events": result.scale_events,
        "max_replicas": result.max_replicas,
    }


def ratios(ours: Result, other: Result) -> dict[str, float | None]:
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "replica_seconds": ratio(ours.replica_seconds, other.replica_seconds),
        "p95_wait": ratio(ours.p95_wait, other.p95_wait),
        "scale_events": ratio(ours.scale_events, other.scale_events),
    }


def report(trace: Trace, cluster: Cluster, comparisons: list[Comparison]) -> dict[str, Any]:
    spec = trace.spec
    return {
        "trace": {
            "seed": spec.seed,
            "duration_s": spec.duration,
            "requests": len(trace.requests),
            "phases": [
                {"name": p.name, "rate_per_s": p.rate, "mean_length_s": p.mean_seconds}
                for p in spec.phases
            ],
            "service_time": {"median_s": spec.service_median, "sigma": spec.service_sigma},
        },
        "cluster": {
            "slots_per_replica": cluster.slots,
            "startup_s": cluster.startup,
            "min_replicas": MIN_REPLICAS,
            "max_replicas": MAX_REPLICAS,
        },
        "comparisons": [
            {
                "signal": c.title,
                "results": [summary(r) for r in c.results],
                "ratios": {
                    f"{c.results[0].scaler} / {other.scaler}": ratios(c.results[0], other)
                    for other in c.results[1:]
                },
            }
            for c in comparisons
        ],
    }


def markdown(data: dict[str, Any]) -> str:
    trace, cluster = data["trace"], data["cluster"]
    lines = [
        "# Autoscaling benchmark",
        "",
        f"`python -m bench.autoscaling --seed {trace['seed']}`: {trace['requests']} requests over "
        f"{trace['duration_s'] / 3600:g} h; replicas run {cluster['slots_per_replica']} requests "
        f"at once and start serving {cluster['startup_s']:g} s after they are created; "
        f"{cluster['min_replicas']}-{cluster['max_replicas']} replicas. "
        "The model and its limits: docs/autoscaling.md#benchmark.",
        "",
    ]
    for comparison in data["comparisons"]:
        lines += [
            f"## {comparison['signal']}",
            "",
            "| scaler | replica-hours | p50 wait (s) | p95 wait (s) | p99 wait (s) "
            "| scale events | max replicas |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in comparison["results"]:
            lines.append(
                f"| {r['scaler']} | {r['replica_hours']} | {r['p50_wait_s']} | {r['p95_wait_s']} "
                f"| {r['p99_wait_s']} | {r['scale_events']} | {r['max_replicas']} |"
            )
        lines += [
            "",
            "| ratio | replica-seconds | p95 wait | scale events |",
            "|---|---:|---:|---:|",
        ]
        for name, values in comparison["ratios"].items():
            cells = " | ".join(
                "n/a" if values[key] is None else f"{values[key]:.2f}"
                for key in ("replica_seconds", "p95_wait", "scale_events")
            )
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def plot(trace: Trace, comparisons: list[Comparison], path: Path) -> None:
    # Imported here: the backend must be chosen before pyplot is, and only plotting needs them.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = comparisons
    fig, axes = plt.subplots(4, 1, figsize=(14, 12), sharex=True)
    minutes = [t / 60 for t in range(0, int(trace.spec.duration), 10)]
    axes[0].plot(minutes, [trace.rate_at(m * 60) for m in minutes], color="black", lw=1)
    axes[0].set_ylabel("arrivals (req/s)")
    axes[0].set_title(f"Bursty trace, seed {trace.spec.seed}")
    # Ours solid and drawn last, the HPA dashed: where they agree, both stay visible.
    styles = [
        {"color": "tab:blue", "lw": 2.0, "zorder": 3},
        {"color": "tab:orange", "lw": 1.2, "ls": "--", "zorder": 2},
        {"color": "tab:green", "lw": 1.0, "zorder": 1},
    ]
    for comparison, replicas_axis in ((first, axes[1]), (second, axes[3])):
        for result, style in zip(comparison.results, styles, strict=False):
            xs = [s.time / 60 for s in result.samples]
            replicas = [s.replicas for s in result.samples]
            replicas_axis.step(xs, replicas, where="post", label=result.scaler, **style)
        replicas_axis.set_ylabel("replicas")
        replicas_axis.set_title(f"Replicas, signal: {comparison.title}")
        replicas_axis.legend(loc="upper right", fontsize=8)
    for result, style in zip(first.results, styles, strict=False):
        xs = [s.time / 60 for s in result.samples]
        axes[2].plot(xs, [s.queue for s in result.samples], label=result.scaler, **style)
    axes[2].set_ylabel("requests queued")
    axes[2].set_title(f"Queue, signal: {first.title}")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[3].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaling", description=__doc__)
    parser.add_argument("--seed", type=int, default=TraceSpec.seed, help="trace seed")
    parser.add_argument("--hours", type=float, default=TraceSpec.duration / 3600)
    parser.add_argument("--startup", type=float, default=Cluster.startup, help="replica startup s")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)

    trace = generate(TraceSpec(seed=args.seed, duration=args.hours * 3600))
    cluster = Cluster(startup=args.startup)
    comparisons = run(trace, cluster)
    data = report(trace, cluster, comparisons)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscaling.json").write_text(json.dumps(data, indent=2) + "\n")
    table = markdown(data)
    (args.out / "autoscaling.md").write_text(table)
    plot(trace, comparisons, args.out / "autoscaling.png")
    print(table)
    print(f"wrote {args.out / 'autoscaling.json'}, .md and .png")


if __name__ == "__main__":
    main()
