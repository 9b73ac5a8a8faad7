"""The built-in autoscaler's decision (`algorithm.decide`), a pure function.

Worked examples for every branch, then properties checked by hypothesis over arbitrary policies,
pod readings and recommendation histories: bounded by min/max, monotone in load, stable inside
the tolerance band, windows honoured, missing metrics never scale down, pods waiting for
capacity never make it scale up, and a constant load never makes it flap.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nim_operator.autoscaling.algorithm import (
    METRICS,
    Metric,
    PodReading,
    Policy,
    Recommendation,
    Snapshot,
    decide,
    pod_signal,
)

NOW = 1000.0


def pods(
    *running: float, waiting: float = 0.0, capacity: float | None = None
) -> tuple[PodReading, ...]:
    return tuple(PodReading(running=r, waiting=waiting, capacity=capacity) for r in running)


def policy(**overrides: object) -> Policy:
    fields: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 10,
        "metric": "running",
        "target": 10.0,
        "tolerance": 0.1,
        "up_window": 0.0,
        "down_window": 0.0,
    }
    fields.update(overrides)
    return Policy(**fields)  # type: ignore[arg-type]


class TestSignal:
    @pytest.mark.parametrize(
        ("metric", "expected"), [("queue", 3.0), ("running", 8.0), ("kvCache", 0.5)]
    )
    def test_each_metric_reads_its_figure(self, metric: Metric, expected: float) -> None:
        reading = PodReading(running=5.0, waiting=3.0, kv_cache=0.5)
        assert pod_signal(reading, metric) == expected

    def test_kv_cache_absent(self) -> None:
        assert pod_signal(PodReading(running=1.0, waiting=0.0), "kvCache") is None

    @pytest.mark.parametrize(
        "fields",
        [
            {"min_replicas": -1},
            {"min_replicas": 0, "max_replicas": 0},
            {"min_replicas": 3, "max_replicas": 2},
            {"target": 0.0},
            {"tolerance": 1.0},
            {"tolerance": -0.1},
            {"down_window": -1.0},
        ],
    )
    def test_nonsense_policies_are_refused(self, fields: dict[str, object]) -> None:
        with pytest.raises(ValueError, match=r"must|need|cannot"):
            policy(**fields)


class TestRawRecommendation:
    def test_scales_up_to_what_the_load_needs(self) -> None:
        # 2 pods with 25 in flight each, target 10: 50 / 10 = 5 pods.
        decision = decide(policy(), Snapshot(NOW, 2, pods(25, 25)))
        assert (decision.desired, decision.reason, decision.raw) == (5, "ScaleUp", 5)
        assert decision.value == 25
        assert decision.changes
        assert "25 requests in flight per pod on 2 pod(s), target 10" in decision.message

    def test_waiting_requests_count_as_load_for_running(self) -> None:
        # An engine at its batch limit: running is flat, the queue shows the rest.
        decision = decide(policy(), Snapshot(NOW, 2, pods(10, 10, waiting=10)))
        assert decision.desired == 4

    def test_within_tolerance_nothing_moves(self) -> None:
        for load in (9.1, 10.0, 10.9):
            decision = decide(policy(), Snapshot(NOW, 3, pods(load, load, load)))
            assert (decision.desired, decision.reason) == (3, "WithinTolerance")
            assert not decision.changes

    def test_just_outside_tolerance_moves(self) -> None:
        assert decide(policy(), Snapshot(NOW, 3, pods(11.2, 11.2, 11.2))).desired == 4
        assert decide(policy(), Snapshot(NOW, 3, pods(6, 6, 6))).desired == 2

    def test_scales_down_to_what_the_load_needs(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 4, pods(2, 2, 2, 2)))
        assert (decision.desired, decision.reason) == (1, "ScaleDown")

    def test_low_load_with_a_pod_starting_is_steady_not_a_scale_down(self) -> None:
        # Found by the property below: an idle pod plus one starting needs the one pod there
        # is; the reason must not claim a scale-down that does not happen.
        snap = Snapshot(NOW, 1, pods(0, waiting=0), starting=1)
        decision = decide(policy(metric="queue", target=1.0), snap)
        assert (decision.desired, decision.reason) == (1, "Steady")
        assert not decision.changes

    def test_exact_multiples_do_not_round_up(self) -> None:
        # 3 * 0.1 / 0.1 is 3.0000000000000004 in floats: still 3 pods.
        decision = decide(
            policy(metric="kvCache", target=0.1),
            Snapshot(NOW, 1, (PodReading(0, 0, kv_cache=0.3),)),
        )
        assert decision.desired == 3

    def test_queue_metric(self) -> None:
        decision = decide(
            policy(metric="queue", target=4.0), Snapshot(NOW, 2, pods(8, 8, waiting=8))
        )
        assert decision.desired == 4  # 16 waiting / 4 per pod

    def test_kv_cache_metric(self) -> None:
        readings = tuple(PodReading(10, 0, kv_cache=0.9) for _ in range(3))
        decision = decide(policy(metric="kvCache", target=0.6), Snapshot(NOW, 3, readings))
        assert decision.desired == 5  # 2.7 / 0.6 = 4.5


class TestPodsThatAreNotReady:
    def test_starting_pods_are_capacity_on_the_way(self) -> None:
        # 2 ready pods at 15, 3 more starting: 30 in flight needs 3 pods, 5 exist.
        decision = decide(policy(), Snapshot(NOW, 5, pods(15, 15), starting=3))
        assert (decision.desired, decision.reason) == (5, "CapacityStarting")

    def test_scale_up_beyond_starting_pods_when_the_load_needs_it(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 3, pods(40, 40), starting=1))
        assert decision.desired == 8

    def test_a_scale_down_assumes_starting_pods_carry_the_target(self) -> None:
        # 2 idle ready pods and 2 starting: (0 + 2 * 10) / 10 = 2.
        decision = decide(policy(), Snapshot(NOW, 4, pods(0, 0), starting=2))
        assert decision.desired == 2

    def test_unreachable_pods_hold_scale_downs(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 4, pods(0, 0, 0), unreachable=1))
        assert (decision.desired, decision.reason) == (4, "MetricsUnavailable")
        assert "no scale-down" in decision.message

    def test_unreachable_pods_do_not_hold_scale_ups(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 3, pods(40, 40), unreachable=1))
        assert decision.desired == 8

    def test_a_pod_without_the_metric_counts_as_unreachable(self) -> None:
        readings = (PodReading(0, 0, kv_cache=0.1), PodReading(0, 0, kv_cache=None))
        decision = decide(policy(metric="kvCache", target=0.5), Snapshot(NOW, 2, readings))
        assert (decision.desired, decision.reason) == (2, "MetricsUnavailable")

    def test_pods_waiting_for_capacity_hold_scale_ups(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 4, pods(40, 40), unschedulable=2))
        assert (decision.desired, decision.reason) == (4, "WaitingForCapacity")
        assert "cannot be scheduled" in decision.message

    def test_pods_waiting_for_capacity_do_not_hold_scale_downs(self) -> None:
        decision = decide(policy(), Snapshot(NOW, 4, pods(1, 1), unschedulable=2))
        assert decision.desired == 1

    @pytest.mark.parametrize(
        ("unreachable", "reason"), [(0, "NoReadyPods"), (2, "MetricsUnavailable")]
    )
    def test_no_signal_holds(self, unreachable: int, reason: str) -> None:
        decision = decide(policy(), Snapshot(NOW, 3, unreachable=unreachable))
        assert (decision.desired, decision.reason, decision.raw, decision.value) == (
            3,
            reason,
            None,
            None,
        )
        assert decision.message.endswith("replicas held at 3")
        assert decision.recommendations == ()  # nothing measured, nothing remembered


class TestCapacityFloor:
    def test_an_empty_queue_does_not_drop_busy_pods(self) -> None:
        # 4 pods running 7 of their 8 slots, nothing waiting: the queue says "0 pods", but
        # 28 requests in flight need ceil(28 / (8 * 0.9)) = 4 pods.
        snap = Snapshot(NOW, 4, pods(7, 7, 7, 7, capacity=8))
        decision = decide(policy(metric="queue", target=2.0), snap)
        assert (decision.desired, decision.raw) == (4, 4)
        assert "4 pod(s) needed to run all requests in flight" in decision.message

    def test_the_floor_still_lets_idle_pods_go(self) -> None:
        snap = Snapshot(NOW, 4, pods(2, 2, 2, 2, capacity=8))
        assert decide(policy(metric="queue", target=2.0), snap).desired == 2

    def test_no_floor_without_reported_capacity(self) -> None:
        snap = Snapshot(NOW, 4, pods(7, 7, 7, 7))
        assert decide(policy(metric="queue", target=2.0), snap).desired == 1


class TestStabilization:
    def test_scale_down_waits_for_the_down_window(self) -> None:
        p = policy(down_window=60.0)
        history = (Recommendation(NOW - 30, 4),)
        held = decide(p, Snapshot(NOW, 4, pods(1, 1, 1, 1)), history)
        assert (held.desired, held.reason) == (4, "DownStabilizing")
        assert "highest recommendation of the last 60s is 4" in held.message
        later = decide(p, Snapshot(NOW + 31, 4, pods(1, 1, 1, 1)), held.recommendations)
        assert (later.desired, later.reason) == (1, "ScaleDown")

    def test_scale_down_goes_to_the_highest_recent_recommendation(self) -> None:
        p = policy(down_window=60.0)
        history = (Recommendation(NOW - 50, 3), Recommendation(NOW - 20, 2))
        assert decide(p, Snapshot(NOW, 4, pods(1, 1, 1, 1)), history).desired == 3

    def test_scale_up_waits_for_the_up_window(self) -> None:
        p = policy(up_window=30.0)
        history = (Recommendation(NOW - 10, 2),)
        held = decide(p, Snapshot(NOW, 2, pods(30, 30)), history)
        assert (held.desired, held.reason) == (2, "UpStabilizing")
        later = decide(p, Snapshot(NOW + 21, 2, pods(30, 30)), held.recommendations)
        assert later.desired == 6

    def test_scale_up_is_immediate_without_an_up_window(self) -> None:
        history = (Recommendation(NOW - 1, 1),)
        assert decide(policy(down_window=300.0), Snapshot(NOW, 1, pods(50)), history).desired == 5

    def test_old_recommendations_are_forgotten(self) -> None:
        p = policy(up_window=10.0, down_window=60.0)
        history = (Recommendation(NOW - 61, 9), Recommendation(NOW - 5, 3))
        decision = decide(p, Snapshot(NOW, 3, pods(10, 10, 10)), history)
        assert decision.recommendations == (Recommendation(NOW - 5, 3), Recommendation(NOW, 3))

    def test_recommendations_from_the_future_are_ignored(self) -> None:
        # A clock that went backwards must not freeze the scaler.
        history = (Recommendation(NOW + 100, 9),)
        decision = decide(policy(down_window=60.0), Snapshot(NOW, 4, pods(1, 1, 1, 1)), history)
        assert decision.desired == 1


class TestBounds:
    def test_raised_to_min_without_metrics(self) -> None:
        decision = decide(policy(min_replicas=3), Snapshot(NOW, 1))
        assert (decision.desired, decision.reason) == (3, "BelowMinReplicas")

    def test_lowered_to_max(self) -> None:
        decision = decide(policy(max_replicas=4), Snapshot(NOW, 6, pods(10, 10, 10, 10, 10, 10)))
        assert (decision.desired, decision.reason) == (4, "AboveMaxReplicas")

    def test_capped_at_max(self) -> None:
        decision = decide(policy(max_replicas=4), Snapshot(NOW, 4, pods(50, 50, 50, 50)))
        assert (decision.desired, decision.reason, decision.raw) == (4, "AtMaxReplicas", 20)
        assert "maxReplicas is 4" in decision.message

    def test_scale_up_partly_capped(self) -> None:
        decision = decide(policy(max_replicas=4), Snapshot(NOW, 2, pods(50, 50)))
        assert (decision.desired, decision.reason) == (4, "ScaleUp")
        assert "capped at maxReplicas 4" in decision.message

    def test_scale_down_floored_at_min(self) -> None:
        decision = decide(policy(min_replicas=2), Snapshot(NOW, 4, pods(0, 0, 0, 0)))
        assert (decision.desired, decision.reason, decision.raw) == (2, "ScaleDown", 0)
        assert decision.changes
        assert "floored at minReplicas 2" in decision.message

    def test_held_at_min(self) -> None:
        decision = decide(policy(min_replicas=2), Snapshot(NOW, 2, pods(0, 0)))
        assert (decision.desired, decision.reason) == (2, "AtMinReplicas")


# --- properties ---------------------------------------------------------------------------------

load = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)
readings_st = st.lists(
    st.builds(
        PodReading,
        running=load,
        waiting=load,
        kv_cache=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
        capacity=st.one_of(st.none(), st.floats(min_value=1.0, max_value=512.0)),
    ),
    max_size=12,
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    low = draw(st.integers(1, 20))
    metric = draw(st.sampled_from(METRICS))
    target = draw(st.floats(0.05, 1.0) if metric == "kvCache" else st.floats(0.5, 100.0))
    return Policy(
        min_replicas=low,
        max_replicas=draw(st.integers(low, 40)),
        metric=metric,
        target=target,
        tolerance=draw(st.floats(0.0, 0.5)),
        up_window=draw(st.sampled_from([0.0, 15.0, 60.0])),
        down_window=draw(st.sampled_from([0.0, 60.0, 300.0])),
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    return Snapshot(
        time=NOW,
        current=draw(st.integers(0, 50)),
        readings=tuple(draw(readings_st)),
        unreachable=draw(st.integers(0, 3)),
        starting=draw(st.integers(0, 5)),
        unschedulable=draw(st.integers(0, 3)),
    )


histories = st.lists(
    st.builds(Recommendation, time=st.floats(NOW - 400, NOW), replicas=st.integers(0, 50)),
    max_size=8,
).map(tuple)


def _loaded(reading: PodReading, extra: float) -> PodReading:
    kv = None if reading.kv_cache is None else reading.kv_cache + extra / 1000
    return dataclasses.replace(
        reading, running=reading.running + extra, waiting=reading.waiting + extra, kv_cache=kv
    )


# Pure and fast, but a loaded 2-core CI machine can stretch one example past hypothesis'
# default 200 ms deadline: no deadline (the examples themselves are bounded).
properties = settings(deadline=None)


class TestProperties:
    @properties
    @given(policies(), snapshots(), histories)
    def test_bounded(self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]) -> None:
        assert p.min_replicas <= decide(p, snap, history).desired <= p.max_replicas

    @properties
    @given(policies(), snapshots(), histories, st.lists(load, min_size=12, max_size=12))
    def test_monotone_in_load(
        self,
        p: Policy,
        snap: Snapshot,
        history: tuple[Recommendation, ...],
        extra: list[float],
    ) -> None:
        """More load on any pod never yields fewer replicas."""
        heavier = dataclasses.replace(
            snap, readings=tuple(_loaded(r, e) for r, e in zip(snap.readings, extra, strict=False))
        )
        assert decide(p, heavier, history).desired >= decide(p, snap, history).desired

    @properties
    @given(
        policies(),
        st.data(),
        st.lists(st.floats(-0.99, 0.99), min_size=1, max_size=12),
        histories,
    )
    def test_stable_inside_the_tolerance_band(
        self,
        p: Policy,
        data: st.DataObject,
        deviations: list[float],
        history: tuple[Recommendation, ...],
    ) -> None:
        """Every pod within target*(1 +- tolerance): the count stays, whatever came before."""
        current = data.draw(st.integers(p.min_replicas, p.max_replicas), label="current")
        # All recommendations in the windows were for the current count (a settled service).
        settled = tuple(dataclasses.replace(r, replicas=current) for r in history)
        # One reading per pod of the service (the deviations repeat if there are fewer).
        values = [
            p.target * (1 + deviations[i % len(deviations)] * p.tolerance) for i in range(current)
        ]
        readings = tuple(
            PodReading(running=0.0, waiting=v, kv_cache=v)
            if p.metric != "running"
            else PodReading(v, 0.0)
            for v in values
        )
        decision = decide(p, Snapshot(NOW, current, readings), settled)
        assert decision.desired == current

    @properties
    @given(policies(), snapshots(), histories)
    def test_down_window_honoured(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        """A scale-down never goes below a recommendation made within the down window."""
        decision = decide(p, snap, history)
        if decision.desired < snap.current <= p.max_replicas:
            recent = [r.replicas for r in history if 0 <= NOW - r.time < p.down_window]
            assert all(r <= decision.desired for r in [*recent, decision.raw or 0])

    @properties
    @given(policies(), snapshots(), histories)
    def test_up_window_honoured(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        """A scale-up (above minReplicas) only goes as high as every recent recommendation."""
        decision = decide(p, snap, history)
        if decision.desired > snap.current >= p.min_replicas:
            recent = [r.replicas for r in history if 0 <= NOW - r.time < p.up_window]
            assert decision.raw is not None
            assert all(r >= decision.desired for r in [*recent, decision.raw])

    @properties
    @given(policies(), snapshots(), histories)
    def test_missing_metrics_never_scale_down(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        assume(snap.unreachable > 0)
        assert decide(p, snap, history).desired >= min(snap.current, p.max_replicas)

    @properties
    @given(policies(), snapshots(), histories)
    def test_pods_waiting_for_capacity_never_scale_up(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        assume(snap.unschedulable > 0)
        assert decide(p, snap, history).desired <= max(snap.current, p.min_replicas)

    @settings(max_examples=60, deadline=None)
    @given(policies(), st.floats(0.0, 2000.0), st.integers(1, 40))
    def test_a_constant_load_does_not_flap(self, p: Policy, total: float, start: int) -> None:
        """Closed loop: the same total load spread over whatever pods exist, tick after tick.

        The count may move (up or down) towards what the load needs, and then stays there:
        at most one change of direction over 60 evaluations.
        """
        current, history, moves = start, (), []
        for tick in range(60):
            share = total / max(current, 1)
            readings = tuple(
                PodReading(running=share, waiting=0.0, kv_cache=min(1.0, share / 1000))
                for _ in range(current)
            )
            decision = decide(p, Snapshot(NOW + 15 * tick, current, readings), history)
            history = decision.recommendations
            if decision.desired != current:
                moves.append(math.copysign(1, decision.desired - current))
            current = decision.desired
        changes_of_direction = sum(a != b for a, b in itertools.pairwise(moves))
        assert changes_of_direction <= 1, moves

    @properties
    @given(policies(), snapshots(), histories)
    def test_the_reason_says_whether_the_count_changes(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        """History records and Events are written exactly for the decisions that change it."""
        decision = decide(p, snap, history)
        assert decision.changes == (decision.desired != snap.current), decision

    @properties
    @given(policies(), snapshots(), histories)
    def test_recommendations_stay_bounded(
        self, p: Policy, snap: Snapshot, history: tuple[Recommendation, ...]
    ) -> None:
        """What is carried to the next call only covers the longer window (plus this one)."""
        kept = decide(p, snap, history).recommendations
        window = max(p.up_window, p.down_window)
        assert all(0 <= NOW - r.time < window or r.time == NOW for r in kept)
