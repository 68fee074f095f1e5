/*
 * What the two examples share: the clock, the built-in guest's spec and the JSON line they
 * print.  Each example is otherwise a complete program of its own.
 */
#ifndef VMIG_EXAMPLE_H
#define VMIG_EXAMPLE_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "vmigrate.h"

#define TICK_MS 10

static inline long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct app {
    vmig_engine *e;
    long long last_tick, max_gap; /* the program's own 10 ms tick */
    int ticks;
    bool measuring;
} app;

/* One tick of the program's own work: how late is it? */
static inline void app_tick(app *a)
{
    long long now = now_ms();
    if (a->measuring && now - a->last_tick > a->max_gap) {
        a->max_gap = now - a->last_tick;
    }
    a->last_tick = now;
    a->ticks += a->measuring;
}

/* The built-in test guest, @mem MiB, rewriting @dirty MiB/s. */
static inline vmig_spec *example_spec(const char *name, int argc, char **argv, vmig_error **errp)
{
    int mem = argc > 1 ? atoi(argv[1]) : 1024, dirty = argc > 2 ? atoi(argv[2]) : 50;
    const char *kernel = vmig_guest_kernel();
    if (!kernel || mem <= 0 || dirty < 0) {
        fprintf(stderr,
                "usage: %s [MEM_MIB [DIRTY_MIB_S]]; the test guest is found through "
                "$VMIG_GUEST\n",
                argv[0]);
        exit(2);
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "memory_mib", json_object_new_int(mem));
    json_object_object_add(o, "kernel", json_object_new_string(kernel));
    char append[64];
    snprintf(append, sizeof(append), "vmig.dirty_mib_s=%d", dirty);
    json_object_object_add(o, "append", json_object_new_string(append));
    vmig_spec *s = vmig_spec_parse(json_object_to_json_string(o), errp);
    json_object_put(o);
    return s;
}

/* The one JSON line; @err (may be NULL) says what went wrong. */
static inline int report(const char *status, bool verified, const app *a,
                         const vmig_migration_stats *st, uint64_t pages, const char *what,
                         const vmig_error *err)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(status));
    json_object_object_add(o, "verified", json_object_new_boolean(verified));
    json_object_object_add(o, "max_tick_gap_ms", json_object_new_int64(a->max_gap));
    json_object_object_add(o, "ticks", json_object_new_int(a->ticks));
    if (st) {
        json_object_object_add(o, "total_ms", json_object_new_int64((int64_t)st->total_ms));
        json_object_object_add(o, "downtime_ms", json_object_new_int64((int64_t)st->downtime_ms));
    }
    json_object_object_add(o, "pages_checked", json_object_new_int64((int64_t)pages));
    if (err) {
        char msg[2048];
        snprintf(msg, sizeof(msg), "%s: %s", what, vmig_error_message(err));
        json_object_object_add(o, "error", json_object_new_string(msg));
    }
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return verified ? 0 : 1;
}

static inline int fail(const app *a, const char *what, const vmig_error *err)
{
    return report("failed", false, a, NULL, 0, what, err);
}

/* The migration job ended: check the guest's memory and print the line. */
static inline int finish(app *a, vmig_job *job, const char *name)
{
    vmig_migration_stats st;
    vmig_job_stats(job, &st);
    bool ok = vmig_job_get_state(job) == VMIG_JOB_COMPLETED;
    uint64_t pages = 0;
    vmig_error *err = NULL;
    bool verified = ok && vmig_guest_verify(a->e, name, &pages, &err);
    int rc = report(vmig_job_state_name(vmig_job_get_state(job)), verified, a, &st, pages,
                    ok ? "verifying" : "migrating", ok ? err : vmig_job_error(job));
    vmig_error_free(err);
    return rc;
}

#endif
