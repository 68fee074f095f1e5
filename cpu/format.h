/* CPU files in, results out (libvirt <cpu> XML, JSON, or a ready -cpu argument). */
#ifndef VMIG_CPU_FORMAT_H
#define VMIG_CPU_FORMAT_H

#include <glib.h>

#include "cpu/model.h"

/* A file holding <cpu> blocks (one or several) or a raw CPUID dump (one CPU, all features
 * required).  GArray of cpu_def. */
GArray *cpu_defs_load(const char *path, vmig_error **errp);

typedef enum cpu_output {
    CPU_OUT_LIBVIRT, /* <cpu mode='custom' match='exact'> */
    CPU_OUT_JSON,    /* {"model", "vendor", "require": [], "disable": []} */
    CPU_OUT_QEMU,    /* Model,+feat,-feat */
} cpu_output;

typedef struct cpu_result {
    cpu_decoded dec;
    cpu_featset set;  /* everything the CPU has */
    char vendor[13];  /* CPUID vendor string, "" when unknown */
    bool all_features; /* list every feature, not only the difference from the model */
} cpu_result;

char *cpu_format(const cpu_result *r, cpu_output fmt);

#endif
