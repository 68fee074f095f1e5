/*
 * The control connection between a source engine and an agent, after the handshake: CONTROL
 * frames (wire.h) each carrying one JSON text, both ways, on the completion ring.  This layer
 * frames and queues; what the texts mean is the engine's (engine/agent.c, engine/link.c).
 *
 * Input is bounded: one frame at most TP_PAYLOAD_MAX bytes, and anything that is not a
 * well-formed CONTROL frame closes the connection with an error that names it.  Output is
 * queued without bound on count but each text is at most TP_PAYLOAD_MAX bytes.
 */
#ifndef VMIG_TRANSPORT_CONTROL_H
#define VMIG_TRANSPORT_CONTROL_H

#include "ring/ring.h"
#include "transport/handshake.h"
#include "transport/wire.h"

typedef struct tp_control tp_control;

/* One message: @text is NUL-terminated, @len bytes, valid UTF-8 (borrowed). */
typedef void (*tp_control_msg_fn)(void *opaque, const char *text, size_t len);
/* Once, when the connection ended: @err NULL for an orderly end of file. */
typedef void (*tp_control_closed_fn)(void *opaque, const vmig_error *err);

/* Takes socket @fd (closed by tp_control_free()). */
tp_control *tp_control_new(ring *r, int fd, tp_control_msg_fn msg, tp_control_closed_fn closed,
                           void *opaque);
/* Queues @text as one CONTROL frame; false with an error when it is too long or the
 * connection has ended. */
bool tp_control_send(tp_control *c, const char *text, vmig_error **errp);
/* Whether the connection still works. */
bool tp_control_alive(const tp_control *c);
/* Stops it (no callback after this) and closes the socket.  Accepts NULL. */
void tp_control_free(tp_control *c);

/* ---- the pre-shared key ------------------------------------------------------------------- */

/* Reads key file @path: hex text of TP_KEY_MIN to TP_KEY_MAX bytes; a file others may read
 * or write is refused, as ssh refuses such a private key. */
bool tp_key_load(const char *path, tp_key *ret, vmig_error **errp);
/* Creates key file @path with 32 random bytes, mode 0600; refuses to overwrite. */
bool tp_key_create(const char *path, vmig_error **errp);

#endif
