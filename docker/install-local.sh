#!/bin/sh
# Install, from the local wheel folders only (no index, no dependency resolution), the pinned
# packages listed in /opt/confide/local.txt whose names match the extended regex $1.
# The Dockerfile calls this once per large group so each image layer stays small: committing a
# layer briefly needs about three times its size in free disk.
set -eu
grep -E "^($1)==" /opt/confide/local.txt >/tmp/layer.txt || true
if [ -s /tmp/layer.txt ]; then
  pip install --no-cache-dir --no-index --no-deps -r /tmp/layer.txt
fi
rm -f /tmp/layer.txt
