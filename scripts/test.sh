#!/usr/bin/env bash
# Brings the local stack up and runs the whole test suite (unit and
# integration tests against the real Redis, PostgreSQL and broker).
# Extra arguments go to `cargo test` (before its `--`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/stack.sh up
# Three masters with a replica each, for the tests that run on a cluster.
scripts/stack.sh redis-cluster-up
# The same over TLS only, for the tests of TLS to a cluster.
scripts/stack.sh redis-tls-cluster-up
scripts/lint-proto.sh

# Databases of earlier runs (each test creates its own) would pile up.
psql -h 127.0.0.1 -U postgres -d postgres -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'coupond_test_%'" |
  while read -r db; do
    [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null || true
  done

# A failure's message (fault tests add the server's last log lines) is
# what a shortened CI log must keep; a backtrace would push it out.
# COUPOND_TEST_BACKTRACE=1 brings backtraces back.
export RUST_BACKTRACE="${COUPOND_TEST_BACKTRACE:-0}"

# The workspace: the service crate and the load generator (`bench/`).
# --show-output: what passing tests print (fault counts, client build
# times) stays in the log.
cargo test --workspace --all-targets "$@" -- --show-output

# The integration tests of everything that reaches Redis, again with every
# Redis access through the cluster client (COUPOND_REDIS_CLUSTER reaches
# the tests' settings and every coupond process they start). The fault
# tests above ran the cluster's own: events on every master, a master
# killed mid-load. (The one precedence test left out runs Redis through a
# single-node proxy.)
COUPOND_REDIS_CLUSTER=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
  cargo test --test api "$@" -- --show-output \
  issue:: stream:: batch:: preload:: controls:: retention:: archive:: reconcile:: rebuild:: \
  finalize:: sweeper:: twice:: transfer:: sharded:: poison:: dlq:: operator:: validation:: truths:: precedence::a_holder
