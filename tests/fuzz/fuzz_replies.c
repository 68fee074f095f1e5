/* libFuzzer: the readers of QEMU's replies in engine/ and cpu/, on any JSON. */
#include <stddef.h>
#include <stdint.h>

#include "common/json.h"
#include "cpu/qemu-reply.h"
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
    eng_qemu_version v;
    bool tcg;
    cpu_def d;
    cpu_featset filtered;
    eng_qemu_version_parse(o, &v, NULL);
    eng_qemu_tcg_parse(o, &tcg, NULL);
    g_free(eng_machine_resolve(o, "pc-i440fx-7.2"));
    g_free(cpu_first_qom_path(o, NULL));
    if (cpu_def_from_expansion(o, &d, NULL)) {
        cpu_def_clear(&d);
    }
    json_object *words = NULL, *filt = NULL, *vendor = NULL, *msrs = NULL;
    if (json_object_is_type(o, json_type_array)) {
        words = json_object_array_get_idx(o, 0);
        filt = json_object_array_get_idx(o, 1);
        vendor = json_object_array_get_idx(o, 2);
        msrs = json_object_array_get_idx(o, 3);
    }
    if (cpu_vm_from_qom(words, filt, vendor, msrs, &d, &filtered, NULL)) {
        cpu_def_clear(&d);
    }
    if (cpu_gate_offer(cpu_expansion_is_host(o), NULL, 0, NULL, o, &d, NULL)) {
        cpu_def_clear(&d);
    }
    /* a QEMU's models as engine/cpu-qemu.c reads them: the names, an expansion (here of one
     * model, from this reply), then the aliases (here of that model only: adding every name
     * would cost each input a quadratic alias lookup) */
    g_strfreev(cpu_definitions_models(o, NULL));
    cpu_models *db = cpu_models_empty();
    cpu_models_add_expansion(db, "IvyBridge-v2", o, NULL);
    cpu_models_add_aliases(db, o, NULL);
    cpu_models_free(db);
    struct {
        const char *s;
        int64_t i;
        uint64_t u;
        double f;
        bool b;
        json_object *obj, *arr;
    } t;
    static const vmig_jfield fields[] = {
        {"status", VJ_STRING, offsetof(typeof(t), s), VJ_MANDATORY},
        {"total-time", VJ_INT64, offsetof(typeof(t), i), 0},
        {"transferred", VJ_UINT64, offsetof(typeof(t), u), 0},
        {"mbps", VJ_DOUBLE, offsetof(typeof(t), f), 0},
        {"running", VJ_BOOL, offsetof(typeof(t), b), 0},
        {"ram", VJ_OBJECT, offsetof(typeof(t), obj), 0},
        {"blocked-reasons", VJ_ARRAY, offsetof(typeof(t), arr), 0},
        {NULL},
    };
    vmig_json_read(o, fields, &t, "fuzz", NULL);
    json_object_put(o);
    return 0;
}
