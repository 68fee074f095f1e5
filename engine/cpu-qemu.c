/* CPUs as a live QEMU sees them, asked over QMP: a VM's effective CPU, a host model, models. */
#include "engine/cpu-qemu.h"

#include "common/error.h"
#include "cpu/api.h"
#include "cpu/qemu-reply.h"
#include "engine/engine.h"

#define CPU_QMP_TIMEOUT_MS 10000 /* one monitor command */

static json_object *qom_get(qmp_conn *c, const char *path, const char *prop, vmig_error **errp)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_new_string(path));
    json_object_object_add(args, "property", json_object_new_string(prop));
    return qmp_conn_call(c, "qom-get", args, 0, CPU_QMP_TIMEOUT_MS, errp);
}

/* The qom-get replies of the MSR feature properties this QEMU has (older ones lack some). */
static json_object *qom_get_msrs(qmp_conn *c, const char *path)
{
    json_object *msrs = json_object_new_object();
    for (const char *const *name = cpu_msr_feature_names(); *name; name++) {
        json_object *on = qom_get(c, path, *name, NULL);
        if (on) {
            json_object_object_add(msrs, *name, on);
        }
    }
    return msrs;
}

bool cpu_vm_from_qemu(qmp_conn *c, cpu_def *ret, cpu_featset *ret_filtered, vmig_error **errp)
{
    g_autoptr(json_object) cpus = qmp_conn_call(c, "query-cpus-fast", NULL, 0, CPU_QMP_TIMEOUT_MS,
                                                errp);
    g_autofree char *path = cpus ? cpu_first_qom_path(cpus, errp) : NULL;
    g_autoptr(json_object) words = path ? qom_get(c, path, "feature-words", errp) : NULL;
    g_autoptr(json_object) filtered = words ? qom_get(c, path, "filtered-features", errp) : NULL;
    g_autoptr(json_object) vendor = filtered ? qom_get(c, path, "vendor", errp) : NULL;
    g_autoptr(json_object) msrs = vendor ? qom_get_msrs(c, path) : NULL;
    if (!msrs || !cpu_vm_from_qom(words, filtered, vendor, msrs, ret, ret_filtered, errp)) {
        vmig_prefix_error(errp, "reading the VM's CPU: ");
        return false;
    }
    return true;
}

/* query-cpu-model-expansion of @model, of @type static or full. */
static json_object *expand(qmp_conn *c, const char *type, const char *model, vmig_error **errp)
{
    json_object *m = json_object_new_object();
    json_object_object_add(m, "name", json_object_new_string(model));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "type", json_object_new_string(type));
    json_object_object_add(args, "model", m);
    return qmp_conn_call(c, "query-cpu-model-expansion", args, 0, CPU_QMP_TIMEOUT_MS, errp);
}

bool cpu_host_model_from_qemu(qmp_conn *c, const char *model, cpu_def *ret, vmig_error **errp)
{
    g_autoptr(json_object) exp = expand(c, "full", model, errp);
    if (!exp || !cpu_def_from_expansion(exp, ret, errp)) {
        vmig_prefix_error(errp, "expanding CPU model %s: ", model);
        return false;
    }
    return true;
}

cpu_models *cpu_models_from_qemu(qmp_conn *c, vmig_error **errp)
{
    g_autoptr(json_object) defs = qmp_conn_call(c, "query-cpu-definitions", NULL, 0,
                                                CPU_QMP_TIMEOUT_MS, errp);
    g_auto(GStrv) names = defs ? cpu_definitions_models(defs, errp) : NULL;
    if (!names) {
        return NULL;
    }
    g_autoptr(cpu_models) db = cpu_models_empty();
    for (size_t i = 0; names[i]; i++) {
        g_autoptr(json_object) exp = expand(c, "static", names[i], errp);
        if (!exp) {
            vmig_prefix_error(errp, "expanding CPU model %s: ", names[i]);
            return NULL;
        }
        if (!cpu_models_add_expansion(db, names[i], exp, errp)) {
            return NULL;
        }
    }
    if (!cpu_models_add_aliases(db, defs, errp)) {
        return NULL;
    }
    cpu_models_done(db);
    return g_steal_pointer(&db);
}

/* ---- public: a QEMU started to be asked ------------------------------------------------------ */

typedef bool (*probe_fn)(qmp_conn *c, void *opaque, vmig_error **errp);

/* Starts a throwaway QEMU (-machine none) under @accel and runs @fn on its monitor. */
static bool with_probe(vmig_engine *e, vmig_accel accel, probe_fn fn, void *opaque,
                       vmig_error **errp)
{
    int pid = 0;
    g_autofree char *dir = NULL;
    qmp_conn *c = eng_qemu_probe(e, accel, &pid, &dir, errp);
    bool ok = c && fn(c, opaque, errp);
    qmp_conn_free(c);
    if (dir) {
        eng_qemu_probe_end(pid, dir);
    }
    return ok;
}

static bool probe_models(qmp_conn *c, void *opaque, vmig_error **errp)
{
    *(cpu_models **)opaque = cpu_models_from_qemu(c, errp);
    return *(cpu_models **)opaque != NULL;
}

vmig_cpu_models *vmig_cpu_models_from_qemu(vmig_engine *e, vmig_accel accel, vmig_error **errp)
{
    cpu_models *db = NULL;
    return with_probe(e, accel, probe_models, &db, errp) ? cpu_api_models_new(db) : NULL;
}

typedef struct host_probe {
    const char *model;
    cpu_def def;
} host_probe;

static bool probe_host(qmp_conn *c, void *opaque, vmig_error **errp)
{
    host_probe *h = opaque;
    return cpu_host_model_from_qemu(c, h->model, &h->def, errp);
}

vmig_cpu *vmig_cpu_host_from_qemu(vmig_engine *e, vmig_accel accel, vmig_error **errp)
{
    host_probe h = {.model = accel == VMIG_ACCEL_KVM ? "host" : "max"};
    return with_probe(e, accel, probe_host, &h, errp) ? cpu_api_cpu_new(&h.def) : NULL;
}
