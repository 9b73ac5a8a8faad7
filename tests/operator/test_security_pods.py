"""Every pod the operator renders passes the "restricted" Pod Security Standard.

The rules are written out in tests/support/pod_security.py. First the checker itself is shown to
catch each control (a checker that passes everything would make the rest meaningless), then it
is run over pods rendered from many NIMService specs (hypothesis draws them across every field
that reaches the pod), the shipped samples, and the operator's own Deployment.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from tests.support.pod_security import restricted_violations

REPO = Path(__file__).parents[2]
OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000003")

COMPLIANT: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "initContainers": [
        {
            "name": "fetch",
            "image": "busybox",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    ],
    "containers": [
        {
            "name": "nim",
            "image": "nim",
            "ports": [{"containerPort": 8000}],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            },
        }
    ],
    "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}],
}


def _set(pod: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `pod` with `path` (dots; `containers.0`-style indices) set to `value`."""
    changed = copy.deepcopy(pod)
    node: Any = changed
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return changed


MUTATIONS = {
    "hostNetwork": ("hostNetwork", True, "Host Namespaces"),
    "hostPID": ("hostPID", True, "Host Namespaces"),
    "hostIPC": ("hostIPC", True, "Host Namespaces"),
    "privileged": ("containers.0.securityContext.privileged", True, "Privileged Containers"),
    "SYS_ADMIN": ("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"], "Capabilities"),
    "CHOWN added": ("containers.0.securityContext.capabilities.add", ["CHOWN"], "Capabilities"),
    "nothing dropped": ("initContainers.0.securityContext.capabilities", {}, "Capabilities"),
    "hostPath": (
        "volumes.0",
        {"name": "cache", "hostPath": {"path": "/data"}},
        ("HostPath Volumes", "Volume Types"),
    ),
    "nfs": ("volumes.0", {"name": "cache", "nfs": {"server": "s", "path": "/"}}, "Volume Types"),
    "hostPort": ("containers.0.ports.0.hostPort", 8000, "Host Ports"),
    "procMount": ("containers.0.securityContext.procMount", "Unmasked", "/proc Mount Type"),
    "apparmor unconfined": (
        "securityContext.appArmorProfile",
        {"type": "Unconfined"},
        "AppArmor",
    ),
    "selinux type": ("securityContext.seLinuxOptions", {"type": "spc_t"}, "SELinux"),
    "selinux user": ("containers.0.securityContext.seLinuxOptions", {"user": "root"}, "SELinux"),
    "sysctl": ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "Sysctls"),
    "hostProcess": (
        "securityContext.windowsOptions",
        {"hostProcess": True},
        "HostProcess",
    ),
    "escalation allowed": (
        "initContainers.0.securityContext.allowPrivilegeEscalation",
        True,
        "Privilege Escalation",
    ),
    "escalation unset": (
        "containers.0.securityContext",
        {"capabilities": {"drop": ["ALL"]}},
        "Privilege Escalation",
    ),
    "root allowed": ("securityContext.runAsNonRoot", False, "Running as Non-root"),
    "container may be root": (
        "containers.0.securityContext.runAsNonRoot",
        False,
        "Running as Non-root",
    ),
    "uid 0": ("containers.0.securityContext.runAsUser", 0, "Running as Non-root user"),
    "no seccomp": ("securityContext.seccompProfile", None, "Seccomp"),
    "seccomp unconfined": (
        "containers.0.securityContext.seccompProfile",
        {"type": "Unconfined"},
        "Seccomp",
    ),
}


class TestTheChecker:
    def test_a_compliant_pod_passes(self) -> None:
        assert restricted_violations(COMPLIANT) == []
        safe = _set(COMPLIANT, "securityContext.sysctls", [{"name": "net.ipv4.tcp_syncookies"}])
        assert restricted_violations(safe) == []

    @pytest.mark.parametrize(("path", "value", "control"), MUTATIONS.values(), ids=list(MUTATIONS))
    def test_each_control_is_enforced(
        self, path: str, value: Any, control: str | tuple[str, ...]
    ) -> None:
        pod = _set(COMPLIANT, path, value)
        if value is None:
            pod["securityContext"].pop("seccompProfile")
        violations = restricted_violations(pod)
        assert violations, f"{path}={value!r} passed"
        assert all(v.startswith(control) for v in violations), violations

    def test_the_apparmor_annotation_is_checked(self) -> None:
        key = "container.apparmor.security.beta.kubernetes.io/nim"
        assert restricted_violations(COMPLIANT, {key: "runtime/default"}) == []
        assert restricted_violations(COMPLIANT, {key: "unconfined"}) == [
            f"AppArmor: annotation {key}=unconfined"
        ]


def pod_of(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    spec = NIMServiceSpec.model_validate(fields)
    template = render_deployment(OWNER, spec, replicas=1)["spec"]["template"]
    return template["spec"], template["metadata"].get("annotations", {})


names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
quantities = st.sampled_from(["500m", "2", "1Gi", "16Gi", "1.5", 4, "100M"])
probe = st.one_of(
    st.fixed_dictionaries({"httpGet": st.fixed_dictionaries({"port": st.just("api")})}),
    st.fixed_dictionaries({"tcpSocket": st.fixed_dictionaries({"port": st.just(8000)})}),
    st.fixed_dictionaries({"exec": st.fixed_dictionaries({"command": st.just(["true"])})}),
    st.fixed_dictionaries({"grpc": st.fixed_dictionaries({"port": st.just(9000)})}),
)
probe_setting = st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "probe": probe})
storage = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"pvc": st.fixed_dictionaries({"create": st.just(True), "size": quantities})}
    ),
    st.fixed_dictionaries(
        {"pvc": st.fixed_dictionaries({"name": names}, optional={"subPath": names})}
    ),
    st.fixed_dictionaries(
        {"emptyDir": st.fixed_dictionaries({}, optional={"sizeLimit": quantities})}
    ),
).flatmap(
    lambda source: st.fixed_dictionaries(
        {k: st.just(v) for k, v in source.items()},
        optional={"readOnly": st.booleans(), "sharedMemorySizeLimit": quantities},
    )
)
env_var = st.one_of(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["NIM_LOG_LEVEL", "EXTRA", "NIM_SERVER_PORT"]),
            "value": st.sampled_from(["DEBUG", "1", "8080"]),
        }
    ),
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["NGC_API_KEY", "HF_TOKEN", "NIM_API_KEY", "TOKEN"]),
            "valueFrom": st.fixed_dictionaries(
                {"secretKeyRef": st.fixed_dictionaries({"name": names, "key": names})}
            ),
        }
    ),
)
toleration = st.fixed_dictionaries(
    {"key": st.sampled_from(["nvidia.com/gpu", "dedicated"]), "operator": st.just("Exists")},
    optional={"effect": st.sampled_from(["NoSchedule", "PreferNoSchedule"])},
)
specs = st.fixed_dictionaries(
    {
        "image": st.fixed_dictionaries(
            {
                "repository": st.sampled_from(["nvcr.io/nim/meta/llama", "nimstack/nim-server"]),
                "tag": st.sampled_from(["1.3.3", "0.1.0"]),
            },
            optional={
                "pullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
                "pullSecrets": st.lists(names, max_size=2, unique=True),
            },
        )
    },
    optional={
        "authSecret": names,
        "apiKeySecret": st.fixed_dictionaries({"name": names}, optional={"key": names}),
        "command": st.lists(st.sampled_from(["nim-serve", "python", "-m", "x"]), max_size=3),
        "args": st.lists(st.sampled_from(["--verbose", "--port", "9000"]), max_size=3),
        "env": st.lists(env_var, max_size=4),
        "model": st.fixed_dictionaries(
            {}, optional={"name": names, "servedName": names, "maxModelLen": st.integers(1, 131072)}
        ),
        "gpu": st.fixed_dictionaries({"count": st.integers(0, 8)}),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "limits": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
                "requests": st.dictionaries(st.sampled_from(["cpu", "memory"]), quantities),
            },
        ),
        "replicas": st.integers(0, 5),
        "storage": storage,
        "expose": st.fixed_dictionaries(
            {
                "service": st.fixed_dictionaries(
                    {},
                    optional={
                        "type": st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]),
                        "port": st.integers(1, 65535),
                    },
                )
            }
        ),
        "livenessProbe": probe_setting,
        "readinessProbe": probe_setting,
        "startupProbe": probe_setting,
        "labels": st.dictionaries(names, names, max_size=2),
        "annotations": st.dictionaries(names, names, max_size=2),
        "nodeSelector": st.dictionaries(names, names, max_size=2),
        "tolerations": st.lists(toleration, max_size=2),
        "affinity": st.just(
            {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
        ),
        "userID": st.integers(1, 2**31 - 1),
        "groupID": st.integers(0, 2**31 - 1),
        "runtimeClassName": st.sampled_from(["nvidia", "kata"]),
        "priorityClassName": names,
        "schedulerName": names,
        "shutdownTimeoutSeconds": st.integers(0, 3600),
    },
)


class TestRenderedPods:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=specs)
    def test_every_rendered_pod_is_restricted(self, fields: dict[str, Any]) -> None:
        try:
            pod, annotations = pod_of(fields)
        except ValidationError:
            return  # a combination the API server would refuse (e.g. probe and handler rules)
        assert restricted_violations(pod, annotations) == []
        assert "sysctls" not in pod["securityContext"]
        assert pod["automountServiceAccountToken"] is False

    @pytest.mark.parametrize(
        "path", sorted((REPO / "manifests" / "samples").glob("*.yaml")), ids=lambda p: p.name
    )
    def test_the_samples_are_restricted(self, path: Path) -> None:
        pod, annotations = pod_of(yaml.safe_load(path.read_text())["spec"])
        assert restricted_violations(pod, annotations) == []

    def test_host_path_is_the_one_documented_exception(self) -> None:
        pod, _ = pod_of({"image": {"repository": "r", "tag": "t"}, "storage": {"hostPath": "/m"}})
        assert restricted_violations(pod) == [
            "HostPath Volumes: volume model-store",
            "Volume Types: volume model-store is ['hostPath']",
        ]


def test_the_operators_own_pod_is_restricted() -> None:
    deployment = yaml.safe_load((REPO / "manifests" / "deployment.yaml").read_text())
    template = deployment["spec"]["template"]
    assert restricted_violations(template["spec"], template["metadata"].get("annotations")) == []
