#include "json.h"

#include <stdint.h>

#include "error.h"

static const char *const type_words[] = {
    [VJ_STRING] = "a string", [VJ_INT64] = "an integer", [VJ_UINT64] = "a non-negative integer",
    [VJ_DOUBLE] = "a number", [VJ_BOOL] = "a boolean",   [VJ_OBJECT] = "an object",
    [VJ_ARRAY] = "an array",
};

/* @dst: the field at its offset in the caller's struct, of the type f->type names */
static bool store(json_object *v, const vmig_jfield *f, void *dst)
{
    switch (f->type) {
    case VJ_STRING:
        if (!json_object_is_type(v, json_type_string)) {
            return false;
        }
        *(const char **)dst = json_object_get_string(v);
        return true;
    case VJ_INT64:
        if (!json_object_is_type(v, json_type_int)) {
            return false;
        }
        *(int64_t *)dst = json_object_get_int64(v);
        return true;
    case VJ_UINT64:
        if (!json_object_is_type(v, json_type_int)) {
            return false;
        }
        if (json_object_get_int64(v) < 0) {
            /* json-c keeps values above INT64_MAX as unsigned */
            uint64_t u = json_object_get_uint64(v);
            if (u <= (uint64_t)INT64_MAX) {
                return false;
            }
            *(uint64_t *)dst = u;
            return true;
        }
        *(uint64_t *)dst = (uint64_t)json_object_get_int64(v);
        return true;
    case VJ_DOUBLE:
        if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) {
            return false;
        }
        *(double *)dst = json_object_get_double(v);
        return true;
    case VJ_BOOL:
        if (!json_object_is_type(v, json_type_boolean)) {
            return false;
        }
        *(bool *)dst = json_object_get_boolean(v);
        return true;
    case VJ_OBJECT:
    case VJ_ARRAY:
        if (!json_object_is_type(v, f->type == VJ_OBJECT ? json_type_object : json_type_array)) {
            return false;
        }
        *(json_object **)dst = v;
        return true;
    }
    return false;
}

bool vmig_json_read(json_object *obj, const vmig_jfield *fields, void *base, const char *what,
                    vmig_error **errp)
{
    if (!json_object_is_type(obj, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s: the reply is not an object", what);
        return false;
    }
    for (const vmig_jfield *f = fields; f->name; f++) {
        json_object *v = NULL;
        if (!json_object_object_get_ex(obj, f->name, &v) || !v) {
            if (f->flags & VJ_MANDATORY) {
                vmig_set_error(errp, VMIG_E_PROTO, "%s: '%s' is missing", what, f->name);
                return false;
            }
            continue;
        }
        if (!store(v, f, (char *)base + f->offset)) {
            vmig_set_error(errp, VMIG_E_PROTO, "%s: '%s' is not %s", what, f->name,
                           type_words[f->type]);
            return false;
        }
    }
    return true;
}
