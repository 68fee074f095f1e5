/*
 * ring/: the completion ring under every module that does I/O (qmp/, transport/, engine/).
 * It includes nothing of theirs.
 *
 * The unit is the operation, as in liburing's examples/proxy.c: recv, send, accept, connect,
 * read, write, a one-shot poll, or a timer.  It is submitted with a callback, and its result
 * comes back exactly once, from ring_dispatch(): the system call's result, or -errno.
 * ring_cancel() makes an operation in flight complete with -ECANCELED (or with its real
 * result, if it finished first).  A buffer handed to an operation belongs to the ring until
 * its callback has run (the multifd rule: the channel owns the data until it is done).
 *
 * Two backends, one interface:
 *   io_uring  the default: real I/O submitted to the kernel, timers as IORING_OP_TIMEOUT;
 *   epoll     for where io_uring_setup is refused (Docker >= 25 and containerd >= 2.0 seccomp
 *             profiles, kernel.io_uring_disabled): readiness, then the non-blocking syscall;
 *             timers on one timerfd.
 * ring_new() takes io_uring unless told otherwise or $VMIG_RING=epoll, and falls back to epoll
 * when io_uring cannot be set up.  Either way ring_fd() becomes readable when ring_dispatch()
 * has work, timers included, so a caller can sleep in its own poll() on that one fd.
 *
 * Sockets given to the epoll backend must be non-blocking; the io_uring backend does not care.
 * Not thread-safe: one thread per ring.
 */
#ifndef VMIG_RING_H
#define VMIG_RING_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "vmigrate.h"

typedef struct ring ring;

typedef enum ring_backend {
    RING_BACKEND_AUTO, /* io_uring unless $VMIG_RING=epoll or io_uring is refused */
    RING_BACKEND_IOURING,
    RING_BACKEND_EPOLL,
    RING_BACKEND_COUNT,
} ring_backend;

typedef enum ring_op {
    RING_OP_POLL,    /* res: the poll events that fired */
    RING_OP_TIMER,   /* res: 0 when it expired */
    RING_OP_RECV,    /* res: bytes received, 0 at EOF */
    RING_OP_SEND,    /* res: bytes sent (MSG_NOSIGNAL) */
    RING_OP_ACCEPT,  /* res: the new socket, close-on-exec and non-blocking */
    RING_OP_CONNECT, /* res: 0 */
    RING_OP_READ,    /* res: bytes read */
    RING_OP_WRITE,   /* res: bytes written */
    RING_OP_COUNT,
} ring_op;

/* Runs once per operation, from ring_dispatch(); may submit and cancel operations. */
typedef void (*ring_done_fn)(void *opaque, int res);

/* NULL with an error when no backend can be set up (or the one asked for cannot). */
ring *ring_new(ring_backend want, vmig_error **errp);
/* Operations still in flight are cancelled and their callbacks are not run: by the time this
 * returns the kernel no longer touches their buffers.  Accepts NULL. */
void ring_free(ring *r);

ring_backend ring_get_backend(const ring *r);
const char *ring_backend_name(ring_backend b);
/* Why the backend is what it is ("io_uring", "epoll: VMIG_RING=epoll", "epoll: io_uring_setup:
 * Operation not permitted"), for a log line. */
const char *ring_backend_reason(const ring *r);

/* Each returns the operation's id (> 0), or -errno when it cannot be submitted; then the
 * callback is never run. */
int64_t ring_poll(ring *r, int fd, short events, ring_done_fn cb, void *opaque);
int64_t ring_timer(ring *r, int ms, ring_done_fn cb, void *opaque);
int64_t ring_recv(ring *r, int fd, void *buf, size_t len, ring_done_fn cb, void *opaque);
int64_t ring_send(ring *r, int fd, const void *buf, size_t len, ring_done_fn cb, void *opaque);
int64_t ring_accept(ring *r, int fd, ring_done_fn cb, void *opaque);
/* @sa is copied. */
int64_t ring_connect(ring *r, int fd, const struct sockaddr *sa, socklen_t len, ring_done_fn cb,
                     void *opaque);
/* @offset -1: the file's current position (pipes, sockets, character devices). */
int64_t ring_read(ring *r, int fd, void *buf, size_t len, int64_t offset, ring_done_fn cb,
                  void *opaque);
int64_t ring_write(ring *r, int fd, const void *buf, size_t len, int64_t offset, ring_done_fn cb,
                   void *opaque);

/* Asks operation @id to stop.  False when no such operation is in flight (it completed, or
 * its callback already ran).  Its callback still runs exactly once. */
bool ring_cancel(ring *r, int64_t id);

/* Cancels operation @id and forgets its callback, which will never run; @release(@data)
 * (either may be NULL) runs once the kernel has let go of the operation's buffer, at the
 * latest in ring_free().  For an owner that goes away while its I/O is in flight (a closed
 * connection whose receive buffer the kernel may still write).  An unknown @id releases at
 * once. */
void ring_detach(ring *r, int64_t id, GDestroyNotify release, void *data);

/* Waits up to @timeout_ms (0: not at all, -1: until something completes) and runs the
 * callbacks of what completed.  Returns how many ran, or -errno. */
int ring_dispatch(ring *r, int timeout_ms);
/* Readable when ring_dispatch() has work. */
int ring_fd(const ring *r);
/* Milliseconds until the nearest timer, 0 when completions wait, -1 when neither. */
int ring_timeout_ms(const ring *r);
/* Operations submitted and not yet dispatched. */
size_t ring_in_flight(const ring *r);

const char *ring_op_name(ring_op op);

#endif
