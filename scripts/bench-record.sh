#!/usr/bin/env bash
# How PostgreSQL could record issuances: its CPU per row for each way, on
# the same 1,000,000 issuances of a 1,000,000-coupon event (RECORD_ROWS),
# in batches of 2,000 (the finalizer's), each batch one transaction, in the
# random order a topic delivers them:
#   update   today's finalizer: one UPDATE of the preloaded rows per batch
#            (the statement of src/store/postgres/finalization.rs, with the
#            batch's arrays as array literals in place of parameters);
#   append   an append-only issuances table (code primary key, one row per
#            (event, user)): one INSERT ... SELECT per batch, joined with
#            the coupons table so that only the event's codes go in;
#   append-nojoin  the same without the join (the floor of the design);
#   copy     COPY of the same rows into a table like `append`'s (the
#            physical reference).
# Each way starts after a CHECKPOINT; PostgreSQL's CPU (every process) is
# sampled around it by cpu_parts.py; the table's dead rows and sizes after.
# Writes OUT/record.md. Run by `ONLY=record scripts/bench.sh`, or alone
# with OUT and BIN set.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?}" "${BIN:?}"
ROWS="${RECORD_ROWS:-1000000}"
DB=coupond_bench_record
URL="postgres://postgres@127.0.0.1:5432/$DB"
sql() { psql -h 127.0.0.1 -U postgres -d "$DB" -v ON_ERROR_STOP=1 -qtA "$@"; }

psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB" >/dev/null
COUPOND_DATABASE_URL="$URL" RUST_LOG=warn "$BIN" migrate >/dev/null
sql <<SQL
INSERT INTO events (id, name, total_count, starts_at, ends_at, written_count)
  VALUES ('rec', 'record bench', $ROWS, now(), now() + interval '1 day', $ROWS);
INSERT INTO policies VALUES ('rec', 0, 'PERCENT', 10, 1, $ROWS);
INSERT INTO coupons (code, event_id, policy_position, discount_type, discount_value)
  SELECT upper(substr(md5(random()::text || i), 1, 12)), 'rec', 0, 'PERCENT', 10
  FROM generate_series(1, $ROWS) i ON CONFLICT (code) DO NOTHING;
CREATE TABLE issuances (
  code TEXT PRIMARY KEY, event_id TEXT NOT NULL, user_id TEXT NOT NULL,
  issued_at TIMESTAMPTZ NOT NULL, request_id TEXT NOT NULL, finalized_at TIMESTAMPTZ NOT NULL,
  UNIQUE (event_id, user_id));
CREATE TABLE issuances_nojoin (LIKE issuances INCLUDING ALL);
CREATE TABLE issuances_copy (LIKE issuances INCLUDING ALL);
VACUUM ANALYZE;
SQL
sql -c "COPY (SELECT code FROM coupons ORDER BY random()) TO STDOUT" >"$OUT/record-codes.txt"

# The batches as SQL files, one statement (one transaction) per batch.
python3 - "$OUT" <<'PY'
import sys, time
out = sys.argv[1]
codes = open(f"{out}/record-codes.txt").read().split()
ms = int(time.time() * 1000)
# One array literal each (its text parsed by array_in, as close as psql
# gets to the finalizer's binary parameters; an ARRAY[...] of 2,000
# constants would be parsed node by node and dwarf the rest).
def arr(xs): return "'{" + ",".join(xs) + "}'"
def batches():
    for b in range(0, len(codes), 2000):
        part = range(b, min(b + 2000, len(codes)))
        yield ([codes[i] for i in part], [f"user-{i}" for i in part],
               [str(ms + i) for i in part], [f"req-{i}" for i in part])
U = ("UPDATE coupons c SET state = 'ISSUED', user_id = u.user_id, "
     "issued_at = timestamptz 'epoch' + u.ms * interval '1 millisecond', "
     "request_id = u.request_id, finalized_at = now() "
     "FROM unnest({c}::text[], {e}::text[], {u}::text[], {m}::int8[], {r}::text[]) "
     "WITH ORDINALITY AS u(code, event_id, user_id, ms, request_id, idx) "
     "WHERE c.code = u.code AND c.event_id = u.event_id AND c.state = 'AVAILABLE' "
     "RETURNING u.idx::int4;\n")
A = ("INSERT INTO issuances SELECT u.code, u.event_id, u.user_id, "
     "timestamptz 'epoch' + u.ms * interval '1 millisecond', u.request_id, now() "
     "FROM unnest({c}::text[], {e}::text[], {u}::text[], {m}::int8[], {r}::text[]) "
     "AS u(code, event_id, user_id, ms, request_id) "
     "JOIN coupons c ON c.code = u.code AND c.event_id = u.event_id "
     "ON CONFLICT DO NOTHING RETURNING code;\n")
N = A.replace("INSERT INTO issuances ", "INSERT INTO issuances_nojoin ").replace(
    "JOIN coupons c ON c.code = u.code AND c.event_id = u.event_id ", "")
with open(f"{out}/record-update.sql", "w") as fu, open(f"{out}/record-append.sql", "w") as fa, \
        open(f"{out}/record-append-nojoin.sql", "w") as fn, open(f"{out}/record-copy.tsv", "w") as fc:
    for c, u, m, r in batches():
        e = ["rec"] * len(c)
        args = dict(c=arr(c), e=arr(e), u=arr(u), m=arr(m), r=arr(r))
        fu.write(U.format(**args)); fa.write(A.format(**args)); fn.write(N.format(**args))
        for row in zip(c, u, m, r):
            fc.write(f"{row[0]}\trec\t{row[1]}\t1970-01-01 00:00:00+00\t{row[3]}\t2026-01-01 00:00:00+00\n")
PY

# run WAY COMMAND...: PostgreSQL's CPU around COMMAND, after a checkpoint.
run() {
  local way="$1"; shift
  sql -c CHECKPOINT
  echo "== record $way" >&2
  python3 scripts/cpu_parts.py "$OUT/record-$way.parts.json" 0 "$@" >/dev/null
}
run copy psql -h 127.0.0.1 -U postgres -d "$DB" -qc "\\copy issuances_copy FROM '$OUT/record-copy.tsv'"
run append-nojoin psql -h 127.0.0.1 -U postgres -d "$DB" -q -o /dev/null -f "$OUT/record-append-nojoin.sql"
run append psql -h 127.0.0.1 -U postgres -d "$DB" -q -o /dev/null -f "$OUT/record-append.sql"
run update psql -h 127.0.0.1 -U postgres -d "$DB" -q -o /dev/null -f "$OUT/record-update.sql"

rows() { sql -c "SELECT count(*) FROM $1 WHERE ${2:-true}"; }
[ "$(rows issuances)" = "$ROWS" ] && [ "$(rows issuances_nojoin)" = "$ROWS" ] &&
  [ "$(rows issuances_copy)" = "$ROWS" ] && [ "$(rows coupons "state = 'ISSUED'")" = "$ROWS" ] ||
  { echo "record: a way did not record every row" >&2; exit 1; }
# The dead-row counters of this backend's statements, now (not on a timer).
sql -c "SELECT pg_stat_force_next_flush()" >/dev/null
python3 - "$OUT" "$ROWS" "$(sql -F ' ' -c "SELECT relname, n_dead_tup, pg_table_size(relid) / 1048576,
  pg_indexes_size(relid) / 1048576 FROM pg_stat_user_tables
  WHERE relname IN ('coupons', 'issuances', 'issuances_nojoin', 'issuances_copy')")" <<'PY' | tee "$OUT/record.md"
import json, sys
out, rows, stats = sys.argv[1], int(sys.argv[2]), sys.argv[3]
size = {l.split()[0]: l.split()[1:] for l in stats.splitlines() if l.strip()}
table = {"update": "coupons", "append": "issuances", "append-nojoin": "issuances_nojoin", "copy": "issuances_copy"}
copy = json.load(open(f"{out}/record-copy.parts.json"))["cpu_s"]["postgres"]
print("| way | PostgreSQL CPU µs per row | ÷ COPY | wall s | dead rows after | table MB | indexes MB |")
print("|---|---|---|---|---|---|---|")
for way in ["update", "append", "append-nojoin", "copy"]:
    p = json.load(open(f"{out}/record-{way}.parts.json"))
    pg = p["cpu_s"]["postgres"]
    dead, tmb, imb = size.get(table[way], ["?", "?", "?"])
    print(f"| {way} | {pg * 1e6 / rows:.1f} | {pg / copy:.2f}x | {p['wall_s']:.1f} | {dead} | {tmb} | {imb} |")
PY
rm -f "$OUT"/record-*.sql "$OUT/record-copy.tsv" "$OUT/record-codes.txt"
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
