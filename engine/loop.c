#include "loop.h"

#include <errno.h>
#include <liburing.h>
#include <string.h>

#include "common/error.h"

#define RING_ENTRIES 64
#define CQE_BATCH 32

enum loop_kind {
    LOOP_KIND_POLL = 1,
    LOOP_KIND_CANCEL = 2,
};

#define TAG(kind, id) (((uint64_t)(kind) << 56) | (uint64_t)(id))
#define TAG_KIND(t) ((unsigned)((t) >> 56))
#define TAG_ID(t) ((int)((t) & ((UINT64_C(1) << 56) - 1)))

typedef struct loop_watch {
    int id;
    int fd;
    short events;
    eng_fd_fn cb;
    void *opaque;
} loop_watch;

struct eng_loop {
    struct io_uring ring;
    bool ring_ok;
    GHashTable *watches; /* id -> loop_watch * (owned) */
    int next_id;
};

static struct io_uring_sqe *get_sqe(eng_loop *l)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (!sqe) {
        /* The SQ is full: hand what is queued to the kernel and try once more. */
        io_uring_submit(&l->ring);
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

eng_loop *eng_loop_new(vmig_error **errp)
{
    g_autoptr(eng_loop) l = g_new0(eng_loop, 1);
    l->watches = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    l->next_id = 1;
    int r = io_uring_queue_init(RING_ENTRIES, &l->ring, 0);
    if (r < 0) {
        vmig_set_error_errno(errp, -r, "io_uring_queue_init");
        return NULL;
    }
    l->ring_ok = true;
    return g_steal_pointer(&l);
}

void eng_loop_free(eng_loop *l)
{
    if (!l) {
        return;
    }
    if (l->ring_ok) {
        /* Pending polls hold no memory of ours; closing the ring cancels them. */
        io_uring_queue_exit(&l->ring);
    }
    g_hash_table_destroy(l->watches);
    g_free(l);
}

int eng_loop_fd(const eng_loop *l)
{
    return l->ring.ring_fd;
}

static int arm(eng_loop *l, loop_watch *w)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe) {
        return -EBUSY;
    }
    io_uring_prep_poll_add(sqe, w->fd, (unsigned)w->events);
    io_uring_sqe_set_data64(sqe, TAG(LOOP_KIND_POLL, w->id));
    return 0;
}

int eng_loop_watch(eng_loop *l, int fd, short events, eng_fd_fn cb, void *opaque)
{
    loop_watch *w = g_new0(loop_watch, 1);
    w->id = l->next_id++;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->opaque = opaque;
    int r = arm(l, w);
    if (r < 0) {
        g_free(w);
        return r;
    }
    g_hash_table_insert(l->watches, GINT_TO_POINTER(w->id), w);
    io_uring_submit(&l->ring);
    return w->id;
}

void eng_loop_unwatch(eng_loop *l, int id)
{
    if (id <= 0 || !g_hash_table_remove(l->watches, GINT_TO_POINTER(id))) {
        return;
    }
    struct io_uring_sqe *sqe = get_sqe(l);
    if (sqe) {
        io_uring_prep_poll_remove(sqe, TAG(LOOP_KIND_POLL, id));
        io_uring_sqe_set_data64(sqe, TAG(LOOP_KIND_CANCEL, id));
        io_uring_submit(&l->ring);
    }
}

static int dispatch(eng_loop *l, const struct io_uring_cqe *cqes, unsigned n)
{
    int ran = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t tag = cqes[i].user_data;
        if (TAG_KIND(tag) != LOOP_KIND_POLL) {
            continue; /* a poll-remove's own completion */
        }
        int id = TAG_ID(tag);
        loop_watch *w = g_hash_table_lookup(l->watches, GINT_TO_POINTER(id));
        if (!w) {
            continue; /* unwatched while in flight */
        }
        w->cb(w->opaque, w->fd, cqes[i].res);
        ran++;
        /* The callback may have unwatched it: look it up again before re-arming. */
        w = g_hash_table_lookup(l->watches, GINT_TO_POINTER(id));
        if (w && arm(l, w) < 0) {
            g_hash_table_remove(l->watches, GINT_TO_POINTER(id));
        }
    }
    return ran;
}

int eng_loop_run_once(eng_loop *l, int timeout_ms)
{
    struct io_uring_cqe *cqe = NULL;
    struct __kernel_timespec ts = {
        .tv_sec = timeout_ms / 1000,
        .tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
    };
    int r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
    if (r < 0 && r != -ETIME && r != -EINTR) {
        return r;
    }
    struct io_uring_cqe batch[CQE_BATCH];
    unsigned n = 0, head;
    io_uring_for_each_cqe(&l->ring, head, cqe)
    {
        if (n == CQE_BATCH) {
            break;
        }
        batch[n++] = *cqe;
    }
    io_uring_cq_advance(&l->ring, n);
    int ran = dispatch(l, batch, n);
    io_uring_submit(&l->ring);
    return ran;
}
