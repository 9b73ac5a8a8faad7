"""What kube-apiserver refuses, refused by the emulator too: typed query parameters and bodies.

A real API server decodes every request before it does anything with it, and answers a request
it cannot decode or that fails validation with a `metav1.Status`; kmock accepts whatever it is
sent. The operator once sent `timeoutSeconds=300.0` on every watch: kube-apiserver answered 400
`strconv.ParseInt: parsing "300.0": invalid syntax`, the emulator streamed events, and every test
passed. `StrictChecks` closes that gap. `ApiServerEmulator._handle` calls `check_request` on every
request (after authorization, before faults and routing), and `_default` calls `check_stored` on
every object about to be stored. Each answer carries kube-apiserver's status, reason and message:

* **Query parameters, per verb** (get, list, watch, create, update, patch incl. apply, delete,
  deletecollection, and the status and scale subresources), decoded as the API server's parameter
  codec does: `timeoutSeconds`, `limit` and `gracePeriodSeconds` with Go's `strconv.ParseInt`
  (400 BadRequest `strconv.ParseInt: parsing "300.0": invalid syntax`); booleans (`watch`,
  `allowWatchBookmarks`, `force`, `sendInitialEvents`, `orphanDependents`) are false only for `0`
  and `false` in any case, as in Go, and never an error. Then the options' validation, as
  422 Invalid `<Kind>Options.meta.k8s.io "" is invalid: ...`: `dryRun` only `All`,
  `fieldValidation` only Ignore/Warn/Strict, `fieldManager` at most 128 bytes of printable
  characters and required for an apply patch, `force` only on an apply patch, `propagationPolicy`
  Foreground/Background/Orphan (and not with `orphanDependents`), `resourceVersionMatch` and
  `sendInitialEvents` as ListOptions validation allows them (with the WatchList feature on).
  A patch in a media type the resource does not take is 415 (custom resources take no strategic
  merge patch). Field selectors name only fields the resource can be selected by (400).
* **Stricter than kube-apiserver, on purpose:** a real server silently ignores a query parameter
  it does not know. Here an unknown parameter is 400 BadRequest naming it (a misspelt
  `labelSelector` would otherwise make a watch stream every object). `dryRun=All` is valid but
  400 here: the emulator does not implement dry runs, and storing the object would be wrong.
  And `watch` spelt other than `true` (which Go reads as true, kmock as a list) is 400 here.
* **Bodies of built-in kinds** (create, update, merge and JSON patch) are decoded the way Go's JSON
  decoder fills the typed object, from Kubernetes' own OpenAPI (the `kubernetes-validate`
  schemas kmock_schemas loads): a value of the wrong JSON type is an error, and *integer means an
  integer literal*: `30.0` where an int32 belongs is `json: cannot unmarshal number 30.0 into Go
  struct field PodSpec.spec.template.spec.terminationGracePeriodSeconds of type int64`, although
  JSON Schema counts 30.0 as an integer. `metav1.Time` must parse as RFC 3339 and `MicroTime`
  (Lease acquireTime/renewTime, Event eventTime) as RFC 3339 with exactly six fractional digits;
  quantities and int-or-strings as their own decoders parse them. A create or update answers
  400 `<Kind> in version "<v>" cannot be handled as a <Kind>: <error>`, a patch 422
  `"" is invalid: patch: Invalid value: "<patched object>": <error>`, as the two handlers do.
  A server-side apply keeps its own check, the 500 of kmock_schemas.
* **Unknown fields**, of built-in and custom kinds: with `fieldValidation=Strict`, 400
  `strict decoding error: unknown field "spec.foo"` on a create or update (422 inside the patch
  error on a patch); otherwise dropped from what is stored (custom resources: by the schema's
  pruning; built-in kinds: here) with a `Warning: 299 - "unknown field \\"spec.foo\\""` response
  header unless the directive is Ignore (Warn is the server's default). Warnings are also kept
  in `StrictChecks.warnings`.
* **Custom resources are validated** against their CRD's structural schema
  (`crd_validation.schema_errors`, after the schema's defaults), on every write: 422 Invalid
  `NIMService.nimstack.dev "llm" is invalid: [spec.replicas: ...]`. An update is checked with
  validation ratcheting (GA in Kubernetes 1.33): a value the update left as it was is not
  refused, so an object stored under an older, looser CRD can still get its status written. The
  CRD's CEL rules are not run (tests/operator/test_crd_cel.py evaluates those).
* **Object names** as kube-apiserver validates them on create: a Service's a DNS-1035 label, a
  Namespace's a DNS-1123 label, anything else's a DNS-1123 subdomain (422).

Not checked: built-in kinds' own validation beyond types (required fields, enums, immutable
fields), label selector syntax, the body of a server-side apply beyond kmock_schemas' typing.

Every refusal is recorded as a `Rejection` (method, path, status, reason, message, the request's
User-Agent, and whether the query or the body was refused), so the test fixtures can fail a test
whose operator sent a request a real server would refuse.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import copy
import difflib
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import aiohttp.web
import attrs
import jsonpatch
import jsonschema
import kmock
import kubernetes_validate.utils as kv

from tests.support import kmock_fields as fields
from tests.support.crd_validation import schema_errors, to_json_schema

__all__ = ["Rejection", "Server", "StrictChecks", "describe"]

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
BUILTIN_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)
CUSTOM_PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH)

Cause = Literal["query", "body"]


@attrs.frozen
class Rejection:
    """A request the emulator refused as kube-apiserver would have."""

    method: str
    path: str
    status: int
    reason: str
    message: str
    agent: str  # the request's User-Agent
    cause: Cause  # "query": its parameters; "body": what it asked to store


class Server(Protocol):
    """What the checks read of the emulator (kmock_apiserver.ApiServerEmulator)."""

    @property
    def resources(self) -> Any: ...
    @property
    def objects(self) -> Any: ...

    _schemas: dict[kmock.resource, Mapping[str, Any]]
    _custom_resources: set[kmock.resource]


# The request being served, for the checks of what it stores (made further down its handler).
_current: contextvars.ContextVar[_RequestState | None] = contextvars.ContextVar(
    "kmock_strict_request", default=None
)


@attrs.define
class _RequestState:
    request: kmock.Request
    # Undeclared fields found in the body of a built-in kind, dropped before it is stored.
    unknown: list[str] = attrs.field(factory=list)


# --- Go's spelling of values and errors ----------------------------------------------------------


def go_quote(text: str) -> str:
    """strconv.Quote: a double-quoted Go string literal."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GO_ESCAPES["\v"] = "\\v"


def _go_value(value: Any) -> str:
    """A field error's bad value as field.Error prints it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(go_quote(v) for v in value) + "}"
    return json.dumps(value, separators=(",", ":"))


@attrs.frozen
class FieldError:
    """k8s.io/apimachinery's field.Error: `<field>: <Type>[: <value>][: <detail>]`."""

    type: str  # "Invalid value", "Unsupported value", "Forbidden", "Required value", "Too long"
    field: str
    detail: str = ""
    value: Any = None
    show_value: bool = False

    @property
    def body(self) -> str:
        if not self.type:
            return self.detail  # a line already in the API server's words (crd_validation's)
        text = f"{self.type}: {_go_value(self.value)}" if self.show_value else self.type
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


_CAUSE_TYPES = {
    "Invalid value": "FieldValueInvalid",
    "Unsupported value": "FieldValueNotSupported",
    "Forbidden": "FieldValueForbidden",
    "Required value": "FieldValueRequired",
    "Too long": "FieldValueTooLong",
}


def invalid(value: Any, field: str, detail: str) -> FieldError:
    return FieldError("Invalid value", field, detail, value, show_value=True)


def not_supported(value: Any, field: str, supported: Sequence[str]) -> FieldError:
    detail = "supported values: " + ", ".join(go_quote(v) for v in supported)
    return FieldError("Unsupported value", field, detail, value, show_value=True)


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("Forbidden", field, detail)


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("Required value", field, detail)


def _aggregate(messages: Iterable[str]) -> str:
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


def invalid_error(
    group: str, kind: str, name: str, errors: Sequence[FieldError]
) -> kmock.KubernetesError:
    """errors.NewInvalid: 422 `<Kind>.<group> "<name>" is invalid: <errors>`."""
    qualified = f"{kind}.{group}" if group else kind
    message = f"{qualified} {go_quote(name)} is invalid"
    if errors:
        message += ": " + _aggregate(str(e) for e in errors)
    causes = [
        {
            "reason": _CAUSE_TYPES.get(e.type, "FieldValueInvalid"),
            "message": e.body,
            "field": e.field,
        }
        for e in errors
    ]
    details = {"name": name, "group": group, "kind": kind, "causes": causes}
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details=details)


def bad_request(message: str) -> kmock.KubernetesError:
    details = {"causes": [{"message": message}]}
    return kmock.KubernetesError(status=400, reason="BadRequest", message=message, details=details)


# --- query parameters --------------------------------------------------------------------------

_INT, _BOOL, _STR, _STRINGS = "int", "bool", "str", "strings"

# Each verb's options, in the order of their Go struct's fields (the first bad one is reported).
_LIST_OPTIONS = {
    "labelSelector": _STR,
    "fieldSelector": _STR,
    "watch": _BOOL,
    "allowWatchBookmarks": _BOOL,
    "resourceVersion": _STR,
    "resourceVersionMatch": _STR,
    "timeoutSeconds": _INT,
    "limit": _INT,
    "continue": _STR,
    "sendInitialEvents": _BOOL,
}
_GET_OPTIONS = {"resourceVersion": _STR}
_CREATE_OPTIONS = {"dryRun": _STRINGS, "fieldManager": _STR, "fieldValidation": _STR}
_PATCH_OPTIONS = {"dryRun": _STRINGS, "force": _BOOL, "fieldManager": _STR, "fieldValidation": _STR}
_DELETE_OPTIONS = {
    "gracePeriodSeconds": _INT,
    "orphanDependents": _BOOL,
    "propagationPolicy": _STR,
    "dryRun": _STRINGS,
    "ignoreStoreReadErrorWithClusterBreakingPotential": _BOOL,
}
_OPTIONS: dict[str, dict[str, str]] = {
    "get": _GET_OPTIONS,
    "list": _LIST_OPTIONS,
    "watch": _LIST_OPTIONS,
    "create": _CREATE_OPTIONS,
    "update": _CREATE_OPTIONS,
    "patch": _PATCH_OPTIONS,
    "delete": _DELETE_OPTIONS,
    "deletecollection": {**_DELETE_OPTIONS, **_LIST_OPTIONS},
}
_OPTIONS_KIND = {
    "get": "GetOptions",
    "list": "ListOptions",
    "watch": "ListOptions",
    "create": "CreateOptions",
    "update": "UpdateOptions",
    "patch": "PatchOptions",
    "delete": "DeleteOptions",
    "deletecollection": "DeleteOptions",
}
# Every endpoint takes `pretty`; every one but a watch takes the request `timeout`.
_EVERY_ENDPOINT = {"pretty": _BOOL}
_SUBRESOURCES_WITH_OPTIONS = (None, "status", "scale")
# Where a request keeps the Warning headers its response will carry.
_WARNINGS = aiohttp.web.RequestKey("kmock_strict_warnings", list[str])
_INT64 = 2**63
_GO_DURATION = re.compile(
    r"^[-+]?(\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))*$"
)


def go_bool(value: str) -> bool:
    """How the parameter codec reads a boolean: false only for "0" and "false" (any case)."""
    return not (value == "0" or value.lower() == "false")


def parse_int_error(value: str) -> str | None:
    """strconv.ParseInt(value, 10, 64)'s error, or None if it parses."""
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        return f"strconv.ParseInt: parsing {go_quote(value)}: invalid syntax"
    if not -_INT64 <= int(value) < _INT64:
        return f"strconv.ParseInt: parsing {go_quote(value)}: value out of range"
    return None


def _verb(request: kmock.Request, params: Mapping[str, str]) -> str | None:
    method = str(request.method.value if request.method else "").upper()
    if method == "GET":
        if "watch" in params and go_bool(params["watch"]):
            return "watch"
        return "get" if request.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return None


def _query(request: kmock.Request) -> tuple[dict[str, str], dict[str, list[str]]]:
    """First value and all values of each parameter (dryRun may repeat)."""
    raw = request._raw_request
    if raw is None:
        return dict(request.params), {k: [v] for k, v in request.params.items()}
    every: dict[str, list[str]] = {}
    for key, value in raw.query.items():
        every.setdefault(key, []).append(value)
    return {k: v[0] for k, v in every.items()}, every


def _content_type(request: kmock.Request) -> str:
    for key, value in request.headers.items():
        if key.lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return ""


def _header(request: kmock.Request, name: str) -> str:
    return next((v for k, v in request.headers.items() if k.lower() == name), "")


def _check_field_manager(manager: str) -> list[FieldError]:
    errors = []
    if len(manager.encode()) > 128:
        errors.append(FieldError("Too long", "fieldManager", "may not be more than 128 bytes"))
    position = 0
    for char in manager:
        if not _go_printable(char):
            detail = f"invalid character U+{ord(char):04X} (at position {position})"
            errors.append(invalid(manager, "fieldManager", detail))
        position += len(char.encode())
    return errors


def _go_printable(char: str) -> bool:
    """unicode.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return char == " " or unicodedata.category(char)[0] in "LMNPS"


def _check_options(
    verb: str, params: Mapping[str, str], every: Mapping[str, list[str]], content_type: str
) -> list[FieldError]:
    errors: list[FieldError] = []
    if verb in ("create", "update", "patch"):
        if verb == "patch":
            if content_type != APPLY_PATCH:
                if "force" in params:
                    errors.append(forbidden("force", "may not be specified for non-apply patch"))
            elif not params.get("fieldManager"):
                errors.append(required("fieldManager", "is required for apply patch"))
        errors += _check_field_manager(params.get("fieldManager", ""))
    if verb in ("delete", "deletecollection"):
        errors += _propagation_errors(
            params.get("propagationPolicy"), orphan_dependents="orphanDependents" in params
        )
    if "dryRun" in every and any(v != "All" for v in every["dryRun"]):
        errors.append(not_supported(every["dryRun"], "dryRun", ["All"]))
    validation = params.get("fieldValidation", "")
    if verb in ("create", "update", "patch") and validation not in ("", "Ignore", "Warn", "Strict"):
        errors.append(
            not_supported(validation, "fieldValidation", ["", "Ignore", "Strict", "Warn"])
        )
    if verb in ("list", "watch", "deletecollection"):
        errors += _check_list_options(verb == "watch", params)
    return errors


def _check_list_options(watch: bool, params: Mapping[str, str]) -> list[FieldError]:
    """ListOptions validation, with the WatchList feature gate on (kube-apiserver >= 1.32)."""
    errors: list[FieldError] = []
    match = params.get("resourceVersionMatch", "")
    send_initial = "sendInitialEvents" in params
    where = "resourceVersionMatch"
    if watch:
        if send_initial and match != "NotOlderThan":
            errors.append(
                forbidden(
                    where, "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                )
            )
        if match:
            if not send_initial:
                errors.append(
                    forbidden(
                        where,
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                        "provided",
                    )
                )
            if match != "NotOlderThan":
                errors.append(not_supported(match, where, ["NotOlderThan"]))
            if params.get("continue"):
                errors.append(
                    forbidden(where, "resourceVersionMatch is forbidden when continue is provided")
                )
        return errors
    if match:
        if not params.get("resourceVersion"):
            errors.append(
                forbidden(
                    where, "resourceVersionMatch is forbidden unless resourceVersion is provided"
                )
            )
        if params.get("continue"):
            errors.append(
                forbidden(where, "resourceVersionMatch is forbidden when continue is provided")
            )
        if match not in ("Exact", "NotOlderThan"):
            errors.append(not_supported(match, where, ["Exact", "NotOlderThan", ""]))
        if match == "Exact" and params.get("resourceVersion") == "0":
            errors.append(
                forbidden(
                    where, 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
                )
            )
    if send_initial:
        errors.append(forbidden("sendInitialEvents", "sendInitialEvents is forbidden for list"))
    return errors


# Field selectors each built-in resource supports besides metadata.name and metadata.namespace.
_FIELD_LABELS = {
    ("", "pods"): {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.podIPs",
        "status.nominatedNodeName",
    },
    ("", "events"): {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    ("", "secrets"): {"type"},
    ("", "namespaces"): {"status.phase"},
    ("", "nodes"): {"spec.unschedulable"},
    ("", "services"): {"spec.clusterIP", "spec.type"},
    ("", "replicationcontrollers"): {"status.replicas"},
    ("apps", "replicasets"): {"status.replicas"},
    ("batch", "jobs"): {"status.successful"},
}


def _check_field_selector(selector: str, resource: kmock.resource, custom: bool) -> None:
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        label = re.split(r"!=|==|=", requirement, maxsplit=1)[0].strip()
        if label in ("metadata.name", "metadata.namespace"):
            continue
        if custom:
            raise bad_request(
                f"{go_quote(label)} is not a known field selector: only "
                '"metadata.name", "metadata.namespace"'
            )
        if label not in _FIELD_LABELS.get((resource.group or "", resource.plural or ""), ()):
            raise bad_request(f"field label not supported: {label}")


# --- built-in kinds: what Go's JSON decoder makes of a body --------------------------------------

_SCHEMA_VERSION = kv.latest_version()
_SCHEMA_DIR = f"kubernetes-json-schema/v{_SCHEMA_VERSION}-local-strict"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_SPECIAL = {
    _META + "Time": "time",
    _META + "MicroTime": "microtime",
    _META + "FieldsV1": "any",
    "io.k8s.apimachinery.pkg.api.resource.Quantity": "quantity",
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "io.k8s.apimachinery.pkg.runtime.RawExtension": "any",
}
_INT_RANGE = {"int32": 2**31, "int64": 2**63}


@attrs.define(eq=False)
class GoType:
    """A node of a kind's Go type, enough to decode JSON into it the way Go would."""

    kind: str  # struct map list string bool int float bytes any time microtime quantity intorstring
    go: str  # Go's spelling of the type, for messages: v1.Container, []string, int32
    struct: str = ""  # for a struct, its name (PodSpec)
    fields: dict[str, GoType] = attrs.field(factory=dict)
    item: GoType | None = None  # a list's element or a map's value


_ANY = GoType("any", "interface {}")


@functools.cache
def _definitions() -> Mapping[str, Any]:
    defs: Mapping[str, Any] = kv.schema_contents(
        f"{_SCHEMA_DIR}/_definitions.json", _SCHEMA_VERSION
    )["$defs"]
    return defs


_NAMED: dict[str, GoType] = {}


def _named(name: str) -> GoType:
    if name in _NAMED:
        return _NAMED[name]
    if name in _SPECIAL:
        special = _SPECIAL[name]
        go = name.rsplit(".", 2)
        named = _ANY if special == "any" else GoType(special, f"{go[-2]}.{go[-1]}")
        _NAMED[name] = named
        return named
    node = _definitions().get(name)
    if node is None:
        _NAMED[name] = _ANY
        return _ANY
    package, short = name.rsplit(".", 2)[-2:]
    if "properties" in node:
        named = GoType("struct", f"{package}.{short}", struct=short)
        _NAMED[name] = named  # before the fields: types can be recursive (JSONSchemaProps)
        named.fields = {key: _compile(value) for key, value in node["properties"].items()}
        return named
    named = _compile(node)
    _NAMED[name] = named
    return named


def _compile(node: Mapping[str, Any], struct: str = "", go: str = "") -> GoType:
    ref = node.get("$ref")
    if isinstance(ref, str):
        return _named(ref.rsplit("/", 1)[-1])
    kinds = node.get("type")
    kind = kinds if isinstance(kinds, str) else next((k for k in kinds or () if k != "null"), None)
    fmt = node.get("format")
    if kind == "object":
        if "properties" in node:
            compiled = GoType("struct", go or f"v1.{struct}", struct=struct)
            compiled.fields = {k: _compile(v) for k, v in node["properties"].items()}
            return compiled
        additional = node.get("additionalProperties")
        if isinstance(additional, Mapping):
            item = _compile(additional)
            return GoType("map", f"map[string]{item.go}", item=item)
        return _ANY
    if kind == "array":
        items = node.get("items")
        item = _compile(items) if isinstance(items, Mapping) else _ANY
        return GoType("list", f"[]{item.go}", item=item)
    if kind == "string":
        return GoType("bytes", "[]uint8") if fmt == "byte" else GoType("string", "string")
    if kind == "integer":
        return GoType("int", fmt if fmt in _INT_RANGE else "int64")
    if kind == "number":
        return GoType("float", "float32" if fmt == "float" else "float64")
    if kind == "boolean":
        return GoType("bool", "bool")
    return _ANY


@functools.cache
def builtin_type(api_version: str, kind: str) -> GoType | None:
    """The Go type of a built-in kind, or None for a kind the schemas do not know (custom)."""
    short_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = kv.schema_contents(
            f"{_SCHEMA_DIR}/{kind.lower()}-{short_version}.json", _SCHEMA_VERSION
        )
    except FileNotFoundError:
        return None
    return _compile(schema, struct=kind, go=f"v1.{kind}")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    return "array"


def _literal(value: Any) -> str:
    return json.dumps(value)


class _Abort(Exception):
    """A custom unmarshaller failed: Go's decoder stops there."""


@attrs.define
class Decoded:
    """What decoding a body found: the first error (as Go reports it) and the unknown fields."""

    error: str | None = None
    unknown: list[str] = attrs.field(factory=list)


def decode(value: Any, root: GoType, *, top_struct: str) -> Decoded:
    """Decode `value` into `root` as Go's JSON decoder (case-sensitive, strict mode) would."""
    result = Decoded()
    first: list[str] = []
    try:
        _decode(value, root, [], top_struct, first, result.unknown)
    except _Abort as e:
        result.error = str(e)
        return result
    result.error = first[0] if first else None
    return result


Part = str | int | tuple[str]  # a struct field, a list index, a map key


def _where(parts: Sequence[Part]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part[0] if isinstance(part, tuple) else part
            text += f".{name}" if text else name
    return text


def _type_error(
    value: Any, goal: GoType, parts: Sequence[Part], struct: str, what: str = ""
) -> str:
    names = [p for p in parts if isinstance(p, str)]
    what = what or _json_kind(value)
    if not names:
        return f"json: cannot unmarshal {what} into Go value of type {goal.go}"
    path = ".".join(names)
    return f"json: cannot unmarshal {what} into Go struct field {struct}.{path} of type {goal.go}"


def _decode(
    value: Any, goal: GoType, parts: list[Part], struct: str, first: list[str], unknown: list[str]
) -> None:
    if value is None or goal.kind == "any":
        return  # null decodes into anything; free-form fields take any JSON
    kind = goal.kind
    if kind == "struct":
        if not isinstance(value, Mapping):
            first.append(_type_error(value, goal, parts, struct))
            return
        for key, item in value.items():
            field = goal.fields.get(key)
            parts.append(key)
            if field is None:
                unknown.append(_where(parts))
            else:
                _decode(item, field, parts, goal.struct, first, unknown)
            parts.pop()
    elif kind == "map":
        if not isinstance(value, Mapping):
            first.append(_type_error(value, goal, parts, struct))
            return
        assert goal.item is not None
        for key, item in value.items():
            parts.append((key,))
            _decode(item, goal.item, parts, struct, first, unknown)
            parts.pop()
    elif kind == "list":
        if not isinstance(value, list):
            first.append(_type_error(value, goal, parts, struct))
            return
        assert goal.item is not None
        for index, item in enumerate(value):
            parts.append(index)
            _decode(item, goal.item, parts, struct, first, unknown)
            parts.pop()
    elif kind in _SCALARS:
        problem = _SCALARS[kind](value, goal)
        if problem is not None:
            first.append(_type_error(value, goal, parts, struct, problem))
    else:
        _decode_special(value, goal)


def _scalar_string(value: Any, goal: GoType) -> str | None:
    return None if isinstance(value, str) else _json_kind(value)


def _scalar_bool(value: Any, goal: GoType) -> str | None:
    return None if isinstance(value, bool) else _json_kind(value)


def _scalar_float(value: Any, goal: GoType) -> str | None:
    return (
        None
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (_json_kind(value))
    )


def _scalar_int(value: Any, goal: GoType) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _json_kind(value)
    limit = _INT_RANGE.get(goal.go, _INT64)
    if isinstance(value, float) or not -limit <= value < limit:
        return f"number {_literal(value)}"  # an int field takes integer literals only
    return None


def _scalar_bytes(value: Any, goal: GoType) -> str | None:
    if not isinstance(value, str):
        return _json_kind(value)
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        bad = next((i for i, c in enumerate(value) if c not in _BASE64), len(value))
        raise _Abort(f"illegal base64 data at input byte {bad}") from None
    return None


_BASE64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_SCALARS: dict[str, Callable[[Any, GoType], str | None]] = {
    "string": _scalar_string,
    "bool": _scalar_bool,
    "float": _scalar_float,
    "int": _scalar_int,
    "bytes": _scalar_bytes,
}

RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_QUANTITY_SUFFIXES = {"", "n", "u", "m", "k", "M", "G", "T", "P", "E"}
_QUANTITY_SUFFIXES |= {"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}


def _decode_special(value: Any, goal: GoType) -> None:
    kind = goal.kind
    if kind in ("time", "microtime"):
        if not isinstance(value, str):
            raise _Abort(f"json: cannot unmarshal {_json_kind(value)} into Go value of type string")
        problem = parse_time_error(value, micro=kind == "microtime")
        if problem:
            raise _Abort(problem)
    elif kind == "quantity":
        text = value if isinstance(value, str) else _literal(value)
        if quantity_error(text.strip()):
            raise _Abort(quantity_error(text.strip()))
    elif kind == "intorstring":
        if isinstance(value, str):
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Abort(f"json: cannot unmarshal {_json_kind(value)} into Go value of type int32")
        if isinstance(value, float) or not -(2**31) <= value < 2**31:
            raise _Abort(
                f"json: cannot unmarshal number {_literal(value)} into Go value of type int32"
            )


def quantity_error(text: str) -> str | None:
    """resource.ParseQuantity's error, or None."""
    matched = _QUANTITY.match(text)
    number_ok = matched and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)", matched.group(1))
    if not matched or not number_ok:
        return (
            "quantities must match the regular expression "
            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    suffix = matched.group(2)
    if suffix not in _QUANTITY_SUFFIXES and not re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
        return "unable to parse quantity's suffix"
    return None


_TIME_ELEMENTS = (
    ("2006", r"\d{4}"),
    ("-", "-"),
    ("01", r"\d{2}"),
    ("-", "-"),
    ("02", r"\d{2}"),
    ("T", "T"),
    ("15", r"\d{2}"),
    (":", ":"),
    ("04", r"\d{2}"),
    (":", ":"),
    ("05", r"\d{2}"),
)


def parse_time_error(value: str, *, micro: bool) -> str | None:
    """time.Parse(RFC3339 or RFC3339Micro, value)'s error, or None.

    MicroTime needs exactly six fractional digits (its layout has `.000000`); Time takes any
    number of them (Go accepts a fraction after the seconds even when the layout has none).
    """
    layout = RFC3339_MICRO if micro else RFC3339
    rest = value

    def cannot(element: str) -> str:
        return (
            f"parsing time {go_quote(value)} as {go_quote(layout)}: "
            f"cannot parse {go_quote(rest)} as {go_quote(element)}"
        )

    numbers = []
    for element, pattern in _TIME_ELEMENTS:
        matched = re.match(pattern, rest)
        if not matched:
            return cannot(element)
        if element not in "-T:":
            numbers.append(int(matched.group()))
        rest = rest[matched.end() :]
    if micro:
        matched = re.match(r"\.\d{6}", rest)
        if not matched:
            return cannot(".000000")
        rest = rest[matched.end() :]
    else:
        fraction = re.match(r"[.,]\d+", rest)
        if fraction:
            rest = rest[fraction.end() :]
    zone = re.match(r"Z|[+-]\d{2}:\d{2}", rest)
    if not zone:
        return cannot("Z07:00")
    rest = rest[zone.end() :]
    if rest:
        return f"parsing time {go_quote(value)}: extra text: {go_quote(rest)}"
    year, month, day, hour, minute, second = numbers
    for name, number, top in (
        ("month", month, 12),
        ("hour", hour, 23),
        ("minute", minute, 59),
        ("second", second, 59),
    ):
        if not (1 if name == "month" else 0) <= number <= top:
            return f"parsing time {go_quote(value)}: {name} out of range"
    days = [
        31,
        29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28,
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][month - 1]
    if not 1 <= day <= days:
        return f"parsing time {go_quote(value)}: day out of range"
    return None


# --- custom resources: unknown fields, defaults, schema validation ------------------------------


def custom_unknown_fields(body: Mapping[str, Any], root: Mapping[str, Any]) -> list[str]:
    """Paths of the fields the structural schema would prune (metadata aside)."""
    found: list[str] = []
    properties = root.get("properties") or {}
    for key, value in body.items():
        if key in ("apiVersion", "kind", "metadata"):
            continue
        if key in properties:
            _unknown_in(value, properties[key], [key], found)
        elif not root.get("x-kubernetes-preserve-unknown-fields"):
            found.append(key)
    return found


def _unknown_in(value: Any, schema: Mapping[str, Any], parts: list[Part], found: list[str]) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, Mapping):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is None and additional is None and schema.get("type") != "object":
            return
        for key, item in value.items():
            if properties is not None and key in properties:
                parts.append(key)
                _unknown_in(item, properties[key], parts, found)
                parts.pop()
            elif isinstance(additional, Mapping):
                parts.append(key)
                _unknown_in(item, additional, parts, found)
                parts.pop()
            elif additional is not True:
                found.append(_where([*parts, key]))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            parts.append(index)
            _unknown_in(item, schema["items"], parts, found)
            parts.pop()


def with_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Structural defaulting, top-down, as the API server does before validating (in place)."""
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = with_defaults(child, value[name])
        additional = schema.get("additionalProperties")
        if isinstance(additional, Mapping):
            for key in value:
                value[key] = with_defaults(additional, value[key])
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [with_defaults(schema["items"], item) for item in value]
    return value


_MISSING = object()


def _at(value: Any, path: Iterable[Any]) -> Any:
    for part in path:
        if isinstance(part, int):
            found = isinstance(value, list) and 0 <= part < len(value)
        else:
            found = isinstance(value, Mapping) and part in value
        if not found:
            return _MISSING
        value = value[part]
    return value


def _schema_path(path: Iterable[Any]) -> str:
    return _where([p if isinstance(p, int) else str(p) for p in path])


# --- object names -------------------------------------------------------------------------------

_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = _DNS1123_LABEL + r"(\." + _DNS1123_LABEL + ")*"
_DNS1035_LABEL = "[a-z]([-a-z0-9]*[a-z0-9])?"
_NAME_RULES = {
    "label": (
        _DNS1123_LABEL,
        63,
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character",
        ("my-name", "123-abc"),
    ),
    "subdomain": (
        _DNS1123_SUBDOMAIN,
        253,
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
        "'-' or '.', and must start and end with an alphanumeric character",
        ("example.com",),
    ),
    "dns1035": (
        _DNS1035_LABEL,
        63,
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
        "an alphabetic character, and end with an alphanumeric character",
        ("my-name", "abc-123"),
    ),
}
_NAME_RULE_OF = {("", "services"): "dns1035", ("", "namespaces"): "label"}


def _regex_error(message: str, regex: str, examples: Sequence[str]) -> str:
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{regex}')"


def name_errors(resource: kmock.resource, name: str) -> list[FieldError]:
    rule = _NAME_RULE_OF.get((resource.group or "", resource.plural or ""), "subdomain")
    regex, longest, message, examples = _NAME_RULES[rule]
    errors = []
    if len(name) > longest:
        errors.append(invalid(name, "metadata.name", f"must be no more than {longest} characters"))
    if not re.fullmatch(regex, name):
        errors.append(invalid(name, "metadata.name", _regex_error(message, regex, examples)))
    return errors


# --- the checks ---------------------------------------------------------------------------------


@attrs.define
class StrictChecks:
    """The strict half of the emulator; see the module docstring. One per emulator."""

    rejections: list[Rejection] = attrs.field(factory=list)
    # (method, path, warning) of every Warning header sent.
    warnings: list[tuple[str, str, str]] = attrs.field(factory=list)
    _validators: dict[kmock.resource, tuple[Mapping[str, Any], jsonschema.Draft202012Validator]] = (
        attrs.field(factory=dict)
    )

    # --- entry points ---

    def check_request(self, server: Server, request: kmock.Request) -> None:
        """Refuse (raise) what kube-apiserver would refuse before touching storage."""
        state = _RequestState(request)
        _current.set(state)
        resource = request.resource
        if (
            resource is None
            or not resource.plural
            or request.subresource not in _SUBRESOURCES_WITH_OPTIONS
        ):
            return  # discovery, and subresources such as log or exec with options of their own
        params, every = _query(request)
        verb = _verb(request, params)
        if verb is None:
            return
        custom = resource in server._custom_resources
        try:
            self._check_query(request, resource, verb, params, every, custom)
        except kmock.KubernetesError as e:
            self._record(request, e, "query")
            raise
        try:
            self._check_body(server, request, state, resource, verb, params, custom)
        except kmock.KubernetesError as e:
            self._record(request, e, "body")
            raise

    def check_stored(
        self,
        server: Server,
        resource: kmock.resource,
        body: dict[str, Any],
        *,
        created: bool,
    ) -> None:
        """Check (and finish) an object about to be stored; raise what the API server would."""
        state = _current.get()
        try:
            self._check_stored(server, resource, body, created, state)
        except kmock.KubernetesError as e:
            if state is not None:
                self._record(state.request, e, "body")
            raise

    # --- query ---

    def _check_query(
        self,
        request: kmock.Request,
        resource: kmock.resource,
        verb: str,
        params: Mapping[str, str],
        every: Mapping[str, list[str]],
        custom: bool,
    ) -> None:
        if request.subresource is not None and verb in ("list", "watch", "create", "delete"):
            return  # not an endpoint of status or scale: the router answers it
        known = {**_OPTIONS[verb], **_EVERY_ENDPOINT}
        if verb != "watch":
            known["timeout"] = _STR
        for name, kind in known.items():
            if kind == _INT and name in params:
                problem = parse_int_error(params[name])
                if problem:
                    raise bad_request(problem)
        if "timeout" in params and verb != "watch" and not _GO_DURATION.match(params["timeout"]):
            raise bad_request(
                "invalid timeout specified in the request URL - time: invalid duration "
                + go_quote(params["timeout"])
            )
        for name in params:
            if name not in known:
                raise bad_request(_unknown_parameter(name, known))
        if verb == "watch" and params.get("watch") != "true":
            raise bad_request(
                f"watch={params.get('watch')!s} is a watch to kube-apiserver, but this emulator "
                "(kmock) serves a list for anything but watch=true: send watch=true"
            )
        content_type = _content_type(request)
        if verb == "patch":
            accepted = CUSTOM_PATCH_TYPES if custom else BUILTIN_PATCH_TYPES
            if content_type not in accepted:
                raise kmock.KubernetesError(
                    status=415,
                    reason="UnsupportedMediaType",
                    message="the body of the request was in an unknown format - accepted media "
                    "types include: " + ", ".join(accepted),
                    details={"causes": [{"message": f"Content-Type: {content_type}"}]},
                )
        errors = _check_options(verb, params, every, content_type)
        if errors:
            raise invalid_error("meta.k8s.io", _OPTIONS_KIND[verb], "", errors)
        if every.get("dryRun"):
            raise bad_request(
                "dryRun=All is valid, but this emulator does not implement dry runs (it would "
                "store the object): leave dryRun out in tests"
            )
        if params.get("fieldSelector") and verb in ("list", "watch", "deletecollection"):
            _check_field_selector(params["fieldSelector"], resource, custom)

    # --- body ---

    def _check_body(
        self,
        server: Server,
        request: kmock.Request,
        state: _RequestState,
        resource: kmock.resource,
        verb: str,
        params: Mapping[str, str],
        custom: bool,
    ) -> None:
        if verb in ("delete", "deletecollection"):
            _check_delete_body(request)
            return
        if verb not in ("create", "update", "patch") or resource not in server.resources:
            return
        content_type = _content_type(request)
        if verb == "patch" and content_type == APPLY_PATCH:
            return  # kmock_schemas' typed-patch check, in the emulator's handler
        directive = params.get("fieldValidation") or "Warn"
        info = server.resources[resource]
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        kind = str(info.kind or "")
        patched: Callable[[], Any] | None = None
        body = request.data
        if verb == "patch":
            live = _stored(server, resource, request.namespace, request.name)
            if live is None:
                return  # a 404 from the handler
            if content_type == JSON_PATCH:
                try:
                    body = jsonpatch.apply_patch(live, request.data or [])
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError):
                    return  # the handler's 422
                result = body
                patched = lambda: result  # noqa: E731
            else:
                if not isinstance(body, Mapping):
                    return
                patch = body
                patched = lambda: fields.merge_patch(live, patch)  # noqa: E731
        if not isinstance(body, Mapping):
            return
        if request.subresource == "scale":
            goal: GoType | None = builtin_type("autoscaling/v1", "Scale")
            top, kind_name, top_version = "Scale", "Scale", "v1"
        elif custom:
            goal, top, kind_name, top_version = None, kind, kind, str(resource.version)
        else:
            goal = builtin_type(str(api_version), kind)
            top, kind_name, top_version = kind, kind, str(resource.version)
        if goal is not None:
            decoded = decode(body, goal, top_struct=top)
        else:
            decoded = decode(body.get("metadata"), _named(_META + "ObjectMeta"), top_struct=top)
            decoded.unknown = [f"metadata.{u}" for u in decoded.unknown]
            schema = server._schemas.get(resource)
            if schema is not None:
                decoded.unknown += custom_unknown_fields(body, schema)
        if decoded.error is not None:
            _refuse_decoding(verb, kind_name, top_version, decoded.error, patched)
        if custom and verb != "patch":
            sent = body.get("apiVersion")
            if sent is not None and sent != api_version:
                raise bad_request(
                    f"the API version in the data ({sent}) does not match the expected API "
                    f"version ({api_version})"
                )
        if not decoded.unknown or directive == "Ignore":
            state.unknown = decoded.unknown if not custom else []
            return
        if directive == "Strict":
            problem = "strict decoding error: " + ", ".join(
                f"unknown field {go_quote(u)}" for u in decoded.unknown
            )
            _refuse_decoding(verb, kind_name, top_version, problem, patched)
        if not custom:
            state.unknown = decoded.unknown
        for path in decoded.unknown:
            self._warn(request, f"unknown field {go_quote(path)}")

    def _warn(self, request: kmock.Request, text: str) -> None:
        method = str(request.method.value if request.method else "")
        self.warnings.append((method, request.url.path, text))
        raw = request._raw_request
        if raw is None:
            return
        pending = raw.get(_WARNINGS)
        if pending is None:
            pending = []
            raw[_WARNINGS] = pending
            original = raw._prepare_hook

            async def add_warnings(response: Any) -> None:
                for warning in pending:
                    escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
                    response.headers.add("Warning", f'299 - "{escaped}"')
                await original(response)

            # aiohttp awaits it just before it sends the response's headers.
            raw._prepare_hook = add_warnings  # type: ignore[method-assign]
        pending.append(text)

    # --- storage ---

    def _check_stored(
        self,
        server: Server,
        resource: kmock.resource,
        body: dict[str, Any],
        created: bool,
        state: _RequestState | None,
    ) -> None:
        info = server.resources[resource]
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        group = resource.group or ""
        kind = str(info.kind or "")
        if created:
            errors = name_errors(resource, name)
            if errors:
                raise invalid_error(group, kind, name, errors)
        if state is not None and state.unknown and resource not in server._custom_resources:
            for path in state.unknown:
                _drop(body, path)
        schema = server._schemas.get(resource)
        if schema is None:
            return
        old = None if created else _stored(server, resource, meta.get("namespace"), name)
        errors = self._schema_errors(resource, schema, body, old)
        if errors:
            raise invalid_error(group, kind, name, errors)

    def _validator(
        self, resource: kmock.resource, root: Mapping[str, Any]
    ) -> jsonschema.Draft202012Validator:
        cached = self._validators.get(resource)
        if cached is None or cached[0] is not root:
            validator = jsonschema.Draft202012Validator(to_json_schema(root, strict=False))
            cached = (root, validator)
            self._validators[resource] = cached
        return cached[1]

    def _schema_errors(
        self,
        resource: kmock.resource,
        root: Mapping[str, Any],
        body: Mapping[str, Any],
        old: Mapping[str, Any] | None,
    ) -> list[FieldError]:
        validator = self._validator(resource, root)
        if validator.is_valid(body):
            return []
        new = with_defaults(root, copy.deepcopy(dict(body)))
        failures = list(validator.iter_errors(new))
        if old is not None:
            # Validation ratcheting: what the update left as it was cannot fail it.
            previous = with_defaults(root, copy.deepcopy(dict(old)))
            failures = [
                f for f in failures if _at(new, f.absolute_path) != _at(previous, f.absolute_path)
            ]
        if not failures:
            return []
        kept = {_schema_path(f.absolute_path) for f in failures}
        errors = []
        for line in schema_errors(root, new):
            where, _, detail = line.partition(": ")
            if old is not None and not any(
                where == k or where.startswith((k + ".", k + "[")) or not k for k in kept
            ):
                continue
            errors.append(FieldError("", where, detail))
        return errors or [FieldError("", "<root>", "the object does not fit its schema")]

    def _record(self, request: kmock.Request, error: kmock.KubernetesError, cause: Cause) -> None:
        self.rejections.append(
            Rejection(
                method=str(request.method.value if request.method else ""),
                path=str(request.url.path_qs if request.url else ""),
                status=int(error.status),
                reason=str(error.reason or ""),
                message=str(error.message or ""),
                agent=_header(request, "user-agent"),
                cause=cause,
            )
        )


def _unknown_parameter(name: str, known: Iterable[str]) -> str:
    message = (
        f"unknown query parameter {go_quote(name)} (kube-apiserver would silently ignore it; "
        "this emulator refuses it so that a misspelt parameter fails in tests)"
    )
    close = difflib.get_close_matches(name, list(known), n=1)
    if not close:
        lowered = {k.lower(): k for k in known}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return message + (f": did you mean {go_quote(close[0])}?" if close else "")


def _refuse_decoding(
    verb: str, kind: str, version: str, problem: str, patched: Callable[[], Any] | None
) -> None:
    if verb == "patch" and patched is not None:
        document = json.dumps(patched(), separators=(",", ":"))
        raise invalid_error("", "", "", [invalid(document, "patch", problem)])
    raise bad_request(
        f"{kind} in version {go_quote(version)} cannot be handled as a {kind}: {problem}"
    )


def _propagation_errors(policy: Any, *, orphan_dependents: bool) -> list[FieldError]:
    """DeleteOptions' validation of propagationPolicy, from the query or from the body."""
    errors = []
    if policy is not None and orphan_dependents:
        errors.append(
            invalid(
                policy,
                "propagationPolicy",
                "orphanDependents and deletionPropagation cannot be both set",
            )
        )
    if policy is not None and policy not in ("Foreground", "Background", "Orphan"):
        errors.append(
            not_supported(
                policy, "propagationPolicy", ["Foreground", "Background", "Orphan", "nil"]
            )
        )
    return errors


def _check_delete_body(request: kmock.Request) -> None:
    options = request.data
    if not isinstance(options, Mapping) or not options:
        return
    grace = options.get("gracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int)):
        what = f"number {_literal(grace)}" if isinstance(grace, int | float) else _json_kind(grace)
        raise bad_request(
            f"json: cannot unmarshal {what} into Go struct field "
            "DeleteOptions.gracePeriodSeconds of type int64"
        )
    errors = _propagation_errors(
        options.get("propagationPolicy"),
        orphan_dependents=options.get("orphanDependents") is not None,
    )
    dry_run = options.get("dryRun") or []
    if any(v != "All" for v in dry_run):
        errors.append(not_supported(list(dry_run), "dryRun", ["All"]))
    if errors:
        raise invalid_error("meta.k8s.io", "DeleteOptions", "", errors)


def _stored(
    server: Server, resource: kmock.resource, namespace: str | None, name: str | None
) -> dict[str, Any] | None:
    """The stored object as it is (not a copy: read it, do not change it)."""
    key = (resource, namespace, name)
    if name is None or key not in server.objects:
        return None
    stored = server.objects[key]
    if stored.deleted:
        return None
    raw: dict[str, Any] = stored.raw
    return raw


def _drop(body: dict[str, Any], path: str) -> None:
    """Remove the field at a dotted path with [i] indexes, if it is there."""
    parts: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        parts.append(int(index) if index else name)
    node: Any = body
    for part in parts[:-1]:
        node = _at(node, [part])
        if node is _MISSING:
            return
    if isinstance(node, dict) and isinstance(parts[-1], str):
        node.pop(parts[-1], None)


def describe(rejections: Iterable[Rejection]) -> Iterator[str]:
    """One line per rejection, for a test failure's message."""
    for r in rejections:
        agent = r.agent or "no User-Agent"
        yield f"{r.method} {r.path} ({agent}): {r.status} {r.reason}: {r.message}"
