#!/usr/bin/env bash
# Installs what vmigrate needs from Debian's packages (only what is missing), then builds it
# into build/.  Sourced by demo.sh and test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS=(gcc libc6-dev binutils cmake ninja-build pkg-config libjson-c-dev libglib2.0-dev
      liburing-dev libcriterion-dev qemu-system-x86)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "vmigrate setup: installing ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# build DIR [cmake options...]
vmig_build() {
    local dir="$1"; shift
    cmake -S "$ROOT" -B "$ROOT/$dir" -G Ninja -DVMIG_WERROR=ON "$@" >/dev/null
    cmake --build "$ROOT/$dir" >/dev/null
}
vmig_build build
