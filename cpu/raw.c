#include "cpu/raw.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/json.h"

typedef struct raw_item {
    uint32_t leaf, sub;
    uint32_t r[4];
} raw_item;

typedef struct regs4 {
    uint32_t r[4];
} regs4;

typedef struct raw_msr {
    uint32_t index;
    uint64_t value;
} raw_msr;

struct cpu_raw {
    GArray *items;         /* raw_item, in the order read */
    GArray *msrs;          /* raw_msr */
    GHashTable *index;     /* (leaf << 32 | subleaf) -> position in items + 1 */
    GHashTable *msr_index; /* MSR index -> position in msrs + 1 */
    uint64_t *probes;      /* lookups made: the work a reader did (tests bound it) */
};

cpu_raw *cpu_raw_new(void)
{
    cpu_raw *r = g_new0(cpu_raw, 1);
    r->items = g_array_new(FALSE, FALSE, sizeof(raw_item));
    r->msrs = g_array_new(FALSE, FALSE, sizeof(raw_msr));
    r->index = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
    r->msr_index = g_hash_table_new(g_direct_hash, g_direct_equal);
    r->probes = g_new0(uint64_t, 1);
    return r;
}

void cpu_raw_free(cpu_raw *r)
{
    if (!r) {
        return;
    }
    g_array_free(r->items, TRUE);
    g_array_free(r->msrs, TRUE);
    g_hash_table_destroy(r->index);
    g_hash_table_destroy(r->msr_index);
    g_free(r->probes);
    g_free(r);
}

uint64_t cpu_raw_probes(const cpu_raw *r)
{
    return *r->probes;
}

static int64_t key_of(uint32_t leaf, uint32_t sub)
{
    return (int64_t)((uint64_t)leaf << 32 | sub);
}

/* Every reader looks leaves up through here: a hash, so a dump of n lines costs O(n). */
static raw_item *find(const cpu_raw *r, uint32_t leaf, uint32_t sub)
{
    int64_t key = key_of(leaf, sub);
    (*r->probes)++;
    guint pos = GPOINTER_TO_UINT(g_hash_table_lookup(r->index, &key));
    return pos ? &g_array_index(r->items, raw_item, pos - 1) : NULL;
}

void cpu_raw_set(cpu_raw *r, uint32_t leaf, uint32_t sub, const uint32_t regs[4])
{
    raw_item *it = find(r, leaf, sub);
    if (it) {
        memcpy(it->r, regs, sizeof(it->r));
        return;
    }
    raw_item n = {.leaf = leaf, .sub = sub};
    memcpy(n.r, regs, sizeof(n.r));
    g_array_append_val(r->items, n);
    g_hash_table_insert(r->index, g_memdup2(&(int64_t){key_of(leaf, sub)}, sizeof(int64_t)),
                        GUINT_TO_POINTER(r->items->len));
}

static raw_msr *find_msr(const cpu_raw *r, uint32_t index)
{
    (*r->probes)++;
    guint pos = GPOINTER_TO_UINT(g_hash_table_lookup(r->msr_index, GUINT_TO_POINTER(index)));
    return pos ? &g_array_index(r->msrs, raw_msr, pos - 1) : NULL;
}

void cpu_raw_set_msr(cpu_raw *r, uint32_t index, uint64_t value)
{
    raw_msr *m = find_msr(r, index);
    if (m) {
        m->value = value;
        return;
    }
    raw_msr n = {index, value};
    g_array_append_val(r->msrs, n);
    g_hash_table_insert(r->msr_index, GUINT_TO_POINTER(index), GUINT_TO_POINTER(r->msrs->len));
}

bool cpu_raw_get(const cpu_raw *r, uint32_t leaf, uint32_t sub, uint32_t ret[4])
{
    const raw_item *it = find(r, leaf, sub);
    memset(ret, 0, 4 * sizeof(uint32_t));
    if (it) {
        memcpy(ret, it->r, sizeof(it->r));
    }
    return it != NULL;
}

bool cpu_raw_get_msr(const cpu_raw *r, uint32_t index, uint64_t *ret)
{
    const raw_msr *m = find_msr(r, index);
    *ret = m ? m->value : 0;
    return m != NULL;
}

void cpu_raw_vendor(const cpu_raw *r, char out[13])
{
    uint32_t v[4];
    cpu_raw_get(r, 0, 0, v);
    memcpy(out, &v[1], 4);
    memcpy(out + 4, &v[3], 4);
    memcpy(out + 8, &v[2], 4);
    out[12] = '\0';
}

void cpu_raw_signature(const cpu_raw *r, int *family, int *model, int *stepping)
{
    uint32_t v[4];
    cpu_raw_get(r, 1, 0, v);
    int fam = (int)(v[0] >> 8 & 0xf), mod = (int)(v[0] >> 4 & 0xf);
    if (fam == 0xf) {
        fam += (int)(v[0] >> 20 & 0xff);
    }
    if (fam == 6 || fam >= 0xf) {
        mod += (int)(v[0] >> 16 & 0xf) << 4;
    }
    *family = fam;
    *model = mod;
    *stepping = (int)(v[0] & 0xf);
}

void cpu_raw_features(const cpu_raw *r, cpu_featset *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < cpu_feature_count(); i++) {
        const cpu_feature_def *f = cpu_feature((int)i);
        bool on;
        if (f->kind == CPU_ITEM_CPUID) {
            uint32_t v[4];
            on = cpu_raw_get(r, f->leaf, f->subleaf, v) && (v[f->reg] >> f->bit & 1);
        } else {
            uint64_t m;
            on = cpu_raw_get_msr(r, f->leaf, &m) && (m >> f->bit & 1);
        }
        if (on) {
            cpu_featset_add(out, (int)i);
        }
    }
}

/* ---- validation ----------------------------------------------------------------------------- */

/* The ranges CPUID dumpers probe (cpuid -1r, AIDA64): besides the basic and extended ranges
 * the CPU declares, Xeon Phi (0x20000000), hypervisor (0x40000000), Transmeta (0x80860000)
 * and Centaur (0xc0000000) leaves.  Anything else is not a leaf any CPU has. */
static bool leaf_expected(uint32_t leaf, uint32_t max_basic, uint32_t max_ext)
{
    static const uint32_t probed[] = {0x20000000u, 0x40000000u, 0x80860000u, 0xc0000000u};
    if (leaf <= max_basic || (leaf >= 0x80000000u && leaf <= max_ext)) {
        return true;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(probed); i++) {
        if (leaf >= probed[i] && leaf <= probed[i] + 0xff) {
            return true;
        }
    }
    return false;
}

static bool validate(const cpu_raw *r, const char *origin, vmig_error **errp)
{
    uint32_t l0[4], e0[4];
    if (!cpu_raw_get(r, 0, 0, l0) || !cpu_raw_get(r, 1, 0, (uint32_t[4]){0})) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: truncated CPUID dump: leaf 0x%x is missing", origin,
                       find(r, 0, 0) ? 1u : 0u);
        return false;
    }
    uint32_t max_basic = l0[0];
    uint32_t max_ext = cpu_raw_get(r, 0x80000000u, 0, e0) ? e0[0] : 0;
    if (max_basic > 0x100 || (max_ext && (max_ext < 0x80000000u || max_ext > 0x800000ffu))) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "%s: implausible CPUID: leaf 0 reports leaves up to "
                       "0x%x, leaf 0x80000000 up to 0x%x",
                       origin, max_basic, max_ext);
        return false;
    }
    for (guint i = 0; i < r->items->len; i++) {
        const raw_item *it = &g_array_index(r->items, raw_item, i);
        if (!leaf_expected(it->leaf, max_basic, max_ext)) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "%s: unknown CPUID leaf 0x%x: leaf 0 reports leaves up to 0x%x and "
                           "leaf 0x80000000 up to 0x%x",
                           origin, it->leaf, max_basic, max_ext);
            return false;
        }
    }
    static const uint32_t needed[] = {0x7, 0xd, 0x80000001u, 0x80000007u, 0x80000008u};
    for (size_t i = 0; i < G_N_ELEMENTS(needed); i++) {
        uint32_t l = needed[i];
        bool declared = l < 0x80000000u ? l <= max_basic : (max_ext && l <= max_ext);
        if (declared && !find(r, l, 0)) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "%s: truncated CPUID dump: leaf 0x%x is missing "
                           "though the CPU reports leaves up to 0x%x",
                           origin, l, l < 0x80000000u ? max_basic : max_ext);
            return false;
        }
    }
    return true;
}

/* ---- libvirt cpudata XML -------------------------------------------------------------------- */

typedef struct xml_ctx {
    cpu_raw *r;
    bool root_seen;
} xml_ctx;

static bool hex_attr(const gchar **names, const gchar **values, const char *want, bool required,
                     uint64_t *ret, GError **gerr)
{
    for (int i = 0; names[i]; i++) {
        if (strcmp(names[i], want) != 0) {
            continue;
        }
        const char *v = values[i];
        char *end = NULL;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 16);
        if (!g_str_has_prefix(v, "0x") || errno || end == v + 2 || *end) {
            g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                        "attribute %s='%s' is not a hexadecimal number (0x...)", want, v);
            return false;
        }
        *ret = x;
        return true;
    }
    *ret = 0;
    if (required) {
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_MISSING_ATTRIBUTE,
                    "attribute %s is missing", want);
    }
    return !required;
}

static void xml_start(GMarkupParseContext *ctx, const gchar *el, const gchar **names,
                      const gchar **values, gpointer opaque, GError **gerr)
{
    xml_ctx *x = opaque;
    (void)ctx;
    if (strcmp(el, "cpudata") == 0) {
        x->root_seen = true;
        return;
    }
    if (!x->root_seen) {
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_UNKNOWN_ELEMENT, "<%s> outside <cpudata>",
                    el);
        return;
    }
    uint64_t a[6];
    if (strcmp(el, "cpuid") == 0) {
        static const char *const attrs[] = {"eax_in", "ecx_in", "eax", "ebx", "ecx", "edx"};
        for (int i = 0; i < 6; i++) {
            if (!hex_attr(names, values, attrs[i], i != 1, &a[i], gerr)) {
                return;
            }
            if (a[i] > UINT32_MAX) {
                g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_INVALID_CONTENT,
                            "attribute %s does not fit in 32 bits", attrs[i]);
                return;
            }
        }
        uint32_t regs[4] = {(uint32_t)a[2], (uint32_t)a[3], (uint32_t)a[4], (uint32_t)a[5]};
        cpu_raw_set(x->r, (uint32_t)a[0], (uint32_t)a[1], regs);
    } else if (strcmp(el, "msr") == 0) {
        if (!hex_attr(names, values, "index", true, &a[0], gerr) ||
            !hex_attr(names, values, "eax", true, &a[1], gerr) ||
            !hex_attr(names, values, "edx", true, &a[2], gerr)) {
            return;
        }
        cpu_raw_set_msr(x->r, (uint32_t)a[0], (a[2] << 32) | (a[1] & 0xffffffffu));
    } else {
        g_set_error(gerr, G_MARKUP_ERROR, G_MARKUP_ERROR_UNKNOWN_ELEMENT,
                    "unexpected element <%s> (a cpudata file has <cpuid> and <msr>)", el);
    }
}

static cpu_raw *parse_xml(const char *text, size_t len, const char *origin, vmig_error **errp)
{
    g_autoptr(cpu_raw) r = cpu_raw_new();
    xml_ctx x = {.r = r};
    GMarkupParser p = {.start_element = xml_start};
    if (!vmig_markup_parse(&p, &x, text, len, origin, errp)) {
        return NULL;
    }
    if (!x.root_seen) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: no <cpudata> element", origin);
        return NULL;
    }
    return g_steal_pointer(&r);
}

/* ---- InstLatx64 / AIDA64 text --------------------------------------------------------------- */

static cpu_raw *parse_aida(const char *text, const char *origin, vmig_error **errp)
{
    g_autoptr(cpu_raw) r = cpu_raw_new();
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    /* the older dialect: leaf -> how many times it has come (its next subleaf) */
    g_autoptr(GHashTable) repeats = g_hash_table_new(g_direct_hash, g_direct_equal);
    int blocks = 0;
    for (int n = 0; lines[n]; n++) {
        const char *l = lines[n];
        unsigned leaf, a, b, c, d, sub, hi1, hi2, lo1, lo2;
        int used = 0;
        if (sscanf(l, "MSR %8x: %4x-%4x-%4x-%4x", &leaf, &hi1, &hi2, &lo1, &lo2) == 5) {
            cpu_raw_set_msr(r, leaf, (uint64_t)hi1 << 48 | (uint64_t)hi2 << 32 | lo1 << 16 | lo2);
            continue;
        }
        if (sscanf(l, "CPUID %8x%*[: \t]%8x-%8x-%8x-%8x%n", &leaf, &a, &b, &c, &d, &used) != 5) {
            if (g_str_has_prefix(l, "CPUID ")) {
                vmig_set_error(errp, VMIG_E_INVAL, "%s:%d: malformed CPUID line '%s'", origin,
                               n + 1, l);
                return NULL;
            }
            continue;
        }
        if (leaf == 0 && ++blocks > 1) {
            continue; /* the next logical CPU: the first one is the dump */
        }
        if (blocks != 1) {
            continue;
        }
        if (sscanf(l + used, " [SL %2x]", &sub) != 1) {
            /* the older dialect repeats a leaf once per subleaf, in order */
            gpointer key = GUINT_TO_POINTER(leaf);
            sub = GPOINTER_TO_UINT(g_hash_table_lookup(repeats, key));
            g_hash_table_insert(repeats, key, GUINT_TO_POINTER(sub + 1));
        }
        uint32_t regs[4] = {a, b, c, d};
        cpu_raw_set(r, leaf, sub, regs);
    }
    return g_steal_pointer(&r);
}

/* ---- libcpuid test files -------------------------------------------------------------------- */

static cpu_raw *parse_libcpuid(const char *text, const char *origin, vmig_error **errp)
{
    g_autoptr(cpu_raw) r = cpu_raw_new();
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    g_autoptr(GArray) basic = g_array_new(FALSE, TRUE, sizeof(regs4));
    g_autoptr(GArray) ext = g_array_new(FALSE, TRUE, sizeof(regs4));
    g_autoptr(GArray) sub = g_array_new(FALSE, TRUE, sizeof(raw_item));
    for (int n = 0; lines[n]; n++) {
        char key[32];
        unsigned idx, v[4];
        if (sscanf(lines[n], "%31[a-z0-9_][%u]=%x %x %x %x", key, &idx, &v[0], &v[1], &v[2],
                   &v[3]) != 6) {
            continue;
        }
        uint32_t regs[4] = {v[0], v[1], v[2], v[3]};
        if (strcmp(key, "basic_cpuid") == 0 || strcmp(key, "ext_cpuid") == 0) {
            GArray *arr = key[0] == 'b' ? basic : ext;
            if (idx >= 256) {
                vmig_set_error(errp, VMIG_E_INVAL, "%s:%d: index %u out of range", origin, n + 1,
                               idx);
                return NULL;
            }
            if (arr->len <= idx) {
                g_array_set_size(arr, idx + 1);
            }
            memcpy(g_array_index(arr, regs4, idx).r, regs, sizeof(regs));
        } else if (strcmp(key, "intel_fn4") == 0 || strcmp(key, "intel_fn11") == 0 ||
                   strcmp(key, "amd_fn8000001dh") == 0) {
            uint32_t leaf = key[0] == 'a' ? 0x8000001du : strcmp(key, "intel_fn4") == 0 ? 4 : 0xb;
            raw_item it = {.leaf = leaf, .sub = idx};
            memcpy(it.r, regs, sizeof(regs));
            g_array_append_val(sub, it);
        }
    }
    /* libcpuid fills its arrays past the highest leaf: only leaf 0's range is real */
    uint32_t max_basic = basic->len ? g_array_index(basic, regs4, 0).r[0] : 0;
    for (guint i = 0; i < basic->len && i <= max_basic; i++) {
        if (!find(r, i, 0)) {
            cpu_raw_set(r, i, 0, g_array_index(basic, regs4, i).r);
        }
    }
    uint32_t max_ext = ext->len ? g_array_index(ext, regs4, 0).r[0] : 0;
    for (guint i = 0; i < ext->len && 0x80000000u + i <= max_ext; i++) {
        if (!find(r, 0x80000000u + i, 0)) {
            cpu_raw_set(r, 0x80000000u + i, 0, g_array_index(ext, regs4, i).r);
        }
    }
    /* it writes every subleaf array whatever the CPU: keep those of leaves the CPU has */
    for (guint i = 0; i < sub->len; i++) {
        const raw_item *it = &g_array_index(sub, raw_item, i);
        if (it->leaf <= max_basic || (it->leaf >= 0x80000000u && it->leaf <= max_ext)) {
            cpu_raw_set(r, it->leaf, it->sub, it->r);
        }
    }
    return g_steal_pointer(&r);
}

/* ---- vmigrate JSON -------------------------------------------------------------------------- */

static cpu_raw *parse_json(const char *text, const char *origin, vmig_error **errp)
{
    enum json_tokener_error jerr;
    g_autoptr(json_object) o = json_tokener_parse_verbose(text, &jerr);
    json_object *leaves = NULL, *msrs = NULL;
    if (!o || !json_object_object_get_ex(o, "cpuid", &leaves) ||
        !json_object_is_type(leaves, json_type_array)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not vmigrate CPUID JSON (%s)", origin,
                       o ? "no \"cpuid\" array" : json_tokener_error_desc(jerr));
        return NULL;
    }
    g_autoptr(cpu_raw) r = cpu_raw_new();
    for (size_t i = 0; i < json_object_array_length(leaves); i++) {
        json_object *it = json_object_array_get_idx(leaves, i);
        uint64_t v[6];
        bool ok = json_object_is_type(it, json_type_array) && json_object_array_length(it) == 6;
        for (size_t k = 0; ok && k < 6; k++) {
            json_object *n = json_object_array_get_idx(it, k);
            ok = json_object_is_type(n, json_type_int) && json_object_get_int64(n) >= 0 &&
                 json_object_get_int64(n) <= UINT32_MAX;
            v[k] = ok ? (uint64_t)json_object_get_int64(n) : 0;
        }
        if (!ok) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "%s: cpuid[%zu] is not [leaf, subleaf, eax, ebx, "
                           "ecx, edx] of 32-bit numbers",
                           origin, i);
            return NULL;
        }
        uint32_t regs[4] = {(uint32_t)v[2], (uint32_t)v[3], (uint32_t)v[4], (uint32_t)v[5]};
        cpu_raw_set(r, (uint32_t)v[0], (uint32_t)v[1], regs);
    }
    if (json_object_object_get_ex(o, "msr", &msrs)) {
        if (!json_object_is_type(msrs, json_type_object)) {
            vmig_set_error(errp, VMIG_E_INVAL, "%s: \"msr\" is not an object of index: number",
                           origin);
            return NULL;
        }
        json_object_object_foreach(msrs, key, val)
        {
            char *end = NULL;
            errno = 0;
            unsigned long idx = strtoul(key, &end, 0);
            if (!key[0] || *end || errno || idx > UINT32_MAX ||
                !json_object_is_type(val, json_type_int)) {
                vmig_set_error(errp, VMIG_E_INVAL, "%s: msr '%s' is not index: number", origin,
                               key);
                return NULL;
            }
            cpu_raw_set_msr(r, (uint32_t)idx, (uint64_t)json_object_get_int64(val));
        }
    }
    return g_steal_pointer(&r);
}

cpu_raw *cpu_raw_parse(const char *text, size_t len, const char *origin, vmig_error **errp)
{
    const char *p = text;
    while (p < text + len && g_ascii_isspace(*p)) {
        p++;
    }
    cpu_raw *r;
    if (p < text + len && *p == '<') {
        r = parse_xml(text, len, origin, errp);
    } else if (p < text + len && *p == '{') {
        r = parse_json(text, origin, errp);
    } else if (strstr(text, "basic_cpuid[")) {
        r = parse_libcpuid(text, origin, errp);
    } else if (strstr(text, "CPUID 0")) {
        r = parse_aida(text, origin, errp);
    } else {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "%s: not a CPUID dump (expected libvirt cpudata XML, InstLatx64/AIDA64 "
                       "text, a libcpuid test file or vmigrate JSON)",
                       origin);
        return NULL;
    }
    if (r && !validate(r, origin, errp)) {
        cpu_raw_free(r);
        return NULL;
    }
    return r;
}

cpu_raw *cpu_raw_copy(const cpu_raw *r)
{
    cpu_raw *c = cpu_raw_new();
    for (guint i = 0; i < r->items->len; i++) {
        const raw_item *it = &g_array_index(r->items, raw_item, i);
        cpu_raw_set(c, it->leaf, it->sub, it->r);
    }
    for (guint i = 0; i < r->msrs->len; i++) {
        const raw_msr *m = &g_array_index(r->msrs, raw_msr, i);
        cpu_raw_set_msr(c, m->index, m->value);
    }
    return c;
}

cpu_raw *cpu_raw_load(const char *path, vmig_error **errp)
{
    gsize len = 0;
    g_autofree char *text = vmig_file_read(path, &len, errp);
    return text ? cpu_raw_parse(text, len, path, errp) : NULL;
}

/* ---- this host ------------------------------------------------------------------------------ */

static void host_leaf(cpu_raw *r, uint32_t leaf, uint32_t sub)
{
    uint32_t v[4];
    __cpuid_count(leaf, sub, v[0], v[1], v[2], v[3]);
    if (v[0] | v[1] | v[2] | v[3]) {
        cpu_raw_set(r, leaf, sub, v);
    }
}

/* Subleaf enumeration as libvirt's host probe does it (reference/cpu.md 2.7). */
static void host_subleaves(cpu_raw *r, uint32_t leaf)
{
    uint32_t s0[4], s1[4];
    __cpuid_count(leaf, 0, s0[0], s0[1], s0[2], s0[3]);
    switch (leaf) {
    case 0x4:
        for (uint32_t s = 0; s < 64; s++) {
            uint32_t v[4];
            __cpuid_count(leaf, s, v[0], v[1], v[2], v[3]);
            if ((v[0] & 0x1f) == 0) {
                break;
            }
            host_leaf(r, leaf, s);
        }
        return;
    case 0x7:
    case 0x14:
    case 0x17:
        if (leaf == 0x17 && s0[0] < 3) {
            return;
        }
        for (uint32_t s = 0; s <= MIN(s0[0], 63u); s++) {
            host_leaf(r, leaf, s);
        }
        return;
    case 0xb:
        for (uint32_t s = 0; s < 64; s++) {
            uint32_t v[4];
            __cpuid_count(leaf, s, v[0], v[1], v[2], v[3]);
            host_leaf(r, leaf, s);
            if ((v[2] >> 8 & 0xff) == 0) {
                break;
            }
        }
        return;
    case 0xd:
        __cpuid_count(leaf, 1, s1[0], s1[1], s1[2], s1[3]);
        host_leaf(r, leaf, 0);
        host_leaf(r, leaf, 1);
        for (uint32_t n = 2; n < 64; n++) {
            uint32_t mask = n < 32 ? (s0[0] | s1[2]) >> n : (s0[3] | s1[3]) >> (n - 32);
            if (mask & 1) {
                host_leaf(r, leaf, n);
            }
        }
        return;
    case 0xf:
    case 0x10:
        host_leaf(r, leaf, 0);
        for (uint32_t n = 1; n < 32; n++) {
            if ((leaf == 0xf ? s0[3] : s0[1]) >> n & 1) {
                host_leaf(r, leaf, n);
            }
        }
        return;
    case 0x12: {
        uint32_t l7[4];
        __cpuid_count(7, 0, l7[0], l7[1], l7[2], l7[3]);
        if (!(l7[1] >> 2 & 1)) {
            return;
        }
        host_leaf(r, leaf, 0);
        host_leaf(r, leaf, 1);
        for (uint32_t s = 2; s < 64; s++) {
            uint32_t v[4];
            __cpuid_count(leaf, s, v[0], v[1], v[2], v[3]);
            if ((v[0] & 0xf) == 0) {
                break;
            }
            host_leaf(r, leaf, s);
        }
        return;
    }
    default:
        host_leaf(r, leaf, 0);
    }
}

cpu_raw *cpu_raw_host(vmig_error **errp)
{
    if (!__get_cpuid_max(0, NULL)) {
        vmig_set_error(errp, VMIG_E_CPU, "this CPU has no CPUID instruction");
        return NULL;
    }
    cpu_raw *r = cpu_raw_new();
    uint32_t max = __get_cpuid_max(0, NULL), ext = __get_cpuid_max(0x80000000u, NULL);
    uint32_t zero[4] = {0};
    for (uint32_t l = 0; l <= MIN(max, 0xffu); l++) {
        host_subleaves(r, l);
    }
    for (uint32_t l = 0x80000000u; l <= MIN(ext, 0x800000ffu); l++) {
        host_leaf(r, l, 0);
    }
    if (!find(r, 0, 0)) {
        cpu_raw_set(r, 0, 0, zero);
    }
    uint32_t l7[4];
    if (cpu_raw_get(r, 7, 0, l7) && (l7[3] >> 29 & 1)) {
        int fd = open("/dev/cpu/0/msr", O_RDONLY | O_CLOEXEC);
        uint64_t v;
        if (fd >= 0 && pread(fd, &v, sizeof(v), 0x10a) == (ssize_t)sizeof(v)) {
            cpu_raw_set_msr(r, 0x10a, v);
        }
        if (fd >= 0) {
            close(fd);
        }
    }
    return r;
}

/* ---- exports -------------------------------------------------------------------------------- */

static gint cmp_items(gconstpointer a, gconstpointer b)
{
    const raw_item *x = a, *y = b;
    if (x->leaf != y->leaf) {
        return x->leaf < y->leaf ? -1 : 1;
    }
    return x->sub < y->sub ? -1 : x->sub > y->sub;
}

static GArray *sorted_items(const cpu_raw *r)
{
    GArray *s = g_array_copy(r->items);
    g_array_sort(s, cmp_items);
    return s;
}

char *cpu_raw_to_xml(const cpu_raw *r)
{
    g_autoptr(GArray) items = sorted_items(r);
    GString *out = g_string_new("<cpudata arch='x86'>\n");
    for (guint i = 0; i < items->len; i++) {
        const raw_item *it = &g_array_index(items, raw_item, i);
        g_string_append_printf(out,
                               "  <cpuid eax_in='0x%08x' ecx_in='0x%02x' eax='0x%08x' "
                               "ebx='0x%08x' ecx='0x%08x' edx='0x%08x'/>\n",
                               it->leaf, it->sub, it->r[0], it->r[1], it->r[2], it->r[3]);
    }
    for (guint i = 0; i < r->msrs->len; i++) {
        const raw_msr *m = &g_array_index(r->msrs, raw_msr, i);
        g_string_append_printf(out, "  <msr index='0x%x' edx='0x%08x' eax='0x%08x'/>\n", m->index,
                               (uint32_t)(m->value >> 32), (uint32_t)m->value);
    }
    g_string_append(out, "</cpudata>\n");
    return g_string_free(out, FALSE);
}

char *cpu_raw_to_json(const cpu_raw *r)
{
    g_autoptr(GArray) items = sorted_items(r);
    g_autoptr(json_object) o = json_object_new_object();
    json_object *arr = json_object_new_array();
    for (guint i = 0; i < items->len; i++) {
        const raw_item *it = &g_array_index(items, raw_item, i);
        json_object *e = json_object_new_array();
        uint32_t v[6] = {it->leaf, it->sub, it->r[0], it->r[1], it->r[2], it->r[3]};
        for (int k = 0; k < 6; k++) {
            json_object_array_add(e, json_object_new_int64(v[k]));
        }
        json_object_array_add(arr, e);
    }
    json_object_object_add(o, "cpuid", arr);
    json_object *msrs = json_object_new_object();
    for (guint i = 0; i < r->msrs->len; i++) {
        const raw_msr *m = &g_array_index(r->msrs, raw_msr, i);
        char key[16];
        g_snprintf(key, sizeof(key), "0x%x", m->index);
        json_object_object_add(msrs, key, json_object_new_int64((int64_t)m->value));
    }
    json_object_object_add(o, "msr", msrs);
    return g_strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY));
}
