/*
 * Convergence: what makes a live migration finish when the guest dirties memory as fast as
 * the link moves it.  Options (downtime limit and its steps, auto-converge, post-copy, dirty
 * limit, compression, timeout actions) are checked here, turned into QEMU's capabilities and
 * parameters, and acted on while memory moves.
 *
 * The default policy (VMIG_POLICY_AUTO) measures the guest's dirty rate before it starts,
 * then looks at each pass boundary (QEMU's dirty-sync-count) after the bulk pass: while
 * remaining bytes shrink by a tenth a pass, it lets QEMU go on.  When they stop shrinking, or
 * the guest dirties as fast as the link sends, it acts at once, in this order: the downtime
 * limit rises (straight to what the remaining bytes need at the measured throughput, within
 * --max-downtime); if that cannot be enough, post-copy starts when it is armed, else the vCPU
 * throttle, held at 1% from the start, is let rise as auto-converge does.  Every action is
 * recorded with its time (vmig_job_actions(), the job file, the log).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "migrate-priv.h"

#define DEFAULT_DOWNTIME_MS 300 /* QEMU's own default downtime-limit */
#define DEFAULT_STEPS 4
#define DIRTY_CALC_S 1
#define DIRTY_WAIT_MS 5000      /* calc-dirty-rate: its time, then this long for the figure */
#define DIRTY_SAMPLE_PAGES 4096 /* a GiB: the most QEMU samples */
#define SHRINK_RATIO 0.9        /* remaining must fall below this fraction of the best to count */
#define HOPELESS_RATIO 0.95     /* dirtying at this fraction of the throughput cannot converge */
#define THROTTLE_HELD 1         /* percent: auto-converge armed but held back by the policy */
#define THROTTLE_MAX 99

static const char *const policy_names[] = {"auto", "none"};
static const char *const timeout_action_names[] = {"abort", "suspend", "postcopy"};

bool mig_has_cap(json_object *caps, const char *cap)
{
    size_t n = json_object_is_type(caps, json_type_array) ? json_object_array_length(caps) : 0;
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(caps, i);
        json_object *name = NULL;
        if (json_object_is_type(c, json_type_object) &&
            json_object_object_get_ex(c, "capability", &name) &&
            json_object_is_type(name, json_type_string) &&
            strcmp(json_object_get_string(name), cap) == 0) {
            return true;
        }
    }
    return false;
}

void mig_act(vmig_job *j, const char *fmt, ...)
{
    mig *m = M(j);
    vmig_policy_action a = {.at_ms = (uint64_t)(vmig_now_ms() - m->t0)};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a.what, sizeof(a.what), fmt, ap);
    va_end(ap);
    if (!m->actions) {
        m->actions = g_array_new(FALSE, TRUE, sizeof(vmig_policy_action));
    }
    g_array_append_val(m->actions, a);
    eng_log(j->e, VMIG_LOG_INFO, "migration of VM '%s' at %.1f s: %s", m->name,
            (double)a.at_ms / 1000.0, a.what);
}

/* ---- options ------------------------------------------------------------------------------- */

static bool range(const char *what, int v, int lo, int hi, vmig_error **errp)
{
    if (v < lo || v > hi) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s %d is out of range %d-%d", what, v, lo, hi);
        return false;
    }
    return true;
}

bool mig_converge_opts(mig *m, vmig_error **errp)
{
    vmig_migrate_opts *o = &m->o;
    if ((unsigned)o->policy >= G_N_ELEMENTS(policy_names)) {
        vmig_set_error(errp, VMIG_E_INVAL, "unknown convergence policy %d", (int)o->policy);
        return false;
    }
    if ((unsigned)o->timeout_action >= G_N_ELEMENTS(timeout_action_names)) {
        vmig_set_error(errp, VMIG_E_INVAL, "unknown timeout action %d", (int)o->timeout_action);
        return false;
    }
    if (!range("downtime steps", o->downtime_steps, 0, 100, errp) ||
        !range("auto-converge initial throttle (percent)", o->throttle_initial, 0, 99, errp) ||
        !range("auto-converge throttle increment (percent)", o->throttle_increment, 0, 100, errp) ||
        !range("dirty limit (MiB/s)", o->dirty_limit_mib_s, 0, 1000000, errp)) {
        return false;
    }
    if (o->timeout_action != VMIG_TIMEOUT_ABORT && !o->timeout_s) {
        vmig_set_error(errp, VMIG_E_INVAL, "timeout action '%s' needs a timeout (--timeout S)",
                       timeout_action_names[o->timeout_action]);
        return false;
    }
    if (o->postcopy_preempt && !o->postcopy) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--postcopy-preempt is a channel of post-copy: give --postcopy too");
        return false;
    }
    /* asking to switch to post-copy arms it */
    if (o->postcopy_after_precopy || o->timeout_action == VMIG_TIMEOUT_POSTCOPY) {
        o->postcopy = true;
    }
    if (!o->live) {
        const char *what = o->postcopy                                 ? "post-copy"
                           : o->timeout_action == VMIG_TIMEOUT_SUSPEND ? "--timeout-action suspend"
                           : o->auto_converge                          ? "--auto-converge"
                           : o->dirty_limit_mib_s                      ? "--dirty-limit"
                                                                       : NULL;
        if (what) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "%s is for a live migration, and this one pauses the VM first: "
                           "add --live",
                           what);
            return false;
        }
    }
    if (o->compress && (!*o->compress || strcmp(o->compress, "none") == 0)) {
        o->compress = NULL;
    }
    if (o->compress && strcmp(o->compress, "zstd") != 0 && strcmp(o->compress, "zlib") != 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "unknown compression '%s': give zstd or zlib",
                       o->compress);
        return false;
    }
    if (o->compress && !o->parallel_connections) {
        o->parallel_connections = 1; /* QEMU compresses multifd channels only */
    }
    o->compress = o->compress ? g_intern_string(o->compress) : NULL;
    m->max_downtime_ms = o->max_downtime_ms ? (uint64_t)o->max_downtime_ms : DEFAULT_DOWNTIME_MS;
    if (!o->downtime_steps) {
        o->downtime_steps = DEFAULT_STEPS;
    }
    bool policy = o->policy == VMIG_POLICY_AUTO && o->live;
    m->throttle_armed = o->auto_converge || (policy && !o->postcopy);
    m->throttle_released = o->auto_converge;
    m->downtime_now_ms = policy ? MAX(m->max_downtime_ms / (uint64_t)o->downtime_steps, 1)
                                : m->max_downtime_ms;
    if (o->dest_spec) {
        m->dest_spec = vmig_spec_load(o->dest_spec, errp);
        if (!m->dest_spec) {
            vmig_prefix_error(errp, "--dest-spec: ");
            return false;
        }
    }
    o->dest_spec = NULL; /* the caller's string is not kept */
    return true;
}

static guint ndisks(const vmig_spec *s)
{
    return s->disks ? s->disks->len : 0;
}

/* The destination spec may change paths and the QEMU binary, not what the guest sees. */
static bool dest_spec_check(const mig *m, vmig_error **errp)
{
    const vmig_spec *s = m->src->spec, *d = m->dest_spec;
    const char *what = strcmp(s->name, d->name) != 0            ? "name"
                       : s->memory_mib != d->memory_mib         ? "memory_mib"
                       : s->vcpus != d->vcpus                   ? "vcpus"
                       : g_strcmp0(s->machine, d->machine) != 0 ? "machine"
                       : ndisks(s) != ndisks(d)                 ? "the number of disks"
                                                                : NULL;
    if (what) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--dest-spec: its %s differs from VM '%s''s: a destination spec may "
                       "change paths and the QEMU binary, not the machine the guest sees",
                       what, m->name);
        return false;
    }
    return true;
}

static bool need_cap(const mig *m, const char *cap, const char *opt, const char *since,
                     vmig_error **errp)
{
    const char *side = !mig_has_cap(m->src_caps, cap)                  ? "source"
                       : m->dst_caps && !mig_has_cap(m->dst_caps, cap) ? "destination"
                                                                       : NULL;
    if (side) {
        const eng_qemu_version *v = strcmp(side, "source") == 0 ? &m->pf.src : &m->pf.dst;
        vmig_set_error(errp, VMIG_E_STATE,
                       "%s needs QEMU's '%s' capability (QEMU %s or later); the %s's QEMU "
                       "%d.%d.%d does not have it",
                       opt, cap, since, side, v->major, v->minor, v->micro);
        return false;
    }
    return true;
}

bool mig_converge_preflight(mig *m, vmig_error **errp)
{
    const vmig_migrate_opts *o = &m->o;
    if (m->dest_spec && !dest_spec_check(m, errp)) {
        return false;
    }
    if (m->dest_spec && m->dest_spec->qemu && m->link) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--dest-spec names a QEMU (%s), but a vmig:// destination runs its "
                       "agent's own (vmigrate agent --qemu there)",
                       m->dest_spec->qemu);
        return false;
    }
    if (o->dirty_limit_mib_s && m->pf.src_tcg) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "--dirty-limit needs KVM's dirty ring (QEMU 8.1 or later with "
                       "accel=kvm,dirty-ring-size=N); VM '%s' runs under TCG, which has none: "
                       "use --auto-converge to slow the guest instead",
                       m->name);
        return false;
    }
    const eng_qemu_version *v = &m->pf.src;
    if (o->postcopy && o->parallel_connections &&
        (v->major < 10 || (v->major == 10 && v->minor < 1))) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "post-copy with multifd channels (--parallel-connections%s) needs QEMU "
                       "10.1 or later; the source's QEMU %d.%d.%d refuses them together: drop "
                       "one",
                       o->compress ? ", or --compressed, which uses them" : "", v->major, v->minor,
                       v->micro);
        return false;
    }
    return (!o->postcopy || need_cap(m, "postcopy-ram", "--postcopy", "2.5", errp)) &&
           (!o->postcopy_preempt ||
            need_cap(m, "postcopy-preempt", "--postcopy-preempt", "8.0", errp)) &&
           (!o->dirty_limit_mib_s || need_cap(m, "dirty-limit", "--dirty-limit", "8.1", errp)) &&
           (!o->compress || need_cap(m, "multifd", "--compressed", "4.0", errp)) &&
           (!m->throttle_armed || need_cap(m, "auto-converge", "--auto-converge", "2.0", errp));
}

/* Each capability vmigrate manages is set, on or off: a QEMU keeps them from its last
 * migration (a VM that came in with multifd still has it).  One the QEMU lacks is off. */
static void set_cap(json_object *caps, json_object *have, const char *name, bool on)
{
    if (!on && !mig_has_cap(have, name)) {
        return;
    }
    json_object *cap = json_object_new_object();
    json_object_object_add(cap, "capability", json_object_new_string(name));
    json_object_object_add(cap, "state", json_object_new_boolean(on));
    json_object_array_add(caps, cap);
}

json_object *mig_converge_caps(const mig *m, bool source)
{
    json_object *have = source ? m->src_caps : m->dst_caps;
    json_object *caps = json_object_new_array();
    set_cap(caps, have, "events", true);
    set_cap(caps, have, "multifd", m->o.parallel_connections > 0);
    set_cap(caps, have, "postcopy-ram", m->o.postcopy);
    set_cap(caps, have, "postcopy-preempt", m->o.postcopy_preempt);
    if (source) {
        set_cap(caps, have, "auto-converge", m->throttle_armed);
        set_cap(caps, have, "dirty-limit", m->o.dirty_limit_mib_s > 0);
        /* storage copy: the mirrors finish while the vCPUs are stopped (storage.c) */
        set_cap(caps, have, "pause-before-switchover", m->st.disks_copied > 0);
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "capabilities", caps);
    return args;
}

void mig_converge_params(const mig *m, json_object *args, bool source)
{
    if (m->o.parallel_connections > 0) { /* set either way: a QEMU keeps its last value */
        json_object_object_add(args, "multifd-compression",
                               json_object_new_string(m->o.compress ? m->o.compress : "none"));
    }
    if (!source) {
        return;
    }
    json_object_object_add(args, "downtime-limit",
                           json_object_new_int64((int64_t)m->downtime_now_ms));
    if (m->throttle_armed) {
        int initial = m->o.throttle_initial ? m->o.throttle_initial : 20;
        int incr = m->o.throttle_increment ? m->o.throttle_increment : 10;
        bool held = !m->throttle_released;
        json_object_object_add(args, "cpu-throttle-initial",
                               json_object_new_int(held ? THROTTLE_HELD : initial));
        json_object_object_add(args, "cpu-throttle-increment", json_object_new_int(incr));
        json_object_object_add(args, "max-cpu-throttle",
                               json_object_new_int(held ? THROTTLE_HELD : THROTTLE_MAX));
    }
    if (m->o.postcopy) { /* the cap holds after the switch too (0: none) */
        json_object_object_add(args, "max-postcopy-bandwidth",
                               json_object_new_int64((int64_t)m->o.bandwidth_mib_s << 20));
    }
    if (m->o.dirty_limit_mib_s) {
        json_object_object_add(args, "vcpu-dirty-limit",
                               json_object_new_int64(m->o.dirty_limit_mib_s));
    }
}

/* ---- the dirty rate, before starting ------------------------------------------------------- */

static void on_dirty_rate(void *opaque, json_object *ret, const vmig_error *err)
{
    vmig_job *j = opaque;
    mig *m = M(j);
    struct {
        const char *status;
        int64_t rate;
        bool has_rate;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"status", VJ_STRING, offsetof(typeof(q), status), VJ_MANDATORY},
        {"dirty-rate", VJ_INT64, offsetof(typeof(q), rate), 0},
        {NULL},
    };
    m->poll_in_flight = false;
    vmig_error *perr = NULL;
    if (err || !vmig_json_read(ret, fields, &q, "query-dirty-rate", &perr)) {
        eng_log(j->e, VMIG_LOG_WARN, "measuring the dirty rate: %s",
                vmig_error_message(err ? err : perr));
        m->dirty_deadline = 0; /* give up on it; the policy watches the passes anyway */
    } else if (strcmp(q.status, "measured") == 0) {
        m->dirty_measured = true;
        m->st.dirty_rate_mib_s = q.rate > 0 ? (double)q.rate : 0;
    }
    vmig_error_free(perr);
    eng_job_kick(j);
    eng_job_release(j);
}

static bool dirty_done(vmig_job *j)
{
    mig *m = M(j);
    if (m->dirty_measured || !m->dirty_deadline || vmig_ms_left(m->dirty_deadline) == 0) {
        return true;
    }
    if (vmig_now_ms() - m->dirty_t0 >= (int64_t)DIRTY_CALC_S * 1000 && !m->poll_in_flight &&
        m->src->qmp && qmp_conn_ready(m->src->qmp)) {
        m->poll_in_flight = true;
        eng_job_hold(j);
        qmp_call(m->src->qmp, "query-dirty-rate", NULL, 0, ENG_QMP_TIMEOUT_MS, on_dirty_rate, j);
    }
    return false;
}

static void on_calc(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    mig *m = M(j);
    if (err) {
        eng_log(j->e, VMIG_LOG_WARN, "calc-dirty-rate: %s", vmig_error_message(err));
        m->dirty_deadline = 0;
    }
}

static void dirty_measured(vmig_job *j)
{
    mig *m = M(j);
    m->st.setup_dirty_ms = (uint64_t)(vmig_now_ms() - m->dirty_wait_t0);
    if (m->dirty_measured) {
        double bw = m->o.bandwidth_mib_s;
        mig_act(j, "dirty rate %.0f MiB/s measured%s", m->st.dirty_rate_mib_s,
                bw > 0 && m->st.dirty_rate_mib_s >= bw * HOPELESS_RATIO
                    ? ": at least the bandwidth cap, pre-copy alone cannot converge"
                    : "");
    }
    m->dirty_deadline = 0;
    m->after_dirty(j);
}

void mig_dirty_rate_start(vmig_job *j)
{
    mig *m = M(j);
    if (m->o.policy != VMIG_POLICY_AUTO || !m->o.live || !m->was_running) {
        return;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "calc-time", json_object_new_int64(DIRTY_CALC_S));
    /* QEMU samples 512 pages a GiB by default: too few in a small guest to tell 4 MiB/s */
    json_object_object_add(args, "sample-pages", json_object_new_int64(DIRTY_SAMPLE_PAGES));
    m->dirty_t0 = vmig_now_ms();
    m->dirty_deadline = m->dirty_t0 + (int64_t)DIRTY_CALC_S * 1000 + DIRTY_WAIT_MS;
    eng_job_call_opt(j, m->src->qmp, "calc-dirty-rate", args, on_calc);
}

void mig_measure_dirty_rate(vmig_job *j, eng_step_fn next)
{
    mig *m = M(j);
    if (!m->dirty_deadline) {
        next(j);
        return;
    }
    m->after_dirty = next;
    m->dirty_wait_t0 = vmig_now_ms();
    eng_job_wait(j, dirty_done, 0, NULL, dirty_measured);
}

/* ---- while memory moves -------------------------------------------------------------------- */

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void on_action_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    vmig_job *j = opaque;
    (void)ret;
    if (err) {
        eng_log(j->e, VMIG_LOG_WARN, "migration of VM '%s': %s", M(j)->name,
                vmig_error_message(err));
    }
    eng_job_release(j);
}

static void src_call(vmig_job *j, const char *cmd, json_object *args)
{
    mig *m = M(j);
    if (!m->src->qmp || !qmp_conn_ready(m->src->qmp)) {
        json_object_put(args);
        return;
    }
    eng_job_hold(j);
    qmp_call(m->src->qmp, cmd, args, 0, ENG_QMP_TIMEOUT_MS, on_action_reply, j);
}

static void start_postcopy(vmig_job *j, const char *why)
{
    mig *m = M(j);
    m->pc_requested = true;
    mig_act(j, "switching to post-copy: %s", why);
    src_call(j, "migrate-start-postcopy", NULL);
}

static void set_downtime(vmig_job *j, uint64_t ms)
{
    mig *m = M(j);
    m->downtime_now_ms = ms;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "downtime-limit", json_object_new_int64((int64_t)ms));
    src_call(j, "migrate-set-parameters", args);
}

/* Lets auto-converge throttle, from a first step that brings the guest's writes to a quarter
 * of what the link moves (@dirty and @bw in bytes/s), then in the usual increments. */
static int release_throttle(vmig_job *j, double dirty, double bw)
{
    mig *m = M(j);
    m->throttle_released = true;
    int target = dirty > 0 && bw > 0 ? (int)(100.0 * (1.0 - bw / 4.0 / dirty)) : 0;
    if (m->o.throttle_initial) {
        target = m->o.throttle_initial;
    }
    target = CLAMP(target, 20, THROTTLE_MAX);
    int cur = (int)m->st.throttle_pct;
    json_object *args = json_object_new_object();
    /* the first step: the initial throttle if QEMU has not throttled yet, else one increment */
    json_object_object_add(args, "cpu-throttle-initial", json_object_new_int(target));
    json_object_object_add(
        args, "cpu-throttle-increment",
        json_object_new_int(
            MAX(target - cur, m->o.throttle_increment ? m->o.throttle_increment : 10)));
    json_object_object_add(args, "max-cpu-throttle", json_object_new_int(THROTTLE_MAX));
    src_call(j, "migrate-set-parameters", args);
    return target;
}

static bool on_timeout(vmig_job *j)
{
    mig *m = M(j);
    m->timed_out = true;
    switch (m->o.timeout_action) {
    case VMIG_TIMEOUT_SUSPEND:
        mig_act(j, "timeout after %d s: pausing the source; the migration finishes non-live",
                m->o.timeout_s);
        m->suspended = true;
        src_call(j, "stop", NULL);
        return false;
    case VMIG_TIMEOUT_POSTCOPY:
        if (!m->pc_requested) {
            g_autofree char *why = g_strdup_printf("timeout after %d s", m->o.timeout_s);
            start_postcopy(j, why);
        }
        return false;
    case VMIG_TIMEOUT_ABORT:
    default:
        mig_act(j, "timeout after %d s: aborting", m->o.timeout_s);
        mig_fail_new(j, VMIG_E_TIMEOUT,
                     "migration did not finish within %d s (remaining %" G_GUINT64_FORMAT
                     " bytes, pass %" G_GUINT64_FORMAT ")",
                     m->o.timeout_s, m->st.remaining_bytes, m->st.passes);
        return true;
    }
}

/* At each pass boundary after the bulk pass: is pre-copy converging?  If not, act. */
static void policy(vmig_job *j)
{
    mig *m = M(j);
    uint64_t pass = m->qm_syncs; /* with the remaining bytes of the same reply */
    if (pass < 2 || pass == m->pass_seen || m->src_status != MS_ACTIVE) {
        return;
    }
    m->pass_seen = pass;
    uint64_t r = m->st.remaining_bytes;
    double bw = m->st.mbps * 1e6 / 8; /* bytes/s, QEMU's last figure */
    double dirty = (double)m->st.dirty_pages_rate * (double)m->page_size;
    if (!m->pass_acted) { /* before any action, the rate measured at the start counts too */
        dirty = MAX(dirty, m->st.dirty_rate_mib_s * 1024.0 * 1024.0);
    }
    bool shrinking = !m->best_remaining || (double)r < (double)m->best_remaining * SHRINK_RATIO;
    if (shrinking) {
        m->best_remaining = r;
        m->stall_passes = 0;
    } else {
        m->stall_passes++;
    }
    bool hopeless = bw > 0 && dirty >= bw * HOPELESS_RATIO;
    if (!hopeless && !m->stall_passes) {
        return;
    }
    m->pass_acted = true;
    g_autofree char *why = hopeless ? g_strdup_printf("pass %" G_GUINT64_FORMAT
                                                      ": the guest dirties %.0f MiB/s, "
                                                      "the link moves %.0f MiB/s (%.0f MiB left)",
                                                      pass, mib((uint64_t)dirty), mib((uint64_t)bw),
                                                      mib(r))
                                    : g_strdup_printf("pass %" G_GUINT64_FORMAT
                                                      ": remaining stopped shrinking "
                                                      "(%.0f MiB, least %.0f MiB)",
                                                      pass, mib(r), mib(m->best_remaining));
    /* what the remaining bytes need at this throughput, with a tenth to spare */
    double need = bw > 0 ? (double)r / bw * 1000.0 * 1.1 : (double)G_MAXUINT64;
    if (m->downtime_now_ms < m->max_downtime_ms) {
        uint64_t step = MAX(m->max_downtime_ms / (uint64_t)m->o.downtime_steps, 1);
        uint64_t next = m->downtime_now_ms + step;
        if (need < (double)m->max_downtime_ms && need > (double)next) {
            next = (uint64_t)need;
        }
        next = MIN(next, m->max_downtime_ms);
        mig_act(j, "downtime limit %" G_GUINT64_FORMAT " -> %" G_GUINT64_FORMAT " ms: %s",
                m->downtime_now_ms, next, why);
        set_downtime(j, next);
        if (need <= (double)next) {
            return; /* QEMU can switch over at the next check */
        }
    }
    if (m->o.postcopy) {
        start_postcopy(j, why);
    } else if (m->throttle_armed && !m->throttle_released) {
        int first = release_throttle(j, dirty, bw);
        mig_act(j, "throttling the vCPUs: %d%% first, up to %d%%: %s", first, THROTTLE_MAX, why);
    }
}

bool mig_converge_tick(vmig_job *j)
{
    mig *m = M(j);
    if (m->pc_switched || m->suspended) {
        return false;
    }
    if (m->o.timeout_s && !m->timed_out &&
        vmig_now_ms() - m->t_migrate > (int64_t)m->o.timeout_s * 1000 && on_timeout(j)) {
        return true;
    }
    if (m->pc_requested) {
        return false;
    }
    if (m->o.postcopy_after_precopy && m->st.passes >= 2) {
        g_autofree char *why = g_strdup_printf("the first pass is done (%.0f MiB sent)",
                                               mib(m->st.transferred_bytes));
        start_postcopy(j, why);
        return false;
    }
    if (m->o.policy == VMIG_POLICY_AUTO && m->o.live && m->was_running) {
        policy(j);
    }
    return false;
}
