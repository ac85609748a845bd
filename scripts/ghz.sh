#!/usr/bin/env bash
# Installs a pinned ghz (`go install`, into the tools cache outside the
# clone) when missing, and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_go_tool github.com/bojand/ghz/cmd/ghz v0.120.0
