/*
 * The migration job's prepare phase (migrate.c has the rest): with the source's monitor
 * connected, ask the source and a probe QEMU (the destination's binary, -machine none) what they
 * are, all at once; then refuse what cannot work (the source's state, blockers, versions,
 * QEMU's TCG data loss, the CPU) before a destination starts.  The CPU is read here and judged
 * by cpu/'s pure functions.
 */
#include <string.h>

#include "cpu/format.h"
#include "cpu/qemu-reply.h"
#include "migrate-priv.h"

/* ---- prepare: the decisions ------------------------------------------------------------------ */

/* What the destination offers the VM (cpu_gate_offer): under KVM its host model, for which
 * its host-cpu.xml stands when it has one (a remote host, until its agent reports), else the
 * probe's expansion of host; under TCG the probe's expansion of max, whatever the host. */
static bool dest_host_cpu(mig *m, cpu_def *ret, char **ret_source, vmig_error **errp)
{
    if (m->host_cpu_file) {
        gsize len = 0;
        g_autofree char *text = vmig_file_read(m->host_cpu_file, &len, errp);
        *ret_source = g_strdup_printf("%s, under KVM", m->host_cpu_file);
        return text && cpu_gate_offer(true, text, len, m->host_cpu_file, NULL, ret, errp);
    }
    bool kvm = cpu_expansion_is_host(m->dst_expansion);
    *ret_source = g_strdup_printf("QEMU's %s model under %s", kvm ? "host" : "max",
                                  kvm ? "KVM" : "TCG");
    return cpu_gate_offer(kvm, NULL, 0, NULL, m->dst_expansion, ret, errp);
}

/* Refuses a migration whose destination cannot run the VM's CPU, and sets the destination's
 * -cpu to the VM's effective CPU (with enforce added at launch). */
static bool cpu_gate(vmig_job *j, vmig_error **errp)
{
    mig *m = M(j);
    cpu_def vm, host;
    cpu_featset filtered, missing;
    if (!cpu_vm_from_qom(m->qom_words, m->qom_filtered, m->qom_vendor, m->qom_msrs, &vm, &filtered,
                         errp)) {
        vmig_prefix_error(errp, "reading the CPU of VM '%s': ", m->name);
        return false;
    }
    g_autofree char *source = NULL;
    if (!dest_host_cpu(m, &host, &source, errp)) {
        vmig_prefix_error(errp, "learning the destination's CPU: ");
        return false;
    }
    char *why = NULL;
    int r = (int)cpu_gate_check(&vm, &host, &missing, &why, errp);
    cpu_def_clear(&host);
    if (r < 0) {
        return false;
    }
    if (r == CPU_CMP_INCOMPATIBLE && !m->o.force) {
        vmig_set_error(errp, VMIG_E_CPU,
                       "the destination cannot run the CPU of VM '%s' (%s): "
                       "%s; --force migrates anyway",
                       m->name, source, why);
        g_free(why);
        return false;
    }
    if (r == CPU_CMP_INCOMPATIBLE) {
        eng_log(j->e, VMIG_LOG_WARN,
                "--force: migrating VM '%s' although the destination "
                "(%s) cannot run its CPU: %s",
                m->name, source, why);
    }
    g_strlcpy(m->st.cpu_check, r == CPU_CMP_INCOMPATIBLE ? "forced" : "passed",
              sizeof(m->st.cpu_check));
    g_free(why);
    GString *cpu = g_string_new(m->src->spec->cpu);
    for (size_t i = 0; i < cpu_features_count; i++) {
        if (cpu_featset_has(&filtered, (int)i)) {
            g_string_append_printf(cpu, ",-%s", cpu_features[i].name);
        }
    }
    m->dst_cpu = g_string_free(cpu, FALSE);
    return true;
}

/* Both QEMUs' versions and the machine type, and QEMU's known TCG data loss. */
static bool preflight_qemus(vmig_job *j, vmig_error **errp)
{
    mig *m = M(j);
    eng_preflight *p = &m->pf;
    p->vm = m->name;
    p->machine = m->src->spec->machine;
    p->live = m->o.live;
    p->unsafe = m->o.unsafe;
    g_autofree char *src_machine = m->src_machines
                                       ? eng_machine_resolve(m->src_machines, p->machine)
                                       : NULL;
    g_autofree char *dst_machine = m->dst_machines
                                       ? eng_machine_resolve(m->dst_machines, p->machine)
                                       : NULL;
    p->src_machine = src_machine;
    p->dst_machine_known = !m->dst_machines ? ENG_MACHINE_UNCHECKED
                           : dst_machine    ? ENG_MACHINE_KNOWN
                                            : ENG_MACHINE_UNKNOWN;
    bool warn = false;
    bool ok = eng_preflight_versions(p, errp) && eng_preflight_tcg(p, &warn, errp);
    p->src_machine = NULL;
    if (ok && warn) {
        eng_log(j->e, VMIG_LOG_WARN,
                "--unsafe: migrating VM '%s' live on QEMU %d.%d.%d under TCG, which loses "
                "guest writes in live migration (fixed in QEMU 9.0, commit 03bfc2188f): the "
                "destination may hold stale memory",
                m->name, p->src.major, p->src.minor, p->src.micro);
    }
    return ok;
}

static void decide(vmig_job *j)
{
    mig *m = M(j);
    mig_discard_probe(m);
    vmig_error *err = NULL;
    if (!preflight_qemus(j, &err) || !mig_converge_preflight(m, &err) || !cpu_gate(j, &err)) {
        eng_job_fail(j, err);
        return;
    }
    mig_storage_preflight(j, mig_launch_destination);
}

/* ---- prepare: what the source and the destination's QEMU are --------------------------------- */

static json_object *keep(json_object *ret)
{
    return json_object_get(ret);
}

static bool on_qom(vmig_job *j, json_object *ret, json_object **slot)
{
    json_object_put(*slot);
    *slot = keep(ret);
    (void)j;
    return true;
}

static bool on_words(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)errp;
    return on_qom(j, ret, &M(j)->qom_words);
}

static bool on_filtered(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)errp;
    return on_qom(j, ret, &M(j)->qom_filtered);
}

static bool on_vendor(vmig_job *j, json_object *ret, vmig_error **errp)
{
    (void)errp;
    return on_qom(j, ret, &M(j)->qom_vendor);
}

typedef struct msr_call {
    vmig_job *j;
    const char *name;
} msr_call;

static void on_msr(void *opaque, json_object *ret, const vmig_error *err)
{
    msr_call *c = opaque;
    if (!err && ret) {
        json_object_object_add(M(c->j)->qom_msrs, c->name, json_object_get(ret));
    }
    vmig_job *j = c->j;
    g_free(c);
    eng_job_release(j);
}

static json_object *qom_args(const char *path, const char *prop)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_new_string(path));
    json_object_object_add(args, "property", json_object_new_string(prop));
    return args;
}

static void ask_cpu(vmig_job *j)
{
    mig *m = M(j);
    qmp_conn *c = m->src->qmp;
    eng_job_call(j, c, "qom-get", qom_args(m->cpu_path, "feature-words"), on_words);
    eng_job_call(j, c, "qom-get", qom_args(m->cpu_path, "filtered-features"), on_filtered);
    eng_job_call(j, c, "qom-get", qom_args(m->cpu_path, "vendor"), on_vendor);
    m->qom_msrs = json_object_new_object();
    for (const char *const *n = cpu_msr_feature_names(); *n; n++) {
        msr_call *mc = g_new0(msr_call, 1);
        mc->j = j;
        mc->name = *n;
        eng_job_hold(j);
        qmp_call(c, "qom-get", qom_args(m->cpu_path, *n), 0, ENG_QMP_TIMEOUT_MS, on_msr, mc);
    }
}

static void probe_failed(vmig_job *j, const vmig_error *err)
{
    mig_fail_with(j, err, "asking the destination's QEMU (%s): ", j->e->qemu);
}

static void on_dst_version(vmig_job *j, json_object *ret, const vmig_error *err)
{
    vmig_error *perr = NULL;
    if (err || !eng_qemu_version_parse(ret, &M(j)->pf.dst, &perr)) {
        probe_failed(j, err ? err : perr);
    }
    vmig_error_free(perr);
}

static void on_dst_machines(vmig_job *j, json_object *ret, const vmig_error *err)
{
    if (!err) {
        M(j)->dst_machines = keep(ret);
    }
}

static void on_dst_expansion(vmig_job *j, json_object *ret, const vmig_error *err)
{
    if (err) {
        mig_fail_with(j, err, "learning the destination's CPU: ");
        return;
    }
    M(j)->dst_expansion = keep(ret);
}

/* The CPU the destination offers depends on its accelerator: ask it (query-kvm), then the
 * expansion that stands for it (host under KVM, max under TCG). */
static void on_dst_kvm(vmig_job *j, json_object *ret, const vmig_error *err)
{
    mig *m = M(j);
    bool tcg = false;
    vmig_error *perr = NULL;
    if (err || !eng_qemu_tcg_parse(ret, &tcg, &perr)) {
        probe_failed(j, err ? err : perr);
        vmig_error_free(perr);
        return;
    }
    /* an agent's host has no file here: its probe's expansion speaks for it */
    g_autofree char *file = m->dest_state ? g_build_filename(m->dest_state, "host-cpu.xml", NULL)
                                          : NULL;
    bool has_file = file && g_file_test(file, G_FILE_TEST_EXISTS);
    if (!tcg && has_file) {
        m->host_cpu_file = g_steal_pointer(&file);
        return;
    }
    if (has_file) {
        eng_log(j->e, VMIG_LOG_INFO,
                "the destination runs TCG, which emulates a CPU whatever "
                "the host's: %s does not decide",
                file);
    }
    json_object *model = json_object_new_object();
    json_object_object_add(model, "name", json_object_new_string(tcg ? "max" : "host"));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "type", json_object_new_string("full"));
    json_object_object_add(args, "model", model);
    eng_job_call_opt(j, m->probe->qmp, "query-cpu-model-expansion", args, on_dst_expansion);
}

static void on_dst_caps(vmig_job *j, json_object *ret, const vmig_error *err)
{
    if (!err && json_object_is_type(ret, json_type_array)) {
        M(j)->dst_caps = keep(ret);
    }
}

static void ask_destination(vmig_job *j)
{
    qmp_conn *c = M(j)->probe->qmp;
    eng_job_call_opt(j, c, "query-version", NULL, on_dst_version);
    eng_job_call_opt(j, c, "query-machines", NULL, on_dst_machines);
    eng_job_call_opt(j, c, "query-kvm", NULL, on_dst_kvm);
    eng_job_call_opt(j, c, "query-migrate-capabilities", NULL, on_dst_caps);
}

/* The source may move: running or paused, not migrating, nothing blocking it. */
static void check_source(vmig_job *j)
{
    mig *m = M(j);
    if (strcmp(m->src_state, "postmigrate") == 0) {
        mig_fail_new(j, VMIG_E_STATE,
                     "VM '%s' is paused after a migration that did not finish "
                     "(postmigrate): 'vmigrate vm recover %s' resumes it",
                     m->name, m->name);
        return;
    }
    if (strcmp(m->src_state, "running") != 0 && strcmp(m->src_state, "paused") != 0) {
        mig_fail_new(j, VMIG_E_STATE, "VM '%s' is %s: only a running or paused VM can migrate",
                     m->name, m->src_state);
        return;
    }
    m->was_running = strcmp(m->src_state, "running") == 0;
    if (mig_status_active(m->src_status)) {
        mig_fail_new(j, VMIG_E_STATE, "VM '%s' is already migrating (%s)", m->name,
                     mig_status_names[m->src_status]);
        return;
    }
    size_t n = m->blocked ? json_object_array_length(m->blocked) : 0;
    if (n > 0) {
        g_autoptr(GString) why = g_string_new(NULL);
        for (size_t i = 0; i < n; i++) {
            json_object *r = json_object_array_get_idx(m->blocked, i);
            g_string_append_printf(why, "%s%s", i ? "; " : "",
                                   json_object_is_type(r, json_type_string)
                                       ? json_object_get_string(r)
                                       : "(a reason that is not a string)");
        }
        mig_fail_new(j, VMIG_E_STATE, "QEMU refuses to migrate VM '%s': %s", m->name, why->str);
        return;
    }
    ask_cpu(j);
    ask_destination(j);
    eng_job_then(j, decide);
}

static bool on_src_status(vmig_job *j, json_object *ret, vmig_error **errp)
{
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    if (!vmig_json_read(ret, fields, &status, "query-status", errp)) {
        return false;
    }
    g_strlcpy(M(j)->src_state, status, sizeof(M(j)->src_state));
    return true;
}

static void src_asked_failed(vmig_job *j, const vmig_error *err)
{
    mig_fail_with(j, err, "asking the source QEMU of VM '%s': ", M(j)->name);
}

static void on_src_version(vmig_job *j, json_object *ret, const vmig_error *err)
{
    vmig_error *perr = NULL;
    if (err || !eng_qemu_version_parse(ret, &M(j)->pf.src, &perr)) {
        src_asked_failed(j, err ? err : perr);
    }
    vmig_error_free(perr);
}

static void on_src_kvm(vmig_job *j, json_object *ret, const vmig_error *err)
{
    vmig_error *perr = NULL;
    if (err || !eng_qemu_tcg_parse(ret, &M(j)->pf.src_tcg, &perr)) {
        src_asked_failed(j, err ? err : perr);
    }
    vmig_error_free(perr);
}

static void on_src_machines(vmig_job *j, json_object *ret, const vmig_error *err)
{
    if (!err) {
        M(j)->src_machines = keep(ret);
    }
}

static bool on_src_caps(vmig_job *j, json_object *ret, vmig_error **errp)
{
    if (!json_object_is_type(ret, json_type_array)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-migrate-capabilities: the reply is not an array");
        return false;
    }
    M(j)->src_caps = keep(ret);
    return true;
}

static bool on_cpus(vmig_job *j, json_object *ret, vmig_error **errp)
{
    M(j)->cpu_path = cpu_first_qom_path(ret, errp);
    return M(j)->cpu_path != NULL;
}

static void probe_launched(void *opaque, eng_vm *vm, const vmig_error *err)
{
    vmig_job *j = opaque;
    M(j)->probe = vm;
    if (err) {
        probe_failed(j, err);
    }
    eng_job_release(j);
}

void mig_ask_source(vmig_job *j)
{
    mig *m = M(j);
    qmp_conn *c = m->src->qmp;
    eng_job_call(j, c, "query-status", NULL, on_src_status);
    eng_job_call(j, c, "query-migrate", NULL, mig_on_query_migrate);
    eng_job_call_opt(j, c, "query-version", NULL, on_src_version);
    eng_job_call_opt(j, c, "query-kvm", NULL, on_src_kvm);
    eng_job_call_opt(j, c, "query-machines", NULL, on_src_machines);
    eng_job_call(j, c, "query-cpus-fast", NULL, on_cpus);
    eng_job_call(j, c, "query-migrate-capabilities", NULL, on_src_caps);
    if (m->src->spec->disks->len) {
        eng_job_call(j, c, "query-block", NULL, mig_on_query_block);
    }
    eng_job_hold(j);
    if (m->link) { /* the agent's QEMU, asked through it */
        eng_link_launch(m->link, "probe", NULL, "probe", NULL, m->src->accel, NULL, NULL,
                        probe_launched, j);
        eng_job_then(j, check_source);
        return;
    }
    const vmig_spec *dspec = m->dest_spec ? m->dest_spec : m->src->spec;
    eng_launch_req req = {
        .accel = m->src->accel, .probe = true, .guard = true, .qemu = dspec->qemu};
    vmig_error *err = NULL;
    if (!eng_vm_launch(j->e, &req, probe_launched, j, &err)) {
        probe_launched(j, NULL, err);
        vmig_error_free(err);
    }
    eng_job_then(j, check_source);
}
