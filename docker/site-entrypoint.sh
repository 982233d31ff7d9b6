#!/usr/bin/env bash
# Start this site's Flower SuperNode (the site container's entrypoint).
#
# Settings (environment):
#   CONFIDE_SUPERLINK          coordinator address host:port                          (required)
#   CONFIDE_SITE_NAME          this site's name in metrics and model cards            (required)
#   CONFIDE_DATA_PATH          the site's training file or folder         (default /data/train.npz)
#   CONFIDE_DATA_FORMAT        npz, imagefolder, csv, json, jsonl, parquet (default: the experiment's)
#   CONFIDE_PRIVACY_POLICY     the site's privacy policy file (default /etc/confide/privacy-policy.json, the
#                              strict one shipped in the image: local DP only, epsilon <= 8, delta <= 1e-5,
#                              noise multiplier >= 0.5, no record-derived metrics; mount your own to change it)
#   CONFIDE_MAX_EPSILON        overrides the policy's max-epsilon (cumulative over all training)
#   CONFIDE_MIN_NOISE_MULTIPLIER  overrides the policy's min-noise-multiplier
#   CONFIDE_LEDGER_DIR         privacy ledger folder            (default /var/lib/confide/ledger)
#   CONFIDE_TEXT_FIELD, CONFIDE_LABEL_FIELD, CONFIDE_LABELS, CONFIDE_LABELS_SHA256
#                              pin the columns and label set a job may use (common/schema.py)
#   CONFIDE_RUNTIME_PORT       loopback port of the SuperNode's Runtime API       (default 9094)
#   CONFIDE_CREDENTIALS        mounted credentials folder  (default /run/confide/credentials):
#                              ca.crt (verifies the coordinator), site.key (this site's SuperNode key),
#                              optional runtime.crt + runtime.key (+ runtime-ca.crt, else ca.crt): TLS
#                              on the Runtime API too
#   CONFIDE_INSECURE=1         plaintext, no site key: local experiments only, never across a network
set -euo pipefail
: "${CONFIDE_SUPERLINK:?set CONFIDE_SUPERLINK to the coordinator address (host:port)}"
: "${CONFIDE_SITE_NAME:?set CONFIDE_SITE_NAME to the name of this site}"
creds="${CONFIDE_CREDENTIALS:-/run/confide/credentials}"
data="${CONFIDE_DATA_PATH:-/data/train.npz}"
ledger="${CONFIDE_LEDGER_DIR:-/var/lib/confide/ledger}"
logs="${CONFIDE_LOG_DIR:-/var/log/confide}"
mkdir -p "$ledger" "$logs" "$FLWR_HOME"
[ -e "$data" ] || { echo "confide-site: data not found: $data (mount it read-only, e.g. at /data)" >&2; exit 2; }

policy="${CONFIDE_PRIVACY_POLICY:-/etc/confide/privacy-policy.json}"
[ -r "$policy" ] || { echo "confide-site: privacy policy not found: $policy (CONFIDE_PRIVACY_POLICY)" >&2; exit 2; }

node_config="site-name='$CONFIDE_SITE_NAME' data-path='$data' ledger-dir='$ledger' privacy-policy='$policy'"
[ -n "${CONFIDE_DATA_FORMAT:-}" ] && node_config+=" data-format='$CONFIDE_DATA_FORMAT'"
[ -n "${CONFIDE_MAX_EPSILON:-}" ] && node_config+=" max-epsilon=$CONFIDE_MAX_EPSILON"
[ -n "${CONFIDE_MIN_NOISE_MULTIPLIER:-}" ] && node_config+=" min-noise-multiplier=$CONFIDE_MIN_NOISE_MULTIPLIER"
[ -n "${CONFIDE_TEXT_FIELD:-}" ] && node_config+=" text-field='$CONFIDE_TEXT_FIELD'"
[ -n "${CONFIDE_LABEL_FIELD:-}" ] && node_config+=" label-field='$CONFIDE_LABEL_FIELD'"
[ -n "${CONFIDE_LABELS:-}" ] && node_config+=" labels='$CONFIDE_LABELS'"
[ -n "${CONFIDE_LABELS_SHA256:-}" ] && node_config+=" labels-sha256='$CONFIDE_LABELS_SHA256'"

args=(--superlink "$CONFIDE_SUPERLINK" --host 127.0.0.1 --port "${CONFIDE_RUNTIME_PORT:-9094}" --node-config "$node_config")
if [ "${CONFIDE_INSECURE:-0}" = "1" ]; then
  echo "confide-site: WARNING: CONFIDE_INSECURE=1: plaintext and no site authentication (local experiments only)" >&2
  args+=(--insecure)
else
  for f in ca.crt site.key; do
    [ -r "$creds/$f" ] || { echo "confide-site: $creds/$f missing or unreadable (uid $(id -u)); see docker/README.md" >&2; exit 2; }
  done
  args+=(--root-certificates "$creds/ca.crt" --auth-supernode-private-key "$creds/site.key")
  if [ -r "$creds/runtime.crt" ] && [ -r "$creds/runtime.key" ]; then
    runtime_ca="$creds/runtime-ca.crt"
    [ -r "$runtime_ca" ] || runtime_ca="$creds/ca.crt"
    args+=(--ssl-certfile "$creds/runtime.crt" --ssl-keyfile "$creds/runtime.key" --ssl-ca-certfile "$runtime_ca")
  fi
fi
echo "confide-site: $CONFIDE_SITE_NAME -> $CONFIDE_SUPERLINK, data $data, ledger $ledger, log $logs/supernode.log"
exec > >(tee -a "$logs/supernode.log") 2>&1
exec flower-supernode "${args[@]}"
