#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "ring/ring.h"

void eng_log(vmig_engine *e, vmig_log_level level, const char *fmt, ...)
{
    if (!e->log_fn) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    e->log_fn(e->log_opaque, level, msg);
}

static char *default_state_dir(void)
{
    const char *env = g_getenv("VMIG_STATE_DIR");
    if (env && *env) {
        return g_strdup(env);
    }
    const char *rt = g_getenv("XDG_RUNTIME_DIR");
    if (rt && *rt && g_file_test(rt, G_FILE_TEST_IS_DIR)) {
        return g_build_filename(rt, "vmigrate", NULL);
    }
    return g_strdup_printf("/tmp/vmigrate-%u", (unsigned)getuid());
}

#define FREE_DRAIN_MS 30000 /* vmig_engine_free(): the longest wait for jobs to roll back */

const char *vmig_version(void)
{
    return VMIG_VERSION_STRING;
}

static void cancel_read(void *opaque, int res);

static void arm_cancel(vmig_engine *e)
{
    int64_t op = ring_read(e->ring, e->cancel_fd, &e->cancel_buf, sizeof(e->cancel_buf), -1,
                           cancel_read, e);
    e->cancel_op = op > 0 ? op : 0;
}

/* vmig_engine_cancel() wrote the eventfd (perhaps from a signal handler): cancel every job. */
static void cancel_read(void *opaque, int res)
{
    vmig_engine *e = opaque;
    e->cancel_op = 0;
    if (res == -ECANCELED) {
        return;
    }
    arm_cancel(e);
    if (!e->cancel_requested) {
        return;
    }
    e->cancel_requested = 0;
    g_autoptr(GPtrArray) jobs = g_ptr_array_copy(e->jobs, NULL, NULL);
    for (guint i = 0; i < jobs->len; i++) {
        vmig_job_cancel(g_ptr_array_index(jobs, i));
    }
}

bool eng_state_dir_check(const char *dir, vmig_error **errp)
{
    struct stat st;
    if (lstat(dir, &st) < 0) {
        vmig_set_error_errno(errp, errno, "state directory %s", dir);
        return false;
    }
    const char *why = S_ISLNK(st.st_mode)                ? "is a symbolic link"
                      : !S_ISDIR(st.st_mode)             ? "is not a directory"
                      : st.st_mode & (S_IWGRP | S_IWOTH) ? "may be written by others"
                                                         : NULL;
    if (!why && st.st_uid != geteuid()) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "state directory %s is owned by uid %u, not by this "
                       "user (uid %u): whoever owns it controls the VMs' "
                       "monitors, pid files and specs; give a directory of "
                       "your own with --state-dir or $VMIG_STATE_DIR",
                       dir, (unsigned)st.st_uid, (unsigned)geteuid());
        return false;
    }
    if (why) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "state directory %s %s (mode %04o): another user "
                       "could plant files or links there that vmigrate "
                       "would trust; give a directory only you may write "
                       "with --state-dir or $VMIG_STATE_DIR",
                       dir, why, (unsigned)(st.st_mode & 07777));
        return false;
    }
    return true;
}

vmig_engine *vmig_engine_new(const char *state_dir, vmig_error **errp)
{
    g_autofree char *dir = state_dir ? g_strdup(state_dir) : default_state_dir();
    if (g_mkdir_with_parents(dir, 0700) < 0) {
        vmig_set_error_errno(errp, errno, "state directory %s", dir);
        return NULL;
    }
    /* Checked as it is, before it is resolved: a link must not pass for the directory. */
    if (!eng_state_dir_check(dir, errp)) {
        return NULL;
    }
    vmig_engine *e = g_new0(vmig_engine, 1);
    e->state_dir = g_canonicalize_filename(dir, NULL);
    const char *q = g_getenv("VMIG_QEMU");
    e->qemu = g_strdup(q && *q ? q : VMIG_DEFAULT_QEMU);
    e->cancel_fd = -1;
    e->jobs = g_ptr_array_new();
    e->ring = ring_new(RING_BACKEND_AUTO, errp);
    if (!e->ring) {
        vmig_engine_free(e);
        return NULL;
    }
    e->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->cancel_fd < 0) {
        vmig_set_error_errno(errp, errno, "eventfd");
        vmig_engine_free(e);
        return NULL;
    }
    arm_cancel(e);
    return e;
}

static bool no_jobs_run(void *opaque)
{
    vmig_engine *e = opaque;
    for (guint i = 0; i < e->jobs->len; i++) {
        if (!vmig_job_finished(g_ptr_array_index(e->jobs, i))) {
            return false;
        }
    }
    return true;
}

static void drain_timer(void *opaque, int res)
{
    *(bool *)opaque = true;
    (void)res;
}

static bool drained_or_late(void *opaque)
{
    void **p = opaque;
    return no_jobs_run(p[0]) || *(bool *)p[1];
}

void vmig_engine_free(vmig_engine *e)
{
    if (!e) {
        return;
    }
    if (e->ring && e->jobs->len) {
        /* Running jobs roll back first: freeing the engine must not lose a VM. */
        g_autoptr(GPtrArray) jobs = g_ptr_array_copy(e->jobs, NULL, NULL);
        for (guint i = 0; i < jobs->len; i++) {
            vmig_job_cancel(g_ptr_array_index(jobs, i));
        }
        bool late = false;
        int64_t t = ring_timer(e->ring, FREE_DRAIN_MS, drain_timer, &late);
        void *p[2] = {e, &late};
        eng_run_until(e, drained_or_late, p, NULL);
        ring_detach(e->ring, t, NULL, NULL);
        if (!no_jobs_run(e)) {
            eng_log(e, VMIG_LOG_ERROR, "freeing the engine while a job still runs");
        }
    }
    if (e->jobs) {
        eng_jobs_detach(e);
    }
    ring_free(e->ring);
    if (e->cancel_fd >= 0) {
        close(e->cancel_fd);
    }
    if (e->jobs) {
        g_ptr_array_free(e->jobs, TRUE);
    }
    g_free(e->qemu);
    g_free(e->state_dir);
    g_free(e);
}

int vmig_engine_fd(vmig_engine *e)
{
    return ring_fd(e->ring);
}

int vmig_engine_dispatch(vmig_engine *e, vmig_error **errp)
{
    int r = ring_dispatch(e->ring, 0);
    if (r < 0 && r != -EINTR) {
        vmig_set_error_errno(errp, -r, "the engine's event loop (%s)",
                             ring_backend_reason(e->ring));
        return -1;
    }
    return r < 0 ? 0 : r;
}

int vmig_engine_timeout_ms(vmig_engine *e)
{
    return ring_timeout_ms(e->ring);
}

bool eng_run_until(vmig_engine *e, bool (*pred)(void *), void *opaque, vmig_error **errp)
{
    while (!pred(opaque)) {
        int r = ring_dispatch(e->ring, -1);
        if (r < 0 && r != -EINTR) {
            vmig_set_error_errno(errp, -r, "the engine's event loop (%s)",
                                 ring_backend_reason(e->ring));
            return false;
        }
    }
    return true;
}

typedef struct run_wait {
    vmig_engine *e;
    bool expired;
    bool until_idle;
} run_wait;

static bool run_over(void *opaque)
{
    run_wait *w = opaque;
    return w->expired || (w->until_idle && no_jobs_run(w->e));
}

int vmig_engine_run(vmig_engine *e, int timeout_ms, vmig_error **errp)
{
    run_wait w = {.e = e, .until_idle = timeout_ms < 0};
    int64_t t = timeout_ms >= 0 ? ring_timer(e->ring, timeout_ms, drain_timer, &w.expired) : 0;
    bool ok = eng_run_until(e, run_over, &w, errp);
    if (t > 0) {
        ring_detach(e->ring, t, NULL, NULL);
    }
    return ok ? 0 : -1;
}

const char *vmig_engine_state_dir(const vmig_engine *e)
{
    return e->state_dir;
}

void vmig_engine_set_log(vmig_engine *e, vmig_log_fn fn, void *opaque)
{
    e->log_fn = fn;
    e->log_opaque = opaque;
    if (fn && !e->loop_logged) {
        e->loop_logged = true; /* said once, to the first log sink */
        eng_log(e, VMIG_LOG_INFO, "event loop: %s", ring_backend_reason(e->ring));
    }
}

const char *vmig_engine_event_loop(const vmig_engine *e)
{
    return ring_backend_reason(e->ring);
}

void vmig_engine_set_qemu(vmig_engine *e, const char *qemu_binary)
{
    g_free(e->qemu);
    e->qemu = g_strdup(qemu_binary);
}

const char *vmig_engine_qemu(const vmig_engine *e)
{
    return e->qemu;
}

int vmig_engine_qemu_version(vmig_engine *e, char **ret_package, vmig_error **errp)
{
    int pid = 0;
    g_autofree char *dir = NULL;
    eng_qemu_version v;
    qmp_conn *c = eng_qemu_probe(e, VMIG_ACCEL_TCG, &pid, &dir, errp);
    bool ok = c && eng_qemu_version_query(c, &v, errp);
    qmp_conn_free(c);
    if (dir) {
        eng_qemu_probe_end(pid, dir);
    }
    if (!ok) {
        vmig_prefix_error(errp, "asking %s its version: ", e->qemu);
        return -1;
    }
    if (ret_package) {
        *ret_package = strdup(v.package);
    }
    return eng_qemu_version_code(&v);
}

void vmig_engine_cancel(vmig_engine *e)
{
    /* Only async-signal-safe calls here. */
    e->cancel_requested = 1;
    uint64_t one = 1;
    ssize_t w = write(e->cancel_fd, &one, sizeof(one));
    (void)w;
}

void vmig_migrate_opts_init_sized(vmig_migrate_opts *o, size_t size)
{
    vmig_migrate_opts d = {.size = (uint32_t)size, .live = true, .dest = "local"};
    /* Only what the caller's struct has room for: an older program's is smaller. */
    memcpy(o, &d, MIN(size, sizeof(d)));
}

const char *vmig_guest_kernel(void)
{
    static char found[4096];
    const char *env = g_getenv("VMIG_GUEST");
    if (env && *env) {
        g_strlcpy(found, env, sizeof(found));
        return g_file_test(found, G_FILE_TEST_IS_REGULAR) ? found : NULL;
    }
    g_autofree char *exe = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *exedir = exe ? g_path_get_dirname(exe) : g_strdup(".");
    g_autoptr(GPtrArray) candidates = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(candidates, g_build_filename(exedir, "guest", "vmig-guest.elf", NULL));
    g_ptr_array_add(candidates, g_build_filename(exedir, "..", "guest", "vmig-guest.elf", NULL));
    g_ptr_array_add(candidates,
                    g_build_filename(exedir, "..", "share", "vmigrate", "vmig-guest.elf", NULL));
    g_ptr_array_add(candidates, g_build_filename(VMIG_DATADIR, "vmig-guest.elf", NULL));
    /* build tree (build/vmigrate, build/tests/...), then <prefix>/bin -> <prefix>/share */
    for (guint i = 0; i < candidates->len; i++) {
        const char *p = g_ptr_array_index(candidates, i);
        if (g_file_test(p, G_FILE_TEST_IS_REGULAR)) {
            g_autofree char *canon = g_canonicalize_filename(p, NULL);
            g_strlcpy(found, canon, sizeof(found));
            return found;
        }
    }
    return NULL;
}
