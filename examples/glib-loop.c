/*
 * vmig-example-glib: vmigrate inside a GLib program (GMainLoop).
 *
 * The engine becomes one GSource: its fd for readiness, vmig_engine_timeout_ms() for the
 * deadline, vmig_engine_dispatch() to work.  Beside it the program's own 10 ms timer ticks.
 * It starts the built-in test guest, migrates it live to a second QEMU on this host, checks the
 * guest's memory, and prints one JSON line:
 *   {"status":"completed","verified":true,"max_tick_gap_ms":N,...}
 *
 * Usage: vmig-example-glib [MEM_MIB [DIRTY_MIB_S]]  (defaults 1024 and 50).
 */
#include <glib-unix.h>
#include <glib.h>

#include "example.h"

#define NAME "example-glib"

typedef struct engine_source {
    GSource source;
    vmig_engine *e;
    gpointer fd_tag;
} engine_source;

static gboolean es_prepare(GSource *s, gint *timeout)
{
    *timeout = vmig_engine_timeout_ms(((engine_source *)s)->e);
    return *timeout == 0;
}

static gboolean es_check(GSource *s)
{
    engine_source *es = (engine_source *)s;
    return (g_source_query_unix_fd(s, es->fd_tag) & G_IO_IN) || vmig_engine_timeout_ms(es->e) == 0;
}

static gboolean es_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
    (void)cb;
    (void)data;
    vmig_engine_dispatch(((engine_source *)s)->e, NULL);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs engine_funcs = {
    .prepare = es_prepare, .check = es_check, .dispatch = es_dispatch};

static GSource *engine_source_new(vmig_engine *e)
{
    GSource *s = g_source_new(&engine_funcs, sizeof(engine_source));
    engine_source *es = (engine_source *)s;
    es->e = e;
    es->fd_tag = g_source_add_unix_fd(s, vmig_engine_fd(e), G_IO_IN);
    return s;
}

static gboolean on_tick(gpointer opaque)
{
    app_tick(opaque); /* the program's own work */
    return G_SOURCE_CONTINUE;
}

static void on_done(vmig_job *job, void *opaque)
{
    (void)job;
    g_main_loop_quit(opaque);
}

/* Runs the main loop until the job's done callback quits it. */
static void run(app *a, GMainLoop *loop)
{
    a->measuring = true;
    a->last_tick = now_ms();
    g_main_loop_run(loop);
    a->measuring = false;
}

int main(int argc, char **argv)
{
    vmig_error *err = NULL;
    vmig_spec *spec = example_spec(NAME, argc, argv, &err);
    app a = {.e = spec ? vmig_engine_new(NULL, &err) : NULL};
    if (!a.e) {
        return fail(&a, "setting up", err);
    }
    GMainLoop *loop = g_main_loop_new(NULL, FALSE);
    GSource *es = engine_source_new(a.e);
    g_source_attach(es, NULL);
    g_timeout_add(TICK_MS, on_tick, &a);
    vmig_job *job = vmig_vm_start_async(a.e, spec, VMIG_ACCEL_TCG, on_done, loop, &err);
    if (!job) {
        return fail(&a, "starting the VM", err);
    }
    run(&a, loop);
    if (vmig_job_get_state(job) != VMIG_JOB_COMPLETED) {
        return fail(&a, "starting the VM", vmig_job_error(job));
    }
    vmig_job_free(job);
    int rc = 1;
    if (!vmig_guest_wait_ready(a.e, NAME, 120000, &err)) {
        rc = fail(&a, "waiting for the guest", err);
        goto out;
    }
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    job = vmig_migrate_start(a.e, NAME, &o, NULL, NULL, on_done, loop, &err);
    if (!job) {
        rc = fail(&a, "migrating", err);
        goto out;
    }
    run(&a, loop);
    rc = finish(&a, job, NAME);
    vmig_job_free(job);
out:
    g_source_destroy(es);
    g_source_unref(es);
    g_main_loop_unref(loop);
    vmig_vm_stop(a.e, NAME, 10000, NULL);
    vmig_engine_free(a.e);
    vmig_spec_free(spec);
    vmig_error_free(err);
    return rc;
}
