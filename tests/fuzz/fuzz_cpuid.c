/* libFuzzer: every CPUID and CPU reader (libvirt XML and cpudata, InstLatx64/AIDA64, libcpuid,
 * JSON), then decode and format what they accept. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "vmigrate.h"

static vmig_cpu_models *models;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!models) {
        models = vmig_cpu_models_builtin();
    }
    vmig_cpu_list *l = vmig_cpu_list_new();
    if (vmig_cpu_list_add_text(l, (const char *)data, size, "fuzz", NULL) &&
        vmig_cpu_list_count(l) > 0) {
        const vmig_cpu *cpu = vmig_cpu_list_get(l, 0);
        vmig_cpu *d = vmig_cpu_decode(models, cpu, size & 1 ? VMIG_CPU_GUEST : 0, NULL);
        if (d) {
            free(vmig_cpu_format(d, VMIG_CPU_FMT_QEMU, 0));
            free(vmig_cpu_format(d, VMIG_CPU_FMT_LIBVIRT, 0)); /* host or guest, by size */
            vmig_cpu_free(d);
        }
        free(vmig_cpu_format(cpu, VMIG_CPU_FMT_JSON, VMIG_CPU_ALL_FEATURES));
    }
    vmig_cpu_list_free(l);
    return 0;
}
