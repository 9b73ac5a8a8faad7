"""manifests/: the kustomize base builds, validates, and grants only what the operator needs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nim_operator import API_GROUP, PLURAL

REPO = Path(__file__).parents[2]
NAMESPACE = "nimstack-system"
# Children are written by server-side apply (patch, and create when the apply creates one).
APPLIED = {"create", "patch"}
OPTIONAL_CHILD = {"get", "create", "patch", "delete"}
# (apiGroup, resource) -> verbs: the whole grant, nothing else. test_rbac_usage.py proves, on the
# real operator, that each of these is used and that nothing else is asked for.
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    (API_GROUP, PLURAL): {"get", "list", "watch", "patch"},
    (API_GROUP, f"{PLURAL}/status"): {"patch"},
    # Watched too: a hand edit is undone at once, and a timer tick skips a no-op apply. A Service
    # is also deleted (after a metadata read) when expose.service.name renames it.
    ("", "services"): {"list", "watch", *OPTIONAL_CHILD},
    # The endpoint picker's ServiceAccount is also deleted when eppConfig is switched off.
    ("", "serviceaccounts"): {"list", "watch", *OPTIONAL_CHILD},
    # Deleted too when spec.multiNode puts a LeaderWorkerSet in its place.
    ("apps", "deployments"): {"get", "list", "watch", *APPLIED, "delete"},
    # The built-in autoscaler's only write: the replica count, through the scale subresource.
    ("apps", "deployments/scale"): {"patch"},
    ("", "persistentvolumeclaims"): OPTIONAL_CHILD,
    ("autoscaling", "horizontalpodautoscalers"): OPTIONAL_CHILD,
    ("policy", "poddisruptionbudgets"): OPTIONAL_CHILD,
    ("monitoring.coreos.com", "servicemonitors"): OPTIONAL_CHILD,
    ("networking.k8s.io", "ingresses"): OPTIONAL_CHILD,
    ("gateway.networking.k8s.io", "httproutes"): OPTIONAL_CHILD,
    ("gateway.networking.k8s.io", "grpcroutes"): OPTIONAL_CHILD,
    # spec.multiNode's workload, watched like the Deployment.
    ("leaderworkerset.x-k8s.io", "leaderworkersets"): {"list", "watch", *OPTIONAL_CHILD},
    # spec.multiNode.computeDomain: an optional child (not watched); a named one is read.
    ("resource.nvidia.com", "computedomains"): OPTIONAL_CHILD,
    # spec.draResources' generated templates: applied, and those no longer rendered (their names
    # carry a digest of their immutable spec) found by label and deleted; never read one by one.
    ("resource.k8s.io", "resourceclaimtemplates"): {"list", "create", "patch", "delete"},
    # status.draResourceStatuses: the claims Kubernetes made for the pods, one list per run.
    ("resource.k8s.io", "resourceclaims"): {"list"},
    # expose.router.eppConfig: optional children; the picker's Role grants reads the
    # operator must hold itself (RBAC escalation prevention): pods get, the rest list/watch.
    ("inference.networking.k8s.io", "inferencepools"): {"list", "watch", *OPTIONAL_CHILD},
    ("inference.networking.x-k8s.io", "inferenceobjectives"): {"get", "list", "watch"},
    ("", "configmaps"): OPTIONAL_CHILD,
    ("rbac.authorization.k8s.io", "roles"): OPTIONAL_CHILD,
    ("rbac.authorization.k8s.io", "rolebindings"): OPTIONAL_CHILD,
    ("", "pods"): {"get", "list", "watch"},
    # NIMCaches as NIMServices; their download Jobs are replaced (deleted) when the spec changes.
    (API_GROUP, "nimcaches"): {"get", "list", "watch", "patch"},
    (API_GROUP, "nimcaches/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    # Existence checks of authSecret and apiKeySecret only: never list or watch every Secret.
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}
LEASE_NAME = "nim-operator"


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(REPO / "manifests")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(built: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (match,) = [doc for doc in built if doc["kind"] == kind]
    return match


class TestKustomization:
    def test_contents(self, built: list[dict[str, Any]]) -> None:
        assert sorted(doc["kind"] for doc in built) == [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "Namespace",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ]
        crds = {
            doc["spec"]["names"]["kind"]: doc
            for doc in built
            if doc["kind"] == "CustomResourceDefinition"
        }
        for kind, file in (("NIMService", "nimservice.yaml"), ("NIMCache", "nimcache.yaml")):
            crd = crds[kind]
            assert crd == yaml.safe_load((REPO / "crds" / file).read_text()) | {
                "metadata": crd["metadata"]
            }

    def test_every_object_validates(self, built: list[dict[str, Any]]) -> None:
        for doc in built:
            kubernetes_validate.validate(doc, "1.31", strict=True)

    def test_namespaced_objects_live_in_the_operator_namespace(
        self, built: list[dict[str, Any]]
    ) -> None:
        assert one(built, "Namespace")["metadata"]["name"] == NAMESPACE
        for kind in ("ServiceAccount", "Deployment", "Role", "RoleBinding"):
            assert one(built, kind)["metadata"]["namespace"] == NAMESPACE


class TestRBAC:
    def test_no_wildcards(self, built: list[dict[str, Any]]) -> None:
        for rule in one(built, "ClusterRole")["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
            assert "resourceNames" not in rule
            assert "nonResourceURLs" not in rule

    def test_exactly_the_needed_verbs(self, built: list[dict[str, Any]]) -> None:
        granted: dict[tuple[str, str], set[str]] = {}
        for rule in one(built, "ClusterRole")["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
        assert granted == EXPECTED_RULES

    def test_secrets_are_never_listed_or_watched(self, built: list[dict[str, Any]]) -> None:
        for rule in one(built, "ClusterRole")["rules"]:
            if "secrets" in rule["resources"]:
                assert set(rule["verbs"]) == {"get"}

    def test_binding(self, built: list[dict[str, Any]]) -> None:
        account = one(built, "ServiceAccount")["metadata"]
        for binding_kind, role_kind in (
            ("ClusterRoleBinding", "ClusterRole"),
            ("RoleBinding", "Role"),
        ):
            binding = one(built, binding_kind)
            assert binding["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role_kind,
                "name": one(built, role_kind)["metadata"]["name"],
            }
            assert binding["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": account["name"],
                    "namespace": account["namespace"],
                }
            ]

    def test_the_lease_role_is_its_own_namespace_and_lease(
        self, built: list[dict[str, Any]]
    ) -> None:
        """Leader election: create a Lease (a create names no object), read and renew just ours."""
        rules = one(built, "Role")["rules"]
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), rule
        assert sorted(
            (rule["apiGroups"], rule["resources"], sorted(rule["verbs"]), rule.get("resourceNames"))
            for rule in rules
        ) == [
            (["coordination.k8s.io"], ["leases"], ["create"], None),
            (["coordination.k8s.io"], ["leases"], ["get", "update"], [LEASE_NAME]),
        ]


class TestOperatorDeployment:
    def test_two_replicas_one_always_running(self, built: list[dict[str, Any]]) -> None:
        spec = one(built, "Deployment")["spec"]
        assert spec["replicas"] == 2
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        }
        pod = spec["template"]["spec"]
        assert pod["serviceAccountName"] == one(built, "ServiceAccount")["metadata"]["name"]

    def test_leader_election_is_on_with_the_pods_identity(
        self, built: list[dict[str, Any]]
    ) -> None:
        """Only the Lease's holder reconciles; the Lease is in the pod's namespace (the Role's)."""
        (container,) = one(built, "Deployment")["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["NIM_OPERATOR_LEADER_ELECTION"]["value"] == "true"
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}
        }
        assert "NIM_OPERATOR_LEASE_NAMESPACE" not in env  # the pod's own: where the Role is

    def test_runs_kopf_with_a_liveness_endpoint(self, built: list[dict[str, Any]]) -> None:
        (container,) = one(built, "Deployment")["spec"]["template"]["spec"]["containers"]
        argv = container["command"] + container["args"]
        assert argv[:4] == ["nim-operator", "run", "-m", "nim_operator.handlers"]
        assert {"--all-namespaces", "--standalone"} <= set(argv)
        assert "--liveness=http://0.0.0.0:8080/healthz" in argv
        probe = container["livenessProbe"]["httpGet"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert probe["path"] == "/healthz"
        assert ports[probe["port"]] == 8080
        assert container["image"].startswith("nimstack/nim-operator:")

    def test_same_command_as_the_image(self, built: list[dict[str, Any]]) -> None:
        """Running the image without the manifest's command/args does the same thing."""
        dockerfile = (REPO / "operator" / "Dockerfile").read_text().splitlines()
        exec_form = {
            line.split(maxsplit=1)[0]: json.loads(line.split(maxsplit=1)[1])
            for line in dockerfile
            if line.startswith(("ENTRYPOINT ", "CMD "))
        }
        (container,) = one(built, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert exec_form["ENTRYPOINT"] == container["command"]
        assert exec_form["CMD"] == container["args"]
        assert "USER 65532:65532" in dockerfile

    def test_restricted_security(self, built: list[dict[str, Any]]) -> None:
        pod = one(built, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["readOnlyRootFilesystem"] is True
        assert (
            one(built, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            == "restricted"
        )


class TestSamples:
    @pytest.mark.parametrize(
        "name", ["llama-3.1-8b.yaml", "llama-3.1-8b-autoscaled.yaml", "smollm2-cpu.yaml"]
    )
    def test_sample_exists_and_is_a_nimservice(self, name: str) -> None:
        sample = yaml.safe_load((REPO / "manifests" / "samples" / name).read_text())
        assert sample["apiVersion"] == "nimstack.dev/v1alpha1"
        assert sample["kind"] == "NIMService"

    def test_cpu_sample_needs_no_gpu(self) -> None:
        sample = yaml.safe_load((REPO / "manifests" / "samples" / "smollm2-cpu.yaml").read_text())
        assert sample["spec"]["gpu"] == {"count": 0}
        assert "authSecret" not in sample["spec"]
