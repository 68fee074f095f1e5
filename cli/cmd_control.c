/* Control of a running migration from another terminal: jobinfo, abort, set-max-downtime,
 * set-speed, postcopy, and dirtyrate (docs/cli.md). */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MIB (1024.0 * 1024.0)

/* Options of a command that takes NAME and maybe --json / --seconds: argv[optind] is NAME. */
typedef struct ctl_args {
    bool json;
    int seconds;
    const char *name;
    const char *value; /* the number after NAME, for the commands that take one */
} ctl_args;

/* Parses "[--json] [--seconds N] NAME [VALUE]"; @nvalues is 0 or 1; @opts allowed flags. */
static int parse(const char *cmd, int argc, char **argv, bool allow_json, bool allow_seconds,
                 int nvalues, ctl_args *a)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"seconds", required_argument, NULL, 's'},
        {0},
    };
    *a = (ctl_args){.seconds = 1};
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:", opts, NULL)) != -1) {
        if (c == 'j' && allow_json) {
            a->json = true;
        } else if (c == 's' && allow_seconds) {
            if (!cli_parse_int("--seconds", optarg, 1, VMIG_DIRTYRATE_SECONDS_MAX, &a->seconds)) {
                return CLI_USAGE;
            }
        } else if (c == 'j' || c == 's') {
            return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        } else {
            return cli_bad_option(cmd, c, argv);
        }
    }
    if (argc - optind != 1 + nvalues) {
        return cli_usage_error(
            cmd, nvalues ? "'%s' takes a VM NAME and a number" : "'%s' takes one VM NAME", cmd);
    }
    a->name = argv[optind];
    a->value = nvalues ? argv[optind + 1] : NULL;
    return CLI_OK;
}

/* ---- jobinfo ------------------------------------------------------------------------------- */

static void add_int(json_object *o, const char *key, int64_t v)
{
    if (v >= 0) {
        json_object_object_add(o, key, json_object_new_int64(v));
    }
}

static void add_dbl(json_object *o, const char *key, double v)
{
    if (v >= 0) {
        json_object_object_add(o, key, json_object_new_double(v));
    }
}

static void add_str(json_object *o, const char *key, const char *v)
{
    if (*v) {
        json_object_object_add(o, key, json_object_new_string(v));
    }
}

static json_object *jobinfo_json(const char *name, const vmig_jobinfo *j)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "vm", json_object_new_string(name));
    add_str(o, "job", j->job);
    add_str(o, "state", j->state);
    add_str(o, "last_state", j->last_state);
    add_str(o, "holder", j->holder);
    if (j->engine_pid > 0) {
        json_object_object_add(o, "engine_pid", json_object_new_int(j->engine_pid));
        json_object_object_add(o, "engine_alive", json_object_new_boolean(j->engine_alive));
    }
    add_str(o, "qemu_status", j->qemu_status);
    add_str(o, "mode", j->mode);
    add_str(o, "policy", j->policy);
    if (j->postcopy_armed >= 0) {
        json_object_object_add(o, "postcopy_armed", json_object_new_boolean(j->postcopy_armed));
    }
    add_dbl(o, "progress", j->progress);
    add_int(o, "elapsed_ms", j->elapsed_ms);
    add_int(o, "processed_bytes", j->processed_bytes);
    add_int(o, "remaining_bytes", j->remaining_bytes);
    add_int(o, "total_bytes", j->total_bytes);
    add_dbl(o, "mbit_s", j->mbit_s);
    add_dbl(o, "mib_s", j->mib_s);
    add_int(o, "dirty_pages_rate", j->dirty_pages_rate);
    add_dbl(o, "dirty_mib_s", j->dirty_mib_s);
    add_int(o, "page_size", j->page_size);
    add_int(o, "iteration", j->iteration);
    add_int(o, "expected_downtime_ms", j->expected_downtime_ms);
    add_int(o, "downtime_limit_ms", j->downtime_limit_ms);
    add_int(o, "max_bandwidth_mib_s", j->max_bandwidth_mib_s);
    add_int(o, "throttle_pct", j->throttle_pct);
    add_int(o, "postcopy_requests", j->postcopy_requests);
    add_int(o, "downtime_ms", j->downtime_ms);
    add_dbl(o, "measured_dirty_mib_s", j->measured_dirty_mib_s);
    add_str(o, "error", j->error);
    json_object *acts = json_object_new_array();
    for (size_t i = 0; i < j->n_actions; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "at_ms", json_object_new_int64((int64_t)j->actions[i].at_ms));
        json_object_object_add(a, "what", json_object_new_string(j->actions[i].what));
        json_object_array_add(acts, a);
    }
    json_object_object_add(o, "actions", acts);
    return o;
}

static void line(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(const char *label, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%-21s ", label);
    vprintf(fmt, ap);
    putchar('\n');
    va_end(ap);
}

static void line_mib(const char *label, int64_t bytes)
{
    if (bytes >= 0) {
        line(label, "%.3f MiB", (double)bytes / MIB);
    }
}

static void line_ms(const char *label, int64_t ms)
{
    if (ms >= 0) {
        line(label, "%" PRId64 " ms", ms);
    }
}

static void print_figures(const vmig_jobinfo *j)
{
    if (j->progress >= 0) {
        line("Progress:", "%.0f %%", j->progress * 100);
    }
    line_ms("Time elapsed:", j->elapsed_ms);
    line_mib("Data processed:", j->processed_bytes);
    line_mib("Data remaining:", j->remaining_bytes);
    line_mib("Data total:", j->total_bytes);
    if (j->mib_s >= 0) {
        line("Memory bandwidth:", "%.3f MiB/s (%.1f Mbit/s)", j->mib_s, j->mbit_s);
    }
    if (j->dirty_pages_rate >= 0) {
        line("Dirty rate:", "%" PRId64 " pages/s (%.3f MiB/s)", j->dirty_pages_rate,
             j->dirty_mib_s);
    }
    if (j->measured_dirty_mib_s >= 0) {
        line("Dirty rate measured:", "%.1f MiB/s (before starting)", j->measured_dirty_mib_s);
    }
    if (j->page_size > 0) {
        line("Page size:", "%" PRId64 " bytes", j->page_size);
    }
    if (j->iteration >= 0) {
        line("Iteration:", "%" PRId64, j->iteration);
    }
    line_ms("Expected downtime:", j->expected_downtime_ms);
    line_ms("Downtime limit:", j->downtime_limit_ms);
    if (j->max_bandwidth_mib_s == 0) {
        line("Bandwidth limit:", "unlimited");
    } else if (j->max_bandwidth_mib_s > 0) {
        line("Bandwidth limit:", "%" PRId64 " MiB/s", j->max_bandwidth_mib_s);
    }
    if (j->throttle_pct >= 0) {
        line("CPU throttle:", "%" PRId64 " %%", j->throttle_pct);
    }
    if (j->postcopy_requests >= 0) {
        line("Post-copy requests:", "%" PRId64, j->postcopy_requests);
    }
    line_ms("Downtime:", j->downtime_ms);
}

static void print_jobinfo(const vmig_jobinfo *j)
{
    if (!*j->job) {
        line("Job type:", "none");
        if (*j->last_state) {
            line("Last job:", "%s", j->last_state);
        }
        if (*j->error) {
            line("Error:", "%s", j->error);
        }
        return;
    }
    line("Job type:", "%s", j->job);
    line("Job state:", "%s", j->state);
    if (*j->holder) {
        line("VM held by:", "%s", j->holder);
    }
    if (j->engine_pid > 0) {
        line("Engine:", "pid %d%s", j->engine_pid,
             j->engine_alive ? "" : " (gone: 'vmigrate vm recover' cleans up)");
    }
    if (*j->qemu_status) {
        line("QEMU status:", "%s", j->qemu_status);
    }
    if (*j->mode) {
        line("Mode:", "%s", j->mode);
    }
    if (*j->policy) {
        line("Policy:", "%s", j->policy);
    }
    if (j->postcopy_armed >= 0) {
        line("Post-copy armed:", "%s", j->postcopy_armed ? "yes" : "no");
    }
    print_figures(j);
    if (*j->error) {
        line("Error:", "%s", j->error);
    }
    for (size_t i = 0; i < j->n_actions; i++) {
        line(i ? "" : "Actions:", "%8.1f s  %s", (double)j->actions[i].at_ms / 1000,
             j->actions[i].what);
    }
}

static int jobinfo(const cli_global *g, int argc, char **argv)
{
    ctl_args a;
    int rc = parse("jobinfo", argc, argv, true, false, 0, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    vmig_jobinfo j;
    bool ok = e && vmig_jobinfo_get(e, a.name, &j, &err);
    vmig_engine_free(e);
    if (!ok) {
        return cli_fail(err);
    }
    if (a.json) {
        json_object *o = jobinfo_json(a.name, &j);
        cli_print_json(o);
        json_object_put(o);
    } else {
        print_jobinfo(&j);
    }
    return CLI_OK;
}

/* ---- the commands that change a migration -----------------------------------------------------
 */

static int abort_cmd(const cli_global *g, int argc, char **argv)
{
    ctl_args a;
    int rc = parse("abort", argc, argv, false, false, 0, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    vmig_error *err = NULL;
    char *what = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_migration_abort(e, a.name, &what, &err);
    vmig_engine_free(e);
    if (!ok) {
        return cli_fail(err);
    }
    printf("%s\n", what);
    free(what);
    return CLI_OK;
}

static int set_number(const cli_global *g, int argc, char **argv, bool speed)
{
    const char *cmd = speed ? "set-speed" : "set-max-downtime";
    ctl_args a;
    int rc = parse(cmd, argc, argv, false, false, 1, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    int v = 0;
    if (speed ? !cli_parse_int("MIB_S", a.value, 0, 1 << 20, &v)
              : !cli_parse_int("MS", a.value, 1, 2000000, &v)) {
        return CLI_USAGE;
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && (speed ? vmig_migration_set_speed(e, a.name, v, &err)
                          : vmig_migration_set_max_downtime(e, a.name, v, &err));
    vmig_engine_free(e);
    if (!ok) {
        return cli_fail(err);
    }
    if (!speed) {
        printf("VM '%s': downtime limit set to %d ms\n", a.name, v);
    } else if (v) {
        printf("VM '%s': migration bandwidth limited to %d MiB/s\n", a.name, v);
    } else {
        printf("VM '%s': migration bandwidth unlimited\n", a.name);
    }
    return CLI_OK;
}

static int postcopy(const cli_global *g, int argc, char **argv)
{
    ctl_args a;
    int rc = parse("postcopy", argc, argv, false, false, 0, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    bool ok = e && vmig_migration_postcopy(e, a.name, &err);
    vmig_engine_free(e);
    if (!ok) {
        return cli_fail(err);
    }
    printf("VM '%s': switching to post-copy: the destination runs the VM from now on\n", a.name);
    return CLI_OK;
}

static int dirtyrate(const cli_global *g, int argc, char **argv)
{
    ctl_args a;
    int rc = parse("dirtyrate", argc, argv, true, true, 0, &a);
    if (rc != CLI_OK) {
        return rc;
    }
    vmig_error *err = NULL;
    vmig_engine *e = cli_engine(g, &err);
    vmig_dirtyrate_info d;
    bool ok = e && vmig_dirtyrate(e, a.name, a.seconds, &d, &err);
    vmig_engine_free(e);
    if (!ok) {
        return cli_fail(err);
    }
    if (a.json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "vm", json_object_new_string(a.name));
        json_object_object_add(o, "dirty_rate_mib_s", json_object_new_double(d.mib_s));
        json_object_object_add(o, "calc_time_s", json_object_new_int(d.calc_time_s));
        add_int(o, "sample_pages", d.sample_pages);
        add_str(o, "mode", d.mode);
        add_int(o, "start_time", d.start_time);
        cli_print_json(o);
        json_object_put(o);
    } else {
        printf("VM '%s': dirty rate %.0f MiB/s (measured over %d s", a.name, d.mib_s,
               d.calc_time_s);
        if (d.sample_pages >= 0) {
            printf(", %" PRId64 " sample pages per GiB", d.sample_pages);
        }
        printf(")\n");
    }
    return CLI_OK;
}

int cmd_control(const cli_global *g, int argc, char **argv)
{
    const char *cmd = argv[0];
    if (strcmp(cmd, "jobinfo") == 0) {
        return jobinfo(g, argc, argv);
    }
    if (strcmp(cmd, "abort") == 0) {
        return abort_cmd(g, argc, argv);
    }
    if (strcmp(cmd, "set-max-downtime") == 0) {
        return set_number(g, argc, argv, false);
    }
    if (strcmp(cmd, "set-speed") == 0) {
        return set_number(g, argc, argv, true);
    }
    if (strcmp(cmd, "postcopy") == 0) {
        return postcopy(g, argc, argv);
    }
    if (strcmp(cmd, "dirtyrate") == 0) {
        return dirtyrate(g, argc, argv);
    }
    return cli_usage_error(NULL, "unknown command '%s'", cmd);
}
