"""The benchmark's pieces behave as documented, so its ratios compare what they claim to.

The benchmark itself (`python -m bench.autoscaling`) is not run here; these check in
milliseconds that the HPA and KubeAI reimplementations follow their published rules, and that
the simulation conserves requests and is reproducible.
"""

from __future__ import annotations

import math

from bench.autoscaling.scalers import BuiltIn, KubeAIMovingAverage, KubernetesHPA
from bench.autoscaling.simulation import Cluster, simulate
from bench.autoscaling.trace import TraceSpec, generate
from nim_operator.autoscaling.algorithm import PodReading, Policy, Snapshot


def snap(
    time: float, current: int, per_pod: float, *, ready: int | None = None, starting: int = 0
) -> Snapshot:
    pods = current if ready is None else ready
    readings = tuple(PodReading(running=per_pod, waiting=0.0) for _ in range(pods))
    return Snapshot(time, current, readings, starting=starting)


class TestKubernetesHPA:
    def hpa(self, **overrides: float) -> KubernetesHPA:
        return KubernetesHPA("running", 10.0, 1, 100, **overrides)  # type: ignore[arg-type]

    def test_scale_up_is_rate_limited_to_4_pods_or_double_per_15s(self) -> None:
        hpa, current, steps = self.hpa(), 1, []
        for tick in range(4):
            current = hpa.decide(snap(15.0 * tick, current, 1000.0))
            steps.append(current)
        assert steps == [5, 10, 20, 40]  # max(+4, x2) each period

    def test_tolerance(self) -> None:
        assert self.hpa().decide(snap(0, 4, 10.9)) == 4
        assert self.hpa().decide(snap(0, 4, 11.1)) == 5

    def test_scale_down_takes_the_highest_recommendation_of_300s(self) -> None:
        hpa = self.hpa()
        assert hpa.decide(snap(0, 4, 10.0)) == 4
        assert hpa.decide(snap(100, 4, 1.0)) == 4
        assert hpa.decide(snap(301, 4, 1.0)) == 1

    def test_pods_without_metrics_count_as_idle_when_scaling_up(self) -> None:
        # 2 reporting pods at 30, 2 starting: (60 + 0 + 0) / 10 = 6 pods.
        assert self.hpa().decide(snap(0, 4, 30.0, ready=2, starting=2)) == 6
        # ... and as at the target when scaling down: (1 + 1 + 10 + 10) / 10 -> 3 pods, not 1.
        assert self.hpa(down_window=0).decide(snap(0, 4, 1.0, ready=2, starting=2)) == 3


class TestKubeAI:
    def test_the_average_starts_from_zeros_and_spans_the_window(self) -> None:
        kubeai = KubeAIMovingAverage(10.0, 1, 100)  # 10 s interval, 10 min window: 60 samples
        assert kubeai.decide(snap(0, 1, 600.0)) == 1  # 600 / 60 samples = 10 -> 1 replica
        for tick in range(1, 60):
            wanted = kubeai.decide(snap(10.0 * tick, 1, 600.0))
        assert wanted == 60

    def test_scale_down_needs_consecutive_recommendations(self) -> None:
        kubeai = KubeAIMovingAverage(10.0, 1, 100, time_window=10.0)  # a 1-sample average
        assert kubeai.decide(snap(0, 5, 10.0)) == 5  # 50 in flight: 5 replicas
        # ceil(30 s / 10 s) = 3 checks in a row must ask for fewer.
        assert [kubeai.decide(snap(10.0 * t, 5, 1.0)) for t in range(1, 5)] == [5, 5, 5, 1]


class TestSimulation:
    TRACE = generate(TraceSpec(seed=7, duration=1800.0))

    def test_every_request_is_served_once_and_waits_are_non_negative(self) -> None:
        result = simulate(self.TRACE, BuiltIn(Policy(1, 10, "running", 6.0)), Cluster())
        assert len(result.waits) == len(self.TRACE.requests)
        assert min(result.waits) >= 0

    def test_billing_covers_at_least_the_minimum(self) -> None:
        result = simulate(self.TRACE, BuiltIn(Policy(2, 10, "running", 6.0)), Cluster())
        assert result.replica_seconds >= 2 * self.TRACE.spec.duration * 0.99
        assert result.max_replicas <= 10 + 10  # draining replicas may overlap new ones

    def test_reproducible(self) -> None:
        def run() -> tuple[float, float, int]:
            trace = generate(TraceSpec(seed=7, duration=1800.0))
            result = simulate(trace, KubernetesHPA("queue", 2.0, 1, 10), Cluster())
            return result.replica_seconds, result.p95_wait, result.scale_events

        assert run() == run()

    def test_a_fixed_fleet_that_is_big_enough_never_queues(self) -> None:
        fixed = BuiltIn(Policy(20, 20, "running", 6.0))
        result = simulate(self.TRACE, fixed, Cluster(initial_replicas=20))
        assert math.isclose(result.p95_wait, 0.0)
        assert result.scale_events == 0
