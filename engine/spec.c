/*
 * VM specs: a small JSON object that says how to start a VM, read strictly (unknown fields,
 * wrong types and out-of-range values are errors that name the field), and turned into a
 * QEMU command line.
 */
#include <errno.h>
#include <string.h>

#include "engine.h"

#define MEMORY_MIB_MIN 16
#define MEMORY_MIB_MAX (UINT64_C(4) * 1024 * 1024)
#define VCPUS_MAX 255
#define NAME_MAX_LEN 64

static void disk_free(gpointer p)
{
    eng_disk *d = p;
    g_free(d->path);
    g_free(d->format);
    g_free(d->interface);
    g_free(d->cache);
    g_free(d);
}

void vmig_spec_free(vmig_spec *s)
{
    if (!s) {
        return;
    }
    g_free(s->name);
    g_free(s->machine);
    g_free(s->cpu);
    g_free(s->kernel);
    g_free(s->qemu);
    g_free(s->initrd);
    g_free(s->append);
    g_free(s->uuid);
    if (s->disks) {
        g_ptr_array_free(s->disks, TRUE);
    }
    if (s->extra_args) {
        g_ptr_array_free(s->extra_args, TRUE);
    }
    g_free(s);
}

const char *vmig_spec_name(const vmig_spec *s)
{
    return s->name;
}

bool eng_spec_name_valid(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > NAME_MAX_LEN || name[0] == '.' || name[0] == '-') {
        return false;
    }
    if (g_str_has_suffix(name, ENG_INCOMING_SUFFIX)) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!g_ascii_isalnum(*p) && *p != '-' && *p != '_' && *p != '.') {
            return false;
        }
    }
    return true;
}

static vmig_spec *spec_new(void)
{
    vmig_spec *s = g_new0(vmig_spec, 1);
    s->disks = g_ptr_array_new_with_free_func(disk_free);
    s->extra_args = g_ptr_array_new_with_free_func(g_free);
    s->vcpus = 1;
    return s;
}

typedef struct spec_ctx {
    const char *origin;
    const char *base_dir;
    vmig_error **errp;
} spec_ctx;

static bool bad(spec_ctx *x, const char *field, const char *what)
{
    vmig_set_error(x->errp, VMIG_E_INVAL, "%s: field '%s': %s", x->origin, field, what);
    return false;
}

static bool get_string(spec_ctx *x, json_object *v, const char *field, char **ret)
{
    if (!json_object_is_type(v, json_type_string)) {
        return bad(x, field, "must be a string");
    }
    const char *s = json_object_get_string(v);
    if (!*s) {
        return bad(x, field, "must not be empty");
    }
    g_free(*ret);
    *ret = g_strdup(s);
    return true;
}

static bool get_path(spec_ctx *x, json_object *v, const char *field, char **ret)
{
    if (!get_string(x, v, field, ret)) {
        return false;
    }
    if (!g_path_is_absolute(*ret) && x->base_dir) {
        char *abs = g_build_filename(x->base_dir, *ret, NULL);
        g_free(*ret);
        *ret = abs;
    }
    return true;
}

static bool get_uint(spec_ctx *x, json_object *v, const char *field, uint64_t lo, uint64_t hi,
                     uint64_t *ret)
{
    if (!json_object_is_type(v, json_type_int)) {
        return bad(x, field, "must be a whole number");
    }
    int64_t n = json_object_get_int64(v);
    if (n < 0 || (uint64_t)n < lo || (uint64_t)n > hi) {
        g_autofree char *msg = g_strdup_printf(
            "%" G_GINT64_FORMAT " is out of range %" G_GUINT64_FORMAT "-%" G_GUINT64_FORMAT, n, lo,
            hi);
        return bad(x, field, msg);
    }
    *ret = (uint64_t)n;
    return true;
}

/* A word that goes into a QEMU option string as is: letters, digits, '.', '_', '-'.  A comma
 * or '=' would add options of the user's choosing to what vmigrate builds. */
static bool is_word(const char *v)
{
    if (!*v) {
        return false;
    }
    for (; *v; v++) {
        if (!g_ascii_isalnum(*v) && *v != '.' && *v != '_' && *v != '-') {
            return false;
        }
    }
    return true;
}

static bool get_word(spec_ctx *x, json_object *v, const char *field, const char *what, char **ret)
{
    if (!get_string(x, v, field, ret)) {
        return false;
    }
    if (!is_word(*ret)) {
        g_autofree char *msg = g_strdup_printf("'%s' is not %s (letters, digits, '.', '_', "
                                               "'-')",
                                               *ret, what);
        return bad(x, field, msg);
    }
    return true;
}

/* QEMU's cache modes for -drive cache=. */
static bool get_cache(spec_ctx *x, json_object *v, const char *field, char **ret)
{
    static const char *const modes[] = {"none", "writeback", "writethrough", "directsync",
                                        "unsafe"};
    if (!get_string(x, v, field, ret)) {
        return false;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(modes); i++) {
        if (strcmp(*ret, modes[i]) == 0) {
            return true;
        }
    }
    return bad(x, field, "must be one of none, writeback, writethrough, directsync, unsafe");
}

/* -cpu MODEL[,+FEATURE|,-FEATURE...]: the CPU gate and enforce on the destination depend on
 * it saying nothing else ("qemu64,enforce=off" would switch the gate off). */
static bool get_cpu(spec_ctx *x, json_object *v, char **ret)
{
    if (!get_string(x, v, "cpu", ret)) {
        return false;
    }
    g_auto(GStrv) parts = g_strsplit(*ret, ",", -1);
    if (!is_word(parts[0])) {
        return bad(x, "cpu", "must start with a CPU model name (letters, digits, '.', '_', '-')");
    }
    for (int i = 1; parts[i]; i++) {
        const char *f = parts[i];
        if ((f[0] != '+' && f[0] != '-') || !is_word(f + 1)) {
            g_autofree char *msg = g_strdup_printf("'%s': after the model, give features as "
                                                   "+name or -name",
                                                   f);
            return bad(x, "cpu", msg);
        }
        if (!strcmp(f + 1, "enforce") || !strcmp(f + 1, "check")) {
            return bad(x, "cpu",
                       "'enforce' and 'check' are vmigrate's to set: the destination "
                       "always runs with enforce");
        }
    }
    return true;
}

/* Options vmigrate owns: the monitors it talks to, the pid file it reads, how the destination
 * waits, and the VM's identity.  extra_args may not take them over. */
static const char *const owned_options[] = {
    "mon",  "qmp",        "qmp-pretty", "monitor",   "incoming", "pidfile", "daemonize", "name",
    "uuid", "readconfig", "S",          "preconfig", "runas",    "chroot",  "run-with",
};

static bool check_extra_arg(spec_ctx *x, const char *arg, size_t i)
{
    if (arg[0] != '-') {
        return true; /* an option's value */
    }
    const char *opt = arg + (arg[1] == '-' ? 2 : 1);
    size_t len = strcspn(opt, "=");
    for (size_t k = 0; k < G_N_ELEMENTS(owned_options); k++) {
        if (strlen(owned_options[k]) == len && !strncmp(opt, owned_options[k], len)) {
            g_autofree char *f = g_strdup_printf("extra_args[%zu]", i);
            g_autofree char *msg = g_strdup_printf("'%s' is vmigrate's to set (monitors, "
                                                   "incoming, pid file, daemonize, name, uuid)",
                                                   arg);
            return bad(x, f, msg);
        }
    }
    return true;
}

static bool parse_disk(spec_ctx *x, json_object *d, size_t idx, vmig_spec *s)
{
    g_autofree char *field = g_strdup_printf("disks[%zu]", idx);
    if (!json_object_is_type(d, json_type_object)) {
        return bad(x, field, "must be an object with a 'path'");
    }
    eng_disk *disk = g_new0(eng_disk, 1);
    g_ptr_array_add(s->disks, disk);
    json_object_object_foreach(d, key, val)
    {
        g_autofree char *f = g_strdup_printf("%s.%s", field, key);
        bool ok;
        if (strcmp(key, "path") == 0) {
            ok = get_path(x, val, f, &disk->path);
        } else if (strcmp(key, "format") == 0) {
            ok = get_word(x, val, f, "a disk format", &disk->format);
        } else if (strcmp(key, "interface") == 0) {
            ok = get_word(x, val, f, "a disk interface", &disk->interface);
        } else if (strcmp(key, "cache") == 0) {
            ok = get_cache(x, val, f, &disk->cache);
        } else if (strcmp(key, "readonly") == 0) {
            ok = json_object_is_type(val, json_type_boolean) || bad(x, f, "must be true or false");
            disk->readonly = ok && json_object_get_boolean(val);
        } else {
            ok = bad(x, f, "unknown field (path, format, interface, cache, readonly)");
        }
        if (!ok) {
            return false;
        }
    }
    if (!disk->path) {
        return bad(x, field, "has no 'path'");
    }
    return true;
}

static bool parse_array(spec_ctx *x, json_object *v, const char *field, vmig_spec *s)
{
    if (!json_object_is_type(v, json_type_array)) {
        return bad(x, field, "must be an array");
    }
    for (size_t i = 0; i < json_object_array_length(v); i++) {
        json_object *el = json_object_array_get_idx(v, i);
        if (strcmp(field, "disks") == 0) {
            if (!parse_disk(x, el, i, s)) {
                return false;
            }
        } else if (!json_object_is_type(el, json_type_string)) {
            g_autofree char *f = g_strdup_printf("%s[%zu]", field, i);
            return bad(x, f, "must be a string");
        } else if (!check_extra_arg(x, json_object_get_string(el), i)) {
            return false;
        } else {
            g_ptr_array_add(s->extra_args, g_strdup(json_object_get_string(el)));
        }
    }
    return true;
}

static bool parse_field(spec_ctx *x, const char *key, json_object *val, vmig_spec *s)
{
    uint64_t n;
    if (strcmp(key, "name") == 0) {
        if (!get_string(x, val, key, &s->name)) {
            return false;
        }
        return eng_spec_name_valid(s->name) ||
               bad(x, key,
                   "use 1-64 letters, digits, '-', '_' or '.', not starting with '.' "
                   "or '-', not ending in '" ENG_INCOMING_SUFFIX "'");
    }
    if (strcmp(key, "memory_mib") == 0) {
        if (!get_uint(x, val, key, MEMORY_MIB_MIN, MEMORY_MIB_MAX, &n)) {
            return false;
        }
        s->memory_mib = n;
        return true;
    }
    if (strcmp(key, "vcpus") == 0) {
        if (!get_uint(x, val, key, 1, VCPUS_MAX, &n)) {
            return false;
        }
        s->vcpus = (int)n;
        return true;
    }
    if (strcmp(key, "machine") == 0) {
        return get_word(x, val, key, "a machine type name", &s->machine);
    }
    if (strcmp(key, "cpu") == 0) {
        return get_cpu(x, val, &s->cpu);
    }
    if (strcmp(key, "kernel") == 0) {
        return get_path(x, val, key, &s->kernel);
    }
    if (strcmp(key, "qemu") == 0) {
        return get_path(x, val, key, &s->qemu);
    }
    if (strcmp(key, "initrd") == 0) {
        return get_path(x, val, key, &s->initrd);
    }
    if (strcmp(key, "append") == 0) {
        if (!json_object_is_type(val, json_type_string)) {
            return bad(x, key, "must be a string");
        }
        g_free(s->append);
        s->append = g_strdup(json_object_get_string(val));
        return true;
    }
    if (strcmp(key, "uuid") == 0) {
        if (!get_string(x, val, key, &s->uuid)) {
            return false;
        }
        return g_uuid_string_is_valid(s->uuid) || bad(x, key, "is not a UUID");
    }
    if (strcmp(key, "disks") == 0 || strcmp(key, "extra_args") == 0) {
        return parse_array(x, val, key, s);
    }
    return bad(x, key,
               "unknown field (name, memory_mib, vcpus, machine, cpu, kernel, initrd, "
               "append, disks, extra_args, uuid, qemu)");
}

vmig_spec *eng_spec_from_json(json_object *obj, const char *origin, const char *base_dir,
                              vmig_error **errp)
{
    spec_ctx x = {.origin = origin, .base_dir = base_dir, .errp = errp};
    if (!json_object_is_type(obj, json_type_object)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: a VM spec must be a JSON object", origin);
        return NULL;
    }
    g_autoptr(vmig_spec) s = spec_new();
    json_object_object_foreach(obj, key, val)
    {
        if (!parse_field(&x, key, val, s)) {
            return NULL;
        }
    }
    if (!s->name) {
        bad(&x, "name", "is required");
        return NULL;
    }
    if (!s->memory_mib) {
        bad(&x, "memory_mib", "is required");
        return NULL;
    }
    if (!s->kernel && s->disks->len == 0) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: nothing to boot: give 'kernel' or 'disks'", origin);
        return NULL;
    }
    if ((s->initrd || s->append) && !s->kernel) {
        bad(&x, s->initrd ? "initrd" : "append", "needs 'kernel'");
        return NULL;
    }
    if (!s->machine) {
        s->machine = g_strdup("pc");
    }
    if (!s->cpu) {
        s->cpu = g_strdup("qemu64");
    }
    return g_steal_pointer(&s);
}

/* One JSON value and nothing after it but white space; NULL with an error naming @origin. */
static json_object *parse_one(const char *text, size_t len, const char *origin, vmig_error **errp)
{
    if (len > INT32_MAX) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: too large for a VM spec", origin);
        return NULL;
    }
    json_tokener *tok = json_tokener_new();
    json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!obj || jerr != json_tokener_success) {
        json_object_put(obj);
        vmig_set_error(errp, VMIG_E_INVAL, "%s: not valid JSON (%s near byte %zu)", origin,
                       jerr == json_tokener_continue ? "it ends too early"
                                                     : json_tokener_error_desc(jerr),
                       end);
        return NULL;
    }
    for (size_t i = end; i < len; i++) {
        if (!g_ascii_isspace(text[i])) {
            json_object_put(obj);
            vmig_set_error(errp, VMIG_E_INVAL,
                           "%s: not valid JSON (data after the spec, at "
                           "byte %zu)",
                           origin, i);
            return NULL;
        }
    }
    return obj;
}

vmig_spec *vmig_spec_parse(const char *json, vmig_error **errp)
{
    g_autoptr(json_object) obj = parse_one(json, strlen(json), "VM spec", errp);
    return obj ? eng_spec_from_json(obj, "VM spec", NULL, errp) : NULL;
}

vmig_spec *vmig_spec_load(const char *path, vmig_error **errp)
{
    gsize len = 0;
    g_autofree char *text = vmig_file_read(path, &len, errp);
    if (!text) {
        return NULL;
    }
    g_autoptr(json_object) obj = parse_one(text, len, path, errp);
    if (!obj) {
        return NULL;
    }
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    g_autofree char *base = g_path_get_dirname(abs);
    return eng_spec_from_json(obj, path, base, errp);
}

json_object *eng_spec_to_obj(const vmig_spec *s)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(s->name));
    json_object_object_add(o, "memory_mib", json_object_new_int64((int64_t)s->memory_mib));
    json_object_object_add(o, "vcpus", json_object_new_int(s->vcpus));
    json_object_object_add(o, "machine", json_object_new_string(s->machine));
    json_object_object_add(o, "cpu", json_object_new_string(s->cpu));
    if (s->kernel) {
        json_object_object_add(o, "kernel", json_object_new_string(s->kernel));
    }
    if (s->qemu) {
        json_object_object_add(o, "qemu", json_object_new_string(s->qemu));
    }
    if (s->initrd) {
        json_object_object_add(o, "initrd", json_object_new_string(s->initrd));
    }
    if (s->append) {
        json_object_object_add(o, "append", json_object_new_string(s->append));
    }
    if (s->uuid) {
        json_object_object_add(o, "uuid", json_object_new_string(s->uuid));
    }
    if (s->disks->len) {
        json_object *arr = json_object_new_array();
        for (guint i = 0; i < s->disks->len; i++) {
            const eng_disk *d = g_ptr_array_index(s->disks, i);
            json_object *dj = json_object_new_object();
            json_object_object_add(dj, "path", json_object_new_string(d->path));
            if (d->format) {
                json_object_object_add(dj, "format", json_object_new_string(d->format));
            }
            if (d->cache) {
                json_object_object_add(dj, "cache", json_object_new_string(d->cache));
            }
            if (d->interface) {
                json_object_object_add(dj, "interface", json_object_new_string(d->interface));
            }
            if (d->readonly) {
                json_object_object_add(dj, "readonly", json_object_new_boolean(true));
            }
            json_object_array_add(arr, dj);
        }
        json_object_object_add(o, "disks", arr);
    }
    if (s->extra_args->len) {
        json_object *arr = json_object_new_array();
        for (guint i = 0; i < s->extra_args->len; i++) {
            json_object_array_add(arr, json_object_new_string(g_ptr_array_index(s->extra_args, i)));
        }
        json_object_object_add(o, "extra_args", arr);
    }
    return o;
}

char *vmig_spec_to_json(const vmig_spec *s)
{
    g_autoptr(json_object) o = eng_spec_to_obj(s);
    const char *txt = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE);
    return strdup(txt);
}

vmig_spec *eng_spec_copy(const vmig_spec *s)
{
    g_autoptr(json_object) o = eng_spec_to_obj(s);
    return eng_spec_from_json(o, "spec copy", NULL, NULL);
}

/* QEMU's option syntax: a comma inside a value is written as two. */
static char *opt_escape(const char *v)
{
    GString *out = g_string_new(NULL);
    for (; *v; v++) {
        if (*v == ',') {
            g_string_append_c(out, ',');
        }
        g_string_append_c(out, *v);
    }
    return g_string_free(out, FALSE);
}

static void add(GPtrArray *a, const char *s)
{
    g_ptr_array_add(a, g_strdup(s));
}

static void addf(GPtrArray *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(GPtrArray *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_ptr_array_add(a, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

GPtrArray *eng_spec_argv(const vmig_spec *s, const eng_launch *l)
{
    GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
    g_autofree char *dir = opt_escape(l->dir);
    add(a, l->qemu);
    add(a, "-name");
    addf(a, "guest=%s", s->name);
    if (s->uuid) {
        add(a, "-uuid");
        add(a, s->uuid);
    }
    add(a, "-machine");
    addf(a, "%s,accel=%s", s->machine, eng_accel_name(l->accel));
    add(a, "-cpu");
    /* The destination refuses to start rather than run with a CPU that lacks a feature the
     * source gave the guest: the last line of defence behind the CPU check. */
    if (l->incoming && !strstr(s->cpu, "enforce")) {
        addf(a, "%s,enforce", s->cpu);
    } else {
        add(a, s->cpu);
    }
    add(a, "-m");
    addf(a, "%" G_GUINT64_FORMAT "M", s->memory_mib);
    add(a, "-smp");
    addf(a, "%d", s->vcpus);
    add(a, "-nodefaults");
    add(a, "-no-user-config");
    add(a, "-display");
    add(a, "none");
    add(a, "-chardev");
    addf(a, "socket,id=vmig-qmp,path=%s/qmp.sock,server=on,wait=off", dir);
    add(a, "-mon");
    add(a, "chardev=vmig-qmp,mode=control");
    /* A second monitor for readers (vm list, other processes): QEMU serves one client per
     * monitor, and the engine holds the first for the whole migration. */
    add(a, "-chardev");
    addf(a, "socket,id=vmig-qmp-read,path=%s/" ENG_READER_SOCK ",server=on,wait=off", dir);
    add(a, "-mon");
    add(a, "chardev=vmig-qmp-read,mode=control");
    add(a, "-chardev");
    addf(a, "file,id=vmig-serial,path=%s/serial.log", dir);
    add(a, "-serial");
    add(a, "chardev:vmig-serial");
    add(a, "-pidfile");
    addf(a, "%s/qemu.pid", l->dir);
    if (s->kernel) {
        add(a, "-kernel");
        add(a, s->kernel);
    }
    if (s->initrd) {
        add(a, "-initrd");
        add(a, s->initrd);
    }
    if (s->append) {
        add(a, "-append");
        add(a, s->append);
    }
    for (guint i = 0; i < s->disks->len; i++) {
        const eng_disk *d = g_ptr_array_index(s->disks, i);
        g_autofree char *path = opt_escape(d->path);
        /* id=diskN names the drive for block jobs, node-name=vmig-diskN its image for NBD
         * exports (storage.c) */
        add(a, "-drive");
        addf(a,
             "file=%s,format=%s,if=%s,id=" ENG_DISK_ID_FMT ",node-name=vmig-" ENG_DISK_ID_FMT
             "%s%s%s",
             path, d->format ? d->format : "raw", d->interface ? d->interface : "virtio", i, i,
             d->cache ? ",cache=" : "", d->cache ? d->cache : "",
             d->readonly ? ",readonly=on" : "");
    }
    for (guint i = 0; i < s->extra_args->len; i++) {
        add(a, g_ptr_array_index(s->extra_args, i));
    }
    if (l->incoming) {
        add(a, "-S");
        add(a, "-incoming");
        add(a, "defer");
    }
    g_ptr_array_add(a, NULL);
    return a;
}
