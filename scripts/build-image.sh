#!/usr/bin/env bash
# Builds the agent and operator image from the Containerfile with buildah, as root, into buildah's local
# storage (vfs: no overlay mounts needed): ghcr.io/ciphermesh/ciphermesh:<version>.
# Without a reachable container registry, the base debian:12-slim is stood in for by Debian 12's minbase
# made with debootstrap from the apt mirror (the same release; the slim image is minbase without docs).
# Needs: apt-get install --no-install-recommends buildah debootstrap. About 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=docker.io/library/debian:12-slim
TAG=ghcr.io/ciphermesh/ciphermesh:$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/ciphermesh/__init__.py)
bah() { buildah --storage-driver vfs "$@"; }

if ! bah inspect --type image "$BASE" >/dev/null 2>&1 && ! bah pull -q "$BASE" >/dev/null 2>&1; then
  echo "build-image: $BASE cannot be pulled; making it from debootstrap --variant=minbase bookworm" >&2
  rootfs=$(mktemp -d /var/tmp/ciphermesh-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  ctr=$(bah from scratch)
  cp -a "$rootfs"/. "$(bah mount "$ctr")"/
  bah umount "$ctr" >/dev/null
  bah config --cmd /bin/bash "$ctr"
  bah commit -q "$ctr" "$BASE" >/dev/null
  bah rm "$ctr" >/dev/null
fi

# pip in the build trusts what this machine trusts (a TLS-intercepting proxy's CA included); the bundle
# is mounted for the build only, not copied into the image.
ca=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  ca=(--build-arg PIP_CERT=/run/host-ca.crt --volume /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro)
fi
bah bud --isolation chroot --pull-never "${ca[@]}" -f Containerfile -t "$TAG" .
echo "build-image: $TAG"
