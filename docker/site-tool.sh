#!/bin/sh
# The site admin's tools inside the site image, installed as /usr/local/bin/confide (site-status,
# audit-log, check-ledger), confide-site-audit and confide-site-status:
#   podman exec confide-site-a confide site-status
# Confide's site-side code lives in /opt/confide/app and is put on the path for these tools
# only: the jobs' ClientApps keep running the code each job ships.
set -eu
case "$(basename "$0")" in
  confide-site-audit) module=client.audit_log ;;
  confide-site-status) module=client.site_status ;;
  *) module=simulations.cli ;;
esac
PYTHONPATH=/opt/confide/app exec python3 -m "$module" "$@"
