#!/usr/bin/env python3
"""Generates cpu/qemu-cpu-data.c from a local QEMU: its x86 feature names with their CPUID bits,
and its named CPU models with their feature sets.

How the facts are obtained, all from QEMU itself:
  * models: query-cpu-definitions, then query-cpu-model-expansion type=static of each model,
    whose boolean props that are true are the model's features (vendor, family, model, stepping
    come from the same expansion).  Every accelerator applies its defaults to the expansion:
    measured on QEMU 7.2 over all 129 models, TCG only turns vme off (125 models define it),
    while KVM turns x2apic on and monitor, svm, npt, nrip-save, acpi, svme-addr-chk off and
    adds its paravirt leaf.  So a model's definition is its TCG expansion plus vme where the
    KVM expansion has it; without KVM the script says so and leaves vme out;
  * CPUID bits: for each feature F, QEMU is started with `-cpu base,+F -S` and the CPU's
    feature-words and filtered-features QOM properties read back: the bit set is F's;
  * MSR features (IA32_ARCH_CAPABILITIES 0x10a, CORE_CAPABILITY 0xcf, PERF_CAPABILITIES 0x345)
    do not appear in feature-words; their bit positions are the architectural ones (SDM) and
    are listed below, taken only where this QEMU knows the name.
vmx-* features (nested virtualisation MSRs) are left out of the table and the models.

Usage: scripts/gen-cpu-data.py [--qemu BINARY] [--out cpu/qemu-cpu-data.c] [--jobs 2]
"""
import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import tempfile
import time

MSR_FEATURES = {
    # IA32_ARCH_CAPABILITIES
    "rdctl-no": (0x10a, 0), "ibrs-all": (0x10a, 1), "rsba": (0x10a, 2),
    "skip-l1dfl-vmentry": (0x10a, 3), "ssb-no": (0x10a, 4), "mds-no": (0x10a, 5),
    "pschange-mc-no": (0x10a, 6), "tsx-ctrl": (0x10a, 7), "taa-no": (0x10a, 8),
    "sbdr-ssdp-no": (0x10a, 13), "fbsdp-no": (0x10a, 14), "psdp-no": (0x10a, 15),
    "fb-clear": (0x10a, 17), "pbrsb-no": (0x10a, 24),
    # IA32_CORE_CAPABILITY
    "split-lock-detect": (0xcf, 5),
    # IA32_PERF_CAPABILITIES
    "full-width-write": (0x345, 13),
}
REGS = {"EAX": 0, "EBX": 1, "ECX": 2, "EDX": 3}


class QMP:
    def __init__(self, path):
        for _ in range(400):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.01)
        else:
            raise RuntimeError("QEMU did not open " + path)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            m = json.loads(self.f.readline())
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise RuntimeError("%s: %s" % (name, m["error"]["desc"]))


def qemu(binary, args, work, tag, accel="tcg"):
    sock = os.path.join(work, tag + ".sock")
    p = subprocess.Popen([binary, "-nodefaults", "-display", "none", "-accel", accel,
                          "-qmp", "unix:%s,server=on,wait=off" % sock] + args,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return p, QMP(sock)


def feature_bits(binary, work, feat):
    p, q = qemu(binary, ["-machine", "pc", "-cpu", "base,+" + feat, "-S"], work, "f-" + feat)
    try:
        # TCG filters out what it cannot emulate: those bits are in filtered-features
        words = []
        for prop in ("feature-words", "filtered-features"):
            words += q.cmd("qom-get", path="/machine/unattached/device[0]", property=prop)
    finally:
        p.kill()
        p.wait()
    bits = set()
    for w in words:
        if w["cpuid-input-eax"] == 0xd and w.get("cpuid-input-ecx", 0) == 0:
            continue  # XSAVE components implied by a feature (x87, SSE, AVX state), not features
        for b in range(32):
            if w["features"] >> b & 1:
                bits.add((w["cpuid-input-eax"], w.get("cpuid-input-ecx", 0),
                          REGS[w["cpuid-register"]], b))
    return feat, sorted(bits)


def kvm_vme_models(binary, work, names):
    """Models whose definition has vme, read under KVM (TCG forces vme off); None without KVM."""
    try:
        p, q = qemu(binary, ["-machine", "none"], work, "kvm", accel="kvm")
    except RuntimeError:
        return None
    try:
        return {n for n in names
                if q.cmd("query-cpu-model-expansion", type="static",
                         model={"name": n})["model"]["props"].get("vme") is True}
    finally:
        p.kill()
        p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "cpu",
                                                  "qemu-cpu-data.c"))
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vmig-gen-")
    p, q = qemu(a.qemu, ["-machine", "none"], work, "main")
    ver = q.cmd("query-version")["qemu"]
    version = "%d.%d.%d" % (ver["major"], ver["minor"], ver["micro"])
    defs = q.cmd("query-cpu-definitions")
    models, names = [], set()
    for d in sorted(defs, key=lambda d: d["name"]):
        if d["name"] in ("host", "max", "base") or d["name"].startswith("kvm") is None:
            continue
        exp = q.cmd("query-cpu-model-expansion", type="static", model={"name": d["name"]})
        props = exp["model"]["props"]
        feats = sorted(k for k, v in props.items() if v is True and not k.startswith("vmx-"))
        names.update(k for k, v in props.items() if isinstance(v, bool) and not k.startswith("vmx-"))
        models.append({"name": d["name"], "alias_of": d.get("alias-of"),
                       "vendor": props.get("vendor", ""), "family": props.get("family", 0),
                       "model": props.get("model", 0), "stepping": props.get("stepping", 0),
                       "features": feats})
    vme_models = kvm_vme_models(a.qemu, work, [m["name"] for m in models])
    for m in models:
        if vme_models is None or m["name"] in vme_models:
            if vme_models is not None:
                m["features"] = sorted(set(m["features"]) | {"vme"})
    if vme_models is None:
        print("warning: KVM unavailable: vme is left as TCG reports it (off)")
    # "max" tells which names this QEMU knows that no named model uses
    exp = q.cmd("query-cpu-model-expansion", type="static", model={"name": "max"})
    names.update(k for k, v in exp["model"]["props"].items()
                 if isinstance(v, bool) and not k.startswith("vmx-"))
    p.kill()
    p.wait()

    table = []
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        for feat, bits in ex.map(lambda f: feature_bits(a.qemu, work, f), sorted(names)):
            if feat in MSR_FEATURES:
                idx, bit = MSR_FEATURES[feat]
                table.append((feat, "CPU_ITEM_MSR", idx, 0, 0, bit))
            elif len(bits) == 1:
                leaf, sub, reg, bit = bits[0]
                table.append((feat, "CPU_ITEM_CPUID", leaf, sub, reg, bit))
            # else: a property that sets no CPUID bit (migratable, pmu, ...) or several

    with open(a.out, "w") as f:
        f.write("/* Generated by scripts/gen-cpu-data.py from QEMU %s: do not edit. */\n" % version)
        f.write('#include "cpu/cpu-data.h"\n\n')
        f.write('const char cpu_data_qemu_version[] = "%s";\n\n' % version)
        f.write("const cpu_feature_def cpu_features[] = {\n")
        for feat, kind, leaf, sub, reg, bit in sorted(table, key=lambda t: (t[1], t[2], t[3], t[4], t[5])):
            f.write('    {"%s", %s, 0x%x, %d, %d, %d},\n' % (feat, kind, leaf, sub, reg, bit))
        f.write("};\nconst size_t cpu_features_count = sizeof(cpu_features) / sizeof(cpu_features[0]);\n\n")
        f.write("const cpu_model_def cpu_model_defs[] = {\n")
        for m in models:
            f.write('    {"%s", %s, "%s", %d, %d, %d,\n     "%s"},\n' % (
                m["name"], '"%s"' % m["alias_of"] if m["alias_of"] else "NULL", m["vendor"],
                m["family"], m["model"], m["stepping"], " ".join(m["features"])))
        f.write("};\nconst size_t cpu_model_defs_count = sizeof(cpu_model_defs) / sizeof(cpu_model_defs[0]);\n")
    print("wrote %s: %d features, %d models (QEMU %s)" % (a.out, len(table), len(models), version))


if __name__ == "__main__":
    main()
