/* Reading CPU files of any kind, and writing results as libvirt XML, JSON or a -cpu string. */
#include "cpu/format.h"

#include <string.h>

#include "common/error.h"
#include "common/json.h"
#include "cpu/raw.h"

static void clear_def(gpointer p)
{
    cpu_def_clear(p);
}

GArray *cpu_defs_parse(const char *text, size_t len, const char *origin, cpu_raw **ret_raw,
                       vmig_error **errp)
{
    /* <cpu> blocks (host-model, custom CPUs, a baseline file) or a raw CPUID dump */
    if (strstr(text, "<cpu") && !strstr(text, "<cpudata")) {
        GArray *defs = cpu_defs_parse_xml(text, len, origin, NULL, errp);
        if (defs && ret_raw) {
            *ret_raw = NULL;
        }
        return defs;
    }
    g_autoptr(cpu_raw) raw = cpu_raw_parse(text, len, origin, errp);
    if (!raw) {
        return NULL;
    }
    GArray *defs = g_array_new(FALSE, TRUE, sizeof(cpu_def));
    g_array_set_clear_func(defs, clear_def);
    cpu_def d = {0};
    cpu_raw_vendor(raw, d.vendor);
    cpu_raw_signature(raw, &d.family, &d.model, &d.stepping);
    cpu_raw_features(raw, &d.require);
    g_array_append_val(defs, d);
    if (ret_raw) {
        *ret_raw = g_steal_pointer(&raw);
    }
    return defs;
}

GArray *cpu_defs_load(const char *path, vmig_error **errp)
{
    gsize len = 0;
    g_autofree char *text = vmig_file_read(path, &len, errp);
    return text ? cpu_defs_parse(text, len, path, NULL, errp) : NULL;
}

static void lines(GString *out, const cpu_featset *s, const char *policy)
{
    for (size_t i = 0; i < cpu_features_count; i++) {
        if (cpu_featset_has(s, (int)i)) {
            g_string_append_printf(out, "  <feature policy='%s' name='%s'/>\n", policy,
                                   cpu_feature_libvirt_name((int)i));
        }
    }
}

char *cpu_format(const cpu_def *d, const cpu_featset *all, cpu_output fmt)
{
    /* --features: every feature, not only the difference from the model */
    const cpu_featset *require = all ? all : &d->require;
    if (fmt == CPU_OUT_JSON) {
        g_autoptr(json_object) o = json_object_new_object();
        json_object_object_add(o, "model", d->model_name ? json_object_new_string(d->model_name)
                                                         : NULL);
        json_object_object_add(o, "vendor", json_object_new_string(d->vendor));
        const cpu_featset *sets[2] = {require, &d->disable};
        const char *keys[2] = {"require", "disable"};
        for (int k = 0; k < 2; k++) {
            json_object *arr = json_object_new_array();
            for (size_t i = 0; i < cpu_features_count; i++) {
                if (cpu_featset_has(sets[k], (int)i)) {
                    json_object_array_add(arr, json_object_new_string(cpu_features[i].name));
                }
            }
            json_object_object_add(o, keys[k], arr);
        }
        return g_strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    if (fmt == CPU_OUT_QEMU) {
        /* QEMU's "base" model has no feature: a bare list stays a valid -cpu argument */
        GString *out = g_string_new(d->model_name ? d->model_name : "base");
        for (size_t i = 0; i < cpu_features_count; i++) {
            if (cpu_featset_has(require, (int)i)) {
                g_string_append_printf(out, ",+%s", cpu_features[i].name);
            }
        }
        for (size_t i = 0; i < cpu_features_count; i++) {
            if (cpu_featset_has(&d->disable, (int)i)) {
                g_string_append_printf(out, ",-%s", cpu_features[i].name);
            }
        }
        return g_string_free(out, FALSE);
    }
    GString *out = g_string_new("<cpu mode='custom' match='exact'>\n");
    /* fallback='allow', as libvirt writes it: its expected Skylake-Client+Server baseline says
     * allow although both inputs and the result name Skylake-Client */
    if (d->model_name) {
        g_string_append_printf(out, "  <model fallback='allow'>%s</model>\n", d->model_name);
    }
    if (d->vendor[0]) {
        g_string_append_printf(out, "  <vendor>%s</vendor>\n", cpu_vendor_libvirt(d->vendor));
    }
    lines(out, require, "require");
    lines(out, &d->disable, "disable");
    g_string_append(out, "</cpu>\n");
    return g_string_free(out, FALSE);
}
