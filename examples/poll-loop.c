/*
 * vmig-example-poll: vmigrate inside a program that owns its event loop, a plain poll().
 *
 * The program has its own work, a 10 ms tick, and gives the engine one fd.  It starts the
 * built-in test guest, migrates it live to a second QEMU on this host, checks the guest's
 * memory, and prints one JSON line:
 *   {"status":"completed","verified":true,"max_tick_gap_ms":N,...}
 * N is the longest time between two ticks while the VM started and while it migrated: how long
 * the engine ever held the program's thread.
 *
 * Usage: vmig-example-poll [MEM_MIB [DIRTY_MIB_S]]  (defaults 1024 and 50; $VMIG_STATE_DIR,
 * $VMIG_QEMU and $VMIG_GUEST as for vmigrate).
 */
#include <poll.h>

#include "example.h"

#define NAME "example-poll"

/* The program's loop: its tick and the engine, until @job finishes.  False if the ring broke. */
static bool run(app *a, vmig_job *job)
{
    struct pollfd p = {.fd = vmig_engine_fd(a->e), .events = POLLIN};
    a->measuring = true;
    a->last_tick = now_ms();
    while (!vmig_job_finished(job)) {
        long long wait = a->last_tick + TICK_MS - now_ms();
        int t = vmig_engine_timeout_ms(a->e);
        if (wait < 0) {
            wait = 0;
        }
        if (t >= 0 && t < wait) {
            wait = t;
        }
        poll(&p, 1, (int)wait);
        if (vmig_engine_dispatch(a->e, NULL) < 0) {
            return false;
        }
        if (now_ms() >= a->last_tick + TICK_MS) {
            app_tick(a); /* the program's own work */
        }
    }
    a->measuring = false;
    return true;
}

int main(int argc, char **argv)
{
    vmig_error *err = NULL;
    vmig_spec *spec = example_spec(NAME, argc, argv, &err);
    app a = {.e = spec ? vmig_engine_new(NULL, &err) : NULL};
    if (!a.e) {
        return fail(&a, "setting up", err);
    }
    vmig_job *job = vmig_vm_start_async(a.e, spec, VMIG_ACCEL_TCG, NULL, NULL, &err);
    if (!job || !run(&a, job) || vmig_job_get_state(job) != VMIG_JOB_COMPLETED) {
        return fail(&a, "starting the VM", job ? vmig_job_error(job) : err);
    }
    vmig_job_free(job);
    int rc = 1;
    /* The guest fills its memory first (a blocking call, outside the measured loop). */
    if (!vmig_guest_wait_ready(a.e, NAME, 120000, &err)) {
        rc = fail(&a, "waiting for the guest", err);
        goto out;
    }
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    job = vmig_migrate_start(a.e, NAME, &o, NULL, NULL, NULL, NULL, &err);
    if (!job || !run(&a, job)) {
        rc = fail(&a, "migrating", err);
        goto out;
    }
    rc = finish(&a, job, NAME);
    vmig_job_free(job);
out:
    vmig_vm_stop(a.e, NAME, 10000, NULL);
    vmig_engine_free(a.e);
    vmig_spec_free(spec);
    vmig_error_free(err);
    return rc;
}
