"""The operator's command line: `nim-operator` and `python -m nim_operator`.

    nim-operator [--namespaces 'team-*' ...]     run the operator (settings: flags > env > defaults)
    nim-operator --help                          usage, every setting with its variable and default
    nim-operator run -m nim_operator.handlers    kopf's own command line (what the image runs)

Before kopf starts, the settings are validated and the cluster is checked once
(nim_operator.preflight): a bad value, missing credentials, an unreachable API server or refused
credentials is one line on stderr and a non-zero exit, not a retry loop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Sequence

from nim_operator.startup import leave_out_official_client

__all__ = ["main"]

PROG = "nim-operator"
ENV_PREFIX = "NIM_OPERATOR_"
# Exit codes: settings that cannot work, and a cluster that cannot be used.
EXIT_BAD_SETTINGS = 2
EXIT_NO_CLUSTER = 1

DESCRIPTION = """\
Runs the NIMService operator: watches NIMService resources and reconciles each into its
Deployment, Service, probes, autoscaler and status.

Credentials: the in-cluster service account when run in a pod, else the current context of
$KUBECONFIG (or ~/.kube/config). Every setting below is also an environment variable; a flag
wins over the variable, which wins over the default."""

EPILOG = """\
kopf's own command line is `nim-operator run -m nim_operator.handlers [kopf options]`
(see `nim-operator run --help`). Settings: docs/operator-runtime.md#configuration."""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    leave_out_official_client()  # before kopf is imported (nim_operator.startup says why)
    if args[:1] == ["run"]:
        from kopf.cli import main as kopf_main

        if not {"-h", "--help"} & set(args):
            check_before_start()
        kopf_main(args=args, prog_name=PROG)
        return
    options = build_parser().parse_args(args)
    for name, value in vars(options).items():
        if value is not None:
            os.environ[_env_name(name)] = str(value).lower() if isinstance(value, bool) else value
    check_before_start()
    run()


def check_before_start() -> None:
    """Validate the settings and check the cluster; exit with one line when either fails."""
    from pydantic import ValidationError

    from nim_operator.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        for error in e.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            print(
                f"{PROG}: {_env_name(name)} ({_flag(name)}): {error['msg']}",
                file=sys.stderr,
            )
        raise SystemExit(EXIT_BAD_SETTINGS) from None

    import kopf

    from nim_operator.preflight import ClusterUnavailable, check_cluster

    kopf.configure(verbose=settings.verbose)
    try:
        asyncio.run(check_cluster())
    except ClusterUnavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_NO_CLUSTER) from None


def run() -> None:
    """Run kopf with our handlers, as configured by the settings."""
    import kopf

    from nim_operator import handlers

    settings = handlers.SETTINGS
    namespaces = settings.namespace_patterns()
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, generated from the Settings model so the two cannot drift."""
    from nim_operator.settings import Settings

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        default = field.default
        help_text = f"{field.description + ' ' if field.description else ''}"
        help_text += f"[{_env_name(name)}, default: {default if default != '' else 'empty'}]"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(_flag(name), dest=name, metavar="VALUE", help=help_text)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def _env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _version() -> str:
    try:
        return importlib.metadata.version("nim-stack")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
