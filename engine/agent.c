/*
 * The destination agent (vmig_agent_new): one TCP port for every source engine.
 *
 * Every connection starts with the authenticated handshake (transport/handshake.h).  What it
 * carries then, by its HELLO:
 *   control   the engine's requests, JSON in CONTROL frames, answered in order:
 *               {"id":N,"op":"info"}
 *               {"id":N,"op":"probe","accel":A}                a QEMU to ask (-machine none)
 *               {"id":N,"op":"launch","name":V,"spec":{..},"cpu":C,"accel":A,
 *                "storage":[{disk,format,size,backing?,..}]} the destination, -incoming defer -S;
 *                                                            with storage, new images for those
 *                                                            disks (removed unless released)
 *                                                            and "nbd": where its NBD server
 *                                                            is to listen
 *               {"id":N,"op":"release","token":T}             the switchover: it outlives us
 *               {"id":N,"op":"finish","token":T}              give it the VM's name
 *               {"id":N,"op":"kill","token":T}                stop it and remove its directory
 *               {"id":N,"op":"define","name":V,"spec":{..},"exclusive":B}
 *                                                            write VM V's definition here
 *                                                            (no spec: the running V's own)
 *               {"id":N,"op":"undefine","name":V}             remove it
 *               {"id":N,"op":"receive-image","name":V,"disk":N,"format":F,"size":S}
 *               {"id":N,"op":"image-done","token":T,"ok":B}   an offline storage copy (below)
 *               {"id":N,"op":"storage-check","disks":[..]}    the shared-storage proof: each
 *                                                            disk here, same format and size,
 *                                                            the source's token beside it
 *               {"id":N,"op":"resume","name":V}               a released VM whose post-copy
 *                                                            broke: a new token, monitor and
 *                                                            channels, for migrate-recover
 *             Replies: {"id":N,"ok":true,...} or {"id":N,"error":"..."}.
 *   qmp       the engine's monitor connection to a QEMU this agent started (token)
 *   main, multifd, preempt, nbd
 *             QEMU's migration channels and a storage copy's NBD connections, into that
 *             migration's tp_dest_relay (token)
 * A QEMU belongs to the control connection that asked for it: when that connection ends,
 * every QEMU of it not yet released is stopped and its directory removed.  While the agent
 * lives its guard process holds each QEMU, so an agent that dies takes its unreleased QEMUs
 * with it, and the source's migration fails and goes on running there.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <glib-unix.h>

#include "common/json.h"
#include "engine.h"
#include "link.h"
#include "transport/control.h"
#include "transport/relay.h"

#define HANDSHAKE_MS 10000
#define RELAY_TIMEOUT_MS 30000
#define KILL_MS 5000
#define MAX_PENDING 64  /* handshakes at once */
#define MAX_SESSIONS 64 /* control connections at once */
#define MAX_VMS 256

typedef struct session {
    vmig_agent *a;
    unsigned id;
    tp_control *ctl;
    char *peer;
} session;

typedef struct avm {
    vmig_agent *a;
    unsigned owner; /* session id */
    uint8_t token[TP_TOKEN_LEN];
    char hex[2 * TP_TOKEN_LEN + 1];
    bool probe, launching, released, dying;
    eng_vm *vm;
    char *name, *stage, *final_dir;
    int lock_fd;
    char *lock_path;
    tp_dest_relay *relay;
    tp_pump *qmp_pump;
    int qmp_fd[2];
    int64_t reply_id; /* the launch's request, answered when QEMU is up */
    int64_t t0_us;
    GPtrArray *created; /* images made for a storage copy: removed unless it was released */
    /* an image received for an offline migration (receive-image): no QEMU, a qemu-nbd */
    bool image, image_done;
    int nbd_pid;
    char *nbd_dir; /* its socket and pid file */
    char *image_path;
} avm;

typedef struct pending {
    vmig_agent *a;
    int fd;
    tp_handshake *hs;
    char *peer;
} pending;

struct vmig_agent {
    vmig_engine *e;
    tp_key key;
    vmig_accel accel;
    int lfd;
    int64_t accept_op;
    char *address;
    unsigned next_session;
    GHashTable *sessions; /* id -> session */
    GHashTable *vms;      /* hex token -> avm */
    GPtrArray *pending;
    bool closing;
};

void vmig_agent_opts_init_sized(vmig_agent_opts *o, size_t size)
{
    vmig_agent_opts d = {.size = (uint32_t)MIN(size, sizeof(d)), .accel = VMIG_ACCEL_TCG};
    memset(o, 0, size);
    memcpy(o, &d, MIN(size, sizeof(d)));
}

/* The table's key for a token: its bytes in hex. */
static void token_hex(const uint8_t token[TP_TOKEN_LEN], char out[2 * TP_TOKEN_LEN + 1])
{
    for (size_t i = 0; i < TP_TOKEN_LEN; i++) {
        g_snprintf(out + 2 * i, 3, "%02x", token[i]);
    }
}

/* ---- replies ----------------------------------------------------------------------------------
 */

static void send_json(vmig_agent *a, unsigned sid, json_object *obj)
{
    session *s = g_hash_table_lookup(a->sessions, GUINT_TO_POINTER(sid));
    vmig_error *err = NULL;
    if (s && !tp_control_send(s->ctl, json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN),
                              &err)) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: answering %s: %s", s->peer, vmig_error_message(err));
        vmig_error_free(err);
    }
    json_object_put(obj);
}

static json_object *ok_reply(int64_t id)
{
    json_object *r = json_object_new_object();
    json_object_object_add(r, "id", json_object_new_int64(id));
    json_object_object_add(r, "ok", json_object_new_boolean(true));
    return r;
}

static void reply_error(vmig_agent *a, unsigned sid, int64_t id, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static void reply_error(vmig_agent *a, unsigned sid, int64_t id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    json_object *r = json_object_new_object();
    json_object_object_add(r, "id", json_object_new_int64(id));
    json_object_object_add(r, "error", json_object_new_string(msg));
    send_json(a, sid, r);
}

/* ---- the QEMUs --------------------------------------------------------------------------------
 */

static void log_channels(avm *v, const char *how)
{
    tp_channel_stats st[TP_CHANNELS_MAX + 2];
    size_t n = v->relay ? tp_dest_relay_stats(v->relay, st, G_N_ELEMENTS(st)) : 0;
    int64_t now = g_get_monotonic_time();
    for (size_t i = 0; i < n; i++) {
        int64_t end = st[i].end_us ? st[i].end_us : now; /* one still open (nbd): until now */
        double s = end > st[i].start_us && st[i].start_us ? (double)(end - st[i].start_us) / 1e6
                                                          : 0;
        eng_log(v->a->e, VMIG_LOG_INFO,
                "agent: VM '%s' %s: channel %s %u (order %u): %" G_GUINT64_FORMAT
                " bytes in, %" G_GUINT64_FORMAT " out, %.1f Mbit/s, waited %.3f s for the "
                "source, %.3f s for QEMU%s",
                v->name, how, tp_kind_name(st[i].kind), st[i].index, st[i].order, st[i].bytes_out,
                st[i].bytes_in, s > 0 ? (double)st[i].bytes_out * 8 / s / 1e6 : 0.0,
                (double)st[i].recv_wait_us / 1e6, (double)st[i].send_wait_us / 1e6,
                st[i].failed ? ", failed" : "");
    }
}

/* An image's qemu-nbd: gone once its one client has gone, else stopped here. */
static void stop_nbd(avm *v)
{
    g_autofree char *cmd_path = g_strdup_printf("/proc/%d/cmdline", v->nbd_pid);
    g_autofree char *cmd = NULL;
    gsize len = 0;
    /* still ours (a pid may be reused): its command line names our directory */
    if (v->nbd_pid > 0 && v->nbd_dir && g_file_get_contents(cmd_path, &cmd, &len, NULL) &&
        memmem(cmd, len, v->nbd_dir, strlen(v->nbd_dir))) {
        kill(v->nbd_pid, SIGTERM);
    }
    v->nbd_pid = 0;
    if (v->nbd_dir) {
        eng_vm_remove_dir(v->nbd_dir);
        g_clear_pointer(&v->nbd_dir, g_free);
    }
}

static void avm_free(avm *v)
{
    stop_nbd(v);
    g_free(v->image_path);
    if (!v->released) {
        eng_storage_remove(v->created);
    }
    g_ptr_array_free(v->created, TRUE);
    tp_dest_relay_free(v->relay);
    tp_pump_free(v->qmp_pump);
    for (int i = 0; i < 2; i++) {
        if (v->qmp_fd[i] >= 0) {
            close(v->qmp_fd[i]);
        }
    }
    eng_vm_free(v->vm); /* an unreleased QEMU dies with its guard */
    if (v->lock_fd >= 0) {
        eng_unlock_vm(v->lock_fd, v->lock_path);
    } else {
        g_free(v->lock_path);
    }
    g_free(v->name);
    g_free(v->stage);
    g_free(v->final_dir);
    g_free(v);
}

static void avm_remove(avm *v)
{
    g_hash_table_remove(v->a->vms, v->hex); /* frees it */
}

typedef struct kill_req {
    vmig_agent *a;
    char hex[2 * TP_TOKEN_LEN + 1];
    unsigned sid;
    int64_t id; /* the request to answer, or -1 */
} kill_req;

static void killed(void *opaque, const vmig_error *err)
{
    kill_req *k = opaque;
    avm *v = g_hash_table_lookup(k->a->vms, k->hex);
    if (v) {
        if (err) {
            eng_log(k->a->e, VMIG_LOG_WARN, "agent: stopping VM '%s': %s", v->name,
                    vmig_error_message(err));
        }
        if (v->vm) {
            eng_vm_remove_dir(v->vm->dir);
        }
        avm_remove(v);
    }
    if (k->id >= 0) {
        send_json(k->a, k->sid, ok_reply(k->id));
    }
    g_free(k);
}

/* Stops @v's QEMU, removes its directory and forgets it; answers request @id (or none: -1). */
static void avm_kill(avm *v, unsigned sid, int64_t id, const char *why)
{
    if (v->dying) {
        if (id >= 0) {
            send_json(v->a, sid, ok_reply(id));
        }
        return;
    }
    v->dying = true;
    if (v->image) {
        eng_log(v->a->e, VMIG_LOG_INFO, "agent: dropping the image of VM '%s' received: %s",
                v->name, why);
        avm_remove(v); /* stops its qemu-nbd, removes the image */
        if (id >= 0) {
            send_json(v->a, sid, ok_reply(id));
        }
        return;
    }
    eng_log(v->a->e, VMIG_LOG_INFO, "agent: stopping %s '%s': %s", v->probe ? "probe" : "VM",
            v->name, why);
    log_channels(v, "stopped");
    tp_dest_relay_free(v->relay);
    v->relay = NULL;
    if (v->launching) {
        if (id >= 0) {
            send_json(v->a, sid, ok_reply(id));
        }
        return; /* launched() sees dying */
    }
    kill_req *k = g_new0(kill_req, 1);
    k->a = v->a;
    memcpy(k->hex, v->hex, sizeof(k->hex));
    k->sid = sid;
    k->id = id;
    if (v->probe) {
        eng_vm_discard(g_steal_pointer(&v->vm));
        killed(k, NULL);
        return;
    }
    eng_vm_kill(v->vm, KILL_MS, killed, k);
}

static void relay_failed(void *opaque, const vmig_error *err)
{
    avm *v = opaque;
    eng_log(v->a->e, VMIG_LOG_WARN, "agent: VM '%s': %s", v->name, vmig_error_message(err));
}

static void launched(void *opaque, eng_vm *vm, const vmig_error *err)
{
    avm *v = opaque; /* kept in the table while it starts */
    vmig_agent *a = v->a;
    v->launching = false;
    v->vm = vm;
    if (v->dying) {
        v->dying = false;
        avm_kill(v, 0, -1, "its engine went away while it started");
        return;
    }
    if (err || !vm) {
        reply_error(a, v->owner, v->reply_id, "starting %s QEMU: %s",
                    v->probe ? "a probe" : "the destination",
                    err ? vmig_error_message(err) : "no QEMU and no error");
        avm_remove(v);
        return;
    }
    /* the engine talks to this QEMU through us from now on */
    eng_vm_disconnect(vm);
    json_object *r = ok_reply(v->reply_id);
    json_object_object_add(r, "token", json_object_new_string(v->hex));
    json_object_object_add(r, "dir", json_object_new_string(vm->dir));
    if (!v->probe) {
        g_autofree char *sock = g_build_filename(vm->dir, "migrate.sock", NULL);
        g_autofree char *uri = g_strconcat("unix:", sock, NULL);
        json_object_object_add(r, "uri", json_object_new_string(uri));
        v->relay = tp_dest_relay_new(a->e->ring, sock, NULL, RELAY_TIMEOUT_MS, relay_failed, v);
        if (v->created->len) { /* a storage copy: the engine starts QEMU's NBD server there */
            g_autofree char *nbd = g_build_filename(vm->dir, ENG_NBD_SOCK, NULL);
            tp_dest_relay_set_nbd(v->relay, nbd);
            json_object_object_add(r, "nbd", json_object_new_string(nbd));
        }
    }
    eng_log(a->e, VMIG_LOG_INFO, "agent: %s '%s' started (pid %d) for %s",
            v->probe ? "probe" : "VM", v->name, vm->pid,
            v->probe ? "a check" : "an incoming migration");
    send_json(a, v->owner, r);
}

static avm *avm_new(vmig_agent *a, unsigned sid, int64_t id, const char *name, vmig_error **errp)
{
    if (g_hash_table_size(a->vms) >= MAX_VMS) {
        vmig_set_error(errp, VMIG_E_STATE, "this agent holds %d QEMUs already", MAX_VMS);
        return NULL;
    }
    avm *v = g_new0(avm, 1);
    v->a = a;
    v->owner = sid;
    v->reply_id = id;
    v->lock_fd = -1;
    v->qmp_fd[0] = v->qmp_fd[1] = -1;
    v->created = g_ptr_array_new_with_free_func(g_free);
    v->name = g_strdup(name);
    v->t0_us = g_get_monotonic_time();
    if (!tp_random(v->token, sizeof(v->token), errp)) {
        avm_free(v);
        return NULL;
    }
    token_hex(v->token, v->hex);
    g_hash_table_insert(a->vms, v->hex, v);
    return v;
}

/* Starts @v's QEMU; launched() answers.  The VM table keeps @v until launched() has run. */
static void avm_launch(avm *v, const eng_launch_req *req)
{
    v->launching = true;
    vmig_error *err = NULL;
    if (!eng_vm_launch(v->a->e, req, launched, v, &err)) {
        launched(v, NULL, err);
        vmig_error_free(err);
    }
}

/* ---- requests ---------------------------------------------------------------------------------
 */

static bool check_accel(vmig_agent *a, json_object *req, vmig_error **errp)
{
    const char *accel = NULL;
    static const vmig_jfield fields[] = {{"accel", VJ_STRING, 0, 0}, {NULL}};
    if (!vmig_json_read(req, fields, &accel, "request", errp)) {
        return false;
    }
    vmig_accel want = a->accel;
    if (accel && !eng_accel_parse(accel, &want)) {
        vmig_set_error(errp, VMIG_E_INVAL, "unknown accelerator '%s'", accel);
        return false;
    }
    if (want != a->accel) {
        vmig_set_error(errp, VMIG_E_INVAL, "this agent runs guests under %s, not %s",
                       eng_accel_name(a->accel), eng_accel_name(want));
        return false;
    }
    return true;
}

static void op_probe(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    vmig_error *err = NULL;
    avm *v = NULL;
    if (!check_accel(a, req, &err) || !(v = avm_new(a, s->id, id, "probe", &err))) {
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    v->probe = true;
    eng_launch_req lr = {.accel = a->accel, .probe = true, .guard = true};
    avm_launch(v, &lr);
}

static void op_launch(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    struct {
        const char *name, *cpu;
        json_object *spec, *storage;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"name", VJ_STRING, offsetof(typeof(q), name), VJ_MANDATORY},
        {"cpu", VJ_STRING, offsetof(typeof(q), cpu), 0},
        {"spec", VJ_OBJECT, offsetof(typeof(q), spec), VJ_MANDATORY},
        {"storage", VJ_ARRAY, offsetof(typeof(q), storage), 0},
        {NULL},
    };
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) spec = NULL;
    avm *v = NULL;
    if (!vmig_json_read(req, fields, &q, "launch", &err) || !check_accel(a, req, &err)) {
        goto fail;
    }
    if (!eng_spec_name_valid(q.name)) {
        vmig_set_error(&err, VMIG_E_INVAL, "'%s' is not a valid VM name", q.name);
        goto fail;
    }
    spec = eng_spec_from_json(q.spec, "the source's VM spec", "/", &err);
    if (!spec) {
        goto fail;
    }
    if (strcmp(spec->name, q.name) != 0) {
        vmig_set_error(&err, VMIG_E_INVAL, "the spec names VM '%s', the request '%s'", spec->name,
                       q.name);
        goto fail;
    }
    if (spec->qemu) { /* a key holder may start QEMUs here, not pick what runs */
        vmig_set_error(&err, VMIG_E_INVAL,
                       "the spec names a QEMU binary (%.200s): this agent runs its own",
                       spec->qemu);
        goto fail;
    }
    if (q.cpu) {
        g_free(spec->cpu);
        spec->cpu = g_strdup(q.cpu);
    }
    v = avm_new(a, s->id, id, q.name, &err);
    if (!v) {
        goto fail;
    }
    v->lock_fd = eng_lock_vm(a->e->state_dir, q.name, &v->lock_path, &err);
    if (v->lock_fd < 0) {
        avm_remove(v);
        goto fail;
    }
    v->final_dir = eng_vm_dir(a->e->state_dir, q.name);
    v->stage = g_strconcat(v->final_dir, ENG_INCOMING_SUFFIX, NULL);
    if (g_file_test(v->final_dir, G_FILE_TEST_EXISTS) ||
        g_file_test(v->stage, G_FILE_TEST_EXISTS)) {
        vmig_set_error(&err, VMIG_E_STATE, "the agent's host already has a VM named '%s' (%s)",
                       q.name,
                       g_file_test(v->final_dir, G_FILE_TEST_EXISTS) ? v->final_dir : v->stage);
        avm_remove(v);
        goto fail;
    }
    if (q.storage) { /* a storage copy: new images here, the spec's disks on them */
        g_autofree char *images = g_build_filename(a->e->state_dir, ENG_IMAGE_DIR, NULL);
        if (!eng_storage_create(a->e, images, q.name, q.storage, spec, v->created, &err)) {
            avm_remove(v); /* removes what it made */
            goto fail;
        }
    }
    eng_launch_req lr = {
        .spec = spec, .dir = v->stage, .accel = a->accel, .incoming = true, .guard = true};
    avm_launch(v, &lr);
    return;
fail:
    reply_error(a, s->id, id, "%s", vmig_error_message(err));
    vmig_error_free(err);
}

/* The VM @req's token names, if @s owns it. */
static avm *find_owned(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    const char *token = NULL;
    static const vmig_jfield fields[] = {{"token", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    vmig_error *err = NULL;
    if (!vmig_json_read(req, fields, &token, "request", &err)) {
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return NULL;
    }
    avm *v = g_hash_table_lookup(a->vms, token);
    if (!v || v->owner != s->id || v->launching) {
        reply_error(a, s->id, id, "no QEMU of this connection has token %.40s", token);
        return NULL;
    }
    return v;
}

static void op_release(vmig_agent *a, session *s, int64_t id, avm *v)
{
    vmig_error *err = NULL;
    if (v->probe || v->dying || !v->vm) {
        reply_error(a, s->id, id, "VM '%s' cannot be released now", v->name);
        return;
    }
    if (!eng_vm_release_guard(v->vm, &err)) {
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    v->released = true;
    eng_log(a->e, VMIG_LOG_INFO, "agent: VM '%s' released: it outlives its engine from now on",
            v->name);
    send_json(a, s->id, ok_reply(id));
}

static void op_finish(vmig_agent *a, session *s, int64_t id, avm *v)
{
    if (!v->released) {
        reply_error(a, s->id, id, "VM '%s' was not released", v->name);
        return;
    }
    if (rename(v->stage, v->final_dir) < 0) {
        reply_error(a, s->id, id, "renaming %s to %s: %s", v->stage, v->final_dir,
                    g_strerror(errno));
        return;
    }
    eng_log(a->e, VMIG_LOG_INFO, "agent: VM '%s' migrated in: %.3f s, now in %s", v->name,
            (double)(g_get_monotonic_time() - v->t0_us) / 1e6, v->final_dir);
    log_channels(v, "migrated in");
    json_object *r = ok_reply(id);
    json_object_object_add(r, "dir", json_object_new_string(v->final_dir));
    send_json(a, s->id, r);
    avm_remove(v);
}

/* ---- definitions (engine/define.c) ----------------------------------------------------------
 *
 * Under the VM's lock, as vmig_vm_define() takes it: a migration into this host holds it from
 * "launch" to "finish", so a definition never lands while a VM of that name moves in.  A
 * running VM may be defined (a live migration with --persistent does it after "finish");
 * "exclusive" refuses a name this host defines or runs already (an offline migration).
 */

static bool def_apply(vmig_agent *a, const char *op, const eng_def_req *q, vmig_error **errp)
{
    g_autofree char *lock_path = NULL;
    int fd = eng_lock_vm(a->e->state_dir, q->name, &lock_path, errp);
    if (fd < 0) {
        return false;
    }
    bool ok;
    if (strcmp(op, "undefine") == 0) {
        ok = eng_def_remove(a->e->state_dir, q->name, errp);
    } else if (q->exclusive && !eng_def_check_free(a->e->state_dir, q->name, errp)) {
        ok = false;
    } else if (!q->spec) {
        ok = eng_def_write_running(a->e->state_dir, q->name, errp);
    } else {
        g_autoptr(vmig_spec) spec = eng_spec_from_json(q->spec, "the VM's definition", "/", errp);
        ok = spec && eng_def_write(a->e->state_dir, spec, errp);
    }
    eng_unlock_vm(fd, g_steal_pointer(&lock_path));
    return ok;
}

static void keep_images(vmig_agent *a, session *s, const char *name);

static void op_define(vmig_agent *a, session *s, int64_t id, const char *op, json_object *req)
{
    eng_def_req q = {0};
    vmig_error *err = NULL;
    json_object *qemu = NULL;
    if (eng_agent_read_define(req, op, &q, &err) && q.spec &&
        json_object_object_get_ex(q.spec, "qemu", &qemu)) {
        vmig_set_error(&err, VMIG_E_INVAL, "the spec names a QEMU binary: this agent runs its own");
    }
    if (err || !def_apply(a, op, &q, &err)) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: %s of VM '%s' for %s refused: %s", op,
                q.name ? q.name : "?", s->peer, vmig_error_message(err));
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    eng_log(a->e, VMIG_LOG_INFO, "agent: VM '%s' %s by %s", q.name,
            op[0] == 'u' ? "undefined" : "defined", s->peer);
    if (op[0] == 'd') {
        keep_images(a, s, q.name);
    }
    json_object *r = ok_reply(id);
    g_autofree char *path = eng_def_path(a->e->state_dir, q.name);
    json_object_object_add(r, "path", json_object_new_string(path));
    send_json(a, s->id, r);
}

/* ---- offline storage copy: images received over NBD ------------------------------------------
 *
 * {"op":"receive-image","name":V,"disk":N,"format":F,"size":S}: a new image here, served by a
 * qemu-nbd that takes one client (then exits), reached through the relay as nbd channels of
 * the reply's token.  {"op":"image-done","token":T,"ok":B}: the copy ended; ok keeps the image
 * until the session defines V (then it is V's disk), else it goes.  An image the session never
 * defined goes when the session ends. */

static bool serve_image(vmig_agent *a, avm *v, const char *format, vmig_error **errp)
{
    g_autofree char *tmpl = g_build_filename(a->e->state_dir, ".receive-XXXXXX", NULL);
    if (!g_mkdtemp_full(tmpl, 0700)) {
        vmig_set_error_errno(errp, errno, "creating a directory in %s", a->e->state_dir);
        return false;
    }
    v->nbd_dir = g_strdup(tmpl);
    g_autofree char *sock = g_build_filename(tmpl, "nbd.sock", NULL);
    g_autofree char *pidf = g_build_filename(tmpl, "nbd.pid", NULL);
    g_autofree char *nbd = eng_qemu_tool(a->e, "qemu-nbd");
    g_autofree char *sock_opt = g_strconcat("--socket=", sock, NULL);
    g_autofree char *pid_opt = g_strconcat("--pid-file=", pidf, NULL);
    g_autofree char *fmt_opt = g_strconcat("--format=", format, NULL);
    /* --fork returns once it listens; without --persistent it exits after its client */
    const char *argv[] = {nbd ? nbd : "qemu-nbd", "--fork", sock_opt, pid_opt, fmt_opt,
                          v->image_path,          NULL};
    if (!eng_run_tool(argv, 30, errp)) {
        return false;
    }
    g_autofree char *pid = NULL;
    if (g_file_get_contents(pidf, &pid, NULL, NULL)) {
        v->nbd_pid = (int)g_ascii_strtoll(pid, NULL, 10);
    }
    v->relay = tp_dest_relay_new(a->e->ring, sock, NULL, RELAY_TIMEOUT_MS, relay_failed, v);
    tp_dest_relay_set_nbd(v->relay, sock);
    return true;
}

static void op_receive_image(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    struct {
        const char *name, *format;
        int64_t disk;
        uint64_t size;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"name", VJ_STRING, offsetof(typeof(q), name), VJ_MANDATORY},
        {"format", VJ_STRING, offsetof(typeof(q), format), VJ_MANDATORY},
        {"disk", VJ_INT64, offsetof(typeof(q), disk), VJ_MANDATORY},
        {"size", VJ_UINT64, offsetof(typeof(q), size), VJ_MANDATORY},
        {NULL},
    };
    vmig_error *err = NULL;
    avm *v = NULL;
    g_autofree char *vm_dir = NULL, *images = NULL;
    if (!vmig_json_read(req, fields, &q, "receive-image", &err)) {
        goto fail;
    }
    vm_dir = eng_spec_name_valid(q.name) ? eng_vm_dir(a->e->state_dir, q.name) : NULL;
    if (!vm_dir || q.disk < 0 || q.disk > 255) {
        vmig_set_error(&err, VMIG_E_INVAL, "receive-image: a valid VM name and disk 0-255");
        goto fail;
    }
    if (g_file_test(vm_dir, G_FILE_TEST_EXISTS) ||
        !eng_def_check_free(a->e->state_dir, q.name, &err)) {
        if (!err) {
            vmig_set_error(&err, VMIG_E_STATE, "VM '%s' runs on the agent's host", q.name);
        }
        goto fail;
    }
    v = avm_new(a, s->id, id, q.name, &err);
    if (!v) {
        goto fail;
    }
    v->image = true;
    images = g_build_filename(a->e->state_dir, ENG_IMAGE_DIR, NULL);
    if (!eng_storage_new_image(a->e, images, q.name, (unsigned)q.disk, q.format, q.size, NULL, NULL,
                               v->created, &v->image_path, &err) ||
        !serve_image(a, v, q.format, &err)) {
        avm_remove(v);
        goto fail;
    }
    eng_log(a->e, VMIG_LOG_INFO, "agent: receiving disk%" G_GINT64_FORMAT " of VM '%s' into %s",
            q.disk, q.name, v->image_path);
    json_object *r = ok_reply(id);
    json_object_object_add(r, "token", json_object_new_string(v->hex));
    json_object_object_add(r, "path", json_object_new_string(v->image_path));
    send_json(a, s->id, r);
    return;
fail:
    reply_error(a, s->id, id, "%s", vmig_error_message(err));
    vmig_error_free(err);
}

static void op_image_done(vmig_agent *a, session *s, int64_t id, avm *v, json_object *req)
{
    bool ok = false;
    static const vmig_jfield fields[] = {{"ok", VJ_BOOL, 0, VJ_MANDATORY}, {NULL}};
    vmig_error *err = NULL;
    if (!v->image || v->image_done || !vmig_json_read(req, fields, &ok, "image-done", &err)) {
        reply_error(a, s->id, id, "%s",
                    err ? vmig_error_message(err)
                        : "no image is received "
                          "with this token");
        vmig_error_free(err);
        return;
    }
    if (!ok) {
        avm_kill(v, s->id, id, "its engine says the copy failed");
        return;
    }
    v->image_done = true;
    stop_nbd(v);
    tp_dest_relay_free(v->relay);
    v->relay = NULL;
    json_object *r = ok_reply(id);
    json_object_object_add(r, "path", json_object_new_string(v->image_path));
    send_json(a, s->id, r);
}

/* VM @name is defined here now: the images this session received for it are its disks. */
static void keep_images(vmig_agent *a, session *s, const char *name)
{
    GHashTableIter it;
    gpointer value;
    g_autoptr(GPtrArray) kept = g_ptr_array_new();
    g_hash_table_iter_init(&it, a->vms);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        avm *v = value;
        if (v->image && v->image_done && v->owner == s->id && strcmp(v->name, name) == 0) {
            g_ptr_array_add(kept, v);
        }
    }
    for (guint i = 0; i < kept->len; i++) {
        avm *v = kept->pdata[i];
        v->released = true; /* freeing it keeps the image */
        avm_remove(v);
    }
}

/* The shared-storage proof (storage.c): each disk is here, the same image, with the token the
 * source wrote beside it. */
static void op_storage_check(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    vmig_error *err = NULL;
    if (!eng_storage_check(a->e, req, &err)) {
        eng_log(a->e, VMIG_LOG_INFO, "agent: storage check for %s: %s", s->peer,
                vmig_error_message(err));
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    send_json(a, s->id, ok_reply(id));
}

/* A VM released here whose post-copy migration broke (its engine went away, or the link did):
 * a new engine takes it over with a new token, a new monitor connection and a new relay for
 * the channels of the resumed migration, which QEMU takes at "uri" after migrate-recover. */
static void op_resume(vmig_agent *a, session *s, int64_t id, json_object *req)
{
    const char *name = NULL;
    static const vmig_jfield fields[] = {{"name", VJ_STRING, 0, VJ_MANDATORY}, {NULL}};
    vmig_error *err = NULL;
    if (!vmig_json_read(req, fields, &name, "resume", &err)) {
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    GHashTableIter it;
    gpointer value;
    avm *v = NULL;
    g_hash_table_iter_init(&it, a->vms);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        avm *c = value;
        if (c->released && !c->probe && !c->dying && c->vm && strcmp(c->name, name) == 0) {
            v = c;
        }
    }
    if (!v || !eng_vm_alive(v->vm)) {
        reply_error(a, s->id, id, "no VM '%.64s' was left here by a migration that broke", name);
        return;
    }
    if (v->owner && v->owner != s->id &&
        g_hash_table_contains(a->sessions, GUINT_TO_POINTER(v->owner))) {
        reply_error(a, s->id, id, "VM '%.64s' is another engine's: its connection is open", name);
        return;
    }
    uint8_t token[TP_TOKEN_LEN];
    if (!tp_random(token, sizeof(token), &err)) {
        reply_error(a, s->id, id, "%s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    /* the old engine's token, monitor relay and channels are over */
    g_hash_table_steal(a->vms, v->hex);
    memcpy(v->token, token, sizeof(token));
    token_hex(v->token, v->hex);
    g_hash_table_insert(a->vms, v->hex, v);
    v->owner = s->id;
    g_clear_pointer(&v->qmp_pump, tp_pump_free);
    for (int i = 0; i < 2; i++) {
        if (v->qmp_fd[i] >= 0) {
            close(v->qmp_fd[i]);
            v->qmp_fd[i] = -1;
        }
    }
    log_channels(v, "broke off");
    g_clear_pointer(&v->relay, tp_dest_relay_free);
    g_autofree char *sock = g_build_filename(v->vm->dir, "resume.sock", NULL);
    unlink(sock);
    v->relay = tp_dest_relay_new(a->e->ring, sock, NULL, RELAY_TIMEOUT_MS, relay_failed, v);
    g_autofree char *uri = g_strconcat("unix:", sock, NULL);
    json_object *r = ok_reply(id);
    json_object_object_add(r, "token", json_object_new_string(v->hex));
    json_object_object_add(r, "dir", json_object_new_string(v->vm->dir));
    json_object_object_add(r, "uri", json_object_new_string(uri));
    eng_log(a->e, VMIG_LOG_INFO, "agent: VM '%s' taken over by %s to resume its migration", v->name,
            s->peer);
    send_json(a, s->id, r);
}

static void op_info(vmig_agent *a, session *s, int64_t id)
{
    json_object *r = ok_reply(id);
    json_object_object_add(r, "vmigrate", json_object_new_string(vmig_version()));
    json_object_object_add(r, "accel", json_object_new_string(eng_accel_name(a->accel)));
    json_object_object_add(r, "state-dir", json_object_new_string(a->e->state_dir));
    send_json(a, s->id, r);
}

static void on_message(void *opaque, const char *text, size_t len)
{
    session *s = opaque;
    vmig_agent *a = s->a;
    struct {
        int64_t id;
        const char *op;
    } q = {-1, NULL};
    vmig_error *err = NULL;
    g_autoptr(json_object) req = eng_agent_read_request(text, len, &q.id, &q.op, &err);
    if (!req) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: %s sent a bad request: %s", s->peer,
                vmig_error_message(err));
        reply_error(a, s->id, -1, "a bad request: %s", vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    if (strcmp(q.op, "info") == 0) {
        op_info(a, s, q.id);
    } else if (strcmp(q.op, "probe") == 0) {
        op_probe(a, s, q.id, req);
    } else if (strcmp(q.op, "launch") == 0) {
        op_launch(a, s, q.id, req);
    } else if (strcmp(q.op, "resume") == 0) {
        op_resume(a, s, q.id, req);
    } else if (strcmp(q.op, "define") == 0 || strcmp(q.op, "undefine") == 0) {
        op_define(a, s, q.id, q.op, req);
    } else if (strcmp(q.op, "storage-check") == 0) {
        op_storage_check(a, s, q.id, req);
    } else if (strcmp(q.op, "receive-image") == 0) {
        op_receive_image(a, s, q.id, req);
    } else if (strcmp(q.op, "image-done") == 0) {
        avm *v = find_owned(a, s, q.id, req);
        if (v) {
            op_image_done(a, s, q.id, v, req);
        }
    } else if (strcmp(q.op, "release") == 0 || strcmp(q.op, "finish") == 0 ||
               strcmp(q.op, "kill") == 0) {
        avm *v = find_owned(a, s, q.id, req);
        if (!v) {
            return;
        }
        if (q.op[0] == 'r') {
            op_release(a, s, q.id, v);
        } else if (q.op[0] == 'f') {
            op_finish(a, s, q.id, v);
        } else {
            avm_kill(v, s->id, q.id, "its engine asked");
        }
    } else {
        reply_error(a, s->id, q.id, "unknown operation '%.40s'", q.op);
    }
}

static void session_free(gpointer p)
{
    session *s = p;
    tp_control_free(s->ctl);
    g_free(s->peer);
    g_free(s);
}

static void on_session_closed(void *opaque, const vmig_error *err)
{
    session *s = opaque;
    vmig_agent *a = s->a;
    unsigned sid = s->id;
    eng_log(a->e, err ? VMIG_LOG_WARN : VMIG_LOG_INFO, "agent: control connection from %s %s%s",
            s->peer, err ? "failed: " : "ended", err ? vmig_error_message(err) : "");
    GHashTableIter it;
    gpointer value;
    GPtrArray *orphans = g_ptr_array_new();
    g_hash_table_iter_init(&it, a->vms);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        avm *v = value;
        if (v->owner == sid) {
            g_ptr_array_add(orphans, v);
        }
    }
    for (guint i = 0; i < orphans->len; i++) {
        avm *v = orphans->pdata[i];
        if (v->released) {
            eng_log(a->e, VMIG_LOG_WARN,
                    "agent: VM '%s' stays in %s: its engine went away after the switchover",
                    v->name, v->stage);
            v->owner = 0;
        } else {
            avm_kill(v, 0, -1, "its engine went away");
        }
    }
    g_ptr_array_free(orphans, TRUE);
    g_hash_table_remove(a->sessions, GUINT_TO_POINTER(sid));
}

/* ---- connections ------------------------------------------------------------------------------
 */

static void qmp_relay_done(void *opaque, const vmig_error *err)
{
    avm *v = opaque;
    if (err) {
        eng_log(v->a->e, VMIG_LOG_DEBUG, "agent: monitor relay of '%s': %s", v->name,
                vmig_error_message(err));
    }
    /* freed with the VM; the sockets close now so both sides see the end */
    for (int i = 0; i < 2; i++) {
        if (v->qmp_fd[i] >= 0) {
            shutdown(v->qmp_fd[i], SHUT_RDWR);
        }
    }
}

static void start_qmp(vmig_agent *a, avm *v, int fd, const char *peer)
{
    if (v->qmp_pump || !v->vm || v->dying) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: %s: a second monitor connection to '%s' refused", peer,
                v->name);
        close(fd);
        return;
    }
    g_autofree char *path = g_build_filename(v->vm->dir, "qmp.sock", NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (strlen(path) >= sizeof(sa.sun_path) || ufd < 0 ||
        (g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path)),
         connect(ufd, (struct sockaddr *)&sa, sizeof(sa)) < 0)) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: connecting to the monitor of '%s' at %s: %s", v->name,
                path, g_strerror(errno));
        if (ufd >= 0) {
            close(ufd);
        }
        close(fd);
        return;
    }
    g_unix_set_fd_nonblocking(ufd, TRUE, NULL);
    v->qmp_fd[0] = fd;
    v->qmp_fd[1] = ufd;
    v->qmp_pump = tp_pump_new(a->e->ring, fd, ufd, NULL, qmp_relay_done, v);
}

static bool admit(void *opaque, const tp_hello *h, char **ret_reason)
{
    pending *p = opaque;
    vmig_agent *a = p->a;
    if (h->kind == TP_KIND_CONTROL) {
        if (g_hash_table_size(a->sessions) >= MAX_SESSIONS) {
            *ret_reason = g_strdup_printf("too many control connections (%d)", MAX_SESSIONS);
            return false;
        }
        return true;
    }
    char hex[2 * TP_TOKEN_LEN + 1];
    token_hex(h->token, hex);
    avm *v = g_hash_table_lookup(a->vms, hex);
    /* the table is keyed by the token: compare it once more in constant time */
    if (!v || !tp_ct_equal(v->token, h->token, TP_TOKEN_LEN) || v->dying || v->launching) {
        *ret_reason = g_strdup("no migration has this token");
        return false;
    }
    if (h->kind != TP_KIND_QMP && (v->probe || !v->relay)) {
        *ret_reason = g_strdup("this token's QEMU takes no migration channel");
        return false;
    }
    return true;
}

static void pending_free(pending *p)
{
    tp_handshake_free(p->hs);
    if (p->fd >= 0) {
        close(p->fd);
    }
    g_free(p->peer);
    g_free(p);
}

static void handshaken(void *opaque, const tp_hello *h, const vmig_error *err)
{
    pending *p = opaque;
    vmig_agent *a = p->a;
    g_ptr_array_remove_fast(a->pending, p);
    if (err) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: refused a connection from %s: %s", p->peer,
                vmig_error_message(err));
        pending_free(p);
        return;
    }
    int fd = p->fd;
    p->fd = -1;
    if (h->kind == TP_KIND_CONTROL) {
        session *s = g_new0(session, 1);
        s->a = a;
        s->id = ++a->next_session ? a->next_session : ++a->next_session;
        s->peer = g_strdup(p->peer);
        g_hash_table_insert(a->sessions, GUINT_TO_POINTER(s->id), s);
        s->ctl = tp_control_new(a->e->ring, fd, on_message, on_session_closed, s);
        eng_log(a->e, VMIG_LOG_INFO, "agent: control connection from %s", p->peer);
        pending_free(p);
        return;
    }
    char hex[2 * TP_TOKEN_LEN + 1];
    token_hex(h->token, hex);
    avm *v = g_hash_table_lookup(a->vms, hex);
    if (!v || v->dying) {
        close(fd);
    } else if (h->kind == TP_KIND_QMP) {
        start_qmp(a, v, fd, p->peer);
    } else {
        vmig_error *e = NULL;
        eng_log(a->e, VMIG_LOG_DEBUG, "agent: data connection %s %u for '%s' from %s",
                tp_kind_name((tp_kind)h->kind), h->index, v->name, p->peer);
        if (!tp_dest_relay_add(v->relay, fd, (tp_kind)h->kind, h->index, &e)) {
            eng_log(a->e, VMIG_LOG_WARN, "agent: %s: %s", p->peer, vmig_error_message(e));
            vmig_error_free(e);
        }
    }
    pending_free(p);
}

static char *peer_name(int fd)
{
    struct sockaddr_storage ss = {0};
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0 ||
        getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port, sizeof(port),
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        return g_strdup("(unknown peer)");
    }
    return g_strdup_printf(ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
}

static void start_accept(vmig_agent *a);

static void on_accept(void *opaque, int res)
{
    vmig_agent *a = opaque;
    a->accept_op = 0;
    if (a->closing) {
        if (res >= 0) {
            close(res);
        }
        return;
    }
    if (res < 0) {
        eng_log(a->e, VMIG_LOG_WARN, "agent: accept: %s", g_strerror(-res));
    } else if (a->pending->len >= MAX_PENDING) {
        g_autofree char *peer = peer_name(res);
        eng_log(a->e, VMIG_LOG_WARN, "agent: refused a connection from %s: %d handshakes at once",
                peer, MAX_PENDING);
        close(res);
    } else {
        int one = 1;
        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        pending *p = g_new0(pending, 1);
        p->a = a;
        p->fd = res;
        p->peer = peer_name(res);
        g_ptr_array_add(a->pending, p);
        p->hs = tp_handshake_agent(a->e->ring, res, &a->key, HANDSHAKE_MS, admit, p, handshaken, p);
    }
    start_accept(a);
}

static void start_accept(vmig_agent *a)
{
    int64_t id = ring_accept(a->e->ring, a->lfd, on_accept, a);
    if (id < 0) {
        eng_log(a->e, VMIG_LOG_ERROR, "agent: accept: %s", g_strerror((int)-id));
        return;
    }
    a->accept_op = id;
}

/* ---- the agent --------------------------------------------------------------------------------
 */

bool eng_parse_hostport(const char *s, int default_port, char **ret_host, int *ret_port,
                        vmig_error **errp)
{
    const char *colon = NULL;
    g_autofree char *host = NULL;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || (end[1] && end[1] != ':')) {
            vmig_set_error(errp, VMIG_E_INVAL, "'%s': expected [IPV6]:PORT", s);
            return false;
        }
        host = g_strndup(s + 1, (gsize)(end - s - 1));
        colon = end[1] ? end + 1 : NULL;
    } else {
        colon = strrchr(s, ':');
        host = colon ? g_strndup(s, (gsize)(colon - s)) : g_strdup(s);
        if (colon && strchr(host, ':')) {
            vmig_set_error(errp, VMIG_E_INVAL, "'%s': put an IPv6 address in brackets", s);
            return false;
        }
    }
    int port = default_port;
    if (colon) {
        char *end = NULL;
        long p = strtol(colon + 1, &end, 10);
        if (!colon[1] || *end || p < 0 || p > 65535) {
            vmig_set_error(errp, VMIG_E_INVAL, "'%s': the port is not a number from 0 to 65535", s);
            return false;
        }
        port = (int)p;
    }
    if (!*host) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s': no host", s);
        return false;
    }
    *ret_host = g_steal_pointer(&host);
    *ret_port = port;
    return true;
}

bool eng_resolve(const char *host, int port, struct sockaddr_storage *ret, socklen_t *ret_len,
                 vmig_error **errp)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL;
    char portstr[16];
    g_snprintf(portstr, sizeof(portstr), "%d", port);
    int r = getaddrinfo(host, portstr, &hints, &res);
    if (r != 0 || !res) {
        vmig_set_error(errp, VMIG_E_NOTFOUND, "resolving '%s': %s", host,
                       r == EAI_SYSTEM ? g_strerror(errno) : gai_strerror(r));
        return false;
    }
    memcpy(ret, res->ai_addr, res->ai_addrlen);
    *ret_len = res->ai_addrlen;
    freeaddrinfo(res);
    return true;
}

vmig_agent *vmig_agent_new(vmig_engine *e, const vmig_agent_opts *o, vmig_error **errp)
{
    vmig_agent_opts opts;
    vmig_agent_opts_init(&opts);
    if (o) {
        memcpy(&opts, o, MIN((size_t)o->size, sizeof(opts)));
    }
    if (!opts.key_file) {
        vmig_set_error(errp, VMIG_E_INVAL, "the agent needs a key file ('vmigrate key new FILE')");
        return NULL;
    }
    g_autofree char *host = NULL;
    int port = 0;
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    tp_key key;
    if (!tp_key_load(opts.key_file, &key, errp) ||
        !eng_parse_hostport(opts.listen ? opts.listen : "127.0.0.1", VMIG_AGENT_PORT, &host, &port,
                            errp) ||
        !eng_resolve(host, port, &ss, &sslen, errp)) {
        vmig_prefix_error(errp, "agent: ");
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, 128) < 0) {
        vmig_set_error_errno(errp, errno, "agent: listening on %s port %d", host, port);
        if (fd >= 0) {
            close(fd);
        }
        return NULL;
    }
    socklen_t len = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &len);
    char hbuf[NI_MAXHOST], pbuf[NI_MAXSERV];
    getnameinfo((struct sockaddr *)&ss, len, hbuf, sizeof(hbuf), pbuf, sizeof(pbuf),
                NI_NUMERICHOST | NI_NUMERICSERV);
    vmig_agent *a = g_new0(vmig_agent, 1);
    a->e = e;
    a->key = key;
    a->accel = opts.accel;
    a->lfd = fd;
    a->address = g_strdup_printf(ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", hbuf, pbuf);
    a->sessions = g_hash_table_new_full(NULL, NULL, NULL, session_free);
    a->vms = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, (GDestroyNotify)avm_free);
    a->pending = g_ptr_array_new();
    memset(&key, 0, sizeof(key));
    eng_log(e, VMIG_LOG_INFO, "agent: listening on %s, state directory %s, guests under %s",
            a->address, e->state_dir, eng_accel_name(a->accel));
    start_accept(a);
    return a;
}

bool vmig_key_create(const char *path, vmig_error **errp)
{
    return tp_key_create(path, errp);
}

const char *vmig_agent_address(const vmig_agent *a)
{
    return a->address;
}

static bool idle(void *opaque)
{
    vmig_agent *a = opaque;
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, a->vms);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        const avm *v = value;
        if (v->dying || v->launching) {
            return false;
        }
    }
    return true;
}

void vmig_agent_free(vmig_agent *a)
{
    if (!a) {
        return;
    }
    a->closing = true;
    if (a->accept_op > 0) {
        ring_cancel(a->e->ring, a->accept_op);
        a->accept_op = 0;
    }
    for (guint i = 0; i < a->pending->len; i++) {
        pending_free(a->pending->pdata[i]);
    }
    g_ptr_array_set_size(a->pending, 0);
    g_hash_table_remove_all(a->sessions);
    /* every QEMU not released is stopped, and waited for (a few seconds at most) */
    GList *all = g_hash_table_get_values(a->vms);
    for (GList *l = all; l; l = l->next) {
        avm *v = l->data;
        if (!v->released) {
            avm_kill(v, 0, -1, "the agent stops");
        }
    }
    g_list_free(all);
    vmig_error *err = NULL;
    if (!eng_run_until(a->e, idle, a, &err)) {
        eng_log(a->e, VMIG_LOG_ERROR, "agent: stopping: %s", vmig_error_message(err));
        vmig_error_free(err);
    }
    g_hash_table_destroy(a->vms); /* the released ones live on */
    g_hash_table_destroy(a->sessions);
    g_ptr_array_free(a->pending, TRUE);
    close(a->lfd);
    g_free(a->address);
    memset(&a->key, 0, sizeof(a->key));
    g_free(a);
}
