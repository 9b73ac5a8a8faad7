"""The gateway's pure parts: the backend table, discovery's translations, keys, metrics, import."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from nim_gateway.auth import KeySet, bearer_token, keys_from_mapping, keys_from_secret
from nim_gateway.backends import BackendTable, Endpoint, ServiceSpec
from nim_gateway.discovery import (
    routing_from_annotations,
    services_from_endpoint_slices,
    static_services,
)
from nim_gateway.load import Scraper, parse_load
from nim_gateway.proxy import Router
from nim_gateway.settings import GatewaySettings
from tests.support.server_process import free_port


def test_importing_the_gateway_imports_neither_vllm_nor_torch() -> None:
    code = (
        "import sys, nim_gateway, nim_gateway.app, nim_gateway.cli;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'vllm', 'torch', 'transformers', 'nim_server', 'nim_operator', 'kopf'});"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_clean_on_the_gateway_image() -> None:
    dockerfile = Path(__file__).resolve().parents[2] / "gateway" / "Dockerfile"
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


class TestBackendTable:
    def test_models_come_from_the_replicas_cards_once_read(self) -> None:
        table = BackendTable()
        table.sync([ServiceSpec("ns/a", ("http://a:1",), declared_models=("a",))])
        (endpoint,) = table.endpoints()
        assert table.lookup("a").candidates == (endpoint,)
        # Before the first scrape /v1/models agrees with routing: the declared model is listed,
        # until a scrape fails.
        assert [c["id"] for c in table.model_cards()] == ["a"]
        endpoint.healthy = False
        assert table.model_cards() == []
        endpoint.healthy = None
        table.record_models(endpoint, [{"id": "a"}, {"id": "a-lora", "parent": "a"}])
        assert table.lookup("a-lora").candidates == (endpoint,)
        assert [c["id"] for c in table.model_cards()] == ["a", "a-lora"]
        assert table.model_cards()[1]["parent"] == "a"

    def test_a_model_without_replicas_is_known_but_has_no_candidates(self) -> None:
        table = BackendTable()
        table.sync([ServiceSpec("ns/a", ("http://a:1",), declared_models=("a",))])
        table.record_models(next(table.endpoints()), [{"id": "a-lora"}])
        table.sync([ServiceSpec("ns/a", (), declared_models=("a",))])
        for model in ("a", "a-lora"):
            lookup = table.lookup(model)
            assert lookup.known
            assert lookup.candidates == ()
        assert not table.lookup("b").known

    def test_surviving_replicas_keep_their_state(self) -> None:
        table = BackendTable()
        table.sync([ServiceSpec("s", ("http://a:1", "http://b:1"))])
        first = {e.url: e for e in table.endpoints()}
        first["http://a:1"].inflight = 3
        table.sync([ServiceSpec("s", ("http://a:1",))])
        (kept,) = table.endpoints()
        assert kept is first["http://a:1"]
        assert kept.inflight == 3

    def test_replicas_in_backoff_and_failed_scrapes(self) -> None:
        table = BackendTable()
        table.sync([ServiceSpec("s", ("http://a:1", "http://b:1"), declared_models=("m",))])
        a, b = table.endpoints()
        b.healthy = False
        assert table.lookup("m").candidates == (a,)
        a.backoff_until = 100.0
        # Only a failed replica is left: tried rather than nothing.
        assert table.lookup("m", now=50.0).candidates == (b,)
        assert table.lookup("m", now=150.0).candidates == (a,)

    def test_load_is_our_requests_now_plus_the_others_scraped(self) -> None:
        table = BackendTable()
        table.sync([ServiceSpec("s", ("http://a:1",))])
        (e,) = table.endpoints()
        # Scraped while 2 of ours were open: of its 3 requests, 1 is another client's.
        e.running, e.waiting, e.inflight_at_scrape = 2, 1, 2
        e.inflight = 2
        assert e.load() == 3
        e.inflight = 0  # ours finished since: only the other client's is left
        assert e.load() == 1
        e.inflight = 5
        assert e.load() == 6
        # Ours sent just before the scrape, not yet counted by the replica: no negative others.
        e.running, e.waiting, e.inflight_at_scrape = 0, 0, 3
        e.inflight = 3
        assert e.load() == 3


def slice_(
    service: str, *endpoints: tuple[str, bool | None], port: int = 8000
) -> dict[str, object]:
    return {
        "metadata": {
            "name": f"{service}-x",
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "api", "port": port}],
        "endpoints": [
            {"addresses": [ip], **({} if ready is None else {"conditions": {"ready": ready}})}
            for ip, ready in endpoints
        ],
    }


def nimservice(name: str, **extra: object) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", **extra}, "spec": {}}


class TestKubernetesTranslation:
    def test_ready_addresses_of_the_services_slices(self) -> None:
        specs = services_from_endpoint_slices(
            [nimservice("llm", annotations={"nimstack.dev/routing": "prefix-affinity"})],
            [
                slice_("llm", ("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)),
                slice_("other", ("10.0.0.9", True)),
                slice_("llm", ("fd00::1", True), port=9000),
            ],
        )
        assert specs == [
            ServiceSpec(
                "ns/llm",
                ("http://10.0.0.1:8000", "http://10.0.0.3:8000", "http://[fd00::1]:9000"),
                "prefix-affinity",
                ("llm",),
            )
        ]

    def test_the_served_name_comes_from_status_then_spec(self) -> None:
        svc = nimservice("llm")
        svc["spec"] = {"model": {"servedName": "meta/x"}}
        (spec,) = services_from_endpoint_slices([svc], [])
        assert spec.declared_models == ("meta/x",)
        svc["status"] = {"model": {"name": "meta/y"}}
        (spec,) = services_from_endpoint_slices([svc], [])
        assert spec.declared_models == ("meta/y",)

    def test_a_service_named_in_the_spec(self) -> None:
        svc = nimservice("llm")
        svc["spec"] = {"expose": {"service": {"name": "llm-api"}}}
        (spec,) = services_from_endpoint_slices(
            [svc], [slice_("llm", ("10.0.0.1", True)), slice_("llm-api", ("10.0.0.2", True))]
        )
        assert spec.urls == ("http://10.0.0.2:8000",)

    def test_routing_annotation_values(self) -> None:
        assert routing_from_annotations({"nimstack.dev/routing": "least-load"}) == "least-load"
        assert routing_from_annotations({"nimstack.dev/routing": "round-robin"}) == "round-robin"
        assert routing_from_annotations({"nimstack.dev/routing": "random"}) is None
        assert routing_from_annotations(None) is None


def test_static_services_from_a_file_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "backends.yaml"
    file.write_text(
        "services:\n"
        "  - name: llama\n"
        "    routing: prefix-affinity\n"
        "    models: [meta/llama]\n"
        "    urls: [http://127.0.0.1:8001/, http://127.0.0.1:8002]\n"
    )
    specs = static_services(file, ["tiny=http://h:1", "tiny=http://h:2", "http://solo:3"])
    assert specs == [
        ServiceSpec(
            "llama",
            ("http://127.0.0.1:8001", "http://127.0.0.1:8002"),
            "prefix-affinity",
            ("meta/llama",),
        ),
        ServiceSpec("tiny", ("http://h:1", "http://h:2")),
        ServiceSpec("http://solo:3", ("http://solo:3",)),
    ]
    file.write_text("services: [{name: x, routing: fastest, urls: []}]")
    with pytest.raises(ValueError, match="fastest"):
        static_services(file, [])


class TestKeys:
    def test_no_source_means_open(self) -> None:
        assert KeySet().allows(None, "any")

    def test_global_and_per_model_keys(self) -> None:
        keys = keys_from_mapping({"*": "admin", "a": ["ka", "kb"], "b": "kb"})
        assert keys.allows("admin", "zzz")
        assert keys.allows("ka", "a")
        assert not keys.allows("ka", "b")
        assert keys.allows("kb", "b")
        assert keys.known("ka")
        assert not keys.known("nope")
        assert not keys.allows(None, "a")
        assert not keys.is_global("ka")

    def test_secret_data(self) -> None:
        def b64(text: str) -> str:
            return base64.b64encode(text.encode()).decode()

        keys = keys_from_secret(
            {"data": {"api-key": b64("root\n"), "models.yaml": b64("m: [mk]\n")}}
        )
        assert keys.allows("root", "x")
        assert keys.allows("mk", "m")
        assert not keys.allows("mk", "x")
        assert not keys_from_secret({"data": {}}).allows("anything", "m")

    def test_bearer_parsing(self) -> None:
        assert bearer_token("Bearer abc") == "abc"
        assert bearer_token("bearer  abc ") == "abc"
        assert bearer_token("Basic abc") is None
        assert bearer_token(None) is None


def test_parse_load_prefers_nim_names_and_sums_labels() -> None:
    text = """# HELP num_requests_running x
# TYPE num_requests_running gauge
num_requests_running{model_name="a"} 2.0
num_requests_running{model_name="b"} 1.0
vllm:num_requests_running{model_name="a"} 7.0
vllm:num_requests_waiting{model_name="a"} 4.0
gpu_cache_usage_perc{model_name="a"} 0.25
num_requests_running_bucket{le="1"} 99
"""
    assert parse_load(text) == (3.0, 4.0, 0.25)
    # Gauges without labels are valid exposition too.
    assert parse_load("num_requests_running 2\nnum_requests_waiting 1.0\n") == (2.0, 1.0, 0.0)
    assert parse_load("") == (0.0, 0.0, 0.0)


async def test_a_refused_scrape_marks_the_replica_unhealthy_at_once() -> None:
    table = BackendTable()
    table.sync([ServiceSpec("s", (f"http://127.0.0.1:{free_port()}",), declared_models=("m",))])
    (endpoint,) = table.endpoints()
    async with aiohttp.ClientSession() as session:
        await Scraper(session, table, interval=1, timeout=1).scrape(endpoint)
    assert endpoint.healthy is False


async def scrape_from_a_stub(
    table: BackendTable, endpoint: Endpoint, port: int, metrics: Handler
) -> None:
    """Scrape `endpoint` once from a replica stub on `port`: `metrics` and one model, m."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            await Scraper(session, table, interval=1, timeout=5).scrape(endpoint)
    finally:
        await runner.cleanup()


async def test_a_scrape_that_counted_our_finished_requests_does_not_keep_a_replica_busy() -> None:
    """The real scraper reads a replica's /metrics while 3 of the gateway's requests run there;
    they finish before the next scrape. That replica is idle, the other has one of ours open:
    least-load must pick the idle one (taking the larger of the stale scrape and our count, it
    saw 3 against 1 and picked the busy one)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text='num_requests_running{model_name="m"} 3\n')

    port = free_port()
    table = BackendTable()
    table.sync([ServiceSpec("s", (f"http://127.0.0.1:{port}", "http://other:1"))])
    drained, busy = table.endpoints()
    drained.inflight = 3
    await scrape_from_a_stub(table, drained, port, metrics)
    assert drained.running == 3
    drained.inflight = 0  # the three answers are complete; the next scrape is up to 1 s away
    busy.inflight, busy.cards = 1, [{"id": "m"}]
    router = Router(GatewaySettings(default_routing="least-load"))
    lookup = table.lookup("m")
    assert {router.choose(lookup, {"model": "m"}) for _ in range(10)} == {drained}
    assert (drained.load(), busy.load()) == (0, 1)


async def test_our_requests_ending_while_a_slow_scrape_is_answered_are_not_others() -> None:
    """The replica writes its /metrics with 3 of our requests running, then 2 of them end
    before its answer arrives (a busy replica is slow to answer). What is left is 1 of ours and
    nobody else's: counting only ours open at the answer, 2 would pass for another client's
    until the next scrape."""
    table = BackendTable()
    port = free_port()
    table.sync([ServiceSpec("s", (f"http://127.0.0.1:{port}",))])
    (endpoint,) = table.endpoints()
    endpoint.inflight = 3

    async def metrics(_: web.Request) -> web.Response:
        page = 'num_requests_running{model_name="m"} 3\n'
        endpoint.inflight -= 2  # as the proxy does when a request ends
        endpoint.finished += 2
        return web.Response(text=page)

    await scrape_from_a_stub(table, endpoint, port, metrics)
    assert endpoint.running == 3
    assert endpoint.load() == 1


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIM_GATEWAY_NAMESPACES", "a, b,")
    monkeypatch.setenv("NIM_GATEWAY_API_KEY_SECRET", "ns/keys")
    monkeypatch.setenv("NIM_GATEWAY_DEFAULT_ROUTING", "prefix-affinity")
    settings = GatewaySettings()
    assert settings.namespace_list() == ["a", "b"]
    assert settings.secret_ref() == ("ns", "keys")
    assert settings.default_routing == "prefix-affinity"
    assert not settings.uses_static_backends()
