#!/usr/bin/env bash
# Brings the local stack up and runs `coupond serve` (127.0.0.1:50051 by
# default; flags after the script name go to `coupond serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/stack.sh up
exec cargo run --release --bin coupond -- serve "$@"
