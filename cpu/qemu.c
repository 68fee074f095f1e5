/* CPUs as a live QEMU sees them: a running VM's effective CPU, a host model, its models. */
#include "cpu/qemu.h"

#include <string.h>

#include "common/error.h"

#define QMP_TIMEOUT_MS 10000

static char *first_cpu_path(qmp_conn *c, vmig_error **errp)
{
    g_autoptr(json_object) cpus = qmp_conn_call(c, "query-cpus-fast", NULL, 0, QMP_TIMEOUT_MS,
                                                errp);
    json_object *path = NULL;
    if (!cpus || json_object_array_length(cpus) == 0 ||
        !json_object_object_get_ex(json_object_array_get_idx(cpus, 0), "qom-path", &path)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-cpus-fast: no CPU in the reply");
        return NULL;
    }
    return g_strdup(json_object_get_string(path));
}

static json_object *qom_get(qmp_conn *c, const char *path, const char *prop, vmig_error **errp)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_new_string(path));
    json_object_object_add(args, "property", json_object_new_string(prop));
    return qmp_conn_call(c, "qom-get", args, 0, QMP_TIMEOUT_MS, errp);
}

/* X86CPUFeatureWordInfo list -> the features of our table it sets. */
static void words_to_set(json_object *words, cpu_featset *out)
{
    for (size_t i = 0; i < json_object_array_length(words); i++) {
        json_object *w = json_object_array_get_idx(words, i), *v;
        uint32_t leaf = 0, sub = 0;
        int reg = -1;
        uint64_t bits = 0;
        if (json_object_object_get_ex(w, "cpuid-input-eax", &v)) {
            leaf = (uint32_t)json_object_get_int64(v);
        }
        if (json_object_object_get_ex(w, "cpuid-input-ecx", &v)) {
            sub = (uint32_t)json_object_get_int64(v);
        }
        if (json_object_object_get_ex(w, "cpuid-register", &v)) {
            const char *r = json_object_get_string(v);
            reg = !strcmp(r, "EAX") ? 0 : !strcmp(r, "EBX") ? 1 : !strcmp(r, "ECX") ? 2 : 3;
        }
        if (json_object_object_get_ex(w, "features", &v)) {
            bits = (uint64_t)json_object_get_int64(v);
        }
        for (size_t f = 0; f < cpu_features_count; f++) {
            const cpu_feature_def *d = &cpu_features[f];
            if (d->kind == CPU_ITEM_CPUID && d->leaf == leaf && d->subleaf == sub &&
                d->reg == reg && (bits >> d->bit & 1)) {
                cpu_featset_add(out, (int)f);
            }
        }
    }
}

bool cpu_vm_from_qemu(qmp_conn *c, cpu_def *ret, cpu_featset *ret_filtered, vmig_error **errp)
{
    g_autofree char *path = first_cpu_path(c, errp);
    if (!path) {
        return false;
    }
    g_autoptr(json_object) words = qom_get(c, path, "feature-words", errp);
    g_autoptr(json_object) filtered = words ? qom_get(c, path, "filtered-features", errp) : NULL;
    g_autoptr(json_object) vendor = filtered ? qom_get(c, path, "vendor", errp) : NULL;
    if (!vendor) {
        vmig_prefix_error(errp, "reading the VM's CPU: ");
        return false;
    }
    cpu_def d = {.family = -1, .model = -1, .stepping = -1};
    g_strlcpy(d.vendor, json_object_get_string(vendor), sizeof(d.vendor));
    words_to_set(words, &d.require);
    memset(ret_filtered, 0, sizeof(*ret_filtered));
    words_to_set(filtered, ret_filtered);
    /* MSR features are not in feature-words: read their properties */
    for (size_t f = 0; f < cpu_features_count; f++) {
        if (cpu_features[f].kind != CPU_ITEM_MSR) {
            continue;
        }
        g_autoptr(json_object) on = qom_get(c, path, cpu_features[f].name, NULL);
        if (on && json_object_get_boolean(on)) {
            cpu_featset_add(&d.require, (int)f);
        }
    }
    *ret = d;
    return true;
}

/* query-cpu-model-expansion of @model: the reply (owned) and its props (borrowed from it). */
static json_object *expand(qmp_conn *c, const char *type, const char *model,
                           json_object **ret_props, vmig_error **errp)
{
    json_object *m = json_object_new_object();
    json_object_object_add(m, "name", json_object_new_string(model));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "type", json_object_new_string(type));
    json_object_object_add(args, "model", m);
    json_object *exp = qmp_conn_call(c, "query-cpu-model-expansion", args, 0, QMP_TIMEOUT_MS,
                                     errp);
    json_object *mo = NULL;
    if (!exp || !json_object_object_get_ex(exp, "model", &mo) ||
        !json_object_object_get_ex(mo, "props", ret_props)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-cpu-model-expansion of %s: no props", model);
        json_object_put(exp);
        return NULL;
    }
    return exp;
}

bool cpu_host_model_from_qemu(qmp_conn *c, const char *model, cpu_def *ret, vmig_error **errp)
{
    json_object *props = NULL;
    g_autoptr(json_object) exp = expand(c, "full", model, &props, errp);
    if (!exp) {
        return false;
    }
    cpu_def d = {.family = -1, .model = -1, .stepping = -1};
    json_object_object_foreach(props, key, val)
    {
        if (json_object_is_type(val, json_type_boolean) && json_object_get_boolean(val)) {
            int f = cpu_feature_index(key);
            if (f >= 0) {
                cpu_featset_add(&d.require, f);
            }
        } else if (strcmp(key, "vendor") == 0) {
            g_strlcpy(d.vendor, json_object_get_string(val), sizeof(d.vendor));
        }
    }
    *ret = d;
    return true;
}

static int prop_int(json_object *props, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(props, key, &v) ? json_object_get_int(v) : 0;
}

cpu_models *cpu_models_from_qemu(qmp_conn *c, vmig_error **errp)
{
    g_autoptr(json_object) defs = qmp_conn_call(c, "query-cpu-definitions", NULL, 0,
                                                QMP_TIMEOUT_MS, errp);
    if (!defs) {
        return NULL;
    }
    cpu_models *db = cpu_models_empty();
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < json_object_array_length(defs); i++) {
            json_object *d = json_object_array_get_idx(defs, i), *v = NULL, *alias = NULL;
            if (!json_object_object_get_ex(d, "name", &v)) {
                continue;
            }
            const char *name = json_object_get_string(v);
            bool is_alias = json_object_object_get_ex(d, "alias-of", &alias);
            if (!strcmp(name, "host") || !strcmp(name, "max") || !strcmp(name, "base")) {
                continue;
            }
            if (pass == 1) {
                if (is_alias) {
                    cpu_models_alias(db, name, json_object_get_string(alias));
                }
                continue;
            }
            if (is_alias) {
                continue;
            }
            json_object *props = NULL, *vendor = NULL;
            g_autoptr(json_object) exp = expand(c, "static", name, &props, errp);
            if (!exp) {
                vmig_prefix_error(errp, "expanding CPU model %s: ", name);
                cpu_models_free(db);
                return NULL;
            }
            cpu_featset fs = {0};
            json_object_object_foreach(props, key, val)
            {
                int f = json_object_get_boolean(val) && json_object_is_type(val, json_type_boolean)
                            ? cpu_feature_index(key)
                            : -1;
                if (f >= 0) {
                    cpu_featset_add(&fs, f);
                }
            }
            json_object_object_get_ex(props, "vendor", &vendor);
            cpu_models_add(db, name, vendor ? json_object_get_string(vendor) : "",
                           prop_int(props, "family"), prop_int(props, "model"),
                           prop_int(props, "stepping"), &fs);
        }
    }
    cpu_models_done(db);
    return db;
}
