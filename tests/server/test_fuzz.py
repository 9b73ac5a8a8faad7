"""Schemathesis against the server's own OpenAPI document, on the real engine.

Requests generated from the schema, valid ones and schemathesis' negative variants, must all
get a non-5xx answer; errors must use the OpenAI envelope; the server must stay healthy.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.support.server_process import ServerProcess

EXAMPLES_PER_OPERATION = 20


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(server.base_url + "/openapi.json")


def operations(api_schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in api_schema.get_all_operations()]


def fuzz(
    operation: schemathesis.APIOperation, mode: GenerationMode, server: ServerProcess
) -> set[int]:
    """Run generated cases of one operation; return the statuses it answered."""
    statuses: set[int] = set()

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: CI results are reproducible
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers=server.headers, timeout=120)
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400 and "application/json" in response.headers.get(
            "content-type", ""
        ):
            error = response.json()["error"]
            assert error["message"]
            assert {"message", "type", "param", "code"} <= set(error)

    check()
    return statuses


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(
    api_schema: schemathesis.BaseSchema, server: ServerProcess, mode: GenerationMode
) -> None:
    statuses: dict[str, set[int]] = {}
    for operation in operations(api_schema):
        if mode is GenerationMode.NEGATIVE and operation.method.upper() in ("GET", "DELETE"):
            continue  # no body to corrupt; a path parameter takes any string
        statuses[f"{operation.method.upper()} {operation.path}"] = fuzz(operation, mode, server)
    assert {"POST /v1/chat/completions", "POST /v1/completions"} <= set(statuses)
    if mode is GenerationMode.POSITIVE:
        # Valid requests really reached the engine, not only the validators.
        assert 200 in statuses["POST /v1/chat/completions"], statuses
        assert 200 in statuses["POST /v1/completions"], statuses
    else:
        assert statuses["POST /v1/chat/completions"] <= {400, 413}, statuses


def test_healthy_after_fuzzing(http: httpx.Client) -> None:
    assert http.get("/v1/health/ready").status_code == 200
    ok = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "still there?"}], "max_tokens": 2},
    )
    assert ok.status_code == 200
