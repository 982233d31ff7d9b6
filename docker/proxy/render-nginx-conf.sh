#!/usr/bin/env bash
# Render the coordinator's Fleet-only reverse proxy configuration (nginx.conf.template beside
# this script) and print the path of the result. Used by coordinator-entrypoint.sh; can be run by
# hand to inspect the configuration (`nginx -t -c "$(docker/proxy/render-nginx-conf.sh)"`).
#
# Settings (environment):
#   CONFIDE_PUBLIC_PORT        the port the sites dial (the proxy's)                       (required)
#   CONFIDE_PUBLIC_HOST        address the proxy listens on                             (default 0.0.0.0)
#   CONFIDE_SUPERLINK_HOST     the SuperLink's address (admin side)                   (default 127.0.0.1)
#   CONFIDE_SUPERLINK_PORT     the SuperLink's port (admin side)                           (default 9093)
#   CONFIDE_SUPERLINK_CERT_NAME  a DNS name in superlink.crt, checked on the proxy's TLS link to
#                              the SuperLink                                        (default localhost)
#   CONFIDE_CREDENTIALS        ca.crt, superlink.crt, superlink.key (default /run/confide/credentials)
#   CONFIDE_LOG_DIR            proxy-access.log and proxy-error.log go here (default /var/log/confide)
#   CONFIDE_PROXY_RUN_DIR      pid file, temporary files and the rendered nginx.conf
#                                                                      (default /tmp/confide-proxy)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${CONFIDE_PUBLIC_PORT:?set CONFIDE_PUBLIC_PORT to the port the sites dial}"
creds="${CONFIDE_CREDENTIALS:-/run/confide/credentials}"
logs="${CONFIDE_LOG_DIR:-/var/log/confide}"
run="${CONFIDE_PROXY_RUN_DIR:-/tmp/confide-proxy}"
public_host="${CONFIDE_PUBLIC_HOST:-0.0.0.0}"
upstream_host="${CONFIDE_SUPERLINK_HOST:-127.0.0.1}"
upstream_port="${CONFIDE_SUPERLINK_PORT:-9093}"
upstream_name="${CONFIDE_SUPERLINK_CERT_NAME:-localhost}"

case "$upstream_host" in
  0.0.0.0 | :: | "[::]" | "")
    echo "render-nginx-conf: CONFIDE_SUPERLINK_HOST=$upstream_host would expose the Control API beside the proxy;" \
      "use 127.0.0.1 or an admin-only address" >&2
    exit 2 ;;
esac
if [ "$upstream_host" = "$public_host" ] && [ "$upstream_port" = "$CONFIDE_PUBLIC_PORT" ]; then
  echo "render-nginx-conf: the proxy and the SuperLink cannot share $public_host:$CONFIDE_PUBLIC_PORT" >&2
  exit 2
fi
for value in "$CONFIDE_PUBLIC_PORT" "$upstream_port"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "render-nginx-conf: not a port: $value" >&2; exit 2; }
done
for value in "$public_host" "$upstream_host" "$upstream_name" "$creds" "$logs" "$run"; do
  # Plain host names, addresses and paths only: no quoting, no nginx syntax can slip in.
  [[ "$value" =~ ^[][A-Za-z0-9_./:-]+$ ]] || { echo "render-nginx-conf: unexpected characters in: $value" >&2; exit 2; }
done
for f in ca.crt superlink.crt superlink.key; do
  [ -r "$creds/$f" ] || { echo "render-nginx-conf: $creds/$f missing or unreadable (uid $(id -u))" >&2; exit 2; }
done
case "$upstream_host" in *:*) upstream_host="[${upstream_host#[}"; upstream_host="${upstream_host%]}]" ;; esac
case "$public_host" in *:*) public_host="[${public_host#[}"; public_host="${public_host%]}]" ;; esac

mkdir -p "$run" "$logs"
chmod 0755 "$run"
sed -e "s|@PUBLIC_HOST@|$public_host|g" \
    -e "s|@PUBLIC_PORT@|$CONFIDE_PUBLIC_PORT|g" \
    -e "s|@UPSTREAM_HOST@|$upstream_host|g" \
    -e "s|@UPSTREAM_PORT@|$upstream_port|g" \
    -e "s|@UPSTREAM_NAME@|$upstream_name|g" \
    -e "s|@CA@|$creds/ca.crt|g" \
    -e "s|@CERT@|$creds/superlink.crt|g" \
    -e "s|@KEY@|$creds/superlink.key|g" \
    -e "s|@LOG_DIR@|$logs|g" \
    -e "s|@RUN_DIR@|$run|g" \
    "$here/nginx.conf.template" > "$run/nginx.conf"
if grep -q '@[A-Z_]*@' "$run/nginx.conf"; then
  echo "render-nginx-conf: unfilled placeholder in $run/nginx.conf" >&2
  exit 2
fi
echo "$run/nginx.conf"
