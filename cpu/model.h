/*
 * Named CPU models, and the three questions asked of them (reference/cpu.md section 2):
 *   decode    which model, plus which features required and disabled, describes a feature set;
 *   baseline  the largest CPU every one of several CPUs can run (intersection, then decode);
 *   compare   whether a VM's CPU runs on a host: identical, superset, or incompatible.
 * Models come from QEMU: the table generated from QEMU 7.2 (cpu/qemu-cpu-data.c), or a live
 * QEMU's query-cpu-definitions and static expansions (cpu/qemu-reply.h).
 */
#ifndef VMIG_CPU_MODEL_H
#define VMIG_CPU_MODEL_H

#include <glib.h>

#include "cpu/cpu.h"
#include "vmigrate.h"

typedef struct cpu_model {
    char *name;      /* what users write: an alias (IvyBridge-IBRS) when QEMU has one */
    char *versioned; /* QEMU's versioned name (IvyBridge-v2), or name */
    GPtrArray *aliases;
    char vendor[13];
    int family, model, stepping;
    cpu_featset features;
} cpu_model;

typedef struct cpu_models cpu_models;

/* The table generated from QEMU (see cpu_data_qemu_version). */
cpu_models *cpu_models_builtin(void);
/* Building a table (cpu/qemu-reply.c reads one from a live QEMU's replies): add models, then
 * aliases, then call cpu_models_done(). */
cpu_models *cpu_models_empty(void);
void cpu_models_add(cpu_models *db, const char *name, const char *vendor, int family, int model,
                    int stepping, const cpu_featset *features);
void cpu_models_alias(cpu_models *db, const char *alias, const char *of);
void cpu_models_done(cpu_models *db);
void cpu_models_free(cpu_models *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(cpu_models, cpu_models_free)
size_t cpu_models_count_get(const cpu_models *m);
const cpu_model *cpu_models_at(const cpu_models *m, size_t i);
/* By any of its names; NULL when unknown. */
const cpu_model *cpu_models_find(const cpu_models *m, const char *name);

/* A CPU definition: a vendor, maybe a signature and a model, and features by policy.  A host
 * CPU (raw CPUID, or libvirt's host <cpu> as virsh capabilities prints it) has every bit the
 * silicon has; a guest CPU (custom, host-model) has what a guest is given. */
typedef struct cpu_def {
    char vendor[13];             /* "" when not given */
    int family, model, stepping; /* -1 when not known */
    char *model_name;            /* NULL for a bare feature list */
    cpu_featset require;         /* require + force */
    cpu_featset disable;         /* disable */
    cpu_featset forbid;
    cpu_featset optional;
    bool host;          /* a host's CPU, not a guest's */
    int nested_ignored; /* vmx-* features read, which are not modelled */
} cpu_def;

void cpu_def_clear(cpu_def *d);
/* The feature set @d stands for: model + require - disable - forbid. */
bool cpu_def_expand(const cpu_models *m, const cpu_def *d, cpu_featset *ret, vmig_error **errp);
/* What a guest can have from @d: for a host CPU, what KVM gives on it (cpu_kvm_guest); for a
 * guest CPU, its features less those no KVM guest can have (cpu_kvm_possible). */
bool cpu_def_guest_set(const cpu_models *m, const cpu_def *d, cpu_featset *ret, vmig_error **errp);
/* @d's vendor, or its model's when it names none ("" if neither). */
const char *cpu_def_vendor(const cpu_models *m, const cpu_def *d);

/* Reads every <cpu> block in @text (libvirt host, host-model or custom CPUs; one file may hold
 * several, as virsh hypervisor-cpu-baseline takes).  Returns a GArray of cpu_def.  A <cpu>
 * with no mode and no match that has an <arch> or a <signature> is a host CPU.  Host-only
 * features (osxsave, cmt, ...) are read; vmx-* are counted and skipped; a feature no table
 * knows is an error. */
GArray *cpu_defs_parse_xml(const char *text, size_t len, const char *origin, vmig_error **errp);

typedef struct cpu_decoded {
    const cpu_model *model;
    cpu_featset require; /* features on top of the model */
    cpu_featset disable; /* model features to turn off (never for host decodes) */
} cpu_decoded;

typedef enum cpu_decode_mode {
    CPU_DECODE_HOST,  /* what a host has: no model feature may be disabled */
    CPU_DECODE_GUEST, /* what a guest gets: model features may be disabled */
} cpu_decode_mode;

/* The model that describes @set with the fewest listed features (required, and for a guest
 * disabled), the newer on a tie.  @family/@model (-1 if unknown) prefer models of that
 * signature; @preferred (NULL-terminated, may be NULL) lists input model names. */
bool cpu_decode(const cpu_models *m, const cpu_featset *set, const char *vendor, int family,
                int model, cpu_decode_mode mode, const char *const *preferred, cpu_decoded *ret,
                vmig_error **errp);

/* Intersection of what a guest can have from each of @n definitions (cpu_def_guest_set),
 * decoded as a guest CPU.  Fails on mixed vendors. */
bool cpu_baseline(const cpu_models *m, const cpu_def *defs, size_t n, bool migratable,
                  cpu_decoded *ret, cpu_featset *ret_set, char ret_vendor[13], vmig_error **errp);

typedef enum cpu_cmp {
    CPU_CMP_INCOMPATIBLE,
    CPU_CMP_IDENTICAL,
    CPU_CMP_SUPERSET,
} cpu_cmp;

/* Can a guest with CPU @guest run on @host?  A host CPU (cpu_def.host) offers what KVM gives
 * on it; another CPU, its features.  A host CPU given as @guest stands for its host model
 * (what KVM gives on it).  @ret_missing: features the guest needs that the host lacks (or, for
 * forbidden features, has); @ret_why: a sentence when incompatible. */
cpu_cmp cpu_compare(const cpu_models *m, const cpu_def *host, const cpu_def *guest,
                    cpu_featset *ret_missing, char **ret_why, vmig_error **errp);

/* "Intel" for "GenuineIntel", and so on (the CPUID string when unknown). */
const char *cpu_vendor_libvirt(const char *cpuid_vendor);

/* "a b c" in QEMU's spelling, or libvirt's when @libvirt. */
char *cpu_featset_names(const cpu_featset *s, bool libvirt);

#endif
