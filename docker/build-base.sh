#!/usr/bin/env bash
# Build a local Debian base image without an image registry (for hosts that cannot pull one).
#
#   docker/build-base.sh [IMAGE]        # default: localhost/confide-base:bookworm
#
# debootstrap fetches Debian bookworm (python3.11, venv, CA certificates) from the Debian mirror
# and the root filesystem is imported into podman. Sites that can pull images use e.g.
# python:3.11-slim-bookworm as BASE_IMAGE instead and skip this step. Needs root and debootstrap.
set -euo pipefail
IMAGE="${1:-localhost/confide-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$(mktemp -d /var/tmp/confide-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
# Keep the image small: no apt lists or caches.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
tar -C "$ROOTFS" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base image $IMAGE built from Debian bookworm ($MIRROR)"
