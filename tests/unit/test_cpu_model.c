/*
 * Decode, baseline and compare against libvirt's expected results for real CPUs
 * (shared/cpudata).  Feature sets are compared expanded: libvirt's expected model is expanded
 * with QEMU's definition of that name.  Every difference is listed with its reason, so a
 * change in behaviour shows up as a new, unexplained difference.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

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

TestSuite(cpu_decode, .init = setup, .fini = teardown);
TestSuite(cpu_baseline, .init = setup, .fini = teardown);
TestSuite(cpu_compare, .init = setup, .fini = teardown);

static char *read_data(const char *rel, gsize *len)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir, "VMIG_CPUDATA is not set");
    g_autofree char *path = g_build_filename(dir, rel, NULL);
    char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, len, NULL), "%s", path);
    return text;
}

static GArray *defs_of(const char *rel, GPtrArray *unknown)
{
    gsize len = 0;
    g_autofree char *text = read_data(rel, &len);
    vmig_error *err = NULL;
    GArray *d = cpu_defs_parse_xml(text, len, rel, unknown, &err);
    cr_assert_not_null(d, "%s", vmig_error_message(err));
    return d;
}

typedef struct host_case {
    const char *cpu;
    const char *our_model;
    const char *model_why;    /* why ours differs from libvirt's name, or NULL */
    const char *non_qemu;     /* bits libvirt names that QEMU 7.2 cannot give a guest */
    const char *ours_only;    /* in the raw data, not in libvirt's expanded decode */
    const char *ours_only_why;
} host_case;

static const host_case host_cases[] = {
    {"Core-i7-8550U", "Skylake-Client-v4",
     "QEMU's Skylake-Client-v4 is libvirt's Skylake-Client-noTSX-IBRS plus xsaves, which this "
     "CPU has; libvirt's map has no such model",
     "osxsave flush-l1d", "mpx",
     "libvirt's Skylake-Client models contain mpx; QEMU 7.2's do not, so it is an extra here"},
    {"Core-i7-3770", "IvyBridge", NULL, "osxsave", "", NULL},
    {"Xeon-E5-2609-v3", "Haswell-noTSX-IBRS",
     "the expected file lists spec-ctrl as an extra on Haswell-noTSX; QEMU's "
     "Haswell-noTSX-IBRS holds the same set with one extra fewer",
     "osxsave cmt", "stibp",
     "version skew: the expected file lists spec-ctrl but not stibp although the raw data has "
     "both bits (shared/cpudata/README.md)"},
    {"Xeon-Gold-6148", "Skylake-Server", "the expected file's libvirt map had no Skylake-Server",
     "osxsave cmt mbm_total mbm_local", "mpx clwb intel-pt",
     "mpx: as for the i7-8550U; clwb and intel-pt: the expected file's libvirt map (Skylake-Client "
     "for a Skylake-SP Xeon) did not name them yet"},
    {"EPYC-7502-32-Core", "EPYC-Rome-v2",
     "QEMU 7.2's EPYC-Rome-v2 adds ibrs and amd-ssbd to EPYC-Rome; this CPU has both",
     "osxsave cmt mbm_total mbm_local", "", NULL},
    {"Ryzen-7-1800X-Eight-Core", "EPYC", NULL, "osxsave",
     "xsaveerptr lbrv svm_lock tsc_scale vmcb_clean flushbyasid decodeassists pause_filter "
     "pfthreshold avic v-vmsave-vmload vgif",
     "version skew: the expected file predates libvirt naming the SVM sub-features and "
     "xsaveerptr"},
};

static void check_host(const host_case *c)
{
    g_autofree char *raw_rel = g_strdup_printf("libvirt/x86_64-cpuid-%s.xml", c->cpu);
    g_autofree char *host_rel = g_strdup_printf("libvirt/x86_64-cpuid-%s-host.xml", c->cpu);
    gsize len = 0;
    g_autofree char *text = read_data(raw_rel, &len);
    vmig_error *err = NULL;
    g_autoptr(cpu_raw) raw = cpu_raw_parse(text, len, raw_rel, &err);
    cr_assert_not_null(raw, "%s", vmig_error_message(err));
    cpu_featset d;
    cpu_raw_features(raw, &d);
    char vendor[13];
    int fam, mod, step;
    cpu_raw_vendor(raw, vendor);
    cpu_raw_signature(raw, &fam, &mod, &step);
    cpu_decoded dec;
    cr_assert(cpu_decode(db, &d, vendor, fam, mod, CPU_DECODE_HOST, NULL, &dec, &err), "%s",
              vmig_error_message(err));
    cr_expect(cpu_featset_empty(&dec.disable), "%s: a host decode disables nothing", c->cpu);

    g_autoptr(GPtrArray) unknown = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) exp = defs_of(host_rel, unknown);
    const cpu_def *e = &g_array_index(exp, cpu_def, 0);
    cpu_featset want;
    cr_assert(cpu_def_expand(db, e, &want, &err), "%s", vmig_error_message(err));

    if (c->model_why) {
        cr_expect(eq(str, (char *)dec.model->name, (char *)c->our_model), "%s", c->cpu);
        cr_expect(strcmp(e->model_name, c->our_model) != 0,
                  "%s: libvirt now agrees (%s): drop the explanation", c->cpu, e->model_name);
    } else {
        cr_expect(eq(str, (char *)dec.model->name, e->model_name), "%s: same model as libvirt",
                  c->cpu);
    }
    g_ptr_array_add(unknown, NULL);
    g_autofree char *non_qemu = g_strjoinv(" ", (char **)unknown->pdata);
    cr_expect(eq(str, non_qemu, (char *)c->non_qemu), "%s: bits QEMU 7.2 has no name for",
              c->cpu);
    cpu_featset ours_only = d, theirs_only = want;
    cpu_featset_andnot(&ours_only, &want);
    cpu_featset_andnot(&theirs_only, &d);
    g_autofree char *oo = cpu_featset_names(&ours_only, true);
    g_autofree char *to = cpu_featset_names(&theirs_only, true);
    cr_expect(eq(str, oo, (char *)c->ours_only), "%s: extra features (%s)", c->cpu,
              c->ours_only_why ? c->ours_only_why : "none expected");
    cr_expect(eq(str, to, ""), "%s: libvirt's decode has features the raw data lacks", c->cpu);
}

Test(cpu_decode, real_cpus_against_libvirt_host_decodes)
{
    for (size_t i = 0; i < G_N_ELEMENTS(host_cases); i++) {
        check_host(&host_cases[i]);
    }
}

Test(cpu_decode, guest_decode_may_disable)
{
    /* IvyBridge-IBRS minus avx and f16c: cheaper as that model with two disabled (2 + 3)
     * than as an older model with many extras, as libvirt decodes its Atom-P5362 example */
    const cpu_model *ivb = cpu_models_find(db, "IvyBridge-IBRS");
    cr_assert_not_null(ivb);
    cpu_featset s = ivb->features;
    cpu_featset_del(&s, cpu_feature_index("avx"));
    cpu_featset_del(&s, cpu_feature_index("f16c"));
    cpu_decoded dec;
    cr_assert(cpu_decode(db, &s, "GenuineIntel", -1, -1, CPU_DECODE_GUEST, NULL, &dec, NULL));
    cr_assert(eq(str, (char *)dec.model->name, "IvyBridge-IBRS"));
    g_autofree char *dis = cpu_featset_names(&dec.disable, false);
    cr_assert(eq(str, dis, "avx f16c"), "named in bit order");
    cr_assert(cpu_featset_empty(&dec.require));
    cr_assert(cpu_decode(db, &s, "GenuineIntel", -1, -1, CPU_DECODE_HOST, NULL, &dec, NULL));
    cr_assert(cpu_featset_empty(&dec.disable), "a host decode never disables");
}

Test(cpu_baseline, skylake_client_and_server_as_libvirt)
{
    g_autoptr(GArray) a = defs_of("libvirt/x86_64-cpuid-Core-i5-6600-json.xml", NULL);
    g_autoptr(GArray) b = defs_of("libvirt/x86_64-cpuid-Xeon-Gold-6148-json.xml", NULL);
    g_autoptr(GArray) want = defs_of("libvirt/x86_64-cpuid-baseline-Skylake-Client+Server.xml",
                                     NULL);
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

Test(cpu_baseline, refuses_mixed_vendors)
{
    g_autoptr(GArray) a = defs_of("libvirt/x86_64-cpuid-Core-i7-8550U-json.xml", NULL);
    g_autoptr(GArray) b = defs_of("libvirt/x86_64-cpuid-EPYC-7502-32-Core-json.xml", NULL);
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
    cpu_featset_add(&d.require, cpu_feature_index("invtsc"));
    cpu_decoded dec;
    cpu_featset set;
    char vendor[13];
    cr_assert(cpu_baseline(db, &d, 1, false, &dec, &set, vendor, NULL));
    cr_assert(cpu_featset_has(&set, cpu_feature_index("invtsc")));
    cr_assert(cpu_baseline(db, &d, 1, true, &dec, &set, vendor, NULL));
    cr_assert(not(cpu_featset_has(&set, cpu_feature_index("invtsc"))));
}

static void expect_xml_error(const char *xml, const char *needle)
{
    vmig_error *err = NULL;
    cr_assert_null(cpu_defs_parse_xml(xml, strlen(xml), "cpu.xml", NULL, &err));
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

static cpu_def def_of(const char *xml)
{
    g_autoptr(GArray) d = cpu_defs_parse_xml(xml, strlen(xml), "x", NULL, NULL);
    cr_assert_not_null(d);
    cpu_def r = g_array_index(d, cpu_def, 0);
    g_array_index(d, cpu_def, 0).model_name = NULL; /* moved into r */
    return r;
}

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
    cr_assert(eq(int, cpu_compare(db, &host, &same, &missing, &why, NULL), CPU_CMP_IDENTICAL));
    cr_assert(eq(int, cpu_compare(db, &host, &older, &missing, &why, NULL), CPU_CMP_SUPERSET));
    cr_assert(eq(int, cpu_compare(db, &host, &newer, &missing, &why, NULL),
                 CPU_CMP_INCOMPATIBLE));
    cr_assert_not_null(strstr(why, "the host CPU lacks: "), "%s", why);
    cr_assert_not_null(strstr(why, "avx512f"), "%s", why);
    cr_assert(cpu_featset_has(&missing, cpu_feature_index("clwb")));
    g_free(why);
    cr_assert(eq(int, cpu_compare(db, &host, &amd, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the guest CPU is AuthenticAMD, the host is GenuineIntel"));
    g_free(why);
    cr_assert(eq(int, cpu_compare(db, &host, &forbid, &missing, &why, NULL),
                 CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the host CPU provides forbidden features: avx2"));
    g_free(why);
    cpu_def *all[] = {&host, &same, &older, &newer, &amd, &forbid};
    for (size_t i = 0; i < G_N_ELEMENTS(all); i++) {
        cpu_def_clear(all[i]);
    }
}
