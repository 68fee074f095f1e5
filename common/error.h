/* Internal helpers around vmig_error (QEMU's Error ** rules: the first error set wins, and a
 * successful call never touches *errp). */
#ifndef VMIG_COMMON_ERROR_H
#define VMIG_COMMON_ERROR_H

#include <glib.h>

#include "vmigrate.h"

void vmig_set_error(vmig_error **errp, vmig_errc code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Code VMIG_E_NOTFOUND for ENOENT, VMIG_E_IO otherwise; appends strerror(errnum). */
void vmig_set_error_errno(vmig_error **errp, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends context to an error already set ("starting destination: "). */
void vmig_prefix_error(vmig_error **errp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Appends context to an error already set ("; the source keeps running"). */
void vmig_append_error(vmig_error **errp, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* vmig_error_copy() is public: vmigrate.h. */
/* Moves @src (stolen) into @dst unless @dst already holds one. */
void vmig_propagate_error(vmig_error **dst, vmig_error *src);

/* Reads a whole file; the error says which file and why (VMIG_E_NOTFOUND when missing). */
char *vmig_file_read(const char *path, gsize *ret_len, vmig_error **errp);
/* Runs GMarkup @parser over @text; errors read "ORIGIN:LINE: message". */
bool vmig_markup_parse(const GMarkupParser *parser, void *opaque, const char *text, size_t len,
                       const char *origin, vmig_error **errp);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(vmig_error, vmig_error_free)

#endif
