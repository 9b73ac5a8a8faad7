"""What this operator last applied of each watched child, and whether it is still what is live.

A timer tick exists to undo changes nobody told us about. For the children kopf watches for us
(Deployments, Services, ServiceAccounts), every change does tell us: it arrives as a watch event
with a new resourceVersion. So a record of "this manifest was applied and the API server answered
resourceVersion R" stays good until an event with another resourceVersion (or a deletion) comes;
while it is good, re-applying the same manifest would change nothing and a run can skip it.
At 1,000 NIMServices those applies were nearly all of the operator's idle CPU (timer ticks), and
a good part of its load when 1,000 arrive at once (runs after child events, create handlers
that kopf repeats on stale bodies).

Records live in the owner's slot (nim_operator.reconcile) and go with it. A watch can lose events
across a reconnect, so records are trusted only for a bounded number of runs in a row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The children kopf watches for us (nim_operator.handlers), as (apiVersion, plural).
WATCHED_CHILDREN = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "serviceaccounts"),
    ("v1", "pods"),
    # Where its CRD is installed: kopf starts this watch once the kind is served.
    ("leaderworkerset.x-k8s.io/v1", "leaderworkersets"),
)
# Children watched for NIMCaches (nim_operator.handlers_nimcache): filtered by the API server
# like the above, but their applies are not recorded (no watch here invalidates a record).
WATCHED_CACHE_CHILDREN = (("batch/v1", "jobs"),)
# Those whose applies are recorded here (pods are not applied; nim_operator.pod_cache has them).
WATCHED_PLURALS = frozenset(plural for _, plural in WATCHED_CHILDREN if plural != "pods")
# The children that run the server: their records keep what the status is computed from.
WORKLOAD_PLURALS = frozenset({"deployments", "leaderworkersets"})


@dataclass(frozen=True)
class AppliedChild:
    digest: str
    resource_version: str
    # For a Deployment or a LeaderWorkerSet, what the status is computed from (spec without the
    # pod templates, status, metadata): a skipped apply still needs what the apply would have
    # returned.
    body: Mapping[str, Any] | None = None


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def record(plural: str, digest: str, live: Mapping[str, Any]) -> AppliedChild | None:
    """The record of an apply that returned `live`; None for kinds no watch reports on."""
    version = resource_version(live)
    if plural not in WATCHED_PLURALS or not version:
        return None
    body = _slim_workload(live) if plural in WORKLOAD_PLURALS else None
    return AppliedChild(digest, version, body)


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "") or None
    return None


def still_live(child: AppliedChild, event_type: str | None, body: Mapping[str, Any]) -> bool:
    """Whether a watch event leaves the record good: only the echo of our own apply does."""
    return event_type != "DELETED" and resource_version(body) == child.resource_version


def _slim_workload(workload: Mapping[str, Any]) -> dict[str, Any]:
    meta = workload.get("metadata") or {}
    kept = ("name", "namespace", "uid", "generation", "resourceVersion", "ownerReferences")
    templates = ("template", "leaderWorkerTemplate")
    spec = {k: v for k, v in (workload.get("spec") or {}).items() if k not in templates}
    return {
        "metadata": {key: meta[key] for key in kept if key in meta},
        "spec": spec,
        "status": workload.get("status") or {},
    }
