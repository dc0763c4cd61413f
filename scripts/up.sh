#!/usr/bin/env bash
# `make up`: the whole system in the foreground on this machine, supervised.
# A service that dies (a crash, kill -9) is logged and started again after
# 1 s, 2 s, 4 s ... at most 30 s (back to 1 s once it had run for a minute);
# the others keep running. Ctrl-C (or SIGTERM to this script) stops
# everything: SIGTERM to the services, SIGKILL to any left after
# STOP_TIMEOUT; then Redis the same way.
#
# Settings, from the environment [default]:
#   EDGES, AUTHS, ROUTERS  how many of each service [2, 1, 1]
#   EDGE_PORT_BASE   edge-i listens on EDGE_PORT_BASE+i-1 [7001];
#                    EDGE<i>_PORT sets one edge's port (EDGE2_PORT=7010)
#   EDGE_HOST        the address the edges listen on [0.0.0.0]
#   ADMIN_PORT_BASE  admin ports (/healthz, /metrics) on 127.0.0.1: edge-i
#                    on BASE+3i-2, auth-i on BASE+3i-1, router-i on BASE+3i
#                    [9100: edge-1 9101, auth-1 9102, router-1 9103,
#                    edge-2 9104, ...]; 0: no admin ports
#   REDIS_URL        use that Redis instead of starting one
#   REDIS_PORT       the port of the Redis started here [6380, clear of a
#                    system Redis on 6379]
#   REDIS_CLUSTER    start a Redis Cluster of that many masters instead
#                    (3 or more; ports REDIS_PORT and up, cluster bus on
#                    each port + 10000), and run every service on it
#   REDIS_SAVE       its snapshot points, "<seconds> <changes> ..." [60 1]
#   DATA_DIR         Redis's data (DATA_DIR/redis) and the services' pid
#                    files (DATA_DIR/run/<name>.pid) [data]
#   CERTS_DIR        server.pem, server-key.pem, ca.pem, auth-seal.key, auth-seal.pub [certs]
#   BIN              where the binaries are [target/release]
#   STOP_TIMEOUT     seconds from SIGTERM to SIGKILL when stopping: the
#                    services, then Redis [10]
#   RUST_LOG [info], and any CHAT_* setting, reach every service.
#   Two edges or more run on one thread each (CHAT_EDGE__THREADS [1]; one
#   edge: 0, a thread per core): they share this machine, and one thread
#   is cheaper per line than several.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BIN=${BIN:-target/release}
EDGES=${EDGES:-2}
edge_threads=$([ "$EDGES" -gt 1 ] && echo 1 || echo 0)
AUTHS=${AUTHS:-1}
ROUTERS=${ROUTERS:-1}
EDGE_PORT_BASE=${EDGE_PORT_BASE:-7001}
EDGE_HOST=${EDGE_HOST:-0.0.0.0}
ADMIN_PORT_BASE=${ADMIN_PORT_BASE:-9100}
REDIS_PORT=${REDIS_PORT:-6380}
REDIS_SAVE=${REDIS_SAVE:-60 1}
DATA_DIR=${DATA_DIR:-data}
CERTS_DIR=${CERTS_DIR:-certs}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
export RUST_LOG=${RUST_LOG:-info}

# Restart backoff, in seconds: first delay, longest delay, and how long a
# service must have run for its next restart to wait the first delay again.
FIRST_DELAY=1
LONGEST_DELAY=30
RAN_WELL=60

log() { printf '%(%H:%M:%S)T up: %s\n' -1 "$*" >&2; }
die() {
  log "$*"
  exit 1
}

REDIS_CLUSTER=${REDIS_CLUSTER:-0}
for n in EDGES AUTHS ROUTERS EDGE_PORT_BASE ADMIN_PORT_BASE REDIS_PORT STOP_TIMEOUT REDIS_CLUSTER; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number, not '${!n}'"
done
((EDGES >= 1)) || die "EDGES must be 1 or more"
((REDIS_CLUSTER == 0 || REDIS_CLUSTER >= 3)) || die "REDIS_CLUSTER must be 3 or more (a cluster needs 3 masters)"

RUN_DIR="$DATA_DIR/run"
REDIS_DIR="$DATA_DIR/redis"
mkdir -p "$RUN_DIR" || die "cannot create $RUN_DIR"

# The services, in start order, with their edge ports and admin addresses;
# `names` is what is supervised: the services, and Redis if started here.
services=()
edge_ports=()
declare -A edge_port=() admin=()
admin_addr() { # name, offset from ADMIN_PORT_BASE
  if ((ADMIN_PORT_BASE == 0)); then admin[$1]=""; else admin[$1]="127.0.0.1:$((ADMIN_PORT_BASE + $2))"; fi
}
for ((i = 1; i <= AUTHS; i++)); do
  services+=("auth-$i")
  admin_addr "auth-$i" $((3 * i - 1))
done
for ((i = 1; i <= ROUTERS; i++)); do
  services+=("router-$i")
  admin_addr "router-$i" $((3 * i))
done
for ((i = 1; i <= EDGES; i++)); do
  services+=("edge-$i")
  admin_addr "edge-$i" $((3 * i - 2))
  port_var="EDGE${i}_PORT"
  edge_port[edge-$i]=${!port_var:-$((EDGE_PORT_BASE + i - 1))}
  edge_ports+=("${edge_port[edge-$i]}")
done
names=("${services[@]}")

# Supervision state, by name: pid (empty while not running), start time
# and next restart time (ms), next restart delay (s).
declare -A pid=() started=() due=() delay=()
now=0
clock() { now=$((${EPOCHREALTIME//[!0-9]/} / 1000)); } # ms; no subshell

# A short wait. After it, bash reports on its own any child killed by a
# signal meanwhile ("line 123: 4567 Killed ..."); `ended` says the same in
# words, so bash's report is dropped here.
pause() { sleep "$1"; } 2>/dev/null

# Starts service $1 in the background, in a session of its own: Ctrl-C in
# the terminal reaches only this script, which stops the services in order
# (edges before Redis). setsid and env exec, so $! is the service's pid.
start() {
  local name=$1
  local -a cmd
  case $name in
    redis)
      cmd=(redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$redis_dir"
        --appendonly no --save "$REDIS_SAVE" --logfile "$redis_dir/redis.log")
      ;;
    redis-*) # a node of the cluster (REDIS_CLUSTER), its files in a directory of its own
      local port=$((REDIS_PORT + ${name#redis-} - 1))
      cmd=(redis-server --port "$port" --bind 127.0.0.1 --dir "$redis_dir/$port"
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000
        --appendonly no --save "$REDIS_SAVE" --logfile "$redis_dir/$port/redis.log")
      ;;
    auth-*)
      cmd=(env CHAT_AUTH__ID="$name" CHAT_AUTH__ADMIN_LISTEN="${admin[$name]}"
        CHAT_AUTH__SEAL_KEY_FILE="$CERTS_DIR/auth-seal.key"
        CHAT_AUTH__REGISTRATION="${CHAT_AUTH__REGISTRATION:-true}" "$BIN/auth-svc")
      ;;
    router-*)
      cmd=(env CHAT_ROUTER__ID="$name" CHAT_ROUTER__ADMIN_LISTEN="${admin[$name]}" "$BIN/router-svc")
      ;;
    edge-*)
      cmd=(env CHAT_EDGE__ID="$name" CHAT_EDGE__LISTEN="$EDGE_HOST:${edge_port[$name]}"
        CHAT_EDGE__ADMIN_LISTEN="${admin[$name]}"
        CHAT_EDGE__TLS_CERT="$CERTS_DIR/server.pem" CHAT_EDGE__TLS_KEY="$CERTS_DIR/server-key.pem"
        CHAT_EDGE__AUTH_PUBLIC_KEY_FILE="$CERTS_DIR/auth-seal.pub"
        CHAT_EDGE__THREADS="${CHAT_EDGE__THREADS:-$edge_threads}" "$BIN/edge-svc")
      ;;
  esac
  setsid "${cmd[@]}" &
  pid[$name]=$!
  echo "${pid[$name]}" >"$RUN_DIR/$name.pid"
  clock
  started[$name]=$now
  log "$name started (pid ${pid[$name]})"
}

# Collects the exit of service $1, which has ended; sets `how` to how.
how=""
ended() {
  local name=$1 status=0
  wait "${pid[$name]}" || status=$?
  if ((status > 128)); then
    how="was killed by SIG$(kill -l "$status")"
  else
    how="exited with status $status"
  fi
  rm -f "$RUN_DIR/$name.pid"
  pid[$name]=""
}

alive() { [[ -n ${pid[$1]:-} ]] && kill -0 "${pid[$1]}" 2>/dev/null; }

# A service that ended: say so, and when it starts again.
restart_later() {
  local name=$1 was=${pid[$1]}
  ended "$name"
  clock
  local ran=$(((now - started[$name]) / 1000))
  ((ran >= RAN_WELL)) && delay[$name]=$FIRST_DELAY
  local wait_s=${delay[$name]:-$FIRST_DELAY}
  due[$name]=$((now + wait_s * 1000))
  delay[$name]=$((wait_s * 2 > LONGEST_DELAY ? LONGEST_DELAY : wait_s * 2))
  log "$name (pid $was) $how after ${ran} s; starting it again in ${wait_s} s"
}

# Waits until every service named is gone, or until `deadline` (ms).
await_exit() {
  local name
  while :; do
    local left=0
    for name in "$@"; do
      if alive "$name"; then
        left=1
      elif [[ -n ${pid[$name]:-} ]]; then
        ended "$name"
        log "$name $how"
      fi
    done
    clock
    ((left == 0 || now >= deadline)) && return
    pause 0.1
  done
}

# Stops the services named: SIGTERM, then SIGKILL to any left after
# STOP_TIMEOUT seconds.
stop() {
  local name
  for name in "$@"; do alive "$name" && kill -TERM "${pid[$name]}" 2>/dev/null; done
  clock
  deadline=$((now + STOP_TIMEOUT * 1000))
  await_exit "$@"
  for name in "$@"; do
    if alive "$name"; then
      log "$name still runs after ${STOP_TIMEOUT} s: SIGKILL"
      kill -KILL "${pid[$name]}" 2>/dev/null
    fi
  done
  clock
  deadline=$((now + 5000))
  await_exit "$@"
}

# Stops everything, the services first and then Redis, so that the edges
# can still end their sessions in it; exits with status $1.
stopping=""
stop_all() {
  trap '' INT TERM HUP
  trap - EXIT
  [[ -n $stopping ]] && exit "$1"
  stopping=1
  log "stopping: SIGTERM to every service, SIGKILL to any left after ${STOP_TIMEOUT} s; then Redis the same way"
  stop "${services[@]}"
  [[ -n ${pid[redis]:-} ]] && stop redis
  ((${#nodes[@]} > 0)) && stop "${nodes[@]}"
  rm -f "$RUN_DIR"/*.pid
  log "stopped."
  exit "$1"
}
stop_requested=""
# Output piped to a reader that quit first (`make up | tee`, Ctrl-C) must
# not kill this script before it has stopped the services.
trap '' PIPE
trap 'stop_requested=1' INT TERM HUP
trap 'stop_all 1' EXIT # this script failed: take the services down with it

# Redis: a cluster (REDIS_CLUSTER), one Redis, or none if REDIS_URL names one.
nodes=()
node_up() { redis-cli -p "$1" ping >/dev/null 2>&1; }
if ((REDIS_CLUSTER > 0)) && [[ -z ${REDIS_URL:-} ]]; then
  mkdir -p "$REDIS_DIR" || die "cannot create $REDIS_DIR"
  redis_dir=$(cd "$REDIS_DIR" && pwd)/cluster
  seeds=""
  for ((i = 1; i <= REDIS_CLUSTER; i++)); do
    port=$((REDIS_PORT + i - 1))
    node_up "$port" && die "a Redis already answers on port $port; set REDIS_PORT"
    mkdir -p "$redis_dir/$port" || die "cannot create $redis_dir/$port"
    nodes+=("redis-$i")
    seeds+="${seeds:+,}127.0.0.1:$port"
    start "redis-$i"
  done
  names=("${nodes[@]}" "${names[@]}")
  for ((i = 1; i <= REDIS_CLUSTER; i++)); do
    port=$((REDIS_PORT + i - 1))
    for _ in $(seq 100); do node_up "$port" && break; pause 0.1; done
    node_up "$port" || die "redis-server did not start (see $redis_dir/$port/redis.log)"
  done
  # A cluster made by an earlier run comes back by itself (nodes.conf).
  if ! redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok; then
    if [[ $(redis-cli -p "$REDIS_PORT" cluster info | grep cluster_known_nodes) == *:1* ]]; then
      log "creating the cluster: $REDIS_CLUSTER masters"
      redis-cli --cluster create ${seeds//,/ } --cluster-yes >"$redis_dir/create.log" 2>&1 ||
        die "redis-cli --cluster create failed (see $redis_dir/create.log)"
    fi
    for _ in $(seq 100); do
      redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok && break
      pause 0.1
    done
    redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok ||
      die "the cluster is not ok (see $redis_dir/*/redis.log)"
  fi
  REDIS_URL="redis+cluster://$seeds"
elif [[ -z ${REDIS_URL:-} ]]; then
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    die "a Redis already answers on port $REDIS_PORT; set REDIS_PORT or REDIS_URL"
  fi
  mkdir -p "$REDIS_DIR" || die "cannot create $REDIS_DIR"
  redis_dir=$(cd "$REDIS_DIR" && pwd) # redis-server wants it absolute
  names=(redis "${names[@]}")
  start redis
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    alive redis || break
    pause 0.1
  done
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 ||
    die "redis-server did not start (see $REDIS_DIR/redis.log)"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
fi
export CHAT_REDIS_URL="$REDIS_URL"

# The demo accounts. Their passwords are shorter than auth.min_password (8)
# wants.
for user in alice bob carol dave; do
  [[ -n $stop_requested ]] && break
  printf '%s-pw\n' "$user" | CHAT_AUTH__MIN_PASSWORD=6 "$BIN/auth-svc" user add "$user" --if-missing ||
    [[ -n $stop_requested ]] || die "could not add the demo account $user"
done
# On disk at once: a kill -9 of Redis keeps them.
if [[ -n ${pid[redis]:-} ]]; then redis-cli -p "$REDIS_PORT" save >/dev/null; fi
for ((i = 1; i <= ${#nodes[@]}; i++)); do redis-cli -p $((REDIS_PORT + i - 1)) save >/dev/null; done

[[ -n $stop_requested ]] && stop_all 0
for name in "${services[@]}"; do start "$name"; done

# Shown once every edge listens (or after 15 s): the commands of the README
# that a user types meanwhile, as they work against this system.
banner() {
  local alice="" bob="" ca="" cli="redis-cli -u $REDIS_URL" other=edge-1 name admins=""
  for ((i = 1; i <= EDGES; i++)); do alice+=" --server localhost:${edge_port[edge-$i]}"; done
  # bob starts on the second edge, alice on the first.
  for ((i = 0; i < EDGES; i++)); do bob+=" --server localhost:${edge_ports[(i + 1) % EDGES]}"; done
  [[ $CERTS_DIR == certs ]] || ca=" --ca $CERTS_DIR/ca.pem"
  [[ -n ${pid[redis]:-} ]] && cli="redis-cli -p $REDIS_PORT"
  local session=chat:session:alice lobby=chat:room:lobby
  if ((${#nodes[@]} > 0)); then
    cli="redis-cli -c -p $REDIS_PORT" session="'chat:session:{alice}'" lobby="'chat:room:{lobby}'"
  fi
  ((EDGES > 1)) && other=edge-2
  for name in "${services[@]}"; do admins+="${admins:+, }$name ${admin[$name]##*:}"; done
  cat <<MSG

  The chat is up: Redis at $REDIS_URL, edges on ports ${edge_ports[*]}.
  Demo accounts (test credentials only): alice, bob, carol, dave; password <name>-pw.
  New accounts: type REGISTER <name> <password> (8 characters or more) after connecting.

  Connect, in two other terminals (a client moves to its next --server when its edge dies):
      $BIN/chat$alice$ca --user alice     # password: alice-pw
      $BIN/chat$bob$ca --user bob       # password: bob-pw
  Accounts (the password is asked for):
      CHAT_REDIS_URL=$REDIS_URL $BIN/auth-svc user add erin
  Look inside:
      $cli hgetall $session
      $cli smembers $lobby
  Kill a service and watch it come back (this log says how it ended):
      kill -9 \$(cat $RUN_DIR/edge-1.pid)     # alice moves to $other; edge-1 is back in about a second
MSG
  ((ROUTERS > 0)) && echo "      kill -9 \$(cat $RUN_DIR/router-1.pid)"
  cat <<MSG
  One more router (or auth-svc), in another terminal:
      CHAT_REDIS_URL=$REDIS_URL $BIN/router-svc
MSG
  if ((ADMIN_PORT_BASE > 0)); then
    printf '  Health and metrics: curl localhost:%s/healthz (or /metrics)\n' "${admin[edge-1]##*:}"
    printf '      admin ports: %s\n' "$admins"
  fi
  printf '\n  Ctrl-C stops everything.\n\n'
}
clock
announce_by=$((now + 15000))
announced=""
listening() {
  local port host=$EDGE_HOST
  [[ $host == 0.0.0.0 ]] && host=127.0.0.1
  for port in "${edge_ports[@]}"; do
    { : <>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
  done
}

# Supervise: restart what ended, when its delay is over; until Ctrl-C.
while [[ -z $stop_requested ]]; do
  clock
  for name in "${names[@]}"; do
    if [[ -n ${pid[$name]} ]]; then
      alive "$name" || restart_later "$name"
    elif ((now >= due[$name])); then
      start "$name"
    fi
  done
  if [[ -z $announced ]] && { listening || ((now >= announce_by)); }; then
    banner
    announced=1
  fi
  pause 0.25
done
stop_all 0
