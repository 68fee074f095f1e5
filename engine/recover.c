/*
 * Recovering a VM from a migration whose vmigrate died (issue 11, item 4).  What can be left,
 * with the guard (vm.c) in place:
 *   - a source that finished sending (postmigrate, paused) while its destination was killed by
 *     the guard: the source still holds the whole VM, so it resumes;
 *   - a source still migrating to nobody: the migration is cancelled (QEMU resumes it);
 *   - a destination in NAME.incoming: if it never loaded the VM (inmigrate), or the source
 *     runs, it is stopped; if it has the VM and the source has finished or is gone (the engine
 *     died between the switchover and the hand-over of the name), it is the VM: the source is
 *     retired and the destination gets the name, as the migration would have done.
 * The caller holds the VM's lock, so no live vmigrate drives either QEMU.  This waits on QMP
 * (a few calls, seconds at most) and runs only when something is left over.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "common/json.h"
#include "engine.h"

#define RECOVER_KILL_MS 5000

static const char *status_of(eng_vm *vm, char *buf, size_t len)
{
    if (!vm->qmp && !eng_vm_connect_sync(vm, NULL)) {
        return NULL;
    }
    return eng_vm_run_state(vm, buf, len, NULL);
}

/* The source's migration status ("none" when it never migrated), or NULL. */
static const char *migration_of(eng_vm *vm, char *buf, size_t len)
{
    g_autoptr(json_object) r = qmp_conn_call(vm->qmp, "query-migrate", NULL, 0, ENG_QMP_TIMEOUT_MS,
                                             NULL);
    const char *status = NULL;
    static const vmig_jfield fields[] = {{"status", VJ_STRING, 0, 0}, {NULL}};
    if (!r || !vmig_json_read(r, fields, &status, "query-migrate", NULL)) {
        return NULL;
    }
    g_strlcpy(buf, status ? status : "none", len);
    return buf;
}

static bool call_void(eng_vm *vm, const char *cmd, vmig_error **errp)
{
    if (!qmp_conn_call_void(vm->qmp, cmd, NULL, ENG_QMP_TIMEOUT_MS, errp)) {
        vmig_prefix_error(errp, "VM '%s': %s: ", vm->name, cmd);
        return false;
    }
    return true;
}

/* Whether the job file of the source says the VM ran before its migration (true when unknown:
 * a VM is migrated running far more often, and a paused one was paused by a person). */
static bool was_running(const char *src_dir)
{
    g_autofree char *path = g_build_filename(src_dir, ENG_JOB_FILE, NULL);
    g_autofree char *text = NULL;
    if (!g_file_get_contents(path, &text, NULL, NULL)) {
        return true;
    }
    g_autoptr(json_object) o = json_tokener_parse(text);
    json_object *v = NULL;
    if (o && json_object_is_type(o, json_type_object) &&
        json_object_object_get_ex(o, "was_running", &v) &&
        json_object_is_type(v, json_type_boolean)) {
        return json_object_get_boolean(v);
    }
    return true;
}

static void note(GString *what, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void note(GString *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (what->len) {
        g_string_append(what, "; ");
    }
    g_string_append_vprintf(what, fmt, ap);
    va_end(ap);
}

/* The destination holds the VM: retire the source, give the destination the name. */
static bool hand_over(eng_vm *src, eng_vm *dst, const char *src_dir, const char *final_dir,
                      GString *what, vmig_error **errp)
{
    if (src && !eng_vm_retire_sync(src, RECOVER_KILL_MS, errp)) {
        return false;
    }
    if (g_file_test(src_dir, G_FILE_TEST_IS_DIR)) {
        eng_vm_remove_dir(src_dir);
    }
    if (g_file_test(final_dir, G_FILE_TEST_EXISTS)) {
        eng_vm_remove_dir(final_dir); /* the source's, in the same state directory */
    }
    if (rename(dst->dir, final_dir) < 0) {
        vmig_set_error_errno(errp, errno, "renaming %s to %s", dst->dir, final_dir);
        return false;
    }
    note(what,
         "the destination (pid %d) had taken over; it keeps the VM and the source is "
         "retired",
         dst->pid);
    return true;
}

/* A post-copy that broke: each side holds part of the VM, and only a resume mends it, so
 * recovery refuses to touch either. */
static bool postcopy_src_check(eng_vm *src, vmig_error **errp)
{
    char mst[32];
    if (migration_of(src, mst, sizeof(mst)) && g_str_has_prefix(mst, "postcopy")) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' is in a post-copy migration (%s): its source and its destination "
                       "each hold part of it, so neither is stopped; 'vmigrate migrate --live "
                       "--postcopy-resume %s DEST' finishes it",
                       src->name, mst, src->name);
        return false;
    }
    return true;
}

static bool postcopy_dst_check(eng_vm *dst, char *dstat, size_t len, vmig_error **errp)
{
    char mst[32];
    if (status_of(dst, dstat, len) && migration_of(dst, mst, sizeof(mst)) &&
        g_str_has_prefix(mst, "postcopy")) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' is in a post-copy migration (the destination's is %s): the "
                       "destination runs it without all its memory, so neither QEMU is stopped; "
                       "'vmigrate migrate --live --postcopy-resume %s DEST' finishes it",
                       dst->name, mst, dst->name);
        return false;
    }
    return true;
}

bool eng_vm_recover_locked(vmig_engine *e, const char *src_dir, const char *final_dir,
                           char **ret_what, vmig_error **errp)
{
    g_autofree char *stage = g_strconcat(final_dir, ENG_INCOMING_SUFFIX, NULL);
    g_autoptr(GString) what = g_string_new(NULL);
    g_autoptr(eng_vm) src = NULL;
    g_autoptr(eng_vm) dst = NULL;
    char sst[32] = "", dstat[32] = "", mst[32] = "";
    if (g_file_test(src_dir, G_FILE_TEST_IS_DIR)) {
        src = eng_vm_find(e, src_dir, NULL);
    }
    if (src && !status_of(src, sst, sizeof(sst))) {
        vmig_set_error(errp, VMIG_E_QEMU,
                       "VM '%s': its QEMU (pid %d) does not answer on its "
                       "monitor",
                       src->name, src->pid);
        return false;
    }
    if (src && !postcopy_src_check(src, errp)) {
        return false;
    }
    if (g_file_test(stage, G_FILE_TEST_IS_DIR)) {
        dst = eng_vm_find(e, stage, NULL);
        if (dst && !postcopy_dst_check(dst, dstat, sizeof(dstat), errp)) {
            return false;
        }
        if (dst && !status_of(dst, dstat, sizeof(dstat))) {
            g_strlcpy(dstat, "unknown", sizeof(dstat));
        }
        bool loaded = dst && strcmp(dstat, "inmigrate") != 0 && strcmp(dstat, "prelaunch") != 0 &&
                      strcmp(dstat, "unknown") != 0;
        bool source_done = !src || strcmp(sst, "postmigrate") == 0;
        if (loaded && source_done) {
            bool resume = strcmp(dstat, "paused") == 0 && src && was_running(src_dir);
            if (!hand_over(src, dst, src_dir, final_dir, what, errp)) {
                return false;
            }
            g_free(dst->dir);
            dst->dir = g_strdup(final_dir);
            if (resume && !call_void(dst, "cont", errp)) {
                return false;
            }
            g_clear_pointer(&src, eng_vm_free);
            *ret_what = g_string_free(g_steal_pointer(&what), FALSE);
            return true;
        }
        if (dst) {
            if (!eng_vm_kill_sync(dst, RECOVER_KILL_MS, errp)) {
                return false;
            }
            note(what, "stopped a destination QEMU (pid %d, %s) left in %s", dst->pid, dstat,
                 stage);
        }
        eng_vm_remove_dir(stage);
        if (!dst) {
            note(what, "removed %s, left by a migration that stopped", stage);
        }
    }
    if (src && migration_of(src, mst, sizeof(mst))) {
        if (strcmp(mst, "active") == 0 || strcmp(mst, "setup") == 0 ||
            strcmp(mst, "pre-switchover") == 0 || strcmp(mst, "device") == 0) {
            if (!call_void(src, "migrate_cancel", errp)) {
                return false;
            }
            note(what, "cancelled a migration (%s) that no vmigrate drove", mst);
        }
    }
    if (src && strcmp(sst, "postmigrate") == 0) {
        if (was_running(src_dir)) {
            if (!call_void(src, "cont", errp)) {
                return false;
            }
            note(what, "resumed the source, which had sent everything to a destination that "
                       "is gone");
        } else {
            note(what, "the source stays paused, as it was before its migration");
        }
    }
    *ret_what = g_string_free(g_steal_pointer(&what), FALSE);
    return true;
}

bool vmig_vm_recover(vmig_engine *e, const char *name, char **ret_what, vmig_error **errp)
{
    if (!eng_spec_name_valid(name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return false;
    }
    char *lock_path = NULL;
    int lock = eng_lock_vm(e->state_dir, name, &lock_path, errp);
    if (lock < 0) {
        return false;
    }
    eng_clean_stale_probes(e);
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    g_autofree char *stage = g_strconcat(dir, ENG_INCOMING_SUFFIX, NULL);
    if (!g_file_test(dir, G_FILE_TEST_EXISTS) && !g_file_test(stage, G_FILE_TEST_EXISTS)) {
        eng_unlock_vm(lock, lock_path);
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' in %s", name, e->state_dir);
        return false;
    }
    g_autofree char *what = NULL;
    bool ok = eng_vm_recover_locked(e, dir, dir, &what, errp);
    eng_unlock_vm(lock, lock_path);
    if (ok && ret_what) {
        *ret_what = g_steal_pointer(&what);
    }
    return ok;
}
