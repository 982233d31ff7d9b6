#!/usr/bin/env bash
# Create a site's SuperNode authentication key pair (ECDSA P-384, OpenSSH format).
#
#   docker/make-site-key.sh OUT_DIR SITE_NAME
#
# Writes OUT_DIR/SITE_NAME.key (private: stays at the site, mounted read-only into its
# container) and OUT_DIR/SITE_NAME.pub (public: sent to the coordinator, who enrols it with
# `flwr supernode register SITE_NAME.pub <connection>`). Run it at the site, never in the repo.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 OUT_DIR SITE_NAME" >&2
  exit 2
fi
OUT="$1"
NAME="$2"
if [[ ! "$NAME" =~ ^[A-Za-z0-9._-]+$ ]]; then
  echo "site name '$NAME' may hold only letters, digits, '.', '_' and '-'" >&2
  exit 2
fi
mkdir -p "$OUT"
umask 077
if [ -e "$OUT/$NAME.key" ]; then
  echo "$OUT/$NAME.key exists; refusing to overwrite a site key" >&2
  exit 1
fi
ssh-keygen -q -t ecdsa -b 384 -N "" -C "confide-site-$NAME" -f "$OUT/$NAME.key"
mv "$OUT/$NAME.key.pub" "$OUT/$NAME.pub"
chmod 644 "$OUT/$NAME.pub"
echo "site key pair written: $OUT/$NAME.key (keep at the site), $OUT/$NAME.pub (send to the coordinator)"
