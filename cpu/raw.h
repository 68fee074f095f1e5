/*
 * Raw CPUID data: leaves and subleaves with their four registers, plus MSRs, as read from this
 * host's CPUID instruction or from a dump in one of the formats people have:
 *   - libvirt's cpudata XML (<cpudata><cpuid eax_in= ecx_in= eax= .../><msr .../>);
 *   - InstLatx64 / AIDA64 text ("CPUID 00000007: EAX-EBX-ECX-EDX [SL 00]", "MSR ...");
 *   - libcpuid's test format (basic_cpuid[n]=..., ext_cpuid[n]=..., intel_fn4[i]=...);
 *   - vmigrate's JSON ({"cpuid": [[leaf, subleaf, eax, ebx, ecx, edx], ...], "msr": {...}}).
 * A dump that is truncated or inconsistent (no leaf 0 or 1, a leaf beyond what leaf 0 reports,
 * a leaf the CPU would not have) is refused with the line and leaf named.
 */
#ifndef VMIG_CPU_RAW_H
#define VMIG_CPU_RAW_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "cpu/cpu.h"
#include "vmigrate.h"

typedef struct cpu_raw cpu_raw;

cpu_raw *cpu_raw_new(void);
void cpu_raw_free(cpu_raw *r);
cpu_raw *cpu_raw_copy(const cpu_raw *r);
void cpu_raw_set(cpu_raw *r, uint32_t leaf, uint32_t sub, const uint32_t regs[4]);
void cpu_raw_set_msr(cpu_raw *r, uint32_t index, uint64_t value);
/* False when the dump lacks that leaf/subleaf (registers then read as 0). */
bool cpu_raw_get(const cpu_raw *r, uint32_t leaf, uint32_t sub, uint32_t ret[4]);
bool cpu_raw_get_msr(const cpu_raw *r, uint32_t index, uint64_t *ret);

/* Lookups of leaves and MSRs made on @r so far: the work its reader did, which is linear in
 * the dump's size (tests bound it; timings are for bench/). */
uint64_t cpu_raw_probes(const cpu_raw *r);

/* Parses any of the formats above; @origin names the input in errors. */
cpu_raw *cpu_raw_parse(const char *text, size_t len, const char *origin, vmig_error **errp);
cpu_raw *cpu_raw_load(const char *path, vmig_error **errp);
/* This host, with the CPUID instruction (and MSR 0x10a from /dev/cpu/0/msr when readable). */
cpu_raw *cpu_raw_host(vmig_error **errp);

/* Vendor string (leaf 0), family/model/stepping (leaf 1, with the extended fields). */
void cpu_raw_vendor(const cpu_raw *r, char out[13]);
void cpu_raw_signature(const cpu_raw *r, int *family, int *model, int *stepping);
/* The features QEMU knows that the data has. */
void cpu_raw_features(const cpu_raw *r, cpu_featset *out);

/* Exports: libvirt cpudata XML and vmigrate JSON (caller frees). */
char *cpu_raw_to_xml(const cpu_raw *r);
char *cpu_raw_to_json(const cpu_raw *r);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(cpu_raw, cpu_raw_free)

#endif
