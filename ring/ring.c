/* What both backends share: operation ids, the done queue, dispatch, backend choice. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "ring/ring-priv.h"

static const char *const backend_names[RING_BACKEND_COUNT] = {
    [RING_BACKEND_AUTO] = "auto",
    [RING_BACKEND_IOURING] = "io_uring",
    [RING_BACKEND_EPOLL] = "epoll",
};

static const char *const op_names[RING_OP_COUNT] = {
    [RING_OP_POLL] = "poll", [RING_OP_TIMER] = "timer",   [RING_OP_RECV] = "recv",
    [RING_OP_SEND] = "send", [RING_OP_ACCEPT] = "accept", [RING_OP_CONNECT] = "connect",
    [RING_OP_READ] = "read", [RING_OP_WRITE] = "write",
};

const char *ring_backend_name(ring_backend b)
{
    return (unsigned)b < RING_BACKEND_COUNT ? backend_names[b] : "?";
}

const char *ring_op_name(ring_op op)
{
    return (unsigned)op < RING_OP_COUNT ? op_names[op] : "?";
}

int64_t ring_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void req_free(void *p)
{
    ring_req *q = p;
    if (q->detached && q->release) {
        q->release(q->release_data);
    }
    g_free(q);
}

static ring *ring_alloc(const ring_backend_ops *ops)
{
    ring *r = g_new0(ring, 1);
    r->ops = ops;
    r->reqs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, req_free);
    r->done = g_array_new(FALSE, FALSE, sizeof(ring_done));
    r->next_id = 1;
    return r;
}

static void ring_release(ring *r)
{
    g_hash_table_destroy(r->reqs);
    g_array_free(r->done, TRUE);
    g_free(r->reason);
    g_free(r);
}

ring *ring_new(ring_backend want, vmig_error **errp)
{
    const char *env = g_getenv("VMIG_RING");
    if (want == RING_BACKEND_AUTO && env && *env) {
        if (strcmp(env, "epoll") == 0) {
            want = RING_BACKEND_EPOLL;
        } else if (strcmp(env, "io_uring") == 0) {
            want = RING_BACKEND_IOURING;
        } else {
            vmig_set_error(errp, VMIG_E_INVAL, "VMIG_RING='%s': give io_uring or epoll", env);
            return NULL;
        }
        if (want == RING_BACKEND_EPOLL) {
            ring *r = ring_alloc(&ring_epoll_ops);
            if (!r->ops->init(r, errp)) {
                ring_release(r);
                return NULL;
            }
            r->reason = g_strdup("epoll: VMIG_RING=epoll");
            return r;
        }
    }
    if (want != RING_BACKEND_EPOLL) {
        ring *r = ring_alloc(&ring_uring_ops);
        vmig_error *err = NULL;
        if (r->ops->init(r, &err)) {
            r->reason = g_strdup("io_uring");
            return r;
        }
        ring_release(r);
        if (want == RING_BACKEND_IOURING) {
            vmig_propagate_error(errp, err);
            return NULL;
        }
        ring *e = ring_alloc(&ring_epoll_ops);
        if (!e->ops->init(e, errp)) {
            vmig_error_free(err);
            ring_release(e);
            return NULL;
        }
        e->reason = g_strdup_printf("epoll: %s", vmig_error_message(err));
        vmig_error_free(err);
        return e;
    }
    ring *r = ring_alloc(&ring_epoll_ops);
    if (!r->ops->init(r, errp)) {
        ring_release(r);
        return NULL;
    }
    r->reason = g_strdup("epoll");
    return r;
}

void ring_free(ring *r)
{
    if (!r) {
        return;
    }
    r->ops->fini(r);
    ring_release(r);
}

ring_backend ring_get_backend(const ring *r)
{
    return r->ops->kind;
}

const char *ring_backend_reason(const ring *r)
{
    return r->reason;
}

int ring_fd(const ring *r)
{
    return r->ops->fd(r);
}

size_t ring_in_flight(const ring *r)
{
    return g_hash_table_size(r->reqs);
}

ring_req *ring_req_find(ring *r, int64_t id)
{
    return g_hash_table_lookup(r->reqs, &id);
}

void ring_complete(ring *r, int64_t id, int res)
{
    ring_req *q = ring_req_find(r, id);
    if (!q || q->completed) {
        return;
    }
    if (q->cancelled && (res == -EINTR || res == -ETIME) && q->op != RING_OP_TIMER) {
        res = -ECANCELED; /* io-wq reports a cancelled blocking call as interrupted */
    }
    q->completed = true;
    ring_done d = {.id = id, .res = res};
    g_array_append_val(r->done, d);
}

static int64_t submit(ring *r, ring_req *tmpl)
{
    if (!tmpl->cb) {
        return -EINVAL;
    }
    ring_req *q = g_new(ring_req, 1);
    *q = *tmpl;
    q->id = r->next_id++;
    g_hash_table_insert(r->reqs, &q->id, q);
    int e = r->ops->submit(r, q);
    if (e < 0) {
        g_hash_table_remove(r->reqs, &q->id);
        return e;
    }
    return q->id;
}

int64_t ring_poll(ring *r, int fd, short events, ring_done_fn cb, void *opaque)
{
    ring_req q = {.op = RING_OP_POLL, .fd = fd, .events = events, .cb = cb, .opaque = opaque};
    return submit(r, &q);
}

int64_t ring_timer(ring *r, int ms, ring_done_fn cb, void *opaque)
{
    if (ms < 0) {
        return -EINVAL;
    }
    ring_req q = {.op = RING_OP_TIMER,
                  .fd = -1,
                  .cb = cb,
                  .opaque = opaque,
                  .deadline_ms = ring_now_ms() + ms,
                  .ts = {.tv_sec = ms / 1000, .tv_nsec = (long long)(ms % 1000) * 1000000}};
    return submit(r, &q);
}

static int64_t io(ring *r, ring_op op, int fd, void *buf, size_t len, int64_t offset,
                  ring_done_fn cb, void *opaque)
{
    ring_req q = {
        .op = op, .fd = fd, .buf = buf, .len = len, .offset = offset, .cb = cb, .opaque = opaque};
    return submit(r, &q);
}

int64_t ring_recv(ring *r, int fd, void *buf, size_t len, ring_done_fn cb, void *opaque)
{
    return io(r, RING_OP_RECV, fd, buf, len, -1, cb, opaque);
}

int64_t ring_send(ring *r, int fd, const void *buf, size_t len, ring_done_fn cb, void *opaque)
{
    return io(r, RING_OP_SEND, fd, (void *)(uintptr_t)buf, len, -1, cb, opaque);
}

int64_t ring_read(ring *r, int fd, void *buf, size_t len, int64_t offset, ring_done_fn cb,
                  void *opaque)
{
    return io(r, RING_OP_READ, fd, buf, len, offset, cb, opaque);
}

int64_t ring_write(ring *r, int fd, const void *buf, size_t len, int64_t offset, ring_done_fn cb,
                   void *opaque)
{
    return io(r, RING_OP_WRITE, fd, (void *)(uintptr_t)buf, len, offset, cb, opaque);
}

int64_t ring_accept(ring *r, int fd, ring_done_fn cb, void *opaque)
{
    return io(r, RING_OP_ACCEPT, fd, NULL, 0, -1, cb, opaque);
}

int64_t ring_connect(ring *r, int fd, const struct sockaddr *sa, socklen_t len, ring_done_fn cb,
                     void *opaque)
{
    ring_req q = {.op = RING_OP_CONNECT, .fd = fd, .cb = cb, .opaque = opaque, .addrlen = len};
    if (!sa || len == 0 || len > sizeof(q.addr)) {
        return -EINVAL;
    }
    memcpy(&q.addr, sa, len);
    return submit(r, &q);
}

bool ring_cancel(ring *r, int64_t id)
{
    ring_req *q = ring_req_find(r, id);
    if (!q || q->completed || q->cancelled) {
        return q && !q->completed;
    }
    q->cancelled = true;
    r->ops->cancel(r, q);
    return true;
}

void ring_detach(ring *r, int64_t id, GDestroyNotify release, void *data)
{
    ring_req *q = id > 0 ? ring_req_find(r, id) : NULL;
    if (!q) {
        if (release) {
            release(data);
        }
        return;
    }
    q->detached = true;
    q->release = release;
    q->release_data = data;
    ring_cancel(r, id);
}

int ring_timeout_ms(const ring *r)
{
    if (r->done->len > 0) {
        return 0;
    }
    int64_t best = -1;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, r->reqs);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        const ring_req *q = v;
        if (q->op == RING_OP_TIMER && !q->completed && (best < 0 || q->deadline_ms < best)) {
            best = q->deadline_ms;
        }
    }
    if (best < 0) {
        return -1;
    }
    int64_t left = best - ring_now_ms();
    return left <= 0 ? 0 : (int)MIN(left, INT32_MAX);
}

int ring_dispatch(ring *r, int timeout_ms)
{
    int e = r->ops->wait(r, r->done->len > 0 ? 0 : timeout_ms);
    if (e < 0) {
        return e;
    }
    /* Only what completed so far: callbacks that submit more are served next time. */
    g_autoptr(GArray) batch = r->done;
    r->done = g_array_new(FALSE, FALSE, sizeof(ring_done));
    r->dispatching++;
    for (guint i = 0; i < batch->len; i++) {
        ring_done d = g_array_index(batch, ring_done, i);
        ring_req *q = ring_req_find(r, d.id);
        if (!q) {
            continue;
        }
        ring_done_fn cb = q->detached ? NULL : q->cb;
        void *opaque = q->opaque;
        g_hash_table_remove(r->reqs, &d.id); /* releases a detached operation's data */
        if (cb) {
            cb(opaque, d.res);
        }
    }
    r->dispatching--;
    r->ops->flush(r);
    return (int)batch->len;
}
