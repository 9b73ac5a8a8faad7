"""The backend table: which replicas serve which model, and how loaded each one is.

Discovery (static or Kubernetes) says which services exist and which replica addresses are
ready; the scraper fills in each replica's model ids (its own /v1/models, LoRA adapters
included) and its load (its /metrics); the proxy counts its own requests in flight. This module
only holds that state and answers "who may serve model X": it does no I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from nim_gateway.settings import RoutingName

__all__ = ["BackendTable", "Endpoint", "Lookup", "ServiceSpec", "WakeTarget"]


@dataclass(frozen=True)
class WakeTarget:
    """How to start a service scaled to zero: set `spec.replicas` 0 -> 1 at this /scale path.

    The NIMService's own /scale for a fixed count (spec.scaleToZeroAfter); its Deployment's for
    the built-in autoscaler (autoscaling.minReplicas 0), which owns that count.
    """

    namespace: str
    nimservice: str
    scale_path: str


@dataclass(frozen=True)
class ServiceSpec:
    """What discovery knows of one service (a NIMService, or a static group of replicas)."""

    name: str
    urls: tuple[str, ...]
    routing: RoutingName | None = None
    # Model ids known before any replica answered /v1/models (the NIMService's served name, a
    # static entry's `models`): requests for them get 503 rather than 404 while no replica is up.
    declared_models: tuple[str, ...] = ()
    # Set when the service may be at zero replicas and the gateway should wake it.
    wake: WakeTarget | None = None


@dataclass(eq=False)
class Endpoint:
    """One replica (a pod's address, or a static URL), base URL without /v1."""

    url: str
    service: str
    declared_models: tuple[str, ...] = ()
    # From the replica's /v1/models; None until it first answered.
    cards: list[dict[str, Any]] | None = None
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    # Requests this gateway has open on the replica: exact and current, where the scraped
    # numbers are up to one scrape interval old.
    inflight: int = 0
    # Requests of ours on the replica that have ended, ever: with `inflight`, which of ours may
    # have been open at some moment (Scraper.scrape).
    finished: int = 0
    # Our requests that the last scrape may have counted: the scraped queue less these is other
    # clients' (other gateway pods', direct callers').
    inflight_at_scrape: int = 0
    # None until the first scrape; False after a refused connection or an error status (a slow
    # scrape changes nothing).
    healthy: bool | None = None
    backoff_until: float = 0.0

    def model_ids(self) -> set[str]:
        if self.cards is not None:
            return {str(card.get("id")) for card in self.cards}
        return set(self.declared_models)

    def load(self) -> float:
        # Our own requests as they are now, plus the others' as of the last scrape. The scrape
        # alone is up to an interval late: it still counts our requests that finished since, so
        # a replica that had just emptied looked busy and new requests went elsewhere.
        others = max(0.0, self.running + self.waiting - self.inflight_at_scrape)
        return self.inflight + others

    def available(self, now: float) -> bool:
        return now >= self.backoff_until

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "service": self.service,
            "models": sorted(self.model_ids()),
            "healthy": self.healthy,
            "inflight": self.inflight,
            "inflight_at_scrape": self.inflight_at_scrape,
            "running": self.running,
            "waiting": self.waiting,
            "kv_cache_usage": self.kv_usage,
            "load": self.load(),
        }


@dataclass
class _Service:
    spec: ServiceSpec
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    # Every model id a replica of this service ever listed: once all replicas are gone the model
    # is still this service's, and a request for it is "not ready" (503), not "unknown" (404).
    seen_models: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Lookup:
    """Where a request for one model may go."""

    known: bool
    routing: RoutingName | None
    candidates: tuple[Endpoint, ...]
    wake: WakeTarget | None = None


class BackendTable:
    def __init__(self) -> None:
        self._services: dict[str, _Service] = {}
        # Set on every membership change, so the scraper reads new replicas at once.
        self.changed = asyncio.Event()
        # Set (and replaced) on every change of who serves what: held requests look again.
        self._next_change = asyncio.Event()

    # --- written by discovery --------------------------------------------------------------

    def sync(self, specs: Iterable[ServiceSpec]) -> None:
        """Make the table hold exactly `specs`, keeping what is known of surviving replicas."""
        wanted = {spec.name: spec for spec in specs}
        for name in list(self._services):
            if name not in wanted:
                del self._services[name]
        for name, spec in wanted.items():
            service = self._services.get(name)
            if service is None:
                service = self._services[name] = _Service(spec)
            service.spec = spec
            endpoints = {}
            for url in spec.urls:
                endpoint = service.endpoints.get(url) or Endpoint(url, name)
                endpoint.declared_models = spec.declared_models
                endpoints[url] = endpoint
            service.endpoints = endpoints
        self.changed.set()
        self._announce_change()

    def _announce_change(self) -> None:
        self._next_change.set()
        self._next_change = asyncio.Event()

    def next_change(self) -> asyncio.Event:
        """An event set at the next change of replicas or of their models."""
        return self._next_change

    # --- written by the scraper ------------------------------------------------------------

    def record_models(self, endpoint: Endpoint, cards: list[dict[str, Any]]) -> None:
        endpoint.cards = cards
        service = self._services.get(endpoint.service)
        if service is not None:
            service.seen_models.update(str(card.get("id")) for card in cards)
        self._announce_change()

    # --- read by the proxy and the API -----------------------------------------------------

    def endpoints(self) -> Iterator[Endpoint]:
        for service in self._services.values():
            yield from service.endpoints.values()

    def lookup(self, model: str, now: float | None = None) -> Lookup:
        now = time.monotonic() if now is None else now
        known = False
        routing: RoutingName | None = None
        wake: WakeTarget | None = None
        serving: list[Endpoint] = []
        for service in self._services.values():
            owns = model in service.seen_models or model in service.spec.declared_models
            matches = [e for e in service.endpoints.values() if model in e.model_ids()]
            if owns or matches:
                known = True
                routing = routing or service.spec.routing
                wake = wake or service.spec.wake
            serving.extend(e for e in matches if e.available(now))
        # A replica whose last scrape failed is a last resort, not excluded: scrapes can fail
        # under load while requests still succeed.
        healthy = [e for e in serving if e.healthy is not False]
        return Lookup(known, routing, tuple(healthy or serving), wake)

    def model_cards(self) -> list[dict[str, Any]]:
        """Every model some replica serves now, once each (the first replica's card wins).

        A replica not yet scraped serves its declared models (requests for them are routed to
        it), so they are listed too, with a plain card until a replica's own card replaces it;
        not once its scrape failed (a replica that never answered serves nothing).
        """
        cards: dict[str, dict[str, Any]] = {}
        for endpoint in self.endpoints():
            for card in endpoint.cards or []:
                cards.setdefault(str(card.get("id")), card)
        for endpoint in self.endpoints():
            if endpoint.cards is None and endpoint.healthy is not False:
                for model in endpoint.declared_models:
                    cards.setdefault(model, _declared_card(model))
        return [cards[key] for key in sorted(cards)]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": service.spec.name,
                "routing": service.spec.routing,
                "declared_models": list(service.spec.declared_models),
                "endpoints": [e.describe() for e in service.endpoints.values()],
            }
            for service in sorted(self._services.values(), key=lambda s: s.spec.name)
        ]

    def services(self) -> Mapping[str, ServiceSpec]:
        return {name: service.spec for name, service in self._services.items()}


def _declared_card(model: str) -> dict[str, Any]:
    # The fields OpenAI's Model object requires; `created` is unknown until the replica says.
    return {"id": model, "object": "model", "created": 0, "owned_by": "nimstack"}
