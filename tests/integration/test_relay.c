/*
 * Migration to another host through the relay and a destination agent (issue 8): the agent is
 * a real `vmigrate agent` process with its own state directory (and, when run as root, its
 * own network namespace); both QEMUs are real; memory is verified on the destination.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/json.h"
#include "engine/engine.h"
#include "tests/support/t_util.h"
#include "transport/wire.h"

#define READY_MS 120000

static char *state; /* the source's */
static vmig_engine *eng;

typedef t_agent agent;

static agent ag;

static char *agent_log_text(const agent *a)
{
    char *text = NULL;
    g_file_get_contents(a->log, &text, NULL, NULL);
    return text ? text : g_strdup("");
}

static void agent_stop(agent *a)
{
    if (a->pid > 0) {
        kill(a->pid, SIGTERM);
        int status = 0;
        cr_assert(eq(int, waitpid(a->pid, &status, 0), a->pid));
        a->pid = -1;
    }
    if (a->dir) {
        g_autofree char *needle = g_strconcat(a->dir, "/", NULL);
        cr_assert(eq(int, t_qemu_count_settled(needle), 0), "no QEMU is left in %s", a->dir);
        t_state_dir_check_clean(a->dir); /* fails the test on what is left; removes it */
    }
    t_agent_free(a);
}

static void setup(void)
{
    state = t_state_dir_new();
    eng = t_engine(state);
    t_agent_start(&ag, NULL, "127.0.0.1");
}

static void teardown(void)
{
    agent_stop(&ag);
    t_engine_teardown(eng, state);
}

TestSuite(relay, .init = setup, .fini = teardown, .timeout = 300);

static void start_guest(const char *name, int mem, int rate)
{
    g_autoptr(vmig_spec) s = t_guest_spec(name, mem, rate);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_start(eng, s, t_accel(), &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

/* Checks every page on the agent's side, then stops the VM there. */
static void verify_at_agent(const agent *a, const char *name)
{
    vmig_engine *de = t_engine(a->dir);
    vmig_error *err = NULL;
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(de, name, &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 1000));
    cr_assert(vmig_vm_stop(de, name, 10000, &err), "%s", vmig_error_message(err));
    vmig_engine_free(de);
}

static bool source_running(const char *name)
{
    vmig_vm_info infos[4];
    int n = vmig_vm_list(eng, infos, 4, NULL);
    return n == 1 && strcmp(infos[0].name, name) == 0;
}

/* A migration through the relay with @channels multifd channels (0: one stream), checked. */
static void migrate_channels(const char *name, int channels, int dirty)
{
    if (t_qemu_loses_tcg_writes()) {
        dirty = 0; /* that QEMU loses a dirtying guest's writes (a skip here would leave the
                    * suite's agent running: criterion runs no .fini after a skip) */
    }
    start_guest(name, 128, dirty);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = ag.dest;
    o.key_file = ag.key;
    o.parallel_connections = channels;
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, name, &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    while (!vmig_job_finished(j)) {
        cr_assert(ge(int, vmig_engine_run(eng, 500, &err), 0), "%s", vmig_error_message(err));
    }
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    vmig_channel_stats ch[70];
    size_t n = vmig_job_channels(j, ch, 70);
    cr_assert(eq(sz, n, (size_t)(channels + 1)), "main and %d multifd channel(s), got %zu",
              channels, n);
    cr_assert(eq(str, ch[0].kind, "main"));
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(not(ch[i].failed));
        if (i > 0) {
            cr_assert(eq(str, ch[i].kind, "multifd"));
            cr_assert(eq(u32, ch[i].index, (uint32_t)(i - 1)), "multifd channels by id");
            cr_assert(gt(u64, ch[i].bytes_out, 1 << 20), "multifd %zu carried pages", i - 1);
        }
        total += ch[i].bytes_out;
    }
    vmig_migration_stats st;
    vmig_job_stats(j, &st);
    cr_assert(ge(u64, total, st.transferred_bytes), "the relay carried what QEMU sent: %lu < %lu",
              (unsigned long)total, (unsigned long)st.transferred_bytes);
    vmig_job_free(j);
    cr_assert(eq(int, vmig_vm_list(eng, NULL, 0, NULL), 0), "the source is retired");
    verify_at_agent(&ag, name);
}

Test(relay, one_stream)
{
    migrate_channels("r0", 0, 0);
}

Test(relay, multifd_1)
{
    migrate_channels("r1", 1, 0);
}

Test(relay, multifd_2_dirtying)
{
    migrate_channels("r2", 2, 8);
}

Test(relay, multifd_4)
{
    migrate_channels("r4", 4, 0);
}

Test(relay, multifd_8)
{
    migrate_channels("r8", 8, 0);
}

/* One agent serves two migrations at once, each with its own token and channels. */
Test(relay, two_migrations_at_once_through_one_agent)
{
    start_guest("twin-a", 128, 0);
    start_guest("twin-b", 128, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = ag.dest;
    o.key_file = ag.key;
    o.parallel_connections = 2;
    vmig_error *err = NULL;
    vmig_job *a = vmig_migrate_start(eng, "twin-a", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(a, "%s", vmig_error_message(err));
    vmig_job *b = vmig_migrate_start(eng, "twin-b", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(b, "%s", vmig_error_message(err));
    bool overlapped = false;
    while (!vmig_job_finished(a) || !vmig_job_finished(b)) {
        cr_assert(ge(int, vmig_engine_run(eng, 100, &err), 0), "%s", vmig_error_message(err));
        overlapped |= vmig_job_get_state(a) == VMIG_JOB_MIGRATING &&
                      vmig_job_get_state(b) == VMIG_JOB_MIGRATING;
    }
    cr_assert(eq(int, vmig_job_get_state(a), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(a)));
    cr_assert(eq(int, vmig_job_get_state(b), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(b)));
    if (!overlapped) {
        cr_log_warn("the two migrations did not overlap in MIGRATING on this run");
    }
    vmig_channel_stats ch[4];
    cr_assert(eq(sz, vmig_job_channels(a, ch, 4), (size_t)3));
    cr_assert(eq(sz, vmig_job_channels(b, ch, 4), (size_t)3));
    vmig_job_free(a);
    vmig_job_free(b);
    verify_at_agent(&ag, "twin-a");
    verify_at_agent(&ag, "twin-b");
}

/* The source relay holds the main channel back: its multifd channels reach the agent first,
 * and the agent still connects main to QEMU first (QEMU 7.2 takes the first as main). */
Test(relay, main_channel_delayed)
{
    g_setenv("VMIG_TEST_DELAY_MAIN_MS", "1500", TRUE);
    migrate_channels("late", 4, 0);
    g_unsetenv("VMIG_TEST_DELAY_MAIN_MS");
    g_autofree char *log = agent_log_text(&ag);
    const char *first_multifd = strstr(log, "data connection multifd");
    const char *main_in = strstr(log, "data connection main");
    cr_assert(first_multifd && main_in && first_multifd < main_in,
              "multifd reached the agent before main:\n%s", log);
    cr_assert(strstr(log, "channel main 0 (order 0)") != NULL, "main went to QEMU first:\n%s", log);
}

/* The relay's own cap, shared by every channel: 128 MiB at 32 MiB/s takes about 4 s. */
Test(relay, bandwidth_cap_shared_by_the_channels)
{
    start_guest("capped", 128, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = ag.dest;
    o.key_file = ag.key;
    o.parallel_connections = 4;
    o.relay_bandwidth_mib_s = 32;
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, "capped", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    int64_t t0 = g_get_monotonic_time();
    while (!vmig_job_finished(j)) {
        cr_assert(ge(int, vmig_engine_run(eng, 500, &err), 0), "%s", vmig_error_message(err));
    }
    double secs = (double)(g_get_monotonic_time() - t0) / 1e6;
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    vmig_channel_stats ch[8];
    size_t n = vmig_job_channels(j, ch, 8);
    uint64_t bytes = 0, capped_us = 0;
    for (size_t i = 0; i < n; i++) {
        bytes += ch[i].bytes_out;
        capped_us += ch[i].limit_wait_us;
    }
    vmig_job_free(j);
    /* a cap only slows: the lower bound holds on any machine (100 ms of burst allowed) */
    double floor_s = (double)bytes / (32.0 * 1024 * 1024) - 0.2;
    cr_assert(ge(dbl, secs, floor_s), "%.0f MiB in %.2f s: faster than 32 MiB/s",
              (double)bytes / (1 << 20), secs);
    cr_assert(gt(u64, capped_us, 0), "the channels waited for the cap");
    verify_at_agent(&ag, "capped");
}

Test(relay, killing_the_agent_leaves_the_source_running)
{
    start_guest("victim", 128, 0);
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = ag.dest;
    o.key_file = ag.key;
    o.parallel_connections = 2;
    o.bandwidth_mib_s = 16; /* 128 MiB: about 8 s, time to kill it in the middle */
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, "victim", &o, NULL, NULL, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    int64_t killed_at = 0;
    while (!vmig_job_finished(j)) {
        cr_assert(ge(int, vmig_engine_run(eng, 100, &err), 0), "%s", vmig_error_message(err));
        vmig_migration_stats st;
        vmig_job_stats(j, &st);
        if (!killed_at && vmig_job_get_state(j) == VMIG_JOB_MIGRATING &&
            st.transferred_bytes > (16u << 20)) {
            kill(ag.pid, SIGKILL);
            killed_at = g_get_monotonic_time();
        }
    }
    cr_assert(gt(i64, killed_at, 0), "the agent was killed mid-migration");
    waitpid(ag.pid, NULL, 0);
    ag.pid = -1;
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "agent") != NULL, "the error names the agent: %s", msg);
    cr_assert(strstr(msg, "is running on the source") != NULL, "and where the VM is: %s", msg);
    vmig_job_free(j);
    cr_assert(source_running("victim"));
    g_autofree char *needle = g_strconcat(ag.dir, "/", NULL);
    cr_assert(eq(int, t_qemu_count_settled(needle), 0),
              "the agent's guard took the destination QEMU down with it");
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(eng, "victim", &pages, &err), "%s", vmig_error_message(err));
    /* what the dead agent left: its staging directory (a new agent would refuse the name) */
    g_autofree char *stage = g_build_filename(ag.dir, "victim.incoming", NULL);
    g_autofree char *lock = g_build_filename(ag.dir, ".victim.lock", NULL);
    eng_vm_remove_dir(stage);
    unlink(lock);
}

Test(relay, wrong_key_is_refused_and_starts_nothing)
{
    start_guest("keyed", 64, 0);
    g_autofree char *other = g_build_filename(ag.key_dir, "other", NULL);
    vmig_error *err = NULL;
    cr_assert(vmig_key_create(other, &err), "%s", vmig_error_message(err));
    vmig_migrate_opts o;
    t_live_opts(&o);
    o.dest = ag.dest;
    o.key_file = other;
    cr_assert(not(vmig_migrate(eng, "keyed", &o, NULL, NULL, NULL, &err)));
    cr_assert(strstr(vmig_error_message(err), "wrong key") != NULL, "%s", vmig_error_message(err));
    vmig_error_free(err);
    unlink(other);
    cr_assert(source_running("keyed"));
    g_autofree char *needle = g_strconcat(ag.dir, "/", NULL);
    cr_assert(eq(int, t_qemu_count(needle), 0), "the agent started no QEMU");
    g_autofree char *log = agent_log_text(&ag);
    cr_assert(strstr(log, "refused a connection") != NULL, "the refusal is logged:\n%s", log);
}

/* ---- raw connections: what a stranger can send ---------------------------------------------- */

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ag.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(eq(int, connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0), "%s", strerror(errno));
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Reads one frame (whole) into @buf; its type, or -1 at end of file. */
static int read_frame(int fd, uint8_t *buf, size_t len, size_t *ret_len)
{
    size_t got = 0;
    for (;;) {
        tp_frame f;
        size_t used = 0;
        tp_parse_result r = tp_frame_parse(buf, got, &f, &used, NULL);
        if (r == TP_PARSE_OK) {
            *ret_len = used;
            return (int)f.type;
        }
        cr_assert(r != TP_PARSE_ERROR, "the agent sent a malformed frame");
        ssize_t n = recv(fd, buf + got, len - got, 0);
        if (n <= 0) {
            return -1;
        }
        got += (size_t)n;
    }
}

/* The agent's answer to @bytes after its CHALLENGE: a REFUSE frame or the end, never a
 * WELCOME. */
static void expect_refused(const void *bytes, size_t len, const char *what)
{
    int fd = dial();
    uint8_t buf[4096];
    size_t flen = 0;
    cr_assert(eq(int, read_frame(fd, buf, sizeof(buf), &flen), TP_CHALLENGE));
    if (len) {
        cr_assert(eq(long, (long)send(fd, bytes, len, MSG_NOSIGNAL), (long)len));
    }
    shutdown(fd, SHUT_WR);
    int t = read_frame(fd, buf, sizeof(buf), &flen);
    cr_assert(t == -1 || t == TP_REFUSE, "%s: answered with frame type %d", what, t);
    close(fd);
}

Test(relay, strangers_and_malformed_hellos_are_refused)
{
    g_autofree char *keytext = NULL;
    cr_assert(g_file_get_contents(ag.key, &keytext, NULL, NULL));
    /* a valid HELLO with the right key and a token no migration has */
    int fd = dial();
    uint8_t buf[4096];
    size_t flen = 0;
    cr_assert(eq(int, read_frame(fd, buf, sizeof(buf), &flen), TP_CHALLENGE));
    tp_frame ch;
    size_t used;
    cr_assert(eq(int, tp_frame_parse(buf, flen, &ch, &used, NULL), TP_PARSE_OK));
    uint8_t key[64];
    size_t klen = strlen(g_strstrip(keytext)) / 2;
    for (size_t i = 0; i < klen; i++) {
        key[i] = (uint8_t)(g_ascii_xdigit_value(keytext[2 * i]) << 4 |
                           g_ascii_xdigit_value(keytext[2 * i + 1]));
    }
    tp_hello h = {.kind = TP_KIND_MAIN, .index = 0};
    memset(h.token, 0x5a, sizeof(h.token));
    memset(h.nonce, 0x33, sizeof(h.nonce));
    tp_hello_sign(&h, key, klen, ch.payload);
    uint8_t payload[TP_HELLO_LEN], frame[TP_HEADER_LEN + TP_HELLO_LEN];
    tp_hello_encode(&h, payload);
    size_t n = tp_frame_encode(TP_HELLO, payload, sizeof(payload), frame);
    cr_assert(eq(long, (long)send(fd, frame, n, MSG_NOSIGNAL), (long)n));
    int t = read_frame(fd, buf, sizeof(buf), &flen);
    cr_assert(eq(int, t, TP_REFUSE), "a wrong token is refused (got %d)", t);
    cr_assert(memmem(buf, flen, "token", 5) != NULL, "and the reason names the token");
    close(fd);

    /* malformed: truncated, oversized, wrong version, garbage, a HELLO of the wrong size */
    expect_refused(frame, n / 2, "a truncated HELLO");
    uint8_t big[TP_HEADER_LEN] = {'V', 'M', 'G', 'W', TP_VERSION, TP_HELLO, 0xff, 0xff};
    expect_refused(big, sizeof(big), "an oversized frame");
    uint8_t v2[sizeof(frame)];
    memcpy(v2, frame, n);
    v2[4] = 2;
    expect_refused(v2, n, "version 2");
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof(junk); i++) {
        junk[i] = (uint8_t)(i * 37 + 11);
    }
    expect_refused(junk, sizeof(junk), "garbage");
    uint8_t shortp[TP_HEADER_LEN + 10];
    size_t sn = tp_frame_encode(TP_HELLO, payload, 10, shortp);
    expect_refused(shortp, sn, "a short HELLO");
    expect_refused(NULL, 0, "nothing at all");

    /* none of that started anything, and the agent still serves */
    g_autofree char *needle = g_strconcat(ag.dir, "/", NULL);
    cr_assert(eq(int, t_qemu_count(needle), 0));
    migrate_channels("after", 2, 0);
}

/* ---- two hosts on one machine ---------------------------------------------------------------- */

static bool sh(const char *cmd)
{
    int r = system(cmd);
    return r == 0;
}

Test(relay, between_network_namespaces)
{
    if (geteuid() != 0 || access("/usr/sbin/ip", X_OK) != 0) {
        cr_skip_test("needs root and ip(8) for a network namespace");
    }
    /* the agent of setup() stays; a second one lives in a namespace behind a veth pair */
    g_autofree char *ns = g_strdup_printf("vmigt%d", (int)getpid());
    g_autofree char *veth = g_strdup_printf("vmt%da", (int)getpid() % 100000);
    g_autofree char *peer = g_strdup_printf("vmt%db", (int)getpid() % 100000);
    g_autofree char *cmd = g_strdup_printf(
        "ip netns add %s && ip link add %s type veth peer name %s && ip link set %s netns %s && "
        "ip addr add 10.213.7.1/24 dev %s && ip link set %s up && "
        "ip -n %s addr add 10.213.7.2/24 dev %s && ip -n %s link set %s up && "
        "ip -n %s link set lo up && "
        "tc qdisc add dev %s root tbf rate 2gbit burst 1mb latency 50ms",
        ns, veth, peer, peer, ns, veth, veth, ns, peer, ns, peer, ns, veth);
    bool up = sh(cmd);
    agent far = {0};
    if (up) {
        t_agent_start(&far, ns, "10.213.7.2");
        start_guest("far", 128, 0);
        vmig_migrate_opts o;
        t_live_opts(&o);
        o.dest = far.dest;
        o.key_file = far.key;
        o.parallel_connections = 2;
        vmig_migration_stats st;
        vmig_error *err = NULL;
        bool ok = vmig_migrate(eng, "far", &o, NULL, NULL, &st, &err);
        if (ok) {
            verify_at_agent(&far, "far");
        } else {
            g_autofree char *log = agent_log_text(&far);
            cr_log_error("the agent's log:\n%s", log);
        }
        agent_stop(&far);
        g_autofree char *down = g_strdup_printf("ip link del %s; ip netns del %s", veth, ns);
        sh(down);
        cr_assert(ok, "%s", vmig_error_message(err));
        cr_assert(eq(str, st.status, "completed"));
    } else {
        g_autofree char *down = g_strdup_printf(
            "ip link del %s 2>/dev/null; ip netns del %s 2>/dev/null", veth, ns);
        sh(down);
        cr_fail("could not set up the namespace: %s", cmd);
    }
}

static vmig_job *run_job(const vmig_migrate_opts *o, const char *name, vmig_progress_fn fn,
                         void *opaque)
{
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, name, o, fn, opaque, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    while (!vmig_job_finished(j)) {
        cr_assert(ge(int, vmig_engine_run(eng, 500, &err), 0), "%s", vmig_error_message(err));
    }
    return j;
}

Test(relay, postcopy_cut_and_resumed_through_the_agent)
{
    if (t_qemu_loses_tcg_writes()) { /* no .fini after a skip: clean up first */
        agent_stop(&ag);
        t_engine_teardown(eng, state);
        cr_skip_test("QEMU %d.%d under TCG loses guest writes in live migration",
                     t_qemu_version() / 10000, t_qemu_version() / 100 % 100);
    }
    start_guest("pcr", 64, 32);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.dest = ag.dest;
    o.key_file = ag.key;
    o.bandwidth_mib_s = 8;
    o.policy = VMIG_POLICY_NONE;
    o.postcopy_after_precopy = true;
    t_cutter c = {.sock = g_build_filename(state, "pcr", ENG_READER_SOCK, NULL)};
    vmig_job *j = run_job(&o, "pcr", t_cut_in_postcopy, &c);
    cr_assert(c.cut, "post-copy ran long enough to cut it");
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "--postcopy-resume") != NULL, "%s", msg);
    vmig_migration_stats st;
    vmig_job_stats(j, &st);
    cr_assert(eq(str, st.vm_holder, "both"), "%s", msg);
    vmig_job_free(j);
    g_free(c.sock);

    /* the agent kept its half when the engine's connection ended; a new engine takes it */
    vmig_migrate_opts r;
    vmig_migrate_opts_init(&r);
    r.dest = ag.dest;
    r.key_file = ag.key;
    r.postcopy_resume = true;
    j = run_job(&r, "pcr", NULL, NULL);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    vmig_channel_stats ch[4];
    size_t n = vmig_job_channels(j, ch, 4);
    cr_assert(ge(sz, n, (size_t)1));
    cr_assert(eq(str, ch[0].kind, "main"), "the resumed stream is main, with no QEVM header");
    vmig_job_free(j);
    cr_assert(eq(int, vmig_vm_list(eng, NULL, 0, NULL), 0), "the source is retired");
    verify_at_agent(&ag, "pcr");
}
