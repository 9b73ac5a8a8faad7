"""spec.adapters: LoRA adapters from a claim, mounted read-only as the server's NIM_PEFT_SOURCE."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from tests.operator.test_crd_cel import apply_defaults, openapi_root
from tests.operator.test_render_deployment import (
    KUBERNETES_VERSION,
    container,
    env,
    make_spec,
    pod,
    render,
)
from tests.support.crd_validation import schema_errors
from tests.support.pod_security import restricted_violations

ADAPTERS = {"pvc": {"name": "loras", "subPath": "team-a"}, "refreshIntervalSeconds": 30}


class TestRenderAdapters:
    def test_the_claim_is_mounted_read_only_as_the_peft_source(self) -> None:
        deployment = render(adapters=ADAPTERS)
        volume = {
            "name": "lora-adapters",
            "persistentVolumeClaim": {"claimName": "loras", "readOnly": True},
        }
        assert volume in pod(deployment)["volumes"]
        mount = {
            "name": "lora-adapters",
            "mountPath": "/lora-adapters",
            "readOnly": True,
            "subPath": "team-a",
        }
        assert mount in container(deployment)["volumeMounts"]
        variables = env(deployment)
        assert variables["NIM_PEFT_SOURCE"]["value"] == "/lora-adapters"
        assert variables["NIM_PEFT_REFRESH_INTERVAL"]["value"] == "30"
        assert "NIM_MAX_LORA_RANK" not in variables  # the server's default

    def test_max_rank(self) -> None:
        deployment = render(adapters={"pvc": {"name": "loras"}, "maxRank": 64})
        assert env(deployment)["NIM_MAX_LORA_RANK"]["value"] == "64"
        assert "NIM_PEFT_REFRESH_INTERVAL" not in env(deployment)  # scanned once at start
        mounts = container(deployment)["volumeMounts"]
        assert {"name": "lora-adapters", "mountPath": "/lora-adapters", "readOnly": True} in mounts

    def test_nothing_without_adapters(self) -> None:
        deployment = render()
        assert "lora-adapters" not in [v["name"] for v in pod(deployment)["volumes"]]
        assert not [name for name in env(deployment) if "PEFT" in name or "LORA" in name]

    @pytest.mark.parametrize("adapters", [ADAPTERS, None])
    def test_nvidia_peft_env_passes_through_unchanged(self, adapters: Any) -> None:
        user_env = [
            {"name": "NIM_PEFT_SOURCE", "value": "/model-store/loras"},
            {"name": "NIM_PEFT_REFRESH_INTERVAL", "value": "3600"},
            {"name": "NIM_MAX_GPU_LORAS", "value": "4"},
            {"name": "NIM_MAX_CPU_LORAS", "value": "12"},
            {"name": "NIM_MAX_LORA_RANK", "value": "16"},
        ]
        fields: dict[str, Any] = {"env": user_env}
        if adapters is not None:
            fields["adapters"] = adapters
        variables = env(render(**fields))
        for entry in user_env:
            assert variables[entry["name"]] == entry
        names = [entry["name"] for entry in container(render(**fields))["env"]]
        assert len(names) == len(set(names))  # replaced in place, never twice

    def test_restricted_and_valid_for_kubernetes(self) -> None:
        deployment = render(adapters=ADAPTERS)
        assert restricted_violations(pod(deployment)) == []
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)

    @pytest.mark.parametrize(
        "adapters",
        [
            {},
            {"pvc": {}},
            {"pvc": {"name": ""}},
            {"pvc": {"name": "loras"}, "maxRank": 0},
            {"pvc": {"name": "loras"}, "refreshIntervalSeconds": 0},
            {"pvc": {"name": "loras", "create": True}},
        ],
    )
    def test_rejects(self, adapters: dict[str, Any]) -> None:
        with pytest.raises(ValidationError):
            make_spec(adapters=adapters)
        # The API server turns the same objects away, before the operator sees them.
        body = {
            "apiVersion": "apps.nvidia.com/v1alpha1",
            "kind": "NIMService",
            "metadata": {"name": "llama"},
            "spec": {**make_spec().to_k8s(), "adapters": adapters},
        }
        defaulted = apply_defaults(openapi_root(), body)
        assert schema_errors(openapi_root(), defaulted, strict=True)

    def test_the_crd_accepts_what_the_model_accepts(self) -> None:
        body = {
            "apiVersion": "apps.nvidia.com/v1alpha1",
            "kind": "NIMService",
            "metadata": {"name": "llama"},
            "spec": make_spec(adapters={**ADAPTERS, "maxRank": 64}).to_k8s(),
        }
        defaulted = apply_defaults(openapi_root(), body)
        assert schema_errors(openapi_root(), defaulted, strict=True) == []
