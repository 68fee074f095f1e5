/*
 * Live migration between two real QEMU processes (TCG unless VMIG_TEST_ACCEL=kvm), through
 * the library.  Every test ends by checking that no QEMU and no file is left behind.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json.h"
#include "engine/engine.h"
#include "tests/support/t_util.h"

#define READY_MS 120000

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

TestSuite(migrate, .init = setup, .fini = teardown, .timeout = 240);

static void start_guest_ex(const char *name, int mem, int rate, const char *extra)
{
    g_autoptr(vmig_spec) s = t_guest_spec_ex(name, mem, rate, extra);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_start(eng, s, t_accel(), &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

static void start_guest(const char *name, int mem, int rate)
{
    start_guest_ex(name, mem, rate, "");
}

/* The VM's run state, asked over the engine's monitor with the usual deadline (vm list gives
 * a monitor 100 ms, and a loaded test machine may take longer). */
static const char *run_state(const char *name, char *buf, size_t len)
{
    g_autofree char *dir = g_build_filename(state, name, NULL);
    g_autoptr(eng_vm) vm = eng_vm_find(eng, dir, NULL);
    if (!vm || !eng_vm_connect_sync(vm, NULL) || !eng_vm_run_state(vm, buf, len, NULL)) {
        return "absent";
    }
    return buf;
}

static void expect_only(const char *name, const char *status)
{
    vmig_vm_info infos[8];
    int n = vmig_vm_list(eng, infos, 8, NULL);
    cr_assert(eq(int, n, 1), "one VM after the migration, found %d", n);
    cr_assert(eq(str, infos[0].name, (char *)name));
    char buf[32];
    cr_assert(eq(str, (char *)run_state(name, buf, sizeof(buf)), (char *)status));
}

Test(migrate, idle_guest)
{
    start_guest("idle", 256, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "idle", &o, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, st.status, "completed"));
    cr_assert(gt(u64, st.downtime_ms, 0));
    cr_assert(gt(u64, st.qemu_downtime_ms, 0), "QEMU's own downtime figure is read after it "
                                               "is computed");
    cr_assert(eq(str, st.cpu_check, "passed"), "the destination QEMU's max model runs qemu64");
    cr_assert(ge(u64, st.transferred_bytes, st.total_bytes / 2),
              "the pattern pages are not zero: most of RAM must cross");
    cr_assert(ge(u64, st.total_ms, st.setup_ms));
    expect_only("idle", "running");
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(eng, "idle", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 60000), "a 256 MiB guest has ~64k pattern pages, checked %lu",
              (unsigned long)pages);
}

typedef struct progress_log {
    int calls;
    uint64_t max_passes;
} progress_log;

static void count_progress(void *opaque, const vmig_migration_stats *st)
{
    progress_log *l = opaque;
    l->calls++;
    if (st->passes > l->max_passes) {
        l->max_passes = st->passes;
    }
}

Test(migrate, guest_dirtying_memory)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    /* The worst case for QEMU < 9.0's TCG write loss: the guest keeps its TLB entries hot.
     * On a QEMU without that bug every write must arrive. */
    start_guest_ex("busy", 256, 40, "vmig.tlb_refresh=0");
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.max_downtime_ms = 100;
    o.bandwidth_mib_s = 200; /* several passes: the guest dirties while we copy */
    vmig_migration_stats st;
    progress_log pl = {0};
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "busy", &o, count_progress, &pl, &st, &err), "%s",
              vmig_error_message(err));
    cr_assert(eq(str, st.status, "completed"));
    cr_assert(gt(u64, st.transferred_bytes, st.total_bytes),
              "dirtied pages were sent again: %lu of %lu", (unsigned long)st.transferred_bytes,
              (unsigned long)st.total_bytes);
    cr_assert(ge(u64, st.passes, 2));
    cr_assert(gt(int, pl.calls, 0), "progress was reported");
    expect_only("busy", "running");
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(eng, "busy", &pages, &err), "%s", vmig_error_message(err));
}

/* ---- one engine, many jobs ----------------------------------------------------------------- */

Test(migrate, two_vms_at_once_on_one_engine)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("first", 256, 20);
    start_guest("second", 256, 20);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 200; /* both move at the same time, for several passes */
    vmig_error *err = NULL;
    vmig_job *a = vmig_migrate_start(eng, "first", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(a, "%s", vmig_error_message(err));
    vmig_job *b = vmig_migrate_start(eng, "second", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(b, "%s", vmig_error_message(err));
    bool overlapped = false;
    while (!vmig_job_finished(a) || !vmig_job_finished(b)) {
        cr_assert(eq(int, vmig_engine_run(eng, 50, &err), 0), "%s", vmig_error_message(err));
        overlapped |= vmig_job_get_state(a) == VMIG_JOB_MIGRATING &&
                      vmig_job_get_state(b) == VMIG_JOB_MIGRATING;
    }
    cr_assert(overlapped, "both jobs were migrating at the same time");
    cr_assert(eq(int, vmig_job_get_state(a), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(a)));
    cr_assert(eq(int, vmig_job_get_state(b), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(b)));
    vmig_migration_stats st;
    cr_assert(vmig_job_stats(a, &st));
    cr_assert(eq(str, st.vm_holder, "destination"));
    vmig_job_free(a);
    vmig_job_free(b);
    cr_assert(vmig_guest_verify(eng, "first", NULL, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_verify(eng, "second", NULL, &err), "%s", vmig_error_message(err));
}

/* vm list from another process while a migration runs: the reader monitor and the job file. */
Test(migrate, vm_list_sees_a_running_migration)
{
    start_guest("watched", 512, 10);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 32; /* ~16 s */
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, "watched", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    vmig_migration_stats st = {0};
    while (vmig_job_get_state(j) != VMIG_JOB_MIGRATING || st.transferred_bytes == 0) {
        cr_assert(not(vmig_job_finished(j)), "%s", vmig_error_message(vmig_job_error(j)));
        vmig_engine_run(eng, 100, NULL);
        vmig_job_stats(j, &st);
    }
    vmig_engine_run(eng, 600, NULL); /* a state file with figures */
    int64_t t0 = vmig_now_ms();
    /* --timeout: the point is that the reader monitor answers at all while the engine holds
     * the other; how fast is a figure for bench/embed.py, not a pass mark here */
    const char *const args[] = {"--state-dir", state,       "vm",   "list",
                                "--json",      "--timeout", "5000", NULL};
    t_run_result r = t_cli(args);
    int64_t took = vmig_now_ms() - t0;
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_log_info("vm list took %" G_GINT64_FORMAT " ms (process start included)", took);
    g_autoptr(json_object) list = json_tokener_parse(r.out);
    cr_assert(json_object_is_type(list, json_type_array), "%s", r.out);
    json_object *vm = NULL;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *e = json_object_array_get_idx(list, i), *n = NULL;
        if (json_object_object_get_ex(e, "name", &n) &&
            strcmp(json_object_get_string(n), "watched") == 0) {
            vm = e;
        }
    }
    cr_assert_not_null(vm, "%s", r.out);
    json_object *v = NULL, *job = NULL;
    cr_assert(json_object_object_get_ex(vm, "state", &v));
    cr_assert(eq(str, (char *)json_object_get_string(v), "running"),
              "the reader monitor answers while the engine holds the other: %s", r.out);
    cr_assert(json_object_object_get_ex(vm, "job", &job), "the job is shown: %s", r.out);
    cr_assert(json_object_object_get_ex(job, "state", &v));
    cr_assert(eq(str, (char *)json_object_get_string(v), "migrating"), "%s", r.out);
    cr_assert(json_object_object_get_ex(job, "progress", &v));
    cr_assert(gt(dbl, json_object_get_double(v), 0.0), "progress is shown: %s", r.out);
    t_run_result_clear(&r);
    vmig_job_cancel(j);
    while (!vmig_job_finished(j)) {
        vmig_engine_run(eng, 100, NULL);
    }
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_CANCELLED));
    vmig_job_free(j);
}

typedef struct killer {
    const char *stage;
    int killed_pid;
} killer;

/* SIGKILLs the QEMU of instance directory k->stage once bytes move. */
static void kill_midway(void *opaque, const vmig_migration_stats *st)
{
    killer *k = opaque;
    if (k->killed_pid || st->transferred_bytes == 0) {
        return;
    }
    k->killed_pid = t_instance_pid(k->stage);
    if (k->killed_pid > 0) {
        kill(k->killed_pid, SIGKILL);
    }
}

Test(migrate, destination_killed_midway)
{
    start_guest("victim", 512, 10);
    g_autofree char *stage = g_build_filename(state, "victim.incoming", NULL);
    killer k = {.stage = stage};
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 32; /* ~16 s: plenty of time to kill it in the middle */
    vmig_migration_stats st;
    vmig_error *err = NULL;
    int64_t t0 = vmig_now_ms();
    cr_assert(not(vmig_migrate(eng, "victim", &o, kill_midway, &k, &st, &err)));
    cr_assert(gt(int, k.killed_pid, 0), "the destination was killed");
    cr_assert(lt(i64, vmig_now_ms() - t0, 12000), "the failure is noticed without waiting "
                                                  "for the stream to time out");
    const char *msg = vmig_error_message(err);
    cr_assert_not_null(strstr(msg, "destination"), "%s", msg);
    cr_assert_not_null(strstr(msg, "VM 'victim' is running on the source"), "%s", msg);
    cr_assert(eq(str, st.status, "failed"));
    vmig_error_free(err);
    err = NULL;
    char buf[32];
    cr_assert(eq(str, (char *)run_state("victim", buf, sizeof(buf)), "running"));
    cr_assert(not(g_file_test(stage, G_FILE_TEST_EXISTS)), "the destination is torn down");
    cr_assert(eq(int, t_qemu_count_settled("victim.incoming"), 0));
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(eng, "victim", &pages, &err), "the source lost nothing: %s",
              vmig_error_message(err));
}

/* The source QEMU dies mid-migration: the VM is gone with it, and the error says so rather
 * than blaming the destination whose stream broke as a result. */
Test(migrate, source_killed_midway_is_named)
{
    start_guest("doomed", 256, 10);
    g_autofree char *dir = g_build_filename(state, "doomed", NULL);
    killer k = {.stage = dir};
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 16;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, "doomed", &o, kill_midway, &k, NULL, &err)));
    cr_assert(gt(int, k.killed_pid, 0));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_QEMU), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "the source QEMU"), "%s",
                       vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "exited during the migration"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    cr_assert(eq(int, t_qemu_count_settled("doomed.incoming"), 0), "the destination is gone");
}

typedef struct stopper {
    const char *stage;
    int pid;
} stopper;

static void stop_destination(void *opaque, const vmig_migration_stats *st)
{
    stopper *k = opaque;
    if (!k->pid && st->transferred_bytes > 0) {
        k->pid = t_instance_pid(k->stage);
        if (k->pid > 0) {
            kill(k->pid, SIGSTOP);
        }
    }
}

/* A destination that stops reading: QEMU alone would wait forever (issue 11, item 12). */
Test(migrate, stalled_migration_rolls_back)
{
    start_guest("stuck", 256, 10);
    g_autofree char *stage = g_build_filename(state, "stuck.incoming", NULL);
    stopper k = {.stage = stage};
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 16; /* ~16 s: stopped well before the end */
    o.stall_timeout_s = 3;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    int64_t t0 = vmig_now_ms();
    cr_assert(not(vmig_migrate(eng, "stuck", &o, stop_destination, &k, &st, &err)));
    cr_assert(gt(int, k.pid, 0), "the destination was stopped");
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_TIMEOUT), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "made no progress for 3 s"), "%s",
                       vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "VM 'stuck' is running on the source"), "%s",
                       vmig_error_message(err));
    cr_assert(lt(i64, vmig_now_ms() - t0, 14000), "noticed in seconds, not at the stream's end");
    vmig_error_free(err);
    err = NULL;
    cr_assert(not(g_file_test(stage, G_FILE_TEST_EXISTS)), "the destination is torn down");
    cr_assert(eq(int, t_qemu_count_settled("stuck.incoming"), 0));
    cr_assert(vmig_guest_verify(eng, "stuck", NULL, &err), "%s", vmig_error_message(err));
}

/* A vmigrate that died after starting the destination left a QEMU in NAME.incoming: the next
 * migration said "already running" (issue 11, item 4).  Now it stops it and goes on. */
Test(migrate, a_destination_left_by_a_dead_vmigrate_is_cleaned_up)
{
    start_guest("orphaned", 64, 0);
    vmig_error *err = NULL;
    g_autofree char *src_dir = g_build_filename(state, "orphaned", NULL);
    g_autofree char *stage = g_build_filename(state, "orphaned.incoming", NULL);
    g_autoptr(eng_vm) src = eng_vm_find(eng, src_dir, &err);
    cr_assert_not_null(src, "%s", vmig_error_message(err));
    eng_launch_req req = {.spec = src->spec, .dir = stage, .accel = t_accel(), .incoming = true};
    eng_vm *orphan = eng_vm_launch_sync(eng, &req, &err);
    cr_assert_not_null(orphan, "%s", vmig_error_message(err));
    int opid = orphan->pid;
    eng_vm_free(orphan); /* the engine forgets it; the QEMU runs on, as after a crash */
    cr_assert(eng_vm_alive(&(eng_vm){.pid = opid}));
    vmig_migrate_opts o;
    t_live_opts(&o);
    vmig_migration_stats st;
    cr_assert(vmig_migrate(eng, "orphaned", &o, NULL, NULL, &st, &err), "%s",
              vmig_error_message(err));
    expect_only("orphaned", "running");
    cr_assert(not(eng_vm_alive(&(eng_vm){.pid = opid})),
              "the stale destination (pid %d) is "
              "gone",
              opid);
    cr_assert(vmig_guest_verify(eng, "orphaned", NULL, &err), "%s", vmig_error_message(err));
}

/* The engine dies mid-migration (SIGKILL, in a child process): its guard takes the destination
 * down with it, the source's migration fails and the source runs on; the next migration
 * cleans up the staging directory and completes. */
static void die_midway(void *opaque, const vmig_migration_stats *st)
{
    const char *stage = opaque;
    if (st->transferred_bytes > 0 && t_instance_pid(stage) > 0) {
        raise(SIGKILL);
    }
}

Test(migrate, the_destination_dies_with_the_engine_before_the_switchover)
{
    start_guest("crash", 256, 10);
    g_autofree char *stage = g_build_filename(state, "crash.incoming", NULL);
    pid_t child = fork();
    cr_assert(ge(int, child, 0));
    if (child == 0) {
        vmig_engine *e2 = t_engine(state);
        vmig_migrate_opts o;
        t_live_opts(&o);
        o.bandwidth_mib_s = 16; /* ~16 s: killed well before the end */
        vmig_migrate(e2, "crash", &o, die_midway, stage, NULL, NULL);
        _exit(3); /* finished before it could die: the parent fails */
    }
    int status = 0;
    cr_assert(eq(int, waitpid(child, &status, 0), child));
    bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    cr_assert(killed, "the engine died mid-migration (status 0x%x)", status);
    cr_assert(eq(int, t_qemu_count_settled("crash.incoming"), 0),
              "the guard killed the destination");
    char buf[32];
    cr_assert(eq(str, (char *)run_state("crash", buf, sizeof(buf)), "running"));
    vmig_migrate_opts o;
    t_live_opts(&o);
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "crash", &o, NULL, NULL, NULL, &err), "%s",
              vmig_error_message(err));
    expect_only("crash", "running");
    cr_assert(vmig_guest_verify(eng, "crash", NULL, &err), "%s", vmig_error_message(err));
}

/* By hand, what a vmigrate that died at a given point leaves: a source that sent everything to
 * a destination in NAME.incoming (launched unguarded, as if released).  Then the destination
 * is killed (as its guard does when the engine dies before the switchover), left paused (the
 * engine died between releasing it and resuming it), or resumed (died after the switchover). */
typedef enum { DEST_KILLED, DEST_PAUSED, DEST_RESUMED } dest_fate;

static int leave_half_migrated(const char *name, dest_fate fate)
{
    vmig_error *err = NULL;
    g_autofree char *src_dir = g_build_filename(state, name, NULL);
    g_autofree char *stage = g_strconcat(src_dir, ".incoming", NULL);
    g_autoptr(eng_vm) src = eng_vm_find(eng, src_dir, &err);
    cr_assert_not_null(src, "%s", vmig_error_message(err));
    cr_assert(eng_vm_connect_sync(src, &err), "%s", vmig_error_message(err));
    eng_launch_req req = {.spec = src->spec, .dir = stage, .accel = t_accel(), .incoming = true};
    g_autoptr(eng_vm) dst = eng_vm_launch_sync(eng, &req, &err);
    cr_assert_not_null(dst, "%s", vmig_error_message(err));
    g_autofree char *uri = g_strdup_printf("unix:%s/migrate.sock", stage);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "uri", json_object_new_string(uri));
    cr_assert(qmp_conn_call_void(dst->qmp, "migrate-incoming", a, 10000, &err), "%s",
              vmig_error_message(err));
    a = json_object_new_object();
    json_object_object_add(a, "uri", json_object_new_string(uri));
    cr_assert(qmp_conn_call_void(src->qmp, "migrate", a, 10000, &err), "%s",
              vmig_error_message(err));
    char st[32] = "";
    for (int i = 0; i < 600 && strcmp(st, "paused") != 0; i++) {
        g_usleep(100000);
        cr_assert_not_null(eng_vm_run_state(dst, st, sizeof(st), &err), "%s",
                           vmig_error_message(err));
    }
    cr_assert(eq(str, st, "paused"), "the destination loaded the VM");
    cr_assert(eq(str, (char *)eng_vm_run_state(src, st, sizeof(st), &err), "postmigrate"));
    if (fate == DEST_RESUMED) {
        cr_assert(qmp_conn_call_void(dst->qmp, "cont", NULL, 10000, &err), "%s",
                  vmig_error_message(err));
    } else if (fate == DEST_KILLED) {
        kill(dst->pid, SIGKILL);
        cr_assert(eq(int, t_qemu_count_settled(stage), 0));
    }
    return dst->pid;
}

static void expect_handed_over(const char *name, dest_fate fate)
{
    start_guest(name, 64, 0);
    int dpid = leave_half_migrated(name, fate);
    vmig_error *err = NULL;
    char *what = NULL;
    cr_assert(vmig_vm_recover(eng, name, &what, &err), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(what, "had taken over"), "%s", what);
    free(what);
    expect_only(name, "running");
    vmig_vm_info info[2];
    cr_assert(eq(int, vmig_vm_list(eng, info, 2, NULL), 1));
    cr_assert(eq(int, info[0].pid, dpid), "the destination QEMU holds the name now");
    cr_assert(eq(int, t_qemu_count_settled(state), 1), "the source is retired");
    cr_assert(vmig_guest_verify(eng, name, NULL, &err), "%s", vmig_error_message(err));
}

Test(migrate, recover_hands_the_vm_to_a_destination_that_took_over)
{
    expect_handed_over("over", DEST_RESUMED);
}

/* Released but not yet resumed: it has the whole VM, so it takes over and runs, as the source
 * did before. */
Test(migrate, recover_finishes_a_switchover_cut_short)
{
    expect_handed_over("short", DEST_PAUSED);
}

Test(migrate, recover_resumes_a_source_whose_destination_never_ran)
{
    start_guest("back", 64, 0);
    g_autofree char *src_dir = g_build_filename(state, "back", NULL);
    int spid = t_instance_pid(src_dir);
    leave_half_migrated("back", DEST_KILLED);
    vmig_error *err = NULL;
    char *what = NULL;
    cr_assert(vmig_vm_recover(eng, "back", &what, &err), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(what, "removed"), "%s", what);
    cr_assert_not_null(strstr(what, "resumed the source"), "%s", what);
    free(what);
    expect_only("back", "running");
    cr_assert(eq(int, t_instance_pid(src_dir), spid), "the source QEMU keeps the VM");
    cr_assert(eq(int, t_qemu_count_settled("back.incoming"), 0));
    cr_assert(vmig_vm_recover(eng, "back", &what, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, what, ""), "nothing is left to recover: %s", what);
    free(what);
    cr_assert(vmig_guest_verify(eng, "back", NULL, &err), "%s", vmig_error_message(err));
}

/* The destination fails to start at once (its kernel file is gone): the migration fails and
 * rolls back.  It once went on to set up a destination that did not exist, and crashed (the
 * fault matrix found it with a full disk). */
Test(migrate, a_destination_that_cannot_start_rolls_back)
{
    g_autofree char *kernel = g_build_filename(state, "kernel.elf", NULL);
    g_autofree char *text = NULL;
    gsize len = 0;
    cr_assert(g_file_get_contents(vmig_guest_kernel(), &text, &len, NULL));
    cr_assert(g_file_set_contents(kernel, text, (gssize)len, NULL));
    g_autofree char *json = g_strdup_printf("{\"name\": \"nokernel\", \"memory_mib\": 64, "
                                            "\"kernel\": \"%s\"}",
                                            kernel);
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) spec = vmig_spec_parse(json, &err);
    cr_assert_not_null(spec, "%s", vmig_error_message(err));
    cr_assert(vmig_vm_start(eng, spec, t_accel(), &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, "nokernel", READY_MS, &err), "%s",
              vmig_error_message(err));
    unlink(kernel);
    vmig_migrate_opts o;
    t_live_opts(&o);
    cr_assert(not(vmig_migrate(eng, "nokernel", &o, NULL, NULL, NULL, &err)));
    cr_assert_not_null(strstr(vmig_error_message(err), "starting the destination QEMU"), "%s",
                       vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "kernel.elf"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;
    expect_only("nokernel", "running");
    cr_assert(vmig_guest_verify(eng, "nokernel", NULL, &err), "%s", vmig_error_message(err));
}

/* A relay of the source's monitor that swallows the MIGRATION "completed" event and sends
 * garbage instead: the engine loses its connection just after the source finished.  Later
 * connections (the rollback's) are relayed faithfully. */
typedef struct qmp_saboteur {
    int lfd;
    char *real;
    pthread_t thread;
    volatile bool fired, stop;
} qmp_saboteur;

static void saboteur_serve(qmp_saboteur *q, int c)
{
    int qemu = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    g_strlcpy(a.sun_path, q->real, sizeof(a.sun_path));
    if (connect(qemu, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(qemu);
        return;
    }
    struct pollfd fds[2] = {{.fd = c, .events = POLLIN}, {.fd = qemu, .events = POLLIN}};
    char buf[65536];
    while (!q->stop && poll(fds, 2, 100) >= 0) {
        int from = fds[0].revents ? 0 : fds[1].revents ? 1 : -1;
        if (from < 0) {
            continue;
        }
        ssize_t n = read(fds[from].fd, buf, sizeof(buf) - 1);
        if (n <= 0) {
            break;
        }
        buf[n] = '\0';
        if (!q->fired && from == 1 && strstr(buf, "\"MIGRATION\"") &&
            strstr(buf, "\"completed\"")) {
            static const char junk[] = "{\"event\": null, [[[\r\n";
            q->fired = write(c, junk, sizeof(junk) - 1) > 0;
            break;
        }
        if (write(fds[1 - from].fd, buf, (size_t)n) != n) {
            break;
        }
    }
    close(qemu);
}

static void *saboteur_main(void *opaque)
{
    qmp_saboteur *q = opaque;
    while (!q->stop) {
        struct pollfd p = {.fd = q->lfd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) {
            int c = accept(q->lfd, NULL, NULL);
            if (c >= 0) {
                saboteur_serve(q, c);
                close(c);
            }
        }
    }
    return NULL;
}

Test(migrate, garbage_from_the_source_after_it_finished_rolls_back_and_resumes_it)
{
    start_guest("garbled", 64, 0);
    g_autofree char *dir = g_build_filename(state, "garbled", NULL);
    g_autofree char *sock = g_build_filename(dir, "qmp.sock", NULL);
    qmp_saboteur q = {.real = g_build_filename(dir, "qmp.real.sock", NULL)};
    cr_assert(eq(int, rename(sock, q.real), 0));
    q.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    g_strlcpy(a.sun_path, sock, sizeof(a.sun_path));
    cr_assert(eq(int, bind(q.lfd, (struct sockaddr *)&a, sizeof(a)), 0));
    cr_assert(eq(int, listen(q.lfd, 1), 0));
    pthread_create(&q.thread, NULL, saboteur_main, &q);
    vmig_migrate_opts o;
    t_live_opts(&o);
    vmig_error *err = NULL;
    bool ok = vmig_migrate(eng, "garbled", &o, NULL, NULL, NULL, &err);
    q.stop = true;
    pthread_join(q.thread, NULL);
    close(q.lfd);
    unlink(sock);
    cr_assert(eq(int, rename(q.real, sock), 0));
    g_free(q.real);
    cr_assert(q.fired, "the completed event was replaced by garbage");
    cr_assert(not(ok), "the engine never saw the source complete");
    cr_assert_not_null(strstr(vmig_error_message(err), "VM 'garbled' is running on the source"),
                       "%s", vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;
    expect_only("garbled", "running");
    cr_assert(vmig_guest_verify(eng, "garbled", NULL, &err), "%s", vmig_error_message(err));
}

/* A source still migrating when its vmigrate died (here: to a socket nobody reads) is
 * cancelled by recover, and runs on. */
Test(migrate, recover_cancels_a_migration_nobody_drives)
{
    start_guest("adrift", 64, 0);
    g_autofree char *sock = g_build_filename(state, "sink.sock", NULL);
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    g_strlcpy(a.sun_path, sock, sizeof(a.sun_path));
    cr_assert(eq(int, bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0));
    cr_assert(eq(int, listen(lfd, 1), 0)); /* connects, never read */
    g_autofree char *dir = g_build_filename(state, "adrift", NULL);
    g_autoptr(eng_vm) src = eng_vm_find(eng, dir, NULL);
    vmig_error *err = NULL;
    cr_assert(src && eng_vm_connect_sync(src, &err), "%s", vmig_error_message(err));
    json_object *args = json_object_new_object();
    g_autofree char *uri = g_strdup_printf("unix:%s", sock);
    json_object_object_add(args, "uri", json_object_new_string(uri));
    cr_assert(qmp_conn_call_void(src->qmp, "migrate", args, 10000, &err), "%s",
              vmig_error_message(err));
    eng_vm_disconnect(src); /* as if its vmigrate died */
    char *what = NULL;
    cr_assert(vmig_vm_recover(eng, "adrift", &what, &err), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(what, "cancelled a migration"), "%s", what);
    free(what);
    close(lfd);
    unlink(sock);
    char buf[32];
    cr_assert(eq(str, (char *)run_state("adrift", buf, sizeof(buf)), "running"));
    cr_assert(vmig_guest_verify(eng, "adrift", NULL, &err), "%s", vmig_error_message(err));
}

/* A vmigrate killed while its probe QEMU ran left .probe-PID-*: the next one removes it, and
 * leaves a live engine's probe alone. */
Test(migrate, probes_of_a_vmigrate_that_died_are_removed)
{
    pid_t dead = fork();
    if (dead == 0) {
        _exit(0);
    }
    waitpid(dead, NULL, 0);
    g_autofree char *stale = g_strdup_printf("%s/.probe-%d-abcdef", state, (int)dead);
    g_autofree char *live = g_strdup_printf("%s/.probe-%d-abcdef", state, (int)getpid());
    g_autofree char *stale_log = g_build_filename(stale, "qemu.log", NULL);
    cr_assert(eq(int, g_mkdir(stale, 0700), 0));
    cr_assert(eq(int, g_mkdir(live, 0700), 0));
    cr_assert(g_file_set_contents(stale_log, "", 0, NULL));
    vmig_error *err = NULL;
    cr_assert(not(vmig_vm_recover(eng, "nosuch", NULL, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND), "%s", vmig_error_message(err));
    vmig_error_free(err);
    cr_assert(not(g_file_test(stale, G_FILE_TEST_EXISTS)), "the dead vmigrate's probe is gone");
    cr_assert(g_file_test(live, G_FILE_TEST_IS_DIR), "a live engine's probe stays");
    g_rmdir(live);
}

Test(migrate, refused_up_front)
{
    start_guest("stay", 64, 0);
    int qemus = t_qemu_count(state);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.dest = "local:/nonexistent/vmig-dest";
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, "stay", &o, NULL, NULL, &st, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND));
    cr_assert(eq(str, (char *)vmig_error_message(err),
                 "destination state directory /nonexistent/vmig-dest does not exist"));
    vmig_error_free(err);
    cr_assert(eq(int, t_qemu_count(state), qemus), "no destination QEMU was started");
    expect_only("stay", "running");

    err = NULL;
    cr_assert(not(vmig_migrate(eng, "nosuch", &o, NULL, NULL, &st, &err)));
    vmig_error_free(err);
    err = NULL;
    o.dest = "tcp://elsewhere:4444";
    cr_assert(not(vmig_migrate(eng, "stay", &o, NULL, NULL, &st, &err)));
    cr_assert_not_null(strstr(vmig_error_message(err), "unknown destination"));
    vmig_error_free(err);
}

Test(migrate, to_another_state_directory)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    start_guest("mover", 64, 5);
    g_autofree char *other = t_state_dir_new();
    g_autofree char *dest = g_strdup_printf("local:%s", other);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.dest = dest;
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "mover", &o, NULL, NULL, NULL, &err), "%s",
              vmig_error_message(err));
    vmig_vm_info infos[4];
    cr_assert(eq(int, vmig_vm_list(eng, infos, 4, NULL), 0), "gone from the source");
    vmig_engine *other_eng = t_engine(other);
    cr_assert(eq(int, vmig_vm_list(other_eng, infos, 4, NULL), 1));
    cr_assert(eq(str, infos[0].status, "running"));
    cr_assert(vmig_guest_verify(other_eng, "mover", NULL, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_vm_stop(other_eng, "mover", 5000, NULL));
    vmig_engine_free(other_eng);
    t_state_dir_check_clean(other);
}

static void cancel_midway(void *opaque, const vmig_migration_stats *st)
{
    if (st->transferred_bytes > 0) {
        vmig_engine_cancel(opaque);
    }
}

Test(migrate, cancel_rolls_back)
{
    start_guest("cancelme", 256, 10);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 16;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, "cancelme", &o, cancel_midway, eng, &st, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_CANCELLED), "%s", vmig_error_message(err));
    cr_assert(eq(str, st.status, "cancelled"));
    vmig_error_free(err);
    err = NULL;
    expect_only("cancelme", "running");
    cr_assert(vmig_guest_verify(eng, "cancelme", NULL, &err), "%s", vmig_error_message(err));
}

Test(migrate, timeout_rolls_back)
{
    start_guest("slow", 256, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 8;
    o.timeout_s = 2;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, "slow", &o, NULL, NULL, &st, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_TIMEOUT), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "did not finish within 2 s"));
    vmig_error_free(err);
    expect_only("slow", "running");
}

Test(migrate, paused_migration_keeps_the_vm_paused_state)
{
    start_guest("cold", 64, 5);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = false;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "cold", &o, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    expect_only("cold", "running");
    cr_assert(ge(u64, st.downtime_ms, st.qemu_total_ms / 2),
              "a non-live migration is all downtime");
    cr_assert(vmig_guest_verify(eng, "cold", NULL, &err), "%s", vmig_error_message(err));
}

/* ---- the memory check catches damage in the stream ------------------------------------------ */

static bool incoming_done(eng_vm *dst)
{
    g_autoptr(json_object) info = qmp_conn_call(dst->qmp, "query-migrate", NULL, 0, 5000, NULL);
    json_object *v = NULL;
    return info && json_object_object_get_ex(info, "status", &v) &&
           strcmp(json_object_get_string(v), "completed") == 0;
}

/* Migrates "relayed" through the test proxy by hand (QMP only), returns the destination. */
static eng_vm *migrate_through_proxy(int64_t page, int *ret_hits)
{
    start_guest("relayed", 64, 0);
    vmig_error *err = NULL;
    g_autofree char *src_dir = g_build_filename(state, "relayed", NULL);
    g_autofree char *stage = g_build_filename(state, "relayed.incoming", NULL);
    g_autoptr(eng_vm) src = eng_vm_find(eng, src_dir, &err);
    cr_assert_not_null(src, "%s", vmig_error_message(err));
    cr_assert(eng_vm_connect_sync(src, &err), "%s", vmig_error_message(err));
    eng_launch_req req = {.spec = src->spec, .dir = stage, .accel = t_accel(), .incoming = true};
    eng_vm *dst = eng_vm_launch_sync(eng, &req, &err);
    cr_assert_not_null(dst, "%s", vmig_error_message(err));

    g_autofree char *in_sock = g_build_filename(stage, "migrate.sock", NULL);
    g_autofree char *proxy_sock = g_build_filename(state, "proxy.sock", NULL);
    g_autofree char *in_uri = g_strconcat("unix:", in_sock, NULL);
    g_autofree char *proxy_uri = g_strconcat("unix:", proxy_sock, NULL);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "uri", json_object_new_string(in_uri));
    cr_assert(qmp_conn_call_void(dst->qmp, "migrate-incoming", a, 5000, &err), "%s",
              vmig_error_message(err));
    t_proxy *proxy = t_proxy_start(proxy_sock, in_sock, page);
    a = json_object_new_object();
    json_object_object_add(a, "uri", json_object_new_string(proxy_uri));
    cr_assert(qmp_conn_call_void(src->qmp, "migrate", a, 5000, &err), "%s",
              vmig_error_message(err));
    for (int i = 0; i < 600 && !incoming_done(dst); i++) {
        g_usleep(100000);
    }
    cr_assert(incoming_done(dst), "the relayed migration completed");
    uint64_t bytes = 0;
    t_proxy_stop(proxy, &bytes, ret_hits);
    unlink(proxy_sock);
    cr_assert(gt(u64, bytes, 32u << 20), "the stream went through the relay");
    cr_assert(eng_vm_kill_sync(src, 5000, NULL));
    eng_vm_remove_dir(src_dir);
    return dst;
}

Test(migrate, check_passes_after_a_clean_relay)
{
    int hits = -1;
    g_autoptr(eng_vm) dst = migrate_through_proxy(-1, &hits);
    cr_assert(eq(int, hits, 0));
    vmig_error *err = NULL;
    uint64_t pages = 0;
    cr_assert(eng_guest_verify(dst, &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 15000));
    cr_assert(eng_vm_kill_sync(dst, 5000, NULL));
    eng_vm_remove_dir(dst->dir);
}

Test(migrate, check_catches_a_page_corrupted_in_the_stream)
{
    int hits = 0;
    g_autoptr(eng_vm) dst = migrate_through_proxy(1234, &hits);
    cr_assert(ge(int, hits, 1), "the relay found page 1234 in the stream");
    vmig_error *err = NULL;
    cr_assert(not(eng_guest_verify(dst, NULL, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_VERIFY));
    cr_assert_not_null(strstr(vmig_error_message(err), "1 of "), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "page 1234"), "%s", vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "corrupted contents"));
    vmig_error_free(err);
    cr_assert(eng_vm_kill_sync(dst, 5000, NULL));
    eng_vm_remove_dir(dst->dir);
}

/* ---- the CPU gate ---------------------------------------------------------------------------- */

/* Under KVM the destination offers its host CPU, here as an agent would report it (a
 * host-cpu.xml).  Under TCG it offers TCG's max model whatever its host CPU (issue 10), so a
 * local TCG destination cannot lack a feature: the refusal is unit-tested with recorded KVM
 * data (test_cpu_qemu) and test_cpu_gate migrates across vendors under TCG. */
Test(migrate, cpu_gate_refuses_a_destination_lacking_features)
{
    if (t_accel() != VMIG_ACCEL_KVM) {
        cr_skip_test("under TCG the destination offers TCG's max model, whatever its host CPU");
    }
    start_guest("cpuvm", 64, 0); /* -cpu qemu64: AMD, 64-bit */
    g_autofree char *other = t_state_dir_new();
    g_autofree char *host_cpu = g_build_filename(other, "host-cpu.xml", NULL);
    /* the destination host, as an agent would report it: a 32-bit CPU */
    cr_assert(g_file_set_contents(host_cpu,
                                  "<cpu><vendor>AMD</vendor><model>qemu32</model>"
                                  "</cpu>",
                                  -1, NULL));
    g_autofree char *dest = g_strdup_printf("local:%s", other);
    int qemus = t_qemu_count(state);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = dest;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, "cpuvm", &o, NULL, NULL, &st, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_CPU), "%s", vmig_error_message(err));
    const char *msg = vmig_error_message(err);
    cr_assert_not_null(strstr(msg, "the destination cannot run the CPU of VM 'cpuvm'"), "%s", msg);
    cr_assert_not_null(strstr(msg, "lacks: "), "%s", msg);
    cr_assert_not_null(strstr(msg, " lm"), "the missing features are named: %s", msg);
    cr_assert_not_null(strstr(msg, "VM 'cpuvm' is running on the source"), "%s", msg);
    vmig_error_free(err);
    err = NULL;
    cr_assert(eq(int, t_qemu_count(state), qemus), "refused before a destination QEMU started");
    cr_assert(eq(int, t_qemu_count(other), 0));
    expect_only("cpuvm", "running");
    cr_assert(vmig_guest_verify(eng, "cpuvm", NULL, &err), "%s", vmig_error_message(err));

    /* --force overrides it (the destination here is really this host, so it works) */
    o.force = true;
    cr_assert(vmig_migrate(eng, "cpuvm", &o, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, st.cpu_check, "forced"));
    vmig_engine *other_eng = t_engine(other);
    cr_assert(vmig_guest_verify(other_eng, "cpuvm", NULL, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_vm_stop(other_eng, "cpuvm", 5000, NULL));
    vmig_engine_free(other_eng);
    unlink(host_cpu);
    t_state_dir_check_clean(other);
}

typedef struct cmdline_probe {
    const char *stage;
    char cpu_arg[256];
} cmdline_probe;

/* While the migration runs, read the destination QEMU's -cpu argument from /proc. */
static void read_dest_cpu(void *opaque, const vmig_migration_stats *st)
{
    cmdline_probe *p = opaque;
    int pid = t_instance_pid(p->stage);
    g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
    g_autofree char *cmd = NULL;
    gsize len = 0;
    if (p->cpu_arg[0] || pid <= 0 || !g_file_get_contents(path, &cmd, &len, NULL)) {
        return;
    }
    for (gsize off = 0; off < len; off += strlen(cmd + off) + 1) {
        if (strcmp(cmd + off, "-cpu") == 0 && off + 5 < len) {
            g_strlcpy(p->cpu_arg, cmd + off + 5, sizeof(p->cpu_arg));
        }
    }
    (void)st;
}

Test(migrate, destination_runs_with_enforce)
{
    start_guest("strict", 128, 0);
    g_autofree char *stage = g_build_filename(state, "strict.incoming", NULL);
    cmdline_probe p = {.stage = stage};
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.bandwidth_mib_s = 64; /* a couple of seconds: progress is reported meanwhile */
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "strict", &o, read_dest_cpu, &p, NULL, &err), "%s",
              vmig_error_message(err));
    cr_assert(eq(str, p.cpu_arg, "qemu64,enforce"),
              "the destination refuses to start without every CPU feature the source gave");
}
