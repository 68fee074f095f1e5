#include "cpu/model.h"

#include <string.h>

#include "common/error.h"

struct cpu_models {
    GPtrArray *list; /* cpu_model *, newest first */
};

static const struct {
    const char *libvirt;
    const char *cpuid;
} vendors[] = {
    {"Intel", "GenuineIntel"},
    {"AMD", "AuthenticAMD"},
    {"Hygon", "HygonGenuine"},
    {"Zhaoxin", "CentaurHauls"},
};

static void model_free(gpointer p)
{
    cpu_model *m = p;
    g_free(m->name);
    g_free(m->versioned);
    g_ptr_array_free(m->aliases, TRUE);
    g_free(m);
}

void cpu_models_free(cpu_models *m)
{
    if (!m) {
        return;
    }
    g_ptr_array_free(m->list, TRUE);
    g_free(m);
}

size_t cpu_models_count_get(const cpu_models *m)
{
    return m->list->len;
}

const cpu_model *cpu_models_at(const cpu_models *m, size_t i)
{
    return g_ptr_array_index(m->list, i);
}

static cpu_model *find_mut(const cpu_models *m, const char *name)
{
    for (guint i = 0; i < m->list->len; i++) {
        cpu_model *c = g_ptr_array_index(m->list, i);
        if (strcmp(c->name, name) == 0 || strcmp(c->versioned, name) == 0) {
            return c;
        }
        for (guint k = 0; k < c->aliases->len; k++) {
            if (strcmp(g_ptr_array_index(c->aliases, k), name) == 0) {
                return c;
            }
        }
    }
    return NULL;
}

const cpu_model *cpu_models_find(const cpu_models *m, const char *name)
{
    return find_mut(m, name);
}

/* QEMU's model families, oldest first within each vendor, as libvirt's cpu_map/index.xml
 * orders them.  Decoding tries models newest first, so on equal cost the newer one wins. */
/* clang-format off: a table, laid out by hand */
static const char *const generations[] = {
    "486",
    "pentium",
    "pentium2",
    "pentium3",
    "coreduo",
    "n270",
    "core2duo",
    "qemu32",
    "kvm32",
    "qemu64",
    "kvm64",
    "athlon",
    "phenom",
    "Conroe",
    "Penryn",
    "Nehalem",
    "Westmere",
    "SandyBridge",
    "IvyBridge",
    "Haswell",
    "Broadwell",
    "Skylake-Client",
    "Skylake-Server",
    "Cascadelake-Server",
    "Icelake-Client",
    "Icelake-Server",
    "Cooperlake",
    "Snowridge",
    "KnightsMill",
    "Denverton",
    "SapphireRapids",
    "SierraForest",
    "GraniteRapids",
    "ClearwaterForest",
    "Opteron_G1",
    "Opteron_G2",
    "Opteron_G3",
    "Opteron_G4",
    "Opteron_G5",
    "EPYC",
    "EPYC-Rome",
    "EPYC-Milan",
    "EPYC-Genoa",
    "EPYC-Turin",
    "Dhyana",
    "YongFeng",
};
/* clang-format on */

/* How new @versioned (IvyBridge-v2) is: its family's place above, then its version.  A family
 * this list does not know came after it. */
static int age(const char *versioned)
{
    const char *v = strrchr(versioned, '-');
    int version = 0;
    size_t base_len = strlen(versioned);
    if (v && v[1] == 'v' && g_ascii_isdigit(v[2])) {
        version = (int)MIN(g_ascii_strtoll(v + 2, NULL, 10), 999);
        base_len = (size_t)(v - versioned);
    }
    int gen = (int)G_N_ELEMENTS(generations);
    for (size_t i = 0; i < G_N_ELEMENTS(generations); i++) {
        if (strlen(generations[i]) == base_len && !strncmp(generations[i], versioned, base_len)) {
            gen = (int)i;
        }
    }
    return gen * 1000 + version;
}

static gint newest_first(gconstpointer a, gconstpointer b)
{
    const cpu_model *x = *(cpu_model *const *)a, *y = *(cpu_model *const *)b;
    int ax = age(x->versioned), ay = age(y->versioned);
    if (ax != ay) {
        return ay - ax;
    }
    int nx = cpu_featset_count(&x->features), ny = cpu_featset_count(&y->features);
    return nx != ny ? ny - nx : strcmp(x->versioned, y->versioned);
}

cpu_models *cpu_models_empty(void)
{
    cpu_models *db = g_new0(cpu_models, 1);
    db->list = g_ptr_array_new_with_free_func(model_free);
    return db;
}

void cpu_models_add(cpu_models *db, const char *name, const char *vendor, int family, int model,
                    int stepping, const cpu_featset *features)
{
    cpu_model *m = g_new0(cpu_model, 1);
    m->name = g_strdup(name);
    m->versioned = g_strdup(name);
    m->aliases = g_ptr_array_new_with_free_func(g_free);
    g_strlcpy(m->vendor, vendor, sizeof(m->vendor));
    m->family = family;
    m->model = model;
    m->stepping = stepping;
    m->features = *features;
    /* QEMU sets "hypervisor" for every guest: it says nothing about the model */
    int hv = cpu_feature_index("hypervisor");
    if (hv >= 0) {
        cpu_featset_del(&m->features, hv);
    }
    g_ptr_array_add(db->list, m);
}

void cpu_models_alias(cpu_models *db, const char *alias, const char *of)
{
    cpu_model *m = find_mut(db, of);
    if (!m) {
        return;
    }
    g_ptr_array_add(m->aliases, g_strdup(alias));
    if (strcmp(m->name, m->versioned) == 0) {
        g_free(m->name);
        m->name = g_strdup(alias); /* IvyBridge-IBRS reads better than IvyBridge-v2 */
    }
}

void cpu_models_done(cpu_models *db)
{
    g_ptr_array_sort(db->list, newest_first);
}

cpu_models *cpu_models_builtin(void)
{
    cpu_models *db = cpu_models_empty();
    for (size_t i = 0; i < cpu_model_defs_count; i++) {
        const cpu_model_def *d = &cpu_model_defs[i];
        if (d->alias_of) {
            continue;
        }
        cpu_featset fs = {0};
        g_auto(GStrv) names = g_strsplit(d->features, " ", -1);
        for (int k = 0; names[k]; k++) {
            int f = cpu_feature_index(names[k]);
            if (f >= 0) {
                cpu_featset_add(&fs, f);
            }
        }
        cpu_models_add(db, d->name, d->vendor, d->family, d->model, d->stepping, &fs);
    }
    for (size_t i = 0; i < cpu_model_defs_count; i++) {
        if (cpu_model_defs[i].alias_of) {
            cpu_models_alias(db, cpu_model_defs[i].name, cpu_model_defs[i].alias_of);
        }
    }
    cpu_models_done(db);
    return db;
}

/* ---- names -------------------------------------------------------------------------------- */

const char *cpu_vendor_libvirt(const char *cpuid_vendor)
{
    for (size_t i = 0; i < G_N_ELEMENTS(vendors); i++) {
        if (strcmp(vendors[i].cpuid, cpuid_vendor) == 0) {
            return vendors[i].libvirt;
        }
    }
    return cpuid_vendor;
}

char *cpu_featset_names(const cpu_featset *s, bool libvirt)
{
    GString *out = g_string_new(NULL);
    for (size_t i = 0; i < cpu_feature_count(); i++) {
        if (cpu_featset_has(s, (int)i)) {
            g_string_append_printf(out, "%s%s", out->len ? " " : "",
                                   libvirt ? cpu_feature_libvirt_name((int)i)
                                           : cpu_feature((int)i)->name);
        }
    }
    return g_string_free(out, FALSE);
}

/* ---- definitions -------------------------------------------------------------------------- */

void cpu_def_clear(cpu_def *d)
{
    g_free(d->model_name);
    memset(d, 0, sizeof(*d));
}

bool cpu_def_expand(const cpu_models *m, const cpu_def *d, cpu_featset *ret, vmig_error **errp)
{
    cpu_featset s = {0};
    if (d->model_name) {
        const cpu_model *cm = cpu_models_find(m, d->model_name);
        if (!cm) {
            vmig_set_error(errp, VMIG_E_CPU, "unknown CPU model '%s'", d->model_name);
            return false;
        }
        s = cm->features;
    }
    cpu_featset_or(&s, &d->require);
    cpu_featset_andnot(&s, &d->disable);
    cpu_featset_andnot(&s, &d->forbid);
    *ret = s;
    return true;
}

const char *cpu_def_vendor(const cpu_models *m, const cpu_def *d)
{
    if (d->vendor[0]) {
        return d->vendor;
    }
    const cpu_model *cm = d->model_name ? cpu_models_find(m, d->model_name) : NULL;
    return cm ? cm->vendor : "";
}

bool cpu_def_guest_set(const cpu_models *m, const cpu_def *d, cpu_featset *ret, vmig_error **errp)
{
    cpu_featset s;
    if (!cpu_def_expand(m, d, &s, errp)) {
        return false;
    }
    if (d->host) {
        cpu_kvm_guest(&s, cpu_def_vendor(m, d), &s);
    } else {
        cpu_kvm_possible(&s);
    }
    *ret = s;
    return true;
}

/* ---- libvirt <cpu> XML ---------------------------------------------------------------------- */

typedef struct defs_ctx {
    GArray *defs;
    cpu_def cur;
    bool in_cpu;
    bool cur_mode;   /* the <cpu> has a mode or a match: a guest's */
    bool cur_hostly; /* it has an <arch> or a <signature>, as host CPUs do */
    GString *text;
} defs_ctx;

static const char *attr(const gchar **names, const gchar **values, const char *want)
{
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], want) == 0) {
            return values[i];
        }
    }
    return NULL;
}

static void add_feature(defs_ctx *x, const char *name, const char *policy, GError **gerr)
{
    int f = cpu_feature_index(name);
    if (f < 0 && cpu_feature_is_nested(name)) {
        x->cur.nested_ignored++;
        return;
    }
    if (f < 0) {
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                    "unknown CPU feature '%s'", name);
        return;
    }
    cpu_featset *dst = !policy || !strcmp(policy, "require") || !strcmp(policy, "force")
                           ? &x->cur.require
                       : !strcmp(policy, "disable")  ? &x->cur.disable
                       : !strcmp(policy, "forbid")   ? &x->cur.forbid
                       : !strcmp(policy, "optional") ? &x->cur.optional
                                                     : NULL;
    if (!dst) {
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                    "feature '%s': unknown policy '%s' (require, force, optional, disable, "
                    "forbid)",
                    name, policy);
        return;
    }
    cpu_featset_add(dst, f);
}

static void defs_start(GMarkupParseContext *ctx, const gchar *el, const gchar **names,
                       const gchar **values, gpointer opaque, GError **gerr)
{
    defs_ctx *x = opaque;
    (void)ctx;
    g_string_truncate(x->text, 0);
    if (strcmp(el, "cpu") == 0 && x->in_cpu) {
        /* found by fuzzing: resetting the CPU in progress leaked its model name */
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT, "a <cpu> inside a <cpu>");
        return;
    }
    if (strcmp(el, "cpu") == 0) {
        memset(&x->cur, 0, sizeof(x->cur));
        x->cur.family = x->cur.model = x->cur.stepping = -1;
        x->in_cpu = true;
        x->cur_mode = attr(names, values, "mode") || attr(names, values, "match");
        x->cur_hostly = false;
    } else if (x->in_cpu && strcmp(el, "arch") == 0) {
        x->cur_hostly = true;
    } else if (x->in_cpu && strcmp(el, "feature") == 0) {
        const char *n = attr(names, values, "name");
        if (!n) {
            g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_MISSING_ATTRIBUTE,
                        "<feature> without a name");
            return;
        }
        add_feature(x, n, attr(names, values, "policy"), gerr);
    } else if (x->in_cpu && strcmp(el, "signature") == 0) {
        const char *f = attr(names, values, "family"), *m = attr(names, values, "model"),
                   *s = attr(names, values, "stepping");
        x->cur.family = f ? (int)g_ascii_strtoll(f, NULL, 10) : -1;
        x->cur.model = m ? (int)g_ascii_strtoll(m, NULL, 10) : -1;
        x->cur.stepping = s ? (int)g_ascii_strtoll(s, NULL, 10) : -1;
        x->cur_hostly = true;
    }
}

static void defs_text(GMarkupParseContext *ctx, const gchar *text, gsize len, gpointer opaque,
                      GError **gerr)
{
    defs_ctx *x = opaque;
    (void)ctx;
    (void)gerr;
    g_string_append_len(x->text, text, (gssize)len);
}

static void defs_end(GMarkupParseContext *ctx, const gchar *el, gpointer opaque, GError **gerr)
{
    defs_ctx *x = opaque;
    (void)ctx;
    if (!x->in_cpu) {
        return;
    }
    const char *t = g_strstrip(x->text->str);
    if (strcmp(el, "model") == 0) {
        g_free(x->cur.model_name);
        x->cur.model_name = g_strdup(t);
    } else if (strcmp(el, "vendor") == 0) {
        const char *v = NULL;
        for (size_t i = 0; i < G_N_ELEMENTS(vendors); i++) {
            if (!strcmp(t, vendors[i].libvirt) || !strcmp(t, vendors[i].cpuid)) {
                v = vendors[i].cpuid;
            }
        }
        if (!v) {
            g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                        "unknown CPU vendor '%s'", t);
            return;
        }
        g_strlcpy(x->cur.vendor, v, sizeof(x->cur.vendor));
    } else if (strcmp(el, "cpu") == 0) {
        x->cur.host = !x->cur_mode && x->cur_hostly;
        g_array_append_val(x->defs, x->cur);
        memset(&x->cur, 0, sizeof(x->cur));
        x->in_cpu = false;
    }
    g_string_truncate(x->text, 0);
}

static void clear_def(gpointer p)
{
    cpu_def_clear(p);
}

GArray *cpu_defs_parse_xml(const char *text, size_t len, const char *origin, vmig_error **errp)
{
    defs_ctx x = {.defs = g_array_new(FALSE, TRUE, sizeof(cpu_def)), .text = g_string_new(NULL)};
    g_array_set_clear_func(x.defs, clear_def);
    GMarkupParser p = {.start_element = defs_start, .end_element = defs_end, .text = defs_text};
    bool ok = vmig_markup_parse(&p, &x, text, len, origin, errp);
    g_string_free(x.text, TRUE);
    if (ok && x.defs->len == 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: no <cpu> element", origin);
        ok = false;
    }
    if (!ok) {
        g_free(x.cur.model_name);
        g_array_free(x.defs, TRUE);
        return NULL;
    }
    return x.defs;
}

/* ---- decode ---------------------------------------------------------------------------------- */

bool cpu_decode(const cpu_models *db, const cpu_featset *set, const char *vendor, int family,
                int model, cpu_decode_mode mode, const char *const *preferred, cpu_decoded *ret,
                vmig_error **errp)
{
    const cpu_model *best = NULL;
    int best_cost = 0, best_dis = 0;
    bool best_sig = false;
    size_t npref = 0;
    for (const char *const *p = preferred; p && *p; p++) {
        npref++;
    }
    for (guint i = 0; i < db->list->len; i++) {
        const cpu_model *m = g_ptr_array_index(db->list, i);
        if (vendor && vendor[0] && strcmp(m->vendor, vendor) != 0) {
            continue;
        }
        cpu_featset req = *set, dis = m->features;
        cpu_featset_andnot(&req, &m->features);
        cpu_featset_andnot(&dis, set);
        int ndis = cpu_featset_count(&dis);
        if (mode == CPU_DECODE_HOST && ndis > 0) {
            continue;
        }
        bool pref = false;
        for (const char *const *p = preferred; p && *p; p++) {
            pref = pref || cpu_models_find(db, *p) == m;
        }
        if (pref && npref == 1) {
            best = m; /* a single preferred model is taken as is */
            break;
        }
        /* the features the decode lists, required or disabled; models come newest first, so
         * on a tie the newer one stays */
        int cost = cpu_featset_count(&req) + ndis;
        bool sig = family >= 0 && m->family == family && m->model == model;
        bool better = !best || (sig && !best_sig) ||
                      (sig == best_sig && (cost < best_cost || (pref && ndis < best_dis)));
        if (better) {
            best = m;
            best_cost = cost;
            best_dis = ndis;
            best_sig = sig;
        }
    }
    if (!best) {
        vmig_set_error(errp, VMIG_E_CPU, "no %s CPU model describes this CPU",
                       vendor && vendor[0] ? vendor : "known");
        return false;
    }
    ret->model = best;
    ret->require = *set;
    cpu_featset_andnot(&ret->require, &best->features);
    ret->disable = best->features;
    cpu_featset_andnot(&ret->disable, set);
    return true;
}

/* ---- baseline ------------------------------------------------------------------------------- */

bool cpu_baseline(const cpu_models *m, const cpu_def *defs, size_t n, bool migratable,
                  cpu_decoded *ret, cpu_featset *ret_set, char ret_vendor[13], vmig_error **errp)
{
    if (n == 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "a baseline needs at least one CPU");
        return false;
    }
    cpu_featset base;
    const char *vendor = cpu_def_vendor(m, &defs[0]);
    bool all_vendors = vendor[0] != '\0';
    g_autoptr(GPtrArray) names = g_ptr_array_new();
    for (size_t i = 0; i < n; i++) {
        cpu_featset s;
        if (!cpu_def_guest_set(m, &defs[i], &s, errp)) {
            vmig_prefix_error(errp, "CPU %zu: ", i + 1);
            return false;
        }
        const char *v = cpu_def_vendor(m, &defs[i]);
        if (v[0] && vendor[0] && strcmp(v, vendor) != 0) {
            vmig_set_error(errp, VMIG_E_CPU,
                           "CPU vendors do not match: CPU 1 is %s, CPU %zu "
                           "is %s",
                           vendor, i + 1, v);
            return false;
        }
        if (!vendor[0]) {
            vendor = v;
        }
        all_vendors = all_vendors && v[0];
        if (i == 0) {
            base = s;
        } else {
            cpu_featset_and(&base, &s);
        }
        if (defs[i].model_name) {
            g_ptr_array_add(names, defs[i].model_name);
        }
    }
    if (cpu_featset_empty(&base)) {
        vmig_set_error(errp, VMIG_E_CPU, "the CPUs are incompatible: they share no feature");
        return false;
    }
    if (migratable) {
        cpu_featset_drop_unmigratable(&base);
    }
    g_ptr_array_add(names, NULL);
    if (!cpu_decode(m, &base, vendor, -1, -1, CPU_DECODE_GUEST, (const char *const *)names->pdata,
                    ret, errp)) {
        return false;
    }
    *ret_set = base;
    g_strlcpy(ret_vendor, all_vendors ? vendor : "", 13);
    return true;
}

/* ---- compare -------------------------------------------------------------------------------- */

cpu_cmp cpu_compare(const cpu_models *m, const cpu_def *host, const cpu_def *guest,
                    cpu_featset *ret_missing, char **ret_why, vmig_error **errp)
{
    memset(ret_missing, 0, sizeof(*ret_missing));
    *ret_why = NULL;
    const char *hv = cpu_def_vendor(m, host), *gv = cpu_def_vendor(m, guest);
    if (gv[0] && hv[0] && strcmp(gv, hv) != 0) {
        *ret_why = g_strdup_printf("the guest CPU is %s, the host is %s", gv, hv);
        return CPU_CMP_INCOMPATIBLE;
    }
    cpu_featset hset, gmodel = {0};
    bool ok = host->host ? cpu_def_guest_set(m, host, &hset, errp)
                         : cpu_def_expand(m, host, &hset, errp);
    if (!ok) {
        return -1;
    }
    if (guest->host) {
        /* a host's CPU as the guest's: the host model a VM there would have */
        cpu_def g = {
            .disable = guest->disable, .forbid = guest->forbid, .optional = guest->optional};
        if (!cpu_def_guest_set(m, guest, &g.require, errp)) {
            return -1;
        }
        g_strlcpy(g.vendor, cpu_def_vendor(m, guest), sizeof(g.vendor));
        cpu_def h = *host;
        h.require = hset;
        h.host = false;
        h.model_name = NULL;
        h.disable = h.forbid = (cpu_featset){0};
        g_strlcpy(h.vendor, cpu_def_vendor(m, host), sizeof(h.vendor));
        return cpu_compare(m, &h, &g, ret_missing, ret_why, errp);
    }
    if (guest->model_name) {
        const cpu_model *cm = cpu_models_find(m, guest->model_name);
        if (!cm) {
            vmig_set_error(errp, VMIG_E_CPU, "unknown CPU model '%s'", guest->model_name);
            return -1;
        }
        gmodel = cm->features;
    }
    cpu_featset forbidden = guest->forbid;
    cpu_featset_and(&forbidden, &hset);
    if (!cpu_featset_empty(&forbidden)) {
        *ret_missing = forbidden;
        g_autofree char *names = cpu_featset_names(&forbidden, false);
        *ret_why = g_strdup_printf("the host CPU provides forbidden features: %s", names);
        return CPU_CMP_INCOMPATIBLE;
    }
    cpu_featset need = gmodel;
    cpu_featset_or(&need, &guest->require);
    cpu_featset_andnot(&need, &guest->disable);
    cpu_featset_andnot(&need, &guest->forbid);
    cpu_featset_andnot(&need, &guest->optional);
    cpu_featset missing = need;
    cpu_featset_andnot(&missing, &hset);
    if (!cpu_featset_empty(&missing)) {
        *ret_missing = missing;
        g_autofree char *names = cpu_featset_names(&missing, false);
        *ret_why = g_strdup_printf("the host CPU lacks: %s", names);
        return CPU_CMP_INCOMPATIBLE;
    }
    cpu_featset extra = hset;
    cpu_featset_andnot(&extra, &need);
    cpu_featset_andnot(&extra, &guest->optional);
    cpu_featset_andnot(&extra, &guest->disable);
    return cpu_featset_empty(&extra) ? CPU_CMP_IDENTICAL : CPU_CMP_SUPERSET;
}
