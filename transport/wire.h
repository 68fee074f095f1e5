/*
 * The transport's wire format (pure functions: no I/O, no state), the first piece of the relay
 * between a source engine and a destination agent (issue 8).
 *
 * Every TCP connection to the agent, the control connection and each data channel alike, starts
 * with the same authenticated handshake, in frames:
 *
 *   agent  -> source   CHALLENGE  agent nonce (32 random bytes)
 *   source -> agent    HELLO      kind, index, migration token, source nonce, and
 *                                 HMAC-SHA-256(key, "vmigrate hello 1" | agent nonce |
 *                                 source nonce | kind | index | token)
 *   agent  -> source   WELCOME    HMAC-SHA-256(key, "vmigrate welcome 1" | source nonce |
 *                                 agent nonce), so the source knows the agent has the key too
 *                      or REFUSE  a reason, then the agent closes
 *
 * After WELCOME a data channel carries QEMU's bytes untouched, and the control connection
 * carries CONTROL frames (JSON text).  The handshake is plain framing over a byte stream, so TLS
 * can wrap the stream later without changing it.
 *
 * A frame: "VMGW", version (1), type, payload length (big-endian u16), payload.  The parser
 * refuses anything else with an error that names what was wrong: a wrong magic, version or
 * type, an oversized or wrongly sized payload, text that is not UTF-8.
 */
#ifndef VMIG_TRANSPORT_WIRE_H
#define VMIG_TRANSPORT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vmigrate.h"

#define TP_MAGIC "VMGW"
#define TP_VERSION 1
#define TP_HEADER_LEN 8
#define TP_PAYLOAD_MAX 16384 /* a CONTROL frame carries a VM spec: a few KiB at most */
#define TP_REASON_MAX 256
#define TP_NONCE_LEN 32
#define TP_MAC_LEN 32
#define TP_TOKEN_LEN 16
#define TP_KEY_MIN 16 /* bytes of a pre-shared key, at least */
#define TP_KEY_MAX 64

typedef enum tp_type {
    TP_CHALLENGE = 1,
    TP_HELLO = 2,
    TP_WELCOME = 3,
    TP_REFUSE = 4,
    TP_CONTROL = 5,
} tp_type;

/* What a connection carries, as its HELLO says. */
typedef enum tp_kind {
    TP_KIND_CONTROL = 0, /* the engine's requests and the agent's reports */
    TP_KIND_MAIN = 1,    /* QEMU's main migration channel (starts with QEVM) */
    TP_KIND_MULTIFD = 2, /* a multifd channel; index = QEMU's channel id */
    TP_KIND_PREEMPT = 3, /* the post-copy preempt channel (no magic of its own) */
    TP_KIND_QMP = 4,     /* the engine's monitor connection to a QEMU the agent started */
    TP_KIND_NBD = 5,     /* a storage copy: the source QEMU's NBD client to the destination's
                          * NBD server; index = arrival */
    TP_KIND_COUNT
} tp_kind;

const char *tp_kind_name(tp_kind k);

typedef struct tp_hello {
    uint8_t kind; /* tp_kind */
    uint16_t index;
    uint8_t token[TP_TOKEN_LEN]; /* the migration's, from the agent; zero on the control link */
    uint8_t nonce[TP_NONCE_LEN];
    uint8_t mac[TP_MAC_LEN];
} tp_hello;
#define TP_HELLO_LEN (1 + 1 + 2 + TP_TOKEN_LEN + TP_NONCE_LEN + TP_MAC_LEN)

typedef struct tp_frame {
    tp_type type;
    size_t len;
    const uint8_t *payload; /* points into the parsed buffer */
} tp_frame;

typedef enum tp_parse_result {
    TP_PARSE_ERROR = -1,
    TP_PARSE_MORE = 0, /* a frame has begun well but is not complete */
    TP_PARSE_OK = 1,
} tp_parse_result;

/* Parses the frame at the start of @buf.  On OK, @ret describes it and *@consumed is its
 * length; on MORE nothing is set; on ERROR the error names what was wrong (VMIG_E_PROTO). */
tp_parse_result tp_frame_parse(const uint8_t *buf, size_t len, tp_frame *ret, size_t *consumed,
                               vmig_error **errp);
/* Writes a frame of @type with @payload into @out (room for TP_HEADER_LEN + @len); its length,
 * or 0 when @len is over TP_PAYLOAD_MAX. */
size_t tp_frame_encode(tp_type type, const void *payload, size_t len, uint8_t *out);

/* HELLO payloads. */
void tp_hello_encode(const tp_hello *h, uint8_t out[TP_HELLO_LEN]);
bool tp_hello_decode(const tp_frame *f, tp_hello *ret, vmig_error **errp);
/* Fills h->mac for @key and the agent's @challenge (the kind, index, token and nonce set). */
void tp_hello_sign(tp_hello *h, const uint8_t *key, size_t key_len,
                   const uint8_t challenge[TP_NONCE_LEN]);
/* Whether h->mac proves @key, in constant time. */
bool tp_hello_verify(const tp_hello *h, const uint8_t *key, size_t key_len,
                     const uint8_t challenge[TP_NONCE_LEN]);
/* The agent's proof in WELCOME, and its check on the source. */
void tp_welcome_mac(const uint8_t *key, size_t key_len, const uint8_t source_nonce[TP_NONCE_LEN],
                    const uint8_t challenge[TP_NONCE_LEN], uint8_t out[TP_MAC_LEN]);
bool tp_welcome_verify(const tp_frame *f, const uint8_t *key, size_t key_len,
                       const uint8_t source_nonce[TP_NONCE_LEN],
                       const uint8_t challenge[TP_NONCE_LEN]);

/* Compares @n bytes in time that does not depend on where they differ. */
bool tp_ct_equal(const void *a, const void *b, size_t n);

/* ---- QEMU's streams, as the source relay accepts them --------------------------------------- */

typedef enum tp_classify_result {
    TP_STREAM_MORE = 0,    /* fewer bytes than the decision needs */
    TP_STREAM_MAIN = 1,    /* QEMU_VM_FILE_MAGIC, "QEVM" */
    TP_STREAM_MULTIFD = 2, /* MULTIFD_MAGIC 0x11223344; the channel id is set */
    TP_STREAM_OTHER = 3,   /* no magic: the post-copy preempt channel, or not QEMU */
} tp_classify_result;
#define TP_MULTIFD_ID_OFFSET 24 /* magic, version, uuid[16], then the id byte */

/* Tells a QEMU migration connection by its first bytes. */
tp_classify_result tp_classify(const uint8_t *buf, size_t len, unsigned *ret_multifd_id);

#endif
