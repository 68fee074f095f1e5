/*
 * The two-way channel relay (pump.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/error.h"
#include "pump.h"

typedef enum dir_step {
    D_RECV,
    D_LIMIT,
    D_SEND,
    D_DONE,
} dir_step;

typedef struct pump_dir {
    tp_pump *p;
    tp_dir dir;
    int from, to;
    uint8_t *buf; /* copy mode */
    size_t len, sent;
    int pipe[2]; /* splice mode: the kernel's pages move through it, no copy of ours */
    size_t in_pipe, pipe_cap;
    bool eof_in;
    dir_step step;
    int64_t op;
    int64_t t0_us;
} pump_dir;

struct tp_pump {
    ring *r;
    tp_pump_mode mode;
    pump_dir d[2];
    tp_limiter *lim;
    tp_pump_done_fn done;
    void *opaque;
    bool finished;
    int refs; /* the owner, and each operation in flight */
    tp_pump_stats st;
};

struct tp_limiter {
    uint64_t rate; /* bytes per second, 0: none */
    double tokens; /* may go below zero: a debt paid by waiting */
    int64_t last_us;
};

static const char *const dir_names[2] = {"a->b", "b->a"};

tp_limiter *tp_limiter_new(uint64_t bytes_per_s)
{
    tp_limiter *l = g_new0(tp_limiter, 1);
    l->rate = bytes_per_s;
    l->last_us = g_get_monotonic_time();
    return l;
}

void tp_limiter_free(tp_limiter *l)
{
    g_free(l);
}

/* Takes @n bytes' worth; how long to wait before sending them (microseconds). */
static int64_t limiter_take(tp_limiter *l, size_t n)
{
    if (!l || !l->rate) {
        return 0;
    }
    int64_t now = g_get_monotonic_time();
    double burst = MAX((double)l->rate / 10, (double)TP_PUMP_BUF); /* 100 ms, one buffer */
    l->tokens = MIN(burst, l->tokens + (double)l->rate * (double)(now - l->last_us) / 1e6);
    l->last_us = now;
    l->tokens -= (double)n;
    return l->tokens >= 0 ? 0 : (int64_t)(-l->tokens * 1e6 / (double)l->rate);
}

static void unref(void *opaque)
{
    tp_pump *p = opaque;
    if (--p->refs == 0) {
        for (int i = 0; i < 2; i++) {
            g_free(p->d[i].buf);
            for (int k = 0; k < 2; k++) {
                if (p->d[i].pipe[k] >= 0) {
                    close(p->d[i].pipe[k]);
                }
            }
        }
        g_free(p);
    }
}

static void finish(tp_pump *p, const vmig_error *err)
{
    if (p->finished) {
        return;
    }
    p->finished = true;
    for (int i = 0; i < 2; i++) {
        if (p->d[i].op > 0) {
            ring_cancel(p->r, p->d[i].op);
        }
        p->d[i].step = D_DONE;
    }
    tp_pump_done_fn done = p->done;
    p->done = NULL;
    if (done) {
        done(p->opaque, err);
    }
}

static void fail_errno(pump_dir *d, const char *what, int err)
{
    vmig_error *e = NULL;
    vmig_set_error_errno(&e, err, "channel %s, %s", dir_names[d->dir], what);
    finish(d->p, e);
    vmig_error_free(e);
}

static void submitted(pump_dir *d, int64_t id, const char *what)
{
    if (id < 0) {
        fail_errno(d, what, (int)-id);
        return;
    }
    d->op = id;
    d->p->refs++;
    d->t0_us = g_get_monotonic_time();
}

static void on_recv(void *opaque, int res);
static void on_send(void *opaque, int res);
static void on_limit(void *opaque, int res);

static void start_recv(pump_dir *d)
{
    d->step = D_RECV;
    submitted(d, ring_recv(d->p->r, d->from, d->buf, TP_PUMP_BUF, on_recv, d), "receive");
}

static void start_send(pump_dir *d)
{
    d->step = D_SEND;
    submitted(d, ring_send(d->p->r, d->to, d->buf + d->sent, d->len - d->sent, on_send, d), "send");
}

/* Settles an operation's callback: its time, its reference; false when the pump is over. */
static bool settle(pump_dir *d, uint64_t *wait_us)
{
    tp_pump *p = d->p;
    d->op = 0;
    *wait_us += (uint64_t)(g_get_monotonic_time() - d->t0_us);
    return !p->finished;
}

static void on_recv(void *opaque, int res)
{
    pump_dir *d = opaque;
    tp_pump *p = d->p;
    if (settle(d, &p->st.recv_wait_us[d->dir])) {
        if (res < 0) {
            fail_errno(d, "receive", -res);
        } else if (res == 0) {
            p->st.eof[d->dir] = true;
            d->step = D_DONE;
            shutdown(d->to, SHUT_WR); /* pass the end on */
            if (p->st.eof[0] && p->st.eof[1]) {
                finish(p, NULL);
            }
        } else {
            d->len = (size_t)res;
            d->sent = 0;
            p->st.bytes[d->dir] += (uint64_t)res;
            int64_t wait = limiter_take(p->lim, d->len);
            if (wait > 0) {
                d->step = D_LIMIT;
                submitted(d, ring_timer(p->r, (int)MAX(1, wait / 1000), on_limit, d), "timer");
            } else {
                start_send(d);
            }
        }
    }
    unref(p);
}

static void on_limit(void *opaque, int res)
{
    pump_dir *d = opaque;
    tp_pump *p = d->p;
    (void)res;
    if (settle(d, &p->st.limit_wait_us[d->dir])) {
        start_send(d);
    }
    unref(p);
}

static void on_send(void *opaque, int res)
{
    pump_dir *d = opaque;
    tp_pump *p = d->p;
    if (settle(d, &p->st.send_wait_us[d->dir])) {
        if (res < 0) {
            fail_errno(d, "send", -res);
        } else {
            d->sent += (size_t)res;
            if (d->sent < d->len) {
                start_send(d);
            } else {
                start_recv(d);
            }
        }
    }
    unref(p);
}

/* ---- splice mode ------------------------------------------------------------------------------
 *
 * Each direction moves the socket's pages into a pipe and from the pipe into the other socket
 * (splice(2), non-blocking, run when the ring says the socket is ready), so the bytes are never
 * copied into our memory.  The pipe is the direction's buffer: back-pressure as in copy mode. */

static void sp_run(pump_dir *d);

/* splice(2) into a socket whose peer is gone raises SIGPIPE: it has no MSG_NOSIGNAL.  A
 * library must not kill its process for that, so SIGPIPE is blocked around the call and one
 * it raised is taken back (one that was pending before is left alone). */
static ssize_t splice_out(int from, int to, size_t len)
{
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    bool was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE);
    ssize_t n = splice(from, NULL, to, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    int err = errno;
    if (n < 0 && err == EPIPE && !was_pending) {
        const struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return n;
}

static void sp_ready(void *opaque, int res)
{
    pump_dir *d = opaque;
    tp_pump *p = d->p;
    uint64_t *wait = d->step == D_RECV   ? &p->st.recv_wait_us[d->dir]
                     : d->step == D_SEND ? &p->st.send_wait_us[d->dir]
                                         : &p->st.limit_wait_us[d->dir];
    if (settle(d, wait)) {
        if (res < 0 && res != -ECANCELED) {
            fail_errno(d, "poll", -res);
        } else {
            sp_run(d);
        }
    }
    unref(p);
}

/* Moves what can move now; then waits for the side that holds it up. */
static void sp_run(pump_dir *d)
{
    tp_pump *p = d->p;
    for (;;) {
        bool moved = false;
        if (!d->eof_in && d->in_pipe < d->pipe_cap) {
            ssize_t n = splice(d->from, NULL, d->pipe[1], NULL, d->pipe_cap - d->in_pipe,
                               SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (n > 0) {
                d->in_pipe += (size_t)n;
                p->st.bytes[d->dir] += (uint64_t)n;
                moved = true;
            } else if (n == 0) {
                d->eof_in = true;
                moved = true;
            } else if (errno != EAGAIN && errno != EINTR) {
                fail_errno(d, "receive (splice)", errno);
                return;
            }
        }
        if (d->in_pipe > 0) {
            ssize_t n = splice_out(d->pipe[0], d->to, d->in_pipe);
            if (n > 0) {
                d->in_pipe -= (size_t)n;
                moved = true;
                int64_t wait = limiter_take(p->lim, (size_t)n);
                if (wait > 0) {
                    d->step = D_LIMIT;
                    submitted(d, ring_timer(p->r, (int)MAX(1, wait / 1000), sp_ready, d), "timer");
                    return;
                }
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                fail_errno(d, "send (splice)", errno);
                return;
            }
        }
        if (d->eof_in && d->in_pipe == 0) {
            p->st.eof[d->dir] = true;
            d->step = D_DONE;
            shutdown(d->to, SHUT_WR); /* pass the end on */
            if (p->st.eof[0] && p->st.eof[1]) {
                finish(p, NULL);
            }
            return;
        }
        if (!moved) {
            break;
        }
    }
    /* nothing moves: wait for the sink when the pipe holds bytes, else for the source */
    if (d->in_pipe > 0) {
        d->step = D_SEND;
        submitted(d, ring_poll(p->r, d->to, POLLOUT, sp_ready, d), "poll");
    } else {
        d->step = D_RECV;
        submitted(d, ring_poll(p->r, d->from, POLLIN, sp_ready, d), "poll");
    }
}

static bool sp_setup(pump_dir *d)
{
    if (pipe2(d->pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        d->pipe[0] = d->pipe[1] = -1;
        return false;
    }
    int cap = fcntl(d->pipe[1], F_SETPIPE_SZ, (int)TP_PUMP_BUF);
    if (cap < 0) {
        cap = fcntl(d->pipe[1], F_GETPIPE_SZ);
    }
    d->pipe_cap = cap > 0 ? (size_t)cap : 65536;
    return true;
}

static tp_pump_mode default_mode(void)
{
    const char *m = g_getenv("VMIG_PUMP");
    if (m && strcmp(m, "copy") == 0) {
        return TP_PUMP_COPY;
    }
    if (m && strcmp(m, "splice") == 0) {
        return TP_PUMP_SPLICE;
    }
    return TP_PUMP_DEFAULT_MODE;
}

const char *tp_pump_mode_name(tp_pump_mode m)
{
    return m == TP_PUMP_SPLICE ? "splice" : "copy";
}

tp_pump_mode tp_pump_get_mode(const tp_pump *p)
{
    return p->mode;
}

tp_pump *tp_pump_new(ring *r, int a, int b, tp_limiter *limiter, tp_pump_done_fn done, void *opaque)
{
    tp_pump *p = g_new0(tp_pump, 1);
    p->r = r;
    p->lim = limiter;
    p->done = done;
    p->opaque = opaque;
    p->refs = 1;
    p->mode = default_mode();
    for (int i = 0; i < 2; i++) {
        pump_dir *d = &p->d[i];
        d->p = p;
        d->dir = (tp_dir)i;
        d->from = i == TP_A_TO_B ? a : b;
        d->to = i == TP_A_TO_B ? b : a;
        d->pipe[0] = d->pipe[1] = -1;
    }
    if (p->mode == TP_PUMP_SPLICE && (!sp_setup(&p->d[0]) || !sp_setup(&p->d[1]))) {
        p->mode = TP_PUMP_COPY; /* no pipe to be had: copy */
    }
    if (p->mode == TP_PUMP_SPLICE) {
        /* splice(2) blocks on a blocking socket, whatever its flags say */
        int flags;
        for (int i = 0; i < 2; i++) {
            int fd = i ? b : a;
            if ((flags = fcntl(fd, F_GETFL)) >= 0 && !(flags & O_NONBLOCK)) {
                fcntl(fd, F_SETFL, flags | O_NONBLOCK);
            }
        }
        sp_run(&p->d[0]);
        if (!p->finished) {
            sp_run(&p->d[1]);
        }
        return p;
    }
    for (int i = 0; i < 2; i++) {
        p->d[i].buf = g_malloc(TP_PUMP_BUF);
    }
    start_recv(&p->d[0]);
    if (!p->finished) {
        start_recv(&p->d[1]);
    }
    return p;
}

void tp_pump_get_stats(const tp_pump *p, tp_pump_stats *ret)
{
    *ret = p->st;
}

void tp_pump_free(tp_pump *p)
{
    if (!p) {
        return;
    }
    p->finished = true;
    p->done = NULL;
    for (int i = 0; i < 2; i++) {
        int64_t id = p->d[i].op;
        p->d[i].op = 0;
        if (id > 0) {
            ring_detach(p->r, id, unref, p); /* its buffer is the kernel's until then */
        }
    }
    unref(p);
}
