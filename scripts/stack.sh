#!/usr/bin/env bash
# Brings up the local stack coupond needs, idempotently, on a Debian machine
# (as root): Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 with the
# `coupond` database, and Apache Kafka (KRaft, one combined broker and
# controller) on 127.0.0.1:9092 with the coupond topics. A service that
# already answers is used as it is; whatever is missing is installed: Redis,
# PostgreSQL and a JDK from Debian's packages, Kafka's jars from Maven
# Central into a cache shared by every clone on the machine.
#
#   stack.sh [up]                  the single-broker stack (the default)
#   stack.sh cluster-up            also three KRaft brokers on 19092-19094
#                                  (replication 3, min.insync.replicas 2)
#   stack.sh cluster-down          stops the three
#   stack.sh cluster-kill N        SIGKILLs cluster broker N (1-3)
#   stack.sh stop-broker           SIGKILLs the single broker
#   stack.sh wipe-broker           deletes its data (it must be stopped);
#                                  the next `up` formats it anew
#   stack.sh stop-postgres         stops PostgreSQL (`up` starts it again)
#   stack.sh redis-cluster-up      also a Redis Cluster: three masters with a
#                                  replica each on 127.0.0.1:7001-7006
#                                  (append-only, fsync always, node timeout
#                                  2 s); restarts a node that is down
#   stack.sh redis-tls-cluster-up  the same over TLS only on 127.0.0.1:7101-7106
#                                  (the local CA's certificates, client
#                                  certificates required)
#   stack.sh redis-cluster-down    stops both clusters' nodes and deletes
#                                  their data
#   stack.sh redis-cluster-kill P  SIGKILLs the cluster node on port P
#   stack.sh kafka-tool T ARGS     runs Kafka's own tool T (topics,
#                                  consumer-groups, producer-perf-test,
#                                  consumer-perf-test, configs, storage)
#                                  from the jars
#
# The single broker also listens on 127.0.0.1:9094 with SASL/SCRAM-SHA-256
# (user `coupond`, password `coupond-secret`: a local test credential), the
# way a production cluster asks clients to authenticate.
#
# Environment: COUPOND_CACHE (default ~/.cache/coupond) holds Kafka's jars,
# data and logs.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${COUPOND_CACHE:-$HOME/.cache/coupond}"
KAFKA_VERSION=4.1.1
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
KAFKA_DATA="$CACHE/kafka-data"
SASL_PORT=9094
SCRAM_USER=coupond
SCRAM_PASSWORD=coupond-secret
mkdir -p "$KAFKA_DATA"

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

# Prometheus and promtool from Debian's package, for the metrics test and
# `promtool check rules`; installed, never started here (tests start their own).
ensure_prometheus() {
  command -v promtool >/dev/null && return
  log "prometheus: installing"
  apt_install prometheus
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

# A second Redis that speaks only TLS (127.0.0.1:6380, the local CA's
# server certificate) and requires a client certificate from that CA: what
# the tests of TLS to Redis reach.
REDIS_TLS_PORT=6380
ensure_redis_tls() {
  ensure_tls_material
  # Started with other certificates (the CA was made anew): start again.
  local started=/var/lib/redis/coupond-tls-ca.pem
  if port_open "$REDIS_TLS_PORT"; then
    if cmp -s "$TLS_DIR/ca.pem" "$started"; then log "redis tls: running"; return; fi
    log "redis tls: new certificates, restarting"
    kill_port "$REDIS_TLS_PORT"
  fi
  log "redis tls: starting on $REDIS_TLS_PORT"
  mkdir -p /var/lib/redis /var/log/redis
  cp "$TLS_DIR/ca.pem" "$started"
  redis-server --daemonize yes --bind 127.0.0.1 --port 0 --tls-port "$REDIS_TLS_PORT" \
    --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key" \
    --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients yes --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/coupond-tls.log \
    --pidfile /var/run/redis-coupond-tls.pid
  wait_port "$REDIS_TLS_PORT" 20 "redis tls"
}

# Local development stack: trust loopback connections like the CI machines
# do (also on a machine whose PostgreSQL was installed by other means).
trust_loopback() {
  local hba="/etc/postgresql/$1/main/pg_hba.conf"
  grep -q '^# coupond: trust loopback' "$hba" && return 1
  sed -i '1i # coupond: trust loopback\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
}

# Settings of a production database server rather than PostgreSQL's
# defaults (128 MB of shared buffers, checkpoints every 1 GB of WAL), so
# preload and the finalizer are measured and tested as they will run; the
# README's recommended settings are these. Shared buffers: an eighth of
# the memory (the machine's, or the container's limit when lower), between
# 256 MB and 4 GB: the stack shares it with Kafka and Redis. Succeeds only
# when it wrote a new file. WAL compression: lz4 where the server has it
# (Debian's does): full-page images of the code index's random pages after
# each checkpoint are most of a preload's WAL on a grown database, and pglz
# ("on") spent 19.4 against lz4's 12.7 µs of PostgreSQL CPU per coupon
# preloaded there (BENCHMARKS.md).
pg_settings() {
  local conf="/etc/postgresql/$1/main/conf.d/coupond.conf" kb limit mb want wal=on
  kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
  limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
  [[ "$limit" =~ ^[0-9]+$ ]] && ((limit / 1024 < kb)) && kb=$((limit / 1024))
  mb=$((kb / 1024 / 8)); ((mb < 256)) && mb=256; ((mb > 4096)) && mb=4096
  # Not `ldd | grep -q`: grep's early exit fails the pipeline (pipefail)
  # now and then, and a flip of the value would restart PostgreSQL.
  local libs; libs="$(ldd "/usr/lib/postgresql/$1/bin/postgres" 2>/dev/null || true)"
  [[ "$libs" == *liblz4* ]] && wal=lz4
  want="# coupond: written by scripts/stack.sh
shared_buffers = ${mb}MB
effective_cache_size = $((mb * 3))MB
maintenance_work_mem = 512MB
work_mem = 16MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 15min
checkpoint_completion_target = 0.9
wal_compression = $wal
random_page_cost = 1.1
max_connections = 200
ssl = on
ssl_cert_file = '/etc/postgresql/$1/main/coupond-server.pem'
ssl_key_file = '/etc/postgresql/$1/main/coupond-server.key'
ssl_ca_file = '/etc/postgresql/$1/main/coupond-ca.pem'"
  [ "$(cat "$conf" 2>/dev/null)" = "$want" ] && return 1
  mkdir -p "$(dirname "$conf")"
  # Called as a condition, where set -e does not hold: fail loudly here.
  printf '%s\n' "$want" >"$conf" || { log "postgres: cannot write $conf"; exit 1; }
  chown postgres:postgres "$conf" 2>/dev/null || true
}

# A local CA and certificates it signed, made once per machine, for TLS to
# the stack's PostgreSQL and the tests that verify it: the server's for
# localhost and 127.0.0.1, a client's for the user postgres.
TLS_DIR="$CACHE/tls"
ensure_tls_material() {
  [ -f "$TLS_DIR/.complete" ] && return
  command -v openssl >/dev/null || apt_install openssl
  log "tls: making a local CA and certificates in $TLS_DIR"
  local d="$TLS_DIR.partial"
  rm -rf "$d" && mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=coupond local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>"$d/openssl.log" || { cat "$d/openssl.log" >&2; exit 1; }
  local name ext
  for name in server client; do
    ext="basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
    [ "$name" = client ] && ext="basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$([ "$name" = client ] && echo postgres || echo localhost)" \
      -keyout "$d/$name.key" -out "$d/$name.csr" 2>"$d/openssl.log" || { cat "$d/openssl.log" >&2; exit 1; }
    openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 3650 -out "$d/$name.pem" -extfile <(printf '%s\n' "$ext") 2>"$d/openssl.log" ||
      { cat "$d/openssl.log" >&2; exit 1; }
  done
  chmod 600 "$d"/*.key
  touch "$d/.complete"
  rm -rf "$TLS_DIR" && mv "$d" "$TLS_DIR"
}

# The server's certificate where PostgreSQL may read it (not under $HOME).
# Succeeds only when a file changed: a running server must reload them.
pg_tls_files() {
  local dir="/etc/postgresql/$1/main" f changed=1
  ensure_tls_material
  for f in server.pem server.key ca.pem; do
    cmp -s "$TLS_DIR/$f" "$dir/coupond-$f" && continue
    install -o postgres -g postgres -m 600 "$TLS_DIR/$f" "$dir/coupond-$f"
    changed=0
  done
  return "$changed"
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "postgres: installing"
    apt_install postgresql
  fi
  local ver; ver="$(ls /etc/postgresql | sort -V | tail -1)"
  local reload=1
  pg_tls_files "$ver" && reload=0
  trust_loopback "$ver" && reload=0
  if ((reload == 0)) && pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
  fi
  # Shared buffers take a restart.
  if pg_settings "$ver" && pg_isready -q -h 127.0.0.1 -p 5432; then
    log "postgres: new settings, restarting"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main restart
    wait_port 5432 60 postgres
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    log "postgres: running"
  else
    log "postgres: starting $ver"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_port 5432 60 postgres
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='coupond'" | grep -q 1; then
    log "postgres: creating database coupond"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE coupond" >/dev/null
  fi
}

ensure_java() {
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1 || true)"
  if [ -z "$v" ] || ((v < 17)); then
    log "java: installing a JDK (Kafka 4 needs Java 17 or newer)"
    apt_install openjdk-17-jre-headless
  fi
}

# Kafka's jars, once per machine: Maven resolves scripts/kafka/pom.xml into
# a partial folder that is moved into place only when complete.
ensure_kafka_libs() {
  [ -f "$KAFKA_HOME/libs/.complete" ] && return
  ensure_java
  command -v mvn >/dev/null || apt_install maven
  log "kafka: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME (once per machine)"
  rm -rf "$KAFKA_HOME/libs.partial"
  mkdir -p "$KAFKA_HOME"
  mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_HOME/libs.partial" >&2
  touch "$KAFKA_HOME/libs.partial/.complete"
  rm -rf "$KAFKA_HOME/libs"
  mv "$KAFKA_HOME/libs.partial" "$KAFKA_HOME/libs"
}

# kafka_java HEAP CLASS ARGS...: a JVM on Kafka's classpath.
kafka_java() {
  local heap="$1"; shift
  KAFKA_LOG_LEVEL="${KAFKA_LOG_LEVEL:-WARN}" java "-Xmx$heap" -XX:+UseG1GC \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" "$@"
}

kafka_tool() {
  local tool="$1"; shift
  local class
  case "$tool" in
    topics) class=org.apache.kafka.tools.TopicCommand ;;
    consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
    producer-perf-test) class=org.apache.kafka.tools.ProducerPerformance ;;
    consumer-perf-test) class=org.apache.kafka.tools.ConsumerPerformance ;;
    storage) class=kafka.tools.StorageTool ;;
    configs) class=kafka.admin.ConfigCommand ;;
    *) log "unknown Kafka tool $tool"; return 2 ;;
  esac
  ensure_kafka_libs
  kafka_java 256m "$class" "$@"
}

# node_config NAME ID PORT CONTROLLER_PORT VOTERS: a KRaft node that is both
# broker and controller. VOTERS empty: a single node formatted standalone.
node_config() {
  local name="$1" id="$2" port="$3" cport="$4" voters="$5" rf=1 isr=1 sasl=""
  [ -n "$voters" ] && rf=3 && isr=2
  [ -z "$voters" ] && sasl=",SASL_PLAINTEXT://127.0.0.1:$SASL_PORT"
  cat <<CONF
process.roles=broker,controller
node.id=$id
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$sasl
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$sasl
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$KAFKA_DATA/$name
num.partitions=6
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
CONF
  if [ -n "$voters" ]; then
    echo "controller.quorum.voters=$voters"
  else
    echo "controller.quorum.bootstrap.servers=127.0.0.1:$cport"
  fi
}

# start_node NAME ID PORT CONTROLLER_PORT HEAP VOTERS: formats the node's
# storage when it has none (keeping the cluster id of its earlier life, so a
# wiped broker comes back as the same cluster) and starts it.
start_node() {
  local name="$1" id="$2" port="$3" cport="$4" heap="$5" voters="$6"
  if port_open "$port"; then log "kafka $name: running on $port"; return; fi
  ensure_kafka_libs
  local conf="$KAFKA_DATA/$name.properties" idfile="$KAFKA_DATA/$name.cluster-id"
  [ -n "$voters" ] && idfile="$KAFKA_DATA/cluster.cluster-id"
  node_config "$name" "$id" "$port" "$cport" "$voters" >"$conf"
  if [ ! -f "$KAFKA_DATA/$name/meta.properties" ]; then
    [ -s "$idfile" ] || kafka_tool storage random-uuid >"$idfile"
    local mode=(--standalone)
    [ -n "$voters" ] && mode=()
    log "kafka $name: formatting $KAFKA_DATA/$name"
    kafka_tool storage format "${mode[@]}" -t "$(cat "$idfile")" -c "$conf" >/dev/null
  fi
  log "kafka $name: starting on 127.0.0.1:$port"
  KAFKA_LOG_LEVEL=INFO nohup java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$conf" >>"$KAFKA_DATA/$name.log" 2>&1 &
  echo $! >"$KAFKA_DATA/$name.pid"
  wait_port "$port" 90 "kafka $name" "$!" || { tail -20 "$KAFKA_DATA/$name.log" >&2; return 1; }
}

# ensure_topics BOOTSTRAP REPLICATION: the coupond topics, 6 partitions. A
# broker that just opened its port may not have a controller yet: retry.
ensure_topics() {
  local bootstrap="$1" rf="$2" t deadline=$((SECONDS + 90))
  for t in coupon-issued coupon-issued.dlq; do
    until kafka_tool topics --bootstrap-server "$bootstrap" --create --if-not-exists \
      --topic "$t" --partitions 6 --replication-factor "$rf" >/dev/null; do
      if ((SECONDS >= deadline)); then log "kafka: could not create topic $t on $bootstrap"; return 1; fi
      sleep 1
    done
  done
  log "kafka: topics coupon-issued, coupon-issued.dlq on $bootstrap"
}

ensure_broker() {
  if port_open 9092 && [ ! -f "$KAFKA_DATA/single.pid" ]; then
    log "kafka: a broker already answers on 9092; using it as it is"
    return
  fi
  # Ours, started with an older configuration (no SASL listener): restart.
  if port_open 9092 && ! port_open "$SASL_PORT"; then
    log "kafka: restarting the broker with the current configuration"
    stop_broker
  fi
  start_node single 1 9092 9093 1g ""
  ensure_topics 127.0.0.1:9092 1
  ensure_scram_user
}

# The SCRAM credential lives in the cluster's metadata: made once per data
# directory (a wiped broker gets it again).
ensure_scram_user() {
  local marker="$KAFKA_DATA/single/.coupond-scram-user"
  [ -f "$marker" ] && return
  kafka_tool configs --bootstrap-server 127.0.0.1:9092 --alter --entity-type users \
    --entity-name "$SCRAM_USER" \
    --add-config "SCRAM-SHA-256=[iterations=4096,password=$SCRAM_PASSWORD]" >/dev/null
  touch "$marker"
  log "kafka: SASL/SCRAM user $SCRAM_USER on 127.0.0.1:$SASL_PORT"
}

REDIS_CLUSTER_DATA="$CACHE/redis-cluster"
REDIS_CLUSTER_PORTS="7001 7002 7003 7004 7005 7006"
# The same over TLS only (cluster bus and replication too), with client
# certificates required: what the tests of TLS to a Redis Cluster reach.
REDIS_TLS_CLUSTER_PORTS="7101 7102 7103 7104 7105 7106"

# redis-cli for a cluster node: the TLS cluster's with the local CA's
# client certificate.
cluster_cli() {
  local port=$1; shift
  if [ "$port" -ge 7101 ]; then
    redis-cli --tls --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/client.pem" \
      --key "$TLS_DIR/client.key" -p "$port" "$@"
  else
    redis-cli -p "$port" "$@"
  fi
}

redis_cluster_node() {
  local port=$1 dir="$REDIS_CLUSTER_DATA/$1" listen
  cluster_cli "$port" ping 2>/dev/null | grep -q PONG && return
  mkdir -p "$dir"
  listen=(--port "$port")
  if [ "$port" -ge 7101 ]; then
    listen=(--port 0 --tls-port "$port" --tls-cluster yes --tls-replication yes
      --tls-cert-file "$TLS_DIR/server.pem" --tls-key-file "$TLS_DIR/server.key"
      --tls-ca-cert-file "$TLS_DIR/ca.pem" --tls-auth-clients yes
      --tls-client-cert-file "$TLS_DIR/client.pem" --tls-client-key-file "$TLS_DIR/client.key")
  fi
  redis-server --daemonize yes --bind 127.0.0.1 "${listen[@]}" --cluster-enabled yes \
    --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --appendonly yes --appendfsync always --save "" \
    --dir "$dir" --logfile "$dir/redis.log"
  wait_port "$port" 20 "redis cluster node $port"
}

# Every node sees the cluster ok, and three replicas serve (a failover
# needs one behind each master).
redis_cluster_ok() {
  local p first=${1%% *}
  for p in $1; do
    cluster_cli "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || return 1
  done
  [ "$(cluster_cli "$first" cluster nodes | awk '$3 ~ /slave/ && $3 !~ /fail/' | wc -l)" -ge 3 ]
}

# Three masters with a replica each on the ports $1. Nodes that were down
# are started again with their nodes.conf and rejoin by themselves; the
# cluster is created only when no node knows another yet.
redis_cluster_up() {
  local ports=$1 p first=${1%% *} deadline nodes=()
  ensure_redis
  if [ "$first" -ge 7101 ]; then
    ensure_tls_material
    # Made with another CA (the local CA was made anew): made again.
    if [ -d "$REDIS_CLUSTER_DATA/$first" ] && ! cmp -s "$TLS_DIR/ca.pem" "$REDIS_CLUSTER_DATA/tls-ca.pem"; then
      log "redis tls cluster: new certificates, making it again"
      for p in $ports; do kill_port "$p"; rm -rf "${REDIS_CLUSTER_DATA:?}/$p"; done
    fi
    mkdir -p "$REDIS_CLUSTER_DATA" && cp "$TLS_DIR/ca.pem" "$REDIS_CLUSTER_DATA/tls-ca.pem"
  fi
  for p in $ports; do redis_cluster_node "$p"; nodes+=("127.0.0.1:$p"); done
  if [ "$(cluster_cli "$first" cluster info | grep -o 'cluster_known_nodes:[0-9]*' | cut -d: -f2)" = 1 ]; then
    log "redis cluster: creating on $first-${ports##* } (3 masters, 1 replica each)"
    cluster_cli "$first" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  fi
  deadline=$((SECONDS + 60))
  until redis_cluster_ok "$ports"; do
    if ((SECONDS >= deadline)); then
      log "redis cluster: not ok after 60 s (stack.sh redis-cluster-down wipes it)"; return 1
    fi
    sleep 0.2
  done
  log "redis cluster: ok on 127.0.0.1:$first-${ports##* }"
}

redis_cluster_down() {
  local p
  for p in $REDIS_CLUSTER_PORTS $REDIS_TLS_CLUSTER_PORTS; do kill_port "$p"; done
  rm -rf "$REDIS_CLUSTER_DATA"
  log "redis cluster: stopped, data deleted"
}

CLUSTER_VOTERS="1@127.0.0.1:19192,2@127.0.0.1:19193,3@127.0.0.1:19194"
CLUSTER_BOOTSTRAP="127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"

# The three-broker cluster; nodes start in parallel because a controller
# quorum of three needs two of them up before any of them is ready.
cluster_up() {
  ensure_kafka_libs
  local i pids=()
  # One id for all three, drawn before they start in parallel.
  [ -s "$KAFKA_DATA/cluster.cluster-id" ] || kafka_tool storage random-uuid >"$KAFKA_DATA/cluster.cluster-id"
  for i in 1 2 3; do
    start_node "cluster$i" "$i" "$((19091 + i))" "$((19191 + i))" 512m "$CLUSTER_VOTERS" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i"; done
  ensure_topics "$CLUSTER_BOOTSTRAP" 3
  log "kafka cluster: up on $CLUSTER_BOOTSTRAP"
}

# kill_port PORT: SIGKILLs whatever listens on PORT (a crash, as the fault
# tests mean it) and waits until the port is closed.
kill_port() {
  local pids
  pids="$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u || true)"
  for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
  local deadline=$((SECONDS + 30))
  while port_open "$1"; do
    if ((SECONDS >= deadline)); then log "port $1 still open after SIGKILL"; return 1; fi
    sleep 0.1
  done
}

stop_broker() { kill_port 9092; rm -f "$KAFKA_DATA/single.pid"; log "kafka: broker stopped"; }

cluster_kill() { kill_port "$((19091 + $1))"; log "kafka cluster: broker $1 killed"; }

cluster_down() { for i in 1 2 3; do kill_port "$((19091 + i))"; done; log "kafka cluster: stopped"; }

# A broker that lost its disk: its log and metadata directory go (it must be
# stopped first).
wipe_broker() {
  if port_open 9092; then log "kafka: broker still running; not wiping"; return 1; fi
  rm -rf "$KAFKA_DATA/single"
  log "kafka: broker data wiped"
}

pg_version() { ls /etc/postgresql | sort -V | tail -1; }

# PostgreSQL stop/start for the fault tests.
stop_postgres() {
  pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main stop -m fast
  log "postgres: stopped"
}

case "${1:-up}" in
  up) ensure_redis; ensure_redis_tls; ensure_postgres; ensure_broker; ensure_prometheus; log "stack is up" ;;
  cluster-up) cluster_up ;;
  cluster-down) cluster_down ;;
  cluster-kill) cluster_kill "${2:?broker number 1-3}" ;;
  stop-broker) stop_broker ;;
  wipe-broker) wipe_broker ;;
  stop-postgres) stop_postgres ;;
  redis-cluster-up) redis_cluster_up "$REDIS_CLUSTER_PORTS" ;;
  redis-tls-cluster-up) redis_cluster_up "$REDIS_TLS_CLUSTER_PORTS" ;;
  redis-cluster-down) redis_cluster_down ;;
  redis-cluster-kill) kill_port "${2:?port 7001-7006}"; log "redis cluster: node ${2} killed" ;;
  kafka-tool) shift; kafka_tool "$@" ;;
  *) echo "usage: $0 [up|cluster-up|cluster-down|cluster-kill N|stop-broker|wipe-broker|stop-postgres|redis-cluster-up|redis-tls-cluster-up|redis-cluster-down|kafka-tool TOOL ARGS]" >&2; exit 2 ;;
esac
