#include "t_util.h"
#include "ring/ring.h"

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

char *t_state_dir_new(void)
{
    char tmpl[] = "/tmp/vmig-test-XXXXXX";
    cr_assert_not_null(mkdtemp(tmpl));
    return g_strdup(tmpl);
}

int t_qemu_count(const char *needle)
{
    int n = 0;
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!g_ascii_isdigit(de->d_name[0])) {
            continue;
        }
        g_autofree char *path = g_strdup_printf("/proc/%s/cmdline", de->d_name);
        g_autofree char *cmd = NULL;
        gsize len = 0;
        if (!g_file_get_contents(path, &cmd, &len, NULL) || len == 0) {
            continue; /* gone, or a zombie: nothing left to leak */
        }
        for (gsize i = 0; i + 1 < len; i++) {
            if (cmd[i] == '\0') {
                cmd[i] = ' ';
            }
        }
        if (strstr(cmd, "qemu") && strstr(cmd, needle)) {
            n++;
        }
    }
    if (d) {
        closedir(d);
    }
    return n;
}

int t_qemu_count_settled(const char *needle)
{
    /* a killed QEMU can take a moment to leave /proc; t_state_dir_check_clean waits too */
    for (int i = 0; i < 100 && t_qemu_count(needle) > 0; i++) {
        g_usleep(50000);
    }
    return t_qemu_count(needle);
}

static int count_entries(const char *dir, GString *names)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            g_string_append_printf(names, " %s", de->d_name);
            n++;
        }
    }
    if (d) {
        closedir(d);
    }
    return n;
}

void t_state_dir_check_clean(const char *dir)
{
    /* QEMU may take a moment to exit after a kill */
    cr_expect(eq(int, t_qemu_count_settled(dir), 0), "QEMU processes left running in %s", dir);
    g_autoptr(GString) names = g_string_new(NULL);
    int left = count_entries(dir, names);
    cr_expect(eq(int, left, 0), "left in %s:%s", dir, names->str);
    rmdir(dir);
}

/* Kills every QEMU whose command line mentions @needle: what a failed test left behind. */
static void kill_qemus(const char *needle)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int pid = atoi(de->d_name);
        g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
        g_autofree char *cmd = NULL;
        gsize len = 0;
        if (pid <= 0 || !g_file_get_contents(path, &cmd, &len, NULL) || len == 0) {
            continue;
        }
        for (gsize i = 0; i + 1 < len; i++) {
            cmd[i] = (char)(cmd[i] ? cmd[i] : ' ');
        }
        if (strstr(cmd, "qemu") && strstr(cmd, needle)) {
            kill(pid, SIGKILL);
        }
    }
    if (d) {
        closedir(d);
    }
}

void t_engine_teardown(vmig_engine *e, char *state)
{
    vmig_vm_info infos[8];
    int n = vmig_vm_list(e, infos, 8, NULL);
    for (int i = 0; i < n && i < 8; i++) {
        vmig_vm_stop(e, infos[i].name, 5000, NULL);
    }
    vmig_engine_free(e);
    t_state_dir_check_clean(state); /* fails the test if anything was left ... */
    kill_qemus(state);              /* ... and then nothing is, for the next test */
    t_qemu_count_settled(state);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", state);
    if (system(rm) != 0) {
        cr_log_warn("could not remove %s", state);
    }
    g_free(state);
}

int t_instance_pid(const char *instance_dir)
{
    g_autofree char *path = g_build_filename(instance_dir, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return 0;
    }
    return atoi(text);
}

vmig_spec *t_guest_spec(const char *name, int mem_mib, int dirty_mib_s)
{
    return t_guest_spec_ex(name, mem_mib, dirty_mib_s, "");
}

vmig_spec *t_guest_spec_ex(const char *name, int mem_mib, int dirty_mib_s, const char *extra)
{
    const char *kernel = vmig_guest_kernel();
    cr_assert_not_null(kernel, "the test guest was not found (VMIG_GUEST=%s)",
                       getenv("VMIG_GUEST") ? getenv("VMIG_GUEST") : "unset");
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"%s\", \"memory_mib\": %d, \"kernel\": \"%s\", "
        "\"append\": \"vmig.dirty_mib_s=%d%s%s\"}",
        name, mem_mib, kernel, dirty_mib_s, *extra ? " " : "", extra);
    vmig_error *err = NULL;
    vmig_spec *s = vmig_spec_parse(json, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    return s;
}

vmig_accel t_accel(void)
{
    const char *a = getenv("VMIG_TEST_ACCEL");
    return a && strcmp(a, "kvm") == 0 ? VMIG_ACCEL_KVM : VMIG_ACCEL_TCG;
}

int t_qemu_version(void)
{
    static int version;
    if (version) {
        return version;
    }
    g_autofree char *dir = t_state_dir_new();
    vmig_error *err = NULL;
    vmig_engine *e = vmig_engine_new(dir, &err);
    cr_assert_not_null(e, "%s", vmig_error_message(err));
    version = vmig_engine_qemu_version(e, NULL, &err);
    cr_assert(version > 0, "%s", vmig_error_message(err));
    vmig_engine_free(e);
    rmdir(dir);
    return version;
}

bool t_qemu_loses_tcg_writes(void)
{
    return t_accel() == VMIG_ACCEL_TCG && t_qemu_version() < 90000;
}

void t_live_opts(vmig_migrate_opts *o)
{
    vmig_migrate_opts_init(o);
    o->unsafe = t_qemu_loses_tcg_writes();
}

static void log_stderr(void *opaque, vmig_log_level level, const char *msg)
{
    (void)opaque;
    fprintf(stderr, "[vmig %d] %s\n", (int)level, msg);
}

vmig_engine *t_engine(const char *state_dir)
{
    vmig_error *err = NULL;
    vmig_engine *e = vmig_engine_new(state_dir, &err);
    cr_assert_not_null(e, "%s", vmig_error_message(err));
    if (getenv("VMIG_TEST_DEBUG")) {
        vmig_engine_set_log(e, log_stderr, NULL);
    }
    return e;
}

t_run_result t_run(const char *const *argv)
{
    t_run_result r = {0};
    int wait_status = 0;
    g_autoptr(GError) gerr = NULL;
    gboolean ok = g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &r.out,
                               &r.err, &wait_status, &gerr);
    cr_assert(ok, "spawning %s: %s", argv[0], gerr ? gerr->message : "?");
    r.status = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
    return r;
}

t_run_result t_cli(const char *const *args)
{
    const char *cli = getenv("VMIG_CLI");
    cr_assert_not_null(cli, "VMIG_CLI is not set");
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, g_strdup(cli));
    for (const char *const *a = args; *a; a++) {
        g_ptr_array_add(argv, g_strdup(*a));
    }
    g_ptr_array_add(argv, NULL);
    return t_run((const char *const *)argv->pdata);
}

void t_run_result_clear(t_run_result *r)
{
    g_free(r->out);
    g_free(r->err);
}

static ring *the_ring;

static void free_ring(void) __attribute__((destructor));
static void free_ring(void)
{
    ring_free(the_ring);
}

ring *t_ring(void)
{
    if (!the_ring) {
        the_ring = ring_new(RING_BACKEND_AUTO, NULL);
        cr_assert_not_null(the_ring);
    }
    return the_ring;
}

void t_cut_in_postcopy(void *opaque, const vmig_migration_stats *st)
{
    t_cutter *c = opaque;
    if (c->cut || !st->postcopy_at_ms || st->remaining_bytes < (4u << 20)) {
        return;
    }
    c->cut = true;
    const char *args[] = {"qmp", c->sock, "migrate-pause", NULL};
    t_run_result r = t_cli(args);
    cr_assert(eq(int, r.status, 0), "migrate-pause: %s%s", r.out, r.err);
    t_run_result_clear(&r);
}

/* Runs `vmigrate agent` (in network namespace @netns when set) on @host, port 0. */
void t_agent_free(t_agent *a)
{
    if (a->key) {
        unlink(a->key);
        unlink(a->log);
        rmdir(a->key_dir);
    }
    g_free(a->dir);
    g_free(a->key_dir);
    g_free(a->key);
    g_free(a->log);
    g_free(a->dest);
    g_free(a->netns);
    memset(a, 0, sizeof(*a));
}

void t_agent_start(t_agent *a, const char *netns, const char *host)
{
    t_agent_start_ex(a, netns, host, NULL, NULL);
}

void t_agent_start_ex(t_agent *a, const char *netns, const char *host, const char *bind_from,
                      const char *bind_at)
{
    a->dir = t_state_dir_new();
    a->key_dir = t_state_dir_new();
    a->key = g_build_filename(a->key_dir, "key", NULL);
    a->log = g_build_filename(a->key_dir, "agent.log", NULL);
    a->netns = g_strdup(netns);
    vmig_error *err = NULL;
    cr_assert(vmig_key_create(a->key, &err), "%s", vmig_error_message(err));
    const char *cli = getenv("VMIG_CLI"), *qemu = getenv("VMIG_QEMU");
    if (!cli || !qemu) {
        cr_fail("VMIG_CLI and VMIG_QEMU must be set");
        return;
    }
    g_autofree char *listen = g_strdup_printf("%s:0", host);
    const char *argv[40];
    int n = 0;
    if (netns) {
        argv[n++] = "/usr/sbin/ip";
        argv[n++] = "netns";
        argv[n++] = "exec";
        argv[n++] = netns;
    }
    if (bind_from) { /* a host of its own as far as files go: another file at the same path */
        argv[n++] = "/usr/bin/unshare";
        argv[n++] = "--mount";
        argv[n++] = "--propagation";
        argv[n++] = "private";
        argv[n++] = "/bin/sh";
        argv[n++] = "-c";
        argv[n++] = "mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"";
        argv[n++] = "sh";
        argv[n++] = bind_from;
        argv[n++] = bind_at;
    }
    argv[n++] = cli;
    argv[n++] = "--state-dir";
    argv[n++] = a->dir;
    argv[n++] = "--qemu";
    argv[n++] = qemu;
    argv[n++] = "--debug";
    argv[n++] = "agent";
    argv[n++] = "--listen";
    argv[n++] = listen;
    argv[n++] = "--key";
    argv[n++] = a->key;
    argv[n++] = "--accel";
    argv[n++] = t_accel() == VMIG_ACCEL_KVM ? "kvm" : "tcg";
    argv[n] = NULL;
    int out[2];
    cr_assert(eq(int, pipe2(out, O_CLOEXEC), 0));
    int log = open(a->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(ge(int, log, 0));
    a->pid = fork();
    cr_assert(ge(int, a->pid, 0));
    if (a->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a test that dies takes its agent along */
        dup2(out[1], STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(out[1]);
    close(log);
    char line[128] = "";
    size_t got = 0;
    while (got + 1 < sizeof(line)) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        cr_assert(gt(int, poll(&p, 1, 30000), 0), "the agent did not say where it listens");
        ssize_t r = read(out[0], line + got, 1);
        cr_assert(eq(long, (long)r, 1L), "the agent ended before it listened");
        if (line[got++] == '\n') {
            break;
        }
    }
    close(out[0]);
    line[strcspn(line, "\n")] = '\0';
    const char *colon = strrchr(line, ':');
    cr_assert(g_str_has_prefix(line, "listening on ") && colon, "agent said '%s'", line);
    a->port = atoi(colon + 1);
    a->dest = g_strdup_printf("vmig://%s", line + strlen("listening on "));
}
