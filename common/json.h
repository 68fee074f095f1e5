/* json-c with GLib's automatic cleanup, and field tables for reading untrusted replies. */
#ifndef VMIG_COMMON_JSON_H
#define VMIG_COMMON_JSON_H

#include <glib.h>
#include <json-c/json.h>
#include <stddef.h>

#include "vmigrate.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_object, json_object_put)

/*
 * A reply is read through a table of its fields, after sd-json's dispatch tables: each entry
 * names a key, the type it must have and where in a C struct the value goes.  A key that is
 * absent or null leaves its destination as it was, unless the field is mandatory; a key of the
 * wrong type is an error that names it.  Nothing else of a reply is looked at.
 */
typedef enum vmig_jtype {
    VJ_STRING, /* const char *, borrowed from the object */
    VJ_INT64,  /* int64_t */
    VJ_UINT64, /* uint64_t: a non-negative integer */
    VJ_DOUBLE, /* double: any number */
    VJ_BOOL,   /* bool */
    VJ_OBJECT, /* json_object *, borrowed */
    VJ_ARRAY,  /* json_object *, borrowed */
} vmig_jtype;

enum {
    VJ_MANDATORY = 1u << 0,
};

typedef struct vmig_jfield {
    const char *name;
    vmig_jtype type;
    size_t offset;
    unsigned flags;
} vmig_jfield;

/* Reads @obj (which must be an object) into @base by @fields, ended by a {NULL} entry.
 * Errors read "WHAT: 'name' is not a string". */
bool vmig_json_read(json_object *obj, const vmig_jfield *fields, void *base, const char *what,
                    vmig_error **errp);

#endif
