"""Models, health, version and metadata endpoints on a loaded server."""

from __future__ import annotations

import httpx

from tests.server.conftest import SERVED_NAME, TINY_MAX_MODEL_LEN


def test_models_list(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"] == SERVED_NAME
    assert card["object"] == "model"
    assert card["max_model_len"] == TINY_MAX_MODEL_LEN
    assert isinstance(card["created"], int)
    assert card["owned_by"]


def test_model_by_id_with_slash(http: httpx.Client) -> None:
    response = http.get(f"/v1/models/{SERVED_NAME}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == SERVED_NAME
    missing = http.get("/v1/models/meta/llama-3.1-8b-instruct")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_health_bodies_carry_both_nim_shapes(http: httpx.Client) -> None:
    assert http.get("/v1/health/ready").json() == {
        "object": "health.response",
        "message": "Service is ready.",
        "status": "ready",
    }
    live = http.get("/v1/health/live").json()
    assert live["object"] == "health.response"
    assert live["status"] == "alive"


def test_version_and_metadata(http: httpx.Client) -> None:
    version = http.get("/v1/version").json()
    assert set(version) == {"release", "api"}
    metadata = http.get("/v1/metadata").json()
    assert metadata["modelInfo"][0]["shortName"] == SERVED_NAME
    assert metadata["version"] == version["release"]


def test_openapi_document_describes_request_bodies(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    reference = body["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][reference.rsplit("/", 1)[1]]
    assert "messages" in schema["properties"]
    message = schema["properties"]["messages"]["items"]["$ref"].rsplit("/", 1)[1]
    assert "role" in spec["components"]["schemas"][message]["properties"]
