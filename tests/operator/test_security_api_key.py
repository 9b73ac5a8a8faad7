"""The server's optional API key: wired from a Secret by `spec.apiKeySecret`, never by value.

The last test joins the operator and the server: it resolves the rendered container environment
as the kubelet would (the secretKeyRef becomes the key's value), configures the real server app
from it, and sends the rendered probes' requests with no credentials, as the kubelet does. The
engine behind the app is a stand-in that reports "ready": loading a model would take a minute and
has nothing to do with whether the health routes ask for a key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from nim_server.app import build_app
from nim_server.engine import EngineState, InferenceEngine, ServedModel
from nim_server.settings import Settings

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000002")
KEY_VALUE = "nimkey-canary-4f1d2c"  # what the Secret holds; the operator never sees it
IMAGE = {"repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct", "tag": "1.3.3"}


def container(**fields: Any) -> dict[str, Any]:
    spec = NIMServiceSpec.model_validate({"image": IMAGE, **fields})
    (only,) = render_deployment(OWNER, spec, replicas=1)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_named(ctr: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((entry for entry in ctr["env"] if entry["name"] == name), None)


class TestWiring:
    def test_the_key_reaches_the_server_only_by_secret_reference(self) -> None:
        entry = env_named(container(apiKeySecret={"name": "llama-api-key"}), "NIM_API_KEY")
        assert entry == {
            "name": "NIM_API_KEY",
            # Not optional: a Secret without the key must not start an unauthenticated server.
            "valueFrom": {"secretKeyRef": {"name": "llama-api-key", "key": "NIM_API_KEY"}},
        }

    def test_the_secret_key_can_be_named(self) -> None:
        ctr = container(apiKeySecret={"name": "shared", "key": "llama"}, authSecret="ngc")
        entry = env_named(ctr, "NIM_API_KEY")
        assert entry is not None
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "shared", "key": "llama"}
        assert [e["name"] for e in ctr["env"]][-3:] == ["NGC_API_KEY", "HF_TOKEN", "NIM_API_KEY"]

    def test_no_key_unless_asked(self) -> None:
        assert env_named(container(), "NIM_API_KEY") is None

    def test_a_literal_key_is_refused(self) -> None:
        literal = [{"name": "NIM_API_KEY", "value": KEY_VALUE}]
        with pytest.raises(ValidationError, match="must come from a Secret") as refused:
            NIMServiceSpec.model_validate({"image": IMAGE, "env": literal})
        # The refusal names the rule, never the value it refused.
        assert KEY_VALUE not in str(refused.value.errors(include_input=False))

    def test_the_probes_do_not_change(self) -> None:
        probes = ("startupProbe", "readinessProbe", "livenessProbe")
        with_key = container(apiKeySecret={"name": "k"})
        without = container()
        assert [with_key[p] for p in probes] == [without[p] for p in probes]
        assert not any("httpHeaders" in with_key[p]["httpGet"] for p in probes)


class ReadyEngine(InferenceEngine):
    """Stands in for vLLM: loaded, healthy, and never asked to generate in these tests."""

    state = EngineState.READY
    reason = "ready"

    @property
    def model(self) -> ServedModel:
        return ServedModel(
            name="llama",
            root="/model-store/llama",
            source="meta-llama/Llama-3.1-8B-Instruct",
            max_model_len=8192,
            vocab_size=128256,
            max_num_seqs=8,
            created=0,
        )

    async def start(self) -> None:
        self.state = EngineState.READY

    async def stop(self) -> None:
        return None

    async def wait_loaded(self) -> EngineState:
        return self.state

    def check_health(self) -> EngineState:
        return self.state

    async def render_chat(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def render_text(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError

    def decode(self, token_ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        raise NotImplementedError


def resolved_env(ctr: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet hands it to the process."""
    resolved = {}
    for entry in ctr["env"]:
        if "value" in entry:
            resolved[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            resolved[entry["name"]] = secrets[(ref["name"], ref["key"])]
    return resolved


async def test_the_rendered_probes_pass_without_credentials_while_the_api_needs_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctr = container(apiKeySecret={"name": "llama-api-key"})
    for name, value in resolved_env(ctr, {("llama-api-key", "NIM_API_KEY"): KEY_VALUE}).items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.api_key is not None  # the server did get the key from the rendered env
    app = build_app(settings, ReadyEngine())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pod") as kubelet:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = ctr[probe]["httpGet"]
            assert action["port"] == ctr["ports"][0]["name"]
            response = await kubelet.get(action["path"])
            assert response.status_code == 200, (probe, response.text)
        assert (await kubelet.get("/v1/models")).status_code == 401
        authorized = {"Authorization": f"Bearer {KEY_VALUE}"}
        assert (await kubelet.get("/v1/models", headers=authorized)).status_code == 200
