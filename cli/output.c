#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

void cli_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmigrate: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "vmigrate%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'vmigrate help%s%s'.\n", cmd ? " " : "", cmd ? cmd : "");
    va_end(ap);
    return CLI_USAGE;
}

int cli_fail(vmig_error *err)
{
    cli_err("%s", vmig_error_message(err));
    vmig_error_free(err);
    return CLI_FAILED;
}

int cli_bad_option(const char *cmd, int c, char **argv)
{
    return cli_usage_error(cmd, c == ':' ? "option '%s' needs a value" : "unknown option '%s'",
                           argv[optind - 1]);
}

static void log_to_stderr(void *opaque, vmig_log_level level, const char *msg)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    (void)opaque;
    fprintf(stderr, "vmigrate: %s: %s\n", names[level], msg);
}

static void log_warnings(void *opaque, vmig_log_level level, const char *msg)
{
    if (level <= VMIG_LOG_WARN) {
        log_to_stderr(opaque, level, msg);
    }
}

vmig_engine *cli_engine(const cli_global *g, vmig_error **errp)
{
    vmig_engine *e = vmig_engine_new(g->state_dir, errp);
    if (!e) {
        return NULL;
    }
    vmig_engine_set_log(e, g->debug ? log_to_stderr : log_warnings, NULL);
    if (g->qemu) {
        vmig_engine_set_qemu(e, g->qemu);
    }
    return e;
}

static vmig_engine *volatile sig_engine;

static void on_sigint(int sig)
{
    (void)sig;
    if (sig_engine) {
        vmig_engine_cancel(sig_engine);
    }
}

void cli_remove_sigint(void)
{
    /* The handler first, then the pointer: a signal now finds the default action, never a
     * freed engine. */
    struct sigaction sa = {0};
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sig_engine = NULL;
}

void cli_install_sigint(vmig_engine *e)
{
    sig_engine = e;
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

bool cli_parse_int(const char *opt, const char *val, int lo, int hi, int *ret)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        cli_err("%s: '%s' is not a whole number from %d to %d", opt, val, lo, hi);
        return false;
    }
    *ret = (int)v;
    return true;
}

void cli_print_json(json_object *o)
{
    puts(
        json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    fflush(stdout);
}

json_object *cli_stats_json(const vmig_migration_stats *st)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(st->status));
    json_object_object_add(o, "total_ms", json_object_new_int64((int64_t)st->total_ms));
    json_object_object_add(o, "downtime_ms", json_object_new_int64((int64_t)st->downtime_ms));
    json_object_object_add(o, "setup_ms", json_object_new_int64((int64_t)st->setup_ms));
    json_object_object_add(o, "transferred_bytes",
                           json_object_new_int64((int64_t)st->transferred_bytes));
    json_object_object_add(o, "passes", json_object_new_int64((int64_t)st->passes));
    json_object_object_add(o, "mbps", json_object_new_double(st->mbps));
    json_object_object_add(o, "qemu_downtime_ms",
                           json_object_new_int64((int64_t)st->qemu_downtime_ms));
    json_object_object_add(o, "qemu_total_ms", json_object_new_int64((int64_t)st->qemu_total_ms));
    json_object_object_add(o, "total_bytes", json_object_new_int64((int64_t)st->total_bytes));
    json_object_object_add(o, "remaining_bytes",
                           json_object_new_int64((int64_t)st->remaining_bytes));
    json_object_object_add(o, "cpu_check", json_object_new_string(st->cpu_check));
    json_object_object_add(o, "holder", json_object_new_string(st->vm_holder));
    json_object_object_add(o, "vm_state", json_object_new_string(st->vm_state));
    json_object_object_add(o, "mode", json_object_new_string(st->mode));
    json_object_object_add(o, "dirty_rate_mib_s", json_object_new_double(st->dirty_rate_mib_s));
    json_object_object_add(o, "downtime_limit_ms",
                           json_object_new_int64((int64_t)st->downtime_limit_ms));
    json_object_object_add(o, "throttle_pct", json_object_new_int64(st->throttle_pct));
    json_object_object_add(o, "postcopy_at_ms", json_object_new_int64((int64_t)st->postcopy_at_ms));
    json_object_object_add(o, "postcopy_requests",
                           json_object_new_int64((int64_t)st->postcopy_requests));
    /* as domjobinfo's "File processed/remaining/total" */
    json_object_object_add(o, "disks_copied", json_object_new_int64(st->disks_copied));
    json_object_object_add(o, "disk_total_bytes",
                           json_object_new_int64((int64_t)st->disk_total_bytes));
    json_object_object_add(o, "disk_transferred_bytes",
                           json_object_new_int64((int64_t)st->disk_transferred_bytes));
    json_object_object_add(o, "disk_remaining_bytes",
                           json_object_new_int64((int64_t)st->disk_remaining_bytes));
    json_object_object_add(o, "disk_ready_ms", json_object_new_int64((int64_t)st->disk_ready_ms));
    return o;
}

json_object *cli_actions_json(const vmig_policy_action *a, size_t n)
{
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "at_ms", json_object_new_int64((int64_t)a[i].at_ms));
        json_object_object_add(o, "what", json_object_new_string(a[i].what));
        json_object_array_add(arr, o);
    }
    return arr;
}

/* ---- progress ------------------------------------------------------------------------------ */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void cli_progress_init(cli_progress *p, bool verbose)
{
    memset(p, 0, sizeof(*p));
    p->enabled = verbose;
    p->tty = isatty(STDERR_FILENO);
}

/* The disks' copy, before memory moves (or an offline copy). */
static void disk_progress(cli_progress *p, const vmig_migration_stats *st)
{
    double total = (double)st->disk_total_bytes / (1024.0 * 1024.0);
    double done = (double)st->disk_transferred_bytes / (1024.0 * 1024.0);
    double frac = total > 0 ? done / total : 0;
    if (p->tty) {
        char bar[31];
        for (int i = 0; i < 30; i++) {
            bar[i] = i < (int)(frac * 30.0) ? '#' : '.';
        }
        bar[30] = '\0';
        fprintf(stderr, "\r[%s] %5.1f%%  disks: %u, %8.1f of %8.1f MiB copied ", bar, frac * 100.0,
                st->disks_copied, done, total);
    } else {
        long long t = now_ms();
        if (t - p->last_line_ms < 1000) {
            return;
        }
        p->last_line_ms = t;
        fprintf(stderr, "disks %5.1f%% %.1f of %.1f MiB copied\n", frac * 100.0, done, total);
    }
    fflush(stderr);
}

void cli_progress_cb(void *opaque, const vmig_migration_stats *st)
{
    cli_progress *p = opaque;
    if (!p->enabled) {
        return;
    }
    if (st->disks_copied && st->transferred_bytes == 0) {
        disk_progress(p, st);
        return;
    }
    double pct = st->progress * 100.0;
    double mib_s = st->mbps * 1e6 / 8.0 / (1024.0 * 1024.0);
    double rem_mib = (double)st->remaining_bytes / (1024.0 * 1024.0);
    /* dirty-pages-rate is pages/s of 4 KiB target pages */
    double dirty_mib_s = (double)st->dirty_pages_rate * 4096.0 / (1024.0 * 1024.0);
    if (p->tty) {
        char bar[31];
        int fill = (int)(st->progress * 30.0);
        for (int i = 0; i < 30; i++) {
            bar[i] = i < fill ? '#' : '.';
        }
        bar[30] = '\0';
        fprintf(stderr,
                "\r[%s] %5.1f%%  %7.1f MiB/s  remaining %8.1f MiB  dirty %6.1f MiB/s"
                "  pass %llu ",
                bar, pct, mib_s, rem_mib, dirty_mib_s, (unsigned long long)st->passes);
    } else {
        long long t = now_ms();
        if (t - p->last_line_ms < 1000) {
            return;
        }
        p->last_line_ms = t;
        fprintf(stderr,
                "progress %5.1f%% %.1f MiB/s remaining %.1f MiB dirty %.1f MiB/s pass %llu\n", pct,
                mib_s, rem_mib, dirty_mib_s, (unsigned long long)st->passes);
    }
    fflush(stderr);
}

void cli_progress_done(cli_progress *p)
{
    if (p->enabled && p->tty) {
        fputc('\n', stderr);
    }
}

/* ---- migrate options --------------------------------------------------------------------- */

const char cli_migrate_opts_help[] =
    "  --live               migrate while the VM runs (pre-copy); without it the VM is\n"
    "                       paused first and resumed on the destination\n"
    "  --max-downtime MS    the longest pause QEMU may take to switch over (default 300)\n"
    "  --bandwidth MIB_S    cap the migration stream (default: unlimited; QEMU alone\n"
    "                       would cap it at 128 MiB/s)\n"
    "  --timeout S          at S seconds do --timeout-action: by default give up and roll\n"
    "                       back, the source keeps running\n"
    "  --stall-timeout S    give up when no byte moved for S seconds (default 60; none: never)\n"
    "  --verbose            progress: percent, MiB/s, remaining, dirty rate, pass (and\n"
    "                       the disks' copy first, when one is asked)\n"
    "  --json               print one JSON object with the result on stdout\n"
    "  --force              migrate even if the destination's CPU cannot run the VM's\n"
    "                       (the check names the missing features; this overrides it)\n"
    "  --unsafe             migrate live although the source QEMU is known to lose guest\n"
    "                       writes doing so (QEMU < 9.0 under TCG); without it such a\n"
    "                       migration is refused\n"
    "  --key FILE           the agent's key, for a vmig://HOST[:PORT] destination\n"
    "  --parallel-connections N\n"
    "                       N multifd channels (1-64), each its own stream (through the\n"
    "                       relay: its own TCP connection); default one stream\n"
    "  --relay-bandwidth MIB_S\n"
    "                       cap the relay's channels together (vmig:// destinations)\n"
    "\n"
    "Modes:\n"
    "  --suspend            leave the VM paused on the destination\n"
    "  --offline            move a shut-off VM's definition (needs --persistent)\n"
    "  --persistent         keep the VM defined on the destination\n"
    "  --undefinesource     remove the VM's definition from the source\n"
    "  --dest-spec FILE     the spec the destination runs (other disk paths, kernel, extra\n"
    "                       arguments); name, memory, vCPUs, machine and disk count must\n"
    "                       match the VM's (what virsh migrate --xml is for)\n"
    "  --postcopy-resume    finish a post-copy migration whose connection broke: both\n"
    "                       QEMUs are paused, each with part of the VM (give --live)\n"
    "\n"
    "Storage (without these, every disk must be on storage both sides share, which the\n"
    "pre-flight proves with a token file written beside each image):\n"
    "  --copy-storage-all   copy the disks: the destination creates new images in its\n"
    "                       state directory's images/ and the source mirrors each disk\n"
    "                       to it over NBD while the VM runs; they finish in step with\n"
    "                       the switchover\n"
    "  --copy-storage-inc   copy only each disk's top layer (qcow2): the destination has\n"
    "                       its backing file at the same path\n"
    "  --migrate-disks LIST the disks to copy, disk0,disk1 (their order in the spec) or\n"
    "                       image paths; the others must be shared\n"
    "\n"
    "Convergence:\n"
    "  --policy auto|none   auto (the default, with --live): measure the guest's dirty\n"
    "                       rate first; when remaining memory stops shrinking, raise the\n"
    "                       downtime limit up to --max-downtime, then switch to post-copy\n"
    "                       if armed, else throttle the vCPUs.  none: only what the options\n"
    "                       say, as virsh migrate\n"
    "  --downtime-steps N   auto: the limit starts at max-downtime/N, rises in N steps (4)\n"
    "  --auto-converge      throttle the guest's vCPUs from the start when pre-copy does\n"
    "                       not converge (QEMU's auto-converge)\n"
    "  --auto-converge-initial PCT, --auto-converge-increment PCT\n"
    "                       its first throttle and each step (default 20 and 10)\n"
    "  --postcopy           arm post-copy: the policy, --postcopy-after-precopy, a timeout\n"
    "                       or 'vmigrate postcopy NAME' may switch to it.  Once switched,\n"
    "                       the destination runs the VM and the source serves it pages\n"
    "  --postcopy-after-precopy\n"
    "                       switch to post-copy after the first full pass (arms it)\n"
    "  --postcopy-preempt   faulted pages on a channel of their own (QEMU >= 8.0)\n"
    "  --timeout-action abort|suspend|postcopy\n"
    "                       what --timeout does: roll back (default), pause the VM so\n"
    "                       the migration finishes non-live, or switch to post-copy\n"
    "  --timeout-suspend, --timeout-postcopy\n"
    "                       the same, as virsh spells them\n"
    "  --dirty-limit MIB_S  QEMU's per-vCPU dirty limit (QEMU >= 8.1, KVM's dirty ring;\n"
    "                       refused under TCG)\n"
    "  --compressed[=zstd|zlib]\n"
    "                       compress the multifd channels (default zstd; implies\n"
    "                       --parallel-connections 1 when none is given)\n";

/* The options of modes and convergence (issue 9). */
/* The options of modes. */
static int migrate_mode_opt(cli_migrate_args *a, int opt, const char *val)
{
    switch (opt) {
    case CLI_OPT_POSTCOPY_RESUME:
        a->opts.postcopy_resume = true;
        return 1;
    case CLI_OPT_SUSPEND:
        a->opts.suspend = true;
        return 1;
    case CLI_OPT_OFFLINE:
        a->opts.offline = true;
        return 1;
    case CLI_OPT_PERSISTENT:
        a->opts.persistent = true;
        return 1;
    case CLI_OPT_UNDEFINE_SOURCE:
        a->opts.undefine_source = true;
        return 1;
    case CLI_OPT_DEST_SPEC:
        a->opts.dest_spec = val;
        return 1;
    case CLI_OPT_COPY_ALL:
        a->opts.copy_storage_all = true;
        return 1;
    case CLI_OPT_COPY_INC:
        a->opts.copy_storage_inc = true;
        return 1;
    case CLI_OPT_MIGRATE_DISKS:
        a->opts.migrate_disks = val;
        return 1;
    default:
        return 0;
    }
}

/* The options of convergence. */
static int migrate_control_opt(cli_migrate_args *a, int opt, const char *val)
{
    switch (opt) {
    case CLI_OPT_POLICY:
        if (strcmp(val, "auto") == 0 || strcmp(val, "none") == 0) {
            a->opts.policy = val[0] == 'a' ? VMIG_POLICY_AUTO : VMIG_POLICY_NONE;
            return 1;
        }
        cli_err("--policy: '%s' is not auto or none", val);
        return -1;
    case CLI_OPT_DOWNTIME_STEPS:
        return cli_parse_int("--downtime-steps", val, 1, 100, &a->opts.downtime_steps) ? 1 : -1;
    case CLI_OPT_AUTO_CONVERGE:
        a->opts.auto_converge = true;
        return 1;
    case CLI_OPT_AC_INITIAL:
        a->opts.auto_converge = true;
        return cli_parse_int("--auto-converge-initial", val, 1, 99, &a->opts.throttle_initial) ? 1
                                                                                               : -1;
    case CLI_OPT_AC_INCREMENT:
        a->opts.auto_converge = true;
        return cli_parse_int("--auto-converge-increment", val, 1, 100, &a->opts.throttle_increment)
                   ? 1
                   : -1;
    case CLI_OPT_POSTCOPY:
        a->opts.postcopy = true;
        return 1;
    case CLI_OPT_POSTCOPY_AFTER:
        a->opts.postcopy_after_precopy = true;
        return 1;
    case CLI_OPT_POSTCOPY_PREEMPT:
        a->opts.postcopy_preempt = true;
        return 1;
    case CLI_OPT_TIMEOUT_ACTION:
        if (strcmp(val, "abort") == 0) {
            a->opts.timeout_action = VMIG_TIMEOUT_ABORT;
        } else if (strcmp(val, "suspend") == 0) {
            a->opts.timeout_action = VMIG_TIMEOUT_SUSPEND;
        } else if (strcmp(val, "postcopy") == 0) {
            a->opts.timeout_action = VMIG_TIMEOUT_POSTCOPY;
        } else {
            cli_err("--timeout-action: '%s' is not abort, suspend or postcopy", val);
            return -1;
        }
        return 1;
    case CLI_OPT_TIMEOUT_SUSPEND:
        a->opts.timeout_action = VMIG_TIMEOUT_SUSPEND;
        return 1;
    case CLI_OPT_TIMEOUT_POSTCOPY:
        a->opts.timeout_action = VMIG_TIMEOUT_POSTCOPY;
        return 1;
    case CLI_OPT_DIRTY_LIMIT:
        return cli_parse_int("--dirty-limit", val, 1, 1000000, &a->opts.dirty_limit_mib_s) ? 1 : -1;
    case CLI_OPT_COMPRESSED:
        if (val && strcmp(val, "zstd") != 0 && strcmp(val, "zlib") != 0) {
            cli_err("--compressed: '%s' is not zstd or zlib", val);
            return -1;
        }
        a->opts.compress = val ? val : "zstd";
        return 1;
    default:
        return migrate_mode_opt(a, opt, val);
    }
}

int cli_migrate_opt(cli_migrate_args *a, int opt, const char *val)
{
    switch (opt) {
    case 'l':
        a->opts.live = true;
        return 1;
    case 'D':
        return cli_parse_int("--max-downtime", val, 1, 2000000, &a->opts.max_downtime_ms) ? 1 : -1;
    case 'B':
        return cli_parse_int("--bandwidth", val, 1, 1000000, &a->opts.bandwidth_mib_s) ? 1 : -1;
    case 'T':
        return cli_parse_int("--timeout", val, 1, 86400 * 7, &a->opts.timeout_s) ? 1 : -1;
    case 'S':
        if (strcmp(val, "none") == 0) {
            a->opts.stall_timeout_s = -1;
            return 1;
        }
        return cli_parse_int("--stall-timeout", val, 1, 86400 * 7, &a->opts.stall_timeout_s) ? 1
                                                                                             : -1;
    case 'v':
        a->verbose = true;
        return 1;
    case 'j':
        a->json = true;
        return 1;
    case 'F':
        a->opts.force = true;
        return 1;
    case 'U':
        a->opts.unsafe = true;
        return 1;
    case 'K':
        a->opts.key_file = val;
        return 1;
    case 'R':
        return cli_parse_int("--relay-bandwidth", val, 1, 1000000, &a->opts.relay_bandwidth_mib_s)
                   ? 1
                   : -1;
    case 'P':
        return cli_parse_int("--parallel-connections", val, 1, 64, &a->opts.parallel_connections)
                   ? 1
                   : -1;
    default:
        return migrate_control_opt(a, opt, val);
    }
}

/* ---- running a migration ----------------------------------------------------------------- */

json_object *cli_channels_json(const vmig_channel_stats *c, size_t n)
{
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "kind", json_object_new_string(c[i].kind));
        json_object_object_add(o, "index", json_object_new_int((int)c[i].index));
        json_object_object_add(o, "bytes_out", json_object_new_int64((int64_t)c[i].bytes_out));
        json_object_object_add(o, "bytes_in", json_object_new_int64((int64_t)c[i].bytes_in));
        json_object_object_add(o, "seconds", json_object_new_double(c[i].seconds));
        json_object_object_add(o, "mbit_s", json_object_new_double(c[i].mbit_s));
        json_object_object_add(o, "wait_source_ms",
                               json_object_new_int64((int64_t)(c[i].recv_wait_us / 1000)));
        json_object_object_add(o, "wait_network_ms",
                               json_object_new_int64((int64_t)(c[i].send_wait_us / 1000)));
        json_object_object_add(o, "wait_cap_ms",
                               json_object_new_int64((int64_t)(c[i].limit_wait_us / 1000)));
        json_object_object_add(o, "failed", json_object_new_boolean(c[i].failed));
        json_object_array_add(arr, o);
    }
    return arr;
}

void cli_print_channels(const vmig_channel_stats *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("  channel %-7s %2u %9.1f MiB out, %7.1f KiB back, %7.0f Mbit/s; waited "
               "%.2f s for QEMU, %.2f s for the network%s\n",
               c[i].kind, c[i].index, (double)c[i].bytes_out / (1024.0 * 1024.0),
               (double)c[i].bytes_in / 1024.0, c[i].mbit_s, (double)c[i].recv_wait_us / 1e6,
               (double)c[i].send_wait_us / 1e6, c[i].failed ? " (failed)" : "");
    }
}

bool cli_migrate_run(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                     cli_progress *prog, vmig_migration_stats *st, vmig_channel_stats *chan,
                     size_t *n_chan, vmig_policy_action *act, size_t *n_act, vmig_error **errp)
{
    memset(st, 0, sizeof(*st));
    *n_chan = 0;
    if (n_act) {
        *n_act = 0;
    }
    vmig_job *j = vmig_migrate_start(e, name, o, cli_progress_cb, prog, NULL, NULL, errp);
    if (!j) {
        snprintf(st->status, sizeof(st->status), "failed");
        return false;
    }
    bool ok = true;
    while (!vmig_job_finished(j)) {
        if (vmig_engine_run(e, 500, errp) < 0) {
            ok = false;
            break;
        }
    }
    vmig_job_stats(j, st);
    size_t n = vmig_job_channels(j, chan, CLI_CHANNELS_MAX);
    *n_chan = n < CLI_CHANNELS_MAX ? n : CLI_CHANNELS_MAX;
    if (act && n_act) {
        n = vmig_job_actions(j, act, CLI_ACTIONS_MAX);
        *n_act = n < CLI_ACTIONS_MAX ? n : CLI_ACTIONS_MAX;
    }
    if (ok && vmig_job_get_state(j) != VMIG_JOB_COMPLETED) {
        if (errp && !*errp) {
            *errp = vmig_error_copy(vmig_job_error(j));
        }
        ok = false;
    }
    vmig_job_free(j);
    return ok;
}
