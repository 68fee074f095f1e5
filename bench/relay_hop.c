/*
 * One hop of a relay chain for bench/relay.py, on the transport's pump: accepts N
 * connections on 127.0.0.1:LISTEN, connects each to 127.0.0.1:TARGET, pumps each until both
 * ends close, then prints one JSON object: per channel the bytes each way and the time spent
 * waiting on either side, and the process's CPU seconds.
 *
 *   vmig-relay-hop LISTEN_PORT TARGET_PORT N [LIMIT_MIB_S]
 * Prints "ready" on stderr once it listens.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "transport/pump.h"

typedef struct chan {
    int a, b;
    tp_pump *p;
    bool done;
    char err[256];
} chan;

static void on_done(void *opaque, const vmig_error *err)
{
    chan *c = opaque;
    c->done = true;
    if (err) {
        g_strlcpy(c->err, vmig_error_message(err), sizeof(c->err));
    }
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: vmig-relay-hop LISTEN_PORT TARGET_PORT N [LIMIT_MIB_S]\n");
        return 2;
    }
    int lport = atoi(argv[1]), tport = atoi(argv[2]), n = atoi(argv[3]);
    uint64_t limit = argc > 4 ? (uint64_t)atoll(argv[4]) << 20 : 0;
    ring *r = ring_new(RING_BACKEND_AUTO, NULL);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in la = loopback(lport);
    if (!r || bind(l, (struct sockaddr *)&la, sizeof(la)) < 0 || listen(l, 64) < 0) {
        perror("vmig-relay-hop: listen");
        close(l);
        return 1;
    }
    fprintf(stderr, "ready\n");
    tp_limiter *lim = limit ? tp_limiter_new(limit) : NULL;
    chan *c = g_new0(chan, (gsize)n);
    for (int i = 0; i < n; i++) {
        c[i].a = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        c[i].b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in ta = loopback(tport);
        if (c[i].a < 0 || connect(c[i].b, (struct sockaddr *)&ta, sizeof(ta)) < 0) {
            perror("vmig-relay-hop: accept/connect");
            close(l);
            return 1;
        }
        setsockopt(c[i].b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(c[i].b, F_SETFL, fcntl(c[i].b, F_GETFL) | O_NONBLOCK);
        c[i].p = tp_pump_new(r, c[i].a, c[i].b, lim, on_done, &c[i]);
    }
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            left += !c[i].done;
        }
        if (!left) {
            break;
        }
        ring_dispatch(r, 100);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"cpu_s\": %.3f, \"channels\": [",
           (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
    for (int i = 0; i < n; i++) {
        tp_pump_stats st;
        tp_pump_get_stats(c[i].p, &st);
        printf("%s{\"bytes\": [%lu, %lu], \"recv_wait_ms\": [%lu, %lu], "
               "\"send_wait_ms\": [%lu, %lu], \"error\": \"%s\"}",
               i ? ", " : "", (unsigned long)st.bytes[0], (unsigned long)st.bytes[1],
               (unsigned long)(st.recv_wait_us[0] / 1000),
               (unsigned long)(st.recv_wait_us[1] / 1000),
               (unsigned long)(st.send_wait_us[0] / 1000),
               (unsigned long)(st.send_wait_us[1] / 1000), c[i].err);
        tp_pump_free(c[i].p);
        close(c[i].a);
        close(c[i].b);
    }
    printf("], \"backend\": \"%s\"}\n", ring_backend_name(ring_get_backend(r)));
    tp_limiter_free(lim);
    close(l);
    g_free(c);
    ring_free(r);
    return 0;
}
