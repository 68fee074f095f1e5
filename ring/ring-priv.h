/* Internals shared by ring.c and its two backends.  Not for other modules. */
#ifndef VMIG_RING_PRIV_H
#define VMIG_RING_PRIV_H

#include <glib.h>
#include <linux/time_types.h>

#include "ring/ring.h"

/* One operation in flight. */
typedef struct ring_req {
    int64_t id;
    ring_op op;
    int fd;
    void *buf;
    size_t len;
    int64_t offset;
    short events;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    struct __kernel_timespec ts; /* io_uring timers: must live until submitted */
    int64_t deadline_ms;         /* timers: on the monotonic clock */
    ring_done_fn cb;
    void *opaque;
    bool cancelled;  /* ring_cancel() was asked */
    bool completed;  /* its result is in the done queue */
    bool connecting; /* epoll: connect() returned EINPROGRESS */
    bool detached;   /* ring_detach(): no callback; release(release_data) when done */
    GDestroyNotify release;
    void *release_data;
} ring_req;

typedef struct ring_backend_ops {
    ring_backend kind;
    bool (*init)(ring *r, vmig_error **errp);
    void (*fini)(ring *r);
    int (*submit)(ring *r, ring_req *q); /* 0 or -errno */
    void (*cancel)(ring *r, ring_req *q);
    /* Hands queued work to the kernel, waits up to @timeout_ms (-1: forever) for completions
     * and reports each through ring_complete().  Returns 0 or -errno. */
    int (*wait)(ring *r, int timeout_ms);
    /* Hands what callbacks queued to the kernel, so the ring's fd can be slept on. */
    void (*flush)(ring *r);
    int (*fd)(const ring *r);
} ring_backend_ops;

extern const ring_backend_ops ring_uring_ops;
extern const ring_backend_ops ring_epoll_ops;

typedef struct ring_done {
    int64_t id;
    int res;
} ring_done;

struct ring {
    const ring_backend_ops *ops;
    char *reason;
    GHashTable *reqs; /* id -> ring_req * (owned) */
    GArray *done;     /* ring_done: completed, callback not yet run */
    int64_t next_id;
    int dispatching; /* > 0 inside ring_dispatch() */
    void *backend;   /* the backend's state */
};

/* A backend reports a result.  Unknown ids (already completed) are dropped. */
void ring_complete(ring *r, int64_t id, int res);
ring_req *ring_req_find(ring *r, int64_t id);
int64_t ring_now_ms(void);

#endif
