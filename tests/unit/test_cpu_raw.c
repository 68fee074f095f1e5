/* Raw CPUID from real dumps (shared/cpudata) in every format we read, and clear errors on
 * malformed or truncated input. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/raw.h"

static char *data_path(const char *rel)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir, "VMIG_CPUDATA is not set");
    return g_build_filename(dir, rel, NULL);
}

static cpu_raw *load(const char *rel)
{
    g_autofree char *path = data_path(rel);
    vmig_error *err = NULL;
    cpu_raw *r = cpu_raw_load(path, &err);
    cr_assert_not_null(r, "%s", vmig_error_message(err));
    return r;
}

static bool has(const cpu_raw *r, const char *feature)
{
    cpu_featset s;
    cpu_raw_features(r, &s);
    int i = cpu_feature_index(feature);
    cr_assert(ge(int, i, 0), "unknown feature %s", feature);
    return cpu_featset_has(&s, i);
}

static void expect_sig(const cpu_raw *r, const char *vendor, int fam, int mod, int step)
{
    char v[13];
    int f, m, s;
    cpu_raw_vendor(r, v);
    cpu_raw_signature(r, &f, &m, &s);
    cr_expect(eq(str, v, (char *)vendor));
    cr_expect(eq(int, f, fam));
    cr_expect(eq(int, m, mod));
    cr_expect(eq(int, s, step));
}

Test(cpu_raw, libvirt_cpudata_files)
{
    g_autoptr(cpu_raw) i7 = load("libvirt/x86_64-cpuid-Core-i7-8550U.xml");
    expect_sig(i7, "GenuineIntel", 6, 142, 10);
    cr_assert(has(i7, "avx2") && has(i7, "xsaves") && has(i7, "md-clear") && has(i7, "invtsc"));
    cr_assert(not(has(i7, "hle")), "TSX is off in this dump's microcode");
    cr_assert(has(i7, "skip-l1dfl-vmentry"), "from MSR 0x10a");
    g_autoptr(cpu_raw) epyc = load("libvirt/x86_64-cpuid-EPYC-7502-32-Core.xml");
    expect_sig(epyc, "AuthenticAMD", 23, 49, 0);
    cr_assert(has(epyc, "clzero") && has(epyc, "amd-ssbd"));
    g_autoptr(cpu_raw) ivb = load("libvirt/x86_64-cpuid-Core-i7-3770.xml");
    expect_sig(ivb, "GenuineIntel", 6, 58, 9);
    cr_assert(not(has(ivb, "avx2")));
}

Test(cpu_raw, instlatx64_dumps_both_dialects)
{
    /* [SL nn] dialect, same die as the i7-8550U, older microcode */
    g_autoptr(cpu_raw) kbl = load("instlatx64/GenuineIntel00806EA_Kabylake_CPUID.txt");
    g_autoptr(cpu_raw) i7 = load("libvirt/x86_64-cpuid-Core-i7-8550U.xml");
    expect_sig(kbl, "GenuineIntel", 6, 142, 10);
    uint32_t a[4], b[4];
    cpu_raw_get(kbl, 1, 0, a);
    cpu_raw_get(i7, 1, 0, b);
    cr_assert(eq(u32, a[2], b[2]), "same leaf 1 ECX as the libvirt dump of the same die");
    cr_assert(cpu_raw_get(kbl, 0xd, 1, a));
    cr_assert(has(kbl, "xsaves"));
    cr_assert(not(has(kbl, "md-clear")), "microcode before the MDS mitigations");
    /* repeated-leaf dialect: subleaves are counted */
    g_autoptr(cpu_raw) ivbep = load("instlatx64/GenuineIntel00306E4_IvyBridgeEP_CPUID.txt");
    expect_sig(ivbep, "GenuineIntel", 6, 62, 4);
    cr_assert(cpu_raw_get(ivbep, 4, 3, a), "leaf 4 subleaf 3 from the 4th repeated line");
    cr_assert(not(cpu_raw_get(ivbep, 4, 4, a)));
    cr_assert(has(ivbep, "avx") && has(ivbep, "rdrand") && !has(ivbep, "avx2"));
}

Test(cpu_raw, libcpuid_test_file)
{
    g_autoptr(cpu_raw) r = load("libcpuid/intel-core-i5-8350u-cpu.test");
    expect_sig(r, "GenuineIntel", 6, 142, 10);
    cr_assert(has(r, "md-clear") && has(r, "hle") && has(r, "rtm"), "newer microcode, TSX on");
    cr_assert(not(has(r, "xsaveopt")), "libcpuid records no subleaf 0xD.1");
    uint32_t v[4];
    cr_assert(not(cpu_raw_get(r, 0x17, 0, v)), "entries past leaf 0's maximum (0x16) are junk");
}

Test(cpu_raw, exports_round_trip)
{
    g_autoptr(cpu_raw) r = load("libvirt/x86_64-cpuid-Xeon-Gold-6148.xml");
    cpu_featset a, b, c;
    cpu_raw_features(r, &a);
    g_autofree char *xml = cpu_raw_to_xml(r);
    g_autofree char *json = cpu_raw_to_json(r);
    g_autoptr(cpu_raw) rx = cpu_raw_parse(xml, strlen(xml), "xml", NULL);
    g_autoptr(cpu_raw) rj = cpu_raw_parse(json, strlen(json), "json", NULL);
    cr_assert_not_null(rx);
    cr_assert_not_null(rj);
    cpu_raw_features(rx, &b);
    cpu_raw_features(rj, &c);
    cr_assert(eq(int, memcmp(&a, &b, sizeof(a)), 0));
    cr_assert(eq(int, memcmp(&a, &c, sizeof(a)), 0));
}

Test(cpu_raw, this_host)
{
    vmig_error *err = NULL;
    g_autoptr(cpu_raw) r = cpu_raw_host(&err);
    cr_assert_not_null(r, "%s", vmig_error_message(err));
    char v[13];
    cpu_raw_vendor(r, v);
    cr_assert(gt(sz, strlen(v), 0));
    cr_assert(has(r, "fpu") && has(r, "lm"));
}

static void expect_bad(const char *text, const char *needle)
{
    vmig_error *err = NULL;
    cr_assert_null(cpu_raw_parse(text, strlen(text), "dump", &err), "accepted: %s", text);
    cr_expect_not_null(strstr(vmig_error_message(err), needle), "'%s' lacks '%s'",
                       vmig_error_message(err), needle);
    vmig_error_free(err);
}

#define L0                                                                                         \
    "<cpuid eax_in='0x00000000' ecx_in='0x00' eax='0x0000000d' ebx='0x756e6547' ecx='0x6c65746e' " \
    "edx='0x49656e69'/>"
#define L1 "<cpuid eax_in='0x00000001' ecx_in='0x00' eax='0x000806ea' ebx='0' ecx='0x0' edx='0x0'/>"
#define L1OK                                                                                       \
    "<cpuid eax_in='0x00000001' ecx_in='0x00' eax='0x000806ea' ebx='0x0' ecx='0x0' edx='0x0'/>"
#define L7 "<cpuid eax_in='0x00000007' ecx_in='0x00' eax='0x0' ebx='0x0' ecx='0x0' edx='0x0'/>"
#define LD "<cpuid eax_in='0x0000000d' ecx_in='0x00' eax='0x0' ebx='0x0' ecx='0x0' edx='0x0'/>"

Test(cpu_raw, malformed_input_is_refused)
{
    expect_bad("<cpudata arch='x86'>" L0, "dump:1:"); /* unclosed */
    expect_bad("<cpudata>" L0 L1 "</cpudata>", "ebx='0' is not a hexadecimal number");
    expect_bad("<cpudata>" L0 "<cpuid eax_in='0x1'/></cpudata>", "attribute eax is missing");
    expect_bad("<cpudata><leaf/></cpudata>", "unexpected element <leaf>");
    expect_bad("<cpudata>" L0 L1OK L7 "</cpudata>", "leaf 0xd is missing"); /* truncated */
    expect_bad("<cpudata>" L1OK "</cpudata>", "leaf 0x0 is missing");
    expect_bad("<cpudata>" L0 L1OK L7 LD
               "<cpuid eax_in='0x00000030' ecx_in='0x00' eax='0x0' ebx='0x0' ecx='0x0' edx='0x0'/>"
               "</cpudata>",
               "unknown CPUID leaf 0x30");
    expect_bad("hello world\n", "not a CPUID dump");
    expect_bad("CPUID 00000000: 0000000D-756E6547\n", "malformed CPUID line");
    expect_bad("{\"cpuid\": [[0, 0, 1]]}", "cpuid[0] is not [leaf, subleaf");
    expect_bad("{\"cpuid\": 3}", "no \"cpuid\" array");
    /* issue 11: a null "msr" segfaulted 'cpu decode' */
    expect_bad("{\"cpuid\": [], \"msr\": null}", "\"msr\" is not an object");
    expect_bad("{\"cpuid\": [], \"msr\": [1]}", "\"msr\" is not an object");
    expect_bad("{\"cpuid\": [], \"msr\": {\"0x10a\": null}}", "msr '0x10a' is not index: number");
    expect_bad("{\"cpuid\": [], \"msr\": {\"0x1000000000\": 1}}", "is not index: number");
    expect_bad("{\"cpuid\": [], \"msr\": {\"\": 1}}", "is not index: number");
}

Test(cpu_raw, truncated_real_dump_is_refused)
{
    g_autofree char *path = data_path("libvirt/x86_64-cpuid-Core-i7-8550U.xml");
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL));
    char *cut = strstr(text, "<cpuid eax_in='0x00000007'");
    cr_assert_not_null(cut);
    *cut = '\0';
    vmig_error *err = NULL;
    cr_assert_null(cpu_raw_parse(text, strlen(text), "cut.xml", &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "cut.xml:"), "%s", vmig_error_message(err));
    vmig_error_free(err);
}

/* issue 11, item 10: the older InstLatx64 dialect counts a leaf's subleaves by its repeats.
 * Counting them by looking up subleaf 0, 1, 2, ... made 4,000 lines take 15 s (cubic).  The
 * work, counted as lookups, must grow linearly with the lines. */
static uint64_t probes_for(const char *head, int repeats)
{
    GString *text = g_string_new(head);
    for (int i = 0; i < repeats; i++) {
        g_string_append(text, "CPUID 00000004  \t3C004121-01C0003F-0000003F-00000000\n");
    }
    vmig_error *err = NULL;
    g_autoptr(cpu_raw) r = cpu_raw_parse(text->str, text->len, "repeats.txt", &err);
    cr_assert_not_null(r, "%s", vmig_error_message(err));
    uint32_t v[4];
    cr_assert(cpu_raw_get(r, 4, (uint32_t)repeats - 1, v), "the last repeat is a subleaf");
    uint64_t n = cpu_raw_probes(r);
    g_string_free(text, TRUE);
    return n;
}

Test(cpu_raw, old_instlatx64_dialect_parses_in_linear_work, .timeout = 60)
{
    /* the first logical CPU of a real dump, then one leaf repeated many times */
    g_autofree char *path = data_path("instlatx64/GenuineIntel00306E4_IvyBridgeEP_CPUID.txt");
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL));
    char *second = strstr(strstr(text, "CPUID 00000000") + 1, "CPUID 00000000");
    cr_assert_not_null(second);
    *second = '\0';
    uint64_t small = probes_for(text, 4000), large = probes_for(text, 16000);
    cr_assert(le(u64, small, UINT64_C(4) * 4100), "4,000 lines: %lu lookups", (unsigned long)small);
    cr_assert(le(u64, large, 4 * small + 400), "4x the lines, %lu then %lu lookups: not linear",
              (unsigned long)small, (unsigned long)large);
}
