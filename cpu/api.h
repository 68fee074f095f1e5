/* The public CPU API's objects (include/vmigrate.h), for the engine's QEMU-probing calls. */
#ifndef VMIG_CPU_API_H
#define VMIG_CPU_API_H

#include "cpu/model.h"

/* A vmig_cpu holding @d, whose model name it takes over (@d is cleared). */
vmig_cpu *cpu_api_cpu_new(cpu_def *d);
/* A vmig_cpu_models holding @db (stolen). */
vmig_cpu_models *cpu_api_models_new(cpu_models *db);

#endif
