/*
 * The transport handshake on the ring (handshake.h).  Frames are read exactly: a header, then
 * the payload it announces, so no byte after the handshake is consumed.
 */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "common/error.h"
#include "handshake.h"

typedef enum hs_step {
    HS_AGENT_CHALLENGE,  /* agent: sending CHALLENGE */
    HS_AGENT_HELLO,      /* agent: reading HELLO */
    HS_AGENT_ANSWER,     /* agent: sending WELCOME or REFUSE */
    HS_SOURCE_CHALLENGE, /* source: reading CHALLENGE */
    HS_SOURCE_HELLO,     /* source: sending HELLO */
    HS_SOURCE_ANSWER,    /* source: reading WELCOME or REFUSE */
    HS_DONE,
} hs_step;

struct tp_handshake {
    ring *r;
    int fd;
    tp_key key;
    hs_step step;
    tp_admit_fn admit;
    void *admit_opaque;
    tp_handshake_fn done;
    void *opaque;
    uint8_t challenge[TP_NONCE_LEN];
    tp_hello hello;
    uint8_t in[TP_HEADER_LEN + TP_HELLO_LEN + TP_REASON_MAX];
    size_t have, want;
    uint8_t out[TP_HEADER_LEN + TP_HELLO_LEN + TP_REASON_MAX];
    size_t out_len, out_sent;
    vmig_error *refused; /* the agent's REFUSE, reported once it is sent */
    int64_t io_op, timer_op;
    int refs; /* the owner, and each operation in flight */
};

static const char *step_what(hs_step s)
{
    switch (s) {
    case HS_AGENT_CHALLENGE:
        return "sending the challenge";
    case HS_AGENT_HELLO:
        return "waiting for the source's HELLO";
    case HS_AGENT_ANSWER:
        return "answering the source";
    case HS_SOURCE_CHALLENGE:
        return "waiting for the agent's challenge";
    case HS_SOURCE_HELLO:
        return "sending HELLO";
    case HS_SOURCE_ANSWER:
        return "waiting for the agent's answer";
    default:
        return "done";
    }
}

bool tp_random(void *buf, size_t len, vmig_error **errp)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            vmig_set_error_errno(errp, errno, "getrandom");
            return false;
        }
        p += n;
        len -= (size_t)n;
    }
    return true;
}

static void unref(void *opaque)
{
    tp_handshake *h = opaque;
    if (--h->refs == 0) {
        vmig_error_free(h->refused);
        memset(&h->key, 0, sizeof(h->key));
        g_free(h);
    }
}

void tp_handshake_free(tp_handshake *h)
{
    if (!h) {
        return;
    }
    h->step = HS_DONE;
    h->done = NULL;
    /* The kernel may still write into h->in: each operation's reference goes when the ring
     * lets go of it, and the last one frees the handshake. */
    int64_t io = h->io_op, timer = h->timer_op;
    h->io_op = h->timer_op = 0;
    if (io > 0) {
        ring_detach(h->r, io, unref, h);
    }
    if (timer > 0) {
        ring_detach(h->r, timer, unref, h);
    }
    unref(h);
}

/* Ends the handshake: the callback runs once; the handshake waits for tp_handshake_free(). */
static void finish(tp_handshake *h, const vmig_error *err)
{
    if (h->step == HS_DONE) {
        return;
    }
    h->step = HS_DONE;
    if (h->timer_op > 0) {
        ring_cancel(h->r, h->timer_op);
    }
    if (h->io_op > 0) {
        ring_cancel(h->r, h->io_op);
    }
    tp_handshake_fn done = h->done;
    h->done = NULL;
    if (done) {
        done(h->opaque, err ? NULL : &h->hello, err);
    }
}

static void fail(tp_handshake *h, vmig_errc code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);
static void fail(tp_handshake *h, vmig_errc code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vmig_error *err = NULL;
    vmig_set_error(&err, code, "transport handshake, %s: %s", step_what(h->step), msg);
    finish(h, err);
    vmig_error_free(err);
}

static void recv_frame(tp_handshake *h);
static void frame_in(tp_handshake *h, const tp_frame *f);

static void on_timer(void *opaque, int res)
{
    tp_handshake *h = opaque;
    h->timer_op = 0;
    if (res == 0) {
        fail(h, VMIG_E_TIMEOUT, "no answer in time");
    }
    unref(h);
}

static void sent(void *opaque, int res);

static void send_frame(tp_handshake *h, tp_type type, const void *payload, size_t len)
{
    h->out_len = tp_frame_encode(type, payload, len, h->out);
    h->out_sent = 0;
    int64_t id = ring_send(h->r, h->fd, h->out, h->out_len, sent, h);
    if (id < 0) {
        fail(h, VMIG_E_IO, "%s", g_strerror((int)-id));
        return;
    }
    h->io_op = id;
    h->refs++;
}

static void after_send(tp_handshake *h)
{
    switch (h->step) {
    case HS_AGENT_CHALLENGE:
        h->step = HS_AGENT_HELLO;
        recv_frame(h);
        break;
    case HS_SOURCE_HELLO:
        h->step = HS_SOURCE_ANSWER;
        recv_frame(h);
        break;
    case HS_AGENT_ANSWER:
        finish(h, h->refused);
        break;
    default:
        break;
    }
}

static void sent(void *opaque, int res)
{
    tp_handshake *h = opaque;
    h->io_op = 0;
    if (h->step != HS_DONE) {
        if (res < 0) {
            fail(h, VMIG_E_IO, "%s", g_strerror(-res));
        } else {
            h->out_sent += (size_t)res;
            if (h->out_sent < h->out_len) {
                int64_t id = ring_send(h->r, h->fd, h->out + h->out_sent, h->out_len - h->out_sent,
                                       sent, h);
                if (id < 0) {
                    fail(h, VMIG_E_IO, "%s", g_strerror((int)-id));
                } else {
                    h->io_op = id;
                    h->refs++;
                }
            } else {
                after_send(h);
            }
        }
    }
    unref(h);
}

static void received(void *opaque, int res);

static void recv_more(tp_handshake *h)
{
    int64_t id = ring_recv(h->r, h->fd, h->in + h->have, h->want - h->have, received, h);
    if (id < 0) {
        fail(h, VMIG_E_IO, "%s", g_strerror((int)-id));
        return;
    }
    h->io_op = id;
    h->refs++;
}

static void recv_frame(tp_handshake *h)
{
    h->have = 0;
    h->want = TP_HEADER_LEN;
    recv_more(h);
}

/* The frame types a step takes. */
static bool expected(hs_step s, unsigned type)
{
    switch (s) {
    case HS_AGENT_HELLO:
        return type == TP_HELLO;
    case HS_SOURCE_CHALLENGE:
        return type == TP_CHALLENGE;
    case HS_SOURCE_ANSWER:
        return type == TP_WELCOME || type == TP_REFUSE;
    default:
        return false;
    }
}

static void received(void *opaque, int res)
{
    tp_handshake *h = opaque;
    h->io_op = 0;
    if (h->step == HS_DONE) {
        unref(h);
        return;
    }
    if (res < 0) {
        fail(h, VMIG_E_IO, "%s", g_strerror(-res));
    } else if (res == 0) {
        fail(h, VMIG_E_PROTO, "the peer closed the connection%s",
             h->have ? " in the middle of a frame" : "");
    } else {
        h->have += (size_t)res;
        tp_frame f;
        size_t used = 0;
        vmig_error *err = NULL;
        tp_parse_result r = tp_frame_parse(h->in, h->have, &f, &used, &err);
        if (r == TP_PARSE_ERROR) {
            fail(h, VMIG_E_PROTO, "%s", vmig_error_message(err));
            vmig_error_free(err);
        } else if (h->have >= 6 && !expected(h->step, h->in[5])) {
            fail(h, VMIG_E_PROTO, "unexpected frame type %u", h->in[5]);
        } else if (r == TP_PARSE_OK) {
            frame_in(h, &f);
        } else {
            if (h->have == TP_HEADER_LEN) { /* the header is good: read what it announces */
                h->want = TP_HEADER_LEN + ((size_t)h->in[6] << 8 | h->in[7]);
            }
            if (h->want > sizeof(h->in)) {
                fail(h, VMIG_E_PROTO, "a frame of %zu bytes", h->want);
            } else {
                recv_more(h);
            }
        }
    }
    unref(h);
}

static void agent_hello(tp_handshake *h, const tp_frame *f)
{
    vmig_error *err = NULL;
    if (!tp_hello_decode(f, &h->hello, &err)) {
        fail(h, VMIG_E_PROTO, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    g_autofree char *reason = NULL;
    if (!tp_hello_verify(&h->hello, h->key.bytes, h->key.len, h->challenge)) {
        reason = g_strdup("the HELLO does not prove the key: wrong key");
    } else if (h->admit && !h->admit(h->admit_opaque, &h->hello, &reason)) {
        if (!reason) {
            reason = g_strdup("refused");
        }
    }
    h->step = HS_AGENT_ANSWER;
    if (reason) {
        size_t n = MIN(strlen(reason), (size_t)TP_REASON_MAX);
        while (n > 0 && !g_utf8_validate(reason, (gssize)n, NULL)) {
            n--; /* cut on a character boundary */
        }
        vmig_set_error(&h->refused, VMIG_E_PROTO, "refused a %s connection: %s",
                       tp_kind_name((tp_kind)h->hello.kind), reason);
        send_frame(h, TP_REFUSE, reason, n);
        return;
    }
    uint8_t mac[TP_MAC_LEN];
    tp_welcome_mac(h->key.bytes, h->key.len, h->hello.nonce, h->challenge, mac);
    send_frame(h, TP_WELCOME, mac, sizeof(mac));
}

static void source_challenge(tp_handshake *h, const tp_frame *f)
{
    memcpy(h->challenge, f->payload, TP_NONCE_LEN);
    tp_hello_sign(&h->hello, h->key.bytes, h->key.len, h->challenge);
    uint8_t payload[TP_HELLO_LEN];
    tp_hello_encode(&h->hello, payload);
    h->step = HS_SOURCE_HELLO;
    send_frame(h, TP_HELLO, payload, sizeof(payload));
}

static void source_answer(tp_handshake *h, const tp_frame *f)
{
    if (f->type == TP_REFUSE) {
        fail(h, VMIG_E_PROTO, "the agent refused: %.*s", (int)f->len, (const char *)f->payload);
        return;
    }
    if (!tp_welcome_verify(f, h->key.bytes, h->key.len, h->hello.nonce, h->challenge)) {
        fail(h, VMIG_E_PROTO, "the agent does not prove the key: wrong key, or not our agent");
        return;
    }
    finish(h, NULL);
}

static void frame_in(tp_handshake *h, const tp_frame *f)
{
    switch (h->step) {
    case HS_AGENT_HELLO:
        agent_hello(h, f);
        break;
    case HS_SOURCE_CHALLENGE:
        source_challenge(h, f);
        break;
    case HS_SOURCE_ANSWER:
        source_answer(h, f);
        break;
    default:
        break;
    }
}

static tp_handshake *hs_new(ring *r, int fd, const tp_key *key, int timeout_ms,
                            tp_handshake_fn done, void *opaque)
{
    tp_handshake *h = g_new0(tp_handshake, 1);
    h->r = r;
    h->fd = fd;
    h->key = *key;
    h->done = done;
    h->opaque = opaque;
    h->refs = 1;
    int64_t id = ring_timer(r, timeout_ms, on_timer, h);
    if (id > 0) {
        h->timer_op = id;
        h->refs++;
    }
    return h;
}

tp_handshake *tp_handshake_agent(ring *r, int fd, const tp_key *key, int timeout_ms,
                                 tp_admit_fn admit, void *admit_opaque, tp_handshake_fn done,
                                 void *opaque)
{
    tp_handshake *h = hs_new(r, fd, key, timeout_ms, done, opaque);
    h->admit = admit;
    h->admit_opaque = admit_opaque;
    h->step = HS_AGENT_CHALLENGE;
    vmig_error *err = NULL;
    if (!tp_random(h->challenge, sizeof(h->challenge), &err)) {
        fail(h, VMIG_E_IO, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return h;
    }
    send_frame(h, TP_CHALLENGE, h->challenge, sizeof(h->challenge));
    return h;
}

tp_handshake *tp_handshake_source(ring *r, int fd, const tp_key *key, int timeout_ms, tp_kind kind,
                                  unsigned index, const uint8_t token[TP_TOKEN_LEN],
                                  tp_handshake_fn done, void *opaque)
{
    tp_handshake *h = hs_new(r, fd, key, timeout_ms, done, opaque);
    h->hello.kind = (uint8_t)kind;
    h->hello.index = (uint16_t)index;
    if (token) {
        memcpy(h->hello.token, token, TP_TOKEN_LEN);
    }
    h->step = HS_SOURCE_CHALLENGE;
    vmig_error *err = NULL;
    if (!tp_random(h->hello.nonce, sizeof(h->hello.nonce), &err)) {
        fail(h, VMIG_E_IO, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return h;
    }
    recv_frame(h);
    return h;
}
