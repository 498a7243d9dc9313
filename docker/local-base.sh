#!/usr/bin/env bash
# A Debian bookworm base image with python3 (3.11) and python3-venv, made without a container
# registry: debootstrap a minimal root filesystem, `docker import` it, then apt-get the two packages
# inside a build. For machines where Docker Hub is blocked; any bookworm image with python3 and
# python3-venv serves as BASE_IMAGE just as well (the default is python:3.11-slim-bookworm).
#
#   sudo docker/local-base.sh [NAME]        # default NAME: ragserve-base:bookworm
#
# Needs root, debootstrap and a reachable Debian mirror (DEBIAN_MIRROR, default deb.debian.org).
# An image of that NAME already present is kept (delete it to rebuild).
set -euo pipefail

name=${1:-ragserve-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$name" >/dev/null 2>&1; then
    echo "local-base: $name exists"
    exit 0
fi

rootfs=$(mktemp -d /tmp/local-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
# Leave apt's lists and caches out of the image; the build below fetches fresh lists.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import - "$name-minbase"

# --network host: the build reaches the mirror the way the host does (no bridge NAT needed).
docker build --network host -t "$name" - <<DOCKERFILE
FROM $name-minbase
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
DOCKERFILE
docker image rm "$name-minbase" >/dev/null
echo "local-base: built $name"
