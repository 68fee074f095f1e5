/*
 * The QMP connection on the completion ring.  One receive is always in flight; sends go one
 * buffer at a time (lines queued meanwhile are sent next); one timer stands for the nearest
 * deadline of the handshake and of every call.  User callbacks may free the connection: the
 * memory goes once the outermost callback has returned (busy), and buffers the kernel may
 * still touch are handed to the ring with ring_detach().
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "qmp.h"

#define READ_CHUNK 65536
#define VERSION_PART_MAX 9999
#define TS_SECONDS_MAX (INT64_MAX / 1000000 - 1)

typedef struct qmp_pending {
    int64_t id;
    char *cmd;
    int64_t deadline;
    int timeout_ms;
    qmp_reply_fn cb;
    void *opaque;
    vmig_error *fail; /* refused before it was sent: delivered by the timer */
} qmp_pending;

struct qmp_conn {
    ring *ring;
    char *label; /* what the user knows this monitor as: a socket path, "source", ... */
    int fd;
    bool alive;
    char *dead_reason;
    qmp_parser *parser;
    GHashTable *pending; /* id -> qmp_pending * (owned) */
    int64_t next_id;
    /* greeting and capabilities */
    bool greeted, ready, starting;
    int64_t start_deadline;
    int start_timeout_ms;
    qmp_ready_fn ready_cb;
    void *ready_opaque;
    int version;
    bool oob_offered, oob_enabled;
    /* output: lines held until ready, lines queued behind the send in flight */
    GString *held;
    GString *queued;
    char *sending;
    size_t sending_len, sending_off;
    int64_t send_op;
    /* input */
    char *rbuf;
    int64_t recv_op;
    /* the nearest deadline */
    int64_t timer_op;
    int64_t timer_deadline;
    qmp_event_fn event_cb;
    void *event_opaque;
    qmp_closed_fn closed_cb;
    void *closed_opaque;
    int busy;   /* > 0 while our code runs below a ring callback */
    bool freed; /* qmp_conn_free() was called; memory goes when busy drops to 0 */
};

int64_t vmig_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int vmig_ms_left(int64_t deadline)
{
    int64_t left = deadline - vmig_now_ms();
    if (left <= 0) {
        return 0;
    }
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

static void pending_free(void *p)
{
    qmp_pending *q = p;
    g_free(q->cmd);
    vmig_error_free(q->fail);
    g_free(q);
}

qmp_conn *qmp_conn_new(ring *r, const char *label)
{
    qmp_conn *c = g_new0(qmp_conn, 1);
    c->ring = r;
    c->label = g_strdup(label ? label : "QMP");
    c->fd = -1;
    c->parser = qmp_parser_new(QMP_MSG_MAX, QMP_DEPTH_MAX);
    c->pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, pending_free);
    c->next_id = 1;
    c->held = g_string_new(NULL);
    c->queued = g_string_new(NULL);
    c->rbuf = g_malloc(READ_CHUNK);
    return c;
}

static void release(qmp_conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
    }
    g_hash_table_destroy(c->pending);
    qmp_parser_free(c->parser);
    g_string_free(c->held, TRUE);
    g_string_free(c->queued, TRUE);
    g_free(c->sending);
    g_free(c->rbuf);
    g_free(c->dead_reason);
    g_free(c->label);
    g_free(c);
}

void qmp_conn_free(qmp_conn *c)
{
    if (!c || c->freed) {
        return;
    }
    c->freed = true;
    c->alive = false;
    /* The kernel may still write rbuf or read sending: the ring frees them when it let go. */
    if (c->recv_op) {
        ring_detach(c->ring, c->recv_op, g_free, g_steal_pointer(&c->rbuf));
        c->recv_op = 0;
    }
    if (c->send_op) {
        ring_detach(c->ring, c->send_op, g_free, g_steal_pointer(&c->sending));
        c->send_op = 0;
    }
    if (c->timer_op) {
        ring_detach(c->ring, c->timer_op, NULL, NULL);
        c->timer_op = 0;
    }
    if (c->busy == 0) {
        release(c);
    }
}

/* Leaves a ring callback; true when the connection was freed meanwhile (do not touch it). */
static bool leave(qmp_conn *c)
{
    if (--c->busy == 0 && c->freed) {
        release(c);
        return true;
    }
    return c->freed;
}

const char *qmp_conn_label(const qmp_conn *c)
{
    return c->label;
}

bool qmp_conn_alive(const qmp_conn *c)
{
    return c->alive;
}

bool qmp_conn_ready(const qmp_conn *c)
{
    return c->ready && c->alive;
}

bool qmp_conn_has_oob(const qmp_conn *c)
{
    return c->oob_enabled;
}

int qmp_conn_version(const qmp_conn *c)
{
    return c->version;
}

size_t qmp_conn_pending(const qmp_conn *c)
{
    return g_hash_table_size(c->pending);
}

void qmp_conn_set_event_cb(qmp_conn *c, qmp_event_fn fn, void *opaque)
{
    c->event_cb = fn;
    c->event_opaque = opaque;
}

void qmp_conn_set_closed_cb(qmp_conn *c, qmp_closed_fn fn, void *opaque)
{
    c->closed_cb = fn;
    c->closed_opaque = opaque;
}

/* ---- deadlines ----------------------------------------------------------------------------- */

static void timer_done(void *opaque, int res);

/* Keeps one timer armed for the nearest deadline. */
static void arm_timer(qmp_conn *c)
{
    if (c->freed) {
        return;
    }
    int64_t next = c->starting ? c->start_deadline : INT64_MAX;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        const qmp_pending *q = v;
        next = MIN(next, q->deadline);
    }
    if (next == INT64_MAX) {
        return; /* an armed timer that finds nothing to do is harmless */
    }
    if (c->timer_op && c->timer_deadline <= next) {
        return;
    }
    if (c->timer_op) {
        ring_detach(c->ring, c->timer_op, NULL, NULL);
        c->timer_op = 0;
    }
    int64_t op = ring_timer(c->ring, vmig_ms_left(next), timer_done, c);
    if (op > 0) {
        c->timer_op = op;
        c->timer_deadline = next;
    }
}

/* Removes call @id and runs its callback with @ret or @err. */
static void complete(qmp_conn *c, int64_t id, json_object *ret, const vmig_error *err)
{
    qmp_pending *q = NULL;
    if (!g_hash_table_steal_extended(c->pending, &id, NULL, (gpointer *)&q)) {
        return;
    }
    if (q->cb) {
        q->cb(q->opaque, ret, err);
    }
    pending_free(q);
}

static void fail_start(qmp_conn *c, const vmig_error *err)
{
    if (!c->starting) {
        return;
    }
    c->starting = false;
    if (c->ready_cb) {
        c->ready_cb(c->ready_opaque, err);
    }
}

static void timer_done(void *opaque, int res)
{
    qmp_conn *c = opaque;
    c->timer_op = 0;
    if (res == -ECANCELED) {
        return;
    }
    c->busy++;
    int64_t now = vmig_now_ms();
    g_autoptr(GArray) due = g_array_new(FALSE, FALSE, sizeof(int64_t));
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        const qmp_pending *q = v;
        if (q->deadline <= now) {
            g_array_append_val(due, q->id);
        }
    }
    for (guint i = 0; i < due->len && !c->freed; i++) {
        int64_t id = g_array_index(due, int64_t, i);
        qmp_pending *q = g_hash_table_lookup(c->pending, &id);
        if (!q) {
            continue;
        }
        g_autoptr(vmig_error) err = NULL;
        if (q->fail) {
            err = g_steal_pointer(&q->fail);
        } else {
            vmig_set_error(&err, VMIG_E_TIMEOUT, "%s: %s: no reply within %d ms", c->label, q->cmd,
                           q->timeout_ms);
        }
        complete(c, id, NULL, err);
    }
    if (!c->freed && c->starting && c->start_deadline <= now) {
        g_autoptr(vmig_error) err = NULL;
        if (c->greeted) { /* two stalls that look alike from outside: say which */
            vmig_set_error(&err, VMIG_E_TIMEOUT,
                           "%s: QEMU greeted, then did not answer qmp_capabilities within %d ms",
                           c->label, c->start_timeout_ms);
        } else {
            vmig_set_error(&err, VMIG_E_TIMEOUT,
                           "%s: no QMP greeting within %d ms: is this a QEMU monitor?", c->label,
                           c->start_timeout_ms);
        }
        fail_start(c, err);
    }
    if (!leave(c)) {
        arm_timer(c);
    }
}

/* ---- the connection breaks ----------------------------------------------------------------- */

/* Everything in flight fails with @why; the first reason is kept. */
static void broken(qmp_conn *c, vmig_errc code, const char *why)
{
    if (!c->alive) {
        return;
    }
    c->alive = false;
    g_free(c->dead_reason);
    c->dead_reason = g_strdup(why);
    if (c->recv_op) {
        ring_cancel(c->ring, c->recv_op); /* its callback sees !alive and stops */
    }
    g_autoptr(vmig_error) err = NULL;
    vmig_set_error(&err, code, "%s: %s", c->label, why);
    c->busy++;
    g_autoptr(GArray) ids = g_array_new(FALSE, FALSE, sizeof(int64_t));
    GHashTableIter it;
    gpointer k;
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        g_array_append_val(ids, *(int64_t *)k);
    }
    for (guint i = 0; i < ids->len && !c->freed; i++) {
        qmp_pending *q = g_hash_table_lookup(c->pending, &g_array_index(ids, int64_t, i));
        if (!q) {
            continue;
        }
        g_autoptr(vmig_error) qerr = NULL;
        vmig_set_error(&qerr, code, "%s: %s: %s before replying", c->label, q->cmd, why);
        complete(c, q->id, NULL, qerr);
    }
    if (!c->freed && c->starting) {
        g_autoptr(vmig_error) serr = NULL;
        vmig_set_error(&serr, VMIG_E_PROTO, "%s: not a QMP server: %s before a greeting", c->label,
                       why);
        fail_start(c, c->greeted ? err : serr);
    } else if (!c->freed && c->ready && c->closed_cb) {
        c->closed_cb(c->closed_opaque, err);
    }
    leave(c);
}

/* ---- output ---------------------------------------------------------------------------------- */

static void send_done(void *opaque, int res);

static void flush_out(qmp_conn *c)
{
    if (c->send_op || !c->alive || c->freed) {
        return;
    }
    if (!c->sending) {
        if (c->queued->len == 0) {
            return;
        }
        c->sending_len = c->queued->len;
        c->sending_off = 0;
        c->sending = g_string_free(c->queued, FALSE);
        c->queued = g_string_new(NULL);
    }
    int64_t op = ring_send(c->ring, c->fd, c->sending + c->sending_off,
                           c->sending_len - c->sending_off, send_done, c);
    if (op < 0) {
        broken(c, VMIG_E_IO, g_strerror((int)-op));
        return;
    }
    c->send_op = op;
}

static void send_done(void *opaque, int res)
{
    qmp_conn *c = opaque;
    c->send_op = 0;
    if (!c->alive) {
        return;
    }
    if (res == -EAGAIN || res == -EINTR) {
        flush_out(c);
        return;
    }
    if (res <= 0) {
        broken(c, VMIG_E_IO,
               res == -EPIPE || res == 0 ? "QEMU closed the QMP connection" : g_strerror(-res));
        return;
    }
    c->sending_off += (size_t)res;
    if (c->sending_off >= c->sending_len) {
        g_clear_pointer(&c->sending, g_free);
    }
    flush_out(c);
}

/* Builds the command line; returns its id. */
static int64_t queue_line(qmp_conn *c, GString *out, const char *cmd, json_object *args,
                          unsigned flags)
{
    int64_t id = c->next_id++;
    g_autoptr(json_object) msg = json_object_new_object();
    json_object_object_add(msg, (flags & QMP_CALL_OOB) ? "exec-oob" : "execute",
                           json_object_new_string(cmd));
    if (args) {
        json_object_object_add(msg, "arguments", args);
    }
    json_object_object_add(msg, "id", json_object_new_int64(id));
    g_string_append(out, json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN));
    g_string_append_c(out, '\n');
    return id;
}

static qmp_pending *add_pending(qmp_conn *c, int64_t id, const char *cmd, int timeout_ms,
                                qmp_reply_fn cb, void *opaque)
{
    qmp_pending *q = g_new0(qmp_pending, 1);
    q->id = id;
    q->cmd = g_strdup(cmd);
    q->timeout_ms = timeout_ms;
    q->deadline = vmig_now_ms() + MAX(timeout_ms, 0);
    q->cb = cb;
    q->opaque = opaque;
    g_hash_table_insert(c->pending, &q->id, q);
    return q;
}

void qmp_call(qmp_conn *c, const char *cmd, json_object *args, unsigned flags, int timeout_ms,
              qmp_reply_fn cb, void *opaque)
{
    g_autoptr(json_object) owned_args = args;
    vmig_error *fail = NULL;
    if (c->freed) {
        return;
    }
    if (!c->alive) {
        vmig_set_error(&fail, VMIG_E_IO, "%s: %s: %s", c->label, cmd,
                       c->dead_reason ? c->dead_reason : "not connected");
    } else if ((flags & QMP_CALL_OOB) && c->ready && !c->oob_enabled) {
        vmig_set_error(&fail, VMIG_E_STATE, "%s: %s: QEMU did not offer out-of-band execution",
                       c->label, cmd);
    }
    if (fail) {
        qmp_pending *q = add_pending(c, c->next_id++, cmd, 0, cb, opaque);
        q->fail = fail;
        arm_timer(c);
        return;
    }
    bool now = c->ready || strcmp(cmd, "qmp_capabilities") == 0;
    int64_t id = queue_line(c, now ? c->queued : c->held, cmd, g_steal_pointer(&owned_args), flags);
    add_pending(c, id, cmd, timeout_ms, cb, opaque);
    arm_timer(c);
    flush_out(c);
}

/* ---- input ------------------------------------------------------------------------------------
 */

/* A non-negative integer no larger than @max at @key of @obj, else -1. */
static int64_t get_bounded(json_object *obj, const char *key, int64_t max)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int)) {
        return -1;
    }
    int64_t n = json_object_get_int64(v);
    return n >= 0 && n <= max ? n : -1;
}

static void caps_done(void *opaque, json_object *ret, const vmig_error *err)
{
    qmp_conn *c = opaque;
    (void)ret;
    if (err && vmig_error_code(err) == VMIG_E_TIMEOUT) { /* as the start deadline says it */
        g_autoptr(vmig_error) terr = NULL;
        vmig_set_error(&terr, VMIG_E_TIMEOUT,
                       "%s: QEMU greeted, then did not answer qmp_capabilities within %d ms",
                       c->label, c->start_timeout_ms);
        fail_start(c, terr);
        return;
    }
    if (err) {
        fail_start(c, err);
        return;
    }
    c->oob_enabled = c->oob_offered;
    c->ready = true;
    c->starting = false;
    g_string_append_len(c->queued, c->held->str, (gssize)c->held->len);
    g_string_truncate(c->held, 0);
    flush_out(c);
    if (c->ready_cb) {
        c->ready_cb(c->ready_opaque, NULL);
    }
}

static bool handle_greeting(qmp_conn *c, json_object *msg)
{
    json_object *qmp = NULL, *ver = NULL, *qemu = NULL, *caps = NULL;
    if (!json_object_object_get_ex(msg, "QMP", &qmp) ||
        !json_object_is_type(qmp, json_type_object)) {
        g_autofree char *text = g_strndup(json_object_to_json_string(msg), 80);
        g_autofree char *why = g_strdup_printf("the first message was %s, not a QMP greeting",
                                               text);
        g_autoptr(vmig_error) err = NULL;
        vmig_set_error(&err, VMIG_E_PROTO, "%s: not a QMP server: %s", c->label, why);
        fail_start(c, err);
        broken(c, VMIG_E_PROTO, why);
        return false;
    }
    c->greeted = true;
    if (json_object_object_get_ex(qmp, "version", &ver) &&
        json_object_is_type(ver, json_type_object) &&
        json_object_object_get_ex(ver, "qemu", &qemu) &&
        json_object_is_type(qemu, json_type_object)) {
        int64_t maj = get_bounded(qemu, "major", VERSION_PART_MAX);
        int64_t min = get_bounded(qemu, "minor", VERSION_PART_MAX);
        int64_t mic = get_bounded(qemu, "micro", VERSION_PART_MAX);
        if (maj >= 0 && min >= 0 && mic >= 0) {
            c->version = (int)(maj * 10000 + min * 100 + mic);
        }
    }
    if (json_object_object_get_ex(qmp, "capabilities", &caps) &&
        json_object_is_type(caps, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(caps); i++) {
            json_object *cap = json_object_array_get_idx(caps, i);
            if (json_object_is_type(cap, json_type_string) &&
                strcmp(json_object_get_string(cap), "oob") == 0) {
                c->oob_offered = true;
            }
        }
    }
    json_object *args = NULL;
    if (c->oob_offered) {
        args = json_object_new_object();
        json_object *en = json_object_new_array();
        json_object_array_add(en, json_object_new_string("oob"));
        json_object_object_add(args, "enable", en);
    }
    qmp_call(c, "qmp_capabilities", args, 0, vmig_ms_left(c->start_deadline) + 1, caps_done, c);
    return true;
}

static void handle_event(qmp_conn *c, json_object *msg, json_object *ev)
{
    json_object *data = NULL, *ts = NULL;
    int64_t ts_us = 0;
    if (!json_object_is_type(ev, json_type_string)) {
        return; /* not an event we could name */
    }
    json_object_object_get_ex(msg, "data", &data);
    if (json_object_object_get_ex(msg, "timestamp", &ts) &&
        json_object_is_type(ts, json_type_object)) {
        int64_t s = get_bounded(ts, "seconds", TS_SECONDS_MAX);
        int64_t us = get_bounded(ts, "microseconds", 999999);
        ts_us = s >= 0 && us >= 0 ? s * 1000000 + us : 0;
    }
    if (c->event_cb) {
        c->event_cb(c->event_opaque, json_object_get_string(ev), data, ts_us);
    }
}

static void handle_reply(qmp_conn *c, json_object *msg)
{
    json_object *id = NULL, *err = NULL, *ret = NULL;
    if (!json_object_object_get_ex(msg, "id", &id) || !json_object_is_type(id, json_type_int)) {
        return; /* we always send an integer id; QEMU answers unparsable input without one */
    }
    int64_t key = json_object_get_int64(id);
    qmp_pending *q = g_hash_table_lookup(c->pending, &key);
    if (!q) {
        return; /* late reply to a call that timed out */
    }
    if (json_object_object_get_ex(msg, "error", &err)) {
        json_object *cls = NULL, *desc = NULL;
        json_object_object_get_ex(err, "class", &cls);
        json_object_object_get_ex(err, "desc", &desc);
        g_autoptr(vmig_error) e = NULL;
        vmig_set_error(&e, VMIG_E_QEMU, "%s: %s (%s)", q->cmd,
                       json_object_is_type(desc, json_type_string) ? json_object_get_string(desc)
                                                                   : "unknown error",
                       json_object_is_type(cls, json_type_string) ? json_object_get_string(cls)
                                                                  : "no class");
        complete(c, key, NULL, e);
        return;
    }
    json_object_object_get_ex(msg, "return", &ret);
    if (ret) {
        complete(c, key, ret, NULL);
        return;
    }
    g_autoptr(json_object) empty = json_object_new_object(); /* "return": null */
    complete(c, key, empty, NULL);
}

static void dispatch(void *opaque, json_object *msg)
{
    qmp_conn *c = opaque;
    json_object *ev = NULL;
    if (c->freed || !c->alive) {
        return; /* the rest of the batch is not for anyone */
    }
    if (!c->greeted && json_object_object_get_ex(msg, "event", &ev) &&
        !json_object_object_get_ex(msg, "QMP", NULL)) {
        /* QEMU can send an event (RESUME as the machine starts) to a client that connected
         * before the monitor's open handler ran, so before the greeting: not for us yet. */
        return;
    }
    if (!c->greeted) {
        handle_greeting(c, msg);
    } else if (json_object_object_get_ex(msg, "event", &ev)) {
        handle_event(c, msg, ev);
    } else if (json_object_object_get_ex(msg, "return", NULL) ||
               json_object_object_get_ex(msg, "error", NULL)) {
        handle_reply(c, msg);
    }
    /* anything else: a second greeting, or a future message type */
}

static void recv_done(void *opaque, int res);

static void start_recv(qmp_conn *c)
{
    int64_t op = ring_recv(c->ring, c->fd, c->rbuf, READ_CHUNK, recv_done, c);
    if (op < 0) {
        broken(c, VMIG_E_IO, g_strerror((int)-op));
        return;
    }
    c->recv_op = op;
}

static void recv_done(void *opaque, int res)
{
    qmp_conn *c = opaque;
    c->recv_op = 0;
    if (!c->alive) {
        return;
    }
    if (res == -EAGAIN || res == -EINTR) {
        start_recv(c);
        return;
    }
    if (res <= 0) {
        broken(c, VMIG_E_IO, res == 0 ? "QEMU closed the QMP connection" : g_strerror(-res));
        return;
    }
    c->busy++;
    g_autoptr(vmig_error) perr = NULL;
    int r = qmp_parser_feed(c->parser, c->rbuf, (size_t)res, dispatch, c, &perr);
    if (r < 0 && !c->freed) {
        broken(c, VMIG_E_PROTO, vmig_error_message(perr));
    }
    if (!leave(c) && c->alive) {
        start_recv(c);
    }
}

/* ---- connecting -------------------------------------------------------------------------------
 */

bool qmp_conn_attach_fd(qmp_conn *c, int fd, vmig_error **errp)
{
    if (c->fd >= 0) {
        close(fd);
        vmig_set_error(errp, VMIG_E_STATE, "%s: already connected", c->label);
        return false;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        vmig_set_error_errno(errp, errno, "%s: fcntl", c->label);
        close(fd);
        return false;
    }
    c->fd = fd;
    c->alive = true;
    start_recv(c);
    return c->alive;
}

bool qmp_conn_connect_unix(qmp_conn *c, const char *path, vmig_error **errp)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: socket path longer than %zu bytes", path,
                       sizeof(sa.sun_path) - 1);
        return false;
    }
    struct stat st;
    if (stat(path, &st) < 0) {
        vmig_set_error_errno(errp, errno, "%s", path);
        return false;
    }
    if (!S_ISSOCK(st.st_mode)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not a socket, so not a QMP monitor", path);
        return false;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "socket");
        return false;
    }
    /* A unix stream connect completes at once or fails at once (EAGAIN: backlog full). */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        close(fd);
        if (err == ECONNREFUSED) {
            vmig_set_error(errp, VMIG_E_IO, "%s: nothing listens on this socket (QEMU gone?)",
                           path);
        } else {
            vmig_set_error_errno(errp, err, "connecting to %s", path);
        }
        return false;
    }
    return qmp_conn_attach_fd(c, fd, errp);
}

typedef struct sync_wait {
    bool done;
    int res;
    json_object *ret;
    vmig_error *err;
} sync_wait;

static void sync_io_done(void *opaque, int res)
{
    sync_wait *w = opaque;
    w->done = true;
    w->res = res;
}

/* Runs the ring until @w is done; false when the ring itself failed. */
static bool sync_run(ring *r, sync_wait *w, vmig_error **errp)
{
    while (!w->done) {
        int n = ring_dispatch(r, -1);
        if (n < 0 && n != -EINTR) {
            vmig_set_error_errno(errp, -n, "waiting on the event loop");
            return false;
        }
    }
    return true;
}

static int connect_ring(qmp_conn *c, int fd, const struct addrinfo *ai, int timeout_ms)
{
    sync_wait w = {0}, t = {0};
    int64_t op = ring_connect(c->ring, fd, ai->ai_addr, ai->ai_addrlen, sync_io_done, &w);
    if (op < 0) {
        return (int)op;
    }
    int64_t timer = ring_timer(c->ring, timeout_ms, sync_io_done, &t);
    while (!w.done) {
        if (t.done) {
            ring_cancel(c->ring, op);
        }
        int n = ring_dispatch(c->ring, -1);
        if (n < 0 && n != -EINTR) {
            ring_detach(c->ring, op, NULL, NULL);
            ring_detach(c->ring, timer, NULL, NULL);
            return n;
        }
    }
    if (!t.done) {
        ring_detach(c->ring, timer, NULL, NULL);
    }
    return w.res == -ECANCELED && t.done ? -ETIMEDOUT : w.res;
}

bool qmp_conn_connect_tcp(qmp_conn *c, const char *host, int port, int timeout_ms,
                          vmig_error **errp)
{
    if (port <= 0 || port > 65535) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: port %d out of range 1-65535", host, port);
        return false;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char portstr[8];
    g_snprintf(portstr, sizeof(portstr), "%d", port);
    int gr = getaddrinfo(host, portstr, &hints, &res);
    if (gr != 0) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "%s: %s", host, gai_strerror(gr));
        return false;
    }
    int err = -ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = -errno;
            continue;
        }
        err = connect_ring(c, fd, ai, timeout_ms);
        if (err == 0) {
            freeaddrinfo(res);
            return qmp_conn_attach_fd(c, fd, errp);
        }
        close(fd);
    }
    freeaddrinfo(res);
    vmig_set_error_errno(errp, -err, "connecting to %s:%d", host, port);
    return false;
}

void qmp_conn_start(qmp_conn *c, int timeout_ms, qmp_ready_fn cb, void *opaque)
{
    c->ready_cb = cb;
    c->ready_opaque = opaque;
    c->start_timeout_ms = timeout_ms;
    c->start_deadline = vmig_now_ms() + MAX(timeout_ms, 0);
    c->starting = true;
    if (!c->alive) {
        /* delivered by the timer, never from inside this call */
        c->start_deadline = vmig_now_ms();
    }
    arm_timer(c);
}

/* ---- waiting -------------------------------------------------------------------------------- */

static void sync_ready(void *opaque, const vmig_error *err)
{
    sync_wait *w = opaque;
    w->done = true;
    w->err = err ? vmig_error_copy(err) : NULL;
}

bool qmp_conn_handshake(qmp_conn *c, int timeout_ms, vmig_error **errp)
{
    sync_wait w = {0};
    if (!c->alive) {
        vmig_set_error(errp, VMIG_E_IO, "%s: %s", c->label,
                       c->dead_reason ? c->dead_reason : "not connected");
        return false;
    }
    qmp_conn_start(c, timeout_ms, sync_ready, &w);
    if (!sync_run(c->ring, &w, errp)) {
        return false;
    }
    if (w.err) {
        vmig_propagate_error(errp, w.err);
        return false;
    }
    return true;
}

static void sync_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    sync_wait *w = opaque;
    w->done = true;
    w->ret = ret ? json_object_get(ret) : NULL;
    w->err = err ? vmig_error_copy(err) : NULL;
}

json_object *qmp_conn_call(qmp_conn *c, const char *cmd, json_object *args, unsigned flags,
                           int timeout_ms, vmig_error **errp)
{
    sync_wait w = {0};
    qmp_call(c, cmd, args, flags, timeout_ms, sync_reply, &w);
    if (!sync_run(c->ring, &w, errp)) {
        return NULL;
    }
    if (w.err) {
        vmig_propagate_error(errp, w.err);
        return NULL;
    }
    return w.ret;
}

bool qmp_conn_call_void(qmp_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        vmig_error **errp)
{
    json_object *r = qmp_conn_call(c, cmd, args, 0, timeout_ms, errp);
    json_object_put(r);
    return r != NULL;
}

qmp_conn *qmp_conn_open_unix(ring *r, const char *path, int timeout_ms, vmig_error **errp)
{
    g_autoptr(qmp_conn) c = qmp_conn_new(r, path);
    if (!qmp_conn_connect_unix(c, path, errp) || !qmp_conn_handshake(c, timeout_ms, errp)) {
        return NULL;
    }
    return g_steal_pointer(&c);
}

/* ---- public: one command, for poking at a QEMU ------------------------------------------------
 */

char *vmig_qmp_call(const char *socket_path, const char *cmd, const char *args_json, int timeout_ms,
                    vmig_error **errp)
{
    g_autoptr(json_object) args = NULL;
    if (args_json) {
        enum json_tokener_error jerr = json_tokener_success;
        args = json_tokener_parse_verbose(args_json, &jerr);
        if (!args || !json_object_is_type(args, json_type_object)) {
            vmig_set_error(errp, VMIG_E_INVAL, "the arguments of %s must be a JSON object: %s", cmd,
                           args ? "got another JSON type" : json_tokener_error_desc(jerr));
            return NULL;
        }
    }
    ring *r = ring_new(RING_BACKEND_AUTO, errp);
    if (!r) {
        return NULL;
    }
    char *out = NULL;
    qmp_conn *c = qmp_conn_open_unix(r, socket_path, timeout_ms, errp);
    json_object *ret = c ? qmp_conn_call(c, cmd, g_steal_pointer(&args), 0, timeout_ms, errp)
                         : NULL;
    if (ret) {
        out = strdup(json_object_to_json_string_ext(ret, JSON_C_TO_STRING_PRETTY |
                                                             JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(ret);
    qmp_conn_free(c);
    ring_free(r);
    return out;
}
