#!/usr/bin/env bash
# The fault matrix (tests/faults/faults.c) at any size: builds build/ if needed, then runs
# RUNS seeded runs (default 100) from seed BASE (default 1) on the default QEMU, replaying
# tests/faults/regressions.txt first.  Prints a line per run and the counts by fault kind;
# exits 1 if any run lost a VM, failed its memory check or left a stray process or file.
# As root the state directory is a tmpfs, so "disk full" is real.
# Usage: scripts/faults.sh [RUNS] [BASE] [--kind NAME] [--mem MIB]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
RUNS="${1:-100}"
BASE="${2:-1}"
shift 2 || shift $# || true
export VMIG_CLI="$ROOT/build/vmigrate" VMIG_GUEST="$ROOT/build/guest/vmig-guest.elf"
exec "$ROOT/build/tests/vmig-faults" --runs "$RUNS" --seed "$BASE" \
    --regressions "$ROOT/tests/faults/regressions.txt" "$@"
