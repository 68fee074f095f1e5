#!/usr/bin/env python3
"""How long does the engine hold the embedding program's thread, and how fast is `vm list`
while a migration runs?

1. The two examples (examples/poll-loop.c, examples/glib-loop.c) each migrate the built-in
   guest (1 GiB, dirtying 50 MiB/s by default) from their own loop while a 10 ms timer of
   their own ticks, and print the longest gap between two ticks (max_tick_gap_ms).  Rounds
   alternate the two programs.
2. `vmigrate vm list --json` is run N times, from another process, while a live migration
   capped at 64 MiB/s runs: wall time per call, and whether it saw the VM's run state through
   the reader monitor and the migration's progress.

Usage: bench/embed.py [--rounds N] [--mem MIB] [--dirty MIB_S] [--build DIR] [--out FILE]
Prints one JSON object; --out writes it to FILE too.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def summary(xs):
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)} if xs else None


def run_examples(build, rounds, mem, dirty):
    out = {}
    for r in range(rounds):
        for ex in ("poll", "glib"):
            with tempfile.TemporaryDirectory(prefix="vmig-embed-") as state:
                env = dict(os.environ, VMIG_STATE_DIR=state)
                p = subprocess.run([os.path.join(build, "examples", "vmig-example-" + ex),
                                    str(mem), str(dirty)], env=env, capture_output=True,
                                   text=True, timeout=600)
                line = json.loads(p.stdout.strip().splitlines()[-1])
                out.setdefault(ex, []).append(line)
                print(f"round {r + 1} {ex}: {p.stdout.strip()}", file=sys.stderr)
    res = {}
    for ex, lines in out.items():
        res[ex] = {
            "runs": len(lines),
            "completed_and_verified": sum(1 for l in lines if l["status"] == "completed"
                                          and l["verified"]),
            "max_tick_gap_ms": summary([l["max_tick_gap_ms"] for l in lines]),
            "total_ms": summary([l.get("total_ms", 0) for l in lines]),
            "downtime_ms": summary([l.get("downtime_ms", 0) for l in lines]),
        }
    return res


def run_list(build, calls, mem):
    cli = os.path.join(build, "vmigrate")
    with tempfile.TemporaryDirectory(prefix="vmig-list-") as state:
        g = ["--state-dir", state]
        spec = os.path.join(state, "vm.json")
        kernel = os.environ.get("VMIG_GUEST", os.path.join(build, "guest", "vmig-guest.elf"))
        with open(spec, "w") as f:
            json.dump({"name": "listed", "memory_mib": mem, "kernel": kernel,
                       "append": "vmig.dirty_mib_s=10"}, f)
        subprocess.run([cli, *g, "vm", "start", spec], check=True, capture_output=True)
        time.sleep(3)  # the guest fills its memory
        mig = subprocess.Popen([cli, *g, "migrate", "--live", "--bandwidth", "64", "listed",
                                "local"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        walls, seen = [], 0
        for _ in range(calls):
            t0 = time.monotonic()
            p = subprocess.run([cli, *g, "vm", "list", "--json"], capture_output=True, text=True)
            walls.append(round((time.monotonic() - t0) * 1000, 1))
            vms = [v for v in json.loads(p.stdout) if v["name"] == "listed"]
            if vms and vms[0]["state"] == "running" and "job" in vms[0]:
                seen += 1
            time.sleep(0.2)
        mig.wait(timeout=300)
        subprocess.run([cli, *g, "vm", "stop", "listed"], capture_output=True)
    return {"calls": calls, "saw_running_and_job": seen, "wall_ms": summary(walls),
            "note": "wall time of the whole `vmigrate vm list` process, start-up included"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mem", type=int, default=1024)
    ap.add_argument("--dirty", type=int, default=50)
    ap.add_argument("--list-calls", type=int, default=10)
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    res = {"guest": {"mem_mib": a.mem, "dirty_mib_s": a.dirty},
           "examples": run_examples(build, a.rounds, a.mem, a.dirty),
           "vm_list_during_migration": run_list(build, a.list_calls, 512)}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
