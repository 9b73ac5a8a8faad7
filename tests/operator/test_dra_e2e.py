"""End-to-end: NVIDIA's draResources with the real operator process (on kmock, or a real cluster
with KUBECONFIG).

The emulator starts without resource.k8s.io/v1, like a cluster that has no DRA: a NIMService
asking for claims is not deployed and says DRAUnavailable. The first test then serves the API
(as a cluster upgrade would) and sees the NIMService deployed without being touched. The second
applies a NIMService written as NVIDIA's samples write one (only apiVersion changed) and follows
the generated ResourceClaimTemplate through an edit and through switching DRA off. On a real
cluster the tests use the cluster as it is: the first needs one without DRA, the second one
with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_operator_e2e import DEPLOYMENTS, E2E, condition
from tests.support.dra_api import serve_dra, stop_serving_dra
from tests.support.kmock_cluster import EmulatedCluster
from tests.support.kmock_harness import PodState

TEMPLATES = ResourceKind("resource.k8s.io/v1", "resourceclaimtemplates")
CLAIMS = ResourceKind("resource.k8s.io/v1", "resourceclaims")
PODS = ResourceKind("v1", "pods")
# What Kubernetes' resourceclaim controller writes on a claim it makes from a pod's template.
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"

# config/samples/nim/serving/advanced/dra of NVIDIA's operator, combined: a template the
# operator creates from selectors, and one made beforehand of which the server takes one request.
NVIDIA_DRA = """
apiVersion: apps.nvidia.com/v1alpha1
kind: NIMService
metadata:
  name: llama-dra
spec:
  image:
    repository: registry.k8s.io/pause
    tag: "3.10"
  replicas: 1
  livenessProbe: {enabled: false}
  readinessProbe: {enabled: false}
  startupProbe: {enabled: false}
  draResources:
  - claimCreationSpec:
      devices:
      - name: gpu
        deviceClassName: gpu.nvidia.com
        driverName: gpu.nvidia.com
        attributeSelectors:
        - key: architecture
          op: Equal
          value:
            stringValue: Ampere
        capacitySelectors:
        - key: memory
          op: GreaterThanOrEqual
          value: 40Gi
  - resourceClaimTemplateName: rdma-nics
    requests: [nic]
  expose:
    service:
      type: ClusterIP
      port: 8000
"""


@pytest.fixture
def turn_dra_on(emulated: EmulatedCluster | None) -> Iterator[Callable[[], None]]:
    """Serve resource.k8s.io/v1 on the emulator from now until the test ends."""
    served = False

    def turn_on() -> None:
        nonlocal served
        assert emulated is not None
        emulated.inspect(serve_dra)
        served = True

    yield turn_on
    if served and emulated is not None:
        emulated.inspect(stop_serving_dra)


async def dra_served(api: KubeClient) -> bool:
    return await api.has_resource("resource.k8s.io/v1", "resourceclaimtemplates")


async def templates_of(e2e: E2E, name: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/name=nim-service"
    return await e2e.api.list(TEMPLATES, e2e.namespace, label_selector=selector)


def pod_of(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


async def test_without_dra_nothing_is_deployed_until_the_cluster_serves_it(
    e2e: E2E, emulated: EmulatedCluster | None, turn_dra_on: Callable[[], None]
) -> None:
    if await dra_served(e2e.api):
        pytest.skip("this cluster serves resource.k8s.io/v1 (the test needs one without DRA)")
    spec = yaml.safe_load(NVIDIA_DRA)["spec"]
    await e2e.create("llama-dra", spec)
    nim = await e2e.status_where(
        "llama-dra",
        lambda o: condition(o, "Failed").get("reason") == "DRAUnavailable",
        "Failed DRAUnavailable",
    )
    assert condition(nim, "Failed")["status"] == "True"
    assert "resource.k8s.io/v1" in condition(nim, "Failed")["message"]
    assert nim["status"]["state"] == "Failed"

    async def nothing_deployed() -> bool:
        return await e2e.get(DEPLOYMENTS, "llama-dra") is None

    await e2e.stays(nothing_deployed, "no Deployment without DRA", seconds=3)
    if emulated is None:
        return  # a real cluster cannot be given DRA by a test
    turn_dra_on()
    # Nothing but the timer and discovery (capability TTL 2 s) notices: level-triggered.
    deployment = await e2e.child(DEPLOYMENTS, "llama-dra")
    assert [c["name"] for c in pod_of(deployment)["resourceClaims"]] == ["dra-0", "dra-1"]
    await e2e.status_where(
        "llama-dra", lambda o: condition(o, "Failed").get("status") == "False", "Failed cleared"
    )


async def dra_on_or_skip(
    e2e: E2E, emulated: EmulatedCluster | None, turn_dra_on: Callable[[], None]
) -> None:
    """DRA served: turned on in the emulator, else skip on a real cluster without it."""
    if emulated is not None:
        turn_dra_on()
    elif not await dra_served(e2e.api):
        pytest.skip("this cluster does not serve resource.k8s.io/v1 (DRA)")


async def test_an_nvidia_shaped_nimservice_with_dra_resources(
    e2e: E2E, emulated: EmulatedCluster | None, turn_dra_on: Callable[[], None]
) -> None:
    await dra_on_or_skip(e2e, emulated, turn_dra_on)
    body = yaml.safe_load(NVIDIA_DRA)
    body["apiVersion"] = "nimstack.dev/v1alpha1"  # the only change NVIDIA's YAML needs
    nim = await e2e.create("llama-dra", body["spec"])

    (template,) = await e2e.until(lambda: templates_of(e2e, "llama-dra"), "a generated template")
    name = template["metadata"]["name"]
    assert name.startswith("llama-dra-claimtemplate-0-")
    (owner,) = template["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "NIMService",
        nim["metadata"]["uid"],
        True,
    )
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert request["name"] == "gpu"
    assert request["exactly"]["deviceClassName"] == "gpu.nvidia.com"
    assert request["exactly"]["count"] == 1
    assert [s["cel"]["expression"] for s in request["exactly"]["selectors"]] == [
        'device.driver == "gpu.nvidia.com"',
        'device.attributes["gpu.nvidia.com"].architecture == "Ampere"',
        'device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("40Gi")) >= 0',
    ]

    deployment = await e2e.child(DEPLOYMENTS, "llama-dra")
    pod = pod_of(deployment)
    assert pod["resourceClaims"] == [
        {"name": "dra-0", "resourceClaimTemplateName": name},
        {"name": "dra-1", "resourceClaimTemplateName": "rdma-nics"},
    ]
    server = pod["containers"][0]
    # The devices come from the claims: no device-plugin GPU on top of them.
    assert server["resources"] == {
        "claims": [{"name": "dra-0"}, {"name": "dra-1", "request": "nic"}]
    }

    # An edit makes a new template (a template's spec is immutable); the old one goes.
    devices = body["spec"]["draResources"][0]["claimCreationSpec"]["devices"]
    devices[0]["count"] = 2
    await e2e.patch_spec("llama-dra", {"draResources": body["spec"]["draResources"]})

    async def replaced() -> dict[str, Any] | None:
        found = await templates_of(e2e, "llama-dra")
        names = [t["metadata"]["name"] for t in found]
        return found[0] if len(found) == 1 and names != [name] else None

    new = await e2e.until(replaced, "a new template replacing the old one")
    assert new["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 2

    async def pods_use_it() -> bool:
        live = await e2e.get(DEPLOYMENTS, "llama-dra")
        claims = (pod_of(live).get("resourceClaims") if live else None) or [{}]
        return bool(claims[0].get("resourceClaimTemplateName") == new["metadata"]["name"])

    await e2e.until(pods_use_it, "the Deployment on the new template")

    # Switched off: the template is deleted and the pods claim nothing.
    await e2e.patch_spec("llama-dra", {"draResources": None})

    async def no_templates() -> bool:
        return await templates_of(e2e, "llama-dra") == []

    await e2e.until(no_templates, "the generated template deleted")

    async def no_claims() -> bool:
        live = await e2e.get(DEPLOYMENTS, "llama-dra")
        return live is not None and "resourceClaims" not in pod_of(live)

    await e2e.until(no_claims, "a pod spec without claims")


def dra_statuses(nim: dict[str, Any]) -> list[dict[str, Any]] | None:
    statuses: list[dict[str, Any]] | None = (nim.get("status") or {}).get("draResourceStatuses")
    return statuses


async def make_claim(
    e2e: E2E,
    name: str,
    *,
    pod: dict[str, Any] | None = None,
    pod_claim: str = "",
    labels: dict[str, str] | None = None,
    reserved: bool = False,
) -> None:
    """A ResourceClaim; with `pod`, one the resourceclaim controller made for it (owned by the
    pod, annotated with its pod claim), allocated by the scheduler unless it stays pending."""
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if pod is not None:
        pod_meta = pod["metadata"]
        meta["annotations"] = {POD_CLAIM_ANNOTATION: pod_claim}
        meta["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod_meta["name"],
                "uid": pod_meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    request = {"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}
    body = {"metadata": meta, "spec": {"devices": {"requests": [request]}}}
    await e2e.api.create(CLAIMS, e2e.namespace, body)
    if pod is None or reserved:
        result = {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "node-a", "device": name}
        status: dict[str, Any] = {"allocation": {"devices": {"results": [result]}}}
        if reserved and pod is not None:
            user = {
                "resource": "pods",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            }
            status["reservedFor"] = [user]
        await e2e.api.merge_patch(
            CLAIMS, e2e.namespace, name, {"status": status}, subresource="status"
        )


async def test_the_status_reports_the_claims_of_each_dra_resource(
    e2e: E2E, emulated: EmulatedCluster | None, turn_dra_on: Callable[[], None]
) -> None:
    """status.draResourceStatuses follows the claims as Kubernetes makes and allocates them.

    The test plays Kubernetes' resourceclaim controller and scheduler (a claim per pod and
    template, then its allocation), so it needs the emulator: on a real cluster they would
    need DRA devices to allocate.
    """
    if emulated is None:
        pytest.skip("plays the resourceclaim controller and the scheduler (kmock only)")
    turn_dra_on()
    spec = yaml.safe_load(NVIDIA_DRA)["spec"]
    spec["draResources"].append({"resourceClaimName": "shared-gpu"})
    await e2e.create("llama-dra", spec)
    (template,) = await e2e.until(lambda: templates_of(e2e, "llama-dra"), "a generated template")
    generated = template["metadata"]["name"]

    # Before any pod: the templates have made no claim, and the named claim does not exist.
    before_pods = [
        {"name": "dra-0", "resourceClaimTemplateStatus": {"name": generated}},
        {"name": "dra-1", "resourceClaimTemplateStatus": {"name": "rdma-nics"}},
        {"name": "dra-2", "resourceClaimStatus": {"name": "shared-gpu", "state": "missing"}},
    ]
    await e2e.status_where(
        "llama-dra", lambda o: dra_statuses(o) == before_pods, "the entries, without claims"
    )

    await e2e.driver.pods_become(e2e.namespace, "llama-dra", PodState.READY)
    selector = "app.kubernetes.io/instance=llama-dra,app.kubernetes.io/name=nim-service"
    (pod,) = await e2e.api.list(PODS, e2e.namespace, label_selector=selector)
    pod_name = pod["metadata"]["name"]
    # A claim carries the labels of the template it was made from (ours: the instance labels).
    made_labels = template["spec"]["metadata"]["labels"]
    await make_claim(
        e2e, f"{pod_name}-dra-0-x1", pod=pod, pod_claim="dra-0", labels=made_labels, reserved=True
    )
    await make_claim(e2e, f"{pod_name}-dra-1-x2", pod=pod, pod_claim="dra-1")
    await make_claim(e2e, "shared-gpu")  # the user's, allocated before the pod uses it
    expected = [
        {
            "name": "dra-0",
            "resourceClaimTemplateStatus": {
                "name": generated,
                "resourceClaimStatuses": [
                    {"name": f"{pod_name}-dra-0-x1", "state": "allocated,reserved"}
                ],
            },
        },
        {
            "name": "dra-1",
            "resourceClaimTemplateStatus": {
                "name": "rdma-nics",
                "resourceClaimStatuses": [{"name": f"{pod_name}-dra-1-x2", "state": "pending"}],
            },
        },
        {"name": "dra-2", "resourceClaimStatus": {"name": "shared-gpu", "state": "allocated"}},
    ]
    # No event tells the operator about claims: its timer ticks read them.
    await e2e.status_where(
        "llama-dra", lambda o: dra_statuses(o) == expected, "the claims and their states"
    )

    # Nothing changes from here: timer ticks read the claims but write no status.
    def status_writes() -> int:
        return emulated.inspect(
            lambda emulator: sum(
                request.subresource == "status"
                and request.name == "llama-dra"
                and request.namespace == e2e.namespace
                for request in emulator._requests
            )
        )

    written = status_writes()

    async def no_new_writes() -> bool:
        return status_writes() == written

    await e2e.stays(no_new_writes, "no status write while nothing changes", seconds=5)

    # draResources removed: the field goes with them.
    await e2e.patch_spec("llama-dra", {"draResources": None})
    await e2e.status_where(
        "llama-dra", lambda o: "draResourceStatuses" not in o["status"], "the field removed"
    )


# What NVIDIA's CRD accepts and ours once refused: several requests of one claim, a selector
# without a value, a key that is no CEL name.
NVIDIA_LENIENT = """
draResources:
- claimCreationSpec:
    devices:
    - name: gpu
      attributeSelectors:
      - key: mig
        op: Equal
      - key: example.com/product-name
        value:
          stringValue: H100
- resourceClaimTemplateName: rdma-nics
  requests: [nic, gpu]
"""


async def test_what_nvidia_accepts_is_accepted_and_rendered(
    e2e: E2E, emulated: EmulatedCluster | None, turn_dra_on: Callable[[], None]
) -> None:
    await dra_on_or_skip(e2e, emulated, turn_dra_on)
    spec = yaml.safe_load(NVIDIA_DRA)["spec"]
    spec["draResources"] = yaml.safe_load(NVIDIA_LENIENT)["draResources"]
    await e2e.create("llama-dra", spec)

    (template,) = await e2e.until(lambda: templates_of(e2e, "llama-dra"), "a generated template")
    (request,) = template["spec"]["spec"]["devices"]["requests"]
    assert [s["cel"]["expression"] for s in request["exactly"]["selectors"]] == [
        'device.driver == "gpu.nvidia.com"',
        '"mig" in device.attributes["gpu.nvidia.com"]',
        'device.attributes["example.com"]["product-name"] == "H100"',
    ]
    deployment = await e2e.child(DEPLOYMENTS, "llama-dra")
    # Two requests of dra-1: the server takes that claim whole (one entry per claim name).
    assert pod_of(deployment)["containers"][0]["resources"] == {
        "claims": [{"name": "dra-0"}, {"name": "dra-1"}]
    }

    # A container claim no pod has: accepted (as NVIDIA's CRD does), then Failed with the reason.
    await e2e.patch_spec("llama-dra", {"resources": {"claims": [{"name": "gpus"}]}})
    nim = await e2e.status_where(
        "llama-dra",
        lambda o: condition(o, "Failed").get("reason") == "InvalidSpec",
        "Failed InvalidSpec",
    )
    assert (
        "resources.claims names the pod claims of draResources"
        in (condition(nim, "Failed")["message"])
    )
