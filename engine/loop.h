/*
 * The engine's event loop: one completion ring (ring/: io_uring, or epoll where io_uring is
 * refused), the only place the engine waits.
 *
 * File descriptors are watched with one-shot ring polls, re-armed after each callback until
 * unwatched.  A watch stays allocated while its poll is in flight: unwatching cancels the poll
 * and the watch is freed when the cancelled poll completes, so no completion ever reaches
 * freed memory.  The ring runs callbacks only after it has collected a batch, so a callback may
 * watch, unwatch, or even wait in the loop again (a synchronous QMP call).
 */
#ifndef VMIG_ENGINE_LOOP_H
#define VMIG_ENGINE_LOOP_H

#include <glib.h>
#include <stdbool.h>

#include "vmigrate.h"

typedef struct eng_loop eng_loop;
/* @revents: the poll mask that fired, or a negative errno if the poll itself failed. */
typedef void (*eng_fd_fn)(void *opaque, int fd, int revents);

eng_loop *eng_loop_new(vmig_error **errp);
/* Which backend the ring runs on, and why ("io_uring", "epoll: VMIG_RING=epoll", ...). */
const char *eng_loop_backend(const eng_loop *l);
void eng_loop_free(eng_loop *l);
/* Returns a watch id (> 0), or -errno. */
int eng_loop_watch(eng_loop *l, int fd, short events, eng_fd_fn cb, void *opaque);
void eng_loop_unwatch(eng_loop *l, int id);
/* Waits up to @timeout_ms (0: don't wait) and dispatches what completed.  Returns how many
 * callbacks ran, or -errno. */
int eng_loop_run_once(eng_loop *l, int timeout_ms);
/* The ring's fd: readable when completions wait (for embedding in another poll loop). */
int eng_loop_fd(const eng_loop *l);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(eng_loop, eng_loop_free)

#endif
