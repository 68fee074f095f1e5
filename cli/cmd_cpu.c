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
            break;
        case OPT_FEATURES:
            a->features = true;
            break;
        case OPT_MIGRATABLE:
            a->migratable = true;
            break;
        case OPT_EXPORT:
            if (strcmp(optarg, "xml") && strcmp(optarg, "json")) {
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
            if (strcmp(optarg, "tcg") && strcmp(optarg, "kvm")) {
                return cli_usage_error(cmd, "--accel: '%s' is not an accelerator: use tcg or "
                                            "kvm", optarg);
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

/* Decodes one CPU as a host CPU (nothing disabled). */
static int decode_one(const vmig_cpu_models *m, const vmig_cpu *cpu, const cpu_args *a)
{
    vmig_error *err = NULL;
    vmig_cpu *dec = vmig_cpu_decode(m, cpu, a->migratable ? VMIG_CPU_MIGRATABLE : 0, &err);
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
    for (size_t i = 0; i < vmig_cpu_list_count(cpus) && rc == CLI_OK; i++) {
        rc = decode_one(m, vmig_cpu_list_get(cpus, i), &a);
    }
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(cpus);
    return rc;
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
    bool ok = true;
    for (int i = optind; i < argc && ok; i++) {
        ok = vmig_cpu_list_add_file(cpus, argv[i], &err);
    }
    vmig_cpu_models *m = ok ? models(&a, &err) : NULL;
    vmig_cpu *base = m ? vmig_cpu_baseline(m, cpus, a.migratable ? VMIG_CPU_MIGRATABLE : 0,
                                           &err)
                       : NULL;
    rc = base ? print_cpu(base, &a) : cli_fail(err);
    vmig_cpu_free(base);
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(cpus);
    return rc;
}

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
    vmig_cpu_list *host = vmig_cpu_list_load(argv[optind], &err);
    vmig_cpu_list *guest = host ? vmig_cpu_list_load(argv[optind + 1], &err) : NULL;
    vmig_cpu_models *m = guest ? models(&a, &err) : NULL;
    char *missing = NULL, *why = NULL;
    vmig_cpu_cmp r = m ? vmig_cpu_compare(m, vmig_cpu_list_get(host, 0),
                                          vmig_cpu_list_get(guest, 0), &missing, &why, &err)
                       : VMIG_CPU_CMP_ERROR;
    vmig_cpu_models_free(m);
    vmig_cpu_list_free(guest);
    vmig_cpu_list_free(host);
    if (r == VMIG_CPU_CMP_ERROR) {
        return cli_fail(err);
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
    return r == VMIG_CPU_CMP_IDENTICAL ? CLI_OK
           : r == VMIG_CPU_CMP_SUPERSET ? CMP_EXIT_SUPERSET
                                        : CMP_EXIT_INCOMPATIBLE;
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
    json_object *arr = json_object_new_array();
    if (a.fmt != VMIG_CPU_FMT_JSON) {
        if (a.from_qemu) {
            printf("# models of this host's QEMU (%s)\n", accel_name(a.accel));
        } else {
            printf("# QEMU %s models (built in)\n", vmig_cpu_models_builtin_version());
        }
        printf("%-32s %-22s %-8s %s\n", "NAME", "VERSIONED", "VENDOR", "FEATURES");
    }
    for (size_t i = 0; i < vmig_cpu_models_count(m); i++) {
        const char *versioned = NULL, *vendor = NULL;
        char *features = NULL;
        const char *name = vmig_cpu_models_get(m, i, &versioned, &vendor, &features);
        if (a.fmt == VMIG_CPU_FMT_JSON) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "name", json_object_new_string(name));
            json_object_object_add(o, "versioned", json_object_new_string(versioned));
            json_object_object_add(o, "vendor", json_object_new_string(vendor));
            json_object_object_add(o, "features", json_object_new_string(features));
            json_object_array_add(arr, o);
        } else {
            g_auto(GStrv) list = g_strsplit(features, " ", -1);
            guint n = features[0] ? g_strv_length(list) : 0;
            printf("%-32s %-22s %-8s %u\n", name, versioned, vmig_cpu_vendor_name(vendor), n);
        }
        free(features);
    }
    if (a.fmt == VMIG_CPU_FMT_JSON) {
        cli_print_json(arr);
    }
    json_object_put(arr);
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
    return cli_usage_error("cpu", "unknown subcommand '%s': use host, decode, baseline, "
                                  "compare or models", sub);
}
