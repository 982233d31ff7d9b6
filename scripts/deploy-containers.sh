#!/usr/bin/env bash
# Build the container images (when missing, or with --rebuild) and run the container test:
# a coordinator and two site containers from docker/compose.yaml train a job (tests/test_containers.py).
#   scripts/deploy-containers.sh [--rebuild]
# Needs root, podman (+ runc), podman-compose >= 1.1 and, without a reachable registry, debootstrap.
# Each step prints its wall time; docs/deploy.md records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && source .venv/bin/activate
export CONTAINERS_CONF="${CONFIDE_CONTAINERS_CONF:-$PWD/docker/podman-sandbox.conf}"
BASE="${BASE_IMAGE:-localhost/confide-base:bookworm}"
TAG="${CONFIDE_TAG:-latest}"
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

step() {
  local name="$1"
  shift
  local start=$SECONDS
  echo "== $name: $*"
  "$@"
  echo "== $name: $((SECONDS - start)) s"
}

if [ "$rebuild" = 1 ] || ! podman image exists "$BASE"; then
  [[ "$BASE" == localhost/* ]] && step "base image" docker/build-base.sh "$BASE"
fi
if [ "$rebuild" = 1 ] || ! podman image exists "localhost/confide-site:$TAG" \
  || ! podman image exists "localhost/confide-coordinator:$TAG"; then
  step "images" env BASE_IMAGE="$BASE" \
    WHEEL_DIRS="${WHEEL_DIRS:-/opt/pypi-more/files /opt/pypi/files /opt/wheels}" \
    BUILD_CA_DIR="${BUILD_CA_DIR:-/etc/ssl/certs}" docker/build-images.sh "$TAG"
fi
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep confide
step "container test" env CONFIDE_TAG="$TAG" python -m pytest -q -rs -p no:cacheprovider tests/test_containers.py
