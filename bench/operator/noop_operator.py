"""The baseline: a kopf operator with nim_operator's registrations and settings, doing nothing.

`nim-operator run -m bench.operator.noop_operator --standalone` watches what nim_operator watches
(NIMServices and NIMCaches, and its label-filtered Deployments, LeaderWorkerSets, Services,
ServiceAccounts, Pods and download Jobs), with the
same event handlers, the same change handlers, the same timer interval, the same daemon filter
and the same kopf settings (finalizer, progress and diff-base annotations) - but every handler
returns at once (tests/bench keeps the two registrations equal). What it costs is the floor that
kopf and the Python process set; what nim_operator costs above it is our code.
"""

from __future__ import annotations

from typing import Any

import kopf

from nim_operator import API_GROUP, API_VERSION, PLURAL
from nim_operator.render.labels import FIELD_MANAGER, MANAGED_BY_LABEL, NAME_LABEL
from nim_operator.render.nimcache_job import CACHE_APP_NAME
from nim_operator.settings import Settings, configure_kopf

SETTINGS = Settings()
NIMSERVICE = (API_GROUP, API_VERSION, PLURAL)
NIMCACHE = (API_GROUP, API_VERSION, "nimcaches")
OUR_CHILDREN = {MANAGED_BY_LABEL: FIELD_MANAGER}
DOWNLOAD_JOBS = {NAME_LABEL: CACHE_APP_NAME, MANAGED_BY_LABEL: FIELD_MANAGER}


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_kopf(settings, SETTINGS)


@kopf.on.event(*NIMSERVICE)
async def track_nimservices(**_: Any) -> None:
    return None


@kopf.on.create(*NIMSERVICE)
@kopf.on.update(*NIMSERVICE)
async def reconcile_on_change(**_: Any) -> None:
    return None


@kopf.on.resume(*NIMSERVICE)
async def reconcile_on_resume(**_: Any) -> None:
    return None


@kopf.timer(
    *NIMSERVICE,
    interval=SETTINGS.reconcile_interval,
    initial_delay=SETTINGS.reconcile_interval,
)
async def reconcile_periodically(**_: Any) -> None:
    return None


@kopf.on.event("apps", "v1", "deployments", labels=OUR_CHILDREN)
@kopf.on.event("v1", "services", labels=OUR_CHILDREN)
@kopf.on.event("v1", "serviceaccounts", labels=OUR_CHILDREN)
@kopf.on.event("v1", "pods", labels=OUR_CHILDREN)
@kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=OUR_CHILDREN)
async def reconcile_owner_of_child(**_: Any) -> None:
    return None


@kopf.on.delete(*NIMSERVICE, optional=True)
async def forget(**_: Any) -> None:
    return None


def _autoscaled(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("autoscaling")) or spec.get("scaleToZeroAfter") is not None


@kopf.daemon(*NIMSERVICE, when=_autoscaled, cancellation_backoff=1.0, cancellation_timeout=5.0)
async def autoscale(stopped: kopf.DaemonStopped, **_: Any) -> None:
    await stopped.wait()


@kopf.on.resume(*NIMCACHE)
@kopf.on.create(*NIMCACHE)
@kopf.on.update(*NIMCACHE)
async def reconcile_cache_on_change(**_: Any) -> None:
    return None


@kopf.timer(
    *NIMCACHE, interval=SETTINGS.reconcile_interval, initial_delay=SETTINGS.reconcile_interval
)
async def reconcile_cache_periodically(**_: Any) -> None:
    return None


@kopf.on.event("batch", "v1", "jobs", labels=DOWNLOAD_JOBS)
async def reconcile_cache_of_job(**_: Any) -> None:
    return None


@kopf.on.event(*NIMCACHE)
async def wake_nimservices(**_: Any) -> None:
    return None


@kopf.on.delete(*NIMCACHE, optional=True)
async def forget_cache(**_: Any) -> None:
    return None
