/*
 * The relay's two ends (issue 8), on the completion ring.
 *
 * Source side: the source QEMU migrates to a unix socket the relay listens on.  Each connection
 * QEMU opens is told apart by its first bytes (peeked, never consumed: tp_classify): "QEVM" is
 * the main channel, MULTIFD_MAGIC a multifd channel whose id is its index, anything else the
 * post-copy preempt channel.  For each, the relay opens one TCP connection to the agent, runs
 * the handshake (tp_handshake_source: kind, index, the migration's token) and then pumps both
 * ways (tp_pump).
 *
 * A relay made with fixed_kind TP_KIND_NBD carries a storage copy instead: the source QEMU's
 * NBD clients connect to it, each becomes an "nbd" channel, and the agent connects it to the
 * destination QEMU's NBD server (tp_dest_relay_set_nbd), with no order to keep.
 *
 * Destination side: the agent hands every admitted data connection to the migration's
 * tp_dest_relay.  It connects the main channel to QEMU's incoming unix socket first, and opens
 * no other connection to QEMU until that connect has completed, whatever order the channels
 * arrived in: QEMU 7.2 takes the first connection it accepts as the main channel.  A unix
 * socket's backlog is accepted in connect order, so a completed connect is a place in line.
 *
 * Either side: a channel that cannot be set up, or whose pump fails (a reset), is closed on both
 * sides, which fails QEMU's migration; the fail callback says which channel and why.  End of
 * file on a channel is passed on and is no failure.  Counters for every channel are kept from
 * its start to its end.
 */
#ifndef VMIG_TRANSPORT_RELAY_H
#define VMIG_TRANSPORT_RELAY_H

#include <sys/socket.h>

#include "ring/ring.h"
#include "transport/handshake.h"
#include "transport/pump.h"
#include "transport/wire.h"

#define TP_CHANNELS_MAX 64 /* multifd channels a migration may have */

typedef struct tp_channel_stats {
    tp_kind kind;
    unsigned index;         /* multifd channel id; 0 for main and preempt */
    unsigned order;         /* destination side: place among the connections made to QEMU */
    uint64_t bytes_out;     /* towards the destination QEMU */
    uint64_t bytes_in;      /* back towards the source (the return path) */
    uint64_t recv_wait_us;  /* waiting for bytes to arrive (outbound direction) */
    uint64_t send_wait_us;  /* waiting for the next hop to take them (outbound direction) */
    uint64_t limit_wait_us; /* held back by the bandwidth cap (both directions) */
    int64_t start_us;       /* monotonic: when the channel began relaying (0: not yet) */
    int64_t end_us;         /* when it ended (0: still open) */
    bool failed;
} tp_channel_stats;

/* A channel failed; @err names it.  The relay goes on with the others (QEMU fails the
 * migration on its own).  May be called more than once. */
typedef void (*tp_relay_fail_fn)(void *opaque, const vmig_error *err);

/* ---- source side ----------------------------------------------------------------------------- */

typedef struct tp_source_relay tp_source_relay;

typedef struct tp_source_cfg {
    const char *listen_path;      /* unix socket to create (an existing file there is an error) */
    const struct sockaddr *agent; /* the agent's address */
    socklen_t agent_len;
    const tp_key *key;
    const uint8_t *token; /* TP_TOKEN_LEN bytes: the migration's */
    tp_limiter *limiter;  /* shared cap, may be NULL; the caller's */
    int timeout_ms;       /* for each connect, classification and handshake */
    int delay_main_ms;    /* tests: hold the main channel back this long */
    bool first_is_main;   /* a resumed post-copy: QEMU's first connection is main, though its
                           * stream goes on where it broke, with no QEVM header */
    tp_kind fixed_kind;   /* 0: tell each connection by its first bytes.  TP_KIND_NBD: every
                           * connection is one (an NBD client speaks second), index = arrival */
} tp_source_cfg;

/* Listens on cfg->listen_path at once (copied config); NULL with an error. */
tp_source_relay *tp_source_relay_new(ring *r, const tp_source_cfg *cfg, tp_relay_fail_fn fail,
                                     void *opaque, vmig_error **errp);
/* Channels seen so far, main first then by index, into @ret (up to @max); their count. */
size_t tp_source_relay_stats(const tp_source_relay *s, tp_channel_stats *ret, size_t max);
/* Closes every channel and the listener, removes the socket file.  Accepts NULL. */
void tp_source_relay_free(tp_source_relay *s);

/* ---- destination side ------------------------------------------------------------------------ */

typedef struct tp_dest_relay tp_dest_relay;

/* For QEMU listening on unix socket @qemu_path; @limiter may be NULL (the caller's). */
tp_dest_relay *tp_dest_relay_new(ring *r, const char *qemu_path, tp_limiter *limiter,
                                 int timeout_ms, tp_relay_fail_fn fail, void *opaque);
/* Takes connected socket @fd (admitted: its handshake is done) carrying @kind/@index.  False
 * with an error, @fd closed, for a second main channel, a multifd id seen before, an index
 * over TP_CHANNELS_MAX, or a control kind. */
bool tp_dest_relay_add(tp_dest_relay *d, int fd, tp_kind kind, unsigned index, vmig_error **errp);
/* Where NBD channels go (QEMU's NBD server, a unix socket); without it they are refused.
 * They connect at once, whatever the main channel does. */
void tp_dest_relay_set_nbd(tp_dest_relay *d, const char *nbd_path);
size_t tp_dest_relay_stats(const tp_dest_relay *d, tp_channel_stats *ret, size_t max);
void tp_dest_relay_free(tp_dest_relay *d);

#endif
