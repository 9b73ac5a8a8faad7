"""The operator's RBAC, cross-checked against the API calls the operator really makes.

The emulator enforces what `manifests/rbac.yaml` binds to the operator's ServiceAccount (the
ClusterRole, and the Role for its Lease in its own namespace) for the operator's bearer token,
as a real API server would (403 for anything not granted), and records every grant the
operator's requests used. The real operator then goes through a scenario touching every
feature: credentials and API-key Secrets, a created PVC that is later dropped, a ServiceMonitor,
a PodDisruptionBudget, an HPA switched on and off, a renamed Service, an Ingress and Gateway API
routes switched on and off, pods becoming ready, a missing Secret, deletion. It does so twice,
as both supported deployments run it: the manifest's
`nim-operator run -m nim_operator.handlers --all-namespaces` with the manifest's environment
(leader election on: the Lease is created, read, renewed and released), and
`python -m nim_operator` watching namespace globs (NIM_OPERATOR_NAMESPACES), which also follows
Namespaces, and takes over the Lease the first run released.

Then: nothing was refused, every permission used is granted, and every permission granted was
used. A feature that needs a new permission must add it to the roles *and* a step here.
"""

from __future__ import annotations

import base64
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
import pytest_asyncio
import yaml

from nim_operator.kube import KubeClient, ResourceKind
from tests.operator.test_nimcache_e2e import download_ends
from tests.operator.test_operator_e2e import condition, cpu_spec
from tests.support.compute_domain import COMPUTE_DOMAIN_CRD
from tests.support.dra_api import serve_dra
from tests.support.gateway_api import GATEWAY_API_CRDS
from tests.support.inference_pool import INFERENCE_POOL_CRD
from tests.support.kmock_cluster import EmulatedCluster, project_crds
from tests.support.kmock_harness import (
    EmulatedControllers,
    OperatorProcess,
    PodState,
    connection_from_kubeconfig,
    eventually,
)
from tests.support.kmock_rbac import Permission, RbacAuthorizer, bound_permissions
from tests.support.leaderworkerset import LEADER_WORKER_SET_CRD

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "manifests" / "rbac.yaml"
OPERATOR_DEPLOYMENT = REPO / "manifests" / "deployment.yaml"
OPERATOR_TOKEN = "token-of-the-nim-operator-service-account"
OPERATOR_NAMESPACE = "nimstack-system"
OPERATOR_ACCOUNT = "nim-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
CANARY = f"canary-{secrets.token_hex(6)}"

NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
NIMCACHES = ResourceKind("nimstack.dev/v1alpha1", "nimcaches")
JOBS = ResourceKind("batch/v1", "jobs")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
SECRETS = ResourceKind("v1", "secrets")
PVCS = ResourceKind("v1", "persistentvolumeclaims")
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
HPAS = ResourceKind("autoscaling/v2", "horizontalpodautoscalers")
PDBS = ResourceKind("policy/v1", "poddisruptionbudgets")
SERVICE_MONITORS = ResourceKind("monitoring.coreos.com/v1", "servicemonitors")
SERVICES = ResourceKind("v1", "services")
INGRESSES = ResourceKind("networking.k8s.io/v1", "ingresses")
HTTP_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "httproutes")
GRPC_ROUTES = ResourceKind("gateway.networking.k8s.io/v1", "grpcroutes")
CLAIM_TEMPLATES = ResourceKind("resource.k8s.io/v1", "resourceclaimtemplates")
LEADER_WORKER_SETS = ResourceKind("leaderworkerset.x-k8s.io/v1", "leaderworkersets")
COMPUTE_DOMAINS = ResourceKind("resource.nvidia.com/v1beta1", "computedomains")
INFERENCE_POOLS = ResourceKind("inference.networking.k8s.io/v1", "inferencepools")
CONFIG_MAPS = ResourceKind("v1", "configmaps")
SERVICE_ACCOUNTS = ResourceKind("v1", "serviceaccounts")
ROLES = ResourceKind("rbac.authorization.k8s.io/v1", "roles")
ROLE_BINDINGS = ResourceKind("rbac.authorization.k8s.io/v1", "rolebindings")
# expose.router.eppConfig's children besides the InferencePool `llm`.
ENDPOINT_PICKER = (
    (SERVICE_ACCOUNTS, "llm-epp"),
    (ROLES, "llm-epp"),
    (ROLE_BINDINGS, "llm-epp"),
    (CONFIG_MAPS, "llm-epp-config"),
    (SERVICES, "llm-epp"),
    (DEPLOYMENTS, "llm-epp"),
)
SECRETS_RESOURCE = kmock.resource("", "v1", "secrets")

# The prometheus-operator's CRD, as far as the operator cares: it exists and stores objects.
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def rbac_documents() -> list[dict[str, Any]]:
    return [dict(d) for d in yaml.safe_load_all(RBAC.read_text()) if d]


def roles() -> list[dict[str, Any]]:
    return [d for d in rbac_documents() if d["kind"] in ("ClusterRole", "Role")]


def granted() -> set[Permission]:
    return bound_permissions(
        rbac_documents(), namespace=OPERATOR_NAMESPACE, service_account=OPERATOR_ACCOUNT
    )


def operator_container() -> dict[str, Any]:
    deployment = yaml.safe_load(OPERATOR_DEPLOYMENT.read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def manifest_env(pod: str) -> dict[str, str]:
    """The operator container's environment from the manifest, the downward API's as for `pod`."""
    downward = {"metadata.name": pod, "metadata.namespace": OPERATOR_NAMESPACE}
    env = {}
    for item in operator_container().get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def manifest_argv() -> list[str]:
    """The operator container's command line from the manifest, runnable here."""
    container = operator_container()
    argv = [*container["command"], *container["args"]]
    assert argv[0] == "nim-operator"
    return [
        str(Path(sys.executable).with_name("nim-operator")),
        *("--liveness={liveness}" if a.startswith("--liveness=") else a for a in argv[1:]),
    ]


@dataclass
class Exercise:
    used: set[Permission]
    denied: list[tuple[Permission, str]]
    secret_reads: list[dict[str, str]]  # the headers of every Secret request the operator made
    logs: str


@pytest.fixture(scope="module")
def authorizer() -> RbacAuthorizer:
    return RbacAuthorizer(granted(), token=OPERATOR_TOKEN, user=OPERATOR_USER)


@pytest.fixture(scope="module")
def cluster(authorizer: RbacAuthorizer) -> Iterator[EmulatedCluster]:
    crds = [
        *project_crds(),
        SERVICE_MONITOR_CRD,
        *GATEWAY_API_CRDS,
        LEADER_WORKER_SET_CRD,
        COMPUTE_DOMAIN_CRD,
        INFERENCE_POOL_CRD,
    ]
    with EmulatedCluster(crds, authorizer=authorizer) as emulated:
        emulated.inspect(serve_dra)  # resource.k8s.io/v1, for spec.draResources
        yield emulated


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


async def scenario(kube: KubeClient, namespace: str, context: Callable[[], str]) -> None:
    """Every feature, on and off; each step waits for the operator to have acted on it."""

    async def until(probe: Callable[[], Awaitable[Any]], what: str) -> None:
        await eventually(probe, within=30, what=what, context=context)

    def exists(
        kind: ResourceKind, name: str, present: bool = True
    ) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return (await kube.get(kind, namespace, name) is not None) == present

        return probe

    def nim_where(
        name: str, test: Callable[[dict[str, Any]], bool]
    ) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            nim = await kube.get(NIMSERVICES, namespace, name)
            return nim is not None and test(nim)

        return probe

    await kube.create(SECRETS, namespace, secret("ngc", {"NGC_API_KEY": CANARY}))
    await kube.create(SECRETS, namespace, secret("api-key", {"NIM_API_KEY": CANARY}))
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    await kube.create(PVCS, namespace, {"metadata": {"name": "models-cache"}, "spec": claim})

    everything = cpu_spec(
        authSecret="ngc",
        apiKeySecret={"name": "api-key"},
        replicas=2,
        storage={"pvc": {"create": True, "size": "1Gi", "retainPolicy": "Delete"}},
        metrics={"enabled": True},
    )
    body = {"apiVersion": "nimstack.dev/v1alpha1", "kind": "NIMService"}
    await kube.create(
        NIMSERVICES, namespace, {**body, "metadata": {"name": "llm"}, "spec": everything}
    )
    for kind, name in ((PDBS, "llm"), (SERVICE_MONITORS, "llm"), (PVCS, "llm-pvc")):
        await until(exists(kind, name), f"{kind.plural}/{name}")
    await until(exists(DEPLOYMENTS, "llm"), "the Deployment")
    # Pods and Deployment status change: the operator's child watches re-reconcile the owner.
    await EmulatedControllers(kube).pods_become(namespace, "llm", PodState.READY)
    await until(nim_where("llm", lambda o: condition(o, "Ready").get("status") == "True"), "Ready")

    hpa_on = {"replicas": None, "scale": {"enabled": True, "hpa": {"maxReplicas": 3}}}
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": hpa_on})
    await until(exists(HPAS, "llm"), "the HPA")

    # The built-in autoscaler instead: a minReplicas above the current count is applied at
    # once, through the Deployment's scale subresource.
    builtin = {
        "scale": {"enabled": False, "hpa": None},
        "autoscaling": {"minReplicas": 3, "maxReplicas": 4, "interval": 1},
    }
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": builtin})

    async def three_replicas() -> bool:
        deployment = await kube.get(DEPLOYMENTS, namespace, "llm")
        return deployment is not None and deployment["spec"].get("replicas") == 3

    await until(three_replicas, "the autoscaler's minReplicas 3")

    # Exposure: a renamed Service with a gRPC port, an Ingress, both Gateway API routes, and
    # an endpoint picker with its InferencePool (its Role is checked for escalation).
    exposed = {
        "service": {"name": "llm-api", "grpcPort": 8001},
        "ingress": {
            "enabled": True,
            "spec": {"rules": [{"http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]},
        },
        "router": {
            "hostDomainName": "example.com",
            "gateway": {"namespace": "gw", "name": "public", "grpcRoutesEnabled": True},
            "eppConfig": {
                "containerSpec": {"name": "epp", "image": {"repository": "epp", "tag": "1"}},
                "config": {"plugins": [{"type": "queue-scorer"}]},
            },
        },
    }
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": {"expose": exposed}})
    for kind, name in (
        (SERVICES, "llm-api"),
        (INGRESSES, "llm"),
        (HTTP_ROUTES, "llm"),
        (GRPC_ROUTES, "llm"),
        (INFERENCE_POOLS, "llm"),
        *ENDPOINT_PICKER,
    ):
        await until(exists(kind, name), f"{kind.plural}/{name}")
    await until(exists(SERVICES, "llm", present=False), "the Service under the old name deleted")

    all_off = {
        "replicas": 1,
        "autoscaling": None,
        "scale": {"enabled": False, "hpa": None},
        "metrics": {"enabled": False},
        "storage": {"pvc": {"name": "models-cache", "create": False, "size": None}},
        "expose": {"service": {"name": None, "grpcPort": None}, "ingress": None, "router": None},
    }
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": all_off})
    for kind, name in (
        (HPAS, "llm"),
        (PDBS, "llm"),
        (SERVICE_MONITORS, "llm"),
        (PVCS, "llm-pvc"),
        (INGRESSES, "llm"),
        (HTTP_ROUTES, "llm"),
        (GRPC_ROUTES, "llm"),
        (SERVICES, "llm-api"),
        (INFERENCE_POOLS, "llm"),
        *ENDPOINT_PICKER,
    ):
        await until(exists(kind, name, present=False), f"{kind.plural}/{name} deleted")

    # spec.multiNode: a LeaderWorkerSet replaces the Deployment, and the other way back.
    multi_node = {"gpu": None, "multiNode": {"parallelism": {"pipeline": 2}}}
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": multi_node})
    await until(exists(LEADER_WORKER_SETS, "llm"), "the LeaderWorkerSet")
    # The Deployment serves until a group is ready (the LWS controller's status, played here).
    group_ready = {"status": {"replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}}
    await kube.merge_patch(LEADER_WORKER_SETS, namespace, "llm", group_ready, subresource="status")
    await until(exists(DEPLOYMENTS, "llm", present=False), "the Deployment deleted")
    # multiNode.computeDomain: one created for the NIMService, then an existing one read for
    # its channel instead (and the created one deleted).
    parallelism = {"pipeline": 2}
    created = {"parallelism": parallelism, "computeDomain": {"create": True}}
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": {"multiNode": created}})
    await until(exists(COMPUTE_DOMAINS, "llm"), "the ComputeDomain")
    channel = {"resourceClaimTemplate": {"name": "rack-1-channel"}}
    rack = {"metadata": {"name": "rack-1"}, "spec": {"numNodes": 0, "channel": channel}}
    await kube.create(
        COMPUTE_DOMAINS,
        namespace,
        {"apiVersion": COMPUTE_DOMAINS.api_version, "kind": "ComputeDomain", **rack},
    )
    existing = {"computeDomain": {"create": None, "name": "rack-1"}}  # a merge patch
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": {"multiNode": existing}})
    await until(exists(COMPUTE_DOMAINS, "llm", present=False), "the ComputeDomain deleted")
    single_node = {"gpu": {"count": 0}, "multiNode": None}
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": single_node})
    await until(exists(DEPLOYMENTS, "llm"), "the Deployment back")
    # The LeaderWorkerSet serves until the Deployment has a ready pod.
    await EmulatedControllers(kube).pods_become(namespace, "llm", PodState.READY)
    await until(exists(LEADER_WORKER_SETS, "llm", present=False), "the LeaderWorkerSet deleted")

    # spec.draResources: a generated ResourceClaimTemplate, replaced by a new one on an edit
    # (its spec is immutable), deleted when switched off.
    async def template_names() -> list[str]:
        selector = "app.kubernetes.io/instance=llm,app.kubernetes.io/name=nim-service"
        found = await kube.list(CLAIM_TEMPLATES, namespace, label_selector=selector)
        return [t["metadata"]["name"] for t in found]

    def claim_creation(count: int) -> dict[str, Any]:
        devices = [{"name": "gpu", "count": count}]
        return {"draResources": [{"claimCreationSpec": {"devices": devices}}]}

    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": claim_creation(1)})
    await until(template_names, "a ResourceClaimTemplate")
    (first_template,) = await template_names()
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": claim_creation(2)})

    async def template_replaced() -> bool:
        names = await template_names()
        return len(names) == 1 and names != [first_template]

    await until(template_replaced, "the ResourceClaimTemplate replaced")
    await kube.merge_patch(NIMSERVICES, namespace, "llm", {"spec": {"draResources": None}})

    async def no_template() -> bool:
        return await template_names() == []

    await until(no_template, "the ResourceClaimTemplate deleted")

    broken = cpu_spec(authSecret="not-there")
    await kube.create(
        NIMSERVICES, namespace, {**body, "metadata": {"name": "broken"}, "spec": broken}
    )
    await until(
        nim_where("broken", lambda o: condition(o, "Failed").get("reason") == "SecretNotFound"),
        "SecretNotFound",
    )

    # A NIMCache: its claim and download Job; a spec change replaces the Job; once the Job is
    # done (played here: there is no Job controller) a NIMService mounts the cache.
    cache_spec = {
        "source": {"hf": {"modelPuller": "nimstack/nim-server:0.1.0", "authSecret": "ngc"}},
        "storage": {"pvc": {"create": True, "size": "1Gi"}},
    }
    cache = {"apiVersion": "nimstack.dev/v1alpha1", "kind": "NIMCache"}
    await kube.create(
        NIMCACHES, namespace, {**cache, "metadata": {"name": "models"}, "spec": cache_spec}
    )
    await until(exists(PVCS, "models-pvc"), "the NIMCache's claim")
    await until(exists(JOBS, "models-download"), "the download Job")
    first = await kube.get(JOBS, namespace, "models-download")
    assert first is not None
    revision = {"spec": {"source": {"hf": {"revision": "v2"}}}}
    await kube.merge_patch(NIMCACHES, namespace, "models", revision)

    async def job_replaced() -> bool:
        job = await kube.get(JOBS, namespace, "models-download")
        return job is not None and job["metadata"]["uid"] != first["metadata"]["uid"]

    await until(job_replaced, "the download Job replaced")
    result = '{"model": "m", "path": "converted/m", "sizeBytes": 1}'
    await download_ends(kube, namespace, "models-download", exit_code=0, message=result)
    await kube.create(
        NIMSERVICES,
        namespace,
        {
            **body,
            "metadata": {"name": "cached"},
            "spec": cpu_spec(storage={"nimCache": {"name": "models"}}),
        },
    )
    await until(exists(DEPLOYMENTS, "cached"), "the Deployment mounting the NIMCache")
    await kube.delete(NIMCACHES, namespace, "models")
    await until(exists(NIMCACHES, "models", present=False), "models deleted (finalizer released)")

    for name in ("llm", "broken", "cached"):
        await kube.delete(NIMSERVICES, namespace, name)
        await until(
            exists(NIMSERVICES, name, present=False), f"{name} deleted (finalizer released)"
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def exercised(
    cluster: EmulatedCluster,
    authorizer: RbacAuthorizer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Exercise]:
    work = tmp_path_factory.mktemp("rbac")
    admin = KubeClient(
        connection_from_kubeconfig(cluster.write_kubeconfig(work / "admin")), user_agent="rbac-test"
    )
    operator_kubeconfig = cluster.write_kubeconfig(work / "operator", token=OPERATOR_TOKEN)
    logs = []
    modes = {"manifest": (manifest_argv(), "rbac-all-"), "globs": (None, "rbac-globs-")}
    try:
        # The operator's namespace, where its Lease is (manifests/namespace.yaml).
        await admin.create(NAMESPACES, None, {"metadata": {"name": OPERATOR_NAMESPACE}})
        for mode, (argv, prefix) in modes.items():
            namespace = f"{prefix}{secrets.token_hex(3)}"
            settings = {"reconcile_interval": "2", "child_event_delay": "0.2", "verbose": "true"}
            if argv is None:
                settings["namespaces"] = f"{prefix}*"
            # Renewals within the scenario's seconds (the default is every 2 s already).
            settings["retry_period"] = "1"
            operator = OperatorProcess(
                operator_kubeconfig,
                work / f"{mode}.log",
                argv=argv,
                env=manifest_env(f"nim-operator-{mode}"),
                **settings,
            )
            await admin.create(NAMESPACES, None, {"metadata": {"name": namespace}})
            operator.start()
            try:
                await scenario(admin, namespace, operator.log_tail)
            finally:
                operator.stop()
            logs.append((work / f"{mode}.log").read_text(errors="replace"))
    finally:
        await admin.close()

    def secret_reads(emulator: Any) -> list[dict[str, str]]:
        return [
            dict(request.headers)
            for request in emulator
            if request.resource == SECRETS_RESOURCE
            and request.headers.get("Authorization") == f"Bearer {OPERATOR_TOKEN}"
        ]

    yield Exercise(
        used=authorizer.used,
        denied=authorizer.denied,
        secret_reads=cluster.inspect(secret_reads),
        logs="\n".join(logs),
    )


def test_the_roles_have_no_wildcards() -> None:
    for role in roles():
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), rule
            assert "nonResourceURLs" not in rule


def test_the_manifest_runs_with_leader_election() -> None:
    """So the Lease's grants below are the ones the manifest's operator uses."""
    assert manifest_env("pod")["NIM_OPERATOR_LEADER_ELECTION"] == "true"


def test_every_request_was_authorized(exercised: Exercise) -> None:
    assert exercised.denied == []


def test_every_permission_granted_was_used_and_every_one_used_granted(
    exercised: Exercise,
) -> None:
    grants = granted()
    assert (
        Permission("coordination.k8s.io", "leases", "update", OPERATOR_NAMESPACE, "nim-operator")
        in grants
    )
    unused = "\n  ".join(sorted(map(str, grants - exercised.used)))
    assert not unused, f"granted but never used:\n  {unused}"
    missing = "\n  ".join(sorted(map(str, exercised.used - grants)))
    assert not missing, f"used but not granted:\n  {missing}"


def test_secrets_are_only_ever_read_for_their_metadata(exercised: Exercise) -> None:
    """The operator checks that Secrets exist; it never asks for (so never holds) their data."""
    assert exercised.secret_reads, "the scenario made the operator look for Secrets"
    for headers in exercised.secret_reads:
        accept = next(v for k, v in headers.items() if k.lower() == "accept")
        assert accept.startswith("application/json;as=PartialObjectMetadata"), accept
    assert CANARY not in exercised.logs
    assert base64.b64encode(CANARY.encode()).decode() not in exercised.logs
