#!/usr/bin/env bash
# make cluster-demo: docs/DEPLOY.md run on loopback ports, in the foreground.
#
# Runs the `sh` blocks of docs/DEPLOY.md with this demo's values, starts one node per
# port with the command of deploy/systemd/messenger@.service (no systemd here) and
# nginx with the rendered site, runs the `sh check` blocks, prints the URL and waits.
# Ctrl-C (or SIGTERM) stops all of it. Its files live in DEMO_DIR; its database
# (DEMO_DB) is created when missing. backend/tests/test_deploy_nginx.py runs this.
#
# Settings (environment): DEMO_DIR (data/cluster-demo), DEMO_PG (a PostgreSQL server to
# use, e.g. postgresql://postgres@127.0.0.1:5432; unset: the demo starts its own, see
# below), DEMO_DB (messenger_demo), REDIS_URL (unset: its own redis-server), REDIS_PREFIX
# (demo:), NODE_PORTS ("18001 18002"), HTTP_PORT (18080), HTTPS_PORT (18443),
# DEMO_EXTRA_ENV (a file of more settings for the nodes, read after the env file).
#
# Its own PostgreSQL: initdb and pg_ctl of the newest installed version, a fresh cluster
# on a free loopback port with its socket beside it, reached like DEPLOY.md's URL (over
# the Unix socket, as the superuser postgres, trusted on that socket only: nobody else
# can open its directory). Run as root it runs as the system user postgres, its files
# in a directory of their own that user may enter. Its own Redis: redis-server on a free
# loopback port that keeps nothing on disk. Both stop with the demo.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEMO_DIR=${DEMO_DIR:-$ROOT/data/cluster-demo}
DEMO_PG=${DEMO_PG:-}
DEMO_DB=${DEMO_DB:-messenger_demo}
HTTP_PORT=${HTTP_PORT:-18080}
HTTPS_PORT=${HTTPS_PORT:-18443}
DEMO_EXTRA_ENV=${DEMO_EXTRA_ENV:-}
[[ $DEMO_DB =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "DEMO_DB must be a plain name" >&2; exit 2; }

# DEPLOY.md's variables (its step 3), set for loopback.
export APP=$ROOT ETC=$DEMO_DIR/etc DOMAIN=localhost
export PUBLIC_URL=https://localhost:$HTTPS_PORT
export NODE_PORTS=${NODE_PORTS:-"18001 18002"}
export HTTP_LISTEN=127.0.0.1:$HTTP_PORT HTTPS_LISTEN=127.0.0.1:$HTTPS_PORT
export NGINX_MAIN=$DEMO_DIR/nginx/nginx.conf NGINX_SITE=$DEMO_DIR/nginx/messenger.conf
export NGINX_LOG_DIR=$DEMO_DIR/log
export REDIS_PREFIX=${REDIS_PREFIX:-demo:}
export UPLOAD_DIR=$DEMO_DIR/uploads
RUN=$DEMO_DIR/run
mkdir -p "$DEMO_DIR/nginx" "$NGINX_LOG_DIR" "$RUN" "$UPLOAD_DIR"

# The blocks of DEPLOY.md whose fence says exactly `$1` ("sh" or "sh check").
doc_blocks() {
  awk -v open="\`\`\`$1" '
    /^```/ { if (inside) { inside = 0; next } if ($0 == open) { inside = 1; next } }
    inside' "$ROOT/docs/DEPLOY.md"
}

pids=()
pg_stop=()
stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ ${#pg_stop[@]} = 0 ] || "${pg_stop[@]}" >/dev/null 2>&1 || true
  [ -z "${pg_home:-}" ] || rm -rf "$pg_home"
  echo "cluster-demo: stopped"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Who runs the migrations (DEPLOY.md's APP_USER) and, as root, the demo's PostgreSQL.
as_pg=()
if [ "$(id -u)" = 0 ]; then
  as_pg=(runuser -u postgres --)
  export APP_USER=${APP_USER:-postgres}
  # A virtualenv made from a Python under /root is root's alone: then root migrates
  # (the demo's socket trusts every local user, unlike a real server's peer check).
  if ! runuser -u "$APP_USER" -- "$ROOT/.venv/bin/python" -c '' 2>/dev/null; then
    echo "cluster-demo: $APP_USER cannot run $ROOT/.venv/bin/python: root runs the migrations"
    APP_USER=root
  fi
else
  export APP_USER=${APP_USER:-$(id -un)}
  # runuser switches users only for root; here the demo's own user runs everything.
  runuser_shim='runuser() { [ "$1" = -u ] && [ "$2" = "$(id -un)" ] && [ "$3" = -- ] || return 1; shift 3; "$@"; }'
fi

if [ -z "$DEMO_PG" ]; then
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1)
  initdb=${initdb:-$(command -v initdb)}
  pg_bin=$(dirname "$initdb")
  pg_port=$(free_port)
  if [ ${#as_pg[@]} -gt 0 ]; then
    # DEMO_DIR may lie under a home only root may enter: the cluster gets its own.
    pg_home=$(mktemp -d /tmp/cluster-demo-pg.XXXXXX)
    chown postgres: "$pg_home"
  else
    pg_home=""
    mkdir -p "$DEMO_DIR/pg"
  fi
  pg_dir=${pg_home:-$DEMO_DIR/pg}
  chmod 0700 "$pg_dir"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres \
    --auth-local=trust --auth-host=reject >"$DEMO_DIR/log-initdb.txt"
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgresql.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_dir -c fsync=off" start >/dev/null
  pg_stop=("${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop)
  echo "cluster-demo: PostgreSQL of its own on 127.0.0.1:$pg_port ($pg_dir)"
  # DEPLOY.md's form, with the port in the authority: the env file is read by shells
  # too, where "&port=" would start a background job.
  export DATABASE_URL="postgresql://postgres@:$pg_port/$DEMO_DB?host=$pg_dir"
  admin_url="postgresql://postgres@:$pg_port/postgres?host=$pg_dir"
else
  export DATABASE_URL=$DEMO_PG/$DEMO_DB
  admin_url=$DEMO_PG/postgres
fi

if [ -z "${REDIS_URL:-}" ]; then
  redis_port=$(free_port)
  mkdir -p "$DEMO_DIR/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$DEMO_DIR/redis" --logfile "$DEMO_DIR/redis/redis.log" &
  pids+=("$!")
  echo "cluster-demo: Redis of its own on 127.0.0.1:$redis_port"
  REDIS_URL=redis://127.0.0.1:$redis_port/0
fi
export REDIS_URL

# What the console blocks of DEPLOY.md do as root on a real server: the database.
if ! psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1; then
  psql "$admin_url" -qc "CREATE DATABASE \"$DEMO_DB\""
fi

# Started as root, nginx's workers run as nobody, who may not reach a checkout or a
# DEMO_DIR under a private home (/root): then, on loopback only, they stay root.
workers_user=""
if [ "$(id -u)" = 0 ] && ! runuser -u nobody -- sh -c \
  'test -r "$1/frontend/app.js" && test -x "$2/nginx"' sh "$ROOT" "$DEMO_DIR" 2>/dev/null; then
  echo "cluster-demo: nobody cannot reach $ROOT or $DEMO_DIR: nginx's workers run as root"
  workers_user="user root;"
fi

# nginx's main file: Debian's /etc/nginx/nginx.conf reduced to what the site needs,
# every path in DEMO_DIR so it runs beside a system nginx.
cat > "$NGINX_MAIN" <<EOF
$workers_user
worker_processes 2;
pid $RUN/nginx.pid;
error_log $NGINX_LOG_DIR/nginx-error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    client_body_temp_path $DEMO_DIR/nginx/client_body;
    proxy_temp_path $DEMO_DIR/nginx/proxy;
    fastcgi_temp_path $DEMO_DIR/nginx/fastcgi;
    uwsgi_temp_path $DEMO_DIR/nginx/uwsgi;
    scgi_temp_path $DEMO_DIR/nginx/scgi;
    include $NGINX_SITE;
}
EOF

echo "cluster-demo: running the sh blocks of docs/DEPLOY.md"
{
  echo "${runuser_shim:-}"
  doc_blocks sh
} | bash -euo pipefail

# The unit's command with the checkout in place of /opt/messenger.
unit=$ROOT/deploy/systemd/messenger@.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_start=${exec_start//\/opt\/messenger/$ROOT}
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
workdir=${workdir//\/opt\/messenger/$ROOT}

for port in $NODE_PORTS; do
  (
    set -a
    . "$ETC/env"
    [ -z "$DEMO_EXTRA_ENV" ] || . "$DEMO_EXTRA_ENV"
    PORT=$port
    NODE_ID=$(hostname)-$port # the unit's NODE_ID=%H-%i
    set +a
    cd "$workdir"
    exec $exec_start
  ) &
  pids+=("$!")
  echo "$!" > "$RUN/node-$port.pid"
done

# Polls `$@` (a check) every 0.1 s for up to 30 s while every process started runs.
until_up() {
  for _ in $(seq 300); do
    "$@" && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "cluster-demo: process $pid exited early" >&2; exit 1; }
    done
    sleep 0.1
  done
  echo "cluster-demo: no answer in 30 s from: $*" >&2
  exit 1
}
nodes_up() {
  for port in $NODE_PORTS; do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null || return 1
  done
}
# nginx only once the nodes answer: it would mark a node it found down as failed for 10 s.
until_up nodes_up

nginx -c "$NGINX_MAIN" -g 'daemon off;' &
pids+=("$!")
echo "$!" > "$RUN/nginx-master.pid"
nginx_up() {
  curl -fsS -o /dev/null --cacert "$ETC/tls/fullchain.pem" "$PUBLIC_URL/health" 2>/dev/null
}
until_up nginx_up

echo "cluster-demo: running the sh check blocks of docs/DEPLOY.md"
doc_blocks "sh check" | bash -euo pipefail
echo
echo "cluster-demo: ready at $PUBLIC_URL/ (self-signed: $ETC/tls/fullchain.pem); Ctrl-C stops it"
# Until Ctrl-C; a node stopped on its own leaves the rest running.
wait
