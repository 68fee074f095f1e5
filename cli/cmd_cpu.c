/* vmigrate cpu host|decode|baseline|compare|models */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cpu/format.h"
#include "cpu/qemu.h"
#include "cpu/raw.h"
#include "engine/engine.h"

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
    cpu_output fmt;
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
            a->fmt = CPU_OUT_JSON;
            break;
        case OPT_QEMU:
            a->fmt = CPU_OUT_QEMU;
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
            if (!eng_accel_parse(optarg, &a->accel)) {
                return cli_usage_error(cmd, "--accel: '%s' is not an accelerator: use tcg or "
                                            "kvm", optarg);
            }
            break;
        default:
            return cli_bad_option(cmd, c, argv);
        }
    }
    return CLI_OK;
}

/* A throwaway QEMU on this host: @fn asks it what it needs. */
static bool with_probe(const cpu_args *a, bool (*fn)(qmp_conn *, void *, vmig_error **),
                       void *opaque, vmig_error **errp)
{
    vmig_engine *e = cli_engine(a->g, errp);
    if (!e) {
        return false;
    }
    int pid = 0;
    char *dir = NULL;
    qmp_conn *c = eng_qemu_probe(e, a->accel, &pid, &dir, errp);
    bool ok = c && fn(c, opaque, errp);
    qmp_conn_free(c);
    if (dir) {
        eng_qemu_probe_end(pid, dir);
    }
    g_free(dir);
    vmig_engine_free(e);
    return ok;
}

static bool probe_models(qmp_conn *c, void *opaque, vmig_error **errp)
{
    *(cpu_models **)opaque = cpu_models_from_qemu(c, errp);
    return *(cpu_models **)opaque != NULL;
}

static cpu_models *models(const cpu_args *a, vmig_error **errp)
{
    cpu_models *db = NULL;
    if (!a->from_qemu) {
        return cpu_models_builtin();
    }
    return with_probe(a, probe_models, &db, errp) ? db : NULL;
}

typedef struct host_probe {
    const char *model;
    cpu_def def;
} host_probe;

static bool probe_host(qmp_conn *c, void *opaque, vmig_error **errp)
{
    host_probe *h = opaque;
    return cpu_host_model_from_qemu(c, h->model, &h->def, errp);
}

static int print_result(cpu_result *r, const cpu_args *a)
{
    r->all_features = a->features;
    char *out = cpu_format(r, a->fmt);
    fputs(out, stdout);
    if (out[0] && out[strlen(out) - 1] != '\n') {
        fputc('\n', stdout);
    }
    g_free(out);
    return CLI_OK;
}

/* Decodes one CPU as a host CPU (nothing disabled). */
static int decode_one(cpu_models *db, const cpu_def *d, const cpu_args *a)
{
    cpu_result r = {0};
    vmig_error *err = NULL;
    if (!cpu_def_expand(db, d, &r.set, &err)) {
        return cli_fail(err);
    }
    if (a->migratable) {
        cpu_featset_drop_unmigratable(&r.set);
    }
    g_strlcpy(r.vendor, d->vendor, sizeof(r.vendor));
    if (!cpu_decode(db, &r.set, d->vendor, d->family, d->model, CPU_DECODE_HOST, NULL, &r.dec,
                    &err)) {
        return cli_fail(err);
    }
    return print_result(&r, a);
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
    if (a.qemu_model) {
        host_probe h = {.model = a.accel == VMIG_ACCEL_KVM ? "host" : "max"};
        cpu_models *db = with_probe(&a, probe_host, &h, &err) ? models(&a, &err) : NULL;
        if (!db) {
            return cli_fail(err);
        }
        rc = decode_one(db, &h.def, &a);
        cpu_models_free(db);
        return rc;
    }
    g_autoptr(cpu_raw) raw = cpu_raw_host(&err);
    if (!raw) {
        return cli_fail(err);
    }
    if (a.export_fmt) {
        g_autofree char *out = strcmp(a.export_fmt, "xml") == 0 ? cpu_raw_to_xml(raw)
                                                                 : cpu_raw_to_json(raw);
        fputs(out, stdout);
        return CLI_OK;
    }
    cpu_def d = {0};
    cpu_raw_vendor(raw, d.vendor);
    cpu_raw_signature(raw, &d.family, &d.model, &d.stepping);
    cpu_raw_features(raw, &d.require);
    cpu_models *db = models(&a, &err);
    if (!db) {
        return cli_fail(err);
    }
    rc = decode_one(db, &d, &a);
    cpu_models_free(db);
    return rc;
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
    g_autoptr(GArray) defs = cpu_defs_load(argv[optind], &err);
    if (!defs) {
        return cli_fail(err);
    }
    cpu_models *db = models(&a, &err);
    if (!db) {
        return cli_fail(err);
    }
    for (guint i = 0; i < defs->len && rc == CLI_OK; i++) {
        rc = decode_one(db, &g_array_index(defs, cpu_def, i), &a);
    }
    cpu_models_free(db);
    return rc;
}

static void clear_def(gpointer p)
{
    cpu_def_clear(p);
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
    g_autoptr(GArray) all = g_array_new(FALSE, TRUE, sizeof(cpu_def));
    g_array_set_clear_func(all, clear_def);
    vmig_error *err = NULL;
    for (int i = optind; i < argc; i++) {
        GArray *defs = cpu_defs_load(argv[i], &err);
        if (!defs) {
            return cli_fail(err);
        }
        for (guint k = 0; k < defs->len; k++) {
            cpu_def d = g_array_index(defs, cpu_def, k);
            g_array_index(defs, cpu_def, k).model_name = NULL; /* moved */
            g_array_append_val(all, d);
        }
        g_array_unref(defs);
    }
    cpu_models *db = models(&a, &err);
    if (!db) {
        return cli_fail(err);
    }
    cpu_result r = {0};
    bool ok = cpu_baseline(db, (cpu_def *)(void *)all->data, all->len, a.migratable, &r.dec,
                           &r.set, r.vendor, &err);
    if (ok) {
        rc = print_result(&r, &a);
    }
    cpu_models_free(db);
    return ok ? rc : cli_fail(err);
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
    g_autoptr(GArray) host = cpu_defs_load(argv[optind], &err);
    g_autoptr(GArray) guest = host ? cpu_defs_load(argv[optind + 1], &err) : NULL;
    if (!guest) {
        return cli_fail(err);
    }
    cpu_models *db = models(&a, &err);
    if (!db) {
        return cli_fail(err);
    }
    cpu_featset missing;
    char *why = NULL;
    int r = (int)cpu_compare(db, &g_array_index(host, cpu_def, 0),
                             &g_array_index(guest, cpu_def, 0), &missing, &why, &err);
    cpu_models_free(db);
    if (r < 0) {
        return cli_fail(err);
    }
    static const char *const words[] = {"incompatible", "identical", "superset"};
    if (a.fmt == CPU_OUT_JSON) {
        g_autofree char *names = cpu_featset_names(&missing, false);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "result", json_object_new_string(words[r]));
        json_object *arr = json_object_new_array();
        g_auto(GStrv) list = g_strsplit(names, " ", -1);
        for (int i = 0; list[i] && *list[i]; i++) {
            json_object_array_add(arr, json_object_new_string(list[i]));
        }
        json_object_object_add(o, "missing", arr);
        if (why) {
            json_object_object_add(o, "reason", json_object_new_string(why));
        }
        cli_print_json(o);
        json_object_put(o);
    } else if (r == CPU_CMP_INCOMPATIBLE) {
        printf("incompatible: %s\n", why);
    } else {
        printf("%s: the host can run this CPU%s\n", words[r],
               r == CPU_CMP_SUPERSET ? " and has more" : "");
    }
    g_free(why);
    return r == CPU_CMP_IDENTICAL ? CLI_OK
           : r == CPU_CMP_SUPERSET ? CMP_EXIT_SUPERSET
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
    cpu_models *db = models(&a, &err);
    if (!db) {
        return cli_fail(err);
    }
    json_object *arr = json_object_new_array();
    if (a.fmt != CPU_OUT_JSON) {
        if (a.from_qemu) {
            printf("# models of this host's QEMU (%s)\n", eng_accel_name(a.accel));
        } else {
            printf("# QEMU %s models (built in)\n", cpu_data_qemu_version);
        }
        printf("%-32s %-22s %-8s %s\n", "NAME", "VERSIONED", "VENDOR", "FEATURES");
    }
    for (size_t i = 0; i < cpu_models_count_get(db); i++) {
        const cpu_model *m = cpu_models_at(db, i);
        if (a.fmt == CPU_OUT_JSON) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "name", json_object_new_string(m->name));
            json_object_object_add(o, "versioned", json_object_new_string(m->versioned));
            json_object_object_add(o, "vendor", json_object_new_string(m->vendor));
            g_autofree char *f = cpu_featset_names(&m->features, false);
            json_object_object_add(o, "features", json_object_new_string(f));
            json_object_array_add(arr, o);
        } else {
            printf("%-32s %-22s %-8s %d\n", m->name, m->versioned, cpu_vendor_libvirt(m->vendor),
                   cpu_featset_count(&m->features));
        }
    }
    if (a.fmt == CPU_OUT_JSON) {
        cli_print_json(arr);
    }
    json_object_put(arr);
    cpu_models_free(db);
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
