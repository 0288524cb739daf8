#!/usr/bin/env bash
# Builds the pinned third-party commands (kube-apiserver, kubectl, etcd, helm, wireguard-go) from the Go
# module proxy and links them into .venv/bin, where ciphermesh looks for them (ciphermesh.store.third_party).
#
# Each folder third_party/<component>/ is a Go module whose go.mod and go.sum pin exact releases; its file
# `binaries` says what to build. The build lands in a cache outside the checkout, keyed by a hash of those
# files, the Go version and the build flags, so any clone on this machine reuses it and a changed pin
# rebuilds: $CIPHERMESH_THIRD_PARTY_CACHE (default /var/cache/ciphermesh/third-party)/<component>-<hash>/.
# A warm cache costs a hash and a few symlinks. Builds run under `nice` so they do not starve other work.
# Usage: scripts/third-party.sh [COMPONENT...]   (default: every folder of third_party/)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CIPHERMESH_THIRD_PARTY_CACHE:-/var/cache/ciphermesh/third-party}
LINK_DIR=${CIPHERMESH_THIRD_PARTY_LINKS:-.venv/bin}
BUILD_FLAGS=(-mod=readonly -trimpath)
BASE_LDFLAGS="-s -w"

command -v go >/dev/null || { echo "third-party: 'go' (Go 1.26) is not on PATH; install it first" >&2; exit 1; }
mkdir -p "$CACHE" "$LINK_DIR"

components=("$@")
if ((${#components[@]} == 0)); then
  for dir in third_party/*/; do
    [ -f "$dir/go.mod" ] && components+=("$(basename "$dir")")
  done
fi

key_of() {  # the cache key of a component: what decides the bytes of its binaries
  local dir=$1
  { cat "$dir/go.mod" "$dir/go.sum" "$dir/binaries" "$dir"/*.go; go version
    echo "${BUILD_FLAGS[*]} $BASE_LDFLAGS"; } | sha256sum | cut -c1-16
}

binaries_of() {  # the lines of a component's `binaries` file without comments
  grep -v '^[[:space:]]*\(#\|$\)' "$1/binaries"
}

build() {  # build a component into $2 (a fresh directory), timing each binary
  local dir=$1 out=$2 name pkg extra ldflags start
  while read -r name pkg extra; do
    ldflags="$BASE_LDFLAGS"
    if [ -n "$extra" ]; then
      # {MODULE} in the extra flags is that module's version as this go.mod pins it.
      while [[ $extra =~ \{([^}]+)\} ]]; do
        local mod=${BASH_REMATCH[1]} version
        version=$(cd "$dir" && go list -m -f '{{.Version}}' "$mod")
        extra=${extra//\{$mod\}/$version}
      done
      ldflags="$ldflags $extra"
    fi
    echo "third-party: building $name from $pkg (cold: minutes; kube-apiserver about half an hour)" >&2
    start=$SECONDS
    (cd "$dir" && nice -n 19 go build "${BUILD_FLAGS[@]}" -ldflags="$ldflags" -o "$out/bin/$name" "$pkg")
    echo "$name $((SECONDS - start))" >>"$out/build-seconds"
  done < <(binaries_of "$dir")
}

for component in "${components[@]}"; do
  dir=third_party/$component
  [ -f "$dir/go.mod" ] && [ -f "$dir/binaries" ] || { echo "third-party: no module $dir" >&2; exit 1; }
  dest=$CACHE/$component-$(key_of "$dir")
  # One builder per cache entry; a second setup waits for it and then finds the entry done.
  exec 9>"$dest.lock"
  flock 9
  if [ ! -f "$dest/complete" ]; then
    tmp=$(mktemp -d "$dest.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/bin"
    build "$dir" "$tmp"
    touch "$tmp/complete"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
    echo "third-party: $component built into $dest ($(tr '\n' ' ' <"$dest/build-seconds"| sed 's/ $//') s)" >&2
  fi
  exec 9>&-
  while read -r name _; do
    ln -sfn "$dest/bin/$name" "$LINK_DIR/$name"
  done < <(binaries_of "$dir")
done
