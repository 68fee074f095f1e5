#!/usr/bin/env python3
"""Relay chain throughput and CPU: the transport's relay (source relay + agent) against socat.

A sender plays the source QEMU: it opens N streams to a unix socket, main first (stream 0 starts
with b"QEVM" and a version), then N-1 multifd channels (a 64-byte multifd init packet, channel id
i-1), and pushes BYTES down each.  A sink plays the destination QEMU: it accepts on a unix
socket, checks each stream's first bytes and counts what arrives.  Chains, in rounds where each
kind goes first in turn:
  direct      sender -unix-> sink
  direct_tcp  sender -TCP-> sink                       (the network alone)
  relay       sender -unix-> vmig-relay-hop src -TCP-> vmig-relay-hop dst -unix-> sink
              (tp_source_relay, authenticated handshake, tp_dest_relay: the real relay)
  socat       sender -unix-> socat UNIX-LISTEN,fork -TCP-> socat TCP-LISTEN,fork -unix-> sink
              (socat's default 8 KiB buffer)
  socat_256k  the same with -b 262144, the relay's buffer size
--link loopback (default) runs the TCP leg on 127.0.0.1.  --link veth (root) puts everything on
the destination side (dst hop / socat / TCP sink) in a network namespace behind a veth pair
created for the run, and, with --delay-ms D (default 5; the kernel has no netem), a delay stage
there: `vmig-relay-hop delay`, a TCP forwarder holding every chunk D ms before passing it on,
both ways, at most --window-mib per direction and connection.  Its CPU is reported apart and is
not relay CPU.  --rate-gbit R adds a tbf qdisc on the veth.

For each run: Gbit/s (all bytes over the wall time from the first byte sent to the last byte
received) and the relay processes' CPU seconds per GiB (their rusage; socat's forked children
included).  Prints JSON (raw runs, and per stream count the medians, ranges and relay/socat
ratios); --plot FILE writes a PNG of throughput and CPU/GiB by stream count (matplotlib).

  /usr/bin/python3 bench/relay.py [--gib-per-stream 0.25] [--streams 1,2,4,8] [--rounds 3]
                                  [--link loopback|veth] [--plot FILE]
"""
import argparse
import ctypes
import json
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOP = os.path.join(ROOT, "build/bench/vmig-relay-hop")
CHUNK = 1 << 20
TP_PUMP_BUF = 256 * 1024  # transport/pump.h: socat_256k gets the same buffer
# relay: the library's default pump mode ($VMIG_PUMP if set); relay_copy, relay_splice: each
# mode of transport/pump.h forced, to compare them side by side
KINDS = ["direct", "direct_tcp", "relay", "relay_copy", "relay_splice", "socat", "socat_256k"]
RELAYS = ["relay", "relay_copy", "relay_splice", "socat", "socat_256k"]
PUMP_MODE = {"relay_copy": "copy", "relay_splice": "splice"}
MULTIFD_MAGIC = 0x11223344
CLONE_NEWNET = 0x40000000


def stream_header(i):
    """What QEMU sends first on stream i: the main channel's magic, or a multifd init packet."""
    if i == 0:
        return b"QEVM" + struct.pack(">I", 3)
    pkt = bytearray(64)
    struct.pack_into(">II", pkt, 0, MULTIFD_MAGIC, 1)  # magic, version
    pkt[8:24] = b"\x11" * 16                            # uuid
    pkt[24] = i - 1                                     # channel id
    return bytes(pkt)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Link:
    """Where the destination side lives: the host's loopback, or a namespace behind a veth."""

    def __init__(self, kind, delay_ms, window_mib, rate_gbit):
        self.kind, self.delay_ms, self.window_mib = kind, delay_ms, window_mib
        self.ns, self.dev = None, None
        self.far = "127.0.0.1"  # the address the source side connects to
        if kind != "veth":
            self.delay_ms = 0
            return
        tag = f"{os.getpid() % 100000}"
        self.ns, self.dev = f"vmig-relay-{tag}", f"vmr{tag}a"
        sub = os.getpid() % 250
        self.far = f"10.213.{sub}.2"
        try:
            for cmd in (["ip", "netns", "add", self.ns],
                        ["ip", "link", "add", self.dev, "type", "veth", "peer", "name",
                         f"vmr{tag}b"],
                        ["ip", "link", "set", f"vmr{tag}b", "netns", self.ns],
                        ["ip", "addr", "add", f"10.213.{sub}.1/30", "dev", self.dev],
                        ["ip", "link", "set", self.dev, "up"],
                        ["ip", "-n", self.ns, "addr", "add", f"{self.far}/30", "dev",
                         f"vmr{tag}b"],
                        ["ip", "-n", self.ns, "link", "set", f"vmr{tag}b", "up"],
                        ["ip", "-n", self.ns, "link", "set", "lo", "up"]):
                subprocess.run(cmd, check=True)
            if rate_gbit:
                subprocess.run(["tc", "qdisc", "add", "dev", self.dev, "root", "tbf", "rate",
                                f"{rate_gbit}gbit", "burst", "4mb", "latency", "50ms"],
                               check=True)
        except BaseException:
            self.close()
            raise

    def close(self):
        if self.dev:
            subprocess.run(["ip", "link", "del", self.dev], stderr=subprocess.DEVNULL)
        if self.ns:
            subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        self.ns = self.dev = None

    def call(self, fn):
        """Runs fn in the destination side's namespace (a thread that joined it)."""
        if not self.ns:
            return fn()
        out = {}

        def inner():
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
                os.close(fd)
                out["v"] = fn()
            except BaseException as e:  # noqa: B902 (handed to the caller's thread)
                out["e"] = e

        t = threading.Thread(target=inner)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        return out["v"]

    def wrap(self, cmd):
        return ["ip", "netns", "exec", self.ns] + cmd if self.ns else cmd


class Procs:
    """The processes of one run: relay ones (their CPU counted) and the delay stage's."""

    def __init__(self, tmp):
        self.tmp, self.all = tmp, []

    def start(self, name, cmd, counted=True, pump=None):
        log = open(os.path.join(self.tmp, name + ".log"), "wb")
        env = dict(os.environ, VMIG_PUMP=pump) if pump else None
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        self.all.append((name, p, counted))
        return p

    def log(self, name):
        with open(os.path.join(self.tmp, name + ".log"), errors="replace") as f:
            return f.read()[-2000:]

    def kill(self):
        for _, p, _ in self.all:
            if p.returncode is None:
                p.kill()
                p.wait()


def wait_until(pred, what, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        if pred():
            return
        time.sleep(0.01)
    raise RuntimeError(f"{what}: not ready after {deadline} s")


def tcp_listening(host, port):
    s = socket.socket()
    try:
        s.bind((host, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


class Sink:
    """The destination QEMU's side: accepts n streams, checks their first bytes, counts."""

    def __init__(self, listener, n):
        self.l, self.n = listener, n
        self.got, self.order, self.bad = [0] * n, [], []
        self.end = None
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def read(self, slot, c):
        buf = bytearray(CHUNK)
        head = bytearray()
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            self.got[slot] += k
            if len(head) < 64:
                head += buf[:min(k, 64 - len(head))]
        c.close()
        if head[:4] == b"QEVM":
            self.order[slot] = "main"
        elif len(head) >= 64 and struct.unpack(">I", head[:4])[0] == MULTIFD_MAGIC:
            self.order[slot] = f"multifd{head[24]}"
        else:
            self.bad.append(bytes(head[:16]).hex())

    def run(self):
        threads = []
        for i in range(self.n):
            c, _ = self.l.accept()
            self.order.append("?")
            t = threading.Thread(target=self.read, args=(i, c), daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        self.l.close()
        self.end = time.monotonic()


def connect(addr, deadline=5.0):
    end = time.time() + deadline
    while True:
        fam = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.connect(addr)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if time.time() > end:
                raise
            time.sleep(0.01)


def send_all(addr, n, per_stream):
    """QEMU's side: main first, then the multifd channels; returns when the far end closed."""
    socks = [connect(addr) for _ in range(n)]
    data = memoryview(b"\x5a" * CHUNK)

    def writer(i, s):
        s.sendall(stream_header(i))
        left = per_stream - len(stream_header(i))
        while left > 0:
            left -= s.send(data[:min(CHUNK, left)])
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):  # the far end closes once the chain has passed everything on
            pass
        s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer, args=(i, s), daemon=True)
               for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0


def far_leg(link, procs, n, tag):
    """The TCP leg's far end: returns (the address the source side connects to, the
    host:port the destination side listens on), starting the delay stage when there is one."""
    port = free_port()
    if not link.delay_ms:
        return (link.far, port), f"{link.far}:{port}"
    inner = free_port()
    procs.start(f"delay_{tag}", link.wrap([HOP, "delay", f"{link.far}:{port}",
                                           f"127.0.0.1:{inner}", str(n), str(link.delay_ms),
                                           str(link.window_mib)]), counted=False)
    link.call(lambda: wait_until(lambda: tcp_listening(link.far, port), "delay stage"))
    return (link.far, port), f"127.0.0.1:{inner}"


def socat_cmd(kind, a, b):
    return ["socat"] + (["-b", str(TP_PUMP_BUF)] if kind == "socat_256k" else []) + [a, b]


def chain(kind, n, link, procs, tmp, key):
    """Starts kind's chain and its sink; returns (sender's address, sink)."""
    sink_path = os.path.join(tmp, "sink.sock")
    if kind == "direct_tcp":
        entry, listen = far_leg(link, procs, n, "tcp")
        host, port = listen.rsplit(":", 1)

        def tcp_listener():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
            s.listen(64)
            return s

        return entry, Sink(link.call(tcp_listener), n)
    ul = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ul.bind(sink_path)
    ul.listen(64)
    sink = Sink(ul, n)
    if kind == "direct":
        return sink_path, sink
    entry, listen = far_leg(link, procs, n, kind)
    src_path = os.path.join(tmp, "src.sock")
    host, port = listen.rsplit(":", 1)
    if kind.startswith("relay"):
        pump = PUMP_MODE.get(kind)
        procs.start("dst", link.wrap([HOP, "dst", listen, sink_path, key, str(n)]), pump=pump)
        link.call(lambda: wait_until(lambda: tcp_listening(host, int(port)), "dst hop"))
        procs.start("src", [HOP, "src", src_path, entry[0], str(entry[1]), key, str(n)],
                    pump=pump)
    else:
        procs.start("dst", link.wrap(socat_cmd(
            kind, f"TCP-LISTEN:{port},fork,reuseaddr,bind={host}",
            f"UNIX-CONNECT:{sink_path}")))
        link.call(lambda: wait_until(lambda: tcp_listening(host, int(port)), "dst socat"))
        procs.start("src", socat_cmd(kind, f"UNIX-LISTEN:{src_path},fork",
                                     f"TCP:{entry[0]}:{entry[1]}"))
    wait_until(lambda: os.path.exists(src_path), f"{kind} source side")
    return src_path, sink


def reap(procs, kind):
    """Waits for every process of the run; returns (relay CPU s, delay CPU s, hop reports)."""
    cpu, delay_cpu, reports = 0.0, 0.0, {}
    for name, p, counted in procs.all:
        if kind.startswith("socat") and counted:
            time.sleep(0.2)  # its children have seen both ends close and been reaped
            p.terminate()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except ChildProcessError:
            continue
        p.returncode = os.waitstatus_to_exitcode(status)
        out = p.stdout.read()
        p.stdout.close()
        if counted:
            cpu += ru.ru_utime + ru.ru_stime
        else:
            delay_cpu += ru.ru_utime + ru.ru_stime
        if not kind.startswith("socat") or not counted:
            if p.returncode != 0:
                raise RuntimeError(f"{kind}: {name} exited {p.returncode}: {procs.log(name)}")
            reports[name] = json.loads(out)
    return cpu, delay_cpu, reports


def run(kind, n, per_stream, link, key, timeout):
    tmp = tempfile.mkdtemp(prefix="vmig-relay-")
    procs = Procs(tmp)
    try:
        entry, sink = chain(kind, n, link, procs, tmp, key)
        sender = {}
        st = threading.Thread(target=lambda: sender.update(t0=send_all(entry, n, per_stream)),
                              daemon=True)
        st.start()
        sink.t.join(timeout)
        st.join(5)
        if sink.end is None or "t0" not in sender:
            logs = {name: procs.log(name) for name, _, _ in procs.all}
            raise RuntimeError(f"{kind} streams={n}: not done after {timeout} s: {logs}")
        cpu, delay_cpu, reports = reap(procs, kind)
    finally:
        procs.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    moved, wall = sum(sink.got), sink.end - sender["t0"]
    if moved != per_stream * n or sink.bad or sorted(sink.order) != sorted(
            ["main"] + [f"multifd{i}" for i in range(n - 1)]):
        raise RuntimeError(f"{kind}: {moved} of {per_stream * n} bytes, streams {sink.order}, "
                           f"bad heads {sink.bad}")
    r = {"kind": kind, "streams": n, "bytes": moved, "wall_s": round(wall, 4),
         "gbit_s": round(moved * 8 / wall / 1e9, 3), "relay_cpu_s": round(cpu, 3),
         "cpu_s_per_gib": round(cpu / (moved / (1 << 30)), 4),
         "main_first": sink.order[0] == "main"}
    if link.delay_ms and kind != "direct":
        r["delay_stage_cpu_s"] = round(delay_cpu, 3)
    for name in ("src", "dst"):
        if name in reports:
            r[f"hop_{name}"] = reports[name]
    return r


def summarize(runs):
    summary = []
    for n in sorted({r["streams"] for r in runs}):
        row = {"streams": n}
        for k in KINDS:
            rs = [r for r in runs if r["kind"] == k and r["streams"] == n]
            if not rs:
                continue
            g, c = [r["gbit_s"] for r in rs], [r["cpu_s_per_gib"] for r in rs]
            row[k] = {"gbit_s_median": statistics.median(g), "gbit_s_min": min(g),
                      "gbit_s_max": max(g), "cpu_s_per_gib_median": statistics.median(c),
                      "cpu_s_per_gib_min": min(c), "cpu_s_per_gib_max": max(c)}
        for rk in ("relay", "relay_copy", "relay_splice"):
            for s in ("socat", "socat_256k"):
                if rk in row and s in row:
                    gr = row[rk]["gbit_s_median"] / row[s]["gbit_s_median"]
                    cr = row[rk]["cpu_s_per_gib_median"] / row[s]["cpu_s_per_gib_median"]
                    row[f"{rk}_over_{s}_gbit"] = round(gr, 3)
                    row[f"{rk}_over_{s}_cpu"] = round(cr, 3)
        if "relay_over_socat_gbit" in row:
            row["target_gbit_met"] = row["relay_over_socat_gbit"] >= 1.5  # >= 1.5x socat
            row["target_cpu_met"] = row["relay_over_socat_cpu"] <= 0.5    # <= 0.5x socat
        summary.append(row)
    return summary


def plot(path, summary, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [row["streams"] for row in summary]
    for i, k in enumerate(KINDS):
        if all(k in row for row in summary):
            style = {"marker": "o", "label": k, "color": f"C{i}",
                     "linestyle": "--" if k.startswith("direct") else "-"}
            a1.plot(xs, [row[k]["gbit_s_median"] for row in summary], **style)
            if k in RELAYS:
                a2.plot(xs, [row[k]["cpu_s_per_gib_median"] for row in summary], **style)
    a1.set(xlabel="streams", ylabel="Gbit/s (median, log scale)", xticks=xs, yscale="log",
           title="throughput")
    a2.set(xlabel="streams", ylabel="relay CPU-s per GiB (median)", xticks=xs,
           title="relay CPU per GiB")
    a2.set_ylim(bottom=0)
    a1.legend()
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib-per-stream", type=float, default=0.25)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--link", choices=["loopback", "veth"], default="loopback")
    ap.add_argument("--delay-ms", type=int, default=5, help="veth: one-way delay, each way")
    ap.add_argument("--window-mib", type=int, default=16,
                    help="veth: bytes the delay stage holds per direction and stream")
    ap.add_argument("--rate-gbit", type=float, help="veth: a tbf rate on the link")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for one run")
    ap.add_argument("--plot")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    if not shutil.which("socat") and any(k.startswith("socat") for k in kinds):
        sys.exit("relay.py: needs socat (apt-get install socat)")
    if not os.access(HOP, os.X_OK):
        sys.exit(f"relay.py: no {HOP} (cmake --build build --target vmig-relay-hop)")
    if a.link == "veth" and os.geteuid() != 0:
        sys.exit("relay.py: --link veth needs root (a network namespace and a veth pair)")
    if a.plot:
        try:
            import matplotlib  # noqa: F401  (checked before the measuring, not after)
        except ImportError:
            sys.exit("relay.py: --plot needs matplotlib (try /usr/bin/python3, or apt-get "
                     "install python3-matplotlib)")
    per = int(a.gib_per_stream * (1 << 30))
    runs = []
    keydir = tempfile.mkdtemp(prefix="vmig-relay-key-")
    key = os.path.join(keydir, "key")
    with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    link = None
    try:
        link = Link(a.link, a.delay_ms, a.window_mib, a.rate_gbit)
        for n in [int(x) for x in a.streams.split(",")]:
            for rnd in range(a.rounds):
                order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]
                for k in order:
                    r = run(k, n, per, link, key, a.timeout)
                    r["round"] = rnd
                    runs.append(r)
                    print(f"{k:10} streams={n} round={rnd}: {r['gbit_s']:6.2f} Gbit/s, "
                          f"{r['cpu_s_per_gib']:.3f} relay CPU-s/GiB", file=sys.stderr)
    finally:
        if link:
            link.close()
        shutil.rmtree(keydir, ignore_errors=True)
    summary = summarize(runs)
    desc = a.link + (f", {a.delay_ms} ms each way (delay stage, window {a.window_mib} MiB)"
                     if a.link == "veth" and a.delay_ms else "")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(json.dumps({"link": desc, "gib_per_stream": a.gib_per_stream, "rounds": a.rounds,
                      "cpus": os.cpu_count(), "loadavg_at_end": load,
                      "vmig_pump": os.environ.get("VMIG_PUMP", ""), "summary": summary,
                      "runs": runs}, indent=1))
    if a.plot:
        plot(a.plot, summary, f"relay chain, {desc}, {a.gib_per_stream} GiB per stream")


if __name__ == "__main__":
    main()
