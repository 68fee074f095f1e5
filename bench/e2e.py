#!/usr/bin/env python3
"""End to end: the same guest migrated QEMU to QEMU (--direct) and through the relay.

Each run is one `vmigrate demo --json`: it starts the built-in test guest (RAM filled with a
known pattern, rewritten at --dirty-mib-s), migrates it live on this host, and checks every
page on the destination.  Direct: the source QEMU migrates into the destination QEMU's unix
socket.  Relay: into vmigrate's source relay, one TCP connection per channel on loopback to a
local `vmigrate agent` process, which connects each to the destination QEMU.  Configurations
(direct/relay x channels x dirty rates) run in rounds, in an order that rotates every round, so
no configuration always goes first.  A run whose check fails counts as a failure, not a figure.

Reports, per configuration, the median/min/max total time (start of the migration job to the
destination running), downtime (the source's STOP to the destination's RESUME) and QEMU's own
figures, the agent's peak RSS (VmHWM) for relay runs, and the ratio relay/direct of the median
total time for the same channel count and dirty rate.  JSON on stdout; --plot FILE a PNG.

  python3 bench/e2e.py [--mem-mib 1024] [--channels 0,4] [--dirty 0,100] [--rounds 4]
  (channels 0: one stream, no multifd; N: multifd with N channels)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo(vmigrate, mem, dirty, channels, direct, timeout):
    cmd = [vmigrate, "demo", "--json", "--mem-mib", str(mem), "--dirty-mib-s", str(dirty)]
    if channels:
        cmd += ["--parallel-connections", str(channels)]
    if direct:
        cmd.append("--direct")
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": (p.stderr or p.stdout)[-400:], "wall_s": wall}
    r["ok"] = p.returncode == 0 and r.get("verified") is True
    r["wall_s"] = round(wall, 2)
    return r


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmigrate", default=os.path.join(ROOT, "build/vmigrate"))
    ap.add_argument("--mem-mib", type=int, default=1024)
    ap.add_argument("--channels", default="0,4")
    ap.add_argument("--dirty", default="0,100")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--plot")
    a = ap.parse_args()
    if a.plot:
        try:
            import matplotlib  # noqa: F401  (checked before the runs, not after)
        except ImportError:
            sys.exit("e2e.py: --plot needs matplotlib (apt-get install python3-matplotlib)")
    configs = [(d, c, direct) for d in [int(x) for x in a.dirty.split(",")]
               for c in [int(x) for x in a.channels.split(",")] for direct in (True, False)]
    runs = []
    for rnd in range(a.rounds):
        k = rnd % len(configs)
        for dirty, ch, direct in configs[k:] + configs[:k]:
            r = demo(a.vmigrate, a.mem_mib, dirty, ch, direct, a.timeout)
            r.update({"round": rnd, "dirty_mib_s": dirty, "channels_asked": ch,
                      "path": "direct" if direct else "relay"})
            runs.append(r)
            print(f"round {rnd} {r['path']:6} channels={ch} dirty={dirty}: "
                  + (f"total {r['total_ms']} ms, downtime {r['downtime_ms']} ms"
                     if r["ok"] else f"FAILED: {r.get('error', '')}"), file=sys.stderr)
            time.sleep(1)
    summary = []
    for dirty in sorted({r["dirty_mib_s"] for r in runs}):
        for ch in sorted({r["channels_asked"] for r in runs}):
            row = {"dirty_mib_s": dirty, "channels": ch}
            for path in ("direct", "relay"):
                rs = [r for r in runs if r["ok"] and r["path"] == path and
                      r["dirty_mib_s"] == dirty and r["channels_asked"] == ch]
                failed = sum(1 for r in runs if not r["ok"] and r["path"] == path and
                             r["dirty_mib_s"] == dirty and r["channels_asked"] == ch)
                tot = [r["total_ms"] for r in rs]
                row[path] = {
                    "runs": len(rs), "failed": failed,
                    "total_ms_median": med(tot),
                    "total_ms_min": min(tot) if tot else None,
                    "total_ms_max": max(tot) if tot else None,
                    "downtime_ms_median": med([r["downtime_ms"] for r in rs]),
                    "qemu_total_ms_median": med([r["qemu_total_ms"] for r in rs]),
                    "qemu_downtime_ms_median": med([r["qemu_downtime_ms"] for r in rs]),
                    "passes_median": med([r["passes"] for r in rs]),
                }
                if path == "relay":
                    rss = [r["agent_peak_rss_kib"] for r in rs if "agent_peak_rss_kib" in r]
                    row[path]["agent_peak_rss_kib_max"] = max(rss) if rss else None
            d, rl = row["direct"]["total_ms_median"], row["relay"]["total_ms_median"]
            row["relay_over_direct_total"] = round(rl / d, 3) if d and rl else None
            dd, rd = row["direct"]["downtime_ms_median"], row["relay"]["downtime_ms_median"]
            row["relay_over_direct_downtime"] = round(rd / dd, 3) if dd and rd else None
            summary.append(row)
    out = {"mem_mib": a.mem_mib, "rounds": a.rounds, "load": os.getloadavg(),
           "summary": summary, "runs": runs}
    json.dump(out, sys.stdout, indent=1)
    print()
    if a.plot:
        plot(summary, a.plot)


def plot(summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['dirty_mib_s']} MiB/s\n{r['channels'] or 1} ch" for r in summary]
    xs = range(len(summary))
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for i, (key, title) in enumerate((("total_ms_median", "total time (ms)"),
                                      ("downtime_ms_median", "downtime (ms)"))):
        w = 0.38
        ax[i].bar([x - w / 2 for x in xs], [r["direct"][key] or 0 for r in summary], w,
                  label="direct")
        ax[i].bar([x + w / 2 for x in xs], [r["relay"][key] or 0 for r in summary], w,
                  label="relay")
        ax[i].set_xticks(list(xs))
        ax[i].set_xticklabels(labels)
        ax[i].set_title(title + ", median")
        ax[i].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
