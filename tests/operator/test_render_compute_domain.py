"""multiNode.computeDomain rendered: the ComputeDomain, the pods' claims on its channel, and its
place among the children. Pure, no cluster.

The ComputeDomain is checked against the driver's API type (NVIDIA/k8s-dra-driver-gpu,
api/nvidia.com/resource/v1beta1/computedomain.go) as the test CRD's schema states it; the pod
templates that claim its channel are checked as Pods against Kubernetes' own schema.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from pydantic import ValidationError

from nim_operator.models import COMPUTE_DOMAIN_CREATE_OR_NAME, NIMServiceSpec
from nim_operator.render import Owner, render_children, render_compute_domain
from nim_operator.render.compute_domain import COMPUTE_DOMAIN_POD_CLAIM
from nim_operator.render.leaderworkerset import render_leader_worker_set
from tests.support.compute_domain import COMPUTE_DOMAIN_CRD
from tests.support.crd_validation import schema_errors

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
IMAGE = {"repository": "nvcr.io/nim/deepseek-ai/deepseek-r1", "tag": "1.7.3"}
KUBERNETES_VERSION = "1.33"


def make_spec(
    compute_domain: dict[str, Any] | None, pipeline: int = 2, **fields: Any
) -> NIMServiceSpec:
    multi_node: dict[str, Any] = {"parallelism": {"tensor": 4, "pipeline": pipeline}}
    if compute_domain is not None:
        multi_node["computeDomain"] = compute_domain
    return NIMServiceSpec.model_validate({"image": IMAGE, "multiNode": multi_node, **fields})


def lws_pods(lws: dict[str, Any]) -> list[dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return [group["leaderTemplate"]["spec"], group["workerTemplate"]["spec"]]


def render_lws(spec: NIMServiceSpec, channel: str | None = None) -> dict[str, Any]:
    lws = render_leader_worker_set(OWNER, spec, replicas=1, compute_domain_channel=channel)
    assert lws is not None
    return lws


def claims_of(container: dict[str, Any]) -> list[dict[str, Any]]:
    return list((container.get("resources") or {}).get("claims") or [])


class TestRenderComputeDomain:
    def test_created_one_is_named_after_the_nimservice_and_owned_by_it(self) -> None:
        domain = render_compute_domain(OWNER, make_spec({"create": True}))
        assert domain is not None
        assert domain["apiVersion"] == "resource.nvidia.com/v1beta1"
        assert domain["kind"] == "ComputeDomain"
        assert (domain["metadata"]["name"], domain["metadata"]["namespace"]) == ("llama", "models")
        (ref,) = domain["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["controller"]) == (OWNER.uid, True)
        assert domain["spec"] == {
            "numNodes": 0,
            "channel": {
                "resourceClaimTemplate": {"name": "llama-compute-domain-channel"},
                "allocationMode": "Single",
            },
        }

    def test_it_passes_the_drivers_schema(self) -> None:
        domain = render_compute_domain(OWNER, make_spec({"create": True}))
        root = COMPUTE_DOMAIN_CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema_errors(root, domain, strict=True) == []

    @pytest.mark.parametrize(
        "spec",
        [
            make_spec(None),
            make_spec({"name": "rack-1"}),
            make_spec({"create": False, "name": "rack-1"}),
            NIMServiceSpec.model_validate({"image": IMAGE}),
        ],
    )
    def test_none_unless_created(self, spec: NIMServiceSpec) -> None:
        assert render_compute_domain(OWNER, spec) is None

    def test_its_spec_does_not_change_with_the_group(self) -> None:
        # A ComputeDomain's spec is immutable: an edit of the parallelism or the replicas must
        # not make the operator's next apply one the driver refuses.
        small = render_compute_domain(OWNER, make_spec({"create": True}))
        bigger = render_compute_domain(OWNER, make_spec({"create": True}, pipeline=4, replicas=3))
        assert small is not None
        assert bigger is not None
        assert small["spec"] == bigger["spec"]


class TestChannelClaims:
    def test_every_pod_claims_the_created_domains_channel(self) -> None:
        for pod in lws_pods(render_lws(make_spec({"create": True}))):
            assert pod["resourceClaims"] == [
                {
                    "name": COMPUTE_DOMAIN_POD_CLAIM,
                    "resourceClaimTemplateName": "llama-compute-domain-channel",
                }
            ]
            (server,) = [c for c in pod["containers"] if c["name"] == "nim"]
            assert claims_of(server) == [{"name": COMPUTE_DOMAIN_POD_CLAIM}]

    def test_an_existing_domains_channel_is_the_one_reconcile_read(self) -> None:
        for pod in lws_pods(render_lws(make_spec({"name": "rack-1"}), channel="rack-1-chan")):
            (claim,) = pod["resourceClaims"]
            assert claim["resourceClaimTemplateName"] == "rack-1-chan"

    def test_an_existing_domain_without_its_channel_is_not_rendered_silently(self) -> None:
        with pytest.raises(ValueError, match="channel"):
            render_lws(make_spec({"name": "rack-1"}))

    def test_no_claims_without_compute_domain(self) -> None:
        for pod in lws_pods(render_lws(make_spec(None))):
            assert "resourceClaims" not in pod
            for container in pod["containers"]:
                assert claims_of(container) == []

    def test_only_the_server_claims_the_channel_next_to_dra_claims(self) -> None:
        spec = make_spec(
            {"create": True},
            draResources=[{"resourceClaimName": "nics"}],
            sidecarContainers=[{"name": "log", "image": {"repository": "busybox", "tag": "1"}}],
        )
        leader, worker = lws_pods(render_lws(spec))
        assert [c["name"] for c in leader["resourceClaims"]] == ["dra-0", COMPUTE_DOMAIN_POD_CLAIM]
        by_name = {c["name"]: c for c in leader["containers"]}
        assert [c["name"] for c in claims_of(by_name["nim"])] == ["dra-0", COMPUTE_DOMAIN_POD_CLAIM]
        assert claims_of(by_name["log"]) == []
        assert [c["name"] for c in worker["resourceClaims"]] == ["dra-0", COMPUTE_DOMAIN_POD_CLAIM]

    def test_the_pods_are_valid(self) -> None:
        for pod in lws_pods(render_lws(make_spec({"create": True}, authSecret="ngc"))):
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}
            kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)

    def test_deterministic(self) -> None:
        spec = make_spec({"create": True})
        assert render_lws(spec) == render_lws(spec)


class TestAmongTheChildren:
    def refs(
        self, spec: NIMServiceSpec, *, served: bool = True, channel: str | None = None
    ) -> list[tuple[str, bool]]:
        children = render_children(
            OWNER,
            spec,
            replicas=1,
            service_monitor_supported=False,
            leader_worker_sets_supported=True,
            compute_domains_supported=served,
            compute_domain_channel=channel,
        )
        return [(ref.kind, manifest is not None) for ref, manifest in children]

    def test_created_before_the_leader_worker_set(self) -> None:
        kinds = [kind for kind, present in self.refs(make_spec({"create": True})) if present]
        assert kinds.index("ComputeDomain") < kinds.index("LeaderWorkerSet")

    @pytest.mark.parametrize(
        "spec",
        [
            make_spec(None),
            NIMServiceSpec.model_validate({"image": IMAGE}),
        ],
    )
    def test_deleted_when_no_longer_wanted(self, spec: NIMServiceSpec) -> None:
        assert ("ComputeDomain", False) in self.refs(spec)

    def test_an_existing_one_is_not_ours_to_delete_but_our_old_one_is(self) -> None:
        # A ComputeDomain of the NIMService's name from an earlier `create` goes; the named one
        # is another object, never rendered nor deleted (reconcile deletes only what it owns).
        refs = self.refs(make_spec({"name": "rack-1"}), channel="rack-1-chan")
        assert ("ComputeDomain", False) in refs

    def test_left_out_where_the_kind_is_not_served(self) -> None:
        kinds = [kind for kind, _ in self.refs(make_spec(None), served=False)]
        assert "ComputeDomain" not in kinds


class TestComputeDomainSpec:
    @pytest.mark.parametrize(
        "compute_domain", [{}, {"create": False}, {"create": True, "name": "rack-1"}]
    )
    def test_create_or_a_name(self, compute_domain: dict[str, Any]) -> None:
        with pytest.raises(ValidationError) as error:
            make_spec(compute_domain)
        assert COMPUTE_DOMAIN_CREATE_OR_NAME in str(error.value)

    @pytest.mark.parametrize("name", ["", "Rack_1", "a" * 254])
    def test_a_name_is_an_object_name(self, name: str) -> None:
        with pytest.raises(ValidationError) as error:
            make_spec({"name": name})
        assert error.value.errors()[0]["loc"][-1] == "name"

    @pytest.mark.parametrize(
        "compute_domain", [{"create": True}, {"name": "rack-1"}, {"create": False, "name": "a"}]
    )
    def test_accepted(self, compute_domain: dict[str, Any]) -> None:
        spec = make_spec(compute_domain)
        assert spec.multi_node is not None
        assert spec.multi_node.compute_domain is not None
