#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"

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

static void cancel_readable(void *opaque, int fd, int revents)
{
    vmig_engine *e = opaque;
    uint64_t v;
    (void)revents;
    if (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
        e->cancel_requested = 1;
    }
}

vmig_engine *vmig_engine_new(const char *state_dir, vmig_error **errp)
{
    g_autofree char *dir = state_dir ? g_strdup(state_dir) : default_state_dir();
    if (g_mkdir_with_parents(dir, 0700) < 0) {
        vmig_set_error_errno(errp, errno, "state directory %s", dir);
        return NULL;
    }
    vmig_engine *e = g_new0(vmig_engine, 1);
    e->state_dir = g_canonicalize_filename(dir, NULL);
    const char *q = g_getenv("VMIG_QEMU");
    e->qemu = g_strdup(q && *q ? q : VMIG_DEFAULT_QEMU);
    e->cancel_fd = -1;
    e->loop = eng_loop_new(errp);
    if (!e->loop) {
        vmig_engine_free(e);
        return NULL;
    }
    e->cancel_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->cancel_fd < 0) {
        vmig_set_error_errno(errp, errno, "eventfd");
        vmig_engine_free(e);
        return NULL;
    }
    e->cancel_watch = eng_loop_watch(e->loop, e->cancel_fd, POLLIN, cancel_readable, e);
    return e;
}

void vmig_engine_free(vmig_engine *e)
{
    if (!e) {
        return;
    }
    eng_loop_free(e->loop);
    if (e->cancel_fd >= 0) {
        close(e->cancel_fd);
    }
    g_free(e->qemu);
    g_free(e->state_dir);
    g_free(e);
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
        eng_log(e, VMIG_LOG_INFO, "event loop: %s", eng_loop_backend(e->loop));
    }
}

const char *vmig_engine_event_loop(const vmig_engine *e)
{
    return eng_loop_backend(e->loop);
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

void vmig_migrate_opts_init(vmig_migrate_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->live = true;
    o->dest = "local";
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
    g_ptr_array_add(candidates, g_build_filename(exedir, "..", "share", "vmigrate",
                                                 "vmig-guest.elf", NULL));
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
