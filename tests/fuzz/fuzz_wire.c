/* libFuzzer: the transport's frames and handshake, as an agent reads them from a stranger:
 * frames parsed one after another from a stream that arrives in two pieces, every HELLO
 * decoded and verified, every WELCOME checked, and the QEMU stream classifier on the bytes. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "transport/wire.h"

static const uint8_t key[32] = "fuzzing key, 32 bytes long......";
static const uint8_t challenge[TP_NONCE_LEN] = {1};

/* Parses frames from @buf; returns how many bytes were used, or (size_t)-1 on an error. */
static size_t frames(const uint8_t *buf, size_t len)
{
    size_t off = 0;
    for (;;) {
        tp_frame f;
        size_t used = 0;
        vmig_error *err = NULL;
        tp_parse_result r = tp_frame_parse(buf + off, len - off, &f, &used, &err);
        if (r == TP_PARSE_ERROR) {
            if (!vmig_error_message(err)[0]) {
                __builtin_trap(); /* every refusal names what was wrong */
            }
            vmig_error_free(err);
            return (size_t)-1;
        }
        if (r == TP_PARSE_MORE) {
            return off;
        }
        if (used < TP_HEADER_LEN || used > len - off || f.len != used - TP_HEADER_LEN) {
            __builtin_trap();
        }
        tp_hello h;
        if (f.type == TP_HELLO && tp_hello_decode(&f, &h, &err)) {
            (void)tp_hello_verify(&h, key, sizeof(key), challenge);
            uint8_t again[TP_HELLO_LEN];
            tp_hello_encode(&h, again);
            if (memcmp(again, f.payload, TP_HELLO_LEN) != 0) {
                __builtin_trap(); /* decode and encode agree */
            }
        }
        vmig_error_free(err);
        if (f.type == TP_WELCOME) {
            (void)tp_welcome_verify(&f, key, sizeof(key), challenge, challenge);
        }
        off += used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned id = 0;
    (void)tp_classify(data, size, &id);
    /* the stream arrives in two reads: what the first leaves unparsed is kept */
    size_t cut = size ? data[0] % size : 0;
    size_t used = frames(data, cut);
    if (used != (size_t)-1) {
        frames(data + used, size - used);
    }
    return 0;
}
