/*
 * VM instances.  Each running VM owns a directory under a state directory:
 *   spec.json  the effective spec (with the UUID a destination must reuse)
 *   accel      tcg or kvm
 *   qmp.sock   its QMP monitor       qemu.pid   written by QEMU
 *   qemu.log   QEMU's stdout/stderr  serial.log the guest's COM1
 * QEMU is started by a double fork so it is never our child (no zombies for the embedding
 * program to reap) and not daemonized by QEMU itself, because -daemonize would send its
 * stderr to /dev/null, and QEMU 7.2's destination writes why an incoming migration failed
 * there just before it exits.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"

#define POLL_STEP_US 5000 /* QEMU opens its monitor ~30 ms after exec */

const char *eng_accel_name(vmig_accel a)
{
    return a == VMIG_ACCEL_KVM ? "kvm" : "tcg";
}

bool eng_accel_parse(const char *s, vmig_accel *ret)
{
    if (strcmp(s, "tcg") == 0) {
        *ret = VMIG_ACCEL_TCG;
    } else if (strcmp(s, "kvm") == 0) {
        *ret = VMIG_ACCEL_KVM;
    } else {
        return false;
    }
    return true;
}

char *eng_vm_dir(const char *state_dir, const char *name)
{
    return g_build_filename(state_dir, name, NULL);
}

bool eng_write_file(const char *path, const char *text, vmig_error **errp)
{
    g_autoptr(GError) gerr = NULL;
    if (!g_file_set_contents(path, text, -1, &gerr)) {
        vmig_set_error(errp, VMIG_E_IO, "%s", gerr->message);
        return false;
    }
    return true;
}

/* Alive means: the process exists and is not a zombie waiting for a parent that never reaps. */
static bool pid_alive(int pid)
{
    if (pid <= 0) {
        return false;
    }
    char path[64], buf[256];
    g_snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f) {
        return false;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' && rp[2] != 'Z' && rp[2] != 'X';
}

static bool pid_wait_gone(int pid, int timeout_ms)
{
    int64_t deadline = vmig_now_ms() + timeout_ms;
    while (pid_alive(pid)) {
        if (vmig_ms_left(deadline) == 0) {
            return false;
        }
        g_usleep(POLL_STEP_US / 2);
    }
    return true;
}

/* Whether @pid is the QEMU of instance @name (guards against a recycled pid). */
static bool pid_is_instance(int pid, const char *name)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
    g_autofree char *cmd = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &cmd, &len, NULL)) {
        return false;
    }
    g_autofree char *want = g_strdup_printf("guest=%s", name);
    for (gsize off = 0; off < len; off += strlen(cmd + off) + 1) {
        if (strcmp(cmd + off, want) == 0) {
            return true;
        }
    }
    return false;
}

static int read_pidfile(const char *dir)
{
    g_autofree char *path = g_build_filename(dir, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return 0;
    }
    gint64 pid = g_ascii_strtoll(text, NULL, 10);
    return pid > 0 && pid < INT32_MAX ? (int)pid : 0;
}

void eng_vm_remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                g_autofree char *p = g_build_filename(dir, de->d_name, NULL);
                unlink(p);
            }
        }
        closedir(d);
    }
    rmdir(dir);
}

void eng_vm_disconnect(eng_vm *vm)
{
    if (vm->watch > 0) {
        eng_loop_unwatch(vm->e->loop, vm->watch);
        vm->watch = 0;
    }
    g_clear_pointer(&vm->qmp, qmp_conn_free);
}

void eng_vm_free(eng_vm *vm)
{
    if (!vm) {
        return;
    }
    eng_vm_disconnect(vm);
    vmig_spec_free(vm->spec);
    g_free(vm->name);
    g_free(vm->dir);
    g_free(vm);
}

bool eng_vm_alive(const eng_vm *vm)
{
    return pid_alive(vm->pid);
}

char *eng_vm_log_tail(const eng_vm *vm)
{
    g_autofree char *path = g_build_filename(vm->dir, "qemu.log", NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return g_strdup("");
    }
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    GString *out = g_string_new(NULL);
    guint n = g_strv_length(lines), taken = 0;
    for (guint i = n; i > 0 && taken < 3; i--) {
        const char *l = g_strstrip(lines[i - 1]);
        if (*l) {
            g_string_prepend(out, taken++ ? "; " : "");
            g_string_prepend(out, l);
        }
    }
    return g_string_free(out, FALSE);
}

static bool check_file(const char *what, const char *path, vmig_error **errp)
{
    if (path && access(path, R_OK) < 0) {
        vmig_set_error_errno(errp, errno, "%s %s", what, path);
        return false;
    }
    return true;
}

static bool check_spec_files(const vmig_spec *s, vmig_error **errp)
{
    if (!check_file("kernel", s->kernel, errp) || !check_file("initrd", s->initrd, errp)) {
        return false;
    }
    for (guint i = 0; i < s->disks->len; i++) {
        const eng_disk *d = g_ptr_array_index(s->disks, i);
        if (!check_file("disk", d->path, errp)) {
            return false;
        }
    }
    return true;
}

/* Forks twice; the grandchild execs QEMU.  Returns its pid, or 0 with an error. */
static int spawn_detached(char **argv, const char *logpath, vmig_error **errp)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        vmig_set_error_errno(errp, errno, "pipe2");
        return 0;
    }
    pid_t child = fork();
    if (child < 0) {
        vmig_set_error_errno(errp, errno, "fork");
        close(p[0]);
        close(p[1]);
        return 0;
    }
    if (child == 0) {
        pid_t gc = fork();
        if (gc == 0) {
            setsid();
            int in = open("/dev/null", O_RDONLY);
            int out = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
            if (in >= 0 && out >= 0) {
                dup2(in, 0);
                dup2(out, 1);
                dup2(out, 2);
            }
            signal(SIGPIPE, SIG_DFL);
            execvp(argv[0], argv);
            int err = errno;
            ssize_t w = write(p[1], &err, sizeof(err));
            (void)w;
            _exit(127);
        }
        int32_t pid = gc > 0 ? gc : 0;
        ssize_t w = write(p[1], &pid, sizeof(pid));
        (void)w;
        _exit(0);
    }
    close(p[1]);
    waitpid(child, NULL, 0);
    int32_t pid = 0;
    int err = 0;
    ssize_t r = read(p[0], &pid, sizeof(pid));
    if (r == (ssize_t)sizeof(pid) && pid > 0 && read(p[0], &err, sizeof(err)) == sizeof(err)) {
        vmig_set_error_errno(errp, err, "cannot run %s", argv[0]);
        pid = 0;
    } else if (r != (ssize_t)sizeof(pid) || pid <= 0) {
        vmig_set_error(errp, VMIG_E_IO, "fork failed while starting %s", argv[0]);
        pid = 0;
    }
    close(p[0]);
    return pid;
}

static bool socket_accepts(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return false;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static bool wait_started(eng_vm *vm, vmig_error **errp)
{
    g_autofree char *sock = g_build_filename(vm->dir, "qmp.sock", NULL);
    int64_t deadline = vmig_now_ms() + ENG_START_TIMEOUT_MS;
    for (;;) {
        if (!pid_alive(vm->pid)) {
            g_autofree char *tail = eng_vm_log_tail(vm);
            vmig_set_error(errp, VMIG_E_QEMU, "QEMU exited at start: %s",
                           *tail ? tail : "(no output)");
            return false;
        }
        if (socket_accepts(sock)) {
            return true;
        }
        if (vmig_ms_left(deadline) == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT, "QEMU did not open its monitor within %d ms",
                           ENG_START_TIMEOUT_MS);
            return false;
        }
        g_usleep(POLL_STEP_US);
    }
}

static bool prepare_dir(const char *dir, const char *name, vmig_error **errp)
{
    if (g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        int pid = read_pidfile(dir);
        if (pid_alive(pid) && pid_is_instance(pid, name)) {
            vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is already running (pid %d, %s)", name,
                           pid, dir);
            return false;
        }
        eng_vm_remove_dir(dir); /* left over from a VM that died */
    }
    if (g_mkdir_with_parents(dir, 0700) < 0) {
        vmig_set_error_errno(errp, errno, "creating %s", dir);
        return false;
    }
    return true;
}

eng_vm *eng_vm_launch(vmig_engine *e, const vmig_spec *spec, const char *dir, vmig_accel accel,
                      bool incoming, vmig_error **errp)
{
    if (!check_spec_files(spec, errp) || !prepare_dir(dir, spec->name, errp)) {
        return NULL;
    }
    g_autoptr(eng_vm) vm = g_new0(eng_vm, 1);
    vm->e = e;
    vm->name = g_strdup(spec->name);
    vm->dir = g_strdup(dir);
    vm->spec = eng_spec_copy(spec);
    if (!vm->spec->uuid) {
        vm->spec->uuid = g_uuid_string_random();
    }
    g_autofree char *json = vmig_spec_to_json(vm->spec);
    g_autofree char *spec_path = g_build_filename(dir, "spec.json", NULL);
    g_autofree char *accel_path = g_build_filename(dir, "accel", NULL);
    g_autofree char *log_path = g_build_filename(dir, "qemu.log", NULL);
    if (!eng_write_file(spec_path, json, errp) ||
        !eng_write_file(accel_path, eng_accel_name(accel), errp)) {
        eng_vm_remove_dir(dir);
        return NULL;
    }
    eng_launch l = {.qemu = e->qemu, .dir = dir, .accel = accel, .incoming = incoming};
    g_autoptr(GPtrArray) argv = eng_spec_argv(vm->spec, &l);
    g_autofree char *cmdline = g_strjoinv(" ", (char **)argv->pdata);
    eng_log(e, VMIG_LOG_DEBUG, "starting %s", cmdline);
    vm->pid = spawn_detached((char **)argv->pdata, log_path, errp);
    if (!vm->pid || !wait_started(vm, errp)) {
        if (vm->pid) {
            kill(vm->pid, SIGKILL);
            pid_wait_gone(vm->pid, 5000);
        }
        eng_vm_remove_dir(dir);
        return NULL;
    }
    return g_steal_pointer(&vm);
}

eng_vm *eng_vm_find(vmig_engine *e, const char *dir, vmig_error **errp)
{
    g_autofree char *spec_path = g_build_filename(dir, "spec.json", NULL);
    g_autofree char *base = g_path_get_basename(dir);
    if (!g_file_test(spec_path, G_FILE_TEST_EXISTS)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", base, e->state_dir);
        return NULL;
    }
    g_autoptr(eng_vm) vm = g_new0(eng_vm, 1);
    vm->e = e;
    vm->dir = g_strdup(dir);
    vm->spec = vmig_spec_load(spec_path, errp);
    if (!vm->spec) {
        return NULL;
    }
    vm->name = g_strdup(vm->spec->name);
    vm->pid = read_pidfile(dir);
    if (!pid_alive(vm->pid)) {
        vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is not running (its QEMU is gone; "
                                           "'vmigrate vm stop %s' cleans up)", vm->name,
                       vm->name);
        return NULL;
    }
    return g_steal_pointer(&vm);
}

static void vm_readable(void *opaque, int fd, int revents)
{
    eng_vm *vm = opaque;
    (void)fd;
    (void)revents;
    if (vm->qmp && qmp_conn_process(vm->qmp, NULL) < 0 && vm->watch > 0) {
        eng_loop_unwatch(vm->e->loop, vm->watch);
        vm->watch = 0;
    }
}

static int loop_waiter(void *opaque, qmp_conn *c, int timeout_ms)
{
    vmig_engine *e = opaque;
    (void)c;
    int r = eng_loop_run_once(e->loop, timeout_ms);
    return r < 0 ? r : 0;
}

bool eng_vm_connect(eng_vm *vm, qmp_event_fn ev, void *opaque, vmig_error **errp)
{
    g_autofree char *sock = g_build_filename(vm->dir, "qmp.sock", NULL);
    g_autofree char *label = g_strdup_printf("%s monitor (%s)", vm->name, sock);
    g_autoptr(qmp_conn) c = qmp_conn_new(label);
    if (!qmp_conn_connect_unix(c, sock, errp) ||
        !qmp_conn_handshake(c, ENG_CONNECT_TIMEOUT_MS, errp)) {
        return false;
    }
    qmp_conn_set_event_cb(c, ev, opaque);
    qmp_conn_set_waiter(c, loop_waiter, vm->e);
    int w = eng_loop_watch(vm->e->loop, qmp_conn_fd(c), POLLIN, vm_readable, vm);
    if (w < 0) {
        vmig_set_error_errno(errp, -w, "watching %s", label);
        return false;
    }
    vm->qmp = g_steal_pointer(&c);
    vm->watch = w;
    return true;
}

bool eng_vm_kill(eng_vm *vm, int timeout_ms, vmig_error **errp)
{
    if (vm->qmp && qmp_conn_alive(vm->qmp)) {
        /* QEMU may close the socket before its reply to quit arrives: not an error. */
        json_object_put(qmp_conn_call(vm->qmp, "quit", NULL, 0, 2000, NULL));
    } else if (pid_alive(vm->pid) && pid_is_instance(vm->pid, vm->name)) {
        kill(vm->pid, SIGTERM);
    }
    eng_vm_disconnect(vm);
    if (pid_wait_gone(vm->pid, timeout_ms)) {
        return true;
    }
    eng_log(vm->e, VMIG_LOG_WARN, "VM '%s' (pid %d) did not quit within %d ms: killing it",
            vm->name, vm->pid, timeout_ms);
    if (pid_is_instance(vm->pid, vm->name)) {
        kill(vm->pid, SIGKILL);
    }
    if (!pid_wait_gone(vm->pid, 5000)) {
        vmig_set_error(errp, VMIG_E_TIMEOUT, "VM '%s' (pid %d) survived SIGKILL", vm->name,
                       vm->pid);
        return false;
    }
    return true;
}

const char *eng_vm_run_state(eng_vm *vm, char *buf, size_t len, vmig_error **errp)
{
    g_autoptr(json_object) st = qmp_conn_call(vm->qmp, "query-status", NULL, 0,
                                              ENG_QMP_TIMEOUT_MS, errp);
    json_object *v = NULL;
    if (!st || !json_object_object_get_ex(st, "status", &v)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-status: no status in the reply");
        return NULL;
    }
    g_strlcpy(buf, json_object_get_string(v), len);
    return buf;
}

bool eng_wait_until(vmig_engine *e, bool (*pred)(void *), void *opaque, int timeout_ms)
{
    int64_t deadline = vmig_now_ms() + timeout_ms;
    while (!pred(opaque)) {
        int left = vmig_ms_left(deadline);
        if (left == 0) {
            return false;
        }
        eng_loop_run_once(e->loop, left);
    }
    return true;
}

qmp_conn *eng_qemu_probe(vmig_engine *e, vmig_accel accel, int *ret_pid, char **ret_dir,
                         vmig_error **errp)
{
    g_autofree char *dir = g_build_filename(e->state_dir, ".probe-XXXXXX", NULL);
    if (!g_mkdtemp(dir)) {
        vmig_set_error_errno(errp, errno, "creating %s", dir);
        return NULL;
    }
    g_autofree char *sock = g_build_filename(dir, "qmp.sock", NULL);
    g_autofree char *log = g_build_filename(dir, "qemu.log", NULL);
    g_autofree char *chardev = g_strdup_printf("socket,id=m,path=%s,server=on,wait=off", sock);
    const char *const words[] = {e->qemu, "-machine", "none", "-accel", eng_accel_name(accel),
                                 "-nodefaults", "-display", "none", "-chardev", chardev,
                                 "-mon", "chardev=m,mode=control"};
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    for (size_t i = 0; i < G_N_ELEMENTS(words); i++) {
        g_ptr_array_add(argv, g_strdup(words[i]));
    }
    g_ptr_array_add(argv, NULL);
    g_autofree char *pname = g_strdup("probe");
    eng_vm probe = {.e = e, .name = pname, .dir = dir};
    probe.pid = spawn_detached((char **)argv->pdata, log, errp);
    qmp_conn *c = NULL;
    if (probe.pid && wait_started(&probe, errp)) {
        c = qmp_conn_open_unix(sock, ENG_CONNECT_TIMEOUT_MS, errp);
    }
    if (!c) {
        eng_qemu_probe_end(probe.pid, dir);
        return NULL;
    }
    *ret_pid = probe.pid;
    *ret_dir = g_steal_pointer(&dir);
    return c;
}

void eng_qemu_probe_end(int pid, const char *dir)
{
    if (pid > 0 && pid_alive(pid)) {
        kill(pid, SIGKILL);
        pid_wait_gone(pid, 5000);
    }
    eng_vm_remove_dir(dir);
}

/* ---- public -------------------------------------------------------------------------------- */

bool vmig_vm_start(vmig_engine *e, const vmig_spec *spec, vmig_accel accel, vmig_error **errp)
{
    g_autofree char *dir = eng_vm_dir(e->state_dir, spec->name);
    g_autoptr(eng_vm) vm = eng_vm_launch(e, spec, dir, accel, false, errp);
    if (!vm) {
        vmig_prefix_error(errp, "starting VM '%s': ", spec->name);
        return false;
    }
    return true;
}

bool vmig_vm_stop(vmig_engine *e, const char *name, int timeout_ms, vmig_error **errp)
{
    if (!eng_spec_name_valid(name) && !g_str_has_suffix(name, ENG_INCOMING_SUFFIX)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return false;
    }
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", name, e->state_dir);
        return false;
    }
    vmig_error *err = NULL;
    g_autoptr(eng_vm) vm = eng_vm_find(e, dir, &err);
    if (!vm) {
        /* Already dead or half-created: cleaning up is all that is left to do. */
        eng_log(e, VMIG_LOG_INFO, "%s", vmig_error_message(err));
        vmig_error_free(err);
        eng_vm_remove_dir(dir);
        return true;
    }
    if (!eng_vm_connect(vm, NULL, NULL, &err)) {
        eng_log(e, VMIG_LOG_WARN, "%s: stopping by signal", vmig_error_message(err));
        vmig_error_free(err);
    }
    if (!eng_vm_kill(vm, timeout_ms, errp)) {
        return false;
    }
    eng_vm_remove_dir(dir);
    return true;
}

static void fill_info(vmig_engine *e, const char *dir, const char *entry, vmig_vm_info *info)
{
    memset(info, 0, sizeof(*info));
    g_strlcpy(info->name, entry, sizeof(info->name));
    g_autofree char *sock = g_build_filename(dir, "qmp.sock", NULL);
    g_strlcpy(info->qmp_path, sock, sizeof(info->qmp_path));
    int pid = read_pidfile(dir);
    if (!pid_alive(pid)) {
        g_strlcpy(info->status, "dead", sizeof(info->status));
        return;
    }
    info->pid = pid;
    g_autoptr(qmp_conn) c = qmp_conn_open_unix(sock, 1000, NULL);
    g_autoptr(json_object) st = c ? qmp_conn_call(c, "query-status", NULL, 0, 1000, NULL) : NULL;
    json_object *v = NULL;
    if (st && json_object_object_get_ex(st, "status", &v)) {
        g_strlcpy(info->status, json_object_get_string(v), sizeof(info->status));
    } else {
        /* QEMU serves one monitor client at a time: a migration may hold it. */
        g_strlcpy(info->status, "busy", sizeof(info->status));
    }
    (void)e;
}

static gint cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int vmig_vm_list(vmig_engine *e, vmig_vm_info *out, int max, vmig_error **errp)
{
    DIR *d = opendir(e->state_dir);
    if (!d) {
        vmig_set_error_errno(errp, errno, "%s", e->state_dir);
        return -1;
    }
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    struct dirent *de;
    while ((de = readdir(d))) {
        g_autofree char *spec = g_build_filename(e->state_dir, de->d_name, "spec.json", NULL);
        if (de->d_name[0] != '.' && g_file_test(spec, G_FILE_TEST_EXISTS)) {
            g_ptr_array_add(names, g_strdup(de->d_name));
        }
    }
    closedir(d);
    g_ptr_array_sort(names, cmp_str);
    for (guint i = 0; i < names->len && (int)i < max; i++) {
        const char *n = g_ptr_array_index(names, i);
        g_autofree char *dir = eng_vm_dir(e->state_dir, n);
        fill_info(e, dir, n, &out[i]);
    }
    return (int)names->len;
}
