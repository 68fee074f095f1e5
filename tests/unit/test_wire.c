/*
 * The transport's wire format: frames, the HELLO/WELCOME handshake MACs, and telling QEMU's
 * migration streams apart by their first bytes.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <string.h>

#include "transport/wire.h"

static const uint8_t key[32] = "0123456789abcdef0123456789abcdef";
static const uint8_t challenge[TP_NONCE_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

static tp_parse_result parse(const uint8_t *buf, size_t len, tp_frame *f, const char **msg)
{
    static vmig_error *err;
    vmig_error_free(err);
    err = NULL;
    size_t used = 0;
    tp_parse_result r = tp_frame_parse(buf, len, f, &used, &err);
    *msg = err ? vmig_error_message(err) : "";
    if (r == TP_PARSE_OK) {
        cr_assert(eq(sz, used, TP_HEADER_LEN + f->len));
    }
    return r;
}

Test(wire, a_frame_round_trips_and_arrives_in_pieces)
{
    uint8_t buf[TP_HEADER_LEN + 64];
    size_t n = tp_frame_encode(TP_CONTROL, "{\"op\":\"ping\"}", 13, buf);
    cr_assert(eq(sz, n, TP_HEADER_LEN + 13));
    tp_frame f;
    const char *msg;
    for (size_t i = 0; i < n; i++) {
        cr_assert(eq(int, parse(buf, i, &f, &msg), TP_PARSE_MORE), "prefix of %zu: %s", i, msg);
    }
    cr_assert(eq(int, parse(buf, n, &f, &msg), TP_PARSE_OK), "%s", msg);
    cr_assert(eq(int, f.type, TP_CONTROL));
    cr_assert(eq(sz, f.len, 13));
    cr_assert(eq(int, memcmp(f.payload, "{\"op\":\"ping\"}", 13), 0));
}

Test(wire, malformed_frames_are_refused_and_named)
{
    tp_frame f;
    const char *msg;
    cr_assert(eq(int, parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "not a vmigrate transport frame (bad magic)"));
    cr_assert(eq(int, parse((const uint8_t *)"VX", 2, &f, &msg), TP_PARSE_ERROR),
              "garbage is refused on its first bytes");
    uint8_t buf[TP_HEADER_LEN + TP_PAYLOAD_MAX + 1];
    tp_frame_encode(TP_CHALLENGE, challenge, TP_NONCE_LEN, buf);
    buf[4] = 2;
    cr_assert(eq(int, parse(buf, 5, &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "transport protocol version 2, expected 1"));
    buf[4] = TP_VERSION;
    buf[5] = 99;
    cr_assert(eq(int, parse(buf, 6, &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "unknown transport frame type 99"));
    /* truncated: a CHALLENGE must be exactly one nonce */
    tp_frame_encode(TP_CHALLENGE, challenge, 8, buf);
    cr_assert(eq(int, parse(buf, sizeof(buf), &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "CHALLENGE frame of 8 bytes, expected 32"));
    /* oversized, declared in the header: refused before its payload arrives */
    buf[5] = TP_CONTROL;
    buf[6] = 0xff;
    buf[7] = 0xff;
    cr_assert(eq(int, parse(buf, TP_HEADER_LEN, &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "CONTROL frame of 65535 bytes, over the limit of 16384"));
    cr_assert(eq(sz, tp_frame_encode(TP_CONTROL, buf, TP_PAYLOAD_MAX + 1, buf), 0));
    memset(buf + TP_HEADER_LEN, 'x', 300);
    tp_frame_encode(TP_REFUSE, buf + TP_HEADER_LEN, 300, buf);
    cr_assert(eq(int, parse(buf, sizeof(buf), &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "REFUSE frame of 300 bytes, over the limit of 256"));
    tp_frame_encode(TP_CONTROL, "a\xff", 2, buf);
    cr_assert(eq(int, parse(buf, sizeof(buf), &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "CONTROL frame text is not UTF-8"));
    tp_frame_encode(TP_CONTROL, "a\0b", 3, buf);
    cr_assert(eq(int, parse(buf, sizeof(buf), &f, &msg), TP_PARSE_ERROR));
    cr_assert(eq(str, (char *)msg, "CONTROL frame text holds a NUL byte"));
}

static tp_hello signed_hello(const uint8_t *k, size_t klen)
{
    tp_hello h = {.kind = TP_KIND_MULTIFD, .index = 3};
    memset(h.token, 0x5a, sizeof(h.token));
    memset(h.nonce, 0xa5, sizeof(h.nonce));
    tp_hello_sign(&h, k, klen, challenge);
    return h;
}

Test(wire, hello_proves_the_key_and_binds_what_it_says)
{
    tp_hello h = signed_hello(key, sizeof(key));
    uint8_t payload[TP_HELLO_LEN], buf[TP_HEADER_LEN + TP_HELLO_LEN];
    tp_hello_encode(&h, payload);
    size_t n = tp_frame_encode(TP_HELLO, payload, sizeof(payload), buf);
    tp_frame f;
    const char *msg;
    cr_assert(eq(int, parse(buf, n, &f, &msg), TP_PARSE_OK), "%s", msg);
    tp_hello got;
    vmig_error *err = NULL;
    cr_assert(tp_hello_decode(&f, &got, &err), "%s", vmig_error_message(err));
    cr_assert(eq(int, got.kind, TP_KIND_MULTIFD));
    cr_assert(eq(int, got.index, 3));
    cr_assert(tp_hello_verify(&got, key, sizeof(key), challenge));

    static const uint8_t other[32] = "another key, of the same length!";
    cr_assert(not(tp_hello_verify(&got, other, sizeof(other), challenge)), "a wrong key");
    uint8_t other_challenge[TP_NONCE_LEN] = {9};
    cr_assert(not(tp_hello_verify(&got, key, sizeof(key), other_challenge)),
              "a replay against another challenge");
    got.token[0] ^= 1;
    cr_assert(not(tp_hello_verify(&got, key, sizeof(key), challenge)), "another token");
    got.token[0] ^= 1;
    got.index = 4;
    cr_assert(not(tp_hello_verify(&got, key, sizeof(key), challenge)), "another channel");
    got.index = 3;
    got.kind = TP_KIND_MAIN;
    cr_assert(not(tp_hello_verify(&got, key, sizeof(key), challenge)), "another kind");

    payload[0] = TP_KIND_COUNT;
    tp_frame_encode(TP_HELLO, payload, sizeof(payload), buf);
    cr_assert(eq(int, parse(buf, n, &f, &msg), TP_PARSE_OK));
    cr_assert(not(tp_hello_decode(&f, &got, &err)));
    char want[64];
    snprintf(want, sizeof(want), "HELLO for an unknown channel kind %d", TP_KIND_COUNT);
    cr_assert(eq(str, (char *)vmig_error_message(err), want));
    vmig_error_free(err);
}

Test(wire, welcome_proves_the_agent_has_the_key)
{
    uint8_t nonce[TP_NONCE_LEN] = {7}, mac[TP_MAC_LEN], buf[TP_HEADER_LEN + TP_MAC_LEN];
    tp_welcome_mac(key, sizeof(key), nonce, challenge, mac);
    tp_frame_encode(TP_WELCOME, mac, sizeof(mac), buf);
    tp_frame f;
    const char *msg;
    cr_assert(eq(int, parse(buf, sizeof(buf), &f, &msg), TP_PARSE_OK), "%s", msg);
    cr_assert(tp_welcome_verify(&f, key, sizeof(key), nonce, challenge));
    nonce[0] = 8;
    cr_assert(not(tp_welcome_verify(&f, key, sizeof(key), nonce, challenge)));
}

Test(wire, constant_time_compare)
{
    cr_assert(tp_ct_equal("abc", "abc", 3));
    cr_assert(not(tp_ct_equal("abc", "abd", 3)));
    cr_assert(tp_ct_equal("", "x", 0));
}

Test(wire, qemu_streams_are_told_apart_by_their_first_bytes)
{
    unsigned id = 99;
    static const uint8_t qevm[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};
    cr_assert(eq(int, tp_classify(qevm, 2, &id), TP_STREAM_MORE));
    cr_assert(eq(int, tp_classify(qevm, sizeof(qevm), &id), TP_STREAM_MAIN));
    uint8_t init[64] = {0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1};
    init[TP_MULTIFD_ID_OFFSET] = 6;
    cr_assert(eq(int, tp_classify(init, 4, &id), TP_STREAM_MORE), "the id comes at byte 24");
    cr_assert(eq(int, tp_classify(init, TP_MULTIFD_ID_OFFSET, &id), TP_STREAM_MORE));
    cr_assert(eq(int, tp_classify(init, sizeof(init), &id), TP_STREAM_MULTIFD));
    cr_assert(eq(u32, id, 6));
    cr_assert(eq(int, tp_classify((const uint8_t *)"\x00\x00", 2, &id), TP_STREAM_OTHER),
              "the preempt channel has no magic");
    cr_assert(eq(int, tp_classify((const uint8_t *)"QX", 2, &id), TP_STREAM_OTHER));
    cr_assert(eq(int, tp_classify(qevm, 0, &id), TP_STREAM_MORE));
}
