#!/usr/bin/env bash
# Lints the API contract (proto/) with buf's STANDARD rules (proto/buf.yaml
# says which four are excepted, and why), and checks it against the last
# released contract with `buf breaking` (FILE rules): the release is a buf
# image in proto/releases/, written when a version ships
# (`buf build -o releases/coupon-v1-<date>.binpb` in proto/). buf comes from the npm registry
# (@bufbuild/buf, a pinned release) into a tools directory outside the clone,
# once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
BUF="$(buf_path)"
cd proto
"$BUF" lint
echo "buf lint: proto/ clean" >&2
RELEASE="$(ls releases/*.binpb | sort | tail -1)"
"$BUF" breaking --against "$RELEASE"
echo "buf breaking: proto/ keeps every promise of $RELEASE" >&2
