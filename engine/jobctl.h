/*
 * Control of a running migration from another process (jobctl.c): the job state file a
 * migration keeps in its VM's directory (job.json), read as untrusted input (jobfile.c).  Not
 * installed.
 */
#ifndef VMIG_ENGINE_JOBCTL_H
#define VMIG_ENGINE_JOBCTL_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmigrate.h"

#define ENG_JOBFILE_MAX ((size_t)1 << 20) /* a job file is a few hundred bytes */

/*
 * What a job file says.  Every value is type-checked where it is read; one that is absent, of
 * the wrong type or out of range is unknown: -1 for numbers, "" for strings, -1 for the
 * tri-state bools.  Strings are cut to fit, at a UTF-8 boundary, with control characters
 * replaced by '?' (they end up on terminals).
 */
typedef struct eng_jobfile {
    char job[16];    /* "migrate" (mandatory) */
    char state[16];  /* vmig_job_state_name() (mandatory) */
    char vm[128];    /* the VM's name */
    char holder[16]; /* "source", "destination" */
    char mode[12];   /* "precopy", "postcopy" */
    char policy[8];  /* "auto", "none" */
    char status[24]; /* stats.status: QEMU's migration status as the engine saw it last */
    int engine_pid;  /* > 0, or -1 */
    int was_running; /* 1, 0, -1 */
    int postcopy_armed;
    double progress; /* 0..1, or -1 */
    int64_t total_ms;
    int64_t transferred_bytes;
    int64_t remaining_bytes;
    int64_t total_bytes;
    int64_t dirty_pages_rate;
    int64_t passes;
    double mbps;
    int64_t downtime_ms;
    int64_t downtime_limit_ms;
    int64_t throttle_pct;
    int64_t postcopy_requests;
    double dirty_rate_mib_s;
    char error[256];
    size_t n_actions; /* the last VMIG_JOBINFO_ACTIONS_MAX well-formed ones, in order */
    vmig_policy_action actions[VMIG_JOBINFO_ACTIONS_MAX];
} eng_jobfile;

/* Parses job file text (@len bytes, need not be NUL-terminated).  False with an error naming
 * @origin when it is not JSON, not an object, or lacks the job or its state. */
bool eng_jobfile_parse(const char *text, size_t len, const char *origin, eng_jobfile *ret,
                       vmig_error **errp);
/* Reads @vm_dir's job file: false with VMIG_E_NOTFOUND when there is none. */
bool eng_jobfile_read(const char *vm_dir, eng_jobfile *ret, vmig_error **errp);
/* Whether the job it describes has ended (completed, failed, cancelled). */
bool eng_jobfile_final(const eng_jobfile *f);

/* Copies untrusted text @src into @dst of @size bytes: cut to fit at a UTF-8 boundary (at the
 * first byte that is not UTF-8), control characters replaced by '?'. */
void eng_text_copy(char *dst, size_t size, const char *src);
/* @o's member @key (borrowed) when it has type @type, else NULL. */
json_object *eng_json_member(json_object *o, const char *key, json_type type);
/* @o's member @key: 1 true, 0 false, -1 absent or not a boolean. */
int eng_json_bool(json_object *o, const char *key);

#endif
