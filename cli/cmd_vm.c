#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define LIST_MAX 1024

static bool parse_accel(const char *v, vmig_accel *ret)
{
    if (strcmp(v, "tcg") == 0) {
        *ret = VMIG_ACCEL_TCG;
    } else if (strcmp(v, "kvm") == 0) {
        *ret = VMIG_ACCEL_KVM;
    } else {
        cli_err("--accel: '%s' is not an accelerator: use tcg or kvm", v);
        return false;
    }
    return true;
}

static vmig_spec *start_spec(vmig_engine *e, const char *arg, vmig_error **errp);

static int vm_start(const cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"accel", required_argument, NULL, 'a'},
        {0},
    };
    vmig_accel accel = VMIG_ACCEL_TCG;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c != 'a') {
            return cli_bad_option("vm", c, argv);
        }
        if (!parse_accel(optarg, &accel)) {
            return CLI_USAGE;
        }
    }
    if (argc - optind != 1) {
        return cli_usage_error("vm", "'vm start' takes one SPEC file or the NAME of a defined VM");
    }
    const char *arg = argv[optind];
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    if (!e) {
        return cli_fail(err);
    }
    vmig_spec *spec = start_spec(e, arg, &err);
    bool ok = spec && vmig_vm_start(e, spec, accel, &err);
    if (!spec && !err) { /* start_spec() said why */
        vmig_engine_free(e);
        return CLI_FAILED;
    }
    if (ok) {
        printf("started VM '%s' (%s, state in %s)\n", vmig_spec_name(spec),
               accel == VMIG_ACCEL_KVM ? "kvm" : "tcg", vmig_engine_state_dir(e));
    }
    vmig_spec_free(spec);
    vmig_engine_free(e);
    return ok ? CLI_OK : cli_fail(err);
}

/* What `vm start ARG` starts: the spec in file ARG, else the definition of VM ARG.  NULL when
 * neither: then it has said so, and set no error. */
static vmig_spec *start_spec(vmig_engine *e, const char *arg, vmig_error **errp)
{
    if (access(arg, F_OK) == 0 || strchr(arg, '/')) { /* a path: its own error if missing */
        return vmig_spec_load(arg, errp);
    }
    vmig_error *err = NULL;
    vmig_spec *spec = vmig_vm_definition(e, arg, &err);
    if (!spec && vmig_error_code(err) == VMIG_E_NOTFOUND) {
        vmig_error_free(err);
        err = NULL;
        if (!vmig_spec_load(arg, &err)) { /* the library's words for the missing file */
            cli_err("%s, and no VM named '%s' is defined in %s", vmig_error_message(err), arg,
                    vmig_engine_state_dir(e));
            vmig_error_free(err);
            err = NULL;
        }
    }
    if (err) {
        *errp = err;
    }
    return spec;
}

static int vm_define(const cli_global *g, int argc, char **argv)
{
    if (argc == 2 && argv[1][0] == '-') {
        return cli_usage_error("vm", "unknown option '%s'", argv[1]);
    }
    if (argc != 2) {
        return cli_usage_error("vm", "'vm define' takes one SPEC file");
    }
    vmig_error *err = NULL;
    vmig_spec *spec = vmig_spec_load(argv[1], &err);
    if (!spec) {
        return cli_fail(err);
    }
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_vm_define(e, spec, &err);
    if (ok) {
        printf("defined VM '%s' (in %s)\n", vmig_spec_name(spec), vmig_engine_state_dir(e));
    }
    vmig_spec_free(spec);
    vmig_engine_free(e);
    return ok ? CLI_OK : cli_fail(err);
}

static int vm_undefine(const cli_global *g, int argc, char **argv)
{
    if (argc == 2 && argv[1][0] == '-') {
        return cli_usage_error("vm", "unknown option '%s'", argv[1]);
    }
    if (argc != 2) {
        return cli_usage_error("vm", "'vm undefine' takes one VM NAME");
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_vm_undefine(e, argv[1], &err);
    vmig_engine_free(e);
    if (ok) {
        printf("undefined VM '%s'\n", argv[1]);
    }
    return ok ? CLI_OK : cli_fail(err);
}

/* vm list's output: a table, or a JSON array. */
static void print_list(const vmig_vm_info *infos, int n, bool json)
{
    json_object *arr = json_object_new_array();
    if (!json && n > 0) {
        printf("%-24s %8s  %-12s %-10s %-22s %s\n", "NAME", "PID", "STATE", "PERSISTENT", "JOB",
               "QMP");
    }
    for (int i = 0; i < n; i++) {
        const vmig_vm_info *v = &infos[i];
        if (json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "name", json_object_new_string(v->name));
            json_object_object_add(o, "pid", json_object_new_int(v->pid));
            json_object_object_add(o, "state", json_object_new_string(v->status));
            json_object_object_add(o, "persistent", json_object_new_boolean(v->persistent));
            if (v->qmp_path[0]) {
                json_object_object_add(o, "qmp", json_object_new_string(v->qmp_path));
            }
            if (v->job[0]) {
                json_object *jo = json_object_new_object();
                json_object_object_add(jo, "kind", json_object_new_string(v->job));
                json_object_object_add(jo, "state", json_object_new_string(v->job_state));
                json_object_object_add(jo, "progress", json_object_new_double(v->job_progress));
                json_object_object_add(o, "job", jo);
            }
            json_object_array_add(arr, o);
        } else {
            char job[64] = "-";
            if (v->job[0]) {
                snprintf(job, sizeof(job), "%s %s %3.0f%%", v->job, v->job_state,
                         v->job_progress * 100);
            }
            char pid[16] = "-";
            if (v->pid > 0) {
                snprintf(pid, sizeof(pid), "%d", v->pid);
            }
            printf("%-24s %8s  %-12s %-10s %-22s %s\n", v->name, pid, v->status,
                   v->persistent ? "yes" : "no", job, v->qmp_path[0] ? v->qmp_path : "-");
        }
    }
    if (json) {
        cli_print_json(arr);
    }
    json_object_put(arr);
}

static int vm_list(const cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'},
        {0},
    };
    bool json = false;
    int timeout_ms = VMIG_VM_LIST_TIMEOUT_MS;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c == 'j') {
            json = true;
        } else if (c == 't') {
            if (!cli_parse_int("--timeout", optarg, 1, 60000, &timeout_ms)) {
                return CLI_USAGE;
            }
        } else {
            return cli_bad_option("vm", c, argv);
        }
    }
    if (optind != argc) {
        return cli_usage_error("vm", "'vm list' takes no arguments");
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    if (!e) {
        return cli_fail(err);
    }
    vmig_vm_info *infos = calloc(LIST_MAX, sizeof(*infos));
    int n = infos ? vmig_vm_list_wait(e, infos, LIST_MAX, timeout_ms, &err) : -1;
    if (n < 0) {
        free(infos);
        vmig_engine_free(e);
        return err ? cli_fail(err) : CLI_FAILED;
    }
    print_list(infos, n < LIST_MAX ? n : LIST_MAX, json);
    free(infos);
    vmig_engine_free(e);
    return CLI_OK;
}

static int vm_stop(const cli_global *g, int argc, char **argv)
{
    static const struct option opts[] = {
        {"timeout", required_argument, NULL, 't'},
        {0},
    };
    int timeout_s = 10;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c != 't') {
            return cli_bad_option("vm", c, argv);
        }
        if (!cli_parse_int("--timeout", optarg, 0, 3600, &timeout_s)) {
            return CLI_USAGE;
        }
    }
    if (argc - optind != 1) {
        return cli_usage_error("vm", "'vm stop' takes one VM NAME");
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_vm_stop(e, argv[optind], timeout_s * 1000, &err);
    vmig_engine_free(e);
    if (ok) {
        printf("stopped VM '%s'\n", argv[optind]);
    }
    return ok ? CLI_OK : cli_fail(err);
}

static int vm_recover(const cli_global *g, int argc, char **argv)
{
    if (argc == 2 && argv[1][0] == '-') {
        return cli_usage_error("vm", "unknown option '%s'", argv[1]);
    }
    if (argc != 2) {
        return cli_usage_error("vm", "'vm recover' takes one VM NAME");
    }
    vmig_error *err = NULL;
    char *what = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_vm_recover(e, argv[1], &what, &err);
    vmig_engine_free(e);
    if (ok) {
        printf("VM '%s': %s\n", argv[1], *what ? what : "nothing to recover");
    }
    free(what);
    return ok ? CLI_OK : cli_fail(err);
}

int cmd_vm(const cli_global *g, int argc, char **argv)
{
    if (argc < 2) {
        return cli_usage_error("vm", "'vm' needs a subcommand: start, list, stop, define, "
                                     "undefine or recover");
    }
    const char *sub = argv[1];
    argc--;
    argv++;
    if (strcmp(sub, "start") == 0) {
        return vm_start(g, argc, argv);
    }
    if (strcmp(sub, "list") == 0) {
        return vm_list(g, argc, argv);
    }
    if (strcmp(sub, "stop") == 0) {
        return vm_stop(g, argc, argv);
    }
    if (strcmp(sub, "recover") == 0) {
        return vm_recover(g, argc, argv);
    }
    if (strcmp(sub, "define") == 0) {
        return vm_define(g, argc, argv);
    }
    if (strcmp(sub, "undefine") == 0) {
        return vm_undefine(g, argc, argv);
    }
    return cli_usage_error("vm",
                           "unknown subcommand '%s': use start, list, stop, define, undefine or "
                           "recover",
                           sub);
}
