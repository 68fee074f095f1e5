/*
 * A pump relays one channel between two sockets on the completion ring, both ways at once
 * (QEMU's main channel carries the return path), with back-pressure and counters.
 *
 * Each direction has one buffer: receive into it, send all of it to the other side, receive
 * again.  So a side that stops reading stops the other side's sender after one buffer, never
 * an unbounded queue.  End of file is passed on at once (shutdown(SHUT_WR) of the other side);
 * an error on either socket (a reset) ends the pump with that error, and the caller closes both,
 * which passes it on.  An optional limiter caps the bytes per second of every pump that
 * shares it (a token bucket).
 *
 * Counters per direction: bytes moved, and time stalled: waiting for the source side to send
 * (receive waits) and for the sink side to take what was received (send waits).
 */
#ifndef VMIG_TRANSPORT_PUMP_H
#define VMIG_TRANSPORT_PUMP_H

#include <stdint.h>

#include "ring/ring.h"

#define TP_PUMP_BUF ((size_t)256 * 1024)

typedef struct tp_pump tp_pump;
typedef struct tp_limiter tp_limiter;

typedef enum tp_dir {
    TP_A_TO_B = 0,
    TP_B_TO_A = 1,
} tp_dir;

typedef struct tp_pump_stats {
    uint64_t bytes[2];
    uint64_t recv_wait_us[2];  /* waiting for bytes to arrive */
    uint64_t send_wait_us[2];  /* waiting for the other side to take them (back-pressure) */
    uint64_t limit_wait_us[2]; /* held back by the limiter */
    bool eof[2];
} tp_pump_stats;

/* Once, when both directions have seen end of file (@err NULL) or one failed. */
typedef void (*tp_pump_done_fn)(void *opaque, const vmig_error *err);

/* How a pump moves bytes: copy (receive into its buffer, send from it, on the ring) or splice
 * (the sockets' pages through a pipe, never copied by us; the ring says when a socket is
 * ready).  $VMIG_PUMP=copy|splice picks one; the default is what bench/relay.py measured
 * best. */
typedef enum tp_pump_mode {
    TP_PUMP_COPY,
    TP_PUMP_SPLICE,
} tp_pump_mode;
#define TP_PUMP_DEFAULT_MODE TP_PUMP_COPY
const char *tp_pump_mode_name(tp_pump_mode m);

/* Starts relaying between sockets @a and @b (non-blocking for the epoll backend); they stay
 * the caller's to close, after the pump is freed.  @limiter may be NULL. */
tp_pump *tp_pump_new(ring *r, int a, int b, tp_limiter *limiter, tp_pump_done_fn done,
                     void *opaque);
void tp_pump_get_stats(const tp_pump *p, tp_pump_stats *ret);
tp_pump_mode tp_pump_get_mode(const tp_pump *p);
/* Stops it (no callback) or frees a finished one.  Accepts NULL. */
void tp_pump_free(tp_pump *p);

/* A cap of @bytes_per_s across every pump given it; 0 means none. */
tp_limiter *tp_limiter_new(uint64_t bytes_per_s);
void tp_limiter_free(tp_limiter *l);

#endif
