#!/usr/bin/env bash
# How PostgreSQL could record issuances: its CPU per row for each way, on
# the same 1,000,000 issuances of a 1,000,000-coupon event (RECORD_ROWS),
# each batch one transaction, in the random order a topic delivers them:
#   update         today's finalizer: one UPDATE of the preloaded rows per
#                  batch of 2,000 (the statement of
#                  src/store/postgres/finalization.rs, with the batch's
#                  arrays as array literals in place of parameters);
#   update-b500, update-b8000   the same in batches of 500 and 8,000;
#   update-temp    each batch COPYed into a temporary table (one per
#                  session, emptied at commit), then one UPDATE from it;
#   update-partial the UPDATE with the (event_id, state) index replaced by
#                  one on event_id of the AVAILABLE rows only: an issued
#                  row's new version then adds no entry there;
#   update-async   the UPDATE with synchronous_commit off (for the figure
#                  only: a crash would lose commits the finalizer had
#                  acknowledged to the broker);
#   append         an append-only issuances table (code primary key, one
#                  row per (event, user)): one INSERT ... SELECT per batch,
#                  joined with the coupons table so that only the event's
#                  codes go in;
#   append-nojoin  the same without the join (the floor of the design);
#   copy           COPY of the same rows into a table like `append`'s (the
#                  physical reference).
# Each way runs on its own copy of one database (CREATE DATABASE ...
# TEMPLATE), after a CHECKPOINT; PostgreSQL's CPU (every process) is
# sampled around it by cpu_parts.py; the table's dead rows and sizes after.
# Writes OUT/record.md. Run by `ONLY=record scripts/bench.sh`, or alone
# with OUT and BIN set.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?}" "${BIN:?}"
ROWS="${RECORD_ROWS:-1000000}"
DB=coupond_bench_record
psql_on() { psql -h 127.0.0.1 -U postgres -d "$1" -v ON_ERROR_STOP=1 -qtA "${@:2}"; }
sql() { psql_on "$DB" "$@"; }
drop_db() { psql_on postgres -c "DROP DATABASE IF EXISTS $1" >/dev/null; }

drop_db "$DB"
psql_on postgres -c "CREATE DATABASE $DB" >/dev/null
COUPOND_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" RUST_LOG=warn "$BIN" migrate >/dev/null
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
VACUUM ANALYZE;
SQL
ROWS="$(sql -c "SELECT count(*) FROM coupons")" # a random code may collide
sql -c "COPY (SELECT code FROM coupons ORDER BY random()) TO STDOUT" >"$OUT/record-codes.txt"

# The batches as SQL files, one transaction per batch.
python3 - "$OUT" <<'PY'
import sys, time
out = sys.argv[1]
codes = open(f"{out}/record-codes.txt").read().split()
ms = int(time.time() * 1000)
# One array literal each (its text parsed by array_in, as close as psql
# gets to the finalizer's binary parameters; an ARRAY[...] of 2,000
# constants would be parsed node by node and dwarf the rest).
def arr(xs): return "'{" + ",".join(xs) + "}'"
def batches(size):
    for b in range(0, len(codes), size):
        part = range(b, min(b + size, len(codes)))
        yield ([codes[i] for i in part], [f"user-{i}" for i in part],
               [str(ms + i) for i in part], [f"req-{i}" for i in part])
SET = ("SET state = 'ISSUED', user_id = u.user_id, "
       "issued_at = timestamptz 'epoch' + u.ms * interval '1 millisecond', "
       "request_id = u.request_id, finalized_at = now() ")
MATCH = "WHERE c.code = u.code AND c.event_id = u.event_id AND c.state = 'AVAILABLE' RETURNING u.idx::int4;\n"
U = ("UPDATE coupons c " + SET +
     "FROM unnest({c}::text[], {e}::text[], {u}::text[], {m}::int8[], {r}::text[]) "
     "WITH ORDINALITY AS u(code, event_id, user_id, ms, request_id, idx) " + MATCH)
T = "BEGIN;\nCOPY batch FROM STDIN;\n{rows}\\.\nUPDATE coupons c " + SET + "FROM batch u " + MATCH + "COMMIT;\n"
A = ("INSERT INTO issuances SELECT u.code, u.event_id, u.user_id, "
     "timestamptz 'epoch' + u.ms * interval '1 millisecond', u.request_id, now() "
     "FROM unnest({c}::text[], {e}::text[], {u}::text[], {m}::int8[], {r}::text[]) "
     "AS u(code, event_id, user_id, ms, request_id) "
     "JOIN coupons c ON c.code = u.code AND c.event_id = u.event_id "
     "ON CONFLICT DO NOTHING RETURNING code;\n")
N = A.replace("JOIN coupons c ON c.code = u.code AND c.event_id = u.event_id ", "")
def args(c, u, m, r):
    return dict(c=arr(c), e=arr(["rec"] * len(c)), u=arr(u), m=arr(m), r=arr(r))
def write(way, template, size=2000, head=""):
    with open(f"{out}/record-{way}.sql", "w") as f:
        f.write(head)
        for b in batches(size):
            f.write(template.format(**args(*b)))
write("update", U)
write("update-b500", U, 500)
write("update-b8000", U, 8000)
write("update-partial", U)
write("update-async", U, head="SET synchronous_commit = off;\n")
write("append", A)
write("append-nojoin", N)
with open(f"{out}/record-update-temp.sql", "w") as f:
    f.write("CREATE TEMP TABLE batch (code text, event_id text, user_id text, ms int8, "
            "request_id text, idx int8) ON COMMIT DELETE ROWS;\n")
    for c, u, m, r in batches(2000):
        rows = "".join(f"{row[0]}\trec\t{row[1]}\t{row[2]}\t{row[3]}\t{i + 1}\n"
                       for i, row in enumerate(zip(c, u, m, r)))
        f.write(T.replace("{rows}", rows))
with open(f"{out}/record-copy.tsv", "w") as fc:
    for c, u, m, r in batches(2000):
        for row in zip(c, u, m, r):
            fc.write(f"{row[0]}\trec\t{row[1]}\t1970-01-01 00:00:00+00\t{row[3]}\t2026-01-01 00:00:00+00\n")
PY

# run WAY SETUP_SQL COMMAND...: on a copy of the database made for WAY and
# set up by SETUP_SQL, PostgreSQL's CPU around COMMAND (which reads the
# copy's name from $WAY_DB), after a checkpoint; then what the table it
# wrote holds and its sizes.
declare -A TABLE
run() {
  local way="$1" setup="$2"; shift 2
  export WAY_DB="${DB}_$(echo "$way" | tr - _)"
  drop_db "$WAY_DB"
  psql_on postgres -c "CREATE DATABASE $WAY_DB TEMPLATE $DB" >/dev/null
  [ -z "$setup" ] || psql_on "$WAY_DB" -c "$setup"
  psql_on "$WAY_DB" -c CHECKPOINT
  echo "== record $way" >&2
  python3 scripts/cpu_parts.py "$OUT/record-$way.parts.json" 0 "$@" >/dev/null
  local table="${TABLE[$way]:-coupons}" where="true"
  [ "$table" = coupons ] && where="state = 'ISSUED'"
  [ "$(psql_on "$WAY_DB" -c "SELECT count(*) FROM $table WHERE $where")" = "$ROWS" ] ||
    { echo "record: $way did not record every row" >&2; exit 1; }
  # The dead-row counters of this backend's statements, now (not on a timer).
  psql_on "$WAY_DB" -F ' ' -c "SELECT pg_stat_force_next_flush()" -c "SELECT n_dead_tup,
    pg_table_size(relid) / 1048576, pg_indexes_size(relid) / 1048576
    FROM pg_stat_user_tables WHERE relname = '$table'" | tail -1 >"$OUT/record-$way.sizes"
  drop_db "$WAY_DB"
}
file() { echo "$OUT/record-$1.sql"; }
TABLE[copy]=issuances TABLE[append]=issuances TABLE[append-nojoin]=issuances
run copy "" sh -c "psql -h 127.0.0.1 -U postgres -d \"\$WAY_DB\" -qc \"\\copy issuances FROM '$OUT/record-copy.tsv'\""
for way in append-nojoin append update update-b500 update-b8000 update-temp update-async; do
  run "$way" "" sh -c "psql -h 127.0.0.1 -U postgres -d \"\$WAY_DB\" -q -o /dev/null -v ON_ERROR_STOP=1 -f '$(file "$way")'"
done
run update-partial "DROP INDEX coupons_event_state;
  CREATE INDEX coupons_event_available ON coupons (event_id) WHERE state = 'AVAILABLE'; ANALYZE coupons" \
  sh -c "psql -h 127.0.0.1 -U postgres -d \"\$WAY_DB\" -q -o /dev/null -v ON_ERROR_STOP=1 -f '$(file update-partial)'"

python3 - "$OUT" "$ROWS" <<'PY' | tee "$OUT/record.md"
import json, sys
out, rows = sys.argv[1], int(sys.argv[2])
ways = ["update", "update-b500", "update-b8000", "update-temp", "update-partial",
        "update-async", "append", "append-nojoin", "copy"]
cpu = {w: json.load(open(f"{out}/record-{w}.parts.json")) for w in ways}
copy = cpu["copy"]["cpu_s"]["postgres"]
print("| way | PostgreSQL CPU µs per row | ÷ COPY | wall s | dead rows after | table MB | indexes MB |")
print("|---|---|---|---|---|---|---|")
for w in ways:
    pg = cpu[w]["cpu_s"]["postgres"]
    dead, tmb, imb = open(f"{out}/record-{w}.sizes").read().split()
    print(f"| {w} | {pg * 1e6 / rows:.1f} | {pg / copy:.2f}x | {cpu[w]['wall_s']:.1f} | {dead} | {tmb} | {imb} |")
PY
rm -f "$OUT"/record-*.sql "$OUT"/record-*.sizes "$OUT/record-copy.tsv" "$OUT/record-codes.txt"
drop_db "$DB"
