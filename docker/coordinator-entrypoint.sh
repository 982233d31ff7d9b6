#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink (the coordinator container's entrypoint).
#
# Settings (environment):
#   CONFIDE_SUPERLINK_HOST   address to listen on             (default 0.0.0.0; 127.0.0.1 for one host)
#   CONFIDE_SUPERLINK_PORT   the SuperLink's HTTPS port                           (default 9092)
#   CONFIDE_CREDENTIALS      mounted credentials folder (default /run/confide/credentials):
#                            ca.crt, superlink.crt, superlink.key
#   CONFIDE_INSECURE=1       plaintext and no SuperNode authentication: local experiments only
# State (SuperLink database, run folders under runs/) lives in /var/lib/confide, logs in
# /var/log/confide: mount both. Sites join only after their public key is registered with
# `flwr supernode register <site>.pub <connection>` (docker/README.md).
set -euo pipefail
creds="${CONFIDE_CREDENTIALS:-/run/confide/credentials}"
state="${CONFIDE_ROOT:-/var/lib/confide}"
logs="${CONFIDE_LOG_DIR:-/var/log/confide}"
mkdir -p "$state/state" "$logs" "$FLWR_HOME"
args=(
  --host "${CONFIDE_SUPERLINK_HOST:-0.0.0.0}"
  --port "${CONFIDE_SUPERLINK_PORT:-9092}"
  --database "$state/state/superlink.db"
  --log-file "$logs/superlink.log"
)
if [ "${CONFIDE_INSECURE:-0}" = "1" ]; then
  echo "confide-coordinator: WARNING: CONFIDE_INSECURE=1: plaintext, any SuperNode may join (local experiments only)" >&2
  args+=(--insecure)
else
  for f in ca.crt superlink.crt superlink.key; do
    [ -r "$creds/$f" ] || { echo "confide-coordinator: $creds/$f missing or unreadable (uid $(id -u)); see docker/README.md" >&2; exit 2; }
  done
  args+=(--ssl-ca-certfile "$creds/ca.crt" --ssl-certfile "$creds/superlink.crt" --ssl-keyfile "$creds/superlink.key")
  args+=(--enable-supernode-auth)
fi
echo "confide-coordinator: SuperLink on ${CONFIDE_SUPERLINK_HOST:-0.0.0.0}:${CONFIDE_SUPERLINK_PORT:-9092}, state $state, logs $logs"
exec flower-superlink "${args[@]}"
