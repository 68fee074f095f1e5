/*
 * The channel pump on a real ring, between socket pairs: bytes both ways in order, end of
 * file passed on, back-pressure, a broken side, the limiter, freeing mid-way.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/pump.h"

static ring *r;
static int src[2], dst[2]; /* the pump joins src[1] (a) and dst[0] (b) */

static void setup(void)
{
    r = ring_new(RING_BACKEND_AUTO, NULL);
    cr_assert_not_null(r);
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, src), 0));
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, dst), 0));
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++) {
        close(src[i]);
        close(dst[i]);
    }
    ring_free(r);
}

TestSuite(pump, .init = setup, .fini = teardown, .timeout = 60);

typedef struct result {
    bool done;
    char msg[256];
} result;

static void on_done(void *opaque, const vmig_error *err)
{
    result *res = opaque;
    res->done = true;
    g_strlcpy(res->msg, err ? vmig_error_message(err) : "", sizeof(res->msg));
}

/* Writes what it can of @buf to @fd; returns how much. */
static size_t put(int fd, const uint8_t *buf, size_t len)
{
    ssize_t n = write(fd, buf, len);
    return n > 0 ? (size_t)n : 0;
}

static size_t take(int fd, uint8_t *buf, size_t len)
{
    ssize_t n = read(fd, buf, len);
    return n > 0 ? (size_t)n : 0;
}

/* Moves @len patterned bytes from @in through the pump to @out, checking every byte. */
static void stream(int in, int out, size_t len, unsigned seed)
{
    g_autofree uint8_t *data = g_malloc(len), *got = g_malloc(len);
    for (size_t i = 0; i < len; i++) {
        data[i] = (uint8_t)(i * 31 + seed + i / 4096);
    }
    size_t wrote = 0, read_ = 0;
    for (int spins = 0; read_ < len && spins < 100000; spins++) {
        wrote += put(in, data + wrote, len - wrote);
        ring_dispatch(r, 1);
        read_ += take(out, got + read_, len - read_);
    }
    cr_assert(eq(sz, read_, len), "all %zu bytes arrive", len);
    cr_assert(eq(int, memcmp(data, got, len), 0), "in order, unchanged");
}

Test(pump, both_ways_in_order_then_eof_both_ways)
{
    result res = {0};
    tp_pump *p = tp_pump_new(r, src[1], dst[0], NULL, on_done, &res);
    stream(src[0], dst[1], 3 << 20, 1); /* a -> b: the migration stream */
    stream(dst[1], src[0], 100000, 2);  /* b -> a: the return path */
    shutdown(src[0], SHUT_WR);
    uint8_t c;
    for (int i = 0; i < 200 && read(dst[1], &c, 1) != 0; i++) {
        ring_dispatch(r, 5);
    }
    cr_assert(eq(int, (int)read(dst[1], &c, 1), 0), "EOF passed on to b's peer");
    cr_assert(not(res.done), "one direction is still open");
    shutdown(dst[1], SHUT_WR);
    for (int i = 0; i < 200 && !res.done; i++) {
        ring_dispatch(r, 5);
    }
    cr_assert(res.done);
    cr_assert(eq(str, res.msg, ""), "a clean end");
    tp_pump_stats st;
    tp_pump_get_stats(p, &st);
    cr_assert(eq(u64, st.bytes[TP_A_TO_B], 3 << 20));
    cr_assert(eq(u64, st.bytes[TP_B_TO_A], 100000));
    cr_assert(st.eof[0] && st.eof[1]);
    tp_pump_free(p);
}

/* b's reader stops: the pump stops taking from a after about one buffer. */
Test(pump, back_pressure_bounds_what_is_held)
{
    result res = {0};
    tp_pump *p = tp_pump_new(r, src[1], dst[0], NULL, on_done, &res);
    static uint8_t chunk[65536];
    size_t wrote = 0;
    for (int i = 0; i < 400; i++) {
        wrote += put(src[0], chunk, sizeof(chunk));
        ring_dispatch(r, 1);
    }
    tp_pump_stats st;
    tp_pump_get_stats(p, &st);
    /* socket buffers on both sides plus one pump buffer, not everything that was offered */
    cr_assert(lt(u64, st.bytes[TP_A_TO_B], (uint64_t)8 << 20), "pumped %lu of %zu written",
              (unsigned long)st.bytes[TP_A_TO_B], wrote);
    cr_assert(gt(u64, st.send_wait_us[TP_A_TO_B], 0), "it waited on the sink");
    cr_assert(not(res.done));
    tp_pump_free(p);
}

Test(pump, a_side_that_breaks_ends_it_with_the_error)
{
    result res = {0};
    tp_pump *p = tp_pump_new(r, src[1], dst[0], NULL, on_done, &res);
    close(dst[1]); /* b's peer is gone */
    dst[1] = -1;
    static uint8_t chunk[4096];
    for (int i = 0; i < 200 && !res.done; i++) {
        put(src[0], chunk, sizeof(chunk));
        ring_dispatch(r, 5);
    }
    cr_assert(res.done);
    cr_assert_not_null(strstr(res.msg, "channel"), "%s", res.msg);
    tp_pump_free(p);
}

/* 2 MiB through a 4 MiB/s cap, once its burst (one buffer) is spent: at least ~0.4 s.  A
 * lower bound: the cap holds; how fast it runs otherwise is a figure for bench/. */
Test(pump, the_limiter_caps_the_rate)
{
    result res = {0};
    tp_limiter *l = tp_limiter_new(4 << 20);
    tp_pump *p = tp_pump_new(r, src[1], dst[0], l, on_done, &res);
    int64_t t0 = g_get_monotonic_time();
    stream(src[0], dst[1], 2 << 20, 3);
    int64_t took_ms = (g_get_monotonic_time() - t0) / 1000;
    cr_assert(ge(i64, took_ms, 350), "2 MiB at 4 MiB/s took %ld ms", (long)took_ms);
    tp_pump_stats st;
    tp_pump_get_stats(p, &st);
    cr_assert(gt(u64, st.limit_wait_us[TP_A_TO_B], 0));
    tp_pump_free(p);
    tp_limiter_free(l);
}

Test(pump, freeing_it_midway_runs_no_callback)
{
    result res = {0};
    tp_pump *p = tp_pump_new(r, src[1], dst[0], NULL, on_done, &res);
    ring_dispatch(r, 5);
    tp_pump_free(p); /* both receives in flight */
    shutdown(src[0], SHUT_WR);
    for (int i = 0; i < 10; i++) {
        ring_dispatch(r, 5);
    }
    cr_assert(not(res.done));
}
