/* libFuzzer: QMP framing and JSON, fed in two reads split where the input says. */
#include <stddef.h>
#include <stdint.h>

#include "qmp/qmp.h"

static void on_msg(void *opaque, json_object *msg)
{
    (*(int *)opaque) += json_object_is_type(msg, json_type_object);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a small message limit, so the fuzzer reaches it */
    qmp_parser *p = qmp_parser_new(4096, 0);
    size_t cut = size ? data[0] % size : 0;
    int n = 0;
    if (qmp_parser_feed(p, (const char *)data, cut, on_msg, &n, NULL) >= 0) {
        qmp_parser_feed(p, (const char *)data + cut, size - cut, on_msg, &n, NULL);
    }
    qmp_parser_free(p);
    return 0;
}
