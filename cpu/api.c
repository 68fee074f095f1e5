/* The public CPU API (include/vmigrate.h, section CPUs) over cpu/: the parts that need no QEMU. */
#include "cpu/api.h"

#include <string.h>

#include "common/error.h"
#include "cpu/format.h"
#include "cpu/raw.h"

/* Why a baseline lacks what it lacks, per input (vmig_cpu_baseline_explain). */
typedef struct baseline_why {
    cpu_featset alone;     /* every other input has these, this one does not */
    cpu_featset shared;    /* it lacks these with some other input */
    cpu_featset not_guest; /* a host CPU's bits no guest there gets */
} baseline_why;

struct vmig_cpu {
    cpu_def def;
    cpu_featset all; /* every feature it has, the model's included, when has_all */
    bool has_all;
    cpu_raw *raw; /* the CPUID it was read from, or NULL */
    GArray *why;  /* baseline_why per input of a baseline, or NULL */
};

struct vmig_cpu_list {
    GPtrArray *cpus; /* vmig_cpu * */
};

struct vmig_cpu_models {
    cpu_models *db;
};

/* ---- CPUs ------------------------------------------------------------------------------------ */

vmig_cpu *cpu_api_cpu_new(cpu_def *d)
{
    vmig_cpu *cpu = g_new0(vmig_cpu, 1);
    cpu->def = *d;
    memset(d, 0, sizeof(*d));
    /* without a model, what it requires is all it has */
    cpu->has_all = cpu->def.model_name == NULL;
    cpu->all = cpu->def.require;
    return cpu;
}

void vmig_cpu_free(vmig_cpu *cpu)
{
    if (!cpu) {
        return;
    }
    cpu_def_clear(&cpu->def);
    cpu_raw_free(cpu->raw);
    if (cpu->why) {
        g_array_free(cpu->why, TRUE);
    }
    g_free(cpu);
}

static vmig_cpu *cpu_copy(const vmig_cpu *cpu)
{
    vmig_cpu *c = g_memdup2(cpu, sizeof(*cpu));
    c->def.model_name = g_strdup(cpu->def.model_name);
    c->raw = cpu->raw ? cpu_raw_copy(cpu->raw) : NULL;
    c->why = cpu->why ? g_array_copy(cpu->why) : NULL;
    return c;
}

static vmig_cpu *cpu_from_raw(cpu_raw *raw /* stolen */)
{
    cpu_def d = {.host = true};
    cpu_raw_vendor(raw, d.vendor);
    cpu_raw_signature(raw, &d.family, &d.model, &d.stepping);
    cpu_raw_features(raw, &d.require);
    vmig_cpu *cpu = cpu_api_cpu_new(&d);
    cpu->raw = raw;
    return cpu;
}

vmig_cpu *vmig_cpu_host(vmig_error **errp)
{
    cpu_raw *raw = cpu_raw_host(errp);
    return raw ? cpu_from_raw(raw) : NULL;
}

char *vmig_cpu_format(const vmig_cpu *cpu, vmig_cpu_fmt fmt, unsigned flags)
{
    bool all = (flags & VMIG_CPU_ALL_FEATURES) && cpu->has_all;
    cpu_output out = fmt == VMIG_CPU_FMT_JSON   ? CPU_OUT_JSON
                     : fmt == VMIG_CPU_FMT_QEMU ? CPU_OUT_QEMU
                                                : CPU_OUT_LIBVIRT;
    return cpu_format(&cpu->def, all ? &cpu->all : NULL, out);
}

char *vmig_cpu_export(const vmig_cpu *cpu, vmig_cpu_dump fmt, vmig_error **errp)
{
    if (!cpu->raw) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "this CPU was not read from raw CPUID data, so there "
                       "is no dump to export");
        return NULL;
    }
    return fmt == VMIG_CPU_DUMP_XML ? cpu_raw_to_xml(cpu->raw) : cpu_raw_to_json(cpu->raw);
}

bool vmig_cpu_is_host(const vmig_cpu *cpu)
{
    return cpu->def.host;
}

char *vmig_cpu_host_only(const vmig_cpu *cpu, int *ret_nested)
{
    cpu_featset s;
    const cpu_featset *src = cpu->has_all ? &cpu->all : &cpu->def.require;
    s = *src;
    for (size_t i = 0; i < cpu_features_count; i++) {
        cpu_featset_del(&s, (int)i);
    }
    if (ret_nested) {
        *ret_nested = cpu->def.nested_ignored;
    }
    return cpu_featset_names(&s, true);
}

/* ---- lists ----------------------------------------------------------------------------------- */

static void cpu_free_cb(gpointer p)
{
    vmig_cpu_free(p);
}

vmig_cpu_list *vmig_cpu_list_new(void)
{
    vmig_cpu_list *l = g_new0(vmig_cpu_list, 1);
    l->cpus = g_ptr_array_new_with_free_func(cpu_free_cb);
    return l;
}

void vmig_cpu_list_free(vmig_cpu_list *l)
{
    if (!l) {
        return;
    }
    g_ptr_array_free(l->cpus, TRUE);
    g_free(l);
}

bool vmig_cpu_list_add_text(vmig_cpu_list *l, const char *text, size_t len, const char *origin,
                            vmig_error **errp)
{
    g_autofree char *copy = g_strndup(text, len); /* the readers want a NUL at the end */
    cpu_raw *raw = NULL;
    g_autoptr(GArray) defs = cpu_defs_parse(copy, strlen(copy), origin, &raw, errp);
    if (!defs) {
        return false;
    }
    if (raw) {
        cpu_def_clear(&g_array_index(defs, cpu_def, 0));
        g_ptr_array_add(l->cpus, cpu_from_raw(raw));
        return true;
    }
    for (guint i = 0; i < defs->len; i++) {
        g_ptr_array_add(l->cpus, cpu_api_cpu_new(&g_array_index(defs, cpu_def, i)));
    }
    return true;
}

bool vmig_cpu_list_add_file(vmig_cpu_list *l, const char *path, vmig_error **errp)
{
    gsize len = 0;
    g_autofree char *text = vmig_file_read(path, &len, errp);
    return text && vmig_cpu_list_add_text(l, text, len, path, errp);
}

vmig_cpu_list *vmig_cpu_list_load(const char *path, vmig_error **errp)
{
    vmig_cpu_list *l = vmig_cpu_list_new();
    if (!vmig_cpu_list_add_file(l, path, errp)) {
        vmig_cpu_list_free(l);
        return NULL;
    }
    return l;
}

void vmig_cpu_list_add(vmig_cpu_list *l, const vmig_cpu *cpu)
{
    g_ptr_array_add(l->cpus, cpu_copy(cpu));
}

size_t vmig_cpu_list_count(const vmig_cpu_list *l)
{
    return l->cpus->len;
}

const vmig_cpu *vmig_cpu_list_get(const vmig_cpu_list *l, size_t i)
{
    return i < l->cpus->len ? g_ptr_array_index(l->cpus, i) : NULL;
}

/* ---- models ---------------------------------------------------------------------------------- */

vmig_cpu_models *cpu_api_models_new(cpu_models *db)
{
    vmig_cpu_models *m = g_new0(vmig_cpu_models, 1);
    m->db = db;
    return m;
}

vmig_cpu_models *vmig_cpu_models_builtin(void)
{
    return cpu_api_models_new(cpu_models_builtin());
}

const char *vmig_cpu_models_builtin_version(void)
{
    return cpu_data_qemu_version;
}

void vmig_cpu_models_free(vmig_cpu_models *m)
{
    if (!m) {
        return;
    }
    cpu_models_free(m->db);
    g_free(m);
}

size_t vmig_cpu_models_count(const vmig_cpu_models *m)
{
    return cpu_models_count_get(m->db);
}

const char *vmig_cpu_models_get(const vmig_cpu_models *m, size_t i, const char **ret_versioned,
                                const char **ret_vendor, char **ret_features)
{
    if (i >= cpu_models_count_get(m->db)) {
        return NULL;
    }
    const cpu_model *cm = cpu_models_at(m->db, i);
    if (ret_versioned) {
        *ret_versioned = cm->versioned;
    }
    if (ret_vendor) {
        *ret_vendor = cm->vendor;
    }
    if (ret_features) {
        *ret_features = cpu_featset_names(&cm->features, false);
    }
    return cm->name;
}

const char *vmig_cpu_models_alias(const vmig_cpu_models *m, size_t i, size_t k)
{
    if (i >= cpu_models_count_get(m->db)) {
        return NULL;
    }
    const cpu_model *cm = cpu_models_at(m->db, i);
    return k < cm->aliases->len ? g_ptr_array_index(cm->aliases, k) : NULL;
}

/* ---- decode, baseline, compare --------------------------------------------------------------- */

/* The result of a decode as a CPU: @dec's model plus and minus features, all of @set known. */
static vmig_cpu *decoded_cpu(const cpu_decoded *dec, const cpu_featset *set, const char *vendor,
                             int family, int model, int stepping)
{
    cpu_def d = {.family = family,
                 .model = model,
                 .stepping = stepping,
                 .model_name = g_strdup(dec->model->name),
                 .require = dec->require,
                 .disable = dec->disable};
    g_strlcpy(d.vendor, vendor, sizeof(d.vendor));
    vmig_cpu *cpu = cpu_api_cpu_new(&d);
    cpu->all = *set;
    cpu->has_all = true;
    return cpu;
}

vmig_cpu *vmig_cpu_decode(const vmig_cpu_models *m, const vmig_cpu *cpu, unsigned flags,
                          vmig_error **errp)
{
    const cpu_def *d = &cpu->def;
    /* a host CPU decodes as a host's (nothing disabled) unless a guest's view is asked for;
     * a guest CPU always as a guest's */
    bool as_guest = (flags & VMIG_CPU_GUEST) || !d->host;
    cpu_featset set;
    cpu_decoded dec;
    bool ok = (flags & VMIG_CPU_GUEST) ? cpu_def_guest_set(m->db, d, &set, errp)
                                       : cpu_def_expand(m->db, d, &set, errp);
    if (!ok) {
        return NULL;
    }
    if (flags & VMIG_CPU_MIGRATABLE) {
        cpu_featset_drop_unmigratable(&set);
    }
    const char *vendor = cpu_def_vendor(m->db, d);
    if (!cpu_decode(m->db, &set, vendor, d->family, d->model,
                    as_guest ? CPU_DECODE_GUEST : CPU_DECODE_HOST, NULL, &dec, errp)) {
        return NULL;
    }
    vmig_cpu *out = decoded_cpu(&dec, &set, vendor, d->family, d->model, d->stepping);
    out->def.host = !as_guest;
    out->def.nested_ignored = d->nested_ignored;
    return out;
}

/* Per input of a baseline: what it lacks alone, with others, and what KVM keeps from a guest
 * on it. */
static bool baseline_explain(const cpu_models *db, const cpu_def *defs, size_t n, GArray *why,
                             vmig_error **errp)
{
    g_autofree cpu_featset *sets = g_new0(cpu_featset, n);
    cpu_featset any = {0};
    for (size_t i = 0; i < n; i++) {
        if (!cpu_def_guest_set(db, &defs[i], &sets[i], errp)) {
            return false;
        }
        cpu_featset_or(&any, &sets[i]);
    }
    for (size_t i = 0; i < n; i++) {
        baseline_why w = {0};
        cpu_featset others = any;
        for (size_t k = 0; k < n; k++) {
            if (k != i) {
                cpu_featset_and(&others, &sets[k]);
            }
        }
        w.alone = n > 1 ? others : (cpu_featset){0};
        cpu_featset_andnot(&w.alone, &sets[i]);
        w.shared = any;
        cpu_featset_andnot(&w.shared, &sets[i]);
        cpu_featset_andnot(&w.shared, &w.alone);
        if (defs[i].host && cpu_def_expand(db, &defs[i], &w.not_guest, NULL)) {
            cpu_featset_andnot(&w.not_guest, &sets[i]);
        }
        g_array_append_val(why, w);
    }
    return true;
}

vmig_cpu *vmig_cpu_baseline(const vmig_cpu_models *m, const vmig_cpu_list *cpus, unsigned flags,
                            vmig_error **errp)
{
    /* cpu_baseline() reads an array of definitions: shallow copies, borrowed model names */
    g_autofree cpu_def *defs = g_new0(cpu_def, cpus->cpus->len + 1);
    for (guint i = 0; i < cpus->cpus->len; i++) {
        defs[i] = ((vmig_cpu *)g_ptr_array_index(cpus->cpus, i))->def;
    }
    cpu_decoded dec;
    cpu_featset set;
    char vendor[13];
    if (!cpu_baseline(m->db, defs, cpus->cpus->len, flags & VMIG_CPU_MIGRATABLE, &dec, &set, vendor,
                      errp)) {
        return NULL;
    }
    GArray *why = g_array_new(FALSE, TRUE, sizeof(baseline_why));
    if (!baseline_explain(m->db, defs, cpus->cpus->len, why, errp)) {
        g_array_free(why, TRUE);
        return NULL;
    }
    vmig_cpu *base = decoded_cpu(&dec, &set, vendor, -1, -1, -1);
    base->why = why;
    return base;
}

bool vmig_cpu_baseline_explain(const vmig_cpu *base, size_t i, char **ret_alone, char **ret_shared,
                               char **ret_not_guest)
{
    if (!base->why || i >= base->why->len) {
        return false;
    }
    const baseline_why *w = &g_array_index(base->why, baseline_why, i);
    *ret_alone = cpu_featset_names(&w->alone, false);
    *ret_shared = cpu_featset_names(&w->shared, false);
    *ret_not_guest = cpu_featset_names(&w->not_guest, true);
    return true;
}

vmig_cpu_cmp vmig_cpu_compare(const vmig_cpu_models *m, const vmig_cpu *host, const vmig_cpu *guest,
                              char **ret_missing, char **ret_why, vmig_error **errp)
{
    cpu_featset missing;
    char *why = NULL;
    int r = (int)cpu_compare(m->db, &host->def, &guest->def, &missing, &why, errp);
    if (r < 0) {
        g_free(why);
        return VMIG_CPU_CMP_ERROR;
    }
    if (ret_missing) {
        *ret_missing = cpu_featset_names(&missing, false);
    }
    if (ret_why) {
        *ret_why = why;
    } else {
        g_free(why);
    }
    return r == CPU_CMP_IDENTICAL  ? VMIG_CPU_CMP_IDENTICAL
           : r == CPU_CMP_SUPERSET ? VMIG_CPU_CMP_SUPERSET
                                   : VMIG_CPU_CMP_INCOMPATIBLE;
}

const char *vmig_cpu_cmp_name(vmig_cpu_cmp r)
{
    switch (r) {
    case VMIG_CPU_CMP_INCOMPATIBLE:
        return "incompatible";
    case VMIG_CPU_CMP_IDENTICAL:
        return "identical";
    case VMIG_CPU_CMP_SUPERSET:
        return "superset";
    case VMIG_CPU_CMP_ERROR:
        break;
    }
    return "error";
}

const char *vmig_cpu_vendor_name(const char *cpuid_vendor)
{
    return cpu_vendor_libvirt(cpuid_vendor);
}
