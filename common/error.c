#include "error.h"

#include <errno.h>
#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct vmig_error {
    vmig_errc code;
    char *message;
};

vmig_errc vmig_error_code(const vmig_error *e)
{
    return e ? e->code : 0;
}

const char *vmig_error_message(const vmig_error *e)
{
    return e ? e->message : "";
}

void vmig_error_free(vmig_error *e)
{
    if (!e) {
        return;
    }
    g_free(e->message);
    g_free(e);
}

vmig_error *vmig_error_copy(const vmig_error *e)
{
    if (!e) {
        return NULL;
    }
    vmig_error *c = g_new0(vmig_error, 1);
    c->code = e->code;
    c->message = g_strdup(e->message);
    return c;
}

static void set_error_v(vmig_error **errp, vmig_errc code, const char *fmt, va_list ap)
{
    if (!errp) {
        return;
    }
    /* The first error is the cause; a later one would only describe the cleanup. */
    if (*errp) {
        return;
    }
    vmig_error *e = g_new0(vmig_error, 1);
    e->code = code;
    e->message = g_strdup_vprintf(fmt, ap);
    *errp = e;
}

void vmig_set_error(vmig_error **errp, vmig_errc code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_error_v(errp, code, fmt, ap);
    va_end(ap);
}

void vmig_set_error_errno(vmig_error **errp, int errnum, const char *fmt, ...)
{
    if (!errp || *errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    vmig_errc code = errnum == ENOENT ? VMIG_E_NOTFOUND : VMIG_E_IO;
    vmig_set_error(errp, code, "%s: %s", what, g_strerror(errnum));
}

void vmig_prefix_error(vmig_error **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *prefix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    char *old = (*errp)->message;
    (*errp)->message = g_strconcat(prefix, old, NULL);
    g_free(old);
}

void vmig_append_error(vmig_error **errp, const char *fmt, ...)
{
    if (!errp || !*errp) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *suffix = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    char *old = (*errp)->message;
    (*errp)->message = g_strconcat(old, suffix, NULL);
    g_free(old);
}

void vmig_propagate_error(vmig_error **dst, vmig_error *src)
{
    if (!src) {
        return;
    }
    if (dst && !*dst) {
        *dst = src;
    } else {
        vmig_error_free(src);
    }
}

char *vmig_file_read(const char *path, gsize *ret_len, vmig_error **errp)
{
    char *text = NULL;
    g_autoptr(GError) gerr = NULL;
    if (!g_file_get_contents(path, &text, ret_len, &gerr)) {
        int errnum = gerr->code == G_FILE_ERROR_NOENT   ? ENOENT
                     : gerr->code == G_FILE_ERROR_ISDIR ? EISDIR
                     : gerr->code == G_FILE_ERROR_ACCES ? EACCES
                                                        : 0;
        if (errnum) {
            vmig_set_error_errno(errp, errnum, "%s", path);
        } else {
            vmig_set_error(errp, VMIG_E_IO, "%s", gerr->message);
        }
        return NULL;
    }
    return text;
}

bool vmig_markup_parse(const GMarkupParser *parser, void *opaque, const char *text, size_t len,
                       const char *origin, vmig_error **errp)
{
    GMarkupParseContext *ctx = g_markup_parse_context_new(parser, 0, opaque, NULL);
    g_autoptr(GError) gerr = NULL;
    bool ok = g_markup_parse_context_parse(ctx, text, (gssize)len, &gerr) &&
              g_markup_parse_context_end_parse(ctx, &gerr);
    int line = 0;
    g_markup_parse_context_get_position(ctx, &line, NULL);
    g_markup_parse_context_free(ctx);
    if (!ok) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s:%d: %s", origin, line, gerr->message);
    }
    return ok;
}
