"""Dynamic resource allocation (NVIDIA's draResources): the pod's claims, the server container's
claims, and the ResourceClaimTemplates the operator creates from claimCreationSpec.

draResources[i] is the pod claim `dra-<i>`; resources.claims refers to those names. A generated
template is `<NIMService>-<generateName, default claimtemplate>-<i>-<digest>`, owned by the
NIMService, in resource.k8s.io/v1 (the version Kubernetes 1.34 serves GA). Each device request
selects its driver with a CEL selector and adds one selector per attribute or capacity
comparison (or the user's own expressions), as NVIDIA's operator renders them; keys are any
text, so a name that is not a plain CEL identifier is looked up by index, quoted.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from nim_operator.models import (
    DRAAttributeSelector,
    DRACapacitySelector,
    DRAClaimCreationSpec,
    DRADevice,
    DRAResource,
    NIMServiceSpec,
    dra_pod_claim_name,
)
from nim_operator.render.common import Owner, object_meta
from nim_operator.render.labels import child_labels, selector_labels

__all__ = [
    "RESOURCE_API_VERSION",
    "claim_template_name",
    "container_claims",
    "device_selectors",
    "pod_resource_claims",
    "render_claim_templates",
]

RESOURCE_API_VERSION = "resource.k8s.io/v1"
# NVIDIA's name prefix of a generated template when claimCreationSpec.generateName is unset.
DEFAULT_TEMPLATE_PREFIX = "claimtemplate"
# CEL's comparison operator for each selector op.
_CEL_OPERATORS = {
    "Equal": "==",
    "NotEqual": "!=",
    "GreaterThan": ">",
    "GreaterThanOrEqual": ">=",
    "LessThan": "<",
    "LessThanOrEqual": "<=",
}
_CEL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# CEL's reserved words cannot follow a dot.
_CEL_RESERVED = frozenset(
    [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "false",
        "for",
        "function",
        "if",
        "import",
        "in",
        "let",
        "loop",
        "package",
        "namespace",
        "null",
        "return",
        "true",
        "var",
        "void",
        "while",
    ]
)


def claim_template_name(owner_name: str, index: int, creation: DRAClaimCreationSpec) -> str:
    """The name of the ResourceClaimTemplate rendered for draResources[index].

    A template's spec cannot change, so the name ends in a digest of what it is rendered from:
    an edited claimCreationSpec is a new template (the pods roll over to it), and the old one
    is deleted as no longer wanted.
    """
    canonical = json.dumps(creation.to_k8s(), sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(canonical.encode(), digest_size=4).hexdigest()
    prefix = creation.generate_name or DEFAULT_TEMPLATE_PREFIX
    return f"{owner_name}-{prefix}-{index}-{digest}"


def pod_resource_claims(owner_name: str, spec: NIMServiceSpec) -> list[dict[str, str]]:
    """The pod's spec.resourceClaims, one per draResources entry, in order."""
    claims = []
    for index, resource in enumerate(spec.dra_resources or []):
        claim = {"name": dra_pod_claim_name(index)}
        if resource.resource_claim_name is not None:
            claim["resourceClaimName"] = resource.resource_claim_name
        elif resource.resource_claim_template_name is not None:
            claim["resourceClaimTemplateName"] = resource.resource_claim_template_name
        elif resource.claim_creation_spec is not None:
            template = claim_template_name(owner_name, index, resource.claim_creation_spec)
            claim["resourceClaimTemplateName"] = template
        claims.append(claim)
    return claims


def container_claims(spec: NIMServiceSpec) -> list[dict[str, str]]:
    """The server container's resources.claims: the user's, then every other pod claim.

    A pod claim no container uses would still be allocated (a device held for nothing), so each
    one resources.claims leaves out goes to the server, limited to its draResources request.
    With several requests it takes the whole claim: NVIDIA lists one entry per request, but a
    container's claims are keyed by claim name for server-side apply (the API server refuses an
    applied list with a name twice), and the pod holds every request's devices either way.
    """
    written = spec.resources.claims if spec.resources is not None else None
    claims = [claim.to_k8s() for claim in written or []]
    named = {claim["name"] for claim in claims}
    for index, resource in enumerate(spec.dra_resources or []):
        name = dra_pod_claim_name(index)
        if name in named:
            continue
        claim = {"name": name}
        if resource.requests and len(resource.requests) == 1:
            claim["request"] = resource.requests[0]
        claims.append(claim)
    return claims


def _split_key(key: str, driver: str) -> tuple[str, str]:
    """`gpu.nvidia.com/memory` -> (gpu.nvidia.com, memory); a bare name is the driver's."""
    domain, _, name = key.rpartition("/")
    return (domain or driver), name


def _cel_string(text: str) -> str:
    # A JSON string is a CEL string literal (same escapes); non-ASCII stays as it is, since
    # CEL refuses the surrogate pairs JSON would escape it into.
    return json.dumps(text, ensure_ascii=False)


def _member(mapping: str, name: str) -> str:
    """`<mapping>.<name>`, or `<mapping>["<name>"]` when the name is no plain identifier."""
    if _CEL_IDENTIFIER.fullmatch(name) and name not in _CEL_RESERVED:
        return f"{mapping}.{name}"
    return f"{mapping}[{_cel_string(name)}]"


def _attribute_expression(selector: DRAAttributeSelector, driver: str) -> str:
    domain, name = _split_key(selector.key, driver)
    attributes = f"device.attributes[{_cel_string(domain)}]"
    value = selector.value
    if value is None or value.given() is None:
        # Nothing to compare with: the selector asks for the attribute itself (NVIDIA's CRD
        # takes a selector without a value; its renderer has no expression for one).
        present = f"{_cel_string(name)} in {attributes}"
        return f"!({present})" if selector.op == "NotEqual" else present
    attribute = _member(attributes, name)
    operator = _CEL_OPERATORS[selector.op]
    if value.version_value is not None:
        return f"{attribute}.compareTo(semver({_cel_string(value.version_value)})) {operator} 0"
    if value.bool_value is not None:
        literal = "true" if value.bool_value else "false"
    elif value.int_value is not None:
        literal = str(value.int_value)
    else:
        literal = _cel_string(value.string_value or "")
    return f"{attribute} {operator} {literal}"


def _capacity_expression(selector: DRACapacitySelector, driver: str) -> str:
    domain, name = _split_key(selector.key, driver)
    capacity = _member(f"device.capacity[{_cel_string(domain)}]", name)
    quantity = json.dumps(str(selector.value))
    return f"{capacity}.compareTo(quantity({quantity})) {_CEL_OPERATORS[selector.op]} 0"


def device_selectors(device: DRADevice) -> list[str]:
    """The CEL expressions a device must satisfy: its driver first, then each comparison."""
    expressions = [f"device.driver == {json.dumps(device.driver_name)}"]
    expressions += device.cel_expressions or []
    expressions += [
        _attribute_expression(selector, device.driver_name)
        for selector in device.attribute_selectors or []
    ]
    expressions += [
        _capacity_expression(selector, device.driver_name)
        for selector in device.capacity_selectors or []
    ]
    return expressions


def _device_request(device: DRADevice) -> dict[str, Any]:
    return {
        "name": device.name,
        "exactly": {
            "deviceClassName": device.device_class_name,
            "allocationMode": "ExactCount",
            "count": device.count,
            "selectors": [{"cel": {"expression": e}} for e in device_selectors(device)],
        },
    }


def _render_template(
    owner: Owner, spec: NIMServiceSpec, name: str, creation: DRAClaimCreationSpec
) -> dict[str, Any]:
    labels = child_labels(owner.name, spec)
    return {
        "apiVersion": RESOURCE_API_VERSION,
        "kind": "ResourceClaimTemplate",
        "metadata": object_meta(owner, name, labels, spec.annotations),
        "spec": {
            # The claims made from it carry the NIMService's instance labels, so they can be
            # found; fixed ones: a template's spec cannot change, and spec.labels may.
            "metadata": {"labels": selector_labels(owner.name)},
            "spec": {"devices": {"requests": [_device_request(d) for d in creation.devices]}},
        },
    }


def render_claim_templates(owner: Owner, spec: NIMServiceSpec) -> list[dict[str, Any]]:
    """A ResourceClaimTemplate for each draResources entry with a claimCreationSpec."""
    templates = []
    resources: list[DRAResource] = spec.dra_resources or []
    for index, resource in enumerate(resources):
        creation = resource.claim_creation_spec
        if creation is not None:
            name = claim_template_name(owner.name, index, creation)
            templates.append(_render_template(owner, spec, name, creation))
    return templates
