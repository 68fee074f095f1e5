/*
 * Migration control on real QEMU pairs (issue 9): a guest that dirties memory four times
 * faster than the bandwidth cap, so plain pre-copy cannot converge, and what each mode and
 * convergence control makes of it.  Every migration that completes is checked page by page
 * on the destination; every one that does not leaves the source running, checked too.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "tests/support/t_util.h"

#define READY_MS 120000
#define MEM_MIB 64
#define DIRTY_MIB_S 32 /* four times the cap */
#define CAP_MIB_S 8

static char *state;
static vmig_engine *eng;

static void setup(void)
{
    state = t_state_dir_new();
    eng = t_engine(state);
}

static void teardown(void)
{
    t_engine_teardown(eng, state);
}

TestSuite(converge, .init = setup, .fini = teardown, .timeout = 300);

static void start_guest(const char *name, int mem, int rate)
{
    g_autoptr(vmig_spec) s = t_guest_spec(name, mem, rate);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_start(eng, s, t_accel(), &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

/* A live migration that plain pre-copy cannot finish: no policy unless the test sets one. */
static void hard_opts(vmig_migrate_opts *o)
{
    vmig_migrate_opts_init(o);
    o->bandwidth_mib_s = CAP_MIB_S;
    o->policy = VMIG_POLICY_NONE;
}

static void verify(const char *name)
{
    uint64_t pages = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify(eng, name, &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 5000), "a guest of 32 MiB or more has >5k pattern pages, checked %lu",
              (unsigned long)pages);
}

static const char *run_state(const char *name, char *buf, size_t len)
{
    g_autofree char *dir = g_build_filename(state, name, NULL);
    g_autoptr(eng_vm) vm = eng_vm_find(eng, dir, NULL);
    if (!vm || !eng_vm_connect_sync(vm, NULL) || !eng_vm_run_state(vm, buf, len, NULL)) {
        return "absent";
    }
    return buf;
}

static bool acted(const vmig_job *j, const char *needle)
{
    vmig_policy_action a[64];
    size_t n = vmig_job_actions(j, a, 64);
    for (size_t i = 0; i < n && i < 64; i++) {
        if (strstr(a[i].what, needle)) {
            return true;
        }
    }
    return false;
}

static bool job_done(void *opaque)
{
    return vmig_job_finished(opaque);
}

/* Runs a migration to its end; its final figures, and whether an action contains @needle. */
static vmig_job *run(const char *name, const vmig_migrate_opts *o, vmig_progress_fn fn,
                     void *opaque, vmig_migration_stats *st)
{
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, name, o, fn, opaque, NULL, NULL, &err);
    cr_assert(j != NULL, "%s", vmig_error_message(err));
    cr_assert(eng_run_until(eng, job_done, j, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_job_stats(j, st));
    return j;
}

static void expect_completed(vmig_job *j, const vmig_migration_stats *st)
{
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(str, (char *)st->status, "completed"));
    cr_assert(eq(str, (char *)st->vm_holder, "destination"));
}

Test(converge, plain_precopy_times_out_and_the_source_runs)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("plain", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.timeout_s = 20;
    o.timeout_action = VMIG_TIMEOUT_ABORT;
    vmig_migration_stats st;
    vmig_job *j = run("plain", &o, NULL, NULL, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(eq(int, vmig_error_code(vmig_job_error(j)), VMIG_E_TIMEOUT), "%s", msg);
    cr_assert(strstr(msg, "did not finish within 20 s") != NULL, "%s", msg);
    cr_assert(strstr(msg, "VM 'plain' is running on the source") != NULL, "%s", msg);
    cr_assert(acted(j, "timeout after 20 s: aborting"));
    cr_assert(eq(str, (char *)st.vm_holder, "source"));
    cr_assert(ge(u64, st.passes, 2), "pre-copy kept iterating");
    vmig_job_free(j);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("plain", buf, sizeof(buf)), "running"));
    verify("plain");
}

Test(converge, auto_converge_completes)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("ac", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.auto_converge = true;
    o.throttle_initial = 50;
    o.throttle_increment = 20;
    vmig_migration_stats st;
    vmig_job *j = run("ac", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.mode, "precopy"));
    cr_assert(gt(u32, st.throttle_pct, 0), "QEMU throttled the vCPUs");
    vmig_job_free(j);
    verify("ac");
}

Test(converge, postcopy_after_precopy_completes)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("pc", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.postcopy_after_precopy = true;
    vmig_migration_stats st;
    vmig_job *j = run("pc", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.mode, "postcopy"));
    cr_assert(gt(u64, st.postcopy_at_ms, 0));
    cr_assert(acted(j, "the first pass is done"));
    vmig_job_free(j);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("pc", buf, sizeof(buf)), "running"));
    verify("pc");
}

Test(converge, timeout_switches_to_postcopy)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("tpc", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.timeout_s = 10;
    o.timeout_action = VMIG_TIMEOUT_POSTCOPY;
    vmig_migration_stats st;
    vmig_job *j = run("tpc", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.mode, "postcopy"));
    cr_assert(ge(u64, st.postcopy_at_ms, 10000), "switched at the timeout, not before: %lu ms",
              (unsigned long)st.postcopy_at_ms);
    cr_assert(acted(j, "timeout after 10 s"));
    vmig_job_free(j);
    verify("tpc");
}

Test(converge, timeout_suspends_and_finishes_non_live)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("tsu", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.timeout_s = 10;
    o.timeout_action = VMIG_TIMEOUT_SUSPEND;
    vmig_migration_stats st;
    vmig_job *j = run("tsu", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.mode, "precopy"));
    cr_assert(acted(j, "pausing the source"));
    /* paused at 10 s with most of RAM dirty, at 8 MiB/s: the rest takes seconds, not ms */
    cr_assert(ge(u64, st.downtime_ms, 1000), "the VM was paused to finish: %lu ms",
              (unsigned long)st.downtime_ms);
    vmig_job_free(j);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("tsu", buf, sizeof(buf)), "running"),
              "the VM ran before: it runs on the destination");
    verify("tsu");
}

Test(converge, default_policy_converges)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("pol", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.bandwidth_mib_s = CAP_MIB_S;
    o.max_downtime_ms = 300;
    vmig_migration_stats st;
    vmig_job *j = run("pol", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(gt(dbl, st.dirty_rate_mib_s, 8.0), "the dirty rate was measured first: %.1f",
              st.dirty_rate_mib_s);
    cr_assert(acted(j, "dirty rate"));
    cr_assert(acted(j, "throttling the vCPUs") || acted(j, "downtime limit"),
              "the policy acted on a guest that dirties faster than the cap");
    cr_assert(le(u64, st.downtime_limit_ms, 300), "within --max-downtime");
    vmig_job_free(j);
    verify("pol");
}

Test(converge, postcopy_cut_pauses_both_and_resume_completes)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("cut", MEM_MIB, DIRTY_MIB_S);
    vmig_migrate_opts o;
    hard_opts(&o);
    o.postcopy_after_precopy = true;
    t_cutter c = {.sock = g_build_filename(state, "cut", ENG_READER_SOCK, NULL)};
    vmig_migration_stats st;
    vmig_job *j = run("cut", &o, t_cut_in_postcopy, &c, &st);
    cr_assert(c.cut, "post-copy ran long enough to cut it");
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "post-copy paused") != NULL, "%s", msg);
    cr_assert(strstr(msg, "--postcopy-resume") != NULL, "%s", msg);
    cr_assert(eq(str, (char *)st.vm_holder, "both"));
    cr_assert(eq(str, (char *)st.vm_state, "postcopy-paused"));
    vmig_job_free(j);

    /* neither half is stopped by a recovery: each has pages the other lacks */
    vmig_error *err = NULL;
    char *what = NULL;
    cr_assert(not(vmig_vm_recover(eng, "cut", &what, &err)));
    cr_assert(strstr(vmig_error_message(err), "post-copy") != NULL, "%s", vmig_error_message(err));
    vmig_error_free(err);
    g_autofree char *stage = g_build_filename(state, "cut.incoming", NULL);
    cr_assert(gt(int, t_instance_pid(stage), 0), "the destination half is kept");

    vmig_migrate_opts r;
    vmig_migrate_opts_init(&r);
    r.postcopy_resume = true;
    j = run("cut", &r, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.mode, "postcopy"));
    cr_assert(acted(j, "resuming post-copy"));
    vmig_job_free(j);
    g_free(c.sock);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("cut", buf, sizeof(buf)), "running"));
    verify("cut");
}

Test(converge, suspend_leaves_the_vm_paused_on_the_destination)
{
    start_guest("sus", 32, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.suspend = true;
    vmig_migration_stats st;
    vmig_job *j = run("sus", &o, NULL, NULL, &st);
    expect_completed(j, &st);
    cr_assert(eq(str, (char *)st.vm_state, "paused"));
    vmig_job_free(j);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("sus", buf, sizeof(buf)), "paused"));
}

static void expect_refused(const char *name, const vmig_migrate_opts *o, vmig_errc code,
                           const char *needle)
{
    vmig_error *err = NULL;
    vmig_migration_stats st;
    cr_assert(not(vmig_migrate(eng, name, o, NULL, NULL, &st, &err)), "%s: migrated", needle);
    cr_assert(eq(int, vmig_error_code(err), code), "%s", vmig_error_message(err));
    cr_assert(strstr(vmig_error_message(err), needle) != NULL, "%s", vmig_error_message(err));
    vmig_error_free(err);
}

Test(converge, options_that_cannot_work_are_refused_and_change_nothing)
{
    start_guest("ref", 32, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dirty_limit_mib_s = 10;
    if (t_accel() == VMIG_ACCEL_TCG) {
        expect_refused("ref", &o, VMIG_E_STATE, "TCG");
    }
    t_live_opts(&o);
    o.live = false;
    o.postcopy = true;
    expect_refused("ref", &o, VMIG_E_INVAL, "add --live");
    t_live_opts(&o);
    o.timeout_action = VMIG_TIMEOUT_POSTCOPY;
    expect_refused("ref", &o, VMIG_E_INVAL, "needs a timeout");
    t_live_opts(&o);
    o.postcopy_preempt = true;
    expect_refused("ref", &o, VMIG_E_INVAL, "give --postcopy too");
    t_live_opts(&o);
    o.compress = "lz4";
    expect_refused("ref", &o, VMIG_E_INVAL, "unknown compression 'lz4'");
    t_live_opts(&o);
    o.postcopy_resume = true;
    expect_refused("ref", &o, VMIG_E_NOTFOUND, "has no destination");

    /* a destination spec may not change the machine the guest sees */
    g_autoptr(vmig_spec) other = t_guest_spec("ref", 48, 0);
    g_autofree char *json = vmig_spec_to_json(other);
    g_autofree char *path = g_build_filename(state, "other.json", NULL);
    cr_assert(g_file_set_contents(path, json, -1, NULL));
    t_live_opts(&o);
    o.dest_spec = path;
    expect_refused("ref", &o, VMIG_E_INVAL, "memory_mib");
    g_unlink(path);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("ref", buf, sizeof(buf)), "running"));
}

Test(converge, persistent_and_undefinesource_move_the_definition)
{
    start_guest("per", 32, 0);
    vmig_error *err = NULL;
    g_autofree char *src_spec_path = g_build_filename(state, "per", "spec.json", NULL);
    g_autoptr(vmig_spec) spec = vmig_spec_load(src_spec_path, &err);
    cr_assert(spec != NULL, "%s", vmig_error_message(err));
    cr_assert(vmig_vm_define(eng, spec, &err), "%s", vmig_error_message(err));
    char *other = t_state_dir_new();
    vmig_migrate_opts o;
    t_live_opts(&o);
    g_autofree char *dest = g_strconcat("local:", other, NULL);
    o.dest = dest;
    o.persistent = true;
    o.undefine_source = true;
    vmig_migration_stats st;
    cr_assert(vmig_migrate(eng, "per", &o, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    vmig_spec *gone = vmig_vm_definition(eng, "per", &err);
    cr_assert(gone == NULL, "the source's definition was removed");
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND), "%s", vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;
    vmig_engine *oe = t_engine(other);
    g_autoptr(vmig_spec) there = vmig_vm_definition(oe, "per", &err);
    cr_assert(there != NULL, "defined at the destination: %s", vmig_error_message(err));
    cr_assert(vmig_vm_undefine(oe, "per", &err), "%s", vmig_error_message(err));
    g_autofree char *defs = g_build_filename(other, ".defined", NULL);
    g_rmdir(defs);
    g_autofree char *src_defs = g_build_filename(state, ".defined", NULL);
    g_rmdir(src_defs);
    t_engine_teardown(oe, other);
}

/* A VM that came in by migration has its staging directory's paths (NAME.incoming) on its
 * command line; when it moves on, its retirement must not take its next destination's pid
 * file and sockets, which live at those paths now. */
Test(converge, a_vm_migrated_again_and_again_stays_reachable)
{
    start_guest("chain", 32, 0);
    for (int i = 0; i < 3; i++) {
        vmig_migrate_opts o;
        t_live_opts(&o);
        o.postcopy_after_precopy = i == 1; /* one of them through post-copy */
        vmig_migration_stats st;
        vmig_error *err = NULL;
        cr_assert(vmig_migrate(eng, "chain", &o, NULL, NULL, &st, &err), "migration %d: %s", i,
                  vmig_error_message(err));
        char buf[32];
        cr_assert(eq(str, (char *)run_state("chain", buf, sizeof(buf)), "running"),
                  "after migration %d", i);
        cr_assert(eq(int, t_qemu_count_settled(state), 1), "one QEMU after migration %d", i);
    }
    verify("chain");
}

/* --dest-spec: the destination runs another spec (here another path to QEMU, which the
 * pre-flight probe runs too); the VM's identity stays its own. */
Test(converge, dest_spec_runs_the_destination_from_another_spec)
{
    start_guest("ds", 32, 0);
    g_autofree char *qemu = g_build_filename(state, "qemu-link", NULL);
    cr_assert(eq(int, symlink(vmig_engine_qemu(eng), qemu), 0));
    g_autoptr(vmig_spec) other = t_guest_spec("ds", 32, 0);
    g_autofree char *json = vmig_spec_to_json(other);
    g_autoptr(json_object) o = json_tokener_parse(json);
    json_object_object_add(o, "qemu", json_object_new_string(qemu));
    g_autofree char *path = g_build_filename(state, "ds-dest.json", NULL);
    cr_assert(g_file_set_contents(path, json_object_to_json_string(o), -1, NULL));
    vmig_migrate_opts opts;
    t_live_opts(&opts);
    opts.dest_spec = path;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    g_autofree char *src_spec = g_build_filename(state, "ds", "spec.json", NULL);
    g_autoptr(vmig_spec) before = vmig_spec_load(src_spec, &err);
    cr_assert(before != NULL, "%s", vmig_error_message(err));
    cr_assert(vmig_migrate(eng, "ds", &opts, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    g_autoptr(vmig_spec) after = vmig_spec_load(src_spec, &err);
    cr_assert(after != NULL, "%s", vmig_error_message(err));
    cr_assert(eq(str, after->uuid, before->uuid), "the UUID stays the VM's");
    cr_assert(eq(str, after->qemu, qemu));
    char buf[32];
    cr_assert(eq(str, (char *)run_state("ds", buf, sizeof(buf)), "running"));
    g_unlink(path);
    g_unlink(qemu);
}
