#!/usr/bin/env bash
# Runs the benchmark matrix on this machine and writes every figure to
# bench-results/<timestamp>/ (JSON per run, summary.md, chart.svg):
#   - the physical reference: redis-benchmark running the one-user issue
#     script (EVALSHA) against the same Redis, unpipelined and pipelined 16;
#   - unary Issue at 100, 1,000 and 3,000 concurrent clients;
#   - IssueStream with 16 streams;
#   - the same unary and stream loads (ack) driven by ghz, the standard tool;
#   - both in the default `ack` durability and in `async`;
#   - preload of 1,000,000 and 10,000,000 coupons beside PostgreSQL's COPY
#     of the same rows, with the server's peak memory (bench-preload.sh);
#   - the broker alone: Kafka's own producer perf test (acks=all,
#     idempotent), the service's producer's acknowledged rate and a
#     consumer's rate, the ceiling of ack durability and of the finalizer.
#   - first, the cost of a coupon: a stream run (COST_REQUESTS, 16 streams)
#     and unary runs at 1,000 and 100 clients, each wrapped in cpu_parts.py, which
#     samples /proc and Redis around the load and its finalization: CPU
#     seconds of the server, Redis (and inside its scripts), PostgreSQL, the
#     broker, the load generator (apart) and the whole machine; each on an
#     event preloaded before the measurement starts.
# Every coupond run verifies the invariants (no code or user twice, issued
# <= total) and waits for PostgreSQL to catch up.
# ONLY=linger compares the producer's linger settings per durability mode.
# ONLY=latency runs unary Issue at 100 clients (ack, then async) as an open
# loop at each of RATES requests/s, then as a closed loop.
# ONLY=sizing measures what a drop holds in Redis and PostgreSQL.
# ONLY=gateway runs unary Issue through the HTTP/JSON gateway (vegeta)
# beside the direct gRPC unary run (GATEWAY_REQUESTS, GATEWAY_CONCURRENCY).
# ONLY=record measures PostgreSQL's CPU per row for each way of recording
# issuances (scripts/bench-record.sh).
# ONLY=redis-floor measures Redis's CPU per coupon for the issue and
# finalize scripts beside the same data model without them
# (scripts/bench-redis-floor.py).
# ONLY=grown runs a preload and a stream drop on a fresh database and on one
# holding GROWN_COUPONS (30,000,000) earlier coupons, then again once those
# earlier events were archived (GROWN_ARCHIVE=0: not), then with cold
# caches (GROWN_COLD=0: not). ONLY=grown-reindex then rebuilds the grown
# database's coupons indexes and runs the phases again beside fresh ones.
# ONLY=cluster runs the stream cost load on the single node, on the
# stack's Redis Cluster with the failover guard and on it without, and
# spread over three events on three masters, and records each Redis node's
# CPU (INFO cpu) before and after (CLUSTER_RUNS picks runs).
# Environment: REQUESTS (default 100000 per run); COST_REQUESTS (default
# 300000, the stream cost run); ROUNDS (default 1) runs the cost runs that
# many times, baseline and current in turn; BASELINE=<git rev> builds that revision's
# server too (cached under ~/.cache/coupond/baseline/) and runs the cost
# runs against it first, on the same stack, so a change is judged against
# the code before it in one run (BEFORE=<git rev> adds a third, such as the
# commit before the last change); ONLY=cost stops after the cost runs and
# the physical references (broker, Kafka's perf test, the 1,000,000-coupon
# preload beside COPY, redis-benchmark of the one-user script).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-100000}"
COST_REQUESTS="${COST_REQUESTS:-300000}"
OUT="bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
PORT=50061
ADDR="http://127.0.0.1:$PORT"
mkdir -p "$OUT"

scripts/stack.sh up

# Every run starts from the same state: its own, fresh database (a coupons
# table grown by earlier runs, with their dead rows, slows preload and the
# finalizer), and no Redis keys of earlier bench events.
fresh_db() { # name: prints its URL
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $1" >/dev/null
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $1" >/dev/null
  echo "postgres://postgres@127.0.0.1:5432/$1"
}
COUPOND_DATABASE_URL="$(fresh_db coupond_bench)"
export COUPOND_DATABASE_URL
redis-cli -h 127.0.0.1 --scan --pattern '*{bench-*}' | xargs -r -n 500 redis-cli -h 127.0.0.1 DEL >/dev/null
cargo build --release --workspace --bin coupond --bin coupond-bench >&2
BIN="${CARGO_TARGET_DIR:-target}/release/coupond"
BENCH="${CARGO_TARGET_DIR:-target}/release/coupond-bench"
SERVER_PID=""

# build_baseline REV: builds REV's server from its tree (git archive, so the
# clone gains no worktree) in a target directory shared by every baseline,
# so only coupond itself is compiled again; prints the binary. The tree is
# extracted afresh with new mtimes each time: cargo tells a path crate's
# sources apart by mtime only (not by directory), so an older tree would be
# taken as already built and the last baseline's binary run in its place.
build_baseline() {
  local sha cache dir
  sha="$(git rev-parse --verify "$1^{commit}")"
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/coupond/baseline"
  dir="$cache/$sha"
  rm -rf "$dir" && mkdir -p "$dir"
  git archive "$sha" | tar -x -m -C "$dir"
  CARGO_TARGET_DIR="$cache/target" cargo build --release --manifest-path "$dir/Cargo.toml" \
    --bin coupond >&2
  # Copied out: the next revision's build writes the same path.
  cp "$cache/target/release/coupond" "$dir/coupond"
  echo "$dir/coupond"
}

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

start_server() { # durability [binary]
  stop_server
  COUPOND_DURABILITY="$1" RUST_LOG=warn "${2:-$BIN}" serve --listen "127.0.0.1:$PORT" --insecure-dev \
    >>"$OUT/server-$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "server did not start" >&2
  return 1
}

# Script calls Redis ran (EVAL and EVALSHA, every script: issue, finalize,
# sweep), to show how many users one issue call carried.
script_calls() {
  redis-cli -h 127.0.0.1 INFO commandstats |
    awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ { n += $2 } END { print n + 0 }'
}

bench() { # name, args...
  local name="$1"; shift
  echo "== $name" >&2
  local before
  before="$(script_calls)"
  python3 scripts/cpu_parts.py "$OUT/$name.parts.json" "${SERVER_PID:-0}" \
    "$BENCH" --addr "$ADDR" --json "$OUT/$name.json" "$@" >/dev/null
  echo $(($(script_calls) - before)) >"$OUT/$name.scripts"
}

# cost_runs LABEL BINARY DATABASE [ROUND]: the two cost runs against
# BINARY's server (ack), on a database and topic of its own (a baseline may
# know fewer migrations or write its messages differently). Rounds after
# the first are named NAME.rROUND.
cost_runs() {
  local label="$1" r="${4:+.r$4}"
  # The server and the bench (which reads the finalize delays there) share it.
  local -x COUPOND_DATABASE_URL
  COUPOND_DATABASE_URL="$(fresh_db "$3")"
  COUPOND_KAFKA_TOPIC="coupon-issued-$label" COUPOND_KAFKA_GROUP="coupond-bench-$label" \
    start_server ack "$2"
  bench "cost-$label-stream-s16$r" --mode stream --concurrency 16 --requests "$COST_REQUESTS" \
    --event "$(preloaded "cost-$label-stream$r" "$((COST_REQUESTS * 2))")"
  bench "cost-$label-unary-c1000$r" --mode unary --concurrency 1000 --requests "$REQUESTS" \
    --event "$(preloaded "cost-$label-unary$r" "$((REQUESTS * 2))")"
  bench "cost-$label-unary-c100$r" --mode unary --concurrency 100 --requests "$REQUESTS" \
    --event "$(preloaded "cost-$label-unary-c100$r" "$((REQUESTS * 2))")"
  stop_server
}

# preloaded NAME COUPONS: an event preloaded outside any measurement (a
# drop's coupons are made long before it starts); prints its id.
preloaded() { # label coupons [shards]
  mkdir -p "$OUT/events"
  "$BENCH" --addr "$ADDR" --mode preload --coupons "$2" --shards "${3:-1}" \
    --json "$OUT/events/$1.json" >/dev/null 2>&1
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_id"])' "$OUT/events/$1.json"
}

# Redis CPU seconds (user + system) of each node: PORT=SECONDS lines.
redis_cpu() {
  local p
  for p in 6379 7001 7002 7003 7004 7005 7006; do
    redis-cli -p "$p" INFO cpu 2>/dev/null |
      awk -F: -v p="$p" '/^used_cpu_(sys|user):/ { s += $2 } END { if (s) printf "%s=%.2f\n", p, s }'
  done
}

# cluster_run LABEL SEEDS ACKS [SHARDS [COUPONS]]: the stream load
# against a server on SEEDS (empty: the single node) asking ACKS replicas
# (empty: the default), on an event of SHARDS shards (1) and COUPONS
# coupons (twice the load), with each Redis node's CPU before and after
# and the server's shard transfers.
cluster_run() {
  local label="$1"
  local -x COUPOND_DATABASE_URL COUPOND_REDIS_CLUSTER="$2" COUPOND_REDIS_REPLICA_ACKS="$3"
  [ -n "$3" ] || unset COUPOND_REDIS_REPLICA_ACKS
  COUPOND_DATABASE_URL="$(fresh_db "coupond_bench_${label//-/_}")"
  COUPOND_KAFKA_TOPIC="coupon-issued-$label" COUPOND_KAFKA_GROUP="coupond-bench-$label" \
    start_server ack
  local event
  event="$(preloaded "$label" "${5:-$((COST_REQUESTS * 2))}" "${4:-1}")"
  redis_cpu >"$OUT/$label.redis-before"
  bench "$label-stream-s16" --mode stream --concurrency 16 --requests "$COST_REQUESTS" --event "$event"
  redis_cpu >"$OUT/$label.redis-after"
  curl -s "http://127.0.0.1:9464/metrics" | grep '^coupond_shard_' >"$OUT/$label.transfers" || true
  stop_server
}

# grow_db DATABASE COUPONS: earlier drops as a database keeps them: settled
# events of 1,000,000 coupons, every coupon issued and finalized (sold out),
# inserted in the random order of their codes through every index, as
# preload and the finalizer leave them, then vacuumed and analyzed as
# autovacuum would have done in the months between. Prints the sizes.
grow_db() {
  local per=1000000 e started
  started="$(date +%s)"
  for e in $(seq 1 "$(($2 / per))"); do
    psql -h 127.0.0.1 -U postgres -d "$1" -v ON_ERROR_STOP=1 -q <<SQL
INSERT INTO events (id, name, total_count, starts_at, ends_at, written_count, settled_at)
  VALUES ('earlier-$e', 'earlier drop $e', $per, now() - interval '$e days 1 hour',
          now() - interval '$e days', $per, now() - interval '$e days');
INSERT INTO policies VALUES ('earlier-$e', 0, 'PERCENT', 10, 1, $per);
INSERT INTO coupons (code, event_id, policy_position, discount_type, discount_value, state,
                     user_id, issued_at, request_id, finalized_at)
  SELECT upper(substr(md5(random()::text || i), 1, 12)), 'earlier-$e', 0, 'PERCENT', 10,
         'ISSUED', 'user-' || i, now() - interval '$e days', 'req-' || i, now() - interval '$e days'
  FROM generate_series(1, $per) i
  ON CONFLICT (code) DO NOTHING;
SQL
    echo "grow: $e events, $(($(date +%s) - started)) s"
  done
  psql -h 127.0.0.1 -U postgres -d "$1" -qc "VACUUM ANALYZE" -c CHECKPOINT
  psql -h 127.0.0.1 -U postgres -d "$1" -qtA -F ' ' -c "SELECT 'coupons', count(*),
    'table MB', pg_table_size('coupons') / 1048576, 'indexes MB', pg_indexes_size('coupons') / 1048576,
    'shared_buffers', current_setting('shared_buffers') FROM coupons"
}

# archive_all DATABASE: every earlier event of grow_db archived with
# `coupond archive`, as an operator would once their drops are over, then
# vacuumed and analyzed as autovacuum would. Prints the time and sizes.
archive_all() {
  local e started ids
  started="$(date +%s.%N)"
  ids="$(psql -h 127.0.0.1 -U postgres -d "$1" -qtA -c \
    "SELECT id FROM events WHERE id LIKE 'earlier-%' AND archived_at IS NULL ORDER BY id")"
  for e in $ids; do
    COUPOND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$1" RUST_LOG=warn \
      "$BIN" archive --event "$e" >/dev/null
  done
  echo "archive: $(wc -w <<<"$ids") events in $(echo "$(date +%s.%N) - $started" | bc) s"
  started="$(date +%s.%N)"
  psql -h 127.0.0.1 -U postgres -d "$1" -qc "VACUUM ANALYZE" -c CHECKPOINT
  echo "vacuum: $(echo "$(date +%s.%N) - $started" | bc) s"
  psql -h 127.0.0.1 -U postgres -d "$1" -qtA -F ' ' -c "SELECT
    'coupons', (SELECT count(*) FROM coupons), 'table MB', pg_table_size('coupons') / 1048576,
    'indexes MB', pg_indexes_size('coupons') / 1048576,
    'archived', (SELECT count(*) FROM archived_coupons),
    'table MB', pg_table_size('archived_coupons') / 1048576,
    'indexes MB', pg_indexes_size('archived_coupons') / 1048576"
}

# grown_phase LABEL DATABASE [ROUND]: the preload and the stream drop on it,
# each inside cpu_parts.py, against a server of its own.
grown_phase() {
  local r="${3:+.r$3}" event
  local -x COUPOND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$2"
  # Each phase starts just after a checkpoint: the first change of a page
  # after one writes the whole page to the WAL, and a grown index has many
  # more pages for random codes to land on.
  psql -h 127.0.0.1 -U postgres -d "$2" -qc CHECKPOINT
  COUPOND_KAFKA_TOPIC="coupon-issued-grown-$1" COUPOND_KAFKA_GROUP="coupond-bench-grown-$1" \
    start_server ack
  bench "grown-$1-preload$r" --mode preload --coupons "${GROWN_PRELOAD:-1000000}"
  event="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_id"])' \
    "$OUT/grown-$1-preload$r.json")"
  bench "grown-$1-stream-s16$r" --mode stream --concurrency 16 --requests "${GROWN_ISSUES:-300000}" \
    --event "$event"
  stop_server
}

# beside_fresh LABEL FIRST: ROUNDS rounds, numbered from FIRST (1 is
# unnumbered), of a phase on a fresh database, made anew each round so no
# earlier round's preload is kept, then the phase LABEL on the grown one.
beside_fresh() {
  local round n
  for round in $(seq "$2" "$(($2 + ${ROUNDS:-1} - 1))"); do
    n="$([ "$round" = 1 ] || echo "$round")"
    fresh_db coupond_bench_fresh >/dev/null
    grown_phase fresh coupond_bench_fresh "$n"
    grown_phase "$1" coupond_bench_grown "$n"
  done
}

# ONLY=record: PostgreSQL's CPU per row for each way of recording
# issuances (today's UPDATE, an append-only table, COPY), in one run.
if [ "${ONLY:-}" = record ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  OUT="$OUT" BIN="$BIN" scripts/bench-record.sh
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=redis-floor: Redis's CPU per coupon for coupond's scripts beside the
# same data model worked by a minimal script and by plain commands
# (scripts/bench-redis-floor.py), ROUNDS rounds (default 5) in turn;
# BASELINE=<rev> adds that revision's issue and finalize scripts.
if [ "${ONLY:-}" = redis-floor ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  if [ -n "${BASELINE:-}" ]; then
    mkdir -p "$OUT/baseline-lua"
    for f in issue finalize; do git show "$BASELINE:scripts/lua/$f.lua" >"$OUT/baseline-lua/$f.lua"; done
    export FLOOR_BASELINE_LUA="$OUT/baseline-lua" FLOOR_BASELINE_REV="$BASELINE"
  fi
  python3 scripts/bench-redis-floor.py "$OUT/redis-floor.md" "${ROUNDS:-5}"
  echo "results in $OUT" >&2
  exit 0
fi

# The port of the cluster master serving EVENT's keys.
master_of() {
  local slot
  slot="$(redis-cli -p 7001 CLUSTER KEYSLOT "{$1}")"
  redis-cli -p 7001 CLUSTER NODES | awk -v s="$slot" '$3 ~ /master/ && $3 !~ /fail/ {
    for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
      if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2]; exit } } }'
}

# spread_run LABEL SEEDS: the same stream load, a third on each of three
# events whose keys live on three different masters, at once (three load
# generators of 6 streams each; their CPU is the load generator's), with
# each Redis node's CPU before and after.
spread_run() {
  local label="$1" n=0 event port events=() seen=""
  local -x COUPOND_DATABASE_URL COUPOND_REDIS_CLUSTER="$2"
  COUPOND_DATABASE_URL="$(fresh_db "coupond_bench_${label//-/_}")"
  COUPOND_KAFKA_TOPIC="coupon-issued-$label" COUPOND_KAFKA_GROUP="coupond-bench-$label" \
    start_server ack
  while [ "${#events[@]}" -lt 3 ]; do
    n=$((n + 1))
    if ((n > 20)); then
      echo "spread: 20 events and not three masters (is the cluster whole?)" >&2; return 1
    fi
    event="$(preloaded "$label-$n" "$((COST_REQUESTS * 2 / 3))")"
    port="$(master_of "$event")"
    case " $seen " in *" $port "*) continue ;; esac
    seen="$seen $port" && events+=("$event")
    echo "$event $port" >>"$OUT/$label.events"
  done
  redis_cpu >"$OUT/$label.redis-before"
  local cmd=""
  for n in 0 1 2; do
    cmd+="$BENCH --addr $ADDR --json $OUT/$label-stream-s6-e$n.json --mode stream"
    cmd+=" --concurrency 6 --requests $((COST_REQUESTS / 3)) --event ${events[$n]} >/dev/null & "
  done
  echo "== $label-stream-3x6" >&2
  python3 scripts/cpu_parts.py "$OUT/$label-stream-3x6.parts.json" "$SERVER_PID" \
    bash -c "$cmd wait"
  redis_cpu >"$OUT/$label.redis-after"
  stop_server
}

# Each node's CPU seconds over a run and its share of the cluster's, per
# coupon issued: LABEL COUPONS.
node_shares() {
  python3 - "$OUT/$1.redis-before" "$OUT/$1.redis-after" "$2" <<'PY' | tee "$OUT/$1.redis-shares"
import sys
read = lambda f: dict(l.strip().split("=") for l in open(f) if "=" in l)
before, after, coupons = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3])
spent = {p: float(after[p]) - float(before.get(p, 0)) for p in after if p != "6379"}
total = sum(spent.values()) or 1
for p, s in sorted(spent.items()):
    print(f"{p}: {s:.2f} s CPU, {s / coupons * 1e6:.1f} µs per coupon, {s / total:.0%} of the cluster's")
PY
}

# ONLY=cluster: the same stream load on the single node, on the stack's
# Redis Cluster with the failover guard (WAIT 1 per batch), on the
# cluster without it, and spread over three events on three masters, in
# one run (CLUSTER_RUNS picks some: single guard noguard spread; and
# sharded, soldout1, soldout3: one event of 3 shards, and a sold-out run
# with 1 and 3 shards).
if [ "${ONLY:-}" = cluster ]; then
  scripts/stack.sh redis-cluster-up
  SEEDS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
  git rev-parse --short HEAD >"$OUT/current.rev"
  for run in ${CLUSTER_RUNS:-single guard noguard spread}; do
    case "$run" in
      single) cluster_run single "" "" ;;
      guard) cluster_run cluster-guard "$SEEDS" ""; node_shares cluster-guard "$COST_REQUESTS" ;;
      noguard) cluster_run cluster-noguard "$SEEDS" 0; node_shares cluster-noguard "$COST_REQUESTS" ;;
      spread) spread_run cluster-spread "$SEEDS"; node_shares cluster-spread "$COST_REQUESTS" ;;
      # One event of three shards, on three masters.
      sharded) cluster_run cluster-sharded "$SEEDS" "" 3; node_shares cluster-sharded "$COST_REQUESTS" ;;
      # Sold out: half as many coupons as requests, so shards run dry
      # unevenly and refill from each other before the end.
      soldout1) cluster_run cluster-soldout-k1 "$SEEDS" "" 1 "$((COST_REQUESTS / 2))"
        node_shares cluster-soldout-k1 "$COST_REQUESTS" ;;
      soldout3) cluster_run cluster-soldout-k3 "$SEEDS" "" 3 "$((COST_REQUESTS / 2))"
        node_shares cluster-soldout-k3 "$COST_REQUESTS" ;;
      *) echo "CLUSTER_RUNS: unknown run $run (single guard noguard spread sharded soldout1 soldout3)" >&2; exit 2 ;;
    esac
  done
  python3 scripts/bench_report.py "$OUT" || true
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=latency: unary Issue at 100 clients in each durability mode, as an
# open loop at each rate of RATES (requests/s, default "1000 2000 3000 4000
# 6000"), LATENCY_S seconds each (default 10), then as a closed loop (each
# client calls again as soon as it is answered, the cost runs' load): the
# latency a client sees at a load the machine carries, beside the latency
# of a saturated machine; async mode shows what the wait for Kafka adds.
if [ "${ONLY:-}" = latency ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  for d in ack async; do
    start_server "$d"
    for rate in ${RATES:-1000 2000 3000 4000 6000}; do
      n=$((rate * ${LATENCY_S:-10}))
      bench "latency-$d-rate$rate-unary-c100" --mode unary --concurrency 100 --rate "$rate" \
        --requests "$n" --event "$(preloaded "latency-$d-rate$rate" "$((n * 2))")"
    done
    bench "latency-$d-closed-unary-c100" --mode unary --concurrency 100 --requests "$REQUESTS" \
      --event "$(preloaded "latency-$d-closed" "$((REQUESTS * 2))")"
    stop_server
  done
  python3 scripts/bench_report.py "$OUT"
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=linger: the producer's linger (LINGERS, default "0 2 5 10" ms) in
# each durability mode: unary at 100 clients (ack mode's latency aim is
# about that load) and the stream load, each with every part's CPU per
# coupon, the broker's above all: a longer linger makes bigger batches.
if [ "${ONLY:-}" = linger ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  for ms in ${LINGERS:-0 2 5 10}; do
    for d in ack async; do
      COUPOND_KAFKA_LINGER="${ms}ms" start_server "$d"
      bench "linger-$ms-$d-unary-c100" --mode unary --concurrency 100 --requests "$REQUESTS" \
        --event "$(preloaded "linger-$ms-$d-unary" "$((REQUESTS * 2))")"
      bench "linger-$ms-$d-stream-s16" --mode stream --concurrency 16 --requests "$REQUESTS" \
        --event "$(preloaded "linger-$ms-$d-stream" "$((REQUESTS * 2))")"
      stop_server
    done
  done
  python3 scripts/bench_report.py "$OUT"
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=grown: cost as the database grows. A deployment keeps every earlier
# drop's coupons, so the same preload (GROWN_PRELOAD, default 1,000,000)
# and stream drop (GROWN_ISSUES, default 300,000 on 16 streams, ack) run on
# a fresh database and on one already holding GROWN_COUPONS (default
# 30,000,000) earlier coupons, in turn ROUNDS times, then once on the grown
# one with cold caches; the report sets each figure beside its fresh one.
if [ "${ONLY:-}" = grown ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  GROWN_URL="$(fresh_db coupond_bench_grown)"
  COUPOND_DATABASE_URL="$GROWN_URL" RUST_LOG=warn "$BIN" migrate >/dev/null
  grow_db coupond_bench_grown "${GROWN_COUPONS:-30000000}" 2>&1 | tee "$OUT/grown-growth.txt" >&2
  beside_fresh grown 1
  # Then the earlier events archived, and the rounds again beside fresh
  # ones (GROWN_ARCHIVE=0 skips it).
  if [ "${GROWN_ARCHIVE:-1}" != 0 ]; then
    archive_all coupond_bench_grown 2>&1 | tee "$OUT/grown-archive.txt" >&2
    beside_fresh archived "$((${ROUNDS:-1} + 1))"
  fi
  # Once more on cold caches, as the first drop after the database server
  # restarted: nothing of the grown indexes in memory (where this machine
  # lets the page cache be dropped).
  if [ "${GROWN_COLD:-1}" != 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main stop -m fast
    sync && echo 3 >/proc/sys/vm/drop_caches
    scripts/stack.sh up >/dev/null
    grown_phase cold coupond_bench_grown
  fi
  python3 scripts/bench_report.py "$OUT"
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=grown-reindex: on the grown database ONLY=grown left (its earlier
# events archived), the coupons table's indexes rebuilt (REINDEX TABLE
# CONCURRENTLY: what is left of them after the archive is mostly empty
# pages, where random codes still land) and the phases again, in turn with
# fresh ones, ROUNDS times.
if [ "${ONLY:-}" = grown-reindex ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  started="$(date +%s.%N)"
  psql -h 127.0.0.1 -U postgres -d coupond_bench_grown -qc "REINDEX TABLE CONCURRENTLY coupons"
  {
    echo "reindex: $(echo "$(date +%s.%N) - $started" | bc) s"
    psql -h 127.0.0.1 -U postgres -d coupond_bench_grown -qtA -F ' ' -c "SELECT
      'coupons', (SELECT count(*) FROM coupons), 'table MB', pg_table_size('coupons') / 1048576,
      'indexes MB', pg_indexes_size('coupons') / 1048576,
      'archived', (SELECT count(*) FROM archived_coupons)"
  } | tee "$OUT/grown-reindex.txt" >&2
  beside_fresh reindexed 1
  python3 scripts/bench_report.py "$OUT"
  echo "results in $OUT" >&2
  exit 0
fi

# ONLY=sizing: what a drop holds (the README's sizing): Redis's used memory
# and the coupons table's and indexes' bytes before a 1,000,000-coupon
# preload, after it, and after 300,000 issuances were finalized.
if [ "${ONLY:-}" = sizing ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  held() { # label
    local mem
    mem="$(redis-cli -h 127.0.0.1 INFO memory | awk -F: '/^used_memory:/ { print $2 + 0 }')"
    echo "$1 redis_used_memory $mem $(psql "$COUPOND_DATABASE_URL" -qtA -F ' ' -c "SELECT 'table',
      pg_table_size('coupons'), 'indexes', pg_indexes_size('coupons'), 'rows', count(*) FROM coupons")"
  }
  start_server ack
  held before | tee "$OUT/sizing.txt"
  bench sizing-preload --mode preload --coupons 1000000
  held preloaded | tee -a "$OUT/sizing.txt"
  bench sizing-stream-s16 --mode stream --concurrency 16 --requests 300000 \
    --event "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_id"])' "$OUT/sizing-preload.json")"
  held issued | tee -a "$OUT/sizing.txt"
  stop_server
  exit 0
fi

# ONLY=gateway: unary Issue through the HTTP/JSON gateway (gateway/,
# scripts/gateway.sh) beside the direct gRPC unary run of the same size and
# concurrency, against one server (ack): GATEWAY_REQUESTS (default 20,000)
# requests at GATEWAY_CONCURRENCY (default 100) clients, each request a
# distinct user on an event of its own. The HTTP load is vegeta (pinned,
# go install), fed one target per user; every answer is read back (all must
# be 200 ISSUE_RESULT_ISSUED). Reports requests/s, p50/p99, and the CPU per
# request of the gateway (its /proc before and after) and of the server.
if [ "${ONLY:-}" = gateway ]; then
  git rev-parse --short HEAD >"$OUT/current.rev"
  GW_N="${GATEWAY_REQUESTS:-20000}"
  GW_C="${GATEWAY_CONCURRENCY:-100}"
  GW_PORT=8091
  GW_BIN="$(scripts/gateway.sh --build | head -1)"
  VEGETA="$(source scripts/tools.sh
    # Not ensure_go_tool: the package's last element (v12) is not the binary's name.
    dir="$TOOLS_DIR/go-bin/vegeta-v12.13.0"
    [ -x "$dir/vegeta" ] || GOBIN="$dir" go install github.com/tsenart/vegeta/v12@v12.13.0 >&2
    echo "$dir/vegeta")"
  ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
  start_server ack
  "$GW_BIN" -listen "127.0.0.1:$GW_PORT" -grpc "127.0.0.1:$PORT" >>"$OUT/gateway.log" 2>&1 &
  GW_PID=$!
  trap 'kill "$GW_PID" 2>/dev/null || true; stop_server' EXIT
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$GW_PORT/healthz" >/dev/null || { echo "gateway did not start" >&2; exit 1; }

  # Direct gRPC, the harness of every other run.
  # (Each event is preloaded outside the CPU window; each window ends when
  # PostgreSQL has recorded every issuance, as coupond-bench waits for it.)
  event="$(preloaded gateway-direct "$((GW_N * 2))")"
  s0="$(ticks "$SERVER_PID")"
  bench "gateway-direct-unary-c$GW_C" --mode unary --concurrency "$GW_C" --requests "$GW_N" \
    --event "$event"
  s1="$(ticks "$SERVER_PID")"

  # The same through the gateway.
  event="$(preloaded gateway-http "$((GW_N * 2))")"
  python3 - "$event" "$GW_N" "http://127.0.0.1:$GW_PORT" >"$OUT/gateway-targets.jsonl" <<'PY'
import base64, json, sys
event, n, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    body = json.dumps({"userId": f"http-{i}", "requestId": f"h-{i}"}).encode()
    print(json.dumps({"method": "POST", "url": f"{base}/v1/events/{event}/issuances",
                      "header": {"Content-Type": ["application/json"]},
                      "body": base64.b64encode(body).decode()}))
PY
  echo "== gateway-http-unary-c$GW_C (vegeta)" >&2
  g0="$(ticks "$GW_PID")" s2="$(ticks "$SERVER_PID")"
  python3 scripts/cpu-seconds.py "$OUT/gateway-http-unary-c$GW_C.vegeta-cpu" \
    "$VEGETA" attack -format=json -lazy -targets="$OUT/gateway-targets.jsonl" -rate=0 \
    -workers="$GW_C" -max-workers="$GW_C" -timeout=30s -output="$OUT/gateway-http-unary-c$GW_C.bin"
  g1="$(ticks "$GW_PID")"
  for _ in $(seq 1 600); do
    finalized="$(curl -sf "http://127.0.0.1:$GW_PORT/v1/events/$event" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["finalizedCount"])')"
    [ "$finalized" -ge "$GW_N" ] && break
    sleep 0.1
  done
  s3="$(ticks "$SERVER_PID")"
  "$VEGETA" encode --to json "$OUT/gateway-http-unary-c$GW_C.bin" >"$OUT/gateway-http-unary-c$GW_C.results.jsonl"

  python3 - "$OUT" "$GW_C" "$GW_N" "$(getconf CLK_TCK)" "$g0" "$g1" "$s0" "$s1" "$s2" "$s3" <<'PY' | tee "$OUT/gateway.md"
import base64, json, sys
out, c, n, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
g0, g1, s0, s1, s2, s3 = (int(x) for x in sys.argv[5:11])
direct = json.load(open(f"{out}/gateway-direct-unary-c{c}.json"))
rows, issued, bad = [], 0, {}
for line in open(f"{out}/gateway-http-unary-c{c}.results.jsonl"):
    r = json.loads(line)
    if r.get("error") == "no targets to attack":
        continue  # a worker finding the targets exhausted: no request was sent
    rows.append(r)
    body = base64.b64decode(r.get("body") or "").decode(errors="replace")
    try:
        ok = r["code"] == 200 and json.loads(body).get("result") == "ISSUE_RESULT_ISSUED"
    except ValueError:
        ok = False
    if ok:
        issued += 1
    else:
        key = f"{r['code']} {r.get('error') or body[:80]}"
        bad[key] = bad.get(key, 0) + 1
lat = sorted(r["latency"] / 1000 for r in rows)  # µs
def ts(s):  # RFC 3339 with nanoseconds -> seconds (same day, same zone)
    hms = s[11:].rstrip("Z").split("+")[0].split("-")[0]
    h, m, sec = hms.split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)
start = min(ts(r["timestamp"]) for r in rows)
end = max(ts(r["timestamp"]) + r["latency"] / 1e9 for r in rows)
pct = lambda p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))]
vcpu = float(open(f"{out}/gateway-http-unary-c{c}.vegeta-cpu").read().split()[0])
d = direct
print(f"| unary Issue, {c} clients | requests | requests/s | p50 | p99 | server CPU µs/req | gateway CPU µs/req | load generator CPU µs/req |")
print("|---|---|---|---|---|---|---|---|")
print(f"| gRPC direct (coupond-bench) | {d['requests']} ({d['issued']} ISSUED) | {d['requests_per_s']:.0f} | "
      f"{d['latency_us']['p50'] / 1000:.1f} ms | {d['latency_us']['p99'] / 1000:.1f} ms | "
      f"{(s1 - s0) / tck / d['requests'] * 1e6:.0f} | – | "
      f"{json.load(open(f'{out}/gateway-direct-unary-c{c}.parts.json'))['cpu_s']['load_generator'] / d['requests'] * 1e6:.0f} |")
print(f"| HTTP/JSON via gateway (vegeta) | {len(rows)} ({issued} ISSUED) | {len(rows) / (end - start):.0f} | "
      f"{pct(50) / 1000:.1f} ms | {pct(99) / 1000:.1f} ms | {(s3 - s2) / tck / len(rows) * 1e6:.0f} | "
      f"{(g1 - g0) / tck / len(rows) * 1e6:.0f} | {vcpu / len(rows) * 1e6:.0f} |")
if bad or len(rows) != n or issued != n:
    print(f"gateway run: {n} targets, {len(rows)} sent, {issued} ISSUED; others: {bad}", file=sys.stderr)
    sys.exit(1)
PY
  # The raw results (.bin) stay; the decoded ones and the targets are big.
  rm -f "$OUT/gateway-targets.jsonl" "$OUT/gateway-http-unary-c$GW_C.results.jsonl"
  kill "$GW_PID" 2>/dev/null || true
  stop_server
  echo "results in $OUT" >&2
  exit 0
fi

if [ -n "${BASELINE:-}" ]; then
  BASE_BIN="$(build_baseline "$BASELINE")"
  git rev-parse --short "$BASELINE^{commit}" >"$OUT/baseline.rev"
fi
# BEFORE=<git rev>: a second revision beside the baseline, such as the
# commit before the change being judged, when BASELINE is where a longer
# piece of work started.
if [ -n "${BEFORE:-}" ]; then
  BEFORE_BIN="$(build_baseline "$BEFORE")"
  git rev-parse --short "$BEFORE^{commit}" >"$OUT/before.rev"
fi
git rev-parse --short HEAD >"$OUT/current.rev"
git diff --quiet HEAD || echo "(with uncommitted changes)" >>"$OUT/current.rev"
# Baseline and current take turns, ROUNDS times: the machine's speed drifts
# within minutes, and the report takes each figure's median over the rounds.
for round in $(seq 1 "${ROUNDS:-1}"); do
  n="$([ "$round" = 1 ] || echo "$round")"
  [ -z "${BASELINE:-}" ] || cost_runs baseline "$BASE_BIN" coupond_bench_baseline "$n"
  [ -z "${BEFORE:-}" ] || cost_runs before "$BEFORE_BIN" coupond_bench_before "$n"
  cost_runs current "$BIN" coupond_bench_current "$n"
done
bench broker --mode broker --requests "$REQUESTS"
# Kafka's own reference: its producer perf test, acks=all and idempotent like
# coupond's producer, records the size of a CouponIssued message.
echo "== kafka-producer-perf-test" >&2
scripts/stack.sh kafka-tool topics --bootstrap-server 127.0.0.1:9092 --create --if-not-exists \
  --topic coupond-perf --partitions 6 >/dev/null
scripts/stack.sh kafka-tool producer-perf-test --topic coupond-perf --num-records "$((REQUESTS * 2))" \
  --record-size 120 --throughput -1 --producer-props bootstrap.servers=127.0.0.1:9092 acks=all \
  enable.idempotence=true linger.ms=2 compression.type=lz4 2>/dev/null | tail -1 >"$OUT/kafka-producer-perf.txt"
scripts/stack.sh kafka-tool topics --bootstrap-server 127.0.0.1:9092 --delete --topic coupond-perf >/dev/null
if [ "${ONLY:-}" = cost ]; then SIZES="${SIZES:-1000000}" scripts/bench-preload.sh "$OUT"
else scripts/bench-preload.sh "$OUT"; fi
start_server ack

# Physical reference: the one-user script straight from redis-benchmark, on a
# big event preloaded through coupond (so the keys look exactly as in service).
bench preload-1m --mode preload --coupons 1000000
REF_EVENT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_id"])' "$OUT/preload-1m.json")"
SHA="$(redis-cli -h 127.0.0.1 SCRIPT LOAD "$(cat scripts/lua/issue.lua)")"
for P in 1 16; do
  for C in 50 500; do
    echo "== redis-benchmark EVALSHA c=$C P=$P" >&2
    redis-benchmark -h 127.0.0.1 -n 200000 -c "$C" -P "$P" -r 100000000 --csv \
      EVALSHA "$SHA" 5 "couponQueue:{$REF_EVENT}" "couponIssued:{$REF_EVENT}" \
      "couponMeta:{$REF_EVENT}" "couponPending:{$REF_EVENT}" "couponMetaOffline:{$REF_EVENT}" \
      1 "rb:__rand_int__" r \
      | tail -1 | cut -d, -f2 | tr -d '"' >"$OUT/redis-evalsha-c$C-p$P.txt"
  done
done
# The reference's issuances never reach Kafka; drop them from the pending set.
redis-cli -h 127.0.0.1 DEL "couponPending:{$REF_EVENT}" >/dev/null
if [ "${ONLY:-}" = cost ]; then
  stop_server
  python3 scripts/bench_report.py "$OUT"
  echo "results in $OUT" >&2
  exit 0
fi

for C in 100 1000 3000; do
  bench "unary-ack-c$C" --mode unary --concurrency "$C" --requests "$REQUESTS" --coupons $((REQUESTS * 2))
done
bench stream-ack-s16 --mode stream --concurrency 16 --requests "$((REQUESTS * 2))" --coupons $((REQUESTS * 4))

# ghz, the standard tool, against the same server (ack): unary Issue at the
# same concurrencies and IssueStream with 16 streams, each on an event of
# its own, so the two harnesses can be read side by side.
GHZ="$(scripts/ghz.sh)"
mkdir -p "$OUT/ghz"
ghz_run() { # name, configuration, changes (JSON)
  local name="$1" event
  echo "== ghz $name" >&2
  "$BENCH" --addr "$ADDR" --mode preload --coupons $((REQUESTS * 4)) \
    --json "$OUT/ghz/$name-event.json" >/dev/null 2>&1
  event="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["event_id"])' "$OUT/ghz/$name-event.json")"
  python3 scripts/ghz_config.py "ghz/$2" "$OUT/ghz/$name-config.json" "$3" "$event" "127.0.0.1:$PORT"
  python3 scripts/cpu-seconds.py "$OUT/ghz/$name.cpu" \
    "$GHZ" --config "$OUT/ghz/$name-config.json" --format json >"$OUT/ghz/$name.json"
}
for C in 100 1000 3000; do
  ghz_run "unary-ack-c$C" issue.json "{\"total\": $REQUESTS, \"concurrency\": $C, \"connections\": 8}"
done
ghz_run stream-ack-s16 issue_stream.json \
  "{\"total\": 16, \"concurrency\": 16, \"connections\": 8, \"stream-call-count\": $((REQUESTS * 2 / 16))}"

start_server async
for C in 100 1000 3000; do
  bench "unary-async-c$C" --mode unary --concurrency "$C" --requests "$REQUESTS" --coupons $((REQUESTS * 2))
done
bench stream-async-s16 --mode stream --concurrency 16 --requests "$((REQUESTS * 2))" --coupons $((REQUESTS * 4))
stop_server

python3 scripts/bench_report.py "$OUT"
echo "results in $OUT" >&2
