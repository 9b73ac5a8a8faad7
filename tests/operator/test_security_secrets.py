"""Secrets reach the pod only by `secretKeyRef`, and never appear in status, Events or logs.

The real operator (with debug logging, which is when it says the most) reconciles a NIMService
whose credentials and API key live in Secrets holding recognisable values. The NIMService first
fails for want of the Secrets (so the failure paths speak too), recovers when they appear, goes
Ready, and is updated. Then every place the operator writes to is searched for the values, raw
and base64-encoded. That the operator never even *receives* a Secret's data is checked on the
wire in test_rbac_usage.py.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from typing import Any

from tests.operator.test_operator_e2e import (
    DEPLOYMENTS,
    E2E,
    NIMSERVICES,
    PDBS,
    SECRETS,
    SERVICE_ACCOUNTS,
    SERVICES,
    condition,
    cpu_spec,
)
from tests.support.kmock_harness import PodState
from tests.support.nimservice_e2e import EVENTS

CREDENTIAL_ENV = ("NGC_API_KEY", "HF_TOKEN", "NIM_API_KEY")


def _canaries() -> dict[str, str]:
    token = secrets.token_hex(6)
    return {name: f"canary-{name.lower()}-{token}" for name in CREDENTIAL_ENV}


def _forms(value: str) -> list[str]:
    """The value as it could leak: raw, and as the Secret's base64 `data` holds it."""
    return [value, base64.b64encode(value.encode()).decode()]


async def _secret(e2e: E2E, name: str, data: dict[str, str]) -> None:
    await e2e.api.create(
        SECRETS,
        e2e.namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data},
    )


async def status_where(
    e2e: E2E, name: str, test: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """`E2E.status_where` with room for a loaded machine: this test waits through five states."""

    async def matching() -> dict[str, Any] | None:
        obj = await e2e.get(NIMSERVICES, name)
        return obj if obj is not None and test(obj) else None

    return await e2e.until(matching, f"{name}: {what}", within=2 * e2e.driver.timeout)


async def test_secret_values_appear_nowhere_the_operator_writes(e2e: E2E) -> None:
    canaries = _canaries()
    spec = cpu_spec(authSecret="ngc-credentials", apiKeySecret={"name": "llm-api-key"})
    await e2e.create("llm", spec)
    await status_where(
        e2e,
        "llm",
        lambda o: condition(o, "Failed").get("reason") == "SecretNotFound",
        "Failed/SecretNotFound",
    )

    await _secret(
        e2e,
        "ngc-credentials",
        {"NGC_API_KEY": canaries["NGC_API_KEY"], "HF_TOKEN": canaries["HF_TOKEN"]},
    )
    await status_where(
        e2e,
        "llm",
        lambda o: (
            condition(o, "Failed").get("reason") == "SecretNotFound"
            and "apiKeySecret" in condition(o, "Failed").get("message", "")
        ),
        "now waiting for the API key Secret",
    )
    await _secret(e2e, "llm-api-key", {"NIM_API_KEY": canaries["NIM_API_KEY"]})
    await e2e.child(DEPLOYMENTS, "llm")
    await e2e.driver.pods_become(e2e.namespace, "llm", PodState.READY)
    await status_where(e2e, "llm", lambda o: condition(o, "Ready").get("status") == "True", "Ready")
    await e2e.patch_spec("llm", {"replicas": 2})
    await status_where(
        e2e,
        "llm",
        lambda o: (o.get("status") or {}).get("observedGeneration") == 2,
        "the update observed",
    )

    deployment = await e2e.child(DEPLOYMENTS, "llm")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    by_name = {entry["name"]: entry for entry in container["env"]}
    for name, secret in (
        ("NGC_API_KEY", "ngc-credentials"),
        ("HF_TOKEN", "ngc-credentials"),
        ("NIM_API_KEY", "llm-api-key"),
    ):
        assert "value" not in by_name[name]
        assert by_name[name]["valueFrom"]["secretKeyRef"]["name"] == secret

    written: dict[str, Any] = {
        "NIMService": await e2e.get(NIMSERVICES, "llm"),
        "Events": await e2e.api.list(EVENTS, e2e.namespace),
        "children": [
            await e2e.get(kind, "llm") for kind in (DEPLOYMENTS, SERVICES, SERVICE_ACCOUNTS, PDBS)
        ],
    }
    places = {key: json.dumps(value) for key, value in written.items()}
    places["operator log"] = e2e.operator.log_tail(lines=10_000_000)
    assert "SecretNotFound" in places["Events"]  # the failure path did speak
    for name, value in canaries.items():
        for form in _forms(value):
            for place, text in places.items():
                assert form not in text, f"{name} leaked into {place}"
