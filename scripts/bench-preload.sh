#!/usr/bin/env bash
# Preload against its physical reference, per size: coupond's end-to-end
# Preload (generate, write to PostgreSQL, stage in Redis, make live) beside
# PostgreSQL's own COPY of the very same rows (exported from the preloaded
# event) into the same table with the same indexes, each in a fresh
# database, plus the server's peak resident memory during the preload.
# Writes <out>/preload-<N>.json (the bench report) and appends a table to
# <out>/preload-vs-copy.md.
#
# Usage: scripts/bench-preload.sh [OUT_DIR]   (SIZES="1000000 10000000")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
SIZES="${SIZES:-1000000 10000000}"
PORT=50062
BIN="${CARGO_TARGET_DIR:-target}/release/coupond"
BENCH="${CARGO_TARGET_DIR:-target}/release/coupond-bench"
ROWS=/tmp/coupond-bench-preload-rows.tsv
mkdir -p "$OUT"
[ -x "$BIN" ] && [ -x "$BENCH" ] || cargo build --release --workspace --bin coupond --bin coupond-bench >&2

psql_admin() { psql -h 127.0.0.1 -U postgres -d postgres -qtA "$@"; }
fresh_db() {
  psql_admin -c "DROP DATABASE IF EXISTS $1" >/dev/null
  psql_admin -c "CREATE DATABASE $1" >/dev/null
  echo "postgres://postgres@127.0.0.1:5432/$1"
}

SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -f "$ROWS"' EXIT

TABLE="$OUT/preload-vs-copy.md"
{
  echo "| coupons | coupond Preload (ms) | PostgreSQL COPY of the same rows (ms) | ratio | server peak RSS (MB) | PostgreSQL CPU µs per row: Preload / COPY |"
  echo "|---|---|---|---|---|---|"
} >"$TABLE"

for N in $SIZES; do
  echo "== preload $N" >&2
  DB_URL="$(fresh_db coupond_bench_preload)"
  COUPOND_DATABASE_URL="$DB_URL" RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" \
    --insecure-dev --no-consumer >>"$OUT/server-preload.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  COUPOND_DATABASE_URL="$DB_URL" python3 scripts/cpu_parts.py "$OUT/preload-$N.parts.json" "$SERVER_PID" \
    "$BENCH" --addr "http://127.0.0.1:$PORT" --mode preload --coupons "$N" --json "$OUT/preload-$N.json" >/dev/null
  RSS_KB="$(awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status")"
  stop_server
  PRELOAD_MS="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["preload_ms"])' "$OUT/preload-$N.json")"

  # The reference: the same rows, in the order coupond wrote them.
  rm -f "$ROWS"
  psql -h 127.0.0.1 -U postgres -d coupond_bench_preload -qc \
    "COPY (SELECT code, event_id, policy_position, discount_type, discount_value FROM coupons) TO '$ROWS'"
  psql_admin -c "DROP DATABASE coupond_bench_preload" >/dev/null
  COPY_URL="$(fresh_db coupond_bench_copy)"
  COUPOND_DATABASE_URL="$COPY_URL" RUST_LOG=warn "$BIN" migrate >/dev/null 2>&1
  python3 scripts/cpu_parts.py "$OUT/copy-$N.parts.json" 0 \
    psql -h 127.0.0.1 -U postgres -d coupond_bench_copy -qt \
    -c '\timing on' \
    -c "COPY coupons (code, event_id, policy_position, discount_type, discount_value) FROM '$ROWS'" \
    >"$OUT/copy-$N.txt"
  COPY_MS="$(awk '/^Time:/ { printf "%.0f", $2 }' "$OUT/copy-$N.txt")"
  PG_ROW="$(python3 -c "
import json, sys
pg = lambda p: json.load(open(p))['cpu_s']['postgres'] * 1e6 / $N
print(f'{pg(sys.argv[1]):.1f} / {pg(sys.argv[2]):.1f}')" "$OUT/preload-$N.parts.json" "$OUT/copy-$N.parts.json")"
  psql_admin -c "DROP DATABASE coupond_bench_copy" >/dev/null
  RATIO="$(python3 -c "print(f'{$PRELOAD_MS / $COPY_MS:.2f}')")"
  echo "| $N | $PRELOAD_MS | $COPY_MS | $RATIO | $((RSS_KB / 1024)) | $PG_ROW |" >>"$TABLE"
  echo "preload $N: $PRELOAD_MS ms, COPY $COPY_MS ms (x$RATIO), peak RSS $((RSS_KB / 1024)) MB" >&2
done
cat "$TABLE"
