"""Stored Responses through the gateway: GET/DELETE and `previous_response_id` reach the replica
that stored the response.

The units are the id -> replica map; the rest runs the real `nim-gateway` process in front of
`ResponsesReplica` stubs, which keep responses per replica as nim-serve does (an in-memory store,
the id in `X-Request-Id`, 404 `response_not_found` for another replica's id). Round-robin
routing makes "where routing would send it" known: every unpinned request alternates.
test_gateway_e2e.py does the same with two real nim-serve replicas.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from nim_gateway.backends import BackendTable, ServiceSpec
from nim_gateway.proxy import Proxy, Router
from nim_gateway.response_affinity import (
    RecentMisses,
    ResponseAffinity,
    StoredAt,
    asks_to_store,
    previous_response_id,
    stored_response_id,
)
from nim_gateway.settings import GatewaySettings
from nim_gateway.stored_responses import Placement, StoredResponses
from tests.gateway.conftest import running_gateway
from tests.support.server_process import free_port

MODEL = "meta/stub-model"
OTHER = "other-model"


# --- units --------------------------------------------------------------------------------


class TestResponseAffinity:
    def test_remembers_the_replica_and_model(self) -> None:
        affinity = ResponseAffinity(10)
        affinity.record("resp-1", "http://a", MODEL)
        assert affinity.get("resp-1") == StoredAt("http://a", MODEL)
        assert affinity.get("resp-2") is None
        affinity.record("resp-1", "http://b", OTHER)  # a reused id: the latest creation wins
        assert affinity.get("resp-1") == StoredAt("http://b", OTHER)
        affinity.forget("resp-1")
        affinity.forget("resp-1")  # forgetting twice is harmless
        assert affinity.get("resp-1") is None

    def test_is_bounded_least_recently_used_first(self) -> None:
        affinity = ResponseAffinity(2)
        affinity.record("resp-1", "http://a", MODEL)
        affinity.record("resp-2", "http://a", MODEL)
        assert affinity.get("resp-1") is not None  # continued: now the most recent
        affinity.record("resp-3", "http://b", MODEL)
        assert len(affinity) == 2
        assert affinity.get("resp-2") is None
        assert affinity.get("resp-1") is not None
        assert affinity.get("resp-3") is not None

    def test_zero_entries_learns_nothing(self) -> None:
        affinity = ResponseAffinity(0)
        affinity.record("resp-1", "http://a", MODEL)
        assert len(affinity) == 0
        assert affinity.get("resp-1") is None

    def test_what_a_request_and_an_answer_say(self) -> None:
        assert asks_to_store({})
        assert asks_to_store({"store": True})
        assert asks_to_store({"store": None})
        assert not asks_to_store({"store": False})
        assert previous_response_id({"previous_response_id": "resp-1"}) == "resp-1"
        for body in ({}, {"previous_response_id": ""}, {"previous_response_id": 3}):
            assert previous_response_id(body) is None
        assert stored_response_id({"x-request-id": "resp-abc"}) == "resp-abc"
        assert stored_response_id({"x-request-id": "resp_abc"}) == "resp_abc"
        # An echoed client id, or none at all, names no response.
        assert stored_response_id({"x-request-id": "chatcmpl-abc"}) is None
        assert stored_response_id({}) is None


async def test_a_response_whose_replica_is_gone_is_lost_not_an_error() -> None:
    """The replica left the table (scaled down): 404 saying so, and the id is forgotten. No
    request is made, so the session's target need not exist."""
    table = BackendTable()
    table.sync([ServiceSpec("s", ("http://127.0.0.1:9", "http://127.0.0.1:10"))])
    settings = GatewaySettings()
    async with aiohttp.ClientSession() as session:
        proxy = Proxy(settings, table, Router(settings), session)
        stored = StoredResponses(proxy, ResponseAffinity(10))
        stored.affinity.record("resp-1", "http://127.0.0.1:9", MODEL)
        table.sync([ServiceSpec("s", ("http://127.0.0.1:10",))])
        answer = await stored.serve("GET", "resp-1", "", {}, lambda model: True)
    assert answer.status_code == 404
    error = json.loads(bytes(answer.body))["error"]
    assert error["code"] == "response_not_found"
    assert error["param"] == "response_id"
    assert "stored by a replica that is gone" in error["message"]
    assert "response is lost" in error["message"]
    assert stored.affinity.get("resp-1") is None


class TestRecentMisses:
    def test_a_miss_lasts_its_ttl(self) -> None:
        misses = RecentMisses(10, ttl=1.0)
        misses.add("resp-1", None, now=100.0)
        assert misses.recent("resp-1", None, now=100.9)
        assert misses.recent("resp-1", MODEL, now=100.9)  # no replica at all held it
        assert not misses.recent("resp-2", None, now=100.9)
        assert not misses.recent("resp-1", None, now=101.0)
        assert len(misses) == 0  # expired ones are dropped, not kept

    def test_a_miss_among_one_models_replicas_says_nothing_of_the_others(self) -> None:
        misses = RecentMisses(10, ttl=1.0)
        misses.add("resp-1", MODEL, now=0.0)
        assert misses.recent("resp-1", MODEL, now=0.5)
        assert not misses.recent("resp-1", OTHER, now=0.5)
        assert not misses.recent("resp-1", None, now=0.5)
        misses.add("resp-2", None, now=0.0)
        misses.add("resp-2", MODEL, now=0.5)  # the wider miss is kept, its time renewed
        assert misses.recent("resp-2", OTHER, now=1.2)

    def test_a_creation_clears_the_miss(self) -> None:
        misses = RecentMisses(10, ttl=1.0)
        misses.add("resp-1", None, now=0.0)
        misses.discard("resp-1")
        misses.discard("resp-1")  # twice is harmless
        assert not misses.recent("resp-1", None, now=0.1)

    def test_is_bounded_oldest_first_and_ttl_zero_is_off(self) -> None:
        misses = RecentMisses(2, ttl=10.0)
        for i in range(3):
            misses.add(f"resp-{i}", None, now=float(i))
        assert len(misses) == 2
        assert not misses.recent("resp-0", None, now=3.0)
        assert misses.recent("resp-1", None, now=3.0)
        assert misses.recent("resp-2", None, now=3.0)
        off = RecentMisses(10, ttl=0.0)
        off.add("resp-1", None, now=0.0)
        assert len(off) == 0
        assert not off.recent("resp-1", None, now=0.0)


async def test_an_unknown_id_asks_the_replicas_once_per_ttl() -> None:
    """GET of an id no replica holds: the first asks both replicas (two stub replicas in this
    process); repeats within the ttl are answered 404 without asking; after it, they ask again.
    A replica that could not be asked keeps the miss from being remembered, and a creation of
    the id through this gateway clears it."""
    replicas = [ResponsesReplica([MODEL]) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    gone = f"http://127.0.0.1:{free_port()}"
    table = BackendTable()
    table.sync([ServiceSpec("s", tuple(r.url for r in replicas))])
    settings = GatewaySettings()
    lookup = ("GET", "/v1/responses/resp-unknown")

    def asked() -> list[int]:
        return [replica.calls.count(lookup) for replica in replicas]

    try:
        async with aiohttp.ClientSession() as session:
            proxy = Proxy(settings, table, Router(settings), session)
            stored = StoredResponses(proxy, ResponseAffinity(10), RecentMisses(10, ttl=1.0))
            for _ in range(3):
                answer = await stored.serve("GET", "resp-unknown", "", {}, lambda model: True)
                assert answer.status_code == 404
            assert asked() == [1, 1]
            await asyncio.sleep(1.1)
            assert (await stored.locate("resp-unknown", {})) is None
            assert asked() == [2, 2]

            # One replica unreachable: it may hold the id, so the next lookup asks again.
            table.sync([ServiceSpec("s", (*(r.url for r in replicas), gone))])
            await asyncio.sleep(1.1)
            for _ in range(2):
                assert (await stored.locate("resp-unknown", {})) is None
            assert asked() == [4, 4]

            # Created through this gateway pod just after a miss: found at once, though this
            # pod learns no ids here (0 entries) and has to ask.
            table.sync([ServiceSpec("s", tuple(r.url for r in replicas))])
            forgetful = StoredResponses(proxy, ResponseAffinity(0), stored.misses)
            assert await forgetful.locate("resp-new", {}) is None
            replicas[0].stored["resp-new"] = {"id": "resp-new", "model": MODEL}
            assert await forgetful.locate("resp-new", {}) is None  # the miss, within its ttl
            placement = await forgetful.place({"model": MODEL}, MODEL, {}, lambda model: True)
            assert isinstance(placement, Placement)
            assert placement.answered is not None
            (endpoint,) = (e for e in table.endpoints() if e.url == replicas[0].url)
            placement.answered(endpoint, 200, {"x-request-id": "resp-new"})
            assert await forgetful.locate("resp-new", {}) == StoredAt(replicas[0].url, MODEL)
    finally:
        for replica in replicas:
            await replica.stop()


# --- the real gateway in front of stub replicas --------------------------------------------


@dataclass
class ResponsesReplica:
    """A replica whose /v1/responses behave like nim-serve's: stored in its own memory."""

    models: list[str]
    busy: bool = False
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (method, path) of every request about responses, probes included.
    calls: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/responses", self._create)
        app.router.add_get("/v1/responses/{id}", self._retrieve)
        app.router.add_delete("/v1/responses/{id}", self._delete)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def not_found(self, response_id: str, param: str) -> web.Response:
        error = {
            "message": f"replica {self.port} holds no response {response_id}",
            "type": "invalid_request_error",
            "param": param,
            "code": "response_not_found",
        }
        return web.json_response({"error": error}, status=404)

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": model, "object": "model"} for model in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text='num_requests_running{model_name="x"} 0.0\n')

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.calls.append(("POST", request.path))
        body = await request.json()
        if self.busy:
            error = {"message": "busy", "type": "x", "param": None, "code": None}
            return web.json_response({"error": error}, status=503, headers={"Retry-After": "1"})
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return self.not_found(previous, "previous_response_id")
        response_id = f"resp-{uuid.uuid4().hex}"
        response = {
            "id": response_id,
            "object": "response",
            "model": body["model"],
            "status": "completed",
            "previous_response_id": previous,
            "served_by": self.url,
        }
        if body.get("store") is not False:
            self.stored[response_id] = response
        headers = {"X-Request-Id": response_id}
        if not body.get("stream"):
            return web.json_response(response, headers=headers)
        stream = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream"})
        await stream.prepare(request)
        for kind in ("response.created", "response.completed"):
            data = json.dumps({"type": kind, "response": response})
            await stream.write(f"event: {kind}\ndata: {data}\n\n".encode())
        return stream

    async def _retrieve(self, request: web.Request) -> web.Response:
        self.calls.append(("GET", request.path))
        response_id = request.match_info["id"]
        if response_id not in self.stored:
            return self.not_found(response_id, "response_id")
        return web.json_response(self.stored[response_id])

    async def _delete(self, request: web.Request) -> web.Response:
        self.calls.append(("DELETE", request.path))
        response_id = request.match_info["id"]
        if self.stored.pop(response_id, None) is None:
            return self.not_found(response_id, "response_id")
        return web.json_response({"id": response_id, "object": "response", "deleted": True})


@pytest.fixture
async def two_replicas() -> AsyncIterator[list[ResponsesReplica]]:
    replicas = [ResponsesReplica([MODEL, OTHER]) for _ in range(2)]
    for replica in replicas:
        await replica.start()
    yield replicas
    for replica in replicas:
        await replica.stop()


def round_robin(replicas: list[ResponsesReplica]) -> list[dict[str, Any]]:
    return [{"name": "s", "routing": "round-robin", "urls": [r.url for r in replicas]}]


def create(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "Hi", **extra}


async def created(client: httpx.AsyncClient, **extra: Any) -> tuple[str, str]:
    """POST /v1/responses: the new response's id and the replica that answered."""
    response = await client.post("/v1/responses", json=create(**extra))
    assert response.status_code == 200, response.text
    return response.json()["id"], response.headers["x-nimstack-backend"]


async def test_retrieve_delete_and_chains_reach_the_replica_that_stored_it(
    two_replicas: list[ResponsesReplica], tmp_path: Path
) -> None:
    by_url = {r.url: r for r in two_replicas}
    async with (
        running_gateway(tmp_path, round_robin(two_replicas)) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        first, holder = await created(client)
        (other,) = set(by_url) - {holder}
        # Round-robin: the next creation without a previous response goes to the other one.
        assert (await created(client))[1] == other

        # A chain of four: unpinned, round-robin would have sent two of them to `other`.
        chain = [first]
        for _ in range(4):
            response = await client.post(
                "/v1/responses", json=create(previous_response_id=chain[-1])
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-nimstack-backend"] == holder
            assert response.json()["previous_response_id"] == chain[-1]
            chain.append(response.json()["id"])

        # Streamed creations are learned too (the id is in the header, before any event).
        async with client.stream(
            "POST", "/v1/responses", json=create(previous_response_id=chain[-1], stream=True)
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["x-nimstack-backend"] == holder
            streamed_id = streamed.headers["x-request-id"]
            events = [line async for line in streamed.aiter_lines() if line.startswith("data: ")]
        assert json.loads(events[-1][6:])["response"]["id"] == streamed_id

        for response_id in [*chain, streamed_id]:
            response = await client.get(f"/v1/responses/{response_id}")
            assert response.status_code == 200, response.text
            assert response.json()["id"] == response_id
            assert response.headers["x-nimstack-backend"] == holder
        # Known ids went straight to their replica: the other one was never asked for one.
        assert [c for c in by_url[other].calls if c[0] != "POST"] == []

        response = await client.delete(f"/v1/responses/{first}")
        assert response.status_code == 200
        assert response.json() == {"id": first, "object": "response", "deleted": True}
        assert response.headers["x-nimstack-backend"] == holder
        assert first not in by_url[holder].stored

        # Deleted, then unknown: the gateway's own OpenAI error, after asking both replicas.
        for response_id in (first, "resp-never-created"):
            response = await client.get(f"/v1/responses/{response_id}")
            assert response.status_code == 404
            assert response.json() == {
                "error": {
                    "message": f"Response with id '{response_id}' not found: it was never "
                    "stored (store: false), has been evicted or deleted, or no replica holds it.",
                    "type": "invalid_request_error",
                    "param": "response_id",
                    "code": "response_not_found",
                }
            }
            probe = ("GET", f"/v1/responses/{response_id}")
            assert all(probe in replica.calls for replica in two_replicas)
        response = await client.delete("/v1/responses/resp-never-created")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "response_not_found"


async def test_store_false_is_not_learned(
    two_replicas: list[ResponsesReplica], tmp_path: Path
) -> None:
    async with (
        running_gateway(tmp_path, round_robin(two_replicas)) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        unstored, holder = await created(client, store=False)
        # The replica is told to keep it anyway: were the id learned, the GET would reach it.
        by_url = {r.url: r for r in two_replicas}
        by_url[holder].stored[unstored] = {"id": unstored, "model": MODEL}
        by_url[holder].calls.clear()
        response = await client.get(f"/v1/responses/{unstored}")
        # Not learned, so found by asking every replica (and served by the one that has it).
        assert response.status_code == 200
        assert response.headers["x-nimstack-backend"] == holder
        probe = ("GET", f"/v1/responses/{unstored}")
        assert all(probe in replica.calls for replica in two_replicas)


async def test_a_busy_or_stopped_holder(
    two_replicas: list[ResponsesReplica], tmp_path: Path
) -> None:
    """Busy: its 503 is passed on, not retried where the chain cannot continue. Stopped (still
    listed): GET answers 503; a chain goes wherever routing sends it, which answers for itself."""
    by_url = {r.url: r for r in two_replicas}
    # Scrapes far apart: the stopped replica stays listed as healthy.
    env = {"NIM_GATEWAY_SCRAPE_INTERVAL": "600"}
    async with (
        running_gateway(tmp_path, round_robin(two_replicas), env=env) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        first, holder = await created(client)
        (other,) = set(by_url) - {holder}
        by_url[holder].busy = True
        chained = create(previous_response_id=first)
        response = await client.post("/v1/responses", json=chained)
        assert response.status_code == 503
        assert response.headers["x-nimstack-backend"] == holder
        assert response.headers["retry-after"] == "1"
        assert ("POST", "/v1/responses") not in by_url[other].calls

        await by_url[holder].stop()
        response = await client.get(f"/v1/responses/{first}")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_ready_replica"
        assert "cannot be reached" in response.json()["error"]["message"]
        response = await client.post("/v1/responses", json=chained)
        assert response.status_code == 404
        assert response.headers["x-nimstack-backend"] == other
        assert response.json()["error"]["message"] == (
            f"replica {by_url[other].port} holds no response {first}"
        )
        assert Counter(by_url[other].calls)[("POST", "/v1/responses")] == 1


async def test_another_gateway_pod_finds_the_replica_by_asking(
    two_replicas: list[ResponsesReplica], tmp_path: Path
) -> None:
    """Two gateway pods behind one Service: a response created through one is found by the
    other, which asks the replicas once and then knows."""
    services = round_robin(two_replicas)
    async with (
        running_gateway(tmp_path / "one", services) as one,
        running_gateway(tmp_path / "two", services) as two,
        httpx.AsyncClient(base_url=one.base_url, timeout=30) as via_one,
        httpx.AsyncClient(base_url=two.base_url, timeout=30) as via_two,
    ):
        first, holder = await created(via_one)
        (other,) = {r.url for r in two_replicas} - {holder}
        for _ in range(3):
            response = await via_two.post("/v1/responses", json=create(previous_response_id=first))
            assert response.status_code == 200, response.text
            assert response.headers["x-nimstack-backend"] == holder
        response = await via_two.get(f"/v1/responses/{first}")
        assert response.headers["x-nimstack-backend"] == holder
        asked = next(r for r in two_replicas if r.url == other).calls
        assert asked.count(("GET", f"/v1/responses/{first}")) == 1  # once, then known


async def test_per_model_keys_open_only_their_models_responses(
    two_replicas: list[ResponsesReplica], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'"*": admin\n{MODEL}: [team]\n{OTHER}: [other-team]\n')
    env = {"NIM_GATEWAY_API_KEYS_FILE": str(keys)}
    async with (
        running_gateway(tmp_path, round_robin(two_replicas), api_key="admin", env=env) as gw,
        httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client,
    ):
        team = {"Authorization": "Bearer team"}
        other_team = {"Authorization": "Bearer other-team"}
        response = await client.post("/v1/responses", json=create(), headers=team)
        first = response.json()["id"]

        for method in ("GET", "DELETE"):
            response = await client.request(method, f"/v1/responses/{first}")
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            # Another model's key: as unknown as an id never created (no probing ids).
            response = await client.request(method, f"/v1/responses/{first}", headers=other_team)
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "response_not_found"
        # Nor may it continue that conversation under its own model.
        response = await client.post(
            "/v1/responses",
            json={**create(previous_response_id=first), "model": OTHER},
            headers=other_team,
        )
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "previous_response_id"
        assert (await client.get(f"/v1/responses/{first}", headers=team)).status_code == 200
        admin = {"Authorization": "Bearer admin"}
        assert (await client.delete(f"/v1/responses/{first}", headers=admin)).status_code == 200
