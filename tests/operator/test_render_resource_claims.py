"""render.resource_claims and the Deployment's DRA fields: NVIDIA's draResources, rendered.

Pure tests: spec in, manifests out. The manifests are checked against Kubernetes 1.34's own
OpenAPI types (kubernetes_validate, strict), and the generated CEL selectors are parsed by a
real CEL implementation and, where they use only core CEL, evaluated on example devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_deployment
from nim_operator.render.resource_claims import (
    claim_template_name,
    container_claims,
    device_selectors,
    pod_resource_claims,
    render_claim_templates,
)

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
KUBERNETES = "1.34"
SAMPLE = Path(__file__).parents[2] / "manifests" / "samples" / "llama-3.1-8b-dra.yaml"
CEL = celpy.Environment()

# NVIDIA's auto-creation sample (attribute and capacity selectors), as its docs write it.
NVIDIA_CREATION = {
    "claimCreationSpec": {
        "devices": [
            {
                "name": "gpu",
                "deviceClassName": "gpu.nvidia.com",
                "driverName": "gpu.nvidia.com",
                "attributeSelectors": [
                    {"key": "architecture", "op": "Equal", "value": {"stringValue": "Ampere"}}
                ],
                "capacitySelectors": [
                    {"key": "memory", "op": "GreaterThanOrEqual", "value": "40Gi"}
                ],
            }
        ]
    }
}


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


def pod_of(spec: NIMServiceSpec) -> dict[str, Any]:
    pod: dict[str, Any] = render_deployment(OWNER, spec, replicas=1)["spec"]["template"]["spec"]
    return pod


def server(spec: NIMServiceSpec) -> dict[str, Any]:
    container: dict[str, Any] = pod_of(spec)["containers"][0]
    return container


def matches(expression: str, device: dict[str, Any]) -> bool:
    program = CEL.program(CEL.compile(expression))
    return bool(program.evaluate({"device": celpy.json_to_cel(device)}))


class TestPodClaims:
    def test_each_source_becomes_a_pod_claim_named_by_its_index(self) -> None:
        spec = make_spec(
            draResources=[
                {"resourceClaimName": "shared-nic"},
                {"resourceClaimTemplateName": "gpu-resourceclaimtemplate"},
                NVIDIA_CREATION,
            ]
        )
        (generated,) = render_claim_templates(OWNER, spec)
        assert pod_resource_claims(OWNER.name, spec) == [
            {"name": "dra-0", "resourceClaimName": "shared-nic"},
            {"name": "dra-1", "resourceClaimTemplateName": "gpu-resourceclaimtemplate"},
            {"name": "dra-2", "resourceClaimTemplateName": generated["metadata"]["name"]},
        ]

    def test_the_deployment_carries_them_and_kubernetes_accepts_it(self) -> None:
        spec = make_spec(draResources=[{"resourceClaimTemplateName": "gpu"}])
        deployment = render_deployment(OWNER, spec, replicas=1)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["resourceClaims"] == [{"name": "dra-0", "resourceClaimTemplateName": "gpu"}]
        assert server(spec)["resources"]["claims"] == [{"name": "dra-0"}]
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)

    def test_without_dra_resources_nothing_changes(self) -> None:
        spec = make_spec(resources={"limits": {"cpu": 2}})
        assert "resourceClaims" not in pod_of(spec)
        assert "claims" not in server(spec)["resources"]
        assert render_claim_templates(OWNER, spec) == []

    def test_no_device_plugin_gpu_is_added_next_to_the_claims(self) -> None:
        # Without draResources one nvidia.com/gpu is the default; with them the claims hold
        # the devices, and a device-plugin GPU would be a second one.
        dra = make_spec(draResources=[{"resourceClaimTemplateName": "gpu"}])
        assert "limits" not in server(dra)["resources"]
        names = [e["name"] for e in server(dra)["env"]]
        assert "NIM_TENSOR_PARALLEL_SIZE" not in names
        assert server(make_spec())["resources"]["limits"] == {"nvidia.com/gpu": 1}
        explicit = make_spec(gpu={"count": 2}, draResources=[{"resourceClaimName": "nic"}])
        assert server(explicit)["resources"]["limits"] == {"nvidia.com/gpu": 2}


class TestContainerClaims:
    def test_requests_limit_the_container_to_one_request(self) -> None:
        spec = make_spec(draResources=[{"resourceClaimName": "node-devices", "requests": ["gpu"]}])
        assert container_claims(spec) == [{"name": "dra-0", "request": "gpu"}]

    def test_several_requests_give_the_container_the_whole_claim(self) -> None:
        """NVIDIA writes one container claim per request; a container's claims are keyed by
        claim name for server-side apply, so the server takes the claim whole, once."""
        spec = make_spec(
            draResources=[{"resourceClaimTemplateName": "rdma", "requests": ["nic", "gpu"]}]
        )
        assert container_claims(spec) == [{"name": "dra-0"}]
        names = [claim["name"] for claim in server(spec)["resources"]["claims"]]
        assert len(names) == len(set(names))
        kubernetes_validate.validate(render_deployment(OWNER, spec, replicas=1), KUBERNETES)

    def test_resources_claims_come_first_and_the_rest_is_added_once(self) -> None:
        spec = make_spec(
            draResources=[
                {"resourceClaimTemplateName": "gpus", "requests": ["big"]},
                {"resourceClaimName": "nic"},
            ],
            resources={"claims": [{"name": "dra-1", "request": "rdma"}], "limits": {"cpu": 4}},
        )
        assert server(spec)["resources"] == {
            "claims": [{"name": "dra-1", "request": "rdma"}, {"name": "dra-0", "request": "big"}],
            "limits": {"cpu": 4},
        }
        kubernetes_validate.validate(render_deployment(OWNER, spec, replicas=1), KUBERNETES)


class TestClaimTemplates:
    def test_nvidia_sample_renders_a_v1_template_owned_by_the_nimservice(self) -> None:
        spec = make_spec(draResources=[NVIDIA_CREATION], labels={"team": "a"})
        (template,) = render_claim_templates(OWNER, spec)
        assert template["apiVersion"] == "resource.k8s.io/v1"
        assert template["kind"] == "ResourceClaimTemplate"
        meta = template["metadata"]
        assert meta["name"].startswith("llama-claimtemplate-0-")
        assert meta["namespace"] == "models"
        assert meta["ownerReferences"][0]["uid"] == OWNER.uid
        assert meta["labels"]["team"] == "a"
        # The claims made from it carry only the fixed instance labels (the spec is immutable).
        assert template["spec"]["metadata"] == {
            "labels": {
                "app.kubernetes.io/instance": "llama",
                "app.kubernetes.io/name": "nim-service",
            }
        }
        (request,) = template["spec"]["spec"]["devices"]["requests"]
        assert request == {
            "name": "gpu",
            "exactly": {
                "deviceClassName": "gpu.nvidia.com",
                "allocationMode": "ExactCount",
                "count": 1,
                "selectors": [
                    {"cel": {"expression": 'device.driver == "gpu.nvidia.com"'}},
                    {
                        "cel": {
                            "expression": 'device.attributes["gpu.nvidia.com"].architecture'
                            ' == "Ampere"'
                        }
                    },
                    {
                        "cel": {
                            "expression": 'device.capacity["gpu.nvidia.com"].memory'
                            '.compareTo(quantity("40Gi")) >= 0'
                        }
                    },
                ],
            },
        }
        kubernetes_validate.validate(template, KUBERNETES, strict=True)

    def test_defaults_are_nvidias(self) -> None:
        spec = make_spec(draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}])
        (template,) = render_claim_templates(OWNER, spec)
        (request,) = template["spec"]["spec"]["devices"]["requests"]
        assert request["exactly"]["deviceClassName"] == "gpu.nvidia.com"
        assert request["exactly"]["count"] == 1
        assert request["exactly"]["selectors"] == [
            {"cel": {"expression": 'device.driver == "gpu.nvidia.com"'}}
        ]

    def test_an_edited_spec_is_a_new_template_and_the_same_spec_the_same_one(self) -> None:
        # A template's spec is immutable: a change must not be applied over the old one.
        one = make_spec(draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}])
        two = make_spec(
            draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu", "count": 2}]}}]
        )
        again = make_spec(draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}])
        (first,), (second,) = render_claim_templates(OWNER, one), render_claim_templates(OWNER, two)
        assert first["metadata"]["name"] != second["metadata"]["name"]
        assert render_claim_templates(OWNER, again) == [first]

    def test_generate_name_and_index_name_the_template(self) -> None:
        creation = {"generateName": "h100", "devices": [{"name": "gpu"}]}
        spec = make_spec(
            draResources=[{"resourceClaimName": "nic"}, {"claimCreationSpec": creation}]
        )
        (template,) = render_claim_templates(OWNER, spec)
        assert template["metadata"]["name"].startswith("llama-h100-1-")
        resource = spec.dra_resources[1] if spec.dra_resources else None
        assert resource is not None
        assert resource.claim_creation_spec is not None
        name = claim_template_name("llama", 1, resource.claim_creation_spec)
        assert template["metadata"]["name"] == name
        assert pod_resource_claims("llama", spec)[1]["resourceClaimTemplateName"] == name

    def test_several_devices_are_several_requests(self) -> None:
        devices = [{"name": "gpu", "count": 2}, {"name": "nic", "deviceClassName": "rdma.example"}]
        spec = make_spec(draResources=[{"claimCreationSpec": {"devices": devices}}])
        (template,) = render_claim_templates(OWNER, spec)
        requests = template["spec"]["spec"]["devices"]["requests"]
        assert [(r["name"], r["exactly"]["count"]) for r in requests] == [("gpu", 2), ("nic", 1)]
        assert requests[1]["exactly"]["deviceClassName"] == "rdma.example"


def selectors_of(device: dict[str, Any]) -> list[str]:
    spec = make_spec(draResources=[{"claimCreationSpec": {"devices": [device]}}])
    assert spec.dra_resources is not None
    creation = spec.dra_resources[0].claim_creation_spec
    assert creation is not None
    return device_selectors(creation.devices[0])


class TestSelectors:
    @pytest.mark.parametrize(
        ("selector", "expected"),
        [
            (
                {"key": "productName", "value": {"stringValue": 'A100 "SXM"'}},
                'device.attributes["gpu.example.com"].productName == "A100 \\"SXM\\""',
            ),
            (
                {"key": "other.io/cores", "op": "GreaterThan", "value": {"intValue": 64}},
                'device.attributes["other.io"].cores > 64',
            ),
            (
                {"key": "mig", "op": "NotEqual", "value": {"boolValue": True}},
                'device.attributes["gpu.example.com"].mig != true',
            ),
            (
                {"key": "driverVersion", "op": "LessThan", "value": {"versionValue": "1.2.3"}},
                'device.attributes["gpu.example.com"].driverVersion.compareTo(semver("1.2.3")) < 0',
            ),
        ],
    )
    def test_attribute_selectors(self, selector: dict[str, Any], expected: str) -> None:
        device = {"name": "gpu", "driverName": "gpu.example.com", "attributeSelectors": [selector]}
        assert selectors_of(device) == ['device.driver == "gpu.example.com"', expected]

    @pytest.mark.parametrize(
        ("selector", "expected"),
        [
            ({"key": "mig"}, '"mig" in device.attributes["gpu.example.com"]'),
            ({"key": "mig", "value": {}}, '"mig" in device.attributes["gpu.example.com"]'),
            (
                {"key": "other.io/mig", "op": "NotEqual"},
                '!("mig" in device.attributes["other.io"])',
            ),
        ],
    )
    def test_a_selector_without_a_value_asks_for_the_attribute(
        self, selector: dict[str, Any], expected: str
    ) -> None:
        device = {"name": "gpu", "driverName": "gpu.example.com", "attributeSelectors": [selector]}
        assert selectors_of(device)[1:] == [expected]

    def test_attribute_presence_picks_the_right_device(self) -> None:
        (_, has_mig), (_, lacks_mig) = (
            selectors_of({"name": "gpu", "attributeSelectors": [{"key": "mig"}]}),
            selectors_of({"name": "gpu", "attributeSelectors": [{"key": "mig", "op": "NotEqual"}]}),
        )
        with_mig = {"driver": "gpu.nvidia.com", "attributes": {"gpu.nvidia.com": {"mig": True}}}
        without = {"driver": "gpu.nvidia.com", "attributes": {"gpu.nvidia.com": {"index": 0}}}
        assert matches(has_mig, with_mig)
        assert not matches(has_mig, without)
        assert matches(lacks_mig, without)
        assert not matches(lacks_mig, with_mig)

    @pytest.mark.parametrize(
        ("key", "attribute"),
        [
            ("example.com/a-b.c", 'device.attributes["example.com"]["a-b.c"]'),
            ("in", 'device.attributes["gpu.nvidia.com"]["in"]'),
            ('a) || true || ("', 'device.attributes["gpu.nvidia.com"]["a) || true || (\\""]'),
            ("x/y/z", 'device.attributes["x/y"].z'),
        ],
    )
    def test_keys_of_any_text_are_quoted_not_spliced(self, key: str, attribute: str) -> None:
        """NVIDIA's CRD takes any key: one that is no CEL name is looked up by index, quoted,
        so it can only ever name an attribute (never add to the expression)."""
        (_, expression) = selectors_of(
            {"name": "gpu", "attributeSelectors": [{"key": key, "value": {"intValue": 1}}]}
        )
        assert expression == f"{attribute} == 1"
        CEL.compile(expression)
        device = {"driver": "gpu.nvidia.com", "attributes": {}}
        domain, _, name = key.rpartition("/")
        device["attributes"] = {domain or "gpu.nvidia.com": {name: 1}}
        assert matches(expression, device)
        (_, capacity) = selectors_of(
            {"name": "gpu", "capacitySelectors": [{"key": key, "value": "1"}]}
        )
        CEL.compile(capacity)
        assert capacity.startswith(attribute.replace("attributes", "capacity"))

    def test_every_expression_is_valid_cel(self) -> None:
        device = {
            "name": "gpu",
            "attributeSelectors": [
                {"key": "productName", "value": {"stringValue": "x"}},
                {"key": "gpu.nvidia.com/cudaComputeCapability", "value": {"versionValue": "9.0.0"}},
                {"key": "index", "op": "LessThanOrEqual", "value": {"intValue": -1}},
            ],
            "capacitySelectors": [{"key": "memory", "op": "LessThan", "value": 85899345920}],
        }
        expressions = selectors_of(device)
        assert len(expressions) == 5
        assert expressions[-1] == (
            'device.capacity["gpu.nvidia.com"].memory.compareTo(quantity("85899345920")) < 0'
        )
        for expression in expressions:
            CEL.compile(expression)  # raises on a syntax error

    def test_core_cel_selectors_pick_the_right_device(self) -> None:
        device = {
            "name": "gpu",
            "attributeSelectors": [
                {"key": "productName", "value": {"stringValue": "NVIDIA A100"}},
                {"key": "index", "op": "GreaterThanOrEqual", "value": {"intValue": 2}},
            ],
        }

        def gpu(driver: str, index: int) -> dict[str, Any]:
            attributes = {"productName": "NVIDIA A100", "index": index}
            return {"driver": driver, "attributes": {"gpu.nvidia.com": attributes}}

        a100, low_index, other_driver = (
            gpu("gpu.nvidia.com", 3),
            gpu("gpu.nvidia.com", 1),
            gpu("gpu.amd.com", 3),
        )
        expressions = selectors_of(device)
        assert all(matches(e, a100) for e in expressions)
        assert not all(matches(e, low_index) for e in expressions)
        assert not matches(expressions[0], other_driver)

    def test_cel_expressions_are_kept_after_the_driver(self) -> None:
        own = 'device.attributes["gpu.nvidia.com"].productName.lowerAscii().matches("h100")'
        assert selectors_of({"name": "gpu", "celExpressions": [own]}) == [
            'device.driver == "gpu.nvidia.com"',
            own,
        ]


class TestSample:
    def test_the_dra_sample_renders_what_kubernetes_accepts(self) -> None:
        sample = yaml.safe_load(SAMPLE.read_text())
        spec = NIMServiceSpec.from_body(sample["spec"])
        (template,) = render_claim_templates(OWNER, spec)
        assert template["metadata"]["name"].startswith("llama-gpu-0-")
        kubernetes_validate.validate(template, KUBERNETES, strict=True)
        deployment = render_deployment(OWNER, spec, replicas=1)
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)
        assert "nvidia.com/gpu" not in server(spec)["resources"]["limits"]
        assert server(spec)["resources"]["claims"] == [{"name": "dra-0"}]
