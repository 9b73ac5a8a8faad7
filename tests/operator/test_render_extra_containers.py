"""spec.initContainers and spec.sidecarContainers (NVIDIA's NIMContainerSpec) in the pod."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from tests.support.pod_security import restricted_violations

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
# As NVIDIA's field reference writes them.
INIT = [
    {
        "name": "init-setup",
        "image": {"repository": "busybox", "tag": "1.36", "pullPolicy": "Always"},
        "command": ["sh", "-c"],
        "args": ["echo preparing"],
        "env": [{"name": "STAGE", "value": "init"}],
        "workingDir": "/workspace",
    },
    {"name": "model-loader", "image": {"repository": "alpine", "tag": "3.20"}},
]
SIDECARS = [
    {
        "name": "log-shipper",
        "image": {
            "repository": "fluent/fluent-bit",
            "tag": "3.1",
            "pullPolicy": "IfNotPresent",
            "pullSecrets": ["dockerhub", "ngc-secret"],
        },
        "args": ["-c", "/fluent-bit/etc/fluent-bit.conf"],
    }
]
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def make_spec(**fields: Any) -> NIMServiceSpec:
    body = {
        "image": {
            "repository": "nvcr.io/nim/meta/llama-3.1-8b-instruct",
            "tag": "1.3.3",
            "pullPolicy": "IfNotPresent",
            "pullSecrets": ["ngc-secret"],
        },
        "authSecret": "ngc-api",
    }
    return NIMServiceSpec.model_validate({**body, **fields})


def pod(**fields: Any) -> dict[str, Any]:
    deployment = render_deployment(OWNER, make_spec(**fields), replicas=1)
    kubernetes_validate.validate(deployment, "1.31", strict=True)
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


class TestExtraContainers:
    def test_none_by_default(self) -> None:
        pod_spec = pod()
        assert "initContainers" not in pod_spec
        assert [c["name"] for c in pod_spec["containers"]] == ["nim"]

    def test_init_containers_in_order_with_every_field(self) -> None:
        first, second = pod(initContainers=INIT)["initContainers"]
        assert first == {
            "name": "init-setup",
            "image": "busybox:1.36",
            "imagePullPolicy": "Always",
            "command": ["sh", "-c"],
            "args": ["echo preparing"],
            "env": [{"name": "STAGE", "value": "init"}],
            "workingDir": "/workspace",
            "volumeMounts": [{"name": "model-store", "mountPath": "/model-store"}],
            "securityContext": RESTRICTED,
        }
        assert second["name"] == "model-loader"
        assert second["image"] == "alpine:3.20"
        # NVIDIA: an unset pullPolicy is the server image's.
        assert second["imagePullPolicy"] == "IfNotPresent"

    def test_sidecars_after_the_server(self) -> None:
        pod_spec = pod(sidecarContainers=SIDECARS)
        assert [c["name"] for c in pod_spec["containers"]] == ["nim", "log-shipper"]
        sidecar = pod_spec["containers"][1]
        assert sidecar["image"] == "fluent/fluent-bit:3.1"
        assert sidecar["securityContext"] == RESTRICTED
        assert pod_spec["imagePullSecrets"] == [{"name": "ngc-secret"}, {"name": "dockerhub"}]

    def test_server_credentials_are_not_copied(self) -> None:
        pod_spec = pod(initContainers=INIT, sidecarContainers=SIDECARS)
        for container in pod_spec["initContainers"] + pod_spec["containers"][1:]:
            names = {entry["name"] for entry in container.get("env", [])}
            assert not names & {"NGC_API_KEY", "HF_TOKEN", "NIM_API_KEY"}

    def test_model_store_mount_follows_the_server(self) -> None:
        storage = {"pvc": {"name": "cache", "subPath": "llama"}, "readOnly": True}
        (init,) = pod(initContainers=INIT[:1], storage=storage)["initContainers"]
        assert init["volumeMounts"] == [
            {
                "name": "model-store",
                "mountPath": "/model-store",
                "readOnly": True,
                "subPath": "llama",
            }
        ]

    def test_pod_stays_restricted(self) -> None:
        assert restricted_violations(pod(initContainers=INIT, sidecarContainers=SIDECARS)) == []

    @pytest.mark.parametrize(
        "fields",
        [
            {"initContainers": [{**INIT[1], "name": "nim"}]},
            {"sidecarContainers": [{**SIDECARS[0], "name": "nim"}]},
            {
                "initContainers": INIT[1:],
                "sidecarContainers": [{**SIDECARS[0], "name": "model-loader"}],
            },
            {"initContainers": [INIT[1], INIT[1]]},
        ],
    )
    def test_names_unique_and_not_the_servers(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValidationError, match="need names unique across both lists"):
            make_spec(**fields)

    def test_literal_credentials_refused_in_extra_containers_too(self) -> None:
        env = [{"name": "HF_TOKEN", "value": "hf_x"}]
        with pytest.raises(ValidationError, match="must come from a Secret"):
            make_spec(sidecarContainers=[{**SIDECARS[0], "env": env}])
