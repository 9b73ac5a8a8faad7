"""The real `nim-gateway` process in front of stub replicas whose behaviour each test sets.

Stubs make the timing-dependent behaviour exact and cheap: a stream whose events are seconds
apart, a replica that answers 503, one that was stopped, a non-streamed answer that never comes.
test_gateway_e2e.py does the same against real nim-serve processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path

import httpx
import pytest

from nim_gateway.routing import HashRing, affinity_text, stable_hash
from tests.gateway.conftest import StubReplica, running_gateway
from tests.support.server_process import free_port

MODEL = "meta/stub-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def started(stubs: list[StubReplica], **options: object) -> StubReplica:
    stub = StubReplica(models=[{"id": MODEL, "object": "model"}], **options)  # type: ignore[arg-type]
    await stub.start()
    stubs.append(stub)
    return stub


async def test_streams_pass_through_event_by_event(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    stub = await started(stubs, chunk_delay=0.4, chunks=4)
    services = [{"name": "s", "urls": [stub.url]}]
    async with (
        running_gateway(tmp_path, services) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-nimstack-backend"] == stub.url
        arrivals: list[tuple[float, str]] = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    assert [data for _, data in arrivals][-1] == "[DONE]"
    assert [json.loads(d)["i"] for _, d in arrivals[:-1]] == [0, 1, 2, 3]
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(arrivals)]
    # Each event reached the client when the replica sent it, not at the end.
    assert min(gaps[:3]) > 0.25, gaps


async def test_a_client_leaving_a_stream_closes_the_upstream_request(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    stub = await started(stubs, mode="slow", chunk_delay=0.1)
    async with running_gateway(tmp_path, [{"name": "s", "urls": [stub.url]}]) as gateway:
        async with (
            httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
            client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r,
        ):
            async for _ in r.aiter_lines():
                break
            assert stub.open_streams == 1
        await gateway.wait_for(lambda: stub.cancelled == 1, "the upstream stream closed", 5)
        assert stub.open_streams == 0

        async def nothing_in_flight() -> bool:
            return sum(int(e["inflight"]) for e in await gateway.backends()) == 0

        await gateway.wait_for(nothing_in_flight, "the gateway's in-flight count back to 0", 5)


async def test_a_client_leaving_before_a_plain_answer_closes_the_upstream_request(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    stub = await started(stubs, mode="slow")
    async with running_gateway(tmp_path, [{"name": "s", "urls": [stub.url]}]) as gateway:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=1) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=CHAT)
        await gateway.wait_for(lambda: stub.cancelled == 1, "the upstream request closed", 5)


async def test_a_503_is_retried_once_on_another_replica(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    # The busy replica reports the lower load, so least-load tries it first.
    busy = await started(stubs, mode="busy")
    good = await started(stubs, running=3)
    services = [{"name": "s", "urls": [busy.url, good.url]}]
    async with (
        running_gateway(tmp_path, services) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        assert response.headers["x-nimstack-backend"] == good.url
        assert (busy.hits, good.hits) == (1, 1)
        # Its Retry-After (5 s) keeps the busy replica out of rotation meanwhile.
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert busy.hits == 1


async def test_a_503_from_the_only_replica_is_passed_on(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    busy = await started(stubs, mode="busy")
    async with (
        running_gateway(tmp_path, [{"name": "s", "urls": [busy.url]}]) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        # Now in backoff, it is no candidate: the gateway's own 503.
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "no_ready_replica"


async def test_a_stopped_replica_is_retried_on_another(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    doomed = await started(stubs)
    good = await started(stubs, running=3)
    services = [{"name": "s", "urls": [doomed.url, good.url]}]
    # Scrapes far apart: the gateway still believes the stopped replica is healthy and idle.
    env = {"NIM_GATEWAY_SCRAPE_INTERVAL": "600"}
    async with running_gateway(tmp_path, services, env=env) as gateway:
        await doomed.stop()
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client:
            response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200, response.text
        assert response.headers["x-nimstack-backend"] == good.url
        assert f"replica {doomed.url} refused" in gateway.log()


async def test_errors_auth_and_models(stubs: list[StubReplica], tmp_path: Path) -> None:
    stub = await started(stubs)
    stub.models.append({"id": "adapter", "object": "model", "parent": MODEL})
    services = [
        {"name": "s", "urls": [stub.url]},
        {"name": "down", "urls": [f"http://127.0.0.1:{free_port()}"], "models": ["meta/down"]},
    ]
    async with (
        running_gateway(tmp_path, services, api_key="sekrit") as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekrit"}):
            response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert (await client.get("/v1/models")).status_code == 401

        client.headers["Authorization"] = "Bearer sekrit"
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        # The gateway's key is forwarded (no NIM_GATEWAY_BACKEND_API_KEY), with the body as sent.
        assert stub.last_headers["Authorization"] == "Bearer sekrit"
        assert stub.last_body == CHAT

        response = await client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "message": "The model `nope` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
        response = await client.post("/v1/responses", json={"model": "meta/down", "input": "x"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert response.json()["error"]["code"] == "no_ready_replica"

        for body in (b"{", b"[]", b'{"prompt": "x"}'):
            response = await client.post("/v1/completions", content=body)
            assert response.status_code == 400
            assert response.json()["error"]["type"] == "invalid_request_error"
        response = await client.get("/v1/nothing-here")
        assert response.status_code == 404
        assert "error" in response.json()

        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        assert [(m["id"], m.get("parent")) for m in models["data"]] == [
            ("adapter", MODEL),
            (MODEL, None),
        ]
        assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
        assert (await client.get("/v1/models/meta/down")).status_code == 404


async def test_per_model_keys(stubs: list[StubReplica], tmp_path: Path) -> None:
    stub = await started(stubs)
    stub.models.append({"id": "other", "object": "model"})
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'"*": admin\n{MODEL}: [team]\n')
    env = {"NIM_GATEWAY_API_KEYS_FILE": str(keys)}
    async with (
        running_gateway(
            tmp_path, [{"name": "s", "urls": [stub.url]}], api_key="admin", env=env
        ) as gateway,
        httpx.AsyncClient(
            base_url=gateway.base_url, timeout=30, headers={"Authorization": "Bearer team"}
        ) as client,
    ):
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        other = {**CHAT, "model": "other"}
        assert (await client.post("/v1/chat/completions", json=other)).status_code == 401
        listed = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == [MODEL]
        assert (await client.get("/v1/gateway/backends")).status_code == 401
        admin = {"Authorization": "Bearer admin"}
        assert (await client.post("/v1/chat/completions", json=other, headers=admin)).is_success


async def test_readiness_and_liveness(stubs: list[StubReplica], tmp_path: Path) -> None:
    stub = await started(stubs)
    async with (
        running_gateway(tmp_path, [{"name": "s", "urls": [stub.url]}]) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url) as client,
    ):
        assert (await client.get("/v1/health/live")).json()["status"] == "alive"
        assert (await client.get("/v1/health/ready")).json()["status"] == "ready"
    _ = asyncio  # the stubs run in this loop while the gateway process is polled


async def test_bounded_load_spills_a_hot_prefix_to_the_next_replica(
    stubs: list[StubReplica], tmp_path: Path
) -> None:
    """With c = 1.25 and two idle replicas, the third concurrent request of one prefix spills."""
    first = await started(stubs, mode="slow", chunk_delay=0.2)
    second = await started(stubs, mode="slow", chunk_delay=0.2)
    services = [{"name": "s", "routing": "prefix-affinity", "urls": [first.url, second.url]}]
    body = {**CHAT, "stream": True}
    ring = HashRing([first.url, second.url], virtual_nodes=64)
    owner = next(ring.walk(stable_hash(affinity_text(body, 512, after_system_prompt=True))))
    async with (
        running_gateway(tmp_path, services) as gateway,
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as client,
        contextlib.AsyncExitStack() as held,
    ):
        served = []
        # The line iterators are kept: one dropped is finalized, and that closes its stream.
        readers = []
        for _ in range(3):
            response = await held.enter_async_context(
                client.stream("POST", "/v1/chat/completions", json=body)
            )
            readers.append(response.aiter_lines())
            await anext(readers[-1])
            served.append(response.headers["x-nimstack-backend"])
        table = await gateway.backends()
    assert served[:2] == [owner, owner]
    assert served[2] != owner, [(e["url"], e["inflight"], e["load"]) for e in table]
