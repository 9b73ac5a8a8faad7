"""`python -m nim_operator`: run the operator as its container image does.

Credentials come from the in-cluster service account, else the current kubeconfig. It watches
the namespaces in NIM_OPERATOR_NAMESPACES (comma-separated, globs allowed) or, when that is
empty, the whole cluster; the liveness probe is served at NIM_OPERATOR_LIVENESS_ENDPOINT
(default http://0.0.0.0:8080/healthz).
"""

from __future__ import annotations

from nim_operator.startup import leave_out_official_client

leave_out_official_client()  # before kopf is imported (nim_operator.startup says why)

import kopf  # noqa: E402

from nim_operator import handlers  # noqa: E402


def main() -> None:
    settings = handlers.SETTINGS
    namespaces = settings.namespace_patterns()
    kopf.configure(verbose=settings.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )


if __name__ == "__main__":
    main()
