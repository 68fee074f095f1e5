/*
 * The job state file as another process reads it (engine/jobctl.c): every value type-checked,
 * whatever is wrong or missing counted as unknown, and the refusals of the control calls that
 * need no QEMU to decide.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "engine/engine.h"
#include "engine/jobctl.h"
#include "tests/support/t_util.h"

static bool parse(const char *text, eng_jobfile *f, vmig_error **errp)
{
    return eng_jobfile_parse(text, strlen(text), "job.json", f, errp);
}

static void expect_refused(const char *text, const char *needle)
{
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(not(parse(text, &f, &err)), "accepted: %s", text);
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_INVAL));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), needle), NULL)), "%s",
              vmig_error_message(err));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "job.json"), NULL)));
    vmig_error_free(err);
}

Test(jobfile, a_whole_file)
{
    const char *text =
        "{\"job\":\"migrate\",\"vm\":\"web\",\"state\":\"migrating\",\"holder\":\"source\","
        "\"engine_pid\":4242,\"was_running\":true,\"progress\":0.25,\"mode\":\"precopy\","
        "\"policy\":\"none\",\"postcopy_armed\":false,"
        "\"stats\":{\"status\":\"active\",\"total_ms\":1500,\"transferred_bytes\":1048576,"
        "\"remaining_bytes\":3145728,\"total_bytes\":4194304,\"dirty_pages_rate\":512,"
        "\"passes\":2,\"mbps\":33.5,\"downtime_ms\":0,\"downtime_limit_ms\":300,"
        "\"throttle_pct\":20,\"postcopy_requests\":0,\"dirty_rate_mib_s\":16.5},"
        "\"actions\":[{\"at_ms\":100,\"what\":\"downtime limit 150 ms\"}],"
        "\"error\":\"none yet\"}";
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(parse(text, &f, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, f.job, "migrate"));
    cr_assert(eq(str, f.state, "migrating"));
    cr_assert(eq(str, f.vm, "web"));
    cr_assert(eq(str, f.holder, "source"));
    cr_assert(eq(str, f.mode, "precopy"));
    cr_assert(eq(str, f.policy, "none"));
    cr_assert(eq(str, f.status, "active"));
    cr_assert(eq(str, f.error, "none yet"));
    cr_assert(eq(int, f.engine_pid, 4242));
    cr_assert(eq(int, f.was_running, 1));
    cr_assert(eq(int, f.postcopy_armed, 0));
    cr_assert(eq(dbl, f.progress, 0.25));
    cr_assert(eq(i64, f.total_ms, 1500));
    cr_assert(eq(i64, f.transferred_bytes, 1048576));
    cr_assert(eq(i64, f.remaining_bytes, 3145728));
    cr_assert(eq(i64, f.total_bytes, 4194304));
    cr_assert(eq(i64, f.dirty_pages_rate, 512));
    cr_assert(eq(i64, f.passes, 2));
    cr_assert(eq(dbl, f.mbps, 33.5));
    cr_assert(eq(i64, f.downtime_ms, 0));
    cr_assert(eq(i64, f.downtime_limit_ms, 300));
    cr_assert(eq(i64, f.throttle_pct, 20));
    cr_assert(eq(i64, f.postcopy_requests, 0));
    cr_assert(eq(dbl, f.dirty_rate_mib_s, 16.5));
    cr_assert(eq(sz, f.n_actions, 1));
    cr_assert(eq(u64, f.actions[0].at_ms, 100));
    cr_assert(eq(str, f.actions[0].what, "downtime limit 150 ms"));
    cr_assert(not(eng_jobfile_final(&f)));
}

Test(jobfile, the_minimum_is_a_job_and_its_state)
{
    eng_jobfile f;
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"cancelled\"}", &f, NULL));
    cr_assert(eng_jobfile_final(&f));
    cr_assert(eq(int, f.engine_pid, -1));
    cr_assert(eq(int, f.was_running, -1));
    cr_assert(eq(dbl, f.progress, -1));
    cr_assert(eq(i64, f.total_bytes, -1));
    cr_assert(eq(str, f.holder, ""));
    cr_assert(eq(sz, f.n_actions, 0));
}

Test(jobfile, malformed_files_are_refused_and_named)
{
    expect_refused("", "empty");
    expect_refused("{\"job\":\"migrate\",\"state\":", "not JSON");
    expect_refused("{\"job\":\"migrate\",\"state\":\"migrating\"} {}", "text after");
    expect_refused("[\"job\",\"state\"]", "not a JSON object");
    expect_refused("\"migrating\"", "not a JSON object");
    expect_refused("{\"state\":\"migrating\"}", "not a job file");
    expect_refused("{\"job\":\"migrate\"}", "not a job file");
    expect_refused("{\"job\":\"migrate\",\"state\":7}", "not a job file");
    expect_refused("{\"job\":\"migrate\",\"state\":\"\"}", "not a job file");
    expect_refused("{\"job\":null,\"state\":\"migrating\"}", "not a job file");
    expect_refused("{\"job\":\"migrate\",\"state\":\"\x9d\x9emigrating\"}", "not text");
    /* nesting beyond the tokenizer's depth */
    GString *deep = g_string_new("{\"job\":\"migrate\",\"state\":\"migrating\",\"x\":");
    for (int i = 0; i < 100; i++) {
        g_string_append_c(deep, '[');
    }
    for (int i = 0; i < 100; i++) {
        g_string_append_c(deep, ']');
    }
    g_string_append_c(deep, '}');
    expect_refused(deep->str, "not JSON");
    g_string_free(deep, TRUE);
    /* whitespace after the object is fine (a newline at the end) */
    eng_jobfile f;
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\"}\n  ", &f, NULL));
}

Test(jobfile, text_is_bounded_by_its_length_not_a_nul)
{
    const char text[] = "{\"job\":\"migrate\",\"state\":\"migrating\"}garbage";
    eng_jobfile f;
    cr_assert(eng_jobfile_parse(text, strlen(text) - 7, "job.json", &f, NULL));
    cr_assert(not(eng_jobfile_parse(text, sizeof(text), "job.json", &f, NULL)));
}

Test(jobfile, wrong_types_and_ranges_are_unknown)
{
    const char *text =
        "{\"job\":\"migrate\",\"state\":\"migrating\",\"holder\":3,\"engine_pid\":\"4242\","
        "\"was_running\":\"yes\",\"progress\":\"half\",\"mode\":[],\"policy\":{},"
        "\"postcopy_armed\":1,\"error\":false,"
        "\"stats\":{\"status\":null,\"total_ms\":-5,\"transferred_bytes\":1.5,"
        "\"remaining_bytes\":\"1\",\"total_bytes\":true,\"mbps\":-3,\"passes\":{},"
        "\"dirty_rate_mib_s\":NaN,\"downtime_limit_ms\":99999999999999999999999}}";
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(parse(text, &f, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, f.holder, ""));
    cr_assert(eq(str, f.mode, ""));
    cr_assert(eq(str, f.policy, ""));
    cr_assert(eq(str, f.error, ""));
    cr_assert(eq(str, f.status, ""));
    cr_assert(eq(int, f.engine_pid, -1));
    cr_assert(eq(int, f.was_running, -1));
    cr_assert(eq(int, f.postcopy_armed, -1));
    cr_assert(eq(dbl, f.progress, -1));
    cr_assert(eq(i64, f.total_ms, -1));
    cr_assert(eq(i64, f.transferred_bytes, -1));
    cr_assert(eq(i64, f.remaining_bytes, -1));
    cr_assert(eq(i64, f.total_bytes, -1));
    cr_assert(eq(dbl, f.mbps, -1));
    cr_assert(eq(i64, f.passes, -1));
    cr_assert(eq(dbl, f.dirty_rate_mib_s, -1));
    /* json-c saturates integers past int64: large, not negative */
    cr_assert(gt(i64, f.downtime_limit_ms, 0));
}

Test(jobfile, stats_of_the_wrong_type_are_ignored)
{
    eng_jobfile f;
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"stats\":[1,2],"
                    "\"actions\":{\"at_ms\":1}}",
                    &f, NULL));
    cr_assert(eq(i64, f.total_ms, -1));
    cr_assert(eq(sz, f.n_actions, 0));
}

Test(jobfile, pids_out_of_range)
{
    eng_jobfile f;
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"engine_pid\":0}", &f, NULL));
    cr_assert(eq(int, f.engine_pid, -1));
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"engine_pid\":-7}", &f, NULL));
    cr_assert(eq(int, f.engine_pid, -1));
    cr_assert(
        parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"engine_pid\":4294967297}", &f, NULL));
    cr_assert(eq(int, f.engine_pid, -1));
}

Test(jobfile, progress_is_clamped)
{
    eng_jobfile f;
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"progress\":7}", &f, NULL));
    cr_assert(eq(dbl, f.progress, 1));
    cr_assert(parse("{\"job\":\"migrate\",\"state\":\"migrating\",\"progress\":-0.5}", &f, NULL));
    cr_assert(eq(dbl, f.progress, -1));
}

Test(jobfile, strings_are_cut_and_cleaned_for_terminals)
{
    g_autofree char *long_state = g_strnfill(200, 'x');
    /* "é" is two bytes: 7 of them leave the 15-byte field cut inside the 8th */
    g_autofree char *text = g_strdup_printf(
        "{\"job\":\"mig\\u001b[2Jrate\",\"state\":\"%s\",\"holder\":\"ééééééééé\","
        "\"error\":\"line\\nbreak\\u007f\"}",
        long_state);
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(parse(text, &f, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, f.job, "mig?[2Jrate"));
    cr_assert(eq(sz, strlen(f.state), sizeof(f.state) - 1));
    cr_assert(g_utf8_validate(f.holder, -1, NULL), "cut inside a character: %s", f.holder);
    cr_assert(eq(str, f.holder, "ééééééé"));
    cr_assert(eq(str, f.error, "line?break?"));
}

Test(jobfile, the_last_actions_are_kept_in_order_malformed_ones_skipped)
{
    GString *t = g_string_new("{\"job\":\"migrate\",\"state\":\"migrating\",\"actions\":[");
    for (int i = 0; i < 40; i++) {
        g_string_append_printf(t, "%s{\"at_ms\":%d,\"what\":\"step %d\"}", i ? "," : "", i, i);
    }
    g_string_append(t, ",{\"at_ms\":-1,\"what\":\"negative\"},{\"what\":\"no time\"},"
                       "{\"at_ms\":50},7,null,{\"at_ms\":60,\"what\":[]}]}");
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(parse(t->str, &f, &err), "%s", vmig_error_message(err));
    g_string_free(t, TRUE);
    cr_assert(eq(sz, f.n_actions, VMIG_JOBINFO_ACTIONS_MAX));
    for (size_t i = 0; i < f.n_actions; i++) {
        int step = 40 - VMIG_JOBINFO_ACTIONS_MAX + (int)i;
        g_autofree char *want = g_strdup_printf("step %d", step);
        cr_assert(eq(u64, f.actions[i].at_ms, (uint64_t)step));
        cr_assert(eq(str, f.actions[i].what, want));
    }
}

/* ---- reading the file from a directory ---------------------------------------------------- */

Test(jobfile, read_absent_symlinked_or_not_a_file)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *path = g_build_filename(dir, ENG_JOB_FILE, NULL);
    eng_jobfile f;
    vmig_error *err = NULL;
    cr_assert(not(eng_jobfile_read(dir, &f, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND));
    vmig_error_free(err);
    err = NULL;

    g_autofree char *target = g_build_filename(dir, "elsewhere.json", NULL);
    cr_assert(
        g_file_set_contents(target, "{\"job\":\"migrate\",\"state\":\"migrating\"}", -1, NULL));
    cr_assert(eq(int, symlink(target, path), 0));
    cr_assert(not(eng_jobfile_read(dir, &f, &err)), "a link is not followed");
    vmig_error_free(err);
    err = NULL;
    g_unlink(path);

    cr_assert(eq(int, g_mkdir(path, 0700), 0));
    cr_assert(not(eng_jobfile_read(dir, &f, &err)));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "not a regular file"), NULL)));
    vmig_error_free(err);
    err = NULL;
    g_rmdir(path);

    g_autofree char *big = g_strnfill(ENG_JOBFILE_MAX + 10, ' ');
    cr_assert(g_file_set_contents(path, big, -1, NULL));
    cr_assert(not(eng_jobfile_read(dir, &f, &err)));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "too large"), NULL)), "%s",
              vmig_error_message(err));
    vmig_error_free(err);
    err = NULL;

    cr_assert(g_file_set_contents(path, "{\"job\":\"migrate\",\"state\":\"failed\"}", -1, NULL));
    cr_assert(eng_jobfile_read(dir, &f, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, f.state, "failed"));
    g_unlink(path);
    g_unlink(target);
    g_rmdir(dir);
}

/* ---- the control calls' refusals, decided from the job file alone -------------------------- */

static char *state;
static vmig_engine *eng;
static char *vm_dir;

static void setup(void)
{
    state = t_state_dir_new();
    eng = t_engine(state);
    vm_dir = g_build_filename(state, "web", NULL);
    cr_assert(eq(int, g_mkdir(vm_dir, 0700), 0));
}

static void teardown(void)
{
    g_autofree char *job = g_build_filename(vm_dir, ENG_JOB_FILE, NULL);
    g_unlink(job);
    g_rmdir(vm_dir);
    g_free(vm_dir);
    vmig_engine_free(eng);
    g_rmdir(state);
    g_free(state);
}

static void write_job(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void write_job(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *text = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_autofree char *path = g_build_filename(vm_dir, ENG_JOB_FILE, NULL);
    cr_assert(g_file_set_contents(path, text, -1, NULL));
}

static void expect_state_error(bool ok, vmig_error *err, const char *needle)
{
    cr_assert(not(ok));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_STATE), "%s",
              err ? vmig_error_message(err) : "no error");
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), needle), NULL)), "%s",
              vmig_error_message(err));
    vmig_error_free(err);
}

TestSuite(control, .init = setup, .fini = teardown, .timeout = 20);

Test(control, without_a_job)
{
    vmig_error *err = NULL;
    bool ok = vmig_migration_abort(eng, "web", NULL, &err);
    expect_state_error(ok, err, "no migration of VM 'web' is running");
    err = NULL;
    ok = vmig_migration_set_speed(eng, "web", 10, &err);
    expect_state_error(ok, err, "no migration of VM 'web' is running");
    vmig_jobinfo j;
    cr_assert(vmig_jobinfo_get(eng, "web", &j, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, j.state, "none"));
    cr_assert(eq(str, j.job, ""));
    cr_assert(eq(str, j.last_state, ""));
    cr_assert(eq(i64, j.total_bytes, -1));
}

Test(control, after_a_job_ended)
{
    write_job("{\"job\":\"migrate\",\"state\":\"cancelled\",\"engine_pid\":%d,"
              "\"error\":\"cancelled by another process\"}",
              getpid());
    vmig_error *err = NULL;
    bool ok = vmig_migration_postcopy(eng, "web", &err);
    expect_state_error(ok, err, "(the last one ended: cancelled)");
    err = NULL;
    vmig_jobinfo j;
    cr_assert(vmig_jobinfo_get(eng, "web", &j, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, j.state, "none"));
    cr_assert(eq(str, j.last_state, "cancelled"));
    cr_assert(eq(str, j.error, "cancelled by another process"));
}

Test(control, an_engine_that_is_gone)
{
    /* a pid that cannot exist (above the kernel's pid_max limit of 2^22) */
    write_job("{\"job\":\"migrate\",\"state\":\"migrating\",\"engine_pid\":%d}", 1 << 23);
    vmig_error *err = NULL;
    bool ok = vmig_migration_abort(eng, "web", NULL, &err);
    expect_state_error(ok, err, "'vmigrate vm recover web'");
    err = NULL;
    ok = vmig_migration_set_max_downtime(eng, "web", 100, &err);
    expect_state_error(ok, err, "is gone");
}

Test(control, post_copy_and_a_destination_that_holds_the_vm)
{
    write_job("{\"job\":\"migrate\",\"state\":\"migrating\",\"engine_pid\":%d,"
              "\"holder\":\"source\",\"mode\":\"postcopy\"}",
              getpid());
    vmig_error *err = NULL;
    bool ok = vmig_migration_abort(eng, "web", NULL, &err);
    expect_state_error(ok, err,
                       "the destination already runs VM 'web': a post-copy migration cannot be "
                       "cancelled");
    write_job("{\"job\":\"migrate\",\"state\":\"finishing\",\"engine_pid\":%d,"
              "\"holder\":\"destination\"}",
              getpid());
    err = NULL;
    ok = vmig_migration_abort(eng, "web", NULL, &err);
    expect_state_error(ok, err, "the destination already runs VM 'web'");
    err = NULL;
    ok = vmig_migration_set_speed(eng, "web", 0, &err);
    expect_state_error(ok, err, "the destination already runs VM 'web'");
}

Test(control, a_broken_job_file_is_named)
{
    write_job("{\"job\":");
    vmig_error *err = NULL;
    vmig_jobinfo j;
    cr_assert(not(vmig_jobinfo_get(eng, "web", &j, &err)));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "VM 'web': its job file"), NULL)), "%s",
              vmig_error_message(err));
    vmig_error_free(err);
}

Test(control, arguments_out_of_range_name_the_value)
{
    vmig_error *err = NULL;
    cr_assert(not(vmig_migration_set_max_downtime(eng, "web", 0, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_INVAL));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "0 ms"), NULL)));
    vmig_error_free(err);
    err = NULL;
    cr_assert(not(vmig_migration_set_speed(eng, "web", -3, &err)));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "-3 MiB/s"), NULL)));
    vmig_error_free(err);
    err = NULL;
    vmig_dirtyrate_info d;
    cr_assert(not(vmig_dirtyrate(eng, "web", 61, &d, &err)));
    cr_assert(not(eq(ptr, strstr(vmig_error_message(err), "61 s"), NULL)));
    vmig_error_free(err);
    err = NULL;
    cr_assert(not(vmig_migration_abort(eng, "../web", NULL, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_INVAL));
    vmig_error_free(err);
    err = NULL;
    cr_assert(not(vmig_migration_abort(eng, "nosuch", NULL, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND));
    vmig_error_free(err);
}
