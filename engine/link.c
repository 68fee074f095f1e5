/*
 * The engine's side of an agent (link.h).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/json.h"
#include "link.h"
#include "transport/control.h"

#define LINK_TIMEOUT_MS 10000

typedef struct call {
    eng_link_reply_fn fn;
    void *opaque;
} call;

/* One TCP connection to the agent being opened: connect, then the handshake. */
typedef struct dial {
    eng_link *l;
    int fd;
    int64_t op;
    tp_kind kind;
    uint8_t token[TP_TOKEN_LEN];
    tp_handshake *hs;
    void (*done)(struct dial *d, int fd, const vmig_error *err);
    void *opaque;
} dial;

struct eng_link {
    vmig_engine *e;
    char *name;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    tp_key key;
    tp_control *ctl;
    int64_t next_id;
    GHashTable *calls; /* id -> call */
    GPtrArray *dials;
    eng_link_done_fn ready, closed;
    void *ready_opaque, *closed_opaque;
};

eng_link *eng_link_new(vmig_engine *e, const char *dest, const char *key_file, vmig_error **errp)
{
    if (!g_str_has_prefix(dest, "vmig://")) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a vmig://HOST[:PORT] destination", dest);
        return NULL;
    }
    if (!key_file) {
        vmig_set_error(errp, VMIG_E_INVAL, "destination %s: give the agent's key file (--key FILE)",
                       dest);
        return NULL;
    }
    const char *hp = dest + strlen("vmig://");
    g_autofree char *host = NULL;
    int port = 0;
    eng_link *l = g_new0(eng_link, 1);
    if (!eng_parse_hostport(hp, VMIG_AGENT_PORT, &host, &port, errp) || port == 0 ||
        !tp_key_load(key_file, &l->key, errp) ||
        !eng_resolve(host, port, &l->addr, &l->addr_len, errp)) {
        if (port == 0 && host) {
            vmig_set_error(errp, VMIG_E_INVAL, "destination %s: port 0", dest);
        }
        vmig_prefix_error(errp, "destination %s: ", dest);
        g_free(l);
        return NULL;
    }
    l->e = e;
    l->name = g_strdup_printf(strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    l->calls = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
    l->dials = g_ptr_array_new();
    return l;
}

const char *eng_link_name(const eng_link *l)
{
    return l->name;
}

const struct sockaddr *eng_link_addr(const eng_link *l, socklen_t *ret_len)
{
    *ret_len = l->addr_len;
    return (const struct sockaddr *)&l->addr;
}

const tp_key *eng_link_key(const eng_link *l)
{
    return &l->key;
}

bool eng_link_alive(const eng_link *l)
{
    return l && tp_control_alive(l->ctl);
}

/* ---- dialling ---------------------------------------------------------------------------------
 */

static void dial_free(dial *d)
{
    g_ptr_array_remove_fast(d->l->dials, d);
    tp_handshake_free(d->hs);
    if (d->fd >= 0) {
        close(d->fd);
    }
    g_free(d);
}

static void dial_end(dial *d, const vmig_error *err)
{
    int fd = err ? -1 : d->fd;
    if (!err) {
        d->fd = -1;
    }
    d->done(d, fd, err);
    dial_free(d);
}

static void dialled(void *opaque, const tp_hello *hello, const vmig_error *err)
{
    dial *d = opaque;
    (void)hello;
    if (err) {
        vmig_error *e = vmig_error_copy(err);
        vmig_prefix_error(&e, "the agent at %s: ", d->l->name);
        dial_end(d, e);
        vmig_error_free(e);
        return;
    }
    dial_end(d, NULL);
}

static void connected(void *opaque, int res)
{
    dial *d = opaque;
    d->op = 0;
    if (!d->l) { /* freed meanwhile */
        close(d->fd);
        g_free(d);
        return;
    }
    if (res < 0) {
        vmig_error *e = NULL;
        vmig_set_error_errno(&e, -res, "connecting to the agent at %s", d->l->name);
        dial_end(d, e);
        vmig_error_free(e);
        return;
    }
    int one = 1;
    setsockopt(d->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    d->hs = tp_handshake_source(d->l->e->ring, d->fd, &d->l->key, LINK_TIMEOUT_MS, d->kind, 0,
                                d->token, dialled, d);
}

static void link_dial(eng_link *l, tp_kind kind, const uint8_t *token,
                      void (*done)(dial *d, int fd, const vmig_error *err), void *opaque)
{
    dial *d = g_new0(dial, 1);
    d->l = l;
    d->kind = kind;
    if (token) {
        memcpy(d->token, token, TP_TOKEN_LEN);
    }
    d->done = done;
    d->opaque = opaque;
    d->fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    g_ptr_array_add(l->dials, d);
    vmig_error *e = NULL;
    if (d->fd < 0) {
        vmig_set_error_errno(&e, errno, "a socket for the agent");
    } else {
        int64_t id = ring_connect(l->e->ring, d->fd, (struct sockaddr *)&l->addr, l->addr_len,
                                  connected, d);
        if (id < 0) {
            vmig_set_error_errno(&e, (int)-id, "connecting to the agent at %s", l->name);
        } else {
            d->op = id;
        }
    }
    if (e) {
        dial_end(d, e);
        vmig_error_free(e);
    }
}

/* ---- the control connection -------------------------------------------------------------------
 */

static void fail_calls(eng_link *l, const vmig_error *err)
{
    GHashTable *calls = l->calls;
    l->calls = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, g_free);
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, calls);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        call *c = value;
        if (c->fn) {
            c->fn(c->opaque, NULL, err);
        }
    }
    g_hash_table_destroy(calls);
}

static void on_closed(void *opaque, const vmig_error *err)
{
    eng_link *l = opaque;
    vmig_error *e = NULL;
    if (err) {
        e = vmig_error_copy(err);
        vmig_prefix_error(&e, "the agent at %s: ", l->name);
    } else {
        vmig_set_error(&e, VMIG_E_IO, "the agent at %s closed the connection", l->name);
    }
    fail_calls(l, e);
    eng_link_done_fn fn = l->closed;
    l->closed = NULL;
    if (fn) {
        fn(l->closed_opaque, e);
    }
    vmig_error_free(e);
}

/* One JSON object of at most TP_PAYLOAD_MAX bytes, nested at most 16 deep. */
static json_object *parse_object(const char *text, size_t len, const char *what, vmig_error **errp)
{
    json_tokener *tok = json_tokener_new_ex(16);
    json_object *obj = len <= TP_PAYLOAD_MAX ? json_tokener_parse_ex(tok, text, (int)len) : NULL;
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    json_tokener_free(tok);
    if (!obj || jerr != json_tokener_success || !json_object_is_type(obj, json_type_object)) {
        json_object_put(obj);
        vmig_set_error(errp, VMIG_E_PROTO, "%s is not a JSON object", what);
        return NULL;
    }
    return obj;
}

json_object *eng_link_read_reply(const char *text, size_t len, int64_t *ret_id,
                                 const char **ret_error, vmig_error **errp)
{
    json_object *msg = parse_object(text, len, "the agent's reply", errp);
    struct {
        int64_t id;
        const char *error;
        bool ok;
    } q = {-1, NULL, false};
    static const vmig_jfield fields[] = {
        {"id", VJ_INT64, offsetof(typeof(q), id), VJ_MANDATORY},
        {"error", VJ_STRING, offsetof(typeof(q), error), 0},
        {"ok", VJ_BOOL, offsetof(typeof(q), ok), 0},
        {NULL},
    };
    if (!msg || !vmig_json_read(msg, fields, &q, "the agent's reply", errp)) {
        json_object_put(msg);
        return NULL;
    }
    *ret_id = q.id;
    *ret_error = q.error ? q.error : q.ok ? NULL : "a reply that is neither ok nor an error";
    return msg;
}

json_object *eng_agent_read_request(const char *text, size_t len, int64_t *ret_id,
                                    const char **ret_op, vmig_error **errp)
{
    json_object *req = parse_object(text, len, "the request", errp);
    struct {
        int64_t id;
        const char *op;
    } q = {-1, NULL};
    static const vmig_jfield fields[] = {
        {"id", VJ_INT64, offsetof(typeof(q), id), VJ_MANDATORY},
        {"op", VJ_STRING, offsetof(typeof(q), op), VJ_MANDATORY},
        {NULL},
    };
    if (!req || !vmig_json_read(req, fields, &q, "request", errp)) {
        json_object_put(req);
        return NULL;
    }
    *ret_id = q.id;
    *ret_op = q.op;
    return req;
}

bool eng_agent_read_define(json_object *req, const char *op, eng_def_req *ret, vmig_error **errp)
{
    eng_def_req q = {0};
    static const vmig_jfield fields[] = {
        {"name", VJ_STRING, offsetof(eng_def_req, name), VJ_MANDATORY},
        {"spec", VJ_OBJECT, offsetof(eng_def_req, spec), 0},
        {"exclusive", VJ_BOOL, offsetof(eng_def_req, exclusive), 0},
        {NULL},
    };
    if (!vmig_json_read(req, fields, &q, op, errp)) {
        return false;
    }
    if (!eng_spec_name_valid(q.name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: '%.80s' is not a valid VM name", op, q.name);
        return false;
    }
    if (strcmp(op, "define") != 0 && (q.spec || q.exclusive)) {
        vmig_set_error(errp, VMIG_E_INVAL, "%s: takes only a name", op);
        return false;
    }
    *ret = q;
    return true;
}

static void on_message(void *opaque, const char *text, size_t len)
{
    eng_link *l = opaque;
    int64_t id = -1;
    const char *error = NULL;
    vmig_error *err = NULL;
    g_autoptr(json_object) msg = eng_link_read_reply(text, len, &id, &error, &err);
    if (!msg) {
        eng_log(l->e, VMIG_LOG_WARN, "the agent at %s: %s", l->name, vmig_error_message(err));
        vmig_error_free(err);
        return;
    }
    call *c = g_hash_table_lookup(l->calls, &id);
    if (!c) {
        if (error) {
            eng_log(l->e, VMIG_LOG_WARN, "the agent at %s: %s", l->name, error);
        }
        return;
    }
    call done = *c;
    g_hash_table_remove(l->calls, &id);
    if (!done.fn) { /* nobody waits for this one */
        return;
    }
    if (error) {
        vmig_set_error(&err, VMIG_E_STATE, "the agent at %s: %s", l->name, error);
        done.fn(done.opaque, NULL, err);
        vmig_error_free(err);
        return;
    }
    done.fn(done.opaque, msg, NULL);
}

static void control_dialled(dial *d, int fd, const vmig_error *err)
{
    eng_link *l = d->l;
    if (!err) {
        l->ctl = tp_control_new(l->e->ring, fd, on_message, on_closed, l);
    }
    eng_link_done_fn fn = l->ready;
    l->ready = NULL;
    if (fn) {
        fn(l->ready_opaque, err);
    }
}

void eng_link_connect(eng_link *l, eng_link_done_fn ready, void *opaque)
{
    l->ready = ready;
    l->ready_opaque = opaque;
    link_dial(l, TP_KIND_CONTROL, NULL, control_dialled, NULL);
}

void eng_link_set_closed_cb(eng_link *l, eng_link_done_fn fn, void *opaque)
{
    l->closed = fn;
    l->closed_opaque = opaque;
}

void eng_link_call(eng_link *l, const char *op, json_object *args, eng_link_reply_fn fn,
                   void *opaque)
{
    json_object *req = args ? args : json_object_new_object();
    int64_t id = ++l->next_id;
    json_object_object_add(req, "id", json_object_new_int64(id));
    json_object_object_add(req, "op", json_object_new_string(op));
    vmig_error *err = NULL;
    if (!l->ctl) {
        vmig_set_error(&err, VMIG_E_STATE, "not connected to the agent at %s", l->name);
    } else if (tp_control_send(l->ctl, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
                               &err)) {
        call *c = g_new0(call, 1);
        c->fn = fn;
        c->opaque = opaque;
        int64_t *key = g_new(int64_t, 1);
        *key = id;
        g_hash_table_insert(l->calls, key, c);
    } else {
        vmig_prefix_error(&err, "the agent at %s: ", l->name);
    }
    json_object_put(req);
    if (err && fn) {
        fn(opaque, NULL, err);
    }
    vmig_error_free(err);
}

/* ---- QEMUs the agent starts -------------------------------------------------------------------
 */

typedef struct launch {
    eng_link *l;
    char *name;
    vmig_spec *spec;
    vmig_accel accel;
    qmp_event_fn ev;
    void *ev_opaque;
    eng_launch_fn done;
    void *opaque;
    char *token, *dir, *uri;
    qmp_conn *qmp;
} launch;

static void launch_end(launch *ln, const vmig_error *err)
{
    eng_vm *vm = NULL;
    if (!err) {
        vm = g_new0(eng_vm, 1);
        vm->e = ln->l->e;
        vm->name = g_steal_pointer(&ln->name);
        vm->dir = g_steal_pointer(&ln->dir);
        vm->spec = g_steal_pointer(&ln->spec);
        vm->accel = ln->accel;
        vm->guard_fd = -1;
        vm->qmp = g_steal_pointer(&ln->qmp);
        vm->remote_token = g_steal_pointer(&ln->token);
        vm->remote_uri = g_steal_pointer(&ln->uri);
    }
    ln->done(ln->opaque, vm, err);
    qmp_conn_free(ln->qmp);
    vmig_spec_free(ln->spec);
    g_free(ln->name);
    g_free(ln->token);
    g_free(ln->dir);
    g_free(ln->uri);
    g_free(ln);
}

static void launch_ready(void *opaque, const vmig_error *err)
{
    launch *ln = opaque;
    if (err) {
        vmig_error *e = vmig_error_copy(err);
        vmig_prefix_error(&e, "the monitor of '%s' through the agent at %s: ", ln->name,
                          ln->l->name);
        launch_end(ln, e);
        vmig_error_free(e);
        return;
    }
    launch_end(ln, NULL);
}

static void qmp_dialled(dial *d, int fd, const vmig_error *err)
{
    launch *ln = d->opaque;
    if (err) {
        launch_end(ln, err);
        return;
    }
    g_autofree char *label = g_strdup_printf("%s@%s", ln->name, ln->l->name);
    ln->qmp = qmp_conn_new(ln->l->e->ring, label);
    vmig_error *e = NULL;
    if (!qmp_conn_attach_fd(ln->qmp, fd, &e)) {
        launch_end(ln, e);
        vmig_error_free(e);
        return;
    }
    if (ln->ev) {
        qmp_conn_set_event_cb(ln->qmp, ln->ev, ln->ev_opaque);
    }
    qmp_conn_start(ln->qmp, ENG_START_TIMEOUT_MS, launch_ready, ln);
}

static void launch_replied(void *opaque, json_object *reply, const vmig_error *err)
{
    launch *ln = opaque;
    struct {
        const char *token, *dir, *uri;
    } q = {0};
    static const vmig_jfield fields[] = {
        {"token", VJ_STRING, offsetof(typeof(q), token), VJ_MANDATORY},
        {"dir", VJ_STRING, offsetof(typeof(q), dir), VJ_MANDATORY},
        {"uri", VJ_STRING, offsetof(typeof(q), uri), 0},
        {NULL},
    };
    vmig_error *e = NULL;
    uint8_t token[TP_TOKEN_LEN];
    if (err) {
        launch_end(ln, err);
        return;
    }
    if (!vmig_json_read(reply, fields, &q, "the agent's launch reply", &e) ||
        !eng_link_token(q.token, token)) {
        if (!e) {
            vmig_set_error(&e, VMIG_E_PROTO, "the agent's launch reply: a bad token");
        }
        launch_end(ln, e);
        vmig_error_free(e);
        return;
    }
    ln->token = g_strdup(q.token);
    ln->dir = g_strdup(q.dir);
    ln->uri = g_strdup(q.uri);
    link_dial(ln->l, TP_KIND_QMP, token, qmp_dialled, ln);
}

void eng_link_launch(eng_link *l, const char *op, json_object *args, const char *name,
                     const vmig_spec *spec, vmig_accel accel, qmp_event_fn ev, void *ev_opaque,
                     eng_launch_fn done, void *opaque)
{
    launch *ln = g_new0(launch, 1);
    ln->l = l;
    ln->name = g_strdup(name);
    ln->spec = spec ? eng_spec_copy(spec) : NULL;
    ln->accel = accel;
    ln->ev = ev;
    ln->ev_opaque = ev_opaque;
    ln->done = done;
    ln->opaque = opaque;
    json_object *req = args ? args : json_object_new_object();
    json_object_object_add(req, "accel", json_object_new_string(eng_accel_name(accel)));
    eng_link_call(l, op, req, launch_replied, ln);
}

/* ---- definitions -------------------------------------------------------------------------------
 */

typedef struct def_call {
    eng_link_done_fn done;
    void *opaque;
} def_call;

static void def_replied(void *opaque, json_object *reply, const vmig_error *err)
{
    def_call *c = opaque;
    (void)reply;
    c->done(c->opaque, err);
    g_free(c);
}

static void def_call_start(eng_link *l, const char *op, json_object *args, eng_link_done_fn done,
                           void *opaque)
{
    def_call *c = g_new0(def_call, 1);
    c->done = done;
    c->opaque = opaque;
    eng_link_call(l, op, args, def_replied, c);
}

void eng_link_define(eng_link *l, const char *name, const vmig_spec *spec, bool exclusive,
                     eng_link_done_fn done, void *opaque)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "name", json_object_new_string(name));
    if (spec) {
        json_object_object_add(args, "spec", eng_spec_to_obj(spec));
    }
    if (exclusive) {
        json_object_object_add(args, "exclusive", json_object_new_boolean(true));
    }
    def_call_start(l, "define", args, done, opaque);
}

void eng_link_undefine(eng_link *l, const char *name, eng_link_done_fn done, void *opaque)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "name", json_object_new_string(name));
    def_call_start(l, "undefine", args, done, opaque);
}

bool eng_link_token(const char *hex, uint8_t out[TP_TOKEN_LEN])
{
    if (strlen(hex) != (size_t)2 * TP_TOKEN_LEN) {
        return false;
    }
    for (size_t i = 0; i < TP_TOKEN_LEN; i++) {
        int hi = g_ascii_xdigit_value(hex[2 * i]), lo = g_ascii_xdigit_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return false;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

void eng_link_free(eng_link *l)
{
    if (!l) {
        return;
    }
    while (l->dials->len) {
        dial *d = l->dials->pdata[0];
        g_ptr_array_remove_index_fast(l->dials, 0);
        tp_handshake_free(d->hs);
        d->hs = NULL;
        if (d->op > 0) {
            d->l = NULL; /* connected() frees it */
            ring_cancel(l->e->ring, d->op);
        } else {
            if (d->fd >= 0) {
                close(d->fd);
            }
            g_free(d);
        }
    }
    g_ptr_array_free(l->dials, TRUE);
    l->closed = NULL;
    tp_control_free(l->ctl);
    g_hash_table_destroy(l->calls); /* no callbacks: the caller is done with them */
    g_free(l->name);
    memset(&l->key, 0, sizeof(l->key));
    g_free(l);
}
