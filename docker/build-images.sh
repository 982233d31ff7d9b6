#!/usr/bin/env bash
# Build the site and coordinator images.
#
#   docker/build-images.sh [TAG]                         # default TAG: latest
#
# Images:
#   localhost/confide-site:TAG         a site, CPU only (no CUDA libraries; about 2 GB)
#   localhost/confide-coordinator:TAG  the coordinator, CPU only
#   localhost/confide-site-gpu:TAG     a site with PyPI's CUDA build of torch (about 7 GB)
#
# Environment:
#   BASE_IMAGE      base image (default docker.io/library/python:3.11-slim-bookworm; where no
#                   registry is reachable: localhost/confide-base:bookworm from docker/build-base.sh)
#   WHEEL_DIRS      space-separated host folders of wheels, mounted read-only at build and given to
#                   pip as --find-links (the torch wheels: no multi-GB download)
#   BUILD_CA_DIR    host folder of CA certificates mounted read-only at /etc/ssl/certs during the
#                   build only (a TLS-inspecting proxy in front of the package index)
#   CONTAINER_ENGINE  podman (default) or docker
#   VARIANTS        which flavours to build: "cpu gpu" (default), "cpu" or "gpu"
#   CPU_TORCH, CPU_TORCHVISION  the CPU-only torch and its torchvision for the CPU images (default
#                   2.13.0+cpu and 0.28.0: the CPU wheel this project's wheel folders hold; PyPI's
#                   torch 2.14.1 always bundles CUDA). Put the wheel in a WHEEL_DIRS folder, e.g.
#                   from https://download.pytorch.org/whl/cpu where that index is reachable.
#   MIN_FREE_GB     refuse to start with less free disk than this where images are stored (default 16:
#                   the GPU image holds about 7 GB, mostly torch's CUDA libraries, and a layer commit
#                   briefly needs about three times that layer's size)
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
# Stage what the images take from the checkout: the site's tools (common/, client/ and the
# confide command; no study or simulation code) and the CPU flavour's pins.
rm -rf build
mkdir -p build/app/simulations
tar -C .. --exclude=__pycache__ -cf - common client | tar -C build/app -xf -
cp ../simulations/__init__.py ../simulations/cli.py build/app/simulations/
sed -E -e '/^(nvidia-|cuda-|triton==)/d' \
  -e "s/^torch==.*/torch==${CPU_TORCH:-2.13.0+cpu}/" -e "s/^torchvision==.*/torchvision==${CPU_TORCHVISION:-0.28.0}/" \
  requirements.txt >build/requirements-cpu.txt

build() {  # target, requirements file, image name
  local start
  start=$(date +%s)
  "$engine" build --network host "${mounts[@]}" \
    --build-arg BASE_IMAGE="$base" --build-arg PIP_FIND_LINKS="${links[*]}" --build-arg REQUIREMENTS="$2" \
    --target "$1" -t "$3" -f Dockerfile .
  echo "built $3 in $(($(date +%s) - start)) s"
}
variants="${VARIANTS:-cpu gpu}"
if [[ " $variants " == *" cpu "* ]]; then
  build site build/requirements-cpu.txt "localhost/confide-site:$tag"
  build coordinator build/requirements-cpu.txt "localhost/confide-coordinator:$tag"
fi
if [[ " $variants " == *" gpu "* ]]; then
  build site requirements.txt "localhost/confide-site-gpu:$tag"
fi
