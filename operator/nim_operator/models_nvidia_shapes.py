"""NVIDIA's older and deprecated NIMService spellings, folded into the fields the renderers read.

NVIDIA's NIMService moved fields over its v1alpha1 life and kept accepting the old places:
`spec.nimCache` (now `storage.nimCache`), `expose.service.openaiPort` (now `port`), the top-level
`spec.router` (now `expose.router`) and `spec.podAffinity` (deprecated for `affinity`). The CRD
accepts them all; this module turns a stored spec into one that says the same thing with the
current fields only, so every renderer has one place to read.

It also applies NVIDIA's storage precedence, because NVIDIA's CRD accepts any combination of
storage sources and its controller picks one: a NIMCache (by name), else a claim to create,
else an existing claim, else an emptyDir, else a hostPath. The sources not picked are dropped.

Old and new spellings that disagree never get here: the CRD's CEL rules (and the model's
validators, with the same messages) refuse them. Pure: dicts in, dicts out, nothing mutated.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["current_spec", "effective_storage"]


def _named(ref: Any) -> bool:
    return isinstance(ref, dict) and bool(ref.get("name"))


def effective_storage(storage: dict[str, Any]) -> dict[str, Any]:
    """`storage` with only the model-store source NVIDIA's controller would use.

    A `nimCache` without a name and a `pvc` with neither `create` nor `name` are not sources
    (NVIDIA skips them too); `hostPath: ""` is no path.
    """
    picked = dict(storage)
    if not _named(picked.get("nimCache")):
        picked.pop("nimCache", None)
    pvc = picked.get("pvc")
    if isinstance(pvc, dict) and not (pvc.get("create") or pvc.get("name")):
        picked.pop("pvc")
    if not picked.get("hostPath"):
        picked.pop("hostPath", None)
    order = ("nimCache", "pvc", "emptyDir", "hostPath")
    chosen = next((source for source in order if picked.get(source) is not None), None)
    for source in order:
        if source != chosen:
            picked.pop(source, None)
    return picked


def _fold(spec: dict[str, Any], old: str, section: str, new: str) -> None:
    """Move spec[old] to spec[section][new] unless that is set (then they are equal: CEL)."""
    if old not in spec:
        return
    value = spec.pop(old)
    holder = dict(spec.get(section) or {})
    holder.setdefault(new, value)
    spec[section] = holder


def current_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The stored `spec` with NVIDIA's old spellings moved to the current fields."""
    current = copy.deepcopy(spec)
    _fold(current, "nimCache", "storage", "nimCache")
    _fold(current, "router", "expose", "router")
    expose = current.get("expose")
    if isinstance(expose, dict) and isinstance(expose.get("service"), dict):
        service = dict(expose["service"])
        if "openaiPort" in service:
            port = service.pop("openaiPort")
            service.setdefault("port", port)
        current["expose"] = {**expose, "service": service}
    if "podAffinity" in current:
        # NVIDIA's newest operator reads `affinity` only: a podAffinity there wins.
        _fold(current, "podAffinity", "affinity", "podAffinity")
    if isinstance(current.get("storage"), dict):
        current["storage"] = effective_storage(current["storage"])
    return current
