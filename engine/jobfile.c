/*
 * The job state file a migration keeps in its VM's directory (job.json), as another process
 * reads it (jobctl.c, for vmigrate jobinfo and the other control commands).  The engine that
 * wrote it is another process: every value is type-checked, and one that is absent, of the
 * wrong type or out of range counts as unknown.  The parser is fuzzed (tests/fuzz/fuzz_jobfile.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "jobctl.h"

#define JOBFILE_JSON_DEPTH 16

void eng_text_copy(char *dst, size_t size, const char *src)
{
    g_strlcpy(dst, src, size);
    const char *end = NULL;
    if (!g_utf8_validate(dst, -1, &end)) {
        dst[end - dst] = '\0';
    }
    for (char *p = dst; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
}

json_object *eng_json_member(json_object *o, const char *key, json_type type)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, type) ? v : NULL;
}

static void read_str(json_object *o, const char *key, char *dst, size_t size)
{
    json_object *v = eng_json_member(o, key, json_type_string);
    if (v) {
        eng_text_copy(dst, size, json_object_get_string(v));
    }
}

/* A non-negative integer, else -1. */
static int64_t read_count(json_object *o, const char *key)
{
    json_object *v = eng_json_member(o, key, json_type_int);
    int64_t n = v ? json_object_get_int64(v) : -1;
    return n >= 0 ? n : -1;
}

/* A finite non-negative number, else -1. */
static double read_number(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) ||
        (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))) {
        return -1;
    }
    double d = json_object_get_double(v);
    return isfinite(d) && d >= 0 ? d : -1;
}

int eng_json_bool(json_object *o, const char *key)
{
    json_object *v = eng_json_member(o, key, json_type_boolean);
    return v ? json_object_get_boolean(v) != 0 : -1;
}

static void read_stats(json_object *st, eng_jobfile *f)
{
    read_str(st, "status", f->status, sizeof(f->status));
    f->total_ms = read_count(st, "total_ms");
    f->transferred_bytes = read_count(st, "transferred_bytes");
    f->remaining_bytes = read_count(st, "remaining_bytes");
    f->total_bytes = read_count(st, "total_bytes");
    f->dirty_pages_rate = read_count(st, "dirty_pages_rate");
    f->passes = read_count(st, "passes");
    f->mbps = read_number(st, "mbps");
    f->downtime_ms = read_count(st, "downtime_ms");
    f->downtime_limit_ms = read_count(st, "downtime_limit_ms");
    f->throttle_pct = read_count(st, "throttle_pct");
    f->postcopy_requests = read_count(st, "postcopy_requests");
    f->dirty_rate_mib_s = read_number(st, "dirty_rate_mib_s");
}

/* The last VMIG_JOBINFO_ACTIONS_MAX well-formed actions, oldest first. */
static void read_actions(json_object *arr, eng_jobfile *f)
{
    size_t n = json_object_array_length(arr), kept = 0;
    vmig_policy_action tmp[VMIG_JOBINFO_ACTIONS_MAX];
    for (size_t i = n; i-- > 0 && kept < VMIG_JOBINFO_ACTIONS_MAX;) {
        json_object *a = json_object_array_get_idx(arr, i);
        int64_t at = json_object_is_type(a, json_type_object) ? read_count(a, "at_ms") : -1;
        json_object *what = at >= 0 ? eng_json_member(a, "what", json_type_string) : NULL;
        if (what) {
            tmp[kept].at_ms = (uint64_t)at;
            eng_text_copy(tmp[kept].what, sizeof(tmp[kept].what), json_object_get_string(what));
            kept++;
        }
    }
    for (size_t i = 0; i < kept; i++) {
        f->actions[i] = tmp[kept - 1 - i];
    }
    f->n_actions = kept;
}

static void jobfile_clear(eng_jobfile *f)
{
    memset(f, 0, sizeof(*f));
    f->engine_pid = -1;
    f->was_running = f->postcopy_armed = -1;
    f->progress = f->mbps = f->dirty_rate_mib_s = -1;
    f->total_ms = f->transferred_bytes = f->remaining_bytes = f->total_bytes = -1;
    f->dirty_pages_rate = f->passes = f->downtime_ms = f->downtime_limit_ms = -1;
    f->throttle_pct = f->postcopy_requests = -1;
}

static json_object *parse_object(const char *text, size_t len, const char *origin,
                                 vmig_error **errp)
{
    if (len == 0 || len > ENG_JOBFILE_MAX || len > INT_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: %s", origin, len ? "too large" : "empty");
        return NULL;
    }
    json_tokener *tok = json_tokener_new_ex(JOBFILE_JSON_DEPTH);
    json_object *o = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    while (o && end < len && g_ascii_isspace(text[end])) {
        end++;
    }
    if (!o || jerr != json_tokener_success || end != len) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not JSON: %s", origin,
                       jerr != json_tokener_success ? json_tokener_error_desc(jerr)
                       : o                          ? "text after the object"
                                                    : "incomplete");
        json_object_put(o);
        return NULL;
    }
    if (!json_object_is_type(o, json_type_object)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a JSON object", origin);
        json_object_put(o);
        return NULL;
    }
    return o;
}

bool eng_jobfile_parse(const char *text, size_t len, const char *origin, eng_jobfile *ret,
                       vmig_error **errp)
{
    g_autoptr(json_object) o = parse_object(text, len, origin, errp);
    if (!o) {
        return false;
    }
    json_object *job = eng_json_member(o, "job", json_type_string);
    json_object *state = eng_json_member(o, "state", json_type_string);
    if (!job || !state || !json_object_get_string_len(state)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a job file: no job or no state", origin);
        return false;
    }
    eng_jobfile f;
    jobfile_clear(&f);
    eng_text_copy(f.job, sizeof(f.job), json_object_get_string(job));
    eng_text_copy(f.state, sizeof(f.state), json_object_get_string(state));
    if (!*f.state || !*f.job) { /* nothing left once cleaned (not UTF-8) */
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a job file: its job or state is not text",
                       origin);
        return false;
    }
    read_str(o, "vm", f.vm, sizeof(f.vm));
    read_str(o, "holder", f.holder, sizeof(f.holder));
    read_str(o, "mode", f.mode, sizeof(f.mode));
    read_str(o, "policy", f.policy, sizeof(f.policy));
    read_str(o, "error", f.error, sizeof(f.error));
    int64_t pid = read_count(o, "engine_pid");
    f.engine_pid = pid > 0 && pid <= INT_MAX ? (int)pid : -1;
    f.was_running = eng_json_bool(o, "was_running");
    f.postcopy_armed = eng_json_bool(o, "postcopy_armed");
    double progress = read_number(o, "progress");
    f.progress = progress > 1 ? 1 : progress;
    json_object *st = eng_json_member(o, "stats", json_type_object);
    if (st) {
        read_stats(st, &f);
    }
    json_object *actions = eng_json_member(o, "actions", json_type_array);
    if (actions) {
        read_actions(actions, &f);
    }
    *ret = f;
    return true;
}

bool eng_jobfile_read(const char *vm_dir, eng_jobfile *ret, vmig_error **errp)
{
    g_autofree char *path = g_build_filename(vm_dir, ENG_JOB_FILE, NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "%s", path);
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a regular file", path);
        close(fd);
        return false;
    }
    g_autofree char *buf = g_malloc(ENG_JOBFILE_MAX + 1);
    size_t len = 0;
    ssize_t n;
    while (len <= ENG_JOBFILE_MAX && (n = read(fd, buf + len, ENG_JOBFILE_MAX + 1 - len)) != 0) {
        if (n < 0 && errno != EINTR) {
            vmig_set_error_errno(errp, errno, "%s", path);
            close(fd);
            return false;
        }
        len += n > 0 ? (size_t)n : 0;
    }
    close(fd);
    return eng_jobfile_parse(buf, len, path, ret, errp);
}

static bool state_final(const char *s)
{
    return !strcmp(s, "completed") || !strcmp(s, "failed") || !strcmp(s, "cancelled");
}

bool eng_jobfile_final(const eng_jobfile *f)
{
    return state_final(f->state);
}
