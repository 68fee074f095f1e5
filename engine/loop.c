#include "loop.h"

#include <errno.h>

#include "common/error.h"
#include "ring/ring.h"

typedef struct loop_watch {
    eng_loop *loop;
    int id;
    int fd;
    short events;
    eng_fd_fn cb;
    void *opaque;
    int64_t op;  /* the ring poll in flight, 0 when none */
    bool dead;   /* unwatched: freed once its poll is gone */
    bool in_cb;
} loop_watch;

struct eng_loop {
    ring *ring;
    GHashTable *watches; /* id -> loop_watch * (owned), live and dead */
    int next_id;
    int ran; /* watch callbacks run by this eng_loop_run_once() */
};

eng_loop *eng_loop_new(vmig_error **errp)
{
    ring *r = ring_new(RING_BACKEND_AUTO, errp);
    if (!r) {
        return NULL;
    }
    eng_loop *l = g_new0(eng_loop, 1);
    l->ring = r;
    l->watches = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    l->next_id = 1;
    return l;
}

void eng_loop_free(eng_loop *l)
{
    if (!l) {
        return;
    }
    ring_free(l->ring); /* polls in flight are dropped without callbacks */
    g_hash_table_destroy(l->watches);
    g_free(l);
}

const char *eng_loop_backend(const eng_loop *l)
{
    return ring_backend_reason(l->ring);
}

int eng_loop_fd(const eng_loop *l)
{
    return ring_fd(l->ring);
}

static void poll_done(void *opaque, int res);

static int arm(loop_watch *w)
{
    int64_t op = ring_poll(w->loop->ring, w->fd, w->events, poll_done, w);
    if (op < 0) {
        return (int)op;
    }
    w->op = op;
    return 0;
}

static void drop(loop_watch *w)
{
    g_hash_table_remove(w->loop->watches, GINT_TO_POINTER(w->id));
}

static void poll_done(void *opaque, int res)
{
    loop_watch *w = opaque;
    w->op = 0;
    if (w->dead) {
        drop(w);
        return;
    }
    w->in_cb = true;
    w->loop->ran++;
    w->cb(w->opaque, w->fd, res);
    w->in_cb = false;
    /* The callback may have unwatched it; a failed poll is not re-armed. */
    if (w->dead || res < 0 || arm(w) < 0) {
        drop(w);
    }
}

int eng_loop_watch(eng_loop *l, int fd, short events, eng_fd_fn cb, void *opaque)
{
    loop_watch *w = g_new0(loop_watch, 1);
    w->loop = l;
    w->id = l->next_id++;
    w->fd = fd;
    w->events = events;
    w->cb = cb;
    w->opaque = opaque;
    int r = arm(w);
    if (r < 0) {
        g_free(w);
        return r;
    }
    g_hash_table_insert(l->watches, GINT_TO_POINTER(w->id), w);
    return w->id;
}

void eng_loop_unwatch(eng_loop *l, int id)
{
    loop_watch *w = id > 0 ? g_hash_table_lookup(l->watches, GINT_TO_POINTER(id)) : NULL;
    if (!w || w->dead) {
        return;
    }
    w->dead = true;
    if (w->op) {
        ring_cancel(l->ring, w->op); /* freed when the cancelled poll completes */
    } else if (!w->in_cb) {
        drop(w);
    }
}

int eng_loop_run_once(eng_loop *l, int timeout_ms)
{
    l->ran = 0;
    int r = ring_dispatch(l->ring, timeout_ms);
    return r < 0 ? r : l->ran;
}
