#!/usr/bin/env bash
# Build the container images (those missing, or all with --rebuild), then run the container test:
# the walk-through of docker/README.md, command by command, on a coordinator and two site
# containers from docker/compose.yaml (tests/test_containers.py).
#   scripts/deploy-containers.sh [--rebuild] [--build-only]
# Images: localhost/confide-site, localhost/confide-coordinator (CPU only) and
# localhost/confide-site-gpu (CUDA), all :$CONFIDE_TAG (default latest); VARIANTS=cpu skips the GPU one.
# Needs root, podman (+ runc), podman-compose >= 1.1 and, without a reachable registry, debootstrap
# (docker/README.md, "0. Prerequisites"). Each step prints its wall time; docs/benchmarks.md
# ("Containers") records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && [ -z "${VIRTUAL_ENV:-}" ] && source .venv/bin/activate
export CONTAINERS_CONF="${CONTAINERS_CONF:-${CONFIDE_CONTAINERS_CONF:-$PWD/docker/podman-sandbox.conf}}"
BASE="${BASE_IMAGE:-localhost/confide-base:bookworm}"
TAG="${CONFIDE_TAG:-latest}"
VARIANTS="${VARIANTS:-cpu gpu}"
rebuild=0
build_only=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    --build-only) build_only=1 ;;
    *) echo "usage: scripts/deploy-containers.sh [--rebuild] [--build-only]" >&2; exit 2 ;;
  esac
done

step() {
  local name="$1"
  shift
  local start=$SECONDS
  echo "== $name: $*"
  "$@"
  echo "== $name: $((SECONDS - start)) s"
}

wanted=()
[[ " $VARIANTS " == *" cpu "* ]] && wanted+=("localhost/confide-site:$TAG" "localhost/confide-coordinator:$TAG")
[[ " $VARIANTS " == *" gpu "* ]] && wanted+=("localhost/confide-site-gpu:$TAG")
missing=0
for image in "${wanted[@]}"; do
  podman image exists "$image" || missing=1
done
if [ "$rebuild" = 1 ] || [ "$missing" = 1 ]; then
  if [ "$rebuild" = 1 ] || ! podman image exists "$BASE"; then
    [[ "$BASE" == localhost/* ]] && step "base image" docker/build-base.sh "$BASE"
  fi
  step "images" env BASE_IMAGE="$BASE" VARIANTS="$VARIANTS" \
    WHEEL_DIRS="${WHEEL_DIRS:-/opt/pypi-more/files /opt/pypi/files /opt/wheels}" \
    BUILD_CA_DIR="${BUILD_CA_DIR:-/etc/ssl/certs}" docker/build-images.sh "$TAG"
fi
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep confide
[ "$build_only" = 1 ] && exit 0
step "container test" env CONFIDE_TAG="$TAG" python -m pytest -q -rs -p no:cacheprovider tests/test_containers.py
