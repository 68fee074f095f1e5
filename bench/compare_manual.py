#!/usr/bin/env python3
"""vmigrate against the same live migration driven by hand over QMP, side by side in one run.

For each scenario, rounds alternate between the two drivers on fresh guests:
  vmigrate  `vmigrate vm start` + `vmigrate migrate --live --json` (its own figures)
  manual    this script starts both QEMUs itself with the same command line vmigrate uses and
            does what a person would over raw QMP: qmp_capabilities, events on both sides, the
            same max-bandwidth, migrate-incoming, migrate, wait for completed on both sides, cont.
Both report total time (destination launch to destination running) and downtime (the source's
STOP event to the destination's RESUME event, QEMU's own timestamps), so the numbers compare.

Usage: bench/compare_manual.py [--rounds N] [--settle S] [--build DIR] [--out FILE]
Medians per scenario and the ratio vmigrate / manual go to stdout and, as Markdown, to --out.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = [("idle 1 GiB", 1024, 0), ("1 GiB dirtying 50 MiB/s", 1024, 50)]
BANDWIDTH = 1 << 40  # what vmigrate sets when no --bandwidth is given


class QMP:
    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.01)
        self.f = self.s.makefile("rw")
        self.events = []
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def _read(self):
        m = json.loads(self.f.readline())
        if "event" in m:
            self.events.append(m)
        return m

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            m = self._read()
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise RuntimeError("%s: %s" % (name, m["error"]["desc"]))

    def wait_event(self, name, pred=lambda m: True, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in self.events:
                if m["event"] == name and pred(m):
                    return m
            self.s.settimeout(max(0.01, deadline - time.time()))
            self._read()
        raise TimeoutError(name)


def ts(ev):
    return ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6


QEMU = "qemu-system-x86_64"  # replaced in main() by the QEMU vmigrate itself runs


def qemu_argv(d, kernel, mem, rate, incoming):
    argv = [QEMU, "-name", "guest=bench", "-machine", "pc,accel=tcg",
            "-cpu", "qemu64", "-m", "%dM" % mem, "-smp", "1", "-nodefaults",
            "-no-user-config", "-display", "none",
            "-chardev", "socket,id=q,path=%s/qmp.sock,server=on,wait=off" % d,
            "-mon", "chardev=q,mode=control", "-serial", "file:%s/serial.log" % d,
            "-kernel", kernel, "-append", "vmig.dirty_mib_s=%d" % rate]
    return argv + (["-S", "-incoming", "defer"] if incoming else [])


def wait_ready(d):
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if "VMIG-READY" in open(os.path.join(d, "serial.log")).read():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise TimeoutError("guest not ready")


def run_manual(work, kernel, mem, rate):
    src_d, dst_d = os.path.join(work, "src"), os.path.join(work, "dst")
    os.makedirs(src_d)
    os.makedirs(dst_d)
    procs = [subprocess.Popen(qemu_argv(src_d, kernel, mem, rate, False))]
    try:
        src = QMP(src_d + "/qmp.sock")
        wait_ready(src_d)
        t0 = time.monotonic()
        procs.append(subprocess.Popen(qemu_argv(dst_d, kernel, mem, rate, True)))
        dst = QMP(dst_d + "/qmp.sock")
        caps = [{"capability": "events", "state": True}]
        src.cmd("migrate-set-capabilities", capabilities=caps)
        dst.cmd("migrate-set-capabilities", capabilities=caps)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": BANDWIDTH})
        uri = "unix:%s/migrate.sock" % dst_d
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        src.wait_event("MIGRATION", lambda m: m["data"]["status"] in ("completed", "failed"))
        dst.wait_event("MIGRATION", lambda m: m["data"]["status"] in ("completed", "failed"))
        dst.cmd("cont")
        resume = dst.wait_event("RESUME")
        total = (time.monotonic() - t0) * 1000
        stop = src.wait_event("STOP")
        return {"total_ms": total, "downtime_ms": (ts(resume) - ts(stop)) * 1000}
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_vmigrate(work, cli, kernel, mem, rate):
    spec = os.path.join(work, "bench.json")
    with open(spec, "w") as f:
        json.dump({"name": "bench", "memory_mib": mem, "kernel": kernel,
                   "append": "vmig.dirty_mib_s=%d" % rate}, f)
    base = [cli, "--state-dir", os.path.join(work, "state")]
    subprocess.run(base + ["vm", "start", spec], check=True, stdout=subprocess.DEVNULL)
    try:
        wait_ready(os.path.join(work, "state", "bench"))
        out = subprocess.run(base + ["migrate", "--live", "--json", "bench", "local"],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out)
        return {"total_ms": r["total_ms"], "downtime_ms": r["downtime_ms"]}
    finally:
        subprocess.run(base + ["vm", "stop", "bench"], stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6,
                    help="rounds per scenario; even, so each driver goes first equally often")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between runs, so one run's QEMU teardown does not slow the next")
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.rounds % 2:
        ap.error("--rounds must be even: the driver that goes first in a round is measured "
                 "faster on a shared 2-core machine, so both must go first equally often")
    cli = os.path.abspath(os.path.join(a.build, "vmigrate"))
    kernel = os.path.abspath(os.path.join(a.build, "guest", "vmig-guest.elf"))
    # Both drivers run the same QEMU: the one this vmigrate runs ($VMIG_QEMU or its build's).
    global QEMU
    ver = json.loads(subprocess.run([cli, "version", "--json"], check=True,
                                    capture_output=True, text=True).stdout)
    QEMU = ver["qemu"]
    print("QEMU %s (%s) for both drivers" % (ver.get("qemu_version"), QEMU), file=sys.stderr)
    rows = []
    for label, mem, rate in SCENARIOS:
        res = {"vmigrate": [], "manual": []}
        for i in range(a.rounds):
            for who in ("vmigrate", "manual") if i % 2 == 0 else ("manual", "vmigrate"):
                work = tempfile.mkdtemp(prefix="vmig-bench-")
                try:
                    r = (run_vmigrate(work, cli, kernel, mem, rate) if who == "vmigrate"
                         else run_manual(work, kernel, mem, rate))
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                time.sleep(a.settle)
                res[who].append(r)
                print("%-26s %-8s round %d: total %7.0f ms  downtime %5.0f ms"
                      % (label, who, i + 1, r["total_ms"], r["downtime_ms"]), flush=True)
        keys = ("total_ms", "downtime_ms")
        med = {w: {k: statistics.median(x[k] for x in res[w]) for k in keys} for w in res}
        rng = {w: {k: (min(x[k] for x in res[w]), max(x[k] for x in res[w])) for k in keys}
               for w in res}
        rows.append((label, med, rng))
    lines = ["| scenario | driver | total ms median (min-max) | downtime ms median (min-max) |",
             "|---|---|---|---|"]
    for label, med, rng in rows:
        for w in ("vmigrate", "manual"):
            lines.append("| %s | %s | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) |" % (
                label, w, med[w]["total_ms"], *rng[w]["total_ms"], med[w]["downtime_ms"],
                *rng[w]["downtime_ms"]))
        lines.append("| %s | ratio vmigrate/manual | %.2f | %.2f |" % (
            label, med["vmigrate"]["total_ms"] / med["manual"]["total_ms"],
            med["vmigrate"]["downtime_ms"] / max(med["manual"]["downtime_ms"], 1e-9)))
    table = "\n".join(lines)
    print("\n%d rounds per driver per scenario, TCG, QEMU on this host\n\n%s" % (a.rounds, table))
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
