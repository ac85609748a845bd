#!/usr/bin/env bash
# Installs the pinned packages (npm; cache outside the clone), generates the
# types and service descriptors from proto/ with protoc-gen-es (buf
# compiles), builds, and runs the check against a server over gRPC-Web:
#   run.sh HOST:PORT ADMIN_TOKEN
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/tools.sh
if [ -f package-lock.json ]; then
  npm ci --silent --no-audit --no-fund --cache "$CACHE/npm" >&2
else
  npm install --silent --no-audit --no-fund --cache "$CACHE/npm" >&2
fi
BUF="$(buf_path)"
rm -rf gen dist
"$BUF" generate ../../proto --template buf.gen.yaml
# google.rpc.BadRequest, to read the details of an INVALID_ARGUMENT.
"$BUF" generate ../typescript/vendor --template buf.gen.yaml
node_modules/.bin/tsc -p .
node dist/src/check.js "$@"
