/*
 * The control connection (control.h): framed JSON texts on the ring, and the key file.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "control.h"

#define RBUF_LEN ((size_t)2 * (TP_HEADER_LEN + TP_PAYLOAD_MAX))

struct tp_control {
    ring *r;
    int fd;
    tp_control_msg_fn msg;
    tp_control_closed_fn closed;
    void *opaque;
    uint8_t *rbuf;
    size_t rlen;
    int64_t recv_op, send_op;
    GQueue out;      /* GBytes *, whole frames */
    size_t out_sent; /* of the head */
    bool ended;
    int refs; /* the owner, and each operation in flight */
};

static void unref(void *opaque)
{
    tp_control *c = opaque;
    if (--c->refs == 0) {
        g_queue_clear_full(&c->out, (GDestroyNotify)g_bytes_unref);
        g_free(c->rbuf);
        g_free(c);
    }
}

static void end(tp_control *c, const vmig_error *err)
{
    if (c->ended) {
        return;
    }
    c->ended = true;
    if (c->recv_op > 0) {
        ring_cancel(c->r, c->recv_op);
    }
    if (c->send_op > 0) {
        ring_cancel(c->r, c->send_op);
    }
    tp_control_closed_fn closed = c->closed;
    c->closed = NULL;
    if (closed) {
        closed(c->opaque, err);
    }
}

static void end_errno(tp_control *c, int errnum, const char *what)
{
    vmig_error *e = NULL;
    vmig_set_error_errno(&e, errnum, "control connection: %s", what);
    end(c, e);
    vmig_error_free(e);
}

static void on_recv(void *opaque, int res);

static void start_recv(tp_control *c)
{
    int64_t id = ring_recv(c->r, c->fd, c->rbuf + c->rlen, RBUF_LEN - c->rlen, on_recv, c);
    if (id < 0) {
        end_errno(c, (int)-id, "receiving");
        return;
    }
    c->recv_op = id;
    c->refs++;
}

/* Hands every whole frame in the buffer on; false when the connection ended. */
static bool parse(tp_control *c)
{
    size_t off = 0;
    while (!c->ended) {
        tp_frame f;
        size_t used = 0;
        vmig_error *err = NULL;
        tp_parse_result r = tp_frame_parse(c->rbuf + off, c->rlen - off, &f, &used, &err);
        if (r == TP_PARSE_MORE) {
            break;
        }
        if (r == TP_PARSE_ERROR || f.type != TP_CONTROL) {
            if (!err) {
                vmig_set_error(&err, VMIG_E_PROTO, "a frame of type %d where CONTROL was due",
                               (int)f.type);
            }
            vmig_prefix_error(&err, "control connection: ");
            end(c, err);
            vmig_error_free(err);
            return false;
        }
        g_autofree char *text = g_strndup((const char *)f.payload, f.len);
        off += used;
        if (strlen(text) != f.len) {
            vmig_set_error(&err, VMIG_E_PROTO, "control connection: a message with a NUL byte");
            end(c, err);
            vmig_error_free(err);
            return false;
        }
        c->msg(c->opaque, text, f.len);
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return !c->ended;
}

static void on_recv(void *opaque, int res)
{
    tp_control *c = opaque;
    c->recv_op = 0;
    if (!c->ended) {
        if (res < 0) {
            end_errno(c, -res, "receiving");
        } else if (res == 0) {
            if (c->rlen) {
                vmig_error *e = NULL;
                vmig_set_error(&e, VMIG_E_PROTO,
                               "control connection: end of file inside a frame (%zu bytes)",
                               c->rlen);
                end(c, e);
                vmig_error_free(e);
            } else {
                end(c, NULL);
            }
        } else {
            c->rlen += (size_t)res;
            c->refs++; /* a message callback may free it */
            if (parse(c)) {
                start_recv(c);
            }
            unref(c);
        }
    }
    unref(c);
}

static void on_send(void *opaque, int res);

static void start_send(tp_control *c)
{
    GBytes *b = g_queue_peek_head(&c->out);
    if (!b || c->send_op > 0 || c->ended) {
        return;
    }
    gsize len = 0;
    const uint8_t *p = g_bytes_get_data(b, &len);
    int64_t id = ring_send(c->r, c->fd, p + c->out_sent, len - c->out_sent, on_send, c);
    if (id < 0) {
        end_errno(c, (int)-id, "sending");
        return;
    }
    c->send_op = id;
    c->refs++;
}

static void on_send(void *opaque, int res)
{
    tp_control *c = opaque;
    c->send_op = 0;
    if (!c->ended) {
        if (res < 0) {
            end_errno(c, -res, "sending");
        } else {
            GBytes *b = g_queue_peek_head(&c->out);
            c->out_sent += (size_t)res;
            if (c->out_sent == g_bytes_get_size(b)) {
                g_bytes_unref(g_queue_pop_head(&c->out));
                c->out_sent = 0;
            }
            start_send(c);
        }
    }
    unref(c);
}

tp_control *tp_control_new(ring *r, int fd, tp_control_msg_fn msg, tp_control_closed_fn closed,
                           void *opaque)
{
    tp_control *c = g_new0(tp_control, 1);
    c->r = r;
    c->fd = fd;
    c->msg = msg;
    c->closed = closed;
    c->opaque = opaque;
    c->rbuf = g_malloc(RBUF_LEN);
    c->refs = 1;
    g_queue_init(&c->out);
    start_recv(c);
    return c;
}

bool tp_control_send(tp_control *c, const char *text, vmig_error **errp)
{
    size_t len = strlen(text);
    if (c->ended) {
        vmig_set_error(errp, VMIG_E_IO, "the control connection has ended");
        return false;
    }
    if (len > TP_PAYLOAD_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL, "a control message of %zu bytes (at most %d)", len,
                       TP_PAYLOAD_MAX);
        return false;
    }
    uint8_t *frame = g_malloc(TP_HEADER_LEN + len);
    size_t n = tp_frame_encode(TP_CONTROL, text, len, frame);
    g_queue_push_tail(&c->out, g_bytes_new_take(frame, n));
    start_send(c);
    return true;
}

bool tp_control_alive(const tp_control *c)
{
    return c && !c->ended;
}

void tp_control_free(tp_control *c)
{
    if (!c) {
        return;
    }
    c->ended = true;
    c->closed = NULL;
    int64_t ids[2] = {c->recv_op, c->send_op};
    c->recv_op = c->send_op = 0;
    for (int i = 0; i < 2; i++) {
        if (ids[i] > 0) { /* the release drops the reference the operation held */
            ring_detach(c->r, ids[i], unref, c); /* its buffer is the kernel's until then */
        }
    }
    close(c->fd);
    c->fd = -1;
    unref(c);
}

/* ---- the key file -----------------------------------------------------------------------------
 */

bool tp_key_load(const char *path, tp_key *ret, vmig_error **errp)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "key file %s", path);
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        vmig_set_error(errp, VMIG_E_INVAL, "key file %s is not a regular file", path);
        return false;
    }
    if (st.st_mode & 077) {
        close(fd);
        vmig_set_error(errp, VMIG_E_INVAL,
                       "key file %s may be read or written by others (mode %03o): "
                       "chmod 600 it",
                       path, (unsigned)(st.st_mode & 0777));
        return false;
    }
    char text[2 * TP_KEY_MAX + 8];
    ssize_t n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n < 0) {
        vmig_set_error_errno(errp, errno, "reading key file %s", path);
        return false;
    }
    text[n] = '\0';
    g_strstrip(text);
    size_t len = strlen(text);
    if (len % 2 || len / 2 < TP_KEY_MIN || len / 2 > TP_KEY_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "key file %s: expected %d to %d bytes as hex digits "
                       "('vmigrate key new' makes one)",
                       path, TP_KEY_MIN, TP_KEY_MAX);
        return false;
    }
    memset(ret, 0, sizeof(*ret));
    for (size_t i = 0; i < len; i += 2) {
        int hi = g_ascii_xdigit_value(text[i]), lo = g_ascii_xdigit_value(text[i + 1]);
        if (hi < 0 || lo < 0) {
            memset(ret, 0, sizeof(*ret));
            vmig_set_error(errp, VMIG_E_INVAL, "key file %s: '%c%c' is not a hex byte", path,
                           text[i], text[i + 1]);
            return false;
        }
        ret->bytes[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    ret->len = len / 2;
    memset(text, 0, sizeof(text));
    return true;
}

bool tp_key_create(const char *path, vmig_error **errp)
{
    uint8_t key[32];
    if (!tp_random(key, sizeof(key), errp)) {
        return false;
    }
    char text[2 * sizeof(key) + 2];
    for (size_t i = 0; i < sizeof(key); i++) {
        g_snprintf(text + 2 * i, 3, "%02x", key[i]);
    }
    text[2 * sizeof(key)] = '\n';
    text[2 * sizeof(key) + 1] = '\0';
    memset(key, 0, sizeof(key));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "creating key file %s", path);
        return false;
    }
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int werr = errno;
    memset(text, 0, sizeof(text));
    if (w != (ssize_t)len || fsync(fd) < 0) {
        close(fd);
        unlink(path);
        vmig_set_error_errno(errp, w < 0 ? werr : EIO, "writing key file %s", path);
        return false;
    }
    close(fd);
    return true;
}
