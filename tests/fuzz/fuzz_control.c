/* libFuzzer: the control connection between engine and agent, after the handshake.  The
 * input arrives on a real socket as a peer's bytes; every message the framing lets through is
 * read both as an agent reads a request and as an engine reads a reply.  Whatever arrives, the
 * connection ends once (end of file at the latest), with an error for anything malformed, and
 * leaks nothing. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engine/link.h"
#include "transport/control.h"

static ring *r;

typedef struct seen {
    int closed;
    int messages;
} seen;

static void on_msg(void *opaque, const char *text, size_t len)
{
    seen *s = opaque;
    s->messages++;
    if (strlen(text) != len || len > TP_PAYLOAD_MAX) {
        __builtin_trap(); /* the framing promised a NUL-free text of the frame's length */
    }
    int64_t id = 0;
    const char *op = NULL, *error = NULL;
    vmig_error *err = NULL;
    json_object *req = eng_agent_read_request(text, len, &id, &op, &err);
    if (!req == !err || (req && !op)) {
        __builtin_trap(); /* one of the two, and an op with a request */
    }
    json_object_put(req);
    vmig_error_free(err);
    err = NULL;
    json_object *rep = eng_link_read_reply(text, len, &id, &error, &err);
    if (!rep == !err) {
        __builtin_trap();
    }
    json_object_put(rep);
    vmig_error_free(err);
}

static void on_closed(void *opaque, const vmig_error *err)
{
    seen *s = opaque;
    s->closed++;
    if (err && !vmig_error_message(err)[0]) {
        __builtin_trap(); /* an error says why */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!r) {
        r = ring_new(RING_BACKEND_AUTO, NULL);
    }
    int fds[2];
    if (!r || size > 65536 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
        return 0;
    }
    seen s = {0};
    tp_control *c = tp_control_new(r, fds[0], on_msg, on_closed, &s);
    /* what the engine would send meanwhile: a request of its own */
    if (!tp_control_send(c, "{\"id\":1,\"op\":\"info\"}", NULL)) {
        __builtin_trap();
    }
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fds[1], data + off, size - off);
        if (w <= 0) {
            ring_dispatch(r, 1); /* the socket's buffer is full: let the reader take some */
            continue;
        }
        off += (size_t)w;
    }
    shutdown(fds[1], SHUT_WR);
    for (int i = 0; i < 200 && !s.closed; i++) {
        ring_dispatch(r, 10);
    }
    if (s.closed != 1) {
        __builtin_trap(); /* end of file at the latest ends it, once */
    }
    tp_control_free(c); /* closes fds[0] */
    close(fds[1]);
    while (ring_in_flight(r) > 0 && ring_dispatch(r, 10) > 0) {
    }
    return 0;
}
