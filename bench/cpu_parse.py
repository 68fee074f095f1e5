#!/usr/bin/env python3
"""Time 'vmigrate cpu decode' on InstLatx64 dumps of the older dialect, which repeats a leaf
once per subleaf (issue 11, item 10: 4,000 repeated lines took 15 s while the parse was cubic).

    python3 bench/cpu_parse.py [--cli build/vmigrate] [--cpudata ../shared/cpudata]

Prints lines, bytes and the median of 5 runs for 4k, 40k and 400k repeated lines.  A linear
parse keeps the time per line flat; the unit test bounds the work (lookups), not the time.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=os.path.join(HERE, "..", "build", "vmigrate"))
    ap.add_argument("--cpudata", default=os.path.join(HERE, "..", "..", "shared", "cpudata"))
    a = ap.parse_args()
    src = os.path.join(a.cpudata, "instlatx64", "GenuineIntel00306E4_IvyBridgeEP_CPUID.txt")
    with open(src) as f:
        text = f.read()
    head = text[:text.index("CPUID 00000000", 1)]  # the first logical CPU
    line = "CPUID 00000004  \t3C004121-01C0003F-0000003F-00000000\n"
    print(f"{'lines':>8} {'bytes':>10} {'median s':>9} {'us/line':>8}")
    for n in (4000, 40000, 400000):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write(head + line * n)
            path = f.name
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([a.cli, "cpu", "decode", path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t0)
        med = statistics.median(runs)
        print(f"{n:>8} {os.path.getsize(path):>10} {med:>9.3f} {med / n * 1e6:>8.2f}")
        os.unlink(path)


if __name__ == "__main__":
    main()
