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
 * underscore spelling (tsc_adjust); -1 when unknown. */
int cpu_feature_index(const char *name);
const cpu_feature_def *cpu_feature(int idx);
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
