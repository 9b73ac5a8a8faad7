#!/usr/bin/env bash
# Build nimstack's images from the repository root:
#   nimstack/nim-server:<version>-cpu   (inference_image/Dockerfile.cpu)
#   nimstack/nim-operator:<version>     (operator/Dockerfile)
#   nimstack/nim-gateway:<version>      (gateway/Dockerfile)
#
# Usage: scripts/build-images.sh [--engine docker|podman] [--local-base] [--wheels DIR]
#                                [server] [operator] [gateway]
#   (no image named: all three)
#
# On a normal machine: `scripts/build-images.sh` with Docker (or podman) builds FROM the official
# python:3.11-slim-bookworm and takes torch's CPU wheel from PyTorch's CPU index.
# Where no image registry is reachable (this project's CI): `--local-base` makes a Debian base
# with debootstrap from the Debian archive, and `--wheels DIR` takes torch's CPU wheel from a local
# directory, mounted into the build only (podman). With podman the host's CA bundle is mounted the
# same way, so a TLS-intercepting proxy works; none of them ends up in an image.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=""
local_base=false
wheels=""
targets=()
while (($#)); do
    case "$1" in
        --engine) engine="$2"; shift 2 ;;
        --local-base) local_base=true; shift ;;
        --wheels) wheels="$(cd "$2" && pwd)"; shift 2 ;;
        server|operator|gateway) targets+=("$1"); shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "build-images: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
((${#targets[@]})) || targets=(server operator gateway)
if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    elif command -v podman >/dev/null; then engine=podman
    else echo "build-images: neither a running Docker engine nor podman found" >&2; exit 1
    fi
fi
if [[ "$engine" == podman && -z "${CONTAINERS_CONF:-}" ]]; then
    export CONTAINERS_CONF="$PWD/scripts/podman/containers.conf"
fi

version="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git rev-parse HEAD 2>/dev/null || true)"
source_url="$(git config --get remote.origin.url 2>/dev/null || true)"
build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url")
# Build-time mounts are podman's (`docker build` has none): the host's CA bundle, local wheels.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
if [[ "$engine" == podman && -f "$ca_bundle" ]]; then
    build_args+=(-v "$ca_bundle:/etc/ssl/host-ca.crt:ro" --build-arg "PIP_CERT=/etc/ssl/host-ca.crt")
fi
if [[ -n "$wheels" ]]; then
    [[ "$engine" == podman ]] || { echo "build-images: --wheels needs podman" >&2; exit 2; }
    build_args+=(-v "$wheels:/wheels:ro" --build-arg "PIP_FIND_LINKS=/wheels" --build-arg "PIP_EXTRA_INDEX_URL=")
fi

if $local_base; then
    base=localhost/nimstack/debian-python:bookworm
    if ! "$engine" image inspect "$base" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || { echo "build-images: --local-base needs debootstrap" >&2; exit 1; }
        rootfs="$(mktemp -d)"
        trap 'rm -rf "$rootfs"' EXIT
        echo "build-images: making $base with debootstrap"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 \
            || { tail -20 "$rootfs.log" >&2; exit 1; }
        rm -f "$rootfs.log"
        # What a container never reads: package lists, docs, man pages, translations.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
        tar -C "$rootfs" -c . | "$engine" import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["python3"]' - "$base" >/dev/null
    fi
    build_args+=(--build-arg "BASE_IMAGE=$base")
    [[ "$engine" == podman ]] && build_args+=(--pull=never)
fi

for target in "${targets[@]}"; do
    case "$target" in
        server) dockerfile=inference_image/Dockerfile.cpu; tag="nimstack/nim-server:$version-cpu" ;;
        operator) dockerfile=operator/Dockerfile; tag="nimstack/nim-operator:$version" ;;
        gateway) dockerfile=gateway/Dockerfile; tag="nimstack/nim-gateway:$version" ;;
    esac
    echo "build-images: $tag from $dockerfile ($engine)"
    "$engine" build "${build_args[@]}" -f "$dockerfile" -t "$tag" .
    "$engine" image inspect --format "build-images: $tag {{.Size}} bytes" "$tag"
done
