/*
 * Storage in a migration (issue 12).
 *
 * Every disk either stays where it is, on storage both hosts share, or is copied:
 *
 *   shared   The pre-flight proves it: the source writes a random token into a file beside
 *            the image and the destination must read the same token at the same path, and
 *            see an image of the same format and size there.  Two files that only share a
 *            name fail, and the message says --copy-storage-all.  Between hosts a writable
 *            disk must bypass the page cache (cache=none or directsync), as libvirt demands,
 *            unless --unsafe: the destination's cache may hold blocks the source rewrote.
 *   copied   The destination creates an empty image of the same format and size (for
 *            --copy-storage-inc, a qcow2 over the same backing file, which it must have) in
 *            its image directory, and exports it over NBD on a unix socket (nbd-server-start,
 *            block-export-add).  The source mirrors each disk to it (blockdev-add of an NBD
 *            client, blockdev-mirror); the RAM migration starts once every mirror is READY.
 *            The source runs with pause-before-switchover: when its vCPUs have stopped, the
 *            mirrors are cancelled, which on a ready mirror means "finish in step" (the target
 *            holds every write), and only then does the device state go out.
 *
 * A failure at any point cancels the mirrors, leaves the source on its own disks, and removes
 * the destination's new images.  Through an agent, the NBD connections travel the relay as
 * channels of their own (transport: TP_KIND_NBD) to the agent's one port.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/json.h"
#include "migrate-priv.h"
#include "transport/handshake.h"

#define NBD_NODE_FMT "vmig-nbd-%s"
#define MIRROR_JOB_FMT "vmig-mirror-%s"
#define TOKEN_PREFIX ".vmig-shared-"
#define MIRROR_READY_TIMEOUT_MS ((int64_t)30 * 60 * 1000)
#define MIRROR_CANCEL_TIMEOUT_MS 60000
/* a mirror's I/O error may come before its destination's exit is seen */
#define MIRROR_DEST_GRACE_MS 2000
#define QEMU_IMG_TIMEOUT_S 60

struct mig_disk {
    unsigned idx;
    char *id;     /* diskN: the -drive id */
    char *path;   /* the source's image */
    char *format; /* its format, as QEMU opened it */
    uint64_t size;
    char *backing, *backing_fmt; /* its backing file, if any */
    char *cache;                 /* the spec's cache mode (NULL: writeback) */
    bool ro;
    bool copy;
    char *target;     /* a copy: the destination's new image */
    char *token_path; /* shared: the proof file beside the image */
    char *token;
    uint64_t offset, len; /* a mirror's progress */
    bool ready, gone;
};

void mig_disk_free(mig_disk *d)
{
    if (!d) {
        return;
    }
    if (d->token_path) {
        unlink(d->token_path);
    }
    g_free(d->id);
    g_free(d->path);
    g_free(d->format);
    g_free(d->backing);
    g_free(d->backing_fmt);
    g_free(d->cache);
    g_free(d->target);
    g_free(d->token_path);
    g_free(d->token);
    g_free(d);
}

/* A JSON string of @s, which it frees. */
static json_object *jstr_take(char *s)
{
    json_object *o = json_object_new_string(s);
    g_free(s);
    return o;
}

static mig_disk *disk_at(const mig *m, guint i)
{
    return g_ptr_array_index(m->disks, i);
}

bool mig_storage_opts(mig *m, vmig_error **errp)
{
    const vmig_migrate_opts *o = &m->o;
    if (o->copy_storage_all && o->copy_storage_inc) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--copy-storage-all and --copy-storage-inc exclude each other: give one");
        return false;
    }
    m->copy_storage = o->copy_storage_all || o->copy_storage_inc;
    if (o->migrate_disks && !m->copy_storage) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--migrate-disks selects disks to copy: give --copy-storage-all or "
                       "--copy-storage-inc with it");
        return false;
    }
    if (m->copy_storage && o->offline && o->copy_storage_inc) {
        vmig_set_error(errp, VMIG_E_INVAL, "--copy-storage-inc needs a live or paused VM");
        return false;
    }
    if (m->copy_storage && o->postcopy_resume) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--postcopy-resume finishes a migration whose disks were settled "
                       "before: leave out --copy-storage-*");
        return false;
    }
    if (m->copy_storage && o->postcopy) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--postcopy with --copy-storage-*: the disks' mirrors must finish in step "
                       "with the switchover, which post-copy does not wait for");
        return false;
    }
    return true;
}

/* ---- what the source has: query-block ---------------------------------------------------- */

void eng_block_info_clear(eng_block_info *b)
{
    g_clear_pointer(&b->format, g_free);
    g_clear_pointer(&b->backing, g_free);
    g_clear_pointer(&b->backing_fmt, g_free);
}

static bool read_inserted(json_object *ins, eng_block_info *b, vmig_error **errp)
{
    struct {
        const char *file, *drv;
        json_object *image;
        bool ro;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"file", VJ_STRING, offsetof(typeof(q), file), VJ_MANDATORY},
        {"drv", VJ_STRING, offsetof(typeof(q), drv), VJ_MANDATORY},
        {"image", VJ_OBJECT, offsetof(typeof(q), image), VJ_MANDATORY},
        {"ro", VJ_BOOL, offsetof(typeof(q), ro), 0},
        {NULL},
    };
    struct {
        uint64_t size;
        const char *backing, *backing_fmt;
    } im = {0};
    static const vmig_jfield image_fields[] = {
        {"virtual-size", VJ_UINT64, offsetof(typeof(im), size), VJ_MANDATORY},
        {"full-backing-filename", VJ_STRING, offsetof(typeof(im), backing), 0},
        {"backing-filename-format", VJ_STRING, offsetof(typeof(im), backing_fmt), 0},
        {NULL},
    };
    if (!vmig_json_read(ins, fields, &q, "query-block: inserted", errp) ||
        !vmig_json_read(q.image, image_fields, &im, "query-block: image", errp)) {
        return false;
    }
    b->format = g_strdup(q.drv);
    b->size = im.size;
    b->ro = q.ro;
    b->backing = g_strdup(im.backing);
    b->backing_fmt = g_strdup(im.backing_fmt);
    return true;
}

bool eng_block_info_read(json_object *ret, const char *device, eng_block_info *out,
                         vmig_error **errp)
{
    memset(out, 0, sizeof(*out));
    if (!json_object_is_type(ret, json_type_array)) {
        vmig_set_error(errp, VMIG_E_PROTO, "query-block: the reply is not an array");
        return false;
    }
    json_object *ins = NULL;
    for (size_t k = 0; k < json_object_array_length(ret); k++) {
        json_object *b = json_object_array_get_idx(ret, k), *dev = NULL;
        if (json_object_object_get_ex(b, "device", &dev) &&
            json_object_is_type(dev, json_type_string) &&
            strcmp(json_object_get_string(dev), device) == 0) {
            json_object_object_get_ex(b, "inserted", &ins);
        }
    }
    if (!ins || !json_object_is_type(ins, json_type_object)) {
        vmig_set_error(errp, VMIG_E_STATE, "query-block: drive %s has no image open", device);
        return false;
    }
    return read_inserted(ins, out, errp);
}

bool mig_on_query_block(vmig_job *j, json_object *ret, vmig_error **errp)
{
    mig *m = M(j);
    const vmig_spec *s = m->src->spec;
    for (guint i = 0; i < s->disks->len; i++) {
        const eng_disk *sd = g_ptr_array_index(s->disks, i);
        g_autofree char *id = g_strdup_printf(ENG_DISK_ID_FMT, i);
        eng_block_info b;
        if (!eng_block_info_read(ret, id, &b, errp)) {
            vmig_prefix_error(errp, "VM '%s', %s (%s): ", m->name, id, sd->path);
            return false;
        }
        mig_disk *d = g_new0(mig_disk, 1);
        g_ptr_array_add(m->disks, d);
        d->idx = i;
        d->id = g_steal_pointer(&id);
        d->path = g_strdup(sd->path);
        d->cache = g_strdup(sd->cache);
        d->format = g_steal_pointer(&b.format);
        d->backing = g_steal_pointer(&b.backing);
        d->backing_fmt = g_steal_pointer(&b.backing_fmt);
        d->size = b.size;
        d->ro = b.ro;
    }
    return true;
}

/* ---- the pre-flight ---------------------------------------------------------------------- */

/* Which disks are copied: --migrate-disks names them by id or path; else every writable one. */
static bool select_disks(mig *m, vmig_error **errp)
{
    g_auto(GStrv) want = m->o.migrate_disks ? g_strsplit(m->o.migrate_disks, ",", -1) : NULL;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        d->copy = m->copy_storage && !want && !d->ro;
    }
    for (int k = 0; want && want[k]; k++) {
        bool found = false;
        for (guint i = 0; i < m->disks->len; i++) {
            mig_disk *d = disk_at(m, i);
            if (strcmp(want[k], d->id) == 0 || strcmp(want[k], d->path) == 0) {
                d->copy = found = true;
            }
        }
        if (!found) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "--migrate-disks: VM '%s' has no disk '%s' (its disks: disk0..disk%u, "
                           "or their image paths)",
                           m->name, want[k], m->disks->len ? m->disks->len - 1 : 0);
            return false;
        }
    }
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy && m->o.copy_storage_inc && !d->backing) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "--copy-storage-inc: %s (%s) has no backing file: its top layer is the "
                           "whole disk; use --copy-storage-all",
                           d->id, d->path);
            return false;
        }
        m->st.disks_copied += d->copy;
    }
    return true;
}

/* libvirt's rule: between hosts, a shared writable disk must bypass the page cache. */
static bool check_cache(mig *m, const mig_disk *d, vmig_error **errp)
{
    const char *cache = d->cache ? d->cache : "writeback";
    if (d->ro || !m->link || strcmp(cache, "none") == 0 || strcmp(cache, "directsync") == 0) {
        return true;
    }
    if (m->o.unsafe) {
        eng_log(m->src->e, VMIG_LOG_WARN,
                "--unsafe: %s (%s) is shared with cache=%s: the destination may read blocks "
                "from its page cache that the source has rewritten",
                d->id, d->path, cache);
        return true;
    }
    vmig_set_error(errp, VMIG_E_STATE,
                   "%s (%s) is opened with cache=%s: on storage shared between hosts (NFS) the "
                   "destination may read stale blocks from its page cache.  Start the VM with "
                   "\"cache\": \"none\" (or directsync), copy the disk with --copy-storage-all, "
                   "or give --unsafe",
                   d->id, d->path, cache);
    return false;
}

/* Writes the proof token beside a shared disk's image. */
static bool write_token(mig_disk *d, vmig_error **errp)
{
    uint8_t raw[16];
    g_autofree char *dir = g_path_get_dirname(d->path);
    if (!tp_random(raw, sizeof(raw), errp)) {
        return false;
    }
    d->token = g_malloc(2 * sizeof(raw) + 1);
    for (size_t i = 0; i < sizeof(raw); i++) {
        snprintf(d->token + 2 * i, 3, "%02x", raw[i]);
    }
    g_autofree char *name = g_strdup_printf(TOKEN_PREFIX "%.16s", d->token);
    g_autofree char *path = g_build_filename(dir, name, NULL);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno,
                             "%s (%s): writing the shared-storage proof token beside it", d->id,
                             d->path);
        return false;
    }
    d->token_path = g_steal_pointer(&path);
    bool ok = write(fd, d->token, strlen(d->token)) == (ssize_t)strlen(d->token) && fsync(fd) == 0;
    if (!ok) {
        vmig_set_error_errno(errp, errno, "%s", d->token_path);
    }
    close(fd);
    return ok;
}

/* The check request for the destination: one entry per shared disk. */
static json_object *check_args(const mig *m)
{
    json_object *arr = json_object_new_array();
    for (guint i = 0; i < m->disks->len; i++) {
        const mig_disk *d = disk_at(m, i);
        if (d->copy) {
            continue;
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(d->id));
        json_object_object_add(o, "path", json_object_new_string(d->path));
        json_object_object_add(o, "format", json_object_new_string(d->format));
        json_object_object_add(o, "size", json_object_new_int64((int64_t)d->size));
        if (d->token_path) { /* a read-only disk needs only the same image there */
            json_object_object_add(o, "token_path", json_object_new_string(d->token_path));
            json_object_object_add(o, "token", json_object_new_string(d->token));
        }
        json_object_array_add(arr, o);
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "disks", arr);
    return args;
}

/* qemu-img info of @path (force-share: a running QEMU holds it): format and virtual size. */
bool eng_image_info(vmig_engine *e, const char *path, char **ret_format, uint64_t *ret_size,
                    vmig_error **errp)
{
    g_autofree char *img = eng_qemu_tool(e, "qemu-img");
    if (!img) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "qemu-img not found (beside QEMU, or on PATH)");
        return false;
    }
    const char *argv[] = {img, "info", "-U", "--output=json", path, NULL};
    g_autofree char *out = NULL;
    if (!eng_run_tool_out(argv, QEMU_IMG_TIMEOUT_S, &out, errp)) {
        return false;
    }
    g_autoptr(json_object) o = json_tokener_parse(out);
    struct {
        const char *format;
        uint64_t size;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"format", VJ_STRING, offsetof(typeof(q), format), VJ_MANDATORY},
        {"virtual-size", VJ_UINT64, offsetof(typeof(q), size), VJ_MANDATORY},
        {NULL},
    };
    if (!o || !vmig_json_read(o, fields, &q, "qemu-img info", errp)) {
        if (!o) {
            vmig_set_error(errp, VMIG_E_PROTO, "qemu-img info %s: not JSON", path);
        }
        return false;
    }
    *ret_format = g_strdup(q.format);
    *ret_size = q.size;
    return true;
}

bool eng_share_check_read(json_object *d, eng_share_check *q, vmig_error **errp)
{
    static const vmig_jfield fields[] = {
        {"id", VJ_STRING, offsetof(eng_share_check, id), VJ_MANDATORY},
        {"path", VJ_STRING, offsetof(eng_share_check, path), VJ_MANDATORY},
        {"format", VJ_STRING, offsetof(eng_share_check, format), VJ_MANDATORY},
        {"token_path", VJ_STRING, offsetof(eng_share_check, token_path), 0},
        {"token", VJ_STRING, offsetof(eng_share_check, token), 0},
        {"size", VJ_UINT64, offsetof(eng_share_check, size), VJ_MANDATORY},
        {NULL},
    };
    memset(q, 0, sizeof(*q));
    if (!json_object_is_type(d, json_type_object) ||
        !vmig_json_read(d, fields, q, "storage check", errp)) {
        if (errp && !*errp) {
            vmig_set_error(errp, VMIG_E_INVAL, "storage check: a disk is not an object");
        }
        return false;
    }
    if (!g_path_is_absolute(q->path) || !q->token_path != !q->token ||
        (q->token_path && !g_path_is_absolute(q->token_path))) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "storage check: %s: paths must be absolute, a token comes with its path",
                       q->id);
        return false;
    }
    return true;
}

/* One shared disk, at the destination: there, the same format and size, and the token. */
static bool check_one(vmig_engine *e, json_object *d, vmig_error **errp)
{
    eng_share_check q;
    if (!eng_share_check_read(d, &q, errp)) {
        return false;
    }
    if (access(q.path, R_OK) < 0) {
        vmig_set_error_errno(errp, errno,
                             "%s (%s) is not there at the destination: its storage is not "
                             "shared; give --copy-storage-all to copy it",
                             q.id, q.path);
        return false;
    }
    g_autofree char *format = NULL;
    uint64_t size = 0;
    if (!eng_image_info(e, q.path, &format, &size, errp)) {
        vmig_prefix_error(errp, "%s (%s) at the destination: ", q.id, q.path);
        return false;
    }
    if (strcmp(format, q.format) != 0 || size != q.size) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "%s (%s) at the destination is a %s image of %" G_GUINT64_FORMAT
                       " bytes, the source's a %s of %" G_GUINT64_FORMAT
                       ": not the same storage; give --copy-storage-all to copy it",
                       q.id, q.path, format, size, q.format, q.size);
        return false;
    }
    g_autofree char *seen = NULL;
    if (q.token_path &&
        (!g_file_get_contents(q.token_path, &seen, NULL, NULL) || strcmp(seen, q.token) != 0)) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "%s (%s) at the destination is another file with the same name: the token "
                       "the source wrote beside it (%s) %s there.  The storage is not shared; "
                       "give --copy-storage-all to copy the disk",
                       q.id, q.path, q.token_path, seen ? "holds something else" : "is not");
        return false;
    }
    return true;
}

bool eng_storage_check(vmig_engine *e, json_object *args, vmig_error **errp)
{
    json_object *disks = NULL;
    if (!json_object_object_get_ex(args, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array) || json_object_array_length(disks) > 64) {
        vmig_set_error(errp, VMIG_E_INVAL, "storage check: 'disks' must be an array (up to 64)");
        return false;
    }
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        if (!check_one(e, json_object_array_get_idx(disks, i), errp)) {
            return false;
        }
    }
    return true;
}

static void proof_done(vmig_job *j)
{
    mig *m = M(j);
    for (guint i = 0; i < m->disks->len; i++) { /* the files go at once: proven or not */
        mig_disk *d = disk_at(m, i);
        if (d->token_path) {
            unlink(d->token_path);
            g_clear_pointer(&d->token_path, g_free);
        }
    }
    m->storage_next(j);
}

static void on_agent_check(void *opaque, json_object *reply, const vmig_error *err)
{
    vmig_job *j = opaque;
    (void)reply;
    if (err) {
        mig_fail_with(j, err, "storage pre-flight at %s: ", eng_link_name(M(j)->link));
    }
    eng_job_release(j);
}

void mig_storage_preflight(vmig_job *j, eng_step_fn next)
{
    mig *m = M(j);
    vmig_error *err = NULL;
    m->storage_next = next;
    if (!select_disks(m, &err)) {
        eng_job_fail(j, err);
        return;
    }
    bool any_shared = false;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy) {
            continue;
        }
        any_shared = true;
        /* a read-only image may sit where we cannot write: it needs only to be the same */
        if (!check_cache(m, d, &err) || (!d->ro && !write_token(d, &err))) {
            eng_job_fail(j, err);
            proof_done(j);
            return;
        }
    }
    if (!any_shared) {
        next(j);
        return;
    }
    g_autoptr(json_object) args = check_args(m);
    if (m->link) {
        eng_job_hold(j);
        eng_link_call(m->link, "storage-check", json_object_get(args), on_agent_check, j);
        eng_job_then(j, proof_done);
        return;
    }
    if (!eng_storage_check(j->e, args, &err)) {
        vmig_prefix_error(&err, "storage pre-flight: ");
        eng_job_fail(j, err);
    }
    eng_job_then(j, proof_done);
}

/* ---- the destination's images ------------------------------------------------------------ */

json_object *mig_storage_create_args(const mig *m)
{
    json_object *arr = json_object_new_array();
    for (guint i = 0; i < m->disks->len; i++) {
        const mig_disk *d = disk_at(m, i);
        if (!d->copy) {
            continue;
        }
        json_object *o = json_object_new_object();
        json_object_object_add(o, "disk", json_object_new_int((int)d->idx));
        json_object_object_add(o, "format", json_object_new_string(d->format));
        json_object_object_add(o, "size", json_object_new_int64((int64_t)d->size));
        if (m->o.copy_storage_inc) {
            json_object_object_add(o, "backing", json_object_new_string(d->backing));
            json_object_object_add(o, "backing_format",
                                   json_object_new_string(d->backing_fmt ? d->backing_fmt : "raw"));
        }
        json_object_array_add(arr, o);
    }
    return arr;
}

bool eng_storage_new_image(vmig_engine *e, const char *dir, const char *vm, unsigned idx,
                           const char *format, uint64_t size, const char *backing,
                           const char *backing_fmt, GPtrArray *created, char **ret_path,
                           vmig_error **errp)
{
    if ((strcmp(format, "raw") != 0 && strcmp(format, "qcow2") != 0) ||
        (backing && (!g_path_is_absolute(backing) || strcmp(format, "qcow2") != 0))) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "disk%u (%s): only raw and qcow2 images are created, a backing file only "
                       "under qcow2 by an absolute path",
                       idx, format);
        return false;
    }
    if (g_mkdir_with_parents(dir, 0700) < 0) {
        vmig_set_error_errno(errp, errno, "%s", dir);
        return false;
    }
    g_autofree char *tmpl = g_strdup_printf("%s/%s-disk%u-XXXXXX.%s", dir, vm, idx, format);
    int fd = g_mkstemp_full(tmpl, O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "creating an image in %s", dir);
        return false;
    }
    close(fd);
    g_ptr_array_add(created, g_strdup(tmpl));
    g_autofree char *img = eng_qemu_tool(e, "qemu-img");
    g_autofree char *sz = g_strdup_printf("%" G_GUINT64_FORMAT, size);
    const char *argv[] = {img ? img : "qemu-img",
                          "create",
                          "-q",
                          "-f",
                          format,
                          tmpl,
                          sz,
                          NULL,
                          NULL,
                          NULL,
                          NULL,
                          NULL};
    if (backing) {
        argv[6] = "-b";
        argv[7] = backing;
        argv[8] = "-F";
        argv[9] = backing_fmt ? backing_fmt : "raw";
        argv[10] = sz;
    }
    if (!eng_run_tool(argv, QEMU_IMG_TIMEOUT_S, errp)) {
        return false;
    }
    *ret_path = g_steal_pointer(&tmpl);
    return true;
}

bool eng_image_req_read(json_object *c, eng_image_req *q, vmig_error **errp)
{
    static const vmig_jfield fields[] = {
        {"disk", VJ_INT64, offsetof(eng_image_req, disk), VJ_MANDATORY},
        {"format", VJ_STRING, offsetof(eng_image_req, format), VJ_MANDATORY},
        {"size", VJ_UINT64, offsetof(eng_image_req, size), VJ_MANDATORY},
        {"backing", VJ_STRING, offsetof(eng_image_req, backing), 0},
        {"backing_format", VJ_STRING, offsetof(eng_image_req, backing_format), 0},
        {NULL},
    };
    memset(q, 0, sizeof(*q));
    if (!json_object_is_type(c, json_type_object) ||
        !vmig_json_read(c, fields, q, "storage", errp)) {
        if (errp && !*errp) {
            vmig_set_error(errp, VMIG_E_INVAL, "storage: an entry is not an object");
        }
        return false;
    }
    if ((strcmp(q->format, "raw") != 0 && strcmp(q->format, "qcow2") != 0) ||
        (q->backing && (!g_path_is_absolute(q->backing) || strcmp(q->format, "qcow2") != 0)) ||
        (q->backing_format && strcmp(q->backing_format, "raw") != 0 &&
         strcmp(q->backing_format, "qcow2") != 0)) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "storage: disk %" G_GINT64_FORMAT " (%s): only raw and qcow2 images, a "
                       "backing file (raw or qcow2) only under qcow2 by an absolute path",
                       q->disk, q->format);
        return false;
    }
    return true;
}

static bool create_one(vmig_engine *e, const char *dir, const char *vm, json_object *c,
                       vmig_spec *spec, GPtrArray *created, vmig_error **errp)
{
    eng_image_req q;
    if (!eng_image_req_read(c, &q, errp)) {
        return false;
    }
    if (q.disk < 0 || q.disk >= (int64_t)spec->disks->len) {
        vmig_set_error(errp, VMIG_E_INVAL, "storage: VM '%s' has no disk %" G_GINT64_FORMAT, vm,
                       q.disk);
        return false;
    }
    g_autofree char *path = NULL;
    if (!eng_storage_new_image(e, dir, vm, (unsigned)q.disk, q.format, q.size, q.backing,
                               q.backing_format, created, &path, errp)) {
        return false;
    }
    eng_disk *d = g_ptr_array_index(spec->disks, (guint)q.disk);
    g_free(d->path);
    d->path = g_steal_pointer(&path);
    g_free(d->format);
    d->format = g_strdup(q.format);
    return true;
}

bool eng_storage_create(vmig_engine *e, const char *image_dir, const char *vm, json_object *arr,
                        vmig_spec *spec, GPtrArray *created, vmig_error **errp)
{
    if (!json_object_is_type(arr, json_type_array) || json_object_array_length(arr) > 64) {
        vmig_set_error(errp, VMIG_E_INVAL, "storage: must be an array (up to 64)");
        return false;
    }
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        if (!create_one(e, image_dir, vm, json_object_array_get_idx(arr, i), spec, created, errp)) {
            vmig_prefix_error(errp, "creating the destination's image of disk %zu: ", i);
            return false;
        }
    }
    return true;
}

void eng_storage_remove(GPtrArray *created)
{
    for (guint i = 0; created && i < created->len; i++) {
        const char *p = g_ptr_array_index(created, i);
        unlink(p);
        g_autofree char *dir = g_path_get_dirname(p);
        rmdir(dir); /* when it was the last: fails otherwise, as it should */
    }
    if (created) {
        g_ptr_array_set_size(created, 0);
    }
}

bool mig_storage_create_local(vmig_job *j, vmig_spec *dspec, vmig_error **errp)
{
    mig *m = M(j);
    if (!m->st.disks_copied) {
        return true;
    }
    g_autofree char *dir = g_build_filename(m->dest_state, ENG_IMAGE_DIR, NULL);
    g_autoptr(json_object) arr = mig_storage_create_args(m);
    if (!eng_storage_create(j->e, dir, m->name, arr, dspec, m->created, errp)) {
        eng_storage_remove(m->created);
        return false;
    }
    return true;
}

/* ---- the copy: NBD export, mirrors, and the switchover ------------------------------------- */

static json_object *export_args(const mig_disk *d)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, "type", json_object_new_string("nbd"));
    json_object_object_add(a, "id", json_object_new_string(d->id));
    json_object_object_add(a, "node-name", jstr_take(g_strdup_printf("vmig-%s", d->id)));
    json_object_object_add(a, "name", json_object_new_string(d->id));
    json_object_object_add(a, "writable", json_object_new_boolean(true));
    return a;
}

static json_object *unix_addr(const char *path)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, "type", json_object_new_string("unix"));
    json_object_object_add(a, "path", json_object_new_string(path));
    return a;
}

/* nbd-server-start takes the older form: {"type": "unix", "data": {"path": P}}. */
static json_object *unix_addr_legacy(const char *path)
{
    json_object *a = json_object_new_object();
    json_object *data = json_object_new_object();
    json_object_object_add(data, "path", json_object_new_string(path));
    json_object_object_add(a, "type", json_object_new_string("unix"));
    json_object_object_add(a, "data", data);
    return a;
}

static json_object *nbd_client_args(const mig_disk *d, const char *path)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, "driver", json_object_new_string("nbd"));
    json_object_object_add(a, "node-name", jstr_take(g_strdup_printf(NBD_NODE_FMT, d->id)));
    json_object_object_add(a, "server", unix_addr(path));
    json_object_object_add(a, "export", json_object_new_string(d->id));
    return a;
}

static json_object *mirror_args(const mig *m, const mig_disk *d)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, "job-id", jstr_take(g_strdup_printf(MIRROR_JOB_FMT, d->id)));
    json_object_object_add(a, "device", json_object_new_string(d->id));
    json_object_object_add(a, "target", jstr_take(g_strdup_printf(NBD_NODE_FMT, d->id)));
    json_object_object_add(a, "sync",
                           json_object_new_string(m->o.copy_storage_inc ? "top" : "full"));
    return a;
}

static void on_dst_storage(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        mig_fail_with(j, err, "exporting the destination's disks over NBD: ");
    }
}

static void on_src_storage(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        mig_fail_with(j, err, "starting the mirror of the source's disks: ");
    }
}

bool eng_block_job_read(json_object *ret, const char *job, uint64_t *len, uint64_t *offset,
                        bool *ready)
{
    for (size_t k = 0;
         json_object_is_type(ret, json_type_array) && k < json_object_array_length(ret); k++) {
        struct {
            const char *device;
            uint64_t len, offset;
            bool ready;
        } q = {0};
        static const vmig_jfield fields[] = {
            {"device", VJ_STRING, offsetof(typeof(q), device), VJ_MANDATORY},
            {"len", VJ_UINT64, offsetof(typeof(q), len), 0},
            {"offset", VJ_UINT64, offsetof(typeof(q), offset), 0},
            {"ready", VJ_BOOL, offsetof(typeof(q), ready), 0},
            {NULL},
        };
        if (vmig_json_read(json_object_array_get_idx(ret, k), fields, &q, "query-block-jobs",
                           NULL) &&
            strcmp(q.device, job) == 0) {
            *len = q.len;
            *offset = MIN(q.offset, q.len);
            *ready = q.ready;
            return true;
        }
    }
    return false;
}

/* query-block-jobs: each mirror's progress, and whether it is in step. */
static void on_jobs(vmig_job *j, json_object *ret, const vmig_error *err)
{
    mig *m = M(j);
    m->jobs_in_flight = false;
    if (err || !json_object_is_type(ret, json_type_array)) {
        return;
    }
    uint64_t total = 0, done = 0;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (!d->copy) {
            continue;
        }
        g_autofree char *job = g_strdup_printf(MIRROR_JOB_FMT, d->id);
        bool seen = eng_block_job_read(ret, job, &d->len, &d->offset, &d->ready);
        d->gone = !seen;
        total += d->len;
        done += d->offset;
    }
    m->st.disk_total_bytes = total;
    m->st.disk_transferred_bytes = done;
    m->st.disk_remaining_bytes = total - done;
}

static void jobs_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    vmig_job *j = opaque;
    on_jobs(j, ret, err);
    if (M(j)->progress && M(j)->mirroring && j->state == VMIG_JOB_PREPARING) {
        M(j)->progress(M(j)->progress_opaque, &M(j)->st);
    }
    eng_job_kick(j);
    eng_job_release(j);
}

/* A poll that is not a step: the waits below look at what it found. */
static void poll_jobs(vmig_job *j)
{
    mig *m = M(j);
    if (m->mirroring && !m->jobs_in_flight && m->src->qmp && qmp_conn_ready(m->src->qmp)) {
        eng_job_hold(j);
        m->jobs_in_flight = true;
        qmp_call(m->src->qmp, "query-block-jobs", NULL, 0, ENG_QMP_TIMEOUT_MS, jobs_reply, j);
    }
}

void mig_storage_tick(vmig_job *j)
{
    poll_jobs(j);
}

/* No mirror moved a byte for the stall timeout (60 s by default): the copy is stuck. */
static void mirror_stalled(vmig_job *j)
{
    mig *m = M(j);
    int64_t now = vmig_now_ms();
    if (m->st.disk_transferred_bytes > m->mirror_bytes || !m->mirror_progress_ms) {
        m->mirror_bytes = m->st.disk_transferred_bytes;
        m->mirror_progress_ms = now;
        return;
    }
    int stall_s = m->o.stall_timeout_s ? m->o.stall_timeout_s : 60;
    if (stall_s > 0 && now - m->mirror_progress_ms >= (int64_t)stall_s * 1000 && !m->mirror_error) {
        m->mirror_error = g_strdup_printf(
            "no byte copied for %d s (%" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " bytes)",
            stall_s, m->st.disk_transferred_bytes, m->st.disk_total_bytes);
    }
}

/* Every mirror in step, or one gone (failed: its BLOCK_JOB_COMPLETED said why). */
static bool mirrors_ready(vmig_job *j)
{
    mig *m = M(j);
    bool all = true;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy && (d->gone || m->mirror_error)) {
            return true;
        }
        all = all && (!d->copy || d->ready);
    }
    if (!all) {
        mirror_stalled(j); /* the tick polls query-block-jobs; events say ready at once */
    }
    return all || m->mirror_error || m->dst_closed || !eng_vm_alive(m->dst);
}

static void mirrors_settled(vmig_job *j);

/* A mirror failed: the destination's death may be the cause, seen a moment later. */
static bool dst_gone_or_late(vmig_job *j)
{
    mig *m = M(j);
    return m->dst_closed || !eng_vm_alive(m->dst) || vmig_ms_left(m->dst_grace_deadline) == 0;
}

static void mirrors_settled(vmig_job *j)
{
    mig *m = M(j);
    if (m->mirror_error && !m->dst_grace_deadline && !m->dst_closed && eng_vm_alive(m->dst)) {
        m->dst_grace_deadline = vmig_now_ms() + MIRROR_DEST_GRACE_MS;
        eng_job_wait(j, dst_gone_or_late, 0, NULL, mirrors_settled);
        return;
    }
    if (m->dst_closed || !eng_vm_alive(m->dst)) { /* first: its mirrors fail with it */
        mig_fail_new(j, VMIG_E_QEMU, "the destination QEMU exited while the disks were copied%s%s",
                     m->mirror_error ? ": " : "", m->mirror_error ? m->mirror_error : "");
        return;
    }
    if (m->mirror_error) {
        mig_fail_new(j, VMIG_E_IO, "copying the disks to the destination failed: %s",
                     m->mirror_error);
        return;
    }
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy && d->gone) {
            mig_fail_new(j, VMIG_E_IO, "the mirror of %s (%s) to the destination ended early",
                         d->id, d->path);
            return;
        }
    }
    m->st.disk_ready_ms = (uint64_t)(vmig_now_ms() - m->t0);
    mig_act(j, "disks in step: %u mirror(s) ready after %.0f MiB", m->st.disks_copied,
            (double)m->st.disk_total_bytes / (1024.0 * 1024.0));
    m->storage_next(j);
}

static void start_mirrors(vmig_job *j)
{
    mig *m = M(j);
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy) {
            eng_job_call_opt(j, m->src->qmp, "blockdev-add", nbd_client_args(d, m->nbd_src_path),
                             on_src_storage);
            eng_job_call_opt(j, m->src->qmp, "blockdev-mirror", mirror_args(m, d), on_src_storage);
        }
    }
    m->mirroring = true;
    mig_act(j, "disks: %u mirror(s) started%s", m->st.disks_copied,
            m->link ? ", through the relay" : "");
    /* --timeout covers the copy too: its clock starts with the job */
    int64_t left = MIRROR_READY_TIMEOUT_MS;
    if (m->o.timeout_s > 0) {
        left = MAX(1, (int64_t)m->o.timeout_s * 1000 - (vmig_now_ms() - m->t0));
    }
    eng_job_wait(j, mirrors_ready, (int)MIN(left, MIRROR_READY_TIMEOUT_MS),
                 "the disks' mirrors were not in step within the time given", mirrors_settled);
}

void mig_storage_start(vmig_job *j, eng_step_fn next)
{
    mig *m = M(j);
    if (!m->st.disks_copied) {
        next(j);
        return;
    }
    m->storage_next = next;
    if (m->link) { /* the NBD clients go through the relay, to the agent's one port */
        vmig_error *err = NULL;
        g_free(m->nbd_dst_path);
        m->nbd_dst_path = g_build_filename(m->dst->dir, ENG_NBD_SOCK, NULL);
        g_free(m->nbd_src_path);
        m->nbd_relay = mig_relay_new(j, "nbd-relay.sock", TP_KIND_NBD, &m->nbd_src_path, &err);
        if (!m->nbd_relay) {
            vmig_prefix_error(&err, "starting the relay for the disks: ");
            eng_job_fail(j, err);
            return;
        }
    }
    json_object *srv = json_object_new_object();
    json_object_object_add(srv, "addr", unix_addr_legacy(m->nbd_dst_path));
    eng_job_call_opt(j, m->dst->qmp, "nbd-server-start", srv, on_dst_storage);
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy) {
            eng_job_call_opt(j, m->dst->qmp, "block-export-add", export_args(d), on_dst_storage);
        }
    }
    eng_job_then(j, start_mirrors);
}

void mig_storage_event(vmig_job *j, const char *ev, json_object *data)
{
    mig *m = M(j);
    if (strcmp(ev, "BLOCK_JOB_COMPLETED") != 0 && strcmp(ev, "BLOCK_JOB_ERROR") != 0 &&
        strcmp(ev, "BLOCK_JOB_READY") != 0 && strcmp(ev, "BLOCK_JOB_CANCELLED") != 0) {
        return;
    }
    struct {
        const char *dev, *error;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"device", VJ_STRING, offsetof(typeof(q), dev), 0},
        {"error", VJ_STRING, offsetof(typeof(q), error), 0},
        {NULL},
    };
    if (!vmig_json_read(data, fields, &q, ev, NULL) || !q.dev ||
        !g_str_has_prefix(q.dev, "vmig-mirror-")) {
        return;
    }
    for (guint i = 0; i < m->disks->len; i++) { /* now, not at the next poll */
        mig_disk *d = disk_at(m, i);
        g_autofree char *job = g_strdup_printf(MIRROR_JOB_FMT, d->id);
        if (d->copy && strcmp(job, q.dev) == 0) {
            d->ready = d->ready || strcmp(ev, "BLOCK_JOB_READY") == 0;
            d->gone = d->gone || strcmp(ev, "BLOCK_JOB_COMPLETED") == 0 ||
                      strcmp(ev, "BLOCK_JOB_CANCELLED") == 0;
        }
    }
    bool cancelled = strcmp(ev, "BLOCK_JOB_CANCELLED") == 0; /* not by us: a ready one completes */
    if (!m->mirror_error && (q.error || cancelled || strcmp(ev, "BLOCK_JOB_ERROR") == 0)) {
        m->mirror_error = g_strdup_printf("%s: %s", q.dev,
                                          q.error     ? q.error
                                          : cancelled ? "cancelled"
                                                      : "I/O error");
    }
    eng_job_kick(j);
}

/* The source's vCPUs have stopped (pre-switchover): the mirrors finish in step. */
static bool mirrors_gone(vmig_job *j)
{
    mig *m = M(j);
    bool any = false;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        any = any || (d->copy && !d->gone);
    }
    return !any || m->mirror_error != NULL; /* BLOCK_JOB_COMPLETED says gone; the tick too */
}

static void on_continue(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        mig_fail_with(j, err, "migrate-continue after the disks finished: ");
    }
}

static void mirrors_done(vmig_job *j)
{
    mig *m = M(j);
    if (m->mirror_error) {
        mig_fail_new(j, VMIG_E_IO, "finishing the disks' mirrors at the switchover: %s",
                     m->mirror_error);
        return;
    }
    m->mirroring = false;
    m->st.disk_remaining_bytes = 0;
    m->st.disk_transferred_bytes = m->st.disk_total_bytes;
    json_object *a = json_object_new_object();
    json_object_object_add(a, "state", json_object_new_string("pre-switchover"));
    eng_job_call_opt(j, m->src->qmp, "migrate-continue", a, on_continue);
    eng_job_then(j, m->storage_next);
}

static void mirrors_wait(vmig_job *j)
{
    eng_job_wait(j, mirrors_gone, MIRROR_CANCEL_TIMEOUT_MS,
                 "the disks' mirrors did not finish at the switchover", mirrors_done);
}

void mig_storage_switchover(vmig_job *j, eng_step_fn next)
{
    mig *m = M(j);
    m->storage_next = next;
    for (guint i = 0; i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy) {
            json_object *a = json_object_new_object();
            json_object_object_add(a, "device", jstr_take(g_strdup_printf(MIRROR_JOB_FMT, d->id)));
            eng_job_call_opt(j, m->src->qmp, "block-job-cancel", a, on_src_storage);
        }
    }
    eng_job_then(j, mirrors_wait);
}

/* ---- the end: either way ----------------------------------------------------------------- */

static void on_cleanup(vmig_job *j, json_object *ret, const vmig_error *err)
{
    (void)ret;
    if (err) {
        eng_log(j->e, VMIG_LOG_DEBUG, "storage clean-up: %s", vmig_error_message(err));
    }
}

/* The mirrors are gone (cancelled or failed): their NBD clients go too. */
static bool jobs_gone(vmig_job *j)
{
    mig *m = M(j);
    if (!m->src->qmp || !qmp_conn_ready(m->src->qmp)) {
        return true;
    }
    m->mirroring = true; /* for the poll */
    bool gone = mirrors_gone(j) || vmig_ms_left(m->cleanup_deadline) == 0;
    if (gone) {
        m->mirroring = false;
    }
    return gone;
}

static void del_nodes(vmig_job *j)
{
    mig *m = M(j);
    for (guint i = 0; m->src->qmp && qmp_conn_ready(m->src->qmp) && i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (d->copy) {
            json_object *a = json_object_new_object();
            json_object_object_add(a, "node-name", jstr_take(g_strdup_printf(NBD_NODE_FMT, d->id)));
            eng_job_call_opt(j, m->src->qmp, "blockdev-del", a, on_cleanup);
        }
    }
    eng_storage_remove(m->created);
    m->storage_next(j);
}

void mig_storage_release_dst(vmig_job *j)
{
    mig *m = M(j);
    if (m->st.disks_copied && m->dst->qmp && qmp_conn_ready(m->dst->qmp)) {
        eng_job_call_opt(j, m->dst->qmp, "nbd-server-stop", NULL, on_cleanup);
    }
}

void mig_storage_rollback(vmig_job *j, eng_step_fn next)
{
    mig *m = M(j);
    m->storage_next = next;
    if (!m->st.disks_copied) {
        eng_storage_remove(m->created);
        next(j);
        return;
    }
    bool src_ok = m->src && m->src->qmp && qmp_conn_ready(m->src->qmp);
    for (guint i = 0; src_ok && m->mirroring && i < m->disks->len; i++) {
        mig_disk *d = disk_at(m, i);
        if (!d->copy) {
            continue;
        }
        json_object *a = json_object_new_object();
        json_object_object_add(a, "device", jstr_take(g_strdup_printf(MIRROR_JOB_FMT, d->id)));
        json_object_object_add(a, "force", json_object_new_boolean(true));
        eng_job_call_opt(j, m->src->qmp, "block-job-cancel", a, on_cleanup);
    }
    m->cleanup_deadline = vmig_now_ms() + MIRROR_CANCEL_TIMEOUT_MS;
    eng_job_wait(j, jobs_gone, 0, NULL, del_nodes);
}
