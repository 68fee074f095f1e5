/*
 * The QMP reply readers of cpu/qemu-reply.h: replies recorded from real QEMUs
 * (tests/data/qmp/VERSION/) must read as that QEMU meant them, and hostile ones (nulls, wrong
 * types, objects for arrays, huge numbers) must give an error that names the field, never a
 * crash.  Every node of each recorded reply is also replaced in turn by hostile values.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <glib.h>
#include <string.h>

#include "common/error.h"
#include "common/json.h"
#include "cpu/qemu-reply.h"

static const char *const versions[] = {"10.0.2", "7.2.22"};

static json_object *recorded(const char *version, const char *name)
{
    g_autofree char *here = g_path_get_dirname(__FILE__);
    g_autofree char *path = g_build_filename(here, "..", "data", "qmp", version, name, NULL);
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL), "cannot read %s", path);
    json_object *o = json_tokener_parse(text);
    cr_assert_not_null(o, "%s is not JSON", path);
    return o;
}

static json_object *parse(const char *text)
{
    enum json_tokener_error jerr;
    json_object *o = json_tokener_parse_verbose(text, &jerr);
    cr_assert(jerr == json_tokener_success, "bad test JSON: %s", text);
    return o; /* NULL for "null" */
}

static int feature(const char *name)
{
    int f = cpu_feature_index(name);
    cr_assert(f >= 0, "%s", name);
    return f;
}

/* Checks and frees *@errp. */
static void expect_error(vmig_error **errp, vmig_errc code, const char *mention, const char *input)
{
    g_autoptr(vmig_error) err = g_steal_pointer(errp);
    cr_assert_not_null(err, "accepted: %s", input);
    cr_assert(eq(int, vmig_error_code(err), code), "%s: %s", input, vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), mention), "'%s' does not name '%s' (%s)",
                       vmig_error_message(err), mention, input);
}

/* ---- recorded replies ------------------------------------------------------------------------ */

typedef struct vm_replies {
    json_object *cpus, *words, *filtered, *vendor, *msrs;
} vm_replies;

static void vm_replies_load(vm_replies *r, const char *version)
{
    r->cpus = recorded(version, "query-cpus-fast.json");
    r->words = recorded(version, "qom-get-feature-words.json");
    r->filtered = recorded(version, "qom-get-filtered-features.json");
    r->vendor = recorded(version, "qom-get-vendor.json");
    r->msrs = recorded(version, "msrs.json");
}

static void vm_replies_clear(vm_replies *r)
{
    json_object_put(r->cpus);
    json_object_put(r->words);
    json_object_put(r->filtered);
    json_object_put(r->vendor);
    json_object_put(r->msrs);
}

Test(cpu_qemu_recorded, vm_cpu)
{
    for (size_t v = 0; v < G_N_ELEMENTS(versions); v++) {
        vm_replies r;
        vm_replies_load(&r, versions[v]);
        vmig_error *err = NULL;
        g_autofree char *path = cpu_first_qom_path(r.cpus, &err);
        cr_assert_not_null(path, "%s", err ? vmig_error_message(err) : "");
        cr_assert(eq(str, path, "/machine/unattached/device[0]"));

        cpu_def d;
        cpu_featset filtered;
        cr_assert(cpu_vm_from_qom(r.words, r.filtered, r.vendor, r.msrs, &d, &filtered, &err),
                  "%s: %s", versions[v], err ? vmig_error_message(err) : "");
        cr_assert(eq(str, d.vendor, "GenuineIntel"));
        cr_assert_null(d.model_name);
        cr_assert(eq(int, d.family, -1));
        /* Skylake-Client under TCG: QEMU warned that it filtered these */
        const char *const gone[] = {"pcid", "tsc-deadline", "hle", "invpcid"};
        for (size_t i = 0; i < G_N_ELEMENTS(gone); i++) {
            cr_assert(cpu_featset_has(&filtered, feature(gone[i])), "%s: %s", versions[v], gone[i]);
            cr_assert(not(cpu_featset_has(&d.require, feature(gone[i]))));
        }
        const char *const kept[] = {"sse2",       "sse4.2", "popcnt",  "aes", "xsave",
                                    "hypervisor", "lm",     "syscall", "nx"};
        for (size_t i = 0; i < G_N_ELEMENTS(kept); i++) {
            cr_assert(cpu_featset_has(&d.require, feature(kept[i])), "%s: %s", versions[v],
                      kept[i]);
        }
        /* everything the model asks for is given or filtered (vme: TCG's default is off) */
        g_autoptr(cpu_models) db = cpu_models_builtin();
        cpu_featset want = cpu_models_find(db, "Skylake-Client-v1")->features;
        cpu_featset_andnot(&want, &d.require);
        cpu_featset_andnot(&want, &filtered);
        cpu_featset_del(&want, feature("vme"));
        g_autofree char *left = cpu_featset_names(&want, false);
        cr_assert(eq(str, left, ""), "%s: neither given nor filtered: %s", versions[v], left);
        vm_replies_clear(&r);
    }
}

Test(cpu_qemu_recorded, msr_features)
{
    const char *const *names = cpu_msr_feature_names();
    size_t n = 0;
    bool rdctl = false;
    for (; names[n]; n++) {
        int f = feature(names[n]);
        cr_assert(eq(int, cpu_feature(f)->kind, CPU_ITEM_MSR), "%s", names[n]);
        rdctl = rdctl || strcmp(names[n], "rdctl-no") == 0;
    }
    cr_assert(n > 5 && rdctl);
    cr_assert(cpu_msr_feature_names() == names, "one static array");

    /* an MSR feature the VM has is added; one whose qom-get failed is simply absent */
    vm_replies r;
    vm_replies_load(&r, versions[0]);
    g_autoptr(json_object) msrs = parse("{\"rdctl-no\": true, \"mds-no\": false}");
    cpu_def d, without;
    cpu_featset filtered;
    cr_assert(cpu_vm_from_qom(r.words, r.filtered, r.vendor, msrs, &d, &filtered, NULL));
    cr_assert(cpu_featset_has(&d.require, feature("rdctl-no")));
    cr_assert(not(cpu_featset_has(&d.require, feature("mds-no"))));
    cr_assert(cpu_vm_from_qom(r.words, r.filtered, r.vendor, NULL, &without, &filtered, NULL));
    cr_assert(not(cpu_featset_has(&without.require, feature("rdctl-no"))));
    vm_replies_clear(&r);
}

Test(cpu_qemu_recorded, host_model_expansion)
{
    for (size_t v = 0; v < G_N_ELEMENTS(versions); v++) {
        g_autoptr(json_object) exp = recorded(versions[v], "expansion-full-max.json");
        vmig_error *err = NULL;
        cpu_def d;
        cr_assert(cpu_def_from_expansion(exp, &d, &err), "%s: %s", versions[v],
                  err ? vmig_error_message(err) : "");
        cr_assert(eq(str, d.vendor, "AuthenticAMD"), "TCG's max is an AMD CPU");
        cr_assert_null(d.model_name);
        cr_assert(eq(int, d.family, -1));
        cr_assert(cpu_featset_has(&d.require, feature("sse2")));
        cr_assert(cpu_featset_has(&d.require, feature("svm")));
        cr_assert(cpu_featset_empty(&d.disable));
        cr_assert(gt(int, cpu_featset_count(&d.require), 60), "%s", versions[v]);
    }
}

Test(cpu_qemu_recorded, models_and_aliases)
{
    for (size_t v = 0; v < G_N_ELEMENTS(versions); v++) {
        g_autoptr(json_object) defs = recorded(versions[v], "query-cpu-definitions.json");
        vmig_error *err = NULL;
        g_auto(GStrv) names = cpu_definitions_models(defs, &err);
        cr_assert_not_null(names, "%s", err ? vmig_error_message(err) : "");
        cr_assert(g_strv_contains((const char *const *)names, "IvyBridge-v2"));
        cr_assert(g_strv_contains((const char *const *)names, "qemu64-v1"));
        const char *const absent[] = {"IvyBridge-IBRS", "IvyBridge", "qemu64",
                                      "host",           "max",       "base"};
        for (size_t i = 0; i < G_N_ELEMENTS(absent); i++) {
            cr_assert(not(g_strv_contains((const char *const *)names, absent[i])), "%s", absent[i]);
        }
        cr_assert(gt(uint, g_strv_length(names), 50));

        /* the models recorded, with the aliases of the whole reply */
        g_autoptr(cpu_models) db = cpu_models_empty();
        const char *const some[] = {"qemu64-v1", "IvyBridge-v1", "IvyBridge-v2"};
        for (size_t i = 0; i < G_N_ELEMENTS(some); i++) {
            g_autofree char *file = g_strdup_printf("expansion-static-%s.json", some[i]);
            g_autoptr(json_object) exp = recorded(versions[v], file);
            cr_assert(cpu_models_add_expansion(db, some[i], exp, &err), "%s",
                      err ? vmig_error_message(err) : "");
        }
        cr_assert(cpu_models_add_aliases(db, defs, &err));
        cpu_models_done(db);
        cr_assert(eq(sz, cpu_models_count_get(db), 3));
        const cpu_model *ibrs = cpu_models_find(db, "IvyBridge-IBRS");
        cr_assert_not_null(ibrs);
        cr_assert(eq(str, ibrs->name, "IvyBridge-IBRS"));
        cr_assert(eq(str, ibrs->versioned, "IvyBridge-v2"));
        cr_assert(eq(str, (char *)ibrs->vendor, "GenuineIntel"));
        cr_assert(eq(int, ibrs->family, 6));
        cr_assert(eq(int, ibrs->model, 58));
        cr_assert(cpu_models_find(db, "IvyBridge") == cpu_models_find(db, "IvyBridge-v1"));

        /* the built-in table is QEMU 7.2's TCG expansion plus vme where KVM has it */
        g_autoptr(cpu_models) builtin = cpu_models_builtin();
        cpu_featset ours = cpu_models_find(builtin, "IvyBridge-IBRS")->features;
        cpu_featset_del(&ours, feature("vme"));
        cr_assert(cpu_featset_subset(&ours, &ibrs->features) &&
                      cpu_featset_subset(&ibrs->features, &ours),
                  "%s: IvyBridge-IBRS differs from the built-in table", versions[v]);
    }
}

/* ---- hand-made hostile replies --------------------------------------------------------------- */

typedef enum target {
    T_CPUS,
    T_WORDS,
    T_FILTERED,
    T_VENDOR,
    T_MSRS,
    T_EXPANSION,
    T_DEFINITIONS,
    T_STATIC,
    T_ALIASES,
} target;

/* Runs the reader @t on @reply, the other inputs being good recorded ones.  False on error. */
static bool run(target t, json_object *reply, const vm_replies *good, vmig_error **errp)
{
    cpu_def d;
    cpu_featset f;
    switch (t) {
    case T_CPUS: {
        char *path = cpu_first_qom_path(reply, errp);
        g_free(path);
        return path != NULL;
    }
    case T_WORDS:
        return cpu_vm_from_qom(reply, good->filtered, good->vendor, good->msrs, &d, &f, errp);
    case T_FILTERED:
        return cpu_vm_from_qom(good->words, reply, good->vendor, good->msrs, &d, &f, errp);
    case T_VENDOR:
        return cpu_vm_from_qom(good->words, good->filtered, reply, good->msrs, &d, &f, errp);
    case T_MSRS:
        return cpu_vm_from_qom(good->words, good->filtered, good->vendor, reply, &d, &f, errp);
    case T_EXPANSION:
        return cpu_def_from_expansion(reply, &d, errp);
    case T_DEFINITIONS: {
        char **names = cpu_definitions_models(reply, errp);
        g_strfreev(names);
        return names != NULL;
    }
    case T_STATIC: {
        g_autoptr(cpu_models) db = cpu_models_empty();
        bool ok = cpu_models_add_expansion(db, "M", reply, errp);
        cr_assert(eq(sz, cpu_models_count_get(db), ok ? 1 : 0), "a bad reply adds nothing");
        return ok;
    }
    case T_ALIASES: {
        g_autoptr(cpu_models) db = cpu_models_empty();
        return cpu_models_add_aliases(db, reply, errp);
    }
    }
    return false;
}

typedef struct hostile {
    target t;
    const char *json;
    const char *mention; /* in the error message */
    vmig_errc code;      /* 0: VMIG_E_PROTO */
} hostile;

static const hostile cases[] = {
    {T_CPUS, "{\"qom-path\": \"/machine/x\"}",
     "query-cpus-fast: the reply must be an array, "
     "not object"},
    {T_CPUS, "null", "query-cpus-fast: the reply must be an array, not null"},
    {T_CPUS, "\"cpu\"", "must be an array, not string"},
    {T_CPUS, "[]", "query-cpus-fast: no CPU in the reply"},
    {T_CPUS, "[null]", "query-cpus-fast: CPU 0 must be an object, not null"},
    {T_CPUS, "[[]]", "CPU 0 must be an object, not array"},
    {T_CPUS, "[{}]", "'qom-path' is missing"},
    {T_CPUS, "[{\"qom-path\": null}]", "'qom-path' must be a string, not null"},
    {T_CPUS, "[{\"qom-path\": 7}]", "'qom-path' must be a string, not int"},
    {T_CPUS, "[{\"qom-path\": \"\"}]", "'qom-path' is empty"},
    {T_WORDS, "{}", "qom-get feature-words: the reply must be an array, not object"},
    {T_WORDS, "null", "qom-get feature-words: the reply must be an array, not null"},
    {T_WORDS, "[5]", "qom-get feature-words: word 0 must be an object, not int"},
    {T_WORDS, "[{\"cpuid-register\": null, \"cpuid-input-eax\": 1, \"features\": 1}]",
     "word 0: 'cpuid-register' must be a string, not null"},
    {T_WORDS, "[{\"cpuid-register\": \"EXX\", \"cpuid-input-eax\": 1, \"features\": 1}]",
     "'cpuid-register' is 'EXX', not a register"},
    {T_WORDS, "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 1}]", "'features' is missing"},
    {T_WORDS, "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": -1, \"features\": 1}]",
     "'cpuid-input-eax' must be a number from 0 to 4294967295, not out of range"},
    {T_WORDS, "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 4294967296, \"features\": 1}]",
     "'cpuid-input-eax' must be a number from 0 to 4294967295"},
    {T_WORDS,
     "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 1, "
     "\"features\": 99999999999999999999999999}]",
     "'features' must be a number"},
    {T_WORDS, "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 1, \"features\": 1e999}]",
     "'features' must be a number from 0 to 4294967295, not double"},
    {T_WORDS, "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 1, \"features\": \"1\"}]",
     "'features' must be a number from 0 to 4294967295, not string"},
    {T_WORDS,
     "[{\"cpuid-register\": \"EDX\", \"cpuid-input-eax\": 1, \"cpuid-input-ecx\": null, "
     "\"features\": 1}]",
     "'cpuid-input-ecx' must be a number"},
    {T_FILTERED, "{\"features\": 0}", "qom-get filtered-features: the reply must be an array"},
    {T_FILTERED, "[{\"cpuid-register\": \"EAX\", \"cpuid-input-eax\": 7, \"features\": true}]",
     "qom-get filtered-features: word 0: 'features' must be a number from 0 to 4294967295, not "
     "boolean"},
    {T_VENDOR, "null", "qom-get vendor: the reply must be a string, not null"},
    {T_VENDOR, "{}", "qom-get vendor: the reply must be a string, not object"},
    {T_VENDOR, "\"GenuineIntelGenuineIntel\"", "is not a CPUID vendor"},
    {T_MSRS, "[]", "MSR features: must be an object, not array", VMIG_E_INVAL},
    {T_MSRS, "{\"sse2\": true}", "MSR features: 'sse2' is not one", VMIG_E_INVAL},
    {T_MSRS, "{\"rdctl-no\": null}",
     "qom-get rdctl-no (MSR feature): the reply must be a "
     "boolean, not null"},
    {T_MSRS, "{\"rdctl-no\": \"on\"}",
     "qom-get rdctl-no (MSR feature): the reply must be a "
     "boolean, not string"},
    {T_EXPANSION, "null", "query-cpu-model-expansion: the reply must be an object, not null"},
    {T_EXPANSION, "[]", "query-cpu-model-expansion: the reply must be an object, not array"},
    {T_EXPANSION, "{}", "'model' must be an object, not missing"},
    {T_EXPANSION, "{\"model\": null}", "'model' must be an object, not null"},
    {T_EXPANSION, "{\"model\": {\"name\": \"max\"}}",
     "'model.props' must be an object, not "
     "missing"},
    {T_EXPANSION, "{\"model\": {\"props\": null}}", "'model.props' must be an object, not null"},
    {T_EXPANSION, "{\"model\": {\"props\": [true]}}",
     "'model.props' must be an object, not "
     "array"},
    {T_EXPANSION, "{\"model\": {\"props\": {\"sse2\": \"on\"}}}",
     "feature 'model.props.sse2' must be a boolean, not string"},
    {T_EXPANSION, "{\"model\": {\"props\": {\"lahf_lm\": null}}}",
     "feature 'model.props.lahf_lm' must be a boolean, not null"},
    {T_EXPANSION, "{\"model\": {\"props\": {\"vendor\": null}}}",
     "'model.props.vendor' must be a string, not null"},
    {T_EXPANSION, "{\"model\": {\"props\": {\"vendor\": \"AuthenticAMD-and-more\"}}}",
     "is not a CPUID vendor"},
    {T_DEFINITIONS, "{}", "query-cpu-definitions: the reply must be an array, not object"},
    {T_DEFINITIONS, "null", "query-cpu-definitions: the reply must be an array, not null"},
    {T_DEFINITIONS, "[null]", "query-cpu-definitions: model 0 must be an object, not null"},
    {T_DEFINITIONS, "[{}]", "query-cpu-definitions: model 0: 'name' is missing"},
    {T_DEFINITIONS, "[{\"name\": \"a\"}, {\"name\": null}]",
     "model 1: 'name' must be a string, "
     "not null"},
    {T_DEFINITIONS, "[{\"name\": \"a\", \"alias-of\": 5}]",
     "'alias-of' must be a string, not "
     "int"},
    {T_STATIC, "{\"model\": {\"props\": {\"family\": -1}}}",
     "query-cpu-model-expansion of M: 'model.props': 'family' must be a number from 0 to 65535"},
    {T_STATIC, "{\"model\": {\"props\": {\"model\": \"58\"}}}",
     "'model' must be a number from 0 to 65535, not string"},
    {T_STATIC, "{\"model\": {\"props\": {\"stepping\": 1e3}}}", "'stepping' must be a number"},
    {T_STATIC, "{\"model\": {\"props\": {\"stepping\": 99999999999}}}",
     "'stepping' must be a number from 0 to 65535, not out of range"},
    {T_STATIC, "{\"model\": {\"props\": {\"vme\": 1}}}",
     "of M: feature 'model.props.vme' must "
     "be a boolean, not int"},
    {T_STATIC, "{\"model\": []}", "query-cpu-model-expansion of M: 'model' must be an object"},
    {T_ALIASES, "{\"name\": \"x\"}", "query-cpu-definitions: the reply must be an array"},
    {T_ALIASES, "[{\"name\": \"IvyBridge\", \"alias-of\": null}]",
     "'alias-of' must be a string, not null"},
};

Test(cpu_qemu_hostile, named_errors_never_crashes)
{
    vm_replies good;
    vm_replies_load(&good, versions[0]);
    for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
        const hostile *h = &cases[i];
        g_autoptr(json_object) reply = parse(h->json);
        vmig_error *err = NULL;
        cr_assert(not(run(h->t, reply, &good, &err)), "accepted: %s", h->json);
        expect_error(&err, h->code ? h->code : VMIG_E_PROTO, h->mention, h->json);
    }
    vm_replies_clear(&good);
}

Test(cpu_qemu_hostile, too_many_models)
{
    GString *s = g_string_new("[");
    for (int i = 0; i < 1025; i++) {
        g_string_append_printf(s, "%s{\"name\": \"m%d\"}", i ? "," : "", i);
    }
    g_string_append(s, "]");
    g_autoptr(json_object) defs = parse(s->str);
    g_string_free(s, TRUE);
    vmig_error *err = NULL;
    cr_assert_null(cpu_definitions_models(defs, &err));
    expect_error(&err, VMIG_E_PROTO, "query-cpu-definitions: 1025 models, more than 1024", "");
    g_autoptr(cpu_models) db = cpu_models_empty();
    cr_assert(not(cpu_models_add_aliases(db, defs, &err)));
    expect_error(&err, VMIG_E_PROTO, "more than 1024", "");
}

/* ---- every node of every recorded reply, replaced by something hostile ----------------------- */

static const char *const poison[] = {"null",   "{}",           "[]",   "\"x\"",
                                     "-1",     "1e999",        "true", "99999999999999999999999",
                                     "[null]", "{\"a\": null}"};

/* Puts @with (stolen) in place of the @k-th node (pre-order) of @o; @ret_old receives that
 * node (a reference the caller owns; NULL for a JSON null).  False when @o has fewer nodes.
 * @k counts down. */
static bool swap_node(json_object *o, long *k, json_object *with, json_object **ret_old)
{
    if (json_object_is_type(o, json_type_object)) {
        json_object_object_foreach(o, key, val)
        {
            if ((*k)-- == 0) {
                *ret_old = json_object_get(val);
                json_object_object_add(o, key, with);
                return true;
            }
            if (swap_node(val, k, with, ret_old)) {
                return true;
            }
        }
    } else if (json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o); i++) {
            json_object *val = json_object_array_get_idx(o, i);
            if ((*k)-- == 0) {
                *ret_old = json_object_get(val);
                json_object_array_put_idx(o, i, with);
                return true;
            }
            if (swap_node(val, k, with, ret_old)) {
                return true;
            }
        }
    }
    return false;
}

/* Each node of @reply replaced in turn by each poison: @t must accept it, or fail with an
 * error that names @cmd.  @reply is restored after each run. */
static long poison_all(target t, json_object *reply, const vm_replies *good, const char *cmd)
{
    long runs = 0;
    for (long node = -1;; node++) {
        for (size_t p = 0; p < G_N_ELEMENTS(poison); p++) {
            json_object *with = parse(poison[p]), *old = NULL, *input = reply;
            long k = node;
            if (node < 0) {
                input = with; /* the whole reply */
            } else if (!swap_node(reply, &k, with, &old)) {
                json_object_put(with);
                return runs;
            }
            vmig_error *err = NULL;
            if (!run(t, input, good, &err)) {
                cr_assert_not_null(err, "failed without an error");
                cr_assert_not_null(strstr(vmig_error_message(err), cmd), "%s",
                                   vmig_error_message(err));
                vmig_error_free(err);
            }
            if (node < 0) {
                json_object_put(with);
            } else {
                json_object *poisoned = NULL;
                k = node;
                cr_assert(swap_node(reply, &k, old, &poisoned));
                json_object_put(poisoned);
            }
            runs++;
        }
    }
}

Test(cpu_qemu_hostile, every_node_poisoned, .timeout = 120)
{
    for (size_t v = 0; v < G_N_ELEMENTS(versions); v++) {
        vm_replies good;
        vm_replies_load(&good, versions[v]);
        g_autoptr(json_object) full = recorded(versions[v], "expansion-full-max.json");
        g_autoptr(json_object) stat = recorded(versions[v], "expansion-static-IvyBridge-v2.json");
        g_autoptr(json_object) defs = recorded(versions[v], "query-cpu-definitions.json");
        long runs = poison_all(T_CPUS, good.cpus, &good, "query-cpus-fast") +
                    poison_all(T_WORDS, good.words, &good, "qom-get feature-words") +
                    poison_all(T_FILTERED, good.filtered, &good, "qom-get filtered-features") +
                    poison_all(T_VENDOR, good.vendor, &good, "qom-get vendor") +
                    poison_all(T_MSRS, good.msrs, &good, "MSR feature") +
                    poison_all(T_EXPANSION, full, &good, "query-cpu-model-expansion") +
                    poison_all(T_STATIC, stat, &good, "query-cpu-model-expansion of M") +
                    poison_all(T_DEFINITIONS, defs, &good, "query-cpu-definitions") +
                    poison_all(T_ALIASES, defs, &good, "query-cpu-definitions");
        cr_assert(gt(long, runs, 10000), "%ld", runs);
        vm_replies_clear(&good);
    }
}

/* ---- the migration gate (issue 10, item 4) --------------------------------------------------- */

/* A VM started with -cpu EPYC under TCG (QEMU 10.0.2): AMD, what TCG filtered removed. */
static cpu_def epyc_vm(void)
{
    vm_replies r;
    vm_replies_load(&r, "10.0.2/vm-EPYC");
    cpu_def vm;
    cpu_featset filtered;
    vmig_error *err = NULL;
    cr_assert(cpu_vm_from_qom(r.words, r.filtered, r.vendor, r.msrs, &vm, &filtered, &err), "%s",
              err ? vmig_error_message(err) : "");
    cr_assert(eq(str, vm.vendor, "AuthenticAMD"));
    cr_assert(cpu_featset_has(&filtered, feature("xsavec")), "TCG filtered xsavec");
    cr_assert(cpu_featset_has(&vm.require, feature("svm")));
    vm_replies_clear(&r);
    return vm;
}

static char *cpudata_file(const char *rel, gsize *len)
{
    const char *dir = getenv("VMIG_CPUDATA");
    cr_assert_not_null(dir, "VMIG_CPUDATA is not set");
    g_autofree char *path = g_build_filename(dir, rel, NULL);
    char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, len, NULL), "%s", path);
    return text;
}

/* The destination's offer under @kvm from host file @rel (NULL: none) and @expansion. */
static cpu_def offer(bool kvm, const char *rel, json_object *expansion)
{
    gsize len = 0;
    g_autofree char *text = rel ? cpudata_file(rel, &len) : NULL;
    cpu_def d;
    vmig_error *err = NULL;
    cr_assert(cpu_gate_offer(kvm, text, len, rel, expansion, &d, &err), "%s",
              err ? vmig_error_message(err) : "");
    cr_assert_null(d.model_name);
    return d;
}

Test(cpu_gate, kvm_refuses_an_amd_vm_on_an_intel_host)
{
    cpu_def vm = epyc_vm();
    static const char *const intel[] = {"libvirt/x86_64-cpuid-Core-i7-8550U-host.xml",
                                        "libvirt/x86_64-cpuid-Core-i7-8550U.xml"};
    for (size_t i = 0; i < G_N_ELEMENTS(intel); i++) {
        cpu_def host = offer(true, intel[i], NULL);
        cr_assert(eq(str, host.vendor, "GenuineIntel"));
        cr_assert(not(cpu_featset_has(&host.require, feature("ds"))),
                  "a host CPU offers what KVM gives on it, not its raw bits");
        cpu_featset missing;
        char *why = NULL;
        vmig_error *err = NULL;
        cr_assert(eq(int, cpu_gate_check(&vm, &host, &missing, &why, &err), CPU_CMP_INCOMPATIBLE),
                  "%s", intel[i]);
        cr_assert(eq(str, why, "the guest CPU is AuthenticAMD, the host is GenuineIntel"));
        g_free(why);
    }
}

Test(cpu_gate, tcg_offers_what_tcg_emulates_whatever_the_host)
{
    g_autoptr(json_object) max = recorded("10.0.2", "expansion-full-max.json");
    cr_assert(not(cpu_expansion_is_host(max)));
    /* the Intel host file is there, and does not decide */
    cpu_def host = offer(false, "libvirt/x86_64-cpuid-Core-i7-8550U-host.xml", max);
    cr_assert(eq(str, host.vendor, ""), "TCG presents any vendor string");
    cr_assert(cpu_featset_has(&host.require, feature("svm")), "max's features, not the file's");
    cpu_def vm = epyc_vm();
    cpu_featset missing;
    char *why = NULL;
    int r = (int)cpu_gate_check(&vm, &host, &missing, &why, NULL);
    cr_assert(ne(int, r, CPU_CMP_INCOMPATIBLE), "%s", why ? why : "");
    /* an Intel model runs under TCG too, though TCG's max calls itself AMD */
    vm_replies sk;
    vm_replies_load(&sk, "10.0.2");
    cpu_def skylake;
    cpu_featset filtered;
    cr_assert(
        cpu_vm_from_qom(sk.words, sk.filtered, sk.vendor, sk.msrs, &skylake, &filtered, NULL));
    r = (int)cpu_gate_check(&skylake, &host, &missing, &why, NULL);
    cr_assert(ne(int, r, CPU_CMP_INCOMPATIBLE), "%s", why ? why : "");
    vm_replies_clear(&sk);
}

Test(cpu_gate, kvm_host_file_stands_for_the_host_model)
{
    cpu_def vm = epyc_vm();
    cpu_featset missing;
    char *why = NULL;
    /* the raw EPYC 7502: KVM never gives monitor, which the VM's EPYC model has */
    cpu_def rome = offer(true, "libvirt/x86_64-cpuid-EPYC-7502-32-Core.xml", NULL);
    cr_assert(eq(int, cpu_gate_check(&vm, &rome, &missing, &why, NULL), CPU_CMP_INCOMPATIBLE));
    cr_assert(eq(str, why, "the host CPU lacks: monitor"), "%s", why);
    g_free(why);
    /* a host model file (domcapabilities) is taken as it is */
    cpu_def json = offer(true, "libvirt/x86_64-cpuid-EPYC-7502-32-Core-json.xml", NULL);
    cr_assert(eq(str, json.vendor, "AuthenticAMD"));
    cr_assert(cpu_featset_has(&json.require, feature("hypervisor")));
    /* under KVM without a file, the expansion of host */
    g_autoptr(json_object) host = parse("{\"model\": {\"name\": \"host\", \"props\": "
                                        "{\"vendor\": \"AuthenticAMD\", \"sse2\": true}}}");
    cr_assert(cpu_expansion_is_host(host));
    cpu_def h = offer(true, NULL, host);
    cr_assert(eq(str, h.vendor, "AuthenticAMD"), "KVM cannot change the vendor");
    /* a file with several CPUs is not one host */
    gsize len = 0;
    g_autofree char *two = g_strdup("<cpu><model>EPYC</model></cpu><cpu><model>EPYC</model>"
                                    "</cpu>");
    len = strlen(two);
    vmig_error *err = NULL;
    cpu_def d;
    cr_assert(not(cpu_gate_offer(true, two, len, "host-cpu.xml", NULL, &d, &err)));
    expect_error(&err, VMIG_E_INVAL, "host-cpu.xml: 2 CPUs, where a host has one", two);
}
