/*
 * The fault matrix (issue 11): migrates the built-in test guest (dirtying its memory) with the
 * vmigrate CLI, injects one fault per run at a random moment, and checks the rules a migration
 * must never break whatever happens:
 *   - exactly one QEMU holds the VM (none only when the fault killed the QEMU that held it),
 *     in the VM's own directory, running, and it is the one the report names (the destination
 *     after "completed", the source otherwise);
 *   - the guest's memory verifies, page by page;
 *   - no stray process (QEMU, guard) and no stray file (NAME.incoming, probes, locks) remains.
 * After a fault that kills vmigrate itself, `vmigrate vm recover` runs first, as a person would.
 *
 * Runs are seeded: run i uses seed BASE+i, which picks the fault kind (round robin) and the
 * moment; `--seed S --runs 1` replays one.  The seeds in tests/faults/regressions.txt (runs that
 * once broke a rule) are replayed before the random ones.  As root, the state directory is a
 * small tmpfs so that "disk full" is real; otherwise that kind is skipped and said so.
 *
 *   vmig-faults [--runs N] [--seed BASE] [--kind NAME] [--regressions FILE] [--mem MIB]
 * Needs $VMIG_CLI (the vmigrate binary) and the test guest ($VMIG_GUEST or beside the CLI).
 * Prints a line per run, then counts by fault kind; exits 1 if any run broke a rule.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <glib.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vmigrate.h"

#define WINDOW_MS 4000 /* faults land in the first WINDOW_MS of a migration */
#define STOP_MS 5000   /* SIGSTOP lasts this long */
#define CLI_DEADLINE_MS 180000
#define SETTLE_MS 5000

typedef enum {
    F_KILL_SRC,
    F_KILL_DST,
    F_KILL_VMIGRATE,
    F_STOP_SRC,
    F_STOP_DST,
    F_CLOSE_SOCKET,
    F_DISK_FULL,
    F_QMP_GARBAGE,
    F_COUNT
} fault_kind;

static const char *const kind_names[F_COUNT] = {
    "kill-source",      "kill-destination", "kill-vmigrate", "stop-source",
    "stop-destination", "close-socket",     "disk-full",     "qmp-garbage",
};

typedef struct tally {
    int runs, injected, completed, rolled_back, died_with_qemu, broken, skipped;
} tally;

static char *cli;
static char *state;
static bool tmpfs;
static int mem_mib = 128;

/* ---- small helpers ------------------------------------------------------------------------ */

static int read_pid(const char *dir)
{
    g_autofree char *path = g_build_filename(dir, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return 0;
    }
    return atoi(text);
}

static bool alive(int pid)
{
    if (pid <= 0) {
        return false;
    }
    g_autofree char *path = g_strdup_printf("/proc/%d/stat", pid);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return false;
    }
    const char *rp = strrchr(text, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

/* Live processes one of whose arguments contains @needle, or is @exact, or both. */
static GArray *procs_with(const char *needle, const char *exact)
{
    GArray *pids = g_array_new(FALSE, FALSE, sizeof(int));
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int pid = atoi(de->d_name);
        if (pid <= 0 || pid == getpid() || !alive(pid)) {
            continue;
        }
        g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
        g_autofree char *text = NULL;
        gsize len = 0;
        if (!g_file_get_contents(path, &text, &len, NULL)) {
            continue;
        }
        bool has = !needle, is = !exact;
        for (gsize off = 0; off < len; off += strlen(text + off) + 1) {
            has = has || strstr(text + off, needle) != NULL;
            is = is || strcmp(text + off, exact) == 0;
        }
        if (has && is) {
            g_array_append_val(pids, pid);
        }
    }
    if (d) {
        closedir(d);
    }
    return pids;
}

static GArray *procs_matching(const char *needle)
{
    return procs_with(needle, NULL);
}

static int count_settled(const char *needle)
{
    gint64 end = g_get_monotonic_time() + (gint64)SETTLE_MS * 1000;
    for (;;) {
        GArray *p = procs_matching(needle);
        int n = (int)p->len;
        g_array_free(p, TRUE);
        if (n == 0 || g_get_monotonic_time() > end) {
            return n;
        }
        g_usleep(50000);
    }
}

/* ---- a QMP relay that can turn hostile ----------------------------------------------------- */

typedef struct relay {
    char *listen_path, *target_path;
    int lfd;
    ino_t ino; /* of the relay's socket file: the path may hold another's after a migration */
    volatile int inject; /* set: the next thing the client reads is garbage */
    volatile int stop;
    pthread_t thread;
} relay;

static int unix_socket(const char *path, bool listen_on)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path)) {
        return -1;
    }
    g_strlcpy(a.sun_path, path, sizeof(a.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int r = listen_on ? bind(fd, (struct sockaddr *)&a, sizeof(a))
                      : connect(fd, (struct sockaddr *)&a, sizeof(a));
    if (r < 0 || (listen_on && listen(fd, 4) < 0)) {
        close(fd);
        return -1;
    }
    return fd;
}

static const char garbage[] = "{\"return\": {\"status\": 7, \"ram\": []}}\r\n"
                              "{\"event\": null, \"data\": [[[\r\n}}}\xff\xfe garbage\r\n";

static void serve(relay *r, int client)
{
    int server = unix_socket(r->target_path, false);
    if (server < 0) {
        return;
    }
    struct pollfd fds[2] = {{.fd = client, .events = POLLIN}, {.fd = server, .events = POLLIN}};
    char buf[65536];
    while (!r->stop) {
        if (r->inject) {
            r->inject = 0;
            if (write(client, garbage, sizeof(garbage) - 1) < 0) {
                break;
            }
        }
        int n = poll(fds, 2, 50);
        if (n <= 0) {
            continue;
        }
        bool done = false;
        for (int i = 0; i < 2 && !done; i++) {
            if (!fds[i].revents) {
                continue;
            }
            ssize_t got = read(fds[i].fd, buf, sizeof(buf));
            done = got <= 0 || write(fds[1 - i].fd, buf, (size_t)got) != got;
        }
        if (done) {
            break;
        }
    }
    close(server);
}

static void *relay_main(void *opaque)
{
    relay *r = opaque;
    while (!r->stop) {
        struct pollfd p = {.fd = r->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) {
            continue;
        }
        int c = accept4(r->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            serve(r, c);
            close(c);
        }
    }
    return NULL;
}

/* Moves the VM's engine monitor aside and relays it from its usual path. */
static relay *relay_start(const char *vm_dir)
{
    relay *r = g_new0(relay, 1);
    r->listen_path = g_build_filename(vm_dir, "qmp.sock", NULL);
    r->target_path = g_build_filename(vm_dir, "qmp.real.sock", NULL);
    if (rename(r->listen_path, r->target_path) < 0 ||
        (r->lfd = unix_socket(r->listen_path, true)) < 0) {
        fprintf(stderr, "relay: %s: %s\n", r->listen_path, g_strerror(errno));
        exit(2);
    }
    struct stat st;
    r->ino = lstat(r->listen_path, &st) == 0 ? st.st_ino : 0;
    pthread_create(&r->thread, NULL, relay_main, r);
    return r;
}

/* Stops it, and puts the real monitor back if the VM's directory still holds it.  After a
 * completed migration the directory is the destination's: its qmp.sock is left alone. */
static void relay_stop(relay *r)
{
    r->stop = 1;
    pthread_join(r->thread, NULL);
    close(r->lfd);
    struct stat st;
    if (lstat(r->listen_path, &st) == 0 && st.st_ino == r->ino) {
        unlink(r->listen_path);
        if (g_file_test(r->target_path, G_FILE_TEST_EXISTS)) {
            rename(r->target_path, r->listen_path);
        }
    }
    g_free(r->listen_path);
    g_free(r->target_path);
    g_free(r);
}

/* ---- one run ------------------------------------------------------------------------------- */

typedef struct run {
    unsigned seed;
    fault_kind kind;
    int at_ms;
    char name[32];
    char *dir, *stage;
    int src_pid;
    bool injected;
    bool died;       /* no QEMU holds the VM, and the fault killed the one that did */
    char *status;    /* the report's status, "killed" when vmigrate was the victim */
    char *holder;    /* the report's vm_holder */
    char *error;     /* the report's error */
    GString *broken; /* the rules this run broke */
} run;

static void rule(run *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void rule(run *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_string_append(r->broken, r->broken->len ? "; " : "");
    g_string_append_vprintf(r->broken, fmt, ap);
    va_end(ap);
}

/* Runs the CLI with its stdout in @out_path and its stderr in @err_path. */
static pid_t spawn_cli(char *const *args, const char *out_path, const char *err_path)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int efd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
        }
        if (efd >= 0) {
            dup2(efd, 2);
        }
        execv(cli, args);
        _exit(127);
    }
    return pid;
}

/* Waits for @pid until @ms have passed (or forever with -1): true when it exited. */
static bool wait_child(pid_t pid, int ms, int *status)
{
    gint64 end = ms < 0 ? G_MAXINT64 : g_get_monotonic_time() + (gint64)ms * 1000;
    for (;;) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) {
            return true;
        }
        if (g_get_monotonic_time() >= end) {
            return false;
        }
        g_usleep(10000);
    }
}

static void fill_disk(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    static char block[1 << 16];
    while (fd >= 0 && write(fd, block, sizeof(block)) > 0) {
    }
    if (fd >= 0) {
        close(fd);
    }
}

static bool inject(run *r, pid_t cli_pid, relay *rl, bool *stopped, int *stopped_pid)
{
    int dst = read_pid(r->stage);
    switch (r->kind) {
    case F_KILL_SRC:
        return alive(r->src_pid) && kill(r->src_pid, SIGKILL) == 0;
    case F_KILL_DST:
        return alive(dst) && kill(dst, SIGKILL) == 0;
    case F_KILL_VMIGRATE:
        return kill(cli_pid, SIGKILL) == 0;
    case F_STOP_SRC:
    case F_STOP_DST: {
        int pid = r->kind == F_STOP_SRC ? r->src_pid : dst;
        if (!alive(pid) || kill(pid, SIGSTOP) < 0) {
            return false;
        }
        *stopped = true;
        *stopped_pid = pid;
        return true;
    }
    case F_CLOSE_SOCKET: {
        g_autofree char *sock = g_build_filename(r->dir, "qmp-read.sock", NULL);
        vmig_error *err = NULL;
        char *ret = vmig_qmp_call(sock, "yank", "{\"instances\": [{\"type\": \"migration\"}]}",
                                  5000, &err);
        bool ok = ret != NULL;
        free(ret);
        vmig_error_free(err); /* no migration to yank: it ended first */
        return ok;
    }
    case F_DISK_FULL: {
        g_autofree char *filler = g_build_filename(state, "filler", NULL);
        fill_disk(filler);
        return true;
    }
    case F_QMP_GARBAGE:
        if (rl) {
            rl->inject = 1;
        }
        return rl != NULL;
    default:
        return false;
    }
}

static void read_report(run *r, const char *out_path)
{
    g_autofree char *text = NULL;
    g_file_get_contents(out_path, &text, NULL, NULL);
    json_object *o = text ? json_tokener_parse(text) : NULL, *v = NULL;
    if (!o || !json_object_is_type(o, json_type_object)) {
        r->status = g_strdup("no report");
        json_object_put(o);
        return;
    }
    if (json_object_object_get_ex(o, "status", &v) && json_object_is_type(v, json_type_string)) {
        r->status = g_strdup(json_object_get_string(v));
    }
    if (json_object_object_get_ex(o, "vm_holder", &v) && json_object_is_type(v, json_type_string)) {
        r->holder = g_strdup(json_object_get_string(v));
    }
    if (json_object_object_get_ex(o, "error", &v) && json_object_is_type(v, json_type_string)) {
        r->error = g_strdup(json_object_get_string(v));
    }
    if (!r->status) {
        r->status = g_strdup("no status");
    }
    json_object_put(o);
}

/* Processes that mention the state directory (QEMUs, guards, which keep vmigrate's command
 * line) other than @holder, once they have had SETTLE_MS to go. */
static int strays_settled(int holder)
{
    gint64 end = g_get_monotonic_time() + (gint64)SETTLE_MS * 1000;
    for (;;) {
        GArray *p = procs_matching(state);
        int n = 0;
        for (guint i = 0; i < p->len; i++) {
            n += g_array_index(p, int, i) != holder;
        }
        g_array_free(p, TRUE);
        if (n == 0 || g_get_monotonic_time() > end) {
            return n;
        }
        g_usleep(50000);
    }
}

static void check_strays(run *r, int holder)
{
    int n = strays_settled(holder);
    if (n) {
        rule(r, "%d stray processes (QEMU or vmigrate-guard)", n);
    }
    DIR *d = opendir(state);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
            strcmp(de->d_name, r->name) != 0) {
            rule(r, "stray file %s/%s", state, de->d_name);
        }
    }
    if (d) {
        closedir(d);
    }
}

static void check(run *r, vmig_engine *e)
{
    GArray *q = NULL;
    gint64 end = g_get_monotonic_time() + (gint64)SETTLE_MS * 1000;
    for (;;) { /* a killed QEMU takes a moment to let go */
        g_autofree char *exact = g_strdup_printf("guest=%s", r->name);
        q = procs_with(state, exact); /* ours: other runs may have a VM of that name */
        if (q->len <= 1 || g_get_monotonic_time() > end) {
            break;
        }
        g_array_free(q, TRUE);
        g_usleep(50000);
    }
    int holder_pid = q->len == 1 ? g_array_index(q, int, 0) : 0;
    bool completed = strcmp(r->status, "completed") == 0;
    if (q->len == 0) {
        /* Only a fault that killed the QEMU holding the VM may leave none. */
        bool src_held = r->kind == F_KILL_SRC && !completed;
        bool dst_held = r->kind == F_KILL_DST &&
                        (completed || (r->holder && !strcmp(r->holder, "destination")));
        if (!src_held && !dst_held) {
            rule(r, "no QEMU holds the VM (VM lost)");
        }
        g_array_free(q, TRUE);
        check_strays(r, 0);
        r->died = true;
        return;
    }
    if (q->len > 1) {
        rule(r, "%u QEMUs hold the VM", q->len);
    }
    g_array_free(q, TRUE);
    if (read_pid(r->dir) != holder_pid) {
        rule(r, "the QEMU holding the VM (pid %d) is not the one in %s", holder_pid, r->dir);
    }
    if (completed && holder_pid == r->src_pid) {
        rule(r, "the report says completed but the source holds the VM");
    }
    if ((!strcmp(r->status, "failed") || !strcmp(r->status, "cancelled")) &&
        holder_pid != r->src_pid) {
        rule(r, "the report says %s but the source does not hold the VM", r->status);
    }
    vmig_vm_info info[4];
    vmig_error *err = NULL;
    int n = vmig_vm_list_wait(e, info, 4, 5000, &err);
    if (n != 1 || strcmp(info[0].status, "running") != 0) {
        rule(r, "the VM is not listed as running (%d VMs, %s)", n,
             n > 0 ? info[0].status : vmig_error_message(err));
    }
    vmig_error_free(err);
    err = NULL;
    uint64_t pages = 0;
    if (!vmig_guest_verify(e, r->name, &pages, &err)) {
        rule(r, "memory: %s", vmig_error_message(err));
        vmig_error_free(err);
    }
    check_strays(r, holder_pid);
}

static void start_guest(run *r, vmig_engine *e)
{
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"%s\", \"memory_mib\": %d, \"kernel\": \"%s\", "
        "\"append\": \"vmig.dirty_mib_s=8\"}",
        r->name, mem_mib, vmig_guest_kernel());
    vmig_error *err = NULL;
    vmig_spec *spec = vmig_spec_parse(json, &err);
    if (!spec || !vmig_vm_start(e, spec, VMIG_ACCEL_TCG, &err) ||
        !vmig_guest_wait_ready(e, r->name, 120000, &err)) {
        fprintf(stderr, "seed %u: cannot start the guest: %s\n", r->seed, vmig_error_message(err));
        exit(2);
    }
    vmig_spec_free(spec);
    r->src_pid = read_pid(r->dir);
}

/* Runs the migration with the CLI and injects the fault; vmigrate's exit status. */
static int drive(run *r, relay *rl, const char *out, const char *errlog, int *took_ms)
{
    char *const args[] = {cli,  "--state-dir",     state, "migrate", "--live", "--bandwidth",
                          "48", "--stall-timeout", "15",  "--json",  r->name,  "local",
                          NULL};
    gint64 t0 = g_get_monotonic_time();
    pid_t child = spawn_cli(args, out, errlog);
    int status = 0;
    bool exited = wait_child(child, r->at_ms, &status);
    /* a fault on the destination waits for one to exist, the socket's for a migration */
    while (!exited && (r->kind == F_KILL_DST || r->kind == F_STOP_DST) &&
           !alive(read_pid(r->stage))) {
        exited = wait_child(child, 5, &status);
    }
    bool stopped = false;
    int stopped_pid = 0;
    while (!exited && !(r->injected = inject(r, child, rl, &stopped, &stopped_pid)) &&
           r->kind == F_CLOSE_SOCKET) {
        exited = wait_child(child, 20, &status);
    }
    if (stopped) {
        exited = wait_child(child, STOP_MS, &status);
        kill(stopped_pid, SIGCONT);
    }
    if (!exited && !wait_child(child, CLI_DEADLINE_MS, &status)) {
        rule(r, "vmigrate did not finish within %d s", CLI_DEADLINE_MS / 1000);
        kill(child, SIGKILL);
        wait_child(child, -1, &status);
    }
    *took_ms = (int)((g_get_monotonic_time() - t0) / 1000);
    return status;
}

/* What vmigrate said, or, when it died, what `vm recover` did (returned). */
static char *outcome(run *r, int status, const char *out, const char *errlog)
{
    if (!WIFSIGNALED(status)) {
        read_report(r, out);
        if (!strcmp(r->status, "no report") || !strcmp(r->status, "no status")) {
            rule(r, "vmigrate exited (status %d) without a JSON report", WEXITSTATUS(status));
        }
        return NULL;
    }
    r->status = g_strdup_printf("killed by signal %d", WTERMSIG(status));
    if (r->kind != F_KILL_VMIGRATE || WTERMSIG(status) != SIGKILL) {
        rule(r, "vmigrate died of signal %d", WTERMSIG(status));
    }
    char *const rec[] = {cli, "--state-dir", state, "vm", "recover", r->name, NULL};
    g_autofree char *rout = g_strdup_printf("/tmp/vmig-faults-recover-%d.txt", getpid());
    pid_t rc = spawn_cli(rec, rout, errlog);
    int rs = 0;
    wait_child(rc, -1, &rs);
    g_autofree char *said = NULL;
    g_file_get_contents(rout, &said, NULL, NULL);
    unlink(rout);
    if (!WIFEXITED(rs) || WEXITSTATUS(rs) != 0) {
        rule(r, "vm recover failed (status %d)", rs);
    }
    return g_strdup_printf("; recover: %s", said ? g_strstrip(said) : "");
}

/* Stops the VM and clears the state directory for the next run, whatever happened. */
static void clean_up(run *r, vmig_engine *e)
{
    vmig_vm_stop(e, r->name, 5000, NULL);
    GArray *left = procs_matching(state);
    for (guint i = 0; i < left->len; i++) {
        kill(g_array_index(left, int, i), SIGKILL);
    }
    g_array_free(left, TRUE);
    count_settled(state);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'/* '%s'/.[!.]*", state, state);
    if (system(rm) != 0) {
        fprintf(stderr, "cleaning %s failed\n", state);
    }
}

static void report(const run *r, tally *t, int took_ms, const char *recovered,
                   const char *stderr_text)
{
    bool ok = r->broken->len == 0;
    t->injected += r->injected;
    t->completed += !strcmp(r->status, "completed");
    t->rolled_back += !strcmp(r->status, "failed") || !strcmp(r->status, "cancelled");
    t->died_with_qemu += r->died && ok;
    t->broken += !ok;
    printf("seed %u %-16s at %4d ms%s: %s in %d ms%s%s%s%s -> %s%s\n", r->seed, kind_names[r->kind],
           r->at_ms, r->injected ? "" : " (not injected: the migration ended first)", r->status,
           took_ms, r->error ? " (" : "", r->error ? r->error : "", r->error ? ")" : "",
           recovered ? recovered : "", ok ? "ok" : "BROKEN: ",
           ok ? (r->died ? "; the VM died with the QEMU the fault killed" : "") : r->broken->str);
    if (!ok && stderr_text) {
        printf("  vmigrate's stderr:\n%s\n", stderr_text);
    }
    fflush(stdout);
}

static void one_run(unsigned seed, fault_kind kind, vmig_engine *e, tally *t)
{
    t->runs++;
    if (kind == F_DISK_FULL && !tmpfs) {
        printf("seed %u %-16s skipped: needs root for a tmpfs state directory\n", seed,
               kind_names[kind]);
        t->skipped++;
        return;
    }
    run r = {.seed = seed, .kind = kind, .broken = g_string_new(NULL)};
    GRand *rnd = g_rand_new_with_seed(seed);
    r.at_ms = g_rand_int_range(rnd, 0, WINDOW_MS);
    g_rand_free(rnd);
    g_snprintf(r.name, sizeof(r.name), "f%u", seed);
    r.dir = g_build_filename(state, r.name, NULL);
    r.stage = g_strconcat(r.dir, ".incoming", NULL);
    start_guest(&r, e);
    relay *rl = kind == F_QMP_GARBAGE ? relay_start(r.dir) : NULL;
    g_autofree char *out = g_strdup_printf("/tmp/vmig-faults-report-%d.json", getpid());
    g_autofree char *errlog = g_strdup_printf("/tmp/vmig-faults-stderr-%d.txt", getpid());
    int took_ms = 0;
    int status = drive(&r, rl, out, errlog, &took_ms);
    if (rl) {
        relay_stop(rl);
    }
    if (kind == F_DISK_FULL) {
        g_autofree char *filler = g_build_filename(state, "filler", NULL);
        unlink(filler);
    }
    g_autofree char *recovered = outcome(&r, status, out, errlog);
    unlink(out);
    check(&r, e);
    g_autofree char *stderr_text = NULL;
    g_file_get_contents(errlog, &stderr_text, NULL, NULL);
    unlink(errlog);
    report(&r, t, took_ms, recovered, stderr_text);
    clean_up(&r, e);
    g_free(r.status);
    g_free(r.holder);
    g_free(r.error);
    g_free(r.dir);
    g_free(r.stage);
    g_string_free(r.broken, TRUE);
}

static int kind_by_name(const char *s)
{
    for (int k = 0; k < F_COUNT; k++) {
        if (strcmp(s, kind_names[k]) == 0) {
            return k;
        }
    }
    return -1;
}

static void cleanup_state(void)
{
    if (tmpfs) {
        umount2(state, MNT_DETACH);
    }
    rmdir(state);
}

typedef struct opts {
    int runs, only;
    unsigned base;
    const char *regressions;
} opts;

/* 0, or the exit status for a wrong command line. */
static int parse_args(int argc, char **argv, opts *o)
{
    static const struct option longopts[] = {
        {"runs", required_argument, NULL, 'n'}, {"seed", required_argument, NULL, 's'},
        {"kind", required_argument, NULL, 'k'}, {"regressions", required_argument, NULL, 'r'},
        {"mem", required_argument, NULL, 'm'},  {0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            o->runs = atoi(optarg);
            break;
        case 's':
            o->base = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'k':
            if ((o->only = kind_by_name(optarg)) < 0) {
                fprintf(stderr, "vmig-faults: unknown fault kind '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            o->regressions = optarg;
            break;
        case 'm':
            mem_mib = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: vmig-faults [--runs N] [--seed BASE] [--kind NAME] "
                            "[--regressions FILE] [--mem MIB]\n");
            return 2;
        }
    }
    return 0;
}

static void replay(const char *path, vmig_engine *e, tally *t)
{
    g_autofree char *text = NULL;
    g_file_get_contents(path, &text, NULL, NULL);
    g_auto(GStrv) lines = g_strsplit(text ? text : "", "\n", -1);
    for (char **l = lines; *l; l++) {
        unsigned seed = 0;
        char kind[32];
        if (**l != '#' && sscanf(*l, "%u %31s", &seed, kind) == 2 && kind_by_name(kind) >= 0) {
            one_run(seed, (fault_kind)kind_by_name(kind), e, &t[kind_by_name(kind)]);
        }
    }
}

/* Prints the counts by fault kind; how many runs broke a rule. */
static int print_table(const tally *t)
{
    int broken = 0;
    printf("\n%-16s %5s %8s %9s %11s %14s %6s %7s\n", "fault", "runs", "injected", "completed",
           "rolled back", "died with QEMU", "broken", "skipped");
    for (int k = 0; k < F_COUNT; k++) {
        printf("%-16s %5d %8d %9d %11d %14d %6d %7d\n", kind_names[k], t[k].runs, t[k].injected,
               t[k].completed, t[k].rolled_back, t[k].died_with_qemu, t[k].broken, t[k].skipped);
        broken += t[k].broken;
    }
    return broken;
}

/* The engine on a fresh state directory (a tmpfs as root), on a QEMU that keeps guest writes. */
static vmig_engine *set_up(void)
{
    state = g_strdup("/tmp/vmig-faults-XXXXXX");
    if (!g_mkdtemp_full(state, 0700)) {
        perror("mkdtemp");
        exit(2);
    }
    tmpfs = getuid() == 0 &&
            mount("tmpfs", state, "tmpfs", MS_NOSUID | MS_NODEV, "size=32m,mode=0700") == 0;
    atexit(cleanup_state);
    vmig_error *err = NULL;
    vmig_engine *e = vmig_engine_new(state, &err);
    if (!e) {
        fprintf(stderr, "vmig-faults: %s\n", vmig_error_message(err));
        exit(2);
    }
    int version = vmig_engine_qemu_version(e, NULL, &err);
    if (version > 0 && version < 90000) {
        fprintf(stderr,
                "vmig-faults: QEMU %d.%d loses guest writes under TCG in live "
                "migration: run the matrix on QEMU >= 9.0\n",
                version / 10000, version / 100 % 100);
        exit(2);
    }
    return e;
}

int main(int argc, char **argv)
{
    opts o = {.runs = 16, .only = -1, .base = 1};
    int bad = parse_args(argc, argv, &o);
    if (bad) {
        return bad;
    }
    cli = g_strdup(getenv("VMIG_CLI"));
    if (!cli || !vmig_guest_kernel()) {
        fprintf(stderr, "vmig-faults: set VMIG_CLI and VMIG_GUEST\n");
        return 2;
    }
    vmig_engine *e = set_up();
    printf("fault matrix: state %s%s, guest %d MiB dirtying 8 MiB/s, 48 MiB/s cap, faults in "
           "the first %d ms\n",
           state, tmpfs ? " (tmpfs, 32 MiB)" : "", mem_mib, WINDOW_MS);
    tally t[F_COUNT] = {{0}};
    if (o.regressions) {
        replay(o.regressions, e, t);
    }
    for (int i = 0; i < o.runs; i++) {
        unsigned seed = o.base + (unsigned)i;
        fault_kind k = o.only >= 0 ? (fault_kind)o.only : (fault_kind)(seed % F_COUNT);
        one_run(seed, k, e, &t[k]);
    }
    vmig_engine_free(e);
    return print_table(t) ? 1 : 0;
}
