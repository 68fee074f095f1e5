/*
 * The relay's two ends together on one ring, over real sockets: a fake source QEMU connects to
 * the source relay's unix socket; the relay connects over TCP loopback to a test agent that
 * runs the agent's handshake and hands admitted connections to a destination relay; that one
 * connects to a fake destination QEMU, which records the order of its accepts and every byte.
 * Nothing here asserts how long anything took: only order, bytes and messages.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "transport/relay.h"

#define WAIT_US ((int64_t)60 * G_USEC_PER_SEC) /* a loaded machine: generous */
#define MIB ((size_t)1 << 20)

/* One end of a fake QEMU's connection: what it sends, and what it has received. */
typedef struct tconn {
    int fd;
    uint8_t *out;
    size_t out_len, sent;
    size_t hold; /* send no more than this many bytes until released (0: no hold) */
    GByteArray *in;
    bool eof;
} tconn;

typedef struct agent_conn {
    int fd;
    tp_handshake *hs;
} agent_conn;

static struct {
    ring *r;
    char *dir, *src_path, *qemu_path;
    int agent_lfd, qemu_lfd;
    struct sockaddr_in agent;
    tp_key key;
    tp_source_relay *src;
    tp_dest_relay *dest;
    GPtrArray *agent_conns; /* agent_conn */
    GArray *admitted;       /* tp_kind, in the order the agent admitted them */
    GPtrArray *sconns;      /* tconn: the source QEMU's connections */
    GPtrArray *dconns;      /* tconn: the destination QEMU's, in accept order */
    GPtrArray *fails;       /* "source: ..." / "dest: ..." */
} t;

static const uint8_t token[TP_TOKEN_LEN] = {0x5e, 0xc2, 0x37};

static tp_key key_of(const char *s)
{
    tp_key k = {.len = strlen(s)};
    memcpy(k.bytes, s, k.len);
    return k;
}

static void tconn_free(void *p)
{
    tconn *c = p;
    if (c->fd >= 0) {
        close(c->fd);
    }
    g_free(c->out);
    g_byte_array_unref(c->in);
    g_free(c);
}

static tconn *tconn_new(int fd)
{
    tconn *c = g_new0(tconn, 1);
    c->fd = fd;
    c->in = g_byte_array_new();
    return c;
}

static void on_fail(void *opaque, const vmig_error *err)
{
    g_ptr_array_add(t.fails,
                    g_strdup_printf("%s: %s", (const char *)opaque, vmig_error_message(err)));
}

static int unix_listener(const char *path)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    g_strlcpy(sun.sun_path, path, sizeof(sun.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(ge(int, fd, 0));
    cr_assert(eq(int, bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0), "%s", path);
    cr_assert(eq(int, listen(fd, 128), 0));
    return fd;
}

/* A loopback TCP address: listened on (@ret_fd), or with nothing there (bound, then closed). */
static struct sockaddr_in tcp_port(int *ret_fd)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(ge(int, fd, 0));
    cr_assert(eq(int, bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0));
    socklen_t len = sizeof(sin);
    cr_assert(eq(int, getsockname(fd, (struct sockaddr *)&sin, &len), 0));
    if (ret_fd) {
        cr_assert(eq(int, listen(fd, 128), 0));
        *ret_fd = fd;
    } else {
        close(fd);
    }
    return sin;
}

static void setup(void)
{
    t.r = ring_new(RING_BACKEND_AUTO, NULL);
    cr_assert_not_null(t.r);
    t.dir = g_dir_make_tmp("vmig-relay-XXXXXX", NULL);
    cr_assert_not_null(t.dir);
    t.src_path = g_build_filename(t.dir, "source.sock", NULL);
    t.qemu_path = g_build_filename(t.dir, "qemu.sock", NULL);
    t.agent = tcp_port(&t.agent_lfd);
    t.qemu_lfd = unix_listener(t.qemu_path);
    t.key = key_of("the migration's key, 32 bytes...");
    t.dest = tp_dest_relay_new(t.r, t.qemu_path, NULL, 20000, on_fail, "dest");
    t.agent_conns = g_ptr_array_new();
    t.admitted = g_array_new(FALSE, FALSE, sizeof(tp_kind));
    t.sconns = g_ptr_array_new_with_free_func(tconn_free);
    t.dconns = g_ptr_array_new_with_free_func(tconn_free);
    t.fails = g_ptr_array_new_with_free_func(g_free);
}

static void teardown(void)
{
    tp_source_relay_free(t.src);
    tp_dest_relay_free(t.dest);
    for (guint i = 0; i < t.agent_conns->len; i++) {
        agent_conn *a = g_ptr_array_index(t.agent_conns, i);
        tp_handshake_free(a->hs);
        if (a->fd >= 0) {
            close(a->fd);
        }
        g_free(a);
    }
    g_ptr_array_free(t.agent_conns, TRUE);
    g_array_free(t.admitted, TRUE);
    g_ptr_array_free(t.sconns, TRUE);
    g_ptr_array_free(t.dconns, TRUE);
    g_ptr_array_free(t.fails, TRUE);
    close(t.agent_lfd);
    close(t.qemu_lfd);
    ring_free(t.r);
    g_unlink(t.qemu_path);
    g_unlink(t.src_path);
    g_rmdir(t.dir);
    g_free(t.src_path);
    g_free(t.qemu_path);
    g_free(t.dir);
}

TestSuite(relay, .init = setup, .fini = teardown, .timeout = 180);

/* ---- the fake agent ----------------------------------------------------------------------------
 */

static void on_agent_handshake(void *opaque, const tp_hello *hello, const vmig_error *err)
{
    agent_conn *a = opaque;
    if (err) {
        close(a->fd);
        a->fd = -1;
        return;
    }
    tp_kind kind = (tp_kind)hello->kind;
    g_array_append_val(t.admitted, kind);
    vmig_error *e = NULL;
    if (!tp_dest_relay_add(t.dest, a->fd, kind, hello->index, &e)) {
        on_fail("add", e);
        vmig_error_free(e);
    }
    a->fd = -1; /* the destination relay's now */
}

static void agent_accept(void)
{
    int fd;
    while ((fd = accept4(t.agent_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        agent_conn *a = g_new0(agent_conn, 1);
        a->fd = fd;
        g_ptr_array_add(t.agent_conns, a);
        a->hs = tp_handshake_agent(t.r, fd, &t.key, 20000, NULL, NULL, on_agent_handshake, a);
    }
}

/* ---- the fake QEMUs ----------------------------------------------------------------------------
 */

static void pattern(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(i * 7 + (size_t)seed * 13 + i / 1021);
    }
}

/* The source QEMU opens a channel of @kind (@id for multifd) and will send @len bytes. */
static tconn *source_conn(tp_kind kind, unsigned id, size_t len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(ge(int, fd, 0));
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    g_strlcpy(sun.sun_path, t.src_path, sizeof(sun.sun_path));
    cr_assert(eq(int, connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0), "%s",
              g_strerror(errno));
    tconn *c = tconn_new(fd);
    c->out_len = len;
    c->out = g_malloc(MAX(len, 64));
    pattern(c->out, len, kind * 100 + id);
    if (kind == TP_KIND_MAIN) {
        memcpy(c->out, "QEVM\0\0\0\3", 8);
    } else if (kind == TP_KIND_MULTIFD) { /* QEMU's MultiFDInit_t, big-endian */
        static const uint8_t head[8] = {0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1};
        memcpy(c->out, head, sizeof(head));
        memset(c->out + 8, 0xa5, 16); /* the uuid */
        c->out[TP_MULTIFD_ID_OFFSET] = (uint8_t)id;
    } else if (len) {
        c->out[0] = 'P'; /* the preempt channel: no magic */
    }
    g_ptr_array_add(t.sconns, c);
    return c;
}

static void tconn_io(tconn *c)
{
    if (c->fd < 0) {
        return;
    }
    size_t limit = c->hold ? c->hold : c->out_len;
    if (c->sent < limit) {
        ssize_t n = send(c->fd, c->out + c->sent, limit - c->sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        c->sent += n > 0 ? (size_t)n : 0;
    }
    uint8_t buf[65536];
    while (!c->eof) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            g_byte_array_append(c->in, buf, (guint)n);
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            c->eof = true; /* an end, or a reset: the relay closed on us */
        } else {
            break;
        }
    }
}

static void step(void)
{
    for (guint i = 0; i < t.sconns->len; i++) {
        tconn_io(g_ptr_array_index(t.sconns, i));
    }
    ring_dispatch(t.r, 1);
    agent_accept();
    int fd;
    while ((fd = accept4(t.qemu_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        g_ptr_array_add(t.dconns, tconn_new(fd));
    }
    for (guint i = 0; i < t.dconns->len; i++) {
        tconn_io(g_ptr_array_index(t.dconns, i));
    }
}

static bool spin_until(bool (*done)(void))
{
    int64_t end = g_get_monotonic_time() + WAIT_US;
    while (!done() && g_get_monotonic_time() < end) {
        step();
    }
    return done();
}

static void spin(int steps)
{
    for (int i = 0; i < steps; i++) {
        step();
    }
}

/* The destination QEMU's connection carrying source connection @s's stream, by its first
 * bytes (the header tells the channel). */
static tconn *dest_of(const tconn *s)
{
    for (guint i = 0; i < t.dconns->len; i++) {
        tconn *d = g_ptr_array_index(t.dconns, i);
        if (d->in->len >= 25 && memcmp(d->in->data, s->out, 25) == 0) {
            return d;
        }
    }
    return NULL;
}

static bool all_arrived(void)
{
    for (guint i = 0; i < t.sconns->len; i++) {
        tconn *s = g_ptr_array_index(t.sconns, i);
        tconn *d = dest_of(s);
        if (!d || d->in->len < s->out_len) {
            return false;
        }
    }
    return true;
}

static bool all_dest_eof(void)
{
    for (guint i = 0; i < t.dconns->len; i++) {
        if (!((tconn *)g_ptr_array_index(t.dconns, i))->eof) {
            return false;
        }
    }
    return true;
}

static bool all_source_eof(void)
{
    for (guint i = 0; i < t.sconns->len; i++) {
        if (!((tconn *)g_ptr_array_index(t.sconns, i))->eof) {
            return false;
        }
    }
    return true;
}

static bool two_failures(void)
{
    return t.fails->len >= 2;
}

static void source_start(const tp_key *key, const struct sockaddr_in *agent, int timeout_ms,
                         int delay_main_ms)
{
    tp_source_cfg cfg = {
        .listen_path = t.src_path,
        .agent = (const struct sockaddr *)agent,
        .agent_len = sizeof(*agent),
        .key = key,
        .token = token,
        .timeout_ms = timeout_ms,
        .delay_main_ms = delay_main_ms,
    };
    vmig_error *err = NULL;
    t.src = tp_source_relay_new(t.r, &cfg, on_fail, "source", &err);
    cr_assert_not_null(t.src, "%s", err ? vmig_error_message(err) : "");
}

static const char *fail_with(const char *needle)
{
    for (guint i = 0; i < t.fails->len; i++) {
        const char *m = g_ptr_array_index(t.fails, i);
        if (strstr(m, needle)) {
            return m;
        }
    }
    return NULL;
}

static char *fails_text(void)
{
    g_ptr_array_add(t.fails, NULL);
    char *s = g_strjoinv("\n", (char **)t.fails->pdata);
    g_ptr_array_remove_index(t.fails, t.fails->len - 1);
    return s;
}

/* ---- end to end --------------------------------------------------------------------------------
 */

static tconn *main_src;

static bool main_came_back(void)
{
    return main_src->in->len >= 100000;
}

static void check_stats(const tp_channel_stats *st, size_t n, bool dest)
{
    static const tp_kind kinds[5] = {TP_KIND_MAIN, TP_KIND_MULTIFD, TP_KIND_MULTIFD,
                                     TP_KIND_MULTIFD, TP_KIND_PREEMPT};
    static const unsigned index[5] = {0, 0, 1, 2, 0};
    static const size_t out[5] = {MIB, MIB, MIB, MIB, 65536};
    cr_assert(eq(sz, n, 5));
    unsigned orders = 0;
    for (size_t i = 0; i < n; i++) {
        cr_assert(eq(int, st[i].kind, kinds[i]), "channel %zu", i);
        cr_assert(eq(u32, st[i].index, index[i]), "channel %zu", i);
        cr_assert(eq(u64, st[i].bytes_out, out[i]), "channel %zu", i);
        cr_assert(eq(u64, st[i].bytes_in, i == 0 ? 100000 : 0), "channel %zu", i);
        cr_assert(not(st[i].failed));
        cr_assert(gt(i64, st[i].start_us, 0));
        cr_assert(ge(i64, st[i].end_us, st[i].start_us), "ended");
        orders |= 1u << st[i].order;
    }
    if (dest) {
        cr_assert(eq(u32, st[0].order, 0), "main connected to QEMU first");
        cr_assert(eq(u32, orders, 0x1f), "places 0..4, each once");
    }
}

/* Main is held back 300 ms on the source, so multifd reaches the agent first; the destination
 * QEMU still accepts main first.  Every byte arrives both ways; end of file is passed on. */
Test(relay, every_byte_both_ways_main_first_then_eof)
{
    source_start(&t.key, &t.agent, 20000, 300);
    main_src = source_conn(TP_KIND_MAIN, 0, MIB);
    main_src->hold = 2; /* "QE": too few bytes to tell, at first */
    for (unsigned i = 0; i < 3; i++) {
        source_conn(TP_KIND_MULTIFD, i, MIB);
    }
    source_conn(TP_KIND_PREEMPT, 0, 65536);
    spin(20);
    main_src->hold = 0;
    cr_assert(spin_until(all_arrived), "every stream arrives");
    g_autofree char *fails = fails_text();
    cr_assert(eq(u32, t.fails->len, 0), "%s", fails);

    cr_assert(eq(u32, t.admitted->len, 5));
    cr_assert(ne(int, g_array_index(t.admitted, tp_kind, 0), TP_KIND_MAIN),
              "the delay let multifd reach the agent first");
    cr_assert(eq(u32, t.dconns->len, 5));
    tconn *first = g_ptr_array_index(t.dconns, 0);
    cr_assert(eq(int, memcmp(first->in->data, "QEVM", 4), 0), "QEMU accepted main first");
    for (guint i = 0; i < t.sconns->len; i++) {
        tconn *s = g_ptr_array_index(t.sconns, i), *d = dest_of(s);
        cr_assert(eq(sz, d->in->len, s->out_len));
        cr_assert(eq(int, memcmp(d->in->data, s->out, s->out_len), 0), "stream %u intact", i);
    }

    /* the return path, on main */
    tconn *main_dst = dest_of(main_src);
    main_dst->out_len = 100000;
    main_dst->out = g_malloc(main_dst->out_len);
    pattern(main_dst->out, main_dst->out_len, 77);
    cr_assert(spin_until(main_came_back));
    cr_assert(eq(int, memcmp(main_src->in->data, main_dst->out, 100000), 0));

    /* the source closes: the destination sees end of file; then the other way */
    for (guint i = 0; i < t.sconns->len; i++) {
        shutdown(((tconn *)g_ptr_array_index(t.sconns, i))->fd, SHUT_WR);
    }
    cr_assert(spin_until(all_dest_eof), "end of file passed on to the destination QEMU");
    for (guint i = 0; i < t.dconns->len; i++) {
        shutdown(((tconn *)g_ptr_array_index(t.dconns, i))->fd, SHUT_WR);
    }
    cr_assert(spin_until(all_source_eof), "and back to the source QEMU");
    spin(20); /* the pumps see both ends */

    tp_channel_stats st[8];
    check_stats(st, tp_source_relay_stats(t.src, st, 8), false);
    check_stats(st, tp_dest_relay_stats(t.dest, st, 8), true);
    cr_assert(eq(sz, tp_source_relay_stats(t.src, st, 2), 2), "no more than asked for");
    g_autofree char *fails2 = fails_text();
    cr_assert(eq(u32, t.fails->len, 0), "%s", fails2);

    tp_source_relay_free(t.src);
    t.src = NULL;
    cr_assert(not(g_file_test(t.src_path, G_FILE_TEST_EXISTS)), "the socket file is removed");
}

/* ---- failures ----------------------------------------------------------------------------------
 */

static tconn *failing_src;

static bool failing_src_closed(void)
{
    return failing_src->eof && t.fails->len > 0;
}

Test(relay, a_wrong_key_fails_the_channel_by_name)
{
    tp_key wrong = key_of("somebody else's key, 32 bytes...");
    source_start(&wrong, &t.agent, 20000, 0);
    failing_src = source_conn(TP_KIND_MULTIFD, 2, 4096);
    cr_assert(spin_until(failing_src_closed), "QEMU's connection is closed");
    g_autofree char *fails = fails_text();
    const char *m = fail_with("source: multifd channel 2: ");
    cr_assert_not_null(m, "%s", fails);
    cr_assert_not_null(strstr(m, "the agent refused: the HELLO does not prove the key"), "%s", m);
    cr_assert(eq(u32, t.admitted->len, 0));
    tp_channel_stats st[4];
    cr_assert(eq(sz, tp_source_relay_stats(t.src, st, 4), 1));
    cr_assert(st[0].failed);
    cr_assert(eq(int, st[0].kind, TP_KIND_MULTIFD));
    cr_assert(eq(u32, st[0].index, 2));
    cr_assert(eq(i64, st[0].start_us, 0), "it never relayed");
}

Test(relay, an_agent_that_is_not_there_fails_the_channel_by_name)
{
    struct sockaddr_in nobody = tcp_port(NULL);
    source_start(&t.key, &nobody, 20000, 0);
    failing_src = source_conn(TP_KIND_MAIN, 0, 4096);
    cr_assert(spin_until(failing_src_closed));
    g_autofree char *fails = fails_text();
    cr_assert_not_null(fail_with("source: main channel: connecting to the agent: Connection "
                                 "refused"),
                       "%s", fails);
}

/* A stranger connects to the source relay and says nothing: dropped after timeout_ms; the
 * relay goes on serving. */
Test(relay, a_silent_connection_is_dropped_after_the_timeout)
{
    source_start(&t.key, &t.agent, 200, 0);
    failing_src = source_conn(TP_KIND_PREEMPT, 0, 0);
    cr_assert(spin_until(failing_src_closed));
    g_autofree char *fails = fails_text();
    cr_assert_not_null(fail_with("source: a connection from QEMU: too few bytes to tell which "
                                 "channel it is in 200 ms"),
                       "%s", fails);
    tp_channel_stats st[4];
    cr_assert(eq(sz, tp_source_relay_stats(t.src, st, 4), 0), "no channel");
    g_ptr_array_remove_index(t.sconns, 0);
    source_conn(TP_KIND_MAIN, 0, 100000);
    cr_assert(spin_until(all_arrived), "the next one is relayed");
}

static bool closed(int fd)
{
    return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

static void refused(int fd, tp_kind kind, unsigned index, const char *want)
{
    vmig_error *err = NULL;
    cr_assert(not(tp_dest_relay_add(t.dest, fd, kind, index, &err)));
    cr_assert_not_null(err);
    cr_assert_not_null(strstr(vmig_error_message(err), want), "%s", vmig_error_message(err));
    cr_assert(closed(fd), "the refused socket is closed");
    vmig_error_free(err);
}

static int sock(int *ret_peer)
{
    int sv[2];
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0));
    *ret_peer = sv[1];
    return sv[0];
}

static bool three_reached_qemu(void)
{
    return t.dconns->len >= 3;
}

Test(relay, the_destination_refuses_duplicates_and_strangers)
{
    int peers[8];
    cr_assert(tp_dest_relay_add(t.dest, sock(&peers[0]), TP_KIND_MAIN, 0, NULL));
    cr_assert(tp_dest_relay_add(t.dest, sock(&peers[1]), TP_KIND_MULTIFD, 3, NULL));
    refused(sock(&peers[2]), TP_KIND_MAIN, 0, "a second main channel");
    refused(sock(&peers[3]), TP_KIND_MULTIFD, 3,
            "multifd channel 3: a second channel with that id");
    refused(sock(&peers[4]), TP_KIND_CONTROL, 0, "a control connection is no migration channel");
    refused(sock(&peers[5]), TP_KIND_QMP, 0, "a qmp connection is no migration channel");
    refused(sock(&peers[6]), TP_KIND_MULTIFD, TP_CHANNELS_MAX,
            "multifd channel 64: channel ids go up to 63");
    cr_assert(tp_dest_relay_add(t.dest, sock(&peers[7]), TP_KIND_MULTIFD, 4, NULL));
    cr_assert(spin_until(three_reached_qemu), "main, multifd 3 and 4 reached QEMU");
    g_autofree char *fails = fails_text();
    cr_assert(eq(u32, t.fails->len, 0), "%s", fails);
    for (int i = 0; i < 8; i++) {
        close(peers[i]);
    }
}

static bool one_reached_qemu(void)
{
    return t.dconns->len >= 1;
}

/* A storage copy's NBD channels go to QEMU's NBD server at once, before any main channel;
 * a migration that copies no disk takes none. */
Test(relay, nbd_channels_connect_at_once_and_only_when_a_disk_is_copied)
{
    int peers[2];
    refused(sock(&peers[0]), TP_KIND_NBD, 0, "an nbd channel for a migration that copies no disk");
    tp_dest_relay_set_nbd(t.dest, t.qemu_path); /* the test's listener stands for the server */
    cr_assert(tp_dest_relay_add(t.dest, sock(&peers[1]), TP_KIND_NBD, 0, NULL));
    cr_assert(spin_until(one_reached_qemu), "the nbd channel did not wait for main");
    g_autofree char *fails = fails_text();
    cr_assert(eq(u32, t.fails->len, 0), "%s", fails);
    close(peers[0]);
    close(peers[1]);
}

/* Destination QEMU is not there: main fails, and takes the channel waiting for it along. */
Test(relay, a_main_that_cannot_reach_qemu_fails_the_waiting_channels)
{
    g_autofree char *nowhere = g_build_filename(t.dir, "nowhere.sock", NULL);
    tp_dest_relay_free(t.dest);
    t.dest = tp_dest_relay_new(t.r, nowhere, NULL, 20000, on_fail, "dest");
    int peer1, peer2;
    cr_assert(tp_dest_relay_add(t.dest, sock(&peer1), TP_KIND_MULTIFD, 1, NULL));
    spin(5);
    cr_assert(eq(u32, t.fails->len, 0), "multifd waits for main");
    cr_assert(tp_dest_relay_add(t.dest, sock(&peer2), TP_KIND_MAIN, 0, NULL));
    cr_assert(spin_until(two_failures));
    g_autofree char *fails = fails_text();
    g_autofree char *want = g_strdup_printf("dest: main channel: connecting to QEMU at %s: No "
                                            "such file or directory",
                                            nowhere);
    cr_assert_not_null(fail_with(want), "%s", fails);
    cr_assert_not_null(fail_with("dest: multifd channel 1: the main channel failed before it "
                                 "reached QEMU"),
                       "%s", fails);
    char c;
    cr_assert(eq(int, (int)read(peer1, &c, 1), 0), "the source's side sees the close");
    cr_assert(eq(int, (int)read(peer2, &c, 1), 0));
    tp_channel_stats st[4];
    cr_assert(eq(sz, tp_dest_relay_stats(t.dest, st, 4), 2));
    cr_assert(st[0].failed && st[1].failed);
    close(peer1);
    close(peer2);
}

static void free_dest_on_fail(void *opaque, const vmig_error *err)
{
    (void)err;
    tp_dest_relay **d = opaque;
    tp_dest_relay_free(*d);
    *d = NULL;
}

static bool dest_gone(void)
{
    return t.dest == NULL;
}

Test(relay, the_fail_callback_may_free_the_relay)
{
    g_autofree char *nowhere = g_build_filename(t.dir, "nowhere.sock", NULL);
    tp_dest_relay_free(t.dest);
    t.dest = tp_dest_relay_new(t.r, nowhere, NULL, 20000, free_dest_on_fail, &t.dest);
    int peer1, peer2;
    cr_assert(tp_dest_relay_add(t.dest, sock(&peer1), TP_KIND_MULTIFD, 1, NULL));
    cr_assert(tp_dest_relay_add(t.dest, sock(&peer2), TP_KIND_MAIN, 0, NULL));
    cr_assert(spin_until(dest_gone));
    spin(5);
    close(peer1);
    close(peer2);
}
