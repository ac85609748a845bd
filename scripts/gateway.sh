#!/usr/bin/env bash
# The HTTP/JSON gateway (gateway/): installs the pinned generators, generates
# the grpc-gateway reverse proxy and the OpenAPI document from proto/,
# builds, and runs it in the foreground:
#
#   scripts/gateway.sh [--grpc HOST:PORT] [--listen ADDR] [--grpc-tls] [--grpc-ca FILE]
#       [--grpc-server-name NAME] [--grpc-cert FILE --grpc-key FILE]
#       (defaults: --grpc 127.0.0.1:50051, --listen 127.0.0.1:8080)
#   scripts/gateway.sh --build
#       only builds; prints the binary's path, then the OpenAPI document's
#       path, one a line on stdout (everything else goes to stderr).
#
# Tools and outputs live outside the clone, in ~/.cache/coupond
# (COUPOND_CACHE): go-bin/ for the plugins, gateway/ for the binary and
# coupond.swagger.json. gateway/gen/ is generated anew each time (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../gateway"
source ../scripts/tools.sh

# Same major version as the runtime in gateway/go.mod (grpc-gateway/v2 v2.34.0).
GATEWAY_VERSION=v2.34.0
GEN_GO="$(ensure_go_tool google.golang.org/protobuf/cmd/protoc-gen-go v1.36.12)"
GEN_GRPC="$(ensure_go_tool google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.0)"
GEN_GW="$(ensure_go_tool github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway "$GATEWAY_VERSION")"
GEN_OAPI="$(ensure_go_tool github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2 "$GATEWAY_VERSION")"
BUF="$(buf_path)"

rm -rf gen
PATH="$(dirname "$GEN_GO"):$(dirname "$GEN_GRPC"):$(dirname "$GEN_GW"):$(dirname "$GEN_OAPI"):$PATH" \
  "$BUF" generate ../proto --path ../proto/coupon --template buf.gen.yaml

OUT="$CACHE/gateway"
mkdir -p "$OUT"
go build -o "$OUT/coupond-gateway.new" .
mv -f "$OUT/coupond-gateway.new" "$OUT/coupond-gateway"
cp gen/openapi/coupond.swagger.json "$OUT/coupond.swagger.json.new"
mv -f "$OUT/coupond.swagger.json.new" "$OUT/coupond.swagger.json"

if [ "${1:-}" = "--build" ]; then
  echo "$OUT/coupond-gateway"
  echo "$OUT/coupond.swagger.json"
  exit 0
fi
echo "gateway: OpenAPI document at $OUT/coupond.swagger.json" >&2
exec "$OUT/coupond-gateway" "$@"
