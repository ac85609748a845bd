#!/usr/bin/env bash
# A/B of env settings: VARIANTS="name:ENV=V,ENV2=V2 ..." ROUNDS LOADS
set -euo pipefail
cd /work/main
PORT=50072; ADDR="http://127.0.0.1:$PORT"
OUT=${OUT:-/tmp/ab}; mkdir -p $OUT
BENCH=target/release/coupond-bench
SP=""
stop() { [ -n "$SP" ] && { kill $SP 2>/dev/null; wait $SP 2>/dev/null || true; SP=""; }; }
trap stop EXIT
for r in $(seq 1 ${ROUNDS:-2}); do
 for v in $VARIANTS; do
  name=${v%%:*}; envs=${v#*:}
  db=coupond_ab_$name
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null
  psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $db" >/dev/null
  export COUPOND_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
  ( IFS=,; for e in $envs; do [ -n "$e" ] && export "$e"; done
    COUPOND_KAFKA_TOPIC=coupon-issued-ab-$name COUPOND_KAFKA_GROUP=coupond-ab-$name COUPOND_DURABILITY=ack RUST_LOG=warn \
    exec ${BIN:-target/release/coupond} serve --listen 127.0.0.1:$PORT --insecure-dev ) >> $OUT/server-$name.log 2>&1 &
  SP=$!
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  for load in ${LOADS:-unary-c100 stream-s16}; do
    case $load in
      unary-c*) args="--mode unary --concurrency ${load#unary-c} --requests ${N:-100000}"; n=${N:-100000};;
      stream-s*) args="--mode stream --concurrency ${load#stream-s} --requests ${SN:-200000}"; n=${SN:-200000};;
    esac
    $BENCH --addr $ADDR --mode preload --coupons $((n*2)) --json $OUT/ev.json >/dev/null 2>&1
    ev=$(python3 -c 'import json; print(json.load(open("'$OUT'/ev.json"))["event_id"])')
    python3 scripts/cpu_parts.py $OUT/$name-$load.r$r.parts.json $SP $BENCH --addr $ADDR --event $ev $args --json $OUT/$name-$load.r$r.json | tail -1 | cut -c1-200
  done
  stop
 done
done
python3 - "$OUT" <<'PY'
import json,glob,sys,os,statistics,collections
out=sys.argv[1]; rows=collections.defaultdict(list)
for f in sorted(glob.glob(out+'/*.parts.json')):
    base=os.path.basename(f)[:-len('.parts.json')]
    key=base.rsplit('.r',1)[0]
    p=json.load(open(f)); j=json.load(open(f[:-len('.parts.json')]+'.json'))
    rows[key].append((p,j))
for k,v in sorted(rows.items()):
    n=[j['issued'] for p,j in v]
    parts={x: round(statistics.median(p['cpu_s'][x]*1e6/j['issued'] for p,j in v),1) for x in v[0][0]['cpu_s']}
    print(k, len(v), parts, 'rps', round(statistics.median(j['requests_per_s'] for p,j in v)), 'p50ms', statistics.median(j['latency_us']['p50'] for p,j in v)/1000)
PY
