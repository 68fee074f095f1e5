/*
 * Persistent VMs and offline migration (issue 9, item 1), on real QEMU: `vm define`, `vm list`
 * showing shut-off VMs, `vm start NAME` of a definition, `vm stop` leaving it; an offline
 * migration of a defined VM to another state directory and to a real `vmigrate agent`, after
 * which the VM starts there and is gone here; and the refusals.  The offline migrations run
 * through the library (eng_offline_start()) and, once `vmigrate migrate` takes --offline,
 * through the CLI too (those tests skip until then).
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json.h"
#include "engine/engine.h"
#include "tests/support/t_util.h"

#define VM "cold"

static char *src, *dst, *spec_file;
static vmig_engine *eng;

typedef t_agent agent;

static void setup(void)
{
    src = t_state_dir_new();
    dst = t_state_dir_new();
    eng = t_engine(src);
    g_autofree char *d = t_state_dir_new(); /* the spec's, apart from both state dirs */
    spec_file = g_build_filename(d, "cold.json", NULL);
    g_autofree char *json = g_strdup_printf("{\"name\": \"" VM
                                            "\", \"memory_mib\": 64, \"kernel\": \"%s\", "
                                            "\"append\": \"vmig.dirty_mib_s=0\"}",
                                            vmig_guest_kernel());
    cr_assert(g_file_set_contents(spec_file, json, -1, NULL));
}

/* What a test leaves of definitions in @state: the VM's, and the (empty) directory. */
static void undefine_all(vmig_engine *e, const char *state)
{
    vmig_vm_undefine(e, VM, NULL);
    g_autofree char *d = g_build_filename(state, ENG_DEF_DIR, NULL);
    rmdir(d);
}

static void teardown(void)
{
    undefine_all(eng, src);
    t_engine_teardown(eng, src);
    vmig_engine *de = t_engine(dst);
    undefine_all(de, dst);
    t_engine_teardown(de, dst);
    g_autofree char *d = g_path_get_dirname(spec_file);
    unlink(spec_file);
    rmdir(d);
    g_free(spec_file);
}

TestSuite(offline, .init = setup, .fini = teardown, .timeout = 300);

#define RUN(...) t_cli((const char *const[]){__VA_ARGS__, NULL})

static void expect_cli(t_run_result r, int status, const char *needle)
{
    cr_assert(eq(int, r.status, status), "exit %d: %s%s", r.status, r.out, r.err);
    if (needle) {
        cr_assert(strstr(r.out, needle) || strstr(r.err, needle), "'%s' not in: %s%s", needle,
                  r.out, r.err);
    }
    t_run_result_clear(&r);
}

/* Exit status nonzero, and @needle said. */
static void expect_refused(t_run_result r, const char *needle)
{
    cr_assert(ne(int, r.status, 0), "accepted: %s", r.out);
    cr_assert(strstr(r.out, needle) || strstr(r.err, needle), "'%s' not in: %s%s", needle, r.out,
              r.err);
    t_run_result_clear(&r);
}

/* query-status of VM @name in @state: "running" once it runs. */
static char *run_state(const char *state, const char *name)
{
    g_autofree char *sock = g_build_filename(state, name, "qmp.sock", NULL);
    vmig_error *err = NULL;
    g_autofree char *reply = vmig_qmp_call(sock, "query-status", NULL, 10000, &err);
    cr_assert_not_null(reply, "%s", vmig_error_message(err));
    g_autoptr(json_object) o = json_tokener_parse(reply);
    json_object *st = NULL;
    cr_assert(json_object_object_get_ex(o, "status", &st), "%s", reply);
    return g_strdup(json_object_get_string(st));
}

static char *uuid_of(const char *path)
{
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) s = vmig_spec_load(path, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    cr_assert_not_null(s->uuid, "%s has no UUID", path);
    return g_strdup(s->uuid);
}

/* The VM is defined in @state, starts there with `vm start NAME`, runs, and keeps @uuid. */
static void starts_in(const char *state, const char *uuid)
{
    expect_cli(RUN("--state-dir", state, "vm", "start", VM), 0, "started VM '" VM "'");
    g_autofree char *st = run_state(state, VM);
    cr_assert(eq(str, st, "running"));
    g_autofree char *sj = g_build_filename(state, VM, "spec.json", NULL);
    g_autofree char *u = uuid_of(sj);
    cr_assert(eq(str, u, (char *)uuid), "the VM keeps its UUID");
    expect_cli(RUN("--state-dir", state, "vm", "stop", VM), 0, NULL);
    expect_cli(RUN("--state-dir", state, "vm", "undefine", VM), 0, NULL);
}

/* Gone from @state: not listed, no definition file. */
static void gone_from(const char *state)
{
    t_run_result r = RUN("--state-dir", state, "vm", "list", "--json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_assert_null(strstr(r.out, "\"" VM "\""), "still listed: %s", r.out);
    t_run_result_clear(&r);
    g_autofree char *def = eng_def_path(state, VM);
    cr_assert_not(g_file_test(def, G_FILE_TEST_EXISTS), "%s is left", def);
}

static char *defined_uuid(const char *state)
{
    g_autofree char *def = eng_def_path(state, VM);
    return uuid_of(def);
}

/* ---- an agent (t_agent_start) ----------------------------------------------------------------
 */

static void agent_stop(agent *a)
{
    if (a->pid > 0) {
        kill(a->pid, SIGTERM);
        waitpid(a->pid, NULL, 0);
    }
    vmig_engine *e = t_engine(a->dir);
    undefine_all(e, a->dir);
    t_engine_teardown(e, a->dir); /* frees a->dir */
    a->dir = NULL;
    t_agent_free(a);
}

/* ---- the library: eng_offline_start() -----------------------------------------------------------
 */

static bool job_done(void *opaque)
{
    return vmig_job_finished(opaque);
}

static bool offline(const char *dest, const char *key, bool undefine_source, vmig_error **errp)
{
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.offline = o.persistent = true;
    o.undefine_source = undefine_source;
    o.dest = dest;
    o.key_file = key;
    vmig_job *j = eng_offline_start(eng, VM, &o, NULL, NULL, NULL, NULL, errp);
    if (!j) {
        return false;
    }
    cr_assert(eng_run_until(eng, job_done, j, NULL));
    vmig_migration_stats st;
    cr_assert(eng_offline_stats(j, &st));
    bool ok = vmig_job_get_state(j) == VMIG_JOB_COMPLETED;
    if (ok) {
        cr_assert(eq(str, st.status, "completed"));
        cr_assert(eq(str, st.mode, "offline"));
        cr_assert(eq(str, st.vm_holder, "destination"));
        cr_assert(eq(str, st.vm_state, "shut off"));
    } else {
        vmig_propagate_error(errp, vmig_error_copy(vmig_job_error(j)));
    }
    vmig_job_free(j);
    return ok;
}

Test(offline, define_list_start_stop_undefine)
{
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, "defined VM '" VM "'");
    t_run_result r = RUN("--state-dir", src, "vm", "list", "--json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    g_autoptr(json_object) list = json_tokener_parse(r.out);
    cr_assert(eq(sz, json_object_array_length(list), 1), "%s", r.out);
    json_object *v = json_object_array_get_idx(list, 0), *f = NULL;
    cr_assert(json_object_object_get_ex(v, "state", &f));
    cr_assert(eq(str, (char *)json_object_get_string(f), "shut off"));
    cr_assert(json_object_object_get_ex(v, "persistent", &f) && json_object_get_boolean(f));
    t_run_result_clear(&r);
    expect_cli(RUN("--state-dir", src, "vm", "list"), 0, "shut off");

    g_autofree char *uuid = defined_uuid(src);
    expect_cli(RUN("--state-dir", src, "vm", "start", VM), 0, "started VM '" VM "'");
    g_autofree char *st = run_state(src, VM);
    cr_assert(eq(str, st, "running"));
    r = RUN("--state-dir", src, "vm", "list", "--json", "--timeout", "5000");
    cr_assert_not_null(strstr(r.out, "\"persistent\":true"), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "\"running\""), "%s", r.out);
    t_run_result_clear(&r);
    expect_cli(RUN("--state-dir", src, "vm", "stop", VM), 0, NULL);
    /* stopped, not forgotten */
    expect_cli(RUN("--state-dir", src, "vm", "list"), 0, "shut off");
    g_autofree char *still = defined_uuid(src);
    cr_assert(eq(str, still, uuid));
    expect_cli(RUN("--state-dir", src, "vm", "undefine", VM), 0, "undefined VM '" VM "'");
    expect_refused(RUN("--state-dir", src, "vm", "undefine", VM), "VM '" VM "' is not defined");
    expect_refused(RUN("--state-dir", src, "vm", "start", VM),
                   "and no VM named '" VM "' is defined in");
}

Test(offline, library_to_a_local_state_directory)
{
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, NULL);
    g_autofree char *uuid = defined_uuid(src);
    g_autofree char *dest = g_strconcat("local:", dst, NULL);
    vmig_error *err = NULL;
    cr_assert(offline(dest, NULL, true, &err), "%s", vmig_error_message(err));
    gone_from(src);
    starts_in(dst, uuid);
}

Test(offline, library_to_an_agent)
{
    agent a = {0};
    t_agent_start(&a, NULL, "127.0.0.1");
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, NULL);
    g_autofree char *uuid = defined_uuid(src);
    vmig_error *err = NULL;
    /* a key is needed */
    cr_assert_not(offline(a.dest, NULL, true, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "--key"), "%s", vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;
    cr_assert(offline(a.dest, a.key, true, &err), "%s", vmig_error_message(err));
    gone_from(src);
    /* again: the agent's host defines it now, and says so; nothing changes here */
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, NULL);
    cr_assert_not(offline(a.dest, a.key, true, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "already defines a VM named '" VM "'"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;
    cr_assert(eng_def_exists(src, VM), "the source keeps its definition");
    cr_assert(vmig_vm_undefine(eng, VM, &err));
    starts_in(a.dir, uuid);
    agent_stop(&a);
}

/* ---- the CLI: vmigrate migrate --offline --------------------------------------------------------
 */

static void skip_without_offline(void)
{
    t_run_result r = RUN("help", "migrate");
    bool has = strstr(r.out, "--offline") != NULL;
    t_run_result_clear(&r);
    if (!has) {
        cr_skip_test("'vmigrate migrate' does not take --offline yet");
    }
}

Test(offline, cli_to_a_local_state_directory)
{
    skip_without_offline();
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, NULL);
    g_autofree char *uuid = defined_uuid(src);
    g_autofree char *dest = g_strconcat("local:", dst, NULL);
    /* refusals first: each leaves everything as it was */
    expect_refused(RUN("--state-dir", src, "migrate", "--offline", VM, dest), "give --persistent");
    expect_cli(RUN("--state-dir", src, "vm", "start", VM), 0, NULL);
    expect_refused(RUN("--state-dir", src, "migrate", "--offline", "--persistent", VM, dest),
                   "VM '" VM "' is running: migrate it live, or stop it first");
    expect_cli(RUN("--state-dir", src, "vm", "stop", VM), 0, NULL);
    g_autoptr(vmig_spec) theirs = vmig_spec_load(spec_file, NULL);
    cr_assert(eng_def_write(dst, theirs, NULL));
    expect_refused(RUN("--state-dir", src, "migrate", "--offline", "--persistent", VM, dest),
                   "already defines a VM named '" VM "'");
    cr_assert(eng_def_remove(dst, VM, NULL));
    cr_assert(eng_def_exists(src, VM));

    t_run_result r = RUN("--state-dir", src, "migrate", "--offline", "--persistent",
                         "--undefinesource", "--json", VM, dest);
    cr_assert(eq(int, r.status, 0), "%s%s", r.out, r.err);
    cr_assert_not_null(strstr(r.out, "\"completed\""), "%s", r.out);
    t_run_result_clear(&r);
    gone_from(src);
    starts_in(dst, uuid);
}

Test(offline, cli_to_an_agent)
{
    skip_without_offline();
    agent a = {0};
    t_agent_start(&a, NULL, "127.0.0.1");
    expect_cli(RUN("--state-dir", src, "vm", "define", spec_file), 0, NULL);
    g_autofree char *uuid = defined_uuid(src);
    expect_cli(RUN("--state-dir", src, "migrate", "--offline", "--persistent", "--undefinesource",
                   "--key", a.key, VM, a.dest),
               0, NULL);
    gone_from(src);
    starts_in(a.dir, uuid);
    agent_stop(&a);
}
