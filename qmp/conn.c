#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"
#include "qmp.h"

#define READ_CHUNK 65536

typedef struct qmp_pending {
    const char *cmd;
    bool done;
    json_object *reply; /* the whole reply message, owned */
} qmp_pending;

struct qmp_conn {
    char *label; /* what the user knows this monitor as: a socket path, "source", ... */
    int fd;
    bool alive;
    char *dead_reason;
    vmig_error *proc_err; /* set by message dispatch, picked up by process() */
    qmp_parser *parser;
    GHashTable *pending; /* id -> qmp_pending *, entries live on callers' stacks */
    int64_t next_id;
    bool greeted;
    int version;
    bool oob_offered;
    bool oob_enabled;
    qmp_event_fn event_cb;
    void *event_opaque;
    qmp_waiter_fn waiter;
    void *waiter_opaque;
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

static int default_waiter(void *opaque, qmp_conn *c, int timeout_ms)
{
    (void)opaque;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms);
    if (r < 0 && errno != EINTR) {
        return -errno;
    }
    if (r > 0) {
        qmp_conn_process(c, NULL);
    }
    return 0;
}

qmp_conn *qmp_conn_new(const char *label)
{
    qmp_conn *c = g_new0(qmp_conn, 1);
    c->label = g_strdup(label ? label : "QMP");
    c->fd = -1;
    c->parser = qmp_parser_new(QMP_MSG_MAX, QMP_DEPTH_MAX);
    c->pending = g_hash_table_new(g_int64_hash, g_int64_equal);
    c->next_id = 1;
    c->waiter = default_waiter;
    return c;
}

void qmp_conn_free(qmp_conn *c)
{
    if (!c) {
        return;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    g_hash_table_destroy(c->pending);
    qmp_parser_free(c->parser);
    vmig_error_free(c->proc_err);
    g_free(c->dead_reason);
    g_free(c->label);
    g_free(c);
}

int qmp_conn_fd(const qmp_conn *c)
{
    return c->fd;
}

bool qmp_conn_alive(const qmp_conn *c)
{
    return c->alive;
}

bool qmp_conn_has_oob(const qmp_conn *c)
{
    return c->oob_enabled;
}

int qmp_conn_version(const qmp_conn *c)
{
    return c->version;
}

void qmp_conn_set_event_cb(qmp_conn *c, qmp_event_fn fn, void *opaque)
{
    c->event_cb = fn;
    c->event_opaque = opaque;
}

void qmp_conn_set_waiter(qmp_conn *c, qmp_waiter_fn fn, void *opaque)
{
    c->waiter = fn ? fn : default_waiter;
    c->waiter_opaque = fn ? opaque : NULL;
}

/* The connection is unusable from now on; the first reason is kept. */
static void mark_dead(qmp_conn *c, const char *reason)
{
    if (c->alive || !c->dead_reason) {
        g_free(c->dead_reason);
        c->dead_reason = g_strdup(reason);
    }
    c->alive = false;
}

bool qmp_conn_attach_fd(qmp_conn *c, int fd, vmig_error **errp)
{
    if (c->fd >= 0) {
        close(fd);
        vmig_set_error(errp, VMIG_E_STATE, "%s: already connected", c->label);
        return false;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        vmig_set_error_errno(errp, errno, "%s: fcntl", c->label);
        close(fd);
        return false;
    }
    c->fd = fd;
    c->alive = true;
    return true;
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
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "socket");
        return false;
    }
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

static int connect_with_deadline(int fd, const struct sockaddr *sa, socklen_t len, int timeout)
{
    if (connect(fd, sa, len) == 0) {
        return 0;
    }
    if (errno != EINPROGRESS) {
        return -errno;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int r;
    do {
        r = poll(&pfd, 1, timeout);
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        return -ETIMEDOUT;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) {
        return -errno;
    }
    return -soerr;
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
        err = connect_with_deadline(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
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

static void handle_greeting(qmp_conn *c, json_object *msg)
{
    json_object *qmp = NULL, *ver = NULL, *qemu = NULL, *caps = NULL, *v;
    if (!json_object_object_get_ex(msg, "QMP", &qmp) ||
        !json_object_is_type(qmp, json_type_object)) {
        g_autofree char *text = g_strndup(json_object_to_json_string(msg), 80);
        vmig_set_error(&c->proc_err, VMIG_E_PROTO,
                       "%s: not a QMP server: the first message was %s, not a QMP greeting",
                       c->label, text);
        return;
    }
    c->greeted = true;
    if (json_object_object_get_ex(qmp, "version", &ver) &&
        json_object_object_get_ex(ver, "qemu", &qemu)) {
        int maj = 0, min = 0, mic = 0;
        if (json_object_object_get_ex(qemu, "major", &v)) {
            maj = json_object_get_int(v);
        }
        if (json_object_object_get_ex(qemu, "minor", &v)) {
            min = json_object_get_int(v);
        }
        if (json_object_object_get_ex(qemu, "micro", &v)) {
            mic = json_object_get_int(v);
        }
        c->version = maj * 10000 + min * 100 + mic;
    }
    if (json_object_object_get_ex(qmp, "capabilities", &caps) &&
        json_object_is_type(caps, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(caps); i++) {
            const char *cap = json_object_get_string(json_object_array_get_idx(caps, i));
            if (cap && strcmp(cap, "oob") == 0) {
                c->oob_offered = true;
            }
        }
    }
}

static void handle_event(qmp_conn *c, json_object *msg, json_object *ev)
{
    json_object *data = NULL, *ts = NULL, *v;
    int64_t ts_us = 0;
    json_object_object_get_ex(msg, "data", &data);
    if (json_object_object_get_ex(msg, "timestamp", &ts)) {
        if (json_object_object_get_ex(ts, "seconds", &v)) {
            ts_us = json_object_get_int64(v) * 1000000;
        }
        if (json_object_object_get_ex(ts, "microseconds", &v)) {
            ts_us += json_object_get_int64(v);
        }
    }
    if (c->event_cb) {
        c->event_cb(c->event_opaque, json_object_get_string(ev), data, ts_us);
    }
}

static void dispatch(void *opaque, json_object *msg)
{
    qmp_conn *c = opaque;
    json_object *ev = NULL, *id = NULL;
    if (c->proc_err) {
        return; /* the stream already failed; the rest is not trusted */
    }
    if (!c->greeted) {
        handle_greeting(c, msg);
        return;
    }
    if (json_object_object_get_ex(msg, "event", &ev)) {
        handle_event(c, msg, ev);
        return;
    }
    if (!json_object_object_get_ex(msg, "return", NULL) &&
        !json_object_object_get_ex(msg, "error", NULL)) {
        return; /* not for us (a second greeting, or a future message type) */
    }
    if (!json_object_object_get_ex(msg, "id", &id) || !json_object_is_type(id, json_type_int)) {
        return; /* we always send an integer id; QEMU answers unparsable input without one */
    }
    int64_t key = json_object_get_int64(id);
    qmp_pending *p = g_hash_table_lookup(c->pending, &key);
    if (!p) {
        return; /* late reply to a command whose caller gave up */
    }
    p->reply = json_object_get(msg);
    p->done = true;
    g_hash_table_remove(c->pending, &key);
}

int qmp_conn_process(qmp_conn *c, vmig_error **errp)
{
    if (!c->alive) {
        vmig_set_error(errp, VMIG_E_IO, "%s: %s", c->label,
                       c->dead_reason ? c->dead_reason : "not connected");
        return -1;
    }
    int handled = 0;
    char buf[READ_CHUNK];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return handled;
        }
        if (n <= 0) {
            const char *why = n == 0 ? "QEMU closed the QMP connection" : g_strerror(errno);
            mark_dead(c, why);
            vmig_set_error(errp, VMIG_E_IO, "%s: %s", c->label, why);
            return -1;
        }
        vmig_error *perr = NULL;
        int r = qmp_parser_feed(c->parser, buf, (size_t)n, dispatch, c, &perr);
        if (r < 0 || c->proc_err) {
            vmig_error *e = c->proc_err ? c->proc_err : perr;
            if (e == perr) {
                vmig_prefix_error(&perr, "%s: ", c->label);
            } else {
                vmig_error_free(perr);
            }
            c->proc_err = NULL;
            mark_dead(c, vmig_error_message(e));
            vmig_propagate_error(errp, e);
            return -1;
        }
        handled += r;
    }
}

static bool write_all(qmp_conn *c, const char *buf, size_t len, int64_t deadline,
                      vmig_error **errp)
{
    while (len) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
            int left = vmig_ms_left(deadline);
            if (left == 0 || poll(&pfd, 1, left) == 0) {
                vmig_set_error(errp, VMIG_E_TIMEOUT, "%s: QEMU does not read its monitor",
                               c->label);
                return false;
            }
            continue;
        }
        const char *why = errno == EPIPE ? "QEMU closed the QMP connection" : g_strerror(errno);
        mark_dead(c, why);
        vmig_set_error(errp, VMIG_E_IO, "%s: %s", c->label, why);
        return false;
    }
    return true;
}

static json_object *reply_value(qmp_conn *c, const char *cmd, json_object *reply,
                                vmig_error **errp)
{
    json_object *err = NULL, *ret = NULL, *cls = NULL, *desc = NULL;
    if (json_object_object_get_ex(reply, "error", &err)) {
        json_object_object_get_ex(err, "class", &cls);
        json_object_object_get_ex(err, "desc", &desc);
        vmig_set_error(errp, VMIG_E_QEMU, "%s: %s (%s)", cmd,
                       desc ? json_object_get_string(desc) : "unknown error",
                       cls ? json_object_get_string(cls) : "no class");
        return NULL;
    }
    if (!json_object_object_get_ex(reply, "return", &ret)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: %s: reply has neither return nor error",
                       c->label, cmd);
        return NULL;
    }
    return ret ? json_object_get(ret) : json_object_new_object();
}

json_object *qmp_conn_call(qmp_conn *c, const char *cmd, json_object *args, unsigned flags,
                           int timeout_ms, vmig_error **errp)
{
    g_autoptr(json_object) owned_args = args;
    if (!c->alive) {
        vmig_set_error(errp, VMIG_E_IO, "%s: %s: %s", c->label, cmd,
                       c->dead_reason ? c->dead_reason : "not connected");
        return NULL;
    }
    if ((flags & QMP_CALL_OOB) && !c->oob_enabled) {
        vmig_set_error(errp, VMIG_E_STATE, "%s: %s: QEMU did not offer out-of-band execution",
                       c->label, cmd);
        return NULL;
    }
    int64_t deadline = vmig_now_ms() + timeout_ms;
    int64_t id = c->next_id++;
    g_autoptr(json_object) msg = json_object_new_object();
    json_object_object_add(msg, (flags & QMP_CALL_OOB) ? "exec-oob" : "execute",
                           json_object_new_string(cmd));
    if (owned_args) {
        json_object_object_add(msg, "arguments", g_steal_pointer(&owned_args));
    }
    json_object_object_add(msg, "id", json_object_new_int64(id));
    g_autofree char *line = g_strconcat(json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN),
                                        "\n", NULL);

    qmp_pending p = {.cmd = cmd};
    int64_t key = id;
    g_hash_table_insert(c->pending, &key, &p);
    bool ok = write_all(c, line, strlen(line), deadline, errp);
    while (ok && !p.done) {
        if (!c->alive) {
            vmig_set_error(errp, VMIG_E_IO, "%s: %s: %s before replying", c->label, cmd,
                           c->dead_reason ? c->dead_reason : "connection lost");
            ok = false;
            break;
        }
        int left = vmig_ms_left(deadline);
        if (left == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT, "%s: %s: no reply within %d ms", c->label, cmd,
                           timeout_ms);
            ok = false;
            break;
        }
        int r = c->waiter(c->waiter_opaque, c, left);
        if (r < 0) {
            vmig_set_error_errno(errp, -r, "%s: %s: waiting for the reply", c->label, cmd);
            ok = false;
        }
    }
    g_hash_table_remove(c->pending, &key);
    if (!ok) {
        json_object_put(p.reply);
        return NULL;
    }
    json_object *val = reply_value(c, cmd, p.reply, errp);
    json_object_put(p.reply);
    return val;
}

bool qmp_conn_call_void(qmp_conn *c, const char *cmd, json_object *args, int timeout_ms,
                        vmig_error **errp)
{
    json_object *r = qmp_conn_call(c, cmd, args, 0, timeout_ms, errp);
    json_object_put(r);
    return r != NULL;
}

bool qmp_conn_handshake(qmp_conn *c, int timeout_ms, vmig_error **errp)
{
    int64_t deadline = vmig_now_ms() + timeout_ms;
    while (!c->greeted) {
        vmig_error *err = NULL;
        if (!c->alive) {
            vmig_set_error(errp, VMIG_E_PROTO, "%s: not a QMP server: %s before a greeting",
                           c->label, c->dead_reason ? c->dead_reason : "connection lost");
            return false;
        }
        int left = vmig_ms_left(deadline);
        if (left == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT,
                           "%s: no QMP greeting within %d ms: is this a QEMU monitor?", c->label,
                           timeout_ms);
            return false;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pfd, 1, left);
        if (r > 0 && qmp_conn_process(c, &err) < 0) {
            if (vmig_error_code(err) == VMIG_E_PROTO) {
                vmig_set_error(errp, VMIG_E_PROTO, "not a QMP server: %s",
                               vmig_error_message(err));
            } else {
                vmig_propagate_error(errp, g_steal_pointer(&err));
            }
            vmig_error_free(err);
            return false;
        }
    }
    json_object *args = NULL;
    if (c->oob_offered) {
        args = json_object_new_object();
        json_object *en = json_object_new_array();
        json_object_array_add(en, json_object_new_string("oob"));
        json_object_object_add(args, "enable", en);
    }
    if (!qmp_conn_call_void(c, "qmp_capabilities", args, vmig_ms_left(deadline) + 1, errp)) {
        return false;
    }
    c->oob_enabled = c->oob_offered;
    return true;
}

qmp_conn *qmp_conn_open_unix(const char *path, int timeout_ms, vmig_error **errp)
{
    g_autoptr(qmp_conn) c = qmp_conn_new(path);
    if (!qmp_conn_connect_unix(c, path, errp) || !qmp_conn_handshake(c, timeout_ms, errp)) {
        return NULL;
    }
    return g_steal_pointer(&c);
}
