/*
 * Decode, baseline and compare against libvirt's expected results for real CPUs
 * (shared/cpudata).  Feature sets are compared expanded: libvirt's expected model is expanded
 * with QEMU's definition of that name.  Every difference is listed with its reason, so a
 * change in behaviour shows up as a new, unexplained difference.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/format.h"
#include "cpu/model.h"
#include "cpu/raw.h"

static cpu_models *db;

static void setup(void)
{
    db = cpu_models_builtin();
}

static void teardown(void)
{
    cpu_models_free(db);
}

TestSuite(cpu_files, .init = setup, .fini = teardown);
TestSuite(cpu_decode, .init = setup, .fini = teardown);
TestSuite(cpu_guest, .init = setup, .fini = teardown);
TestSuite(cpu_baseline, .init = setup, .fini = teardown);
TestSuite(cpu_compare, .init = setup, .fini = teardown);

static char *data_path(const char *rel)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir, "VMIG_CPUDATA is not set");
    return g_build_filename(dir, rel, NULL);
}

static char *read_data(const char *rel, gsize *len)
{
    g_autofree char *path = data_path(rel);
    char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, len, NULL), "%s", path);
    return text;
}

/* Every CPU in a file of shared/cpudata, any kind (GArray of cpu_def). */
static GArray *defs_of(const char *rel)
{
    gsize len = 0;
    g_autofree char *text = read_data(rel, &len);
    vmig_error *err = NULL;
    GArray *d = cpu_defs_parse(text, len, rel, NULL, &err);
    cr_assert_not_null(d, "%s", vmig_error_message(err));
    return d;
}

/* The first CPU of a file; its model name moves into the result. */
static cpu_def def_of_file(const char *rel)
{
    g_autoptr(GArray) d = defs_of(rel);
    cpu_def r = g_array_index(d, cpu_def, 0);
    g_array_index(d, cpu_def, 0).model_name = NULL;
    return r;
}

static cpu_def def_of(const char *xml)
{
    g_autoptr(GArray) d = cpu_defs_parse_xml(xml, strlen(xml), "x", NULL);
    cr_assert_not_null(d);
    cpu_def r = g_array_index(d, cpu_def, 0);
    g_array_index(d, cpu_def, 0).model_name = NULL; /* moved into r */
    return r;
}

static int feature(const char *name)
{
    int f = cpu_feature_index(name);
    cr_assert(ge(int, f, 0), "unknown feature %s", name);
    return f;
}

/* "a b c": what @a has and @b lacks, in table order. */
static char *minus(const cpu_featset *a, const cpu_featset *b, bool libvirt)
{
    cpu_featset d = *a;
    cpu_featset_andnot(&d, b);
    return cpu_featset_names(&d, libvirt);
}

/* ---- every file loads ------------------------------------------------------------------------ */

Test(cpu_files, every_file_in_cpudata_loads)
{
    static const char *const dirs[] = {"libvirt", "instlatx64", "libcpuid"};
    int files = 0, host = 0, guest = 0;
    for (size_t i = 0; i < G_N_ELEMENTS(dirs); i++) {
        g_autofree char *dir = data_path(dirs[i]);
        g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
        cr_assert_not_null(d, "%s", dir);
        const char *name;
        while ((name = g_dir_read_name(d))) {
            g_autofree char *rel = g_build_filename(dirs[i], name, NULL);
            gsize len = 0;
            g_autofree char *text = read_data(rel, &len);
            vmig_error *err = NULL;
            g_autoptr(GArray) defs = cpu_defs_parse(text, len, rel, NULL, &err);
            files++;
            if (strstr(name, "-enabled.xml") || strstr(name, "-disabled.xml")) {
                /* not CPUs: the bits QEMU+KVM turned on and off, a few leaves each */
                cr_expect_null(defs, "%s", rel);
                cr_expect_not_null(strstr(vmig_error_message(err), "leaf 0x0 is missing"), "%s: %s",
                                   rel, vmig_error_message(err));
                vmig_error_free(err);
                continue;
            }
            cr_expect_not_null(defs, "%s: %s", rel, vmig_error_message(err));
            if (!defs) {
                vmig_error_free(err);
                continue;
            }
            const cpu_def *c = &g_array_index(defs, cpu_def, 0);
            /* -host.xml (virsh capabilities) and raw dumps are hosts; the rest guests */
            bool want_host = !strstr(name, "-guest.xml") && !strstr(name, "-json.xml") &&
                             !strstr(name, "baseline");
            cr_expect(eq(int, c->host, want_host), "%s: host CPU %d", rel, c->host);
            host += c->host;
            guest += !c->host;
        }
    }
    cr_assert(eq(int, files, 30), "the files shared/cpudata/README.md lists");
    cr_assert(eq(int, host, 15), "6 -host.xml, 6 libvirt raw dumps, 2 InstLatx64, 1 libcpuid");
    cr_assert(eq(int, guest, 13), "6 -guest.xml, 6 -json.xml, 1 baseline result");
}

Test(cpu_files, host_only_and_nested_features_are_read)
{
    cpu_def d = def_of("<cpu><arch>x86_64</arch><model>IvyBridge</model><vendor>Intel</vendor>"
                       "<feature name='osxsave'/><feature name='cmt'/><feature name='mbm_total'/>"
                       "<feature name='vmx-exit-nosave-debugctl'/><feature name='vmx-ept'/>"
                       "</cpu>");
    cr_assert(d.host, "no mode, an <arch>: virsh capabilities' host CPU");
    cr_assert(eq(int, d.nested_ignored, 2));
    g_autofree char *names = cpu_featset_names(&d.require, true);
    cr_assert(eq(str, names, "osxsave cmt mbm_total"));
    for (int f = 0; f < (int)cpu_feature_count(); f++) {
        if (cpu_featset_has(&d.require, f)) {
            cr_assert(not(cpu_feature_guest(f)), "%s is host-only", cpu_feature(f)->name);
            cr_assert(not(cpu_feature_migratable(f)));
        }
    }
    /* a guest can have none of them */
    cpu_featset g;
    cr_assert(cpu_def_guest_set(db, &d, &g, NULL));
    cr_assert(not(cpu_featset_has(&g, feature("osxsave"))));
    cr_assert(cpu_featset_has(&g, feature("avx")), "the model's features stay");
    /* written for the host, never for a guest */
    cpu_def out = {.host = true, .family = -1, .require = d.require};
    g_autofree char *xml = cpu_format(&out, NULL, CPU_OUT_LIBVIRT);
    cr_assert_not_null(strstr(xml, "<feature name='osxsave'/>"), "%s", xml);
    g_autofree char *arg = cpu_format(&out, NULL, CPU_OUT_QEMU);
    cr_assert(eq(str, arg, "base"), "a -cpu argument never names host-only features");
    cpu_def_clear(&d);
}

/* ---- host decodes against libvirt's -host.xml ------------------------------------------------ */

typedef struct host_case {
    const char *cpu;
    const char *our_model;
    const char *model_why; /* why ours differs from libvirt's name, or NULL */
    const char *ours_only; /* in the raw data, not in libvirt's expanded decode */
    const char *ours_only_why;
} host_case;

static const host_case host_cases[] = {
    {"Core-i7-8550U", "Skylake-Client-v4",
     "QEMU's Skylake-Client-v4 is libvirt's Skylake-Client-noTSX-IBRS plus xsaves, which this "
     "CPU has; libvirt's map has no such model",
     "mpx",
     "libvirt's Skylake-Client models contain mpx; QEMU 7.2's do not, so it is an extra here"},
    {"Core-i7-3770", "IvyBridge", NULL, "", NULL},
    {"Xeon-E5-2609-v3", "Haswell-noTSX-IBRS",
     "the expected file lists spec-ctrl as an extra on Haswell-noTSX; QEMU's "
     "Haswell-noTSX-IBRS holds the same set with one extra fewer",
     "stibp",
     "version skew: the expected file lists spec-ctrl but not stibp although the raw data has "
     "both bits (shared/cpudata/README.md)"},
    {"Xeon-Gold-6148", "Skylake-Server", "the expected file's libvirt map had no Skylake-Server",
     "mpx clwb intel-pt",
     "mpx: as for the i7-8550U; clwb and intel-pt: the expected file's libvirt map (Skylake-Client "
     "for a Skylake-SP Xeon) did not name them yet"},
    {"EPYC-7502-32-Core", "EPYC-Rome-v2",
     "QEMU 7.2's EPYC-Rome-v2 adds ibrs and amd-ssbd to EPYC-Rome; this CPU has both",
     "overflow-recov succor", "version skew: the expected file predates libvirt naming them"},
    {"Ryzen-7-1800X-Eight-Core", "EPYC", NULL,
     "xsaveerptr lbrv svm_lock tsc_scale vmcb_clean flushbyasid decodeassists pause_filter "
     "pfthreshold avic v-vmsave-vmload vgif overflow-recov succor",
     "version skew: the expected file predates libvirt naming the SVM sub-features, "
     "xsaveerptr, overflow-recov and succor"},
};

static cpu_def raw_def(const char *cpu)
{
    g_autofree char *rel = g_strdup_printf("libvirt/x86_64-cpuid-%s.xml", cpu);
    cpu_def d = def_of_file(rel);
    cr_assert(d.host, "%s: a raw dump is a host CPU", cpu);
    return d;
}

static void check_host(const host_case *c)
{
    cpu_def raw = raw_def(c->cpu);
    cpu_decoded dec;
    vmig_error *err = NULL;
    cr_assert(cpu_decode(db, &raw.require, raw.vendor, raw.family, raw.model, CPU_DECODE_HOST, NULL,
                         &dec, &err),
              "%s", vmig_error_message(err));
    cr_expect(cpu_featset_empty(&dec.disable), "%s: a host decode disables nothing", c->cpu);

    g_autofree char *host_rel = g_strdup_printf("libvirt/x86_64-cpuid-%s-host.xml", c->cpu);
    cpu_def e = def_of_file(host_rel);
    cpu_featset want;
    cr_assert(cpu_def_expand(db, &e, &want, &err), "%s", vmig_error_message(err));
    if (c->model_why) {
        cr_expect(eq(str, (char *)dec.model->name, (char *)c->our_model), "%s", c->cpu);
        cr_expect(strcmp(e.model_name, c->our_model) != 0,
                  "%s: libvirt now agrees (%s): drop the explanation", c->cpu, e.model_name);
    } else {
        cr_expect(eq(str, (char *)dec.model->name, e.model_name), "%s: same model as libvirt",
                  c->cpu);
    }
    g_autofree char *oo = minus(&raw.require, &want, true);
    g_autofree char *to = minus(&want, &raw.require, true);
    cr_expect(eq(str, oo, (char *)c->ours_only), "%s: extra features (%s)", c->cpu,
              c->ours_only_why ? c->ours_only_why : "none expected");
    cr_expect(eq(str, to, ""), "%s: libvirt's decode has features the raw data lacks", c->cpu);
    cpu_def_clear(&raw);
    cpu_def_clear(&e);
}

Test(cpu_decode, real_cpus_against_libvirt_host_decodes)
{
    for (size_t i = 0; i < G_N_ELEMENTS(host_cases); i++) {
        check_host(&host_cases[i]);
    }
}

/* ---- what a guest can have: against libvirt's -guest.xml and QEMU+KVM's host model ---------- */

/*
 * libvirt's -guest.xml decodes the raw CPUID as a guest CPU without asking KVM, so it keeps
 * bits no guest gets; its -json.xml is the host model QEMU+KVM really offered on that machine,
 * at the time it was recorded.  Our guest view models a current KVM (reference/cpu.md 1).
 */
typedef struct guest_case {
    const char *cpu;
    const char *our_model;
    const char *hidden;    /* in -guest.xml, not ours: KVM never gives them (or QEMU's migratable
                            * host model leaves them out: invtsc, pdcm, perfctr-*), host-only */
    const char *added;     /* ours, not in -guest.xml: KVM or QEMU set them */
    const char *json_only; /* in -json.xml, not ours */
    const char *ours_not_json;
    const char *json_why;
} guest_case;

#define INTEL_HIDDEN "dtes64 monitor ds-cpl smx est tm2 xtpr pdcm"
#define INTEL_LEGACY "ds acpi ht tm pbe"

static const guest_case guest_cases[] = {
    {"Core-i7-8550U", "Skylake-Client-v4",
     "dtes64 monitor ds-cpl est tm2 xtpr pdcm " INTEL_LEGACY " sgx intel-pt invtsc osxsave "
     "flush-l1d",
     "hypervisor umip arch-capabilities ibpb ibrs amd-stibp amd-ssbd", "",
     "ibpb ibrs amd-stibp amd-ssbd",
     "the AMD-style spectre bits KVM offers Intel guests (Linux 5.x) were not offered then"},
    {"Core-i7-3770", "IvyBridge", INTEL_HIDDEN " " INTEL_LEGACY " invtsc osxsave",
     "hypervisor tsc-adjust umip arch-capabilities skip-l1dfl-vmentry pschange-mc-no", "",
     "vmx umip arch-capabilities skip-l1dfl-vmentry pschange-mc-no",
     "recorded before KVM nested VMX by default (Linux 4.20), UMIP emulation and the emulated "
     "ARCH_CAPABILITIES"},
    {"Xeon-E5-2609-v3", "Haswell-noTSX-IBRS",
     "dtes64 monitor ds-cpl smx est tm2 xtpr pdcm dca " INTEL_LEGACY " invtsc osxsave cmt",
     "hypervisor umip stibp arch-capabilities ibpb ibrs amd-stibp skip-l1dfl-vmentry "
     "pschange-mc-no",
     "", "vmx umip stibp arch-capabilities ibpb ibrs amd-stibp skip-l1dfl-vmentry pschange-mc-no",
     "recorded before nested VMX by default, UMIP emulation, the emulated ARCH_CAPABILITIES and "
     "the AMD-style spectre bits; stibp: version skew, the raw data is newer (README)"},
    {"Xeon-Gold-6148", "Skylake-Server",
     "dtes64 monitor ds-cpl smx est tm2 xtpr pdcm dca " INTEL_LEGACY " pku invtsc osxsave cmt "
     "mbm_total mbm_local",
     "hypervisor clwb umip arch-capabilities skip-l1dfl-vmentry pschange-mc-no", "",
     "vmx clwb umip arch-capabilities xsaves skip-l1dfl-vmentry pschange-mc-no",
     "recorded before nested VMX by default, UMIP emulation, the emulated ARCH_CAPABILITIES and "
     "XSAVES for guests on Skylake-SP; clwb: that libvirt's map did not name it (its model was "
     "Skylake-Client), so neither expected file lists it. pku: the raw data has no OSPKE, the "
     "host OS had protection keys off, and KVM offers pku only where they are on"},
    {"EPYC-7502-32-Core", "EPYC-Rome-v2",
     "monitor ht extapic ibs skinit wdt tce perfctr-core perfctr-nb invtsc lbrv svm-lock "
     "tsc-scale vmcb-clean flushbyasid decodeassists pause-filter pfthreshold avic "
     "v-vmsave-vmload vgif osxsave cmt mbm_total mbm_local",
     "x2apic tsc-deadline hypervisor tsc-adjust spec-ctrl stibp arch-capabilities ssbd "
     "virt-ssbd svme-addr-chk",
     "monitor perfctr-core", "ibrs svme-addr-chk",
     "monitor and perfctr-core: QEMU's EPYC-Rome, which expands the file's model name, has them "
     "and libvirt's does not (KVM gives neither); ibrs: not offered then; svme-addr-chk: "
     "QEMU named it later (6.0)"},
    {"Ryzen-7-1800X-Eight-Core", "EPYC-v3",
     "monitor ht extapic skinit wdt tce perfctr-core perfctr-nb invtsc lbrv svm-lock tsc-scale "
     "vmcb-clean flushbyasid decodeassists pause-filter pfthreshold avic v-vmsave-vmload vgif "
     "osxsave overflow-recov",
     "x2apic tsc-deadline hypervisor tsc-adjust arch-capabilities svme-addr-chk rdctl-no "
     "skip-l1dfl-vmentry mds-no pschange-mc-no",
     NULL, NULL, NULL},
};

static void check_guest(const guest_case *c)
{
    cpu_def raw = raw_def(c->cpu);
    cpu_featset ours;
    vmig_error *err = NULL;
    cr_assert(cpu_def_guest_set(db, &raw, &ours, &err), "%s", vmig_error_message(err));
    cpu_decoded dec;
    cr_assert(cpu_decode(db, &ours, raw.vendor, raw.family, raw.model, CPU_DECODE_GUEST, NULL, &dec,
                         &err),
              "%s", vmig_error_message(err));
    cr_expect(eq(str, (char *)dec.model->name, (char *)c->our_model), "%s", c->cpu);

    g_autofree char *rel = g_strdup_printf("libvirt/x86_64-cpuid-%s-guest.xml", c->cpu);
    cpu_def e = def_of_file(rel);
    cpu_featset theirs;
    cr_assert(cpu_def_expand(db, &e, &theirs, &err), "%s", vmig_error_message(err));
    g_autofree char *hidden = minus(&theirs, &ours, false);
    g_autofree char *added = minus(&ours, &theirs, false);
    cr_expect(eq(str, hidden, (char *)c->hidden), "%s: what no guest gets", c->cpu);
    cr_expect(eq(str, added, (char *)c->added), "%s: what KVM and QEMU add", c->cpu);
    /* nothing a guest cannot have is left */
    cpu_featset possible = ours;
    cpu_kvm_possible(&possible);
    g_autofree char *impossible = minus(&ours, &possible, false);
    cr_expect(eq(str, impossible, ""), "%s", c->cpu);
    cpu_def_clear(&e);

    if (c->json_why) {
        g_autofree char *jrel = g_strdup_printf("libvirt/x86_64-cpuid-%s-json.xml", c->cpu);
        cpu_def j = def_of_file(jrel);
        cpu_featset kvm;
        cr_assert(cpu_def_expand(db, &j, &kvm, &err), "%s", vmig_error_message(err));
        g_autofree char *jo = minus(&kvm, &ours, false);
        g_autofree char *oj = minus(&ours, &kvm, false);
        cr_expect(eq(str, jo, (char *)c->json_only), "%s: QEMU+KVM gave, ours lacks (%s)", c->cpu,
                  c->json_why);
        cr_expect(eq(str, oj, (char *)c->ours_not_json), "%s: ours, QEMU+KVM did not give (%s)",
                  c->cpu, c->json_why);
        cpu_def_clear(&j);
    }
    cpu_def_clear(&raw);
}

Test(cpu_guest, raw_dumps_against_libvirt_guest_decodes_and_kvm_host_models)
{
    for (size_t i = 0; i < G_N_ELEMENTS(guest_cases); i++) {
        check_guest(&guest_cases[i]);
    }
}

/* A hand-built cpu_raw from a partial cpudata file (-enabled.xml, -disabled.xml). */
static void partial_cpudata(const char *rel, cpu_featset *ret)
{
    gsize len = 0;
    g_autofree char *text = read_data(rel, &len);
    g_autoptr(cpu_raw) r = cpu_raw_new();
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        unsigned l, s, a, b, c, d;
        if (sscanf(lines[i],
                   " <cpuid eax_in='0x%x' ecx_in='0x%x' eax='0x%x' ebx='0x%x' "
                   "ecx='0x%x' edx='0x%x'/>",
                   &l, &s, &a, &b, &c, &d) == 6) {
            cpu_raw_set(r, l, s, (uint32_t[4]){a, b, c, d});
        } else if (sscanf(lines[i], " <msr index='0x%x' edx='0x%x' eax='0x%x'/>", &l, &d, &a) ==
                   3) {
            cpu_raw_set_msr(r, l, (uint64_t)d << 32 | a);
        }
    }
    cpu_raw_features(r, ret);
}

Test(cpu_guest, kvm_model_reproduces_what_qemu_and_kvm_did_on_an_i7_8550U)
{
    /* -enabled.xml: every bit the guest got; -disabled.xml: the host's bits it did not get */
    cpu_featset enabled, disabled;
    partial_cpudata("libvirt/x86_64-cpuid-Core-i7-8550U-enabled.xml", &enabled);
    partial_cpudata("libvirt/x86_64-cpuid-Core-i7-8550U-disabled.xml", &disabled);
    cpu_def raw = raw_def("Core-i7-8550U");
    cpu_featset ours;
    cpu_kvm_guest(&raw.require, raw.vendor, &ours);
    cpu_featset leaked = ours;
    cpu_featset_and(&leaked, &disabled);
    g_autofree char *l = cpu_featset_names(&leaked, false);
    cr_assert(eq(str, l, ""), "every bit QEMU+KVM withheld is withheld");
    g_autofree char *extra = minus(&ours, &enabled, false);
    g_autofree char *missing = minus(&enabled, &ours, false);
    cr_assert(eq(str, extra, "ibpb ibrs amd-stibp amd-ssbd"),
              "Linux 5.x offers Intel guests the AMD-style spectre bits; that KVM did not");
    cr_assert(eq(str, missing, "mpx"), "Linux 5.6 dropped MPX for guests; that KVM had it");
    cpu_def_clear(&raw);
}

/* ---- this machine ---------------------------------------------------------------------------- */

static cpu_def this_machine(void)
{
    g_autofree char *here = g_path_get_dirname(__FILE__);
    g_autofree char *path = g_build_filename(here, "..", "data", "cpuid",
                                             "epyc-cloud-vm-no-svm.xml", NULL);
    vmig_error *err = NULL;
    g_autoptr(GArray) d = cpu_defs_load(path, &err);
    cr_assert_not_null(d, "%s", vmig_error_message(err));
    cpu_def r = g_array_index(d, cpu_def, 0);
    g_array_index(d, cpu_def, 0).model_name = NULL;
    return r;
}

Test(cpu_decode, an_epyc_cloud_vm_without_svm_decodes_as_epyc)
{
    cpu_def raw = this_machine();
    cr_assert(eq(str, raw.vendor, "AuthenticAMD"));
    cr_assert(eq(int, raw.family, 26));
    cr_assert(not(cpu_featset_has(&raw.require, feature("svm"))));
    cpu_featset guest;
    cr_assert(cpu_def_guest_set(db, &raw, &guest, NULL));
    cpu_decoded dec;
    vmig_error *err = NULL;
    cr_assert(cpu_decode(db, &guest, raw.vendor, raw.family, raw.model, CPU_DECODE_GUEST, NULL,
                         &dec, &err),
              "%s", vmig_error_message(err));
    cr_assert(g_str_has_prefix(dec.model->name, "EPYC"), "decoded as %s", dec.model->name);
    g_autofree char *dis = cpu_featset_names(&dec.disable, false);
    cr_assert(eq(str, dis, "monitor rdseed svm osvw topoext fxsr-opt rdtscp npt nrip-save"),
              "the bits this VM's hypervisor hides, named");
    /* As a host CPU nothing may be disabled, and every EPYC model needs some of those bits:
     * libvirt's rule leaves the oldest AMD model with extras. */
    cr_assert(cpu_decode(db, &raw.require, raw.vendor, raw.family, raw.model, CPU_DECODE_HOST, NULL,
                         &dec, NULL));
    cr_assert(eq(str, (char *)dec.model->name, "Opteron_G1"));
    cpu_def_clear(&raw);
}

/* ---- the decode rule ------------------------------------------------------------------------- */

Test(cpu_decode, guest_decode_may_disable)
{
    /* IvyBridge-IBRS minus avx and f16c: that model with two disabled lists fewer features
     * than an older model with extras, as libvirt decodes its Atom-P5362 example */
    const cpu_model *ivb = cpu_models_find(db, "IvyBridge-IBRS");
    cr_assert_not_null(ivb);
    cpu_featset s = ivb->features;
    cpu_featset_del(&s, feature("avx"));
    cpu_featset_del(&s, feature("f16c"));
    cpu_decoded dec;
    cr_assert(cpu_decode(db, &s, "GenuineIntel", -1, -1, CPU_DECODE_GUEST, NULL, &dec, NULL));
    cr_assert(eq(str, (char *)dec.model->name, "IvyBridge-IBRS"));
    g_autofree char *dis = cpu_featset_names(&dec.disable, false);
    cr_assert(eq(str, dis, "avx f16c"), "named in bit order");
    cr_assert(cpu_featset_empty(&dec.require));
    cr_assert(cpu_decode(db, &s, "GenuineIntel", -1, -1, CPU_DECODE_HOST, NULL, &dec, NULL));
    cr_assert(cpu_featset_empty(&dec.disable), "a host decode never disables");
}

Test(cpu_decode, fewest_listed_features_and_the_newer_model_on_a_tie)
{
    /* Cascadelake-Server-v3 and -v4 have the same features in QEMU 7.2: the newer wins */
    const cpu_model *v3 = cpu_models_find(db, "Cascadelake-Server-v3");
    const cpu_model *v4 = cpu_models_find(db, "Cascadelake-Server-v4");
    cr_assert(eq(int, memcmp(&v3->features, &v4->features, sizeof(cpu_featset)), 0));
    cpu_decoded dec;
    cr_assert(
        cpu_decode(db, &v3->features, "GenuineIntel", -1, -1, CPU_DECODE_GUEST, NULL, &dec, NULL));
    cr_assert(eq(str, (char *)dec.model->versioned, "Cascadelake-Server-v4"));
    /* one disabled feature counts as much as one required: v4 minus three of its features
     * is v4 with three disabled (3), not an older model needing more extras */
    cpu_featset s = v4->features;
    cpu_featset_del(&s, feature("avx512vnni"));
    cpu_featset_del(&s, feature("pku"));
    cpu_featset_del(&s, feature("clwb"));
    cr_assert(cpu_decode(db, &s, "GenuineIntel", -1, -1, CPU_DECODE_GUEST, NULL, &dec, NULL));
    cr_assert(eq(int, cpu_featset_count(&dec.require) + cpu_featset_count(&dec.disable), 3), "%s",
              dec.model->versioned);
    /* a matching signature still beats cost, as in libvirt */
    cr_assert(
        cpu_decode(db, &v3->features, "GenuineIntel", 6, 94, CPU_DECODE_GUEST, NULL, &dec, NULL));
    cr_assert(g_str_has_prefix(dec.model->versioned, "Skylake-Client"), "%s", dec.model->versioned);
}

Test(cpu_decode, models_are_tried_newest_first)
{
    size_t n = cpu_models_count_get(db);
    int milan = -1, rome = -1, epyc = -1, g5 = -1, icx = -1, ivb1 = -1, ivb2 = -1;
    for (size_t i = 0; i < n; i++) {
        const char *v = cpu_models_at(db, i)->versioned;
        int *slot = !strcmp(v, "EPYC-Milan-v1")       ? &milan
                    : !strcmp(v, "EPYC-Rome-v1")      ? &rome
                    : !strcmp(v, "EPYC-v1")           ? &epyc
                    : !strcmp(v, "Opteron_G5-v1")     ? &g5
                    : !strcmp(v, "Icelake-Server-v1") ? &icx
                    : !strcmp(v, "IvyBridge-v1")      ? &ivb1
                    : !strcmp(v, "IvyBridge-v2")      ? &ivb2
                                                      : NULL;
        if (slot) {
            *slot = (int)i;
        }
    }
    cr_assert(milan >= 0 && milan < rome && rome < epyc && epyc < g5);
    cr_assert(icx >= 0 && icx < ivb2 && ivb2 < ivb1);
    cr_assert(eq(sz, n, 74), "QEMU 7.2.22's models, aliases apart");
}

/* ---- baseline -------------------------------------------------------------------------------- */

Test(cpu_baseline, skylake_client_and_server_as_libvirt)
{
    g_autoptr(GArray) a = defs_of("libvirt/x86_64-cpuid-Core-i5-6600-json.xml");
    g_autoptr(GArray) b = defs_of("libvirt/x86_64-cpuid-Xeon-Gold-6148-json.xml");
    g_autoptr(GArray) want = defs_of("libvirt/x86_64-cpuid-baseline-Skylake-Client+Server.xml");
    cpu_def defs[2] = {g_array_index(a, cpu_def, 0), g_array_index(b, cpu_def, 0)};
    cpu_decoded dec;
    cpu_featset set, exp;
    char vendor[13];
    vmig_error *err = NULL;
    cr_assert(cpu_baseline(db, defs, 2, false, &dec, &set, vendor, &err), "%s",
              vmig_error_message(err));
    cr_assert(cpu_def_expand(db, &g_array_index(want, cpu_def, 0), &exp, NULL));
    g_autofree char *got = cpu_featset_names(&set, true);
    g_autofree char *expected = cpu_featset_names(&exp, true);
    cr_assert(eq(str, got, expected), "same expanded feature set as libvirt's result");
    cr_assert(eq(str, (char *)dec.model->name, "Skylake-Client"));
    g_autofree char *req = cpu_featset_names(&dec.require, true);
    cr_assert(eq(str, req, "hypervisor ss tsc_adjust clflushopt pdpe1gb"));
    cr_assert(cpu_featset_empty(&dec.disable));
    cr_assert(eq(str, vendor, "GenuineIntel"), "the vendor comes from the input models");
}

Test(cpu_baseline, any_mix_of_inputs_gives_what_a_guest_can_have_everywhere)
{
    /* a raw dump, virsh capabilities' host CPU, a host model, InstLatx64 text, libcpuid */
    static const char *const files[] = {
        "libvirt/x86_64-cpuid-Core-i7-8550U.xml",
        "libvirt/x86_64-cpuid-Xeon-E5-2609-v3-host.xml",
        "libvirt/x86_64-cpuid-Xeon-Gold-6148-json.xml",
        "instlatx64/GenuineIntel00806EA_Kabylake_CPUID.txt",
        "libcpuid/intel-core-i5-8350u-cpu.test",
    };
    cpu_def defs[G_N_ELEMENTS(files)];
    for (size_t i = 0; i < G_N_ELEMENTS(files); i++) {
        defs[i] = def_of_file(files[i]);
    }
    cpu_decoded dec;
    cpu_featset set;
    char vendor[13];
    vmig_error *err = NULL;
    cr_assert(cpu_baseline(db, defs, G_N_ELEMENTS(files), false, &dec, &set, vendor, &err), "%s",
              vmig_error_message(err));
    cpu_featset possible = set;
    cpu_kvm_possible(&possible);
    g_autofree char *impossible = minus(&set, &possible, false);
    cr_assert(eq(str, impossible, ""), "ds, tm, osxsave... never reach a baseline");
    cr_assert(not(cpu_featset_has(&set, feature("vmx"))), "the host model has no vmx");
    cr_assert(cpu_featset_has(&set, feature("avx2")));
    cr_assert(eq(str, vendor, "GenuineIntel"));
    for (size_t i = 0; i < G_N_ELEMENTS(files); i++) {
        cpu_def_clear(&defs[i]);
    }
}

Test(cpu_baseline, refuses_mixed_vendors)
{
    g_autoptr(GArray) a = defs_of("libvirt/x86_64-cpuid-Core-i7-8550U-json.xml");
    g_autoptr(GArray) b = defs_of("libvirt/x86_64-cpuid-EPYC-7502-32-Core-json.xml");
    cpu_def defs[2] = {g_array_index(a, cpu_def, 0), g_array_index(b, cpu_def, 0)};
    cpu_decoded dec;
    cpu_featset set;
    char vendor[13];
    vmig_error *err = NULL;
    cr_assert(not(cpu_baseline(db, defs, 2, false, &dec, &set, vendor, &err)));
    cr_assert(eq(str, (char *)vmig_error_message(err),
                 "CPU vendors do not match: CPU 1 is GenuineIntel, CPU 2 is AuthenticAMD"));
    vmig_error_free(err);
}

Test(cpu_baseline, migratable_drops_invtsc)
{
    const cpu_model *m = cpu_models_find(db, "Skylake-Client");
    cpu_def d = {.require = m->features, .family = -1};
    g_strlcpy(d.vendor, "GenuineIntel", sizeof(d.vendor));
    cpu_featset_add(&d.require, feature("invtsc"));
    cpu_decoded dec;
    cpu_featset set;
    char vendor[13];
    cr_assert(cpu_baseline(db, &d, 1, false, &dec, &set, vendor, NULL));
    cr_assert(cpu_featset_has(&set, feature("invtsc")), "a guest CPU may ask for invtsc");
    cr_assert(cpu_baseline(db, &d, 1, true, &dec, &set, vendor, NULL));
    cr_assert(not(cpu_featset_has(&set, feature("invtsc"))));
}

static void expect_xml_error(const char *xml, const char *needle)
{
    vmig_error *err = NULL;
    cr_assert_null(cpu_defs_parse_xml(xml, strlen(xml), "cpu.xml", &err));
    cr_expect_not_null(strstr(vmig_error_message(err), needle), "'%s' lacks '%s'",
                       vmig_error_message(err), needle);
    vmig_error_free(err);
}

Test(cpu_baseline, bad_input_is_refused)
{
    expect_xml_error("<cpu><model>Skylake-Client</model><feature name='avx9'/></cpu>",
                     "unknown CPU feature 'avx9'");
    expect_xml_error("<cpu><vendor>Cyrix</vendor></cpu>", "unknown CPU vendor 'Cyrix'");
    expect_xml_error("<cpu><feature policy='maybe' name='avx'/></cpu>", "unknown policy 'maybe'");
    expect_xml_error("<cpu><model>X</model>", "cpu.xml:1:");
    expect_xml_error("<domain/>", "no <cpu> element");
    cpu_def d = {.model_name = (char *)"Pentium-9000"};
    cpu_featset s;
    vmig_error *err = NULL;
    cr_assert(not(cpu_def_expand(db, &d, &s, &err)));
    cr_assert(eq(str, (char *)vmig_error_message(err), "unknown CPU model 'Pentium-9000'"));
    vmig_error_free(err);
}

/* ---- compare --------------------------------------------------------------------------------- */

Test(cpu_compare, identical_superset_incompatible)
{
    cpu_def host = def_of("<cpu><model>Skylake-Client-IBRS</model><vendor>Intel</vendor>"
                          "<feature name='pdpe1gb'/></cpu>");
    cpu_def same = def_of("<cpu><model>Skylake-Client-IBRS</model>"
                          "<feature policy='require' name='pdpe1gb'/></cpu>");
    cpu_def older = def_of("<cpu><model>IvyBridge-IBRS</model></cpu>");
    cpu_def newer = def_of("<cpu><model>Skylake-Server-IBRS</model></cpu>");
    cpu_def amd = def_of("<cpu><model>EPYC</model></cpu>");
    cpu_def forbid = def_of("<cpu><model>IvyBridge</model><feature policy='forbid' "
                            "name='avx2'/></cpu>");
    cpu_featset missing;
    char *why = NULL;
    cr_assert(not(host.host), "no <arch> or <signature>: a description, not virsh capabilities");
    cr_assert(eq(int, cpu_compare(db, &host, &same, &missing, &why, NULL), CPU_CMP_IDENTICAL));
    cr_assert(eq(int, cpu_compare(db, &host, &older, &missing, &why, NULL), CPU_CMP_SUPERSET));
    cr_assert(eq(int, cpu_compare(db, &host, &newer, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert_not_null(strstr(why, "the host CPU lacks: "), "%s", why);
    cr_assert_not_null(strstr(why, "avx512f"), "%s", why);
    cr_assert(cpu_featset_has(&missing, feature("clwb")));
    g_free(why);
    cr_assert(eq(int, cpu_compare(db, &host, &amd, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the guest CPU is AuthenticAMD, the host is GenuineIntel"));
    g_free(why);
    cr_assert(eq(int, cpu_compare(db, &host, &forbid, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the host CPU provides forbidden features: avx2"));
    g_free(why);
    cpu_def *all[] = {&host, &same, &older, &newer, &amd, &forbid};
    for (size_t i = 0; i < G_N_ELEMENTS(all); i++) {
        cpu_def_clear(all[i]);
    }
}

Test(cpu_compare, a_host_cpu_offers_what_kvm_gives_on_it)
{
    /* the i7-3770 has smx and ds, which no guest gets: a VM asking for them cannot run, and a
     * host without them is no worse for it */
    cpu_def ivb = raw_def("Core-i7-3770");
    cpu_def kbl = raw_def("Core-i7-8550U");
    cpu_def wants_ds = def_of("<cpu><model>IvyBridge</model><feature policy='require' "
                              "name='ds'/></cpu>");
    cpu_featset missing;
    char *why = NULL;
    cr_assert(
        eq(int, cpu_compare(db, &ivb, &wants_ds, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the host CPU lacks: ds"), "%s", why);
    g_free(why);
    /* a host CPU as the VM's stands for its host model: the i7-3770's runs on the i7-8550U */
    cr_assert(eq(int, cpu_compare(db, &kbl, &ivb, &missing, &why, NULL), CPU_CMP_SUPERSET), "%s",
              why ? why : "");
    cr_assert(eq(int, cpu_compare(db, &ivb, &kbl, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert_not_null(strstr(why, "avx2"), "%s", why);
    cr_assert_null(strstr(why, "smx"), "%s", why);
    g_free(why);
    cpu_def_clear(&ivb);
    cpu_def_clear(&kbl);
    cpu_def_clear(&wants_ds);
}
