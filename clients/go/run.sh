#!/usr/bin/env bash
# Generates the Go stubs from proto/ with pinned protoc-gen-go and
# protoc-gen-go-grpc (buf compiles), then runs the client's check against a
# server:  run.sh HOST:PORT ADMIN_TOKEN
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/tools.sh
GEN_GO="$(ensure_go_tool google.golang.org/protobuf/cmd/protoc-gen-go v1.36.12)"
GEN_GRPC="$(ensure_go_tool google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.0)"
rm -rf gen
PATH="$(dirname "$GEN_GO"):$(dirname "$GEN_GRPC"):$PATH" "$(buf_path)" generate ../../proto --path ../../proto/coupon --template buf.gen.yaml
mkdir -p "$CACHE/go-client"
go build -o "$CACHE/go-client/couponclient" .
"$CACHE/go-client/couponclient" "$@"
