"""Scale to zero: the idle rule (nim_operator.autoscaling.idle) and minReplicas 0 in `decide`.

Pure functions of what the pods and the gateway said; no I/O.
"""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from nim_operator.autoscaling.algorithm import PodReading, Policy, Snapshot, decide
from nim_operator.autoscaling.idle import (
    DEMAND_ANNOTATION,
    IdleWatch,
    Usage,
    demand_time,
    watch_idle,
    with_idle_rule,
)

AFTER = 60.0


def look(time: float, **fields: object) -> Usage:
    defaults: dict[str, object] = {"finished": {"pod-a": 5.0}}
    return Usage(time=time, **{**defaults, **fields})  # type: ignore[arg-type]


def watch_through(*usages: Usage) -> IdleWatch:
    watch = None
    for usage in usages:
        watch = watch_idle(watch, usage)
    assert watch is not None
    return watch


class TestIdleClock:
    def test_the_first_look_starts_the_clock(self) -> None:
        """After an operator restart nothing is known to have been idle: a restart can delay a
        scale to zero, never cause one."""
        watch = watch_through(look(1000.0))
        assert watch.last_active == 1000.0
        assert not watch.idle(1000.0 + AFTER - 1, AFTER)
        assert watch.idle(1000.0 + AFTER, AFTER)

    def test_quiet_looks_keep_the_clock_running(self) -> None:
        watch = watch_through(*(look(1000.0 + 15 * i) for i in range(6)))
        assert watch.last_active == 1000.0
        assert watch.idle(1075.0, AFTER)

    def test_requests_in_flight_restart_it(self) -> None:
        watch = watch_through(look(1000.0), look(1030.0, in_flight=1.0), look(1060.0))
        assert watch.last_active == 1030.0
        assert "running or waiting" in watch.reason
        assert not watch.idle(1060.0, AFTER)

    def test_a_request_between_two_looks_shows_in_the_counter(self) -> None:
        """The gauges were 0 at both looks; the finished counter moved in between."""
        watch = watch_through(
            look(1000.0),
            look(1030.0, finished={"pod-a": 6.0}),
            look(1075.0, finished={"pod-a": 6.0}),
        )
        assert watch.last_active == 1030.0
        assert not watch.idle(1075.0, AFTER)
        assert watch.idle(1090.0, AFTER)

    def test_a_new_pod_is_not_a_request_until_it_served_one(self) -> None:
        """A pod seen for the first time (just woken, say) counts as in use only if it has
        finished requests: they came after the last look, when it was not ready."""
        watch = watch_through(look(1000.0), look(1070.0, finished={"pod-a": 5.0, "pod-b": 0.0}))
        assert watch.last_active == 1000.0
        watch = watch_through(look(1000.0), look(1070.0, finished={"pod-a": 5.0, "pod-b": 1.0}))
        assert watch.last_active == 1070.0
        assert watch.reason == "requests finished on pod-b"

    def test_a_pod_that_did_not_answer_is_not_idle(self) -> None:
        watch = watch_through(look(1000.0), look(1070.0, finished={}, unreachable=1))
        assert watch.last_active == 1070.0

    def test_a_starting_pod_is_not_idle(self) -> None:
        watch = watch_through(look(1000.0), look(1070.0, starting=1))
        assert watch.last_active == 1070.0

    def test_the_gateway_demand_restarts_it(self) -> None:
        """Requests held by nim-gateway are on no pod: only its annotation shows them."""
        watch = watch_through(look(1000.0), look(1070.0, demand=1050.0))
        assert watch.last_active == 1050.0
        assert watch.reason == "requests held by nim-gateway"
        assert not watch.idle(1100.0, AFTER)
        assert watch.idle(1110.0, AFTER)

    def test_an_old_demand_changes_nothing(self) -> None:
        watch = watch_through(look(1000.0, demand=900.0), look(1070.0, demand=900.0))
        assert watch.last_active == 1000.0

    def test_a_demand_from_the_future_counts_as_now(self) -> None:
        """Clock skew between the gateway and the operator: never later than the look."""
        watch = watch_through(look(1000.0), look(1070.0, demand=5000.0))
        assert watch.last_active == 1070.0

    @given(
        st.lists(
            st.tuples(
                st.floats(0.0, 30.0),
                st.sampled_from(["quiet", "busy", "counter", "starting", "demand"]),
            ),
            min_size=1,
            max_size=40,
        )
    )
    def test_the_clock_restarts_at_exactly_the_last_activity(
        self, steps: list[tuple[float, str]]
    ) -> None:
        now, count = 0.0, 0.0
        watch: IdleWatch | None = None
        expected: float | None = None
        for gap, kind in steps:
            now += gap
            fields: dict[str, object] = {}
            if kind == "busy":
                fields["in_flight"] = 2.0
            elif kind == "counter":
                count += 1
            elif kind == "starting":
                fields["starting"] = 1
            elif kind == "demand":
                fields["demand"] = now
            watch = watch_idle(watch, Usage(now, {"p": count}, **fields))  # type: ignore[arg-type]
            if kind != "quiet" or expected is None:  # the first look starts the clock
                expected = now
            assert watch.last_active == expected
            assert watch.idle(now, AFTER) == (now - expected >= AFTER)


class TestDemandAnnotation:
    WALL = datetime.datetime(2026, 12, 4, 12, 0, 30, tzinfo=datetime.UTC).timestamp()

    def test_its_age_by_the_wall_clock_on_the_monotonic_clock(self) -> None:
        annotations = {DEMAND_ANNOTATION: "2026-12-04T12:00:00Z"}
        assert demand_time(annotations, now=500.0, wall_now=self.WALL) == 470.0

    def test_the_gateways_milliseconds_are_kept(self) -> None:
        annotations = {DEMAND_ANNOTATION: "2026-12-04T12:00:29.750Z"}
        demand = demand_time(annotations, now=500.0, wall_now=self.WALL)
        assert demand is not None
        assert abs(demand - 499.75) < 1e-6

    def test_absent_or_malformed_is_no_demand(self) -> None:
        for written in (None, {}, {DEMAND_ANNOTATION: "yesterday"}, {DEMAND_ANNOTATION: ""}):
            assert demand_time(written, now=500.0, wall_now=self.WALL) is None

    def test_the_name_is_the_gateways(self) -> None:
        from nim_gateway.wake import DEMAND_ANNOTATION as WRITTEN

        assert WRITTEN == DEMAND_ANNOTATION


def policy(**fields: object) -> Policy:
    defaults: dict[str, object] = {
        "min_replicas": 0,
        "max_replicas": 4,
        "metric": "running",
        "target": 10.0,
        "down_window": 0.0,
    }
    return Policy(**{**defaults, **fields})  # type: ignore[arg-type]


def idle_pods(n: int) -> tuple[PodReading, ...]:
    return tuple(PodReading(running=0.0, waiting=0.0) for _ in range(n))


class TestMinReplicasZero:
    def test_load_alone_never_takes_the_last_pod(self) -> None:
        decision = decide(policy(), Snapshot(1000.0, 3, idle_pods(3)))
        assert decision.desired == 1
        assert "at least 1 until idle" in decision.message

    def test_at_zero_it_stays_there(self) -> None:
        decision = decide(policy(), Snapshot(1000.0, 0))
        assert decision.desired == 0
        ruled = with_idle_rule(decision, 0, None, 1000.0, AFTER)
        assert (ruled.desired, ruled.reason) == (0, "ScaledToZero")
        assert "nim-gateway" in ruled.message
        assert not ruled.changes

    def test_a_woken_service_is_not_scaled_down_while_its_pod_starts(self) -> None:
        decision = decide(policy(), Snapshot(1000.0, 1, starting=1))
        assert decision.desired == 1

    def test_idle_long_enough_goes_to_zero_from_any_count(self) -> None:
        watch = watch_through(look(1000.0), look(1065.0))
        decision = decide(policy(), Snapshot(1065.0, 2, idle_pods(2)))
        ruled = with_idle_rule(decision, 2, watch, 1065.0, AFTER)
        assert (ruled.desired, ruled.reason) == (0, "ScaleToZero")
        assert ruled.changes
        assert "no request for 65s (scaleToZeroAfter 60s)" in ruled.message

    def test_not_idle_long_enough_leaves_the_decision_alone(self) -> None:
        watch = watch_through(look(1000.0), look(1030.0))
        decision = decide(policy(), Snapshot(1030.0, 2, idle_pods(2)))
        assert with_idle_rule(decision, 2, watch, 1030.0, AFTER) == decision

    @given(
        st.integers(1, 4),
        st.lists(st.floats(0.0, 100.0), min_size=1, max_size=4),
        st.integers(0, 3),
    )
    def test_decide_alone_never_reaches_zero_from_a_running_service(
        self, current: int, loads: list[float], starting: int
    ) -> None:
        readings = tuple(PodReading(running=load, waiting=0.0) for load in loads)
        decision = decide(policy(), Snapshot(1000.0, current, readings, starting=starting))
        assert 1 <= decision.desired <= 4
