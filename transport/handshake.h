/*
 * The handshake every connection to the agent starts with (wire.h has the frames), run on the
 * completion ring: the agent's side on an accepted socket, the source's side on a connected
 * one.  Nothing but the handshake is read: what the peer sends after its last handshake frame
 * stays in the socket for the relay.  (The source sends nothing before WELCOME, and the agent
 * nothing after it, so no byte of the relayed stream is ever read here.)
 *
 * Every step has one deadline.  A failure (a refusal, a malformed frame, a wrong key, EOF, the
 * deadline) is reported once, with an error that names it; the socket stays the caller's to
 * close.
 */
#ifndef VMIG_TRANSPORT_HANDSHAKE_H
#define VMIG_TRANSPORT_HANDSHAKE_H

#include "ring/ring.h"
#include "transport/wire.h"

typedef struct tp_handshake tp_handshake;

/* The result, once: @hello is what the source said it carries (NULL on failure). */
typedef void (*tp_handshake_fn)(void *opaque, const tp_hello *hello, const vmig_error *err);
/* The agent's say on a source that proved the key: true to welcome it; false with a reason
 * (g_strdup'd, sent in REFUSE) for, say, a token no migration has. */
typedef bool (*tp_admit_fn)(void *opaque, const tp_hello *hello, char **ret_reason);

typedef struct tp_key {
    uint8_t bytes[TP_KEY_MAX];
    size_t len;
} tp_key;

/* The agent's side on accepted socket @fd.  @admit may be NULL (welcome every key holder). */
tp_handshake *tp_handshake_agent(ring *r, int fd, const tp_key *key, int timeout_ms,
                                 tp_admit_fn admit, void *admit_opaque, tp_handshake_fn done,
                                 void *opaque);
/* The source's side on connected socket @fd, for a channel of @kind and @index. */
tp_handshake *tp_handshake_source(ring *r, int fd, const tp_key *key, int timeout_ms, tp_kind kind,
                                  unsigned index, const uint8_t token[TP_TOKEN_LEN],
                                  tp_handshake_fn done, void *opaque);
/* Stops a handshake (its callback does not run) or frees a finished one.  Accepts NULL. */
void tp_handshake_free(tp_handshake *h);

/* Fills @buf with bytes from the kernel's random source; false with an error. */
bool tp_random(void *buf, size_t len, vmig_error **errp);

#endif
