/* vmigrate cpu host|decode|baseline|compare|models */
#include <getopt.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "vmigrate.h"

enum {
    OPT_JSON = 0x200,
    OPT_QEMU,
    OPT_FEATURES,
    OPT_MIGRATABLE,
    OPT_EXPORT,
    OPT_FROM_QEMU,
    OPT_QEMU_MODEL,
    OPT_ACCEL,
    OPT_GUEST,
    OPT_INDEX,
    OPT_EXPLAIN,
};

/* Exit statuses of 'cpu compare' (0 identical; 1 and 2 are failure and usage as elsewhere). */
enum {
    CMP_EXIT_SUPERSET = 3,
    CMP_EXIT_INCOMPATIBLE = 4,
};

typedef struct cpu_args {
    vmig_cpu_fmt fmt;
    bool features;
    bool migratable;
    bool guest;   /* what a guest can have (--guest, implied by --qemu) */
    bool explain; /* baseline: what each input took out */
    int index;    /* compare: which <cpu> of a file holding several (1-based), 0: none */
    const char *export_fmt;
    bool from_qemu;  /* models from a live QEMU instead of the built-in table */
    bool qemu_model; /* cpu host: what QEMU here can give a guest, not raw CPUID */
    vmig_accel accel;
    const cli_global *g;
} cpu_args;

static int parse(const char *cmd, int argc, char **argv, cpu_args *a)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"qemu", no_argument, NULL, OPT_QEMU},
        {"features", no_argument, NULL, OPT_FEATURES},
        {"migratable", no_argument, NULL, OPT_MIGRATABLE},
        {"export", required_argument, NULL, OPT_EXPORT},
        {"from-qemu", no_argument, NULL, OPT_FROM_QEMU},
        {"qemu-model", no_argument, NULL, OPT_QEMU_MODEL},
        {"accel", required_argument, NULL, OPT_ACCEL},
        {"guest", no_argument, NULL, OPT_GUEST},
        {"index", required_argument, NULL, OPT_INDEX},
        {"explain", no_argument, NULL, OPT_EXPLAIN},
        {0},
    };
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            a->fmt = VMIG_CPU_FMT_JSON;
            break;
        case OPT_QEMU:
            a->fmt = VMIG_CPU_FMT_QEMU;
            a->guest = true; /* a -cpu argument is a guest's */
            break;
        case OPT_FEATURES:
            a->features = true;
            break;
        case OPT_MIGRATABLE:
            a->migratable = true;
            break;
        case OPT_GUEST:
            a->guest = true;
            break;
        case OPT_EXPLAIN:
            a->explain = true;
            break;
        case OPT_INDEX:
            if (!cli_parse_int("--index", optarg, 1, 1 << 20, &a->index)) {
                return CLI_USAGE;
            }
            break;
        case OPT_EXPORT:
            if (strcmp(optarg, "xml") != 0 && strcmp(optarg, "json") != 0) {
                return cli_usage_error(cmd, "--export: '%s' is not xml or json", optarg);
            }
            a->export_fmt = optarg;
            break;
        case OPT_FROM_QEMU:
            a->from_qemu = true;
            break;
        case OPT_QEMU_MODEL:
            a->qemu_model = true;
            break;
        case OPT_ACCEL:
            if (strcmp(optarg, "tcg") != 0 && strcmp(optarg, "kvm") != 0) {
                return cli_usage_error(cmd,
                                       "--accel: '%s' is not an accelerator: use tcg or "
                                       "kvm",
                                       optarg);
            }
            a->accel = strcmp(optarg, "kvm") == 0 ? VMIG_ACCEL_KVM : VMIG_ACCEL_TCG;
            break;
        default:
            return cli_bad_option(cmd, c, argv);
        }
    }
    return CLI_OK;
}

static const char *accel_name(vmig_accel accel)
{
    return accel == VMIG_ACCEL_KVM ? "kvm" : "tcg";
}

static unsigned decode_flags(const cpu_args *a)
{
    return (a->migratable ? VMIG_CPU_MIGRATABLE : 0) | (a->guest ? VMIG_CPU_GUEST : 0);
}

/* The models to decode with: built in, or (--from-qemu) those of a QEMU started to ask. */
static vmig_cpu_models *models(const cpu_args *a, vmig_error **errp)
{
    if (!a->from_qemu) {
        return vmig_cpu_models_builtin();
    }
    vmig_engine *e = cli_engine(a->g, errp);
    vmig_cpu_models *m = e ? vmig_cpu_models_from_qemu(e, a->accel, errp) : NULL;
    vmig_engine_free(e);
    return m;
}

/* --qemu-model: what the QEMU here can give a guest. */
static vmig_cpu *host_from_qemu(const cpu_args *a, vmig_error **errp)
{
    vmig_engine *e = cli_engine(a->g, errp);
    vmig_cpu *cpu = e ? vmig_cpu_host_from_qemu(e, a->accel, errp) : NULL;
    vmig_engine_free(e);
    return cpu;
}

/* Says once per input which of its features no guest gets (so they never migrate). */
static void note_host_only(const char *origin, const vmig_cpu *cpu)
{
    int nested = 0;
    char *names = vmig_cpu_host_only(cpu, &nested);
    if (names[0]) {
        cli_err("note: %s: %s: host-only, no guest gets them, so they never migrate", origin,
                names);
    }
    if (nested > 0) {
        cli_err("note: %s: %d vmx-* (nested VMX) features ignored: vmigrate does not model "
                "them",
                origin, nested);
    }
    free(names);
}

static void note_list(const char *origin, const vmig_cpu_list *l)
{
    for (size_t i = 0; i < vmig_cpu_list_count(l); i++) {
        g_autofree char *where = vmig_cpu_list_count(l) > 1
                                     ? g_strdup_printf("%s, CPU %zu", origin, i + 1)
                                     : g_strdup(origin);
        note_host_only(where, vmig_cpu_list_get(l, i));
    }
}

static int print_cpu(const vmig_cpu *cpu, const cpu_args *a)
{
    char *out = vmig_cpu_format(cpu, a->fmt, a->features ? VMIG_CPU_ALL_FEATURES : 0);
    fputs(out, stdout);
    if (out[0] && out[strlen(out) - 1] != '\n') {
        fputc('\n', stdout);
    }
    free(out);
    return CLI_OK;
}

/* Decodes one CPU: a host's as a host's, unless --guest asks what a guest there gets. */
static int decode_one(const vmig_cpu_models *m, const vmig_cpu *cpu, const cpu_args *a)
{
    vmig_error *err = NULL;
    vmig_cpu *dec = vmig_cpu_decode(m, cpu, decode_flags(a), &err);
    if (!dec) {
        return cli_fail(err);
    }
    int rc = print_cpu(dec, a);
    vmig_cpu_free(dec);
    return rc;
}

/* Decodes @cpu (stolen) with the models @a asks for. */
static int decode_with_models(vmig_cpu *cpu, const cpu_args *a)
{
    vmig_error *err = NULL;
    vmig_cpu_models *m = models(a, &err);
    int rc = m ? decode_one(m, cpu, a) : cli_fail(err);
    vmig_cpu_models_free(m);
    vmig_cpu_free(cpu);
    return rc;
}

static int cpu_host(const cli_global *g, int argc, char **argv)
{
    cpu_args a = {.g = g};
    int rc = parse("cpu", argc, argv, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    if (optind != argc) {
        return cli_usage_error("cpu", "'cpu host' takes no arguments");
    }
    vmig_error *err = NULL;
    vmig_cpu *cpu = a.qemu_model ? host_from_qemu(&a, &err) : vmig_cpu_host(&err);
    if (!cpu) {
        return cli_fail(err);
    }
    if (a.export_fmt && !a.qemu_model) {
        bool xml = strcmp(a.export_fmt, "xml") == 0;
        char *out = vmig_cpu_export(cpu, xml ? VMIG_CPU_DUMP_XML : VMIG_CPU_DUMP_JSON, &err);
        vmig_cpu_free(cpu);
        if (!out) {
            return cli_fail(err);
        }
        fputs(out, stdout);
        free(out);
        return CLI_OK;
    }
    note_host_only("this host", cpu);
    return decode_with_models(cpu, &a);
}

static int cpu_decode_cmd(const cli_global *g, int argc, char **argv)
{
    cpu_args a = {.g = g};
    int rc = parse("cpu", argc, argv, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    if (argc - optind != 1) {
        return cli_usage_error("cpu", "'cpu decode' takes one FILE");
    }
    vmig_error *err = NULL;
    vmig_cpu_list *cpus = vmig_cpu_list_load(argv[optind], &err);
    vmig_cpu_models *m = cpus ? models(&a, &err) : NULL;
    if (!m) {
        vmig_cpu_list_free(cpus);
        return cli_fail(err);
    }
    note_list(argv[optind], cpus);
    for (size_t i = 0; i < vmig_cpu_list_count(cpus) && rc == CLI_OK; i++) {
        rc = decode_one(m, vmig_cpu_list_get(cpus, i), &a);
    }
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(cpus);
    return rc;
}

/* ---- baseline -------------------------------------------------------------------------------- */

/* One input of a baseline: a file, or agent://HOST once the agent exists. */
static bool baseline_input(vmig_cpu_list *cpus, const char *arg, GPtrArray *origins,
                           vmig_error **errp)
{
    if (g_str_has_prefix(arg, "agent://")) {
        cli_err("%s: the vmigrate agent does not exist yet: run 'vmigrate cpu host --export "
                "json' on that host and give the file",
                arg);
        return false;
    }
    size_t before = vmig_cpu_list_count(cpus);
    if (!vmig_cpu_list_add_file(cpus, arg, errp)) {
        return false;
    }
    size_t n = vmig_cpu_list_count(cpus) - before;
    for (size_t i = 0; i < n; i++) {
        g_ptr_array_add(origins,
                        n > 1 ? g_strdup_printf("%s, CPU %zu", arg, i + 1) : g_strdup(arg));
    }
    return true;
}

/* --explain: per input, what it took out of the baseline. */
static void explain(const vmig_cpu *base, GPtrArray *origins, json_object *json)
{
    json_object *arr = json ? json_object_new_array() : NULL;
    for (guint i = 0; i < origins->len; i++) {
        char *alone = NULL, *shared = NULL, *not_guest = NULL;
        if (!vmig_cpu_baseline_explain(base, i, &alone, &shared, &not_guest)) {
            break;
        }
        const char *origin = g_ptr_array_index(origins, i);
        if (arr) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "input", json_object_new_string(origin));
            json_object_object_add(o, "removed", json_object_new_string(alone));
            json_object_object_add(o, "removed_with_others", json_object_new_string(shared));
            json_object_object_add(o, "not_for_guests", json_object_new_string(not_guest));
            json_object_array_add(arr, o);
        } else {
            fprintf(stderr, "# %s: removed: %s\n", origin, alone[0] ? alone : "nothing");
            if (shared[0]) {
                fprintf(stderr, "#   removed with others: %s\n", shared);
            }
            if (not_guest[0]) {
                fprintf(stderr, "#   a host's, no guest there gets: %s\n", not_guest);
            }
        }
        free(alone);
        free(shared);
        free(not_guest);
    }
    if (arr) {
        json_object_object_add(json, "explain", arr);
    }
}

/* The baseline as JSON, with --explain's per-input lists in it. */
static void print_baseline_json(const vmig_cpu *base, const cpu_args *a, GPtrArray *origins)
{
    char *text = vmig_cpu_format(base, VMIG_CPU_FMT_JSON, a->features ? VMIG_CPU_ALL_FEATURES : 0);
    json_object *o = json_tokener_parse(text);
    free(text);
    explain(base, origins, o);
    cli_print_json(o);
    json_object_put(o);
}

static int cpu_baseline_cmd(const cli_global *g, int argc, char **argv)
{
    cpu_args a = {.g = g};
    int rc = parse("cpu", argc, argv, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    if (optind >= argc) {
        return cli_usage_error("cpu", "'cpu baseline' needs at least one FILE");
    }
    vmig_error *err = NULL;
    vmig_cpu_list *cpus = vmig_cpu_list_new();
    g_autoptr(GPtrArray) origins = g_ptr_array_new_with_free_func(g_free);
    bool ok = true;
    for (int i = optind; i < argc && ok; i++) {
        ok = baseline_input(cpus, argv[i], origins, &err);
    }
    if (!ok) {
        vmig_cpu_list_free(cpus);
        return err ? cli_fail(err) : CLI_FAILED;
    }
    for (guint i = 0; i < origins->len; i++) {
        note_host_only(g_ptr_array_index(origins, i), vmig_cpu_list_get(cpus, i));
    }
    vmig_cpu_models *m = models(&a, &err);
    vmig_cpu *base = m ? vmig_cpu_baseline(m, cpus, a.migratable ? VMIG_CPU_MIGRATABLE : 0, &err)
                       : NULL;
    if (!base) {
        rc = cli_fail(err);
    } else if (a.fmt == VMIG_CPU_FMT_JSON && a.explain) {
        print_baseline_json(base, &a, origins);
    } else {
        if (a.explain) {
            explain(base, origins, NULL);
        }
        rc = print_cpu(base, &a);
    }
    vmig_cpu_free(base);
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(cpus);
    return rc;
}

/* ---- compare --------------------------------------------------------------------------------- */

static void print_compare_json(vmig_cpu_cmp r, const char *missing, const char *why)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "result", json_object_new_string(vmig_cpu_cmp_name(r)));
    json_object *arr = json_object_new_array();
    g_auto(GStrv) list = g_strsplit(missing, " ", -1);
    for (int i = 0; list[i] && *list[i]; i++) {
        json_object_array_add(arr, json_object_new_string(list[i]));
    }
    json_object_object_add(o, "missing", arr);
    if (why) {
        json_object_object_add(o, "reason", json_object_new_string(why));
    }
    cli_print_json(o);
    json_object_put(o);
}

/* The CPU of @path to compare: its only one, or with several, the one --index names (a file
 * with one CPU ignores --index, so one option serves whichever file holds several). */
static vmig_cpu_list *load_one(const char *path, int index, const vmig_cpu **ret, vmig_error **errp)
{
    vmig_cpu_list *l = vmig_cpu_list_load(path, errp);
    if (!l) {
        return NULL;
    }
    size_t n = vmig_cpu_list_count(l);
    if (n > 1 && index == 0) {
        cli_err("%s holds %zu <cpu> blocks: say which with --index N (1 to %zu)", path, n, n);
    } else if (n > 1 && (size_t)index > n) {
        cli_err("%s: --index %d, but it holds %zu <cpu> blocks", path, index, n);
    } else {
        *ret = vmig_cpu_list_get(l, n > 1 ? (size_t)index - 1 : 0);
        return l;
    }
    vmig_cpu_list_free(l);
    return NULL;
}

static int cpu_compare_cmd(const cli_global *g, int argc, char **argv)
{
    cpu_args a = {.g = g};
    int rc = parse("cpu", argc, argv, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    if (argc - optind != 2) {
        return cli_usage_error("cpu", "'cpu compare' takes HOST_CPU and VM_CPU files");
    }
    vmig_error *err = NULL;
    const vmig_cpu *hcpu = NULL, *gcpu = NULL;
    vmig_cpu_list *host = load_one(argv[optind], a.index, &hcpu, &err);
    vmig_cpu_list *guest = host ? load_one(argv[optind + 1], a.index, &gcpu, &err) : NULL;
    vmig_cpu_models *m = guest ? models(&a, &err) : NULL;
    char *missing = NULL, *why = NULL;
    vmig_cpu_cmp r = m ? vmig_cpu_compare(m, hcpu, gcpu, &missing, &why, &err) : VMIG_CPU_CMP_ERROR;
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(guest);
    vmig_cpu_list_free(host);
    if (r == VMIG_CPU_CMP_ERROR) {
        return err ? cli_fail(err) : CLI_FAILED;
    }
    if (a.fmt == VMIG_CPU_FMT_JSON) {
        print_compare_json(r, missing, why);
    } else if (r == VMIG_CPU_CMP_INCOMPATIBLE) {
        printf("incompatible: %s\n", why);
    } else {
        printf("%s: the host can run this CPU%s\n", vmig_cpu_cmp_name(r),
               r == VMIG_CPU_CMP_SUPERSET ? " and has more" : "");
    }
    free(missing);
    free(why);
    return r == VMIG_CPU_CMP_IDENTICAL  ? CLI_OK
           : r == VMIG_CPU_CMP_SUPERSET ? CMP_EXIT_SUPERSET
                                        : CMP_EXIT_INCOMPATIBLE;
}

/* ---- models ---------------------------------------------------------------------------------- */

static json_object *words_array(const char *words)
{
    json_object *arr = json_object_new_array();
    g_auto(GStrv) list = g_strsplit(words, " ", -1);
    for (int i = 0; list[i]; i++) {
        if (list[i][0]) {
            json_object_array_add(arr, json_object_new_string(list[i]));
        }
    }
    return arr;
}

/* Model @i as JSON: names, vendor as the text output writes it, features as an array. */
static json_object *model_json(const vmig_cpu_models *m, size_t i)
{
    const char *versioned = NULL, *vendor = NULL;
    char *features = NULL;
    const char *name = vmig_cpu_models_get(m, i, &versioned, &vendor, &features);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "versioned", json_object_new_string(versioned));
    json_object *aliases = json_object_new_array();
    const char *alias;
    for (size_t k = 0; (alias = vmig_cpu_models_alias(m, i, k)); k++) {
        json_object_array_add(aliases, json_object_new_string(alias));
    }
    json_object_object_add(o, "aliases", aliases);
    json_object_object_add(o, "vendor", json_object_new_string(vmig_cpu_vendor_name(vendor)));
    json_object_object_add(o, "features", words_array(features));
    free(features);
    return o;
}

/* Model @i as text rows: its versioned name, then each alias, all pointing at it. */
static size_t model_rows(const vmig_cpu_models *m, size_t i)
{
    const char *versioned = NULL, *vendor = NULL;
    char *features = NULL;
    vmig_cpu_models_get(m, i, &versioned, &vendor, &features);
    g_auto(GStrv) list = g_strsplit(features, " ", -1);
    guint n = features[0] ? g_strv_length(list) : 0;
    const char *v = vmig_cpu_vendor_name(vendor);
    printf("%-32s %-22s %-8s %u\n", versioned, versioned, v, n);
    size_t rows = 1;
    const char *alias;
    for (size_t k = 0; (alias = vmig_cpu_models_alias(m, i, k)); k++, rows++) {
        printf("%-32s %-22s %-8s %u\n", alias, versioned, v, n);
    }
    free(features);
    return rows;
}

static int cpu_models_cmd(const cli_global *g, int argc, char **argv)
{
    cpu_args a = {.g = g};
    int rc = parse("cpu", argc, argv, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    if (optind != argc) {
        return cli_usage_error("cpu", "'cpu models' takes no arguments");
    }
    vmig_error *err = NULL;
    vmig_cpu_models *m = models(&a, &err);
    if (!m) {
        return cli_fail(err);
    }
    size_t count = vmig_cpu_models_count(m);
    if (a.fmt == VMIG_CPU_FMT_JSON) {
        json_object *arr = json_object_new_array();
        for (size_t i = 0; i < count; i++) {
            json_object_array_add(arr, model_json(m, i));
        }
        cli_print_json(arr);
        json_object_put(arr);
    } else {
        if (a.from_qemu) {
            printf("# models of this host's QEMU (%s), newest first\n", accel_name(a.accel));
        } else {
            printf("# QEMU %s models (built in), newest first\n",
                   vmig_cpu_models_builtin_version());
        }
        printf("%-32s %-22s %-8s %s\n", "NAME", "VERSIONED", "VENDOR", "FEATURES");
        size_t rows = 0;
        for (size_t i = 0; i < count; i++) {
            rows += model_rows(m, i);
        }
        printf("# %zu models, %zu names\n", count, rows);
    }
    vmig_cpu_models_free(m);
    return CLI_OK;
}

int cmd_cpu(const cli_global *g, int argc, char **argv)
{
    if (argc < 2) {
        return cli_usage_error("cpu", "'cpu' needs a subcommand: host, decode, baseline, "
                                      "compare or models");
    }
    const char *sub = argv[1];
    argc--;
    argv++;
    if (strcmp(sub, "host") == 0) {
        return cpu_host(g, argc, argv);
    }
    if (strcmp(sub, "decode") == 0) {
        return cpu_decode_cmd(g, argc, argv);
    }
    if (strcmp(sub, "baseline") == 0) {
        return cpu_baseline_cmd(g, argc, argv);
    }
    if (strcmp(sub, "compare") == 0) {
        return cpu_compare_cmd(g, argc, argv);
    }
    if (strcmp(sub, "models") == 0) {
        return cpu_models_cmd(g, argc, argv);
    }
    return cli_usage_error("cpu",
                           "unknown subcommand '%s': use host, decode, baseline, "
                           "compare or models",
                           sub);
}
