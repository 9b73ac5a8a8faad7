"""Who changed an object, from what the API server streams: `metadata.managedFields`.

Every write to an object goes through the API server's field manager, which keeps, per
(manager, operation, subresource), the fields that manager owns (`fieldsV1`) and when it last
changed the object (`time`, whole seconds). So the entry that differs between two versions of an
object names the client that made the write between them: `kube-controller-manager Update status`
for a Deployment's status, `nimstack-operator Update status` for a NIMService's status,
`nimstack-operator Apply` for a child the operator applied, `kopf Update` for kopf's annotations
(a client that names no field manager gets the part of its User-Agent before the first "/").

How a change is attributed, first rule that gives an answer (`how` in each `Change`):

* `time`: exactly one entry has a new `time`, and it owns fields in every area that changed (and
  is still there). A real API server stamps only the writer's entry, and only when its write
  changed the object, and the writer owns what it set;
* `fieldsV1`: the entries that are new or own more fields than before (else, those whose fields
  changed). Used when no entry or several were stamped: a manager that writes again within the
  same second leaves its `time` as it was, and the API-server emulator stamps every entry on each
  write (so several stamped entries cannot all be writers);
* `owner`: the entries that own an area that changed (an area is a top-level part of the object,
  see `areas`): the same manager rewrote values it owns within one second;
* `created`: an ADDED object, attributed to every entry it carries (its creator's);
* `unknown`: none of the above, e.g. an object without managedFields. DELETED events say nothing
  about who deleted, so they are `deleted`, by nobody known.

Nothing here assumes a field is there or not null: a real API server omits what the emulator may
always set, and an object may carry no managedFields at all.

Per object only a `Snapshot` is kept between events: a hash per area and per managedFields entry,
not the body, so thousands of objects cost little.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Managers that are the operator's process: nim_operator's own writes (its field manager, and the
# one that hands spec.replicas over to an autoscaler) and kopf's (finalizers, annotations).
OPERATOR_MANAGERS = ("nimstack-operator", "kopf")
# Metadata the API server maintains itself or that only moves with another area.
_SERVER_METADATA = frozenset({"resourceVersion", "managedFields", "generation"})
# Metadata fields reported as areas of their own; the rest of metadata is "metadata".
METADATA_AREAS = ("labels", "annotations", "finalizers", "ownerReferences", "deletionTimestamp")
UNKNOWN = "(unknown)"

EntryKey = tuple[str, str, str]  # (manager, operation, subresource)


def is_operator(writer: str) -> bool:
    """Whether a writer label ("manager operation [subresource]") is the operator's process."""
    manager = writer.split(" ", 1)[0]
    return any(manager == m or manager.startswith(f"{m}-") for m in OPERATOR_MANAGERS)


def label(key: EntryKey) -> str:
    manager, operation, subresource = key
    return " ".join(part for part in (manager or "(no manager)", operation, subresource) if part)


def _digest(value: Any) -> int:
    return hash(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def areas(body: Mapping[str, Any]) -> dict[str, int]:
    """A hash of each area of an object: each top-level field but metadata (spec, status, data,
    ...), each of METADATA_AREAS, and "metadata" for the rest of it (resourceVersion,
    managedFields and generation excepted). A null field counts as absent."""
    out: dict[str, int] = {}
    for key, value in body.items():
        if key != "metadata" and value is not None:
            out[key] = _digest(value)
    rest = {}
    for key, value in _mapping(body.get("metadata")).items():
        if value is None or key in _SERVER_METADATA:
            continue
        if key in METADATA_AREAS:
            out[f"metadata.{key}"] = _digest(value)
        else:
            rest[key] = value
    out["metadata"] = _digest(rest)
    return out


def owned_areas(fields: Any) -> frozenset[str]:
    """The areas (as `areas` names them) a `fieldsV1` set has fields in."""
    found = set()
    for key, value in _mapping(fields).items():
        if not key.startswith("f:"):
            continue
        if key == "f:metadata":
            for sub in _mapping(value):
                name = sub[2:] if sub.startswith("f:") else sub
                found.add(f"metadata.{name}" if name in METADATA_AREAS else "metadata")
        else:
            found.add(key[2:])
    return frozenset(found)


def _leaves(fields: Any) -> int:
    children = _mapping(fields)
    return sum(_leaves(v) for v in children.values()) if children else 1


@dataclass(frozen=True, slots=True)
class Entry:
    """One managedFields entry, as much of it as attribution needs."""

    time: str | None
    fields: int  # hash of fieldsV1
    leaves: int  # how many fields it owns
    owns: frozenset[str]  # the areas it owns fields in


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str | None
    areas: dict[str, int]
    entries: dict[EntryKey, Entry]


def snapshot(body: Mapping[str, Any]) -> Snapshot:
    meta = _mapping(body.get("metadata"))
    entries: dict[EntryKey, Entry] = {}
    managed = meta.get("managedFields")
    for raw in managed if isinstance(managed, list) else []:
        if not isinstance(raw, Mapping):
            continue
        key = (
            str(raw.get("manager") or ""),
            str(raw.get("operation") or ""),
            str(raw.get("subresource") or ""),
        )
        fields = raw.get("fieldsV1")
        stamp = raw.get("time")
        entries[key] = Entry(
            time=str(stamp) if stamp else None,
            fields=_digest(fields),
            leaves=_leaves(fields) if fields else 0,
            owns=owned_areas(fields),
        )
    version = meta.get("resourceVersion")
    return Snapshot(str(version) if version else None, areas(body), entries)


@dataclass(frozen=True, slots=True)
class Attribution:
    writers: tuple[str, ...]  # labels of the entries held responsible; empty if none is known
    areas: tuple[str, ...]  # what changed
    how: str  # which rule gave the writers (see the module docstring)


def attribute(before: Snapshot | None, after: Snapshot) -> Attribution:
    """Who made the write that turned `before` into `after` (None: `after` was just created)."""
    if before is None:
        created = sorted(after.entries)
        return Attribution(
            tuple(label(k) for k in created), ("(created)",), "created" if created else "unknown"
        )
    changed = tuple(
        sorted(
            area
            for area in after.areas.keys() | before.areas.keys()
            if after.areas.get(area) != before.areas.get(area)
        )
    )
    old = before.entries
    new = after.entries
    if not changed and old != new:
        changed = ("metadata.managedFields",)  # ownership alone moved (an apply taking fields)

    stamped = [
        k for k, e in new.items() if e.time is not None and (k not in old or old[k].time != e.time)
    ]
    if len(stamped) == 1 and _explains(new[stamped[0]], changed, after):
        return Attribution((label(stamped[0]),), changed, "time")
    reshaped = [k for k, e in new.items() if k not in old or old[k].fields != e.fields]
    grown = [k for k in reshaped if k not in old or new[k].leaves > old[k].leaves]
    if candidates := grown or reshaped:
        return Attribution(tuple(label(k) for k in sorted(candidates)), changed, "fieldsV1")
    owners = [k for k, e in new.items() if e.owns & set(changed)]
    if owners:
        return Attribution(tuple(label(k) for k in sorted(owners)), changed, "owner")
    return Attribution((), changed, "unknown")


# Areas no manager owns fields in: what the server keeps, or ownership itself.
_UNOWNED_AREAS = frozenset({"metadata", "metadata.managedFields", "metadata.deletionTimestamp"})


def _explains(entry: Entry, changed: tuple[str, ...], after: Snapshot) -> bool:
    """Whether a write by `entry`'s manager can have made these changes: a writer owns every
    field it set afterwards (an update takes them over, an apply declares them), so each changed
    area still there must be one it owns. This keeps a stamp that says nothing from naming the
    wrong writer: the emulator restamps every entry on each write, so an object with a single
    entry looks stamped by it whoever wrote, e.g. kopf adding a finalizer the emulator does not
    track."""
    return all(
        area in entry.owns or area in _UNOWNED_AREAS or area not in after.areas for area in changed
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One event of the benchmark's watch that changed something, and who made it."""

    at: float  # time.monotonic() on arrival
    kind: str  # the resource's plural
    event: str  # ADDED, MODIFIED, DELETED
    name: str
    writers: tuple[str, ...]
    areas: tuple[str, ...]
    how: str

    @property
    def by_operator(self) -> bool:
        return any(is_operator(w) for w in self.writers)

    @property
    def by_others(self) -> bool:
        """Some writer is not the operator, or no writer is known (a deletion, no entries)."""
        return not self.writers or not all(is_operator(w) for w in self.writers)


class Ledger:
    """Every change the watches saw, attributed; a `Snapshot` per live object in between."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._known: dict[tuple[str, str], Snapshot] = {}
        # When the latest change by someone other than the operator arrived.
        self.last_by_others: float | None = None

    def observe(self, kind: str, event: str, body: Mapping[str, Any], at: float) -> Change | None:
        """Record one watch event; None when it changed nothing (a re-listed or repeated one)."""
        meta = _mapping(body.get("metadata"))
        name = str(meta.get("name") or meta.get("uid") or "")
        key = (kind, name)
        if event == "DELETED":
            self._known.pop(key, None)
            change = Change(at, kind, event, name, (), (), "deleted")
        elif event in ("ADDED", "MODIFIED"):
            after = snapshot(body)
            before = self._known.get(key)
            self._known[key] = after
            if before is not None and (
                (after.version is not None and after.version == before.version)
                or (before.areas == after.areas and before.entries == after.entries)
            ):
                return None  # seen before: a watch that started over lists it again
            if before is None and event == "MODIFIED":
                # Its ADDED was missed: whoever stamped it last is the best guess.
                latest = max((e.time or "" for e in after.entries.values()), default="")
                guess = sorted(k for k, e in after.entries.items() if latest and e.time == latest)
                found = Attribution(
                    tuple(label(k) for k in guess), (), "latest" if guess else "unknown"
                )
            else:
                found = attribute(before, after)
            # A relisted object that changed meanwhile was modified, whatever the event says.
            kind_of_event = "MODIFIED" if before is not None else event
            change = Change(at, kind, kind_of_event, name, found.writers, found.areas, found.how)
        else:
            return None  # BOOKMARK and the like
        self.changes.append(change)
        if change.by_others:
            self.last_by_others = change.at
        return change

    def between(self, start: float, end: float) -> list[Change]:
        return [c for c in self.changes if start <= c.at < end]


def summarize(changes: Iterable[Change]) -> dict[str, Any]:
    """What changed in one phase: counts by kind, by event, by writer, by how they were
    attributed, and by kind -> writer -> areas; `operator_writes` counts the changes the operator
    made (wholly or with another writer), `other_writes` the rest's."""
    by_kind: Counter[str] = Counter()
    by_event: Counter[str] = Counter()
    by_writer: Counter[str] = Counter()
    by_how: Counter[str] = Counter()
    detail: dict[str, dict[str, Counter[str]]] = {}
    operator = others = total = 0
    for change in changes:
        total += 1
        by_kind[change.kind] += 1
        by_event[change.event] += 1
        by_how[change.how] += 1
        writers = change.writers or (UNKNOWN,)
        for writer in writers:
            by_writer[writer] += 1
            what = ", ".join(change.areas) or ("deleted" if change.event == "DELETED" else "-")
            detail.setdefault(change.kind, {}).setdefault(writer, Counter())[what] += 1
        operator += change.by_operator
        others += change.by_others
    return {
        "changes": total,
        "operator_writes": operator,
        "other_writes": others,
        "by_kind": dict(sorted(by_kind.items())),
        "by_event": dict(sorted(by_event.items())),
        "by_writer": dict(by_writer.most_common()),
        "by_how": dict(sorted(by_how.items())),
        "detail": {
            kind: {writer: dict(areas.most_common()) for writer, areas in sorted(writers.items())}
            for kind, writers in sorted(detail.items())
        },
    }
