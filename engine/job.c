/*
 * Jobs: a migration, a VM starting, a VM stopping.  Each is a chain of steps on the engine's
 * ring (engine.h says how a step forks work and joins it).  The rules that keep this simple:
 *   - a step's callbacks only store what they learn; the next step decides;
 *   - a failure only records its error: the fail step runs once nothing is in flight, so no
 *     reply ever arrives into a job that has moved on;
 *   - every timer of a job is detached when the job ends, so a finished job has nothing on the
 *     ring and the caller may free it at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

static const char *const state_names[VMIG_JOB_STATE_COUNT] = {
    [VMIG_JOB_PREPARING] = "preparing",
    [VMIG_JOB_MIGRATING] = "migrating",
    [VMIG_JOB_SWITCHOVER] = "switchover",
    [VMIG_JOB_FINISHING] = "finishing",
    [VMIG_JOB_ROLLING_BACK] = "rolling-back",
    [VMIG_JOB_COMPLETED] = "completed",
    [VMIG_JOB_FAILED] = "failed",
    [VMIG_JOB_CANCELLED] = "cancelled",
};

const char *vmig_job_state_name(vmig_job_state s)
{
    return (unsigned)s < VMIG_JOB_STATE_COUNT ? state_names[s] : "?";
}

static bool is_final(vmig_job_state s)
{
    return s == VMIG_JOB_COMPLETED || s == VMIG_JOB_FAILED || s == VMIG_JOB_CANCELLED;
}

vmig_job *eng_job_new(vmig_engine *e, vmig_job_kind kind, const eng_job_ops *ops, void *data,
                      vmig_job_done_fn done, void *opaque)
{
    vmig_job *j = g_new0(vmig_job, 1);
    j->e = e;
    j->kind = kind;
    j->ops = ops;
    j->data = data;
    j->done = done;
    j->done_opaque = opaque;
    j->state = VMIG_JOB_PREPARING;
    j->locks[0] = j->locks[1] = -1;
    g_ptr_array_add(e->jobs, j);
    return j;
}

/* The lock file is removed when its holder lets go; a waiter that locked the removed file
 * finds the path gone or new and tries again. */
static int lock_path(const char *path, vmig_error **errp)
{
    for (int tries = 0; tries < 8; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) {
            vmig_set_error_errno(errp, errno, "%s", path);
            return -1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int err = errno;
            close(fd);
            if (err == EWOULDBLOCK) {
                return -2;
            }
            vmig_set_error_errno(errp, err, "locking %s", path);
            return -1;
        }
        struct stat held, now;
        if (fstat(fd, &held) == 0 && stat(path, &now) == 0 && held.st_ino == now.st_ino &&
            held.st_dev == now.st_dev) {
            return fd;
        }
        close(fd); /* removed or replaced meanwhile */
    }
    vmig_set_error(errp, VMIG_E_STATE, "%s keeps changing", path);
    return -1;
}

int eng_lock_vm(const char *state_dir, const char *name, char **ret_path, vmig_error **errp)
{
    g_autofree char *file = g_strdup_printf(".%s.lock", name);
    g_autofree char *path = g_build_filename(state_dir, file, NULL);
    int fd = lock_path(path, errp);
    if (fd == -2) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' is busy: another vmigrate is starting, "
                       "stopping or migrating it (%s)",
                       name, path);
        return -1;
    }
    if (fd >= 0) {
        *ret_path = g_steal_pointer(&path);
    }
    return fd;
}

void eng_unlock_vm(int fd, char *path)
{
    /* Remove the file while still holding it: a waiter that got the old file notices. */
    unlink(path);
    close(fd);
    g_free(path);
}

bool eng_job_lock(vmig_job *j, const char *state_dir, const char *name, vmig_error **errp)
{
    int slot = j->locks[0] < 0 ? 0 : 1;
    if (j->locks[slot] >= 0) {
        vmig_set_error(errp, VMIG_E_STATE, "bug: a job holds two locks already");
        return false;
    }
    int fd = eng_lock_vm(state_dir, name, &j->lock_paths[slot], errp);
    if (fd < 0) {
        return false;
    }
    j->locks[slot] = fd;
    return true;
}

static void unlock_all(vmig_job *j)
{
    for (int i = 0; i < 2; i++) {
        if (j->locks[i] < 0) {
            continue;
        }
        eng_unlock_vm(j->locks[i], g_steal_pointer(&j->lock_paths[i]));
        j->locks[i] = -1;
    }
}

/* Frees what the job holds on the engine (QEMU connections, its kind's data). */
static void job_strip(vmig_job *j)
{
    if (j->data && j->ops->free) {
        j->ops->free(j);
    }
    j->data = NULL;
}

static void job_release(vmig_job *j)
{
    if (j->e) {
        g_ptr_array_remove_fast(j->e->jobs, j);
    }
    unlock_all(j);
    job_strip(j);
    vmig_error_free(j->err);
    g_free(j->wait_what);
    g_free(j->state_file);
    g_free(j);
}

bool eng_job_set_state(vmig_job *j, vmig_job_state from, vmig_job_state to)
{
    if (j->state != from) {
        eng_log(j->e, VMIG_LOG_ERROR, "bug: %s job moving %s -> %s while %s", j->ops->name,
                vmig_job_state_name(from), vmig_job_state_name(to), vmig_job_state_name(j->state));
        return false;
    }
    j->state = to;
    eng_log(j->e, VMIG_LOG_DEBUG, "%s job: %s -> %s", j->ops->name, vmig_job_state_name(from),
            vmig_job_state_name(to));
    return true;
}

static void detach_timer(vmig_job *j, int64_t *op)
{
    if (*op) {
        ring_detach(j->e->ring, *op, NULL, NULL);
        *op = 0;
    }
}

/* Runs what comes next once nothing is in flight: the fail step, or the joined step.  Steps
 * run from this loop only, one at a time: a step that fails at once and then names its next
 * step (eng_job_then) has that step dropped for the fail step when it returns, instead of
 * running it on half-made state; and a done callback that frees the job inside a step frees it
 * when the loop is done with it. */
static void advance(vmig_job *j)
{
    if (j->advancing) {
        return; /* the loop below looks again when the running step returns */
    }
    j->advancing = true;
    while (!j->ended && j->pending == 0 && !j->wait_pred) {
        if (j->err && !j->failing) {
            j->failing = true;
            j->next = NULL;
            j->ops->fail(j);
            continue;
        }
        eng_step_fn next = j->next;
        if (!next) {
            break;
        }
        j->next = NULL;
        next(j);
    }
    j->advancing = false;
    if (j->release_pending) {
        job_release(j);
    }
}

void eng_job_then(vmig_job *j, eng_step_fn next)
{
    j->next = next;
    advance(j);
}

void eng_job_hold(vmig_job *j)
{
    j->pending++;
}

void eng_job_release(vmig_job *j)
{
    j->pending--;
    advance(j);
}

void eng_job_fail(vmig_job *j, vmig_error *err)
{
    if (j->failing && j->err) {
        /* an error while rolling back: the cause stays the first one */
        eng_log(j->e, VMIG_LOG_WARN, "%s job, rolling back: %s", j->ops->name,
                vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    vmig_propagate_error(&j->err, err);
    if (j->wait_pred && !j->failing) {
        j->wait_pred = NULL;
        detach_timer(j, &j->wait_timer);
    }
    advance(j);
}

typedef struct job_call {
    vmig_job *j;
    eng_reply_fn fn;
    eng_reply_opt_fn opt;
} job_call;

static void call_done(void *opaque, json_object *ret, const vmig_error *err)
{
    job_call *c = opaque;
    vmig_job *j = c->j;
    if (c->opt) {
        c->opt(j, ret, err);
    } else if (err) {
        eng_job_fail(j, vmig_error_copy(err));
    } else if (c->fn) {
        vmig_error *ferr = NULL;
        if (!c->fn(j, ret, &ferr)) {
            eng_job_fail(j, ferr);
        }
    }
    g_free(c);
    eng_job_release(j);
}

static void call(vmig_job *j, qmp_conn *c, const char *cmd, json_object *args, eng_reply_fn fn,
                 eng_reply_opt_fn opt)
{
    job_call *jc = g_new0(job_call, 1);
    jc->j = j;
    jc->fn = fn;
    jc->opt = opt;
    eng_job_hold(j);
    qmp_call(c, cmd, args, 0, ENG_QMP_TIMEOUT_MS, call_done, jc);
}

void eng_job_call(vmig_job *j, qmp_conn *c, const char *cmd, json_object *args, eng_reply_fn fn)
{
    call(j, c, cmd, args, fn, NULL);
}

void eng_job_call_opt(vmig_job *j, qmp_conn *c, const char *cmd, json_object *args,
                      eng_reply_opt_fn fn)
{
    call(j, c, cmd, args, NULL, fn);
}

static void wait_expired(void *opaque, int res)
{
    vmig_job *j = opaque;
    j->wait_timer = 0;
    if (res == -ECANCELED || !j->wait_pred) {
        return;
    }
    j->wait_pred = NULL;
    if (j->failing) { /* rolling back: a wait that times out only moves on */
        eng_log(j->e, VMIG_LOG_WARN, "rolling back: %s within %d ms", j->wait_what, j->wait_ms);
        eng_job_then(j, j->wait_next);
        return;
    }
    vmig_error *err = NULL;
    vmig_set_error(&err, VMIG_E_TIMEOUT, "%s within %d ms", j->wait_what, j->wait_ms);
    eng_job_fail(j, err);
}

void eng_job_wait(vmig_job *j, eng_pred_fn pred, int timeout_ms, const char *what, eng_step_fn next)
{
    j->wait_pred = pred;
    j->wait_next = next;
    g_free(j->wait_what);
    j->wait_what = g_strdup(what);
    j->wait_ms = timeout_ms;
    detach_timer(j, &j->wait_timer);
    if (timeout_ms > 0) {
        int64_t op = ring_timer(j->e->ring, timeout_ms, wait_expired, j);
        j->wait_timer = op > 0 ? op : 0;
    }
    eng_job_kick(j);
}

void eng_job_kick(vmig_job *j)
{
    if (!j->wait_pred || j->ended || !j->wait_pred(j)) {
        return;
    }
    j->wait_pred = NULL;
    detach_timer(j, &j->wait_timer);
    eng_job_then(j, j->wait_next);
}

static void tick_fired(void *opaque, int res)
{
    vmig_job *j = opaque;
    j->tick_timer = 0;
    if (res == -ECANCELED || !j->tick) {
        return;
    }
    int64_t op = ring_timer(j->e->ring, j->tick_ms, tick_fired, j);
    j->tick_timer = op > 0 ? op : 0;
    j->tick(j);
}

void eng_job_start_tick(vmig_job *j, int ms, eng_step_fn tick)
{
    eng_job_stop_tick(j);
    j->tick = tick;
    j->tick_ms = ms;
    int64_t op = ring_timer(j->e->ring, ms, tick_fired, j);
    j->tick_timer = op > 0 ? op : 0;
}

void eng_job_stop_tick(vmig_job *j)
{
    j->tick = NULL;
    detach_timer(j, &j->tick_timer);
}

void eng_job_end(vmig_job *j, vmig_job_state final)
{
    if (j->ended) {
        return;
    }
    eng_job_stop_tick(j);
    detach_timer(j, &j->wait_timer);
    j->wait_pred = NULL;
    eng_job_set_state(j, j->state, final);
    j->ended = true;
    unlock_all(j);
    if (j->orphan) {
        if (j->advancing) {
            j->release_pending = true;
        } else {
            job_release(j);
        }
        return;
    }
    if (j->done) {
        j->done(j, j->done_opaque); /* may free the job */
    }
}

void eng_job_write_state(vmig_job *j, json_object *obj)
{
    if (!j->state_file) {
        return;
    }
    vmig_error *err = NULL;
    if (!eng_write_file(j->state_file, json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN),
                        &err)) {
        if (!j->state_write_failed) { /* once, not every 250 ms while the disk is full */
            eng_log(j->e, VMIG_LOG_WARN,
                    "job state file (not updated until it can be "
                    "written again): %s",
                    vmig_error_message(err));
        }
        j->state_write_failed = true;
        vmig_error_free(err);
    } else {
        j->state_write_failed = false;
    }
    j->state_written_ms = vmig_now_ms();
}

void eng_jobs_detach(vmig_engine *e)
{
    while (e->jobs->len) {
        vmig_job *j = g_ptr_array_index(e->jobs, e->jobs->len - 1);
        g_ptr_array_remove_index(e->jobs, e->jobs->len - 1);
        j->e = NULL;
        unlock_all(j);
        job_strip(j);
        if (!j->ended) {
            j->ended = true;
            j->state = VMIG_JOB_FAILED;
            vmig_set_error(&j->err, VMIG_E_STATE, "the engine was freed while the job ran");
        }
        if (j->orphan) {
            job_release(j);
        }
        /* else the caller's vmig_job_free() frees the shell */
    }
}

/* ---- public -------------------------------------------------------------------------------- */

vmig_job_kind vmig_job_get_kind(const vmig_job *job)
{
    return job->kind;
}

vmig_job_state vmig_job_get_state(const vmig_job *job)
{
    return job->state;
}

bool vmig_job_finished(const vmig_job *job)
{
    return is_final(job->state);
}

const vmig_error *vmig_job_error(const vmig_job *job)
{
    return is_final(job->state) ? job->err : NULL;
}

void vmig_job_cancel(vmig_job *job)
{
    if (job->ended || job->cancelled) {
        return;
    }
    job->cancelled = true;
    if (job->failing || (job->ops->may_cancel && !job->ops->may_cancel(job))) {
        return; /* past the point of no return, or rolling back already */
    }
    vmig_error *err = NULL;
    vmig_set_error(&err, VMIG_E_CANCELLED, "%s cancelled", job->ops->what);
    eng_job_fail(job, err);
}

void vmig_job_free(vmig_job *job)
{
    if (!job) {
        return;
    }
    if (job->ended) {
        if (job->advancing) {
            job->release_pending = true; /* from its done callback, inside a step */
        } else {
            job_release(job);
        }
        return;
    }
    job->orphan = true;
    job->done = NULL;
    vmig_job_cancel(job);
}
