"""Every setting of the gateway, from NIM_GATEWAY_* environment variables (or the command line)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings", "PrefixStart", "RoutingName"]

RoutingName = Literal["least-load", "prefix-affinity", "round-robin"]
PrefixStart = Literal["after-system-prompt", "start"]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NIM_GATEWAY_", extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    log_level: str = "info"

    # Where the backends come from. A static list (a YAML/JSON file, or `--backend` flags) is for
    # local runs and tests; without one the gateway watches NIMServices in Kubernetes.
    backends_file: Path | None = None
    backends: list[str] = Field(default_factory=list)
    # Comma-separated namespaces whose NIMServices are served; empty means every namespace
    # (the gateway then needs cluster-wide list/watch on NIMServices and EndpointSlices).
    namespaces: str = ""

    # Client keys. None configured means no authentication (a local run); any source enables it.
    api_key: str | None = None
    api_keys_file: Path | None = None
    # `<namespace>/<name>` of a Secret with `api-key` (valid for every model) and/or `models.yaml`
    # (model id -> key or list of keys), re-read every `secret_refresh_interval` seconds.
    api_key_secret: str | None = None
    secret_refresh_interval: float = Field(30.0, gt=0)
    # The key the gateway presents to backends that require one (NIM_API_KEY on nim-serve);
    # unset forwards the client's own Authorization header.
    backend_api_key: str | None = None

    # Routing used when a NIMService has no `nimstack.dev/routing` annotation (and for static
    # backends that name none).
    default_routing: RoutingName = "least-load"
    # How much of the conversation's beginning identifies a prefix (characters, not tokens: the
    # gateway has no tokenizer, and a character prefix is a prefix of the token prefix), counted
    # from where: after the system prompt (which joins the key whole), or from the very start.
    # After, by default: conversations that share one long system prompt (most applications')
    # otherwise all get the same key (docs/benchmarks-gateway.md measures both).
    prefix_chars: int = Field(512, ge=1)
    prefix_chars_from: PrefixStart = "after-system-prompt"
    # Bounded-load factor c of consistent hashing with bounded loads: no replica takes more than
    # ceil(c * average load); 1.25 is the paper's suggested trade-off between spill and skew.
    prefix_load_factor: float = Field(1.25, gt=1.0)
    ring_virtual_nodes: int = Field(64, ge=1)

    # How often each replica's /metrics and /v1/models are read.
    scrape_interval: float = Field(1.0, gt=0)
    scrape_timeout: float = Field(2.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    # What Retry-After says when no replica is ready, and the longest a replica's own
    # Retry-After keeps it out of rotation.
    retry_after: int = Field(2, ge=1)
    max_backoff: float = Field(30.0, gt=0)
    max_connections: int = Field(1000, ge=1)

    # Scale from zero (docs/gateway.md): a request for a NIMService that may be at zero replicas
    # (autoscaling.minReplicas 0, or spec.scaleToZeroAfter) with none ready wakes it and waits
    # up to `hold_timeout` seconds for a replica (then 503). At most `hold_max_per_model`
    # requests wait per model and `hold_max_requests` in all; the next ones get 429 at once.
    hold_timeout: float = Field(300.0, gt=0)
    hold_max_per_model: int = Field(100, ge=0)
    hold_max_requests: int = Field(1000, ge=0)
    # While requests wait, the scale is checked and the NIMService's demand annotation (which
    # keeps the operator from scaling it back to zero) renewed this often.
    wake_interval: float = Field(10.0, gt=0)
    # Stored Responses live in one replica's memory: how many response ids this gateway pod
    # remembers the replica of (least recently used first out; about 200 bytes each). An id it
    # does not know (created through another gateway pod) is looked for on the replicas.
    response_affinity_entries: int = Field(100_000, ge=0)
    # How long an id that no replica held is answered 404 without asking them again (0: always
    # ask). Short: a response created through another gateway pod just then is found once it
    # has passed.
    response_miss_ttl: float = Field(1.0, ge=0)
    # Answer with the replica that served a request in `x-nimstack-backend` (for debugging and
    # tests); pod addresses are not secret inside a cluster, but can be hidden.
    backend_header: bool = True

    def namespace_list(self) -> list[str]:
        return [ns.strip() for ns in self.namespaces.split(",") if ns.strip()]

    def uses_static_backends(self) -> bool:
        return self.backends_file is not None or bool(self.backends)

    def secret_ref(self) -> tuple[str, str] | None:
        if not self.api_key_secret:
            return None
        namespace, _, name = self.api_key_secret.partition("/")
        if not namespace or not name:
            raise ValueError("NIM_GATEWAY_API_KEY_SECRET must be <namespace>/<name>")
        return namespace, name
