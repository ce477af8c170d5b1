#!/usr/bin/env bash
# Builds the node image of cluster/Dockerfile on a machine that cannot pull images
# from any registry (only Debian package mirrors are needed):
#
#   1. builds the release binary on this machine if needed (cargo build --release);
#   2. makes a Debian base image with debootstrap (--variant=minbase, slimmed like
#      debian:*-slim) and `docker import`s it, once: later runs reuse it;
#   3. builds cluster/Dockerfile's runtime stage, verbatim, on that base with the
#      binary stripped of its debug line tables.
#
# Settings (environment):
#   SQ_IMAGE          the image to build            (session-queue:latest)
#   SQ_BASE_IMAGE     use this existing base image instead of debootstrap, e.g.
#                     debian:bookworm-slim where images can be pulled
#   SQ_BASE_SUITE     Debian suite of the debootstrap base (bookworm). The binary is
#                     built here, so the suite's glibc must be at least this machine's.
#   SQ_DEBIAN_MIRROR  (http://deb.debian.org/debian)
#   SQ_DEBIAN_SECURITY_MIRROR  (http://deb.debian.org/debian-security)
#   SQ_BIN            use this binary instead of building one
#
# A rebuilt base (`docker rmi session-queue-base:bookworm`, then run again) picks
# up Debian's latest security updates.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
image=${SQ_IMAGE:-session-queue:latest}
suite=${SQ_BASE_SUITE:-bookworm}
mirror=${SQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=${SQ_BASE_IMAGE:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/session-queue/target}
export PATH="$HOME/.cargo/bin:$PATH"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! docker info >/dev/null 2>&1; then
  echo "image.sh: no Docker engine answers (docker info failed)" >&2
  exit 1
fi

work=$(mktemp -d)
cleanup() { $sudo rm -rf "$work"; }
trap cleanup EXIT

# 1. The binary.
if [ -z "${SQ_BIN:-}" ]; then
  "$here/install-deps.sh"
  echo "image.sh: building the release binary (cargo build --release)" >&2
  (cd "$root" && cargo build --release --quiet)
  SQ_BIN="$CARGO_TARGET_DIR/release/session-queue"
fi
[ -x "$SQ_BIN" ] || { echo "image.sh: no binary at $SQ_BIN" >&2; exit 1; }
command -v strip >/dev/null 2>&1 || apt_install binutils

# 2. The base image, made once from Debian packages.
if [ -z "$base" ]; then
  base="session-queue-base:$suite"
  if docker image inspect "$base" >/dev/null 2>&1; then
    echo "image.sh: reusing base image $base" >&2
  else
    command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || apt_install debootstrap
    export PATH="$PATH:/usr/sbin:/sbin"
    rootfs="$work/rootfs"
    echo "image.sh: making base image $base with debootstrap from $mirror (a minute or two)" >&2
    $sudo debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2
      exit 1
    }
    # Security and point-release updates, then slim it down as debian:*-slim is:
    # no documentation, manual pages or translations (now or in later apt-get
    # installs), no package lists or caches.
    security=${SQ_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
      "$mirror" "$suite" "$mirror" "$suite" "$security" "$suite" | $sudo tee "$rootfs/etc/apt/sources.list" >/dev/null
    $sudo chroot "$rootfs" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -qq' \
      >>"$work/debootstrap.log" 2>&1 || {
      tail -n 30 "$work/debootstrap.log" >&2
      exit 1
    }
    $sudo tee "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
    $sudo find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    $sudo find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    $sudo rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/lintian/*
    $sudo find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    $sudo rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
      "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/etc/machine-id
    # Docker provides these at run time.
    $sudo rm -f "$rootfs/etc/hostname" "$rootfs/etc/resolv.conf"
    $sudo tar -C "$rootfs" --numeric-owner -c . |
      docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $suite" - "$base" >/dev/null
    echo "image.sh: made $base" >&2
  fi
fi

# 3. The node image: cluster/Dockerfile's runtime stage on that base, with the binary
#    from this build context instead of the Rust build stage.
ctx="$work/context"
mkdir -p "$ctx"
strip --strip-debug -o "$ctx/session-queue" "$SQ_BIN"
runtime=$(sed -n '/^FROM .* AS runtime$/,$p' "$here/Dockerfile")
[ -n "$runtime" ] || { echo "image.sh: no 'FROM ... AS runtime' stage in $here/Dockerfile" >&2; exit 1; }
{
  echo "ARG BASE_IMAGE"
  echo "FROM scratch AS build"
  echo "LABEL session-queue.image-sh=binary-stage"
  echo "COPY session-queue /out/session-queue"
  echo "$runtime"
} >"$ctx/Dockerfile"
echo "image.sh: building $image on $base" >&2
old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
docker build --quiet --build-arg BASE_IMAGE="$base" -t "$image" "$ctx" >/dev/null
# No pile of old images: the one this build replaced (unless a container still uses
# it) and the throw-away stage that carried the binary.
new=$(docker image inspect -f '{{.Id}}' "$image")
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  docker rmi "$old" >/dev/null 2>&1 || true
fi
docker image prune -f --filter label=session-queue.image-sh=binary-stage >/dev/null 2>&1 || true

# The binary must start in the image (a host newer than the base's glibc would not).
version=$(docker run --rm --entrypoint session-queue "$image" --version) || {
  echo "image.sh: the binary does not run in $image (built on a newer system than $suite?)" >&2
  exit 1
}
size=$(docker image inspect -f '{{.Size}}' "$image")
echo "image.sh: built $image ($version, $((size / 1000000)) MB)"
