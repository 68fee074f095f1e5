/*
 * The io_uring backend.  Each SQE carries a tag, kind:8 | op:8 | id:48 (liburing's proxy
 * example packs its user_data the same way), never a pointer: a CQE whose id is gone is
 * dropped, so nothing dangles.  Outside ring_dispatch() every operation is submitted at once,
 * so the ring's fd is safe to sleep on; inside, they are batched until the callbacks are done.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>

#include "common/error.h"
#include "ring/ring-priv.h"

#define ENTRIES 256
#define REAP_BATCH 64
#define DRAIN_MS 2000 /* ring_free: the longest wait for the kernel to let go of buffers */

enum { KIND_REQ = 1, KIND_CANCEL = 2 };

#define TAG(kind, op, id) (((uint64_t)(kind) << 56) | ((uint64_t)(op) << 48) | (uint64_t)(id))
#define TAG_KIND(t) ((unsigned)((t) >> 56))
#define TAG_ID(t) ((int64_t)((t) & ((UINT64_C(1) << 48) - 1)))

typedef struct uring_state {
    struct io_uring ring;
    unsigned queued; /* SQEs prepared and not yet submitted */
} uring_state;

static uring_state *state(const ring *r)
{
    return r->backend;
}

static bool uring_init(ring *r, vmig_error **errp)
{
    uring_state *s = g_new0(uring_state, 1);
    int e = io_uring_queue_init(ENTRIES, &s->ring, 0);
    if (e < 0) {
        vmig_set_error_errno(errp, -e, "io_uring_setup");
        g_free(s);
        return false;
    }
    r->backend = s;
    return true;
}

static void flush(ring *r)
{
    uring_state *s = state(r);
    if (s->queued) {
        io_uring_submit(&s->ring);
        s->queued = 0;
    }
}

static struct io_uring_sqe *sqe_get(ring *r)
{
    uring_state *s = state(r);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe) {
        flush(r); /* the SQ is full: hand it to the kernel and try once more */
        sqe = io_uring_get_sqe(&s->ring);
    }
    if (sqe) {
        s->queued++;
    }
    return sqe;
}

static void reap(ring *r, bool deliver)
{
    uring_state *s = state(r);
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe)
    {
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        int64_t id = TAG_ID(tag);
        if (TAG_KIND(tag) == KIND_REQ) {
            ring_req *q = ring_req_find(r, id);
            int res = cqe->res;
            if (q && q->op == RING_OP_TIMER && res == -ETIME) {
                res = 0; /* expired, as asked */
            }

            if (deliver) {
                ring_complete(r, id, res);
            } else if (q) {
                q->completed = true;
            }
        }
        n++;
    }
    io_uring_cq_advance(&s->ring, n);
}

static void uring_fini(ring *r)
{
    uring_state *s = state(r);
    if (!s) {
        return;
    }
    /* Cancel everything and wait until the kernel is done with our buffers. */
    struct io_uring_sqe *sqe = sqe_get(r);
    if (sqe) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(sqe, TAG(KIND_CANCEL, 0, 0));
    }
    flush(r);
    int64_t deadline = ring_now_ms() + DRAIN_MS;
    for (;;) {
        reap(r, false);
        bool pending = false;
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, r->reqs);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            pending |= !((ring_req *)v)->completed;
        }
        int64_t left = deadline - ring_now_ms();
        if (!pending || left <= 0) {
            break;
        }
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = MIN(left, 50) * 1000000};
        struct io_uring_cqe *cqe = NULL;
        io_uring_wait_cqe_timeout(&s->ring, &cqe, &ts);
    }
    io_uring_queue_exit(&s->ring);
    g_free(s);
    r->backend = NULL;
}

static int uring_submit(ring *r, ring_req *q)
{
    struct io_uring_sqe *sqe = sqe_get(r);
    if (!sqe) {
        return -EBUSY;
    }
    switch (q->op) {
    case RING_OP_POLL:
        io_uring_prep_poll_add(sqe, q->fd, (unsigned)(unsigned short)q->events);
        break;
    case RING_OP_TIMER:
        io_uring_prep_timeout(sqe, &q->ts, 0, 0);
        break;
    case RING_OP_RECV:
        io_uring_prep_recv(sqe, q->fd, q->buf, q->len, 0);
        break;
    case RING_OP_SEND:
        io_uring_prep_send(sqe, q->fd, q->buf, q->len, MSG_NOSIGNAL);
        break;
    case RING_OP_ACCEPT:
        io_uring_prep_accept(sqe, q->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        break;
    case RING_OP_CONNECT:
        io_uring_prep_connect(sqe, q->fd, (struct sockaddr *)&q->addr, q->addrlen);
        break;
    case RING_OP_READ:
        io_uring_prep_read(sqe, q->fd, q->buf, (unsigned)MIN(q->len, UINT32_MAX),
                           (uint64_t)q->offset);
        break;
    case RING_OP_WRITE:
        io_uring_prep_write(sqe, q->fd, q->buf, (unsigned)MIN(q->len, UINT32_MAX),
                            (uint64_t)q->offset);
        break;
    case RING_OP_COUNT:
        return -EINVAL;
    }
    io_uring_sqe_set_data64(sqe, TAG(KIND_REQ, q->op, q->id));
    if (!r->dispatching) {
        flush(r);
    }
    return 0;
}

static void uring_cancel(ring *r, ring_req *q)
{
    struct io_uring_sqe *sqe = sqe_get(r);
    if (!sqe) {
        return; /* the operation completes on its own; cancelled is noted */
    }
    io_uring_prep_cancel64(sqe, TAG(KIND_REQ, q->op, q->id), 0);
    io_uring_sqe_set_data64(sqe, TAG(KIND_CANCEL, q->op, q->id));
    if (!r->dispatching) {
        flush(r);
    }
}

static int uring_wait(ring *r, int timeout_ms)
{
    uring_state *s = state(r);
    s->queued = 0;
    struct io_uring_cqe *cqe = NULL;
    int e;
    if (timeout_ms < 0) {
        e = io_uring_submit_and_wait(&s->ring, 1);
    } else {
        struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000,
                                       .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
        e = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, &ts, NULL);
    }
    if (e < 0 && e != -ETIME && e != -EINTR) {
        return e;
    }
    reap(r, true);
    return 0;
}

static int uring_fd(const ring *r)
{
    return state(r)->ring.ring_fd;
}

const ring_backend_ops ring_uring_ops = {
    .kind = RING_BACKEND_IOURING,
    .init = uring_init,
    .fini = uring_fini,
    .submit = uring_submit,
    .cancel = uring_cancel,
    .wait = uring_wait,
    .flush = flush,
    .fd = uring_fd,
};
