#include <glib.h>
#include <string.h>

#include "cpu/cpu.h"

_Static_assert(CPU_FEAT_MAX % 64 == 0, "feature sets are whole words");

/* Spellings libvirt (or Linux) uses where QEMU's differ and the difference is more than '_'
 * for '-'.  The underscore forms (tsc_adjust, lahf_lm, ds_cpl, ...) are handled generally. */
/* clang-format off: a table, laid out by hand */
static const struct {
    const char *alias;
    const char *qemu;
    bool libvirt_output; /* libvirt writes this spelling */
} aliases[] = {
    {"pclmuldq", "pclmulqdq", true}, {"sse3", "pni", false},      {"sse4_1", "sse4.1", false},
    {"sse4_2", "sse4.2", false},     {"sse4-1", "sse4.1", false}, {"sse4-2", "sse4.2", false},
    {"ffxsr", "fxsr-opt", false},    {"i64", "lm", false},        {"xd", "nx", false},
    {"md_clear", "md-clear", false}, {"cqm", "cmt", false},
};

/* libvirt keeps these historical underscore names in its CPU map. */
static const char *const libvirt_underscored[] = {
    "lahf-lm",      "ds-cpl",     "tsc-adjust",   "cmp-legacy", "fxsr-opt",
    "perfctr-core", "perfctr-nb", "nodeid-msr",   "svm-lock",   "nrip-save",
    "tsc-scale",    "vmcb-clean", "pause-filter",
};

static const char *const unmigratable[] = {"invtsc"};

/* Bits libvirt's CPU map names that QEMU 7.2's -cpu cannot give a guest: state the OS sets
 * (osxsave, ospke), monitoring and platform bits KVM never passes (cmt, mbm_*, pconfig,
 * overflow-recov, succor), bits QEMU passes under no name (flush-l1d), and bits newer QEMUs
 * name that the built-in table does not (fsrs, auto-ibrs, the newer ARCH_CAPABILITIES bits).
 * Positions from libvirt's x86_features.xml and the Intel SDM / AMD APM. */
#define HO(n, l, s, r, b)                                                                          \
    {                                                                                              \
        n, CPU_ITEM_CPUID, l, s, r, b                                                              \
    }
#define HO_MSR(n, i, b)                                                                            \
    {                                                                                              \
        n, CPU_ITEM_MSR, i, 0, 0, b                                                                \
    }
/* clang-format on */
enum { EAX, EBX, ECX, EDX };
static const cpu_feature_def host_only[] = {
    HO("osxsave", 0x1, 0, ECX, 27),
    HO("cmt", 0x7, 0, EBX, 12),
    HO("ospke", 0x7, 0, ECX, 4),
    HO("pconfig", 0x7, 0, EDX, 18),
    HO("flush-l1d", 0x7, 0, EDX, 28),
    HO("cmpccxadd", 0x7, 1, EAX, 7),
    HO("fzrm", 0x7, 1, EAX, 10),
    HO("fsrs", 0x7, 1, EAX, 11),
    HO("fsrc", 0x7, 1, EAX, 12),
    HO("amx-fp16", 0x7, 1, EAX, 21),
    HO("avx-ifma", 0x7, 1, EAX, 23),
    HO("avx-vnni-int8", 0x7, 1, EDX, 4),
    HO("avx-ne-convert", 0x7, 1, EDX, 5),
    HO("prefetchiti", 0x7, 1, EDX, 14),
    HO("mbm_total", 0xf, 1, EDX, 1),
    HO("mbm_local", 0xf, 1, EDX, 2),
    HO("sgx-edeccssa", 0x12, 0, EAX, 11),
    HO("sgx-aex-notify", 0x12, 1, EAX, 10),
    HO("cvt16", 0x80000001u, 0, ECX, 18),
    HO("overflow-recov", 0x80000007u, 0, EBX, 0),
    HO("succor", 0x80000007u, 0, EBX, 1),
    HO("amd-psfd", 0x80000008u, 0, EBX, 28),
    HO("no-nested-data-bp", 0x80000021u, 0, EAX, 0),
    HO("lfence-always-serializing", 0x80000021u, 0, EAX, 2),
    HO("null-sel-clr-base", 0x80000021u, 0, EAX, 6),
    HO("auto-ibrs", 0x80000021u, 0, EAX, 8),
    HO_MSR("sbdr-ssdp-no", 0x10a, 13),
    HO_MSR("fbsdp-no", 0x10a, 14),
    HO_MSR("psdp-no", 0x10a, 15),
    HO_MSR("fb-clear", 0x10a, 17),
    HO_MSR("pbrsb-no", 0x10a, 24),
    HO_MSR("gds-no", 0x10a, 26),
    HO_MSR("rfds-no", 0x10a, 27),
};

size_t cpu_feature_count(void)
{
    return cpu_features_count + G_N_ELEMENTS(host_only);
}

bool cpu_feature_guest(int idx)
{
    return idx >= 0 && (size_t)idx < cpu_features_count;
}

const cpu_feature_def *cpu_feature(int idx)
{
    if (idx < 0 || (size_t)idx >= cpu_feature_count()) {
        return NULL;
    }
    return (size_t)idx < cpu_features_count ? &cpu_features[idx]
                                            : &host_only[(size_t)idx - cpu_features_count];
}

bool cpu_feature_is_nested(const char *name)
{
    return g_str_has_prefix(name, "vmx-");
}

static int exact(const char *name)
{
    /* a model expansion names some 700 properties: look each up in a table built once */
    static GHashTable *by_name; /* name -> index + 1 */
    if (g_once_init_enter(&by_name)) {
        GHashTable *t = g_hash_table_new(g_str_hash, g_str_equal);
        for (size_t i = 0; i < cpu_feature_count(); i++) {
            g_hash_table_insert(t, (gpointer)(uintptr_t)cpu_feature((int)i)->name,
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
        dashed[k] = (char)(name[k] == '_' ? '-' : name[k]);
    }
    return exact(dashed);
}

const char *cpu_feature_libvirt_name(int idx)
{
    static char buf[64];
    const char *q = cpu_feature(idx)->name;
    for (size_t k = 0; k < sizeof(aliases) / sizeof(aliases[0]); k++) {
        if (aliases[k].libvirt_output && strcmp(aliases[k].qemu, q) == 0) {
            return aliases[k].alias;
        }
    }
    for (size_t k = 0; k < sizeof(libvirt_underscored) / sizeof(libvirt_underscored[0]); k++) {
        if (strcmp(libvirt_underscored[k], q) == 0) {
            size_t n = strlen(q);
            for (size_t c = 0; c <= n && c < sizeof(buf); c++) {
                buf[c] = (char)(q[c] == '-' ? '_' : q[c]);
            }
            return buf;
        }
    }
    return q;
}

bool cpu_feature_migratable(int idx)
{
    if (!cpu_feature_guest(idx)) {
        return false;
    }
    for (size_t k = 0; k < sizeof(unmigratable) / sizeof(unmigratable[0]); k++) {
        if (strcmp(unmigratable[k], cpu_features[idx].name) == 0) {
            return false;
        }
    }
    return true;
}

void cpu_featset_drop_unmigratable(cpu_featset *s)
{
    for (size_t i = 0; i < cpu_feature_count(); i++) {
        if (!cpu_feature_migratable((int)i)) {
            cpu_featset_del(s, (int)i);
        }
    }
}

void cpu_featset_drop_host_only(cpu_featset *s)
{
    for (size_t i = cpu_features_count; i < cpu_feature_count(); i++) {
        cpu_featset_del(s, (int)i);
    }
}

/* ---- what KVM gives a guest ------------------------------------------------------------------ */

/* QEMU's features that KVM never passes to a guest (Linux kvm_set_cpu_caps() masks them
 * out).  Of the SVM leaf only npt and nrip-save pass, as the recorded host models
 * (shared/cpudata *-json.xml) show. */
/* clang-format off: a table, laid out by hand */
static const char *const kvm_never[] = {
    "dtes64",
    "monitor",
    "ds-cpl",
    "smx",
    "est",
    "tm2",
    "cid",
    "xtpr",
    "dca",
    "pn",
    "ds",
    "acpi",
    "ht",
    "tm",
    "ia64",
    "pbe",
    "sgx",
    "mpx",
    "pcommit",
    "intel-pt",
    "sgxlc",
    "core-capability",
    "sgx1",
    "sgx2",
    "sgx-exinfo",
    "sgx-debug",
    "sgx-mode64",
    "sgx-provisionkey",
    "sgx-tokenkey",
    "sgx-kss",
    "intel-pt-lip",
    "kvm-hint-dedicated",
    "extapic",
    "ibs",
    "skinit",
    "wdt",
    "lwp",
    "tce",
    "nodeid-msr",
    "lbrv",
    "svm-lock",
    "tsc-scale",
    "vmcb-clean",
    "flushbyasid",
    "decodeassists",
    "pause-filter",
    "pfthreshold",
    "avic",
    "v-vmsave-vmload",
    "vgif",
    "split-lock-detect",
};

/* What KVM could give but QEMU's -cpu host (migratable, the default) leaves out: invtsc,
 * which blocks migration, and the PMU's bits, which need pmu=on. */
static const char *const host_model_omits[] = {
    "invtsc", "pdcm", "perfctr-core", "perfctr-nb", "full-width-write",
};

/* Set for every guest: QEMU sets hypervisor; KVM emulates x2apic, the TSC deadline timer,
 * ARAT, TSC_ADJUST and IA32_ARCH_CAPABILITIES, whose pschange-mc-no it always sets and
 * skip-l1dfl-vmentry unless L1TF flushing is "never" (not a default). */
static const char *const kvm_always[] = {
    "hypervisor",        "x2apic",         "tsc-deadline",       "arat", "tsc-adjust",
    "arch-capabilities", "pschange-mc-no", "skip-l1dfl-vmentry",
};
/* clang-format on */

static void set_names(cpu_featset *s, const char *const *names, size_t n, bool on)
{
    for (size_t i = 0; i < n; i++) {
        int f = cpu_feature_index(names[i]);
        if (f >= 0 && on) {
            cpu_featset_add(s, f);
        } else if (f >= 0) {
            cpu_featset_del(s, f);
        }
    }
}

static bool has(const cpu_featset *s, const char *name)
{
    int f = cpu_feature_index(name);
    return f >= 0 && cpu_featset_has(s, f);
}

static void add_if(cpu_featset *s, bool cond, const char *name)
{
    int f = cpu_feature_index(name);
    if (cond && f >= 0) {
        cpu_featset_add(s, f);
    }
}

void cpu_kvm_possible(cpu_featset *s)
{
    cpu_featset_drop_host_only(s);
    set_names(s, kvm_never, G_N_ELEMENTS(kvm_never), false);
}

void cpu_kvm_guest(const cpu_featset *host, const char *vendor, cpu_featset *ret)
{
    const cpu_featset *h = host;
    cpu_featset g = *host;
    cpu_featset_drop_host_only(&g);
    set_names(&g, kvm_never, G_N_ELEMENTS(kvm_never), false);
    set_names(&g, host_model_omits, G_N_ELEMENTS(host_model_omits), false);
    set_names(&g, kvm_always, G_N_ELEMENTS(kvm_always), true);
    bool intel = strcmp(vendor, "GenuineIntel") == 0;
    bool amd = strcmp(vendor, "AuthenticAMD") == 0 || strcmp(vendor, "HygonGenuine") == 0;
    /* the host kernel's spectre flags, whichever vendor's bits they came from, are offered
     * in both vendors' spellings */
    bool ibrs = has(h, "spec-ctrl") || has(h, "ibrs");
    bool ibpb = has(h, "spec-ctrl") || has(h, "ibpb");
    bool stibp = has(h, "stibp") || has(h, "amd-stibp");
    bool ssbd = has(h, "ssbd") || has(h, "amd-ssbd") || has(h, "virt-ssbd");
    add_if(&g, ibpb, "ibpb");
    add_if(&g, ibrs, "ibrs");
    add_if(&g, ibpb && ibrs, "spec-ctrl");
    add_if(&g, stibp, "stibp");
    add_if(&g, stibp, "amd-stibp");
    add_if(&g, ssbd, "ssbd");
    add_if(&g, ssbd, "amd-ssbd");
    add_if(&g, amd && ssbd, "virt-ssbd");
    /* UMIP is emulated on VMX hosts; SVM's address check is always offered with SVM */
    add_if(&g, intel && has(h, "vmx"), "umip");
    add_if(&g, amd && has(h, "svm"), "svme-addr-chk");
    /* pku only where the host OS turned protection keys on (OSPKE) */
    if (!has(h, "ospke")) {
        set_names(&g, (const char *const[]){"pku"}, 1, false);
    }
    /* ARCH_CAPABILITIES: the "not affected" bits of bugs the host does not have.  AMD has
     * neither Meltdown nor MDS; speculative store bypass unless amd-no-ssb; TAA needs TSX. */
    bool ssb_no = amd ? has(h, "amd-no-ssb") : has(h, "ssb-no");
    add_if(&g, amd || has(h, "rdctl-no"), "rdctl-no");
    add_if(&g, amd || has(h, "mds-no"), "mds-no");
    add_if(&g, ssb_no, "ssb-no");
    add_if(&g, ssb_no, "amd-no-ssb");
    if (!has(h, "rtm")) {
        set_names(&g, (const char *const[]){"taa-no"}, 1, false);
    }
    *ret = g;
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
