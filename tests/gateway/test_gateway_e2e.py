"""`nim-gateway` in front of two real `nim-serve` processes on the tiny model.

Two replicas are all this machine affords (each start costs 30-60 s), so they serve two base
models *and* one shared LoRA adapter: `tiny-a` only on A and `tiny-b` only on B test routing by
model; the adapter `shared`, served by both, is one model with two replicas for least-load and
prefix-affinity. Two gateway processes (cheap) front the same replicas: one least-load, one
prefix-affinity with a short prefix and bearer auth on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from nim_gateway.routing import HashRing, affinity_text, stable_hash
from tests.gateway.conftest import GatewayProcess, running_gateway
from tests.server.conftest import tiny_server_env
from tests.support.server_process import ServerProcess, free_port, start_server
from tests.support.tiny_adapter import build_lora_adapter

SHARED = "shared"
# Two gateways scrape both replicas; every half second is plenty and leaves the CPU to them.
SCRAPES = {"NIM_GATEWAY_SCRAPE_INTERVAL": "0.5"}
PREFIX_CHARS = 64
KEY = "gateway-key"
# 16 samples of ~4,000 tokens: seconds of engine work even for the tiny model, so a request is
# still generating while the test holds it; `ignore_eos` because random weights stop anywhere.
SAMPLES = {"max_tokens": 4000, "ignore_eos": True, "n": 16, "temperature": 1}


@pytest.fixture(scope="module")
def replicas(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    work = tmp_path_factory.mktemp("gateway-replicas")
    built = build_lora_adapter(tiny_model_dir, work / "adapters" / SHARED, rank=8)
    peft = work / "peft"
    shutil.copytree(built, peft / SHARED)
    servers: dict[str, ServerProcess] = {}
    try:
        for name in ("tiny-a", "tiny-b"):  # both load at once: half the waiting
            env = {
                **tiny_server_env(tiny_model_dir, work / f"cache-{name}"),
                "NIM_SERVED_MODEL_NAME": name,
                "NIM_PEFT_SOURCE": str(peft),
                "NIM_MAX_LORA_RANK": "8",
            }
            servers[name] = start_server(work / name, env)
        for server in servers.values():
            server.wait_until("/v1/health/ready", 200, timeout=300)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def services(replicas: dict[str, ServerProcess]) -> list[dict[str, object]]:
    return [
        {"name": "a", "urls": [replicas["tiny-a"].base_url]},
        # A replica that is down (a stopped port) next to a working one.
        {"name": "b", "urls": [replicas["tiny-b"].base_url, f"http://127.0.0.1:{free_port()}"]},
    ]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def least_load(
    replicas: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    async with running_gateway(
        tmp_path_factory.mktemp("gw-least-load"), services(replicas), env=SCRAPES
    ) as gateway:
        yield gateway


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def affinity(
    replicas: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayProcess]:
    env = {
        **SCRAPES,
        "NIM_GATEWAY_DEFAULT_ROUTING": "prefix-affinity",
        "NIM_GATEWAY_PREFIX_CHARS": str(PREFIX_CHARS),
    }
    async with running_gateway(
        tmp_path_factory.mktemp("gw-affinity"), services(replicas), api_key=KEY, env=env
    ) as gateway:
        yield gateway


def chat(model: str, text: str = "Hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def metrics(replica: ServerProcess) -> dict[str, float]:
    # A replica busy with 16 long samples on this 2-core machine can take seconds to answer.
    async with httpx.AsyncClient(timeout=60) as client:
        text = (await client.get(replica.base_url + "/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


async def running(replica: ServerProcess) -> float:
    return (await metrics(replica))["num_requests_running"]


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, body: dict[str, object]
) -> AsyncIterator[httpx.Response]:
    """A streamed request, read on in the background after its first event; closed (the client
    hangs up) on exit. It must be read: nim-serve ends a stream whose client stops reading."""
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200, await r.aread()
        lines = r.aiter_lines()
        async for line in lines:
            if line.startswith("data: "):
                break

        async def read_on() -> None:
            async for _ in lines:
                pass

        reader = asyncio.create_task(read_on())
        try:
            yield r
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_requests_go_to_the_replica_serving_the_model(
    least_load: GatewayProcess, replicas: dict[str, ServerProcess]
) -> None:
    async with httpx.AsyncClient(base_url=least_load.base_url, timeout=120) as client:
        for name in ("tiny-a", "tiny-b"):
            for _ in range(3):
                response = await client.post("/v1/chat/completions", json=chat(name, max_tokens=4))
                assert response.status_code == 200, response.text
                assert response.json()["model"] == name
                assert response.headers["x-nimstack-backend"] == replicas[name].base_url
        response = await client.post(
            "/v1/completions", json={"model": "tiny-b", "prompt": "Once", "max_tokens": 3}
        )
        assert response.json()["object"] == "text_completion"
        response = await client.post(
            "/v1/responses", json={"model": "tiny-a", "input": "Hi", "max_output_tokens": 4}
        )
        # (Routed by its `model` like the others; what the replica answers is its own affair.)
        assert response.headers["x-nimstack-backend"] == replicas["tiny-a"].base_url

        models = (await client.get("/v1/models")).json()["data"]
        by_id = {m["id"]: m for m in models}
        assert set(by_id) == {"tiny-a", "tiny-b", SHARED}
        assert by_id[SHARED]["parent"] in {"tiny-a", "tiny-b"}

        response = await client.post("/v1/chat/completions", json=chat("tiny-c"))
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"


async def test_the_openai_client_streams_through_the_gateway(least_load: GatewayProcess) -> None:
    client = openai.AsyncOpenAI(
        base_url=least_load.base_url + "/v1", api_key="unused", max_retries=0
    )
    stream = await client.chat.completions.create(
        model="tiny-a",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    await client.close()


async def test_the_raw_stream_ends_with_done(least_load: GatewayProcess) -> None:
    async with (
        httpx.AsyncClient(base_url=least_load.base_url, timeout=120) as client,
        client.stream(
            "POST", "/v1/chat/completions", json=chat("tiny-b", max_tokens=8, stream=True)
        ) as response,
    ):
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_least_load_sends_the_next_request_to_the_idle_replica(
    least_load: GatewayProcess, replicas: dict[str, ServerProcess]
) -> None:
    """Two long requests at once land on different replicas, every time.

    (Each has 16 samples of ~4,000 tokens, so both are still generating while held: the tiny
    model finishes one sample of 4,000 tokens in a few seconds.)
    """
    for _ in range(2):
        # The last round's samples end with its hang-up, which a busy replica notices late.
        for replica in replicas.values():
            await least_load.wait_for(lambda r=replica: _idle(r), "replicas idle", within=180)
        # ... and the gateway has scraped them so (its view lags by up to a scrape interval).
        await least_load.wait_for(lambda: _seen_idle(least_load), "gateway sees idle", within=30)
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=least_load.base_url, timeout=120)
            )
            served = []
            for i in range(2):
                response = await stack.enter_async_context(
                    open_stream(client, chat(SHARED, f"Story {i}", **SAMPLES))
                )
                served.append(response.headers["x-nimstack-backend"])
            expected = sorted(r.base_url for r in replicas.values())
            assert sorted(served) == expected, await least_load.backends()
            for url, replica in replicas.items():
                await least_load.wait_for(
                    lambda r=replica: _busy(r), f"{url} generating", within=30
                )


async def test_hanging_up_stops_the_generation_upstream(
    least_load: GatewayProcess, replicas: dict[str, ServerProcess]
) -> None:
    """The client leaves a stream: the gateway closes its upstream request, and the replica
    aborts it long before its 16 samples of ~4,000 tokens are done (as tests/server's own
    disconnect test measures it)."""
    replica = replicas["tiny-a"]
    await least_load.wait_for(lambda: _idle(replica), "replica idle", within=60)
    before = (await metrics(replica))["generation_tokens_total"]
    body = chat("tiny-a", "Story", **SAMPLES)
    async with (
        httpx.AsyncClient(base_url=least_load.base_url, timeout=120) as client,
        client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r,
    ):
        events = 0
        async for line in r.aiter_lines():
            events += line.startswith("data: ")
            if events == 6:
                break
    await least_load.wait_for(lambda: _idle(replica), "the engine stopped", within=60)
    generated = (await metrics(replica))["generation_tokens_total"] - before
    assert generated < 16 * 4000 / 2, generated


async def _idle(replica: ServerProcess) -> bool:
    return await running(replica) == 0


async def _seen_idle(gateway: GatewayProcess) -> bool:
    return all(e["load"] == 0 for e in await gateway.backends() if SHARED in e["models"])


async def _busy(replica: ServerProcess) -> bool:
    return await running(replica) >= 1


async def test_prefix_affinity_keeps_a_prefix_on_one_replica(
    affinity: GatewayProcess, replicas: dict[str, ServerProcess]
) -> None:
    urls = sorted(r.base_url for r in replicas.values())
    ring = HashRing(urls, virtual_nodes=64)

    def owner(prefix: str) -> str:
        key = affinity_text(chat(SHARED, prefix), PREFIX_CHARS, after_system_prompt=True)
        return next(ring.walk(stable_hash(key)))

    # One prefix owned by each replica, from the same rule the gateway applies.
    prefixes = {
        owner(p): p for p in (f"{i:03d} " + "You are a helpful assistant. " * 3 for i in range(40))
    }
    assert set(prefixes) == set(urls)
    # Bounded load sends a prefix past a replica still busy with an earlier test's long
    # requests: start once both are idle and this gateway has scraped them so.
    for replica in replicas.values():
        await affinity.wait_for(lambda r=replica: _idle(r), "replicas idle", within=60)
    await affinity.wait_for(lambda: _seen_idle(affinity), "gateway sees idle", within=30)

    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=affinity.base_url, timeout=120, headers=headers) as c:
        assert (
            await c.post(
                "/v1/chat/completions", json=chat(SHARED), headers={"Authorization": "Bearer nope"}
            )
        ).status_code == 401
        for url, prefix in prefixes.items():
            for question in ("Why?", "How far is the moon?", "Tell me a joke"):
                # The same first PREFIX_CHARS characters, different questions after them.
                body = chat(SHARED, prefix[:PREFIX_CHARS] + question, max_tokens=2)
                response = await c.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                assert response.headers["x-nimstack-backend"] == url


async def test_stored_responses_stay_with_the_replica_that_stored_them(
    least_load: GatewayProcess, replicas: dict[str, ServerProcess]
) -> None:
    """Each replica keeps its Responses in its own memory. Through the gateway, continuing,
    retrieving and deleting one reach the replica that created it, though least-load would
    send each of them to either replica (the adapter both serve)."""
    ask: dict[str, object] = {"model": SHARED, "input": "Hi", "max_output_tokens": 4}
    holders: dict[str, str] = {}  # replica URL -> an id of a response it stored
    async with httpx.AsyncClient(base_url=least_load.base_url, timeout=120) as client:
        for _ in range(10):  # until each replica holds one
            # Two at once: least-load puts the second where the first is not. One at a time,
            # both replicas are idle at every choice, and the tie goes to the one whose last
            # scrape showed the lower KV-cache usage, which can be the same one every time.
            pair = await asyncio.gather(*(client.post("/v1/responses", json=ask) for _ in "ab"))
            for response in pair:
                assert response.status_code == 200, response.text
                holders.setdefault(response.headers["x-nimstack-backend"], response.json()["id"])
            if len(holders) == 2:
                break
        assert set(holders) == {r.base_url for r in replicas.values()}
        for url, response_id in holders.items():
            for _ in range(3):
                chained = await client.post(
                    "/v1/responses", json={**ask, "previous_response_id": response_id}
                )
                assert chained.status_code == 200, chained.text
                assert chained.headers["x-nimstack-backend"] == url
                assert chained.json()["previous_response_id"] == response_id
            # Streamed, the id is learned from the header as well.
            async with client.stream(
                "POST",
                "/v1/responses",
                json={**ask, "previous_response_id": response_id, "stream": True},
            ) as streamed:
                assert streamed.headers["x-nimstack-backend"] == url
                streamed_id = streamed.headers["x-request-id"]
                await streamed.aread()
            for stored in (response_id, streamed_id):
                got = await client.get(f"/v1/responses/{stored}")
                assert got.status_code == 200, got.text
                assert got.json()["id"] == stored
                assert got.headers["x-nimstack-backend"] == url
            deleted = await client.delete(f"/v1/responses/{response_id}")
            assert deleted.status_code == 200, deleted.text
            assert deleted.json()["deleted"] is True
            assert deleted.headers["x-nimstack-backend"] == url
            gone = await client.get(f"/v1/responses/{response_id}")
            assert gone.status_code == 404
            assert gone.json()["error"]["code"] == "response_not_found"

        unstored = await client.post("/v1/responses", json={**ask, "store": False})
        assert unstored.status_code == 200, unstored.text
        response = await client.get(f"/v1/responses/{unstored.json()['id']}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "response_not_found"
