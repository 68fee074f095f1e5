/*
 * CPUs as a live QEMU reports them, read from replies the caller has already received.
 *
 * These are pure functions: they send nothing and wait for nothing, so the engine can ask the
 * questions any way it likes (engine/cpu-qemu.c asks synchronously, a migration job
 * asynchronously) and unit tests can feed recorded or hostile replies.  QEMU is untrusted
 * input: every value is type-checked before use, and a reply of the wrong shape is a
 * VMIG_E_PROTO error that names the command and the field, never a crash.
 *
 * What to ask, in QMP:
 *   a VM's CPU     query-cpus-fast, then qom-get on the first vCPU's qom-path of
 *                  feature-words, filtered-features, vendor and each cpu_msr_feature_names()
 *   a host model   query-cpu-model-expansion {type: full, model: {name: host or max}}
 *   the models     query-cpu-definitions, then query-cpu-model-expansion {type: static} of each
 *                  name cpu_definitions_models() lists
 */
#ifndef VMIG_CPU_QEMU_REPLY_H
#define VMIG_CPU_QEMU_REPLY_H

#include <json-c/json.h>

#include "cpu/format.h"
#include "cpu/model.h"

/* @cpus: the query-cpus-fast reply; the qom-path of the first vCPU (owned string), or NULL. */
char *cpu_first_qom_path(json_object *cpus, vmig_error **errp);

/* The names of the MSR-kind features whose QOM boolean properties must be read (qom-get on the
 * vCPU path), NULL-terminated static array. */
const char *const *cpu_msr_feature_names(void);

/* A VM's effective CPU from qom-get replies on its first vCPU: feature-words,
 * filtered-features, vendor, and @msrs (may be NULL): a json object mapping MSR feature name ->
 * qom-get reply (boolean) for those it could read.  @ret receives the CPUID bits QEMU gives the
 * guest (vendor set, no model, signature -1), @ret_filtered what its -cpu asked for but the
 * accelerator could not give. */
bool cpu_vm_from_qom(json_object *feature_words, json_object *filtered_features,
                     json_object *vendor, json_object *msrs, cpu_def *ret,
                     cpu_featset *ret_filtered, vmig_error **errp);

/* What a query-cpu-model-expansion reply (type full) describes: features and vendor (no model,
 * signature -1). */
bool cpu_def_from_expansion(json_object *reply, cpu_def *ret, vmig_error **errp);

/* @defs: a query-cpu-definitions reply.  The models to expand statically: every model that is
 * not an alias, except host, max and base.  NULL-terminated, owned (g_strfreev), or NULL. */
char **cpu_definitions_models(json_object *defs, vmig_error **errp);

/* Adds model @name to @db from @expansion, its query-cpu-model-expansion reply (type static):
 * its features, vendor, family, model and stepping.  False (and @db unchanged) on a bad reply. */
bool cpu_models_add_expansion(cpu_models *db, const char *name, json_object *expansion,
                              vmig_error **errp);

/* Adds the aliases @defs (a query-cpu-definitions reply) names, such as IvyBridge-IBRS for
 * IvyBridge-v2, to the models of @db they stand for.  Call after adding the models. */
bool cpu_models_add_aliases(cpu_models *db, json_object *defs, vmig_error **errp);

/* ---- the migration gate (engine/migrate-prepare.c): pure, so recorded replies test it ---- */

/* What a destination offers a guest, by its accelerator (@kvm, from its query-kvm):
 *   KVM  its host model: @host_text (its host-cpu.xml, @host_len bytes, named @host_origin in
 *        errors; a host CPU counts as what KVM gives on it, a host model as it is), which
 *        stands for a remote host until its agent reports; else @expansion, QEMU's full
 *        expansion of "host";
 *   TCG  @expansion, the full expansion of "max" under TCG, whatever the host's CPU: TCG
 *        emulates it, with any vendor string (@ret's vendor is left empty).
 * @ret is a guest CPU (no model).  @host_text may be NULL; @expansion may be NULL under KVM
 * when @host_text is given. */
bool cpu_gate_offer(bool kvm, const char *host_text, size_t host_len, const char *host_origin,
                    json_object *expansion, cpu_def *ret, vmig_error **errp);

/* Whether @reply (query-cpu-model-expansion) expanded "host", as asked under KVM. */
bool cpu_expansion_is_host(json_object *reply);

/* Whether the destination offering @offer runs the VM whose effective CPU is @vm
 * (cpu_vm_from_qom): a vendor mismatch or a feature it needs that @offer lacks is
 * CPU_CMP_INCOMPATIBLE, with the features in @ret_missing and a sentence in @ret_why. */
cpu_cmp cpu_gate_check(const cpu_def *vm, const cpu_def *offer, cpu_featset *ret_missing,
                       char **ret_why, vmig_error **errp);

#endif
