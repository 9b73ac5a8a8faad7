"""status.computeDomainStatus: read from the ComputeDomain as NVIDIA's DRA driver reports it,
written in NVIDIA's shape, declared in our CRD so the API server keeps it. Pure: no cluster.

(What a run reads and the Failed reasons are end to end in test_compute_domain_e2e.py.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from nim_operator.compute_domain import domain_status
from nim_operator.conditions import Observation, compute_status
from nim_operator.models import NIMServiceSpec, NIMServiceStatus
from nim_operator.render import Owner
from tests.support.crd_validation import schema_errors

OWNER = Owner(name="nvl", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000002")
CRD = Path(__file__).parents[2] / "crds" / "nimservice.yaml"
NOW = "2026-12-05T03:00:00Z"
# A ComputeDomain as the driver leaves it once two nodes' IMEX daemons have joined.
DOMAIN: dict[str, Any] = {
    "apiVersion": "resource.nvidia.com/v1beta1",
    "kind": "ComputeDomain",
    "metadata": {"name": "nvl", "namespace": "models"},
    "spec": {"numNodes": 0, "channel": {"resourceClaimTemplate": {"name": "nvl-ch"}}},
    "status": {
        "status": "Ready",
        "nodes": [
            {
                "name": "gb200-01",
                "ipAddress": "10.0.0.1",
                "cliqueID": "923a9e90.3",
                "index": 0,
                "status": "Ready",
            },
            {"name": "gb200-02", "ipAddress": "10.0.0.2", "cliqueID": "923a9e90.3", "index": 1},
        ],
    },
}


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema: dict[str, Any] = root["properties"]["status"]
    return schema


class TestDomainStatus:
    def test_nvidias_fields_from_the_drivers_status(self) -> None:
        status = domain_status(DOMAIN).to_k8s()
        assert status == {
            "name": "nvl",
            "status": "Ready",
            "nodes": [
                {"name": "gb200-01", "cliqueID": "923a9e90.3", "status": "Ready"},
                # The driver had not said yet: NotReady, NVIDIA's default.
                {"name": "gb200-02", "cliqueID": "923a9e90.3", "status": "NotReady"},
            ],
        }

    def test_a_domain_the_driver_has_not_reported_on_is_only_its_name(self) -> None:
        fresh = {key: value for key, value in DOMAIN.items() if key != "status"}
        assert domain_status(fresh).to_k8s() == {"name": "nvl"}

    def test_odd_nodes_do_not_break_it(self) -> None:
        odd = copy.deepcopy(DOMAIN)
        odd["status"]["nodes"] = [{"cliqueID": "x"}, "junk", {"name": "n", "status": "Broken"}]
        status = domain_status(odd).to_k8s()
        assert status["nodes"] == [{"name": "n", "cliqueID": "", "status": "NotReady"}]


class TestInTheNIMServiceStatus:
    def computed(self, **observed: Any) -> dict[str, Any]:
        spec = NIMServiceSpec.model_validate(
            {
                "image": {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"},
                "multiNode": {"parallelism": {"pipeline": 2}, "computeDomain": {"create": True}},
            }
        )
        obs = Observation(owner=OWNER, generation=1, spec=spec, **observed)
        return compute_status(obs, None, now=NOW)

    def test_written_when_observed_and_kept_by_the_crd_schema(self) -> None:
        status = self.computed(compute_domain_status=domain_status(DOMAIN))
        assert status["computeDomainStatus"]["nodes"][0]["cliqueID"] == "923a9e90.3"
        assert NIMServiceStatus.model_validate(status).to_k8s() == status
        assert schema_errors(status_schema(), status, strict=True) == []

    def test_absent_when_not_observed(self) -> None:
        assert "computeDomainStatus" not in self.computed()
