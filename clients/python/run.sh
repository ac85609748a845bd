#!/usr/bin/env bash
# Generates the Python stubs from proto/ with the pinned grpcio-tools (in a
# virtualenv outside the clone), then runs the client's check against a
# server:  run.sh HOST:PORT ADMIN_TOKEN
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/tools.sh
VENV="$CACHE/python-client-venv"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check --cache-dir "$CACHE/pip" -r requirements.txt
rm -rf gen && mkdir gen
"$VENV/bin/python" -m grpc_tools.protoc -I ../../proto --python_out=gen --grpc_python_out=gen \
  ../../proto/coupon/v1/*.proto
"$VENV/bin/python" coupond_client.py "$@"
