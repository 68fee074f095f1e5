#!/usr/bin/env python3
"""Relay chain throughput on loopback: vmigrate's pump against socat, side by side.

A sender pushes BYTES over N TCP streams to a sink, through a chain of two relay hops (the
source relay and the agent, in the transport's design), or directly.  Four chains run in
rounds, each kind going first in turn:
  direct      sender -> sink
  pump        sender -> vmig-relay-hop -> vmig-relay-hop -> sink  (build/bench/vmig-relay-hop)
  socat       sender -> socat -> socat -> sink   (TCP-LISTEN,fork -> TCP; its 8 KiB default)
  socat_256k  the same with -b 262144, the pump's buffer size
For each it reports Gbit/s (BYTES * N over the wall time from the first byte sent to the last
byte received) and the relay processes' CPU seconds per GiB relayed (their own rusage, socat's
forked children included).  Prints JSON; --plot FILE writes a PNG (matplotlib) of throughput
by stream count.

  python3 bench/relay.py [--gib-per-stream 0.5] [--streams 1,2,4,8] [--rounds 4]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 1 << 20
TP_PUMP_BUF = 256 * 1024  # transport/pump.h: socat_256k gets the same buffer


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, deadline=10.0):
    """Waits until something listens on port, without connecting to it."""
    end = time.time() + deadline
    while time.time() < end:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        finally:
            s.close()
        time.sleep(0.02)
    return False


def sink(port, n, total, done):
    """Accepts n connections and reads until each closes; records the last byte's time."""
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port))
    l.listen(64)
    done["listening"].set()
    got = [0] * n

    def reader(i, c):
        buf = bytearray(CHUNK)
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            got[i] += k
        c.close()

    threads = []
    for i in range(n):
        c, _ = l.accept()
        t = threading.Thread(target=reader, args=(i, c))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    l.close()
    done["end"] = time.monotonic()
    done["bytes"] = sum(got)


def send_all(port, n, per_stream):
    data = b"\x5a" * CHUNK
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]

    def writer(s):
        left = per_stream
        while left > 0:
            k = s.send(data[: min(CHUNK, left)])
            left -= k
        s.shutdown(socket.SHUT_WR)
        # wait for the far end to close: the chain has passed everything on
        while s.recv(65536):
            pass
        s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0


def hops(kind, n, first, last):
    """Starts the two relay hops: first -> mid -> last.  Returns their Popen objects."""
    mid = free_port()
    procs = []
    for lport, tport in ((mid, last), (first, mid)):
        if kind == "pump":
            cmd = [os.path.join(ROOT, "build/bench/vmig-relay-hop"), str(lport), str(tport),
                   str(n)]
        else:
            cmd = ["socat"] + (["-b", str(TP_PUMP_BUF)] if kind == "socat_256k" else []) + \
                [f"TCP-LISTEN:{lport},fork,reuseaddr,bind=127.0.0.1", f"TCP:127.0.0.1:{tport}"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        if not wait_listening(lport):
            raise RuntimeError(f"{kind} hop did not listen on {lport}")
    return procs


def run(kind, n, per_stream):
    sink_port = free_port()
    done = {"listening": threading.Event()}
    st = threading.Thread(target=sink, args=(sink_port, n, per_stream * n, done))
    st.start()
    done["listening"].wait()
    entry, procs = sink_port, []
    if kind != "direct":
        entry = free_port()
        procs = hops(kind, n, entry, sink_port)
    t0 = send_all(entry, n, per_stream)
    st.join()
    wall = done["end"] - t0
    cpu, channels = 0.0, []
    for p in procs:
        if kind.startswith("socat"):
            time.sleep(0.2)  # its children have seen both ends close and been reaped
            p.terminate()
        _, _, ru = os.wait4(p.pid, 0)  # rusage: socat's reaped children included
        p.returncode = 0
        cpu += ru.ru_utime + ru.ru_stime
        out = p.stdout.read()
        p.stdout.close()
        if kind == "pump":
            channels.append(json.loads(out)["channels"])
    moved = done["bytes"]
    if moved != per_stream * n:
        raise RuntimeError(f"{kind}: {moved} of {per_stream * n} bytes arrived")
    r = {"kind": kind, "streams": n, "bytes": moved, "wall_s": round(wall, 4),
         "gbit_s": round(moved * 8 / wall / 1e9, 3), "relay_cpu_s": round(cpu, 3),
         "cpu_s_per_gib": round(cpu / (moved / (1 << 30)), 4) if procs else 0.0}
    if channels:
        r["hop_channels"] = channels
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib-per-stream", type=float, default=0.5)
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--plot")
    a = ap.parse_args()
    if not shutil.which("socat"):
        sys.exit("relay.py: needs socat (apt-get install socat)")
    if a.plot:
        try:
            import matplotlib  # noqa: F401  (checked before an hour of measuring, not after)
        except ImportError:
            sys.exit("relay.py: --plot needs matplotlib (apt-get install python3-matplotlib)")
    per = int(a.gib_per_stream * (1 << 30))
    kinds = ["direct", "pump", "socat", "socat_256k"]
    runs = []
    for n in [int(x) for x in a.streams.split(",")]:
        for rnd in range(a.rounds):
            order = kinds[rnd % len(kinds):] + kinds[:rnd % len(kinds)]  # each goes first in turn
            for k in order:
                r = run(k, n, per)
                r["round"] = rnd
                runs.append(r)
                print(f"{k:6} streams={n} round={rnd}: {r['gbit_s']:.2f} Gbit/s, "
                      f"{r['cpu_s_per_gib']:.3f} relay CPU-s/GiB", file=sys.stderr)
    summary = []
    for n in sorted({r["streams"] for r in runs}):
        row = {"streams": n}
        for k in kinds:
            rs = [r for r in runs if r["kind"] == k and r["streams"] == n]
            row[k] = {"gbit_s_median": statistics.median(r["gbit_s"] for r in rs),
                      "gbit_s_min": min(r["gbit_s"] for r in rs),
                      "gbit_s_max": max(r["gbit_s"] for r in rs),
                      "cpu_s_per_gib_median": statistics.median(r["cpu_s_per_gib"] for r in rs)}
        row["pump_over_socat_gbit"] = round(row["pump"]["gbit_s_median"] /
                                            row["socat"]["gbit_s_median"], 3)
        row["pump_over_socat_cpu"] = round(row["pump"]["cpu_s_per_gib_median"] /
                                           row["socat"]["cpu_s_per_gib_median"], 3)
        row["pump_over_socat_256k_gbit"] = round(row["pump"]["gbit_s_median"] /
                                                 row["socat_256k"]["gbit_s_median"], 3)
        row["pump_over_socat_256k_cpu"] = round(row["pump"]["cpu_s_per_gib_median"] /
                                                row["socat_256k"]["cpu_s_per_gib_median"], 3)
        summary.append(row)
    print(json.dumps({"gib_per_stream": a.gib_per_stream, "rounds": a.rounds,
                      "summary": summary, "runs": runs}, indent=1))
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        xs = [row["streams"] for row in summary]
        for k in kinds:
            plt.plot(xs, [row[k]["gbit_s_median"] for row in summary], marker="o", label=k)
        plt.xlabel("streams")
        plt.ylabel("Gbit/s (median)")
        plt.title("relay chain on loopback: two hops")
        plt.legend()
        plt.savefig(a.plot, dpi=100)


if __name__ == "__main__":
    main()
