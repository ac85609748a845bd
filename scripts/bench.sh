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
# Every coupond run verifies the invariants (no code or user twice, issued
# <= total) and waits for PostgreSQL to catch up.
# Environment: REQUESTS (default 100000 per run).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-100000}"
OUT="bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
PORT=50061
ADDR="http://127.0.0.1:$PORT"
mkdir -p "$OUT"

scripts/stack.sh up

# Every run starts from the same state: its own, fresh database (a coupons
# table grown by earlier runs, with their dead rows, slows preload and the
# finalizer), and no Redis keys of earlier bench events.
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS coupond_bench" >/dev/null
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE coupond_bench" >/dev/null
export COUPOND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/coupond_bench"
redis-cli -h 127.0.0.1 --scan --pattern '*{bench-*}' | xargs -r -n 500 redis-cli -h 127.0.0.1 DEL >/dev/null
cargo build --release --workspace --bin coupond --bin coupond-bench >&2
BIN="${CARGO_TARGET_DIR:-target}/release/coupond"
BENCH="${CARGO_TARGET_DIR:-target}/release/coupond-bench"
SERVER_PID=""

stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT

start_server() { # durability
  stop_server
  COUPOND_DURABILITY="$1" RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --insecure-dev \
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
  python3 scripts/cpu-seconds.py "$OUT/$name.cpu" \
    "$BENCH" --addr "$ADDR" --json "$OUT/$name.json" "$@" >/dev/null
  echo $(($(script_calls) - before)) >"$OUT/$name.scripts"
}

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
scripts/bench-preload.sh "$OUT"
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
      EVALSHA "$SHA" 4 "couponQueue:{$REF_EVENT}" "couponIssued:{$REF_EVENT}" \
      "couponMeta:{$REF_EVENT}" "couponPending:{$REF_EVENT}" 1 "rb:__rand_int__" r \
      | tail -1 | cut -d, -f2 | tr -d '"' >"$OUT/redis-evalsha-c$C-p$P.txt"
  done
done
# The reference's issuances never reach Kafka; drop them from the pending set.
redis-cli -h 127.0.0.1 DEL "couponPending:{$REF_EVENT}" >/dev/null

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
