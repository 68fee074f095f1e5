/*
 * The relay's processes for bench/relay.py, white-box on the transport (static library).  Each
 * mode prints "ready" on stderr once it listens, and one JSON object on stdout (per channel
 * counters, the process's CPU seconds, the ring backend) once N channels have ended.
 *
 *   vmig-relay-hop LISTEN_PORT TARGET_PORT N [LIMIT_MIB_S]
 *       a bare tp_pump per connection between TCP sockets on 127.0.0.1;
 *   vmig-relay-hop src UNIX_PATH AGENT_HOST AGENT_PORT KEYFILE N
 *       the source relay (tp_source_relay) on UNIX_PATH, to the agent, with a fixed token;
 *   vmig-relay-hop dst [ADDR:]PORT UNIX_TARGET KEYFILE N
 *       the agent's side: TCP listener, tp_handshake_agent admitting that token, and one
 *       tp_dest_relay to UNIX_TARGET;
 *   vmig-relay-hop delay [ADDR:]PORT TARGET_HOST:TARGET_PORT N DELAY_MS [WINDOW_MIB]
 *       not a relay but the bench's stand-in for a network delay (the kernel has no netem): a
 *       TCP forwarder that holds every chunk it receives DELAY_MS before sending it on, both
 *       ways, with at most WINDOW_MIB (default 16) held per direction and connection.
 * ADDR defaults to 127.0.0.1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/error.h"
#include "transport/control.h"
#include "transport/pump.h"
#include "transport/relay.h"

#define TOKEN_BYTE 0x42 /* the bench migration's token: TP_TOKEN_LEN of these */
#define TIMEOUT_MS 10000
#define STATS_MAX (TP_CHANNELS_MAX + 2)

/* ---- shared ---------------------------------------------------------------------------------- */

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* "HOST:PORT", "PORT" (127.0.0.1), or @host and @port apart when @port is not NULL. */
static bool addr_parse(const char *host, const char *port, struct sockaddr_storage *ret,
                       socklen_t *ret_len)
{
    g_autofree char *h = NULL;
    if (!port) {
        const char *colon = strrchr(host, ':');
        h = colon ? g_strndup(host, (gsize)(colon - host)) : g_strdup("127.0.0.1");
        port = colon ? colon + 1 : host;
        host = h;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "vmig-relay-hop: %s:%s: %s\n", host, port, gai_strerror(rc));
        return false;
    }
    memcpy(ret, ai->ai_addr, ai->ai_addrlen);
    *ret_len = ai->ai_addrlen;
    freeaddrinfo(ai);
    return true;
}

static int tcp_listen(const char *spec)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (!addr_parse(spec, NULL, &ss, &len)) {
        return -1;
    }
    int l = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (l < 0 || bind(l, (struct sockaddr *)&ss, len) < 0 || listen(l, 64) < 0) {
        perror("vmig-relay-hop: listen");
        if (l >= 0) {
            close(l);
        }
        return -1;
    }
    return l;
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Appends @err's message to array @errors (a fail callback's opaque). */
static void on_fail(void *opaque, const vmig_error *err)
{
    json_object_array_add(opaque, json_object_new_string(vmig_error_message(err)));
}

static size_t channels_ended(const tp_channel_stats *st, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += st[i].end_us != 0;
    }
    return k;
}

/* Prints the JSON report of a relay end and frees @errors. */
static void report_print(const char *mode, ring *r, const tp_channel_stats *st, size_t n,
                         json_object *errors)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "mode", json_object_new_string(mode));
    json_object_object_add(o, "cpu_s", json_object_new_double(cpu_seconds()));
    json_object_object_add(o, "backend",
                           json_object_new_string(ring_backend_name(ring_get_backend(r))));
    json_object *chans = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "kind", json_object_new_string(tp_kind_name(st[i].kind)));
        json_object_object_add(c, "index", json_object_new_int((int)st[i].index));
        json_object_object_add(c, "order", json_object_new_int((int)st[i].order));
        json_object_object_add(c, "bytes_out", json_object_new_int64((int64_t)st[i].bytes_out));
        json_object_object_add(c, "bytes_in", json_object_new_int64((int64_t)st[i].bytes_in));
        json_object_object_add(c, "recv_wait_ms",
                               json_object_new_int64((int64_t)st[i].recv_wait_us / 1000));
        json_object_object_add(c, "send_wait_ms",
                               json_object_new_int64((int64_t)st[i].send_wait_us / 1000));
        json_object_object_add(c, "ms",
                               json_object_new_int64((st[i].end_us - st[i].start_us) / 1000));
        json_object_object_add(c, "failed", json_object_new_boolean(st[i].failed));
        json_object_array_add(chans, c);
    }
    json_object_object_add(o, "channels", chans);
    json_object_object_add(o, "errors", errors);
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static bool key_load(const char *path, tp_key *ret)
{
    g_autoptr(vmig_error) err = NULL;
    if (!tp_key_load(path, ret, &err)) {
        fprintf(stderr, "vmig-relay-hop: %s\n", vmig_error_message(err));
        return false;
    }
    return true;
}

static ring *ring_open(void)
{
    g_autoptr(vmig_error) err = NULL;
    ring *r = ring_new(RING_BACKEND_AUTO, &err);
    if (!r) {
        fprintf(stderr, "vmig-relay-hop: %s\n", vmig_error_message(err));
    }
    return r;
}

/* ---- src: the source relay ------------------------------------------------------------------- */

static int run_src(char **argv)
{
    size_t want = (size_t)atoi(argv[6]);
    tp_key key;
    struct sockaddr_storage agent;
    socklen_t agent_len;
    if (!key_load(argv[5], &key) || !addr_parse(argv[3], argv[4], &agent, &agent_len)) {
        return 1;
    }
    uint8_t token[TP_TOKEN_LEN];
    memset(token, TOKEN_BYTE, sizeof(token));
    tp_source_cfg cfg = {.listen_path = argv[2],
                         .agent = (struct sockaddr *)&agent,
                         .agent_len = agent_len,
                         .key = &key,
                         .token = token,
                         .timeout_ms = TIMEOUT_MS};
    ring *r = ring_open();
    json_object *errors = json_object_new_array();
    g_autoptr(vmig_error) err = NULL;
    tp_source_relay *s = r ? tp_source_relay_new(r, &cfg, on_fail, errors, &err) : NULL;
    if (!s) {
        fprintf(stderr, "vmig-relay-hop: %s\n", err ? vmig_error_message(err) : "no ring");
        json_object_put(errors);
        ring_free(r);
        return 1;
    }
    fprintf(stderr, "ready\n");
    tp_channel_stats st[STATS_MAX];
    size_t n = 0;
    while (n = tp_source_relay_stats(s, st, STATS_MAX), channels_ended(st, n) < want) {
        ring_dispatch(r, 100);
    }
    report_print("src", r, st, n, errors);
    tp_source_relay_free(s);
    ring_free(r);
    return 0;
}

/* ---- dst: the agent's side ------------------------------------------------------------------- */

typedef struct agent {
    ring *r;
    tp_key key;
    tp_dest_relay *d;
    int lfd;
    size_t accepted, refused, want;
    json_object *errors;
} agent;

typedef struct pending {
    agent *a;
    int fd;
    tp_handshake *hs;
} pending;

static bool admit(void *opaque, const tp_hello *h, char **ret_reason)
{
    (void)opaque;
    uint8_t token[TP_TOKEN_LEN];
    memset(token, TOKEN_BYTE, sizeof(token));
    if (!tp_ct_equal(h->token, token, TP_TOKEN_LEN)) {
        *ret_reason = g_strdup("no migration has this token");
        return false;
    }
    return true;
}

static void on_handshaken(void *opaque, const tp_hello *h, const vmig_error *err)
{
    pending *p = opaque;
    agent *a = p->a;
    if (err) {
        on_fail(a->errors, err);
        close(p->fd);
        a->refused++;
    } else {
        g_autoptr(vmig_error) e = NULL;
        if (!tp_dest_relay_add(a->d, p->fd, (tp_kind)h->kind, h->index, &e)) {
            on_fail(a->errors, e);
            a->refused++;
        }
    }
    tp_handshake_free(p->hs);
    g_free(p);
}

static void on_agent_accept(void *opaque, int res)
{
    agent *a = opaque;
    if (res < 0) {
        fprintf(stderr, "vmig-relay-hop: accept: %s\n", g_strerror(-res));
        a->refused = a->want; /* give up */
        return;
    }
    nodelay(res);
    pending *p = g_new0(pending, 1);
    p->a = a;
    p->fd = res;
    p->hs = tp_handshake_agent(a->r, res, &a->key, TIMEOUT_MS, admit, NULL, on_handshaken, p);
    if (++a->accepted < a->want) {
        ring_accept(a->r, a->lfd, on_agent_accept, a);
    }
}

static int run_dst(char **argv)
{
    agent a = {.want = (size_t)atoi(argv[5]), .lfd = -1};
    if (!key_load(argv[4], &a.key) || !(a.r = ring_open())) {
        return 1;
    }
    a.lfd = tcp_listen(argv[2]);
    if (a.lfd < 0) {
        ring_free(a.r);
        return 1;
    }
    a.errors = json_object_new_array();
    a.d = tp_dest_relay_new(a.r, argv[3], NULL, TIMEOUT_MS, on_fail, a.errors);
    ring_accept(a.r, a.lfd, on_agent_accept, &a);
    fprintf(stderr, "ready\n");
    tp_channel_stats st[STATS_MAX];
    size_t n = 0;
    while (n = tp_dest_relay_stats(a.d, st, STATS_MAX),
           channels_ended(st, n) + a.refused < a.want) {
        ring_dispatch(a.r, 100);
    }
    report_print("dst", a.r, st, n, a.errors);
    tp_dest_relay_free(a.d);
    close(a.lfd);
    ring_free(a.r);
    return 0;
}

/* ---- delay: a network delay stand-in --------------------------------------------------------- */

#define DELAY_CHUNK ((size_t)256 * 1024)

typedef struct dchunk {
    int64_t due_us;
    size_t len, off;
    bool eof; /* no data: pass end of file on */
    uint8_t data[];
} dchunk;

typedef struct dlink dlink;

/* One direction of a link: received chunks wait in @q until they are due, then are sent. */
typedef struct ddir {
    dlink *l;
    int from, to;
    GQueue q;    /* dchunk, oldest first */
    size_t held; /* bytes in @q */
    dchunk *rx;
    int64_t recv_op, send_op, timer_op;
    bool rx_eof, done;
    uint64_t bytes;
} ddir;

typedef struct delay_fwd {
    ring *r;
    int64_t delay_us;
    size_t window;
    struct sockaddr_storage target;
    socklen_t target_len;
    int lfd;
    size_t want, accepted, ended;
} delay_fwd;

struct dlink {
    delay_fwd *f;
    int a, b;
    ddir d[2]; /* a to b, b to a */
    int64_t connect_op;
    bool failed, ended;
    char err[160];
};

static void ddir_recv(ddir *d);
static void ddir_send(ddir *d);

static bool ddir_busy(const ddir *d)
{
    return d->recv_op || d->send_op || d->timer_op;
}

/* Ends @l once both directions passed end of file on, or it failed and nothing is in flight. */
static void dlink_check(dlink *l)
{
    bool idle = !ddir_busy(&l->d[0]) && !ddir_busy(&l->d[1]) && !l->connect_op;
    if (l->ended || !idle || !(l->failed || (l->d[0].done && l->d[1].done))) {
        return;
    }
    l->ended = true;
    l->f->ended++;
    for (int i = 0; i < 2; i++) {
        dchunk *c;
        while ((c = g_queue_pop_head(&l->d[i].q))) {
            g_free(c);
        }
    }
    close(l->a);
    close(l->b);
}

/* Fails @l: both sockets shut down, so what is in flight completes and nothing more starts. */
static void dlink_fail(dlink *l, const char *what, int errnum)
{
    if (!l->failed) {
        l->failed = true;
        g_snprintf(l->err, sizeof(l->err), "%s: %s", what, g_strerror(errnum));
        shutdown(l->a, SHUT_RDWR);
        shutdown(l->b, SHUT_RDWR);
    }
    dlink_check(l);
}

static void on_drecv(void *opaque, int res)
{
    ddir *d = opaque;
    dchunk *c = d->rx;
    d->recv_op = 0;
    d->rx = NULL;
    if (res < 0 || d->l->failed) {
        g_free(c);
        dlink_fail(d->l, "recv", res < 0 ? -res : ECANCELED);
        return;
    }
    c->len = (size_t)res;
    if (c->len < DELAY_CHUNK / 2) { /* memory follows the window, not the chunk count */
        c = g_realloc(c, sizeof(dchunk) + c->len);
    }
    c->eof = res == 0;
    c->due_us = g_get_monotonic_time() + d->l->f->delay_us;
    d->rx_eof = c->eof;
    d->held += c->len;
    d->bytes += c->len;
    g_queue_push_tail(&d->q, c);
    ddir_send(d);
    ddir_recv(d);
}

/* Receives the next chunk unless the window is full (a send will call again). */
static void ddir_recv(ddir *d)
{
    if (d->rx_eof || d->recv_op || d->held >= d->l->f->window || d->l->failed) {
        return;
    }
    d->rx = g_malloc(sizeof(dchunk) + DELAY_CHUNK);
    d->rx->off = 0;
    int64_t id = ring_recv(d->l->f->r, d->from, d->rx->data, DELAY_CHUNK, on_drecv, d);
    if (id < 0) {
        g_clear_pointer(&d->rx, g_free);
        dlink_fail(d->l, "recv", (int)-id);
        return;
    }
    d->recv_op = id;
}

static void on_dtimer(void *opaque, int res)
{
    ddir *d = opaque;
    (void)res;
    d->timer_op = 0;
    if (d->l->failed) {
        dlink_check(d->l);
        return;
    }
    ddir_send(d);
}

static void on_dsend(void *opaque, int res)
{
    ddir *d = opaque;
    d->send_op = 0;
    if (res < 0 || d->l->failed) {
        dlink_fail(d->l, "send", res < 0 ? -res : ECANCELED);
        return;
    }
    dchunk *c = g_queue_peek_head(&d->q);
    c->off += (size_t)res;
    if (c->off == c->len) {
        g_queue_pop_head(&d->q);
        d->held -= c->len;
        g_free(c);
        ddir_recv(d);
    }
    ddir_send(d);
}

/* Sends the oldest chunk once it is due; a timer wakes it otherwise. */
static void ddir_send(ddir *d)
{
    dchunk *c = g_queue_peek_head(&d->q);
    if (!c || d->send_op || d->timer_op || d->l->failed) {
        return;
    }
    int64_t wait = c->due_us - g_get_monotonic_time();
    int64_t id;
    if (wait > 0) {
        id = ring_timer(d->l->f->r, (int)((wait + 999) / 1000), on_dtimer, d);
        if (id > 0) {
            d->timer_op = id;
        }
    } else if (c->eof) {
        g_free(g_queue_pop_head(&d->q));
        shutdown(d->to, SHUT_WR);
        d->done = true;
        dlink_check(d->l);
        return;
    } else {
        id = ring_send(d->l->f->r, d->to, c->data + c->off, c->len - c->off, on_dsend, d);
        if (id > 0) {
            d->send_op = id;
        }
    }
    if (id < 0) {
        dlink_fail(d->l, "submit", (int)-id);
    }
}

static void on_dconnect(void *opaque, int res)
{
    dlink *l = opaque;
    l->connect_op = 0;
    if (res < 0) {
        dlink_fail(l, "connect", -res);
        return;
    }
    nodelay(l->b);
    for (int i = 0; i < 2; i++) {
        ddir_recv(&l->d[i]);
    }
}

static void on_delay_accept(void *opaque, int res)
{
    dlink *links = opaque;
    delay_fwd *f = links[0].f;
    if (res < 0) {
        fprintf(stderr, "vmig-relay-hop: accept: %s\n", g_strerror(-res));
        f->ended = f->want; /* give up */
        return;
    }
    dlink *l = &links[f->accepted++];
    l->a = res;
    l->b = socket(f->target.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    nodelay(l->a);
    for (int i = 0; i < 2; i++) {
        l->d[i] = (ddir){.l = l, .from = i ? l->b : l->a, .to = i ? l->a : l->b};
        g_queue_init(&l->d[i].q);
    }
    int64_t id = l->b < 0 ? -errno
                          : ring_connect(f->r, l->b, (struct sockaddr *)&f->target, f->target_len,
                                         on_dconnect, l);
    if (id < 0) {
        dlink_fail(l, "connect", (int)-id);
    } else {
        l->connect_op = id;
    }
    if (f->accepted < f->want) {
        ring_accept(f->r, f->lfd, on_delay_accept, links);
    }
}

static void delay_print(const delay_fwd *f, const dlink *links)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "mode", json_object_new_string("delay"));
    json_object_object_add(o, "cpu_s", json_object_new_double(cpu_seconds()));
    json_object_object_add(o, "delay_ms", json_object_new_int64(f->delay_us / 1000));
    json_object_object_add(o, "window_mib", json_object_new_int64((int64_t)(f->window >> 20)));
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < f->accepted; i++) {
        json_object *c = json_object_new_object();
        json_object *b = json_object_new_array();
        json_object_array_add(b, json_object_new_int64((int64_t)links[i].d[0].bytes));
        json_object_array_add(b, json_object_new_int64((int64_t)links[i].d[1].bytes));
        json_object_object_add(c, "bytes", b);
        json_object_object_add(c, "error", json_object_new_string(links[i].err));
        json_object_array_add(arr, c);
    }
    json_object_object_add(o, "links", arr);
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static int run_delay(int argc, char **argv)
{
    delay_fwd f = {.want = (size_t)atoi(argv[4]),
                   .delay_us = (int64_t)atoi(argv[5]) * 1000,
                   .window = (size_t)(argc > 6 ? atoi(argv[6]) : 16) << 20};
    if (!f.want || !addr_parse(argv[3], NULL, &f.target, &f.target_len) || !(f.r = ring_open())) {
        return 1;
    }
    f.lfd = tcp_listen(argv[2]);
    if (f.lfd < 0) {
        ring_free(f.r);
        return 1;
    }
    dlink *links = g_new0(dlink, f.want);
    links[0].f = &f;
    for (size_t i = 1; i < f.want; i++) {
        links[i].f = &f;
    }
    ring_accept(f.r, f.lfd, on_delay_accept, links);
    fprintf(stderr, "ready\n");
    while (f.ended < f.want) {
        ring_dispatch(f.r, 100);
    }
    delay_print(&f, links);
    close(f.lfd);
    ring_free(f.r);
    g_free(links);
    return 0;
}

/* ---- the bare pump (the first mode) ---------------------------------------------------------- */

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

static int run_pump(int argc, char **argv)
{
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
        nodelay(c[i].b);
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
    printf("{\"cpu_s\": %.3f, \"channels\": [", cpu_seconds());
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

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "src") && argc == 7) {
        return run_src(argv);
    }
    if (!strcmp(mode, "dst") && argc == 6) {
        return run_dst(argv);
    }
    if (!strcmp(mode, "delay") && (argc == 6 || argc == 7)) {
        return run_delay(argc, argv);
    }
    if (argc >= 4 && argc <= 5 && g_ascii_isdigit(mode[0])) {
        return run_pump(argc, argv);
    }
    fprintf(stderr, "usage: vmig-relay-hop LISTEN_PORT TARGET_PORT N [LIMIT_MIB_S]\n"
                    "       vmig-relay-hop src UNIX_PATH AGENT_HOST AGENT_PORT KEYFILE N\n"
                    "       vmig-relay-hop dst [ADDR:]PORT UNIX_TARGET KEYFILE N\n"
                    "       vmig-relay-hop delay [ADDR:]PORT TARGET_HOST:PORT N DELAY_MS "
                    "[WINDOW_MIB]\n");
    return 2;
}
