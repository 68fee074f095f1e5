/* libFuzzer: the agent's side of the transport handshake, on a real ring, against a stranger
 * that sends the input and closes.  Whatever arrives, the handshake must end once, with an
 * error that says why (a stranger cannot know the key), and leak nothing. */
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/handshake.h"

static ring *r;

static void on_done(void *opaque, const tp_hello *hello, const vmig_error *err)
{
    int *calls = opaque;
    (*calls)++;
    if (hello || !err || !vmig_error_message(err)[0]) {
        __builtin_trap(); /* only a key holder is welcomed, and a refusal says why */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!r) {
        r = ring_new(RING_BACKEND_AUTO, NULL);
    }
    int fds[2];
    if (!r || size > 4096 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) {
        return 0;
    }
    tp_key key = {.bytes = "a key nobody outside knows, 32b.", .len = 32};
    int calls = 0;
    tp_handshake *h = tp_handshake_agent(r, fds[0], &key, 1000, NULL, NULL, on_done, &calls);
    if (size && write(fds[1], data, size) < 0) {
        __builtin_trap();
    }
    shutdown(fds[1], SHUT_WR);
    for (int i = 0; i < 100 && !calls; i++) {
        ring_dispatch(r, 10);
    }
    if (calls != 1) {
        __builtin_trap(); /* EOF at the latest ends it, once */
    }
    tp_handshake_free(h);
    close(fds[0]);
    close(fds[1]);
    while (ring_in_flight(r) > 0 && ring_dispatch(r, 10) > 0) {
    }
    return 0;
}
