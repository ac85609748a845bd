#!/usr/bin/env bash
# Validates an OpenAPI (Swagger 2.0) document with an independent validator,
# the pinned @apidevtools/swagger-parser from npm (installed once into
# ~/.cache/coupond/tools, like buf): schema and $ref checks.
#   gateway/validate-openapi.sh FILE
# Prints "openapi: valid, N paths, M operations" or the validator's error,
# and exits non-zero on an invalid document.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 FILE" >&2; exit 2; }
FILE="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
source "$(dirname "$0")/../scripts/tools.sh"
# Installed from gateway/openapi-validator's lockfile (every transitive
# package pinned), into a directory named after the lockfile's hash.
LOCK="$(dirname "$0")/openapi-validator"
dir="$TOOLS_DIR/openapi-validator-$(sha256sum "$LOCK/package-lock.json" | cut -c1-12)"
if [ ! -f "$dir/node_modules/@apidevtools/swagger-parser/package.json" ]; then
  tmp="$(mktemp -d "$TOOLS_DIR/openapi-validator.XXXXXX")"
  cp "$LOCK/package.json" "$LOCK/package-lock.json" "$tmp/"
  npm ci --silent --no-audit --no-fund --prefix "$tmp" --cache "$CACHE/npm" >&2
  rm -rf "$dir" && mv "$tmp" "$dir"
fi
NODE_PATH="$dir/node_modules" node - "$FILE" <<'JS'
const SwaggerParser = require("@apidevtools/swagger-parser");
const file = process.argv[2];
SwaggerParser.validate(file).then(
  (api) => {
    const paths = Object.keys(api.paths || {});
    const ops = paths.reduce((n, p) => n + Object.keys(api.paths[p]).filter(
      (m) => ["get", "put", "post", "delete", "patch", "head", "options"].includes(m)).length, 0);
    const version = api.swagger ? `Swagger ${api.swagger}` : `OpenAPI ${api.openapi}`;
    console.log(`openapi: valid ${version}, ${paths.length} paths, ${ops} operations (${file})`);
    for (const p of paths.sort()) {
      for (const m of Object.keys(api.paths[p]).sort()) console.log(`operation: ${m.toUpperCase()} ${p}`);
    }
  },
  (err) => {
    console.error(`openapi: INVALID ${file}: ${err.message}`);
    process.exit(1);
  },
);
JS
