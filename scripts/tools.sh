# Sourced by scripts: pinned tools installed once per machine into a cache
# outside the clone (COUPOND_CACHE, default ~/.cache/coupond).
CACHE="${COUPOND_CACHE:-$HOME/.cache/coupond}"
TOOLS_DIR="$CACHE/tools"
BUF_VERSION=1.75.0

# Prints the path of a pinned buf (from the npm registry), installing it.
buf_path() {
  local dir="$TOOLS_DIR/buf-$BUF_VERSION"
  if [ ! -x "$dir/node_modules/.bin/buf" ]; then
    local tmp
    mkdir -p "$TOOLS_DIR"
    tmp="$(mktemp -d "$dir.XXXXXX")"
    npm install --silent --no-audit --no-fund --prefix "$tmp" "@bufbuild/buf@$BUF_VERSION" >&2
    rm -rf "$dir" && mv "$tmp" "$dir"
  fi
  echo "$dir/node_modules/.bin/buf"
}

# ensure_go_tool PACKAGE VERSION: `go install`s it into $TOOLS_DIR/go-bin
# unless that version is there already; prints the binary's path.
ensure_go_tool() {
  local pkg="$1" version="$2" name dir
  name="$(basename "$pkg")"
  dir="$TOOLS_DIR/go-bin/$name-$version"
  if [ ! -x "$dir/$name" ]; then
    # Built aside and moved in whole: a script running beside this one
    # never finds a binary still being written.
    mkdir -p "$dir"
    local tmp
    tmp="$(mktemp -d "$dir.XXXXXX")"
    GOBIN="$tmp" go install "$pkg@$version" >&2
    mv -f "$tmp/$name" "$dir/$name"
    rmdir "$tmp"
  fi
  echo "$dir/$name"
}
