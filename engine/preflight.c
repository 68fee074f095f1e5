/*
 * Pre-flight checks on the QEMUs at both ends, before anything starts:
 *   - versions: QEMU migrates to the same or a newer version, never to an older one, and
 *     between different versions only with a versioned machine type (pc-i440fx-7.2), because
 *     an alias such as "pc" names a different machine on each side;
 *   - known data loss: QEMU before 9.0 under TCG loses guest writes in live migration (the
 *     dirty bitmap sync does not reset TCG's TLB notdirty flags; fixed by commit 03bfc2188f).
 * The decisions are pure functions of what the QEMUs reported, so unit tests drive them with
 * recorded replies; migrate.c feeds them from query-version, query-kvm and query-machines.
 */
#include <stdio.h>
#include <string.h>

#include "engine.h"

#define TCG_SAFE_VERSION 90000 /* QEMU 9.0 */

int eng_qemu_version_code(const eng_qemu_version *v)
{
    return v->major * 10000 + v->minor * 100 + v->micro;
}

const char *eng_qemu_version_str(const eng_qemu_version *v, char *buf, size_t len)
{
    g_snprintf(buf, len, "%d.%d.%d", v->major, v->minor, v->micro);
    return buf;
}

/* A non-negative number below 10000 at @key of @obj. */
static bool version_part(json_object *obj, const char *key, int *ret, vmig_error **errp)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(obj, key, &v) || !json_object_is_type(v, json_type_int) ||
        json_object_get_int64(v) < 0 || json_object_get_int64(v) > 9999) {
        vmig_set_error(errp, VMIG_E_PROTO,
                       "query-version: 'qemu.%s' is not a number from 0 "
                       "to 9999",
                       key);
        return false;
    }
    *ret = (int)json_object_get_int64(v);
    return true;
}

bool eng_qemu_version_parse(json_object *reply, eng_qemu_version *ret, vmig_error **errp)
{
    json_object *qemu = NULL, *pkg = NULL;
    eng_qemu_version v = {0};
    if (!json_object_is_type(reply, json_type_object) ||
        !json_object_object_get_ex(reply, "qemu", &qemu) ||
        !json_object_is_type(qemu, json_type_object)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-version: no 'qemu' object in the reply");
        return false;
    }
    if (!version_part(qemu, "major", &v.major, errp) ||
        !version_part(qemu, "minor", &v.minor, errp) ||
        !version_part(qemu, "micro", &v.micro, errp)) {
        return false;
    }
    if (json_object_object_get_ex(reply, "package", &pkg) &&
        json_object_is_type(pkg, json_type_string)) {
        g_strlcpy(v.package, json_object_get_string(pkg), sizeof(v.package));
    }
    *ret = v;
    return true;
}

bool eng_qemu_version_query(qmp_conn *c, eng_qemu_version *ret, vmig_error **errp)
{
    g_autoptr(json_object) r = qmp_conn_call(c, "query-version", NULL, 0, ENG_QMP_TIMEOUT_MS, errp);
    return r && eng_qemu_version_parse(r, ret, errp);
}

bool eng_qemu_tcg_parse(json_object *reply, bool *ret, vmig_error **errp)
{
    bool enabled = false;
    static const vmig_jfield fields[] = {{"enabled", VJ_BOOL, 0, VJ_MANDATORY}, {NULL}};
    if (!vmig_json_read(reply, fields, &enabled, "query-kvm", errp)) {
        return false;
    }
    *ret = !enabled;
    return true;
}

bool eng_qemu_uses_tcg(qmp_conn *c, bool *ret, vmig_error **errp)
{
    g_autoptr(json_object) r = qmp_conn_call(c, "query-kvm", NULL, 0, ENG_QMP_TIMEOUT_MS, errp);
    return r && eng_qemu_tcg_parse(r, ret, errp);
}

bool eng_machine_is_versioned(const char *machine)
{
    /* QEMU's versioned types end in -MAJOR.MINOR: pc-i440fx-7.2, pc-q35-10.0 */
    const char *dash = strrchr(machine, '-');
    if (!dash || !g_ascii_isdigit(dash[1])) {
        return false;
    }
    const char *p = dash + 1;
    while (g_ascii_isdigit(*p)) {
        p++;
    }
    if (*p++ != '.' || !g_ascii_isdigit(*p)) {
        return false;
    }
    while (g_ascii_isdigit(*p)) {
        p++;
    }
    return *p == '\0';
}

char *eng_machine_resolve(json_object *machines, const char *machine)
{
    if (!json_object_is_type(machines, json_type_array)) {
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(machines); i++) {
        json_object *m = json_object_array_get_idx(machines, i), *name = NULL, *alias = NULL;
        if (!json_object_is_type(m, json_type_object) ||
            !json_object_object_get_ex(m, "name", &name) ||
            !json_object_is_type(name, json_type_string)) {
            continue;
        }
        if (strcmp(json_object_get_string(name), machine) == 0 ||
            (json_object_object_get_ex(m, "alias", &alias) &&
             json_object_is_type(alias, json_type_string) &&
             strcmp(json_object_get_string(alias), machine) == 0)) {
            return g_strdup(json_object_get_string(name));
        }
    }
    return NULL;
}

bool eng_preflight_versions(const eng_preflight *p, vmig_error **errp)
{
    char sv[32], dv[32];
    eng_qemu_version_str(&p->src, sv, sizeof(sv));
    eng_qemu_version_str(&p->dst, dv, sizeof(dv));
    /* Stable releases (the micro number) keep the stream format and machine types. */
    bool same_series = p->src.major == p->dst.major && p->src.minor == p->dst.minor;
    if (!same_series && (p->dst.major < p->src.major ||
                         (p->dst.major == p->src.major && p->dst.minor < p->src.minor))) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "cannot migrate VM '%s' from QEMU %s to the older QEMU %s of the "
                       "destination: QEMU migrates only to the same or a newer version",
                       p->vm, sv, dv);
        return false;
    }
    if (!same_series && !eng_machine_is_versioned(p->machine)) {
        g_autofree char *pin = p->src_machine && strcmp(p->src_machine, p->machine) != 0
                                   ? g_strdup_printf("\"%s\", which is what '%s' means on "
                                                     "QEMU %s",
                                                     p->src_machine, p->machine, sv)
                                   : g_strdup_printf("\"pc-i440fx-%d.%d\"", p->src.major,
                                                     p->src.minor);
        vmig_set_error(errp, VMIG_E_STATE,
                       "VM '%s' has the unversioned machine type '%s', which names a different "
                       "machine on the source's QEMU %s and on the destination's QEMU %s: pin "
                       "the machine type in the VM's spec, for example \"machine\": %s, and "
                       "restart the VM",
                       p->vm, p->machine, sv, dv, pin);
        return false;
    }
    if (p->dst_machine_known == ENG_MACHINE_UNKNOWN) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the destination's QEMU %s has no machine type '%s' "
                       "(VM '%s')",
                       dv, p->machine, p->vm);
        return false;
    }
    return true;
}

bool eng_preflight_tcg(const eng_preflight *p, bool *ret_warn, vmig_error **errp)
{
    *ret_warn = false;
    if (!p->live || !p->src_tcg || eng_qemu_version_code(&p->src) >= TCG_SAFE_VERSION) {
        return true;
    }
    char sv[32];
    eng_qemu_version_str(&p->src, sv, sizeof(sv));
    if (!p->unsafe) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "refusing to migrate VM '%s' live: its QEMU %s runs it under TCG, and "
                       "QEMU before 9.0 under TCG loses guest writes during a live migration "
                       "(its dirty bitmap sync leaves TCG's TLB notdirty flags set; fixed in "
                       "QEMU 9.0 by commit 03bfc2188f).  Migrate without --live (the VM is "
                       "paused while it moves, and nothing is lost), run the VM on QEMU >= 9.0, "
                       "or give --unsafe to migrate live anyway",
                       p->vm, sv);
        return false;
    }
    *ret_warn = true;
    return true;
}
