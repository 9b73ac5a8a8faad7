"""render_pvc and pvc_name: the model cache claim, owned (as NVIDIA's) unless retained."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, pvc_name, render_pvc

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")


def make_spec(**fields: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate({"image": {"repository": "nim", "tag": "1"}, **fields})


class TestRenderPVC:
    @pytest.mark.parametrize(
        "storage", [{}, {"emptyDir": {}}, {"hostPath": "/data"}, {"pvc": {"name": "existing"}}]
    )
    def test_absent_unless_created(self, storage: dict[str, Any]) -> None:
        assert render_pvc(OWNER, make_spec(storage=storage)) is None

    def test_created_claim_is_owned_by_default_as_nvidia_does(self) -> None:
        pvc = render_pvc(OWNER, make_spec(storage={"pvc": {"create": True, "size": "50Gi"}}))
        assert pvc is not None
        assert pvc["metadata"]["name"] == "llama-pvc"
        # NVIDIA's operator sets the NIMService as the claim's controller: deleted with it.
        (reference,) = pvc["metadata"]["ownerReferences"]
        assert reference["uid"] == OWNER.uid
        assert reference["controller"] is True
        assert pvc["spec"] == {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "50Gi"}},
        }
        kubernetes_validate.validate(pvc, "1.31", strict=True)

    def test_retain_policy_leaves_it_unowned(self) -> None:
        storage = {"pvc": {"create": True, "size": "50Gi", "retainPolicy": "Retain"}}
        pvc = render_pvc(OWNER, make_spec(storage=storage))
        assert pvc is not None
        # No ownerReference: deleting the NIMService must not delete the downloaded model.
        assert "ownerReferences" not in pvc["metadata"]

    def test_all_settings(self) -> None:
        storage = {
            "pvc": {
                "create": True,
                "name": "llama-cache",
                "size": 107374182400,
                "storageClass": "fast-nfs",
                "volumeAccessMode": "ReadWriteMany",
                "annotations": {"backup": "nightly"},
            }
        }
        pvc = render_pvc(OWNER, make_spec(storage=storage))
        assert pvc is not None
        assert pvc["metadata"]["name"] == "llama-cache"
        assert pvc["metadata"]["annotations"] == {"backup": "nightly"}
        assert pvc["spec"]["storageClassName"] == "fast-nfs"
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert pvc["spec"]["resources"]["requests"]["storage"] == 107374182400
        kubernetes_validate.validate(pvc, "1.31", strict=True)

    def test_name(self) -> None:
        assert pvc_name("llama", make_spec()) == "llama-pvc"
        assert pvc_name("llama", make_spec(storage={"pvc": {"name": "cache"}})) == "cache"
