/*
 * VM definitions (engine/define.c): define, redefine, undefine, reading them back and their
 * errors, how vm list shows them; the agent's define request; and the offline migration job
 * to a local state directory (engine/offline.c), which starts no QEMU.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "engine/engine.h"
#include "engine/link.h"

static char *dir, *other;
static vmig_engine *eng;

static char *new_dir(void)
{
    char tmpl[] = "/tmp/vmig-define-XXXXXX";
    cr_assert_not_null(mkdtemp(tmpl));
    return g_strdup(tmpl);
}

static void setup(void)
{
    dir = new_dir();
    other = new_dir();
    vmig_error *err = NULL;
    eng = vmig_engine_new(dir, &err);
    cr_assert_not_null(eng, "%s", vmig_error_message(err));
}

static void rm_rf(const char *d)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", d);
    cr_assert(eq(int, system(cmd), 0));
}

static void teardown(void)
{
    vmig_engine_free(eng);
    rm_rf(dir);
    rm_rf(other);
    g_free(dir);
    g_free(other);
}

TestSuite(define, .init = setup, .fini = teardown, .timeout = 20);

static vmig_spec *spec_named(const char *name, const char *uuid)
{
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"%s\", \"memory_mib\": 64, \"kernel\": \"/boot/k\"%s%s%s}", name,
        uuid ? ", \"uuid\": \"" : "", uuid ? uuid : "", uuid ? "\"" : "");
    vmig_error *err = NULL;
    vmig_spec *s = vmig_spec_parse(json, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    return s;
}

static void expect_error_(vmig_error *err, vmig_errc code, const char *needle)
{
    cr_assert_not_null(err);
    cr_expect(eq(int, vmig_error_code(err), code), "%s", vmig_error_message(err));
    cr_expect_not_null(strstr(vmig_error_message(err), needle), "'%s' lacks '%s'",
                       vmig_error_message(err), needle);
    vmig_error_free(err);
}
/* ...and @err is NULL again, for the next call */
#define expect_error(err, code, needle)                                                            \
    do {                                                                                           \
        expect_error_((err), (code), (needle));                                                    \
        (err) = NULL;                                                                              \
    } while (0)

#define UUID_A "9a1c2b3d-0000-4000-8000-00000000000a"
#define UUID_B "9a1c2b3d-0000-4000-8000-00000000000b"

Test(define, define_then_read_back_with_a_uuid)
{
    g_autoptr(vmig_spec) s = spec_named("web", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err), "%s", vmig_error_message(err));
    g_autofree char *path = eng_def_path(dir, "web");
    cr_assert(g_str_has_suffix(path, "/.defined/web.json"));
    struct stat st;
    g_autofree char *ddir = g_build_filename(dir, ".defined", NULL);
    cr_assert(eq(int, lstat(ddir, &st), 0));
    cr_assert(eq(int, (int)(st.st_mode & 0777), 0700));
    g_autoptr(vmig_spec) d = vmig_vm_definition(eng, "web", &err);
    cr_assert_not_null(d, "%s", vmig_error_message(err));
    cr_assert(eq(str, d->name, "web"));
    cr_assert_not_null(d->uuid, "a definition gets a UUID");
    /* a redefinition without one keeps it; the spec's other fields are replaced */
    g_autoptr(vmig_spec) s2 = spec_named("web", NULL);
    s2->memory_mib = 128;
    cr_assert(vmig_vm_define(eng, s2, &err), "%s", vmig_error_message(err));
    g_autoptr(vmig_spec) d2 = vmig_vm_definition(eng, "web", &err);
    cr_assert(eq(str, d2->uuid, d->uuid));
    cr_assert(eq(u64, d2->memory_mib, 128));
    /* no temporary file is left beside it */
    g_autoptr(GPtrArray) names = eng_def_names(dir);
    cr_assert(eq(u32, names->len, 1));
}

Test(define, the_uuid_given_is_kept_and_another_refused)
{
    g_autoptr(vmig_spec) a = spec_named("db", UUID_A);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, a, &err), "%s", vmig_error_message(err));
    g_autoptr(vmig_spec) d = vmig_vm_definition(eng, "db", &err);
    cr_assert(eq(str, d->uuid, UUID_A));
    g_autoptr(vmig_spec) b = spec_named("db", UUID_B);
    cr_assert_not(vmig_vm_define(eng, b, &err));
    expect_error(err, VMIG_E_STATE, "defined with UUID " UUID_A);
}

Test(define, a_running_vms_uuid_is_taken)
{
    /* an instance directory as vm start leaves it (no QEMU needed to read its spec) */
    g_autofree char *inst = g_build_filename(dir, "run", NULL);
    cr_assert(eq(int, mkdir(inst, 0700), 0));
    g_autoptr(vmig_spec) running = spec_named("run", UUID_B);
    g_autofree char *json = vmig_spec_to_json(running);
    g_autofree char *sj = g_build_filename(inst, "spec.json", NULL);
    cr_assert(g_file_set_contents(sj, json, -1, NULL));
    g_autoptr(vmig_spec) s = spec_named("run", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err), "%s", vmig_error_message(err));
    g_autoptr(vmig_spec) d = vmig_vm_definition(eng, "run", &err);
    cr_assert(eq(str, d->uuid, UUID_B));
    /* and eng_def_write_running() takes its whole effective spec */
    g_autofree char *def = eng_def_path(dir, "run");
    cr_assert(eq(int, unlink(def), 0));
    cr_assert(eng_def_write_running(dir, "run", &err), "%s", vmig_error_message(err));
    g_autoptr(vmig_spec) d2 = vmig_vm_definition(eng, "run", &err);
    cr_assert(eq(str, d2->uuid, UUID_B));
    cr_assert_not(eng_def_write_running(dir, "norun", &err));
    expect_error(err, VMIG_E_NOTFOUND, "no VM named 'norun' runs in");
}

Test(define, undefine_names_the_vm)
{
    vmig_error *err = NULL;
    cr_assert_not(vmig_vm_undefine(eng, "ghost", &err));
    expect_error(err, VMIG_E_NOTFOUND, "VM 'ghost' is not defined in");
    g_autoptr(vmig_spec) s = spec_named("ghost", NULL);
    cr_assert(vmig_vm_define(eng, s, &err));
    cr_assert(vmig_vm_undefine(eng, "ghost", &err), "%s", vmig_error_message(err));
    cr_assert_null(vmig_vm_definition(eng, "ghost", &err));
    expect_error(err, VMIG_E_NOTFOUND, "VM 'ghost' is not defined in");
    cr_assert_not(vmig_vm_undefine(eng, "../etc", &err));
    expect_error(err, VMIG_E_INVAL, "not a valid VM name");
}

Test(define, a_broken_definition_names_its_file)
{
    g_autoptr(vmig_spec) s = spec_named("bad", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err));
    g_autofree char *path = eng_def_path(dir, "bad");
    cr_assert(g_file_set_contents(path, "{\"name\": \"bad\",", -1, NULL));
    cr_assert_null(vmig_vm_definition(eng, "bad", &err));
    expect_error(err, VMIG_E_INVAL, path);
    /* a redefinition does not silently replace what cannot be read */
    cr_assert_not(vmig_vm_define(eng, s, &err));
    expect_error(err, VMIG_E_INVAL, "cannot be read");
    /* a file that defines another VM */
    g_autoptr(vmig_spec) other_vm = spec_named("other", NULL);
    g_autofree char *json = vmig_spec_to_json(other_vm);
    cr_assert(g_file_set_contents(path, json, -1, NULL));
    cr_assert_null(vmig_vm_definition(eng, "bad", &err));
    expect_error(err, VMIG_E_INVAL, "defines VM 'other', not 'bad'");
    /* undefine removes it all the same */
    cr_assert(vmig_vm_undefine(eng, "bad", &err), "%s", vmig_error_message(err));
}

Test(define, a_linked_definitions_directory_is_refused)
{
    g_autofree char *ddir = g_build_filename(dir, ".defined", NULL);
    cr_assert(eq(int, symlink(other, ddir), 0));
    g_autoptr(vmig_spec) s = spec_named("web", NULL);
    vmig_error *err = NULL;
    cr_assert_not(vmig_vm_define(eng, s, &err));
    expect_error(err, VMIG_E_STATE, "not a link");
}

Test(define, check_free_names_what_is_there)
{
    vmig_error *err = NULL;
    cr_assert(eng_def_check_free(dir, "x", &err));
    g_autoptr(vmig_spec) s = spec_named("x", NULL);
    cr_assert(vmig_vm_define(eng, s, &err));
    cr_assert_not(eng_def_check_free(dir, "x", &err));
    expect_error(err, VMIG_E_STATE, "already defines a VM named 'x'");
    g_autofree char *stage = g_build_filename(dir, "y.incoming", NULL);
    cr_assert(eq(int, mkdir(stage, 0700), 0));
    cr_assert_not(eng_def_check_free(dir, "y", &err));
    expect_error(err, VMIG_E_STATE, "already has a VM named 'y'");
}

Test(define, list_shows_shut_off_and_persistent)
{
    g_autoptr(vmig_spec) a = spec_named("alpha", NULL);
    g_autoptr(vmig_spec) b = spec_named("beta", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, a, &err));
    cr_assert(vmig_vm_define(eng, b, &err));
    vmig_vm_info infos[4];
    memset(infos, 0, sizeof(infos));
    int n = vmig_vm_list(eng, infos, 4, &err);
    cr_assert(eq(int, n, 2), "%s", err ? vmig_error_message(err) : "");
    cr_assert(eq(str, infos[0].name, "alpha"));
    cr_assert(eq(str, infos[0].status, "shut off"));
    cr_assert(infos[0].persistent);
    cr_assert(eq(int, infos[0].pid, 0));
    cr_assert(eq(str, infos[1].name, "beta"));
}

Test(define, agent_define_requests_are_checked)
{
    vmig_error *err = NULL;
    eng_def_req q;
    g_autoptr(json_object) ok = json_tokener_parse(
        "{\"id\":1,\"op\":\"define\",\"name\":\"web\",\"spec\":{},\"exclusive\":true}");
    cr_assert(eng_agent_read_define(ok, "define", &q, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, (char *)q.name, "web"));
    cr_assert(q.exclusive);
    cr_assert_not_null(q.spec);
    g_autoptr(json_object) bare = json_tokener_parse(
        "{\"id\":1,\"op\":\"undefine\",\"name\":\"w\"}");
    cr_assert(eng_agent_read_define(bare, "undefine", &q, &err));
    cr_assert_null(q.spec);
    cr_assert_not(q.exclusive);
    static const struct {
        const char *json, *op, *why;
    } bad[] = {
        {"{\"name\":\"../x\"}", "define", "not a valid VM name"},
        {"{\"name\":5}", "define", "'name'"},
        {"{}", "define", "'name'"},
        {"{\"name\":\"w\",\"spec\":[]}", "define", "'spec'"},
        {"{\"name\":\"w\",\"exclusive\":\"yes\"}", "define", "'exclusive'"},
        {"{\"name\":\"w\",\"spec\":{}}", "undefine", "takes only a name"},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(json_object) o = json_tokener_parse(bad[i].json);
        cr_assert_not(eng_agent_read_define(o, bad[i].op, &q, &err), "%s", bad[i].json);
        expect_error(err, vmig_error_code(err), bad[i].why);
    }
}

/* ---- the offline migration job, to a local state directory ---------------------------------- */

static bool job_done(void *opaque)
{
    return vmig_job_finished(opaque);
}

static vmig_job *offline_run(const char *name, vmig_migrate_opts *o, vmig_error **errp)
{
    vmig_job *j = eng_offline_start(eng, name, o, NULL, NULL, NULL, NULL, errp);
    if (j) {
        cr_assert(eng_run_until(eng, job_done, j, NULL));
    }
    return j;
}

static void offline_opts(vmig_migrate_opts *o, const char *dest)
{
    vmig_migrate_opts_init(o);
    o->offline = true;
    o->persistent = true;
    o->dest = dest;
}

Test(define, offline_moves_the_definition)
{
    g_autoptr(vmig_spec) s = spec_named("cold", UUID_A);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err));
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    vmig_migrate_opts o;
    offline_opts(&o, dest);
    o.undefine_source = true;
    vmig_job *j = eng_offline_start(eng, "cold", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    cr_assert(eng_job_is_offline(j));
    cr_assert_not(vmig_job_finished(j), "it ends from dispatch, not inside the call");
    cr_assert(eng_run_until(eng, job_done, j, NULL));
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(int, vmig_job_get_kind(j), VMIG_JOB_MIGRATE));
    vmig_migration_stats st;
    cr_assert(eng_offline_stats(j, &st));
    cr_assert(eq(str, st.status, "completed"));
    cr_assert(eq(str, st.mode, "offline"));
    cr_assert(eq(str, st.vm_holder, "destination"));
    cr_assert(eq(str, st.vm_state, "shut off"));
    vmig_job_free(j);
    cr_assert_not(eng_def_exists(dir, "cold"), "--undefinesource removed it here");
    g_autoptr(vmig_spec) there = eng_def_load(other, "cold", &err);
    cr_assert_not_null(there, "%s", vmig_error_message(err));
    cr_assert(eq(str, there->uuid, UUID_A), "the UUID moves with it");
}

Test(define, offline_keeps_the_source_without_undefinesource)
{
    g_autoptr(vmig_spec) s = spec_named("cold", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err));
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    vmig_migrate_opts o;
    offline_opts(&o, dest);
    vmig_job *j = offline_run("cold", &o, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED));
    vmig_job_free(j);
    cr_assert(eng_def_exists(dir, "cold"));
    cr_assert(eng_def_exists(other, "cold"));
}

Test(define, offline_with_a_destination_spec)
{
    g_autoptr(vmig_spec) s = spec_named("cold", UUID_A);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err));
    g_autofree char *ds = g_build_filename(dir, "dest.json", NULL);
    cr_assert(g_file_set_contents(
        ds, "{\"name\": \"cold\", \"memory_mib\": 96, \"kernel\": \"/other/k\"}", -1, NULL));
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    vmig_migrate_opts o;
    offline_opts(&o, dest);
    o.dest_spec = ds;
    vmig_job *j = offline_run("cold", &o, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED));
    vmig_job_free(j);
    g_autoptr(vmig_spec) there = eng_def_load(other, "cold", &err);
    cr_assert(eq(u64, there->memory_mib, 96));
    cr_assert(eq(str, there->kernel, "/other/k"));
    cr_assert(eq(str, there->uuid, UUID_A));
    /* one that names another VM is refused */
    cr_assert(g_file_set_contents(
        ds, "{\"name\": \"warm\", \"memory_mib\": 96, \"kernel\": \"/k\"}", -1, NULL));
    g_autofree char *third = new_dir();
    g_autofree char *dest3 = g_strconcat("local:", third, NULL);
    o.dest = dest3;
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_INVAL, "names VM 'warm', not 'cold'");
    rm_rf(third);
}

Test(define, offline_refusals)
{
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    vmig_migrate_opts o;
    offline_opts(&o, dest);
    o.persistent = false;
    vmig_error *err = NULL;
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_INVAL,
                 "an offline migration moves the VM's definition: give --persistent");
    o.persistent = true;
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_NOTFOUND, "VM 'cold' is not defined in");

    g_autoptr(vmig_spec) s = spec_named("cold", NULL);
    cr_assert(vmig_vm_define(eng, s, &err));
    /* running here: an instance directory whose QEMU is alive (this process stands in) */
    g_autofree char *inst = g_build_filename(dir, "cold", NULL);
    cr_assert(eq(int, mkdir(inst, 0700), 0));
    g_autofree char *json = vmig_spec_to_json(s);
    g_autofree char *sj = g_build_filename(inst, "spec.json", NULL);
    g_autofree char *pidf = g_build_filename(inst, "qemu.pid", NULL);
    g_autofree char *pid = g_strdup_printf("%d\n", (int)getpid());
    cr_assert(g_file_set_contents(sj, json, -1, NULL));
    cr_assert(g_file_set_contents(pidf, pid, -1, NULL));
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_STATE, "VM 'cold' is running: migrate it live, or stop it first");
    rm_rf(inst);

    /* the destination defines it already: nothing changes on either side */
    g_autoptr(vmig_spec) theirs = spec_named("cold", UUID_B);
    cr_assert(eng_def_write(other, theirs, &err));
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_STATE, "already defines a VM named 'cold'");
    g_autoptr(vmig_spec) still = eng_def_load(other, "cold", &err);
    cr_assert(eq(str, still->uuid, UUID_B));
    cr_assert(eng_def_exists(dir, "cold"));

    /* onto itself */
    o.dest = "local";
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_INVAL, "is this state directory");
    o.dest = "nowhere";
    cr_assert_null(offline_run("cold", &o, &err));
    expect_error(err, VMIG_E_INVAL, "unknown destination 'nowhere'");
}

Test(define, offline_cancelled_before_it_moves)
{
    g_autoptr(vmig_spec) s = spec_named("cold", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_define(eng, s, &err));
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    vmig_migrate_opts o;
    offline_opts(&o, dest);
    o.undefine_source = true;
    vmig_job *j = eng_offline_start(eng, "cold", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    vmig_job_cancel(j);
    cr_assert(eng_run_until(eng, job_done, j, NULL));
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_CANCELLED));
    cr_assert_not_null(strstr(vmig_error_message(vmig_job_error(j)), "defined here only"));
    vmig_migration_stats st;
    cr_assert(eng_offline_stats(j, &st));
    cr_assert(eq(str, st.status, "cancelled"));
    cr_assert(eq(str, st.vm_holder, "source"));
    vmig_job_free(j);
    cr_assert(eng_def_exists(dir, "cold"));
    cr_assert_not(eng_def_exists(other, "cold"));
}
