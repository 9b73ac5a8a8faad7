"""End-to-end: expose.router.eppConfig, with the real operator process (on kmock, or a real
cluster with KUBECONFIG).

On kmock the test starts without the InferencePool CRD: the NIMService says
InferencePoolAPIMissing and its server runs anyway, with no picker. Once the CRD is installed,
the InferencePool and the endpoint picker's children appear (the strict emulator checks each
built-in one against Kubernetes' own types, and that the operator was refused nothing), follow
the spec from inline config to configMapRef, and go when eppConfig is removed. The server's
readiness is still what the status reports: the picker's Deployment is not the server's.
"""

from __future__ import annotations

from typing import Any

import pytest

from nim_operator.kube import ResourceKind
from tests.operator.test_exposure_e2e import exposure_waits_for_an_api
from tests.operator.test_operator_e2e import DEPLOYMENTS, E2E, SERVICES, condition, cpu_spec
from tests.support.inference_pool import INFERENCE_POOL_CRD
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import PodState, install_crds

INFERENCE_POOLS = ResourceKind("inference.networking.k8s.io/v1", "inferencepools")
SERVICE_ACCOUNTS = ResourceKind("v1", "serviceaccounts")
CONFIG_MAPS = ResourceKind("v1", "configmaps")
ROLES = ResourceKind("rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDINGS = ResourceKind("rbac.authorization.k8s.io/v1", "rolebindings")
EPP = {
    "containerSpec": {
        "name": "epp",
        "image": {
            "repository": "registry.k8s.io/gateway-api-inference-extension/epp",
            "tag": "v1.3.1",
        },
    },
    "config": {
        "plugins": [{"type": "kv-cache-utilization-scorer"}],
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": "kv-cache-utilization-scorer"}]}
        ],
    },
}
PICKER_CHILDREN = (
    (SERVICE_ACCOUNTS, "llm-epp"),
    (ROLES, "llm-epp"),
    (ROLE_BINDINGS, "llm-epp"),
    (CONFIG_MAPS, "llm-epp-config"),
    (SERVICES, "llm-epp"),
    (DEPLOYMENTS, "llm-epp"),
)


async def test_the_picker_waits_for_the_inference_pool_api_then_follows_the_spec(
    e2e: E2E, emulated: EmulatedCluster | None
) -> None:
    served = await e2e.api.has_resource("inference.networking.k8s.io/v1", "inferencepools")
    if not served and emulated is None:
        pytest.skip("this cluster has no InferencePool CRD (the test installs none on a real one)")
    await e2e.create("llm", cpu_spec(expose={"router": {"eppConfig": EPP}}))
    if not served:
        await exposure_waits_for_an_api(e2e, "InferencePoolAPIMissing")
        assert await e2e.get(DEPLOYMENTS, "llm-epp") is None
        await install_crds(e2e.api, [INFERENCE_POOL_CRD], field_manager="nimstack-e2e")

    pool = await e2e.child(INFERENCE_POOLS, "llm")
    children = {(kind.plural, name): await e2e.child(kind, name) for kind, name in PICKER_CHILDREN}
    # The Gateway asks the picker about every request: not exposed before it is ready (a real
    # cluster's picker may be ready by the time this reads).
    nim = await e2e.status_where(
        "llm",
        lambda o: condition(o, "Exposed").get("reason") in {"EndpointPickerNotReady", "Applied"},
        "Exposed EndpointPickerNotReady",
    )
    assert "InferencePool llm with endpoint picker llm-epp" in condition(nim, "Exposed")["message"]
    if e2e.driver.emulated:  # pods exist only once the test says so
        assert condition(nim, "Exposed")["status"] == "False"
        assert condition(nim, "Exposed")["reason"] == "EndpointPickerNotReady"
    uid = nim["metadata"]["uid"]
    for child in (pool, *children.values()):
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
    assert pool["spec"]["endpointPickerRef"]["name"] == "llm-epp"
    picker_pod = children["deployments", "llm-epp"]["spec"]["template"]
    assert picker_pod["spec"]["serviceAccountName"] == "llm-epp"
    server = await e2e.get(DEPLOYMENTS, "llm")
    assert server is not None
    server_labels = server["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= server_labels.items()

    # Ready is the server's, whatever the picker's state; Exposed follows the picker.
    await e2e.driver.pods_become(e2e.namespace, "llm", PodState.READY)
    await e2e.status_where(
        "llm", lambda o: condition(o, "Ready").get("status") == "True", "Ready from the server"
    )
    await e2e.driver.pods_become(e2e.namespace, "llm-epp", PodState.READY)
    await e2e.status_where(
        "llm", lambda o: condition(o, "Exposed").get("reason") == "Applied", "Exposed Applied"
    )

    # Inline config -> the user's ConfigMap: the operator's ConfigMap goes.
    ref = {"name": "my-epp-config", "key": "epp.yaml"}
    await e2e.patch_spec(
        "llm", {"expose": {"router": {"eppConfig": {"config": None, "configMapRef": ref}}}}
    )
    await e2e.deleted(CONFIG_MAPS, "llm-epp-config")

    async def mounts_the_users_config_map() -> bool:
        live = await e2e.get(DEPLOYMENTS, "llm-epp")
        volumes: list[dict[str, Any]] = (live or {}).get("spec", {}).get("template", {}).get(
            "spec", {}
        ).get("volumes") or []
        return any((v.get("configMap") or {}).get("name") == "my-epp-config" for v in volumes)

    await e2e.until(mounts_the_users_config_map, "the picker mounting my-epp-config")

    await e2e.patch_spec("llm", {"expose": {"router": None}})
    await e2e.deleted(INFERENCE_POOLS, "llm")
    for kind, name in PICKER_CHILDREN:
        await e2e.deleted(kind, name)
    assert await e2e.get(DEPLOYMENTS, "llm") is not None
    assert await e2e.get(SERVICE_ACCOUNTS, "llm") is not None
