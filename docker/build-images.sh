#!/usr/bin/env bash
# Build the site and coordinator images.
#
#   docker/build-images.sh [TAG]                         # default TAG: latest
#
# Environment:
#   BASE_IMAGE      base image (default docker.io/library/python:3.11-slim-bookworm; where no
#                   registry is reachable: localhost/confide-base:bookworm from docker/build-base.sh)
#   WHEEL_DIRS      space-separated host folders of wheels, mounted read-only at build and given to
#                   pip as --find-links (the torch wheels: no multi-GB download)
#   BUILD_CA_DIR    host folder of CA certificates mounted read-only at /etc/ssl/certs during the
#                   build only (a TLS-inspecting proxy in front of the package index)
#   CONTAINER_ENGINE  podman (default) or docker
#   MIN_FREE_GB     refuse to start with less free disk than this where images are stored (default 16:
#                   the images hold about 7 GB, mostly torch's CUDA libraries, and a layer commit
#                   briefly needs about three times that layer's size)
# Images: localhost/confide-site:TAG and localhost/confide-coordinator:TAG.
set -euo pipefail
cd "$(dirname "$0")"
engine="${CONTAINER_ENGINE:-podman}"
tag="${1:-latest}"
base="${BASE_IMAGE:-docker.io/library/python:3.11-slim-bookworm}"
mounts=()
links=()
i=0
for dir in ${WHEEL_DIRS:-}; do
  mounts+=(-v "$dir:/wheels/$i:ro")
  links+=("/wheels/$i")
  i=$((i + 1))
done
[ -n "${BUILD_CA_DIR:-}" ] && mounts+=(-v "$BUILD_CA_DIR:/etc/ssl/certs:ro")
if [ "$engine" = podman ]; then
  store="$(podman info --format '{{.Store.GraphRoot}}')"
  free_gb=$(($(df -Pk "$store" | awk 'NR==2 {print $4}') / 1048576))
  if [ "$free_gb" -lt "${MIN_FREE_GB:-16}" ]; then
    echo "only ${free_gb} GB free under $store; the build needs about ${MIN_FREE_GB:-16} GB (MIN_FREE_GB)" >&2
    exit 1
  fi
fi
for target in site coordinator; do
  start=$(date +%s)
  "$engine" build --network host "${mounts[@]}" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_FIND_LINKS="${links[*]}" \
    --target "$target" -t "localhost/confide-$target:$tag" -f Dockerfile .
  echo "built localhost/confide-$target:$tag in $(($(date +%s) - start)) s"
done
