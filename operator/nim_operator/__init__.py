"""Kubernetes operator that reconciles NIMService resources into inference deployments."""

__all__ = ["API_GROUP", "API_VERSION", "KIND", "PLURAL"]

API_GROUP = "nimstack.dev"
API_VERSION = "v1alpha1"
KIND = "NIMService"
PLURAL = "nimservices"
