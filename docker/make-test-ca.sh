#!/usr/bin/env bash
# Create a TEST certificate authority and a SuperLink server certificate signed by it.
#
#   docker/make-test-ca.sh OUT_DIR [EXTRA_SAN ...]
#
# Writes OUT_DIR/ca.crt and ca.key (the test CA) and OUT_DIR/superlink.crt and superlink.key (a
# server certificate for localhost, 127.0.0.1, ::1 and every EXTRA_SAN, a DNS name or an IP).
# More server certificates from the same CA: docker/make-test-cert.sh.
# For tests and local trials only: a real coordinator uses a certificate from its own PKI and
# sites verify it with that CA. Never write these files into the repository; keep ca.key offline
# or delete it once the certificates are issued.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [EXTRA_SAN ...]" >&2
  exit 2
fi
OUT="$1"
shift
mkdir -p "$OUT"
if [ -e "$OUT/ca.key" ]; then
  echo "$OUT/ca.key exists; refusing to overwrite a CA" >&2
  exit 1
fi
(
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -days "${CERT_DAYS:-30}" -sha384 \
    -subj "/CN=Confide test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$OUT/ca.key" -out "$OUT/ca.crt" 2>/dev/null
)
chmod 644 "$OUT/ca.crt"
"$(dirname "$0")/make-test-cert.sh" "$OUT" superlink "$@"
