/*
 * VM definitions: a VM's spec kept while the VM is shut off, as libvirt keeps a persistent
 * domain's XML.  Each is STATE_DIR/.defined/NAME.json (a VM name never starts with '.', so the
 * directory cannot clash with an instance directory), written atomically, and holds the VM's
 * UUID: every start of a defined VM, and every destination it migrates to, reuses it.
 *
 * A definition is independent of a running instance of the same name: `vm stop` leaves it,
 * `vm undefine` of a running VM leaves the VM running (transient from then on), and a running
 * VM may be (re)defined, which is how a migration with --persistent keeps it on the
 * destination.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"

#define DEF_SUFFIX ".json"

char *eng_def_path(const char *state_dir, const char *name)
{
    g_autofree char *file = g_strconcat(name, DEF_SUFFIX, NULL);
    return g_build_filename(state_dir, ENG_DEF_DIR, file, NULL);
}

bool eng_def_exists(const char *state_dir, const char *name)
{
    g_autofree char *path = eng_def_path(state_dir, name);
    struct stat st;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool check_name(const char *name, vmig_error **errp)
{
    if (!eng_spec_name_valid(name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return false;
    }
    return true;
}

vmig_spec *eng_def_load(const char *state_dir, const char *name, vmig_error **errp)
{
    if (!check_name(name, errp)) {
        return NULL;
    }
    g_autofree char *path = eng_def_path(state_dir, name);
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT) {
            vmig_set_error(errp, VMIG_E_NOTFOUND, "VM '%s' is not defined in %s", name, state_dir);
        } else {
            vmig_set_error_errno(errp, errno, "%s", path);
        }
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a regular file", path);
        return NULL;
    }
    g_autoptr(vmig_spec) spec = vmig_spec_load(path, errp); /* its errors name the file */
    if (!spec) {
        return NULL;
    }
    if (strcmp(spec->name, name) != 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: defines VM '%s', not '%s'", path, spec->name, name);
        return NULL;
    }
    return g_steal_pointer(&spec);
}

/* STATE_DIR/.defined, created 0700 when missing; never through a link. */
static char *def_dir(const char *state_dir, vmig_error **errp)
{
    g_autofree char *dir = g_build_filename(state_dir, ENG_DEF_DIR, NULL);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        vmig_set_error_errno(errp, errno, "creating %s", dir);
        return NULL;
    }
    struct stat st;
    if (lstat(dir, &st) < 0) {
        vmig_set_error_errno(errp, errno, "%s", dir);
        return NULL;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "%s must be a directory (not a link) of this user that no one else may "
                       "write",
                       dir);
        return NULL;
    }
    return g_steal_pointer(&dir);
}

/* The UUID of the running instance @name in @state_dir, or NULL. */
static char *instance_uuid(const char *state_dir, const char *name)
{
    g_autofree char *path = g_build_filename(state_dir, name, "spec.json", NULL);
    g_autoptr(vmig_spec) s = g_file_test(path, G_FILE_TEST_IS_REGULAR) ? vmig_spec_load(path, NULL)
                                                                       : NULL;
    return s && s->uuid ? g_strdup(s->uuid) : NULL;
}

bool eng_def_write(const char *state_dir, const vmig_spec *spec, vmig_error **errp)
{
    if (!check_name(spec->name, errp)) {
        return false;
    }
    g_autofree char *dir = def_dir(state_dir, errp);
    if (!dir) {
        return false;
    }
    g_autoptr(vmig_spec) s = eng_spec_copy(spec);
    g_autoptr(vmig_spec) old = NULL;
    if (eng_def_exists(state_dir, s->name)) {
        vmig_error *err = NULL;
        old = eng_def_load(state_dir, s->name, &err);
        if (!old) { /* a broken file is replaced, and said so */
            g_autofree char *path = eng_def_path(state_dir, s->name);
            vmig_set_error(errp, VMIG_E_INVAL,
                           "VM '%s' has a definition that cannot be read (%s): fix it, or "
                           "undefine the VM first",
                           s->name, vmig_error_message(err));
            vmig_error_free(err);
            return false;
        }
    }
    if (old && old->uuid && s->uuid && g_ascii_strcasecmp(old->uuid, s->uuid) != 0) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' is defined with UUID %s, not %s: undefine it first to give it "
                       "another",
                       s->name, old->uuid, s->uuid);
        return false;
    }
    if (!s->uuid) { /* the one it had, the one it runs with, else a new one */
        s->uuid = old && old->uuid ? g_strdup(old->uuid) : instance_uuid(state_dir, s->name);
        if (!s->uuid) {
            s->uuid = g_uuid_string_random();
        }
    }
    g_autofree char *json = vmig_spec_to_json(s);
    g_autofree char *path = eng_def_path(state_dir, s->name);
    if (!eng_write_file(path, json, errp)) {
        vmig_prefix_error(errp, "defining VM '%s': ", s->name);
        return false;
    }
    return true;
}

bool eng_def_write_running(const char *state_dir, const char *name, vmig_error **errp)
{
    if (!check_name(name, errp)) {
        return false;
    }
    g_autofree char *path = g_build_filename(state_dir, name, "spec.json", NULL);
    if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "no VM named '%s' runs in %s", name, state_dir);
        return false;
    }
    g_autoptr(vmig_spec) spec = vmig_spec_load(path, errp);
    return spec && eng_def_write(state_dir, spec, errp);
}

bool eng_def_remove(const char *state_dir, const char *name, vmig_error **errp)
{
    if (!check_name(name, errp)) {
        return false;
    }
    g_autofree char *path = eng_def_path(state_dir, name);
    if (unlink(path) < 0) {
        if (errno == ENOENT) {
            vmig_set_error(errp, VMIG_E_NOTFOUND, "VM '%s' is not defined in %s", name, state_dir);
        } else {
            vmig_set_error_errno(errp, errno, "undefining VM '%s': %s", name, path);
        }
        return false;
    }
    return true;
}

bool eng_def_check_free(const char *state_dir, const char *name, vmig_error **errp)
{
    if (eng_def_exists(state_dir, name)) {
        g_autofree char *path = eng_def_path(state_dir, name);
        vmig_set_error(errp, VMIG_E_STATE, "%s already defines a VM named '%s' (%s)", state_dir,
                       name, path);
        return false;
    }
    g_autofree char *dir = eng_vm_dir(state_dir, name);
    g_autofree char *stage = g_strconcat(dir, ENG_INCOMING_SUFFIX, NULL);
    const char *found = g_file_test(dir, G_FILE_TEST_EXISTS)     ? dir
                        : g_file_test(stage, G_FILE_TEST_EXISTS) ? stage
                                                                 : NULL;
    if (found) {
        vmig_set_error(errp, VMIG_E_STATE, "%s already has a VM named '%s' (%s)", state_dir, name,
                       found);
        return false;
    }
    return true;
}

GPtrArray *eng_def_names(const char *state_dir)
{
    GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *dir = g_build_filename(state_dir, ENG_DEF_DIR, NULL);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *f;
    while (d && (f = g_dir_read_name(d))) {
        if (!g_str_has_suffix(f, DEF_SUFFIX)) {
            continue; /* eng_write_file's temporary files, and anything else */
        }
        g_autofree char *name = g_strndup(f, strlen(f) - strlen(DEF_SUFFIX));
        if (eng_spec_name_valid(name)) {
            g_ptr_array_add(names, g_steal_pointer(&name));
        }
    }
    return names;
}

/* ---- public ---------------------------------------------------------------------------------- */

/* Runs under the VM's lock: no start, stop or migration of it runs meanwhile. */
static bool with_lock(vmig_engine *e, const char *name,
                      bool (*fn)(vmig_engine *, const void *, vmig_error **), const void *arg,
                      vmig_error **errp)
{
    if (!check_name(name, errp)) {
        return false;
    }
    g_autofree char *lock_path = NULL;
    int fd = eng_lock_vm(e->state_dir, name, &lock_path, errp);
    if (fd < 0) {
        return false;
    }
    bool ok = fn(e, arg, errp);
    eng_unlock_vm(fd, g_steal_pointer(&lock_path));
    return ok;
}

static bool define_locked(vmig_engine *e, const void *arg, vmig_error **errp)
{
    return eng_def_write(e->state_dir, arg, errp);
}

static bool undefine_locked(vmig_engine *e, const void *arg, vmig_error **errp)
{
    return eng_def_remove(e->state_dir, arg, errp);
}

bool vmig_vm_define(vmig_engine *e, const vmig_spec *spec, vmig_error **errp)
{
    return with_lock(e, spec->name, define_locked, spec, errp);
}

bool vmig_vm_undefine(vmig_engine *e, const char *name, vmig_error **errp)
{
    return with_lock(e, name, undefine_locked, name, errp);
}

vmig_spec *vmig_vm_definition(vmig_engine *e, const char *name, vmig_error **errp)
{
    return eng_def_load(e->state_dir, name, errp);
}
