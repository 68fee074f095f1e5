/*
 * The relay's two ends on the completion ring (relay.h).
 *
 * Every connection is a relay_chan that its relay owns until the relay is freed, so its
 * counters outlive it.  A channel has at most one step in flight (a poll, a connect, or a timer
 * standing in for one) and one deadline.  Neither gives the kernel a buffer, so a channel that
 * ends detaches them at once.  Its handshake and pump own their buffers, and their _free
 * functions wait for the kernel.
 *
 * The fail callback never runs from inside the step that failed.  Failures are queued and
 * reported from a timer of their own, so the callback may free the relay.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "relay.h"

#define CLASSIFY_PEEK 64    /* bytes of QEMU's stream enough to tell a channel */
#define CLASSIFY_RETRY_MS 2 /* a channel whose first bytes are partly in, looked at again */
#define CONNECT_RETRY_MS 2  /* QEMU's listen backlog was full (EAGAIN on a unix socket) */
#define ACCEPT_RETRY_MS 100 /* accept failed (out of fds): try again after this */
#define CHANS_MAX (4 * TP_CHANNELS_MAX) /* channel records a relay keeps, live or ended */

typedef enum chan_step {
    CH_CLASSIFY,  /* source: waiting for QEMU's first bytes */
    CH_HOLD,      /* source: main held back (the delay_main_ms test hook) */
    CH_WAIT,      /* destination: waiting for main's connect to QEMU to complete */
    CH_CONNECT,   /* to the agent (source) or to QEMU (destination) */
    CH_HANDSHAKE, /* source: with the agent */
    CH_PUMP,
    CH_DONE,
} chan_step;

typedef enum main_state {
    MAIN_NONE,
    MAIN_CONNECTING,
    MAIN_READY, /* its connect to QEMU completed: the others may connect */
    MAIN_FAILED,
} main_state;

typedef struct relay_core relay_core;

typedef struct relay_chan {
    relay_core *core;
    chan_step step;
    bool known;    /* kind and index are set (the source classifies first) */
    unsigned seq;  /* arrival */
    int a, b;      /* the pump's sides: a faces the source QEMU, b the destination */
    int64_t io_op; /* the step in flight */
    int64_t deadline_op;
    tp_handshake *hs;
    tp_pump *pump;
    bool early; /* the handshake or pump ended inside its _new */
    vmig_error *early_err;
    tp_channel_stats st;
} relay_chan;

struct relay_core {
    ring *r;
    bool dest;
    tp_limiter *lim;
    int timeout_ms;
    tp_relay_fail_fn fail;
    void *opaque;
    GPtrArray *chans;   /* relay_chan, in arrival order */
    GPtrArray *reports; /* vmig_error, for report_op */
    int64_t report_op;
    unsigned next_seq;
    bool reporting; /* inside the fail callback */
    bool freed;     /* freed from the fail callback: release once it returns */
};

struct tp_source_relay {
    relay_core c; /* first: releasing the core frees the relay */
    char *path;
    int listen_fd;
    int64_t accept_op;
    bool accept_failing; /* reported; not again until an accept succeeds */
    struct sockaddr_storage agent;
    socklen_t agent_len;
    tp_key key;
    uint8_t token[TP_TOKEN_LEN];
    int delay_main_ms;
    bool first_is_main, first_seen;
    tp_kind fixed_kind;
    unsigned next_index;
};

struct tp_dest_relay {
    relay_core c; /* first, as above */
    char *qemu_path;
    struct sockaddr_un qemu;
    bool path_fits;
    char *nbd_path; /* NULL: NBD channels are refused */
    struct sockaddr_un nbd;
    bool nbd_fits;
    main_state main;
    unsigned next_order;
};

/* ---- the core: reports, channel records, teardown ---------------------------------------------
 */

static void error_free(void *p)
{
    vmig_error_free(p);
}

static void chan_free(void *p)
{
    relay_chan *ch = p;
    vmig_error_free(ch->early_err);
    g_free(ch);
}

static void core_init(relay_core *c, ring *r, bool dest, tp_limiter *lim, int timeout_ms,
                      tp_relay_fail_fn fail, void *opaque)
{
    c->r = r;
    c->dest = dest;
    c->lim = lim;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
    c->fail = fail;
    c->opaque = opaque;
    c->chans = g_ptr_array_new_with_free_func(chan_free);
    c->reports = g_ptr_array_new_with_free_func(error_free);
}

static void core_release(relay_core *c)
{
    g_ptr_array_free(c->chans, TRUE);
    g_ptr_array_free(c->reports, TRUE);
    g_free(c); /* the relay it begins */
}

static void on_report(void *opaque, int res)
{
    relay_core *c = opaque;
    (void)res;
    c->report_op = 0;
    g_autoptr(GPtrArray) batch = c->reports;
    c->reports = g_ptr_array_new_with_free_func(error_free);
    c->reporting = true;
    for (guint i = 0; i < batch->len && !c->freed; i++) {
        c->fail(c->opaque, g_ptr_array_index(batch, i));
    }
    c->reporting = false;
    if (c->freed) {
        core_release(c);
    }
}

/* Queues @err (stolen) for the fail callback. */
static void core_report(relay_core *c, vmig_error *err)
{
    if (!c->fail) {
        vmig_error_free(err);
        return;
    }
    g_ptr_array_add(c->reports, err);
    if (c->report_op <= 0) {
        int64_t id = ring_timer(c->r, 0, on_report, c);
        c->report_op = id > 0 ? id : 0; /* else: the next report tries again */
    }
}

static relay_chan *chan_new(relay_core *c, int fd)
{
    relay_chan *ch = g_new0(relay_chan, 1);
    ch->core = c;
    ch->seq = c->next_seq++;
    ch->a = fd;
    ch->b = -1;
    g_ptr_array_add(c->chans, ch);
    return ch;
}

static const char *chan_name(const relay_chan *ch, char *buf, size_t len)
{
    if (!ch->known) {
        return "a connection from QEMU";
    }
    if (ch->st.kind == TP_KIND_MULTIFD) {
        g_snprintf(buf, len, "multifd channel %u", ch->st.index);
    } else {
        g_snprintf(buf, len, "%s channel", tp_kind_name(ch->st.kind));
    }
    return buf;
}

static void stats_from_pump(tp_channel_stats *st, const tp_pump *p)
{
    tp_pump_stats ps;
    tp_pump_get_stats(p, &ps);
    st->bytes_out = ps.bytes[TP_A_TO_B];
    st->bytes_in = ps.bytes[TP_B_TO_A];
    st->recv_wait_us = ps.recv_wait_us[TP_A_TO_B];
    st->send_wait_us = ps.send_wait_us[TP_A_TO_B];
    st->limit_wait_us = ps.limit_wait_us[TP_A_TO_B] + ps.limit_wait_us[TP_B_TO_A];
}

static void op_detach(ring *r, int64_t *id)
{
    if (*id > 0) {
        ring_detach(r, *id, NULL, NULL); /* no buffer of ours: nothing to wait for */
    }
    *id = 0;
}

static void fd_close(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
    }
    *fd = -1;
}

/* Ends what @ch has in flight and closes its sockets (which QEMU sees); its counters stay. */
static void chan_stop(relay_chan *ch)
{
    ring *r = ch->core->r;
    op_detach(r, &ch->io_op);
    op_detach(r, &ch->deadline_op);
    tp_handshake_free(ch->hs);
    ch->hs = NULL;
    if (ch->pump) {
        stats_from_pump(&ch->st, ch->pump);
        tp_pump_free(ch->pump);
        ch->pump = NULL;
    }
    fd_close(&ch->a);
    fd_close(&ch->b);
    if (ch->step != CH_DONE) {
        ch->step = CH_DONE;
        ch->st.end_us = g_get_monotonic_time();
    }
}

/* A connection that never became a channel goes without a record.  Nothing may touch @ch
 * after. */
static void chan_drop(relay_chan *ch)
{
    chan_stop(ch);
    g_ptr_array_remove(ch->core->chans, ch);
}

static void dest_main_failed(tp_dest_relay *d);

/* Closes @ch and reports why, naming it.  Nothing may touch @ch after (an unidentified
 * connection goes at once). */
static void chan_fail(relay_chan *ch, vmig_errc code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void chan_fail(relay_chan *ch, vmig_errc code, const char *fmt, ...)
{
    if (ch->step == CH_DONE) {
        return;
    }
    relay_core *c = ch->core;
    bool main_before_qemu = c->dest && ch->st.kind == TP_KIND_MAIN &&
                            ((tp_dest_relay *)c)->main == MAIN_CONNECTING;
    chan_stop(ch);
    ch->st.failed = true;
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    char name[64];
    vmig_error *err = NULL;
    vmig_set_error(&err, code, "%s: %s", chan_name(ch, name, sizeof(name)), msg);
    core_report(c, err);
    if (main_before_qemu) {
        dest_main_failed((tp_dest_relay *)c);
    }
    if (!ch->known) {
        chan_drop(ch);
    }
}

static void chan_fail_errno(relay_chan *ch, int errnum, const char *what)
{
    chan_fail(ch, errnum == ENOENT ? VMIG_E_NOTFOUND : VMIG_E_IO, "%s: %s", what,
              g_strerror(errnum));
}

static void chan_fail_with(relay_chan *ch, const vmig_error *err)
{
    chan_fail(ch, vmig_error_code(err), "%s", vmig_error_message(err));
}

/* ---- deadlines, the pump --------------------------------------------------------------------- */

static const char *step_late(chan_step s)
{
    switch (s) {
    case CH_CLASSIFY:
        return "too few bytes to tell which channel it is";
    case CH_WAIT:
        return "no main channel came";
    case CH_CONNECT:
        return "the connect did not complete";
    default:
        return "no progress";
    }
}

static void on_deadline(void *opaque, int res)
{
    relay_chan *ch = opaque;
    ch->deadline_op = 0;
    if (res == 0) {
        chan_fail(ch, VMIG_E_TIMEOUT, "%s in %d ms", step_late(ch->step), ch->core->timeout_ms);
    }
}

/* Replaces @ch's deadline: the relay's timeout from now, or none. */
static void deadline_set(relay_chan *ch, bool on)
{
    op_detach(ch->core->r, &ch->deadline_op);
    if (on) {
        int64_t id = ring_timer(ch->core->r, ch->core->timeout_ms, on_deadline, ch);
        ch->deadline_op = id > 0 ? id : 0;
    }
}

static void pump_end(relay_chan *ch, const vmig_error *err)
{
    if (err) {
        chan_fail_with(ch, err);
    } else {
        chan_stop(ch); /* end of file both ways: both sides have passed it on */
    }
}

static void on_pump_done(void *opaque, const vmig_error *err)
{
    relay_chan *ch = opaque;
    if (!ch->pump) { /* still inside tp_pump_new */
        ch->early = true;
        ch->early_err = vmig_error_copy(err);
        return;
    }
    pump_end(ch, err);
}

static void chan_pump(relay_chan *ch)
{
    deadline_set(ch, false);
    ch->step = CH_PUMP;
    ch->st.start_us = g_get_monotonic_time();
    ch->early = false;
    tp_pump *p = tp_pump_new(ch->core->r, ch->a, ch->b, ch->core->lim, on_pump_done, ch);
    ch->pump = p;
    if (ch->early) {
        g_autoptr(vmig_error) err = g_steal_pointer(&ch->early_err);
        pump_end(ch, err);
    }
}

/* ---- source side ----------------------------------------------------------------------------- */

static tp_source_relay *source_of(const relay_chan *ch)
{
    return (tp_source_relay *)ch->core;
}

static void handshake_end(relay_chan *ch, const vmig_error *err)
{
    tp_handshake_free(ch->hs);
    ch->hs = NULL;
    if (err) {
        chan_fail_with(ch, err);
    } else {
        chan_pump(ch);
    }
}

static void on_handshake(void *opaque, const tp_hello *hello, const vmig_error *err)
{
    relay_chan *ch = opaque;
    (void)hello;
    if (!ch->hs) { /* still inside tp_handshake_source */
        ch->early = true;
        ch->early_err = vmig_error_copy(err);
        return;
    }
    handshake_end(ch, err);
}

static void source_handshake(relay_chan *ch)
{
    tp_source_relay *s = source_of(ch);
    deadline_set(ch, false); /* the handshake keeps its own */
    ch->step = CH_HANDSHAKE;
    ch->early = false;
    tp_handshake *h = tp_handshake_source(s->c.r, ch->b, &s->key, s->c.timeout_ms, ch->st.kind,
                                          ch->st.index, s->token, on_handshake, ch);
    ch->hs = h;
    if (ch->early) {
        g_autoptr(vmig_error) err = g_steal_pointer(&ch->early_err);
        handshake_end(ch, err);
    }
}

static void on_connected(void *opaque, int res);

static void source_connect(relay_chan *ch)
{
    tp_source_relay *s = source_of(ch);
    ch->step = CH_CONNECT;
    deadline_set(ch, true);
    ch->b = socket(s->agent.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ch->b >= 0 && s->agent.ss_family != AF_UNIX) {
        /* QEMU's small writes (a section's end, the return path's messages) go out at once:
         * Nagle's wait for an ACK costs up to 40 ms a round trip, in the downtime */
        int one = 1;
        setsockopt(ch->b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (ch->b < 0) {
        chan_fail_errno(ch, errno, "connecting to the agent: socket");
        return;
    }
    int64_t id = ring_connect(s->c.r, ch->b, (const struct sockaddr *)&s->agent, s->agent_len,
                              on_connected, ch);
    if (id < 0) {
        chan_fail_errno(ch, (int)-id, "connecting to the agent");
        return;
    }
    ch->io_op = id;
}

static void on_hold(void *opaque, int res)
{
    relay_chan *ch = opaque;
    (void)res;
    ch->io_op = 0;
    source_connect(ch);
}

static void source_identified(relay_chan *ch, tp_kind kind, unsigned index)
{
    tp_source_relay *s = source_of(ch);
    ch->known = true;
    ch->st.kind = kind;
    ch->st.index = index;
    if (kind == TP_KIND_MAIN && s->delay_main_ms > 0) {
        deadline_set(ch, false);
        ch->step = CH_HOLD;
        int64_t id = ring_timer(s->c.r, s->delay_main_ms, on_hold, ch);
        if (id > 0) {
            ch->io_op = id;
            return;
        }
    }
    source_connect(ch);
}

static void classify_wait(relay_chan *ch);

static void on_classify_retry(void *opaque, int res)
{
    relay_chan *ch = opaque;
    (void)res;
    ch->io_op = 0;
    classify_wait(ch);
}

/* Tells @ch by the bytes QEMU has sent so far, which stay in the socket for the pump. */
static void classify(relay_chan *ch, int revents)
{
    uint8_t buf[CLASSIFY_PEEK];
    ssize_t n = recv(ch->a, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        classify_wait(ch);
        return;
    }
    if (n < 0) {
        chan_fail_errno(ch, errno, "reading its first bytes");
        return;
    }
    if (n == 0) {
        chan_drop(ch); /* closed before saying anything: no channel */
        return;
    }
    tp_source_relay *s = (tp_source_relay *)ch->core; /* the core is its first member */
    if (s->first_is_main && !s->first_seen) {
        s->first_seen = true;
        source_identified(ch, TP_KIND_MAIN, 0);
        return;
    }
    unsigned id = 0;
    switch (tp_classify(buf, (size_t)n, &id)) {
    case TP_STREAM_MAIN:
        source_identified(ch, TP_KIND_MAIN, 0);
        break;
    case TP_STREAM_MULTIFD:
        source_identified(ch, TP_KIND_MULTIFD, id);
        break;
    case TP_STREAM_OTHER:
        source_identified(ch, TP_KIND_PREEMPT, 0);
        break;
    case TP_STREAM_MORE:
        if (revents & (POLLRDHUP | POLLHUP)) {
            chan_fail(ch, VMIG_E_PROTO, "closed after %zd bytes, too few to tell the channel", n);
            return;
        }
        /* the rest is on its way: the socket stays readable, so look again in a moment */
        int64_t t = ring_timer(ch->core->r, CLASSIFY_RETRY_MS, on_classify_retry, ch);
        if (t < 0) {
            chan_fail_errno(ch, (int)-t, "waiting for its first bytes");
            return;
        }
        ch->io_op = t;
        break;
    }
}

static void on_readable(void *opaque, int res)
{
    relay_chan *ch = opaque;
    ch->io_op = 0;
    if (res < 0) {
        chan_fail_errno(ch, -res, "waiting for its first bytes");
        return;
    }
    classify(ch, res);
}

static void classify_wait(relay_chan *ch)
{
    int64_t id = ring_poll(ch->core->r, ch->a, POLLIN | POLLRDHUP, on_readable, ch);
    if (id < 0) {
        chan_fail_errno(ch, (int)-id, "waiting for its first bytes");
        return;
    }
    ch->io_op = id;
}

static void source_accepted(tp_source_relay *s, int fd)
{
    if (s->c.chans->len >= CHANS_MAX) {
        close(fd);
        vmig_error *err = NULL;
        vmig_set_error(&err, VMIG_E_PROTO,
                       "a connection from QEMU on %s: refused, %u connections already", s->path,
                       s->c.chans->len);
        core_report(&s->c, err);
        return;
    }
    relay_chan *ch = chan_new(&s->c, fd);
    if (s->fixed_kind) {
        source_identified(ch, s->fixed_kind, s->next_index++);
        return;
    }
    ch->step = CH_CLASSIFY;
    deadline_set(ch, true);
    classify_wait(ch);
}

static void accept_next(tp_source_relay *s, int delay_ms);

static void on_accept(void *opaque, int res)
{
    tp_source_relay *s = opaque;
    s->accept_op = 0;
    if (res >= 0) {
        s->accept_failing = false;
        source_accepted(s, res);
        accept_next(s, 0);
        return;
    }
    if (res != -ECONNABORTED && res != -EINTR && res != -EAGAIN && !s->accept_failing) {
        s->accept_failing = true;
        vmig_error *err = NULL;
        vmig_set_error_errno(&err, -res, "accepting QEMU's connections on %s", s->path);
        core_report(&s->c, err);
    }
    accept_next(s, res == -ECONNABORTED || res == -EINTR ? 0 : ACCEPT_RETRY_MS);
}

static void on_accept_retry(void *opaque, int res)
{
    tp_source_relay *s = opaque;
    (void)res;
    s->accept_op = 0;
    accept_next(s, 0);
}

static void accept_next(tp_source_relay *s, int delay_ms)
{
    int64_t id = delay_ms > 0 ? ring_timer(s->c.r, delay_ms, on_accept_retry, s)
                              : ring_accept(s->c.r, s->listen_fd, on_accept, s);
    if (id < 0) {
        vmig_error *err = NULL;
        vmig_set_error_errno(&err, (int)-id, "accepting QEMU's connections on %s", s->path);
        core_report(&s->c, err);
        return;
    }
    s->accept_op = id;
}

static bool source_listen(tp_source_relay *s, vmig_error **errp)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(s->path) >= sizeof(sun.sun_path)) {
        vmig_set_error(errp, VMIG_E_INVAL, "listening on %s: the path is over %zu bytes", s->path,
                       sizeof(sun.sun_path) - 1);
        return false;
    }
    memcpy(sun.sun_path, s->path, strlen(s->path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "listening on %s: socket", s->path);
        return false;
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        vmig_set_error_errno(errp, errno, "listening on %s", s->path);
        close(fd);
        return false;
    }
    s->listen_fd = fd; /* the file is ours from here: freeing removes it */
    if (listen(fd, TP_CHANNELS_MAX + 4) < 0) {
        vmig_set_error_errno(errp, errno, "listening on %s", s->path);
        return false;
    }
    return true;
}

tp_source_relay *tp_source_relay_new(ring *r, const tp_source_cfg *cfg, tp_relay_fail_fn fail,
                                     void *opaque, vmig_error **errp)
{
    if (!cfg->listen_path || !cfg->agent || !cfg->key || !cfg->token ||
        cfg->agent_len > sizeof(struct sockaddr_storage)) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "source relay: a listen path, the agent's address, a key and a token are "
                       "needed");
        return NULL;
    }
    tp_source_relay *s = g_new0(tp_source_relay, 1);
    core_init(&s->c, r, false, cfg->limiter, cfg->timeout_ms, fail, opaque);
    s->path = g_strdup(cfg->listen_path);
    s->listen_fd = -1;
    memcpy(&s->agent, cfg->agent, cfg->agent_len);
    s->agent_len = cfg->agent_len;
    s->key = *cfg->key;
    memcpy(s->token, cfg->token, TP_TOKEN_LEN);
    s->delay_main_ms = cfg->delay_main_ms;
    s->first_is_main = cfg->first_is_main;
    s->fixed_kind = cfg->fixed_kind;
    if (!source_listen(s, errp)) {
        tp_source_relay_free(s);
        return NULL;
    }
    int64_t id = ring_accept(r, s->listen_fd, on_accept, s);
    if (id < 0) {
        vmig_set_error_errno(errp, (int)-id, "accepting QEMU's connections on %s", s->path);
        tp_source_relay_free(s);
        return NULL;
    }
    s->accept_op = id;
    return s;
}

/* Channels main first, then multifd by index, then preempt; arrival breaks ties. */
static int kind_rank(tp_kind k)
{
    return k == TP_KIND_MAIN ? 0 : k == TP_KIND_MULTIFD ? 1 : k == TP_KIND_NBD ? 3 : 2;
}

static gint by_channel(gconstpointer pa, gconstpointer pb)
{
    const relay_chan *a = *(relay_chan *const *)pa, *b = *(relay_chan *const *)pb;
    int ra = kind_rank(a->st.kind), rb = kind_rank(b->st.kind);
    if (ra != rb) {
        return ra - rb;
    }
    if (a->st.index != b->st.index) {
        return a->st.index < b->st.index ? -1 : 1;
    }
    return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static size_t core_stats(const relay_core *c, tp_channel_stats *ret, size_t max)
{
    g_autoptr(GPtrArray) known = g_ptr_array_new();
    for (guint i = 0; i < c->chans->len; i++) {
        relay_chan *ch = g_ptr_array_index(c->chans, i);
        if (ch->known) {
            g_ptr_array_add(known, ch);
        }
    }
    g_ptr_array_sort(known, by_channel);
    size_t n = MIN(max, (size_t)known->len);
    for (size_t i = 0; i < n; i++) {
        const relay_chan *ch = g_ptr_array_index(known, i);
        ret[i] = ch->st;
        if (ch->pump) {
            stats_from_pump(&ret[i], ch->pump);
        }
    }
    return n;
}

size_t tp_source_relay_stats(const tp_source_relay *s, tp_channel_stats *ret, size_t max)
{
    return core_stats(&s->c, ret, max);
}

/* Everything that can call back into the core stops; release it now, or once the fail
 * callback that is freeing it returns. */
static void core_free(relay_core *c)
{
    for (guint i = 0; i < c->chans->len; i++) {
        chan_stop(g_ptr_array_index(c->chans, i));
    }
    op_detach(c->r, &c->report_op);
    if (c->reporting) {
        c->freed = true; /* on_report releases it */
        return;
    }
    core_release(c);
}

void tp_source_relay_free(tp_source_relay *s)
{
    if (!s) {
        return;
    }
    op_detach(s->c.r, &s->accept_op);
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
        unlink(s->path);
    }
    g_free(s->path);
    s->path = NULL;
    memset(&s->key, 0, sizeof(s->key));
    core_free(&s->c);
}

/* ---- destination side ------------------------------------------------------------------------ */

static tp_dest_relay *dest_of(const relay_chan *ch)
{
    return (tp_dest_relay *)ch->core;
}

/* Where @ch goes in QEMU: its NBD server for an NBD channel, else its migration socket. */
static const char *dest_target(relay_chan *ch, const struct sockaddr_un **ret_addr, bool *ret_fits)
{
    tp_dest_relay *d = dest_of(ch);
    bool nbd = ch->st.kind == TP_KIND_NBD;
    *ret_addr = nbd ? &d->nbd : &d->qemu;
    *ret_fits = nbd ? d->nbd_fits : d->path_fits;
    return nbd ? d->nbd_path : d->qemu_path;
}

static void dest_connect_try(relay_chan *ch)
{
    tp_dest_relay *d = dest_of(ch);
    const struct sockaddr_un *addr = NULL;
    bool fits = false;
    const char *path = dest_target(ch, &addr, &fits);
    if (!fits) {
        chan_fail(ch, VMIG_E_INVAL, "connecting to QEMU at %s: the path is over %zu bytes", path,
                  sizeof(addr->sun_path) - 1);
        return;
    }
    ch->b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ch->b < 0) {
        chan_fail_errno(ch, errno, "connecting to QEMU: socket");
        return;
    }
    int64_t id = ring_connect(d->c.r, ch->b, (const struct sockaddr *)addr, sizeof(*addr),
                              on_connected, ch);
    if (id < 0) {
        g_autofree char *what = g_strdup_printf("connecting to QEMU at %s", path);
        chan_fail_errno(ch, (int)-id, what);
        return;
    }
    ch->io_op = id;
}

/* Starts @ch's connect to QEMU: its place in QEMU's line is taken now. */
static void dest_connect(relay_chan *ch)
{
    tp_dest_relay *d = dest_of(ch);
    ch->step = CH_CONNECT;
    if (ch->st.kind != TP_KIND_NBD) { /* NBD goes to another socket: no place in that line */
        ch->st.order = d->next_order++;
    }
    deadline_set(ch, true);
    dest_connect_try(ch);
}

static void on_connect_retry(void *opaque, int res)
{
    relay_chan *ch = opaque;
    (void)res;
    ch->io_op = 0;
    dest_connect_try(ch);
}

static void dest_main_ready(tp_dest_relay *d)
{
    d->main = MAIN_READY;
    for (guint i = 0; i < d->c.chans->len; i++) {
        relay_chan *ch = g_ptr_array_index(d->c.chans, i);
        if (ch->step == CH_WAIT) {
            dest_connect(ch); /* a failure keeps the record: the array stays as it is */
        }
    }
}

static void dest_main_failed(tp_dest_relay *d)
{
    d->main = MAIN_FAILED;
    for (guint i = 0; i < d->c.chans->len; i++) {
        relay_chan *ch = g_ptr_array_index(d->c.chans, i);
        if (ch->step == CH_WAIT) {
            chan_fail(ch, VMIG_E_IO, "the main channel failed before it reached QEMU");
        }
    }
}

static void dest_connected(relay_chan *ch, int res)
{
    tp_dest_relay *d = dest_of(ch);
    if (res == -EAGAIN) { /* QEMU's backlog is full: it is accepting, try again shortly */
        fd_close(&ch->b);
        int64_t id = ring_timer(d->c.r, CONNECT_RETRY_MS, on_connect_retry, ch);
        if (id > 0) {
            ch->io_op = id;
            return;
        }
    }
    if (res < 0) {
        const struct sockaddr_un *addr = NULL;
        bool fits = false;
        g_autofree char *what = g_strdup_printf("connecting to QEMU at %s",
                                                dest_target(ch, &addr, &fits));
        chan_fail_errno(ch, -res, what);
        return;
    }
    if (ch->st.kind == TP_KIND_MAIN) {
        dest_main_ready(d);
    }
    chan_pump(ch);
}

static void on_connected(void *opaque, int res)
{
    relay_chan *ch = opaque;
    ch->io_op = 0;
    if (ch->core->dest) {
        dest_connected(ch, res);
    } else if (res < 0) {
        chan_fail_errno(ch, -res, "connecting to the agent");
    } else {
        source_handshake(ch);
    }
}

tp_dest_relay *tp_dest_relay_new(ring *r, const char *qemu_path, tp_limiter *limiter,
                                 int timeout_ms, tp_relay_fail_fn fail, void *opaque)
{
    tp_dest_relay *d = g_new0(tp_dest_relay, 1);
    core_init(&d->c, r, true, limiter, timeout_ms, fail, opaque);
    d->qemu_path = g_strdup(qemu_path);
    d->qemu.sun_family = AF_UNIX;
    size_t len = strlen(qemu_path);
    d->path_fits = len < sizeof(d->qemu.sun_path);
    if (d->path_fits) {
        memcpy(d->qemu.sun_path, qemu_path, len + 1);
    }
    return d;
}

/* Sets @a to unix socket @path; whether the path fits. */
static bool unix_addr_set(struct sockaddr_un *a, const char *path)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof(a->sun_path)) {
        return false;
    }
    memcpy(a->sun_path, path, len + 1);
    return true;
}

void tp_dest_relay_set_nbd(tp_dest_relay *d, const char *nbd_path)
{
    g_free(d->nbd_path);
    d->nbd_path = g_strdup(nbd_path);
    d->nbd_fits = unix_addr_set(&d->nbd, nbd_path);
}

/* Whether a channel of @kind and @index may join @d. */
static bool dest_admissible(const tp_dest_relay *d, tp_kind kind, unsigned index, vmig_error **errp)
{
    if (kind == TP_KIND_NBD) {
        unsigned n = 0;
        for (guint i = 0; i < d->c.chans->len; i++) {
            n += ((const relay_chan *)g_ptr_array_index(d->c.chans, i))->st.kind == TP_KIND_NBD;
        }
        if (!d->nbd_path) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "an nbd channel for a migration that copies no disk");
            return false;
        }
        if (n >= TP_CHANNELS_MAX) {
            vmig_set_error(errp, VMIG_E_PROTO, "nbd channel %u: %u of them already", index, n);
            return false;
        }
        return true;
    }
    if (kind != TP_KIND_MAIN && kind != TP_KIND_MULTIFD && kind != TP_KIND_PREEMPT) {
        vmig_set_error(errp, VMIG_E_INVAL, "a %s connection is no migration channel",
                       tp_kind_name(kind));
        return false;
    }
    if (index >= TP_CHANNELS_MAX) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s channel %u: channel ids go up to %d",
                       tp_kind_name(kind), index, TP_CHANNELS_MAX - 1);
        return false;
    }
    for (guint i = 0; i < d->c.chans->len; i++) {
        const relay_chan *ch = g_ptr_array_index(d->c.chans, i);
        if (ch->st.kind != kind || (kind == TP_KIND_MULTIFD && ch->st.index != index)) {
            continue;
        }
        if (kind == TP_KIND_MULTIFD) {
            vmig_set_error(errp, VMIG_E_PROTO, "multifd channel %u: a second channel with that id",
                           index);
        } else {
            vmig_set_error(errp, VMIG_E_PROTO, "a second %s channel", tp_kind_name(kind));
        }
        return false;
    }
    return true;
}

bool tp_dest_relay_add(tp_dest_relay *d, int fd, tp_kind kind, unsigned index, vmig_error **errp)
{
    if (!dest_admissible(d, kind, index, errp)) {
        close(fd);
        return false;
    }
    relay_chan *ch = chan_new(&d->c, fd);
    ch->known = true;
    ch->st.kind = kind;
    ch->st.index = kind == TP_KIND_MULTIFD || kind == TP_KIND_NBD ? index : 0;
    if (kind == TP_KIND_MAIN) {
        d->main = MAIN_CONNECTING;
    }
    /* main first; QEMU's NBD server takes its connections in any order */
    if (kind == TP_KIND_MAIN || kind == TP_KIND_NBD || d->main == MAIN_READY) {
        dest_connect(ch);
    } else if (d->main == MAIN_FAILED) {
        chan_fail(ch, VMIG_E_IO, "the main channel failed before it reached QEMU");
    } else {
        ch->step = CH_WAIT;
        deadline_set(ch, true);
    }
    return true;
}

size_t tp_dest_relay_stats(const tp_dest_relay *d, tp_channel_stats *ret, size_t max)
{
    return core_stats(&d->c, ret, max);
}

void tp_dest_relay_free(tp_dest_relay *d)
{
    if (!d) {
        return;
    }
    g_free(d->qemu_path);
    d->qemu_path = NULL;
    g_free(d->nbd_path);
    d->nbd_path = NULL;
    core_free(&d->c);
}
