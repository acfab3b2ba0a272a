#!/usr/bin/env bash
# Print deploy/nginx/messenger.conf with this deployment's values filled in.
#
#   NODES="127.0.0.1:8001 127.0.0.1:8002" SERVER_NAME=chat.example.com \
#   TLS_CERT=/etc/messenger/tls/fullchain.pem TLS_KEY=/etc/messenger/tls/privkey.pem \
#   FRONTEND_DIR=/opt/messenger/frontend deploy/nginx/render.sh > messenger.conf
#
# Optional: HTTP_LISTEN (80), HTTPS_LISTEN (443), LOG_DIR (/var/log/nginx),
# MAX_UPLOAD_BYTES (the nodes' setting, 26214400).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
HTTP_LISTEN=${HTTP_LISTEN:-80}
HTTPS_LISTEN=${HTTPS_LISTEN:-443}
LOG_DIR=${LOG_DIR:-/var/log/nginx}
MAX_UPLOAD_BYTES=${MAX_UPLOAD_BYTES:-26214400}

fail() {
  echo "render.sh: $*" >&2
  exit 2
}

# Each value lands inside an nginx directive: one with ';', '{', quotes or a newline
# could add directives of its own, so only plain names, paths and addresses pass. '@'
# (a placeholder's mark, and nginx's named locations) only in NODES.
safe='^[][A-Za-z0-9_./: -]+$' # ] and [ first: brackets of IPv6 addresses
for name in NODES SERVER_NAME TLS_CERT TLS_KEY FRONTEND_DIR HTTP_LISTEN HTTPS_LISTEN LOG_DIR; do
  value=${!name-}
  [ -n "$value" ] || fail "$name is required"
  checked=$value
  [ "$name" != NODES ] || checked=${value//@/}
  [[ $checked =~ $safe ]] || fail "$name has characters nginx would misread: $value"
done
[[ $MAX_UPLOAD_BYTES =~ ^[0-9]+$ ]] || fail "MAX_UPLOAD_BYTES must be a number of bytes"

upstream=""
for node in $NODES; do
  # A node that fails once is skipped for 10 s, then tried again.
  upstream+="    server $node max_fails=1 fail_timeout=10s;"$'\n'
done
upstream=${upstream%$'\n'}

# The redirect keeps a port other than 443 (a trial on loopback ports).
https_port=${HTTPS_LISTEN##*:}
port_suffix=""
[ "$https_port" = 443 ] || port_suffix=":$https_port"

declare -A values=(
  [UPSTREAM_SERVERS]=$upstream
  [HTTP_LISTEN]=$HTTP_LISTEN
  [HTTPS_LISTEN]=$HTTPS_LISTEN
  [HTTPS_PORT_SUFFIX]=$port_suffix
  [SERVER_NAME]=$SERVER_NAME
  [TLS_CERT]=$TLS_CERT
  [TLS_KEY]=$TLS_KEY
  [FRONTEND_DIR]=$FRONTEND_DIR
  [LOG_DIR]=$LOG_DIR
  [CLIENT_MAX_BODY]=$((MAX_UPLOAD_BYTES + 16384))
)

# One pass, left to right: a value is written out and never searched again, so one
# that holds "@NAME@" stays as it is instead of being filled in by a later step.
rest=$(<"$here/messenger.conf")
out=""
while [[ $rest =~ @([A-Z_]+)@ ]]; do
  placeholder=${BASH_REMATCH[0]} name=${BASH_REMATCH[1]}
  [[ -v "values[$name]" ]] || fail "unknown template placeholder: $placeholder"
  before=${rest%%"$placeholder"*}
  out+=$before${values[$name]}
  rest=${rest:$((${#before} + ${#placeholder}))}
done
printf '%s\n' "$out$rest"
