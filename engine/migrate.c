/*
 * Live (pre-copy) and paused migration of a VM to a destination QEMU, as a job on the engine's
 * ring (job.c).  Its steps, after libvirt's Begin/Prepare/Perform/Finish/Confirm:
 *   prepare  connect the source; ask it and a probe QEMU (the destination's binary) what they
 *            are; refuse what cannot work (state, blockers, versions, TCG data loss, CPU);
 *            start the destination QEMU with -incoming defer -S; capabilities (events on both
 *            sides) and parameters before migrate-incoming;
 *   perform  migrate; MIGRATION events drive it, a query-migrate every 250 ms gives figures;
 *   finish   the destination has loaded everything: cont it, see RESUME;
 *   confirm  quit the source and hand its name over to the destination.
 * Until the destination runs, any failure (or a cancel) rolls back: the migration is
 * cancelled, the source is put back running if it was, the destination is torn down.  QEMU's
 * status strings become an enum where they are read.  The prepare phase is migrate-prepare.c.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "migrate-priv.h"

#define POLL_INTERVAL_MS 250
#define DEST_LOAD_TIMEOUT_MS 120000 /* source completed -> destination loaded */
#define RESUME_WAIT_MS 10000
#define CANCEL_TIMEOUT_MS 15000
#define QUIT_TIMEOUT_MS 10000
#define DEST_KILL_MS 2000
#define DEST_GRACE_MS 1000     /* the source failed: is the destination the cause? */
#define SRC_GRACE_MS 2000      /* the source's monitor closed: is its QEMU dying? */
#define RELAY_TIMEOUT_MS 30000 /* a channel's connect, classification and handshake */
#define STALL_TIMEOUT_S 60     /* no byte moved for this long: the migration is stuck */
#define BANDWIDTH_UNLIMITED (UINT64_C(1) << 40) /* 1 TiB/s: no cap worth the name */

const char *const mig_status_names[MS_COUNT] = {
    [MS_NONE] = "none",
    [MS_SETUP] = "setup",
    [MS_ACTIVE] = "active",
    [MS_CANCELLING] = "cancelling",
    [MS_PRE_SWITCHOVER] = "pre-switchover",
    [MS_DEVICE] = "device",
    [MS_WAIT_UNPLUG] = "wait-unplug",
    [MS_POSTCOPY_ACTIVE] = "postcopy-active",
    [MS_POSTCOPY_PAUSED] = "postcopy-paused",
    [MS_POSTCOPY_RECOVER_SETUP] = "postcopy-recover-setup",
    [MS_POSTCOPY_RECOVER] = "postcopy-recover",
    [MS_COLO] = "colo",
    [MS_COMPLETED] = "completed",
    [MS_FAILED] = "failed",
    [MS_CANCELLED] = "cancelled",
    [MS_UNKNOWN] = "unknown",
};

mig_status mig_status_parse(const char *s)
{
    for (int i = 0; i < MS_UNKNOWN; i++) {
        if (strcmp(s, mig_status_names[i]) == 0) {
            return (mig_status)i;
        }
    }
    return MS_UNKNOWN;
}

bool mig_status_active(mig_status s)
{
    return s != MS_NONE && s != MS_COMPLETED && s != MS_FAILED && s != MS_CANCELLED;
}

/* Fails @j with a copy of @err, prefixed. */
void mig_fail_with(vmig_job *j, const vmig_error *err, const char *fmt, ...)
{
    vmig_error *e = vmig_error_copy(err);
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vmig_prefix_error(&e, "%s", prefix);
    eng_job_fail(j, e);
}

void mig_fail_new(vmig_job *j, vmig_errc code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vmig_error *e = NULL;
    vmig_set_error(&e, code, "%s", msg);
    eng_job_fail(j, e);
}

/* ---- the state other processes read -------------------------------------------------------- */

static json_object *stats_json(const vmig_migration_stats *st)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", json_object_new_string(st->status));
    json_object_object_add(o, "total_ms", json_object_new_int64((int64_t)st->total_ms));
    json_object_object_add(o, "transferred_bytes",
                           json_object_new_int64((int64_t)st->transferred_bytes));
    json_object_object_add(o, "remaining_bytes",
                           json_object_new_int64((int64_t)st->remaining_bytes));
    json_object_object_add(o, "total_bytes", json_object_new_int64((int64_t)st->total_bytes));
    json_object_object_add(o, "dirty_pages_rate",
                           json_object_new_int64((int64_t)st->dirty_pages_rate));
    json_object_object_add(o, "passes", json_object_new_int64((int64_t)st->passes));
    json_object_object_add(o, "mbps", json_object_new_double(st->mbps));
    json_object_object_add(o, "downtime_ms", json_object_new_int64((int64_t)st->downtime_ms));
    json_object_object_add(o, "downtime_limit_ms",
                           json_object_new_int64((int64_t)st->downtime_limit_ms));
    json_object_object_add(o, "throttle_pct", json_object_new_int64(st->throttle_pct));
    json_object_object_add(o, "postcopy_requests",
                           json_object_new_int64((int64_t)st->postcopy_requests));
    json_object_object_add(o, "disk_total_bytes",
                           json_object_new_int64((int64_t)st->disk_total_bytes));
    json_object_object_add(o, "disk_transferred_bytes",
                           json_object_new_int64((int64_t)st->disk_transferred_bytes));
    json_object_object_add(o, "dirty_rate_mib_s", json_object_new_double(st->dirty_rate_mib_s));
    return o;
}

static void save_state_as(vmig_job *j, vmig_job_state state)
{
    mig *m = M(j);
    g_strlcpy(m->st.vm_holder,
              m->pc_paused        ? "both"
              : m->dest_took_over ? "destination"
                                  : "source",
              sizeof(m->st.vm_holder));
    g_autoptr(json_object) o = json_object_new_object();
    json_object_object_add(o, "job", json_object_new_string("migrate"));
    json_object_object_add(o, "vm", json_object_new_string(m->name));
    json_object_object_add(o, "state", json_object_new_string(vmig_job_state_name(state)));
    json_object_object_add(o, "holder", json_object_new_string(m->st.vm_holder));
    json_object_object_add(o, "engine_pid", json_object_new_int(getpid()));
    if (m->src_state[0]) { /* known once the prepare phase asked; read by recover.c */
        json_object_object_add(o, "was_running", json_object_new_boolean(m->was_running));
    }
    json_object_object_add(o, "progress", json_object_new_double(m->st.progress));
    json_object_object_add(o, "stats", stats_json(&m->st));
    json_object_object_add(o, "mode", json_object_new_string(m->st.mode));
    json_object_object_add(
        o, "policy", json_object_new_string(m->o.policy == VMIG_POLICY_AUTO ? "auto" : "none"));
    json_object_object_add(o, "postcopy_armed", json_object_new_boolean(m->o.postcopy));
    json_object *acts = json_object_new_array();
    for (guint i = 0; m->actions && i < m->actions->len; i++) {
        const vmig_policy_action *a = &g_array_index(m->actions, vmig_policy_action, i);
        json_object *ao = json_object_new_object();
        json_object_object_add(ao, "at_ms", json_object_new_int64((int64_t)a->at_ms));
        json_object_object_add(ao, "what", json_object_new_string(a->what));
        json_object_array_add(acts, ao);
    }
    json_object_object_add(o, "actions", acts);
    if (j->err) {
        json_object_object_add(o, "error", json_object_new_string(vmig_error_message(j->err)));
    }
    eng_job_write_state(j, o);
}

static void save_state(vmig_job *j)
{
    save_state_as(j, j->state);
}

/* The last state file, then the end (whose done callback may free the job).  The job lets go
 * of both monitors: QEMU serves one client per monitor, and the VM is the caller's again. */
static void keep_channels(mig *m)
{
    if (m->relay) {
        m->n_chan = tp_source_relay_stats(m->relay, m->chan, G_N_ELEMENTS(m->chan));
        g_clear_pointer(&m->relay, tp_source_relay_free);
    }
    if (m->nbd_relay) {
        m->n_nbd_chan = tp_source_relay_stats(m->nbd_relay, m->nbd_chan, G_N_ELEMENTS(m->nbd_chan));
        g_clear_pointer(&m->nbd_relay, tp_source_relay_free);
    }
}

static void end(vmig_job *j, vmig_job_state final)
{
    keep_channels(M(j));
    mig *m = M(j);
    const char *vs = m->src_state;
    if (final == VMIG_JOB_COMPLETED) {
        vs = m->was_running && !m->o.suspend ? "running" : "paused";
    } else if (m->pc_paused) {
        vs = "postcopy-paused";
    } else if (m->dest_took_over) {
        vs = m->dst && eng_vm_alive(m->dst) ? "unknown" : "lost";
    }
    g_strlcpy(m->st.vm_state, vs, sizeof(m->st.vm_state));
    save_state_as(j, final);
    if (m->src) {
        eng_vm_disconnect(m->src);
    }
    if (m->dst) {
        eng_vm_disconnect(m->dst);
    }
    eng_job_end(j, final);
}

static void set_state(vmig_job *j, vmig_job_state from, vmig_job_state to)
{
    if (eng_job_set_state(j, from, to)) {
        save_state(j);
    }
}

/* ---- events ---------------------------------------------------------------------------------- */

static void on_status_event(vmig_job *j, json_object *data, mig_status *ret, const char *side)
{
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    vmig_error *err = NULL;
    if (!vmig_json_read(data, fields, &status, "MIGRATION event", &err)) {
        eng_log(j->e, VMIG_LOG_WARN, "%s: %s", side, vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    *ret = mig_status_parse(status);
    eng_log(j->e, VMIG_LOG_DEBUG, "%s: migration %s", side, status);
}

static void src_event(void *opaque, const char *ev, json_object *data, int64_t ts_us)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    if (strcmp(ev, "MIGRATION") == 0) {
        on_status_event(j, data, &m->src_status, "source");
    } else if (strcmp(ev, "MIGRATION_PASS") == 0) {
        int64_t pass = 0;
        static const vmig_jfield fields[] = {{"pass", VJ_INT64, 0, VJ_MANDATORY}, {NULL}};
        if (vmig_json_read(data, fields, &pass, "MIGRATION_PASS event", NULL) && pass > 0 &&
            (uint64_t)pass > m->st.passes) {
            m->st.passes = (uint64_t)pass;
        }
    } else if (strcmp(ev, "STOP") == 0) {
        m->src_stop_us = ts_us;
    } else if (g_str_has_prefix(ev, "BLOCK_JOB_")) {
        mig_storage_event(j, ev, data);
    }
    eng_job_kick(j);
}

static void dst_event(void *opaque, const char *ev, json_object *data, int64_t ts_us)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    if (strcmp(ev, "MIGRATION") == 0) {
        on_status_event(j, data, &m->dst_status, "destination");
    } else if (strcmp(ev, "RESUME") == 0) {
        m->dst_resume_us = ts_us ? ts_us : g_get_real_time();
    }
    eng_job_kick(j);
}

void mig_src_closed(void *opaque, const vmig_error *why)
{
    vmig_job *j = opaque;
    M(j)->src_closed = true;
    if (why && !M(j)->src_closed_why) {
        M(j)->src_closed_why = g_strdup(vmig_error_message(why));
    }
    eng_log(j->e, VMIG_LOG_DEBUG, "source: %s", vmig_error_message(why));
    eng_job_kick(j);
}

static void dst_closed(void *opaque, const vmig_error *why)
{
    vmig_job *j = opaque;
    M(j)->dst_closed = true;
    eng_log(j->e, VMIG_LOG_DEBUG, "destination: %s", vmig_error_message(why));
    eng_job_kick(j);
}

/* ---- query-migrate -------------------------------------------------------------------------- */

typedef struct qm_ram {
    uint64_t transferred, remaining, total, dirty_rate, syncs, page_size, postcopy_requests;
    double mbps;
} qm_ram;

/* query-migrate into m->st and m->src_status, type-checked. */
static bool read_query_migrate(mig *m, json_object *info, vmig_error **errp)
{
    struct {
        const char *status, *error_desc;
        json_object *ram, *blocked;
        uint64_t total_time, downtime, expected_downtime, throttle;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"status", VJ_STRING, offsetof(typeof(q), status), 0},
        {"error-desc", VJ_STRING, offsetof(typeof(q), error_desc), 0},
        {"ram", VJ_OBJECT, offsetof(typeof(q), ram), 0},
        {"blocked-reasons", VJ_ARRAY, offsetof(typeof(q), blocked), 0},
        {"total-time", VJ_UINT64, offsetof(typeof(q), total_time), 0},
        {"downtime", VJ_UINT64, offsetof(typeof(q), downtime), 0},
        {"expected-downtime", VJ_UINT64, offsetof(typeof(q), expected_downtime), 0},
        {"cpu-throttle-percentage", VJ_UINT64, offsetof(typeof(q), throttle), 0},
        {NULL},
    };
    static const vmig_jfield ram_fields[] = {
        {"transferred", VJ_UINT64, offsetof(qm_ram, transferred), 0},
        {"remaining", VJ_UINT64, offsetof(qm_ram, remaining), 0},
        {"total", VJ_UINT64, offsetof(qm_ram, total), 0},
        {"dirty-pages-rate", VJ_UINT64, offsetof(qm_ram, dirty_rate), 0},
        {"dirty-sync-count", VJ_UINT64, offsetof(qm_ram, syncs), 0},
        {"mbps", VJ_DOUBLE, offsetof(qm_ram, mbps), 0},
        {"page-size", VJ_UINT64, offsetof(qm_ram, page_size), 0},
        {"postcopy-requests", VJ_UINT64, offsetof(qm_ram, postcopy_requests), 0},
        {NULL},
    };
    qm_ram r = {0};
    if (!vmig_json_read(info, fields, &q, "query-migrate", errp) ||
        (q.ram && !vmig_json_read(q.ram, ram_fields, &r, "query-migrate: ram", errp))) {
        return false;
    }
    m->src_status = q.status ? mig_status_parse(q.status) : MS_NONE;
    if (q.error_desc) {
        g_free(m->fail_desc);
        m->fail_desc = g_strdup(q.error_desc);
    }
    if (q.blocked) {
        json_object_put(m->blocked);
        m->blocked = json_object_get(q.blocked);
    }
    if (q.ram) {
        m->st.transferred_bytes = r.transferred;
        m->st.remaining_bytes = r.remaining;
        m->st.total_bytes = r.total;
        m->st.dirty_pages_rate = r.dirty_rate;
        m->st.passes = MAX(m->st.passes, r.syncs);
        m->qm_syncs = r.syncs;
        m->st.mbps = r.mbps;
        m->page_size = r.page_size >= 512 && r.page_size <= (1u << 30) ? r.page_size : 4096;
        m->st.postcopy_requests = r.postcopy_requests;
        if (r.total) {
            double done = 1.0 - (double)r.remaining / (double)r.total;
            m->st.progress = done < 0 ? 0 : done > 1 ? 1 : done;
        }
    }
    m->st.qemu_total_ms = q.total_time;
    m->st.qemu_downtime_ms = q.downtime;
    m->expected_downtime_ms = q.expected_downtime;
    m->st.throttle_pct = (uint32_t)MIN(q.throttle, 100);
    m->st.downtime_limit_ms = m->downtime_now_ms;
    return true;
}

bool mig_on_query_migrate(vmig_job *j, json_object *ret, vmig_error **errp)
{
    return read_query_migrate(M(j), ret, errp);
}

static void on_query_migrate_opt(vmig_job *j, json_object *ret, const vmig_error *err)
{
    vmig_error *perr = NULL;
    if (err || !read_query_migrate(M(j), ret, &perr)) {
        eng_log(j->e, VMIG_LOG_DEBUG, "query-migrate: %s", vmig_error_message(err ? err : perr));
    }
    vmig_error_free(perr);
}

/* ---- perform: figures every 250 ms ----------------------------------------------------------- */

static void poll_done(vmig_job *j, json_object *ret, const vmig_error *err)
{
    mig *m = M(j);
    m->poll_in_flight = false;
    on_query_migrate_opt(j, ret, err);
    m->st.total_ms = (uint64_t)(vmig_now_ms() - m->t0);
    g_strlcpy(m->st.status, mig_status_names[m->src_status], sizeof(m->st.status));
    if (m->progress &&
        (j->state == VMIG_JOB_MIGRATING || (j->state == VMIG_JOB_SWITCHOVER && m->pc_switched))) {
        m->progress(m->progress_opaque, &m->st);
    }
    save_state(j);
    eng_job_kick(j);
}

/* A poll that is not a step: nothing waits for it, and its failure is only logged. */
static void poll_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    vmig_job *j = opaque;
    poll_done(j, ret, err);
    eng_job_release(j);
}

/* No byte moved for stall_timeout_s: QEMU is stuck (a destination that stopped reading, a
 * source stopped by a signal), and no deadline of QEMU's own would end it. */
static bool stalled(vmig_job *j)
{
    mig *m = M(j);
    int64_t now = vmig_now_ms();
    if (m->st.transferred_bytes > m->progress_bytes || !m->progress_ms) {
        m->progress_bytes = m->st.transferred_bytes;
        m->progress_ms = now;
        return false;
    }
    if (m->o.stall_timeout_s < 0 || now - m->progress_ms < (int64_t)m->o.stall_timeout_s * 1000) {
        return false;
    }
    mig_fail_new(j, VMIG_E_TIMEOUT,
                 "the migration made no progress for %d s (QEMU moved no byte "
                 "since %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT "; status %s)",
                 m->o.stall_timeout_s, m->st.transferred_bytes, m->st.total_bytes,
                 mig_status_names[m->src_status]);
    return true;
}

/* Every 250 ms for the job's whole life: figures while QEMU moves memory (or rolls back), the
 * job file always, and the clock for deadlines that are not failures. */
static void tick(vmig_job *j)
{
    mig *m = M(j);
    if (j->state == VMIG_JOB_MIGRATING && !j->failing && mig_converge_tick(j)) {
        return;
    }
    if (j->state == VMIG_JOB_MIGRATING && !m->suspended && stalled(j)) {
        return;
    }
    mig_storage_tick(j);
    bool poll = j->state == VMIG_JOB_MIGRATING || j->state == VMIG_JOB_SWITCHOVER ||
                j->state == VMIG_JOB_ROLLING_BACK;
    if (poll && !m->poll_in_flight && m->src->qmp && qmp_conn_ready(m->src->qmp)) {
        m->poll_in_flight = true;
        eng_job_hold(j);
        qmp_call(m->src->qmp, "query-migrate", NULL, 0, ENG_QMP_TIMEOUT_MS, poll_reply, j);
    } else if (!m->poll_in_flight) {
        save_state(j);
    }
    eng_job_kick(j);
}

/* ---- confirm --------------------------------------------------------------------------------- */

/* --persistent and --undefinesource, once the destination has the VM's name.  The VM runs
 * there whatever happens here: a failure is logged, not the migration's. */
static void undefine_source(vmig_job *j)
{
    mig *m = M(j);
    vmig_error *err = NULL;
    if (m->o.undefine_source && !eng_def_remove(j->e->state_dir, m->name, &err) &&
        vmig_error_code(err) != VMIG_E_NOTFOUND) {
        eng_log(j->e, VMIG_LOG_ERROR, "--undefinesource: %s", vmig_error_message(err));
    }
    vmig_error_free(err);
}

static void define_local(vmig_job *j)
{
    mig *m = M(j);
    vmig_error *err = NULL;
    bool same_dir = strcmp(m->dest_state, j->e->state_dir) == 0;
    if (m->o.persistent && !eng_def_write_running(m->dest_state, m->name, &err)) {
        eng_log(j->e, VMIG_LOG_ERROR, "--persistent: %s", vmig_error_message(err));
        vmig_error_free(err);
    }
    if (!same_dir) { /* in one state directory the definition is the destination's too */
        undefine_source(j);
    }
}

static void on_agent_define(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        eng_log(j->e, VMIG_LOG_ERROR, "--persistent: defining VM '%s' at the destination: %s",
                M(j)->name, vmig_error_message(err));
    }
    eng_job_release(j);
}

static void finished_remote(vmig_job *j)
{
    mig *m = M(j);
    undefine_source(j);
    eng_vm_remove_dir(m->src->dir);
    g_clear_pointer(&j->state_file, g_free); /* the VM's directory is the agent's now */
    g_strlcpy(m->st.status, "completed", sizeof(m->st.status));
    m->st.progress = 1.0;
    end(j, VMIG_JOB_COMPLETED);
}

static void on_agent_finish(void *opaque, json_object *reply, const vmig_error *err)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    const char *dir = NULL;
    static const vmig_jfield fields[] = {{"dir", VJ_STRING, 0, 0}, {NULL}};
    if (err) {
        /* the destination runs: the migration succeeded; only its name there is late */
        eng_log(j->e, VMIG_LOG_ERROR, "naming the VM at the destination: %s",
                vmig_error_message(err));
    } else if (vmig_json_read(reply, fields, &dir, "the agent's finish reply", NULL) && dir) {
        g_free(m->dst->dir);
        m->dst->dir = g_strdup(dir);
    }
    eng_job_release(j);
}

static json_object *token_args(const eng_vm *vm)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "token", json_object_new_string(vm->remote_token));
    return args;
}

static void finish(vmig_job *j)
{
    mig *m = M(j);
    if (m->link) {
        eng_job_hold(j);
        eng_link_call(m->link, "finish", token_args(m->dst), on_agent_finish, j);
        if (m->o.persistent) {
            eng_job_hold(j);
            eng_link_define(m->link, m->name, NULL, false, on_agent_define, j);
        }
        eng_job_then(j, finished_remote);
        return;
    }
    eng_vm_remove_dir(m->src->dir);
    if (rename(m->dst->dir, m->final_dir) < 0) {
        eng_log(j->e, VMIG_LOG_ERROR, "renaming %s to %s: %s", m->dst->dir, m->final_dir,
                g_strerror(errno));
    } else {
        g_free(m->dst->dir);
        m->dst->dir = g_strdup(m->final_dir);
    }
    g_free(j->state_file);
    j->state_file = g_build_filename(m->dst->dir, ENG_JOB_FILE, NULL);
    define_local(j);
    g_strlcpy(m->st.status, "completed", sizeof(m->st.status));
    m->st.progress = 1.0;
    end(j, VMIG_JOB_COMPLETED);
}

static void src_retired(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        /* the destination runs: the migration succeeded, whatever the source does now */
        eng_log(j->e, VMIG_LOG_ERROR, "retiring the source: %s", vmig_error_message(err));
    }
    eng_job_release(j);
}

/* The destination runs: retire the source and give the destination the VM's name. */
static void confirm(vmig_job *j)
{
    mig *m = M(j);
    /* total: up to the destination running, not the clean-up after it */
    m->st.total_ms = (uint64_t)(vmig_now_ms() - m->t0);
    if (m->src_stop_us && m->dst_resume_us > m->src_stop_us) {
        m->st.downtime_ms = (uint64_t)((m->dst_resume_us - m->src_stop_us + 500) / 1000);
    }
    set_state(j, VMIG_JOB_SWITCHOVER, VMIG_JOB_FINISHING);
    eng_job_hold(j);
    eng_vm_retire(m->src, QUIT_TIMEOUT_MS, src_retired, j);
    eng_job_then(j, finish);
}

static bool resumed(vmig_job *j)
{
    mig *m = M(j);
    if (m->dst_resume_us || m->dst_closed || vmig_ms_left(m->resume_deadline) == 0) {
        if (!m->dst_resume_us) {
            eng_log(j->e, VMIG_LOG_WARN, "no RESUME event from the destination within %d ms",
                    RESUME_WAIT_MS);
        }
        return true;
    }
    return false;
}

static bool on_cont(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)ret;
    (void)errp;
    M(j)->dest_took_over = true;
    return true;
}

static void postcopy_wait_end(vmig_job *j);

/* The destination runs: in post-copy, the source still holds pages it lacks. */
static void running(vmig_job *j)
{
    if (M(j)->pc_switched) {
        postcopy_wait_end(j);
    } else {
        confirm(j);
    }
}

static void wait_resume(vmig_job *j)
{
    M(j)->resume_deadline = vmig_now_ms() + RESUME_WAIT_MS;
    eng_job_wait(j, resumed, 0, NULL, running);
}

/* ---- finish: the destination has loaded ----------------------------------------------------- */

static void cont_released(vmig_job *j)
{
    mig *m = M(j);
    g_ptr_array_set_size(m->created, 0); /* the new images are the released VM's disks now */
    if (!m->was_running || m->o.suspend) {
        m->dest_took_over = true; /* stays paused, as the source was or as asked */
        running(j);
        return;
    }
    eng_job_call(j, m->dst->qmp, "cont", NULL, on_cont);
    eng_job_then(j, wait_resume);
}

static void on_agent_release(void *opaque, json_object *reply, const vmig_error *err)
{
    vmig_job *j = opaque;
    (void)reply;
    if (err) {
        mig_fail_with(j, err, "releasing the destination: ");
    }
    eng_job_release(j);
}

static void cont_destination(vmig_job *j)
{
    mig *m = M(j);
    /* The switchover: from here the destination must outlive this engine, whatever happens to
     * it; before, a crash of the engine takes the destination down and the source goes on. */
    if (m->link) { /* the agent holds it: it lets go before the destination runs */
        eng_job_hold(j);
        eng_link_call(m->link, "release", token_args(m->dst), on_agent_release, j);
        eng_job_then(j, cont_released);
        return;
    }
    vmig_error *err = NULL;
    if (!eng_vm_release_guard(m->dst, &err)) {
        eng_job_fail(j, err);
        return;
    }
    cont_released(j);
}

/* ---- post-copy: the destination runs, and pulls the pages it lacks from the source ---------- */

static bool postcopy_settled(vmig_job *j)
{
    mig *m = M(j);
    return (m->src_status == MS_COMPLETED && m->dst_status == MS_COMPLETED) ||
           m->src_status == MS_FAILED || m->dst_status == MS_FAILED ||
           m->src_status == MS_POSTCOPY_PAUSED || m->dst_status == MS_POSTCOPY_PAUSED ||
           m->src_closed || m->dst_closed || !eng_vm_alive(m->src) || !eng_vm_alive(m->dst);
}

static void postcopy_final(vmig_job *j)
{
    mig *m = M(j);
    if (m->src_status == MS_COMPLETED && m->dst_status == MS_COMPLETED) {
        eng_job_call_opt(j, m->src->qmp, "query-migrate", NULL, on_query_migrate_opt);
        eng_job_then(j, confirm);
        return;
    }
    const char *why = m->relay_why ? m->relay_why : m->fail_desc;
    bool remote = m->dst->remote_token != NULL;
    if (!remote && !eng_vm_alive(m->dst)) {
        mig_fail_new(j, VMIG_E_QEMU,
                     "the destination QEMU exited during post-copy, and VM '%s' with it: it ran "
                     "there and its newest memory was there (post-copy's risk)",
                     m->name);
        return;
    }
    if (!eng_vm_alive(m->src)) {
        mig_fail_new(j, VMIG_E_QEMU,
                     "the source QEMU exited during post-copy with pages the destination never "
                     "got: VM '%s' on the destination cannot finish",
                     m->name);
        return;
    }
    m->pc_paused = true;
    if (remote && (m->dst_closed || m->link_closed || !eng_vm_alive(m->dst))) {
        mig_fail_new(j, VMIG_E_IO,
                     "lost the destination's agent at %s during post-copy (%s): VM '%s' may run "
                     "there without all its memory, and the source (%s) holds the rest: both are "
                     "kept.  'vmigrate migrate --live --postcopy-resume %s %s' finishes it once "
                     "the agent is back",
                     eng_link_name(m->link), m->link_why ? m->link_why : "connection closed",
                     m->name, mig_status_names[m->src_status], m->name, m->dest);
        return;
    }
    mig_fail_new(j, VMIG_E_IO,
                 "post-copy paused: the migration connection broke%s%s (source %s, destination "
                 "%s).  VM '%s' runs on the destination, which lacks pages only the source holds: "
                 "both QEMUs are kept.  'vmigrate migrate --live --postcopy-resume %s %s' "
                 "re-opens the connection and finishes",
                 why ? ": " : "", why ? why : "", mig_status_names[m->src_status],
                 mig_status_names[m->dst_status], m->name, m->name, m->dest);
}

static void postcopy_wait_end(vmig_job *j)
{
    eng_job_wait(j, postcopy_settled, 0, NULL, postcopy_final);
}

/* The source stopped and sent the device state: from here the destination holds the VM. */
static void postcopy_started(vmig_job *j)
{
    mig *m = M(j);
    m->pc_switched = true;
    m->dest_took_over = true;
    g_strlcpy(m->st.mode, "postcopy", sizeof(m->st.mode));
    m->st.postcopy_at_ms = (uint64_t)(vmig_now_ms() - m->t0);
    mig_act(j, "post-copy active after %.0f MiB: the destination holds the VM from here",
            (double)m->st.transferred_bytes / (1024.0 * 1024.0));
    set_state(j, VMIG_JOB_MIGRATING, VMIG_JOB_SWITCHOVER);
    cont_destination(j);
}

static bool dst_gone(vmig_job *j)
{
    mig *m = M(j);
    if (!m->dst_closed && eng_vm_alive(m->dst)) {
        return false;
    }
    if (m->link) {
        if (m->link_closed) {
            mig_fail_new(j, VMIG_E_IO,
                         "lost the agent at %s (%s): the destination QEMU there is gone with it",
                         eng_link_name(m->link), m->link_why ? m->link_why : "no reason given");
        } else {
            mig_fail_new(j, VMIG_E_QEMU,
                         "the destination QEMU on %s exited (the agent's log there says why)",
                         eng_link_name(m->link));
        }
        return true;
    }
    g_autofree char *tail = eng_vm_log_tail(m->dst);
    mig_fail_new(j, VMIG_E_QEMU, "the destination QEMU exited: %s", *tail ? tail : "(no output)");
    return true;
}

static void dst_loaded(vmig_job *j)
{
    mig *m = M(j);
    if (dst_gone(j)) {
        return;
    }
    if (m->dst_status != MS_COMPLETED) {
        mig_fail_new(j, VMIG_E_QEMU, "the destination failed to load the migration stream");
        return;
    }
    /* Final figures.  QEMU 7.2 announces completed a moment before it computes downtime,
     * so they are read once the destination has loaded, not at the source's event. */
    eng_job_call_opt(j, m->src->qmp, "query-migrate", NULL, on_query_migrate_opt);
    mig_storage_release_dst(j);
    eng_job_then(j, cont_destination);
}

static bool dst_settled(vmig_job *j)
{
    mig *m = M(j);
    return m->dst_status == MS_COMPLETED || m->dst_status == MS_FAILED || m->dst_closed;
}

static void fail_from_qemu(vmig_job *j)
{
    mig *m = M(j);
    const char *what = mig_status_names[m->src_status];
    if (m->fail_desc) {
        mig_fail_new(j, VMIG_E_QEMU, "migration %s: %s%s%s", what, m->fail_desc,
                     m->relay_why ? "; relay: " : "", m->relay_why ? m->relay_why : "");
    } else {
        mig_fail_new(j, VMIG_E_QEMU, "migration %s%s%s", what, m->relay_why ? "; relay: " : "",
                     m->relay_why ? m->relay_why : "");
    }
}

/* After the source failed: the destination is gone too, or a moment has passed. */
static bool dst_gone_or_late(vmig_job *j)
{
    mig *m = M(j);
    return m->dst_closed || !eng_vm_alive(m->dst) || vmig_ms_left(m->dst_grace_deadline) == 0;
}

/* Another client of the source QEMU (vmigrate abort) cancelled the migration: its
 * destination exits at once, and that is not the news. */
static bool cancelled_elsewhere(vmig_job *j)
{
    mig *m = M(j);
    if ((m->src_status != MS_CANCELLING && m->src_status != MS_CANCELLED) || m->cancelled_here) {
        return false;
    }
    mig_act(j, "cancelled by another client of the source QEMU");
    mig_fail_new(j, VMIG_E_CANCELLED,
                 "migration cancelled by another client of the source QEMU's monitor "
                 "('vmigrate abort %s', say)",
                 m->name);
    return true;
}

static void src_failed(vmig_job *j)
{
    if (!cancelled_elsewhere(j) && !dst_gone(j)) {
        fail_from_qemu(j);
    }
}

/* The source's monitor closed: its QEMU is gone, or a moment has passed. */
static bool src_gone_or_late(vmig_job *j)
{
    mig *m = M(j);
    return !eng_vm_alive(m->src) || vmig_ms_left(m->src_grace_deadline) == 0;
}

static void src_closed_final(vmig_job *j)
{
    mig *m = M(j);
    /* first: a dead source takes its destination's stream down too, and is the news */
    if (!eng_vm_alive(m->src)) {
        g_autofree char *tail = eng_vm_log_tail(m->src);
        mig_fail_new(j, VMIG_E_QEMU,
                     "the source QEMU (pid %d) exited during the migration, "
                     "and the VM with it: %s; the destination was torn down",
                     m->src->pid, *tail ? tail : "(no output)");
        return;
    }
    if (!dst_gone(j)) {
        mig_fail_new(j, VMIG_E_IO, "the source QEMU's monitor closed during the migration%s%s",
                     m->src_closed_why ? ": " : "", m->src_closed_why ? m->src_closed_why : "");
    }
}

static void wait_source(vmig_job *j);

static void src_final(vmig_job *j)
{
    mig *m = M(j);
    if (m->src_closed) {
        /* A killed QEMU closes its sockets before it has left (it still frees guest RAM):
         * give it a moment to be seen gone, rather than blame the destination it took down. */
        m->src_grace_deadline = vmig_now_ms() + SRC_GRACE_MS;
        eng_job_wait(j, src_gone_or_late, 0, NULL, src_closed_final);
        return;
    }
    if ((m->dst_closed || !eng_vm_alive(m->dst)) && !m->dst_gone_asked &&
        mig_status_active(m->src_status) && m->src_status != MS_CANCELLING) {
        /* the destination went first: was the migration cancelled at the source? */
        m->dst_gone_asked = true;
        eng_job_call_opt(j, m->src->qmp, "query-migrate", NULL, on_query_migrate_opt);
        eng_job_then(j, src_final);
        return;
    }
    if (cancelled_elsewhere(j) || dst_gone(j)) {
        return;
    }
    if (m->src_status == MS_POSTCOPY_ACTIVE && !m->pc_switched) {
        postcopy_started(j);
        return;
    }
    if (m->src_status == MS_PRE_SWITCHOVER && !m->pre_switchover_done) {
        /* the vCPUs have stopped: the disks finish, then the device state goes */
        m->pre_switchover_done = true;
        mig_storage_switchover(j, wait_source);
        return;
    }
    if (m->src_status == MS_FAILED || m->src_status == MS_CANCELLED) {
        /* A destination that died makes the source fail with a broken pipe, and the source
         * may say so before the dying process has left: give it a moment to be the cause. */
        m->dst_grace_deadline = vmig_now_ms() + DEST_GRACE_MS;
        eng_job_call_opt(j, m->src->qmp, "query-migrate", NULL, on_query_migrate_opt);
        eng_job_wait(j, dst_gone_or_late, 0, NULL, src_failed);
        return;
    }
    set_state(j, VMIG_JOB_MIGRATING, VMIG_JOB_SWITCHOVER);
    eng_job_wait(j, dst_settled, DEST_LOAD_TIMEOUT_MS, "the destination did not finish loading",
                 dst_loaded);
}

static bool src_settled(vmig_job *j)
{
    mig *m = M(j);
    return m->src_status == MS_COMPLETED || m->src_status == MS_FAILED ||
           m->src_status == MS_POSTCOPY_ACTIVE || m->src_status == MS_POSTCOPY_PAUSED ||
           m->src_status == MS_CANCELLED || m->dst_closed || m->src_closed ||
           (m->src_status == MS_PRE_SWITCHOVER && !m->pre_switchover_done);
}

/* ---- perform --------------------------------------------------------------------------------- */

static void wait_source(vmig_job *j)
{
    eng_job_wait(j, src_settled, 0, NULL, src_final);
}

static void relay_failed(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    eng_log(j->e, VMIG_LOG_WARN, "relay: %s", vmig_error_message(err));
    if (!m->relay_why) {
        m->relay_why = g_strdup(vmig_error_message(err));
    }
}

/* A relay from a socket of ours (@file in the source's directory) to the agent: the source
 * QEMU's migration channels (@fixed 0), or its NBD clients (TP_KIND_NBD). */
tp_source_relay *mig_relay_new(vmig_job *j, const char *file, tp_kind fixed, char **ret_path,
                               vmig_error **errp)
{
    mig *m = M(j);
    uint8_t token[TP_TOKEN_LEN];
    if (!eng_link_token(m->dst->remote_token, token)) {
        vmig_set_error(errp, VMIG_E_PROTO, "the agent gave a bad token");
        return NULL;
    }
    g_autofree char *path = g_build_filename(m->src->dir, file, NULL);
    unlink(path); /* a dead engine's: the VM's lock says none other runs */
    const char *delay = g_getenv("VMIG_TEST_DELAY_MAIN_MS"); /* tests: main arrives last */
    tp_source_cfg cfg = {
        .listen_path = path,
        .key = eng_link_key(m->link),
        .token = token,
        .timeout_ms = RELAY_TIMEOUT_MS,
        .delay_main_ms = delay ? (int)CLAMP(g_ascii_strtoll(delay, NULL, 10), 0, 60000) : 0,
        .first_is_main = m->o.postcopy_resume,
        .fixed_kind = fixed,
    };
    cfg.agent = eng_link_addr(m->link, &cfg.agent_len);
    if (m->o.relay_bandwidth_mib_s && !m->limiter) {
        m->limiter = tp_limiter_new((uint64_t)m->o.relay_bandwidth_mib_s << 20);
    }
    cfg.limiter = m->limiter;
    tp_source_relay *r = tp_source_relay_new(j->e->ring, &cfg, relay_failed, j, errp);
    if (r) {
        *ret_path = g_steal_pointer(&path);
    }
    return r;
}

/* The source migrates to a socket of ours; each of its channels goes on to the agent. */
static bool start_relay(vmig_job *j, vmig_error **errp)
{
    mig *m = M(j);
    g_autofree char *path = NULL;
    m->relay = mig_relay_new(j, "relay.sock", 0, &path, errp);
    if (!m->relay) {
        return false;
    }
    m->src_uri = g_strconcat("unix:", path, NULL);
    return true;
}

/* `migrate`'s arguments: to the relay's socket (a vmig:// destination; started here) or
 * straight to the destination.  NULL when the relay cannot start: the job has failed. */
static json_object *migrate_args(vmig_job *j)
{
    mig *m = M(j);
    vmig_error *err = NULL;
    if (m->link && !start_relay(j, &err)) {
        vmig_prefix_error(&err, "starting the relay: ");
        eng_job_fail(j, err);
        return NULL;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(m->src_uri ? m->src_uri : m->uri));
    return args;
}

static void start_migrate(vmig_job *j)
{
    mig *m = M(j);
    json_object *args = migrate_args(j);
    if (!args) {
        return;
    }
    m->t_migrate = vmig_now_ms();
    m->st.setup_ms = (uint64_t)(m->t_migrate - m->t0);
    set_state(j, VMIG_JOB_PREPARING, VMIG_JOB_MIGRATING);
    eng_job_call(j, m->src->qmp, "migrate", args, NULL);
    eng_job_then(j, wait_source);
}

static void pause_source(vmig_job *j)
{
    mig *m = M(j);
    if (!m->o.live && m->was_running) {
        eng_job_call(j, m->src->qmp, "stop", NULL, NULL);
    }
    eng_job_then(j, start_migrate);
}

static void measure(vmig_job *j)
{
    mig_measure_dirty_rate(j, pause_source);
}

/* The disks to copy are mirrored and in step before memory moves. */
static void copy_storage(vmig_job *j)
{
    mig_storage_start(j, measure);
}

static void incoming(vmig_job *j)
{
    mig *m = M(j);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(m->uri));
    eng_job_call(j, m->dst->qmp, "migrate-incoming", args, NULL);
    eng_job_then(j, copy_storage);
}

static json_object *params_args(const mig *m, bool source)
{
    json_object *args = json_object_new_object();
    if (m->o.parallel_connections > 0) {
        json_object_object_add(args, "multifd-channels",
                               json_object_new_int(m->o.parallel_connections));
    }
    if (source) {
        uint64_t bw = m->o.bandwidth_mib_s ? (uint64_t)m->o.bandwidth_mib_s << 20
                                           : BANDWIDTH_UNLIMITED;
        json_object_object_add(args, "max-bandwidth", json_object_new_int64((int64_t)bw));
    }
    mig_converge_params(m, args, source);
    return args;
}

static void on_set_src(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        mig_fail_with(j, err, "setting up the source QEMU: ");
    }
}

static void on_set_dst(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        mig_fail_with(j, err, "setting up the destination QEMU: ");
    }
}

static void setup(vmig_job *j)
{
    mig *m = M(j);
    qmp_conn_set_closed_cb(m->dst->qmp, dst_closed, j);
    if (m->dst->remote_uri) {
        g_free(m->uri);
        m->uri = g_strdup(m->dst->remote_uri);
    }
    /* both sides alike, and on the destination before migrate-incoming */
    eng_job_call_opt(j, m->src->qmp, "migrate-set-capabilities", mig_converge_caps(m, true),
                     on_set_src);
    eng_job_call_opt(j, m->dst->qmp, "migrate-set-capabilities", mig_converge_caps(m, false),
                     on_set_dst);
    json_object *dargs = params_args(m, false);
    if (json_object_object_length(dargs)) {
        eng_job_call_opt(j, m->dst->qmp, "migrate-set-parameters", dargs, on_set_dst);
    } else {
        json_object_put(dargs);
    }
    eng_job_call_opt(j, m->src->qmp, "migrate-set-parameters", params_args(m, true), on_set_src);
    eng_job_then(j, incoming);
}

static void dst_launched(void *opaque, eng_vm *vm, const vmig_error *err)
{
    vmig_job *j = opaque;
    M(j)->dst = vm;
    if (err) {
        mig_fail_with(j, err, "starting the destination QEMU: ");
    }
    eng_job_release(j);
}

/* begin() cleared what a vmigrate that died left in the staging directory. */
void mig_launch_destination(vmig_job *j)
{
    mig *m = M(j);
    g_autofree char *stage = m->final_dir ? g_strconcat(m->final_dir, ENG_INCOMING_SUFFIX, NULL)
                                          : NULL;
    mig_dirty_rate_start(j); /* measured while the destination starts */
    g_autoptr(vmig_spec) dspec = eng_spec_copy(m->dest_spec ? m->dest_spec : m->src->spec);
    if (m->dest_spec) { /* the VM's identity is the source's */
        g_free(dspec->uuid);
        dspec->uuid = g_strdup(m->src->spec->uuid);
    }
    g_free(dspec->cpu);
    dspec->cpu = g_strdup(m->dst_cpu);
    if (m->link) {
        g_clear_pointer(&dspec->qemu, g_free); /* the agent runs its own */
        json_object *args = json_object_new_object();
        json_object_object_add(args, "name", json_object_new_string(m->name));
        json_object_object_add(args, "spec", eng_spec_to_obj(dspec));
        if (m->st.disks_copied) {
            json_object_object_add(args, "storage", mig_storage_create_args(m));
        }
        eng_job_hold(j);
        eng_link_launch(m->link, "launch", args, m->name, dspec, m->src->accel, dst_event, j,
                        dst_launched, j);
        eng_job_then(j, setup);
        return;
    }
    vmig_error *cerr = NULL;
    if (!mig_storage_create_local(j, dspec, &cerr)) {
        eng_job_fail(j, cerr);
        return;
    }
    if (m->st.disks_copied) {
        m->nbd_dst_path = g_build_filename(stage, ENG_NBD_SOCK, NULL);
        m->nbd_src_path = g_strdup(m->nbd_dst_path);
    }
    eng_launch_req req = {.spec = dspec,
                          .dir = stage,
                          .accel = m->src->accel,
                          .incoming = true,
                          .guard = true,
                          .ev = dst_event,
                          .ev_opaque = j};
    m->uri = g_strdup_printf("unix:%s/migrate.sock", stage);
    vmig_error *err = NULL;
    eng_job_hold(j);
    if (!eng_vm_launch(j->e, &req, dst_launched, j, &err)) {
        dst_launched(j, NULL, err);
        vmig_error_free(err);
    }
    eng_job_then(j, setup);
}

static void src_ready(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        eng_job_fail(j, vmig_error_copy(err));
    } else {
        qmp_conn_set_closed_cb(M(j)->src->qmp, mig_src_closed, j);
    }
    eng_job_release(j);
}

/* ---- resuming a post-copy that broke --------------------------------------------------------- */

static void dst_ready(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        mig_fail_with(j, err, "--postcopy-resume: the destination's monitor: ");
    } else {
        qmp_conn_set_closed_cb(M(j)->dst->qmp, dst_closed, j);
    }
    eng_job_release(j);
}

static void on_dst_query_migrate(vmig_job *j, json_object *ret, const vmig_error *err)
{
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, 0}, {NULL}};
    if (!err && vmig_json_read(ret, fields, &status, "query-migrate", NULL) && status) {
        M(j)->dst_status = mig_status_parse(status);
    }
}

static bool on_recover(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)ret;
    (void)errp;
    if (M(j)->dst_status == MS_POSTCOPY_PAUSED) { /* no event has said more yet */
        M(j)->dst_status = MS_POSTCOPY_RECOVER;
    }
    return true;
}

static bool on_resume(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)ret;
    (void)errp;
    if (M(j)->src_status == MS_POSTCOPY_PAUSED) {
        M(j)->src_status = MS_POSTCOPY_RECOVER;
    }
    return true;
}

static void resume_go(vmig_job *j)
{
    mig *m = M(j);
    json_object *args = migrate_args(j);
    if (!args) {
        return;
    }
    json_object_object_add(args, "resume", json_object_new_boolean(true));
    eng_job_call(j, m->src->qmp, "migrate", args, on_resume);
    eng_job_then(j, postcopy_wait_end);
}

static void resume_check(vmig_job *j)
{
    mig *m = M(j);
    if (m->src_status != MS_POSTCOPY_PAUSED || m->dst_status != MS_POSTCOPY_PAUSED) {
        mig_fail_new(j, VMIG_E_STATE,
                     "--postcopy-resume: VM '%s' has no paused post-copy migration (source: %s, "
                     "destination: %s); nothing was changed",
                     m->name, mig_status_names[m->src_status], mig_status_names[m->dst_status]);
        return;
    }
    m->dest_took_over = true;
    m->pc_switched = true;
    m->was_running = true; /* the destination ran it; it goes on as it is */
    g_strlcpy(m->st.mode, "postcopy", sizeof(m->st.mode));
    mig_act(j, "resuming post-copy: a new connection to the destination");
    set_state(j, VMIG_JOB_PREPARING, VMIG_JOB_SWITCHOVER);
    if (m->link) { /* the agent's relay takes the channels to where QEMU will listen */
        m->uri = g_strdup(m->dst->remote_uri);
    } else {
        g_autofree char *path = g_build_filename(m->dst->dir, "resume.sock", NULL);
        unlink(path); /* an earlier attempt's */
        m->uri = g_strconcat("unix:", path, NULL);
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(m->uri));
    eng_job_call(j, m->dst->qmp, "migrate-recover", args, on_recover);
    eng_job_then(j, resume_go);
}

static void dst_resumed(void *opaque, eng_vm *vm, const vmig_error *err)
{
    vmig_job *j = opaque;
    M(j)->dst = vm;
    if (err) {
        mig_fail_with(j, err, "--postcopy-resume: the agent: ");
    } else {
        qmp_conn_set_closed_cb(vm->qmp, dst_closed, j);
    }
    eng_job_release(j);
}

static void resume_ask(vmig_job *j);

/* The agent kept the destination when the first engine went: take it over. */
static void resume_attach(vmig_job *j)
{
    mig *m = M(j);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "name", json_object_new_string(m->name));
    eng_job_hold(j);
    eng_link_launch(m->link, "resume", args, m->name, NULL, m->src->accel, dst_event, j,
                    dst_resumed, j);
    eng_job_then(j, resume_ask);
}

static void resume_ask(vmig_job *j)
{
    mig *m = M(j);
    eng_job_call(j, m->src->qmp, "query-migrate", NULL, mig_on_query_migrate);
    eng_job_call_opt(j, m->dst->qmp, "query-migrate", NULL, on_dst_query_migrate);
    eng_job_then(j, resume_check);
}

static void link_closed(void *opaque, const vmig_error *why)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    m->link_closed = true;
    if (!m->link_why) {
        m->link_why = g_strdup(vmig_error_message(why));
    }
    eng_log(j->e, VMIG_LOG_DEBUG, "%s", vmig_error_message(why));
    eng_job_kick(j);
}

static void link_ready(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        eng_job_fail(j, vmig_error_copy(err));
    } else {
        eng_link_set_closed_cb(M(j)->link, link_closed, j);
    }
    eng_job_release(j);
}

/* ---- rollback -------------------------------------------------------------------------------- */

static void rb_end(vmig_job *j)
{
    mig *m = M(j);
    if (m->src->qmp && qmp_conn_ready(m->src->qmp) && m->src_state[0]) {
        vmig_append_error(&j->err, "; VM '%s' is %s on the source", m->name, m->src_state);
    }
    bool cancelled = vmig_error_code(j->err) == VMIG_E_CANCELLED;
    g_strlcpy(m->st.status, cancelled ? "cancelled" : "failed", sizeof(m->st.status));
    m->st.total_ms = (uint64_t)(vmig_now_ms() - m->t0);
    end(j, cancelled ? VMIG_JOB_CANCELLED : VMIG_JOB_FAILED);
}

static void on_rb_status(vmig_job *j, json_object *ret, const vmig_error *err)
{
    mig *m = M(j);
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    m->src_state[0] = '\0';
    if (!err && vmig_json_read(ret, fields, &status, "query-status", NULL)) {
        g_strlcpy(m->src_state, status, sizeof(m->src_state));
    }
}

static void on_rb_opt(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        eng_log(j->e, VMIG_LOG_ERROR, "rolling back: %s", vmig_error_message(err));
    }
}

static void rb_state(vmig_job *j)
{
    mig *m = M(j);
    eng_job_call_opt(j, m->src->qmp, "query-status", NULL, on_rb_status);
    eng_job_then(j, rb_end);
}

static void rb_resume(vmig_job *j)
{
    mig *m = M(j);
    if (m->was_running && strcmp(m->src_state, "running") != 0) {
        eng_job_call_opt(j, m->src->qmp, "cont", NULL, on_rb_opt);
    }
    eng_job_then(j, rb_state);
}

static void rb_source_state(vmig_job *j)
{
    mig *m = M(j);
    if (!m->src->qmp || !qmp_conn_ready(m->src->qmp)) {
        rb_end(j);
        return;
    }
    eng_job_call_opt(j, m->src->qmp, "query-status", NULL, on_rb_status);
    eng_job_then(j, rb_resume);
}

static bool rb_settled(vmig_job *j)
{
    mig *m = M(j);
    return !mig_status_active(m->src_status) || m->src_closed ||
           vmig_ms_left(m->cancel_deadline) == 0;
}

static void rb_cancel(vmig_job *j)
{
    mig *m = M(j);
    if (!mig_status_active(m->src_status) || m->src_closed) {
        rb_source_state(j);
        return;
    }
    m->cancelled_here = true;
    eng_job_call_opt(j, m->src->qmp, "migrate_cancel", NULL, on_rb_opt);
    m->cancel_deadline = vmig_now_ms() + CANCEL_TIMEOUT_MS;
    eng_job_wait(j, rb_settled, 0, NULL, rb_source_state);
}

static void dst_torn_down(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    if (err) {
        eng_log(j->e, VMIG_LOG_ERROR, "tearing down the destination: %s", vmig_error_message(err));
    }
    if (!m->dst->remote_token) {
        eng_vm_remove_dir(m->dst->dir);
    }
    eng_job_release(j);
}

static void dst_torn_down_remote(void *opaque, json_object *reply, const vmig_error *err)
{
    (void)reply;
    dst_torn_down(opaque, err);
}

/* Stops the destination: ours, or the agent's through it (which stops it on its own when
 * the connection is gone). */
static void kill_destination(vmig_job *j)
{
    mig *m = M(j);
    if (m->dst->remote_token) {
        if (eng_link_alive(m->link)) {
            eng_job_hold(j);
            eng_link_call(m->link, "kill", token_args(m->dst), dst_torn_down_remote, j);
        }
        return;
    }
    eng_job_hold(j);
    eng_vm_kill(m->dst, DEST_KILL_MS, dst_torn_down, j);
}

static void probe_killed(void *opaque, json_object *reply, const vmig_error *err)
{
    (void)opaque;
    (void)reply;
    (void)err; /* the agent stops it anyway when we go */
}

void mig_discard_probe(mig *m)
{
    if (m->probe && m->probe->remote_token && eng_link_alive(m->link)) {
        eng_link_call(m->link, "kill", token_args(m->probe), probe_killed, NULL);
    }
    g_clear_pointer(&m->probe, eng_vm_discard);
}

static void rb_reconnected(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    if (err) {
        eng_log(j->e, VMIG_LOG_ERROR, "rolling back: the source's monitor, again: %s",
                vmig_error_message(err));
    } else {
        m->src_closed = false;
        qmp_conn_set_closed_cb(m->src->qmp, mig_src_closed, j);
    }
    eng_job_release(j);
}

/* With the source's monitor, if it answers: cancel, then resume it. */
static void rb_source(vmig_job *j)
{
    mig *m = M(j);
    if (!m->src || !m->src->qmp || !qmp_conn_ready(m->src->qmp)) {
        if (m->src && eng_vm_alive(m->src)) {
            vmig_append_error(&j->err,
                              "; the source's monitor does not answer: 'vmigrate vm "
                              "recover %s' resumes VM '%s' if it is left paused",
                              m->name, m->name);
        }
        eng_job_then(j, rb_end);
        return;
    }
    eng_job_call_opt(j, m->src->qmp, "query-migrate", NULL, on_query_migrate_opt);
    eng_job_then(j, rb_cancel);
}

/* Called once the cause is in j->err and nothing is in flight: put the source back and tear
 * the destination down.  After the destination took over, there is nothing to roll back. */
static void rollback_source(vmig_job *j);

static void rollback(vmig_job *j)
{
    mig *m = M(j);
    if (m->dest_took_over) {
        end(j, VMIG_JOB_FAILED);
        return;
    }
    set_state(j, j->state, VMIG_JOB_ROLLING_BACK);
    mig_discard_probe(m);
    keep_channels(m);
    if (m->dst) {
        kill_destination(j);
    }
    mig_storage_rollback(j, rollback_source);
}

/* The mirrors are cancelled and the new images gone: the source runs on as before. */
static void rollback_source(vmig_job *j)
{
    mig *m = M(j);
    if (m->src && (!m->src->qmp || !qmp_conn_ready(m->src->qmp)) && eng_vm_alive(m->src)) {
        /* The source's monitor connection broke (garbage on it, say) but QEMU lives: a new
         * connection is what resumes a source left paused by a migration that completed. */
        eng_vm_disconnect(m->src);
        vmig_error *err = NULL;
        eng_job_hold(j);
        if (!eng_vm_connect(m->src, src_event, j, rb_reconnected, j, &err)) {
            rb_reconnected(j, err);
            vmig_error_free(err);
        }
        eng_job_then(j, rb_source);
        return;
    }
    rb_source(j);
}

/* ---- the job --------------------------------------------------------------------------------- */

static void mig_free(vmig_job *j)
{
    mig *m = j->data;
    tp_source_relay_free(m->relay);
    tp_source_relay_free(m->nbd_relay);
    tp_limiter_free(m->limiter);
    eng_vm_free(m->src);
    eng_vm_free(m->dst);
    if (m->probe) {
        eng_vm_discard(m->probe);
    }
    eng_link_free(m->link); /* after the VMs: their monitors went through it */
    g_free(m->link_why);
    g_free(m->relay_why);
    g_free(m->src_uri);
    json_object_put(m->blocked);
    json_object_put(m->src_machines);
    json_object_put(m->dst_machines);
    json_object_put(m->qom_words);
    json_object_put(m->qom_filtered);
    json_object_put(m->qom_vendor);
    json_object_put(m->qom_msrs);
    json_object_put(m->dst_expansion);
    g_free(m->cpu_path);
    g_free(m->host_cpu_file);
    g_free(m->fail_desc);
    g_free(m->dest);
    g_free(m->name);
    g_free(m->dest_state);
    g_free(m->final_dir);
    g_free(m->uri);
    g_free(m->src_closed_why);
    g_free(m->dst_cpu);
    json_object_put(m->src_caps);
    json_object_put(m->dst_caps);
    if (m->actions) {
        g_array_free(m->actions, TRUE);
    }
    vmig_spec_free(m->dest_spec);
    eng_storage_remove(m->created); /* none left unless the job failed before rollback */
    g_ptr_array_free(m->created, TRUE);
    g_ptr_array_free(m->disks, TRUE);
    g_free(m->nbd_dst_path);
    g_free(m->nbd_src_path);
    g_free(m->mirror_error);
    g_free(m);
}

static bool mig_may_cancel(vmig_job *j)
{
    return !M(j)->dest_took_over;
}

static const eng_job_ops mig_ops = {
    .name = "migrate",
    .what = "migration",
    .fail = rollback,
    .free = mig_free,
    .may_cancel = mig_may_cancel,
};

static bool read_opts(mig *m, const vmig_migrate_opts *o, vmig_error **errp)
{
    vmig_migrate_opts_init(&m->o);
    if (o) {
        if (o->size < offsetof(vmig_migrate_opts, live) + sizeof(o->live)) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "migration options not set up with "
                           "vmig_migrate_opts_init()");
            return false;
        }
        /* An older caller's struct is shorter: the fields it lacks keep their defaults. */
        memcpy(&m->o, o, MIN((size_t)o->size, sizeof(m->o)));
        m->o.size = sizeof(m->o);
    }
    if (m->o.max_downtime_ms < 0 || m->o.max_downtime_ms > 2000000) {
        vmig_set_error(errp, VMIG_E_INVAL, "max downtime %d ms is out of range 0-2000000",
                       m->o.max_downtime_ms);
        return false;
    }
    if (m->o.bandwidth_mib_s < 0 || m->o.bandwidth_mib_s > 1000000) {
        vmig_set_error(errp, VMIG_E_INVAL, "bandwidth %d MiB/s is out of range 0-1000000",
                       m->o.bandwidth_mib_s);
        return false;
    }
    if (m->o.timeout_s < 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "timeout %d s is negative", m->o.timeout_s);
        return false;
    }
    if (m->o.stall_timeout_s < -1) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "stall timeout %d s: give seconds, 0 for the default "
                       "or -1 for none",
                       m->o.stall_timeout_s);
        return false;
    }
    if (m->o.stall_timeout_s == 0) {
        m->o.stall_timeout_s = STALL_TIMEOUT_S;
    }
    if (m->o.parallel_connections < 0 || m->o.parallel_connections > TP_CHANNELS_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL, "parallel connections %d is out of range 0-%d",
                       m->o.parallel_connections, TP_CHANNELS_MAX);
        return false;
    }
    if (m->o.relay_bandwidth_mib_s < 0 || m->o.relay_bandwidth_mib_s > 1000000) {
        vmig_set_error(errp, VMIG_E_INVAL, "relay bandwidth %d MiB/s is out of range 0-1000000",
                       m->o.relay_bandwidth_mib_s);
        return false;
    }
    if (!mig_converge_opts(m, errp) || !mig_storage_opts(m, errp)) {
        return false;
    }
    m->o.key_file = NULL; /* read in begin(); the caller's string is not kept */
    m->dest = g_strdup(m->o.dest ? m->o.dest : "local");
    m->o.dest = m->dest;
    return true;
}

static bool resolve_dest(vmig_engine *e, mig *m, const char *key_file, vmig_error **errp)
{
    const char *d = m->dest;
    if (g_str_has_prefix(d, "vmig://")) {
        m->link = eng_link_new(e, d, key_file, errp);
        return m->link != NULL;
    }
    if (strcmp(d, "local") == 0) {
        m->dest_state = g_strdup(e->state_dir);
        return true;
    }
    if (!g_str_has_prefix(d, "local:") || !d[6]) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "unknown destination '%s': give 'local', 'local:STATE_DIR' or "
                       "'vmig://HOST[:PORT]'",
                       d);
        return false;
    }
    if (!g_file_test(d + 6, G_FILE_TEST_IS_DIR)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "destination state directory %s does not exist",
                       d + 6);
        return false;
    }
    if (!eng_state_dir_check(d + 6, errp)) {
        vmig_prefix_error(errp, "destination: ");
        return false;
    }
    m->dest_state = g_canonicalize_filename(d + 6, NULL);
    return true;
}

/* What can be refused before anything runs: options, the destination, the VM.  The VM's
 * lock (and its name's lock at the destination) is held from here to the end. */
static bool begin(vmig_job *j, vmig_engine *e, mig *m, const char *key_file, vmig_error **errp)
{
    if (!eng_spec_name_valid(m->name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", m->name);
        return false;
    }
    if (!resolve_dest(e, m, key_file, errp) || !eng_job_lock(j, e->state_dir, m->name, errp) ||
        (m->dest_state && strcmp(m->dest_state, e->state_dir) != 0 &&
         !eng_job_lock(j, m->dest_state, m->name, errp))) {
        return false;
    }
    g_autofree char *src_dir = eng_vm_dir(e->state_dir, m->name);
    if (m->link) { /* the agent checks its side */
        m->src = eng_vm_find(e, src_dir, errp);
        return m->src != NULL;
    }
    m->final_dir = eng_vm_dir(m->dest_state, m->name);
    g_autofree char *stage = g_strconcat(m->final_dir, ENG_INCOMING_SUFFIX, NULL);
    if (m->o.postcopy_resume) {
        /* both halves of a post-copy that broke: nothing is cleaned, both are needed */
        m->src = eng_vm_find(e, src_dir, errp);
        if (!m->src) {
            return false;
        }
        if (!g_file_test(stage, G_FILE_TEST_IS_DIR)) {
            vmig_set_error(errp, VMIG_E_NOTFOUND,
                           "--postcopy-resume: VM '%s' has no destination in %s: there is no "
                           "post-copy migration to resume",
                           m->name, m->dest_state);
            return false;
        }
        m->dst = eng_vm_find(e, stage, errp);
        if (!m->dst) {
            vmig_prefix_error(errp,
                              "--postcopy-resume: VM '%s' has no destination in %s: ", m->name,
                              m->dest_state);
            return false;
        }
        return true;
    }
    if (g_file_test(stage, G_FILE_TEST_EXISTS)) {
        /* left by a vmigrate that died mid-migration: these locks prove none drives it now */
        g_autofree char *what = NULL;
        if (!eng_vm_recover_locked(e, src_dir, m->final_dir, &what, errp)) {
            vmig_prefix_error(errp, "cleaning up after an earlier migration of VM '%s': ", m->name);
            return false;
        }
        if (*what) {
            eng_log(e, VMIG_LOG_WARN, "VM '%s', left by a migration whose vmigrate stopped: %s",
                    m->name, what);
        }
    }
    m->src = eng_vm_find(e, src_dir, errp);
    if (!m->src) {
        return false;
    }
    if (strcmp(m->final_dir, src_dir) != 0 && g_file_test(m->final_dir, G_FILE_TEST_EXISTS)) {
        vmig_set_error(errp, VMIG_E_STATE, "the destination %s already has a VM named '%s'",
                       m->dest_state, m->name);
        return false;
    }
    return true;
}

vmig_job *vmig_migrate_start(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                             vmig_progress_fn progress, void *progress_opaque,
                             vmig_job_done_fn done, void *opaque, vmig_error **errp)
{
    if (o && o->size > offsetof(vmig_migrate_opts, offline) && o->offline) {
        return eng_offline_start(e, name, o, progress, progress_opaque, done, opaque, errp);
    }
    mig *m = g_new0(mig, 1);
    m->t0 = vmig_now_ms();
    m->disks = g_ptr_array_new_with_free_func((GDestroyNotify)mig_disk_free);
    m->created = g_ptr_array_new_with_free_func(g_free);
    m->name = g_strdup(name ? name : "");
    m->progress = progress;
    m->progress_opaque = progress_opaque;
    g_strlcpy(m->st.status, "none", sizeof(m->st.status));
    g_strlcpy(m->st.mode, "precopy", sizeof(m->st.mode));
    vmig_job *j = eng_job_new(e, VMIG_JOB_MIGRATE, &mig_ops, m, done, opaque);
    if (!read_opts(m, o, errp) || !begin(j, e, m, o ? o->key_file : NULL, errp)) {
        j->ended = true;
        vmig_job_free(j);
        return NULL;
    }
    j->state_file = g_build_filename(m->src->dir, ENG_JOB_FILE, NULL);
    save_state(j);
    eng_job_start_tick(j, POLL_INTERVAL_MS, tick);
    vmig_error *err = NULL;
    eng_job_hold(j);
    if (!eng_vm_connect(m->src, src_event, j, src_ready, j, &err)) {
        src_ready(j, err);
        vmig_error_free(err);
    }
    if (m->link) {
        eng_job_hold(j);
        eng_link_connect(m->link, link_ready, j);
    }
    if (m->o.postcopy_resume && m->link) {
        eng_job_then(j, resume_attach);
        return j;
    }
    if (m->o.postcopy_resume) {
        eng_job_hold(j);
        if (!eng_vm_connect(m->dst, dst_event, j, dst_ready, j, &err)) {
            dst_ready(j, err);
            vmig_error_free(err);
        }
        eng_job_then(j, resume_ask);
        return j;
    }
    eng_job_then(j, mig_ask_source);
    return j;
}

bool vmig_job_stats_sized(const vmig_job *job, vmig_migration_stats *ret, size_t size)
{
    if (eng_job_is_offline(job)) {
        vmig_migration_stats st;
        memset(&st, 0, sizeof(st));
        bool ok = eng_offline_stats(job, &st);
        memcpy(ret, &st, MIN(size, sizeof(st)));
        return ok;
    }
    if (job->kind != VMIG_JOB_MIGRATE || !job->data) {
        return false;
    }
    const mig *m = job->data;
    vmig_migration_stats st = m->st;
    if (!vmig_job_finished(job)) {
        st.total_ms = (uint64_t)(vmig_now_ms() - m->t0);
    }
    memcpy(ret, &st, MIN(size, sizeof(st)));
    return true;
}

size_t vmig_job_channels_sized(const vmig_job *job, vmig_channel_stats *ret, size_t max,
                               size_t size)
{
    if (eng_job_is_offline(job)) {
        return 0;
    }
    if (job->kind != VMIG_JOB_MIGRATE || !job->data) {
        return 0;
    }
    const mig *m = job->data;
    tp_channel_stats cs[G_N_ELEMENTS(m->chan) + G_N_ELEMENTS(m->nbd_chan)];
    size_t n = m->relay ? tp_source_relay_stats(m->relay, cs, G_N_ELEMENTS(m->chan)) : m->n_chan;
    if (!m->relay) {
        memcpy(cs, m->chan, n * sizeof(cs[0]));
    }
    /* a storage copy's NBD channels after the migration's own */
    size_t nn = m->nbd_relay
                    ? tp_source_relay_stats(m->nbd_relay, cs + n, G_N_ELEMENTS(m->nbd_chan))
                    : m->n_nbd_chan;
    if (!m->nbd_relay) {
        memcpy(cs + n, m->nbd_chan, nn * sizeof(cs[0]));
    }
    n += nn;
    int64_t now = g_get_monotonic_time();
    for (size_t i = 0; i < n && i < max && ret; i++) {
        vmig_channel_stats c = {0};
        g_strlcpy(c.kind, tp_kind_name(cs[i].kind), sizeof(c.kind));
        c.index = cs[i].index;
        c.bytes_out = cs[i].bytes_out;
        c.bytes_in = cs[i].bytes_in;
        if (cs[i].start_us) {
            c.seconds = (double)((cs[i].end_us ? cs[i].end_us : now) - cs[i].start_us) / 1e6;
        }
        c.mbit_s = c.seconds > 0 ? (double)c.bytes_out * 8 / c.seconds / 1e6 : 0;
        c.recv_wait_us = cs[i].recv_wait_us;
        c.send_wait_us = cs[i].send_wait_us;
        c.limit_wait_us = cs[i].limit_wait_us;
        c.failed = cs[i].failed;
        memcpy((char *)ret + i * size, &c, MIN(size, sizeof(c)));
    }
    return n;
}

size_t vmig_job_actions_sized(const vmig_job *job, vmig_policy_action *ret, size_t max, size_t size)
{
    if (eng_job_is_offline(job)) {
        return 0;
    }
    if (job->kind != VMIG_JOB_MIGRATE || !job->data) {
        return 0;
    }
    const mig *m = job->data;
    size_t n = m->actions ? m->actions->len : 0;
    for (size_t i = 0; i < n && i < max && ret; i++) {
        const vmig_policy_action *a = &g_array_index(m->actions, vmig_policy_action, i);
        memcpy((char *)ret + i * size, a, MIN(size, sizeof(*a)));
    }
    return n;
}

static bool finished(void *opaque)
{
    return vmig_job_finished(opaque);
}

bool vmig_migrate_sized(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                        vmig_progress_fn progress, void *opaque, vmig_migration_stats *ret_stats,
                        size_t stats_size, vmig_error **errp)
{
    vmig_job *j = vmig_migrate_start(e, name, o, progress, opaque, NULL, NULL, errp);
    if (!j) {
        if (ret_stats) {
            vmig_migration_stats st = {.status = "failed"};
            memcpy(ret_stats, &st, MIN(stats_size, sizeof(st)));
        }
        return false;
    }
    bool ok = eng_run_until(e, finished, j, errp);
    if (ret_stats) {
        vmig_job_stats_sized(j, ret_stats, stats_size);
    }
    if (ok && vmig_job_get_state(j) != VMIG_JOB_COMPLETED) {
        vmig_propagate_error(errp, vmig_error_copy(vmig_job_error(j)));
        ok = false;
    }
    vmig_job_free(j);
    return ok;
}
