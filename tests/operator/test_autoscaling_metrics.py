"""Reading a pod's metrics: the Prometheus text our server renders, vLLM's, and what goes wrong.

The parser is fed the text our own inference server produces (its `ServerMetrics` over a
registry holding vLLM's gauges), plain vLLM text with per-engine labels, and broken pages; the
scraper talks HTTP to real local servers that answer, 404, fail, hang or refuse.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from nim_operator.autoscaling.metrics import MetricsError, metrics_urls, parse_metrics, scrape
from nim_server.metrics import ServerMetrics


def _server_text(running: float, waiting: float, kv: float, max_requests: int) -> str:
    """What nim-serve answers at /v1/metrics for an engine in this state."""
    vllm = CollectorRegistry()
    labels = ["model_name", "engine"]
    for name, value in (
        ("vllm:num_requests_running", running),
        ("vllm:num_requests_waiting", waiting),
        ("vllm:kv_cache_usage_perc", kv),
    ):
        Gauge(name, name, labels, registry=vllm).labels("smollm2", "0").set(value)
    server = ServerMetrics(source=vllm)
    server.max_requests.set(max_requests)
    return server.render().decode()


class TestParse:
    def test_our_servers_page(self) -> None:
        reading = parse_metrics(_server_text(running=5, waiting=2, kv=0.42, max_requests=64))
        assert (reading.running, reading.waiting, reading.capacity) == (5, 2, 64)
        assert reading.kv_cache == pytest.approx(0.42)

    def test_plain_vllm_with_one_family_per_engine(self) -> None:
        text = "\n".join(
            [
                "# HELP vllm:num_requests_running Requests running.",
                "# TYPE vllm:num_requests_running gauge",
                'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
                'vllm:num_requests_running{engine="1",model_name="m"} 4.0',
                "# TYPE vllm:num_requests_waiting gauge",
                'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
                'vllm:num_requests_waiting{engine="1",model_name="m"} 0.0',
                "# TYPE vllm:kv_cache_usage_perc gauge",
                'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.2',
                'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.6',
                "",
            ]
        )
        reading = parse_metrics(text)
        assert (reading.running, reading.waiting) == (7, 1)  # summed over engines
        assert reading.kv_cache == pytest.approx(0.4)  # averaged
        assert reading.capacity is None  # vLLM does not export num_request_max

    def test_nim_1x_unprefixed_names(self) -> None:
        text = (
            "# TYPE num_requests_running gauge\nnum_requests_running 2\n"
            "# TYPE num_requests_waiting gauge\nnum_requests_waiting 9\n"
            "# TYPE gpu_cache_usage_perc gauge\ngpu_cache_usage_perc 0.75\n"
        )
        reading = parse_metrics(text)
        assert (reading.running, reading.waiting, reading.kv_cache) == (2, 9, 0.75)

    @pytest.mark.parametrize(
        ("text", "complaint"),
        [
            ("", "no num_requests_running"),
            ("# TYPE num_requests_running gauge\nnum_requests_running 1\n", "num_requests_waiting"),
            ("<html>Bad gateway</html>", "unparsable"),
            ("num_requests_running NaN\nnum_requests_waiting 0\n", "not a number"),
            ("num_requests_running -1\nnum_requests_waiting 0\n", "negative"),
        ],
    )
    def test_pages_that_say_nothing_usable(self, text: str, complaint: str) -> None:
        with pytest.raises(MetricsError, match=complaint):
            parse_metrics(text)


class TestUrls:
    def pod(self, ip: str | None, ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        container: dict[str, Any] = {"name": "nim"}
        if ports is not None:
            container["ports"] = ports
        return {"spec": {"containers": [container]}, "status": {"podIP": ip} if ip else {}}

    def test_the_api_port_of_the_pod(self) -> None:
        pod = self.pod("10.1.2.3", [{"name": "api", "containerPort": 9000}])
        assert metrics_urls(pod) == [
            "http://10.1.2.3:9000/v1/metrics",
            "http://10.1.2.3:9000/metrics",
        ]

    def test_default_port(self) -> None:
        assert metrics_urls(self.pod("10.1.2.3"))[0] == "http://10.1.2.3:8000/v1/metrics"

    def test_ipv6(self) -> None:
        assert metrics_urls(self.pod("fd00::12"))[0] == "http://[fd00::12]:8000/v1/metrics"

    @pytest.mark.parametrize("ip", [None, "not-an-ip"])
    def test_no_address(self, ip: str | None) -> None:
        assert metrics_urls(self.pod(ip)) == []


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Start a local server with the given routes; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as client:
        yield client


def urls(base: str) -> list[str]:
    return [f"{base}/v1/metrics", f"{base}/metrics"]


async def page(request: web.Request) -> web.Response:
    return web.Response(text=_server_text(running=1, waiting=3, kv=0.1, max_requests=8))


class TestScrape:
    async def test_reads_v1_metrics(self, serve: Any, session: aiohttp.ClientSession) -> None:
        reading = await scrape(session, urls(await serve({"/v1/metrics": page})))
        assert (reading.running, reading.waiting) == (1, 3)

    async def test_falls_back_to_metrics_for_plain_vllm(
        self, serve: Any, session: aiohttp.ClientSession
    ) -> None:
        reading = await scrape(session, urls(await serve({"/metrics": page})))
        assert reading.waiting == 3

    async def test_server_error(self, serve: Any, session: aiohttp.ClientSession) -> None:
        async def broken(request: web.Request) -> web.Response:
            return web.Response(status=503, text="loading")

        with pytest.raises(MetricsError, match="HTTP 503"):
            await scrape(session, urls(await serve({"/v1/metrics": broken})))

    async def test_no_metrics_endpoint_at_all(
        self, serve: Any, session: aiohttp.ClientSession
    ) -> None:
        with pytest.raises(MetricsError, match="/metrics: HTTP 404"):
            await scrape(session, urls(await serve({})))

    async def test_a_hung_pod_times_out(self, serve: Any, session: aiohttp.ClientSession) -> None:
        async def hang(request: web.Request) -> web.Response:
            await asyncio.sleep(1.5)  # 3x the client's budget; the server's shutdown waits for it
            return web.Response(text="")

        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(MetricsError, match="timed out"):
            await scrape(session, urls(await serve({"/v1/metrics": hang})))
        assert loop.time() - started < 1.45  # the session's 0.5 s budget, before the pod answers

    async def test_connection_refused(self, session: aiohttp.ClientSession) -> None:
        # 127.0.0.1:9 (discard) has no listener here.
        with pytest.raises(MetricsError, match=re.escape("GET http://127.0.0.1:9/v1/metrics")):
            await scrape(session, urls("http://127.0.0.1:9"))

    async def test_not_text(self, serve: Any, session: aiohttp.ClientSession) -> None:
        async def binary(request: web.Request) -> web.Response:
            return web.Response(body=b"\xff\xfe\x00garbage")

        with pytest.raises(MetricsError, match="not UTF-8"):
            await scrape(session, urls(await serve({"/v1/metrics": binary})))

    async def test_no_ip(self, session: aiohttp.ClientSession) -> None:
        with pytest.raises(MetricsError, match="no IP"):
            await scrape(session, [])
