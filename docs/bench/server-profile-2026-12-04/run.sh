#!/usr/bin/env bash
# Ad-hoc: perf profile of the server under unary c1000 and stream s16.
set -euo pipefail
cd /work/main
OUT=/tmp/prof; PORT=50071; ADDR="http://127.0.0.1:$PORT"
BIN=target/release/coupond; BENCH=target/release/coupond-bench
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS coupond_prof" >/dev/null
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE coupond_prof" >/dev/null
export COUPOND_DATABASE_URL=postgres://postgres@127.0.0.1:5432/coupond_prof
export COUPOND_KAFKA_TOPIC=coupon-issued-prof COUPOND_KAFKA_GROUP=coupond-prof
COUPOND_DURABILITY=ack RUST_LOG=warn $BIN serve --listen 127.0.0.1:$PORT --insecure-dev >$OUT/server.log 2>&1 &
PID=$!
trap 'kill $PID; wait $PID' EXIT
for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
ev() { $BENCH --addr $ADDR --mode preload --coupons "$1" --json $OUT/ev.json >/dev/null 2>&1; python3 -c 'import json; print(json.load(open("/tmp/prof/ev.json"))["event_id"])'; }
E1=$(ev 200000)
perf record -F 1999 -p $PID -o $OUT/unary.data -- sleep 600 2>/dev/null &
PP=$!
sleep 1
$BENCH --addr $ADDR --mode unary --concurrency 1000 --requests 100000 --event $E1 --json $OUT/unary.json > $OUT/unary.txt
kill -INT $PP; wait $PP || true
E2=$(ev 600000)
perf record -F 1999 -p $PID -o $OUT/stream.data -- sleep 600 2>/dev/null &
PP=$!
sleep 1
$BENCH --addr $ADDR --mode stream --concurrency 16 --requests 300000 --event $E2 --json $OUT/stream.json > $OUT/stream.txt
kill -INT $PP; wait $PP || true
