"""Pure helpers for the API-server emulator: patches, field ownership, selectors.

They give kmock's emulator the parts of Kubernetes API semantics the operator relies on:
JSON merge patch (RFC 7386), server-side apply with per-manager field ownership, and label/field
selectors. They are deliberately simpler than the real API server, and say so where it matters:

* Lists are atomic. The real server merges associative lists (containers by ``name``,
  ownerReferences by ``uid``) item by item; here a list is one field owned as a whole. Our operator
  applies every list it declares in full, so the difference does not change its behaviour.
* Ownership is tracked per leaf path. Removing a field that only one manager applied removes it
  from the object, exactly the behaviour that makes dropping ``spec.replicas`` reset it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

Path = tuple[str, ...]
# (manager, operation, subresource) -> owned leaf paths; operation is "Apply" or "Update".
ManagerKey = tuple[str, str, str]
ManagedFields = dict[ManagerKey, set[Path]]

# Metadata the server owns or identifies the object by: never tracked as a manager's field.
_UNTRACKED_METADATA = {
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "finalizers",
}


class FieldConflictError(Exception):
    """An apply without force touches fields another manager owns with a different value."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        described = "; ".join(f'conflict with "{m}": .{".".join(p)}' for m, p in conflicts)
        super().__init__(f"Apply failed with {len(conflicts)} conflict(s): {described}")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``None`` deletes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Apply-style merge: maps merge recursively, lists and scalars replace (no deletions)."""
    result = dict(copy.deepcopy(base))
    for key, value in overlay.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            result[key] = deep_merge(current, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def leaf_paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every leaf under ``value``: scalars, lists (atomic) and empty maps."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from leaf_paths(item, (*prefix, str(key)))
    elif prefix:
        yield prefix


def tracked_paths(obj: Mapping[str, Any], *, include_status: bool) -> set[Path]:
    """The leaf paths a manager can own: spec-like content and user metadata."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if key in {"apiVersion", "kind"} or (key == "status" and not include_status):
            continue
        if key == "metadata" and isinstance(value, Mapping):
            for meta_key, meta_value in value.items():
                if meta_key not in _UNTRACKED_METADATA:
                    paths.update(leaf_paths(meta_value, ("metadata", meta_key)))
            continue
        paths.update(leaf_paths(value, (key,)))
    return paths


_MISSING = object()


def get_path(obj: Any, path: Path) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj


def delete_path(obj: dict[str, Any], path: Path) -> None:
    """Remove a field, and the maps it leaves empty on the way up."""
    parents: list[tuple[dict[str, Any], str]] = []
    node: Any = obj
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(path[-1], None)
    for parent, key in reversed(parents):
        if parent[key] == {}:
            del parent[key]
        else:
            break


def _overlaps(a: Path, b: Path) -> bool:
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def changed_paths(old: Mapping[str, Any], new: Mapping[str, Any], *, status: bool) -> set[Path]:
    """Leaf paths whose value differs between two versions (added, removed or modified)."""
    candidates = tracked_paths(old, include_status=status) | tracked_paths(
        new, include_status=status
    )
    if status:  # a /status write only ever concerns the status stanza
        candidates = {p for p in candidates if p[0] == "status"}
    return {p for p in candidates if get_path(old, p) != get_path(new, p)}


def record_update(
    managed: ManagedFields, key: ManagerKey, changed: set[Path], new: Mapping[str, Any]
) -> None:
    """An update (patch/put) takes ownership of whatever it changed, from everyone else."""
    for other_key, paths in managed.items():
        if other_key != key:
            paths.difference_update({p for p in paths for c in changed if _overlaps(p, c)})
    present = {p for p in changed if get_path(new, p) is not _MISSING}
    managed.setdefault(key, set()).update(present)
    gone = {p for p in changed if get_path(new, p) is _MISSING}
    for paths in managed.values():
        paths.difference_update(gone)
    _drop_empty(managed)


def server_side_apply(
    live: Mapping[str, Any],
    config: Mapping[str, Any],
    managed: ManagedFields,
    *,
    manager: str,
    force: bool,
    subresource: str = "",
) -> dict[str, Any]:
    """Merge an applied configuration into the live object and update field ownership.

    Fields the manager applied before but no longer declares are removed, unless another
    manager also owns them. Conflicts (another owner, different value) fail without ``force``;
    with ``force`` the applier takes them over.
    """
    key: ManagerKey = (manager, "Apply", subresource)
    applied = tracked_paths(config, include_status=subresource == "status")
    conflicts: list[tuple[str, Path]] = []
    for path in sorted(applied):
        if get_path(live, path) == get_path(config, path):
            continue  # same value: shared ownership, never a conflict
        for (other, _op, _sub), paths in managed.items():
            if other != manager and any(_overlaps(path, p) for p in paths):
                conflicts.append((other, path))
    if conflicts and not force:
        raise FieldConflictError(conflicts)
    for other_key, paths in managed.items():
        if other_key[0] != manager:
            taken = {p for p in paths for _, c in conflicts if _overlaps(p, c)}
            paths.difference_update(taken)

    result = dict(copy.deepcopy(live))
    others = [paths for other_key, paths in managed.items() if other_key != key]
    for dropped in managed.get(key, set()) - applied:
        if not any(_overlaps(dropped, p) for paths in others for p in paths):
            delete_path(result, dropped)
    result = deep_merge(result, config)
    managed[key] = applied
    _drop_empty(managed)
    return result


def _drop_empty(managed: ManagedFields) -> None:
    for key in [k for k, paths in managed.items() if not paths]:
        del managed[key]


def render_managed_fields(
    managed: ManagedFields, *, api_version: str, time: str
) -> list[dict[str, Any]]:
    """The ``metadata.managedFields`` entries, in the FieldsV1 shape clients read."""
    entries = []
    for (manager, operation, subresource), paths in sorted(managed.items()):
        fields: dict[str, Any] = {}
        for path in sorted(paths):
            node = fields
            for part in path:
                node = node.setdefault(f"f:{part}", {})
        entry: dict[str, Any] = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields,
        }
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    return entries


# --- selectors --------------------------------------------------------------------------------

_SET_REQUIREMENT = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_requirements(selector: str) -> Iterable[str]:
    depth, start = 0, 0
    for index, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            yield selector[start:index]
            start = index + 1
    yield selector[start:]


def matches_label_selector(labels: Mapping[str, str], selector: str | None) -> bool:
    """Equality- and set-based label selectors, as in ``?labelSelector=...``."""
    for requirement in _split_requirements(selector or ""):
        requirement = requirement.strip()
        if not requirement:
            continue
        if match := _SET_REQUIREMENT.match(requirement):
            key, operator, raw_values = match.groups()
            values = {v.strip() for v in raw_values.split(",")}
            if (operator == "in") != (labels.get(key) in values):
                return False
        elif "!=" in requirement:
            key, value = (part.strip() for part in requirement.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in requirement:
            key, value = (part.strip() for part in requirement.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def matches_field_selector(obj: Mapping[str, Any], selector: str | None) -> bool:
    """Field selectors on dotted paths, e.g. ``metadata.name=x,status.phase!=Running``."""
    for requirement in (selector or "").split(","):
        requirement = requirement.strip()
        if not requirement:
            continue
        negate = "!=" in requirement
        field, value = requirement.split("!=" if negate else "=", 1)
        actual = get_path(obj, tuple(field.strip().lstrip("=").split(".")))
        actual_text = "" if actual is _MISSING else str(actual)
        if (actual_text == value.strip().lstrip("=")) == negate:
            return False
    return True
