/*
 * Offline migration (virsh migrate --offline --persistent [--undefinesource]): a VM that is
 * defined and shut off moves as its definition.  Nothing runs and no memory moves; the
 * destination gets the definition (its UUID kept), and with --undefinesource the source loses
 * it.
 *
 * The job, of kind VMIG_JOB_MIGRATE with its own ops (eng_job_is_offline()):
 *   PREPARING  checks (vmig_migrate_start()'s caller sees refusals at once): --persistent, the
 *              VM defined here and not running, the destination free of the name (a local one
 *              here; an agent checks its own), the locks of the name on both local sides;
 *              a vmig:// destination's control connection
 *   MIGRATING  the definition written at the destination (the agent's "define" op)
 *   FINISHING  the source's definition removed (--undefinesource)
 *   COMPLETED  stats: mode "offline", vm_holder "destination", vm_state "shut off"
 * A failure before the destination has the definition leaves everything as it was; one after
 * it (removing the source's) says that both now define the VM.
 *
 * With --copy-storage-all the disks go first (MIGRATING), one after the other, with QEMU's
 * tools at both ends: to a local destination `qemu-img convert` into a new image in its
 * images/; to an agent, which serves a new image with qemu-nbd ("receive-image"), `qemu-img
 * convert` to NBD through the relay (nbd channels to the agent's one port).  The definition
 * sent then names the new images.  A failure removes them (the agent removes those its
 * session never defined).
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "link.h"
#include "transport/relay.h"

typedef struct offline {
    char *name;
    char *dest;
    char *dest_state; /* a local destination's state directory, else NULL */
    eng_link *link;   /* a vmig:// destination's agent, else NULL */
    bool undefine_source;
    vmig_spec *spec; /* the definition sent */
    bool dest_defined;
    int64_t t0;
    ring *ring;    /* the engine's: j->e is gone when a freed engine detaches the job */
    int64_t timer; /* the deferred first step, for a local destination */
    vmig_migration_stats st;
    /* --copy-storage-all */
    GPtrArray *copies; /* off_disk */
    guint cur;         /* the one being copied */
    uint64_t done_bytes;
    eng_tool *tool;
    tp_source_relay *relay;
    char *relay_path;
    GPtrArray *created; /* a local destination's new images, until it is defined */
    vmig_progress_fn progress;
    void *progress_opaque;
} offline;

typedef struct off_disk {
    unsigned idx;
    char *path, *format;
    uint64_t size;
    char *target; /* the new image at the destination */
    char *token;  /* the agent's, for its qemu-nbd */
} off_disk;

static void off_disk_free(void *p)
{
    off_disk *d = p;
    g_free(d->path);
    g_free(d->format);
    g_free(d->target);
    g_free(d->token);
    g_free(d);
}

static void offline_free(vmig_job *j)
{
    offline *o = j->data;
    if (o->timer) {
        ring_detach(o->ring, o->timer, NULL, NULL);
    }
    eng_tool_free(o->tool);
    tp_source_relay_free(o->relay);
    g_free(o->relay_path);
    if (!o->dest_defined) {
        eng_storage_remove(o->created);
    }
    g_ptr_array_free(o->created, TRUE);
    g_ptr_array_free(o->copies, TRUE);
    eng_link_free(o->link);
    vmig_spec_free(o->spec);
    g_free(o->name);
    g_free(o->dest);
    g_free(o->dest_state);
    g_free(o);
}

static void stats_end(vmig_job *j, const char *status, const char *holder)
{
    offline *o = j->data;
    g_strlcpy(o->st.status, status, sizeof(o->st.status));
    g_strlcpy(o->st.vm_holder, holder, sizeof(o->st.vm_holder));
    o->st.total_ms = (uint64_t)(vmig_now_ms() - o->t0);
    o->st.progress = strcmp(status, "completed") == 0 ? 1 : 0;
}

static void offline_fail(vmig_job *j)
{
    offline *o = j->data;
    bool cancelled = vmig_error_code(j->err) == VMIG_E_CANCELLED;
    if (o->dest_defined) {
        vmig_append_error(&j->err, "; VM '%s' is defined at the destination and here", o->name);
    } else {
        vmig_append_error(&j->err, "; VM '%s' stays defined here only", o->name);
    }
    stats_end(j, cancelled ? "cancelled" : "failed", o->dest_defined ? "destination" : "source");
    eng_job_set_state(j, j->state, VMIG_JOB_ROLLING_BACK);
    eng_job_end(j, cancelled ? VMIG_JOB_CANCELLED : VMIG_JOB_FAILED);
}

static bool offline_may_cancel(vmig_job *j)
{
    return !((offline *)j->data)->dest_defined;
}

static const eng_job_ops offline_ops = {
    .name = "migrate-offline",
    .what = "offline migration",
    .may_cancel = offline_may_cancel,
    .fail = offline_fail,
    .free = offline_free,
};

bool eng_job_is_offline(const vmig_job *j)
{
    return j && j->ops == &offline_ops;
}

bool eng_offline_stats(const vmig_job *j, vmig_migration_stats *st)
{
    if (!eng_job_is_offline(j) || !j->data) {
        return false;
    }
    const offline *o = j->data;
    *st = o->st;
    if (!vmig_job_finished(j)) {
        st->total_ms = (uint64_t)(vmig_now_ms() - o->t0);
    }
    return true;
}

/* ---- the steps ------------------------------------------------------------------------------- */

static void done(vmig_job *j)
{
    offline *o = j->data;
    stats_end(j, "completed", "destination");
    eng_log(j->e, VMIG_LOG_INFO, "VM '%s' is defined at %s now%s", o->name, o->dest,
            o->undefine_source ? ", and no longer here" : "");
    eng_job_end(j, VMIG_JOB_COMPLETED);
}

static void undefine_source(vmig_job *j)
{
    offline *o = j->data;
    eng_job_set_state(j, VMIG_JOB_MIGRATING, VMIG_JOB_FINISHING);
    vmig_error *err = NULL;
    if (o->undefine_source && !eng_def_remove(j->e->state_dir, o->name, &err)) {
        vmig_prefix_error(&err, "removing the source's definition: ");
        eng_job_fail(j, err);
        return;
    }
    eng_job_then(j, done);
}

static void defined_remote(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    offline *o = j->data;
    if (err) {
        vmig_error *e = vmig_error_copy(err);
        vmig_prefix_error(&e, "defining VM '%s' at %s: ", o->name, o->dest);
        eng_job_fail(j, e);
    } else {
        o->dest_defined = true;
    }
    eng_job_release(j);
}

static void define_dest(vmig_job *j)
{
    offline *o = j->data;
    if (o->link) {
        g_clear_pointer(&o->spec->qemu, g_free); /* the agent runs its own */
        eng_job_hold(j);
        eng_link_define(o->link, o->name, o->spec, true, defined_remote, j);
    } else {
        vmig_error *err = NULL;
        /* the job holds the name's lock there: nothing took it since begin() looked */
        if (!eng_def_check_free(o->dest_state, o->name, &err) ||
            !eng_def_write(o->dest_state, o->spec, &err)) {
            vmig_prefix_error(&err, "destination: ");
            eng_job_fail(j, err);
            return;
        }
        o->dest_defined = true;
    }
    eng_job_then(j, undefine_source);
}

/* ---- --copy-storage-all: the images first ------------------------------------------------ */

static void copy_next(vmig_job *j);

static void on_progress(void *opaque, double p)
{
    vmig_job *j = opaque;
    offline *o = j->data;
    const off_disk *d = g_ptr_array_index(o->copies, o->cur);
    o->st.disk_transferred_bytes = o->done_bytes + (uint64_t)(p * (double)d->size);
    o->st.disk_remaining_bytes = o->st.disk_total_bytes - o->st.disk_transferred_bytes;
    o->st.progress = o->st.disk_total_bytes
                         ? (double)o->st.disk_transferred_bytes / (double)o->st.disk_total_bytes
                         : 0;
    if (o->progress) {
        o->progress(o->progress_opaque, &o->st);
    }
}

/* The disk is at the destination: the definition will name its new image. */
static void disk_copied(vmig_job *j)
{
    offline *o = j->data;
    off_disk *d = g_ptr_array_index(o->copies, o->cur);
    eng_disk *sd = g_ptr_array_index(o->spec->disks, d->idx);
    g_free(sd->path);
    sd->path = g_strdup(d->target);
    on_progress(j, 1.0);
    o->done_bytes += d->size;
    eng_log(j->e, VMIG_LOG_INFO, "offline: disk%u of VM '%s' copied to %s", d->idx, o->name,
            d->target);
    o->cur++;
    copy_next(j);
}

static void on_image_done(void *opaque, json_object *reply, const vmig_error *err)
{
    vmig_job *j = opaque;
    (void)reply;
    if (err) {
        eng_job_fail(j, vmig_error_copy(err));
    } else {
        eng_job_then(j, disk_copied);
    }
    eng_job_release(j);
}

static void image_done(vmig_job *j, const off_disk *d, bool ok)
{
    offline *o = j->data;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "token", json_object_new_string(d->token));
    json_object_object_add(args, "ok", json_object_new_boolean(ok));
    if (!ok) { /* nothing waits: the session's end would drop it anyway */
        eng_link_call(o->link, "image-done", args, NULL, NULL);
        return;
    }
    eng_job_hold(j);
    eng_link_call(o->link, "image-done", args, on_image_done, j);
}

static void converted(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    offline *o = j->data;
    const off_disk *d = g_ptr_array_index(o->copies, o->cur);
    g_clear_pointer(&o->tool, eng_tool_free);
    g_clear_pointer(&o->relay, tp_source_relay_free);
    if (err) {
        vmig_error *e = vmig_error_copy(err);
        vmig_prefix_error(&e, "copying disk%u (%s) to %s: ", d->idx, d->path, o->dest);
        if (o->link) {
            image_done(j, d, false);
        }
        eng_job_fail(j, e);
    } else if (o->link) {
        image_done(j, d, true);
    } else {
        eng_job_then(j, disk_copied);
    }
    eng_job_release(j);
}

/* qemu-img convert -p of @d to @target (a file, or an NBD URI of format raw). */
static bool convert(vmig_job *j, const off_disk *d, const char *target, const char *format,
                    vmig_error **errp)
{
    offline *o = j->data;
    g_autofree char *img = eng_qemu_tool(j->e, "qemu-img");
    const char *argv[] = {img ? img : "qemu-img",
                          "convert",
                          "-p",
                          "-n",
                          "-f",
                          d->format,
                          "-O",
                          format,
                          d->path,
                          target,
                          NULL};
    eng_job_hold(j);
    o->tool = eng_tool_start(j->e, argv, on_progress, converted, j, errp);
    if (!o->tool) {
        eng_job_release(j);
        return false;
    }
    return true;
}

static void on_receive(void *opaque, json_object *reply, const vmig_error *err)
{
    vmig_job *j = opaque;
    offline *o = j->data;
    off_disk *d = g_ptr_array_index(o->copies, o->cur);
    struct {
        const char *token, *path;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"token", VJ_STRING, offsetof(typeof(q), token), VJ_MANDATORY},
        {"path", VJ_STRING, offsetof(typeof(q), path), VJ_MANDATORY},
        {NULL},
    };
    vmig_error *e = NULL;
    uint8_t token[TP_TOKEN_LEN];
    if (err) {
        e = vmig_error_copy(err);
    } else if (vmig_json_read(reply, fields, &q, "the agent's receive-image reply", &e) &&
               !eng_link_token(q.token, token)) {
        vmig_set_error(&e, VMIG_E_PROTO, "the agent gave a bad token");
    }
    if (!e) {
        d->token = g_strdup(q.token);
        d->target = g_strdup(q.path);
        o->relay_path = o->relay_path
                            ? o->relay_path
                            : g_strdup_printf("%s/.%s.nbd.sock", j->e->state_dir, o->name);
        unlink(o->relay_path);
        tp_source_cfg cfg = {.listen_path = o->relay_path,
                             .key = eng_link_key(o->link),
                             .token = token,
                             .timeout_ms = 30000,
                             .fixed_kind = TP_KIND_NBD};
        cfg.agent = eng_link_addr(o->link, &cfg.agent_len);
        o->relay = tp_source_relay_new(j->e->ring, &cfg, NULL, NULL, &e);
        g_autofree char *uri = g_strdup_printf("nbd+unix:///?socket=%s", o->relay_path);
        if (o->relay && convert(j, d, uri, "raw", &e)) {
            eng_job_release(j);
            return;
        }
        image_done(j, d, false);
    }
    vmig_prefix_error(&e, "disk%u of VM '%s': ", d->idx, o->name);
    eng_job_fail(j, e);
    eng_job_release(j);
}

static void copy_next(vmig_job *j)
{
    offline *o = j->data;
    if (o->cur >= o->copies->len) {
        define_dest(j);
        return;
    }
    off_disk *d = g_ptr_array_index(o->copies, o->cur);
    if (o->link) {
        json_object *args = json_object_new_object();
        json_object_object_add(args, "name", json_object_new_string(o->name));
        json_object_object_add(args, "disk", json_object_new_int((int)d->idx));
        json_object_object_add(args, "format", json_object_new_string(d->format));
        json_object_object_add(args, "size", json_object_new_int64((int64_t)d->size));
        eng_job_hold(j);
        eng_link_call(o->link, "receive-image", args, on_receive, j);
        return;
    }
    vmig_error *err = NULL;
    g_autofree char *dir = g_build_filename(o->dest_state, ENG_IMAGE_DIR, NULL);
    if (!eng_storage_new_image(j->e, dir, o->name, d->idx, d->format, d->size, NULL, NULL,
                               o->created, &d->target, &err) ||
        !convert(j, d, d->target, d->format, &err)) {
        vmig_prefix_error(&err, "disk%u of VM '%s': ", d->idx, o->name);
        eng_job_fail(j, err);
    }
}

static void copy_disks(vmig_job *j)
{
    eng_job_set_state(j, VMIG_JOB_PREPARING, VMIG_JOB_MIGRATING);
    copy_next(j);
}

/* Which disks go, and what they are: --migrate-disks by name or path, else the writable. */
static bool plan_copies(vmig_engine *e, offline *o, const char *migrate_disks, vmig_error **errp)
{
    g_auto(GStrv) want = migrate_disks ? g_strsplit(migrate_disks, ",", -1) : NULL;
    for (guint i = 0; i < o->spec->disks->len; i++) {
        const eng_disk *sd = g_ptr_array_index(o->spec->disks, i);
        g_autofree char *id = g_strdup_printf(ENG_DISK_ID_FMT, i);
        bool pick = !want && !sd->readonly;
        for (int k = 0; want && want[k]; k++) {
            pick = pick || strcmp(want[k], id) == 0 || strcmp(want[k], sd->path) == 0;
        }
        if (!pick) {
            continue;
        }
        off_disk *d = g_new0(off_disk, 1);
        g_ptr_array_add(o->copies, d);
        d->idx = i;
        d->path = g_strdup(sd->path);
        if (!eng_image_info(e, sd->path, &d->format, &d->size, errp)) {
            vmig_prefix_error(errp, "%s (%s): ", id, sd->path);
            return false;
        }
        o->st.disk_total_bytes += d->size;
    }
    o->st.disks_copied = o->copies->len;
    o->st.disk_remaining_bytes = o->st.disk_total_bytes;
    if (want && o->copies->len != g_strv_length(want)) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "--migrate-disks '%s': VM '%s' has disks disk0..disk%u (or give their "
                       "image paths)",
                       migrate_disks, o->name, o->spec->disks->len ? o->spec->disks->len - 1 : 0);
        return false;
    }
    return true;
}

static void link_ready(void *opaque, const vmig_error *err)
{
    vmig_job *j = opaque;
    if (err) {
        eng_job_fail(j, vmig_error_copy(err));
    }
    eng_job_release(j);
}

static void deferred(void *opaque, int res)
{
    vmig_job *j = opaque;
    (void)res;
    ((offline *)j->data)->timer = 0;
    eng_job_release(j);
}

/* ---- refusals before anything starts --------------------------------------------------------- */

static bool resolve_dest(vmig_engine *e, offline *o, const char *key_file, vmig_error **errp)
{
    const char *d = o->dest;
    if (g_str_has_prefix(d, "vmig://")) {
        o->link = eng_link_new(e, d, key_file, errp);
        return o->link != NULL;
    }
    const char *dir = strcmp(d, "local") == 0                 ? e->state_dir
                      : g_str_has_prefix(d, "local:") && d[6] ? d + 6
                                                              : NULL;
    if (!dir) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "unknown destination '%s': give 'local:STATE_DIR' or 'vmig://HOST[:PORT]'",
                       d);
        return false;
    }
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "destination state directory %s does not exist", dir);
        return false;
    }
    if (!eng_state_dir_check(dir, errp)) {
        vmig_prefix_error(errp, "destination: ");
        return false;
    }
    o->dest_state = g_canonicalize_filename(dir, NULL);
    g_autofree char *here = g_canonicalize_filename(e->state_dir, NULL);
    if (strcmp(o->dest_state, here) == 0) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "destination '%s' is this state directory, where VM '%s' is defined "
                       "already: give 'local:STATE_DIR' of another, or 'vmig://HOST[:PORT]'",
                       d, o->name);
        return false;
    }
    return true;
}

/* The definition to send: the source's, or @dest_spec's with the source's UUID. */
static bool read_definition(vmig_engine *e, offline *o, const char *dest_spec, vmig_error **errp)
{
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) def = eng_def_load(e->state_dir, o->name, &err);
    if (!def) {
        if (vmig_error_code(err) == VMIG_E_NOTFOUND) {
            vmig_error_free(err);
            vmig_set_error(errp, VMIG_E_NOTFOUND,
                           "VM '%s' is not defined in %s: an offline migration moves a VM's "
                           "definition ('vmigrate vm define SPEC')",
                           o->name, e->state_dir);
        } else {
            vmig_propagate_error(errp, err);
        }
        return false;
    }
    if (dest_spec) {
        g_autoptr(vmig_spec) ds = vmig_spec_load(dest_spec, errp);
        if (!ds) {
            vmig_prefix_error(errp, "destination spec: ");
            return false;
        }
        if (strcmp(ds->name, o->name) != 0) {
            vmig_set_error(errp, VMIG_E_INVAL, "destination spec %s names VM '%s', not '%s'",
                           dest_spec, ds->name, o->name);
            return false;
        }
        if (ds->uuid && def->uuid && g_ascii_strcasecmp(ds->uuid, def->uuid) != 0) {
            vmig_set_error(errp, VMIG_E_INVAL,
                           "destination spec %s gives UUID %s; VM '%s' has UUID %s", dest_spec,
                           ds->uuid, o->name, def->uuid);
            return false;
        }
        g_free(ds->uuid);
        ds->uuid = g_strdup(def->uuid);
        vmig_spec_free(def);
        def = g_steal_pointer(&ds);
    }
    o->spec = g_steal_pointer(&def);
    return true;
}

static bool is_running(vmig_engine *e, const char *name)
{
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    g_autoptr(eng_vm) vm = eng_vm_find(e, dir, NULL);
    return vm != NULL;
}

static bool begin(vmig_job *j, offline *o, const vmig_migrate_opts *opts, vmig_error **errp)
{
    vmig_engine *e = j->e;
    if (!opts->persistent) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "an offline migration moves the VM's definition: give --persistent");
        return false;
    }
    if (!eng_spec_name_valid(o->name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", o->name);
        return false;
    }
    if (!resolve_dest(e, o, opts->key_file, errp) ||
        !eng_job_lock(j, e->state_dir, o->name, errp) ||
        (o->dest_state && !eng_job_lock(j, o->dest_state, o->name, errp))) {
        return false;
    }
    if (!read_definition(e, o, opts->dest_spec, errp)) {
        return false;
    }
    if (is_running(e, o->name)) {
        vmig_set_error(errp, VMIG_E_STATE, "VM '%s' is running: migrate it live, or stop it first",
                       o->name);
        return false;
    }
    if (o->dest_state && !eng_def_check_free(o->dest_state, o->name, errp)) {
        vmig_prefix_error(errp, "destination: ");
        return false;
    }
    if (opts->copy_storage_inc || (opts->migrate_disks && !opts->copy_storage_all)) {
        vmig_set_error(errp, VMIG_E_INVAL,
                       "an offline migration copies whole images: give --copy-storage-all "
                       "(with --migrate-disks to pick them)");
        return false;
    }
    return !opts->copy_storage_all || plan_copies(e, o, opts->migrate_disks, errp);
}

vmig_job *eng_offline_start(vmig_engine *e, const char *name, const vmig_migrate_opts *opts,
                            vmig_progress_fn progress, void *progress_opaque,
                            vmig_job_done_fn done_fn, void *opaque, vmig_error **errp)
{
    vmig_migrate_opts oo;
    vmig_migrate_opts_init(&oo);
    if (opts) {
        memcpy(&oo, opts, MIN((size_t)opts->size, sizeof(oo)));
    }
    offline *o = g_new0(offline, 1);
    o->t0 = vmig_now_ms();
    o->ring = e->ring;
    o->name = g_strdup(name ? name : "");
    o->dest = g_strdup(oo.dest ? oo.dest : "local");
    o->undefine_source = oo.undefine_source;
    o->copies = g_ptr_array_new_with_free_func(off_disk_free);
    o->created = g_ptr_array_new_with_free_func(g_free);
    o->progress = progress;
    o->progress_opaque = progress_opaque;
    g_strlcpy(o->st.status, "none", sizeof(o->st.status));
    g_strlcpy(o->st.mode, "offline", sizeof(o->st.mode));
    g_strlcpy(o->st.vm_holder, "source", sizeof(o->st.vm_holder));
    g_strlcpy(o->st.vm_state, "shut off", sizeof(o->st.vm_state));
    vmig_job *j = eng_job_new(e, VMIG_JOB_MIGRATE, &offline_ops, o, done_fn, opaque);
    if (!begin(j, o, &oo, errp)) {
        j->ended = true;
        vmig_job_free(j);
        return NULL;
    }
    eng_log(e, VMIG_LOG_DEBUG, "offline migration of VM '%s' to %s", o->name, o->dest);
    eng_job_hold(j);
    if (o->link) {
        eng_link_connect(o->link, link_ready, j);
    } else {
        /* the rest runs from dispatch, as every job's end does */
        int64_t op = ring_timer(e->ring, 0, deferred, j);
        o->timer = op > 0 ? op : 0;
        if (op <= 0) {
            eng_job_release(j);
        }
    }
    eng_job_then(j, copy_disks);
    return j;
}
