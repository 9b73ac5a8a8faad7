"""A bursty LLM request trace, generated from a seed.

Arrivals are a Markov-modulated Poisson process: the traffic is in one of three phases (calm,
busy, burst), each with its own request rate and a random, exponentially distributed length;
when a phase ends, the next one is drawn from a fixed transition table. Within a phase, requests
arrive as a Poisson process. Each request needs a service time (how long it occupies one slot of
a replica: prefill plus decode), drawn from a log-normal distribution, because LLM response
lengths are skewed: most answers are short, a few are long.

The same seed always gives the same trace, so every scaler is compared on identical requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["Phase", "Request", "Trace", "TraceSpec", "generate"]


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # requests per second
    mean_seconds: float  # mean length of the phase
    # Probability of each next phase when this one ends.
    next: dict[str, float] = field(default_factory=dict)


DEFAULT_PHASES = (
    Phase("calm", rate=0.6, mean_seconds=900.0, next={"busy": 0.7, "burst": 0.3}),
    Phase("busy", rate=2.5, mean_seconds=420.0, next={"calm": 0.5, "burst": 0.5}),
    Phase("burst", rate=7.0, mean_seconds=150.0, next={"busy": 0.6, "calm": 0.4}),
)


@dataclass(frozen=True)
class TraceSpec:
    seed: int = 20240601
    duration: float = 4 * 3600.0
    phases: tuple[Phase, ...] = DEFAULT_PHASES
    start_phase: str = "calm"
    # Service time per request: log-normal with this median and shape.
    service_median: float = 5.0
    service_sigma: float = 0.6

    @property
    def service_mean(self) -> float:
        return self.service_median * math.exp(self.service_sigma**2 / 2)


@dataclass(frozen=True)
class Request:
    arrival: float
    service: float


@dataclass(frozen=True)
class Trace:
    spec: TraceSpec
    requests: tuple[Request, ...]
    # (start, end, phase name) of each phase, for the plot.
    phases: tuple[tuple[float, float, str], ...]

    def rate_at(self, t: float) -> float:
        by_name = {p.name: p for p in self.spec.phases}
        for start, end, name in self.phases:
            if start <= t < end:
                return by_name[name].rate
        return 0.0


def generate(spec: TraceSpec = TraceSpec()) -> Trace:
    rng = random.Random(spec.seed)
    by_name = {p.name: p for p in spec.phases}
    phases: list[tuple[float, float, str]] = []
    requests: list[Request] = []
    t = 0.0
    phase = by_name[spec.start_phase]
    while t < spec.duration:
        end = min(spec.duration, t + rng.expovariate(1.0 / phase.mean_seconds))
        phases.append((t, end, phase.name))
        arrival = t + rng.expovariate(phase.rate)
        while arrival < end:
            service = rng.lognormvariate(math.log(spec.service_median), spec.service_sigma)
            requests.append(Request(arrival, service))
            arrival += rng.expovariate(phase.rate)
        names = sorted(phase.next)
        phase = by_name[rng.choices(names, weights=[phase.next[n] for n in names])[0]]
        t = end
    return Trace(spec, tuple(requests), tuple(phases))
