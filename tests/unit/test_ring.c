/* The completion ring, on both backends: every test runs on io_uring and on epoll. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ring/ring.h"

static const ring_backend backends[] = {RING_BACKEND_IOURING, RING_BACKEND_EPOLL};

/* NOLINTBEGIN(bugprone-macro-parentheses): @r names the variable the loop declares */
#define FOR_EACH_BACKEND(r)                                                                        \
    for (size_t bi_ = 0; bi_ < G_N_ELEMENTS(backends); bi_++)                                      \
        for (ring *r = new_ring(backends[bi_]); r; ring_free(r), r = NULL)
/* NOLINTEND(bugprone-macro-parentheses) */

static ring *new_ring(ring_backend b)
{
    vmig_error *err = NULL;
    ring *r = ring_new(b, &err);
    cr_assert_not_null(r, "%s: %s", ring_backend_name(b), vmig_error_message(err));
    cr_assert(eq(int, ring_get_backend(r), b));
    return r;
}

typedef struct result {
    int calls;
    int res;
    int order; /* global completion order */
} result;

static int completions;

static void record(void *opaque, int res)
{
    result *x = opaque;
    x->calls++;
    x->res = res;
    x->order = ++completions;
}

/* Dispatches until @x has completed or 2 s passed. */
static void run_until(ring *r, const result *x)
{
    for (int i = 0; i < 200 && x->calls == 0; i++) {
        cr_assert(ge(int, ring_dispatch(r, 10), 0));
    }
    cr_assert(eq(int, x->calls, 1), "%s: the operation completed once",
              ring_backend_name(ring_get_backend(r)));
}

static void nonblocking_pair(int sv[2])
{
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0));
}

Test(ring, timers_fire_in_deadline_order_and_say_when)
{
    FOR_EACH_BACKEND(r)
    {
        completions = 0;
        result late = {0}, early = {0}, gone = {0};
        cr_assert(eq(int, ring_timeout_ms(r), -1), "no timer, nothing pending");
        cr_assert(gt(i64, ring_timer(r, 60, record, &late), 0));
        cr_assert(gt(i64, ring_timer(r, 20, record, &early), 0));
        int64_t id = ring_timer(r, 30, record, &gone);
        int t = ring_timeout_ms(r);
        cr_assert(t > 0 && t <= 20, "nearest timer in %d ms", t);
        cr_assert(ring_cancel(r, id));
        run_until(r, &late);
        cr_assert(eq(int, early.res, 0));
        cr_assert(eq(int, late.res, 0));
        cr_assert(lt(int, early.order, late.order));
        cr_assert(eq(int, gone.calls, 1), "a cancelled timer still completes, once");
        cr_assert(eq(int, gone.res, -ECANCELED));
        cr_assert(not(ring_cancel(r, id)), "nothing left to cancel");
        cr_assert(eq(sz, ring_in_flight(r), 0));
    }
}

Test(ring, the_fd_alone_says_when_to_dispatch)
{
    FOR_EACH_BACKEND(r)
    {
        result t = {0};
        cr_assert(gt(i64, ring_timer(r, 30, record, &t), 0));
        struct pollfd pfd = {.fd = ring_fd(r), .events = POLLIN};
        cr_assert(eq(int, poll(&pfd, 1, 0), 0), "not readable before the timer");
        cr_assert(eq(int, poll(&pfd, 1, 2000), 1), "%s: readable when the timer fires",
                  ring_backend_name(ring_get_backend(r)));
        cr_assert(eq(int, ring_dispatch(r, 0), 1));
        cr_assert(eq(int, t.calls, 1));
    }
}

Test(ring, recv_send_and_eof)
{
    FOR_EACH_BACKEND(r)
    {
        int sv[2];
        nonblocking_pair(sv);
        char in[16] = {0};
        result got = {0}, sent = {0};
        cr_assert(gt(i64, ring_recv(r, sv[0], in, sizeof(in), record, &got), 0));
        cr_assert(eq(int, ring_dispatch(r, 20), 0), "nothing to read yet");
        cr_assert(gt(i64, ring_send(r, sv[1], "hello", 5, record, &sent), 0));
        run_until(r, &got);
        run_until(r, &sent);
        cr_assert(eq(int, sent.res, 5));
        cr_assert(eq(int, got.res, 5));
        cr_assert(eq(str, in, "hello"));
        result eof = {0};
        cr_assert(gt(i64, ring_recv(r, sv[0], in, sizeof(in), record, &eof), 0));
        close(sv[1]);
        run_until(r, &eof);
        cr_assert(eq(int, eof.res, 0), "EOF reads as 0");
        close(sv[0]);
    }
}

Test(ring, cancel_a_pending_recv)
{
    FOR_EACH_BACKEND(r)
    {
        int sv[2];
        nonblocking_pair(sv);
        char *buf = g_malloc0(64);
        result x = {0};
        int64_t id = ring_recv(r, sv[0], buf, 64, record, &x);
        cr_assert(gt(i64, id, 0));
        cr_assert(ring_cancel(r, id));
        run_until(r, &x);
        cr_assert(eq(int, x.res, -ECANCELED));
        /* the buffer is ours again: data sent now must not land in it */
        cr_assert(eq(long, write(sv[1], "late", 4), 4));
        ring_dispatch(r, 20);
        cr_assert(eq(int, (unsigned char)buf[0], 0));
        cr_assert(eq(int, x.calls, 1));
        g_free(buf);
        close(sv[0]);
        close(sv[1]);
    }
}

Test(ring, accept_and_connect)
{
    FOR_EACH_BACKEND(r)
    {
        g_autofree char *dir = g_dir_make_tmp("vmig-ring-XXXXXX", NULL);
        g_autofree char *path = g_build_filename(dir, "s", NULL);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
        int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert(eq(int, bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0));
        cr_assert(eq(int, listen(lfd, 4), 0));
        result acc = {0}, con = {0};
        cr_assert(gt(i64, ring_accept(r, lfd, record, &acc), 0));
        int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert(
            gt(i64, ring_connect(r, cfd, (struct sockaddr *)&sa, sizeof(sa), record, &con), 0));
        run_until(r, &con);
        run_until(r, &acc);
        cr_assert(eq(int, con.res, 0));
        cr_assert(ge(int, acc.res, 0), "accepted: %s", g_strerror(-acc.res));
        cr_assert(ne(int, fcntl(acc.res, F_GETFD) & FD_CLOEXEC, 0));
        cr_assert(ne(int, fcntl(acc.res, F_GETFL) & O_NONBLOCK, 0),
                  "%s: accepted socket is "
                  "non-blocking",
                  ring_backend_name(ring_get_backend(r)));
        close(acc.res);
        close(cfd);

        /* a refused connection is an error result, not a hang */
        unlink(path);
        result bad = {0};
        cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        cr_assert(
            gt(i64, ring_connect(r, cfd, (struct sockaddr *)&sa, sizeof(sa), record, &bad), 0));
        run_until(r, &bad);
        cr_assert(eq(int, bad.res, -ENOENT));
        close(cfd);
        close(lfd);
        rmdir(dir);
    }
}

Test(ring, file_read_and_write_at_offsets)
{
    FOR_EACH_BACKEND(r)
    {
        char tmpl[] = "/tmp/vmig-ring-file-XXXXXX";
        int fd = mkstemp(tmpl);
        unlink(tmpl);
        result w = {0}, rd = {0};
        cr_assert(gt(i64, ring_write(r, fd, "abcdef", 6, 10, record, &w), 0));
        run_until(r, &w);
        cr_assert(eq(int, w.res, 6));
        char buf[8] = {0};
        cr_assert(gt(i64, ring_read(r, fd, buf, 3, 12, record, &rd), 0));
        run_until(r, &rd);
        cr_assert(eq(int, rd.res, 3));
        cr_assert(eq(str, buf, "cde"));
        close(fd);
    }
}

Test(ring, poll_and_bad_fds)
{
    FOR_EACH_BACKEND(r)
    {
        int p[2];
        cr_assert(eq(int, pipe2(p, O_NONBLOCK | O_CLOEXEC), 0));
        result x = {0};
        cr_assert(gt(i64, ring_poll(r, p[0], POLLIN, record, &x), 0));
        cr_assert(eq(int, ring_dispatch(r, 10), 0));
        cr_assert(eq(long, write(p[1], "x", 1), 1));
        run_until(r, &x);
        cr_assert(ne(int, x.res &POLLIN, 0));
        close(p[0]);
        close(p[1]);
        /* a closed fd: refused at submission (epoll) or as the result (io_uring) */
        result bad = {0};
        char buf[4];
        int64_t id = ring_recv(r, p[0], buf, sizeof(buf), record, &bad);
        if (id > 0) {
            run_until(r, &bad);
            cr_assert(eq(int, bad.res, -EBADF));
        } else {
            cr_assert(eq(i64, id, -EBADF));
            cr_assert(eq(int, bad.calls, 0), "a refused operation never calls back");
        }
    }
}

typedef struct chain {
    ring *r;
    int steps;
    int64_t victim;
    result victim_res;
} chain;

/* Each step starts the next from inside its callback, and the first cancels a timer. */
static void step(void *opaque, int res)
{
    chain *c = opaque;
    cr_assert(eq(int, res, 0));
    if (c->steps++ == 0) {
        cr_assert(ring_cancel(c->r, c->victim));
    }
    if (c->steps < 5) {
        cr_assert(gt(i64, ring_timer(c->r, 1, step, c), 0));
    }
}

Test(ring, callbacks_submit_and_cancel)
{
    FOR_EACH_BACKEND(r)
    {
        chain c = {.r = r};
        c.victim = ring_timer(r, 5000, record, &c.victim_res);
        cr_assert(gt(i64, ring_timer(r, 1, step, &c), 0));
        for (int i = 0; i < 200 && (c.steps < 5 || c.victim_res.calls == 0); i++) {
            ring_dispatch(r, 10);
        }
        cr_assert(eq(int, c.steps, 5));
        cr_assert(eq(int, c.victim_res.res, -ECANCELED));
        cr_assert(eq(sz, ring_in_flight(r), 0));
    }
}

static void must_not_run(void *opaque, int res)
{
    (void)opaque;
    cr_assert(false, "a callback ran after ring_free (res %d)", res);
}

Test(ring, free_with_operations_in_flight)
{
    FOR_EACH_BACKEND(r)
    {
        int sv[2];
        nonblocking_pair(sv);
        static char buf[64];
        ring_recv(r, sv[0], buf, sizeof(buf), must_not_run, NULL);
        ring_timer(r, 10000, must_not_run, NULL);
        ring_poll(r, sv[0], POLLIN, must_not_run, NULL);
        ring *keep = r;
        r = NULL; /* the loop's ring_free(NULL) is a no-op */
        ring_free(keep);
        cr_assert(eq(long, write(sv[1], "x", 1), 1));
        close(sv[0]);
        close(sv[1]);
    }
}

Test(ring, backend_from_the_environment)
{
    setenv("VMIG_RING", "epoll", 1);
    vmig_error *err = NULL;
    ring *r = ring_new(RING_BACKEND_AUTO, &err);
    cr_assert_not_null(r);
    cr_assert(eq(int, ring_get_backend(r), RING_BACKEND_EPOLL));
    cr_assert(eq(str, (char *)ring_backend_reason(r), "epoll: VMIG_RING=epoll"));
    ring_free(r);
    setenv("VMIG_RING", "kqueue", 1);
    cr_assert_null(ring_new(RING_BACKEND_AUTO, &err));
    cr_assert(eq(str, (char *)vmig_error_message(err),
                 "VMIG_RING='kqueue': give io_uring or "
                 "epoll"));
    vmig_error_free(err);
    unsetenv("VMIG_RING");
}
