/* CPU files in, results out (libvirt <cpu> XML, JSON, or a ready -cpu argument). */
#ifndef VMIG_CPU_FORMAT_H
#define VMIG_CPU_FORMAT_H

#include <glib.h>

#include "cpu/model.h"
#include "cpu/raw.h"

/* A file holding <cpu> blocks (one or several) or a raw CPUID dump (one CPU, all features
 * required).  GArray of cpu_def. */
GArray *cpu_defs_load(const char *path, vmig_error **errp);
/* The same from @text (NUL-terminated at @len; @origin names it in errors).  For a raw dump,
 * @ret_raw (may be NULL) receives its CPUID data (owned); for <cpu> blocks, NULL. */
GArray *cpu_defs_parse(const char *text, size_t len, const char *origin, cpu_raw **ret_raw,
                       vmig_error **errp);

typedef enum cpu_output {
    CPU_OUT_LIBVIRT, /* <cpu mode='custom' match='exact'> */
    CPU_OUT_JSON,    /* {"model", "vendor", "require": [], "disable": []} */
    CPU_OUT_QEMU,    /* Model,+feat,-feat */
} cpu_output;

/* @d as text: its model (none: no <model>, "model": null, QEMU's featureless "base"), vendor,
 * and the features it requires and disables.  @all (may be NULL) replaces the required features
 * by every feature the CPU has (--features).  Owned string. */
char *cpu_format(const cpu_def *d, const cpu_featset *all, cpu_output fmt);

#endif
