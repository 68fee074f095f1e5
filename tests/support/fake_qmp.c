#include "fake_qmp.h"

#include <errno.h>
#include <glib.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct t_fake {
    const t_step *script;
    int fd;
    pthread_t thread;
    char last_id[32];
    char prev_id[32];
    char *last_args;
    char *failure;
};

static bool read_line(int fd, GString *line)
{
    g_string_truncate(line, 0);
    char ch;
    for (;;) {
        ssize_t n = read(fd, &ch, 1);
        if (n <= 0) {
            return false;
        }
        if (ch == '\n') {
            return true;
        }
        g_string_append_c(line, ch);
    }
}

/* @what: "expected 'x', the client hung up" and the like; @detail is appended. */
static void fail(t_fake *f, const char *what, const char *detail)
{
    if (!f->failure) {
        f->failure = g_strconcat(what, detail, NULL);
    }
}

static void expect(t_fake *f, const char *cmd)
{
    g_autoptr(GString) line = g_string_new(NULL);
    if (!read_line(f->fd, line)) {
        fail(f, "the client hung up; expected: ", cmd);
        return;
    }
    json_object *o = json_tokener_parse(line->str);
    json_object *ex = NULL, *id = NULL, *args = NULL;
    if (!o || (!json_object_object_get_ex(o, "execute", &ex) &&
               !json_object_object_get_ex(o, "exec-oob", &ex))) {
        fail(f, "not a QMP command: ", line->str);
    } else if (strcmp(json_object_get_string(ex), cmd) != 0) {
        fail(f, "unexpected command: ", line->str);
    }
    if (o && json_object_object_get_ex(o, "id", &id)) {
        g_strlcpy(f->prev_id, f->last_id, sizeof(f->prev_id));
        g_strlcpy(f->last_id, json_object_to_json_string(id), sizeof(f->last_id));
    }
    g_free(f->last_args);
    f->last_args = g_strdup(o && json_object_object_get_ex(o, "arguments", &args)
                                ? json_object_to_json_string_ext(args, JSON_C_TO_STRING_PLAIN)
                                : "");
    json_object_put(o);
}

static void send_text(t_fake *f, const char *text)
{
    g_autoptr(GString) out = g_string_new(text);
    g_string_replace(out, "$PREV", f->prev_id, 0);
    g_string_replace(out, "$ID", f->last_id, 0);
    for (size_t off = 0; off < out->len;) {
        ssize_t n = send(f->fd, out->str + off, out->len - off, MSG_NOSIGNAL);
        if (n <= 0) {
            return; /* the client hung up: what a test of that wants */
        }
        off += (size_t)n;
    }
}

static void *run(void *opaque)
{
    t_fake *f = opaque;
    for (const t_step *s = f->script; s->kind != T_END; s++) {
        switch (s->kind) {
        case T_SEND:
            send_text(f, s->text);
            break;
        case T_EXPECT:
            expect(f, s->text);
            break;
        case T_SLEEP:
            g_usleep((gulong)s->ms * 1000);
            break;
        case T_CLOSE:
            close(f->fd);
            f->fd = -1;
            return NULL;
        case T_END:
            break;
        }
    }
    /* Stay connected until the client is done, as QEMU would. */
    char buf[256];
    while (f->fd >= 0 && read(f->fd, buf, sizeof(buf)) > 0) {
    }
    return NULL;
}

t_fake *t_fake_start(const t_step *script, int *ret_fd)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return NULL;
    }
    t_fake *f = g_new0(t_fake, 1);
    f->script = script;
    f->fd = sv[1];
    g_strlcpy(f->last_id, "null", sizeof(f->last_id));
    pthread_create(&f->thread, NULL, run, f);
    *ret_fd = sv[0];
    return f;
}

bool t_fake_finish(t_fake *f)
{
    if (f->fd >= 0) {
        shutdown(f->fd, SHUT_RDWR);
    }
    pthread_join(f->thread, NULL);
    if (f->fd >= 0) {
        close(f->fd);
    }
    return f->failure == NULL;
}

const char *t_fake_last_args(const t_fake *f)
{
    return f->last_args ? f->last_args : "";
}

const char *t_fake_failure(const t_fake *f)
{
    return f->failure ? f->failure : "";
}

void t_fake_free(t_fake *f)
{
    if (!f) {
        return;
    }
    g_free(f->last_args);
    g_free(f->failure);
    g_free(f);
}
