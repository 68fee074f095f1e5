/* The QMP parser and connection, against a scripted fake peer. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <string.h>
#include <unistd.h>

#include "qmp/qmp.h"
#include "ring/ring.h"
#include "tests/support/fake_qmp.h"
#include "tests/support/t_util.h"

/* ---- parser ------------------------------------------------------------------------------ */

typedef struct seen {
    int count;
    char last[256];
} seen;

static void on_msg(void *opaque, json_object *msg)
{
    seen *s = opaque;
    s->count++;
    g_strlcpy(s->last, json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN),
              sizeof(s->last));
}

Test(qmp_parser, two_messages_in_one_read)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(0, 0);
    seen s = {0};
    const char *in = "{\"return\": {}, \"id\": 1}\r\n{\"event\": \"STOP\"}\r\n";
    cr_assert(eq(int, qmp_parser_feed(p, in, strlen(in), on_msg, &s, NULL), 2));
    cr_assert(eq(int, s.count, 2));
    cr_assert(eq(str, s.last, "{\"event\":\"STOP\"}"));
}

Test(qmp_parser, message_split_across_reads)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(0, 0);
    seen s = {0};
    const char *parts[] = {"{\"ret", "urn\": {\"status\": \"run", "ning\"}}\r", "\n"};
    for (int i = 0; i < 3; i++) {
        cr_assert(eq(int, qmp_parser_feed(p, parts[i], strlen(parts[i]), on_msg, &s, NULL), 0));
    }
    cr_assert(gt(sz, qmp_parser_pending(p), 0));
    cr_assert(eq(int, qmp_parser_feed(p, parts[3], 1, on_msg, &s, NULL), 1));
    cr_assert(eq(str, s.last, "{\"return\":{\"status\":\"running\"}}"));
    cr_assert(eq(sz, qmp_parser_pending(p), 0));
}

Test(qmp_parser, blank_lines_are_skipped)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(0, 0);
    seen s = {0};
    const char *in = "\r\n\n{\"a\": 1}\n\r\n";
    cr_assert(eq(int, qmp_parser_feed(p, in, strlen(in), on_msg, &s, NULL), 1));
}

static vmig_error *feed_error(const char *in, size_t max)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(max, 4);
    seen s = {0};
    vmig_error *err = NULL;
    cr_assert(eq(int, qmp_parser_feed(p, in, strlen(in), on_msg, &s, &err), -1));
    cr_assert(eq(int, s.count, 0));
    cr_assert_not_null(err);
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_PROTO));
    return err;
}

Test(qmp_parser, malformed_json_is_a_protocol_error)
{
    vmig_error *err = feed_error("{\"return\": {]\n", 0);
    cr_assert_not_null(strstr(vmig_error_message(err), "malformed QMP message"));
    cr_assert_not_null(strstr(vmig_error_message(err), "{\"return\": {]"));
    vmig_error_free(err);
}

Test(qmp_parser, trailing_garbage_is_rejected)
{
    vmig_error *err = feed_error("{\"a\": 1} x\n", 0);
    vmig_error_free(err);
}

Test(qmp_parser, non_object_is_rejected)
{
    vmig_error *err = feed_error("[1, 2]\n", 0);
    cr_assert_not_null(strstr(vmig_error_message(err), "not a JSON object"));
    vmig_error_free(err);
}

Test(qmp_parser, oversized_line_is_rejected_before_newline)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(64, 0);
    char big[100];
    memset(big, 'x', sizeof(big));
    vmig_error *err = NULL;
    seen s = {0};
    /* no newline at all: the limit must hold while buffering, not only when parsing */
    cr_assert(eq(int, qmp_parser_feed(p, big, sizeof(big), on_msg, &s, &err), -1));
    cr_assert_not_null(strstr(vmig_error_message(err), "exceeds the limit of 64 bytes"));
    vmig_error_free(err);
}

Test(qmp_parser, nesting_is_bounded)
{
    vmig_error *err = feed_error("{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}\n", 0);
    cr_assert_not_null(strstr(vmig_error_message(err), "nested too deeply"));
    vmig_error_free(err);
}

Test(qmp_parser, control_bytes_are_escaped_in_errors)
{
    vmig_error *err = feed_error("\x01\x02garbage\n", 0);
    cr_assert_not_null(strstr(vmig_error_message(err), "\\x01\\x02garbage"));
    vmig_error_free(err);
}

/* ---- connection ---------------------------------------------------------------------------- */

typedef struct events {
    int count;
    char name[32];
    int64_t ts_us;
} events;

static void on_event(void *opaque, const char *ev, json_object *data, int64_t ts)
{
    events *e = opaque;
    e->count++;
    g_strlcpy(e->name, ev, sizeof(e->name));
    e->ts_us = ts;
}

static qmp_conn *connect_fake(const t_step *script, t_fake **ret_fake)
{
    int fd = -1;
    *ret_fake = t_fake_start(script, &fd);
    cr_assert_not_null(*ret_fake);
    qmp_conn *c = qmp_conn_new(t_ring(), "fake");
    cr_assert(qmp_conn_attach_fd(c, fd, NULL));
    return c;
}

static void finish(t_fake *f)
{
    bool ok = t_fake_finish(f);
    cr_expect(ok, "fake peer: %s", t_fake_failure(f));
    t_fake_free(f);
}

Test(qmp_conn, handshake_enables_oob_when_offered, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, T_GREETING},
        {T_EXPECT, "qmp_capabilities"},
        {T_SEND, "{\"return\": {}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(qmp_conn_handshake(c, 2000, &err), "%s", vmig_error_message(err));
    cr_assert(qmp_conn_has_oob(c));
    cr_assert(eq(int, qmp_conn_version(c), 70222));
    cr_assert(eq(str, (char *)t_fake_last_args(f), "{\"enable\":[\"oob\"]}"));
    finish(f);
}

Test(qmp_conn, handshake_without_oob, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, T_GREETING_NO_OOB},
        {T_EXPECT, "qmp_capabilities"},
        {T_SEND, "{\"return\": {}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    cr_assert(not(qmp_conn_has_oob(c)));
    cr_assert(eq(str, (char *)t_fake_last_args(f), ""));
    vmig_error *err = NULL;
    cr_assert_null(qmp_conn_call(c, "migrate-pause", NULL, QMP_CALL_OOB, 1000, &err));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_STATE));
    vmig_error_free(err);
    finish(f);
}

#define HANDSHAKE                                                                                  \
    {T_SEND, T_GREETING}, {T_EXPECT, "qmp_capabilities"},                                          \
    {                                                                                              \
        T_SEND, "{\"return\": {}, \"id\": $ID}\r\n"                                                \
    }

Test(qmp_conn, reply_matched_by_id_past_late_replies_and_events, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        /* a reply to a command whose caller gave up, an event, then ours */
        {T_SEND, "{\"return\": {\"status\": \"stale\"}, \"id\": 999}\r\n"
                 "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 250}, "
                 "\"event\": \"STOP\"}\r\n"},
        {T_SLEEP, .ms = 20},
        {T_SEND, "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    events ev = {0};
    qmp_conn_set_event_cb(c, on_event, &ev);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    vmig_error *err = NULL;
    g_autoptr(json_object) r = qmp_conn_call(c, "query-status", NULL, 0, 2000, &err);
    cr_assert_not_null(r, "%s", vmig_error_message(err));
    json_object *st = NULL;
    cr_assert(json_object_object_get_ex(r, "status", &st));
    cr_assert(eq(str, (char *)json_object_get_string(st), "running"));
    cr_assert(eq(int, ev.count, 1));
    cr_assert(eq(str, ev.name, "STOP"));
    cr_assert(eq(i64, ev.ts_us, INT64_C(1700000000000250)));
    finish(f);
}

Test(qmp_conn, reply_split_over_many_writes, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-migrate"},
        {T_SEND, "{\"return\": {\"sta"},
        {T_SLEEP, .ms = 30},
        {T_SEND, "tus\": \"active\"}, \"i"},
        {T_SLEEP, .ms = 30},
        {T_SEND, "d\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    g_autoptr(json_object) r = qmp_conn_call(c, "query-migrate", NULL, 0, 2000, NULL);
    cr_assert_not_null(r);
    finish(f);
}

Test(qmp_conn, qemu_error_has_class_and_description, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "migrate-incoming"},
        {T_SEND, "{\"id\": $ID, \"error\": {\"class\": \"GenericError\", \"desc\": "
                 "\"The incoming migration has already been started\"}}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string("unix:/x"));
    vmig_error *err = NULL;
    cr_assert_null(qmp_conn_call(c, "migrate-incoming", args, 0, 2000, &err));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_QEMU));
    cr_assert(eq(str, (char *)vmig_error_message(err),
                 "migrate-incoming: The incoming migration has already been started "
                 "(GenericError)"));
    cr_assert(eq(str, (char *)t_fake_last_args(f), "{\"uri\":\"unix:\\/x\"}"));
    vmig_error_free(err);
    cr_assert(qmp_conn_alive(c), "a refused command leaves the connection usable");
    finish(f);
}

Test(qmp_conn, peer_hangs_up_mid_command, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "migrate"},
        {T_CLOSE},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    vmig_error *err = NULL;
    int64_t t0 = vmig_now_ms();
    cr_assert_null(qmp_conn_call(c, "migrate", NULL, 0, 5000, &err));
    cr_assert(lt(i64, vmig_now_ms() - t0, 4000),
              "a hang-up is noticed at once, not at the deadline");
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_IO));
    cr_assert_not_null(strstr(vmig_error_message(err), "QEMU closed the QMP connection"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    cr_assert(not(qmp_conn_alive(c)));
    err = NULL;
    cr_assert_null(qmp_conn_call(c, "query-status", NULL, 0, 1000, &err));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_IO));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, silent_peer_times_out, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_SLEEP, .ms = 2000},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    vmig_error *err = NULL;
    int64_t t0 = vmig_now_ms();
    cr_assert_null(qmp_conn_call(c, "query-status", NULL, 0, 300, &err));
    int64_t took = vmig_now_ms() - t0;
    cr_assert(ge(i64, took, 290));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_TIMEOUT));
    cr_assert_not_null(strstr(vmig_error_message(err), "no reply within 300 ms"));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, malformed_reply_breaks_the_connection, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_SEND, "{\"return\": oops}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    vmig_error *err = NULL;
    cr_assert_null(qmp_conn_call(c, "query-status", NULL, 0, 2000, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "malformed QMP message"), "%s",
                       vmig_error_message(err));
    cr_assert(not(qmp_conn_alive(c)));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, oversized_message_breaks_the_connection, .timeout = 20)
{
    /* 11 MiB without a newline: over the 10 MiB bound */
    static char *huge;
    huge = g_malloc(11u << 20);
    memset(huge, ' ', 11u << 20);
    huge[(11u << 20) - 1] = '\0';
    huge[0] = '{';
    t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_SEND, huge},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    vmig_error *err = NULL;
    cr_assert_null(qmp_conn_call(c, "query-status", NULL, 0, 10000, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "exceeds the limit of 10485760 bytes"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    qmp_conn_free(g_steal_pointer(&c)); /* unblock the peer's write */
    t_fake_finish(f);
    t_fake_free(f);
    g_free(huge);
}

Test(qmp_conn, not_a_qmp_server, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, "{\"hello\": \"world\"}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(not(qmp_conn_handshake(c, 2000, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_PROTO));
    cr_assert_not_null(strstr(vmig_error_message(err), "not a QMP server"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, text_protocol_peer_is_not_qmp, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, "SSH-2.0-OpenSSH_9.2\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(not(qmp_conn_handshake(c, 2000, &err)));
    cr_assert_not_null(strstr(vmig_error_message(err), "not a QMP server"), "%s",
                       vmig_error_message(err));
    cr_assert_not_null(strstr(vmig_error_message(err), "SSH-2.0"));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, silent_peer_gives_no_greeting, .timeout = 10)
{
    static const t_step script[] = {
        {T_SLEEP, .ms = 1000},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(not(qmp_conn_handshake(c, 200, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_TIMEOUT));
    cr_assert_not_null(strstr(vmig_error_message(err), "no QMP greeting within 200 ms"));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, greeting_without_a_capabilities_reply_says_so, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, T_GREETING},
        {T_EXPECT, "qmp_capabilities"},
        {T_SLEEP, .ms = 1000},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(not(qmp_conn_handshake(c, 300, &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_TIMEOUT));
    cr_assert_not_null(strstr(vmig_error_message(err),
                              "QEMU greeted, then did not answer qmp_capabilities within 300 ms"),
                       "%s", vmig_error_message(err));
    vmig_error_free(err);
    finish(f);
}

Test(qmp_conn, connect_errors_name_the_path)
{
    g_autoptr(qmp_conn) c = qmp_conn_new(t_ring(), "x");
    vmig_error *err = NULL;
    cr_assert(not(qmp_conn_connect_unix(c, "/nonexistent/qmp.sock", &err)));
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_NOTFOUND));
    cr_assert_not_null(strstr(vmig_error_message(err), "/nonexistent/qmp.sock"));
    vmig_error_free(err);
    err = NULL;
    cr_assert(not(qmp_conn_connect_unix(c, "/etc/hostname", &err)));
    cr_assert_not_null(strstr(vmig_error_message(err), "not a socket"));
    vmig_error_free(err);
}

/* ---- asynchronous calls ---------------------------------------------------------------------- */

typedef struct async_log {
    qmp_conn *c;
    GString *order;
    int done;
    char status[16];
    bool cont_ok;
} async_log;

static void on_status(void *opaque, json_object *ret, const vmig_error *err)
{
    async_log *l = opaque;
    json_object *v = NULL;
    cr_assert_null(err, "%s", vmig_error_message(err));
    cr_assert(json_object_object_get_ex(ret, "status", &v));
    g_strlcpy(l->status, json_object_get_string(v), sizeof(l->status));
    g_string_append(l->order, "status;");
    l->done++;
}

static void on_version(void *opaque, json_object *ret, const vmig_error *err)
{
    async_log *l = opaque;
    cr_assert_null(err, "%s", vmig_error_message(err));
    cr_assert(json_object_object_get_ex(ret, "qemu", NULL));
    g_string_append(l->order, "version;");
    l->done++;
}

static void on_cont(void *opaque, json_object *ret, const vmig_error *err)
{
    async_log *l = opaque;
    l->cont_ok = ret && !err;
    g_string_append(l->order, "cont;");
    l->done++;
}

/* An event handler may issue calls (a job reacting to STOP, say). */
static void on_stop_event(void *opaque, const char *ev, json_object *data, int64_t ts)
{
    async_log *l = opaque;
    (void)data;
    (void)ts;
    if (strcmp(ev, "STOP") == 0) {
        g_string_append(l->order, "STOP;");
        qmp_call(l->c, "cont", NULL, 0, 2000, on_cont, l);
    }
}

Test(qmp_conn, calls_in_flight_are_matched_by_id_and_events_may_call, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_EXPECT, "query-version"},
        /* answered in the other order, with an event between */
        {T_SEND, "{\"return\": {\"qemu\": {\"major\": 10, \"minor\": 0, \"micro\": 2}, "
                 "\"package\": \"\"}, \"id\": $ID}\r\n"
                 "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"
                 "{\"return\": {\"status\": \"paused\", \"running\": false}, \"id\": $PREV}\r\n"},
        {T_EXPECT, "cont"},
        {T_SEND, "{\"return\": {}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    async_log l = {.c = c, .order = g_string_new(NULL)};
    qmp_conn_set_event_cb(c, on_stop_event, &l);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    qmp_call(c, "query-status", NULL, 0, 2000, on_status, &l);
    qmp_call(c, "query-version", NULL, 0, 2000, on_version, &l);
    cr_assert(eq(sz, qmp_conn_pending(c), 2), "two calls in flight at once");
    while (l.done < 3) {
        cr_assert(ge(int, ring_dispatch(t_ring(), 2000), 0));
    }
    cr_assert(eq(str, l.order->str, "version;STOP;status;cont;"));
    cr_assert(eq(str, l.status, "paused"), "each reply reached its own call");
    cr_assert(l.cont_ok);
    g_string_free(l.order, TRUE);
    finish(f);
}

static void on_event_count(void *opaque, const char *ev, json_object *data, int64_t ts)
{
    (void)ev;
    (void)data;
    (void)ts;
    (*(int *)opaque)++;
}

static void free_in_callback(void *opaque, json_object *ret, const vmig_error *err)
{
    qmp_conn **c = opaque;
    (void)ret;
    (void)err;
    qmp_conn_free(*c); /* the rest of this read is for nobody; nothing may touch *c after */
    *c = NULL;
}

Test(qmp_conn, a_callback_may_free_the_connection, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_SEND, "{\"return\": {\"status\": \"running\"}, \"id\": $ID}\r\n"
                 "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"},
        {T_END},
    };
    t_fake *f;
    qmp_conn *c = connect_fake(script, &f);
    int n_events = 0;
    qmp_conn_set_event_cb(c, on_event_count, &n_events);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    qmp_call(c, "query-status", NULL, 0, 2000, free_in_callback, &c);
    qmp_call(c, "query-version", NULL, 0, 2000, free_in_callback, &c); /* never answered */
    while (c) {
        cr_assert(ge(int, ring_dispatch(t_ring(), 2000), 0));
    }
    ring_dispatch(t_ring(), 50); /* what was in flight comes back to nobody */
    cr_assert(eq(int, n_events, 0), "no event after the free");
    finish(f);
}

Test(qmp_conn, event_of_the_wrong_type_is_ignored, .timeout = 10)
{
    static const t_step script[] = {
        HANDSHAKE,
        {T_SEND, "{\"event\": null}\r\n{\"event\": 5, \"timestamp\": {\"seconds\": "
                 "99999999999999999, \"microseconds\": -1}}\r\n"
                 "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 9223372036854775807, "
                 "\"microseconds\": 1}}\r\n"},
        {T_EXPECT, "query-status"},
        {T_SEND, "{\"return\": {\"status\": \"running\"}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    events ev = {0};
    qmp_conn_set_event_cb(c, on_event, &ev);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    g_autoptr(json_object) r = qmp_conn_call(c, "query-status", NULL, 0, 2000, NULL);
    cr_assert_not_null(r);
    cr_assert(eq(int, ev.count, 1), "only the event with a name reached the handler");
    cr_assert(eq(str, ev.name, "RESUME"));
    cr_assert(eq(i64, ev.ts_us, 0), "an out-of-range timestamp reads as none, no overflow");
    finish(f);
}

/* QEMU sends an event to a client that connected before the machine started, ahead of the
 * greeting (its monitor's open handler had not run): the client waits for the greeting. */
Test(qmp_conn, event_before_the_greeting_is_skipped, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": "
                 "\"RESUME\"}\r\n"},
        HANDSHAKE,
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(qmp_conn_handshake(c, 2000, &err), "%s", vmig_error_message(err));
    finish(f);
}

/* ---- bounded work (issue 11, item 5) ------------------------------------------------------------
 */

static void count_msg(void *opaque, json_object *msg)
{
    (void)msg;
    (*(int *)opaque)++;
}

static char *many_values(size_t n)
{
    GString *s = g_string_new("{\"return\": [");
    for (size_t i = 0; i < n; i++) {
        g_string_append(s, i ? ",{}" : "{}");
    }
    g_string_append(s, "]}\r\n");
    return g_string_free(s, FALSE);
}

Test(qmp_parser, a_message_of_too_many_values_is_refused_before_parsing)
{
    g_autoptr(qmp_parser) p = qmp_parser_new(0, 0);
    g_autofree char *big = many_values(QMP_VALUES_MAX + 10); /* ~300 KB, far below 10 MiB */
    vmig_error *err = NULL;
    int n = 0;
    cr_assert(eq(int, qmp_parser_feed(p, big, strlen(big), count_msg, &n, &err), -1));
    cr_assert_not_null(strstr(vmig_error_message(err), "more than 100000 values"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    g_autoptr(qmp_parser) q = qmp_parser_new(0, 0);
    g_autofree char *fine = many_values(QMP_VALUES_MAX / 2);
    cr_assert(eq(int, qmp_parser_feed(q, fine, strlen(fine), count_msg, &n, NULL), 1));
    /* commas inside strings are not values */
    g_autofree char *str = g_strnfill((gsize)QMP_VALUES_MAX * 2, ',');
    g_autofree char *line = g_strdup_printf("{\"return\": \"%s\"}\r\n", str);
    cr_assert(eq(int, qmp_parser_feed(q, line, strlen(line), count_msg, &n, NULL), 1));
}

typedef struct flood {
    int events;
    int events_at_timeout;
    bool timed_out;
} flood;

static void flood_event(void *opaque, const char *ev, json_object *data, int64_t ts)
{
    (void)ev;
    (void)data;
    (void)ts;
    ((flood *)opaque)->events++;
}

static void flood_reply(void *opaque, json_object *ret, const vmig_error *err)
{
    flood *f = opaque;
    (void)ret;
    f->timed_out = vmig_error_code(err) == VMIG_E_TIMEOUT;
    f->events_at_timeout = f->events;
}

/* An event flood does not hold a call's deadline back until the flood ends: the deadline
 * fires while events are still arriving. */
Test(qmp_conn, an_event_flood_does_not_stretch_a_deadline, .timeout = 60)
{
    enum { N = 200000 };
    GString *ev = g_string_new(NULL);
    for (int i = 0; i < N; i++) {
        g_string_append(ev, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, "
                            "\"event\": \"BLOCK_IO_ERROR\", \"data\": {}}\r\n");
    }
    t_step script[] = {
        HANDSHAKE,
        {T_EXPECT, "query-status"},
        {T_SEND, ev->str}, /* ~16 MB of events, and never a reply */
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    flood fl = {0};
    qmp_conn_set_event_cb(c, flood_event, &fl);
    cr_assert(qmp_conn_handshake(c, 2000, NULL));
    qmp_call(c, "query-status", NULL, 0, 50, flood_reply, &fl);
    while (fl.events < N) {
        cr_assert(ge(int, ring_dispatch(t_ring(), 2000), 0));
    }
    cr_assert(fl.timed_out, "the call timed out");
    cr_assert(lt(int, fl.events_at_timeout, N),
              "the deadline fired during the flood (%d of %d "
              "events had arrived)",
              fl.events_at_timeout, N);
    g_string_free(ev, TRUE);
    finish(f);
}

static char *scalars(size_t k)
{
    GString *s = g_string_new("{\"return\": [");
    for (size_t i = 0; i < k; i++) {
        g_string_append(s, i ? ", 17" : "17");
    }
    g_string_append(s, "]}\r\n");
    return g_string_free(s, FALSE);
}

/* The object, the array and k numbers are k + 2 values: the bound is exact. */
Test(qmp_parser, the_value_bound_is_exact)
{
    g_autofree char *at = scalars(QMP_VALUES_MAX - 2);
    g_autofree char *over = scalars(QMP_VALUES_MAX - 1);
    int n = 0;
    g_autoptr(qmp_parser) p = qmp_parser_new(0, 0);
    cr_assert(eq(int, qmp_parser_feed(p, at, strlen(at), count_msg, &n, NULL), 1));
    vmig_error *err = NULL;
    cr_assert(eq(int, qmp_parser_feed(p, over, strlen(over), count_msg, &n, &err), -1));
    cr_assert_not_null(strstr(vmig_error_message(err), "more than"));
    vmig_error_free(err);
}

/* Version numbers past any QEMU's in the greeting once overflowed a signed int (issue 11,
 * item 6): they are read as no version, and the handshake goes on. */
Test(qmp_conn, greeting_with_huge_version_numbers_reads_as_no_version, .timeout = 10)
{
    static const t_step script[] = {
        {T_SEND, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 99999999999, \"minor\": 2, "
                 "\"major\": 9223372036854775807}, \"package\": \"\"}, \"capabilities\": []}}\r\n"},
        {T_EXPECT, "qmp_capabilities"},
        {T_SEND, "{\"return\": {}, \"id\": $ID}\r\n"},
        {T_END},
    };
    t_fake *f;
    g_autoptr(qmp_conn) c = connect_fake(script, &f);
    vmig_error *err = NULL;
    cr_assert(qmp_conn_handshake(c, 2000, &err), "%s", vmig_error_message(err));
    cr_assert(eq(int, qmp_conn_version(c), 0));
    finish(f);
}
