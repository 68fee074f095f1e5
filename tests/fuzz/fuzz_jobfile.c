/* libFuzzer: the job state file as another process reads it (engine/jobctl.c).  It is written
 * by the engine of a running migration, so a reader must survive anything in it. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/jobctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_jobfile f;
    vmig_error *err = NULL;
    if (eng_jobfile_parse((const char *)data, size, "job.json", &f, &err)) {
        /* every string is terminated and fits; every kept action too */
        size_t n = strlen(f.job) + strlen(f.state) + strlen(f.vm) + strlen(f.holder) +
                   strlen(f.mode) + strlen(f.policy) + strlen(f.status) + strlen(f.error);
        for (size_t i = 0; i < f.n_actions; i++) {
            n += strlen(f.actions[i].what);
        }
        if (f.n_actions > VMIG_JOBINFO_ACTIONS_MAX || n > sizeof(f) || !*f.state) {
            __builtin_trap();
        }
        (void)eng_jobfile_final(&f);
    } else if (!err) {
        __builtin_trap(); /* a failure always says why */
    }
    vmig_error_free(err);
    return 0;
}
