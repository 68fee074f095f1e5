/*
 * The CPU in real QEMUs (issue 10): the -cpu arguments 'cpu decode --qemu' writes for real
 * CPUs start QEMU with enforce, and the migration gate judges a destination by what its
 * accelerator offers (TCG: what TCG emulates; KVM: the host model its host-cpu.xml stands for).
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <json-c/json.h>
#include <string.h>
#include <unistd.h>

#include "tests/support/t_util.h"

#define READY_MS 120000

/* The CLI with these arguments, RUN(NULL) with none (no __VA_OPT__: cppcheck 2.10 lacks it). */
#define RUN(...)                                                                                   \
    ({                                                                                             \
        const char *const args_[] = {__VA_ARGS__, NULL};                                           \
        t_cli(args_);                                                                              \
    })

static char *cpudata(const char *rel)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir, "VMIG_CPUDATA is not set");
    return g_build_filename(dir, rel, NULL);
}

/* ---- -cpu arguments of real CPUs, started with enforce --------------------------------------- */

/* Starts $VMIG_QEMU (TCG, paused) with -cpu @cpu,enforce, then quits it over QMP.  Returns its
 * exit status; @ret_gaps receives the features QEMU says TCG cannot give (vmx-* MSR features
 * go with vmx and are not listed). */
static int start_with(const char *cpu, GPtrArray *ret_gaps, char **ret_err)
{
    const char *qemu = getenv("VMIG_QEMU");
    cr_assert_not_null(qemu, "VMIG_QEMU is not set");
    g_autofree char *arg = g_strdup_printf("%s,enforce", cpu);
    const char *script =
        "printf '{\"execute\":\"qmp_capabilities\"}\\n{\"execute\":\"quit\"}\\n' | "
        "\"$0\" -machine pc -accel tcg -cpu \"$1\" -nodefaults -display none -S -qmp stdio";
    const char *const argv[] = {"/bin/sh", "-c", script, qemu, arg, NULL};
    t_run_result r = t_run(argv);
    g_auto(GStrv) lines = g_strsplit(r.err, "\n", -1);
    for (int i = 0; lines[i]; i++) {
        /* "...: CPUID.07H:EBX.tsc-adjust [bit 1]" or "...: MSR(10AH).rdctl-no [bit 0]";
         * or an MSR bit whose CPUID gate (arch-capabilities) went in an earlier round */
        const char *l = strstr(lines[i], "TCG doesn't support requested feature: ");
        l = l ? l : strstr(lines[i], "depends on other features that were not requested: ");
        const char *end = l ? strstr(l, " [bit") : NULL;
        const char *name = end ? g_strrstr_len(l, end - l, ".") : NULL;
        if (name && !g_str_has_prefix(name + 1, "vmx-")) {
            g_ptr_array_add(ret_gaps, g_strndup(name + 1, (size_t)(end - name - 1)));
        }
    }
    int status = r.status;
    *ret_err = g_steal_pointer(&r.err);
    t_run_result_clear(&r);
    return status;
}

/* The features of QEMU's max model under TCG here. */
static GHashTable *tcg_max(void)
{
    g_autofree char *dir = t_state_dir_new();
    t_run_result r = RUN("--state-dir", dir, "cpu", "host", "--qemu-model", "--json", "--features");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *o = json_tokener_parse(r.out);
    cr_assert_not_null(o, "%s", r.out);
    GHashTable *set = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    json_object *req = json_object_object_get(o, "require");
    for (size_t i = 0; i < json_object_array_length(req); i++) {
        g_hash_table_add(set, g_strdup(json_object_get_string(json_object_array_get_idx(req, i))));
    }
    json_object_put(o);
    t_run_result_clear(&r);
    t_state_dir_check_clean(dir);
    return set;
}

Test(cpu_qemu_args, every_raw_dump_decodes_to_a_cpu_qemu_starts_with_enforce, .timeout = 300)
{
    g_autofree char *here = g_path_get_dirname(__FILE__);
    char *dumps[] = {
        cpudata("libvirt/x86_64-cpuid-Core-i7-8550U.xml"),
        cpudata("libvirt/x86_64-cpuid-Core-i7-3770.xml"),
        cpudata("libvirt/x86_64-cpuid-Xeon-E5-2609-v3.xml"),
        cpudata("libvirt/x86_64-cpuid-Xeon-Gold-6148.xml"),
        cpudata("libvirt/x86_64-cpuid-EPYC-7502-32-Core.xml"),
        cpudata("libvirt/x86_64-cpuid-Ryzen-7-1800X-Eight-Core.xml"),
        cpudata("instlatx64/GenuineIntel00306E4_IvyBridgeEP_CPUID.txt"),
        cpudata("instlatx64/GenuineIntel00806EA_Kabylake_CPUID.txt"),
        cpudata("libcpuid/intel-core-i5-8350u-cpu.test"),
        g_build_filename(here, "..", "data", "cpuid", "epyc-cloud-vm-no-svm.xml", NULL),
    };
    g_autoptr(GHashTable) max = tcg_max();
    for (size_t i = 0; i < G_N_ELEMENTS(dumps); i++) {
        t_run_result d = RUN("cpu", "decode", "--qemu", dumps[i]);
        cr_assert(eq(int, d.status, 0), "%s: %s", dumps[i], d.err);
        g_strchomp(d.out);
        /* nothing only a physical host has */
        static const char *const host_only[] = {",+ds,",  ",+tm,",  ",+pbe,",     ",+est,",
                                                ",+tm2,", ",+smx,", ",+monitor,", ",+osxsave,"};
        g_autofree char *padded = g_strdup_printf("%s,", d.out);
        for (size_t k = 0; k < G_N_ELEMENTS(host_only); k++) {
            cr_assert_null(strstr(padded, host_only[k]), "%s: %s", dumps[i], d.out);
        }
        /* QEMU refuses only what TCG cannot emulate (KVM adds tsc-deadline, tsc-adjust,
         * arch-capabilities, ...): each named feature is one TCG's max lacks.  Without them
         * QEMU starts with enforce and quits cleanly. */
        GString *rest = g_string_new(d.out);
        int status = -1, rounds = 0;
        guint removed = 0;
        g_autofree char *err = NULL;
        for (; rounds < 3 && status != 0; rounds++) {
            g_autoptr(GPtrArray) gaps = g_ptr_array_new_with_free_func(g_free);
            g_free(err);
            status = start_with(rest->str, gaps, &err);
            cr_assert(status == 0 || gaps->len > 0,
                      "%s: -cpu %s: QEMU failed for another "
                      "reason: %s",
                      dumps[i], rest->str, err);
            for (guint k = 0; k < gaps->len; k++) {
                const char *f = g_ptr_array_index(gaps, k);
                cr_assert(not(g_hash_table_contains(max, f)),
                          "%s: QEMU refused %s, which TCG's max has: %s", dumps[i], f, err);
                g_string_append_printf(rest, ",-%s", f);
            }
            removed += gaps->len;
        }
        cr_assert(eq(int, status, 0), "%s: -cpu %s: %s", dumps[i], rest->str, err);
        cr_log_info("%s: started with enforce after turning off %u features TCG lacks: -cpu %s",
                    dumps[i], removed, rest->str);
        g_string_free(rest, TRUE);
        t_run_result_clear(&d);
        g_free(dumps[i]);
    }
}

/* ---- the gate: the destination's accelerator decides ----------------------------------------- */

static char *state;
static vmig_engine *eng;

static void setup(void)
{
    state = t_state_dir_new();
    eng = t_engine(state);
}

static void teardown(void)
{
    t_engine_teardown(eng, state);
}

TestSuite(cpu_gate, .init = setup, .fini = teardown, .timeout = 240);

/* The built-in test guest under -cpu @cpu. */
static void start_guest_with_cpu(const char *name, const char *cpu)
{
    const char *kernel = vmig_guest_kernel();
    cr_assert_not_null(kernel, "the test guest was not found");
    g_autofree char *json = g_strdup_printf("{\"name\": \"%s\", \"memory_mib\": 64, "
                                            "\"kernel\": \"%s\", \"cpu\": \"%s\", "
                                            "\"append\": \"vmig.dirty_mib_s=0\"}",
                                            name, kernel, cpu);
    vmig_error *err = NULL;
    vmig_spec *s = vmig_spec_parse(json, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    bool ok = vmig_vm_start(eng, s, t_accel(), &err);
    vmig_spec_free(s);
    cr_assert(ok, "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

Test(cpu_gate, an_amd_vm_moves_under_tcg_to_a_host_whose_cpu_file_is_intel)
{
    start_guest_with_cpu("amdvm", "EPYC");
    g_autofree char *other = t_state_dir_new();
    g_autofree char *host_cpu = g_build_filename(other, "host-cpu.xml", NULL);
    g_autofree char *intel = cpudata("libvirt/x86_64-cpuid-Core-i7-8550U-host.xml");
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(intel, &text, NULL, NULL));
    cr_assert(g_file_set_contents(host_cpu, text, -1, NULL));
    g_autofree char *dest = g_strdup_printf("local:%s", other);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = dest;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    bool ok = vmig_migrate(eng, "amdvm", &o, NULL, NULL, &st, &err);
    if (t_accel() == VMIG_ACCEL_KVM) {
        /* under KVM the file stands for the destination's host model: an Intel host */
        cr_assert(not(ok));
        cr_assert(eq(int, vmig_error_code(err), VMIG_E_CPU), "%s", vmig_error_message(err));
        cr_assert_not_null(strstr(vmig_error_message(err), "the guest CPU is AuthenticAMD, "
                                                           "the host is GenuineIntel"),
                           "%s", vmig_error_message(err));
        vmig_error_free(err);
        unlink(host_cpu);
        t_state_dir_check_clean(other);
        return;
    }
    /* under TCG the destination emulates the CPU: the Intel host does not matter */
    cr_assert(ok, "%s", vmig_error_message(err));
    cr_assert(eq(str, st.status, "completed"));
    cr_assert(eq(str, st.cpu_check, "passed"));
    vmig_engine *other_eng = t_engine(other);
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(other_eng, "amdvm", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 10000), "a 64 MiB guest verified on the destination: %lu pages",
              (unsigned long)pages);
    cr_assert(vmig_vm_stop(other_eng, "amdvm", 5000, NULL));
    vmig_engine_free(other_eng);
    unlink(host_cpu);
    t_state_dir_check_clean(other);
}

/* ---- the command line (issue 10, items 1, 5 and 6) ------------------------------------------- */

static void expect_run(t_run_result *r, int status)
{
    cr_assert(eq(int, r->status, status), "exit %d, not %d: %s%s", r->status, status, r->out,
              r->err);
}

Test(cpu_cli, models_list_every_name_with_features_as_arrays, .timeout = 60)
{
    t_run_result r = RUN("cpu", "models");
    expect_run(&r, 0);
    cr_assert_not_null(strstr(r.out, "# 74 models, 129 names\n"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "\nIvyBridge-IBRS "), "aliases are rows too");
    cr_assert_not_null(strstr(r.out, " AMD "), "vendors as libvirt writes them");
    cr_assert_null(strstr(r.out, "AuthenticAMD"));
    t_run_result_clear(&r);
    r = RUN("cpu", "models", "--json");
    expect_run(&r, 0);
    json_object *arr = json_tokener_parse(r.out);
    cr_assert(eq(sz, json_object_array_length(arr), 74));
    size_t names = 0;
    bool ivb = false;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *m = json_object_array_get_idx(arr, i);
        json_object *aliases = json_object_object_get(m, "aliases");
        json_object *features = json_object_object_get(m, "features");
        cr_assert(json_object_is_type(aliases, json_type_array));
        cr_assert(json_object_is_type(features, json_type_array));
        names += 1 + json_object_array_length(aliases);
        const char *vendor = json_object_get_string(json_object_object_get(m, "vendor"));
        cr_assert(strlen(vendor) < 8, "the text's vendor, not CPUID's: %s", vendor);
        if (!strcmp(json_object_get_string(json_object_object_get(m, "versioned")),
                    "IvyBridge-v2")) {
            ivb = true;
            cr_assert(eq(str, (char *)json_object_get_string(json_object_array_get_idx(aliases, 0)),
                         "IvyBridge-IBRS"));
        }
    }
    cr_assert(ivb);
    cr_assert(eq(sz, names, 129), "every name the docs count");
    json_object_put(arr);
    t_run_result_clear(&r);
}

Test(cpu_cli, libvirt_files_load_and_host_only_bits_are_named_once, .timeout = 60)
{
    g_autofree char *host = cpudata("libvirt/x86_64-cpuid-Xeon-Gold-6148-host.xml");
    t_run_result r = RUN("cpu", "decode", host);
    expect_run(&r, 0);
    cr_assert(g_str_has_prefix(r.out, "<cpu>\n  <arch>x86_64</arch>\n"), "a host CPU: %s", r.out);
    cr_assert_not_null(strstr(r.out, "<feature name='mbm_total'/>"), "kept for the host");
    g_autofree char *note = g_strdup_printf("note: %s: osxsave cmt mbm_total mbm_local: "
                                            "host-only, no guest gets them, so they never "
                                            "migrate\n",
                                            host);
    const char *at = strstr(r.err, note);
    cr_assert_not_null(at, "%s", r.err);
    cr_assert_null(strstr(at + strlen(note), "host-only"), "once: %s", r.err);
    t_run_result_clear(&r);
    r = RUN("cpu", "decode", "--json", "--guest", host);
    expect_run(&r, 0);
    json_object *o = json_tokener_parse(r.out);
    cr_assert(eq(str, (char *)json_object_get_string(json_object_object_get(o, "vendor")), "Intel"),
              "the vendor as the XML writes it");
    cr_assert(eq(str, (char *)json_object_get_string(json_object_object_get(o, "type")), "guest"));
    cr_assert_null(strstr(r.out, "mbm_total"), "never for a guest");
    cr_assert_null(strstr(r.out, "\"ds\""), "KVM gives no guest ds");
    json_object_put(o);
    t_run_result_clear(&r);
}

Test(cpu_cli, compare_asks_which_cpu_of_a_file_holding_several, .timeout = 60)
{
    g_autofree char *kbl = cpudata("libvirt/x86_64-cpuid-Core-i7-8550U.xml");
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *two = g_build_filename(dir, "two.xml", NULL);
    cr_assert(g_file_set_contents(two,
                                  "<cpus><cpu><model>IvyBridge</model></cpu>"
                                  "<cpu><model>Haswell</model></cpu></cpus>",
                                  -1, NULL));
    t_run_result r = RUN("cpu", "compare", kbl, two);
    expect_run(&r, 1);
    cr_assert_not_null(strstr(r.err, "holds 2 <cpu> blocks: say which with --index N (1 to 2)"),
                       "%s", r.err);
    t_run_result_clear(&r);
    r = RUN("cpu", "compare", "--index", "1", kbl, two);
    expect_run(&r, 3); /* IvyBridge runs on an i7-8550U's host model, which has more */
    t_run_result_clear(&r);
    r = RUN("cpu", "compare", "--index", "2", kbl, two);
    expect_run(&r, 4); /* Haswell (v1) has TSX; this i7-8550U's microcode turned it off */
    cr_assert(eq(str, r.out, "incompatible: the host CPU lacks: hle rtm\n"));
    t_run_result_clear(&r);
    r = RUN("cpu", "compare", "--index", "3", kbl, two);
    expect_run(&r, 1);
    t_run_result_clear(&r);
    unlink(two);
    t_state_dir_check_clean(dir);
}

Test(cpu_cli, baseline_of_any_mix_prints_a_cpu_qemu_starts, .timeout = 120)
{
    g_autofree char *raw = cpudata("libvirt/x86_64-cpuid-Core-i7-8550U.xml");
    g_autofree char *host = cpudata("libvirt/x86_64-cpuid-Xeon-E5-2609-v3-host.xml");
    g_autofree char *model = cpudata("libvirt/x86_64-cpuid-Core-i7-3770-json.xml");
    g_autofree char *aida = cpudata("instlatx64/GenuineIntel00306E4_IvyBridgeEP_CPUID.txt");
    t_run_result r = RUN("cpu", "baseline", "--explain", "--qemu", raw, host, model, aida);
    expect_run(&r, 0);
    g_strchomp(r.out);
    cr_assert(g_str_has_prefix(r.out, "IvyBridge"), "%s", r.out);
    cr_assert_null(strstr(r.out, "+vmx"), "the i7-3770's host model has no vmx: %s", r.out);
    cr_assert_null(strstr(r.out, "+ds,"), "%s", r.out);
    static const char *const inputs[4] = {
        "8550U.xml: removed: ", "2609-v3-host.xml: removed: ", "3770-json.xml: removed: ",
        "IvyBridgeEP_CPUID.txt: "
        "removed: "};
    for (size_t i = 0; i < 4; i++) {
        cr_assert_not_null(strstr(r.err, inputs[i]), "--explain names each input: %s", r.err);
    }
    cr_assert_not_null(strstr(r.err, "no guest there gets: dtes64 monitor"), "%s", r.err);
    /* the result starts a VM with enforce, less what TCG lacks (as above) */
    g_autoptr(GPtrArray) gaps = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *err = NULL;
    int status = start_with(r.out, gaps, &err);
    cr_assert(status == 0 || gaps->len > 0, "%s: %s", r.out, err);
    t_run_result_clear(&r);
    r = RUN("cpu", "baseline", "agent://b", raw);
    expect_run(&r, 1);
    cr_assert_not_null(strstr(r.err, "agent://b: the vmigrate agent does not exist yet"));
    t_run_result_clear(&r);
}
