/*
 * Tables generated from QEMU by scripts/gen-cpu-data.py (cpu/qemu-cpu-data.c): every x86
 * feature name QEMU's -cpu takes, with the CPUID or MSR bit it stands for, and QEMU's named
 * CPU models with their feature sets.  Regenerate them against another QEMU with the script.
 */
#ifndef VMIG_CPU_DATA_H
#define VMIG_CPU_DATA_H

#include <stddef.h>
#include <stdint.h>

typedef enum cpu_item_kind {
    CPU_ITEM_CPUID,
    CPU_ITEM_MSR,
} cpu_item_kind;

/* A CPUID bit (leaf, subleaf, register 0-3 = EAX-EDX, bit) or an MSR bit (leaf = index). */
typedef struct cpu_feature_def {
    const char *name;
    cpu_item_kind kind;
    uint32_t leaf;
    uint32_t subleaf;
    uint8_t reg;
    uint8_t bit;
} cpu_feature_def;

typedef struct cpu_model_def {
    const char *name;
    const char *alias_of; /* NULL, or the versioned model this name stands for */
    const char *vendor;   /* "GenuineIntel", "AuthenticAMD", ... */
    int family, model, stepping;
    const char *features; /* space-separated QEMU feature names */
} cpu_model_def;

extern const char cpu_data_qemu_version[];
extern const cpu_feature_def cpu_features[];
extern const size_t cpu_features_count;
extern const cpu_model_def cpu_model_defs[];
extern const size_t cpu_model_defs_count;

#endif
