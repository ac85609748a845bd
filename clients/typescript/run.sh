#!/usr/bin/env bash
# Installs the pinned packages (npm ci; cache outside the clone), generates
# the types and grpc-js clients from proto/ with ts-proto (buf compiles),
# builds, and runs the client's check against a server:
#   run.sh HOST:PORT ADMIN_TOKEN
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/tools.sh
npm ci --silent --no-audit --no-fund --cache "$CACHE/npm" >&2
BUF="$(buf_path)"
rm -rf gen dist
"$BUF" generate ../../proto --template buf.gen.yaml
"$BUF" generate vendor --template buf.gen.yaml
node_modules/.bin/tsc -p .
node dist/src/check.js "$@"
