#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define DEMO_NAME "vmig-demo"
#define DEMO_READY_TIMEOUT_MS 300000

enum {
    OPT_MEM = 0x100,
    OPT_DIRTY,
    OPT_ACCEL,
    OPT_KEEP,
};

/* clang-format off: a table, laid out by hand */
#define MIGRATE_LONGOPTS                                                                           \
    {"live", no_argument, NULL, 'l'}, {"max-downtime", required_argument, NULL, 'D'},              \
        {"bandwidth", required_argument, NULL, 'B'}, {"timeout", required_argument, NULL, 'T'},    \
        {"verbose", no_argument, NULL, 'v'}, {"json", no_argument, NULL, 'j'},                     \
        {"force", no_argument, NULL, 'F'}, {"unsafe", no_argument, NULL, 'U'},                     \
    {                                                                                              \
        "stall-timeout", required_argument, NULL, 'S'                                              \
    }
/* clang-format on */

static void print_summary(const char *name, const char *dest, const vmig_migration_stats *st)
{
    printf("migrated VM '%s' to %s: %s\n", name, dest, st->status);
    printf("  total       %8llu ms (setup %llu ms)\n", (unsigned long long)st->total_ms,
           (unsigned long long)st->setup_ms);
    printf("  downtime    %8llu ms (QEMU's own figure: %llu ms)\n",
           (unsigned long long)st->downtime_ms, (unsigned long long)st->qemu_downtime_ms);
    printf("  transferred %8.1f MiB in %llu pass(es), %.0f Mbit/s\n",
           (double)st->transferred_bytes / (1024.0 * 1024.0), (unsigned long long)st->passes,
           st->mbps);
}

int cmd_migrate(const cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {MIGRATE_LONGOPTS, {0}};
    cli_migrate_args a;
    vmig_migrate_opts_init(&a.opts);
    a.opts.live = false; /* as virsh: live only when asked */
    a.verbose = a.json = false;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c == '?' || c == ':') {
            return cli_bad_option("migrate", c, argv);
        }
        if (cli_migrate_opt(&a, c, optarg) < 0) {
            return CLI_USAGE;
        }
    }
    if (argc - optind != 2) {
        return cli_usage_error("migrate", "expected NAME and DEST, got %d argument(s)",
                               argc - optind);
    }
    const char *name = argv[optind];
    a.opts.dest = argv[optind + 1];
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    if (!e) {
        if (a.json) { /* the promise of --json: one object, on failure too */
            json_object *o = json_object_new_object();
            json_object_object_add(o, "status", json_object_new_string("failed"));
            json_object_object_add(o, "vm", json_object_new_string(name));
            json_object_object_add(o, "error", json_object_new_string(vmig_error_message(err)));
            cli_print_json(o);
            json_object_put(o);
        }
        return cli_fail(err);
    }
    cli_install_sigint(e);
    cli_progress prog;
    cli_progress_init(&prog, a.verbose);
    vmig_migration_stats st;
    bool ok = vmig_migrate(e, name, &a.opts, cli_progress_cb, &prog, &st, &err);
    cli_progress_done(&prog);
    if (a.json) {
        json_object *o = cli_stats_json(&st);
        json_object_object_add(o, "vm", json_object_new_string(name));
        json_object_object_add(o, "dest", json_object_new_string(a.opts.dest));
        json_object_object_add(o, "live", json_object_new_boolean(a.opts.live));
        if (!ok) {
            json_object_object_add(o, "error", json_object_new_string(vmig_error_message(err)));
        }
        cli_print_json(o);
        json_object_put(o);
    } else if (ok) {
        print_summary(name, a.opts.dest, &st);
    }
    cli_remove_sigint();
    vmig_engine_free(e);
    return ok ? CLI_OK : cli_fail(err);
}

/* ---- demo ---------------------------------------------------------------------------------- */

typedef struct demo_args {
    cli_migrate_args m;
    int mem_mib;
    int dirty_mib_s;
    vmig_accel accel;
    bool keep;
} demo_args;

static int demo_parse(demo_args *d, int argc, char **argv)
{
    static const struct option opts[] = {
        MIGRATE_LONGOPTS,
        {"mem-mib", required_argument, NULL, OPT_MEM},
        {"dirty-mib-s", required_argument, NULL, OPT_DIRTY},
        {"accel", required_argument, NULL, OPT_ACCEL},
        {"keep", no_argument, NULL, OPT_KEEP},
        {0},
    };
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c == '?' || c == ':') {
            return cli_bad_option("demo", c, argv);
        }
        int r = cli_migrate_opt(&d->m, c, optarg);
        if (r < 0) {
            return CLI_USAGE;
        }
        if (r > 0) {
            continue;
        }
        if (c == OPT_MEM && !cli_parse_int("--mem-mib", optarg, 16, 3072, &d->mem_mib)) {
            return CLI_USAGE;
        }
        if (c == OPT_DIRTY && !cli_parse_int("--dirty-mib-s", optarg, 0, 100000, &d->dirty_mib_s)) {
            return CLI_USAGE;
        }
        if (c == OPT_ACCEL) {
            if (strcmp(optarg, "tcg") != 0 && strcmp(optarg, "kvm") != 0) {
                cli_err("--accel: '%s' is not an accelerator: use tcg or kvm", optarg);
                return CLI_USAGE;
            }
            d->accel = strcmp(optarg, "kvm") == 0 ? VMIG_ACCEL_KVM : VMIG_ACCEL_TCG;
        }
        if (c == OPT_KEEP) {
            d->keep = true;
        }
    }
    if (optind != argc) {
        return cli_usage_error("demo", "unexpected argument '%s'", argv[optind]);
    }
    return CLI_OK;
}

static vmig_spec *demo_spec(const demo_args *d, vmig_error **errp)
{
    const char *kernel = vmig_guest_kernel();
    if (!kernel) {
        fprintf(stderr, "vmigrate: the built-in test guest (vmig-guest.elf) was not found; "
                        "set VMIG_GUEST to its path\n");
        return NULL;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(DEMO_NAME));
    json_object_object_add(o, "memory_mib", json_object_new_int(d->mem_mib));
    json_object_object_add(o, "kernel", json_object_new_string(kernel));
    char append[64];
    snprintf(append, sizeof(append), "vmig.dirty_mib_s=%d", d->dirty_mib_s);
    json_object_object_add(o, "append", json_object_new_string(append));
    vmig_spec *s = vmig_spec_parse(json_object_to_json_string(o), errp);
    json_object_put(o);
    return s;
}

static void demo_report(const demo_args *d, bool migrated, const vmig_migration_stats *st,
                        bool verified, uint64_t pages, const char *error)
{
    if (d->m.json) {
        json_object *o = cli_stats_json(st);
        json_object_object_add(o, "verified", json_object_new_boolean(verified));
        json_object_object_add(o, "pages_checked", json_object_new_int64((int64_t)pages));
        json_object_object_add(o, "mem_mib", json_object_new_int(d->mem_mib));
        json_object_object_add(o, "dirty_mib_s", json_object_new_int(d->dirty_mib_s));
        json_object_object_add(o, "accel",
                               json_object_new_string(d->accel == VMIG_ACCEL_KVM ? "kvm" : "tcg"));
        if (error) {
            json_object_object_add(o, "error", json_object_new_string(error));
        }
        cli_print_json(o);
        json_object_put(o);
        return;
    }
    if (migrated) {
        print_summary(DEMO_NAME, "local", st);
    }
    if (verified) {
        printf("  memory      %8llu pages checked on the destination: all as the guest wrote "
               "them\n",
               (unsigned long long)pages);
    }
}

int cmd_demo(const cli_global *g, int argc, char **argv)
{
    demo_args d = {.mem_mib = 1024, .accel = VMIG_ACCEL_TCG};
    vmig_migrate_opts_init(&d.m.opts);
    int r = demo_parse(&d, argc, argv);
    if (r != CLI_OK) {
        return r;
    }
    d.m.opts.live = true;
    d.m.opts.dest = "local";

    cli_global dg = *g;
    char tmpl[] = "/tmp/vmig-demo-XXXXXX";
    if (!dg.state_dir) {
        if (!mkdtemp(tmpl)) {
            cli_err("cannot create a state directory under /tmp");
            return CLI_FAILED;
        }
        dg.state_dir = tmpl;
    }
    vmig_error *err = NULL;
    vmig_spec *spec = demo_spec(&d, &err);
    vmig_engine *e = spec ? cli_engine(&dg, &err) : NULL;
    vmig_migration_stats st = {0};
    uint64_t pages = 0;
    bool migrated = false, verified = false;
    if (e) {
        cli_install_sigint(e);
        if (!d.m.json) {
            printf("starting the test guest: %d MiB, dirtying %d MiB/s (%s)\n", d.mem_mib,
                   d.dirty_mib_s, d.accel == VMIG_ACCEL_KVM ? "kvm" : "tcg");
            fflush(stdout);
        }
        cli_progress prog;
        cli_progress_init(&prog, d.m.verbose);
        migrated = vmig_vm_start(e, spec, d.accel, &err) &&
                   vmig_guest_wait_ready(e, DEMO_NAME, DEMO_READY_TIMEOUT_MS, &err) &&
                   vmig_migrate(e, DEMO_NAME, &d.m.opts, cli_progress_cb, &prog, &st, &err);
        cli_progress_done(&prog);
        verified = migrated && vmig_guest_verify(e, DEMO_NAME, &pages, &err);
        if (!d.keep) {
            vmig_error *serr = NULL;
            if (!vmig_vm_stop(e, DEMO_NAME, 10000, &serr)) {
                cli_err("cleaning up: %s", vmig_error_message(serr));
            }
            vmig_error_free(serr);
        }
    }
    if (!st.status[0]) {
        snprintf(st.status, sizeof(st.status), "failed");
    }
    demo_report(&d, migrated, &st, verified, pages, err ? vmig_error_message(err) : NULL);
    if (e && !d.keep && dg.state_dir == tmpl) {
        rmdir(tmpl);
    } else if (e && d.keep && !d.m.json) {
        printf("the VM keeps running: vmigrate --state-dir %s vm stop %s\n",
               vmig_engine_state_dir(e), DEMO_NAME);
    }
    cli_remove_sigint();
    vmig_engine_free(e);
    vmig_spec_free(spec);
    if (!verified) {
        return err ? cli_fail(err) : CLI_FAILED;
    }
    return CLI_OK;
}
