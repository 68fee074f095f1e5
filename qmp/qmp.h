/*
 * A QMP client: talks to QEMU's monitor over a unix or TCP socket, on the completion ring.
 *
 * Everything is asynchronous.  The connection keeps one receive in flight on the ring, parses
 * complete messages, matches replies to the calls that asked (by "id") and hands events to the
 * event callback.  qmp_call() queues a command and returns; its callback runs once, from
 * ring_dispatch(), with the reply or an error (QEMU refused, the deadline passed, the
 * connection broke).  Any number of calls may be in flight, and callbacks, event handlers
 * included, may issue more calls or free the connection.
 *
 * The blocking calls (qmp_conn_handshake, qmp_conn_call) are thin loops over the async ones
 * for the CLI, tests and one-shot probes; nothing on a job's path uses them.
 *
 * Limits: one message may not exceed max_msg bytes (default QMP_MSG_MAX), nest deeper than
 * QMP_DEPTH_MAX, nor hold more than QMP_VALUES_MAX values; a peer that breaks one is
 * disconnected with a protocol error.  One receive callback handles at most 64 KiB, so timers
 * (every call's deadline) run between chunks of a flood.
 */
#ifndef VMIG_QMP_H
#define VMIG_QMP_H

#include <glib.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/json.h"
#include "ring/ring.h"
#include "vmigrate.h"

#define QMP_MSG_MAX ((size_t)10 * 1024 * 1024) /* libvirt's bound too */
#define QMP_DEPTH_MAX 64
#define QMP_VALUES_MAX 100000u /* per message: json-c allocates ~800 bytes a value */

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
 * epoch (0 when absent or out of range).  May issue calls and free the connection. */
typedef void (*qmp_event_fn)(void *opaque, const char *event, json_object *data, int64_t ts_us);
/* The "return" value of a call (borrowed until the callback returns), or NULL with @err
 * (borrowed): VMIG_E_QEMU with "cmd: description (Class)" when QEMU refused, VMIG_E_TIMEOUT,
 * or VMIG_E_IO/VMIG_E_PROTO when the connection broke. */
typedef void (*qmp_reply_fn)(void *opaque, json_object *ret, const vmig_error *err);
/* The greeting and capabilities are done (@err NULL), or failed. */
typedef void (*qmp_ready_fn)(void *opaque, const vmig_error *err);
/* The connection broke after it was ready; every call in flight has failed already. */
typedef void (*qmp_closed_fn)(void *opaque, const vmig_error *why);

qmp_conn *qmp_conn_new(ring *r, const char *label);
/* Callbacks of calls in flight are not run.  Accepts NULL; safe inside any callback. */
void qmp_conn_free(qmp_conn *c);

/* Connecting a unix socket does not wait (the peer is on this host). */
bool qmp_conn_connect_unix(qmp_conn *c, const char *path, vmig_error **errp);
/* Waits up to @timeout_ms for the TCP connection, on the ring. */
bool qmp_conn_connect_tcp(qmp_conn *c, const char *host, int port, int timeout_ms,
                          vmig_error **errp);
/* Takes ownership of connected socket @fd (stolen, even on failure). */
bool qmp_conn_attach_fd(qmp_conn *c, int fd, vmig_error **errp);
/* Reads the greeting and negotiates capabilities (OOB when offered) within @timeout_ms, then
 * runs @cb once.  Calls made before that are sent after the negotiation. */
void qmp_conn_start(qmp_conn *c, int timeout_ms, qmp_ready_fn cb, void *opaque);
/* The same, waiting. */
bool qmp_conn_handshake(qmp_conn *c, int timeout_ms, vmig_error **errp);
/* connect_unix + handshake, waiting. */
qmp_conn *qmp_conn_open_unix(ring *r, const char *path, int timeout_ms, vmig_error **errp);

const char *qmp_conn_label(const qmp_conn *c);
bool qmp_conn_alive(const qmp_conn *c);
bool qmp_conn_ready(const qmp_conn *c);
bool qmp_conn_has_oob(const qmp_conn *c);
/* QEMU's version from the greeting: major * 10000 + minor * 100 + micro, 0 before it. */
int qmp_conn_version(const qmp_conn *c);
/* Calls sent and not yet answered. */
size_t qmp_conn_pending(const qmp_conn *c);

void qmp_conn_set_event_cb(qmp_conn *c, qmp_event_fn fn, void *opaque);
void qmp_conn_set_closed_cb(qmp_conn *c, qmp_closed_fn fn, void *opaque);

enum {
    QMP_CALL_OOB = 1u << 0, /* exec-oob (needs qmp_conn_has_oob) */
};

/* Queues @cmd with @args (stolen; may be NULL); @cb (may be NULL) runs once with the reply
 * or an error within @timeout_ms, never from inside this call. */
void qmp_call(qmp_conn *c, const char *cmd, json_object *args, unsigned flags, int timeout_ms,
              qmp_reply_fn cb, void *opaque);

/* Blocking: runs @cmd and waits for its reply.  Returns the "return" value (a new
 * reference), or NULL with an error as qmp_reply_fn describes. */
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
