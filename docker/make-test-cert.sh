#!/usr/bin/env bash
# Issue a TEST server certificate from the test CA that docker/make-test-ca.sh created.
#
#   docker/make-test-cert.sh CA_DIR NAME [EXTRA_SAN ...]
#
# Writes CA_DIR/NAME.crt and CA_DIR/NAME.key, valid for localhost, 127.0.0.1, ::1 and every
# EXTRA_SAN (a DNS name or an IP address). Used for the SuperLink and, optionally, for a
# SuperNode's local Runtime API (the loopback link to its ClientApp processes).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CA_DIR NAME [EXTRA_SAN ...]" >&2
  exit 2
fi
DIR="$1"
NAME="$2"
shift 2
for f in ca.crt ca.key; do
  [ -f "$DIR/$f" ] || { echo "$DIR/$f not found; run docker/make-test-ca.sh first" >&2; exit 1; }
done
sans="DNS:localhost,IP:127.0.0.1,IP:::1"
for san in "$@"; do
  if [[ "$san" =~ ^[0-9.]+$ || "$san" == *:* ]]; then sans="$sans,IP:$san"; else sans="$sans,DNS:$san"; fi
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans
EXT
(
  umask 077
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -subj "/CN=confide-$NAME" \
    -keyout "$DIR/$NAME.key" -out "$work/csr" 2>/dev/null
)
openssl x509 -req -in "$work/csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
  -CAserial "$work/serial" -days "${CERT_DAYS:-30}" -sha384 -extfile "$work/ext" -out "$DIR/$NAME.crt" 2>/dev/null
chmod 644 "$DIR/$NAME.crt"
echo "test certificate $DIR/$NAME.crt ($sans)"
