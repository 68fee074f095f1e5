/*
 * VM instances.  Each running VM owns a directory under a state directory:
 *   spec.json  the effective spec (with the UUID a destination must reuse)
 *   accel      tcg or kvm
 *   qmp.sock   the engine's QMP monitor   qmp-read.sock  the readers' monitor (vm list)
 * and the process that starts a QEMU talks to it on a monitor of its own, a socket already
 * connected (fd 4, LAUNCH_MON_FD): it never connects to a listening monitor while QEMU starts.
 *   qemu.pid   written by QEMU            job.json       a job's state, while one runs
 *   qemu.log   QEMU's stdout/stderr       serial.log     the guest's COM1
 * QEMU is started by a double fork so it is never our child (no zombies for the embedding
 * program to reap) and not daemonized by QEMU itself, because -daemonize would send its
 * stderr to /dev/null, and QEMU 7.2's destination writes why an incoming migration failed
 * there just before it exits.
 *
 * A destination QEMU is guarded until the switchover: the first child also forks a small guard
 * process that holds a pidfd of QEMU and one end of a lifeline socket whose other end only
 * the engine holds.  If the engine dies (or lets go of the VM without releasing it), the
 * lifeline reads end-of-file and the guard kills QEMU; eng_vm_release_guard() sends one byte
 * first and the guard just exits.  So a crashed vmigrate leaves no destination behind, and the
 * source, whose migration then fails, goes on running.
 *
 * Starting and stopping are asynchronous: the launch monitor's handshake, and timers on the
 * engine's ring that look for the process to be gone; nothing here sleeps.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"
#include "jobctl.h"

#define LAUNCH_STEP_MS 5 /* QEMU opens its monitor ~30 ms after exec */
#define KILL_STEP_MS 10
#define PROBE_PREFIX ".probe-"
/* The launcher's own monitor: a connected socket QEMU gets as this fd, not a listening one.
 * A client that connects to a listening monitor while QEMU starts can race QEMU's main
 * thread into a blocking accept4() on it, and that QEMU never runs a command again (QEMU
 * before commit e714f1a3d4, January 2026: 7.2 and 10.0 both).  With the first connection
 * handed over already made, there is no accept to race; the listening monitors are for
 * later clients, which come once QEMU has answered here. */
#define LAUNCH_MON_FD 4
#define KILL_GRACE_MS 5000 /* after SIGKILL */
#define EXIT_GRACE_MS 1000 /* monitor closed at start: the process is about to be gone */

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
    /* Atomic (a temporary file, then rename) but not durable: g_file_set_contents() fsyncs
     * before replacing a file, and this runs inside dispatch, every 250 ms for a job's file. */
    g_autoptr(GError) gerr = NULL;
    if (!g_file_set_contents_full(path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, &gerr)) {
        vmig_set_error(errp, VMIG_E_IO, "%s", gerr->message);
        return false;
    }
    return true;
}

/* Alive means: the process exists and has not let go of its memory.  A zombie leader is not
 * enough: after SIGKILL, QEMU's main thread can be a zombie while its other threads still
 * unmap guest RAM and hold its files, and /proc/PID/cmdline stays readable until the last
 * thread is gone. */
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
    if (!rp || rp[1] != ' ') {
        return false;
    }
    if (rp[2] != 'Z' && rp[2] != 'X') {
        return true;
    }
    g_snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
    f = fopen(path, "re");
    if (!f) {
        return false;
    }
    n = fread(buf, 1, 1, f);
    fclose(f);
    return n > 0;
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
    /* Never through a symlink: a planted link must not make us delete files elsewhere. */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        struct stat st;
        if (lstat(dir, &st) == 0 && S_ISLNK(st.st_mode)) {
            unlink(dir);
        }
        return;
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            unlinkat(dirfd(d), de->d_name, 0); /* a subdirectory is left: rmdir then fails */
        }
    }
    closedir(d);
    rmdir(dir);
}

void eng_vm_disconnect(eng_vm *vm)
{
    g_clear_pointer(&vm->qmp, qmp_conn_free);
}

void eng_vm_free(eng_vm *vm)
{
    if (!vm) {
        return;
    }
    eng_vm_disconnect(vm);
    if (vm->guard_fd >= 0) {
        close(vm->guard_fd); /* not released: the guard kills this QEMU */
    }
    vmig_spec_free(vm->spec);
    g_free(vm->name);
    g_free(vm->dir);
    g_free(vm->remote_token);
    g_free(vm->remote_uri);
    g_free(vm);
}

bool eng_vm_release_guard(eng_vm *vm, vmig_error **errp)
{
    if (vm->guard_fd < 0) {
        return true;
    }
    ssize_t w;
    do {
        w = send(vm->guard_fd, "R", 1, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    int err = errno;
    close(vm->guard_fd);
    vm->guard_fd = -1;
    if (w != 1) {
        vmig_set_error_errno(errp, err, "releasing the guard of VM '%s'", vm->name);
        return false;
    }
    return true;
}

bool eng_vm_alive(const eng_vm *vm)
{
    if (vm->remote_token) { /* the agent's: its monitor connection is what we know of it */
        return vm->qmp && qmp_conn_alive(vm->qmp);
    }
    return pid_alive(vm->pid);
}

char *eng_vm_log_tail(const eng_vm *vm)
{
    if (vm->remote_token) {
        return g_strdup(""); /* on the agent's host: the agent logs it */
    }
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
    if (s->qemu && access(s->qemu, X_OK) < 0) {
        vmig_set_error_errno(errp, errno, "qemu %s", s->qemu);
        return false;
    }
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

static ssize_t read_full(int fd, void *buf, size_t len)
{
    ssize_t r;
    do {
        r = read(fd, buf, len);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* Closes every descriptor from @first up.  In the grandchild, before exec: nothing the
 * embedding program holds open reaches QEMU but stdio, fd 3, the pipe that reports an exec
 * failure (close-on-exec), and fd 4, the launcher's monitor connection (LAUNCH_MON_FD). */
static void close_from(unsigned first)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, ~0U, 0U) == 0) {
        return;
    }
#endif
    for (int fd = (int)first; fd < 65536; fd++) {
        close(fd);
    }
}

/* The guard process (see the top of this file): fd 0 is the lifeline, fd 1 a pidfd of QEMU
 * (or -1 without pidfd support, then @qemu's pid is signalled).  Only async-signal-safe calls:
 * it is a fork of a possibly threaded program. */
static _Noreturn void guard_main(int lifeline, int qemu)
{
    int pidfd = -1;
#ifdef SYS_pidfd_open
    pidfd = (int)syscall(SYS_pidfd_open, qemu, 0);
#endif
    if (pidfd >= 0 && pidfd < 2) { /* stdin or stdout were closed: keep it clear of 0 and 1 */
        pidfd = fcntl(pidfd, F_DUPFD, 2);
    }
    if (lifeline == 1) {
        lifeline = fcntl(lifeline, F_DUPFD, 2);
    }
    if (dup2(lifeline, 0) < 0) {
        _exit(1);
    }
    if (pidfd >= 0 && dup2(pidfd, 1) < 0) {
        _exit(1);
    }
    close_from(pidfd >= 0 ? 2U : 1U);
    setsid(); /* a terminal's ^C to the engine's group must not take the guard down */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_NAME, "vmigrate-guard", 0, 0, 0);
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN},
                            {.fd = pidfd >= 0 ? 1 : -1, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) { /* banned-ok: the guard, a forked child */
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (fds[1].revents) {
            _exit(0); /* QEMU is gone */
        }
        if (fds[0].revents) {
            char c = 0;
            ssize_t r = read(0, &c, 1);
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r == 1 && c == 'R') {
                _exit(0); /* released: QEMU holds the VM now */
            }
            break; /* end of file: the engine is gone */
        }
    }
#ifdef SYS_pidfd_send_signal
    if (pidfd >= 0 && syscall(SYS_pidfd_send_signal, 1, SIGKILL, NULL, 0) == 0) {
        _exit(0);
    }
#endif
    kill(qemu, SIGKILL);
    _exit(0);
}

/* Forks twice; the grandchild execs QEMU.  With @lifeline >= 0 (the guard's end of its
 * lifeline), the first child also forks the guard before it exits.  Returns QEMU's pid, or 0
 * with an error. */
static int spawn_detached(char **argv, const char *logpath, int lifeline, int mon,
                          vmig_error **errp)
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
            int out = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0600);
            if (in < 0 || out < 0) {
                int err = errno;
                ssize_t w = write(p[1], &err, sizeof(err));
                (void)w;
                _exit(127);
            }
            /* out of the way of the numbers it is given below */
            int mon_hi = fcntl(mon, F_DUPFD, LAUNCH_MON_FD + 1);
            dup2(in, 0);
            dup2(out, 1);
            dup2(out, 2);
            int keep = dup2(p[1], 3); /* the pipe survives close_from() as fd 3 */
            if (mon_hi < 0 || dup2(mon_hi, LAUNCH_MON_FD) != LAUNCH_MON_FD) {
                int err = errno;
                ssize_t w = write(p[1], &err, sizeof(err));
                (void)w;
                _exit(127);
            }
            close_from(LAUNCH_MON_FD + 1);
            if (keep == 3) {
                fcntl(3, F_SETFD, FD_CLOEXEC);
            }
            signal(SIGPIPE, SIG_DFL);
            execvp(argv[0], argv);
            int err = errno;
            ssize_t w = write(3, &err, sizeof(err));
            (void)w;
            _exit(127);
        }
        if (gc > 0 && lifeline >= 0) {
            pid_t g = fork();
            if (g == 0) {
                guard_main(lifeline, gc);
            }
            if (g < 0) {
                kill(gc, SIGKILL); /* unguarded, it could outlive a crash: do not run it */
                gc = -1;
            }
        }
        int32_t pid = gc > 0 ? gc : 0;
        ssize_t w = write(p[1], &pid, sizeof(pid));
        (void)w;
        _exit(0);
    }
    close(p[1]);
    while (waitpid(child, NULL, 0) < 0 && errno == EINTR) {
    }
    int32_t pid = 0;
    int err = 0;
    ssize_t r = read_full(p[0], &pid, sizeof(pid));
    if (r == (ssize_t)sizeof(pid) && pid > 0 &&
        read_full(p[0], &err, sizeof(err)) == (ssize_t)sizeof(err)) {
        vmig_set_error_errno(errp, err, "cannot run %s", argv[0]);
        pid = 0;
    } else if (r != (ssize_t)sizeof(pid) || pid <= 0) {
        vmig_set_error(errp, VMIG_E_IO, "fork failed while starting %s", argv[0]);
        pid = 0;
    }
    close(p[0]);
    return pid;
}

static bool prepare_dir(const char *dir, const char *name, vmig_error **errp)
{
    struct stat st;
    if (lstat(dir, &st) == 0) {
        int pid = S_ISDIR(st.st_mode) ? read_pidfile(dir) : 0;
        if (pid_alive(pid) && pid_is_instance(pid, name)) {
            vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is already running (pid %d, %s)", name, pid,
                           dir);
            return false;
        }
        eng_vm_remove_dir(dir); /* left over from a VM that died */
    }
    if (mkdir(dir, 0700) < 0) {
        vmig_set_error_errno(errp, errno, "creating %s", dir);
        return false;
    }
    return true;
}

/* ---- starting ------------------------------------------------------------------------------ */

typedef struct launcher {
    vmig_engine *e;
    eng_vm *vm;
    int mon; /* our end of the launch monitor, until it is attached */
    eng_launch_fn done;
    void *opaque;
    qmp_event_fn ev;
    void *ev_opaque;
    int64_t timer;
    int64_t deadline;
    vmig_error *err; /* the monitor failed: waiting for the process to be gone */
} launcher;

static void launch_tick(void *opaque, int res);
static bool connect_within(eng_vm *vm, int timeout_ms, qmp_event_fn ev, void *opaque,
                           qmp_ready_fn ready, void *ready_opaque, vmig_error **errp);

static void launch_arm(launcher *l, int ms)
{
    int64_t op = ring_timer(l->e->ring, ms, launch_tick, l);
    l->timer = op > 0 ? op : 0;
}

static void launch_finish(launcher *l, vmig_error *err)
{
    if (l->mon >= 0) {
        close(l->mon);
    }
    if (err) {
        if (pid_alive(l->vm->pid) && pid_is_instance(l->vm->pid, l->vm->name)) {
            kill(l->vm->pid, SIGKILL);
        }
        eng_vm_remove_dir(l->vm->dir);
        g_clear_pointer(&l->vm, eng_vm_free);
    }
    l->done(l->opaque, g_steal_pointer(&l->vm), err);
    vmig_error_free(err);
    vmig_error_free(l->err);
    g_free(l);
}

static vmig_error *exited_error(const eng_vm *vm)
{
    g_autofree char *tail = eng_vm_log_tail(vm);
    vmig_error *err = NULL;
    vmig_set_error(&err, VMIG_E_QEMU, "QEMU exited at start: %s", *tail ? tail : "(no output)");
    return err;
}

static void launch_status(void *opaque, json_object *ret, const vmig_error *err)
{
    launcher *l = opaque;
    const char *status = NULL;
    vmig_error *perr = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    if (err || !vmig_json_read(ret, fields, &status, "query-status", &perr)) {
        vmig_error_free(perr);
        /* the monitor broke: QEMU is on its way out, and its log says why */
        l->err = err ? vmig_error_copy(err) : vmig_error_copy(perr);
        l->deadline = vmig_now_ms() + EXIT_GRACE_MS;
        launch_arm(l, KILL_STEP_MS);
        return;
    }
    launch_finish(l, NULL);
}

static void launch_ready(void *opaque, const vmig_error *err)
{
    launcher *l = opaque;
    if (err) {
        l->err = vmig_error_copy(err);
        l->deadline = vmig_now_ms() + EXIT_GRACE_MS;
        launch_arm(l, KILL_STEP_MS);
        return;
    }
    qmp_call(l->vm->qmp, "query-status", NULL, 0, ENG_QMP_TIMEOUT_MS, launch_status, l);
}

static void launch_tick(void *opaque, int res)
{
    launcher *l = opaque;
    l->timer = 0;
    (void)res;
    if (!pid_alive(l->vm->pid)) {
        eng_vm_disconnect(l->vm);
        launch_finish(l, exited_error(l->vm));
        return;
    }
    if (l->err) { /* the monitor failed and the process stays: report the monitor's error */
        if (vmig_ms_left(l->deadline) == 0) {
            launch_finish(l, g_steal_pointer(&l->err));
        } else {
            launch_arm(l, KILL_STEP_MS);
        }
        return;
    }
    if (vmig_ms_left(l->deadline) == 0) {
        vmig_error *err = NULL;
        vmig_set_error(&err, VMIG_E_TIMEOUT, "QEMU did not open its monitor within %d ms",
                       ENG_START_TIMEOUT_MS);
        launch_finish(l, err);
        return;
    }
    if (l->mon >= 0) {
        int left = MAX(vmig_ms_left(l->deadline), ENG_CONNECT_TIMEOUT_MS);
        vmig_error *err = NULL;
        g_autofree char *label = g_strdup_printf("%s monitor (launch)", l->vm->name);
        g_autoptr(qmp_conn) c = qmp_conn_new(l->vm->e->ring, label);
        int fd = l->mon;
        l->mon = -1;
        if (!qmp_conn_attach_fd(c, fd, &err)) {
            launch_finish(l, err);
            return;
        }
        qmp_conn_set_event_cb(c, l->ev, l->ev_opaque);
        eng_vm_disconnect(l->vm);
        l->vm->qmp = g_steal_pointer(&c);
        /* an exit closes the socket, and the handshake's deadline is the start's */
        qmp_conn_start(l->vm->qmp, left, launch_ready, l);
    }
}

static eng_vm *new_instance(vmig_engine *e, const vmig_spec *spec, const char *dir,
                            vmig_accel accel)
{
    eng_vm *vm = g_new0(eng_vm, 1);
    vm->e = e;
    vm->name = g_strdup(spec ? spec->name : "probe");
    vm->dir = g_strdup(dir);
    vm->spec = spec ? eng_spec_copy(spec) : NULL;
    vm->accel = accel;
    vm->guard_fd = -1;
    return vm;
}

/* The argv of a throwaway QEMU with no machine, to ask things of. */
static GPtrArray *probe_argv(const char *qemu, const char *dir, vmig_accel accel)
{
    g_autofree char *chardev = g_strdup_printf("socket,id=m,path=%s/qmp.sock,server=on,wait=off",
                                               dir);
    const char *const words[] = {qemu,
                                 "-name",
                                 "guest=probe",
                                 "-machine",
                                 "none",
                                 "-accel",
                                 eng_accel_name(accel),
                                 "-nodefaults",
                                 "-display",
                                 "none",
                                 "-chardev",
                                 chardev,
                                 "-mon",
                                 "chardev=m,mode=control"};
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    for (size_t i = 0; i < G_N_ELEMENTS(words); i++) {
        g_ptr_array_add(argv, g_strdup(words[i]));
    }
    g_ptr_array_add(argv, NULL);
    return argv;
}

/* The launcher's monitor, on the connected socket QEMU gets as LAUNCH_MON_FD. */
static void add_launch_monitor(GPtrArray *argv)
{
    g_ptr_array_remove_index(argv, argv->len - 1); /* the NULL */
    g_ptr_array_add(argv, g_strdup("-chardev"));
    g_ptr_array_add(argv, g_strdup_printf("socket,id=vmig-launch,fd=%d", LAUNCH_MON_FD));
    g_ptr_array_add(argv, g_strdup("-mon"));
    g_ptr_array_add(argv, g_strdup("chardev=vmig-launch,mode=control"));
    g_ptr_array_add(argv, NULL);
}

/* Creates the directory and spawns QEMU; the VM (owned) and our end of its launch monitor
 * (@ret_mon), or NULL with an error. */
static eng_vm *spawn_instance(vmig_engine *e, const eng_launch_req *req, int *ret_mon,
                              vmig_error **errp)
{
    g_autofree char *dir = NULL;
    if (req->probe) {
        eng_clean_stale_probes(e);
        g_autofree char *base = g_strdup_printf("%s%d-XXXXXX", PROBE_PREFIX, (int)getpid());
        dir = g_build_filename(e->state_dir, base, NULL);
        if (!g_mkdtemp(dir)) {
            vmig_set_error_errno(errp, errno, "creating %s", dir);
            return NULL;
        }
    } else {
        dir = g_strdup(req->dir);
        if (!check_spec_files(req->spec, errp) || !prepare_dir(dir, req->spec->name, errp)) {
            return NULL;
        }
    }
    g_autoptr(eng_vm) vm = new_instance(e, req->probe ? NULL : req->spec, dir, req->accel);
    g_autoptr(GPtrArray) argv = NULL;
    if (req->probe) {
        argv = probe_argv(req->qemu ? req->qemu : e->qemu, dir, req->accel);
    } else {
        if (!vm->spec->uuid) {
            vm->spec->uuid = g_uuid_string_random();
        }
        g_autofree char *json = vmig_spec_to_json(vm->spec);
        g_autofree char *spec_path = g_build_filename(dir, "spec.json", NULL);
        g_autofree char *accel_path = g_build_filename(dir, "accel", NULL);
        if (!eng_write_file(spec_path, json, errp) ||
            !eng_write_file(accel_path, eng_accel_name(req->accel), errp)) {
            eng_vm_remove_dir(dir);
            return NULL;
        }
        eng_launch l = {.qemu = vm->spec->qemu ? vm->spec->qemu : e->qemu,
                        .dir = dir,
                        .accel = req->accel,
                        .incoming = req->incoming};
        argv = eng_spec_argv(vm->spec, &l);
    }
    add_launch_monitor(argv);
    g_autofree char *cmdline = g_strjoinv(" ", (char **)argv->pdata);
    g_autofree char *log_path = g_build_filename(dir, "qemu.log", NULL);
    eng_log(e, VMIG_LOG_DEBUG, "starting %s", cmdline);
    int lifeline[2] = {-1, -1};
    /* a socket, not a pipe: a write to a dead guard must not raise SIGPIPE in the caller */
    if (req->guard && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, lifeline) < 0) {
        vmig_set_error_errno(errp, errno, "socketpair");
        eng_vm_remove_dir(dir);
        return NULL;
    }
    int mon[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, mon) < 0) {
        vmig_set_error_errno(errp, errno, "socketpair");
        if (lifeline[0] >= 0) {
            close(lifeline[0]);
            close(lifeline[1]);
        }
        eng_vm_remove_dir(dir);
        return NULL;
    }
    vm->pid = spawn_detached((char **)argv->pdata, log_path, lifeline[0], mon[0], errp);
    close(mon[0]);
    if (lifeline[0] >= 0) {
        close(lifeline[0]);
    }
    vm->guard_fd = lifeline[1];
    if (!vm->pid) {
        close(mon[1]);
        eng_vm_remove_dir(dir);
        return NULL;
    }
    *ret_mon = mon[1];
    return g_steal_pointer(&vm);
}

bool eng_vm_launch(vmig_engine *e, const eng_launch_req *req, eng_launch_fn done, void *opaque,
                   vmig_error **errp)
{
    int mon = -1;
    eng_vm *vm = spawn_instance(e, req, &mon, errp);
    if (!vm) {
        return false;
    }
    launcher *l = g_new0(launcher, 1);
    l->e = e;
    l->vm = vm;
    l->mon = mon;
    l->done = done;
    l->opaque = opaque;
    l->ev = req->ev;
    l->ev_opaque = req->ev_opaque;
    l->deadline = vmig_now_ms() + ENG_START_TIMEOUT_MS;
    launch_arm(l, LAUNCH_STEP_MS);
    return true;
}

/* ---- stopping ------------------------------------------------------------------------------ */

typedef struct killer {
    eng_vm *vm;
    eng_kill_fn done;
    void *opaque;
    int64_t deadline;
    bool killed;
} killer;

static void kill_tick(void *opaque, int res)
{
    killer *k = opaque;
    eng_vm *vm = k->vm;
    (void)res;
    vmig_error *err = NULL;
    if (pid_alive(vm->pid) && vmig_ms_left(k->deadline) == 0) {
        if (k->killed) {
            vmig_set_error(&err, VMIG_E_TIMEOUT, "VM '%s' (pid %d) survived SIGKILL", vm->name,
                           vm->pid);
        } else {
            eng_log(vm->e, VMIG_LOG_WARN, "VM '%s' (pid %d) did not quit in time: killing it",
                    vm->name, vm->pid);
            if (pid_is_instance(vm->pid, vm->name)) {
                kill(vm->pid, SIGKILL);
            }
            k->killed = true;
            k->deadline = vmig_now_ms() + KILL_GRACE_MS;
        }
    }
    if (pid_alive(vm->pid) && !err) {
        ring_timer(vm->e->ring, KILL_STEP_MS, kill_tick, k);
        return;
    }
    eng_vm_disconnect(vm);
    k->done(k->opaque, err);
    vmig_error_free(err);
    g_free(k);
}

void eng_vm_kill(eng_vm *vm, int timeout_ms, eng_kill_fn done, void *opaque)
{
    killer *k = g_new0(killer, 1);
    k->vm = vm;
    k->done = done;
    k->opaque = opaque;
    k->deadline = vmig_now_ms() + timeout_ms;
    if (vm->qmp && qmp_conn_ready(vm->qmp)) {
        /* QEMU may close the socket before its reply to quit arrives: not an error. */
        qmp_conn_set_event_cb(vm->qmp, NULL, NULL);
        qmp_conn_set_closed_cb(vm->qmp, NULL, NULL);
        qmp_call(vm->qmp, "quit", NULL, 0, timeout_ms, NULL, NULL);
    } else if (pid_alive(vm->pid) && pid_is_instance(vm->pid, vm->name)) {
        kill(vm->pid, SIGTERM);
    }
    ring_timer(vm->e->ring, 0, kill_tick, k);
}

void eng_vm_retire(eng_vm *vm, int timeout_ms, eng_kill_fn done, void *opaque)
{
    killer *k = g_new0(killer, 1);
    k->vm = vm;
    k->done = done;
    k->opaque = opaque;
    k->killed = true;
    k->deadline = vmig_now_ms() + MAX(timeout_ms, KILL_GRACE_MS);
    if (vm->qmp) {
        qmp_conn_set_event_cb(vm->qmp, NULL, NULL);
        qmp_conn_set_closed_cb(vm->qmp, NULL, NULL);
    }
    if (pid_alive(vm->pid) && pid_is_instance(vm->pid, vm->name)) {
        kill(vm->pid, SIGKILL);
    }
    ring_timer(vm->e->ring, 0, kill_tick, k);
}

void eng_vm_discard(eng_vm *vm)
{
    if (!vm) {
        return;
    }
    eng_vm_disconnect(vm);
    if (vm->remote_token) { /* the agent stops it, asked or when we go */
        eng_vm_free(vm);
        return;
    }
    if (pid_alive(vm->pid) && pid_is_instance(vm->pid, vm->name)) {
        kill(vm->pid, SIGKILL);
    }
    eng_vm_remove_dir(vm->dir);
    eng_vm_free(vm);
}

/* ---- finding and connecting ------------------------------------------------------------------ */

eng_vm *eng_vm_find(vmig_engine *e, const char *dir, vmig_error **errp)
{
    g_autofree char *spec_path = g_build_filename(dir, "spec.json", NULL);
    g_autofree char *base = g_path_get_basename(dir);
    if (!g_file_test(spec_path, G_FILE_TEST_EXISTS)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", base, e->state_dir);
        return NULL;
    }
    g_autoptr(vmig_spec) spec = vmig_spec_load(spec_path, errp);
    if (!spec) {
        return NULL;
    }
    g_autoptr(eng_vm) vm = new_instance(e, spec, dir, VMIG_ACCEL_TCG);
    g_autofree char *accel_path = g_build_filename(dir, "accel", NULL);
    g_autofree char *accel = NULL;
    if (g_file_get_contents(accel_path, &accel, NULL, NULL)) {
        eng_accel_parse(g_strstrip(accel), &vm->accel);
    }
    vm->pid = read_pidfile(dir);
    if (!pid_alive(vm->pid)) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' is not running (its QEMU is gone; "
                       "'vmigrate vm stop %s' cleans up)",
                       vm->name, vm->name);
        return NULL;
    }
    return g_steal_pointer(&vm);
}

/* With the handshake's deadline: a QEMU that is starting gets what is left of its start
 * budget, since a loaded host can take seconds to bring a monitor up. */
static bool connect_within(eng_vm *vm, int timeout_ms, qmp_event_fn ev, void *opaque,
                           qmp_ready_fn ready, void *ready_opaque, vmig_error **errp)
{
    g_autofree char *sock = g_build_filename(vm->dir, "qmp.sock", NULL);
    g_autofree char *label = g_strdup_printf("%s monitor (%s)", vm->name, sock);
    g_autoptr(qmp_conn) c = qmp_conn_new(vm->e->ring, label);
    if (!qmp_conn_connect_unix(c, sock, errp)) {
        return false;
    }
    qmp_conn_set_event_cb(c, ev, opaque);
    eng_vm_disconnect(vm);
    vm->qmp = g_steal_pointer(&c);
    qmp_conn_start(vm->qmp, timeout_ms, ready, ready_opaque);
    return true;
}

bool eng_vm_connect(eng_vm *vm, qmp_event_fn ev, void *opaque, qmp_ready_fn ready,
                    void *ready_opaque, vmig_error **errp)
{
    return connect_within(vm, ENG_CONNECT_TIMEOUT_MS, ev, opaque, ready, ready_opaque, errp);
}

typedef struct sync_flag {
    bool done;
    vmig_error *err;
} sync_flag;

static void sync_ready(void *opaque, const vmig_error *err)
{
    sync_flag *f = opaque;
    f->done = true;
    f->err = vmig_error_copy(err);
}

static bool flag_done(void *opaque)
{
    return ((sync_flag *)opaque)->done;
}

bool eng_vm_connect_sync(eng_vm *vm, vmig_error **errp)
{
    sync_flag f = {0};
    if (!eng_vm_connect(vm, NULL, NULL, sync_ready, &f, errp) ||
        !eng_run_until(vm->e, flag_done, &f, errp)) {
        return false;
    }
    if (f.err) {
        vmig_propagate_error(errp, f.err);
        return false;
    }
    return true;
}

const char *eng_vm_run_state(eng_vm *vm, char *buf, size_t len, vmig_error **errp)
{
    g_autoptr(json_object) st = qmp_conn_call(vm->qmp, "query-status", NULL, 0, ENG_QMP_TIMEOUT_MS,
                                              errp);
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    if (!st || !vmig_json_read(st, fields, &status, "query-status", errp)) {
        return NULL;
    }
    g_strlcpy(buf, status, len);
    return buf;
}

/* ---- probes ---------------------------------------------------------------------------------- */

typedef struct sync_launch {
    bool done;
    eng_vm *vm;
    vmig_error *err;
} sync_launch;

static void sync_launched(void *opaque, eng_vm *vm, const vmig_error *err)
{
    sync_launch *s = opaque;
    s->done = true;
    s->vm = vm;
    s->err = vmig_error_copy(err);
}

static bool launch_done(void *opaque)
{
    return ((sync_launch *)opaque)->done;
}

eng_vm *eng_vm_launch_sync(vmig_engine *e, const eng_launch_req *req, vmig_error **errp)
{
    sync_launch s = {0};
    if (!eng_vm_launch(e, req, sync_launched, &s, errp) ||
        !eng_run_until(e, launch_done, &s, errp)) {
        return NULL;
    }
    if (s.err) {
        vmig_propagate_error(errp, s.err);
        return NULL;
    }
    return s.vm;
}

qmp_conn *eng_qemu_probe(vmig_engine *e, vmig_accel accel, int *ret_pid, char **ret_dir,
                         vmig_error **errp)
{
    eng_launch_req req = {.accel = accel, .probe = true};
    eng_vm *vm = eng_vm_launch_sync(e, &req, errp);
    if (!vm) {
        return NULL;
    }
    qmp_conn *c = g_steal_pointer(&vm->qmp);
    *ret_pid = vm->pid;
    *ret_dir = g_steal_pointer(&vm->dir);
    eng_vm_free(vm);
    return c;
}

static void sync_killed(void *opaque, const vmig_error *err)
{
    sync_flag *f = opaque;
    f->done = true;
    f->err = vmig_error_copy(err);
}

static bool stop_sync(eng_vm *vm, int timeout_ms, void (*stop)(eng_vm *, int, eng_kill_fn, void *),
                      vmig_error **errp)
{
    sync_flag f = {0};
    stop(vm, timeout_ms, sync_killed, &f);
    if (!eng_run_until(vm->e, flag_done, &f, errp)) {
        return false;
    }
    if (f.err) {
        vmig_propagate_error(errp, f.err);
        return false;
    }
    return true;
}

bool eng_vm_kill_sync(eng_vm *vm, int timeout_ms, vmig_error **errp)
{
    return stop_sync(vm, timeout_ms, eng_vm_kill, errp);
}

bool eng_vm_retire_sync(eng_vm *vm, int timeout_ms, vmig_error **errp)
{
    return stop_sync(vm, timeout_ms, eng_vm_retire, errp);
}

void eng_qemu_probe_end(int pid, const char *dir)
{
    if (pid > 0 && pid_alive(pid) && pid_is_instance(pid, "probe")) {
        kill(pid, SIGKILL);
    }
    eng_vm_remove_dir(dir);
}

/* A probe's directory is named after the engine's process (.probe-PID-XXXXXX): one whose
 * process is gone was left by a vmigrate that died, and its QEMU (if a guard did not already
 * kill it) serves nobody. */
void eng_clean_stale_probes(vmig_engine *e)
{
    DIR *d = opendir(e->state_dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, PROBE_PREFIX, strlen(PROBE_PREFIX)) != 0) {
            continue;
        }
        char *end = NULL;
        long owner = strtol(de->d_name + strlen(PROBE_PREFIX), &end, 10);
        if (owner <= 0 || owner > INT32_MAX || *end != '-' ||
            (kill((pid_t)owner, 0) == 0 || errno != ESRCH)) {
            continue; /* another format, or its engine lives */
        }
        g_autofree char *dir = g_build_filename(e->state_dir, de->d_name, NULL);
        eng_log(e, VMIG_LOG_DEBUG, "removing %s, left by vmigrate pid %ld", dir, owner);
        eng_qemu_probe_end(read_pidfile(dir), dir);
    }
    if (d) {
        closedir(d);
    }
}

/* ---- the start and stop jobs ----------------------------------------------------------------- */

typedef struct vm_job {
    vmig_spec *spec;
    char *name;
    char *dir;
    eng_vm *vm;
    int timeout_ms;
} vm_job;

static void vm_job_free(vmig_job *j)
{
    vm_job *v = j->data;
    eng_vm_free(v->vm);
    vmig_spec_free(v->spec);
    g_free(v->name);
    g_free(v->dir);
    g_free(v);
}

static void vm_job_killed(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    vm_job *v = j->data;
    if (err) {
        eng_log(j->e, VMIG_LOG_WARN, "%s", vmig_error_message(err));
    } else if (v->vm) {
        eng_vm_remove_dir(v->vm->dir);
    }
    eng_job_release(j);
}

static void end_failed(vmig_job *j)
{
    eng_job_end(j,
                vmig_error_code(j->err) == VMIG_E_CANCELLED ? VMIG_JOB_CANCELLED : VMIG_JOB_FAILED);
}

/* A start that failed after QEMU came up (cancelled): it goes again. */
static void start_fail(vmig_job *j)
{
    vm_job *v = j->data;
    eng_job_set_state(j, j->state, VMIG_JOB_ROLLING_BACK);
    if (v->vm) {
        eng_job_hold(j);
        eng_vm_kill(v->vm, 2000, vm_job_killed, j);
    }
    eng_job_then(j, end_failed);
}

static void start_done(vmig_job *j)
{
    eng_job_end(j, VMIG_JOB_COMPLETED);
}

static void started(void *opaque, eng_vm *vm, const vmig_error *err)
{
    vmig_job *j = opaque;
    vm_job *v = j->data;
    v->vm = vm;
    if (err) {
        vmig_error *e = vmig_error_copy(err);
        vmig_prefix_error(&e, "starting VM '%s': ", v->name);
        eng_job_fail(j, e);
    }
    eng_job_release(j);
}

static const eng_job_ops start_ops = {
    .name = "vm-start",
    .what = "starting the VM",
    .fail = start_fail,
    .free = vm_job_free,
};

vmig_job *vmig_vm_start_async(vmig_engine *e, const vmig_spec *spec, vmig_accel accel,
                              vmig_job_done_fn done, void *opaque, vmig_error **errp)
{
    g_autofree char *dir = eng_vm_dir(e->state_dir, spec->name);
    eng_launch_req req = {.spec = spec, .dir = dir, .accel = accel};
    vm_job *v = g_new0(vm_job, 1);
    v->name = g_strdup(spec->name);
    vmig_job *j = eng_job_new(e, VMIG_JOB_VM_START, &start_ops, v, done, opaque);
    eng_job_hold(j);
    if (!eng_job_lock(j, e->state_dir, spec->name, errp) ||
        !eng_vm_launch(e, &req, started, j, errp)) {
        vmig_prefix_error(errp, "starting VM '%s': ", spec->name);
        j->ended = true;
        vmig_job_free(j);
        return NULL;
    }
    eng_job_then(j, start_done);
    return j;
}

static void stop_done(vmig_job *j)
{
    eng_job_end(j, VMIG_JOB_COMPLETED);
}

static void stop_fail(vmig_job *j)
{
    end_failed(j);
}

static void stop_connected(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    vm_job *v = j->data;
    if (err) {
        eng_log(j->e, VMIG_LOG_WARN, "%s: stopping by signal", vmig_error_message(err));
        eng_vm_disconnect(v->vm);
    }
    eng_vm_kill(v->vm, v->timeout_ms, vm_job_killed, j);
}

static bool stop_may_cancel(vmig_job *j)
{
    (void)j;
    return false; /* a quit is on its way */
}

static const eng_job_ops stop_ops = {
    .name = "vm-stop",
    .what = "stopping the VM",
    .fail = stop_fail,
    .free = vm_job_free,
    .may_cancel = stop_may_cancel,
};

vmig_job *vmig_vm_stop_async(vmig_engine *e, const char *name, int timeout_ms,
                             vmig_job_done_fn done, void *opaque, vmig_error **errp)
{
    if (!eng_spec_name_valid(name) && !g_str_has_suffix(name, ENG_INCOMING_SUFFIX)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return NULL;
    }
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    struct stat st;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", name, e->state_dir);
        return NULL;
    }
    vm_job *v = g_new0(vm_job, 1);
    v->name = g_strdup(name);
    v->timeout_ms = timeout_ms;
    vmig_job *j = eng_job_new(e, VMIG_JOB_VM_STOP, &stop_ops, v, done, opaque);
    vmig_error *err = NULL;
    if (!eng_job_lock(j, e->state_dir, name, errp)) {
        j->ended = true;
        vmig_job_free(j);
        return NULL;
    }
    v->vm = eng_vm_find(e, dir, &err);
    if (!v->vm) {
        /* Already dead or half-created: cleaning up is all that is left to do. */
        eng_log(e, VMIG_LOG_INFO, "%s", vmig_error_message(err));
        vmig_error_free(err);
        eng_vm_remove_dir(dir);
        eng_job_then(j, stop_done);
        return j;
    }
    eng_job_hold(j);
    if (!eng_vm_connect(v->vm, NULL, NULL, stop_connected, j, &err)) {
        stop_connected(j, err);
        vmig_error_free(err);
    }
    eng_job_then(j, stop_done);
    return j;
}

/* ---- waiting versions ------------------------------------------------------------------------ */

static bool job_finished(void *opaque)
{
    return vmig_job_finished(opaque);
}

static bool wait_job(vmig_engine *e, vmig_job *j, vmig_error **errp)
{
    if (!j) {
        return false;
    }
    bool ok = eng_run_until(e, job_finished, j, errp);
    if (ok && j->state != VMIG_JOB_COMPLETED) {
        vmig_propagate_error(errp, vmig_error_copy(j->err));
        ok = false;
    }
    vmig_job_free(j);
    return ok;
}

bool vmig_vm_start(vmig_engine *e, const vmig_spec *spec, vmig_accel accel, vmig_error **errp)
{
    return wait_job(e, vmig_vm_start_async(e, spec, accel, NULL, NULL, errp), errp);
}

bool vmig_vm_stop(vmig_engine *e, const char *name, int timeout_ms, vmig_error **errp)
{
    return wait_job(e, vmig_vm_stop_async(e, name, timeout_ms, NULL, NULL, errp), errp);
}

/* ---- listing --------------------------------------------------------------------------------- */

typedef struct list_probe {
    vmig_vm_info *info;
    qmp_conn *c;
    int timeout_ms;
    bool done;
} list_probe;

static void list_status(void *opaque, json_object *ret, const vmig_error *err)
{
    list_probe *p = opaque;
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    if (!err && vmig_json_read(ret, fields, &status, "query-status", NULL)) {
        g_strlcpy(p->info->status, status, sizeof(p->info->status));
    }
    p->done = true;
}

static void list_ready(void *opaque, const vmig_error *err)
{
    list_probe *p = opaque;
    if (err) {
        p->done = true;
        return;
    }
    qmp_call(p->c, "query-status", NULL, 0, p->timeout_ms, list_status, p);
}

/* The job a migration keeps in the VM's directory, while it runs. */
/* The job running on the VM in @dir, from its job file (the fuzzed reader: jobfile.c). */
static void read_job_file(const char *dir, vmig_vm_info *info)
{
    eng_jobfile f;
    if (!eng_jobfile_read(dir, &f, NULL) || eng_jobfile_final(&f)) {
        return;
    }
    g_strlcpy(info->job, f.job, sizeof(info->job));
    g_strlcpy(info->job_state, f.state, sizeof(info->job_state));
    info->job_progress = f.progress < 0 ? 0 : f.progress;
}

static void list_start(vmig_engine *e, const char *name, vmig_vm_info *info, list_probe *p,
                       int timeout_ms)
{
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    g_strlcpy(info->name, name, sizeof(info->name));
    g_autofree char *sock = g_build_filename(dir, "qmp.sock", NULL);
    g_strlcpy(info->qmp_path, sock, sizeof(info->qmp_path));
    p->info = info;
    p->done = true;
    int pid = read_pidfile(dir);
    if (!pid_alive(pid)) {
        g_strlcpy(info->status, "dead", sizeof(info->status));
        return;
    }
    info->pid = pid;
    g_strlcpy(info->status, "busy", sizeof(info->status)); /* until the monitor answers */
    read_job_file(dir, info);
    g_autofree char *rsock = g_build_filename(dir, ENG_READER_SOCK, NULL);
    p->c = qmp_conn_new(e->ring, rsock);
    if (qmp_conn_connect_unix(p->c, rsock, NULL)) {
        p->done = false;
        p->timeout_ms = timeout_ms;
        qmp_conn_start(p->c, timeout_ms, list_ready, p);
    }
}

static gint cmp_str(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct list_wait {
    list_probe *probes;
    guint n;
    int64_t deadline;
} list_wait;

static bool list_done(void *opaque)
{
    list_wait *w = opaque;
    for (guint i = 0; i < w->n; i++) {
        if (!w->probes[i].done) {
            return vmig_ms_left(w->deadline) == 0;
        }
    }
    return true;
}

static void list_deadline(void *opaque, int res)
{
    (void)opaque;
    (void)res; /* wakes eng_run_until to look at the clock */
}

int vmig_vm_list_sized(vmig_engine *e, vmig_vm_info *out, int max, size_t size, int timeout_ms,
                       vmig_error **errp)
{
    if (timeout_ms < 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "vm list: timeout %d ms is negative", timeout_ms);
        return -1;
    }
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
    /* Defined VMs that have no instance directory are shut off. */
    g_autoptr(GHashTable) instances = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < names->len; i++) {
        g_hash_table_add(instances, names->pdata[i]);
    }
    g_autoptr(GPtrArray) defined = eng_def_names(e->state_dir);
    g_autoptr(GHashTable) persistent = g_hash_table_new(g_str_hash, g_str_equal);
    for (guint i = 0; i < defined->len; i++) {
        g_hash_table_add(persistent, defined->pdata[i]);
        if (!g_hash_table_contains(instances, defined->pdata[i])) {
            g_ptr_array_add(names, g_strdup(defined->pdata[i]));
        }
    }
    g_ptr_array_sort(names, cmp_str);
    guint n = MIN(names->len, (guint)MAX(max, 0));
    /* Every monitor is asked at once; one that does not answer in time shows as busy. */
    g_autofree vmig_vm_info *infos = g_new0(vmig_vm_info, MAX(n, 1));
    g_autofree list_probe *probes = g_new0(list_probe, MAX(n, 1));
    for (guint i = 0; i < n; i++) {
        const char *name = g_ptr_array_index(names, i);
        infos[i].persistent = g_hash_table_contains(persistent, name);
        if (!g_hash_table_contains(instances, name)) {
            g_strlcpy(infos[i].name, name, sizeof(infos[i].name));
            g_strlcpy(infos[i].status, "shut off", sizeof(infos[i].status));
            probes[i].done = true;
            continue;
        }
        list_start(e, name, &infos[i], &probes[i], timeout_ms);
    }
    list_wait w = {.probes = probes, .n = n, .deadline = vmig_now_ms() + timeout_ms};
    int64_t timer = ring_timer(e->ring, timeout_ms, list_deadline, NULL);
    bool ok = eng_run_until(e, list_done, &w, errp);
    ring_detach(e->ring, timer, NULL, NULL);
    for (guint i = 0; i < n; i++) {
        qmp_conn_free(probes[i].c);
        memcpy((char *)out + i * size, &infos[i], MIN(size, sizeof(vmig_vm_info)));
    }
    return ok ? (int)names->len : -1;
}
