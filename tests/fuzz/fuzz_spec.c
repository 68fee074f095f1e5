/* libFuzzer: the VM spec reader, and the QEMU command line a spec it accepts becomes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = g_strndup((const char *)data, size);
    vmig_spec *s = vmig_spec_parse(text, NULL);
    if (s) {
        char *json = vmig_spec_to_json(s);
        free(json);
        eng_launch l = {.qemu = "qemu", .dir = "/run/vmig/x", .incoming = data[0] & 1};
        GPtrArray *argv = eng_spec_argv(s, &l);
        g_ptr_array_free(argv, TRUE);
        vmig_spec_free(s);
    }
    g_free(text);
    return 0;
}
