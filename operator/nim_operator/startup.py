"""Process start-up, before kopf is imported: load the official Kubernetes client only if needed.

kopf imports the `kubernetes` package at import time whenever it is installed: to recognise its
model objects (which this operator never hands to kopf) and to log in through it. That import
alone is about 20 MiB of the operator's memory, a seventh of its budget at 1,000 NIMServices. The
operator speaks to the API server with plain HTTP (nim_operator.kube); it needs the official
client only for credentials that kopf's own minimal readers cannot use: a kubeconfig user with an
`exec` plugin, an `auth-provider` or a `tokenFile` (cloud providers' kubeconfigs, on a laptop).
In a pod, the service account token is read without it.

So the command line (nim_operator.cli: the `nim-operator` command the image runs, and
`python -m nim_operator`) calls `leave_out_official_client()` first; with the client left out,
`import kubernetes` fails and kopf and nim_operator.kube fall back to their readers of the
service account and kubeconfig.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "SERVICE_ACCOUNT_TOKEN",
    "kubeconfig_paths",
    "leave_out_official_client",
    "official_client_needed",
]

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# What a kubeconfig user can hold that only the official client knows how to turn into a token.
CLIENT_ONLY_CREDENTIALS = frozenset({"exec", "auth-provider", "tokenFile"})


def kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    """The kubeconfig files kubectl would read: $KUBECONFIG's, else ~/.kube/config if present."""
    value = environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    default = Path("~/.kube/config").expanduser()
    return paths or ([default] if default.exists() else [])


def _current_user(paths: list[Path]) -> dict[str, Any]:
    """The current context's user, merged over the files the way kubectl does (first wins)."""
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        current = current or config.get("current-context")
        for item in config.get("contexts") or []:
            contexts.setdefault(item["name"], item.get("context") or {})
        for item in config.get("users") or []:
            users.setdefault(item["name"], item.get("user") or {})
    if current is None:
        return {}
    user: dict[str, Any] = users.get(contexts.get(current, {}).get("user", ""), {})
    return user


def official_client_needed(
    environ: Mapping[str, str] = os.environ, service_account_token: Path = SERVICE_ACCOUNT_TOKEN
) -> bool:
    """Whether the credentials this process will log in with need the official client."""
    if environ.get("KUBERNETES_SERVICE_HOST") and service_account_token.exists():
        return False  # in a pod: the service account
    try:
        user = _current_user(kubeconfig_paths(environ))
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return True  # a kubeconfig we cannot read ourselves: let the client try
    return bool(CLIENT_ONLY_CREDENTIALS & user.keys())


def leave_out_official_client() -> bool:
    """Make `import kubernetes` fail in this process unless the credentials need it.

    True if it was left out. Must run before kopf is imported; does nothing after.
    """
    if "kubernetes" in sys.modules or "kopf" in sys.modules or official_client_needed():
        return False
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # Python's "not importable"
    return True
