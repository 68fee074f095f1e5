/*
 * Control of a running migration from any process: virsh's domjobinfo, domjobabort,
 * migrate-setmaxdowntime, migrate-setspeed, migrate-postcopy and domdirtyrate-calc.
 *
 * The engine that runs a migration holds the VM's main monitor for the whole job, and QEMU
 * serves one client per monitor.  Everything here goes through the other one, the reader
 * monitor (qmp-read.sock), and through the job state file the engine rewrites every 250 ms
 * (job.json).  QMP commands act on the whole QEMU whichever monitor sent them, so a
 * migrate_cancel or migrate-set-parameters here acts on the migration the engine started, and
 * the engine sees the effect in its own query-migrate and events.  The job file is read by
 * jobfile.c, as the untrusted input it is.
 *
 * The calls wait, as vmig_vm_stop() does, on the engine's ring: nothing here sleeps.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "jobctl.h"

#define CTL_CONNECT_MS 5000         /* the reader monitor may serve another client a moment */
#define CTL_ABORT_WAIT_MS 30000     /* the engine's roll-back after migrate_cancel */
#define CTL_START_WAIT_MS 10000     /* a job still preparing, until QEMU migrates */
#define CTL_POLL_MS 100             /* re-reading the job file */
#define CTL_DIRTY_POLL_MS 200       /* query-dirty-rate while measuring */
#define CTL_DIRTY_GRACE_MS 10000    /* past the measuring time */
#define CTL_DOWNTIME_MAX_MS 2000000 /* QEMU's limit: 2000 s */
#define CTL_SPEED_MAX_MIB_S (1 << 20)
#define CTL_BANDWIDTH_UNLIMITED (UINT64_C(1) << 40) /* what migrate.c sets for "no cap" */
#define MIB (1024.0 * 1024.0)

/* ---- the VM, its job and its reader monitor ---------------------------------------------- */

typedef struct ctl {
    vmig_engine *e;
    const char *name;
    char *dir;
    bool has_job; /* a job file was read into jf */
    eng_jobfile jf;
    qmp_conn *c; /* the reader monitor, once asked */
} ctl;

static void ctl_clear(ctl *x)
{
    qmp_conn_free(x->c);
    g_free(x->dir);
}

static bool ctl_reread(ctl *x, vmig_error **errp)
{
    vmig_error *err = NULL;
    x->has_job = eng_jobfile_read(x->dir, &x->jf, &err);
    if (!x->has_job && vmig_error_code(err) != VMIG_E_NOTFOUND) {
        vmig_prefix_error(&err, "VM '%s': its job file: ", x->name);
        vmig_propagate_error(errp, err);
        return false;
    }
    vmig_error_free(err);
    return true;
}

static bool ctl_open(vmig_engine *e, const char *name, ctl *x, vmig_error **errp)
{
    *x = (ctl){.e = e, .name = name ? name : ""};
    if (!name || !eng_spec_name_valid(name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", x->name);
        return false;
    }
    x->dir = eng_vm_dir(e->state_dir, name);
    struct stat st;
    if (lstat(x->dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", name, e->state_dir);
        return false;
    }
    return ctl_reread(x, errp);
}

static bool pid_alive(int pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* A migration runs on the VM, driven by a live engine. */
static bool ctl_need_migration(ctl *x, vmig_error **errp)
{
    const eng_jobfile *f = &x->jf;
    if (!x->has_job || strcmp(f->job, "migrate") != 0) {
        vmig_set_error(errp, VMIG_E_STATE, "no migration of VM '%s' is running", x->name);
        return false;
    }
    if (eng_jobfile_final(f)) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "no migration of VM '%s' is running (the last one ended: %s)", x->name,
                       f->state);
        return false;
    }
    if (!pid_alive(f->engine_pid)) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the vmigrate process that migrated VM '%s' (%s%d) is gone: "
                       "'vmigrate vm recover %s' cleans up after it",
                       x->name, f->engine_pid > 0 ? "pid " : "pid unknown", MAX(f->engine_pid, 0),
                       x->name);
        return false;
    }
    return true;
}

/* The source still holds the VM: the migration can still be changed. */
static bool ctl_need_source(ctl *x, const char *what, vmig_error **errp)
{
    if (strcmp(x->jf.holder, "destination") == 0) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the destination already runs VM '%s': the migration is finishing and "
                       "%s",
                       x->name, what);
        return false;
    }
    return true;
}

static bool ctl_connect(ctl *x, vmig_error **errp)
{
    if (x->c) {
        return true;
    }
    g_autofree char *path = g_build_filename(x->dir, ENG_READER_SOCK, NULL);
    x->c = qmp_conn_open_unix(x->e->ring, path, CTL_CONNECT_MS, errp);
    if (!x->c) {
        vmig_prefix_error(errp, "VM '%s': its reader monitor: ", x->name);
        return false;
    }
    return true;
}

/* @cmd on the reader monitor: its "return" value (owned), or NULL with an error. */
static json_object *ctl_call(ctl *x, const char *cmd, json_object *args, vmig_error **errp)
{
    if (!ctl_connect(x, errp)) {
        json_object_put(args);
        return NULL;
    }
    json_object *r = qmp_conn_call(x->c, cmd, args, 0, ENG_QMP_TIMEOUT_MS, errp);
    if (!r) {
        vmig_prefix_error(errp, "VM '%s': ", x->name);
    }
    return r;
}

static void woke(void *opaque, int res)
{
    (void)res;
    *(bool *)opaque = true;
}

static bool flag_set(void *opaque)
{
    return *(bool *)opaque;
}

/* Waits @ms on the engine's ring. */
static bool ctl_sleep(vmig_engine *e, int ms, vmig_error **errp)
{
    bool done = false;
    int64_t t = ring_timer(e->ring, ms, woke, &done);
    if (t < 0) {
        vmig_set_error_errno(errp, (int)-t, "a timer on the engine's ring");
        return false;
    }
    if (!eng_run_until(e, flag_set, &done, errp)) {
        ring_detach(e->ring, t, NULL, NULL);
        return false;
    }
    return true;
}

/* ---- QEMU's replies ------------------------------------------------------------------------ */

typedef struct qmig {
    const char *status; /* "" when QEMU names none */
    int64_t total_time, expected_downtime, downtime, throttle;
    const char *error_desc;
    int64_t transferred, remaining, total, dirty_pages_rate, sync_count, pc_requests, page_size;
    double mbps;
} qmig;

static bool parse_migrate(json_object *r, qmig *q, vmig_error **errp)
{
    *q = (qmig){.status = "", .mbps = -1};
    q->total_time = q->expected_downtime = q->downtime = q->throttle = -1;
    q->transferred = q->remaining = q->total = q->dirty_pages_rate = -1;
    q->sync_count = q->pc_requests = q->page_size = -1;
    json_object *ram = NULL;
    const vmig_jfield top[] = {
        {"status", VJ_STRING, offsetof(qmig, status), 0},
        {"total-time", VJ_INT64, offsetof(qmig, total_time), 0},
        {"expected-downtime", VJ_INT64, offsetof(qmig, expected_downtime), 0},
        {"downtime", VJ_INT64, offsetof(qmig, downtime), 0},
        {"cpu-throttle-percentage", VJ_INT64, offsetof(qmig, throttle), 0},
        {"error-desc", VJ_STRING, offsetof(qmig, error_desc), 0},
        {NULL},
    };
    const vmig_jfield ram_fields[] = {
        {"transferred", VJ_INT64, offsetof(qmig, transferred), 0},
        {"remaining", VJ_INT64, offsetof(qmig, remaining), 0},
        {"total", VJ_INT64, offsetof(qmig, total), 0},
        {"dirty-pages-rate", VJ_INT64, offsetof(qmig, dirty_pages_rate), 0},
        {"dirty-sync-count", VJ_INT64, offsetof(qmig, sync_count), 0},
        {"postcopy-requests", VJ_INT64, offsetof(qmig, pc_requests), 0},
        {"page-size", VJ_INT64, offsetof(qmig, page_size), 0},
        {"mbps", VJ_DOUBLE, offsetof(qmig, mbps), 0},
        {NULL},
    };
    const vmig_jfield has_ram[] = {{"ram", VJ_OBJECT, 0, 0}, {NULL}};
    return vmig_json_read(r, top, q, "query-migrate", errp) &&
           vmig_json_read(r, has_ram, &ram, "query-migrate", errp) &&
           (!ram || vmig_json_read(ram, ram_fields, q, "query-migrate: ram", errp));
}

/* query-migrate on the reader monitor into @q; @ret_reply keeps the strings alive. */
static bool ctl_query_migrate(ctl *x, qmig *q, json_object **ret_reply, vmig_error **errp)
{
    json_object *r = ctl_call(x, "query-migrate", NULL, errp);
    if (!r || !parse_migrate(r, q, errp)) {
        json_object_put(r);
        return false;
    }
    *ret_reply = r;
    return true;
}

static bool is_postcopy(const char *status)
{
    return g_str_has_prefix(status, "postcopy-");
}

/* Whether QEMU's migration capability @cap is on (-1: QEMU did not say). */
static int ctl_capability(ctl *x, const char *cap, vmig_error **errp)
{
    g_autoptr(json_object) r = ctl_call(x, "query-migrate-capabilities", NULL, errp);
    if (!r) {
        return -2;
    }
    size_t n = json_object_is_type(r, json_type_array) ? json_object_array_length(r) : 0;
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(r, i);
        json_object *name = json_object_is_type(c, json_type_object)
                                ? eng_json_member(c, "capability", json_type_string)
                                : NULL;
        if (name && strcmp(json_object_get_string(name), cap) == 0) {
            return eng_json_bool(c, "state");
        }
    }
    return -1;
}

/* ---- jobinfo ------------------------------------------------------------------------------- */

static int64_t pick(int64_t qemu, int64_t file)
{
    return qemu >= 0 ? qemu : file;
}

static void info_from_file(vmig_jobinfo *r, const eng_jobfile *f)
{
    g_strlcpy(r->job, f->job, sizeof(r->job));
    g_strlcpy(r->state, f->state, sizeof(r->state));
    g_strlcpy(r->holder, f->holder, sizeof(r->holder));
    g_strlcpy(r->qemu_status, f->status, sizeof(r->qemu_status));
    g_strlcpy(r->mode, f->mode, sizeof(r->mode));
    g_strlcpy(r->policy, f->policy, sizeof(r->policy));
    g_strlcpy(r->error, f->error, sizeof(r->error));
    r->engine_pid = f->engine_pid;
    r->engine_alive = pid_alive(f->engine_pid);
    r->postcopy_armed = f->postcopy_armed;
    r->progress = f->progress;
    r->elapsed_ms = f->total_ms;
    r->processed_bytes = f->transferred_bytes;
    r->remaining_bytes = f->remaining_bytes;
    r->total_bytes = f->total_bytes;
    r->mbit_s = f->mbps;
    r->dirty_pages_rate = f->dirty_pages_rate;
    r->iteration = f->passes;
    r->downtime_limit_ms = f->downtime_limit_ms;
    r->throttle_pct = f->throttle_pct;
    r->postcopy_requests = f->postcopy_requests;
    r->downtime_ms = f->downtime_ms > 0 ? f->downtime_ms : -1; /* 0 until it is known */
    r->measured_dirty_mib_s = f->dirty_rate_mib_s;
    r->n_actions = MIN(f->n_actions, (size_t)VMIG_JOBINFO_ACTIONS_MAX);
    memcpy(r->actions, f->actions, r->n_actions * sizeof(r->actions[0]));
}

static void info_from_qemu(vmig_jobinfo *r, const qmig *q)
{
    if (*q->status) {
        eng_text_copy(r->qemu_status, sizeof(r->qemu_status), q->status);
        if (!*r->mode) {
            g_strlcpy(r->mode, is_postcopy(q->status) ? "postcopy" : "precopy", sizeof(r->mode));
        }
    }
    r->elapsed_ms = pick(r->elapsed_ms, q->total_time);
    r->processed_bytes = pick(q->transferred, r->processed_bytes);
    r->remaining_bytes = pick(q->remaining, r->remaining_bytes);
    r->total_bytes = pick(q->total, r->total_bytes);
    r->mbit_s = isfinite(q->mbps) && q->mbps >= 0 ? q->mbps : r->mbit_s;
    r->dirty_pages_rate = pick(q->dirty_pages_rate, r->dirty_pages_rate);
    r->page_size = q->page_size > 0 ? q->page_size : -1;
    r->iteration = pick(q->sync_count, r->iteration);
    r->expected_downtime_ms = q->expected_downtime >= 0 ? q->expected_downtime : -1;
    r->throttle_pct = pick(q->throttle, r->throttle_pct);
    r->postcopy_requests = pick(q->pc_requests, r->postcopy_requests);
    r->downtime_ms = pick(r->downtime_ms, q->downtime);
    if (!*r->error && q->error_desc) {
        eng_text_copy(r->error, sizeof(r->error), q->error_desc);
    }
}

static bool info_parameters(ctl *x, vmig_jobinfo *r, vmig_error **errp)
{
    g_autoptr(json_object) p = ctl_call(x, "query-migrate-parameters", NULL, errp);
    struct {
        uint64_t downtime, bandwidth;
    } v = {UINT64_MAX, UINT64_MAX};
    const vmig_jfield fields[] = {
        {"downtime-limit", VJ_UINT64, offsetof(typeof(v), downtime), 0},
        {"max-bandwidth", VJ_UINT64, offsetof(typeof(v), bandwidth), 0},
        {NULL},
    };
    if (!p || !vmig_json_read(p, fields, &v, "query-migrate-parameters", errp)) {
        return false;
    }
    if (v.downtime <= (uint64_t)INT64_MAX) {
        r->downtime_limit_ms = (int64_t)v.downtime;
    }
    if (v.bandwidth != UINT64_MAX) {
        r->max_bandwidth_mib_s = v.bandwidth >= CTL_BANDWIDTH_UNLIMITED
                                     ? 0
                                     : (int64_t)MAX(v.bandwidth >> 20, 1);
    }
    return true;
}

static void info_derive(vmig_jobinfo *r)
{
    r->mib_s = r->mbit_s >= 0 ? r->mbit_s * 1e6 / 8 / MIB : -1;
    int64_t page = r->page_size > 0 ? r->page_size : 4096;
    r->dirty_mib_s = r->dirty_pages_rate >= 0 ? (double)r->dirty_pages_rate * (double)page / MIB
                                              : -1;
    if (r->progress < 0 && r->total_bytes > 0 && r->remaining_bytes >= 0) {
        r->progress = 1.0 -
                      (double)MIN(r->remaining_bytes, r->total_bytes) / (double)r->total_bytes;
    }
}

static void info_none(vmig_jobinfo *r)
{
    memset(r, 0, sizeof(*r));
    g_strlcpy(r->state, "none", sizeof(r->state));
    r->engine_pid = r->postcopy_armed = -1;
    r->progress = r->mbit_s = r->mib_s = r->dirty_mib_s = r->measured_dirty_mib_s = -1;
    r->elapsed_ms = r->processed_bytes = r->remaining_bytes = r->total_bytes = -1;
    r->dirty_pages_rate = r->page_size = r->iteration = r->expected_downtime_ms = -1;
    r->downtime_limit_ms = r->max_bandwidth_mib_s = r->throttle_pct = -1;
    r->postcopy_requests = r->downtime_ms = -1;
}

static bool jobinfo(ctl *x, vmig_jobinfo *r, vmig_error **errp)
{
    info_none(r);
    const eng_jobfile *f = &x->jf;
    if (!x->has_job || eng_jobfile_final(f)) {
        if (x->has_job) {
            g_strlcpy(r->last_state, f->state, sizeof(r->last_state));
            g_strlcpy(r->error, f->error, sizeof(r->error));
        }
        return true;
    }
    info_from_file(r, f);
    g_autoptr(json_object) reply = NULL;
    qmig q;
    if (!ctl_query_migrate(x, &q, &reply, errp) || !info_parameters(x, r, errp)) {
        return false;
    }
    info_from_qemu(r, &q);
    int armed = ctl_capability(x, "postcopy-ram", errp);
    if (armed < -1) {
        return false;
    }
    r->postcopy_armed = armed >= 0 ? armed : r->postcopy_armed;
    info_derive(r);
    return true;
}

bool vmig_jobinfo_get_sized(vmig_engine *e, const char *name, vmig_jobinfo *ret, size_t size,
                            vmig_error **errp)
{
    ctl x;
    g_autofree vmig_jobinfo *r = g_new0(vmig_jobinfo, 1);
    bool ok = ctl_open(e, name, &x, errp) && jobinfo(&x, r, errp);
    ctl_clear(&x);
    if (ok) {
        memcpy(ret, r, MIN(size, sizeof(*r)));
    }
    return ok;
}

/* ---- abort --------------------------------------------------------------------------------- */

/* A job still preparing (the destination starting, the dirty rate measured): wait until QEMU
 * migrates, for migrate_cancel to have something to cancel. */
static bool wait_migrating(ctl *x, vmig_error **errp)
{
    int64_t deadline = vmig_now_ms() + CTL_START_WAIT_MS;
    while (strcmp(x->jf.state, "preparing") == 0) {
        if (vmig_ms_left(deadline) == 0) {
            vmig_set_error(errp, VMIG_E_STATE,
                           "the migration of VM '%s' is still preparing (its destination "
                           "starting): try again in a moment",
                           x->name);
            return false;
        }
        if (!ctl_sleep(x->e, CTL_POLL_MS, errp) || !ctl_reread(x, errp) ||
            !ctl_need_migration(x, errp)) {
            return false;
        }
    }
    return true;
}

static void refuse_postcopy(ctl *x, vmig_error **errp)
{
    vmig_set_error(errp, VMIG_E_STATE,
                   "the destination already runs VM '%s': a post-copy migration cannot be "
                   "cancelled; it can only finish ('vmigrate jobinfo %s' shows how far it is)",
                   x->name, x->name);
}

/* Refuses what migrate_cancel cannot undo; @ret_send false when QEMU is ending it already. */
static bool abort_check(ctl *x, bool *ret_send, vmig_error **errp)
{
    if (strcmp(x->jf.mode, "postcopy") == 0) {
        refuse_postcopy(x, errp);
        return false;
    }
    if (!ctl_need_source(x, "cannot be cancelled", errp)) {
        return false;
    }
    g_autoptr(json_object) reply = NULL;
    qmig q;
    if (!ctl_query_migrate(x, &q, &reply, errp)) {
        return false;
    }
    if (is_postcopy(q.status)) {
        refuse_postcopy(x, errp);
        return false;
    }
    if (strcmp(q.status, "completed") == 0) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the migration of VM '%s' has completed on the source: the destination "
                       "is taking over",
                       x->name);
        return false;
    }
    if (!*q.status || strcmp(q.status, "none") == 0) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "QEMU of VM '%s' runs no migration (yet): try again in a moment", x->name);
        return false;
    }
    *ret_send = strcmp(q.status, "failed") != 0 && strcmp(q.status, "cancelled") != 0 &&
                strcmp(q.status, "cancelling") != 0;
    return true;
}

/* Until the job file says the job ended, or its engine is gone. */
static bool wait_final(ctl *x, vmig_error **errp)
{
    int64_t deadline = vmig_now_ms() + CTL_ABORT_WAIT_MS;
    for (;;) {
        if (!ctl_reread(x, errp)) {
            return false;
        }
        if (x->has_job && eng_jobfile_final(&x->jf)) {
            return true;
        }
        if (x->has_job && !pid_alive(x->jf.engine_pid)) {
            vmig_set_error(errp, VMIG_E_STATE,
                           "migrate_cancel was sent, but the vmigrate process that migrated VM "
                           "'%s' is gone before it rolled back: 'vmigrate vm recover %s' "
                           "cleans up after it",
                           x->name, x->name);
            return false;
        }
        if (vmig_ms_left(deadline) == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT,
                           "migrate_cancel was sent, but the migration of VM '%s' had not ended "
                           "after %d s (its state: %s)",
                           x->name, CTL_ABORT_WAIT_MS / 1000, x->has_job ? x->jf.state : "unknown");
            return false;
        }
        if (!ctl_sleep(x->e, CTL_POLL_MS, errp)) {
            return false;
        }
    }
}

/* "running", "paused", ... of the VM's QEMU, or NULL. */
static char *run_state(ctl *x)
{
    g_autoptr(json_object) r = ctl_call(x, "query-status", NULL, NULL);
    json_object *s = r && json_object_is_type(r, json_type_object)
                         ? eng_json_member(r, "status", json_type_string)
                         : NULL;
    char buf[32];
    if (!s) {
        return NULL;
    }
    eng_text_copy(buf, sizeof(buf), json_object_get_string(s));
    return g_strdup(buf);
}

static bool abort_run(ctl *x, char **ret_what, vmig_error **errp)
{
    bool send = true;
    if (!ctl_need_migration(x, errp) || !wait_migrating(x, errp) || !abort_check(x, &send, errp)) {
        return false;
    }
    if (send) {
        json_object *r = ctl_call(x, "migrate_cancel", NULL, errp);
        if (!r) {
            return false;
        }
        json_object_put(r);
    }
    if (!wait_final(x, errp)) {
        return false;
    }
    if (strcmp(x->jf.state, "completed") == 0) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the migration of VM '%s' completed before it could be cancelled: VM '%s' "
                       "runs on the destination",
                       x->name, x->name);
        return false;
    }
    g_autofree char *rs = run_state(x);
    g_autofree char *where = rs ? g_strdup_printf("VM '%s' is %s on the source", x->name, rs)
                                : g_strdup_printf("VM '%s' is on the source", x->name);
    /* An engine may record a cancel from elsewhere as a failure (the destination QEMU exits
     * when its stream is cut): it was still this cancel. */
    bool cancelled = strcmp(x->jf.state, "cancelled") == 0;
    g_autofree char *what =
        cancelled || send
            ? g_strdup_printf("migration of VM '%s' cancelled%s; %s", x->name,
                              cancelled ? "" : " (its vmigrate recorded it as failed)", where)
            : g_strdup_printf("migration of VM '%s' failed before it could be cancelled (%s); %s",
                              x->name, x->jf.error, where);
    if (ret_what) {
        *ret_what = strdup(what);
    }
    return true;
}

bool vmig_migration_abort(vmig_engine *e, const char *name, char **ret_what, vmig_error **errp)
{
    ctl x;
    bool ok = ctl_open(e, name, &x, errp) && abort_run(&x, ret_what, errp);
    ctl_clear(&x);
    return ok;
}

/* ---- parameters and post-copy -------------------------------------------------------------- */

static bool set_parameter(vmig_engine *e, const char *name, const char *param, int64_t value,
                          vmig_error **errp)
{
    ctl x;
    bool ok = ctl_open(e, name, &x, errp) && ctl_need_migration(&x, errp) &&
              ctl_need_source(&x, "its parameters no longer matter", errp);
    if (ok) {
        json_object *args = json_object_new_object();
        json_object_object_add(args, param, json_object_new_int64(value));
        json_object *r = ctl_call(&x, "migrate-set-parameters", args, errp);
        ok = r != NULL;
        json_object_put(r);
    }
    ctl_clear(&x);
    return ok;
}

bool vmig_migration_set_max_downtime(vmig_engine *e, const char *name, int ms, vmig_error **errp)
{
    if (ms < 1 || ms > CTL_DOWNTIME_MAX_MS) {
        vmig_set_error(errp, VMIG_E_INVAL, "a downtime limit of %d ms is out of range: 1 to %d ms",
                       ms, CTL_DOWNTIME_MAX_MS);
        return false;
    }
    return set_parameter(e, name, "downtime-limit", ms, errp);
}

bool vmig_migration_set_speed(vmig_engine *e, const char *name, int mib_s, vmig_error **errp)
{
    if (mib_s < 0 || mib_s > CTL_SPEED_MAX_MIB_S) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "a bandwidth of %d MiB/s is out of range: 0 (unlimited) to %d MiB/s", mib_s,
                       CTL_SPEED_MAX_MIB_S);
        return false;
    }
    uint64_t bw = mib_s ? (uint64_t)mib_s << 20 : CTL_BANDWIDTH_UNLIMITED;
    return set_parameter(e, name, "max-bandwidth", (int64_t)bw, errp);
}

/* @cmd, whose reply is dropped; a QEMU error that contains @needle is told by @instead. */
static bool ctl_call_or(ctl *x, const char *cmd, json_object *args, const char *needle,
                        void (*instead)(ctl *x, vmig_error **errp), vmig_error **errp)
{
    vmig_error *err = NULL;
    json_object *r = ctl_call(x, cmd, args, &err);
    if (!r && strstr(vmig_error_message(err), needle)) {
        vmig_error_free(err);
        instead(x, errp);
        return false;
    }
    vmig_propagate_error(errp, err);
    json_object_put(r);
    return r != NULL;
}

static void not_armed(ctl *x, vmig_error **errp)
{
    vmig_set_error(errp, VMIG_E_STATE,
                   "VM '%s': post-copy was not armed for this migration: start it with "
                   "--postcopy",
                   x->name);
}

static bool postcopy_run(ctl *x, vmig_error **errp)
{
    if (!ctl_need_migration(x, errp) || !ctl_need_source(x, "it is too late for post-copy", errp)) {
        return false;
    }
    g_autoptr(json_object) reply = NULL;
    qmig q;
    if (!ctl_query_migrate(x, &q, &reply, errp)) {
        return false;
    }
    if (is_postcopy(q.status)) {
        vmig_set_error(errp, VMIG_E_STATE, "the migration of VM '%s' is in post-copy already",
                       x->name);
        return false;
    }
    int armed = ctl_capability(x, "postcopy-ram", errp);
    if (armed < -1) {
        return false;
    }
    if (armed == 0) {
        not_armed(x, errp);
        return false;
    }
    return ctl_call_or(x, "migrate-start-postcopy", NULL, "Enable postcopy", not_armed, errp);
}

bool vmig_migration_postcopy(vmig_engine *e, const char *name, vmig_error **errp)
{
    ctl x;
    bool ok = ctl_open(e, name, &x, errp) && postcopy_run(&x, errp);
    ctl_clear(&x);
    return ok;
}

/* ---- dirty rate ---------------------------------------------------------------------------- */

typedef struct qdirty {
    const char *status, *mode;
    int64_t rate, calc_time, sample_pages, start_time;
} qdirty;

static bool query_dirty(ctl *x, qdirty *d, json_object **ret_reply, vmig_error **errp)
{
    *d = (qdirty){.status = "",
                  .mode = "",
                  .rate = -1,
                  .calc_time = -1,
                  .sample_pages = -1,
                  .start_time = -1};
    const vmig_jfield fields[] = {
        {"status", VJ_STRING, offsetof(qdirty, status), VJ_MANDATORY},
        {"mode", VJ_STRING, offsetof(qdirty, mode), 0},
        {"dirty-rate", VJ_INT64, offsetof(qdirty, rate), 0},
        {"calc-time", VJ_INT64, offsetof(qdirty, calc_time), 0},
        {"sample-pages", VJ_INT64, offsetof(qdirty, sample_pages), 0},
        {"start-time", VJ_INT64, offsetof(qdirty, start_time), 0},
        {NULL},
    };
    json_object *r = ctl_call(x, "query-dirty-rate", NULL, errp);
    if (!r || !vmig_json_read(r, fields, d, "query-dirty-rate", errp)) {
        json_object_put(r);
        return false;
    }
    *ret_reply = r;
    return true;
}

static void dirty_busy(ctl *x, vmig_error **errp)
{
    vmig_set_error(errp, VMIG_E_STATE,
                   "QEMU of VM '%s' is measuring its dirty rate already (another 'vmigrate "
                   "dirtyrate', or a migration measuring it before it starts): try again in a "
                   "few seconds",
                   x->name);
}

static bool dirty_start(ctl *x, int seconds, vmig_error **errp)
{
    g_autoptr(json_object) reply = NULL;
    qdirty d;
    if (!query_dirty(x, &d, &reply, errp)) {
        return false;
    }
    if (strcmp(d.status, "measuring") == 0) {
        dirty_busy(x, errp);
        return false;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "calc-time", json_object_new_int(seconds));
    json_object_object_add(args, "mode", json_object_new_string("page-sampling"));
    return ctl_call_or(x, "calc-dirty-rate", args, "already being measured", dirty_busy, errp);
}

static bool dirtyrate(ctl *x, int seconds, vmig_dirtyrate_info *ret, vmig_error **errp)
{
    if (!dirty_start(x, seconds, errp)) {
        return false;
    }
    int64_t deadline = vmig_now_ms() + (int64_t)seconds * 1000 + CTL_DIRTY_GRACE_MS;
    int wait_ms = seconds * 1000;
    for (;;) {
        if (!ctl_sleep(x->e, wait_ms, errp)) {
            return false;
        }
        g_autoptr(json_object) reply = NULL;
        qdirty d;
        if (!query_dirty(x, &d, &reply, errp)) {
            return false;
        }
        if (strcmp(d.status, "measured") == 0) {
            if (d.rate < 0) {
                vmig_set_error(errp, VMIG_E_PROTO, "VM '%s': query-dirty-rate: no dirty-rate",
                               x->name);
                return false;
            }
            ret->mib_s = (double)d.rate;
            ret->calc_time_s = d.calc_time >= 0 && d.calc_time <= INT_MAX ? (int)d.calc_time
                                                                          : seconds;
            ret->sample_pages = d.sample_pages;
            eng_text_copy(ret->mode, sizeof(ret->mode), d.mode);
            ret->start_time = d.start_time;
            return true;
        }
        if (vmig_ms_left(deadline) == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT,
                           "VM '%s': QEMU had not measured the dirty rate %d s after it was "
                           "asked to measure for %d s (status: %s)",
                           x->name, seconds + CTL_DIRTY_GRACE_MS / 1000, seconds, d.status);
            return false;
        }
        wait_ms = CTL_DIRTY_POLL_MS;
    }
}

bool vmig_dirtyrate_sized(vmig_engine *e, const char *name, int seconds, vmig_dirtyrate_info *ret,
                          size_t size, vmig_error **errp)
{
    if (seconds < 1 || seconds > VMIG_DIRTYRATE_SECONDS_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "measuring the dirty rate over %d s: out of range, 1 to %d s", seconds,
                       VMIG_DIRTYRATE_SECONDS_MAX);
        return false;
    }
    ctl x;
    vmig_dirtyrate_info r = {0};
    bool ok = ctl_open(e, name, &x, errp) && dirtyrate(&x, seconds, &r, errp);
    ctl_clear(&x);
    if (ok) {
        memcpy(ret, &r, MIN(size, sizeof(r)));
    }
    return ok;
}
