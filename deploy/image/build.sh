#!/usr/bin/env bash
# `make image`: build the Dockerfile with buildah, on a machine with no Docker daemon and no Docker Hub.
# The Dockerfile's base, debian:bookworm-slim, is made here from Debian's own packages (mmdebstrap, the
# "apt" variant with merged /usr and the slim image's dpkg path excludes) and imported under that name,
# once per machine: a later build finds it in the local image store. Elsewhere the same Dockerfile
# builds with `docker build` from Docker Hub's debian:bookworm-slim.
#
#   deploy/image/build.sh [IMAGE]      env: SGX_DCAP=1 (Intel's DCAP library), REFRESH_BASE=1 (remake the base)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${1:-localhost/quotehelper:0.1.0}
BASE=docker.io/library/debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}

for tool in buildah podman mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "make image: $tool not found (Debian: apt-get install buildah podman mmdebstrap runc)" >&2; exit 1; }
done

if [ "${REFRESH_BASE:-0}" = 1 ] || ! podman image exists "$BASE"; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "make image: building $BASE from Debian packages (mmdebstrap, $MIRROR) ..."
  t0=$SECONDS
  mmdebstrap --quiet --variant=apt --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tmp/rootfs.tar" \
    "deb $MIRROR/debian bookworm main" "deb $MIRROR/debian bookworm-updates main" \
    "deb $MIRROR/debian-security bookworm-security main"
  podman import --quiet --change 'CMD ["bash"]' \
    --change 'LABEL org.opencontainers.image.description="Debian bookworm, mmdebstrap (quotehelper make image)"' \
    "$tmp/rootfs.tar" "$BASE" >/dev/null
  echo "make image: $BASE ready ($((SECONDS - t0)) s)"
fi

# chroot isolation: RUN steps need no OCI runtime, cgroups or rlimit changes (crun refuses this
# machine's hybrid cgroup layout); BUILDAH_ISOLATION=oci overrides it where a runtime works. --layers:
# steps whose inputs did not change (the apt-get installs; pip when pyproject.toml and src/ did not)
# come from the local layer cache.
secret=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && secret=(--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)
t0=$SECONDS
buildah build --isolation "${BUILDAH_ISOLATION:-chroot}" --network host "${secret[@]}" \
  --build-arg SGX_DCAP="${SGX_DCAP:-0}" --layers -t "$IMAGE" .
echo "make image: $IMAGE built in $((SECONDS - t0)) s, $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
