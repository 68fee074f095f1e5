/* The vmigrate command line, run as a user would: bad input gets a clear error and the right
 * exit status; the verbs work end to end on real QEMU. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <json-c/json.h>

#include "tests/support/t_util.h"

/* The CLI with these arguments, RUN(NULL) with none (no __VA_OPT__: cppcheck 2.10 lacks it). */
#define RUN(...)                                                                                   \
    ({                                                                                             \
        const char *const args_[] = {__VA_ARGS__, NULL};                                           \
        t_cli(args_);                                                                              \
    })

static void expect_fail(t_run_result r, int status, const char *needle)
{
    cr_expect(eq(int, r.status, status), "exit %d, stderr: %s", r.status, r.err);
    cr_expect_not_null(strstr(r.err, needle), "stderr lacks '%s': %s", needle, r.err);
    t_run_result_clear(&r);
}

Test(cli, usage_errors_exit_2_and_name_the_problem, .timeout = 60)
{
    expect_fail(RUN("frobnicate"), 2, "unknown command 'frobnicate'");
    expect_fail(RUN("--bogus", "vm", "list"), 2, "--bogus");
    expect_fail(RUN(NULL), 2, "no command given");
    expect_fail(RUN("migrate"), 2, "expected NAME and DEST, got 0 argument(s)");
    expect_fail(RUN("migrate", "--speed", "3", "a", "local"), 2, "unknown option '--speed'");
    expect_fail(RUN("migrate", "--max-downtime", "abc", "a", "local"), 2,
                "--max-downtime: 'abc' is not a whole number");
    expect_fail(RUN("migrate", "--bandwidth"), 2, "option '--bandwidth' needs a value");
    expect_fail(RUN("vm"), 2, "needs a subcommand");
    expect_fail(RUN("vm", "reboot", "x"), 2, "unknown subcommand 'reboot'");
    expect_fail(RUN("vm", "recover"), 2, "'vm recover' takes one VM NAME");
    expect_fail(RUN("vm", "recover", "--all"), 2, "unknown option '--all'");
    expect_fail(RUN("vm", "start", "--accel", "xen", "x.json"), 2, "'xen' is not an accelerator");
    expect_fail(RUN("demo", "--mem-mib", "4"), 2, "--mem-mib: '4' is not a whole number from 16");
    expect_fail(RUN("qmp", "/x.sock"), 2, "expected SOCKET COMMAND");
    expect_fail(RUN("qmp", "/x.sock", "query-status", "[1]"), 2, "must be a JSON object");
}

Test(cli, version_names_the_qemu_it_runs, .timeout = 60)
{
    int v = t_qemu_version();
    g_autofree char *want = g_strdup_printf("QEMU %d.%d.%d ", v / 10000, v / 100 % 100, v % 100);
    t_run_result r = RUN("version");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_assert_not_null(strstr(r.out, "vmigrate " VMIG_VERSION_STRING " (event loop: "), "%s",
                       r.out);
    cr_assert_not_null(strstr(r.out, want), "'%s' not in: %s", want, r.out);
    t_run_result_clear(&r);
    expect_fail(RUN("--qemu", "/nonexistent/qemu", "version"), 1, "cannot run /nonexistent/qemu");
}

Test(cli, help_is_there)
{
    const char *topics[] = {"vm", "migrate", "demo", "qmp", "agent", "key"};
    for (size_t i = 0; i < G_N_ELEMENTS(topics); i++) {
        t_run_result r = RUN("help", topics[i]);
        cr_expect(eq(int, r.status, 0));
        cr_expect_not_null(strstr(r.out, "Usage: vmigrate"));
        t_run_result_clear(&r);
    }
    t_run_result r = RUN("help", "migrate");
    cr_expect_not_null(strstr(r.out, "--max-downtime MS"));
    t_run_result_clear(&r);
}

Test(cli, bad_files_and_paths, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *spec = g_build_filename(dir, "vm.json", NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", "/nonexistent/vm.json"), 1,
                "/nonexistent/vm.json: No such file or directory");
    g_file_set_contents(spec, "{\"name\": \"x\", \"memory_mib\": 64,", -1, NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1, "not valid JSON");
    g_file_set_contents(spec, "{\"name\": \"x\", \"memory_mib\": 64, \"kernel\": \"nope.elf\"}", -1,
                        NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1, "nope.elf: No such file");
    g_file_set_contents(spec, "{\"name\": \"x\", \"memory_mb\": 64}", -1, NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1,
                "field 'memory_mb': unknown field");
    unlink(spec);
    expect_fail(RUN("--state-dir", dir, "migrate", "ghost", "local"), 1, "no VM named 'ghost'");
    expect_fail(RUN("--state-dir", dir, "vm", "stop", "ghost"), 1, "no VM named 'ghost'");
    expect_fail(RUN("--state-dir", dir, "vm", "recover", "ghost"), 1, "no VM named 'ghost'");
    expect_fail(RUN("qmp", "/nonexistent/qmp.sock", "query-status"), 1,
                "/nonexistent/qmp.sock: No such file or directory");
    expect_fail(RUN("qmp", "/etc/hostname", "query-status"), 1, "not a socket");
    /* a QEMU that cannot be run */
    g_file_set_contents(
        spec, "{\"name\": \"x\", \"memory_mib\": 64, \"kernel\": \"/etc/hostname\"}", -1, NULL);
    expect_fail(RUN("--state-dir", dir, "--qemu", "/nonexistent/qemu", "vm", "start", spec), 1,
                "cannot run /nonexistent/qemu");
    /* QEMU refuses the spec: its own words come through */
    g_file_set_contents(spec,
                        "{\"name\": \"x\", \"memory_mib\": 64, \"kernel\": \"/etc/hostname\","
                        " \"machine\": \"no-such-machine\"}",
                        -1, NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1, "unsupported machine type");
    /* QEMU opens its monitor, then finds the CPU model unknown and exits: not "started" */
    g_file_set_contents(spec,
                        "{\"name\": \"x\", \"memory_mib\": 64, \"kernel\": \"/etc/hostname\","
                        " \"cpu\": \"NoSuchCPU\"}",
                        -1, NULL);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1,
                "unable to find CPU model 'NoSuchCPU'");
    unlink(spec);
    t_state_dir_check_clean(dir);
}

/* A unix socket that speaks something other than QMP. */
typedef struct impostor {
    int lfd;
    pthread_t thread;
} impostor;

static void *serve(void *opaque)
{
    impostor *im = opaque;
    int fd = accept(im->lfd, NULL, NULL);
    if (fd >= 0) {
        const char msg[] = "220 smtp.example ESMTP ready\r\n";
        ssize_t w = write(fd, msg, sizeof(msg) - 1);
        (void)w;
        char buf[64];
        while (read(fd, buf, sizeof(buf)) > 0) {
        }
        close(fd);
    }
    return NULL;
}

Test(cli, socket_that_is_not_qemu, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *path = g_build_filename(dir, "imp.sock", NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    impostor im = {.lfd = socket(AF_UNIX, SOCK_STREAM, 0)};
    cr_assert(eq(int, bind(im.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0));
    cr_assert(eq(int, listen(im.lfd, 1), 0));
    pthread_create(&im.thread, NULL, serve, &im);
    expect_fail(RUN("qmp", path, "query-status"), 1, "not a QMP server");
    pthread_join(im.thread, NULL);
    close(im.lfd);
    unlink(path);
    t_state_dir_check_clean(dir);
}

static json_object *parse_json(const char *out)
{
    json_object *o = json_tokener_parse(out);
    cr_assert_not_null(o, "not JSON: %s", out);
    return o;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v = NULL;
    cr_assert(json_object_object_get_ex(o, key, &v), "no '%s' in %s", key,
              json_object_to_json_string(o));
    return json_object_get_string(v);
}

Test(cli, start_list_migrate_stop, .timeout = 240)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *spec = g_build_filename(dir, "guest.json", NULL);
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"cli-vm\", \"memory_mib\": 128, \"kernel\": \"%s\", "
        "\"append\": \"vmig.dirty_mib_s=10\"}",
        vmig_guest_kernel());
    g_file_set_contents(spec, json, -1, NULL);

    t_run_result r = RUN("--state-dir", dir, "vm", "start", spec);
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    t_run_result_clear(&r);
    expect_fail(RUN("--state-dir", dir, "vm", "start", spec), 1, "already running");

    /* a loaded test machine may take QEMU's main loop longer than vm list's default 100 ms */
    r = RUN("--state-dir", dir, "vm", "list", "--json", "--timeout", "5000");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *list = parse_json(r.out);
    cr_assert(eq(sz, json_object_array_length(list), 1));
    cr_assert(eq(str, (char *)jstr(json_object_array_get_idx(list, 0), "state"), "running"));
    json_object_put(list);
    t_run_result_clear(&r);

    if (t_qemu_loses_tcg_writes()) {
        /* The guest dirties memory: a live migration would corrupt it and is refused... */
        expect_fail(RUN("--state-dir", dir, "migrate", "--live", "cli-vm", "local"), 1,
                    "commit 03bfc2188f");
        /* ...unless the user takes the risk (the result is not checked here). */
        r = RUN("--state-dir", dir, "migrate", "--live", "--unsafe", "--max-downtime", "200",
                "--bandwidth", "500", "--json", "cli-vm", "local");
    } else {
        r = RUN("--state-dir", dir, "migrate", "--live", "--max-downtime", "200", "--bandwidth",
                "500", "--json", "cli-vm", "local");
    }
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *res = parse_json(r.out);
    cr_assert(eq(str, (char *)jstr(res, "status"), "completed"));
    const char *keys[] = {"total_ms",          "downtime_ms", "setup_ms",
                          "transferred_bytes", "passes",      "mbps"};
    for (size_t i = 0; i < G_N_ELEMENTS(keys); i++) {
        jstr(res, keys[i]);
    }
    json_object_put(res);
    t_run_result_clear(&r);

    r = RUN("--state-dir", dir, "vm", "list", "--timeout", "5000");
    cr_assert_not_null(strstr(r.out, "cli-vm"));
    cr_assert_not_null(strstr(r.out, "running"));
    t_run_result_clear(&r);

    r = RUN("--state-dir", dir, "migrate", "--json", "cli-vm", "local:/nonexistent");
    cr_assert(eq(int, r.status, 1));
    res = parse_json(r.out);
    cr_assert(eq(str, (char *)jstr(res, "status"), "failed"));
    cr_assert_not_null(strstr(jstr(res, "error"), "/nonexistent does not exist"));
    json_object_put(res);
    t_run_result_clear(&r);

    r = RUN("--state-dir", dir, "vm", "recover", "cli-vm");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_assert(eq(str, r.out, "VM 'cli-vm': nothing to recover\n"));
    t_run_result_clear(&r);

    r = RUN("--state-dir", dir, "vm", "stop", "cli-vm");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    t_run_result_clear(&r);
    unlink(spec);
    t_state_dir_check_clean(dir);
}

Test(cli, demo_json, .timeout = 240)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    g_autofree char *dir = t_state_dir_new();
    t_run_result r = RUN("--state-dir", dir, "demo", "--json", "--mem-mib", "128", "--dirty-mib-s",
                         "20");
    cr_assert(eq(int, r.status, 0), "%s%s", r.out, r.err);
    json_object *res = parse_json(r.out);
    cr_assert(eq(str, (char *)jstr(res, "status"), "completed"));
    json_object *v = NULL;
    cr_assert(json_object_object_get_ex(res, "verified", &v) && json_object_get_boolean(v));
    cr_assert(json_object_object_get_ex(res, "pages_checked", &v) &&
              json_object_get_int64(v) > 30000);
    json_object_put(res);
    t_run_result_clear(&r);
    t_state_dir_check_clean(dir);
}

/* The acceptance of the transport: the demo through a local agent with 4 multifd channels. */
Test(cli, demo_through_the_relay_with_4_channels, .timeout = 240)
{
    T_SKIP_IF_QEMU_LOSES_WRITES(); /* the demo migrates live, which 7.2 under TCG refuses */
    g_autofree char *dir = t_state_dir_new();
    t_run_result r = RUN("--state-dir", dir, "demo", "--json", "--mem-mib", "128",
                         "--parallel-connections", "4");
    cr_assert(eq(int, r.status, 0), "%s%s", r.out, r.err);
    json_object *res = parse_json(r.out);
    cr_assert(eq(str, (char *)jstr(res, "status"), "completed"));
    cr_assert(eq(str, (char *)jstr(res, "transport"), "relay"));
    json_object *v = NULL, *chans = NULL;
    cr_assert(json_object_object_get_ex(res, "verified", &v) && json_object_get_boolean(v));
    cr_assert(json_object_object_get_ex(res, "channels", &chans) &&
              json_object_is_type(chans, json_type_array));
    cr_assert(eq(sz, json_object_array_length(chans), (size_t)5), "main and 4 multifd");
    for (size_t i = 0; i < 5; i++) {
        json_object *c = json_object_array_get_idx(chans, i);
        cr_assert(eq(str, (char *)jstr(c, "kind"), i ? "multifd" : "main"));
        cr_assert(json_object_object_get_ex(c, "bytes_out", &v) && json_object_get_int64(v) > 0,
                  "channel %zu carried bytes", i);
    }
    /* reported (its size is a benchmark's target, and ASan builds are larger) */
    cr_assert(json_object_object_get_ex(res, "agent_peak_rss_kib", &v) &&
              json_object_get_int64(v) > 0);
    json_object_put(res);
    t_run_result_clear(&r);
    t_state_dir_check_clean(dir);
}

Test(cli, key_and_agent_command_lines, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *key = g_build_filename(dir, "k", NULL);
    t_run_result r = RUN("key", "new", key);
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    t_run_result_clear(&r);
    expect_fail(RUN("key", "new", key), 1, "File exists");
    expect_fail(RUN("key", "old"), 2, "expected 'key new FILE'");
    expect_fail(RUN("agent"), 2, "--key FILE is required");
    expect_fail(RUN("agent", "--key", key, "--accel", "xen"), 2, "'xen' is not an accelerator");
    expect_fail(RUN("--state-dir", dir, "agent", "--key", key, "--listen", "127.0.0.1:99999"), 1,
                "not a number from 0 to 65535");
    chmod(key, 0644);
    expect_fail(RUN("--state-dir", dir, "agent", "--key", key), 1, "chmod 600");
    expect_fail(RUN("--state-dir", dir, "migrate", "--key", key, "vm", "vmig://127.0.0.1:1"), 1,
                "chmod 600");
    chmod(key, 0600);
    expect_fail(RUN("--state-dir", dir, "migrate", "vm", "vmig://127.0.0.1:1"), 1,
                "give the agent's key file (--key FILE)");
    expect_fail(RUN("migrate", "--parallel-connections", "65", "vm", "local"), 2,
                "--parallel-connections: '65' is not a whole number from 1 to 64");
    unlink(key);
    t_state_dir_check_clean(dir);
}

/* Where io_uring_setup is refused, the engine runs on epoll and a migration still works. */
Test(cli, migrates_where_io_uring_is_refused, .timeout = 240)
{
    T_SKIP_IF_QEMU_LOSES_WRITES();
    const char *no_uring = getenv("VMIG_NO_URING");
    cr_assert_not_null(no_uring, "VMIG_NO_URING names the seccomp launcher");
    /* a copy: setenv() below may overwrite what getenv() returned */
    g_autofree char *cli = g_strdup(getenv("VMIG_CLI"));
    cr_assert_not_null(cli, "VMIG_CLI names the CLI");
    g_autofree char *dir = t_state_dir_new();
    unsetenv("VMIG_RING"); /* the engine must find out by itself */
    setenv("VMIG_CLI", no_uring, 1);
    t_run_result r = RUN(cli, "--state-dir", dir, "version", "--json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *v = parse_json(r.out);
    cr_assert(
        eq(str, (char *)jstr(v, "event_loop"), "epoll: io_uring_setup: Operation not permitted"));
    json_object_put(v);
    t_run_result_clear(&r);

    r = RUN(cli, "--state-dir", dir, "demo", "--json", "--mem-mib", "128", "--dirty-mib-s", "20");
    setenv("VMIG_CLI", cli, 1);
    cr_assert(eq(int, r.status, 0), "%s%s", r.out, r.err);
    json_object *res = parse_json(r.out);
    cr_assert(eq(str, (char *)jstr(res, "status"), "completed"));
    json_object *ok = NULL;
    cr_assert(json_object_object_get_ex(res, "verified", &ok) && json_object_get_boolean(ok));
    json_object_put(res);
    t_run_result_clear(&r);
    t_state_dir_check_clean(dir);
}

static char *cpudata(const char *name)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir);
    return g_build_filename(dir, "libvirt", name, NULL);
}

Test(cli, cpu_baseline_decode_compare, .timeout = 60)
{
    g_autofree char *i5 = cpudata("x86_64-cpuid-Core-i5-6600-json.xml");
    g_autofree char *gold = cpudata("x86_64-cpuid-Xeon-Gold-6148-json.xml");
    g_autofree char *ivb = cpudata("x86_64-cpuid-Core-i7-3770.xml");
    g_autofree char *kbl = cpudata("x86_64-cpuid-Core-i7-8550U.xml");
    g_autofree char *epyc = cpudata("x86_64-cpuid-EPYC-7502-32-Core.xml");

    t_run_result r = RUN("cpu", "baseline", i5, gold);
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_assert(eq(str, r.out,
                 "<cpu mode='custom' match='exact'>\n"
                 "  <model fallback='allow'>Skylake-Client</model>\n"
                 "  <vendor>Intel</vendor>\n"
                 "  <feature policy='require' name='hypervisor'/>\n"
                 "  <feature policy='require' name='ss'/>\n"
                 "  <feature policy='require' name='tsc_adjust'/>\n"
                 "  <feature policy='require' name='clflushopt'/>\n"
                 "  <feature policy='require' name='pdpe1gb'/>\n"
                 "</cpu>\n"));
    t_run_result_clear(&r);

    r = RUN("cpu", "baseline", "--qemu", i5, gold);
    cr_assert(eq(str, r.out, "Skylake-Client,+hypervisor,+ss,+tsc-adjust,+clflushopt,+pdpe1gb\n"));
    t_run_result_clear(&r);

    r = RUN("cpu", "baseline", "--json", "--migratable", ivb, kbl);
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *o = json_tokener_parse(r.out);
    cr_assert_not_null(o, "%s", r.out);
    cr_assert(
        eq(str, (char *)json_object_get_string(json_object_object_get(o, "model")), "IvyBridge"));
    cr_assert_null(strstr(r.out, "invtsc"), "--migratable drops invtsc");
    json_object_put(o);
    t_run_result_clear(&r);

    r = RUN("cpu", "baseline", "--features", i5, gold);
    cr_assert_not_null(strstr(r.out, "name='avx2'"), "--features lists the model's too");
    t_run_result_clear(&r);

    expect_fail(RUN("cpu", "baseline", ivb, epyc), 1,
                "CPU vendors do not match: CPU 1 is GenuineIntel, CPU 2 is AuthenticAMD");
    expect_fail(RUN("cpu", "baseline", "/nonexistent.xml"), 1, "/nonexistent.xml");
    expect_fail(RUN("cpu", "frob"), 2, "unknown subcommand 'frob'");

    g_autofree char *dir = t_state_dir_new();
    g_autofree char *guest = g_build_filename(dir, "guest.xml", NULL);
    cr_assert(g_file_set_contents(guest, "<cpu><model>IvyBridge</model></cpu>", -1, NULL));
    r = RUN("cpu", "compare", kbl, guest);
    cr_assert(eq(int, r.status, 3), "an i7-8550U host runs an IvyBridge guest, with more: %s",
              r.out);
    t_run_result_clear(&r);
    /* A host's CPU offers what KVM gives on it: the i7-3770's smx is no guest's to have, so
     * the i7-8550U runs everything an i7-3770 host can give a guest, and more (issue 10). */
    r = RUN("cpu", "compare", kbl, ivb);
    cr_assert(eq(int, r.status, 3), "%s", r.out);
    t_run_result_clear(&r);
    unlink(guest);
    t_state_dir_check_clean(dir);
    r = RUN("cpu", "compare", ivb, kbl);
    cr_assert(eq(int, r.status, 4));
    cr_assert_not_null(strstr(r.out, "incompatible: the host CPU lacks: "), "%s", r.out);
    cr_assert_not_null(strstr(r.out, "avx2"));
    t_run_result_clear(&r);
    r = RUN("cpu", "compare", ivb, ivb);
    cr_assert(eq(int, r.status, 0), "%s", r.out);
    t_run_result_clear(&r);

    r = RUN("cpu", "decode", "--qemu", epyc);
    cr_assert(g_str_has_prefix(r.out, "EPYC-Rome-v2,"), "%s", r.out);
    t_run_result_clear(&r);
}

Test(cli, cpu_host_export_round_trip, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *path = g_build_filename(dir, "host.json", NULL);
    t_run_result r = RUN("cpu", "host", "--export", "json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    cr_assert(g_file_set_contents(path, r.out, -1, NULL));
    t_run_result_clear(&r);
    t_run_result a = RUN("cpu", "host", "--qemu");
    t_run_result b = RUN("cpu", "decode", "--qemu", path);
    cr_assert(eq(int, a.status, 0), "%s", a.err);
    cr_assert(eq(str, a.out, b.out), "decoding the export elsewhere gives the same CPU");
    t_run_result_clear(&a);
    t_run_result_clear(&b);
    unlink(path);
    t_state_dir_check_clean(dir);
}

Test(cli, cpu_models_and_host_model_from_a_live_qemu, .timeout = 120)
{
    g_autofree char *dir = t_state_dir_new();
    t_run_result r = RUN("--state-dir", dir, "cpu", "models", "--from-qemu", "--json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *arr = json_tokener_parse(r.out);
    cr_assert_not_null(arr);
    bool found = false;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *m = json_object_array_get_idx(arr, i);
        if (!strcmp(json_object_get_string(json_object_object_get(m, "name")), "IvyBridge-IBRS")) {
            found = true;
            cr_assert(eq(str,
                         (char *)json_object_get_string(json_object_object_get(m, "versioned")),
                         "IvyBridge-v2"));
            cr_assert_not_null(
                strstr(json_object_get_string(json_object_object_get(m, "features")), "spec-ctrl"));
        }
    }
    cr_assert(found, "QEMU's IvyBridge-IBRS alias is read from QEMU");
    json_object_put(arr);
    t_run_result_clear(&r);

    r = RUN("--state-dir", dir, "cpu", "host", "--qemu-model", "--json");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    json_object *o = json_tokener_parse(r.out);
    cr_assert_not_null(o, "%s", r.out);
    cr_assert_not_null(json_object_object_get(o, "model"));
    json_object_put(o);
    t_run_result_clear(&r);
    t_state_dir_check_clean(dir);
}

/* ---- the state directory and the VM lock (issue 11, items 1 to 3) -------------------------- */

Test(cli, a_state_directory_others_control_is_refused, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *theirs = g_build_filename(dir, "theirs", NULL);
    cr_assert(eq(int, mkdir(theirs, 0700), 0));
    if (geteuid() == 0) {
        cr_assert(eq(int, chown(theirs, 65534, 65534), 0));
        expect_fail(RUN("--state-dir", theirs, "vm", "list"), 1, "is owned by uid 65534");
        expect_fail(RUN("--state-dir", theirs, "vm", "list"), 1, "controls the VMs' monitors");
        cr_assert(eq(int, chown(theirs, 0, 0), 0));
    }
    cr_assert(eq(int, chmod(theirs, 0777), 0));
    expect_fail(RUN("--state-dir", theirs, "vm", "list"), 1,
                "may be written by others (mode 0777)");
    cr_assert(eq(int, chmod(theirs, 0700), 0));
    g_autofree char *link = g_build_filename(dir, "link", NULL);
    cr_assert(eq(int, symlink(theirs, link), 0));
    expect_fail(RUN("--state-dir", link, "vm", "list"), 1, "is a symbolic link");
    t_run_result r = RUN("--state-dir", theirs, "vm", "list");
    cr_assert(eq(int, r.status, 0), "a directory of its own is fine: %s", r.err);
    t_run_result_clear(&r);
    unlink(link);
    rmdir(theirs);
    t_state_dir_check_clean(dir);
}

/* A VM directory that is a symlink: stopping "it" must not delete the files it points at. */
Test(cli, stop_never_deletes_through_a_symlink, .timeout = 60)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *victim = t_state_dir_new();
    g_autofree char *precious = g_build_filename(victim, "precious", NULL);
    cr_assert(g_file_set_contents(precious, "keep me", -1, NULL));
    g_autofree char *vmdir = g_build_filename(dir, "evil", NULL);
    cr_assert(eq(int, symlink(victim, vmdir), 0));
    t_run_result r = RUN("--state-dir", dir, "vm", "stop", "evil");
    cr_assert(ne(int, r.status, 0), "there is no VM 'evil': %s", r.out);
    cr_assert_not_null(strstr(r.err, "no VM named 'evil'"), "%s", r.err);
    t_run_result_clear(&r);
    cr_assert(g_file_test(precious, G_FILE_TEST_EXISTS), "the link's target is untouched");
    unlink(vmdir);
    unlink(precious);
    t_state_dir_check_clean(victim);
    t_state_dir_check_clean(dir);
}

/* Two starts of one spec 20 ms apart: one VM runs, the other start fails and touches nothing
 * of the winner's (before the lock, the loser's clean-up deleted its qemu.pid and spec.json). */
Test(cli, two_starts_of_one_vm_leave_one_running, .timeout = 120)
{
    g_autofree char *dir = t_state_dir_new();
    g_autofree char *spec = g_build_filename(dir, "..", "race-spec.json", NULL);
    vmig_spec *s = t_guest_spec("race", 64, 0);
    g_autofree char *json = vmig_spec_to_json(s);
    vmig_spec_free(s);
    cr_assert(g_file_set_contents(spec, json, -1, NULL));
    g_autofree char *sh = g_strdup_printf(
        "\"$VMIG_CLI\" --state-dir '%s' vm start '%s' 2>&1 & p=$!; sleep 0.02; "
        "\"$VMIG_CLI\" --state-dir '%s' vm start '%s' 2>&1; b=$?; wait $p; a=$?; "
        "echo \"exit $a $b\"",
        dir, spec, dir, spec);
    const char *const args[] = {"/bin/sh", "-c", sh, NULL};
    t_run_result r = t_run(args);
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    bool one_won = strstr(r.out, "exit 0 1") || strstr(r.out, "exit 1 0");
    cr_assert(one_won, "exactly one start succeeds: %s", r.out);
    cr_assert(strstr(r.out, "is busy") || strstr(r.out, "already running"),
              "the loser says why: %s", r.out);
    t_run_result_clear(&r);
    g_autofree char *pid = g_build_filename(dir, "race", "qemu.pid", NULL);
    g_autofree char *sj = g_build_filename(dir, "race", "spec.json", NULL);
    cr_assert(g_file_test(pid, G_FILE_TEST_EXISTS), "the winner's pid file is there");
    cr_assert(g_file_test(sj, G_FILE_TEST_EXISTS), "the winner's spec is there");
    r = RUN("--state-dir", dir, "vm", "list", "--timeout", "5000");
    cr_assert_not_null(strstr(r.out, "race"), "%s", r.out);
    cr_assert_null(strstr(r.out, "dead"), "%s", r.out);
    t_run_result_clear(&r);
    r = RUN("--state-dir", dir, "vm", "stop", "race");
    cr_assert(eq(int, r.status, 0), "%s", r.err);
    t_run_result_clear(&r);
    unlink(spec);
    t_state_dir_check_clean(dir);
}
