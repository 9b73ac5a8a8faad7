"""The gateway's install as a user builds it: manifests/ plus the manifests/gateway component.

kustomize refuses an overlay inside the base it builds on, so the overlay is written where a
user's would be, outside manifests/, and names the base and the components by relative paths.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GATEWAY_ACCOUNT",
    "GATEWAY_NAMESPACE",
    "MANIFESTS",
    "build_with_gateway",
    "gateway_container",
    "manifest_env",
]

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
GATEWAY_NAMESPACE = "nimstack-system"
GATEWAY_ACCOUNT = "nim-gateway"


def build_with_gateway(
    components: Iterable[str] = ("gateway",),
    *,
    patches: Iterable[str] = (),
    files: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay: resources manifests/ and `files` (name -> YAML, written
    next to the overlay), `components` under manifests/, then the strategic-merge `patches`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        import pytest

        pytest.skip("kubectl is not installed")
    with tempfile.TemporaryDirectory() as directory:
        base = os.path.relpath(MANIFESTS, directory)
        overlay: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [base],
            "components": [f"{base}/{component}" for component in components],
        }
        for name, text in (files or {}).items():
            Path(directory, name).write_text(text)
            overlay["resources"].append(name)
        if patches:
            overlay["patches"] = [{"patch": patch} for patch in patches]
        Path(directory, "kustomization.yaml").write_text(yaml.safe_dump(overlay))
        result = subprocess.run(
            [kubectl, "kustomize", directory],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def gateway_container(built: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        doc
        for doc in built
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "nim-gateway"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def manifest_env(container: Mapping[str, Any], *, pod: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: the downward API's values for `pod`
    in the gateway's namespace, and `$(VAR)` references to earlier variables expanded."""
    downward = {"metadata.name": pod, "metadata.namespace": GATEWAY_NAMESPACE}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item["value"]))
            env[item["name"]] = value
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env
