#!/usr/bin/env python3
"""Storage copy: the NBD mirror through vmigrate's relay against QEMU's own TCP connection,
and the total migration time with and without storage.

Every configuration moves the same VM, the built-in test guest (--mem-mib 128, idle unless
--dirty) with one raw disk of --disk-mib (512) filled with random data, so the mirror must move
every byte (QEMU may skip zero blocks).  The disk is opened with "cache": "none" (O_DIRECT) on
both sides, so the mirror reads and writes the host's disk; --cache writeback takes the disk out
of the figures (the page cache holds the images; the shared_agent run then needs --unsafe, which
the bench adds, as vmigrate refuses a shared disk between hosts with a cache other than none).
  copy_agent    migrate --live --copy-storage-all to an agent on 127.0.0.1 (vmig://): the
                mirror's NBD connection goes through the relay (source relay, TCP, agent)
  copy_local    the same to local:DIR: QEMU's NBD client on the destination's unix socket
  nbd_tcp       no vmigrate: this script starts two QEMUs (-machine none) with the same images
                and drives the same blockdev-mirror over QMP to an NBD export on a plain
                loopback TCP connection ("QEMU's own TCP connection"): the baseline
  nbd_unix      the same on a unix socket, as copy_local connects: what the socket costs,
                apart from vmigrate
  shared_local  migrate --live to local:DIR with the disk left in place (shared storage)
  shared_agent  the same to the agent
A mirror's throughput is its length over the time it took to be in step, measured two ways:
  events   QEMU's own timestamps: the mirror's JOB_STATUS_CHANGE "created" to BLOCK_JOB_READY,
           read on the source's reader monitor (vmigrate) or its only monitor (nbd_*); the
           same measure for all three
  actions  vmigrate's figure: disk_total_bytes over the "disks: N mirror(s) started" action
           (sent blockdev-add and blockdev-mirror) to the "disks in step" action (the engine's
           query-block-jobs said ready); for nbd_*, blockdev-add of the NBD client to
           query-block-jobs saying ready (polled every --poll-ms, 50)
Total time and downtime are vmigrate's (--json total_ms, downtime_ms).

After the fill, --warmup (1) unmeasured nbd_tcp mirrors: the first mirror after the fill ran
slower in every configuration.  Each run then does every configuration once, one migration at a
time; run i starts with configuration i, so none always runs first.  After each migration the
destination's `vm list --json` must show the VM running, and each copy of the disk (nbd_*'s
too) must be identical to the source's image (`qemu-img compare -U`).  Ratios are taken within
a run (relay/baseline: copy_agent/nbd_tcp of the same run), then min/median/max over the runs.
One agent serves the whole bench.  Images, state directories, the key and the agent live in a
private directory under /tmp (--dir: another parent; cache none needs O_DIRECT, which tmpfs
lacks), removed at the end; every VM and QEMU started is stopped.  The vmigrate binary is copied
there first, so a rebuild during the run does not change it.  JSON (machine, parameters, every
cell, summaries) on stdout or --out DIR/storage.json; the tables on stderr; a PNG (--plot FILE,
or DIR/storage.png with --out).

  /usr/bin/python3 bench/storage.py [--disk-mib 512] [--mem-mib 128] [--runs 3] [--out DIR]
"""
import argparse
import glob
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["copy_agent", "copy_local", "nbd_tcp", "nbd_unix", "shared_local", "shared_agent"]
LABELS = {"copy_agent": "copy, agent (relay)", "copy_local": "copy, local (unix)",
          "nbd_tcp": "QEMU NBD over TCP", "nbd_unix": "QEMU NBD over unix",
          "shared_local": "shared, local",
          "shared_agent": "shared, agent (relay)"}
COLOR = {"copy_agent": "C0", "copy_local": "C1", "nbd_tcp": "C2", "nbd_unix": "C4",
         "shared_local": "C7", "shared_agent": "C9"}
MIRRORS = ["copy_agent", "copy_local", "nbd_tcp", "nbd_unix"]
TOTALS = ["shared_local", "copy_local", "shared_agent", "copy_agent"]
SHARED_OF = {"copy_local": "shared_local", "copy_agent": "shared_agent"}
VMIG_JOB = "vmig-mirror-disk0"  # engine/storage.c MIRROR_JOB_FMT for the VM's first disk
READY_TIMEOUT_S = 120
MIB = 1 << 20


class QMP:
    """A QMP client on a unix socket: replies to our commands; events kept with QEMU's time."""

    def __init__(self, path, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX)
            try:
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.s.settimeout(timeout)
        self.f = self.s.makefile("r")
        self.events = []
        json.loads(self.f.readline())  # the greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        m = json.loads(line)
        if "event" in m:
            self.events.append(m)
        return m

    def cmd(self, execute, **args):
        self.s.sendall((json.dumps({"execute": execute, "arguments": args}) + "\n").encode())
        while True:
            m = self.read()
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise RuntimeError(f"{execute}: {m['error']['desc']}")

    def wait_event(self, name, timeout=60):
        deadline = time.monotonic() + timeout
        while not any(e["event"] == name for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {name} within {timeout} s")
            self.read()

    def close(self):
        try:
            self.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.s.close()


class Watcher(threading.Thread):
    """The source VM's block-job events, read on its reader monitor while vmigrate migrates it
    (the engine holds the main monitor; QEMU sends every event to every monitor)."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.qmp = QMP(sock)
        self.qmp.s.settimeout(None)

    def run(self):
        try:
            while True:
                self.qmp.read()
        except (EOFError, OSError, ValueError):
            pass

    def stop(self):
        self.qmp.close()
        self.join(5)
        return self.qmp.events


def ts(ev):
    return ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6


def mirror_by_events(events, job):
    """(bytes, seconds) from the job's JOB_STATUS_CHANGE created to its BLOCK_JOB_READY."""
    made = [ts(e) for e in events if e["event"] == "JOB_STATUS_CHANGE"
            and e["data"].get("id") == job and e["data"].get("status") == "created"]
    ready = [e for e in events if e["event"] == "BLOCK_JOB_READY"
             and e["data"].get("device") == job]
    if not made or not ready:
        return None, None
    return ready[0]["data"].get("len"), ts(ready[0]) - made[0]


class Bench:
    """A private directory: the source state, the destinations, the agent, the images."""

    def __init__(self, a):
        self.dir = tempfile.mkdtemp(prefix="vmig-storage-", dir=a.dir)  # mode 0700
        self.state = self.mkdir("src")
        self.agent_state = self.mkdir("agent")
        self.images = self.mkdir("images")
        self.vmigrate = os.path.join(self.dir, "vmigrate")
        shutil.copy2(a.vmigrate, self.vmigrate)
        self.guest = os.path.abspath(a.guest)
        self.env = dict(os.environ, VMIG_STATE_DIR=self.state)
        if a.qemu:
            self.env["VMIG_QEMU"] = a.qemu
        self.qemu = a.qemu or self.version().get("qemu") or "qemu-system-x86_64"
        self.qemu_img = a.qemu_img or shutil.which("qemu-img", path=os.path.dirname(
            self.qemu)) or "qemu-img"
        self.key = os.path.join(self.dir, "key")
        self.agent = None  # Popen
        self.agent_port = None
        self.agent_log = os.path.join(self.dir, "agent.log")
        self.running = None  # the migrate Popen, for cleanup
        self.qemus = []  # nbd_*'s Popens
        self.dests = []  # local:DIR state directories still to clean
        self.disk = os.path.join(self.images, "disk.raw")

    def mkdir(self, name):
        p = os.path.join(self.dir, name)
        os.mkdir(p, 0o700)
        return p

    def cli(self, *args, state=None, timeout=60):
        return subprocess.run([self.vmigrate, "--state-dir", state or self.state, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def version(self):
        try:
            return json.loads(self.cli("version", "--json").stdout)
        except (json.JSONDecodeError, subprocess.TimeoutExpired):
            return {}

    def check_direct(self):
        """cache none is O_DIRECT: tmpfs refuses it, and QEMU would fail to open the disk."""
        p = os.path.join(self.images, "direct-probe")
        try:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600))
        except OSError as e:
            raise RuntimeError(f"{self.images} does not support O_DIRECT ({e}); cache none "
                               "needs it: give --dir on ext4 or xfs (/var/tmp, /work)")
        finally:
            if os.path.exists(p):
                os.unlink(p)

    def fill(self, mib):
        """Random data: no zero block QEMU could skip.  Written once, read by every run."""
        t0 = time.monotonic()
        with open(self.disk, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
            f.flush()
            os.fsync(f.fileno())
        return round(time.monotonic() - t0, 2)

    def start_agent(self):
        p = subprocess.run([self.vmigrate, "key", "new", self.key], capture_output=True,
                           text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"key new: {p.stderr.strip()}")
        log = open(self.agent_log, "w")
        self.agent = subprocess.Popen(
            [self.vmigrate, "--state-dir", self.agent_state, "agent", "--listen",
             "127.0.0.1:0", "--key", self.key, "--accel", "tcg"],
            stdout=subprocess.PIPE, stderr=log, text=True, env=self.env)
        log.close()
        line = self.agent.stdout.readline().strip()  # "listening on HOST:PORT"
        if not line.startswith("listening on "):
            raise RuntimeError(f"agent: {line!r}, log: {self.agent_log_text()[-600:]}")
        self.agent_port = int(line.rsplit(":", 1)[1])

    def agent_cpu(self):
        """The agent's own CPU seconds (its QEMUs are not in them)."""
        try:
            with open(f"/proc/{self.agent.pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return 0.0

    def agent_log_text(self):
        try:
            with open(self.agent_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def serial(self, name):
        try:
            with open(os.path.join(self.state, name, "serial.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, name, a):
        spec = os.path.join(self.dir, name + ".json")
        with open(spec, "w") as f:
            json.dump({"name": name, "memory_mib": a.mem_mib, "kernel": self.guest,
                       "append": f"vmig.dirty_mib_s={a.dirty}",
                       "disks": [{"path": self.disk, "format": "raw", "interface": "ide",
                                  "cache": a.cache}]}, f)
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

    def stop(self, name, state=None):
        p = self.cli("vm", "stop", name, state=state, timeout=60)
        return p.returncode == 0, p.stderr.strip()

    def leftover_qemus(self):
        """QEMUs whose command line names our directory and which still run."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"qemu-system" in cmd[0] and any(self.dir.encode() in x for x in cmd):
                pids.append(int(pid))
        return pids

    def close(self):
        if self.running and self.running.poll() is None:
            self.running.send_signal(signal.SIGINT)  # vmigrate rolls back on Ctrl-C
            try:
                self.running.wait(30)
            except subprocess.TimeoutExpired:
                self.running.kill()
                self.running.wait()
        for state in [self.state, self.agent_state] + self.dests:
            try:
                vms = json.loads(self.cli("vm", "list", "--json", state=state).stdout or "[]")
            except (json.JSONDecodeError, subprocess.TimeoutExpired):
                vms = []
            for vm in vms:
                try:
                    self.stop(vm["name"], state)
                except subprocess.TimeoutExpired:
                    pass
        for q in self.qemus:
            if q.poll() is None:
                q.kill()
                q.wait()
        if self.agent and self.agent.poll() is None:
            self.agent.terminate()  # SIGTERM: the agent stops, and the QEMUs it holds
            try:
                self.agent.wait(30)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for pid in self.leftover_qemus():
            print(f"storage.py: killing leftover QEMU {pid}", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def compare(bench, other):
    p = subprocess.run([bench.qemu_img, "compare", "-U", "-f", "raw", "-F", "raw", bench.disk,
                        other], capture_output=True, text=True, timeout=300)
    return p.returncode == 0, (p.stdout + p.stderr).strip()[-300:]


def run_migration(bench, a, run, config):
    """One `vmigrate migrate` of a fresh VM; the destination checked, then stopped."""
    name = f"st-{run}-{config.replace('_', '-')}"
    copy = config.startswith("copy_")
    agent = config.endswith("_agent")
    cell = {"run": run, "config": config, "vm": name,
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "other_qemus": other_qemus(bench.dir)}
    if agent:
        dest, dstate = f"vmig://127.0.0.1:{bench.agent_port}", bench.agent_state
    else:
        dstate = bench.mkdir("dst-" + name)
        bench.dests.append(dstate)
        dest = "local:" + dstate
    cmd = [bench.vmigrate, "--state-dir", bench.state, "migrate", "--live", "--json",
           "--timeout", str(a.timeout)]
    cmd += ["--copy-storage-all"] if copy else []
    cmd += ["--key", bench.key] if agent else []
    cmd += ["--unsafe"] if agent and not copy and a.cache != "none" else []
    cmd += [name, dest]
    cell["args"] = cmd[3:]
    try:
        cell["ready_s"] = bench.start(name, a)
        watcher = Watcher(os.path.join(bench.state, name, "qmp-read.sock"))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        cell.update(completed=False, error=f"start: {e}")
        bench.stop(name)
        return cell
    log_at = len(bench.agent_log_text())
    watcher.start()
    cpu0, agent0, host0 = children_cpu(), bench.agent_cpu(), host_cpu()
    t0 = time.monotonic()
    bench.running = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=bench.env)
    try:
        out, err = bench.running.communicate(timeout=a.timeout + 120)
    except subprocess.TimeoutExpired:
        bench.running.send_signal(signal.SIGINT)
        out, err = bench.running.communicate()
        err += "\nstorage.py: vmigrate ran past --timeout + 120 s; interrupted"
    cell["rc"] = bench.running.returncode
    bench.running = None
    cell["wall_s"] = round(time.monotonic() - t0, 2)
    cell["host_cpu"] = host_share(host0)
    # the migrate process: the engine and, to an agent, the source relay (a thread of it)
    cell["migrate_cpu_s"] = round(children_cpu() - cpu0, 2)
    if agent:
        cell["agent_cpu_s"] = round(bench.agent_cpu() - agent0, 2)
    events = watcher.stop()
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        r = {"error": (err or out).strip()[-600:]}
    cell["completed"] = cell["rc"] == 0 and r.get("status") == "completed"
    for k in ("status", "total_ms", "downtime_ms", "setup_ms", "transferred_bytes", "passes",
              "mbps", "disks_copied", "disk_total_bytes", "disk_transferred_bytes",
              "disk_ready_ms", "channels", "actions", "error"):
        if k in r:
            cell[k] = r[k]
    if not cell["completed"] and err.strip():
        cell["stderr"] = err.strip()[-600:]
    if agent:
        cell["agent_log"] = [ln for ln in bench.agent_log_text()[log_at:].splitlines()
                             if f"'{name}'" in ln]
    if copy:
        mirror_figures(cell, events)
    if cell["completed"]:
        verify(bench, cell, name, dstate, copy)
    ok, why = bench.stop(name, dstate)
    if not ok and cell["completed"]:
        cell["stop_error"] = why
    if not cell["completed"]:
        bench.stop(name)  # rolled back: the source runs on
    for img in glob.glob(os.path.join(dstate, "images", f"{name}-disk*")):
        os.unlink(img)
    if not agent:
        shutil.rmtree(dstate, ignore_errors=True)
        bench.dests.remove(dstate)
    return cell


def mirror_figures(cell, events):
    acts = {x["what"].split(":")[0]: x["at_ms"] for x in cell.get("actions", [])}
    started, in_step = acts.get("disks"), acts.get("disks in step")
    total = cell.get("disk_total_bytes")
    if started is not None and in_step is not None and total and in_step > started:
        cell["mirror_actions_s"] = round((in_step - started) / 1000, 3)
        cell["mirror_actions_mib_s"] = round(total / MIB / cell["mirror_actions_s"], 1)
    nbytes, secs = mirror_by_events(events, VMIG_JOB)
    if secs:
        cell["mirror_events_s"] = round(secs, 3)
        cell["mirror_events_mib_s"] = round(nbytes / MIB / secs, 1)
        cell["mirror_events_bytes"] = nbytes


def verify(bench, cell, name, dstate, copy):
    """The VM runs on the destination; its copy of the disk is the source's, byte for byte."""
    try:
        vms = json.loads(bench.cli("vm", "list", "--json", state=dstate).stdout or "[]")
    except (json.JSONDecodeError, subprocess.TimeoutExpired):
        vms = []
    state = next((v.get("state") for v in vms if v.get("name") == name), None)
    cell["dest_state"] = state
    ok = state == "running"
    if copy:
        imgs = glob.glob(os.path.join(dstate, "images", f"{name}-disk0-*"))
        if len(imgs) != 1:
            cell["image_check"] = f"expected one image of disk0, found {imgs}"
            ok = False
        else:
            same, text = compare(bench, imgs[0])
            cell["image_check"] = text
            ok = ok and same
    cell["verified"] = ok


def host_cpu():
    """/proc/stat's cpu line: user nice system idle iowait irq softirq steal, in ticks."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def host_share(t0):
    """Of the host's CPU time since t0 (host_cpu()): busy %, and the niced processes' %
    (another session's busy loops ran at nice 5 here)."""
    d = [b - a for a, b in zip(t0, host_cpu())]
    total = sum(d) or 1
    return {"busy_pct": round(100 * (total - d[3] - d[4]) / total, 1),
            "nice_pct": round(100 * d[1] / total, 1)}


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blockdev(node, path, cache):
    """-drive file=PATH,format=raw,cache=C as vmigrate starts the VM (aio threads)."""
    c = {"direct": cache == "none"}
    return json.dumps({"driver": "raw", "node-name": node, "cache": c,
                       "file": {"driver": "file", "filename": path, "cache": c}})


def run_nbd(bench, a, run, config):
    """The same NBD mirror, driven by hand over QMP, on a loopback TCP connection or a unix
    socket."""
    cell = {"run": run, "config": config,
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "other_qemus": other_qemus(bench.dir)}
    d = bench.mkdir(f"{config}-{run}")
    tgt = os.path.join(bench.images, f"tgt-{run}.raw")
    qmps = []
    try:
        p = subprocess.run([bench.qemu_img, "create", "-f", "raw", tgt, f"{a.disk_mib}M"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"qemu-img create: {p.stderr.strip()}")
        procs = {}
        for side, node, img in (("dst", "tgt", tgt), ("src", "src", bench.disk)):
            log = open(os.path.join(d, side + ".log"), "w")
            procs[side] = subprocess.Popen(
                [bench.qemu, "-machine", "none", "-nodefaults", "-display", "none",
                 "-qmp", f"unix:{d}/{side}.sock,server=on,wait=off",
                 "-blockdev", blockdev(node, img, a.cache)], stdout=log, stderr=log)
            log.close()
            bench.qemus.append(procs[side])
        dst, src = QMP(os.path.join(d, "dst.sock")), QMP(os.path.join(d, "src.sock"))
        qmps = [dst, src]
        if config == "nbd_tcp":
            port = str(free_port())
            cell["port"] = port
            addr = {"type": "inet", "host": "127.0.0.1", "port": port}
        else:
            addr = {"type": "unix", "path": os.path.join(d, "nbd.sock")}
        legacy = {"type": addr["type"], "data": {k: v for k, v in addr.items() if k != "type"}}
        dst.cmd("nbd-server-start", addr=legacy)
        dst.cmd("block-export-add", type="nbd", id="e", **{"node-name": "tgt"}, name="tgt",
                writable=True)
        host0 = host_cpu()
        t0 = time.monotonic()
        src.cmd("blockdev-add", driver="nbd", **{"node-name": "nbdt"},
                server=addr, export="tgt")
        t1 = time.monotonic()
        src.cmd("blockdev-mirror", **{"job-id": "m"}, device="src", target="nbdt", sync="full")
        length, polls = None, 0
        while True:
            polls += 1
            jobs = [j for j in src.cmd("query-block-jobs") if j.get("device") == "m"]
            if not jobs:
                raise RuntimeError(f"the mirror ended early: {src.events[-3:]}")
            length = jobs[0]["len"]
            if jobs[0].get("ready"):
                break
            if time.monotonic() - t0 > a.timeout:
                raise RuntimeError(f"the mirror was not ready within {a.timeout} s")
            time.sleep(a.poll_ms / 1000)
        t2 = time.monotonic()
        cell["host_cpu"] = host_share(host0)
        cell["nbd_connect_s"] = round(t1 - t0, 3)
        cell["polls"] = polls
        cell["mirror_actions_s"] = round(t2 - t0, 3)
        cell["mirror_actions_mib_s"] = round(length / MIB / (t2 - t0), 1)
        src.cmd("block-job-cancel", device="m")  # a ready mirror: finish in step
        src.wait_event("BLOCK_JOB_COMPLETED")
        nbytes, secs = mirror_by_events(src.events, "m")
        if secs:
            cell["mirror_events_s"] = round(secs, 3)
            cell["mirror_events_mib_s"] = round(nbytes / MIB / secs, 1)
            cell["mirror_events_bytes"] = nbytes
        done = next(e for e in src.events if e["event"] == "BLOCK_JOB_COMPLETED")
        if done["data"].get("error"):
            raise RuntimeError(f"the mirror failed: {done['data']['error']}")
        for q in qmps:
            q.cmd("quit")
        for q in procs.values():
            q.wait(30)
        cell["completed"] = True
        same, text = compare(bench, tgt)
        cell["image_check"] = text
        cell["verified"] = same
    except (RuntimeError, OSError, EOFError, TimeoutError, ValueError,
            subprocess.TimeoutExpired) as e:
        cell.update(completed=False, error=str(e))
    finally:
        for q in qmps:
            q.close()
        for q in bench.qemus:
            if q.poll() is None:
                q.kill()
            q.wait()
        bench.qemus = []
        for p in (tgt,):
            if os.path.exists(p):
                os.unlink(p)
        shutil.rmtree(d, ignore_errors=True)
    return cell


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


# ---- summaries, tables, plot ----------------------------------------------------------------

def spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "min": min(xs), "max": max(xs),
            "n": len(xs)}


def summarise(cells, configs):
    """Per configuration: min/median/max; per run: the ratios of configurations in that run."""
    ok = [c for c in cells if c.get("completed") and c.get("verified")]
    by = lambda cfg, k: [c.get(k) for c in ok if c["config"] == cfg]  # noqa: E731
    s = {}
    for cfg in configs:
        s[cfg] = {"runs_ok": len(by(cfg, "run")),
                  "runs": len([c for c in cells if c["config"] == cfg])}
        for k in ("mirror_events_mib_s", "mirror_actions_mib_s", "total_ms", "downtime_ms",
                  "disk_ready_ms"):
            v = spread([x for x in by(cfg, k) if x or k != "disk_ready_ms"])  # 0: no disk copied
            if v:
                s[cfg][k] = v
    ratios = {}
    pairs = [(m, "nbd_tcp", k) for m in ("copy_agent", "copy_local", "nbd_unix")
             for k in ("mirror_events_mib_s", "mirror_actions_mib_s")]
    pairs += [("copy_agent", "copy_local", "mirror_events_mib_s"),
              ("copy_local", "nbd_unix", "mirror_events_mib_s")]
    pairs += [(c, sh, "total_ms") for c, sh in SHARED_OF.items()]
    pairs += [("copy_agent", "copy_local", "total_ms"), ("shared_agent", "shared_local",
                                                          "total_ms")]
    for num, den, k in pairs:
        per_run = []
        for run in sorted({c["run"] for c in ok}):
            x = next((c.get(k) for c in ok if c["run"] == run and c["config"] == num), None)
            y = next((c.get(k) for c in ok if c["run"] == run and c["config"] == den), None)
            if x and y:
                per_run.append(round(x / y, 3))
        if per_run:
            ratios[f"{num}/{den} {k}"] = dict(spread(per_run), per_run=per_run)
    return s, ratios


def fmt(v, scale=1, nd=0):
    if not v:
        return "-"
    f = lambda x: f"{x / scale:.{nd}f}"  # noqa: E731
    return f"{f(v['median'])} [{f(v['min'])}-{f(v['max'])}]"


def tables(doc):
    s, ratios, cfgs = doc["summary"], doc["ratios"], doc["params"]["configs"]
    r = lambda k: fmt(ratios.get(k), nd=2)  # noqa: E731
    lines = [f"Mirror of a {doc['params']['disk_mib']} MiB raw disk, MiB/s, median [min-max] "
             f"of {doc['params']['runs']} runs; ratios per run, to nbd_tcp in the same run:", "",
             "| configuration | MiB/s, QEMU events | MiB/s, vmigrate actions (nbd_tcp: 50-ms poll) "
             "| / nbd_tcp, events | / nbd_tcp, actions |", "|---|---|---|---|---|"]
    for cfg in [c for c in MIRRORS if c in cfgs]:
        lines.append(f"| {LABELS[cfg]} | {fmt(s[cfg].get('mirror_events_mib_s'), nd=1)} | "
                     f"{fmt(s[cfg].get('mirror_actions_mib_s'), nd=1)} | "
                     + (f"{r(cfg + '/nbd_tcp mirror_events_mib_s')} | "
                        f"{r(cfg + '/nbd_tcp mirror_actions_mib_s')} |"
                        if cfg != "nbd_tcp" else "1 | 1 |"))
    lines += ["", f"Migration of the {doc['params']['mem_mib']} MiB VM with the disk, s, median "
              "[min-max]; ratios per run, to the shared disk to the same destination:", "",
              "| configuration | total s | disks in step at s | downtime ms | / shared, "
              "same destination |", "|---|---|---|---|---|"]
    for cfg in [c for c in TOTALS if c in cfgs]:
        rk = f"{cfg}/{SHARED_OF[cfg]} total_ms" if cfg in SHARED_OF else None
        lines.append(f"| {LABELS[cfg]} | {fmt(s[cfg].get('total_ms'), 1000, 2)} | "
                     f"{fmt(s[cfg].get('disk_ready_ms'), 1000, 2)} | "
                     f"{fmt(s[cfg].get('downtime_ms'))} | {r(rk) if rk else '1'} |")
    failed = [c for c in doc["cells"] if not (c.get("completed") and c.get("verified"))]
    lines += ["", f"runs that failed or did not verify: {len(failed)}"]
    for c in failed:
        why = c.get("error") or c.get("image_check") or f"destination: {c.get('dest_state')}"
        lines.append(f"  run {c['run']} {c['config']}: {why}")
    return "\n".join(lines)


def relay_waits(doc):
    """The relay's NBD channel in each copy_agent run: where its time went."""
    out = []
    for c in doc["cells"]:
        for ch in c.get("channels", []):
            if c["config"] == "copy_agent" and ch.get("kind") == "nbd":
                out.append(f"  run {c['run']}: mirror {c.get('mirror_events_s')} s; source relay: "
                           f"nbd channel {ch['bytes_out'] / MIB:.0f} MiB over {ch['seconds']:.2f}"
                           f" s, waited {ch['wait_source_ms']} ms for QEMU, "
                           f"{ch['wait_network_ms']} ms for the network; CPU s: migrate process "
                           f"{c.get('migrate_cpu_s')}, agent {c.get('agent_cpu_s')}")
        for ln in c.get("agent_log", []) if c["config"] == "copy_agent" else []:
            if "channel nbd" in ln:
                out.append("    agent: " + ln.split("channel ", 1)[1])
    return out


def plot(doc, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells, cfgs = doc["cells"], doc["params"]["configs"]
    ok = [c for c in cells if c.get("completed") and c.get("verified")]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
    mir = [c for c in MIRRORS if c in cfgs]
    for i, cfg in enumerate(mir):
        for j, (k, mark) in enumerate((("mirror_events_mib_s", "o"),
                                       ("mirror_actions_mib_s", "x"))):
            ys = [c[k] for c in ok if c["config"] == cfg and c.get(k)]
            if ys:
                x = i + (j - 0.5) * 0.35
                ax[0].bar(x, statistics.median(ys), 0.33, color=COLOR[cfg], alpha=1 - 0.5 * j,
                          label=("QEMU events" if j == 0 else "actions / 50-ms poll")
                          if i == 0 else None)
                ax[0].plot([x] * len(ys), ys, mark, color="black", ms=4)
    ax[0].set_xticks(range(len(mir)))
    ax[0].set_xticklabels([LABELS[c] for c in mir], fontsize=8)
    ax[0].set_ylabel("MiB/s")
    ax[0].set_title(f"mirror of a {doc['params']['disk_mib']} MiB raw disk until in step, "
                    f"cache {doc['params']['cache']}", fontsize=10)
    ax[0].legend(fontsize=8)
    tot = [c for c in TOTALS if c in cfgs]
    for i, cfg in enumerate(tot):
        cs = [c for c in ok if c["config"] == cfg and c.get("total_ms")]
        if not cs:
            continue
        t = statistics.median(c["total_ms"] / 1000 for c in cs)
        ax[1].bar(i, t, 0.6, color=COLOR[cfg])
        dr = [c["disk_ready_ms"] / 1000 for c in cs if c.get("disk_ready_ms")]
        if dr:
            ax[1].bar(i, statistics.median(dr), 0.6, fill=False, hatch="//",
                      label="disks in step" if cfg == "copy_local" else None)
        ax[1].plot([i] * len(cs), [c["total_ms"] / 1000 for c in cs], "o", color="black", ms=4)
    ax[1].set_xticks(range(len(tot)))
    ax[1].set_xticklabels([LABELS[c] for c in tot], fontsize=8)
    ax[1].set_ylabel("s")
    ax[1].set_title(f"total migration time, {doc['params']['mem_mib']} MiB VM with that disk",
                    fontsize=10)
    ax[1].legend(fontsize=8)
    fig.suptitle(f"bars: median of {doc['params']['runs']} runs; marks: each run "
                 f"({doc['started'][:10]}, {doc['machine'].get('git_head')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def report(doc, a):
    print("\n" + tables(doc) + "\n", file=sys.stderr)
    waits = relay_waits(doc)
    if waits:
        print("relay (copy_agent), from vmigrate's --json channels:\n" + "\n".join(waits),
              file=sys.stderr)
    if a.plot:
        plot(doc, a.plot)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmigrate", default=os.path.join(ROOT, "build/vmigrate"))
    ap.add_argument("--guest", default=os.environ.get(
        "VMIG_GUEST", os.path.join(ROOT, "build/guest/vmig-guest.elf")))
    ap.add_argument("--qemu", default=os.environ.get("VMIG_QEMU"),
                    help="QEMU for the VMs and nbd_* (default: $VMIG_QEMU, else vmigrate's)")
    ap.add_argument("--qemu-img", help="default: the one beside the QEMU, else $PATH's")
    ap.add_argument("--disk-mib", type=int, default=512)
    ap.add_argument("--mem-mib", type=int, default=128)
    ap.add_argument("--dirty", type=int, default=0, help="the guest's vmig.dirty_mib_s")
    ap.add_argument("--cache", choices=("none", "writeback"), default="none",
                    help="the disk's cache mode, on both sides")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--timeout", type=int, default=300, help="s, each migration or mirror")
    ap.add_argument("--poll-ms", type=float, default=50,
                    help="nbd_*: query-block-jobs every MS until ready (0: back to back)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="unmeasured nbd_tcp mirrors after the fill, before the runs")
    ap.add_argument("--pause", type=float, default=2, help="s between cells")
    ap.add_argument("--dir", default="/tmp",
                    help="parent of the private directory (the images too: cache none "
                    "needs O_DIRECT, which tmpfs lacks)")
    ap.add_argument("--out", help="directory for storage.json and storage.png")
    ap.add_argument("--plot", help="PNG path (default with --out: DIR/storage.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--note", help="kept in the JSON (e.g. which commit the binary was built from)")
    ap.add_argument("--from-json", metavar="FILE",
                    help="run nothing: print the tables (and --plot) of a saved storage.json")
    a = ap.parse_args()
    a.configs_l = a.configs.split(",")
    bad = [c for c in a.configs_l if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; known: {','.join(CONFIGS)}")
    if a.out and not a.plot:
        a.plot = os.path.join(a.out, "storage.png")
    if a.no_plot:
        a.plot = None
    return a


def cell_line(c):
    if not c.get("completed"):
        return f"FAILED: {c.get('error', '')[:300]}"
    parts = []
    if c.get("mirror_events_mib_s"):
        parts.append(f"mirror {c['mirror_events_mib_s']} MiB/s (events), "
                     f"{c.get('mirror_actions_mib_s')} (actions)")
    if c.get("total_ms"):
        parts.append(f"total {c['total_ms']} ms, downtime {c.get('downtime_ms')} ms")
    if c.get("host_cpu"):
        h = c["host_cpu"]
        parts.append(f"host CPU busy {h['busy_pct']}% (nice {h['nice_pct']}%)")
    parts.append("verified" if c.get("verified") else
                 f"NOT VERIFIED: {c.get('dest_state')} {c.get('image_check')}")
    return "; ".join(parts)


def main():
    a = parse_args()
    if a.plot:
        try:
            import matplotlib  # noqa: F401  (checked before the runs, not after)
        except ImportError:
            sys.exit("storage.py: the plot needs matplotlib (/usr/bin/python3 has it, or "
                     "apt-get install python3-matplotlib), or give --no-plot")
    if a.from_json:
        with open(a.from_json) as f:
            report(json.load(f), a)
        return
    for path in (a.vmigrate, a.guest):
        if not os.path.exists(path):
            sys.exit(f"storage.py: {path} is missing (ninja -C build)")
    # SIGTERM and SIGHUP unwind through finally like Ctrl-C, so no VM outlives the bench
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda *_: sys.exit("storage.py: signal, cleaning up"))
    bench = Bench(a)
    cells = []
    try:
        if a.cache == "none":
            bench.check_direct()
        info = machine(bench.vmigrate)
        info["qemu_img"] = bench.qemu_img
        info["dir_fs"] = subprocess.run(["df", "-T", bench.dir], capture_output=True,
                                        text=True).stdout.splitlines()[-1].split()[1]
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info["fill_s"] = bench.fill(a.disk_mib)
        if any(c.endswith("_agent") for c in a.configs_l):
            bench.start_agent()
        # the first mirror after the fill ran slower in every configuration (the host still
        # writing the fill back?): unmeasured warm-up mirrors, kept in the JSON apart
        for w in range(a.warmup):
            info.setdefault("warmup", []).append(run_nbd(bench, a, f"w{w}", "nbd_tcp"))
        info["load_before"] = [round(x, 2) for x in os.getloadavg()]
        for run in range(a.runs):
            k = run % len(a.configs_l)
            for cfg in a.configs_l[k:] + a.configs_l[:k]:
                c = (run_nbd(bench, a, run, cfg) if cfg.startswith("nbd_")
                     else run_migration(bench, a, run, cfg))
                cells.append(c)
                print(f"run {run} {cfg:13} {cell_line(c)}", file=sys.stderr)
                time.sleep(a.pause)
        info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        bench.close()
    summary, ratios = summarise(cells, a.configs_l)
    doc = {"bench": "storage", "started": started, "machine": info,
           "params": {"disk_mib": a.disk_mib, "mem_mib": a.mem_mib, "dirty_mib_s": a.dirty,
                      "runs": a.runs, "configs": a.configs_l, "timeout_s": a.timeout,
                      "poll_ms": a.poll_ms, "warmup": a.warmup,
                      "cache": a.cache, "disk_format": "raw", "guest": a.guest,
                      "note": a.note},
           "summary": summary, "ratios": ratios, "cells": cells}
    text = json.dumps(doc, indent=1) + "\n"
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "storage.json"), "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    report(doc, a)


if __name__ == "__main__":
    main()
