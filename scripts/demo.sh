#!/usr/bin/env bash
# Set up, build, and run the main job: a verified live migration on a local QEMU pair.
# Arguments go to 'vmigrate demo' (default: --mem-mib 1024 --dirty-mib-s 50 --verbose).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
if (($# == 0)); then
    set -- --mem-mib 1024 --dirty-mib-s 50 --verbose
fi
exec "$ROOT/build/vmigrate" demo "$@"
