/* cpu/: the feature table generated from QEMU, name lookup, feature sets. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib.h>
#include <string.h>

#include "cpu/cpu.h"

static const cpu_feature_def *feat(const char *name)
{
    int i = cpu_feature_index(name);
    cr_assert(ge(int, i, 0), "feature '%s' is unknown", name);
    return cpu_feature(i);
}

static void expect_cpuid(const char *name, uint32_t leaf, uint32_t sub, int reg, int bit)
{
    const cpu_feature_def *f = feat(name);
    cr_expect(eq(int, f->kind, CPU_ITEM_CPUID), "%s", name);
    cr_expect(eq(u32, f->leaf, leaf), "%s leaf", name);
    cr_expect(eq(u32, f->subleaf, sub), "%s subleaf", name);
    cr_expect(eq(int, f->reg, reg), "%s register", name);
    cr_expect(eq(int, f->bit, bit), "%s bit", name);
}

enum { EAX, EBX, ECX, EDX };

/* Bit positions from the Intel SDM and AMD APM, against what the generator read from QEMU. */
Test(cpu_table, architectural_bits)
{
    expect_cpuid("fpu", 1, 0, EDX, 0);
    expect_cpuid("sse2", 1, 0, EDX, 26);
    expect_cpuid("pni", 1, 0, ECX, 0);
    expect_cpuid("pclmulqdq", 1, 0, ECX, 1);
    expect_cpuid("vmx", 1, 0, ECX, 5);
    expect_cpuid("x2apic", 1, 0, ECX, 21);
    expect_cpuid("avx", 1, 0, ECX, 28);
    expect_cpuid("hypervisor", 1, 0, ECX, 31);
    expect_cpuid("arat", 6, 0, EAX, 2);
    expect_cpuid("avx2", 7, 0, EBX, 5);
    expect_cpuid("tsc-adjust", 7, 0, EBX, 1);
    expect_cpuid("avx512f", 7, 0, EBX, 16);
    expect_cpuid("umip", 7, 0, ECX, 2);
    expect_cpuid("md-clear", 7, 0, EDX, 10);
    expect_cpuid("spec-ctrl", 7, 0, EDX, 26);
    expect_cpuid("arch-capabilities", 7, 0, EDX, 29);
    expect_cpuid("ssbd", 7, 0, EDX, 31);
    expect_cpuid("xsaveopt", 0xd, 1, EAX, 0);
    expect_cpuid("xsaves", 0xd, 1, EAX, 3);
    expect_cpuid("lahf-lm", 0x80000001, 0, ECX, 0);
    expect_cpuid("pdpe1gb", 0x80000001, 0, EDX, 26);
    expect_cpuid("lm", 0x80000001, 0, EDX, 29);
    expect_cpuid("invtsc", 0x80000007, 0, EDX, 8);
    expect_cpuid("ibpb", 0x80000008, 0, EBX, 12);
    expect_cpuid("amd-ssbd", 0x80000008, 0, EBX, 24);
}

Test(cpu_table, msr_bits)
{
    const cpu_feature_def *f = feat("skip-l1dfl-vmentry");
    cr_assert(eq(int, f->kind, CPU_ITEM_MSR));
    cr_assert(eq(u32, f->leaf, 0x10a));
    cr_assert(eq(int, f->bit, 3));
    cr_assert(eq(int, feat("pschange-mc-no")->bit, 6));
    cr_assert(eq(int, feat("rdctl-no")->bit, 0));
}

Test(cpu_table, names_are_unique_and_bits_distinct)
{
    cr_assert(le(sz, cpu_features_count, CPU_FEAT_MAX));
    for (size_t i = 0; i < cpu_features_count; i++) {
        for (size_t j = i + 1; j < cpu_features_count; j++) {
            const cpu_feature_def *a = &cpu_features[i], *b = &cpu_features[j];
            cr_expect(strcmp(a->name, b->name) != 0, "%s twice", a->name);
            bool same = a->kind == b->kind && a->leaf == b->leaf && a->subleaf == b->subleaf &&
                        a->reg == b->reg && a->bit == b->bit;
            cr_expect(not(same), "%s and %s share a bit", a->name, b->name);
        }
    }
}

Test(cpu_table, libvirt_spellings)
{
    cr_assert(eq(int, cpu_feature_index("tsc_adjust"), cpu_feature_index("tsc-adjust")));
    cr_assert(eq(int, cpu_feature_index("pclmuldq"), cpu_feature_index("pclmulqdq")));
    cr_assert(eq(int, cpu_feature_index("sse4_1"), cpu_feature_index("sse4.1")));
    cr_assert(eq(int, cpu_feature_index("lahf_lm"), cpu_feature_index("lahf-lm")));
    cr_assert(eq(int, cpu_feature_index("no-such-feature"), -1));
    cr_assert(eq(str, (char *)cpu_feature_libvirt_name(cpu_feature_index("pclmulqdq")),
                 "pclmuldq"));
    cr_assert(eq(str, (char *)cpu_feature_libvirt_name(cpu_feature_index("tsc-adjust")),
                 "tsc_adjust"));
    cr_assert(eq(str, (char *)cpu_feature_libvirt_name(cpu_feature_index("md-clear")),
                 "md-clear"));
    cr_assert(not(cpu_feature_migratable(cpu_feature_index("invtsc"))));
    cr_assert(cpu_feature_migratable(cpu_feature_index("avx2")));
}

Test(cpu_table, models_name_known_features)
{
    cr_assert(gt(sz, cpu_model_defs_count, 50));
    for (size_t m = 0; m < cpu_model_defs_count; m++) {
        char buf[4096];
        g_strlcpy(buf, cpu_model_defs[m].features, sizeof(buf));
        char *save = NULL;
        for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
            cr_expect(ge(int, cpu_feature_index(t), 0), "%s lists unknown %s",
                      cpu_model_defs[m].name, t);
        }
    }
}

Test(cpu_featset, operations)
{
    cpu_featset a = {0}, b = {0};
    cpu_featset_add(&a, 1);
    cpu_featset_add(&a, 70);
    cpu_featset_add(&b, 70);
    cr_assert(cpu_featset_subset(&b, &a));
    cr_assert(not(cpu_featset_subset(&a, &b)));
    cpu_featset c = a;
    cpu_featset_andnot(&c, &b);
    cr_assert(eq(int, cpu_featset_count(&c), 1));
    cr_assert(cpu_featset_has(&c, 1));
    cpu_featset_and(&c, &b);
    cr_assert(cpu_featset_empty(&c));
    cpu_featset_or(&c, &a);
    cr_assert(eq(int, cpu_featset_count(&c), 2));
}
