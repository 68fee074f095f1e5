#include <glib.h>
#include <string.h>

#include "cpu/cpu.h"

_Static_assert(CPU_FEAT_MAX % 64 == 0, "feature sets are whole words");

/* Spellings libvirt (or Linux) uses where QEMU's differ and the difference is more than '_'
 * for '-'.  The underscore forms (tsc_adjust, lahf_lm, ds_cpl, ...) are handled generally. */
static const struct {
    const char *alias;
    const char *qemu;
    bool libvirt_output; /* libvirt writes this spelling */
} aliases[] = {
    {"pclmuldq", "pclmulqdq", true},
    {"sse3", "pni", false},
    {"sse4_1", "sse4.1", false},
    {"sse4_2", "sse4.2", false},
    {"sse4-1", "sse4.1", false},
    {"sse4-2", "sse4.2", false},
    {"ffxsr", "fxsr-opt", false},
    {"i64", "lm", false},
    {"xd", "nx", false},
    {"md_clear", "md-clear", false},
};

/* libvirt keeps these historical underscore names in its CPU map. */
static const char *const libvirt_underscored[] = {
    "lahf-lm", "ds-cpl", "tsc-adjust", "cmp-legacy", "fxsr-opt", "perfctr-core",
    "perfctr-nb", "nodeid-msr", "svm-lock", "nrip-save", "tsc-scale", "vmcb-clean",
    "pause-filter",
};

static const char *const unmigratable[] = {"invtsc"};

const cpu_feature_def *cpu_feature(int idx)
{
    return idx >= 0 && (size_t)idx < cpu_features_count ? &cpu_features[idx] : NULL;
}

static int exact(const char *name)
{
    /* a model expansion names some 700 properties: look each up in a table built once */
    static GHashTable *by_name; /* name -> index + 1 */
    if (g_once_init_enter(&by_name)) {
        GHashTable *t = g_hash_table_new(g_str_hash, g_str_equal);
        for (size_t i = 0; i < cpu_features_count; i++) {
            g_hash_table_insert(t, (gpointer)(uintptr_t)cpu_features[i].name,
                                GSIZE_TO_POINTER(i + 1));
        }
        g_once_init_leave(&by_name, t);
    }
    return (int)GPOINTER_TO_SIZE(g_hash_table_lookup(by_name, name)) - 1;
}

int cpu_feature_index(const char *name)
{
    int i = exact(name);
    if (i >= 0) {
        return i;
    }
    for (size_t k = 0; k < sizeof(aliases) / sizeof(aliases[0]); k++) {
        if (strcmp(aliases[k].alias, name) == 0) {
            return exact(aliases[k].qemu);
        }
    }
    char dashed[64];
    size_t n = strlen(name);
    if (n >= sizeof(dashed)) {
        return -1;
    }
    for (size_t k = 0; k <= n; k++) {
        dashed[k] = name[k] == '_' ? '-' : name[k];
    }
    return exact(dashed);
}

const char *cpu_feature_libvirt_name(int idx)
{
    static char buf[64];
    const char *q = cpu_features[idx].name;
    for (size_t k = 0; k < sizeof(aliases) / sizeof(aliases[0]); k++) {
        if (aliases[k].libvirt_output && strcmp(aliases[k].qemu, q) == 0) {
            return aliases[k].alias;
        }
    }
    for (size_t k = 0; k < sizeof(libvirt_underscored) / sizeof(libvirt_underscored[0]); k++) {
        if (strcmp(libvirt_underscored[k], q) == 0) {
            size_t n = strlen(q);
            for (size_t c = 0; c <= n && c < sizeof(buf); c++) {
                buf[c] = q[c] == '-' ? '_' : q[c];
            }
            return buf;
        }
    }
    return q;
}

bool cpu_feature_migratable(int idx)
{
    for (size_t k = 0; k < sizeof(unmigratable) / sizeof(unmigratable[0]); k++) {
        if (strcmp(unmigratable[k], cpu_features[idx].name) == 0) {
            return false;
        }
    }
    return true;
}

void cpu_featset_drop_unmigratable(cpu_featset *s)
{
    for (size_t i = 0; i < cpu_features_count; i++) {
        if (!cpu_feature_migratable((int)i)) {
            cpu_featset_del(s, (int)i);
        }
    }
}

void cpu_featset_and(cpu_featset *a, const cpu_featset *b)
{
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        a->w[i] &= b->w[i];
    }
}

void cpu_featset_andnot(cpu_featset *a, const cpu_featset *b)
{
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        a->w[i] &= ~b->w[i];
    }
}

void cpu_featset_or(cpu_featset *a, const cpu_featset *b)
{
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        a->w[i] |= b->w[i];
    }
}

bool cpu_featset_subset(const cpu_featset *a, const cpu_featset *of)
{
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        if (a->w[i] & ~of->w[i]) {
            return false;
        }
    }
    return true;
}

bool cpu_featset_empty(const cpu_featset *s)
{
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        if (s->w[i]) {
            return false;
        }
    }
    return true;
}

int cpu_featset_count(const cpu_featset *s)
{
    int n = 0;
    for (size_t i = 0; i < CPU_FEAT_MAX / 64; i++) {
        n += __builtin_popcountll(s->w[i]);
    }
    return n;
}
