#!/usr/bin/env bash
# make deploy-walkthrough: every block of docs/DEPLOY.md run as written, in document
# order, as an operator in a root shell on a fresh server would, with the doc's own
# defaults (chat.example.com, nodes on 8001 and 8002, nginx on 80 and 443).
#
#   1. Packages: `apt-get update` and `apt-get install` for real, on the machine itself
#      (dpkg's records and the system users of packages must stay with the packages).
#   2. Then, in a private mount namespace, /etc, /opt, /var/lib, /var/log and
#      /run/systemd become overlays whose changes vanish with it, so useradd, the
#      checkout, /etc/messenger, the units and nginx's site are real but the host keeps
#      none of them. (Not copies of single files bind-mounted: useradd replaces
#      /etc/passwd by a rename, which a mount point refuses.) /etc/hosts gets
#      chat.example.com -> 127.0.0.1: the DNS record an operator makes. Steps 2 to 9
#      then run in one shell, as step 3 asks.
#   3. The cluster is proven through nginx on https://chat.example.com: two users sign
#      up, one sends a message over REST, the other fetches it; each node answers
#      /health; the access log names both nodes.
#   4. "Upgrading" runs while /health is polled through nginx: no request may fail.
#
# The one change to the doc's text: the `git clone` URL is this checkout, so what is
# deployed is its committed HEAD (uncommitted changes are not). There is no systemd
# here: deploy/demo/systemctl, first on PATH, stands in for it (see its header). As
# without systemd installing them starts nothing, PostgreSQL (on /var/run/postgresql)
# and Redis (127.0.0.1:6379) must already run; .ci/run starts them.
#
# It refuses to start when a port it needs is taken, or the role, the database or Redis
# keys it would create exist. At the end, even on failure, it stops what it started and
# drops the role and database `messenger` and the Redis keys under its own prefix.
#
#   walkthrough.sh           run it (root only)
#   walkthrough.sh --plan    print the scripts it would run, run nothing
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DOC=$ROOT/docs/DEPLOY.md
CLONE_URL=https://example.com/messenger.git
# docs/DEPLOY.md's defaults (steps 3 and 6), which the walkthrough checks and cleans up.
DOMAIN=chat.example.com
PORTS="80 443 8001 8002"
NODE_PORTS="8001 8002"
PG_NAME=messenger
# A prefix of its own (step 3 takes it from the environment), never the doc's default
# `msg:`: a node of a developer's running meanwhile keeps its keys.
REDIS_PREFIX=walkthrough-$$:
# A fresh Debian root shell's PATH: python3 is Debian's, which the user messenger may run.
DEBIAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "deploy-walkthrough: $*"; }
fail() {
  echo "deploy-walkthrough: $*" >&2
  exit 1
}

# The script of one phase: the fenced blocks of DEPLOY.md whose section belongs to it
# (packages: "1. Packages"; upgrade: "Upgrading"; setup: every other), each between
# wt_begin and wt_end (which print what runs and time it). A fence of any other kind
# than console, sh and sh check stops everything: it would be neither run nor checked.
phase_script() {
  awk -v phase="$1" '
    function quote(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
    !inside && /^## / { section = substr($0, 4) }
    /^```/ {
      if (inside) { inside = 0; if (mine) print "wt_end " n; next }
      kind = substr($0, 4)
      if (kind != "console" && kind != "sh" && kind != "sh check") {
        print "DEPLOY.md: a block of unknown kind \"" kind "\" in " section > "/dev/stderr"
        exit 3
      }
      n++
      inside = 1
      belongs = section == "1. Packages" ? "packages" : section == "Upgrading" ? "upgrade" : "setup"
      mine = belongs == phase
      if (mine) print "wt_begin " n " " quote(kind) " " quote(section)
      next
    }
    inside && mine
  ' "$DOC"
}

# What each phase script starts with: the markers, timed into $WT_TIMINGS.
# shellcheck disable=SC2016 # expanded by the phase's shell
PREAMBLE='
wt_begin() { echo; echo "== DEPLOY.md block $1 ($2) of \"$3\""; wt_block="$1 ($2) of \"$3\""; wt_started=$(date +%s); }
wt_end() { echo "$(($(date +%s) - wt_started)) $wt_block" >>"$WT_TIMINGS"; }
'

# The phase's script as it runs: the clone URL replaced by this checkout, once.
runnable() {
  local script
  script=$(phase_script "$1")
  [ "$1" != setup ] || [ "$(grep -c "$CLONE_URL" <<<"$script")" = 1 ] ||
    fail "DEPLOY.md must clone $CLONE_URL exactly once (the walkthrough clones $ROOT instead)"
  printf '%s\n%s\n' "$PREAMBLE" "${script//"$CLONE_URL"/"file://$ROOT"}"
}

if [ "${1:-}" = --plan ]; then
  for phase in packages setup upgrade; do
    echo "### phase $phase"
    runnable "$phase"
  done
  exit 0
fi

# --- Inside the private mount namespace ----------------------------------------------

# Runs a phase's script in a root shell as fresh as the server's, nothing else of this
# environment but the Redis prefix: the stand-in systemctl first on PATH, except for the
# packages, whose install scripts must meet the host's own systemctl (they enable and
# start services through it where systemd runs).
run_phase() {
  local script=$W/$1.sh path=$W/bin:$DEBIAN_PATH
  [ "$1" != packages ] || path=$DEBIAN_PATH
  runnable "$1" >"$script"
  env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 TERM=dumb \
    PATH="$path" SYSTEMCTL_STANDIN_DIR="$W/systemd" WT_TIMINGS="$W/timings" \
    REDIS_PREFIX="$REDIS_PREFIX" bash -euo pipefail "$script" </dev/null
}

# Overlays: reads see the host's files, every write stays in $W and vanishes with it.
privatize() {
  local dir name
  # /run/systemd: systemd-analyze verify leaves a stamp there.
  # A folder missing here would be written on the host itself: create it first (empty,
  # as on a fresh server), then lay the overlay over it.
  for dir in /etc /opt /var/lib /var/log /run/systemd; do
    [ -d "$dir" ] || mkdir -p "$dir" || fail "cannot make $dir to lay an overlay on"
    name=${dir//\//_}
    mkdir -p "$W/upper$name" "$W/work$name"
    mount -t overlay "walkthrough$name" \
      -o "lowerdir=$dir,upperdir=$W/upper$name,workdir=$W/work$name" "$dir"
  done
  echo "127.0.0.1 $DOMAIN" >>/etc/hosts
}

# curl through nginx at https://chat.example.com, trusting the doc's self-signed cert.
nginx_curl() {
  curl -fsS --max-time 10 --resolve "$DOMAIN:443:127.0.0.1" \
    --cacert /etc/messenger/tls/fullchain.pem "$@"
}

# A field of the JSON on stdin, by a path of keys and indexes: json messages 0 content
json() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1:]:
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)' "$@"
}

prove_cluster() {
  local url=https://$DOMAIN/api/v1 suffix bob alice_token bob_token conversation text got
  suffix=$(openssl rand -hex 4)
  for name in alice bob; do
    nginx_curl -H 'Content-Type: application/json' "$url/auth/register" \
      -d "{\"username\": \"$name$suffix\", \"password\": \"walkthrough $suffix\"}" >/dev/null
  done
  login() {
    nginx_curl -H 'Content-Type: application/json' "$url/auth/login" \
      -d "{\"username\": \"$1$suffix\", \"password\": \"walkthrough $suffix\"}"
  }
  alice_token=$(login alice | json access_token)
  bob_token=$(login bob | json access_token)
  bob=$(nginx_curl -H "Authorization: Bearer $bob_token" "$url/me" | json id)
  conversation=$(nginx_curl -H "Authorization: Bearer $alice_token" -H 'Content-Type: application/json' \
    "$url/messenger/conversations" -d "{\"type\": \"direct\", \"participant_ids\": [$bob]}" | json id)
  text="through nginx $suffix"
  nginx_curl -H "Authorization: Bearer $alice_token" -H 'Content-Type: application/json' \
    "$url/messenger/conversations/$conversation/messages" -d "{\"content\": \"$text\"}" >/dev/null
  got=$(nginx_curl -H "Authorization: Bearer $bob_token" \
    "$url/messenger/conversations/$conversation/messages" | json messages 0 content)
  [ "$got" = "$text" ] || fail "bob fetched \"$got\", not \"$text\""
  say "a message sent over REST by one user was fetched by the other (conversation $conversation)"

  for port in $NODE_PORTS; do
    got=$(curl -fsS --max-time 5 "http://127.0.0.1:$port/health" | json status)
    [ "$got" = ok ] || fail "node $port: /health status $got"
    grep -q "upstream=127.0.0.1:$port" /var/log/nginx/messenger-access.log ||
      fail "nginx's access log names no request served by node $port"
  done
  say "both nodes healthy, and each served requests through nginx"
}

# Every node healthy on its own port, within 60 s.
nodes_healthy() {
  local port
  for _ in $(seq 600); do
    for port in $NODE_PORTS; do
      curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null || continue 2
    done
    return 0
  done
  fail "the nodes did not all answer /health within 60 s"
}

node_pids() {
  local port
  for port in $NODE_PORTS; do cut -d' ' -f1 "$W/systemd/messenger@$port.service.pid"; done
}

# The Upgrading section while /health is asked through nginx every 50 ms.
upgrade_under_load() {
  local before after polls failed
  before=$(node_pids)
  (
    while [ ! -e "$W/poll.stop" ]; do
      code=$(nginx_curl -o /dev/null -w '%{http_code}' "https://$DOMAIN/health" 2>/dev/null) || true
      echo "$(date +%T.%N) ${code:-000}" >>"$W/polls"
      sleep 0.05 # the pace of the polling, not a wait for anything
    done
  ) &
  poller=$!
  run_phase upgrade
  nodes_healthy
  # Polls go on until nginx has sent one to each restarted node (it retries a node it
  # found down after fail_timeout, 10 s).
  local since served=""
  since=$(($(wc -l </var/log/nginx/messenger-access.log) + 1))
  for _ in $(seq 300); do
    served=$(tail -n +"$since" /var/log/nginx/messenger-access.log |
      awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^upstream=127/) seen[$i] = 1 } END { print length(seen) }')
    [ "$served" -lt 2 ] || break
    sleep 0.1
  done
  [ "$served" -ge 2 ] || fail "nginx did not send /health to both restarted nodes within 30 s"
  touch "$W/poll.stop"
  wait "$poller"
  poller=""
  after=$(node_pids)
  [ "$(comm -12 <(sort <<<"$before") <(sort <<<"$after"))" = "" ] ||
    fail "a node was not restarted (pids before: $before; after: $after)"
  polls=$(wc -l <"$W/polls")
  failed=$(grep -vc ' 200$' "$W/polls" || true)
  UPGRADE_POLLS="$polls polls of /health through nginx, $failed failed"
  if [ "$failed" != 0 ]; then
    grep -v ' 200$' "$W/polls" >&2
    fail "the service went down during the upgrade: $UPGRADE_POLLS"
  fi
  say "upgraded: both nodes restarted, $UPGRADE_POLLS"
}

inner_cleanup() {
  local rc=$? file
  if [ "$rc" != 0 ]; then
    # What journalctl would show: the end of each unit's output.
    for file in "$W"/systemd/*.log; do
      [ -e "$file" ] || continue
      echo "--- the end of $(basename "$file" .log)'s output:" >&2
      tail -n 30 "$file" >&2
    done
  fi
  [ -z "${poller:-}" ] || {
    touch "$W/poll.stop"
    wait "$poller" || true
  }
  for file in "$W"/systemd/*.pid; do
    [ -e "$file" ] || continue
    PATH="$W/bin:$DEBIAN_PATH" SYSTEMCTL_STANDIN_DIR=$W/systemd systemctl stop "$(basename "$file" .pid)" || rc=1
  done
  if [ -e "$W/systemd/nginx.started" ]; then
    PATH="$W/bin:$DEBIAN_PATH" SYSTEMCTL_STANDIN_DIR=$W/systemd systemctl stop nginx || rc=1
  fi
  exit "$rc"
}

inside() {
  W=$1
  # Only ever in the namespace made for it: run in the host's own, the overlays would
  # lie over the host's /etc, /opt and /var for good.
  [ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
    fail "--inside runs only in the private mount namespace the walkthrough makes"
  readlink /proc/self/ns/mnt >"$W/namespace"
  mkdir -p "$W/bin" "$W/systemd"
  ln -s "$ROOT/deploy/demo/systemctl" "$W/bin/systemctl"
  : >"$W/timings"
  trap inner_cleanup EXIT
  trap 'exit 143' INT TERM
  set -o errtrace # the line that failed, from functions too
  trap 'echo "deploy-walkthrough: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

  local t1 t2 t3
  run_phase packages
  privatize
  run_phase setup
  t1=$(date +%s)
  echo
  prove_cluster
  t2=$(date +%s)
  upgrade_under_load
  t3=$(date +%s)

  # Lines of $W/timings: SECONDS N (KIND) of "SECTION".
  local kinds total slowest
  kinds=$(sed 's/^[0-9]* [0-9]* (\([^)]*\)).*/\1/' "$W/timings" | sort | uniq -c |
    awk '{ n = $1; $1 = ""; printf "%s%s%s", sep, n, $0; sep = ", " }')
  total=$(awk '{ s += $1 } END { print s }' "$W/timings")
  slowest=$(sort -nr "$W/timings" | head -n 1)
  echo "$(wc -l <"$W/timings") blocks of DEPLOY.md ($kinds) took $total s, the longest" \
    "block ${slowest#* } ${slowest%% *} s; the proof through nginx $((t2 - t1)) s; the" \
    "upgrade $((t3 - t2)) s with $UPGRADE_POLLS" >"$W/summary"
}

if [ "${1:-}" = --inside ]; then
  inside "$2"
  exit 0
fi

# --- On the host: checks, the namespace, cleanup -------------------------------------

[ "$(id -u)" = 0 ] || fail "run it as root: it installs packages, adds a user in a private copy of /etc and binds ports 80 and 443"
for tool in unshare ss runuser psql redis-cli curl; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done

taken=""
for port in $PORTS; do
  [ -z "$(ss -Hltn "sport = :$port")" ] || taken+=" $port"
done
[ -z "$taken" ] || fail "port(s)$taken already in use: DEPLOY.md's nginx and nodes need $PORTS free"

[ ! -s /run/nginx.pid ] || ! kill -0 "$(cat /run/nginx.pid)" 2>/dev/null ||
  fail "an nginx runs already (/run/nginx.pid): DEPLOY.md's reload would reach it"

as_postgres() { runuser -u postgres -- "$@"; }
as_postgres psql -qtAc 'SELECT 1' >/dev/null 2>&1 ||
  fail "PostgreSQL does not answer on /var/run/postgresql (as the user postgres)"
exists=$(as_postgres psql -qtAc "SELECT 'role' FROM pg_roles WHERE rolname = '$PG_NAME'
  UNION ALL SELECT 'database' FROM pg_database WHERE datname = '$PG_NAME'")
[ -z "$exists" ] || fail "a PostgreSQL $(echo "$exists" | paste -sd' ') named $PG_NAME exists: DEPLOY.md creates them, and this will not clobber them"
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || fail "Redis does not answer on 127.0.0.1:6379"
[ -z "$(redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$REDIS_PREFIX*" | head -n 1)" ] ||
  fail "Redis holds keys under $REDIS_PREFIX already: this will not mix its nodes' keys with them"

W=$(mktemp -d /tmp/deploy-walkthrough.XXXXXX)
started=$(date +%s)
outer_cleanup() {
  local rc=$? namespace proc
  local -a left=()
  trap - EXIT INT TERM
  # The safety net: a process still in the namespace was started by it and missed by
  # the stand-in's stop.
  namespace=$(cat "$W/namespace" 2>/dev/null || true)
  if [ -n "$namespace" ] && [ "$namespace" != "$(readlink /proc/1/ns/mnt)" ]; then
    for proc in /proc/[0-9]*; do
      [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" != "$namespace" ] || left+=("${proc#/proc/}")
    done
    if [ ${#left[@]} -gt 0 ]; then
      echo "deploy-walkthrough: still running after the stop, killed: ${left[*]}" >&2
      kill -KILL "${left[@]}" 2>/dev/null || true
      rc=1
    fi
  fi
  as_postgres dropdb --if-exists --force "$PG_NAME" || rc=1
  as_postgres dropuser --if-exists "$PG_NAME" || rc=1
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$REDIS_PREFIX*" |
    xargs -r -d '\n' redis-cli -h 127.0.0.1 -p 6379 unlink >/dev/null || rc=1
  local summary
  summary=$(cat "$W/summary" 2>/dev/null || true)
  rm -rf "$W"
  if [ "$rc" = 0 ]; then
    say "passed in $(($(date +%s) - started)) s: $summary"
  else
    say "FAILED after $(($(date +%s) - started)) s (cleaned up)" >&2
  fi
  exit "$rc"
}
trap outer_cleanup EXIT
trap 'exit 130' INT TERM

say "running every block of docs/DEPLOY.md (deploying $ROOT's committed HEAD, not its uncommitted changes)"
unshare --mount --propagation private bash "$0" --inside "$W"
