#!/usr/bin/env bash
# Brings the local stack up and runs the whole test suite (unit and
# integration tests against the real Redis, PostgreSQL and broker).
# Extra arguments go to `cargo test` (before its `--`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/stack.sh up
scripts/lint-proto.sh

# Databases of earlier runs (each test creates its own) would pile up.
psql -h 127.0.0.1 -U postgres -d postgres -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'coupond_test_%'" |
  while read -r db; do
    [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null || true
  done

# The workspace: the service crate and the load generator (`bench/`).
# --show-output: what passing tests print (fault counts, client build
# times) stays in the log.
cargo test --workspace --all-targets "$@" -- --show-output
