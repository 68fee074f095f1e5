/* libFuzzer: what storage reads from peers, on any JSON: the source QEMU's query-block and
 * query-block-jobs replies, and the agent's storage requests (storage-check's disks, launch's
 * images to create). */
#include <stddef.h>
#include <stdint.h>

#include "common/json.h"
#include "engine/engine.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20) {
        return 0;
    }
    json_tokener *tok = json_tokener_new_ex(QMP_DEPTH_MAX);
    json_object *o = json_tokener_parse_ex(tok, (const char *)data, (int)size);
    json_tokener_free(tok);
    if (!o) {
        return 0;
    }
    eng_block_info b;
    vmig_error *err = NULL;
    if (eng_block_info_read(o, "disk0", &b, &err)) {
        eng_block_info_clear(&b);
    }
    vmig_error_free(err);
    uint64_t len = 0, off = 0;
    bool ready = false;
    eng_block_job_read(o, "vmig-mirror-disk0", &len, &off, &ready);
    json_object *disks = NULL;
    json_object *arr = json_object_object_get_ex(o, "disks", &disks) ? disks : o;
    for (size_t i = 0;
         json_object_is_type(arr, json_type_array) && i < json_object_array_length(arr); i++) {
        json_object *el = json_object_array_get_idx(arr, i);
        eng_share_check c;
        eng_image_req r;
        err = NULL;
        eng_share_check_read(el, &c, &err);
        vmig_error_free(err);
        err = NULL;
        eng_image_req_read(el, &r, &err);
        vmig_error_free(err);
    }
    json_object_put(o);
    return 0;
}
