#!/usr/bin/env bash
# Brings up the local stack coupond needs, idempotently, on a Debian machine
# (as root): Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 with the
# `coupond` database, and a Kafka-protocol broker on 127.0.0.1:9092 with the
# coupond topics. A service that already answers is used as it is; whatever
# is missing is installed from Debian's packages (or, for the broker, built
# once from crates.io into a cache shared by every clone on the machine).
#
# Environment: COUPOND_CACHE (default ~/.cache/coupond) holds the broker's
# binary, data and log.
set -euo pipefail

CACHE="${COUPOND_CACHE:-$HOME/.cache/coupond}"
# The broker is tansu built with scripts/tansu/patch.py; the directory name
# carries the patch revision, so changing the patch builds a new binary.
TANSU_ROOT="$CACHE/tools/tansu-0.6.0-coupond3"
TANSU="$TANSU_ROOT/bin/tansu"
TANSU_VERSION="0.6.0"
# Broker storage: "sqlite" keeps topics and offsets across restarts;
# "memory" loses everything on restart, like a broker that lost its disk.
BROKER_STORAGE="${COUPOND_BROKER_STORAGE:-sqlite}"
DATA="$CACHE/data"
mkdir -p "$DATA"

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT SECONDS WHAT [PID]: polls until the port accepts; fails at
# the deadline, or at once when PID (the process that should open it) died.
wait_port() {
  local deadline=$((SECONDS + $2))
  until port_open "$1"; do
    if ((SECONDS >= deadline)); then log "$3 did not open port $1 within $2 s"; return 1; fi
    if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then log "$3 exited before opening port $1"; return 1; fi
    sleep 0.2
  done
}

APT_UPDATED=0
apt_install() {
  if ((APT_UPDATED == 0)); then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "redis: running"; return
  fi
  command -v redis-server >/dev/null || { log "redis: installing"; apt_install redis-server redis-tools; }
  mkdir -p /var/lib/redis /var/log/redis
  log "redis: starting"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/coupond.log
  wait_port 6379 20 redis
}

ensure_postgres() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
      log "postgres: installing"
      apt_install postgresql
      local ver; ver="$(ls /etc/postgresql | sort -V | tail -1)"
      # Local development stack: trust loopback connections like the CI machines do.
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' \
        "/etc/postgresql/$ver/main/pg_hba.conf"
    fi
    local ver; ver="$(ls /etc/postgresql | sort -V | tail -1)"
    log "postgres: starting $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_port 5432 60 postgres
  else
    log "postgres: running"
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='coupond'" | grep -q 1; then
    log "postgres: creating database coupond"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE coupond" >/dev/null
  fi
}

ensure_tansu_binary() {
  if [ -x "$TANSU" ]; then return; fi
  log "broker: building patched tansu $TANSU_VERSION into $TANSU_ROOT (once per machine, ~15 min on 2 cores)"
  command -v cc >/dev/null || apt_install build-essential
  "$(dirname "$0")/tansu/build.sh" "$TANSU_ROOT"
}

# A broker whose port is open may still be wedged (an unpatched tansu's
# storage dies on the first failed request): ask it for its topics.
broker_healthy() {
  [ -x "$TANSU" ] || return 0
  timeout 10 "$TANSU" topic list --broker tcp://127.0.0.1:9092 >/dev/null 2>&1
}

ensure_broker() {
  ensure_tansu_binary
  if port_open 9092 && ! broker_healthy; then
    log "broker: port open but not answering; restarting it"
    stop_broker
  fi
  # An older (unpatched) tansu build is replaced by this one; a broker that
  # is not tansu at all is used as it is.
  local pid exe
  pid="$(ss -Hltnp 'sport = :9092' 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)"
  exe="$(readlink "/proc/${pid:-0}/exe" 2>/dev/null || true)"
  if [ -n "$exe" ] && [ "$(basename "$exe")" = tansu ] && [ "$exe" != "$TANSU" ]; then
    log "broker: replacing $exe with $TANSU"
    stop_broker
  fi
  if port_open 9092; then
    log "broker: running"
  else
    local engine="sqlite://tansu.db"
    [ "$BROKER_STORAGE" = memory ] && engine="memory://tansu/"
    log "broker: starting tansu (storage $engine, in $DATA)"
    # tansu resolves the sqlite path relative to its working directory.
    (cd "$DATA" && exec nohup "$TANSU" broker \
      --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine "$engine" \
      >>"$CACHE/tansu.log" 2>&1) &
    echo $! >"$CACHE/tansu.pid"
    wait_port 9092 60 broker "$!" || { tail -5 "$CACHE/tansu.log" >&2; return 1; }
  fi
  if [ -x "$TANSU" ]; then
    local topics; topics="$("$TANSU" topic list --broker tcp://127.0.0.1:9092 2>/dev/null || true)"
    for t in coupon-issued coupon-issued.dlq; do
      if ! grep -qw -- "$t" <<<"$topics"; then
        "$TANSU" topic create "$t" --partitions 6 --broker tcp://127.0.0.1:9092 >/dev/null 2>&1 \
          && log "broker: created topic $t" || log "broker: topic $t not created here (coupond creates it)"
      fi
    done
  fi
}

# Stops whatever broker listens on 9092 (fault tests stop and restart it)
# and waits until the port is closed.
stop_broker() {
  local pids; pids="$(ss -Hltnp 'sport = :9092' 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true)"
  [ -z "$pids" ] && [ -f "$CACHE/tansu.pid" ] && pids="$(cat "$CACHE/tansu.pid")"
  # SIGKILL: a crash, as the fault tests mean it (tansu's graceful stop
  # leaves its idempotent-producer state unusable after the restart).
  for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
  local deadline=$((SECONDS + 30))
  while port_open 9092; do
    if ((SECONDS >= deadline)); then for p in $pids; do kill -9 "$p" 2>/dev/null || true; done; fi
    sleep 0.1
  done
  log "broker: stopped"
}

# Deletes the broker's storage (the broker must be stopped): a broker that
# lost its disk. Fault tests use it.
wipe_broker() {
  if port_open 9092; then log "broker: still running; not wiping"; return 1; fi
  rm -f "$DATA"/tansu.db "$DATA"/tansu.db-*
  log "broker: storage wiped"
}

pg_version() { ls /etc/postgresql | sort -V | tail -1; }

# PostgreSQL stop/start for the fault tests.
stop_postgres() {
  pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main stop -m fast
  log "postgres: stopped"
}

case "${1:-up}" in
  up) ensure_redis; ensure_postgres; ensure_broker; log "stack is up" ;;
  stop-broker) stop_broker ;;
  stop-postgres) stop_postgres ;;
  wipe-broker) wipe_broker ;;
  *) echo "usage: $0 [up|stop-broker|wipe-broker|stop-postgres]" >&2; exit 2 ;;
esac
