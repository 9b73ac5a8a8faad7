"""From runs to results: medians over repeats, the targets of issue 6, Markdown and a plot."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Issue 6's targets for the operator.
LATENCY_TARGET_S = 0.5
RSS_TARGET_MIB = 150.0
IDLE_CPU_TARGET_PCT = 5.0


def _get(run: dict[str, Any], path: str) -> Any:
    node: Any = run
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def median(runs: Sequence[dict[str, Any]], path: str) -> float | None:
    """The median over repeats of the number at `path` (dotted), None where none has it."""
    values = [v for r in runs if isinstance(v := _get(r, path), int | float)]
    if not values:
        return None
    return round(statistics.median(values), 3)


# The numbers the summary keeps, by (section, name) -> dotted path in a run.
SUMMARY_PATHS = {
    "burst": (
        "burst.converge_s",
        "burst.objects_per_s",
        "burst.children_p50_s",
        "burst.children_p99_s",
        "burst.observed_p50_s",
        "burst.observed_p99_s",
        "burst.handled_p50_s",
        "burst.handled_p99_s",
        "burst.ready_p50_s",
        "burst.cpu_ms_per_object",
        "burst.peak_rss_mib",
        "burst.server_cpu_pct",
        "burst.create_rtt_p50_ms",
    ),
    "probe": (
        "probe.children_p50_s",
        "probe.children_p99_s",
        "probe.observed_p50_s",
        "probe.observed_p99_s",
        "probe.handled_p50_s",
        "probe.handled_p99_s",
    ),
    "settle": ("settle.took_s", "settle.tail_s"),
    "idle": ("idle.rss_mib", "idle.cpu_pct", "idle.server_cpu_pct", "idle.window_s"),
    "restart": (
        "restart.peak_rss_mib",
        "restart.rss_mib",
        "restart.cpu_pct",
        "restart.resync_s",
        "restart.window_s",
    ),
    "requests": (
        "requests.burst.per_object",
        "requests.burst.reconciles_per_object",
        "requests.burst.per_reconcile",
        "requests.idle.per_tick",
        "requests.idle.writes_per_tick",
        "requests.idle.per_s",
        "requests.idle_applying_reconciles",
        "requests.restart.per_object",
        "requests.idle.expected_ticks",
        "requests.burst.emulator_p50_ms",
        "requests.emulator_create_p50_ms",
    ),
}


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the repeats of one operator at one N."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for paths in SUMMARY_PATHS.values():
        for path in paths:
            out[path] = median(runs, path)
    for phase in ("idle", "restart"):
        changes = [sum((_get(r, f"{phase}.changes") or {}).values()) for r in runs]
        out[f"{phase}.changes"] = max(changes) if changes else None
    # Counts that should be zero: the worst run's.
    for path in (
        "settle.writes.operator_writes",
        "settle.writes.other_writes",
        "idle.writes.operator_writes",
        "idle.writes.other_writes",
        "restart.writes.operator_writes",
        "status_writes.run.patches",
        "status_writes.run.modified",
        "status_writes.run.unchanged",
        "status_writes.idle.patches",
    ):
        found = [v for r in runs if isinstance(v := _get(r, path), int)]
        out[path] = max(found) if found else None
    out["settle.unsettled"] = sum(1 for r in runs if _get(r, "settle.settled") is False)
    by_verb: dict[str, list[float]] = {}
    for run in runs:
        idle = _get(run, "requests.idle") or {}
        ticks = idle.get("expected_ticks") or 0
        for verb, count in (idle.get("by_verb") or {}).items():
            if ticks:
                by_verb.setdefault(verb, []).append(count / ticks)
    out["requests.idle.by_verb_per_tick"] = {
        verb: round(statistics.median(values), 2) for verb, values in sorted(by_verb.items())
    }
    return out


@dataclass(frozen=True)
class Check:
    what: str
    value: float | None
    target: str
    passed: bool | None  # None: not measured on this backend

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "target": self.target,
            "pass": self.passed,
        }


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def checks(count: int, ours: dict[str, Any]) -> list[Check]:
    """Issue 6's targets, each against what this N measured."""
    probe = ours["probe.children_p50_s"]
    burst = ours["burst.children_p50_s"]
    rss = ours["idle.rss_mib"]
    cpu = ours["idle.cpu_pct"]
    changes = ours["idle.changes"]
    operator_writes = ours.get("idle.writes.operator_writes")
    unsettled = ours.get("settle.unsettled") or 0
    return [
        Check(
            f"apply -> Deployment+Service p50, one apply with {count} present (s)",
            probe,
            f"<= {LATENCY_TARGET_S}",
            _at_most(probe, LATENCY_TARGET_S),
        ),
        Check(
            f"apply -> Deployment+Service p50, {count} applied at once (s)",
            burst,
            f"<= {LATENCY_TARGET_S}",
            _at_most(burst, LATENCY_TARGET_S),
        ),
        Check(
            f"operator RSS at steady state, {count} objects (MiB)",
            rss,
            f"<= {RSS_TARGET_MIB:g}",
            _at_most(rss, RSS_TARGET_MIB),
        ),
        Check(
            f"operator CPU at steady state, {count} objects (% of a core)",
            cpu,
            f"<= {IDLE_CPU_TARGET_PCT:g}",
            _at_most(cpu, IDLE_CPU_TARGET_PCT),
        ),
        Check(
            "objects changed by anyone in the idle window",
            changes,
            "0",
            None if changes is None else changes == 0,
        ),
        Check(
            "operator writes in the settled idle window"
            + (f" (n/a: {unsettled} run(s) did not settle)" if unsettled else ""),
            operator_writes,
            "0",
            None if operator_writes is None or unsettled else operator_writes == 0,
        ),
    ]


def ratio(ours: float | None, base: float | None) -> float | None:
    if ours is None or base is None or base == 0:
        return None
    return round(ours / base, 2)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def check_table(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| N | measurement | value | target | |", "|---:|---|---:|---:|---|"]
    for result in results:
        for check in result["checks"]:
            lines.append(
                f"| {result['count']} | {check['what']} | {_cell(check['value'])} "
                f"| {check['target']} | {_verdict(check['pass'])} |"
            )
    return lines


ROWS: list[tuple[str, str]] = [
    ("burst: all N converged (s)", "burst.converge_s"),
    ("burst: NIMServices per second", "burst.objects_per_s"),
    ("burst: apply -> Deployment+Service p50 / p99 (s)", "burst.children_p50_s|p99"),
    ("burst: apply -> status written p50 / p99 (s)", "burst.observed_p50_s|p99"),
    ("burst: apply -> kopf done (annotation) p50 / p99 (s)", "burst.handled_p50_s|p99"),
    ("burst: apply -> Ready p50 (s)", "burst.ready_p50_s"),
    ("burst: operator CPU per NIMService (ms)", "burst.cpu_ms_per_object"),
    ("burst: peak operator RSS (MiB)", "burst.peak_rss_mib"),
    ("one apply, N present: -> Deployment+Service p50 / p99 (s)", "probe.children_p50_s|p99"),
    ("one apply, N present: -> status written p50 / p99 (s)", "probe.observed_p50_s|p99"),
    ("one apply, N present: -> kopf done p50 / p99 (s)", "probe.handled_p50_s|p99"),
    ("settle: convergence -> idle window (s)", "settle.took_s"),
    ("settle: convergence -> last change by others (s)", "settle.tail_s"),
    (
        "settle: changes by the operator / by others",
        "settle.writes.operator_writes|settle.writes.other_writes",
    ),
    ("idle: operator RSS (MiB)", "idle.rss_mib"),
    ("idle: operator CPU (% of a core)", "idle.cpu_pct"),
    ("idle: objects changed", "idle.changes"),
    (
        "idle: changes by the operator / by others",
        "idle.writes.operator_writes|idle.writes.other_writes",
    ),
    (
        "restart, N present: peak / end-of-window operator RSS (MiB)",
        "restart.peak_rss_mib|restart.rss_mib",
    ),
    ("restart, N present: operator CPU over the window (% of a core)", "restart.cpu_pct"),
    ("restart, N present: last request after start (s)", "restart.resync_s"),
    ("restart, N present: objects changed", "restart.changes"),
    ("restart, N present: changes by the operator", "restart.writes.operator_writes"),
    (
        "NIMService status patches / that changed something / that did not (whole run)",
        "status_writes.run.patches|status_writes.run.modified|status_writes.run.unchanged",
    ),
    ("API requests per NIMService, restart", "requests.restart.per_object"),
    ("API requests per NIMService, burst", "requests.burst.per_object"),
    ("reconciles per NIMService, burst", "requests.burst.reconciles_per_object"),
    ("API requests per reconcile, burst (kopf's included)", "requests.burst.per_reconcile"),
    ("API requests per timer tick", "requests.idle.per_tick"),
    ("... of which writes (no-op server-side applies)", "requests.idle.writes_per_tick"),
    ("API requests per second, idle", "requests.idle.per_s"),
    ("API server CPU, burst / idle (% of a core)", "burst.server_cpu_pct|idle.server_cpu_pct"),
]


def _row_value(summary: dict[str, Any] | None, spec: str) -> str:
    """One cell: the number at a summary path, or "first / second" for "first|second" (where
    "p99" as the second stands for the first path's p99)."""
    if summary is None:
        return ""
    if "|" in spec:
        paths = spec.split("|")
        if paths[1:] == ["p99"]:
            paths[1] = paths[0].replace("_p50_", "_p99_")
        return " / ".join(_cell(summary.get(path)) for path in paths)
    return _cell(summary.get(spec))


def detail_table(result: dict[str, Any]) -> list[str]:
    ours, noop = result["ours"], result.get("noop")
    header = "| | nim_operator | no-op kopf operator |" if noop else "| | nim_operator |"
    rule = "|---|---:|---:|" if noop else "|---|---:|"
    lines = [header, rule]
    for label, spec in ROWS:
        cells = [_row_value(ours, spec)]
        if noop:
            cells.append(_row_value(noop, spec))
        if all(set(c.split(" / ")) <= {"", "n/a"} for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    per_tick = ours.get("requests.idle.by_verb_per_tick") or {}
    if per_tick:
        described = ", ".join(f"{count:g} {verb}" for verb, count in per_tick.items())
        lines += ["", f"A timer tick of nim_operator: {described}."]
    return lines


WRITE_PHASES = (
    ("burst", "burst: from the first create to the milestone that completed the last one"),
    ("settle", "settle: after convergence, until nobody but the operator changed anything"),
    ("idle", "idle window"),
    ("restart", "restart window"),
)


def writes_table(run: dict[str, Any]) -> list[str]:
    """What changed in each phase of one run, by kind, writer and area."""
    lines = ["| phase | kind | writer | what changed | changes |", "|---|---|---|---|---:|"]
    for phase, _ in WRITE_PHASES:
        writes = _get(run, f"{phase}.writes") or {}
        detail = writes.get("detail") or {}
        if not detail:
            lines.append(f"| {phase} | | | nothing | 0 |")
        for kind, writers in detail.items():
            for writer, areas in writers.items():
                for what, count in areas.items():
                    lines.append(f"| {phase} | {kind} | {writer} | {what} | {count} |")
    return lines


def writes_section(result: dict[str, Any]) -> list[str]:
    """Per run of nim_operator at one N: the settling, and who changed what in each phase."""
    runs = (result.get("runs") or {}).get("nimstack") or []
    lines: list[str] = []
    for index, run in enumerate(runs):
        settle = run.get("settle") or {}
        title = f"### N = {result['count']}: who changed what (nim_operator, run {index + 1})"
        how = Counter[str]()
        for phase, _ in WRITE_PHASES:
            how.update(_get(run, f"{phase}.writes.by_how") or {})
        status = run.get("status_writes") or {}
        described = ", ".join(
            f"{phase} {_cell(counts.get('patches'))} / {_cell(counts.get('modified'))}"
            for phase, counts in status.items()
        )
        lines += [
            title,
            "",
            f"Idle window started {_cell(settle.get('took_s'))} s after convergence"
            + (
                ""
                if settle.get("settled", True)
                else f" WITHOUT SETTLING (the cap, {_cell(settle.get('max_s'))} s)"
            )
            + f"; the last change by anyone but the operator came "
            f"{_cell(settle.get('tail_s'))} s after convergence (quiet period "
            f"{_cell(settle.get('quiet_s'))} s). Attributed by: "
            + (", ".join(f"{k} {v}" for k, v in sorted(how.items())) or "nothing to attribute")
            + " (attribution.py). NIMService status patches sent / that changed something: "
            + described
            + ".",
            "",
            *writes_table(run),
            "",
        ]
    return lines


def ratio_table(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | RSS | idle CPU | CPU per NIMService, burst | apply -> kopf done p50, one apply "
        "| API requests per NIMService |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        ratios = result.get("ratios") or {}
        cells = [
            ratios.get(key)
            for key in ("rss", "idle_cpu", "cpu_per_object", "handled_probe_p50", "requests")
        ]
        lines.append(f"| {result['count']} | " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def ratios(ours: dict[str, Any], noop: dict[str, Any]) -> dict[str, float | None]:
    return {
        "rss": ratio(ours["idle.rss_mib"], noop["idle.rss_mib"]),
        "idle_cpu": ratio(ours["idle.cpu_pct"], noop["idle.cpu_pct"]),
        "cpu_per_object": ratio(ours["burst.cpu_ms_per_object"], noop["burst.cpu_ms_per_object"]),
        "handled_probe_p50": ratio(ours["probe.handled_p50_s"], noop["probe.handled_p50_s"]),
        "requests": ratio(ours["requests.burst.per_object"], noop["requests.burst.per_object"]),
    }


def plot(data: dict[str, Any], path: Path) -> None:
    # Imported here: the backend must be chosen before pyplot is, and only plotting needs them.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    counts = [r["count"] for r in results]
    labels = [str(c) for c in counts]
    has_noop = all(r.get("noop") for r in results)
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    ax = axes[0][0]
    for result in results:
        for phase, style in (("burst", "-"), ("probe", "--")):
            samples = sorted(
                s for run in result["runs"]["nimstack"] for s in run["samples"][phase]["children"]
            )
            if samples:
                ys = [(i + 1) / len(samples) for i in range(len(samples))]
                what = f"{result['count']} at once" if phase == "burst" else "one apply"
                ax.step(samples, ys, style, where="post", label=f"N={result['count']}: {what}")
    ax.axvline(LATENCY_TARGET_S, color="black", lw=1, ls=":", label="target p50")
    ax.set_xscale("log")
    ax.set_xlabel("seconds from apply to Deployment + Service")
    ax.set_ylabel("fraction of NIMServices")
    ax.set_title("Reaction time (CDF)")
    ax.legend(fontsize=7)

    def bars(
        axis: Any, key: Callable[[dict[str, Any]], float | None], target: float | None, title: str
    ) -> None:
        width = 0.38 if has_noop else 0.6
        xs = list(range(len(counts)))
        ours = [key(r["ours"]) or 0 for r in results]
        axis.bar([x - width / 2 if has_noop else x for x in xs], ours, width, label="nim_operator")
        if has_noop:
            noop = [key(r["noop"]) or 0 for r in results]
            axis.bar([x + width / 2 for x in xs], noop, width, label="no-op kopf operator")
        if target is not None:
            axis.axhline(target, color="black", lw=1, ls=":", label="target")
        axis.set_xticks(xs, labels)
        axis.set_xlabel("NIMServices")
        axis.set_title(title)
        axis.legend(fontsize=7)

    bars(
        axes[0][1],
        lambda s: s["idle.rss_mib"],
        RSS_TARGET_MIB,
        "Operator RSS at steady state (MiB)",
    )
    bars(
        axes[1][0],
        lambda s: s["idle.cpu_pct"],
        IDLE_CPU_TARGET_PCT,
        "Operator CPU at steady state (% of one core)",
    )
    bars(
        axes[1][1],
        lambda s: s["requests.burst.per_object"],
        None,
        "API requests per NIMService until converged",
    )
    fig.suptitle(f"bench.operator on {data['backend']}: {data['machine']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
