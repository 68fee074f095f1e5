/*
 * The control connection (transport/control.h) on a real ring between a socket pair: JSON
 * texts both ways in frames, what ends it and how; and the key file's rules.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "transport/control.h"

static ring *r;
static int sp[2]; /* the control connection owns sp[0]; the test plays the peer on sp[1] */
static char *dir;

typedef struct seen {
    GPtrArray *msgs;
    int closed;
    char why[256];
} seen;

static seen got;

static void on_msg(void *opaque, const char *text, size_t len)
{
    seen *s = opaque;
    cr_assert(eq(sz, strlen(text), len));
    g_ptr_array_add(s->msgs, g_strdup(text));
}

static void on_closed(void *opaque, const vmig_error *err)
{
    seen *s = opaque;
    s->closed++;
    g_strlcpy(s->why, err ? vmig_error_message(err) : "", sizeof(s->why));
}

static void setup(void)
{
    r = ring_new(RING_BACKEND_AUTO, NULL);
    cr_assert_not_null(r);
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0));
    got.msgs = g_ptr_array_new_with_free_func(g_free);
    got.closed = 0;
    got.why[0] = '\0';
    char tmpl[] = "/tmp/vmig-ctl-XXXXXX";
    cr_assert_not_null(mkdtemp(tmpl));
    dir = g_strdup(tmpl);
}

static void teardown(void)
{
    close(sp[1]);
    ring_free(r);
    g_ptr_array_free(got.msgs, TRUE);
    g_autofree char *rm = g_strdup_printf("rm -rf '%s'", dir);
    cr_assert(eq(int, system(rm), 0));
    g_free(dir);
}

TestSuite(control, .init = setup, .fini = teardown, .timeout = 60);

static void run_until(bool (*pred)(void))
{
    for (int i = 0; i < 500 && !pred(); i++) {
        ring_dispatch(r, 10);
    }
}

static bool closed(void)
{
    return got.closed > 0;
}

static unsigned want_msgs;
static bool enough_msgs(void)
{
    return got.msgs->len >= want_msgs || got.closed;
}

/* Writes a CONTROL frame (or any type) carrying @text to the peer's end. */
static void peer_send(tp_type type, const char *text)
{
    uint8_t buf[TP_HEADER_LEN + TP_PAYLOAD_MAX];
    size_t n = tp_frame_encode(type, text, strlen(text), buf);
    cr_assert(gt(sz, n, 0));
    cr_assert(eq(long, (long)write(sp[1], buf, n), (long)n));
}

/* Reads one frame from the peer's end; its payload as text. */
static char *peer_recv(void)
{
    uint8_t buf[TP_HEADER_LEN + TP_PAYLOAD_MAX];
    size_t len = 0;
    for (int i = 0; i < 500; i++) {
        ring_dispatch(r, 10);
        ssize_t n = read(sp[1], buf + len, sizeof(buf) - len);
        if (n > 0) {
            len += (size_t)n;
        }
        tp_frame f;
        size_t used = 0;
        if (tp_frame_parse(buf, len, &f, &used, NULL) == TP_PARSE_OK) {
            cr_assert(eq(int, f.type, TP_CONTROL));
            return g_strndup((const char *)f.payload, f.len);
        }
    }
    cr_fail("no frame came");
    return NULL;
}

Test(control, messages_both_ways_in_order)
{
    tp_control *c = tp_control_new(r, sp[0], on_msg, on_closed, &got);
    cr_assert(tp_control_send(c, "{\"id\":1,\"op\":\"info\"}", NULL));
    g_autofree char *first = peer_recv();
    cr_assert(eq(str, first, "{\"id\":1,\"op\":\"info\"}"));
    /* several frames in one write, and a large one */
    g_autofree char *big = g_strnfill(TP_PAYLOAD_MAX, 'x');
    uint8_t buf[3 * (TP_HEADER_LEN + 32)];
    size_t n = tp_frame_encode(TP_CONTROL, "{\"a\":1}", 7, buf);
    n += tp_frame_encode(TP_CONTROL, "{\"b\":2}", 7, buf + n);
    cr_assert(eq(long, (long)write(sp[1], buf, n), (long)n));
    peer_send(TP_CONTROL, big);
    want_msgs = 3;
    run_until(enough_msgs);
    cr_assert(eq(u32, got.msgs->len, 3));
    cr_assert(eq(str, (char *)got.msgs->pdata[0], "{\"a\":1}"));
    cr_assert(eq(str, (char *)got.msgs->pdata[1], "{\"b\":2}"));
    cr_assert(eq(sz, strlen(got.msgs->pdata[2]), (size_t)TP_PAYLOAD_MAX));
    cr_assert(tp_control_alive(c));
    /* an orderly end of file */
    shutdown(sp[1], SHUT_WR);
    run_until(closed);
    cr_assert(eq(int, got.closed, 1));
    cr_assert(eq(str, got.why, ""), "end of file is no error: %s", got.why);
    cr_assert(not(tp_control_alive(c)));
    vmig_error *err = NULL;
    cr_assert(not(tp_control_send(c, "{}", &err)), "an ended connection takes nothing");
    vmig_error_free(err);
    tp_control_free(c);
}

Test(control, a_message_over_the_limit_is_refused)
{
    tp_control *c = tp_control_new(r, sp[0], on_msg, on_closed, &got);
    g_autofree char *big = g_strnfill(TP_PAYLOAD_MAX + 1, 'x');
    vmig_error *err = NULL;
    cr_assert(not(tp_control_send(c, big, &err)));
    cr_assert(strstr(vmig_error_message(err), "16385 bytes") != NULL, "%s",
              vmig_error_message(err));
    vmig_error_free(err);
    tp_control_free(c);
}

static void expect_ends(const void *bytes, size_t len, const char *needle)
{
    tp_control *c = tp_control_new(r, sp[0], on_msg, on_closed, &got);
    cr_assert(eq(long, (long)write(sp[1], bytes, len), (long)len));
    shutdown(sp[1], SHUT_WR);
    run_until(closed);
    cr_assert(eq(int, got.closed, 1));
    cr_assert(strstr(got.why, needle) != NULL, "'%s' in '%s'", needle, got.why);
    cr_assert(eq(u32, got.msgs->len, 0));
    tp_control_free(c);
}

Test(control, another_frame_type_ends_it)
{
    uint8_t buf[64];
    size_t n = tp_frame_encode(TP_WELCOME, "0123456789abcdef0123456789abcdef", 32, buf);
    expect_ends(buf, n, "CONTROL was due");
}

Test(control, garbage_ends_it)
{
    expect_ends("GET / HTTP/1.1\r\n\r\n", 18, "control connection");
}

Test(control, end_of_file_inside_a_frame_is_an_error)
{
    uint8_t buf[64];
    size_t n = tp_frame_encode(TP_CONTROL, "{\"id\":1}", 8, buf);
    expect_ends(buf, n - 3, "inside a frame");
}

Test(control, a_nul_byte_ends_it)
{
    uint8_t buf[64];
    size_t n = tp_frame_encode(TP_CONTROL, "{\"a\"\0:1}", 8, buf);
    expect_ends(buf, n, "");
    cr_assert(not(eq(str, got.why, "")), "it is an error");
}

Test(control, freed_with_a_receive_in_flight)
{
    tp_control *c = tp_control_new(r, sp[0], on_msg, on_closed, &got);
    cr_assert(tp_control_send(c, "{\"id\":1}", NULL));
    tp_control_free(c); /* the ring lets go of it; ASan's leak check says whether it did */
    ring_dispatch(r, 10);
    cr_assert(eq(int, got.closed, 0), "no callback after free");
}

/* ---- the key file ---------------------------------------------------------------------------- */

static char *write_file(const char *name, const char *text, mode_t mode)
{
    char *path = g_build_filename(dir, name, NULL);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    cr_assert(ge(int, fd, 0));
    cr_assert(eq(long, (long)write(fd, text, strlen(text)), (long)strlen(text)));
    fchmod(fd, mode);
    close(fd);
    return path;
}

static void expect_refused(const char *path, const char *needle)
{
    tp_key k;
    vmig_error *err = NULL;
    cr_assert(not(tp_key_load(path, &k, &err)));
    cr_assert(strstr(vmig_error_message(err), needle) != NULL, "'%s' in '%s'", needle,
              vmig_error_message(err));
    vmig_error_free(err);
}

Test(control, key_new_then_load)
{
    g_autofree char *path = g_build_filename(dir, "key", NULL);
    vmig_error *err = NULL;
    cr_assert(tp_key_create(path, &err), "%s", vmig_error_message(err));
    struct stat st;
    cr_assert(eq(int, stat(path, &st), 0));
    cr_assert(eq(u32, st.st_mode & 0777u, 0600u));
    tp_key k;
    cr_assert(tp_key_load(path, &k, &err), "%s", vmig_error_message(err));
    cr_assert(eq(sz, k.len, (size_t)32));
    tp_key k2;
    g_autofree char *path2 = g_build_filename(dir, "key2", NULL);
    cr_assert(tp_key_create(path2, NULL));
    cr_assert(tp_key_load(path2, &k2, NULL));
    cr_assert(not(eq(int, memcmp(k.bytes, k2.bytes, 32), 0)), "two keys differ");
    cr_assert(not(tp_key_create(path, &err)), "an existing key is never overwritten");
    vmig_error_free(err);
}

Test(control, key_files_that_are_refused)
{
    const char *hex32 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    g_autofree char *open_to_all = write_file("readable", hex32, 0644);
    expect_refused(open_to_all, "chmod 600");
    g_autofree char *short_key = write_file("short", "0011223344\n", 0600);
    expect_refused(short_key, "hex digits");
    g_autofree char *odd = write_file("odd", "0011223344556677889900112233445\n", 0600);
    expect_refused(odd, "hex digits");
    g_autofree char *nothex = write_file("nothex", "zz112233445566778899aabbccddeeff\n", 0600);
    expect_refused(nothex, "'zz' is not a hex byte");
    g_autofree char *missing = g_build_filename(dir, "missing", NULL);
    expect_refused(missing, "missing");
    g_autofree char *good = write_file("good", hex32, 0600);
    g_autofree char *link = g_build_filename(dir, "link", NULL);
    cr_assert(eq(int, symlink(good, link), 0));
    expect_refused(link, "link");
    tp_key k;
    cr_assert(tp_key_load(good, &k, NULL));
    cr_assert(eq(sz, k.len, (size_t)32));
    cr_assert(eq(u8, k.bytes[1], 0x11));
}
