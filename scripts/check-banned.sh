#!/usr/bin/env bash
# Library code never prints, never exits, never sleeps and never blocks in poll(): it returns
# errors and waits only on the engine's ring (docs/architecture.md).  Like libvirt's
# syntax-check, this greps the library's directories for the calls that would break that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dirs=(common ring qmp transport cpu engine)
banned='\b(printf|fprintf|puts|putchar|perror|exit|abort|system|atoi|atol|strtok|sprintf|vsprintf|strcpy|strcat|strncpy|g_usleep|usleep|sleep|nanosleep|poll|ppoll|select|g_main_loop_run)\s*\('
# _exit() in a forked child before exec is how a child ends: allowed.  So is a line marked
# "banned-ok: REASON" (the guard process of engine/vm.c, a forked child, waits in poll()).
files=()
for d in "${dirs[@]}"; do
    files+=("$d"/*.c)
done
hits=$(grep -nE "$banned" "${files[@]}" | grep -vE '\b_exit\s*\(|banned-ok: ' || true)
if [ -n "$hits" ]; then
    echo "banned calls in library code:" >&2
    echo "$hits" >&2
    exit 1
fi
echo "check-banned: no banned calls in ${#files[@]} files of ${dirs[*]}"
