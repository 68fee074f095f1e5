/*
 * QMP framing: QEMU writes one JSON object per line ("\r\n" terminated) and never a raw
 * newline inside one, so the stream is split on '\n' and each line parsed whole.  Lines are
 * bounded before they are parsed, so a peer cannot make us buffer without limit.
 */
#include <string.h>

#include "common/error.h"
#include "qmp.h"

struct qmp_parser {
    GByteArray *buf; /* bytes of the message not yet terminated */
    size_t max_msg;
    int max_depth;
    json_tokener *tok;
};

qmp_parser *qmp_parser_new(size_t max_msg, int max_depth)
{
    qmp_parser *p = g_new0(qmp_parser, 1);
    p->buf = g_byte_array_new();
    p->max_msg = max_msg ? max_msg : QMP_MSG_MAX;
    p->max_depth = max_depth > 0 ? max_depth : QMP_DEPTH_MAX;
    p->tok = json_tokener_new_ex(p->max_depth);
    return p;
}

void qmp_parser_free(qmp_parser *p)
{
    if (!p) {
        return;
    }
    g_byte_array_free(p->buf, TRUE);
    if (p->tok) {
        json_tokener_free(p->tok);
    }
    g_free(p);
}

size_t qmp_parser_pending(const qmp_parser *p)
{
    return p->buf->len;
}

/* A printable excerpt of a bad message, for the error text. */
static char *excerpt(const char *s, size_t len)
{
    size_t n = MIN(len, (size_t)60);
    GString *out = g_string_sized_new(n + 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch < 0x7f) {
            g_string_append_c(out, (char)ch);
        } else {
            g_string_append_printf(out, "\\x%02x", ch);
        }
    }
    if (len > n) {
        g_string_append(out, "...");
    }
    return g_string_free(out, FALSE);
}

/* How many JSON values @line holds (objects, arrays, strings, numbers, literals; not member
 * names), stopping past @max.  json-c allocates per value, so bytes alone do not bound memory:
 * 10 MiB of "{},{}," parses into 2.75 GB.  Malformed text is counted loosely; the parser that
 * follows refuses it. */
static size_t count_values(const char *line, size_t len, size_t max)
{
    char stack[QMP_DEPTH_MAX + 1];
    int depth = 0;
    bool in_str = false, in_scalar = false, want_key = false;
    size_t n = 0;
    for (size_t i = 0; i < len && n <= max; i++) {
        char ch = line[i];
        if (in_str) {
            if (ch == '\\') {
                i++;
            } else if (ch == '"') {
                in_str = false;
            }
            continue;
        }
        bool delim = ch == '{' || ch == '[' || ch == '}' || ch == ']' || ch == ',' || ch == ':' ||
                     ch == '"' || g_ascii_isspace(ch);
        if (!delim) {
            n += !in_scalar; /* the first character of a number or a literal */
            in_scalar = true;
            continue;
        }
        in_scalar = false;
        bool in_object = depth > 0 && stack[depth - 1] == '{';
        if (ch == '"') {
            n += !(in_object && want_key);
            want_key = false;
            in_str = true;
        } else if (ch == '{' || ch == '[') {
            n++;
            if (depth < QMP_DEPTH_MAX) {
                stack[depth++] = ch;
            }
            want_key = ch == '{';
        } else if (ch == '}' || ch == ']') {
            depth -= depth > 0;
            want_key = false;
        } else if (ch == ',') {
            want_key = in_object;
        } else if (ch == ':') {
            want_key = false;
        }
    }
    return n;
}

static int parse_line(qmp_parser *p, const char *line, size_t len, qmp_msg_fn cb, void *opaque,
                      vmig_error **errp)
{
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) {
        len--;
    }
    if (len == 0) {
        return 0;
    }
    if (count_values(line, len, QMP_VALUES_MAX) > QMP_VALUES_MAX) {
        g_autofree char *ex = excerpt(line, len);
        vmig_set_error(errp, VMIG_E_PROTO, "QMP message holds more than %u values: '%s'",
                       QMP_VALUES_MAX, ex);
        return -1;
    }
    json_tokener_reset(p->tok);
    json_object *obj = json_tokener_parse_ex(p->tok, line, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(p->tok);
    if (!obj || jerr != json_tokener_success || json_tokener_get_parse_end(p->tok) != len) {
        g_autofree char *ex = excerpt(line, len);
        const char *why = jerr == json_tokener_error_depth ? "nested too deeply"
                          : jerr == json_tokener_continue  ? "incomplete JSON"
                          : obj                            ? "trailing data after JSON"
                                                           : json_tokener_error_desc(jerr);
        json_object_put(obj);
        vmig_set_error(errp, VMIG_E_PROTO, "malformed QMP message (%s): '%s'", why, ex);
        return -1;
    }
    if (!json_object_is_type(obj, json_type_object)) {
        g_autofree char *ex = excerpt(line, len);
        json_object_put(obj);
        vmig_set_error(errp, VMIG_E_PROTO, "QMP message is not a JSON object: '%s'", ex);
        return -1;
    }
    cb(opaque, obj);
    json_object_put(obj);
    return 1;
}

int qmp_parser_feed(qmp_parser *p, const char *buf, size_t len, qmp_msg_fn cb, void *opaque,
                    vmig_error **errp)
{
    int count = 0;
    while (len) {
        const char *nl = memchr(buf, '\n', len);
        size_t take = nl ? (size_t)(nl - buf) : len;
        if (p->buf->len + take > p->max_msg) {
            vmig_set_error(errp, VMIG_E_PROTO, "QMP message exceeds the limit of %zu bytes",
                           p->max_msg);
            g_byte_array_set_size(p->buf, 0);
            return -1;
        }
        if (!nl) {
            g_byte_array_append(p->buf, (const guint8 *)buf, (guint)take);
            break;
        }
        int r;
        if (p->buf->len) {
            g_byte_array_append(p->buf, (const guint8 *)buf, (guint)take);
            r = parse_line(p, (const char *)p->buf->data, p->buf->len, cb, opaque, errp);
            g_byte_array_set_size(p->buf, 0);
        } else {
            r = parse_line(p, buf, take, cb, opaque, errp);
        }
        if (r < 0) {
            return -1;
        }
        count += r;
        buf += take + 1;
        len -= take + 1;
    }
    return count;
}
