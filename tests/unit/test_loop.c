/* The io_uring loop: watches fire, re-arm, can be dropped from their own callback, and an
 * idle wait ends at its deadline. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <poll.h>
#include <unistd.h>

#include "engine/loop.h"
#include "qmp/qmp.h"

typedef struct hits {
    int n;
    int fd;
    eng_loop *loop;
    int unwatch_id;
} hits;

static void on_readable(void *opaque, int fd, int revents)
{
    hits *h = opaque;
    char buf[16];
    cr_assert(revents & POLLIN);
    ssize_t r = read(fd, buf, sizeof(buf));
    (void)r;
    h->n++;
    if (h->unwatch_id) {
        eng_loop_unwatch(h->loop, h->unwatch_id);
    }
}

Test(loop, watch_fires_and_rearms, .timeout = 10)
{
    g_autoptr(eng_loop) l = eng_loop_new(NULL);
    cr_assert_not_null(l);
    int p[2];
    cr_assert(eq(int, pipe(p), 0));
    hits h = {0};
    int id = eng_loop_watch(l, p[0], POLLIN, on_readable, &h);
    cr_assert(gt(int, id, 0));
    for (int i = 1; i <= 3; i++) {
        cr_assert(eq(int, (int)write(p[1], "x", 1), 1));
        cr_assert(eq(int, eng_loop_run_once(l, 1000), 1));
        cr_assert(eq(int, h.n, i));
    }
    eng_loop_unwatch(l, id);
    cr_assert(eq(int, (int)write(p[1], "x", 1), 1));
    cr_assert(eq(int, eng_loop_run_once(l, 100), 0), "an unwatched fd runs no callback");
    close(p[0]);
    close(p[1]);
}

Test(loop, callback_may_unwatch_itself, .timeout = 10)
{
    g_autoptr(eng_loop) l = eng_loop_new(NULL);
    int p[2];
    cr_assert(eq(int, pipe(p), 0));
    hits h = {.loop = l};
    h.unwatch_id = eng_loop_watch(l, p[0], POLLIN, on_readable, &h);
    cr_assert(eq(int, (int)write(p[1], "xy", 2), 2));
    eng_loop_run_once(l, 1000);
    cr_assert(eq(int, (int)write(p[1], "z", 1), 1));
    eng_loop_run_once(l, 100);
    cr_assert(eq(int, h.n, 1));
    close(p[0]);
    close(p[1]);
}

Test(loop, idle_wait_ends_at_its_deadline, .timeout = 10)
{
    g_autoptr(eng_loop) l = eng_loop_new(NULL);
    int64_t t0 = vmig_now_ms();
    cr_assert(eq(int, eng_loop_run_once(l, 150), 0));
    int64_t took = vmig_now_ms() - t0;
    cr_assert(ge(i64, took, 140));
    cr_assert(lt(i64, took, 5000));
}
