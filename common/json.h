/* json-c with GLib's automatic cleanup. */
#ifndef VMIG_COMMON_JSON_H
#define VMIG_COMMON_JSON_H

#include <glib.h>
#include <json-c/json.h>

G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_object, json_object_put)

#endif
