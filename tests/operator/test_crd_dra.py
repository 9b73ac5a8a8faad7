"""spec.draResources and resources.claims: the CRD's schema and CEL rules agree with the model.

As in test_crd_cel: each invalid spec must be refused by a CEL rule of the CRD with the expected
message (evaluated by cel-python after structural defaulting, as the API server does) AND by
NIMServiceSpec with the same message; NVIDIA's DRA samples pass both, with NVIDIA's defaults.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from nim_operator.models import NIMServiceSpec
from tests.operator.test_crd_cel import apply_defaults, cel_violations, nimservice, openapi_root
from tests.support.crd_validation import schema_errors

GPU = {"name": "gpu", "deviceClassName": "gpu.nvidia.com", "driverName": "gpu.nvidia.com"}

# NVIDIA's samples (config/samples/nim/serving/advanced/dra): a template made beforehand, and
# templates the operator creates from selectors or from CEL expressions.
NVIDIA_SAMPLES = {
    "manual template": [{"resourceClaimTemplateName": "gpu-resourceclaimtemplate"}],
    "attribute and capacity selectors": [
        {
            "claimCreationSpec": {
                "devices": [
                    {
                        **GPU,
                        "attributeSelectors": [
                            {
                                "key": "architecture",
                                "op": "Equal",
                                "value": {"stringValue": "Ampere"},
                            }
                        ],
                        "capacitySelectors": [
                            {"key": "memory", "op": "GreaterThanOrEqual", "value": "40Gi"}
                        ],
                    }
                ]
            }
        }
    ],
    "cel expressions": [
        {
            "claimCreationSpec": {
                "devices": [
                    {
                        **GPU,
                        "celExpressions": [
                            'device.capacity["gpu.nvidia.com"].memory'
                            '.compareTo(quantity("40Gi")) >= 0'
                        ],
                    }
                ]
            }
        }
    ],
    "a shared claim, one request": [{"resourceClaimName": "node-gpus", "requests": ["gpu"]}],
}

INVALID = {
    "no source": (
        {"draResources": [{"requests": ["gpu"]}]},
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "claim and template": (
        {"draResources": [{"resourceClaimName": "a", "resourceClaimTemplateName": "b"}]},
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "template and creation spec": (
        {
            "draResources": [
                {
                    "resourceClaimTemplateName": "b",
                    "claimCreationSpec": {"devices": [{"name": "gpu"}]},
                }
            ]
        },
        "draResources[] needs exactly one of resourceClaimName, resourceClaimTemplateName",
    ),
    "two requests": (
        {"draResources": [{"resourceClaimName": "a", "requests": ["gpu", "nic"]}]},
        "draResources[].requests names at most one request",
    ),
    "container claim not declared": (
        {
            "draResources": [{"resourceClaimName": "a"}],
            "resources": {"claims": [{"name": "dra-1"}]},
        },
        "resources.claims names the pod claims of draResources",
    ),
    "container claim without draResources": (
        {"resources": {"claims": [{"name": "dra-0"}]}},
        "resources.claims names the pod claims of draResources",
    ),
    "container claim by the claim's own name": (
        {
            "draResources": [{"resourceClaimName": "gpus"}],
            "resources": {"claims": [{"name": "gpus"}]},
        },
        "resources.claims names the pod claims of draResources",
    ),
    "cel expressions with selectors": (
        {
            "draResources": [
                {
                    "claimCreationSpec": {
                        "devices": [
                            {
                                "name": "gpu",
                                "celExpressions": ["true"],
                                "attributeSelectors": [{"key": "a", "value": {"boolValue": True}}],
                            }
                        ]
                    }
                }
            ]
        },
        "celExpressions must not be set if attributeSelectors or capacitySelectors are set",
    ),
    "attribute value with two types": (
        {
            "draResources": [
                {
                    "claimCreationSpec": {
                        "devices": [
                            {
                                "name": "gpu",
                                "attributeSelectors": [
                                    {"key": "a", "value": {"boolValue": True, "intValue": 1}}
                                ],
                            }
                        ]
                    }
                }
            ]
        },
        "an attribute selector value needs exactly one of boolValue, intValue",
    ),
    "too many selectors for one request": (
        {
            "draResources": [
                {
                    "claimCreationSpec": {
                        "devices": [
                            {
                                "name": "gpu",
                                "attributeSelectors": [
                                    {"key": f"a{i}", "value": {"intValue": i}} for i in range(20)
                                ],
                                "capacitySelectors": [
                                    {"key": f"c{i}", "value": i} for i in range(12)
                                ],
                            }
                        ]
                    }
                }
            ]
        },
        "attributeSelectors and capacitySelectors together allow at most 31 selectors",
    ),
}


def model_error(spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        NIMServiceSpec.from_body(spec)
    return str(caught.value)


class TestNvidiaSamples:
    @pytest.mark.parametrize("resources", NVIDIA_SAMPLES.values(), ids=NVIDIA_SAMPLES.keys())
    def test_pass_schema_cel_and_model(self, resources: list[dict[str, Any]]) -> None:
        obj = nimservice(draResources=resources)
        assert schema_errors(openapi_root(), obj, strict=True) == []
        assert cel_violations(obj) == []
        spec = NIMServiceSpec.from_body(obj["spec"])
        assert spec.dra_resources is not None

    def test_defaults_match_nvidias(self) -> None:
        obj = nimservice(draResources=[{"claimCreationSpec": {"devices": [{"name": "gpu"}]}}])
        defaulted = apply_defaults(openapi_root(), copy.deepcopy(obj))
        device = defaulted["spec"]["draResources"][0]["claimCreationSpec"]["devices"][0]
        assert device == {
            "name": "gpu",
            "count": 1,
            "deviceClassName": "gpu.nvidia.com",
            "driverName": "gpu.nvidia.com",
        }
        # The model's defaults are the same: the operator reads an older object the same way.
        assert NIMServiceSpec.from_body(obj["spec"]) == NIMServiceSpec.from_body(defaulted["spec"])

    def test_container_claims_naming_declared_pod_claims_pass(self) -> None:
        obj = nimservice(
            draResources=[{"resourceClaimName": "a"}, {"resourceClaimTemplateName": "b"}],
            resources={"claims": [{"name": "dra-1", "request": "gpu"}, {"name": "dra-0"}]},
        )
        assert cel_violations(obj) == []
        NIMServiceSpec.from_body(obj["spec"])


class TestInvalid:
    @pytest.mark.parametrize(("spec", "message"), INVALID.values(), ids=INVALID.keys())
    def test_cel_and_model_refuse_with_the_same_message(
        self, spec: dict[str, Any], message: str
    ) -> None:
        obj = nimservice(**spec)
        assert schema_errors(openapi_root(), obj, strict=True) == []
        violations = cel_violations(obj)
        assert any(message in violation for violation in violations), violations
        assert message in model_error(obj["spec"])

    @pytest.mark.parametrize(
        ("resources", "where"),
        [
            ([{"resourceClaimName": "Not_A_Name"}], "resourceClaimName"),
            ([{"claimCreationSpec": {"devices": []}}], "devices"),
            ([{"claimCreationSpec": {"devices": [{"name": "gpu", "count": 0}]}}], "count"),
            (
                [
                    {
                        "claimCreationSpec": {
                            "devices": [
                                {
                                    "name": "gpu",
                                    "attributeSelectors": [
                                        {"key": "a) || true", "value": {"boolValue": True}}
                                    ],
                                }
                            ]
                        }
                    }
                ],
                "key",
            ),
            (
                [
                    {
                        "claimCreationSpec": {
                            "devices": [
                                {
                                    "name": "gpu",
                                    "attributeSelectors": [
                                        {"key": "v", "value": {"versionValue": '1") || true'}}
                                    ],
                                }
                            ]
                        }
                    }
                ],
                "versionValue",
            ),
            ([{"resourceClaimName": f"c{i}"} for i in range(11)], "draResources"),
        ],
    )
    def test_schema_and_model_refuse_bad_values(
        self, resources: list[dict[str, Any]], where: str
    ) -> None:
        # Keys and versions are rendered into CEL selectors: the patterns keep them names.
        obj = nimservice(draResources=resources)
        errors = schema_errors(openapi_root(), obj)
        assert any(where in error for error in errors), errors
        assert where in model_error(obj["spec"])

    def test_a_container_claim_is_named_once(self) -> None:
        spec = {
            "image": {"repository": "nim", "tag": "1"},
            "draResources": [{"resourceClaimName": "a"}],
            "resources": {"claims": [{"name": "dra-0"}, {"name": "dra-0", "request": "gpu"}]},
        }
        # The CRD declares the list a map keyed by name, which the API server enforces.
        node = openapi_root()["properties"]["spec"]["properties"]["resources"]["properties"]
        assert node["claims"]["x-kubernetes-list-map-keys"] == ["name"]
        assert "resources.claims must not name a claim twice" in model_error(spec)
