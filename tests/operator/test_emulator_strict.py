"""The emulator refuses what kube-apiserver refuses, with the API server's status and message.

The operator once sent every watch with `timeoutSeconds=300.0`; a real API server answered 400
and the operator never saw an event, while the emulator streamed events and every test passed.
These tests pin tests/support/kmock_strict down: each request below is one a real server refuses
(the status codes and messages are kube-apiserver's), and the `null`s a real server returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import kopf
import pytest
import pytest_asyncio

from nim_operator.kube import ApiError, KubeClient, ResourceKind
from tests.support.kmock_cluster import EmulatedCluster, nimservice_crd, project_crds
from tests.support.kmock_harness import eventually
from tests.support.kmock_strict import Rejection

NS = "strict"
DEPLOYMENTS = ResourceKind("apps/v1", "deployments")
SERVICES = ResourceKind("v1", "services")
PODS = ResourceKind("v1", "pods")
LEASES = ResourceKind("coordination.k8s.io/v1", "leases")
NAMESPACES = ResourceKind("v1", "namespaces", namespaced=False)
NIMSERVICES = ResourceKind("nimstack.dev/v1alpha1", "nimservices")
CRDS = ResourceKind("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)


def every_refusal_is_deliberate(rejection: Rejection) -> bool:
    return True  # this module sends them on purpose


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster(project_crds(), deliberate=every_refusal_is_deliberate) as emulated:
        yield emulated


@pytest_asyncio.fixture(loop_scope="session")
async def kube(cluster: EmulatedCluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url), retries=0)
    with contextlib.suppress(ApiError):
        await client.create(NAMESPACES, None, {"metadata": {"name": NS}})
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def http(cluster: EmulatedCluster) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, cluster.url)


class Http:
    """Raw requests, for what KubeClient cannot send (bad parameters) or does not show."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any], list[str]]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type}
        async with self._session.request(
            method, self._url + path, params=params, data=data, headers=headers
        ) as response:
            text = await response.text()
            warnings = response.headers.getall("Warning", [])
            payload = json.loads(text) if text.startswith("{") else {"text": text}
            return response.status, payload, warnings


def status(payload: Mapping[str, Any]) -> tuple[str, str]:
    return payload.get("reason", ""), payload.get("message", "")


def deployment(**pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}], **pod_spec},
            },
        },
    }


def nimservice(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nimstack.dev/v1alpha1",
        "kind": "NIMService",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"image": {"repository": "registry.k8s.io/pause", "tag": "3.10"}, **spec},
    }


# --- query parameters ---------------------------------------------------------------------------


async def test_kopf_with_a_float_server_timeout_gets_its_watches_refused() -> None:
    """The issue itself, through kopf's own watch code: `timeoutSeconds=300.0` is a 400."""
    with EmulatedCluster(deliberate=every_refusal_is_deliberate) as emulated:
        registry = kopf.OperatorRegistry()
        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = 300.0  # what the operator used to configure
        settings.networking.error_backoffs = [0.1]
        # kopf's last resort for an operator that stops without its stop flag (here: when the
        # watcher's death ends it first) is a SIGKILL of this thread ten minutes later, which
        # the test's event loop, shared by the session, delivered to pytest itself mid-run.
        settings.process.ultimate_exiting_timeout = None

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=emulated.url)

        @kopf.on.event("v1", "configmaps", registry=registry)
        def seen(**_: Any) -> None:
            pass

        # kopf's watcher task dies of the 400, as it did on the real cluster: keep kopf's tasks
        # to see how they ended (which also keeps asyncio from reporting them as unretrieved).
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []

        def keep(loop: asyncio.AbstractEventLoop, coro: Any, **options: Any) -> asyncio.Task[Any]:
            task = asyncio.Task(coro, loop=loop, **options)
            tasks.append(task)
            return task

        loop.set_task_factory(keep)
        stop = asyncio.Event()
        operator = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=settings,
                standalone=True,
                clusterwide=True,
                stop_flag=stop,
            )
        )

        async def refused_watch() -> list[Rejection]:
            return [r for r in emulated.rejections() if "watch=true" in r.path]

        try:
            refused = await eventually(refused_watch, within=20, what="kopf's watch refused")
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(operator, timeout=10)
            loop.set_task_factory(None)
        ended = [t.exception() for t in tasks if t.done() and not t.cancelled()]
        # Nothing of kopf's may be left to kill this process later (asyncio's own timer list).
        scheduled = getattr(loop, "_scheduled", [])
        assert not [h for h in scheduled if getattr(h, "_callback", None) is signal.pthread_kill]
    assert "timeoutSeconds=300.0" in refused[0].path
    assert (refused[0].status, refused[0].reason) == (400, "BadRequest")
    assert refused[0].message == 'strconv.ParseInt: parsing "300.0": invalid syntax'
    assert refused[0].agent.startswith("kopf/")
    assert refused[0].cause == "query"
    assert any("strconv.ParseInt" in str(error) for error in ended)  # the watcher's death


async def test_a_float_timeout_on_a_watch_is_a_bad_request(http: Http) -> None:
    code, payload, _ = await http(
        "GET", f"/api/v1/namespaces/{NS}/pods", params={"watch": "true", "timeoutSeconds": "300.0"}
    )
    assert code == 400
    assert status(payload) == ("BadRequest", 'strconv.ParseInt: parsing "300.0": invalid syntax')
    code, _, _ = await http(
        "GET", f"/api/v1/namespaces/{NS}/pods", params={"watch": "true", "timeoutSeconds": "1"}
    )
    assert code == 200


async def test_a_float_limit_is_a_bad_request(http: Http) -> None:
    code, payload, _ = await http("GET", f"/api/v1/namespaces/{NS}/pods", params={"limit": "1.5"})
    assert code == 400
    assert status(payload) == ("BadRequest", 'strconv.ParseInt: parsing "1.5": invalid syntax')


async def test_an_unknown_parameter_is_refused_naming_it(http: Http) -> None:
    """Stricter than kube-apiserver (it ignores them): a misspelt selector would select all."""
    code, payload, _ = await http(
        "GET", f"/api/v1/namespaces/{NS}/pods", params={"labelselector": "app=web"}
    )
    assert code == 400
    reason, message = status(payload)
    assert reason == "BadRequest"
    assert message.startswith('unknown query parameter "labelselector"')
    assert message.endswith('did you mean "labelSelector"?')


async def test_dry_run_and_field_validation_take_only_their_values(http: Http) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps"
    body = {"metadata": {"name": "options"}}
    code, payload, _ = await http("POST", path, params={"dryRun": "Yes"}, body=body)
    assert (code, *status(payload)) == (
        422,
        "Invalid",
        'CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Yes"}: '
        'supported values: "All"',
    )
    code, payload, _ = await http("POST", path, params={"fieldValidation": "Loose"}, body=body)
    assert (code, *status(payload)) == (
        422,
        "Invalid",
        'CreateOptions.meta.k8s.io "" is invalid: fieldValidation: Unsupported value: "Loose": '
        'supported values: "", "Ignore", "Strict", "Warn"',
    )


async def test_force_is_only_for_an_apply_patch(kube: KubeClient, http: Http) -> None:
    await kube.apply(DEPLOYMENTS, deployment(), field_manager="test")
    code, payload, _ = await http(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/web",
        params={"force": "true", "fieldManager": "test"},
        body={"spec": {"replicas": 2}},
        content_type="application/merge-patch+json",
    )
    assert (code, *status(payload)) == (
        422,
        "Invalid",
        'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be specified for '
        "non-apply patch",
    )
    code, payload, _ = await http(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/web",
        body=deployment(),
        content_type="application/apply-patch+yaml",
    )
    assert (code, *status(payload)) == (
        422,
        "Invalid",
        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for '
        "apply patch",
    )


async def test_deletion_takes_known_propagation_policies(http: Http) -> None:
    code, payload, _ = await http(
        "DELETE", f"/api/v1/namespaces/{NS}/configmaps/x", params={"propagationPolicy": "Later"}
    )
    assert (code, *status(payload)) == (
        422,
        "Invalid",
        'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: "Later": '
        'supported values: "Foreground", "Background", "Orphan", "nil"',
    )


# --- bodies -------------------------------------------------------------------------------------


async def test_a_float_for_an_integer_field_is_refused_as_go_decodes_it(kube: KubeClient) -> None:
    with pytest.raises(ApiError) as refused:
        await kube.create(DEPLOYMENTS, NS, deployment(terminationGracePeriodSeconds=30.0))
    assert (refused.value.status, refused.value.reason) == (400, "BadRequest")
    assert refused.value.message == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal '
        "number 30.0 into Go struct field PodSpec.spec.template.spec.terminationGracePeriodSeconds"
        " of type int64"
    )


async def test_a_patch_with_a_float_for_an_integer_is_invalid(kube: KubeClient, http: Http) -> None:
    """A patch is refused by the patch handler: 422, the patched object as the bad value."""
    await kube.apply(DEPLOYMENTS, deployment(), field_manager="test")
    code, payload, _ = await http(
        "PATCH",
        f"/apis/apps/v1/namespaces/{NS}/deployments/web",
        body={"spec": {"replicas": 2.0}},
        content_type="application/merge-patch+json",
    )
    reason, message = status(payload)
    assert (code, reason) == (422, "Invalid")
    assert message.startswith(' "" is invalid: patch: Invalid value: "{\\"apiVersion\\"')
    assert message.endswith(
        '": json: cannot unmarshal number 2.0 into Go struct field '
        "DeploymentSpec.spec.replicas of type int32"
    )


async def test_micro_time_needs_six_fractional_digits(kube: KubeClient) -> None:
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "a", "renewTime": "2026-12-04T10:00:00Z"},
    }
    with pytest.raises(ApiError) as refused:
        await kube.create(LEASES, NS, lease)
    assert refused.value.status == 400
    assert refused.value.message == (
        'Lease in version "v1" cannot be handled as a Lease: parsing time "2026-12-04T10:00:00Z" '
        'as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as ".000000"'
    )
    lease["spec"]["renewTime"] = "2026-12-04T10:00:00.000000Z"
    created = await kube.create(LEASES, NS, lease)
    assert created["spec"]["renewTime"] == "2026-12-04T10:00:00.000000Z"


async def test_a_nimservice_that_breaks_its_schema_is_invalid(kube: KubeClient) -> None:
    with pytest.raises(ApiError) as refused:
        await kube.create(NIMSERVICES, NS, nimservice("negative", replicas=-1))
    assert (refused.value.status, refused.value.reason) == (422, "Invalid")
    assert refused.value.message.startswith('NIMService.nimstack.dev "negative" is invalid: ')
    assert "spec.replicas: " in refused.value.message
    assert await kube.get(NIMSERVICES, NS, "negative") is None


async def test_unknown_custom_resource_fields(kube: KubeClient, http: Http) -> None:
    """Strict: 400. Otherwise (Warn, the default) pruned, with a Warning header."""
    path = f"/apis/nimstack.dev/v1alpha1/namespaces/{NS}/nimservices"
    body = nimservice("typo", replica=2)
    code, payload, _ = await http("POST", path, params={"fieldValidation": "Strict"}, body=body)
    assert (code, *status(payload)) == (
        400,
        "BadRequest",
        'NIMService in version "v1alpha1" cannot be handled as a NIMService: strict decoding '
        'error: unknown field "spec.replica"',
    )
    code, payload, warnings = await http("POST", path, body=body)
    assert code == 201
    assert "replica" not in payload["spec"]
    assert warnings == ['299 - "unknown field \\"spec.replica\\""']
    code, _, warnings = await http(
        "POST", path, params={"fieldValidation": "Ignore"}, body=nimservice("quiet", replica=2)
    )
    assert (code, warnings) == (201, [])


async def test_unknown_built_in_fields_are_dropped_unless_strict(kube: KubeClient) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "typo"},
        "spec": {"ports": [{"port": 80, "targetPort": 8000, "nodeport": 30000}]},
    }
    created = await kube.create(SERVICES, NS, service)
    assert created["spec"]["ports"] == [{"port": 80, "targetPort": 8000}]


async def test_a_service_name_must_be_a_dns_1035_label(kube: KubeClient) -> None:
    with pytest.raises(ApiError) as refused:
        await kube.create(SERVICES, NS, {"metadata": {"name": "llama.v1"}, "spec": {}})
    assert refused.value.status == 422
    assert refused.value.message.startswith(
        'Service "llama.v1" is invalid: metadata.name: Invalid value: "llama.v1": a DNS-1035 label'
    )


# --- what a real server returns ------------------------------------------------------------------


async def test_new_objects_get_the_status_a_real_server_gives(kube: KubeClient) -> None:
    created = await kube.create(DEPLOYMENTS, NS, {**deployment(), "metadata": {"name": "fresh"}})
    assert created["status"] == {}
    service = await kube.create(SERVICES, NS, {"metadata": {"name": "fresh"}, "spec": {}})
    assert service["status"] == {"loadBalancer": {}}
    namespace = await kube.get(NAMESPACES, None, NS)
    assert namespace is not None
    assert namespace["status"] == {"phase": "Active"}
    assert namespace["metadata"]["labels"]["kubernetes.io/metadata.name"] == NS
    pod = {"metadata": {"name": "fresh"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    assert (await kube.create(PODS, NS, pod))["status"] == {
        "phase": "Pending",
        "qosClass": "BestEffort",
    }
    nim = await kube.create(NIMSERVICES, NS, nimservice("fresh"))
    assert "status" not in nim  # a custom resource with a status subresource starts without


async def test_a_new_crd_is_established_after_its_conditions_were_null(kube: KubeClient) -> None:
    crd = copy.deepcopy(nimservice_crd())
    crd["metadata"]["name"] = "llms.example.com"
    crd["spec"]["group"] = "example.com"
    crd["spec"]["names"] = {"kind": "LLM", "plural": "llms", "singular": "llm"}
    created = await kube.apply(CRDS, crd, field_manager="test")
    assert created["status"] == {
        "acceptedNames": {"kind": "", "plural": ""},
        "conditions": None,
        "storedVersions": ["v1alpha1"],
    }
    llms = ResourceKind("example.com/v1alpha1", "llms")
    assert not await kube.has_resource("example.com/v1alpha1", "llms")  # not served yet

    async def established() -> dict[str, Any] | None:
        live = await kube.get(CRDS, None, "llms.example.com")
        conditions = ((live or {}).get("status") or {}).get("conditions") or []
        ready = any(c["type"] == "Established" and c["status"] == "True" for c in conditions)
        return live if ready else None

    live = await eventually(established, within=5, what="the CRD established")
    assert live["status"]["acceptedNames"]["kind"] == "LLM"
    assert {c["type"] for c in live["status"]["conditions"]} == {"NamesAccepted", "Established"}
    assert await kube.list(llms, NS) == []


async def test_tightening_a_crd_applies_to_later_writes_only(kube: KubeClient) -> None:
    """An object stored under a looser CRD keeps its status writable (validation ratcheting)."""
    loose = copy.deepcopy(nimservice_crd())
    loose["metadata"]["name"] = "models.example.com"
    loose["spec"]["group"] = "example.com"
    loose["spec"]["names"] = {"kind": "Model", "plural": "models", "singular": "model"}
    strict = copy.deepcopy(loose)
    for version in loose["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["spec"] = {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
    await kube.apply(CRDS, loose, field_manager="test")
    models = ResourceKind("example.com/v1alpha1", "models")

    async def served() -> bool:
        return await kube.has_resource("example.com/v1alpha1", "models")

    await eventually(served, within=5, what="the CRD served")
    old = {**nimservice("old", replicas=-1), "apiVersion": "example.com/v1alpha1", "kind": "Model"}
    await kube.create(models, NS, old)
    await kube.apply(CRDS, strict, field_manager="test")
    written = await kube.merge_patch(
        models, NS, "old", {"status": {"state": "Failed"}}, subresource="status"
    )
    assert written is not None
    assert written["status"]["state"] == "Failed"
    with pytest.raises(ApiError) as refused:
        await kube.merge_patch(models, NS, "old", {"spec": {"replicas": -2}})
    assert refused.value.status == 422
    new = {**old, "metadata": {"name": "new", "namespace": NS}}
    with pytest.raises(ApiError):
        await kube.create(models, NS, new)


# --- the record ---------------------------------------------------------------------------------


async def test_an_unexpected_refusal_fails_the_cluster_on_exit() -> None:
    refused = pytest.raises(AssertionError, match=r"timeoutSeconds=1\.5")
    with refused, EmulatedCluster() as emulated:  # the exit is what fails
        async with aiohttp.ClientSession() as session:
            url = f"{emulated.url}/api/v1/pods"
            params = {"watch": "true", "timeoutSeconds": "1.5"}
            async with session.get(url, params=params) as response:
                assert response.status == 400
