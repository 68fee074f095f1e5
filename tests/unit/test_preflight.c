/* The pre-flight decisions on QEMU versions, machine types and TCG's write loss, from recorded
 * replies. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <string.h>

#include "engine/engine.h"

static eng_qemu_version ver(int major, int minor, int micro)
{
    return (eng_qemu_version){.major = major, .minor = minor, .micro = micro};
}

static json_object *parse(const char *text)
{
    json_object *o = json_tokener_parse(text);
    cr_assert_not_null(o, "bad test JSON: %s", text);
    return o;
}

Test(preflight, query_version_is_type_checked)
{
    g_autoptr(json_object) good = parse("{\"qemu\": {\"major\": 10, \"minor\": 0, \"micro\": 2},"
                                        " \"package\": \"Debian 1:10.0.2\"}");
    eng_qemu_version v;
    cr_assert(eng_qemu_version_parse(good, &v, NULL));
    cr_assert(eq(int, eng_qemu_version_code(&v), 100002));
    cr_assert(eq(str, v.package, "Debian 1:10.0.2"));

    const char *bad[] = {
        "[]",
        "{}",
        "{\"qemu\": null}",
        "{\"qemu\": []}",
        "{\"qemu\": {\"major\": \"10\", \"minor\": 0, \"micro\": 2}}",
        "{\"qemu\": {\"major\": 10, \"minor\": null, \"micro\": 2}}",
        "{\"qemu\": {\"major\": 10, \"minor\": 0}}",
        "{\"qemu\": {\"major\": 2147483647, \"minor\": 0, \"micro\": 0}}",
        "{\"qemu\": {\"major\": -1, \"minor\": 0, \"micro\": 0}}",
        "{\"qemu\": {\"major\": 10.5, \"minor\": 0, \"micro\": 0}}",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(json_object) o = parse(bad[i]);
        vmig_error *err = NULL;
        cr_expect(not(eng_qemu_version_parse(o, &v, &err)), "accepted %s", bad[i]);
        cr_expect_not_null(strstr(vmig_error_message(err), "query-version"), "%s", bad[i]);
        vmig_error_free(err);
    }
    /* a package that is not a string is left out, not trusted */
    g_autoptr(json_object) odd = parse("{\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 22},"
                                       " \"package\": 5}");
    cr_assert(eng_qemu_version_parse(odd, &v, NULL));
    cr_assert(eq(str, v.package, ""));
}

Test(preflight, versioned_machine_types)
{
    const char *versioned[] = {"pc-i440fx-7.2", "pc-q35-10.0", "pc-i440fx-2.12", "virt-9.1"};
    const char *aliases[] = {"pc",        "q35",       "pc-i440fx", "microvm",     "isapc", "none",
                             "pc-q35-10", "pc-q35-.1", "pc-q35-1.", "pc-q35-1.2x", ""};
    for (size_t i = 0; i < G_N_ELEMENTS(versioned); i++) {
        cr_expect(eng_machine_is_versioned(versioned[i]), "%s", versioned[i]);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(aliases); i++) {
        cr_expect(not(eng_machine_is_versioned(aliases[i])), "%s", aliases[i]);
    }
}

Test(preflight, machine_aliases_resolve_from_query_machines)
{
    /* abridged from QEMU 7.2's reply, with entries a hostile peer might send */
    g_autoptr(json_object) m = parse(
        "[null, 5, {\"name\": 3}, {\"name\": \"pc-q35-7.2\", \"alias\": \"q35\"},"
        " {\"name\": \"pc-i440fx-7.2\", \"alias\": \"pc\", \"is-default\": true},"
        " {\"name\": \"pc-i440fx-7.1\", \"alias\": null}]");
    g_autofree char *pc = eng_machine_resolve(m, "pc");
    g_autofree char *q35 = eng_machine_resolve(m, "q35");
    g_autofree char *pinned = eng_machine_resolve(m, "pc-i440fx-7.1");
    g_autofree char *none = eng_machine_resolve(m, "pc-i440fx-6.0");
    cr_assert(eq(str, pc, "pc-i440fx-7.2"));
    cr_assert(eq(str, q35, "pc-q35-7.2"));
    cr_assert(eq(str, pinned, "pc-i440fx-7.1"));
    cr_assert_null(none);
    g_autoptr(json_object) obj = parse("{\"name\": \"pc\"}");
    cr_assert_null(eng_machine_resolve(obj, "pc"), "a reply that is not an array has none");
}

static eng_preflight base(void)
{
    return (eng_preflight){.vm = "vm1",
                           .src = ver(7, 2, 22),
                           .dst = ver(10, 0, 2),
                           .machine = "pc-i440fx-7.2",
                           .src_machine = "pc-i440fx-7.2",
                           .dst_machine_known = ENG_MACHINE_KNOWN,
                           .live = true,
                           .src_tcg = true};
}

static void expect_refusal(const eng_preflight *p, const char *const *needles)
{
    vmig_error *err = NULL;
    cr_assert(not(eng_preflight_versions(p, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_STATE));
    for (const char *const *n = needles; *n; n++) {
        cr_expect_not_null(strstr(vmig_error_message(err), *n), "'%s' not in: %s", *n,
                           vmig_error_message(err));
    }
    vmig_error_free(err);
}

Test(preflight, versions)
{
    eng_preflight p = base();
    cr_assert(eng_preflight_versions(&p, NULL), "older to newer, pinned machine");
    p.dst = ver(7, 2, 1);
    cr_assert(eng_preflight_versions(&p, NULL), "stable releases of one series mix");

    p = base();
    p.src = ver(10, 0, 2);
    p.dst = ver(7, 2, 22);
    const char *const older[] = {"VM 'vm1'", "from QEMU 10.0.2", "older QEMU 7.2.22", NULL};
    expect_refusal(&p, older);
    p.dst = ver(9, 2, 0);
    expect_refusal(&p, (const char *const[]){"older QEMU 9.2.0", NULL});

    p = base();
    p.machine = "pc";
    const char *const alias[] = {"unversioned machine type 'pc'", "QEMU 7.2.22", "QEMU 10.0.2",
                                 "\"pc-i440fx-7.2\", which is what 'pc' means on QEMU 7.2.22",
                                 NULL};
    expect_refusal(&p, alias);
    p.src_machine = NULL; /* the source could not say: a generic example */
    expect_refusal(&p, (const char *const[]){"\"pc-i440fx-7.2\"", NULL});
    p.dst = ver(7, 2, 5);
    cr_assert(eng_preflight_versions(&p, NULL), "an alias is fine within one series");

    p = base();
    p.dst_machine_known = ENG_MACHINE_UNKNOWN;
    expect_refusal(&p,
                   (const char *const[]){"QEMU 10.0.2 has no machine type 'pc-i440fx-7.2'", NULL});
    p.dst_machine_known = ENG_MACHINE_UNCHECKED;
    cr_assert(eng_preflight_versions(&p, NULL));
}

Test(preflight, tcg_write_loss)
{
    eng_preflight p = base();
    bool warn = true;
    vmig_error *err = NULL;
    cr_assert(not(eng_preflight_tcg(&p, &warn, &err)));
    const char *msg = vmig_error_message(err);
    const char *const needles[] = {"VM 'vm1'",   "QEMU 7.2.22",    "TCG",      "QEMU 9.0",
                                   "03bfc2188f", "without --live", "--unsafe", NULL};
    for (const char *const *n = needles; *n; n++) {
        cr_expect_not_null(strstr(msg, *n), "'%s' not in: %s", *n, msg);
    }
    vmig_error_free(err);

    p.unsafe = true;
    cr_assert(eng_preflight_tcg(&p, &warn, NULL));
    cr_assert(warn, "--unsafe goes ahead, with a warning");

    const struct {
        eng_qemu_version src;
        bool live, tcg;
    } allowed[] = {
        {{8, 2, 0}, false, true},  /* paused: the guest writes nothing */
        {{7, 2, 22}, true, false}, /* KVM tracks dirty pages itself */
        {{9, 0, 0}, true, true},   /* fixed */
        {{10, 0, 2}, true, true},
    };
    for (size_t i = 0; i < G_N_ELEMENTS(allowed); i++) {
        p = base();
        p.src = allowed[i].src;
        p.live = allowed[i].live;
        p.src_tcg = allowed[i].tcg;
        cr_expect(eng_preflight_tcg(&p, &warn, NULL), "case %zu", i);
        cr_expect(not(warn), "case %zu", i);
    }
}
