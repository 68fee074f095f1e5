/* CPUs from QMP replies: a running VM's effective CPU, a host model, a QEMU's named models. */
#include "cpu/qemu-reply.h"

#include <stddef.h>
#include <string.h>

#include "common/error.h"

/* A hostile QEMU could list models without end; each costs the caller a round trip. */
#define MAX_MODELS 1024

/* ---- reading replies through field tables ---------------------------------------------------- */

typedef enum field_type {
    FIELD_U32, /* uint32_t, a JSON integer from 0 to max (0: UINT32_MAX) */
    FIELD_STR, /* const char *, borrowed from the reply */
} field_type;

typedef struct reply_field {
    const char *key;
    field_type type;
    bool optional; /* when missing, the destination keeps what the caller put there */
    size_t offset;
    uint32_t max;
} reply_field;

static const char *type_name(json_object *v)
{
    return json_type_to_name(json_object_get_type(v));
}

static bool is_u32(json_object *v, uint32_t max)
{
    /* json-c reads integers beyond INT64_MAX as INT64_MAX or as uint64: both are too large */
    if (!json_object_is_type(v, json_type_int)) {
        return false;
    }
    int64_t n = json_object_get_int64(v);
    return n >= 0 && (uint64_t)n <= (max ? max : UINT32_MAX);
}

/* Fills @dst from object @obj by @fields; @what names the object in errors. */
static bool read_fields(json_object *obj, const char *what, const reply_field *fields, size_t n,
                        void *dst, vmig_error **errp)
{
    if (!json_object_is_type(obj, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s must be an object, not %s", what, type_name(obj));
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const reply_field *f = &fields[i];
        json_object *v = NULL;
        char *p = (char *)dst + f->offset;
        if (!json_object_object_get_ex(obj, f->key, &v)) {
            if (f->optional) {
                continue;
            }
            vmig_set_error(errp, VMIG_E_PROTO, "%s: '%s' is missing", what, f->key);
            return false;
        }
        if (f->type == FIELD_U32) {
            if (!is_u32(v, f->max)) {
                vmig_set_error(errp, VMIG_E_PROTO,
                               "%s: '%s' must be a number from 0 to %u, "
                               "not %s",
                               what, f->key, f->max ? f->max : UINT32_MAX,
                               json_object_is_type(v, json_type_int) ? "out of range"
                                                                     : type_name(v));
                return false;
            }
            *(uint32_t *)(void *)p = (uint32_t)json_object_get_int64(v);
        } else {
            if (!json_object_is_type(v, json_type_string)) {
                vmig_set_error(errp, VMIG_E_PROTO, "%s: '%s' must be a string, not %s", what,
                               f->key, type_name(v));
                return false;
            }
            *(const char **)(void *)p = json_object_get_string(v);
        }
    }
    return true;
}

static bool check_array(json_object *v, const char *what, vmig_error **errp)
{
    if (!json_object_is_type(v, json_type_array)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: the reply must be an array, not %s", what,
                       type_name(v));
        return false;
    }
    return true;
}

/* A CPUID vendor string ("GenuineIntel"): 12 characters at most. */
static bool read_vendor(json_object *v, const char *what, char ret[13], vmig_error **errp)
{
    if (!json_object_is_type(v, json_type_string)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s must be a string, not %s", what, type_name(v));
        return false;
    }
    if (json_object_get_string_len(v) > 12) {
        vmig_set_error(errp, VMIG_E_PROTO,
                       "%s: '%.40s' is not a CPUID vendor (12 characters at "
                       "most)",
                       what, json_object_get_string(v));
        return false;
    }
    g_strlcpy(ret, json_object_get_string(v), 13);
    return true;
}

/* ---- a running VM's CPU ---------------------------------------------------------------------- */

char *cpu_first_qom_path(json_object *cpus, vmig_error **errp)
{
    typedef struct {
        const char *path;
    } cpu_info;
    static const reply_field fields[] = {
        {"qom-path", FIELD_STR, false, offsetof(cpu_info, path), 0},
    };
    cpu_info ci = {0};
    if (!check_array(cpus, "query-cpus-fast", errp)) {
        return NULL;
    }
    if (json_object_array_length(cpus) == 0) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-cpus-fast: no CPU in the reply");
        return NULL;
    }
    if (!read_fields(json_object_array_get_idx(cpus, 0), "query-cpus-fast: CPU 0", fields,
                     G_N_ELEMENTS(fields), &ci, errp)) {
        return NULL;
    }
    if (!ci.path[0]) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-cpus-fast: CPU 0: 'qom-path' is empty");
        return NULL;
    }
    return g_strdup(ci.path);
}

const char *const *cpu_msr_feature_names(void)
{
    static const char *names[CPU_FEAT_MAX + 1];
    static gsize done;
    if (g_once_init_enter(&done)) {
        size_t n = 0;
        for (size_t f = 0; f < cpu_features_count && n < CPU_FEAT_MAX; f++) {
            if (cpu_features[f].kind == CPU_ITEM_MSR) {
                names[n++] = cpu_features[f].name;
            }
        }
        g_once_init_leave(&done, 1);
    }
    return names;
}

typedef struct feature_word {
    uint32_t leaf, subleaf, bits;
    const char *reg;
} feature_word;

/* X86CPURegister32 -> our register numbers (0-3 = EAX-EDX); the others carry no feature. */
static bool register_index(const char *name, int *ret)
{
    static const char *const regs[] = {"EAX", "EBX", "ECX", "EDX", "ESP", "EBP", "ESI", "EDI"};
    for (size_t i = 0; i < G_N_ELEMENTS(regs); i++) {
        if (strcmp(name, regs[i]) == 0) {
            *ret = i < 4 ? (int)i : -1;
            return true;
        }
    }
    return false;
}

/* A list of X86CPUFeatureWordInfo (a qom-get reply) -> the features of our table it sets. */
static bool words_to_set(json_object *words, const char *what, cpu_featset *out, vmig_error **errp)
{
    static const reply_field fields[] = {
        {"cpuid-input-eax", FIELD_U32, false, offsetof(feature_word, leaf), 0},
        {"cpuid-input-ecx", FIELD_U32, true, offsetof(feature_word, subleaf), 0},
        {"cpuid-register", FIELD_STR, false, offsetof(feature_word, reg), 0},
        {"features", FIELD_U32, false, offsetof(feature_word, bits), 0},
    };
    if (!check_array(words, what, errp)) {
        return false;
    }
    for (size_t i = 0; i < json_object_array_length(words); i++) {
        feature_word w = {0};
        int reg = -1;
        g_autofree char *where = g_strdup_printf("%s: word %zu", what, i);
        if (!read_fields(json_object_array_get_idx(words, i), where, fields, G_N_ELEMENTS(fields),
                         &w, errp)) {
            return false;
        }
        if (!register_index(w.reg, &reg)) {
            vmig_set_error(errp, VMIG_E_PROTO, "%s: 'cpuid-register' is '%.16s', not a register",
                           where, w.reg);
            return false;
        }
        for (size_t f = 0; f < cpu_features_count && reg >= 0; f++) {
            const cpu_feature_def *d = &cpu_features[f];
            if (d->kind == CPU_ITEM_CPUID && d->leaf == w.leaf && d->subleaf == w.subleaf &&
                d->reg == reg && (w.bits >> d->bit & 1)) {
                cpu_featset_add(out, (int)f);
            }
        }
    }
    return true;
}

static int msr_feature_index(const char *name)
{
    for (size_t f = 0; f < cpu_features_count; f++) {
        if (cpu_features[f].kind == CPU_ITEM_MSR && strcmp(cpu_features[f].name, name) == 0) {
            return (int)f;
        }
    }
    return -1;
}

/* MSR features are not in feature-words: @msrs holds their qom-get replies. */
static bool msrs_to_set(json_object *msrs, cpu_featset *out, vmig_error **errp)
{
    if (!msrs) {
        return true;
    }
    if (!json_object_is_type(msrs, json_type_object)) {
        vmig_set_error(errp, VMIG_E_INVAL, "MSR features: must be an object, not %s",
                       type_name(msrs));
        return false;
    }
    json_object_object_foreach(msrs, key, val)
    {
        int f = msr_feature_index(key);
        if (f < 0) {
            vmig_set_error(errp, VMIG_E_INVAL, "MSR features: '%s' is not one", key);
            return false;
        }
        if (!json_object_is_type(val, json_type_boolean)) {
            vmig_set_error(errp, VMIG_E_PROTO,
                           "qom-get %s (MSR feature): the reply must be a "
                           "boolean, not %s",
                           key, type_name(val));
            return false;
        }
        if (json_object_get_boolean(val)) {
            cpu_featset_add(out, f);
        }
    }
    return true;
}

bool cpu_vm_from_qom(json_object *feature_words, json_object *filtered_features,
                     json_object *vendor, json_object *msrs, cpu_def *ret,
                     cpu_featset *ret_filtered, vmig_error **errp)
{
    cpu_def d = {.family = -1, .model = -1, .stepping = -1};
    cpu_featset filtered = {0};
    if (!read_vendor(vendor, "qom-get vendor: the reply", d.vendor, errp) ||
        !words_to_set(feature_words, "qom-get feature-words", &d.require, errp) ||
        !words_to_set(filtered_features, "qom-get filtered-features", &filtered, errp) ||
        !msrs_to_set(msrs, &d.require, errp)) {
        return false;
    }
    *ret = d;
    *ret_filtered = filtered;
    return true;
}

/* ---- model expansions ------------------------------------------------------------------------ */

/* The model.props object of a query-cpu-model-expansion reply. */
static json_object *expansion_props(json_object *reply, const char *what, vmig_error **errp)
{
    json_object *model = NULL, *props = NULL;
    if (!json_object_is_type(reply, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: the reply must be an object, not %s", what,
                       type_name(reply));
        return NULL;
    }
    bool has = json_object_object_get_ex(reply, "model", &model);
    if (!json_object_is_type(model, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: 'model' must be an object, not %s", what,
                       has ? type_name(model) : "missing");
        return NULL;
    }
    has = json_object_object_get_ex(model, "props", &props);
    if (!json_object_is_type(props, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: 'model.props' must be an object, not %s", what,
                       has ? type_name(props) : "missing");
        return NULL;
    }
    return props;
}

/* The features (true booleans named as our table names them) and the vendor in @props.  Other
 * properties (level, model-id, hv-*, ...) are not ours to read. */
static bool props_to_def(json_object *props, const char *what, cpu_def *ret, vmig_error **errp)
{
    json_object_object_foreach(props, key, val)
    {
        if (strcmp(key, "vendor") == 0) {
            g_autofree char *where = g_strdup_printf("%s: 'model.props.vendor'", what);
            if (!read_vendor(val, where, ret->vendor, errp)) {
                return false;
            }
            continue;
        }
        int f = cpu_feature_index(key);
        if (!cpu_feature_guest(f)) {
            continue; /* not in the built-in table: vmigrate gives no guest these */
        }
        if (!json_object_is_type(val, json_type_boolean)) {
            vmig_set_error(errp, VMIG_E_PROTO,
                           "%s: feature 'model.props.%s' must be a boolean, "
                           "not %s",
                           what, key, type_name(val));
            return false;
        }
        if (json_object_get_boolean(val)) {
            cpu_featset_add(&ret->require, f);
        }
    }
    return true;
}

bool cpu_def_from_expansion(json_object *reply, cpu_def *ret, vmig_error **errp)
{
    static const char what[] = "query-cpu-model-expansion";
    cpu_def d = {.family = -1, .model = -1, .stepping = -1};
    json_object *props = expansion_props(reply, what, errp);
    if (!props || !props_to_def(props, what, &d, errp)) {
        return false;
    }
    *ret = d;
    return true;
}

/* ---- a QEMU's named models ------------------------------------------------------------------- */

typedef struct cpu_definition {
    const char *name;
    const char *alias_of; /* NULL when not an alias */
} cpu_definition;

/* Entry @i of a query-cpu-definitions reply (checked to be an array). */
static bool definition_at(json_object *defs, size_t i, cpu_definition *ret, vmig_error **errp)
{
    static const reply_field fields[] = {
        {"name", FIELD_STR, false, offsetof(cpu_definition, name), 0},
        {"alias-of", FIELD_STR, true, offsetof(cpu_definition, alias_of), 0},
    };
    cpu_definition d = {0};
    g_autofree char *where = g_strdup_printf("query-cpu-definitions: model %zu", i);
    if (!read_fields(json_object_array_get_idx(defs, i), where, fields, G_N_ELEMENTS(fields), &d,
                     errp)) {
        return false;
    }
    *ret = d;
    return true;
}

/* host and max are this host's CPU, base has no feature: none is a model to decode to. */
static bool is_pseudo_model(const char *name)
{
    return !strcmp(name, "host") || !strcmp(name, "max") || !strcmp(name, "base");
}

/* The number of entries of a query-cpu-definitions reply, or -1. */
static long definitions_count(json_object *defs, vmig_error **errp)
{
    if (!check_array(defs, "query-cpu-definitions", errp)) {
        return -1;
    }
    size_t n = json_object_array_length(defs);
    if (n > MAX_MODELS) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-cpu-definitions: %zu models, more than %d", n,
                       MAX_MODELS);
        return -1;
    }
    return (long)n;
}

char **cpu_definitions_models(json_object *defs, vmig_error **errp)
{
    long n = definitions_count(defs, errp);
    if (n < 0) {
        return NULL;
    }
    g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
    for (size_t i = 0; i < (size_t)n; i++) {
        cpu_definition d;
        if (!definition_at(defs, i, &d, errp)) {
            return NULL;
        }
        if (!d.alias_of && !is_pseudo_model(d.name)) {
            g_ptr_array_add(names, g_strdup(d.name));
        }
    }
    g_ptr_array_add(names, NULL);
    return (char **)g_ptr_array_free(g_steal_pointer(&names), FALSE);
}

bool cpu_models_add_expansion(cpu_models *db, const char *name, json_object *expansion,
                              vmig_error **errp)
{
    typedef struct {
        uint32_t family, model, stepping;
    } signature;
    /* family is 0-15 plus an extended 0-255; model and stepping are smaller still */
    static const reply_field fields[] = {
        {"family", FIELD_U32, true, offsetof(signature, family), 0xffff},
        {"model", FIELD_U32, true, offsetof(signature, model), 0xffff},
        {"stepping", FIELD_U32, true, offsetof(signature, stepping), 0xffff},
    };
    g_autofree char *what = g_strdup_printf("query-cpu-model-expansion of %s", name);
    cpu_def d = {0};
    signature sig = {0};
    g_autofree char *where = g_strdup_printf("%s: 'model.props'", what);
    json_object *props = expansion_props(expansion, what, errp);
    if (!props || !props_to_def(props, what, &d, errp) ||
        !read_fields(props, where, fields, G_N_ELEMENTS(fields), &sig, errp)) {
        return false;
    }
    cpu_models_add(db, name, d.vendor, (int)sig.family, (int)sig.model, (int)sig.stepping,
                   &d.require);
    return true;
}

bool cpu_models_add_aliases(cpu_models *db, json_object *defs, vmig_error **errp)
{
    long n = definitions_count(defs, errp);
    if (n < 0) {
        return false;
    }
    for (size_t i = 0; i < (size_t)n; i++) {
        cpu_definition d;
        if (!definition_at(defs, i, &d, errp)) {
            return false;
        }
        if (d.alias_of && !is_pseudo_model(d.name)) {
            cpu_models_alias(db, d.name, d.alias_of);
        }
    }
    return true;
}

/* ---- the migration gate ---------------------------------------------------------------------- */

bool cpu_gate_offer(bool kvm, const char *host_text, size_t host_len, const char *host_origin,
                    json_object *expansion, cpu_def *ret, vmig_error **errp)
{
    if (kvm && host_text) {
        g_autoptr(GArray) defs = cpu_defs_parse(host_text, host_len, host_origin, NULL, errp);
        if (!defs) {
            return false;
        }
        if (defs->len != 1) {
            vmig_set_error(errp, VMIG_E_INVAL, "%s: %u CPUs, where a host has one", host_origin,
                           defs->len);
            return false;
        }
        g_autoptr(cpu_models) db = cpu_models_builtin();
        const cpu_def *h = &g_array_index(defs, cpu_def, 0);
        cpu_def d = {.family = h->family, .model = h->model, .stepping = h->stepping};
        /* a host model is already a guest's view: it gives what it says */
        bool ok = h->host ? cpu_def_guest_set(db, h, &d.require, errp)
                          : cpu_def_expand(db, h, &d.require, errp);
        if (!ok) {
            vmig_prefix_error(errp, "%s: ", host_origin);
            return false;
        }
        g_strlcpy(d.vendor, cpu_def_vendor(db, h), sizeof(d.vendor));
        *ret = d;
        return true;
    }
    cpu_def d;
    if (!cpu_def_from_expansion(expansion, &d, errp)) {
        return false;
    }
    if (!kvm) {
        d.vendor[0] = '\0'; /* TCG presents whatever vendor string the VM's model names */
    }
    *ret = d;
    return true;
}

bool cpu_expansion_is_host(json_object *reply)
{
    json_object *model = NULL, *name = NULL;
    return json_object_is_type(reply, json_type_object) &&
           json_object_object_get_ex(reply, "model", &model) &&
           json_object_is_type(model, json_type_object) &&
           json_object_object_get_ex(model, "name", &name) &&
           json_object_is_type(name, json_type_string) &&
           strcmp(json_object_get_string(name), "host") == 0;
}

cpu_cmp cpu_gate_check(const cpu_def *vm, const cpu_def *offer, cpu_featset *ret_missing,
                       char **ret_why, vmig_error **errp)
{
    g_autoptr(cpu_models) db = cpu_models_builtin();
    cpu_def v = *vm;
    v.model_name = NULL;
    /* QEMU sets hypervisor for every guest: no description of a host needs to list it */
    cpu_featset_del(&v.require, cpu_feature_index("hypervisor"));
    return cpu_compare(db, offer, &v, ret_missing, ret_why, errp);
}
