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
        GArray *defs = cpu_defs_parse_xml(text, len, origin, errp);
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
    cpu_def d = {.host = true};
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
    for (size_t i = 0; i < cpu_feature_count(); i++) {
        if (!cpu_featset_has(s, (int)i)) {
            continue;
        }
        if (policy) {
            g_string_append_printf(out, "  <feature policy='%s' name='%s'/>\n", policy,
                                   cpu_feature_libvirt_name((int)i));
        } else {
            g_string_append_printf(out, "  <feature name='%s'/>\n",
                                   cpu_feature_libvirt_name((int)i));
        }
    }
}

static json_object *names_array(const cpu_featset *s)
{
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < cpu_feature_count(); i++) {
        if (cpu_featset_has(s, (int)i)) {
            json_object_array_add(arr, json_object_new_string(cpu_feature((int)i)->name));
        }
    }
    return arr;
}

static char *format_json(const cpu_def *d, const cpu_featset *require)
{
    g_autoptr(json_object) o = json_object_new_object();
    json_object_object_add(o, "model",
                           d->model_name ? json_object_new_string(d->model_name) : NULL);
    /* the vendor as libvirt and the text outputs write it */
    json_object_object_add(
        o, "vendor", d->vendor[0] ? json_object_new_string(cpu_vendor_libvirt(d->vendor)) : NULL);
    json_object_object_add(o, "type", json_object_new_string(d->host ? "host" : "guest"));
    json_object_object_add(o, "require", names_array(require));
    json_object_object_add(o, "disable", names_array(&d->disable));
    return g_strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE));
}

/* A -cpu argument names only what QEMU can give a guest. */
static char *format_qemu(const cpu_def *d, const cpu_featset *require)
{
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

/* A host CPU as virsh capabilities prints it: no mode, no policies, its signature. */
static char *format_host_xml(const cpu_def *d, const cpu_featset *require)
{
    GString *out = g_string_new("<cpu>\n  <arch>x86_64</arch>\n");
    if (d->model_name) {
        g_string_append_printf(out, "  <model>%s</model>\n", d->model_name);
    }
    if (d->vendor[0]) {
        g_string_append_printf(out, "  <vendor>%s</vendor>\n", cpu_vendor_libvirt(d->vendor));
    }
    if (d->family >= 0) {
        g_string_append_printf(out, "  <signature family='%d' model='%d' stepping='%d'/>\n",
                               d->family, d->model, d->stepping);
    }
    lines(out, require, NULL);
    lines(out, &d->disable, "disable");
    g_string_append(out, "</cpu>\n");
    return g_string_free(out, FALSE);
}

char *cpu_format(const cpu_def *d, const cpu_featset *all, cpu_output fmt)
{
    /* --features: every feature, not only the difference from the model */
    const cpu_featset *require = all ? all : &d->require;
    if (fmt == CPU_OUT_JSON) {
        return format_json(d, require);
    }
    if (fmt == CPU_OUT_QEMU) {
        return format_qemu(d, require);
    }
    if (d->host) {
        return format_host_xml(d, require);
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
