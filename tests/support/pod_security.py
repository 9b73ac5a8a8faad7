"""The "restricted" Pod Security Standard (which contains "baseline"), as a pod-spec checker.

Written out control by control from the Kubernetes documentation, policy version v1.31
(https://kubernetes.io/docs/concepts/security/pod-security-standards/). Pod Security admission
applies the same controls to every pod a Deployment creates, so a rendered pod template that
passes here is admitted by a namespace labelled `pod-security.kubernetes.io/enforce: restricted`.

`restricted_violations(pod_spec, annotations)` returns one line per violation, each starting with
the control's name as the documentation spells it ("Host Namespaces", "Volume Types", ...), so a
test can assert which control failed. Containers means containers, initContainers and
ephemeralContainers throughout, as in the documentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "BASELINE_CAPABILITIES",
    "RESTRICTED_VOLUME_TYPES",
    "SAFE_SYSCTLS",
    "restricted_violations",
]

# Baseline "Capabilities": what may be added at all.
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
# Restricted "Capabilities": the only one that may be added, after dropping ALL.
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
# Restricted "Volume Types".
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
# Baseline "Sysctls": the namespaced, isolated ("safe") set.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# Baseline "SELinux": the container types a pod may ask for (or none).
SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod_spec.get(group) or []:
            yield f"{group}[{container.get('name')}]", container


def _baseline(pod_spec: Mapping[str, Any], annotations: Mapping[str, str]) -> Iterator[str]:
    pod_security = pod_spec.get("securityContext") or {}
    contexts = [("pod", pod_security)] + [
        (where, c.get("securityContext") or {}) for where, c in _containers(pod_spec)
    ]
    for where, context in contexts:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield f"HostProcess: {where} windowsOptions.hostProcess"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            yield f"Host Namespaces: {flag}"
    for where, container in _containers(pod_spec):
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            yield f"Privileged Containers: {where}"
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            yield f"Capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}"
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield f"Host Ports: {where} hostPort {port['hostPort']}"
        if context.get("procMount") not in (None, "Default"):
            yield f"/proc Mount Type: {where} {context['procMount']}"
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            yield f"HostPath Volumes: volume {volume.get('name')}"
    for where, context in contexts:
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in APPARMOR_TYPES:
            yield f"AppArmor: {where} appArmorProfile {apparmor}"
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES:
            yield f"SELinux: {where} type {selinux['type']}"
        for field in ("user", "role"):
            if selinux.get(field):
                yield f"SELinux: {where} {field} set"
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"Seccomp: {where} Unconfined"
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield f"AppArmor: annotation {key}={value}"
    for sysctl in pod_security.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"Sysctls: {sysctl.get('name')}"


def _restricted(pod_spec: Mapping[str, Any]) -> Iterator[str]:
    pod_security = pod_spec.get("securityContext") or {}
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            yield f"Volume Types: volume {volume.get('name')} is {sorted(kinds)}"
    pod_non_root = pod_security.get("runAsNonRoot") is True
    if pod_security.get("runAsUser") == 0:
        yield "Running as Non-root user: pod runAsUser 0"
    pod_seccomp = (pod_security.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        yield f"Seccomp: pod {pod_seccomp}"
    for where, container in _containers(pod_spec):
        context = container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"Privilege Escalation: {where} allowPrivilegeEscalation is not false"
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and not pod_non_root):
            yield f"Running as Non-root: {where}"
        if context.get("runAsUser") == 0:
            yield f"Running as Non-root user: {where} runAsUser 0"
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp is None:
            yield f"Seccomp: {where} has no profile (and the pod none)"
        elif seccomp is not None and seccomp not in SECCOMP_TYPES:
            yield f"Seccomp: {where} {seccomp}"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"Capabilities: {where} does not drop ALL"
        added = set(capabilities.get("add") or [])
        if added - RESTRICTED_ADDABLE_CAPABILITIES:
            yield f"Capabilities: {where} adds {sorted(added - RESTRICTED_ADDABLE_CAPABILITIES)}"


def restricted_violations(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every "restricted" (and so "baseline") control the pod violates; empty when admitted."""
    found = list(_baseline(pod_spec, annotations or {})) + list(_restricted(pod_spec))
    return list(dict.fromkeys(found))
