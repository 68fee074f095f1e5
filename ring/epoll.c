/*
 * The epoll backend, for where io_uring is refused.  The same operations, done the readiness
 * way: an operation waits in its fd's queue until epoll says the fd is ready, then the
 * non-blocking system call runs; EAGAIN puts it back to wait.  Regular files are never
 * "not ready", so their reads and writes run at submission.  Timers share one timerfd armed
 * for the nearest deadline, and an eventfd marks results that arrived outside epoll_wait
 * (immediate completions, cancels), so the epoll fd alone tells a caller when to dispatch.
 */
#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "common/error.h"
#include "ring/ring-priv.h"

#define MAX_EVENTS 64

enum { TAG_TIMERFD = -1, TAG_EVENTFD = -2 };

typedef struct fd_watch {
    int fd;
    uint32_t mask; /* what epoll watches for it now */
    GQueue reqs;   /* ring_req *, in submission order */
} fd_watch;

typedef struct epoll_state {
    int epfd, timerfd, eventfd;
    GHashTable *watches; /* fd -> fd_watch * */
    GList *timers;       /* ring_req *, by deadline */
} epoll_state;

static epoll_state *state(const ring *r)
{
    return r->backend;
}

static void watch_free(gpointer p)
{
    fd_watch *w = p;
    g_queue_clear(&w->reqs);
    g_free(w);
}

static bool add_fd(int epfd, int fd, int tag, vmig_error **errp)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tag};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        vmig_set_error_errno(errp, errno, "epoll_ctl");
        return false;
    }
    return true;
}

static void ep_fini(ring *r)
{
    epoll_state *s = state(r);
    if (!s) {
        return;
    }
    if (s->watches) {
        g_hash_table_destroy(s->watches);
    }
    g_list_free(s->timers);
    const int fds[] = {s->epfd, s->timerfd, s->eventfd};
    for (size_t i = 0; i < G_N_ELEMENTS(fds); i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    g_free(s);
    r->backend = NULL;
}

static bool ep_init(ring *r, vmig_error **errp)
{
    epoll_state *s = g_new0(epoll_state, 1);
    r->backend = s;
    s->epfd = s->timerfd = s->eventfd = -1;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    s->eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->watches = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, watch_free);
    if (s->epfd < 0 || s->timerfd < 0 || s->eventfd < 0) {
        vmig_set_error_errno(errp, errno, "setting up epoll");
        ep_fini(r);
        return false;
    }
    if (!add_fd(s->epfd, s->timerfd, TAG_TIMERFD, errp) ||
        !add_fd(s->epfd, s->eventfd, TAG_EVENTFD, errp)) {
        ep_fini(r);
        return false;
    }
    return true;
}

/* A result that did not come from epoll_wait: make the epoll fd readable for it. */
static void kick(ring *r)
{
    uint64_t one = 1;
    ssize_t w = write(state(r)->eventfd, &one, sizeof(one));
    (void)w;
}

static void done_now(ring *r, ring_req *q, int res)
{
    ring_complete(r, q->id, res);
    kick(r);
}

static uint32_t wants(const ring_req *q)
{
    switch (q->op) {
    case RING_OP_POLL:
        return (uint32_t)(unsigned short)q->events;
    case RING_OP_RECV:
    case RING_OP_ACCEPT:
    case RING_OP_READ:
        return EPOLLIN;
    case RING_OP_SEND:
    case RING_OP_WRITE:
    case RING_OP_CONNECT:
        return EPOLLOUT;
    case RING_OP_TIMER:
    case RING_OP_COUNT:
        break;
    }
    return 0;
}

/* Brings epoll's interest in @w's fd in line with what its queue waits for; frees @w when
 * nothing waits.  Returns 0 or -errno from epoll_ctl. */
static int watch_update(ring *r, fd_watch *w)
{
    epoll_state *s = state(r);
    uint32_t mask = 0;
    for (GList *l = w->reqs.head; l; l = l->next) {
        mask |= wants(l->data);
    }
    if (mask == 0) {
        if (w->mask) {
            epoll_ctl(s->epfd, EPOLL_CTL_DEL, w->fd, NULL); /* EBADF: closed under us, fine */
        }
        g_hash_table_remove(s->watches, GINT_TO_POINTER(w->fd));
        return 0;
    }
    if (mask == w->mask) {
        return 0;
    }
    struct epoll_event ev = {.events = mask, .data.fd = w->fd};
    if (epoll_ctl(s->epfd, w->mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) < 0) {
        return -errno;
    }
    w->mask = mask;
    return 0;
}

static void timers_arm(ring *r)
{
    epoll_state *s = state(r);
    struct itimerspec its = {0};
    if (s->timers) {
        int64_t left = ((ring_req *)s->timers->data)->deadline_ms - ring_now_ms();
        if (left < 1) {
            left = 1; /* zero would disarm it */
        }
        its.it_value.tv_sec = left / 1000;
        its.it_value.tv_nsec = (left % 1000) * 1000000;
    }
    timerfd_settime(s->timerfd, 0, &its, NULL);
}

static gint by_deadline(gconstpointer a, gconstpointer b)
{
    int64_t da = ((const ring_req *)a)->deadline_ms, db = ((const ring_req *)b)->deadline_ms;
    return da < db ? -1 : da > db;
}

/* Runs @q's system call now.  Returns false when it would block. */
static bool attempt(ring *r, ring_req *q, uint32_t revents)
{
    ssize_t n = -1;
    switch (q->op) {
    case RING_OP_POLL: {
        uint32_t hit = revents & ((uint32_t)(unsigned short)q->events | EPOLLERR | EPOLLHUP);
        if (!hit) {
            return false;
        }
        ring_complete(r, q->id, (int)hit);
        return true;
    }
    case RING_OP_RECV:
        n = recv(q->fd, q->buf, q->len, MSG_DONTWAIT);
        break;
    case RING_OP_SEND:
        n = send(q->fd, q->buf, q->len, MSG_DONTWAIT | MSG_NOSIGNAL);
        break;
    case RING_OP_ACCEPT:
        n = accept4(q->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        break;
    case RING_OP_READ:
        n = q->offset < 0 ? read(q->fd, q->buf, q->len) : pread(q->fd, q->buf, q->len, q->offset);
        break;
    case RING_OP_WRITE:
        n = q->offset < 0 ? write(q->fd, q->buf, q->len) : pwrite(q->fd, q->buf, q->len, q->offset);
        break;
    case RING_OP_CONNECT: {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(q->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
            err = errno;
        }
        ring_complete(r, q->id, -err);
        return true;
    }
    case RING_OP_TIMER:
    case RING_OP_COUNT:
        return false;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return false;
    }
    ring_complete(r, q->id, n < 0 ? -errno : (int)MIN(n, INT32_MAX));
    return true;
}

static int ep_submit(ring *r, ring_req *q)
{
    epoll_state *s = state(r);
    if (q->op == RING_OP_TIMER) {
        s->timers = g_list_insert_sorted(s->timers, q, by_deadline);
        timers_arm(r);
        return 0;
    }
    struct stat st;
    if (q->fd < 0 || fstat(q->fd, &st) < 0) {
        return -EBADF;
    }
    if (wants(q) == 0) {
        return -EINVAL;
    }
    if ((q->op == RING_OP_READ || q->op == RING_OP_WRITE) && !S_ISFIFO(st.st_mode) &&
        !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode)) {
        /* a regular file or block device is always "ready": epoll refuses to watch it */
        if (!attempt(r, q, 0)) {
            ring_complete(r, q->id, -EAGAIN);
        }
        kick(r);
        return 0;
    }
    if (q->op == RING_OP_CONNECT) {
        int rc = connect(q->fd, (struct sockaddr *)&q->addr, q->addrlen);
        if (rc == 0 || errno != EINPROGRESS) {
            done_now(r, q, rc == 0 ? 0 : -errno);
            return 0;
        }
        q->connecting = true;
    }
    fd_watch *w = g_hash_table_lookup(s->watches, GINT_TO_POINTER(q->fd));
    if (!w) {
        w = g_new0(fd_watch, 1);
        w->fd = q->fd;
        g_queue_init(&w->reqs);
        g_hash_table_insert(s->watches, GINT_TO_POINTER(q->fd), w);
    }
    g_queue_push_tail(&w->reqs, q);
    int e = watch_update(r, w);
    if (e < 0) {
        g_queue_remove(&w->reqs, q);
        watch_update(r, w);
        return e;
    }
    return 0;
}

static void ep_cancel(ring *r, ring_req *q)
{
    epoll_state *s = state(r);
    if (q->op == RING_OP_TIMER) {
        s->timers = g_list_remove(s->timers, q);
        timers_arm(r);
    } else {
        fd_watch *w = g_hash_table_lookup(s->watches, GINT_TO_POINTER(q->fd));
        if (w && g_queue_remove(&w->reqs, q)) {
            watch_update(r, w);
        }
    }
    done_now(r, q, -ECANCELED);
}

static void fire_timers(ring *r)
{
    epoll_state *s = state(r);
    uint64_t ticks;
    ssize_t n = read(s->timerfd, &ticks, sizeof(ticks));
    (void)n;
    int64_t now = ring_now_ms();
    while (s->timers && ((ring_req *)s->timers->data)->deadline_ms <= now) {
        ring_req *q = s->timers->data;
        s->timers = g_list_delete_link(s->timers, s->timers);
        ring_complete(r, q->id, 0);
    }
    timers_arm(r);
}

static void serve_fd(ring *r, int fd, uint32_t revents)
{
    fd_watch *w = g_hash_table_lookup(state(r)->watches, GINT_TO_POINTER(fd));
    if (!w) {
        return;
    }
    for (GList *l = w->reqs.head, *next; l; l = next) {
        next = l->next;
        ring_req *q = l->data;
        if ((wants(q) & revents) == 0 && (revents & (EPOLLERR | EPOLLHUP)) == 0) {
            continue;
        }
        if (attempt(r, q, revents)) {
            g_queue_delete_link(&w->reqs, l);
        }
    }
    watch_update(r, w);
}

static int ep_wait(ring *r, int timeout_ms)
{
    epoll_state *s = state(r);
    struct epoll_event evs[MAX_EVENTS];
    int n = epoll_wait(s->epfd, evs, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        return errno == EINTR ? 0 : -errno;
    }
    for (int i = 0; i < n; i++) {
        if (evs[i].data.fd == TAG_TIMERFD) {
            fire_timers(r);
        } else if (evs[i].data.fd == TAG_EVENTFD) {
            uint64_t v;
            ssize_t m = read(s->eventfd, &v, sizeof(v));
            (void)m;
        } else {
            serve_fd(r, evs[i].data.fd, evs[i].events);
        }
    }
    /* a timer due while fds kept epoll busy */
    if (s->timers && ((ring_req *)s->timers->data)->deadline_ms <= ring_now_ms()) {
        fire_timers(r);
    }
    return 0;
}

static void ep_flush(ring *r)
{
    (void)r;
}

static int ep_fd(const ring *r)
{
    return state(r)->epfd;
}

const ring_backend_ops ring_epoll_ops = {
    .kind = RING_BACKEND_EPOLL,
    .init = ep_init,
    .fini = ep_fini,
    .submit = ep_submit,
    .cancel = ep_cancel,
    .wait = ep_wait,
    .flush = ep_flush,
    .fd = ep_fd,
};
