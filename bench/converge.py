#!/usr/bin/env python3
"""Convergence under a bandwidth cap: plain pre-copy, auto-converge, post-copy, default policy.

Rows are the test guest's dirty rate as a share of the cap (--rows, percent; default 0, 25, 50,
100, 200).  Columns are how the migration is asked to converge (--cols):
  precopy        --policy none                          (plain pre-copy, as virsh migrate)
  auto_converge  --policy none --auto-converge          (QEMU's vCPU throttle from the start)
  postcopy       --policy none --postcopy-after-precopy (post-copy after the first full pass)
  default        no convergence flag: vmigrate's default policy
Every run is `vmigrate migrate --live --bandwidth CAP --max-downtime MS --timeout T
--timeout-action abort --json NAME local`, so a run that cannot converge ends after T seconds
and is reported as not completed (timeout): that is the result, not a fault of the bench.

Each cell is a fresh guest in a private state directory: `vm start` of the built-in test guest
(vmig.dirty_mib_s = the row's rate), a wait for VMIG-READY on its serial log, the migration, then
`vm stop`.  While it migrates, `vmigrate jobinfo --json` is sampled every --sample seconds for
the throttle's peak (the final JSON holds the last throttle QEMU reported, 0 once it stopped).
The CLI has no verb that checks a named VM's memory page by page (the demo and the integration
tests do, through vmig_guest_verify()); what is checked here is the guest's own rewrite check:
after a completed migration the guest runs --settle seconds on the destination, and every page
it rewrites there that does not hold the previous generation prints VMIG-BAD on its serial log.

Columns rotate: row i starts with column i, so no column always runs first.  One migration at
a time.  The vmigrate binary is copied into the state directory first, so a rebuild during the
run does not change it.  JSON (machine, parameters, every cell) on stdout or --out DIR/
converge.json; the table on stderr; a PNG (--plot FILE, or DIR/converge.png with --out) of
total time and downtime per cell, not-completed cells marked.

  /usr/bin/python3 bench/converge.py [--cap 16] [--mem-mib 128] [--timeout 60] \\
      [--rows 0,25,50,100,200] [--cols precopy,auto_converge,postcopy,default] [--out DIR]
"""
import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = {
    "precopy": ["--policy", "none"],
    "auto_converge": ["--policy", "none", "--auto-converge"],
    "postcopy": ["--policy", "none", "--postcopy-after-precopy"],
    "default": [],
}
LABELS = {"precopy": "pre-copy", "auto_converge": "auto-converge", "postcopy": "post-copy",
          "default": "default policy"}
READY_TIMEOUT_S = 120


class Bench:
    """A private state directory, the VMs started in it, and the vmigrate process running."""

    def __init__(self, vmigrate, guest, qemu):
        self.dir = tempfile.mkdtemp(prefix="vmig-converge-", dir="/tmp")  # mode 0700
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state, 0o700)
        self.vmigrate = os.path.join(self.dir, "vmigrate")
        shutil.copy2(vmigrate, self.vmigrate)
        self.guest = guest
        self.env = dict(os.environ, VMIG_STATE_DIR=self.state)
        if qemu:
            self.env["VMIG_QEMU"] = qemu
        self.running = None  # the migrate Popen, for cleanup

    def cli(self, *args, timeout=60):
        return subprocess.run([self.vmigrate, "--state-dir", self.state, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def serial(self, name):
        try:
            with open(os.path.join(self.state, name, "serial.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, name, mem_mib, dirty):
        spec = os.path.join(self.dir, name + ".json")
        with open(spec, "w") as f:
            json.dump({"name": name, "memory_mib": mem_mib, "kernel": self.guest,
                       "append": f"vmig.dirty_mib_s={dirty}"}, f)
        p = self.cli("vm", "start", spec)
        if p.returncode != 0:
            raise RuntimeError(f"vm start: {p.stderr.strip()}")
        t0 = time.monotonic()
        while time.monotonic() - t0 < READY_TIMEOUT_S:
            log = self.serial(name)
            if "VMIG-READY" in log:
                return round(time.monotonic() - t0, 2)
            if "VMIG-ERROR" in log:
                raise RuntimeError(f"guest: {log.strip()}")
            time.sleep(0.2)
        raise RuntimeError(f"guest not ready after {READY_TIMEOUT_S} s: {self.serial(name)!r}")

    def stop(self, name):
        p = self.cli("vm", "stop", name, timeout=60)
        return p.returncode == 0, p.stderr.strip()

    def qemu_pids(self):
        """QEMUs whose pid file is in our state directory and which still run."""
        pids = []
        for d in os.listdir(self.state) if os.path.isdir(self.state) else []:
            try:
                with open(os.path.join(self.state, d, "qemu.pid")) as f:
                    pid = int(f.read().split()[0])
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.state.encode() in f.read():
                        pids.append(pid)
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def close(self):
        if self.running and self.running.poll() is None:
            self.running.send_signal(signal.SIGINT)  # vmigrate rolls back on Ctrl-C
            try:
                self.running.wait(30)
            except subprocess.TimeoutExpired:
                self.running.kill()
                self.running.wait()
        try:
            vms = json.loads(self.cli("vm", "list", "--json").stdout or "[]")
        except (json.JSONDecodeError, subprocess.TimeoutExpired):
            vms = []
        for vm in vms:
            try:
                self.stop(vm["name"])
            except subprocess.TimeoutExpired:
                pass
        for pid in self.qemu_pids():
            print(f"converge.py: killing leftover QEMU {pid}", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Sampler(threading.Thread):
    """`vmigrate jobinfo --json NAME` every `period` seconds while the migration runs."""

    def __init__(self, bench, name, period):
        super().__init__(daemon=True)
        self.bench, self.name, self.period = bench, name, period
        self.done = threading.Event()
        self.trace = []

    def run(self):
        while not self.done.wait(self.period):
            try:
                j = json.loads(self.bench.cli("jobinfo", "--json", self.name, timeout=10).stdout)
            except (json.JSONDecodeError, subprocess.TimeoutExpired):
                continue
            if "elapsed_ms" not in j:
                continue
            self.trace.append({k: j.get(k) for k in (
                "elapsed_ms", "state", "mode", "iteration", "remaining_bytes", "mib_s",
                "dirty_mib_s", "throttle_pct", "downtime_limit_ms", "expected_downtime_ms")})


def outcome(rc, r):
    if rc == 0 and r.get("status") == "completed":
        return "completed"
    err = r.get("error", "")
    if "did not finish within" in err:
        return "timeout"
    if "made no progress" in err:
        return "stall"
    return "failed"


def run_cell(bench, a, pct, col):
    dirty = round(a.cap * pct / 100)
    name = f"cv-{pct}-{col}".replace("_", "-")
    cell = {"row_pct": pct, "dirty_mib_s": dirty, "column": col, "vm": name,
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "other_qemus": other_qemus(bench.state), "actions": []}
    cmd = [bench.vmigrate, "--state-dir", bench.state, "migrate", "--live",
           "--bandwidth", str(a.cap), "--max-downtime", str(a.max_downtime),
           "--timeout", str(a.timeout), "--timeout-action", "abort", "--json",
           *COLUMNS[col], name, "local"]
    cell["args"] = cmd[3:]
    try:
        cell["ready_s"] = bench.start(name, a.mem_mib, dirty)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        cell.update(completed=False, outcome="start failed", error=str(e))
        bench.stop(name)
        return cell
    sampler = Sampler(bench, name, a.sample) if a.sample > 0 else None
    t0 = time.monotonic()
    bench.running = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=bench.env)
    if sampler:
        sampler.start()
    try:
        out, err = bench.running.communicate(timeout=a.timeout + 120)
    except subprocess.TimeoutExpired:
        bench.running.send_signal(signal.SIGINT)
        out, err = bench.running.communicate()
        err += "\nconverge.py: vmigrate ran past --timeout + 120 s; interrupted"
    rc = bench.running.returncode
    bench.running = None
    cell["wall_s"] = round(time.monotonic() - t0, 2)
    if sampler:
        sampler.done.set()
        sampler.join()
        cell["samples"] = sampler.trace
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        r = {"error": (err or out).strip()[-600:]}
    cell["rc"] = rc
    cell["outcome"] = outcome(rc, r)
    cell["completed"] = cell["outcome"] == "completed"
    for k in ("status", "total_ms", "downtime_ms", "mode", "passes", "transferred_bytes",
              "remaining_bytes", "mbps", "qemu_downtime_ms", "qemu_total_ms", "downtime_limit_ms",
              "dirty_rate_mib_s", "postcopy_at_ms", "postcopy_requests", "error"):
        if k in r:
            cell[k] = r[k]
    cell["throttle_pct_final"] = r.get("throttle_pct")
    seen = [s["throttle_pct"] for s in cell.get("samples", []) if s.get("throttle_pct")]
    cell["throttle_pct_max"] = max(seen + [r.get("throttle_pct") or 0])
    cell["actions"] = r.get("actions", [])
    if not cell["completed"] and err.strip():
        cell["stderr"] = err.strip()[-600:]
    if cell["completed"] and a.settle > 0:
        time.sleep(a.settle)
        bad = [ln for ln in bench.serial(name).splitlines() if ln.startswith("VMIG-BAD")]
        cell["self_check"] = {"settle_s": a.settle, "bad_pages": len(bad),
                              "first": bad[:5], "checked": dirty > 0}
    ok, why = bench.stop(name)
    if not ok:
        cell["stop_error"] = why
    return cell


def cell_text(c, timeout):
    thr = f", throttle {c['throttle_pct_max']}%" if c.get("throttle_pct_max") else ""
    if not c["completed"]:
        if c["outcome"] == "timeout":  # remaining bytes at the abort are mid-pass: not shown
            return f"no: timeout {timeout} s (pass {c.get('passes')}{thr})"
        return f"no: {c['outcome']}"
    return (f"{c['total_ms']} / {c['downtime_ms']} ms, {c.get('mode')}, {c.get('passes')} "
            f"passes{thr}")


def table(cells, rows, cols, a):
    lines = [f"| dirty % of {a.cap} MiB/s (MiB/s) | "
             + " | ".join(LABELS[c] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for pct in rows:
        rc = {c["column"]: c for c in cells if c["row_pct"] == pct}
        dirty = next(iter(rc.values()))["dirty_mib_s"]
        lines.append(f"| {pct} ({dirty}) | "
                     + " | ".join(cell_text(rc[c], a.timeout) for c in cols) + " |")
    return "\n".join(lines)


def bar_met(cells, a):
    d = [c for c in cells if c["column"] == "default"]
    if not d:
        return None
    return all(c["completed"] and (c["downtime_ms"] <= a.max_downtime or c.get("mode") ==
                                   "postcopy") for c in d)


def other_qemus(ours):
    """QEMU processes on the machine that are not ours: the shared machine's other load."""
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        n += b"qemu-system" in cmd.split(b"\0")[0] and not (ours and ours.encode() in cmd)
    return n


def machine(vmigrate):
    try:
        ver = json.loads(subprocess.run([vmigrate, "version", "--json"], capture_output=True,
                                        text=True, timeout=30).stdout)
    except (json.JSONDecodeError, subprocess.TimeoutExpired):
        ver = {}
    git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    with open(vmigrate, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return {"nproc": os.cpu_count(), "uname": " ".join(os.uname()[2:4]),
            "qemu": ver.get("qemu"), "qemu_version": ver.get("qemu_version"),
            "qemu_package": ver.get("qemu_package"), "vmigrate_version": ver.get("vmigrate"),
            "vmigrate_sha256": sha, "vmigrate_mtime": time.strftime(
                "%Y-%m-%dT%H:%M:%S%z", time.localtime(os.stat(vmigrate).st_mtime)),
            "git_head": git("rev-parse", "--short", "HEAD"),
            "git_dirty_paths": git("status", "--porcelain", "--untracked-files=no").splitlines(),
            "other_qemus_at_start": other_qemus("")}


def plot(cells, rows, cols, a, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    w = 0.8 / len(cols)
    for j, col in enumerate(cols):
        xs = [i + (j - (len(cols) - 1) / 2) * w for i in range(len(rows))]
        cs = [next(c for c in cells if c["row_pct"] == p and c["column"] == col) for p in rows]
        tot = [(c.get("total_ms") or c.get("wall_s", 0) * 1000) / 1000 for c in cs]
        down = [c.get("downtime_ms", 0) if c["completed"] else 0 for c in cs]
        bars = ax[0].bar(xs, tot, w, label=LABELS[col], color=f"C{j}")
        dbars = ax[1].bar(xs, down, w, label=LABELS[col], color=f"C{j}")
        for b, db, c in zip(bars, dbars, cs):
            if not c["completed"]:
                b.set_hatch("//")
                b.set_alpha(0.45)
                ax[0].text(b.get_x() + w / 2, b.get_height(), "x", ha="center", va="bottom",
                           color="red", fontweight="bold")
                ax[1].text(db.get_x() + w / 2, 0, "x", ha="center", va="bottom", color="red",
                           fontweight="bold")
    labels = [f"{p}%\n{round(a.cap * p / 100)} MiB/s" for p in rows]
    for k, title in enumerate(("total time (s)", "downtime (ms)")):
        ax[k].set_xticks(range(len(rows)))
        ax[k].set_xticklabels(labels)
        ax[k].set_xlabel(f"guest dirty rate, % of the {a.cap} MiB/s cap")
        ax[k].set_title(title)
    ax[0].axhline(a.timeout, color="grey", ls=":", lw=1)
    ax[1].axhline(a.max_downtime, color="grey", ls="--", lw=1, label="--max-downtime")
    ax[0].legend(fontsize=8)
    ax[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{a.mem_mib} MiB test guest, --bandwidth {a.cap}: x / hatched = not completed"
                 f" (timeout {a.timeout} s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmigrate", default=os.path.join(ROOT, "build/vmigrate"))
    ap.add_argument("--guest", default=os.environ.get(
        "VMIG_GUEST", os.path.join(ROOT, "build/guest/vmig-guest.elf")))
    ap.add_argument("--qemu", default=os.environ.get("VMIG_QEMU"),
                    help="QEMU for the VMs (default: $VMIG_QEMU, else vmigrate's own)")
    ap.add_argument("--cap", type=int, default=16, help="--bandwidth, MiB/s")
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--max-downtime", type=int, default=300, help="ms")
    ap.add_argument("--timeout", type=int, default=60, help="s, each migration")
    ap.add_argument("--rows", default="0,25,50,100,200", help="dirty rate, %% of the cap")
    ap.add_argument("--cols", default=",".join(COLUMNS))
    ap.add_argument("--sample", type=float, default=2, help="s between jobinfo samples; 0: none")
    ap.add_argument("--settle", type=float, default=3,
                    help="s the guest runs on the destination before its serial log is read")
    ap.add_argument("--pause", type=float, default=2, help="s between cells")
    ap.add_argument("--out", help="directory for converge.json and converge.png")
    ap.add_argument("--plot", help="PNG path (default with --out: DIR/converge.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--note", help="kept in the JSON (e.g. which commit the binary was built from)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: print the table (and --plot) of a saved converge.json")
    a = ap.parse_args()
    a.rows_l = [int(x) for x in a.rows.split(",")]
    a.cols_l = a.cols.split(",")
    bad = [c for c in a.cols_l if c not in COLUMNS]
    if bad:
        ap.error(f"--cols: unknown {bad}; known: {','.join(COLUMNS)}")
    if a.out and not a.plot:
        a.plot = os.path.join(a.out, "converge.png")
    if a.no_plot:
        a.plot = None
    return a


def report(doc, a):
    """The table, the policy's actions, the self-check and the bar, on stderr."""
    cells = doc["cells"]
    print("\n" + table(cells, a.rows_l, a.cols_l, a) + "\n", file=sys.stderr)
    print("cells: total ms / downtime ms, mode, passes, peak throttle; no: not completed "
          "(pass: the last QEMU reported)", file=sys.stderr)
    for c in cells:
        if ((c["actions"] and c["column"] == "default")
                or c["outcome"] not in ("completed", "timeout")):
            acts = "; ".join(f"{x['at_ms'] / 1000:.1f} s {x['what']}" for x in c["actions"])
            print(f"{LABELS[c['column']]} @ {c['row_pct']}%: {acts or '-'}"
                  + (f" [error: {c.get('error')}]" if not c["completed"] else ""),
                  file=sys.stderr)
    bad = [c for c in cells if c.get("self_check", {}).get("bad_pages")]
    print(f"guest self-check after --settle {a.settle} s: "
          + (f"{len(bad)} cell(s) with VMIG-BAD pages" if bad else "no VMIG-BAD"),
          file=sys.stderr)
    met = doc["default_policy_met_bar"]
    if met is not None:
        print(f"default policy met the bar (every row completed, downtime <= "
              f"{a.max_downtime} ms or post-copy): {'yes' if met else 'NO'}", file=sys.stderr)
    if a.plot:
        plot(cells, a.rows_l, a.cols_l, a, a.plot)


def from_json(a):
    """Parameters, rows and columns from a saved run, so report() redraws it as it ran."""
    with open(a.from_json) as f:
        doc = json.load(f)
    p = doc["params"]
    a.cap, a.mem_mib, a.max_downtime = p["cap_mib_s"], p["mem_mib"], p["max_downtime_ms"]
    a.timeout, a.settle, a.rows_l = p["timeout_s"], p["settle_s"], p["rows_pct"]
    a.cols_l = list(p["columns"])
    return doc


def main():
    a = parse_args()
    if a.plot:
        try:
            import matplotlib  # noqa: F401  (checked before the runs, not after)
        except ImportError:
            sys.exit("converge.py: the plot needs matplotlib (/usr/bin/python3 has it, or "
                     "apt-get install python3-matplotlib), or give --no-plot")
    if a.from_json:
        report(from_json(a), a)
        return
    for path in (a.vmigrate, a.guest):
        if not os.path.exists(path):
            sys.exit(f"converge.py: {path} is missing (cmake --build build -j2)")
    # SIGTERM and SIGHUP unwind through finally like Ctrl-C, so no VM outlives the bench
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit("converge.py: signal, cleaning up"))
    bench = Bench(a.vmigrate, os.path.abspath(a.guest), a.qemu)
    cells = []
    try:
        info = machine(bench.vmigrate)
        info["load_before"] = [round(x, 2) for x in os.getloadavg()]
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for i, pct in enumerate(a.rows_l):
            k = i % len(a.cols_l)
            for col in a.cols_l[k:] + a.cols_l[:k]:
                c = run_cell(bench, a, pct, col)
                cells.append(c)
                print(f"{pct:>4}% {col:14} {cell_text(c, a.timeout)}"
                      + (f"  [{c.get('error', '')}]" if c["outcome"] not in
                         ("completed", "timeout") else ""), file=sys.stderr)
                time.sleep(a.pause)
        info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        bench.close()
    doc = {"bench": "converge", "started": started, "machine": info,
           "params": {"cap_mib_s": a.cap, "mem_mib": a.mem_mib, "max_downtime_ms": a.max_downtime,
                      "timeout_s": a.timeout, "timeout_action": "abort", "rows_pct": a.rows_l,
                      "columns": {c: COLUMNS[c] for c in a.cols_l}, "sample_s": a.sample,
                      "settle_s": a.settle, "guest": a.guest, "note": a.note},
           "default_policy_met_bar": bar_met(cells, a), "cells": cells}
    text = json.dumps(doc, indent=1) + "\n"
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "converge.json"), "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    report(doc, a)


if __name__ == "__main__":
    main()
