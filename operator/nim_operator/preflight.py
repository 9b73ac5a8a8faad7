"""Before the operator starts: is there a cluster to talk to, and does it accept us?

Left to kopf, an operator without credentials retries its startup every 60 s with a traceback,
and one whose API server is unreachable or refuses its credentials retries every watch for
ever: the cause scrolls away and nothing exits. `check_cluster` asks once, with a short budget,
and a problem it finds is one line (`ClusterUnavailable`) and a non-zero exit. Once the
operator runs, API failures are retried as before: an API server restart must not stop it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import kopf

from nim_operator import API_GROUP, API_VERSION, PLURAL
from nim_operator.kube import ApiError, KubeClient, login
from nim_operator.startup import SERVICE_ACCOUNT_TOKEN, kubeconfig_paths

__all__ = ["ClusterUnavailable", "Credentials", "check_cluster", "find_credentials"]

logger = logging.getLogger(__name__)

# Per request, and retries of it: seconds for a server that is there, bounded for one that is not.
REQUEST_TIMEOUT = 5.0
REQUEST_RETRIES = 2
HOW_TO_POINT = (
    "set KUBECONFIG to a kubeconfig file (or create ~/.kube/config), "
    "or run the operator in a pod with a service account"
)


class ClusterUnavailable(Exception):
    """The operator cannot work with any cluster; the message says why and what to do."""


@dataclass(frozen=True)
class Credentials:
    """Where the login will come from, in words for an error message."""

    source: str


def find_credentials(
    environ: Mapping[str, str] = os.environ, service_account_token: Path = SERVICE_ACCOUNT_TOKEN
) -> Credentials:
    """The credentials kopf's login will find (in-cluster first), or ClusterUnavailable."""
    if environ.get("KUBERNETES_SERVICE_HOST") and service_account_token.exists():
        return Credentials("the in-cluster service account")
    paths = kubeconfig_paths(environ)
    existing = [path for path in paths if path.exists()]
    if existing:
        return Credentials("kubeconfig " + os.pathsep.join(str(p) for p in existing))
    if environ.get("KUBECONFIG", "").strip():
        kubeconfig = f"KUBECONFIG={environ['KUBECONFIG']} names no existing file"
    else:
        kubeconfig = "KUBECONFIG is not set and ~/.kube/config does not exist"
    in_cluster = (
        f"no service account token at {service_account_token}"
        if environ.get("KUBERNETES_SERVICE_HOST")
        else "not in a pod (KUBERNETES_SERVICE_HOST is not set)"
    )
    raise ClusterUnavailable(
        f"no Kubernetes cluster to talk to: {in_cluster}, and {kubeconfig}; {HOW_TO_POINT}"
    )


# Whether a check passed in this process: the command line checks before kopf starts, and
# the startup handler (which plain `kopf run` reaches without that) need not ask again.
_passed = False


async def check_cluster() -> None:
    """Log in and ask the API server for our API group; ClusterUnavailable if that fails.

    Once it has passed in this process, it returns at once. A cluster without the NIMService
    CRD is not an error (it may be installed after the operator, as `kubectl apply -k` does
    in one go), only a warning.
    """
    global _passed
    if _passed:
        return
    credentials = find_credentials()
    try:
        info = await login()
    except kopf.LoginError as e:
        raise ClusterUnavailable(f"cannot log in with {credentials.source}: {e}") from None
    client = KubeClient(
        info, timeout=REQUEST_TIMEOUT, retries=REQUEST_RETRIES, user_agent="nimstack-operator"
    )
    group = f"{API_GROUP}/{API_VERSION}"
    try:
        served = await client.has_resource(group, PLURAL)
    except ApiError as e:
        raise ClusterUnavailable(_explain(e, info.server, credentials)) from None
    finally:
        await client.close()
    _passed = True
    if not served:
        logger.warning(
            "The API server at %s does not serve %s %s yet: install the CRD with "
            "`kubectl apply -k crds/`; the operator waits for it.",
            info.server,
            group,
            PLURAL,
        )


def _explain(error: ApiError, server: str, credentials: Credentials) -> str:
    where = f"the Kubernetes API server at {server} (credentials: {credentials.source})"
    if error.status == 0:
        return f"cannot reach {where}: {error.reason}: {error.message}"
    if error.status == 401:
        return f"{where} refused the credentials (401 Unauthorized): {error.message}"
    if error.status == 403:
        return f"{where} forbids API discovery to these credentials (403): {error.message}"
    return f"{where} answered {error.status} {error.reason}: {error.message}"
