#!/usr/bin/env bash
# Brings the local stack up and runs `coupond serve` (127.0.0.1:50051 by
# default; flags after the script name go to `coupond serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stack.sh up
# Without COUPOND_ADMIN_TOKEN this is a development server: CouponAdmin is
# open (the server logs a warning). Set the token for anything else.
if [ -z "${COUPOND_ADMIN_TOKEN:-}${COUPOND_ADMIN_TOKEN_FILE:-}" ]; then
  set -- --insecure-dev "$@"
fi
exec cargo run --release --bin coupond -- serve "$@"
