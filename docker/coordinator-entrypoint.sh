#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink (the coordinator container's entrypoint).
#
# Settings (environment):
#   CONFIDE_SUPERLINK_HOST   address to listen on             (default 0.0.0.0; 127.0.0.1 for one host)
#   CONFIDE_SUPERLINK_PORT   the SuperLink's HTTPS port                           (default 9092)
#   CONFIDE_CREDENTIALS      mounted credentials folder (default /run/confide/credentials):
#                            ca.crt, superlink.crt, superlink.key
#   CONFIDE_INSECURE=1       plaintext and no SuperNode authentication: local experiments only
#   CONFIDE_PUBLIC_PORT      when set, the sites' port: an nginx reverse proxy listens there
#                            (CONFIDE_PUBLIC_HOST, default 0.0.0.0) and forwards only the Fleet API
#                            (/v1/fleet/) to the SuperLink, which then must listen on loopback or an
#                            admin-only address (CONFIDE_SUPERLINK_HOST, default 127.0.0.1 here):
#                            `flwr run` and `flwr supernode register` work only from that side.
#                            The coordinator image sets 9092 (public) and 127.0.0.1:9093 (admin);
#                            see docker/proxy/render-nginx-conf.sh for the proxy's other settings.
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
if [ -n "${CONFIDE_PUBLIC_PORT:-}" ]; then
  # Control API off the sites' network: the SuperLink on the admin side, the proxy in front.
  [ "${CONFIDE_INSECURE:-0}" = "1" ] && { echo "confide-coordinator: the Fleet-only proxy needs TLS; unset CONFIDE_PUBLIC_PORT or CONFIDE_INSECURE" >&2; exit 2; }
  export CONFIDE_SUPERLINK_HOST="${CONFIDE_SUPERLINK_HOST:-127.0.0.1}" CONFIDE_SUPERLINK_PORT="${CONFIDE_SUPERLINK_PORT:-9093}"
  export CONFIDE_CREDENTIALS="$creds" CONFIDE_LOG_DIR="$logs"
  args[1]="$CONFIDE_SUPERLINK_HOST" args[3]="$CONFIDE_SUPERLINK_PORT"
  proxy_dir="${CONFIDE_PROXY_DIR:-$(cd "$(dirname "$0")" && pwd)/proxy}"
  conf="$(bash "$proxy_dir/render-nginx-conf.sh")"
  nginx -q -t -e stderr -c "$conf"
  echo "confide-coordinator: sites' port ${CONFIDE_PUBLIC_HOST:-0.0.0.0}:$CONFIDE_PUBLIC_PORT (Fleet API only, nginx)," \
    "SuperLink and admin CLI on $CONFIDE_SUPERLINK_HOST:$CONFIDE_SUPERLINK_PORT, state $state, logs $logs"
  flower-superlink "${args[@]}" &
  link=$!
  nginx -e stderr -c "$conf" -g 'daemon off;' &
  proxy=$!
  trap 'kill -TERM "$link" "$proxy" 2>/dev/null' TERM INT
  set +e
  wait -n "$link" "$proxy"  # either one ending ends the container (the restart policy restarts it)
  rc=$?
  kill -TERM "$link" "$proxy" 2>/dev/null
  wait
  exit "$rc"
fi
echo "confide-coordinator: SuperLink on ${CONFIDE_SUPERLINK_HOST:-0.0.0.0}:${CONFIDE_SUPERLINK_PORT:-9092}, state $state, logs $logs"
exec flower-superlink "${args[@]}"
