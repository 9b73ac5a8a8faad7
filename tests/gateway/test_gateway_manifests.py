"""manifests/gateway: the kustomize component builds, validates, applies, and matches the image.

Built as a user adds it (tests/support/gateway_install), with its optional Ingress and HTTPRoute
components, then created object by object on the strict API-server emulator, which refuses what
kube-apiserver would refuse. That its RBAC is exactly what the gateway uses is
test_gateway_rbac_usage.py's job.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest

from nim_gateway.settings import GatewaySettings
from tests.support.gateway_api import GATEWAY_API_CRDS
from tests.support.gateway_install import (
    GATEWAY_ACCOUNT,
    GATEWAY_NAMESPACE,
    build_with_gateway,
    gateway_container,
    manifest_env,
)
from tests.support.kmock_cluster import EmulatedCluster, project_crds

REPO = Path(__file__).resolve().parents[2]
OPTIONAL = ("gateway/ingress", "gateway/httproute")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return build_with_gateway(())


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return build_with_gateway()


def added(built: list[dict[str, Any]], base: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in built if doc not in base]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (match,) = [doc for doc in docs if doc["kind"] == kind]
    return match


def test_the_component_adds_the_gateway_and_leaves_the_operator_alone(
    built: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    assert all(doc in built for doc in base)
    ours = added(built, base)
    assert sorted(doc["kind"] for doc in ours) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for doc in ours:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "nim-gateway"
        assert labels["app.kubernetes.io/part-of"] == "nimstack"
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == GATEWAY_NAMESPACE


def test_every_object_validates(built: list[dict[str, Any]]) -> None:
    for doc in build_with_gateway(("gateway", "gateway/ingress")):
        kubernetes_validate.validate(doc, "1.31", strict=True)


def test_the_image_is_the_one_build_images_tags() -> None:
    """scripts/build-images.sh tags nimstack/nim-gateway:<pyproject version>."""
    script = (REPO / "scripts" / "build-images.sh").read_text()
    (tag,) = re.findall(r'gateway\) dockerfile=gateway/Dockerfile; tag="([^"]+)"', script)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    container = gateway_container(build_with_gateway())
    assert container["image"] == tag.replace("$version", version)


def test_the_container_runs_the_images_command_as_its_user(built: list[dict[str, Any]]) -> None:
    dockerfile = (REPO / "gateway" / "Dockerfile").read_text().splitlines()
    entrypoint = next(line for line in dockerfile if line.startswith("ENTRYPOINT "))
    assert json.loads(entrypoint.split(maxsplit=1)[1]) == ["nim-gateway"]
    container = gateway_container(built)
    assert "command" not in container
    assert "args" not in container
    pod = one(added(built, build_with_gateway(())), "Deployment")["spec"]["template"]["spec"]
    user = pod["securityContext"]["runAsUser"]
    assert f"USER {user}:{pod['securityContext']['runAsGroup']}" in dockerfile


def test_restricted_security(built: list[dict[str, Any]], base: list[dict[str, Any]]) -> None:
    pod = one(added(built, base), "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == GATEWAY_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = gateway_container(built)["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "limits" in gateway_container(built)["resources"]


def test_probes_and_the_service_reach_the_port_the_gateway_listens_on(
    built: list[dict[str, Any]], base: list[dict[str, Any]]
) -> None:
    container = gateway_container(built)
    env = manifest_env(container, pod="nim-gateway-0")
    prefix = "NIM_GATEWAY_"
    settings = GatewaySettings.model_validate(
        {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    )
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"api": settings.port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "api"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "api"}
    service = one(added(built, base), "Service")
    assert service["spec"]["ports"] == [
        {"name": "api", "port": 8000, "targetPort": "api", "protocol": "TCP"}
    ]
    selector = service["spec"]["selector"]
    labels = one(added(built, base), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_the_environment_is_settings_the_gateway_knows(built: list[dict[str, Any]]) -> None:
    """A misspelt NIM_GATEWAY_* variable would be ignored silently: every one is a setting."""
    env = manifest_env(gateway_container(built), pod="nim-gateway-0")
    ours = {k for k in env if k.startswith("NIM_GATEWAY_")}
    assert ours == {"NIM_GATEWAY_NAMESPACES", "NIM_GATEWAY_API_KEY_SECRET"}
    for name in ours:
        assert name.removeprefix("NIM_GATEWAY_").lower() in GatewaySettings.model_fields
    assert env["NIM_GATEWAY_API_KEY_SECRET"] == f"{GATEWAY_NAMESPACE}/nim-gateway-keys"
    (role,) = [d for d in built if d["metadata"]["name"] == "nim-gateway-keys" and "rules" in d]
    assert role["metadata"]["namespace"] == GATEWAY_NAMESPACE
    assert role["rules"][0]["resourceNames"] == ["nim-gateway-keys"]


def test_the_optional_routes_send_v1_to_the_service(base: list[dict[str, Any]]) -> None:
    built = build_with_gateway(("gateway", *OPTIONAL))
    ingress = one(built, "Ingress")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/v1"
    assert path["backend"]["service"] == {"name": "nim-gateway", "port": {"name": "api"}}
    route = one(built, "HTTPRoute")
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "nim-gateway", "port": 8000}]


def test_the_gateway_only_reads_unless_scale_from_zero_is_added(
    base: list[dict[str, Any]],
) -> None:
    """Writes (scale-from-zero's) come only with their own component, in a role of their own;
    tests/gateway/test_scale_from_zero.py checks that role against the gateway's requests."""
    reads = {"get", "list", "watch"}
    for doc in added(build_with_gateway(), base):
        for rule in doc.get("rules", []):
            assert set(rule["verbs"]) <= reads, rule
    with_writes = added(build_with_gateway(("gateway", "gateway/scale-from-zero")), base)
    writers = {
        doc["metadata"]["name"]
        for doc in with_writes
        if any(set(rule["verbs"]) - reads for rule in doc.get("rules", []))
    }
    assert writers == {"nim-gateway-scale-from-zero"}


ORDER = ("Namespace", "ServiceAccount", "ClusterRole", "Role")


def _path(doc: dict[str, Any]) -> str:
    """The collection a `kubectl apply` of `doc` creates it in."""
    group_version = doc["apiVersion"]
    prefix = f"/apis/{group_version}" if "/" in group_version else "/api/v1"
    plural = {"Ingress": "ingresses"}.get(doc["kind"], doc["kind"].lower() + "s")
    namespace = doc["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


async def _apply_all(url: str, docs: list[dict[str, Any]]) -> None:
    # kubectl validates strictly by default: an unknown field is a 400, not a warning.
    async with httpx.AsyncClient(base_url=url, params={"fieldValidation": "Strict"}) as kube:
        for doc in docs:
            response = await kube.post(_path(doc), json=doc)
            assert response.status_code == 201, (doc["kind"], response.text)


def test_everything_applies_to_the_strict_emulator() -> None:
    """The install with every optional component, created object by object as kubectl would.

    The CRDs are the emulator's from the start (they are manifests/' own, checked by
    tests/operator/test_manifests_install.py); an unknown field is refused, as a typo would be.
    """
    built = build_with_gateway(("gateway", *OPTIONAL))
    docs = [doc for doc in built if doc["kind"] != "CustomResourceDefinition"]
    docs.sort(key=lambda d: ORDER.index(d["kind"]) if d["kind"] in ORDER else len(ORDER))
    typo: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "typo"},
    }
    typo["spec"] = copy.deepcopy(one(added(built, build_with_gateway(())), "Deployment")["spec"])
    typo["metadata"]["namespace"] = GATEWAY_NAMESPACE
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with EmulatedCluster(
        [*project_crds(), *GATEWAY_API_CRDS], deliberate=lambda r: "readinesProbe" in r.message
    ) as cluster:
        asyncio.run(_apply_all(cluster.url, docs))
        with pytest.raises(AssertionError, match="readinesProbe"):
            asyncio.run(_apply_all(cluster.url, [typo]))
