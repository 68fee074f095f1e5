#!/usr/bin/env bash
# Installs what vmigrate needs from Debian's packages (only what is missing), unpacks the QEMU
# the tests and the demo run by default, then builds vmigrate into build/.  Sourced by demo.sh
# and test.sh; safe to run again.  Works as root, or as a user who may sudo.
#
# Two QEMUs live side by side:
#   - Debian 12's stock QEMU 7.2 (package qemu-system-x86), installed system-wide: the
#     compatibility target.  Under TCG it loses guest writes in live migration (fixed in 9.0).
#   - QEMU from Debian's bookworm-backports suite (10.0.2 when this was written), unpacked
#     under build/qemu/ with apt-get download and dpkg -x: the default of the tests and the demo.
#     Nothing of it is installed system-wide and the system's apt sources are left as they are:
#     apt reads the backports index into build/qemu/apt/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PKGS=(gcc libc6-dev binutils cmake ninja-build pkg-config libjson-c-dev libglib2.0-dev
      liburing-dev libcriterion-dev qemu-system-x86 qemu-utils)
QEMU_OLD=/usr/bin/qemu-system-x86_64
QEMU_DIR="$ROOT/build/qemu"
QEMU_NEW="$QEMU_DIR/bin/qemu-system-x86_64"
QEMU_NEW_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios qemu-utils)
QEMU_NEW_TOOLS=(qemu-img qemu-nbd) # storage copy; next to the QEMU binary, the engine's first pick
QEMU_NEW_MIN=9.0 # the first QEMU whose TCG keeps guest writes during live migration

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "vmigrate setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# The Debian mirror the system already uses for bookworm (deb.debian.org by default).
debian_mirror() {
    local uri
    uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
          awk '$2 == "bookworm" && $1 ~ /debian\/?$/ { print $1; exit }')
    echo "${VMIG_DEBIAN_MIRROR:-${uri:-http://deb.debian.org/debian/}}"
}

qemu_version() { # prints major.minor.micro of QEMU binary $1
    "$1" -version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9.]*\).*/\1/p'
}

version_ge() { # $1 >= $2, dotted versions
    [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]
}

# Unpacks QEMU from bookworm-backports into build/qemu/ unless a good one is there already.
setup_qemu_new() {
    local have
    have=$(qemu_version "$QEMU_NEW" || true)
    if [ -n "$have" ] && version_ge "$have" "$QEMU_NEW_MIN" && [ -x "$QEMU_DIR/bin/qemu-img" ]; then
        return 0
    fi
    echo "vmigrate setup: fetching QEMU from bookworm-backports into $QEMU_DIR" >&2
    rm -rf "$QEMU_DIR"
    local apt="$QEMU_DIR/apt" keyring=/usr/share/keyrings/debian-archive-keyring.gpg opt=""
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$QEMU_DIR/root"
    [ -r "$keyring" ] && opt="[signed-by=$keyring] "
    echo "deb ${opt}$(debian_mirror) bookworm-backports main" >"$apt/sources.list"
    local aptopts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
                   -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                   -o "APT::Sandbox::User=$(id -un)" -qq)
    apt-get "${aptopts[@]}" update
    (cd "$apt/debs" && apt-get "${aptopts[@]}" download \
        "${QEMU_NEW_PKGS[@]/%//bookworm-backports}")
    for deb in "$apt/debs"/*.deb; do
        dpkg-deb -x "$deb" "$QEMU_DIR/root"
    done
    local real="$QEMU_DIR/root/usr/bin/qemu-system-x86_64"
    local bin
    for bin in "$real" "$QEMU_DIR/root/usr/bin/qemu-img" "$QEMU_DIR/root/usr/bin/qemu-nbd"; do
        if ldd "$bin" | grep -q 'not found'; then
            echo "vmigrate setup: $bin lacks shared libraries:" >&2
            ldd "$bin" | grep 'not found' >&2
            return 1
        fi
    done
    # QEMU looks for firmware in its build-time prefix; -L points it at the unpacked tree
    # (option ROMs come from the system's ipxe-qemu, which QEMU 7.2's package pulls in).
    mkdir -p "$QEMU_DIR/bin"
    cat >"$QEMU_NEW.tmp" <<EOF
#!/bin/sh
# QEMU from bookworm-backports, unpacked by scripts/setup.sh; -L finds its own firmware.
exec "$real" -L "$QEMU_DIR/root/usr/share/qemu" -L "$QEMU_DIR/root/usr/share/seabios" \\
    -L /usr/lib/ipxe/qemu "\$@"
EOF
    chmod +x "$QEMU_NEW.tmp"
    mv "$QEMU_NEW.tmp" "$QEMU_NEW"
    local tool
    for tool in "${QEMU_NEW_TOOLS[@]}"; do
        ln -sf "$QEMU_DIR/root/usr/bin/$tool" "$QEMU_DIR/bin/$tool"
    done
    have=$(qemu_version "$QEMU_NEW")
    if [ -z "$have" ] || ! version_ge "$have" "$QEMU_NEW_MIN"; then
        echo "vmigrate setup: bookworm-backports gave QEMU '${have:-?}', need >= $QEMU_NEW_MIN" >&2
        return 1
    fi
    rm -rf "$apt"
}
mkdir -p "$ROOT/build"
setup_qemu_new

# build DIR [cmake options...]
vmig_build() {
    local dir="$1"; shift
    cmake -S "$ROOT" -B "$ROOT/$dir" -G Ninja -DVMIG_WERROR=ON \
        -DVMIG_DEFAULT_QEMU="$QEMU_NEW" -DVMIG_TEST_QEMU_OLD="$QEMU_OLD" "$@" >/dev/null
    cmake --build "$ROOT/$dir" >/dev/null
}
vmig_build build
