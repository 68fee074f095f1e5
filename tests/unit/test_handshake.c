/*
 * The transport handshake on a real ring, over socket pairs: both sides together, a wrong key
 * on either side, a refusal, and strangers that send garbage, stop half-way or say nothing.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/handshake.h"

typedef struct side {
    bool done;
    bool ok;
    tp_hello hello;
    char msg[512];
} side;

static void on_done(void *opaque, const tp_hello *hello, const vmig_error *err)
{
    side *s = opaque;
    s->done = true;
    s->ok = !err;
    if (hello) {
        s->hello = *hello;
    }
    g_strlcpy(s->msg, err ? vmig_error_message(err) : "", sizeof(s->msg));
}

static ring *r;
static int fds[2];

static void setup(void)
{
    r = ring_new(RING_BACKEND_AUTO, NULL);
    cr_assert_not_null(r);
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0));
}

static void teardown(void)
{
    close(fds[0]);
    close(fds[1]);
    ring_free(r);
}

TestSuite(handshake, .init = setup, .fini = teardown, .timeout = 30);

static tp_key key_of(const char *s)
{
    tp_key k = {.len = strlen(s)};
    memcpy(k.bytes, s, k.len);
    return k;
}

static void run_until(side *a, side *b)
{
    for (int i = 0; i < 500 && !(a->done && (!b || b->done)); i++) {
        ring_dispatch(r, 20);
    }
}

static const uint8_t token[TP_TOKEN_LEN] = {0xab, 0xcd};

Test(handshake, both_sides_with_the_key)
{
    tp_key k = key_of("a key of thirty-two bytes, ok...");
    side agent = {0}, source = {0};
    tp_handshake *ha = tp_handshake_agent(r, fds[0], &k, 5000, NULL, NULL, on_done, &agent);
    tp_handshake *hs = tp_handshake_source(r, fds[1], &k, 5000, TP_KIND_MULTIFD, 5, token, on_done,
                                           &source);
    run_until(&agent, &source);
    cr_assert(agent.ok, "%s", agent.msg);
    cr_assert(source.ok, "%s", source.msg);
    cr_assert(eq(int, agent.hello.kind, TP_KIND_MULTIFD));
    cr_assert(eq(int, agent.hello.index, 5));
    cr_assert(eq(int, memcmp(agent.hello.token, token, TP_TOKEN_LEN), 0));
    tp_handshake_free(ha);
    tp_handshake_free(hs);
    /* nothing after the handshake was read: the stream is the relay's */
    cr_assert(eq(int, (int)write(fds[1], "QEVM", 4), 4));
    char buf[8];
    cr_assert(eq(int, (int)read(fds[0], buf, sizeof(buf)), 4));
    cr_assert(eq(int, memcmp(buf, "QEVM", 4), 0));
}

Test(handshake, a_source_with_another_key_is_refused)
{
    tp_key k = key_of("the agent's key, 32 bytes long..");
    tp_key wrong = key_of("somebody else's key, 32 bytes...");
    side agent = {0}, source = {0};
    tp_handshake *ha = tp_handshake_agent(r, fds[0], &k, 5000, NULL, NULL, on_done, &agent);
    tp_handshake *hs = tp_handshake_source(r, fds[1], &wrong, 5000, TP_KIND_MAIN, 0, token, on_done,
                                           &source);
    run_until(&agent, &source);
    cr_assert(not(agent.ok));
    cr_assert_not_null(strstr(agent.msg, "refused a main connection: the HELLO does not prove "
                                         "the key"),
                       "%s", agent.msg);
    cr_assert(not(source.ok));
    cr_assert_not_null(strstr(source.msg, "the agent refused: the HELLO does not prove the "
                                          "key"),
                       "%s", source.msg);
    tp_handshake_free(ha);
    tp_handshake_free(hs);
}

static bool admit_none(void *opaque, const tp_hello *hello, char **ret_reason)
{
    (void)opaque;
    *ret_reason = g_strdup_printf("no migration has token %02x%02x", hello->token[0],
                                  hello->token[1]);
    return false;
}

Test(handshake, a_token_no_migration_has_is_refused)
{
    tp_key k = key_of("a key of thirty-two bytes, ok...");
    side agent = {0}, source = {0};
    tp_handshake *ha = tp_handshake_agent(r, fds[0], &k, 5000, admit_none, NULL, on_done, &agent);
    tp_handshake *hs = tp_handshake_source(r, fds[1], &k, 5000, TP_KIND_MULTIFD, 1, token, on_done,
                                           &source);
    run_until(&agent, &source);
    cr_assert(not(agent.ok));
    cr_assert(not(source.ok));
    cr_assert_not_null(strstr(source.msg, "the agent refused: no migration has token abcd"), "%s",
                       source.msg);
    tp_handshake_free(ha);
    tp_handshake_free(hs);
}

/* An impostor agent: it answers with a WELCOME it cannot have computed. */
Test(handshake, an_agent_without_the_key_is_not_believed)
{
    tp_key k = key_of("a key of thirty-two bytes, ok...");
    side source = {0};
    tp_handshake *hs = tp_handshake_source(r, fds[1], &k, 5000, TP_KIND_CONTROL, 0, NULL, on_done,
                                           &source);
    uint8_t buf[TP_HEADER_LEN + TP_HELLO_LEN], nonce[TP_NONCE_LEN] = {3}, mac[TP_MAC_LEN] = {0};
    size_t n = tp_frame_encode(TP_CHALLENGE, nonce, sizeof(nonce), buf);
    cr_assert(eq(int, (int)write(fds[0], buf, n), (int)n));
    for (int i = 0; i < 50; i++) { /* its HELLO */
        ring_dispatch(r, 10);
    }
    cr_assert(eq(int, (int)read(fds[0], buf, sizeof(buf)), (int)sizeof(buf)));
    n = tp_frame_encode(TP_WELCOME, mac, sizeof(mac), buf);
    cr_assert(eq(int, (int)write(fds[0], buf, n), (int)n));
    run_until(&source, NULL);
    cr_assert(not(source.ok));
    cr_assert_not_null(strstr(source.msg, "the agent does not prove the key"), "%s", source.msg);
    tp_handshake_free(hs);
}

static void stranger(const void *bytes, size_t len, bool close_after, const char *want)
{
    tp_key k = key_of("a key of thirty-two bytes, ok...");
    side agent = {0};
    tp_handshake *ha = tp_handshake_agent(r, fds[0], &k, 300, NULL, NULL, on_done, &agent);
    if (len) {
        cr_assert(eq(int, (int)write(fds[1], bytes, len), (int)len));
    }
    if (close_after) {
        shutdown(fds[1], SHUT_WR);
    }
    run_until(&agent, NULL);
    cr_assert(agent.done);
    cr_assert(not(agent.ok));
    cr_assert_not_null(strstr(agent.msg, want), "%s", agent.msg);
    tp_handshake_free(ha);
}

Test(handshake, garbage_is_refused)
{
    stranger("GET / HTTP/1.1\r\n\r\n", 18, false, "not a vmigrate transport frame (bad magic)");
}

Test(handshake, a_wrong_version_is_refused)
{
    stranger("VMGW\x07\x02\x00\x54", 8, false, "transport protocol version 7, expected 1");
}

Test(handshake, a_frame_out_of_turn_is_refused)
{
    stranger("VMGW\x01\x05\x00\x02{}", 10, false, "unexpected frame type 5");
}

Test(handshake, an_oversized_frame_is_refused)
{
    stranger("VMGW\x01\x02\xff\xff", 8, false, "HELLO frame of 65535 bytes, expected 84");
}

Test(handshake, a_truncated_hello_is_refused)
{
    stranger("VMGW\x01\x02\x00\x54\x02\x00", 10, true,
             "the peer closed the connection in the middle of a frame");
}

Test(handshake, silence_times_out)
{
    stranger(NULL, 0, false, "waiting for the source's HELLO: no answer in time");
}

Test(handshake, freeing_it_midway_runs_no_callback)
{
    tp_key k = key_of("a key of thirty-two bytes, ok...");
    side agent = {0};
    tp_handshake *ha = tp_handshake_agent(r, fds[0], &k, 5000, NULL, NULL, on_done, &agent);
    ring_dispatch(r, 10);
    tp_handshake_free(ha); /* its receive is in flight */
    for (int i = 0; i < 10; i++) {
        ring_dispatch(r, 5);
    }
    cr_assert(not(agent.done));
}
