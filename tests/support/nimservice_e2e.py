"""`E2E`: what an end-to-end test drives a NIMService through, on kmock or a real cluster.

One per test, in the test's own namespace (tests/operator/conftest.py's `e2e` fixture): it
creates and patches NIMServices through the API, reads their children, and waits for a state
with the operator's log in the failure, within the driver's timeout (longer on a real cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nim_operator.kube import KubeClient, ResourceKind
from tests.support.kmock_harness import ClusterDriver, OperatorProcess, eventually

__all__ = ["E2E", "EVENTS", "NIMSERVICES"]

T = TypeVar("T")

NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
EVENTS = ResourceKind("v1", "events")


@dataclass
class E2E:
    api: KubeClient
    namespace: str
    driver: ClusterDriver
    operator: OperatorProcess

    async def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return await self.api.create(
            NIMSERVICES,
            self.namespace,
            {
                "apiVersion": "nimstack.dev/v1alpha1",
                "kind": "NIMService",
                "metadata": {"name": name},
                "spec": spec,
            },
        )

    async def get(self, kind: ResourceKind, name: str) -> dict[str, Any] | None:
        return await self.api.get(kind, self.namespace, name)

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        await self.api.merge_patch(NIMSERVICES, self.namespace, name, {"spec": spec})

    async def until(
        self, probe: Callable[[], Awaitable[T | None]], what: str, *, within: float | None = None
    ) -> T:
        return await eventually(
            probe,
            within=within or self.driver.timeout,
            what=what,
            context=self.operator.log_tail,
        )

    async def child(self, kind: ResourceKind, name: str) -> dict[str, Any]:
        async def exists() -> dict[str, Any] | None:
            return await self.get(kind, name)

        return await self.until(exists, f"{kind.plural}/{name}")

    async def deleted(self, kind: ResourceKind, name: str) -> None:
        async def gone() -> bool:
            return await self.get(kind, name) is None

        await self.until(gone, f"{kind.plural}/{name} deleted")

    async def status_where(
        self, name: str, test: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        async def matching() -> dict[str, Any] | None:
            obj = await self.get(NIMSERVICES, name)
            return obj if obj is not None and test(obj) else None

        return await self.until(matching, f"{name}: {what}")

    async def events_for(self, name: str) -> list[dict[str, Any]]:
        return [
            event
            for event in await self.api.list(EVENTS, self.namespace)
            if event.get("involvedObject", {}).get("name") == name
            and event.get("involvedObject", {}).get("kind") == "NIMService"
        ]

    async def stays(
        self, probe: Callable[[], Awaitable[bool]], what: str, *, seconds: float
    ) -> None:
        """Assert `probe` holds on every check for `seconds` (e.g. across timer ticks)."""
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + seconds
        while loop_time() < deadline:
            assert await probe(), f"{what} stopped holding\n{self.operator.log_tail()}"
            await asyncio.sleep(0.2)
