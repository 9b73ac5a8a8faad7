"""`nim-serve download`: fill a model cache ahead of serving (what a NIMCache's Job runs).

The model is prepared exactly as serving prepares it (nim_server.model_source.resolve_model):
no model means the embedded SmolLM2 default, a GGUF file is converted once into the cache, a
local directory is used as it is. Here a local directory outside the cache is copied into it
(the cache is what outlives this pod), and a hub id, which serving leaves to the engine, is
fetched with huggingface_hub (HF_TOKEN, HF_ENDPOINT and the proxy variables as it reads them).
`--dataset` fetches a hub dataset repository instead (a NIMCache's `datasetName`): kept under
`datasets/` in the cache for whatever reads it; no server serves it.

The result goes to three places: a log line per step (the Job's log), `nimcache.json` in the
cache, and, as JSON, the container's termination message, which is how the operator learns the
model's path and size without reading the volume. A failure exits with a code naming its cause,
so that the Job's pod failure policy and the operator can tell "retrying cannot help" (auth, not
found, disk full) from "try again" (network, anything else).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from nim_server.model_source import ModelSourceError, resolve_model

log = logging.getLogger("nim_server.download")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_AUTH = 10
EXIT_NOT_FOUND = 11
EXIT_DISK_FULL = 12
EXIT_FAILED = 13  # anything else (network, hub 5xx): worth a retry
REASONS = {
    EXIT_AUTH: "AuthFailed",
    EXIT_NOT_FOUND: "ModelNotFound",
    EXIT_DISK_FULL: "DiskFull",
    EXIT_FAILED: "DownloadFailed",
}
MANIFEST = "nimcache.json"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
# The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class DownloadError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nim-serve download",
        description="Download or prepare a model into the cache, as `nim-serve` would load it, "
        "and exit. Exit codes: 0 done, 2 usage, 10 authentication refused, 11 model not "
        "found, 12 disk full, 13 other failure (worth a retry).",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("NIM_MODEL_NAME") or None,
        help="a hub id (org/name), a local model directory or .gguf file; empty: the embedded "
        "SmolLM2-135M-Instruct default (env NIM_MODEL_NAME)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="a hub dataset id (org/name) to download instead of a model: the cache then holds "
        "a dataset (a NIMCache's datasetName), under datasets/",
    )
    parser.add_argument("--revision", default=None, help="hub revision: branch, tag or commit")
    parser.add_argument(
        "--cache-path",
        type=Path,
        default=Path(os.environ.get("NIM_CACHE_PATH") or "/opt/nim/.cache"),
        help="the cache to fill (env NIM_CACHE_PATH)",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=DEFAULT_TERMINATION_LOG,
        help="where the JSON result goes for Kubernetes (skipped when not writable)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.dataset:
            result = download_dataset(args.dataset, args.cache_path, revision=args.revision)
        else:
            result = download(args.model, args.cache_path, revision=args.revision)
    except DownloadError as error:
        reason = REASONS.get(error.code, "DownloadFailed")
        log.error("%s: %s", reason, error)
        _report(args.termination_log, {"reason": reason, "message": str(error)})
        return error.code
    what = result.get("model") or result.get("dataset")
    log.info("cached %s at %s (%d bytes)", what, result["path"], result["sizeBytes"])
    _report(args.termination_log, result)
    print(json.dumps(result))
    return EXIT_OK


def download(model: str | None, cache: Path, *, revision: str | None = None) -> dict[str, Any]:
    """Prepare `model` under `cache`; what was cached, with its path relative to the cache."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        log.info("preparing %s in %s", model or "the embedded default model", cache)
        resolved = resolve_model(model, None, cache)
        local = Path(resolved.path)
        if local.is_dir():
            target = local if _inside(local, cache) else _copy_into(local, cache)
        else:
            target = _fetch_from_hub(resolved.path, cache, revision)
        result = {
            "model": resolved.source,
            "servedName": resolved.served_name,
            "path": str(target.resolve().relative_to(cache.resolve())),
            "sizeBytes": _size(target),
        }
        (cache / MANIFEST).write_text(json.dumps(result, indent=2) + "\n")
    except DownloadError:
        raise
    except ModelSourceError as error:
        raise DownloadError(EXIT_NOT_FOUND, str(error)) from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DownloadError(EXIT_DISK_FULL, f"no space left in {cache}: {error}") from error
        raise DownloadError(EXIT_FAILED, f"{type(error).__name__}: {error}") from error
    except Exception as error:  # a bug or a surprise of a library: say it, let the Job retry
        log.exception("preparing the model failed")
        raise DownloadError(EXIT_FAILED, f"{type(error).__name__}: {error}") from error
    return result


def download_dataset(dataset: str, cache: Path, *, revision: str | None = None) -> dict[str, Any]:
    """Fetch the hub dataset repository `dataset` under `cache`/datasets; what was cached."""
    if problem := _dataset_id_problem(dataset):
        raise DownloadError(EXIT_NOT_FOUND, problem)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        target = _fetch_from_hub(dataset, cache, revision, repo_type="dataset")
        result = {
            "dataset": dataset,
            "path": str(target.resolve().relative_to(cache.resolve())),
            "sizeBytes": _size(target),
        }
        (cache / MANIFEST).write_text(json.dumps(result, indent=2) + "\n")
    except DownloadError:
        raise
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DownloadError(EXIT_DISK_FULL, f"no space left in {cache}: {error}") from error
        raise DownloadError(EXIT_FAILED, f"{type(error).__name__}: {error}") from error
    except Exception as error:  # a surprise of a library: say it, let the Job retry
        log.exception("downloading the dataset failed")
        raise DownloadError(EXIT_FAILED, f"{type(error).__name__}: {error}") from error
    return result


def _dataset_id_problem(dataset: str) -> str | None:
    # A dataset only comes from a hub: a path here is a mistake, not a local copy.
    if dataset.startswith(("/", ".")) or dataset.count("/") > 1:
        return f"--dataset {dataset!r} is not a hub dataset id (name or org/name)"
    return None


def _fetch_from_hub(
    repo_id: str, cache: Path, revision: str | None, *, repo_type: str = "model"
) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    target = cache / f"{repo_type}s" / repo_id.replace("/", "--")
    at = f"@{revision}" if revision else ""
    log.info("downloading %s %s%s into %s", repo_type, repo_id, at, target)
    try:
        snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_dir=target)
    except GatedRepoError as error:  # (a RepositoryNotFoundError too: test it first)
        raise DownloadError(
            EXIT_AUTH, f"{repo_id} is gated: HF_TOKEN is missing or has no access"
        ) from error
    except RepositoryNotFoundError as error:
        raise DownloadError(
            EXIT_NOT_FOUND,
            f"{repo_type} {repo_id} not found on the hub "
            "(or private: HF_TOKEN is missing or has no access)",
        ) from error
    except RevisionNotFoundError as error:
        raise DownloadError(EXIT_NOT_FOUND, f"{repo_id} has no revision {revision}") from error
    except HFValidationError as error:
        raise DownloadError(
            EXIT_NOT_FOUND, f"{repo_id} is neither a local path nor a hub id"
        ) from error
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise DownloadError(EXIT_AUTH, f"the hub refused HF_TOKEN ({status})") from error
        raise DownloadError(EXIT_FAILED, f"the hub failed: {error}") from error
    return target


def _inside(path: Path, cache: Path) -> bool:
    return path.resolve().is_relative_to(cache.resolve())


def _copy_into(source: Path, cache: Path) -> Path:
    """Copy a model directory into the cache, whole or not at all (a temporary sibling first)."""
    target = cache / "models" / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("copying %s into %s", source, target)
    scratch = Path(tempfile.mkdtemp(prefix=".copying-", dir=target.parent))
    try:
        shutil.copytree(source, scratch, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _report(termination_log: Path, result: dict[str, Any]) -> None:
    text = json.dumps(result)[:TERMINATION_MESSAGE_LIMIT]
    # Not in a pod (or not writable): the log has it.
    with contextlib.suppress(OSError):
        termination_log.write_text(text)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
