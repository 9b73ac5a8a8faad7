"""render_ingress: the Ingress from expose.ingress (passed through) or expose.router.ingress."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from nim_operator.models import NIMServiceSpec
from nim_operator.render import Owner, render_ingress
from nim_operator.render.ingress import ingress_host

OWNER = Owner(name="llama", namespace="models", uid="0b5d1e6c-1111-4a2b-9c3d-000000000001")
API_BACKEND = {"service": {"name": "llama", "port": {"name": "api"}}}


def make_spec(**expose: Any) -> NIMServiceSpec:
    return NIMServiceSpec.model_validate(
        {"image": {"repository": "nim", "tag": "1"}, "expose": expose}
    )


def passed_through(spec: dict[str, Any], **ingress: Any) -> NIMServiceSpec:
    return make_spec(ingress={"enabled": True, "spec": spec, **ingress})


class TestRenderIngress:
    def test_none_unless_asked(self) -> None:
        assert render_ingress(OWNER, make_spec()) is None
        spec = {"rules": [{"host": "a.example.com"}]}
        assert render_ingress(OWNER, make_spec(ingress={"enabled": False, "spec": spec})) is None
        gateway = {"gateway": {"namespace": "gw", "name": "public"}}
        assert render_ingress(OWNER, make_spec(router=gateway)) is None

    def test_nvidia_ingress_spec_is_applied_as_written(self) -> None:
        """An IngressSpec as NVIDIA's docs write it, backend included, comes out unchanged."""
        written = {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "llama.example.com",
                    "http": {
                        "paths": [
                            {"path": "/v1", "pathType": "Prefix", "backend": API_BACKEND},
                        ]
                    },
                }
            ],
            "tls": [{"hosts": ["llama.example.com"], "secretName": "llama-tls"}],
        }
        ingress = render_ingress(
            OWNER, passed_through(written, annotations={"nginx.ingress.kubernetes.io/a": "b"})
        )
        assert ingress is not None
        assert ingress["spec"] == written
        assert ingress["metadata"]["name"] == "llama"
        assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/a": "b"}
        assert ingress["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        kubernetes_validate.validate(ingress, "1.31", strict=True)

    def test_a_path_without_backend_goes_to_our_service_port_api(self) -> None:
        rules = [{"http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]
        ingress = render_ingress(OWNER, passed_through({"rules": rules}))
        assert ingress is not None
        assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"] == API_BACKEND
        kubernetes_validate.validate(ingress, "1.31", strict=True)

    def test_the_default_backend_follows_a_renamed_service(self) -> None:
        spec = NIMServiceSpec.model_validate(
            {
                "image": {"repository": "nim", "tag": "1"},
                "expose": {
                    "service": {"name": "llama-api"},
                    "ingress": {
                        "enabled": True,
                        "spec": {"rules": [{"http": {"paths": [{"pathType": "Prefix"}]}}]},
                    },
                },
            }
        )
        ingress = render_ingress(OWNER, spec)
        assert ingress is not None
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        assert backend["service"]["name"] == "llama-api"

    def test_router_ingress_routes_the_nvidia_host(self) -> None:
        router = {
            "hostDomainName": "example.com",
            "annotations": {"cert-manager.io/cluster-issuer": "le"},
            "ingress": {"ingressClass": "nginx", "tlsSecretName": "wildcard-tls"},
        }
        ingress = render_ingress(OWNER, make_spec(router=router))
        assert ingress is not None
        assert ingress["spec"] == {
            "ingressClassName": "nginx",
            "rules": [
                {
                    "host": "llama.models.example.com",
                    "http": {
                        "paths": [{"path": "/", "pathType": "Prefix", "backend": API_BACKEND}]
                    },
                }
            ],
            "tls": [{"hosts": ["llama.models.example.com"], "secretName": "wildcard-tls"}],
        }
        assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "le"}
        kubernetes_validate.validate(ingress, "1.31", strict=True)

    def test_router_ingress_without_a_domain_matches_every_host(self) -> None:
        ingress = render_ingress(OWNER, make_spec(router={"ingress": {"ingressClass": "nginx"}}))
        assert ingress is not None
        (rule,) = ingress["spec"]["rules"]
        assert "host" not in rule
        assert "tls" not in ingress["spec"]
        kubernetes_validate.validate(ingress, "1.31", strict=True)

    @pytest.mark.parametrize(
        ("spec", "host"),
        [
            (make_spec(), None),
            (
                make_spec(router={"hostDomainName": "a.io", "ingress": {"ingressClass": "x"}}),
                ("llama.models.a.io", False),
            ),
            (
                passed_through(
                    {
                        "rules": [
                            # Not ours: another Service's rule is not this NIMService's host.
                            {
                                "host": "other.io",
                                "http": {
                                    "paths": [
                                        {
                                            "pathType": "Prefix",
                                            "backend": {
                                                "service": {"name": "x", "port": {"number": 1}}
                                            },
                                        }
                                    ]
                                },
                            },
                            {"host": "llama.io", "http": {"paths": [{"pathType": "Prefix"}]}},
                        ],
                        "tls": [{"hosts": ["llama.io"], "secretName": "t"}],
                    }
                ),
                ("llama.io", True),
            ),
        ],
    )
    def test_host(self, spec: NIMServiceSpec, host: tuple[str, bool] | None) -> None:
        assert ingress_host(OWNER, spec) == host
