#!/usr/bin/env bash
# Builds tansu 0.6.0 from crates.io with scripts/tansu/patch.py applied to
# its storage and broker crates (see there for the fixes), honouring tansu's own
# Cargo.lock, and installs the binary as $1/bin/tansu. Used by stack.sh once
# per machine; the build directory is kept for incremental rebuilds.
set -euo pipefail
ROOT="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${COUPOND_CACHE:-$HOME/.cache/coupond}"
WORK="$CACHE/tansu-build"
VERSION=0.6.0
mkdir -p "$WORK/fetch/src" "$ROOT/bin"

# Download the published sources of tansu and its dependencies.
cat >"$WORK/fetch/Cargo.toml" <<TOML
[package]
name = "fetch-tansu"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
tansu = { version = "=$VERSION", default-features = false }
# Named too, as tansu only pulls it in behind a feature and the copy below
# must not depend on what an earlier build left in the registry.
tansu-broker = { version = "=$VERSION", default-features = false }
tansu-storage = { version = "=$VERSION", default-features = false }
TOML
touch "$WORK/fetch/src/lib.rs"
cargo fetch --manifest-path "$WORK/fetch/Cargo.toml" >&2
REG="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)"

CRATES=(tansu tansu-storage tansu-broker)
for c in "${CRATES[@]}"; do
  rm -rf "$WORK/$c-$VERSION"
  cp -r "$REG/$c-$VERSION" "$WORK/"
  chmod -R u+w "$WORK/$c-$VERSION"
done
python3 "$HERE/patch.py" "$WORK/tansu-storage-$VERSION" "$WORK/tansu-broker-$VERSION"
cat >>"$WORK/tansu-$VERSION/Cargo.toml" <<TOML

[patch.crates-io]
tansu-storage = { path = "../tansu-storage-$VERSION" }
tansu-broker = { path = "../tansu-broker-$VERSION" }
TOML
# `cargo build` keeps the published Cargo.lock, changing only the patched entry.
CARGO_TARGET_DIR="$WORK/target" cargo build --release --features libsql \
  --manifest-path "$WORK/tansu-$VERSION/Cargo.toml" >&2
install -m 0755 "$WORK/target/release/tansu" "$ROOT/bin/tansu.new"
mv "$ROOT/bin/tansu.new" "$ROOT/bin/tansu"
echo "patched tansu $VERSION installed in $ROOT/bin" >&2
