/*
 * A QMP client: talks to QEMU's monitor over a unix or TCP socket.
 *
 * The connection is non-blocking and does no I/O on its own: qmp_conn_process() reads what
 * the socket has, parses complete messages, matches replies to the commands that asked (by
 * "id") and hands events to the event callback.  qmp_conn_call() sends a command and waits
 * for its reply with a deadline; how it waits is the waiter's business: by default poll() on
 * the socket, and the engine plugs in its io_uring loop so one thread can serve several
 * monitors at once.
 *
 * Limits: one message may not exceed max_msg bytes (default QMP_MSG_MAX) nor nest deeper than
 * QMP_DEPTH_MAX; a peer that breaks either is disconnected with a protocol error.
 */
#ifndef VMIG_QMP_H
#define VMIG_QMP_H

#include <glib.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/json.h"
#include "vmigrate.h"

#define QMP_MSG_MAX (10u * 1024u * 1024u) /* libvirt's bound too */
#define QMP_DEPTH_MAX 64

/* ---- parser (exposed for tests and fuzzing) ----------------------------------------------- */

typedef struct qmp_parser qmp_parser;
/* @msg is borrowed until the callback returns. */
typedef void (*qmp_msg_fn)(void *opaque, json_object *msg);

qmp_parser *qmp_parser_new(size_t max_msg, int max_depth);
void qmp_parser_free(qmp_parser *p);
/* Feeds @len bytes.  Calls @cb once per complete message; returns how many, or -1 with an
 * error (malformed JSON, not an object, too large, too deep): the stream is then unusable. */
int qmp_parser_feed(qmp_parser *p, const char *buf, size_t len, qmp_msg_fn cb, void *opaque,
                    vmig_error **errp);
/* Bytes of an incomplete message held back. */
size_t qmp_parser_pending(const qmp_parser *p);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(qmp_parser, qmp_parser_free)

/* ---- connection --------------------------------------------------------------------------- */

typedef struct qmp_conn qmp_conn;

/* @data is borrowed (may be NULL); @ts_us is QEMU's event timestamp, microseconds since the
 * epoch.  Must not call qmp_conn_call(): note what happened and act after it returns. */
typedef void (*qmp_event_fn)(void *opaque, const char *event, json_object *data, int64_t ts_us);

/* Waits until @c may have input or @timeout_ms passed; returns <0 only on a fatal error.
 * Must end up calling qmp_conn_process() on @c when its socket is readable. */
typedef int (*qmp_waiter_fn)(void *opaque, qmp_conn *c, int timeout_ms);

qmp_conn *qmp_conn_new(const char *label);
void qmp_conn_free(qmp_conn *c);

bool qmp_conn_connect_unix(qmp_conn *c, const char *path, vmig_error **errp);
bool qmp_conn_connect_tcp(qmp_conn *c, const char *host, int port, int timeout_ms,
                          vmig_error **errp);
/* Takes ownership of connected socket @fd (stolen, even on failure). */
bool qmp_conn_attach_fd(qmp_conn *c, int fd, vmig_error **errp);
/* Reads the greeting, negotiates capabilities (OOB when offered) within @timeout_ms. */
bool qmp_conn_handshake(qmp_conn *c, int timeout_ms, vmig_error **errp);
/* connect_unix + handshake. */
qmp_conn *qmp_conn_open_unix(const char *path, int timeout_ms, vmig_error **errp);

int qmp_conn_fd(const qmp_conn *c);
bool qmp_conn_alive(const qmp_conn *c);
bool qmp_conn_has_oob(const qmp_conn *c);
/* QEMU's version from the greeting: major * 10000 + minor * 100 + micro, 0 before it. */
int qmp_conn_version(const qmp_conn *c);

void qmp_conn_set_event_cb(qmp_conn *c, qmp_event_fn fn, void *opaque);
/* NULL restores the default poll()-based waiter. */
void qmp_conn_set_waiter(qmp_conn *c, qmp_waiter_fn fn, void *opaque);

/* Reads and dispatches what is available without blocking.  Returns the number of messages
 * handled (0: none), or -1 when the connection broke or the peer broke the protocol. */
int qmp_conn_process(qmp_conn *c, vmig_error **errp);

enum {
    QMP_CALL_OOB = 1u << 0, /* exec-oob (needs qmp_conn_has_oob) */
};

/* Runs @cmd with @args (stolen; may be NULL) and waits up to @timeout_ms for its reply.
 * Returns the "return" value (a new reference), or NULL with an error: VMIG_E_QEMU with
 * "cmd: description (Class)" when QEMU refused, VMIG_E_TIMEOUT, or VMIG_E_IO/VMIG_E_PROTO
 * when the connection broke. */
json_object *qmp_conn_call(qmp_conn *c, const char *cmd, json_object *args, unsigned flags,
                           int timeout_ms, vmig_error **errp);
/* The same for commands whose reply is not needed. */
bool qmp_conn_call_void(qmp_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        vmig_error **errp);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(qmp_conn, qmp_conn_free)

/* Monotonic milliseconds, the clock every deadline in vmigrate uses. */
int64_t vmig_now_ms(void);
/* Milliseconds left until @deadline (>= 0). */
int vmig_ms_left(int64_t deadline);

#endif
