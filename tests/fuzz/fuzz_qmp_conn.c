/*
 * libFuzzer: a QMP connection whose peer says what the input says, then hangs up.  The client
 * greets, negotiates, has calls in flight, issues calls from its event handler and one after a
 * failed call (on a dead connection, that one fails from the timer), and hands each reply to
 * the reply readers of engine/ and cpu/, as a migration job would.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cpu/qemu-reply.h"
#include "engine/engine.h"
#include "qmp/qmp.h"
#include "ring/ring.h"

static ring *the_ring;

typedef struct run {
    qmp_conn *c;
    int replies, events;
    bool ready_done, retried;
} run;

static void on_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    run *r = opaque;
    r->replies++;
    if (err && !r->retried) {
        /* a job's next call after a failure: on a dead connection it fails from the timer */
        r->retried = true;
        qmp_call(r->c, "query-status", NULL, 0, 1000, on_reply, r);
    }
    if (err || !ret) {
        return;
    }
    eng_qemu_version v;
    bool tcg;
    cpu_def d;
    eng_qemu_version_parse(ret, &v, NULL);
    eng_qemu_tcg_parse(ret, &tcg, NULL);
    g_free(eng_machine_resolve(ret, "pc"));
    g_free(cpu_first_qom_path(ret, NULL));
    if (cpu_def_from_expansion(ret, &d, NULL)) {
        cpu_def_clear(&d);
    }
}

static void on_event(void *opaque, const char *ev, json_object *data, int64_t ts)
{
    run *r = opaque;
    (void)ev;
    (void)data;
    (void)ts;
    if (r->events++ < 4) {
        qmp_call(r->c, "query-migrate", NULL, 0, 1000, on_reply, r);
    }
}

static void on_ready(void *opaque, const vmig_error *err)
{
    run *r = opaque;
    (void)err;
    r->ready_done = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!the_ring) {
        the_ring = ring_new(RING_BACKEND_AUTO, NULL);
    }
    int sv[2];
    if (size > 65536 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return 0;
    }
    /* the whole conversation is in the socket before the client reads, then end of file */
    int buf = 1 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    ssize_t w = write(sv[1], data, size);
    (void)w;
    shutdown(sv[1], SHUT_WR);
    run r = {0};
    r.c = qmp_conn_new(the_ring, "fuzz");
    qmp_conn_set_event_cb(r.c, on_event, &r);
    if (qmp_conn_attach_fd(r.c, sv[0], NULL)) {
        qmp_conn_start(r.c, 1000, on_ready, &r);
        qmp_call(r.c, "query-version", NULL, 0, 1000, on_reply, &r);
        qmp_call(r.c, "query-cpus-fast", NULL, 0, 1000, on_reply, &r);
        for (int i = 0;
             i < 1000 && (qmp_conn_alive(r.c) || !r.ready_done || qmp_conn_pending(r.c) > 0); i++) {
            if (ring_dispatch(the_ring, 100) < 0) {
                break;
            }
        }
    }
    qmp_conn_free(r.c);
    ring_dispatch(the_ring, 0); /* what was in flight comes back to nobody */
    close(sv[1]);
    return 0;
}
