/*
 * cpu/: CPU features as sets, named the way QEMU's -cpu names them, with libvirt's
 * spellings accepted and available for output.
 *
 * A feature set is a fixed bitmap over the feature table (cpu-data.h), so intersecting,
 * subtracting and comparing CPUs are a few word operations, and only features QEMU can give a
 * guest are ever named.
 */
#ifndef VMIG_CPU_H
#define VMIG_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu/cpu-data.h"

#define CPU_FEAT_MAX 320

typedef struct cpu_featset {
    uint64_t w[CPU_FEAT_MAX / 64];
} cpu_featset;

/* Index of feature @name: QEMU's name, an alias (pclmuldq, sse4_1, ...) or libvirt's
 * underscore spelling (tsc_adjust); -1 when unknown.  Indexes below cpu_features_count are
 * QEMU's table; those above are host-only features: bits libvirt names that QEMU cannot give a
 * guest (osxsave, cmt, mbm_total, ...).  They are read and kept for hosts, never written for
 * guests, and never migrate. */
int cpu_feature_index(const char *name);
const cpu_feature_def *cpu_feature(int idx);
/* Every feature, QEMU's and the host-only ones: the bound of a loop over indexes. */
size_t cpu_feature_count(void);
/* True for QEMU's features, false for host-only ones. */
bool cpu_feature_guest(int idx);
void cpu_featset_drop_host_only(cpu_featset *s);
/* libvirt's nested-virtualisation features (vmx-*): known, not modelled. */
bool cpu_feature_is_nested(const char *name);

/* What QEMU under KVM gives a guest on a host whose CPUID has @host (reference/cpu.md section
 * 1): the bits KVM passes through (KVM_GET_SUPPORTED_CPUID), plus those KVM and QEMU add
 * (hypervisor, x2apic, tsc-deadline, arat, tsc-adjust, arch-capabilities, the other vendor's
 * spectre bits, umip on VMX, the ARCH_CAPABILITIES bits of bugs the host does not have), as
 * QEMU's migratable -cpu host takes them (no invtsc, no PMU). */
void cpu_kvm_guest(const cpu_featset *host, const char *vendor, cpu_featset *ret);
/* Keeps in @s only what some KVM guest can have: drops host-only features and the bits KVM
 * never gives (ds, acpi, monitor, ...).  For CPUs that are already a guest's view. */
void cpu_kvm_possible(cpu_featset *s);
/* libvirt's spelling where it differs from QEMU's (tsc_adjust, pclmuldq, ...). */
const char *cpu_feature_libvirt_name(int idx);
/* False for features that block migration (invtsc). */
bool cpu_feature_migratable(int idx);
/* Removes from @s every feature that blocks migration (--migratable). */
void cpu_featset_drop_unmigratable(cpu_featset *s);

static inline void cpu_featset_add(cpu_featset *s, int i)
{
    s->w[i / 64] |= UINT64_C(1) << (i % 64);
}
static inline void cpu_featset_del(cpu_featset *s, int i)
{
    s->w[i / 64] &= ~(UINT64_C(1) << (i % 64));
}
static inline bool cpu_featset_has(const cpu_featset *s, int i)
{
    return s->w[i / 64] >> (i % 64) & 1;
}
void cpu_featset_and(cpu_featset *a, const cpu_featset *b);
void cpu_featset_andnot(cpu_featset *a, const cpu_featset *b);
void cpu_featset_or(cpu_featset *a, const cpu_featset *b);
bool cpu_featset_subset(const cpu_featset *a, const cpu_featset *of);
bool cpu_featset_empty(const cpu_featset *s);
int cpu_featset_count(const cpu_featset *s);

#endif
