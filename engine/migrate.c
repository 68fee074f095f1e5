/*
 * Live (pre-copy) and paused migration of a VM to a destination QEMU, driven over QMP.
 *
 * Phases, after libvirt's Begin/Prepare/Perform/Finish/Confirm:
 *   prepare  check the source (running, not migrating, no blockers) and the destination,
 *            start the destination QEMU with -incoming defer -S, set capabilities (events on
 *            both sides) and parameters before migrate-incoming;
 *   perform  migrate, follow MIGRATION events, poll query-migrate for figures;
 *   finish   wait until the destination has loaded everything, cont it, see RESUME;
 *   confirm  quit the source and hand its name over to the destination.
 * Until the destination runs, any failure (or a cancel) rolls back: the migration is
 * cancelled, the source is put back running if it was, the destination is torn down.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cpu/format.h"
#include "engine/cpu-qemu.h"
#include "engine.h"

#define POLL_INTERVAL_MS 250
#define DEST_LOAD_TIMEOUT_MS 120000 /* source completed -> destination loaded */
#define RESUME_TIMEOUT_MS 10000
#define CANCEL_TIMEOUT_MS 15000
#define QUIT_TIMEOUT_MS 10000
#define BANDWIDTH_UNLIMITED (UINT64_C(1) << 40) /* 1 TiB/s: no cap worth the name */

typedef struct mig_job {
    vmig_engine *e;
    const vmig_migrate_opts *o;
    eng_vm *src;
    eng_vm *dst;
    char *dest_state;
    char *final_dir; /* where the VM lives after success */
    char *uri;
    char *dst_cpu; /* the VM's effective -cpu for the destination */
    vmig_accel accel;
    bool was_running;
    bool dest_took_over; /* past the point of no return */
    char src_status[24];
    char dst_status[24];
    int64_t src_stop_us, dst_resume_us;
    int64_t t0;
    vmig_migration_stats st;
} mig_job;

static const char *const active_states[] = {
    "setup", "active", "cancelling", "pre-switchover", "device", "wait-unplug",
    "postcopy-active", "postcopy-paused", "postcopy-recover", "colo",
};

static bool is_active(const char *status)
{
    for (size_t i = 0; i < G_N_ELEMENTS(active_states); i++) {
        if (strcmp(status, active_states[i]) == 0) {
            return true;
        }
    }
    return false;
}

static void src_event(void *opaque, const char *ev, json_object *data, int64_t ts_us)
{
    mig_job *j = opaque;
    json_object *v = NULL;
    if (strcmp(ev, "MIGRATION") == 0 && json_object_object_get_ex(data, "status", &v)) {
        g_strlcpy(j->src_status, json_object_get_string(v), sizeof(j->src_status));
        eng_log(j->e, VMIG_LOG_DEBUG, "source: migration %s", j->src_status);
    } else if (strcmp(ev, "MIGRATION_PASS") == 0 && json_object_object_get_ex(data, "pass", &v)) {
        j->st.passes = (uint64_t)json_object_get_int64(v);
    } else if (strcmp(ev, "STOP") == 0) {
        j->src_stop_us = ts_us;
    }
}

static void dst_event(void *opaque, const char *ev, json_object *data, int64_t ts_us)
{
    mig_job *j = opaque;
    json_object *v = NULL;
    if (strcmp(ev, "MIGRATION") == 0 && json_object_object_get_ex(data, "status", &v)) {
        g_strlcpy(j->dst_status, json_object_get_string(v), sizeof(j->dst_status));
        eng_log(j->e, VMIG_LOG_DEBUG, "destination: migration %s", j->dst_status);
    } else if (strcmp(ev, "RESUME") == 0) {
        j->dst_resume_us = ts_us;
    }
}

static uint64_t get_u64(json_object *o, const char *key)
{
    json_object *v = NULL;
    return o && json_object_object_get_ex(o, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

/* query-migrate on the source: figures into j->st, status into j->src_status. */
static json_object *poll_source(mig_job *j, vmig_error **errp)
{
    json_object *info = qmp_conn_call(j->src->qmp, "query-migrate", NULL, 0, ENG_QMP_TIMEOUT_MS,
                                      errp);
    if (!info) {
        return NULL;
    }
    json_object *v = NULL, *ram = NULL;
    if (json_object_object_get_ex(info, "status", &v)) {
        g_strlcpy(j->src_status, json_object_get_string(v), sizeof(j->src_status));
    }
    if (json_object_object_get_ex(info, "ram", &ram)) {
        j->st.transferred_bytes = get_u64(ram, "transferred");
        j->st.remaining_bytes = get_u64(ram, "remaining");
        j->st.total_bytes = get_u64(ram, "total");
        j->st.dirty_pages_rate = get_u64(ram, "dirty-pages-rate");
        uint64_t syncs = get_u64(ram, "dirty-sync-count");
        if (syncs > j->st.passes) {
            j->st.passes = syncs;
        }
        if (json_object_object_get_ex(ram, "mbps", &v)) {
            j->st.mbps = json_object_get_double(v);
        }
        if (j->st.total_bytes) {
            double done = 1.0 - (double)j->st.remaining_bytes / (double)j->st.total_bytes;
            j->st.progress = done < 0 ? 0 : done;
        }
    }
    j->st.qemu_total_ms = get_u64(info, "total-time");
    j->st.qemu_downtime_ms = get_u64(info, "downtime");
    return info;
}

static bool set_caps_events(eng_vm *vm, vmig_error **errp)
{
    json_object *cap = json_object_new_object();
    json_object_object_add(cap, "capability", json_object_new_string("events"));
    json_object_object_add(cap, "state", json_object_new_boolean(true));
    json_object *caps = json_object_new_array();
    json_object_array_add(caps, cap);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "capabilities", caps);
    return qmp_conn_call_void(vm->qmp, "migrate-set-capabilities", args, ENG_QMP_TIMEOUT_MS,
                              errp);
}

static bool set_source_params(mig_job *j, vmig_error **errp)
{
    json_object *args = json_object_new_object();
    uint64_t bw = j->o->bandwidth_mib_s ? (uint64_t)j->o->bandwidth_mib_s << 20
                                        : BANDWIDTH_UNLIMITED;
    json_object_object_add(args, "max-bandwidth", json_object_new_int64((int64_t)bw));
    if (j->o->max_downtime_ms) {
        json_object_object_add(args, "downtime-limit",
                               json_object_new_int64(j->o->max_downtime_ms));
    }
    return qmp_conn_call_void(j->src->qmp, "migrate-set-parameters", args, ENG_QMP_TIMEOUT_MS,
                              errp);
}

static bool check_opts(const vmig_migrate_opts *o, vmig_error **errp)
{
    if (o->max_downtime_ms < 0 || o->max_downtime_ms > 2000000) {
        vmig_set_error(errp, VMIG_E_INVAL, "max downtime %d ms is out of range 0-2000000",
                       o->max_downtime_ms);
        return false;
    }
    if (o->bandwidth_mib_s < 0 || o->bandwidth_mib_s > 1000000) {
        vmig_set_error(errp, VMIG_E_INVAL, "bandwidth %d MiB/s is out of range 0-1000000",
                       o->bandwidth_mib_s);
        return false;
    }
    if (o->timeout_s < 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "timeout %d s is negative", o->timeout_s);
        return false;
    }
    return true;
}

static bool resolve_dest(mig_job *j, vmig_error **errp)
{
    const char *d = j->o->dest ? j->o->dest : "local";
    if (strcmp(d, "local") == 0) {
        j->dest_state = g_strdup(j->e->state_dir);
        return true;
    }
    if (!g_str_has_prefix(d, "local:") || !d[6]) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "unknown destination '%s': give 'local' or 'local:STATE_DIR'", d);
        return false;
    }
    if (!g_file_test(d + 6, G_FILE_TEST_IS_DIR)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND,
                       "destination state directory %s does not exist", d + 6);
        return false;
    }
    j->dest_state = g_canonicalize_filename(d + 6, NULL);
    return true;
}

/* The source may move: running or paused, not migrating, nothing blocking it. */
static bool preflight_source(mig_job *j, vmig_error **errp)
{
    char state[32];
    if (!eng_vm_run_state(j->src, state, sizeof(state), errp)) {
        return false;
    }
    if (strcmp(state, "running") != 0 && strcmp(state, "paused") != 0) {
        vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is %s: only a running or paused VM can "
                                           "migrate", j->src->name, state);
        return false;
    }
    j->was_running = strcmp(state, "running") == 0;
    g_autoptr(json_object) info = poll_source(j, errp);
    if (!info) {
        return false;
    }
    if (is_active(j->src_status)) {
        vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is already migrating (%s)", j->src->name,
                       j->src_status);
        return false;
    }
    json_object *reasons = NULL;
    if (json_object_object_get_ex(info, "blocked-reasons", &reasons) &&
        json_object_array_length(reasons) > 0) {
        GString *why = g_string_new(NULL);
        for (size_t i = 0; i < json_object_array_length(reasons); i++) {
            g_string_append_printf(why, "%s%s", i ? "; " : "",
                                   json_object_get_string(json_object_array_get_idx(reasons, i)));
        }
        vmig_set_error(errp, VMIG_E_STATE, "QEMU refuses to migrate VM '%s': %s", j->src->name,
                       why->str);
        g_string_free(why, TRUE);
        return false;
    }
    return true;
}

/* The destination's CPU: a host-cpu.xml in its state directory (what a destination agent will
 * report for remote hosts), else what a QEMU on this host offers (host under KVM, max under
 * TCG). */
static bool dest_host_cpu(mig_job *j, cpu_def *ret, char **ret_source, vmig_error **errp)
{
    g_autofree char *file = g_build_filename(j->dest_state, "host-cpu.xml", NULL);
    if (g_file_test(file, G_FILE_TEST_EXISTS)) {
        g_autoptr(GArray) defs = cpu_defs_load(file, errp);
        if (!defs) {
            return false;
        }
        *ret = g_array_index(defs, cpu_def, 0);
        g_array_index(defs, cpu_def, 0).model_name = NULL; /* moved into *ret */
        *ret_source = g_steal_pointer(&file);
        return true;
    }
    int pid = 0;
    g_autofree char *dir = NULL;
    const char *model = j->accel == VMIG_ACCEL_KVM ? "host" : "max";
    qmp_conn *c = eng_qemu_probe(j->e, j->accel, &pid, &dir, errp);
    bool ok = c && cpu_host_model_from_qemu(c, model, ret, errp);
    qmp_conn_free(c);
    if (dir) {
        eng_qemu_probe_end(pid, dir);
    }
    *ret_source = g_strdup_printf("QEMU's %s model under %s", model, eng_accel_name(j->accel));
    return ok;
}

/* Refuses, before anything moves, a migration whose destination cannot run the VM's CPU, and
 * sets the destination's -cpu to the VM's effective CPU (with enforce added at launch). */
static bool cpu_gate(mig_job *j, vmig_error **errp)
{
    cpu_def vm, host;
    cpu_featset filtered, missing;
    if (!cpu_vm_from_qemu(j->src->qmp, &vm, &filtered, errp)) {
        return false;
    }
    /* QEMU sets hypervisor for every guest: no host CPU file needs to list it */
    cpu_featset_del(&vm.require, cpu_feature_index("hypervisor"));
    g_autofree char *source = NULL;
    if (!dest_host_cpu(j, &host, &source, errp)) {
        vmig_prefix_error(errp, "learning the destination's CPU: ");
        return false;
    }
    cpu_models *db = cpu_models_builtin();
    char *why = NULL;
    int r = (int)cpu_compare(db, &host, &vm, &missing, &why, errp);
    cpu_models_free(db);
    cpu_def_clear(&host);
    if (r < 0) {
        return false;
    }
    if (r == CPU_CMP_INCOMPATIBLE && !j->o->force) {
        vmig_set_error(errp, VMIG_E_CPU, "the destination cannot run the CPU of VM '%s' (%s): "
                                         "%s; --force migrates anyway", j->src->name, source,
                       why);
        g_free(why);
        return false;
    }
    if (r == CPU_CMP_INCOMPATIBLE) {
        eng_log(j->e, VMIG_LOG_WARN, "--force: migrating VM '%s' although the destination "
                                     "(%s) cannot run its CPU: %s", j->src->name, source, why);
    }
    g_strlcpy(j->st.cpu_check, r == CPU_CMP_INCOMPATIBLE ? "forced" : "passed",
              sizeof(j->st.cpu_check));
    g_free(why);
    GString *cpu = g_string_new(j->src->spec->cpu);
    for (size_t i = 0; i < cpu_features_count; i++) {
        if (cpu_featset_has(&filtered, (int)i)) {
            g_string_append_printf(cpu, ",-%s", cpu_features[i].name);
        }
    }
    j->dst_cpu = g_string_free(cpu, FALSE);
    return true;
}

/* The machine types a QEMU knows (query-machines), or NULL. */
static json_object *query_machines(qmp_conn *c, vmig_error **errp)
{
    return qmp_conn_call(c, "query-machines", NULL, 0, ENG_QMP_TIMEOUT_MS, errp);
}

/* What the destination's QEMU (the engine's) is: its version, and whether it has the VM's
 * machine type.  Asked of a QEMU started for the purpose, before any destination starts. */
static bool probe_destination(mig_job *j, eng_preflight *p, char **ret_dst_machine,
                              vmig_error **errp)
{
    int pid = 0;
    g_autofree char *dir = NULL;
    qmp_conn *c = eng_qemu_probe(j->e, j->accel, &pid, &dir, errp);
    bool ok = c && eng_qemu_version_query(c, &p->dst, errp);
    if (ok) {
        g_autoptr(json_object) machines = query_machines(c, NULL);
        *ret_dst_machine = machines ? eng_machine_resolve(machines, p->machine) : NULL;
        p->dst_machine_known = !machines          ? ENG_MACHINE_UNCHECKED
                               : *ret_dst_machine ? ENG_MACHINE_KNOWN
                                                  : ENG_MACHINE_UNKNOWN;
    }
    qmp_conn_free(c);
    if (dir) {
        eng_qemu_probe_end(pid, dir);
    }
    if (!ok) {
        vmig_prefix_error(errp, "asking the destination's QEMU (%s): ", j->e->qemu);
    }
    return ok;
}

/* Both QEMUs' versions and the machine type, and QEMU's known TCG data loss: refused before
 * anything starts (engine/preflight.c). */
static bool preflight_qemus(mig_job *j, vmig_error **errp)
{
    eng_preflight p = {.vm = j->src->name, .machine = j->src->spec->machine,
                       .live = j->o->live, .unsafe = j->o->unsafe};
    if (!eng_qemu_version_query(j->src->qmp, &p.src, errp) ||
        !eng_qemu_uses_tcg(j->src->qmp, &p.src_tcg, errp)) {
        vmig_prefix_error(errp, "asking the source QEMU of VM '%s': ", j->src->name);
        return false;
    }
    g_autoptr(json_object) machines = query_machines(j->src->qmp, NULL);
    g_autofree char *src_machine = machines ? eng_machine_resolve(machines, p.machine) : NULL;
    g_autofree char *dst_machine = NULL;
    p.src_machine = src_machine;
    if (!probe_destination(j, &p, &dst_machine, errp) || !eng_preflight_versions(&p, errp)) {
        return false;
    }
    bool warn = false;
    if (!eng_preflight_tcg(&p, &warn, errp)) {
        return false;
    }
    if (warn) {
        eng_log(j->e, VMIG_LOG_WARN,
                "--unsafe: migrating VM '%s' live on QEMU %d.%d.%d under TCG, which loses "
                "guest writes in live migration (fixed in QEMU 9.0, commit 03bfc2188f): the "
                "destination may hold stale memory", j->src->name, p.src.major, p.src.minor,
                p.src.micro);
    }
    return true;
}

static bool prepare(mig_job *j, const char *name, vmig_error **errp)
{
    if (!check_opts(j->o, errp) || !resolve_dest(j, errp)) {
        return false;
    }
    if (!eng_spec_name_valid(name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return false;
    }
    g_autofree char *src_dir = eng_vm_dir(j->e->state_dir, name);
    j->src = eng_vm_find(j->e, src_dir, errp);
    if (!j->src || !eng_vm_connect(j->src, src_event, j, errp) || !preflight_source(j, errp)) {
        return false;
    }
    j->final_dir = eng_vm_dir(j->dest_state, name);
    if (strcmp(j->final_dir, src_dir) != 0 && g_file_test(j->final_dir, G_FILE_TEST_EXISTS)) {
        vmig_set_error(errp, VMIG_E_STATE, "the destination %s already has a VM named '%s'",
                       j->dest_state, name);
        return false;
    }
    g_autofree char *accel_path = g_build_filename(src_dir, "accel", NULL);
    g_autofree char *accel = NULL;
    if (g_file_get_contents(accel_path, &accel, NULL, NULL)) {
        eng_accel_parse(g_strstrip(accel), &j->accel);
    }
    if (!preflight_qemus(j, errp)) {
        return false;
    }
    if (j->e->cancel_requested) {
        vmig_set_error(errp, VMIG_E_CANCELLED, "cancelled");
        return false;
    }
    if (!cpu_gate(j, errp)) {
        return false;
    }
    g_autofree char *stage = g_strconcat(j->final_dir, ENG_INCOMING_SUFFIX, NULL);
    g_autoptr(vmig_spec) dspec = eng_spec_copy(j->src->spec);
    g_free(dspec->cpu);
    dspec->cpu = g_strdup(j->dst_cpu);
    j->dst = eng_vm_launch(j->e, dspec, stage, j->accel, true, errp);
    if (!j->dst) {
        vmig_prefix_error(errp, "starting the destination QEMU: ");
        return false;
    }
    j->uri = g_strdup_printf("unix:%s/migrate.sock", stage);
    if (!eng_vm_connect(j->dst, dst_event, j, errp) || !set_caps_events(j->src, errp) ||
        !set_caps_events(j->dst, errp) || !set_source_params(j, errp)) {
        return false;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(j->uri));
    return qmp_conn_call_void(j->dst->qmp, "migrate-incoming", args, ENG_QMP_TIMEOUT_MS, errp);
}

static bool dest_gone(mig_job *j, vmig_error **errp)
{
    if (qmp_conn_alive(j->dst->qmp) && eng_vm_alive(j->dst)) {
        return false;
    }
    g_usleep(50000); /* let QEMU finish writing why it exited */
    g_autofree char *tail = eng_vm_log_tail(j->dst);
    vmig_set_error(errp, VMIG_E_QEMU, "the destination QEMU exited: %s",
                   *tail ? tail : "(no output)");
    return true;
}

static bool perform(mig_job *j, vmig_progress_fn progress, void *opaque, vmig_error **errp)
{
    if (!j->o->live && j->was_running &&
        !qmp_conn_call_void(j->src->qmp, "stop", NULL, ENG_QMP_TIMEOUT_MS, errp)) {
        return false;
    }
    int64_t start = vmig_now_ms();
    j->st.setup_ms = (uint64_t)(start - j->t0);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(j->uri));
    if (!qmp_conn_call_void(j->src->qmp, "migrate", args, ENG_QMP_TIMEOUT_MS, errp)) {
        return false;
    }
    int64_t next_poll = vmig_now_ms();
    for (;;) {
        if (j->e->cancel_requested) {
            vmig_set_error(errp, VMIG_E_CANCELLED, "migration cancelled");
            return false;
        }
        if (j->o->timeout_s && vmig_now_ms() - start > (int64_t)j->o->timeout_s * 1000) {
            vmig_set_error(errp, VMIG_E_TIMEOUT, "migration did not finish within %d s "
                                                 "(remaining %" G_GUINT64_FORMAT " bytes, "
                                                 "pass %" G_GUINT64_FORMAT ")",
                           j->o->timeout_s, j->st.remaining_bytes, j->st.passes);
            return false;
        }
        if (dest_gone(j, errp)) {
            return false;
        }
        if (strcmp(j->src_status, "completed") == 0) {
            return true;
        }
        if (strcmp(j->src_status, "failed") == 0 || strcmp(j->src_status, "cancelled") == 0) {
            g_autoptr(json_object) info = poll_source(j, NULL);
            json_object *desc = NULL;
            if (info && json_object_object_get_ex(info, "error-desc", &desc)) {
                vmig_set_error(errp, VMIG_E_QEMU, "migration %s: %s", j->src_status,
                               json_object_get_string(desc));
            } else {
                vmig_set_error(errp, VMIG_E_QEMU, "migration %s", j->src_status);
            }
            return false;
        }
        if (vmig_now_ms() >= next_poll) {
            json_object *info = poll_source(j, errp);
            if (!info) {
                return false;
            }
            json_object_put(info);
            j->st.total_ms = (uint64_t)(vmig_now_ms() - j->t0);
            g_strlcpy(j->st.status, j->src_status, sizeof(j->st.status));
            if (progress) {
                progress(opaque, &j->st);
            }
            next_poll += POLL_INTERVAL_MS;
            continue; /* the status may have changed while we asked */
        }
        eng_loop_run_once(j->e->loop, MAX(1, (int)(next_poll - vmig_now_ms())));
    }
}

static bool dst_loaded(void *opaque)
{
    mig_job *j = opaque;
    return strcmp(j->dst_status, "completed") == 0 || strcmp(j->dst_status, "failed") == 0 ||
           !qmp_conn_alive(j->dst->qmp);
}

static bool dst_resumed(void *opaque)
{
    mig_job *j = opaque;
    return j->dst_resume_us != 0 || !qmp_conn_alive(j->dst->qmp);
}

static bool finish(mig_job *j, vmig_error **errp)
{
    if (!eng_wait_until(j->e, dst_loaded, j, DEST_LOAD_TIMEOUT_MS)) {
        vmig_set_error(errp, VMIG_E_TIMEOUT, "the destination did not finish loading within "
                                             "%d ms", DEST_LOAD_TIMEOUT_MS);
        return false;
    }
    if (dest_gone(j, errp)) {
        return false;
    }
    if (strcmp(j->dst_status, "completed") != 0) {
        vmig_set_error(errp, VMIG_E_QEMU, "the destination failed to load the migration "
                                          "stream");
        return false;
    }
    /* Final figures.  QEMU 7.2 announces completed a moment before it computes downtime,
     * so they are read once the destination has loaded, not at the source's event. */
    json_object_put(poll_source(j, NULL));
    if (!j->was_running) {
        j->dest_took_over = true; /* stays paused, as the source was */
        return true;
    }
    if (!qmp_conn_call_void(j->dst->qmp, "cont", NULL, ENG_QMP_TIMEOUT_MS, errp)) {
        return false;
    }
    j->dest_took_over = true;
    if (!eng_wait_until(j->e, dst_resumed, j, RESUME_TIMEOUT_MS)) {
        eng_log(j->e, VMIG_LOG_WARN, "no RESUME event from the destination within %d ms",
                RESUME_TIMEOUT_MS);
    }
    if (j->src_stop_us && j->dst_resume_us > j->src_stop_us) {
        j->st.downtime_ms = (uint64_t)((j->dst_resume_us - j->src_stop_us + 500) / 1000);
    }
    return true;
}

/* The destination runs: retire the source and give the destination the VM's name. */
static void confirm(mig_job *j)
{
    vmig_error *err = NULL;
    if (!eng_vm_kill(j->src, QUIT_TIMEOUT_MS, &err)) {
        eng_log(j->e, VMIG_LOG_ERROR, "retiring the source: %s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    eng_vm_remove_dir(j->src->dir);
    if (rename(j->dst->dir, j->final_dir) < 0) {
        eng_log(j->e, VMIG_LOG_ERROR, "renaming %s to %s: %s", j->dst->dir, j->final_dir,
                g_strerror(errno));
        return;
    }
    g_free(j->dst->dir);
    j->dst->dir = g_strdup(j->final_dir);
}

static bool src_settled(void *opaque)
{
    mig_job *j = opaque;
    return !is_active(j->src_status) || !qmp_conn_alive(j->src->qmp);
}

/* Called with the cause already in *errp: put the source back and tear the destination down. */
static void rollback(mig_job *j, vmig_error **errp)
{
    if (j->dst) {
        vmig_error *err = NULL;
        eng_vm_kill(j->dst, 2000, &err);
        vmig_error_free(err);
        eng_vm_remove_dir(j->dst->dir);
    }
    if (!j->src || !j->src->qmp || !qmp_conn_alive(j->src->qmp)) {
        return;
    }
    vmig_error *err = NULL;
    g_autoptr(json_object) info = poll_source(j, &err);
    if (info && is_active(j->src_status)) {
        qmp_conn_call_void(j->src->qmp, "migrate_cancel", NULL, ENG_QMP_TIMEOUT_MS, &err);
        int64_t deadline = vmig_now_ms() + CANCEL_TIMEOUT_MS;
        while (!src_settled(j) && vmig_ms_left(deadline) > 0) {
            eng_wait_until(j->e, src_settled, j, MIN(vmig_ms_left(deadline), POLL_INTERVAL_MS));
            json_object_put(poll_source(j, NULL));
        }
    }
    char state[32];
    if (j->was_running && eng_vm_run_state(j->src, state, sizeof(state), &err) &&
        strcmp(state, "running") != 0) {
        qmp_conn_call_void(j->src->qmp, "cont", NULL, ENG_QMP_TIMEOUT_MS, &err);
    }
    if (eng_vm_run_state(j->src, state, sizeof(state), &err)) {
        vmig_append_error(errp, "; VM '%s' is %s on the source", j->src->name, state);
    }
    if (err) {
        eng_log(j->e, VMIG_LOG_ERROR, "rolling back: %s", vmig_error_message(err));
        vmig_error_free(err);
    }
}

bool vmig_migrate(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                  vmig_progress_fn progress, void *opaque, vmig_migration_stats *ret_stats,
                  vmig_error **errp)
{
    vmig_migrate_opts defaults;
    if (!o) {
        vmig_migrate_opts_init(&defaults);
        o = &defaults;
    }
    uint64_t drain;
    while (read(e->cancel_fd, &drain, sizeof(drain)) > 0) {
    }
    e->cancel_requested = 0;
    mig_job j = {.e = e, .o = o, .t0 = vmig_now_ms()};
    g_strlcpy(j.src_status, "none", sizeof(j.src_status));
    vmig_error *err = NULL;
    bool ok = prepare(&j, name, &err) && perform(&j, progress, opaque, &err) &&
              finish(&j, &err);
    /* total: up to the destination running (or the failure), not the clean-up after it */
    j.st.total_ms = (uint64_t)(vmig_now_ms() - j.t0);
    if (ok) {
        confirm(&j);
    } else if (!j.dest_took_over) {
        rollback(&j, &err);
    }
    const char *status = ok                                                 ? "completed"
                         : vmig_error_code(err) == VMIG_E_CANCELLED         ? "cancelled"
                                                                            : "failed";
    g_strlcpy(j.st.status, status, sizeof(j.st.status));
    if (ok) {
        j.st.progress = 1.0;
    }
    if (ret_stats) {
        *ret_stats = j.st;
    }
    eng_vm_free(j.dst);
    eng_vm_free(j.src);
    g_free(j.dest_state);
    g_free(j.final_dir);
    g_free(j.uri);
    g_free(j.dst_cpu);
    vmig_propagate_error(errp, err);
    return ok;
}
