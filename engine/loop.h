/*
 * The engine's event loop: one io_uring ring, the only place the engine waits.
 *
 * File descriptors are watched with IORING_OP_POLL_ADD, re-armed after each callback until
 * unwatched.  Every SQE carries a tag (kind:8 | id:56) rather than a pointer, so a watch can be
 * freed the moment it is unwatched: the cancelled poll's CQE finds no id and is dropped.
 * Completions are copied out of the CQ before any callback runs, so a callback may watch,
 * unwatch, or even wait in the loop again (a synchronous QMP call) without corrupting it.
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
