#!/usr/bin/env bash
# Installs a pinned grpcurl (`go install`, into the tools cache outside the
# clone) when missing, and prints its path. The README's grpcurl examples
# are run with it by the test command (tests/api/examples.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_go_tool github.com/fullstorydev/grpcurl/cmd/grpcurl v1.9.3
