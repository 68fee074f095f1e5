#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <glib.h>

#include "cli.h"

#define DEMO_NAME "vmig-demo"
#define DEMO_READY_TIMEOUT_MS 300000
#define DEMO_AGENT_TIMEOUT_MS 30000

enum {
    OPT_MEM = 0x100,
    OPT_DIRTY,
    OPT_ACCEL,
    OPT_KEEP,
    OPT_DIRECT,
};

/* clang-format off: a table, laid out by hand */
#define MIGRATE_LONGOPTS                                                                           \
    {"live", no_argument, NULL, 'l'}, {"max-downtime", required_argument, NULL, 'D'},              \
        {"bandwidth", required_argument, NULL, 'B'}, {"timeout", required_argument, NULL, 'T'},    \
        {"verbose", no_argument, NULL, 'v'}, {"json", no_argument, NULL, 'j'},                     \
        {"force", no_argument, NULL, 'F'}, {"unsafe", no_argument, NULL, 'U'},                     \
        {"key", required_argument, NULL, 'K'},                                                     \
        {"parallel-connections", required_argument, NULL, 'P'},                                    \
        {"relay-bandwidth", required_argument, NULL, 'R'},                                         \
        {"policy", required_argument, NULL, CLI_OPT_POLICY},                                       \
        {"downtime-steps", required_argument, NULL, CLI_OPT_DOWNTIME_STEPS},                       \
        {"auto-converge", no_argument, NULL, CLI_OPT_AUTO_CONVERGE},                               \
        {"auto-converge-initial", required_argument, NULL, CLI_OPT_AC_INITIAL},                    \
        {"auto-converge-increment", required_argument, NULL, CLI_OPT_AC_INCREMENT},                \
        {"postcopy", no_argument, NULL, CLI_OPT_POSTCOPY},                                         \
        {"postcopy-after-precopy", no_argument, NULL, CLI_OPT_POSTCOPY_AFTER},                     \
        {"postcopy-preempt", no_argument, NULL, CLI_OPT_POSTCOPY_PREEMPT},                         \
        {"postcopy-resume", no_argument, NULL, CLI_OPT_POSTCOPY_RESUME},                           \
        {"timeout-action", required_argument, NULL, CLI_OPT_TIMEOUT_ACTION},                       \
        {"timeout-suspend", no_argument, NULL, CLI_OPT_TIMEOUT_SUSPEND},                           \
        {"timeout-postcopy", no_argument, NULL, CLI_OPT_TIMEOUT_POSTCOPY},                         \
        {"dirty-limit", required_argument, NULL, CLI_OPT_DIRTY_LIMIT},                             \
        {"compressed", optional_argument, NULL, CLI_OPT_COMPRESSED},                               \
        {"suspend", no_argument, NULL, CLI_OPT_SUSPEND},                                           \
        {"offline", no_argument, NULL, CLI_OPT_OFFLINE},                                           \
        {"persistent", no_argument, NULL, CLI_OPT_PERSISTENT},                                     \
        {"undefinesource", no_argument, NULL, CLI_OPT_UNDEFINE_SOURCE},                            \
        {"dest-spec", required_argument, NULL, CLI_OPT_DEST_SPEC},                                 \
        {"copy-storage-all", no_argument, NULL, CLI_OPT_COPY_ALL},                                 \
        {"copy-storage-inc", no_argument, NULL, CLI_OPT_COPY_INC},                                 \
        {"migrate-disks", required_argument, NULL, CLI_OPT_MIGRATE_DISKS},                         \
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
    if (st->disks_copied && st->disk_ready_ms) {
        printf("  disks       %u copied, %.1f MiB mirrored, in step after %.1f s\n",
               st->disks_copied, (double)st->disk_transferred_bytes / (1024.0 * 1024.0),
               (double)st->disk_ready_ms / 1000.0);
    } else if (st->disks_copied) {
        printf("  disks       %u copied, %.1f MiB\n", st->disks_copied,
               (double)st->disk_transferred_bytes / (1024.0 * 1024.0));
    }
    if (st->postcopy_at_ms) {
        printf("  post-copy   from %.1f s, %llu page(s) faulted in\n",
               (double)st->postcopy_at_ms / 1000.0, (unsigned long long)st->postcopy_requests);
    }
    printf("  VM          %s on the %s\n", st->vm_state, st->vm_holder);
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
    vmig_channel_stats chan[CLI_CHANNELS_MAX];
    size_t n_chan = 0;
    vmig_policy_action act[CLI_ACTIONS_MAX];
    size_t n_act = 0;
    bool ok = cli_migrate_run(e, name, &a.opts, &prog, &st, chan, &n_chan, act, &n_act, &err);
    cli_progress_done(&prog);
    if (a.json) {
        json_object *o = cli_stats_json(&st);
        json_object_object_add(o, "vm", json_object_new_string(name));
        json_object_object_add(o, "dest", json_object_new_string(a.opts.dest));
        json_object_object_add(o, "live", json_object_new_boolean(a.opts.live));
        json_object_object_add(o, "parallel_connections",
                               json_object_new_int(a.opts.parallel_connections));
        json_object_object_add(o, "channels", cli_channels_json(chan, n_chan));
        json_object_object_add(o, "actions", cli_actions_json(act, n_act));
        if (!ok) {
            json_object_object_add(o, "error", json_object_new_string(vmig_error_message(err)));
        }
        cli_print_json(o);
        json_object_put(o);
    } else {
        if (ok) {
            print_summary(name, a.opts.dest, &st);
        }
        if (ok || a.verbose) {
            for (size_t i = 0; i < n_act; i++) {
                printf("  at %6.1f s  %s\n", (double)act[i].at_ms / 1000.0, act[i].what);
            }
        }
        if (ok && a.verbose) {
            cli_print_channels(chan, n_chan);
        }
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
    bool direct;
} demo_args;

static int demo_parse(demo_args *d, int argc, char **argv)
{
    static const struct option opts[] = {
        MIGRATE_LONGOPTS,
        {"mem-mib", required_argument, NULL, OPT_MEM},
        {"dirty-mib-s", required_argument, NULL, OPT_DIRTY},
        {"accel", required_argument, NULL, OPT_ACCEL},
        {"keep", no_argument, NULL, OPT_KEEP},
        {"direct", no_argument, NULL, OPT_DIRECT},
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
        if (c == OPT_DIRECT) {
            d->direct = true;
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

/* ---- the demo's agent: a second vmigrate process, as on a destination host ---------------- */

typedef struct demo_agent {
    char dir[64];     /* its state directory */
    char key_dir[64]; /* the key's */
    char key[96];
    char log[96];
    char dest[80]; /* vmig://127.0.0.1:PORT */
    pid_t pid;
    long peak_rss_kib; /* the agent's VmHWM when it stopped; -1 unknown */
} demo_agent;

/* A process's peak resident set (VmHWM), KiB; -1 when unknown. */
static long peak_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    long kib = -1;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) {
            break;
        }
    }
    if (f) {
        fclose(f);
    }
    return kib;
}

/* Reads the agent's first line ("listening on HOST:PORT") within the deadline. */
static bool agent_address(int fd, char *buf, size_t len)
{
    size_t got = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (got + 1 < len) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long left = DEMO_AGENT_TIMEOUT_MS -
                    ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || (poll(&p, 1, (int)left) < 0 && errno != EINTR)) {
            return false;
        }
        ssize_t n = read(fd, buf + got, 1);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
            return false;
        }
        if (n == 1 && buf[got++] == '\n') {
            break;
        }
    }
    buf[got] = '\0';
    return strncmp(buf, "listening on ", 13) == 0;
}

/* Starts `vmigrate agent` on a free loopback port with a new key, in directories of its own. */
static bool agent_start(const cli_global *g, const demo_args *d, demo_agent *a, vmig_error **errp)
{
    memset(a, 0, sizeof(*a));
    a->pid = -1;
    snprintf(a->dir, sizeof(a->dir), "/tmp/vmig-demo-agent-XXXXXX");
    snprintf(a->key_dir, sizeof(a->key_dir), "/tmp/vmig-demo-key-XXXXXX");
    if (!mkdtemp(a->dir) || !mkdtemp(a->key_dir)) {
        cli_err("cannot create the agent's directories under /tmp: %s", strerror(errno));
        return false;
    }
    snprintf(a->key, sizeof(a->key), "%s/key", a->key_dir);
    snprintf(a->log, sizeof(a->log), "%s/agent.log", a->key_dir);
    if (!vmig_key_create(a->key, errp)) {
        return false;
    }
    char *argv[20];
    int n = 0;
    /* this very binary, by its name (so the agent shows as vmigrate in ps and perf) */
    char *self = g_file_read_link("/proc/self/exe", NULL);
    argv[n++] = self ? self : g_strdup("/proc/self/exe");
    argv[n++] = g_strdup("--state-dir");
    argv[n++] = g_strdup(a->dir);
    if (g->qemu) {
        argv[n++] = g_strdup("--qemu");
        argv[n++] = g_strdup(g->qemu);
    }
    if (g->debug) {
        argv[n++] = g_strdup("--debug");
    }
    argv[n++] = g_strdup("agent");
    argv[n++] = g_strdup("--listen");
    argv[n++] = g_strdup("127.0.0.1:0");
    argv[n++] = g_strdup("--key");
    argv[n++] = g_strdup(a->key);
    argv[n++] = g_strdup("--accel");
    argv[n++] = g_strdup(d->accel == VMIG_ACCEL_KVM ? "kvm" : "tcg");
    argv[n] = NULL;
    int out[2];
    int log = open(a->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log < 0 || pipe2(out, O_CLOEXEC) < 0) {
        cli_err("starting the agent: %s", strerror(errno));
        return false;
    }
    fflush(NULL);
    a->pid = fork();
    if (a->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a demo that is killed takes its agent along */
        dup2(out[1], STDOUT_FILENO);
        dup2(d->m.verbose ? STDERR_FILENO : log, STDERR_FILENO);
        execv(argv[0], argv);
        _exit(127);
    }
    for (int i = 0; i < n; i++) {
        g_free(argv[i]);
    }
    close(out[1]);
    close(log);
    char line[64];
    bool ok = a->pid > 0 && agent_address(out[0], line, sizeof(line));
    close(out[0]);
    if (!ok) {
        cli_err("the demo's agent did not start (its log: %s)", a->log);
        return false;
    }
    line[strcspn(line, "\n")] = '\0';
    snprintf(a->dest, sizeof(a->dest), "vmig://%s", line + 13);
    return true;
}

/* Stops the agent and removes what it left (unless the VM is kept there). */
static void agent_stop(demo_agent *a, bool keep)
{
    a->peak_rss_kib = a->pid > 0 ? peak_rss_kib(a->pid) : -1;
    if (a->pid > 0) {
        kill(a->pid, SIGTERM);
        for (int i = 0; i < 200; i++) {
            if (waitpid(a->pid, NULL, WNOHANG) == a->pid) {
                a->pid = -1;
                break;
            }
            struct timespec ts = {0, 50L * 1000000};
            nanosleep(&ts, NULL);
        }
        if (a->pid > 0) {
            kill(a->pid, SIGKILL);
            waitpid(a->pid, NULL, 0);
        }
    }
    if (a->key[0]) {
        unlink(a->key);
        unlink(a->log);
        rmdir(a->key_dir);
    }
    if (!keep && a->dir[0]) {
        rmdir(a->dir);
    }
}

static void demo_report(const demo_args *d, const demo_agent *ag, bool migrated,
                        const vmig_migration_stats *st, const vmig_channel_stats *chan,
                        size_t n_chan, bool verified, uint64_t pages, const char *error)
{
    if (d->m.json) {
        json_object *o = cli_stats_json(st);
        json_object_object_add(o, "transport",
                               json_object_new_string(d->direct ? "direct" : "relay"));
        json_object_object_add(o, "parallel_connections",
                               json_object_new_int(d->m.opts.parallel_connections));
        json_object_object_add(o, "channels", cli_channels_json(chan, n_chan));
        if (!d->direct && ag->peak_rss_kib >= 0) {
            json_object_object_add(o, "agent_peak_rss_kib",
                                   json_object_new_int64(ag->peak_rss_kib));
        }
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
        print_summary(DEMO_NAME, d->direct ? "local" : d->m.opts.dest, st);
        cli_print_channels(chan, n_chan);
    }
    if (verified) {
        printf("  memory      %8llu pages checked on the destination: all as the guest wrote "
               "them\n",
               (unsigned long long)pages);
    }
}

typedef struct demo_result {
    vmig_migration_stats st;
    vmig_channel_stats chan[CLI_CHANNELS_MAX];
    size_t n_chan;
    uint64_t pages;
    bool migrated, verified;
} demo_result;

/* Starts the guest, migrates it (through the agent unless --direct), checks it where it is
 * now and stops it there (unless --keep).  Returns the engine of the agent's state directory
 * when the VM moved there (the caller's to free), else NULL. */
static vmig_engine *demo_run(const cli_global *g, demo_args *d, vmig_engine *e,
                             const vmig_spec *spec, demo_agent *agent, demo_result *res,
                             vmig_error **errp)
{
    if (!d->m.json) {
        printf("starting the test guest: %d MiB, dirtying %d MiB/s (%s)\n", d->mem_mib,
               d->dirty_mib_s, d->accel == VMIG_ACCEL_KVM ? "kvm" : "tcg");
        fflush(stdout);
    }
    cli_progress prog;
    cli_progress_init(&prog, d->m.verbose);
    bool ready = vmig_vm_start(e, spec, d->accel, errp) &&
                 vmig_guest_wait_ready(e, DEMO_NAME, DEMO_READY_TIMEOUT_MS, errp);
    if (ready && !d->direct) {
        ready = agent_start(g, d, agent, errp);
        d->m.opts.dest = agent->dest;
        d->m.opts.key_file = agent->key;
        if (ready && !d->m.json) {
            printf("migrating through the relay to a local agent at %s\n", agent->dest);
            fflush(stdout);
        }
    }
    res->migrated = ready && cli_migrate_run(e, DEMO_NAME, &d->m.opts, &prog, &res->st, res->chan,
                                             &res->n_chan, NULL, NULL, errp);
    cli_progress_done(&prog);
    vmig_engine *de = NULL;
    vmig_engine *holder = e; /* where the VM is now */
    if (res->migrated && !d->direct) {
        de = cli_engine(&(cli_global){.state_dir = agent->dir, .qemu = g->qemu, .debug = g->debug},
                        errp);
        holder = de;
    }
    res->verified = res->migrated && holder &&
                    vmig_guest_verify(holder, DEMO_NAME, &res->pages, errp);
    if (!d->keep && holder) {
        vmig_error *serr = NULL;
        if (!vmig_vm_stop(holder, DEMO_NAME, 10000, &serr)) {
            cli_err("cleaning up: %s", vmig_error_message(serr));
        }
        vmig_error_free(serr);
    }
    return de;
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
    vmig_engine *de = NULL; /* the destination's state directory, when it is the agent's */
    demo_agent agent = {.pid = -1, .peak_rss_kib = -1};
    demo_result res = {0};
    if (e) {
        cli_install_sigint(e);
        de = demo_run(g, &d, e, spec, &agent, &res, &err);
    }
    if (!d.direct) {
        agent_stop(&agent, d.keep && res.migrated);
    }
    if (!res.st.status[0]) {
        snprintf(res.st.status, sizeof(res.st.status), "failed");
    }
    demo_report(&d, &agent, res.migrated, &res.st, res.chan, res.n_chan, res.verified, res.pages,
                err ? vmig_error_message(err) : NULL);
    if (e && !d.keep && dg.state_dir == tmpl) {
        rmdir(tmpl);
    } else if (e && d.keep && !d.m.json) {
        printf("the VM keeps running: vmigrate --state-dir %s vm stop %s\n",
               de ? vmig_engine_state_dir(de) : vmig_engine_state_dir(e), DEMO_NAME);
    }
    cli_remove_sigint();
    vmig_engine_free(de);
    vmig_engine_free(e);
    vmig_spec_free(spec);
    if (!res.verified) {
        return err ? cli_fail(err) : CLI_FAILED;
    }
    return CLI_OK;
}
