/*
 * CPUs read from a live QEMU over QMP, waiting for each reply (qmp_conn_call).  The questions
 * are asked here; the answers are read, type-checked, by cpu/qemu-reply.h, which an
 * asynchronous caller uses directly with replies it collected itself.
 */
#ifndef VMIG_ENGINE_CPU_QEMU_H
#define VMIG_ENGINE_CPU_QEMU_H

#include "cpu/model.h"
#include "qmp/qmp.h"

/* The effective CPU of the VM behind @c (its first vCPU): the CPUID bits QEMU gives it, its
 * vendor, and in @ret_filtered what its -cpu asked for but the accelerator could not give. */
bool cpu_vm_from_qemu(qmp_conn *c, cpu_def *ret, cpu_featset *ret_filtered, vmig_error **errp);

/* What QEMU on this host can give a guest: the full expansion of @model, "host" under KVM or
 * "max" under TCG. */
bool cpu_host_model_from_qemu(qmp_conn *c, const char *model, cpu_def *ret, vmig_error **errp);

/* The named models of the QEMU behind @c: query-cpu-definitions, then a static expansion of
 * each.  The expansion carries that QEMU's accelerator defaults (TCG turns vme off). */
cpu_models *cpu_models_from_qemu(qmp_conn *c, vmig_error **errp);

#endif
