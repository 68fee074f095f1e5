/*
 * A one-connection unix-socket relay for the migration stream, which can damage one page of
 * the test guest in transit: it watches the source-to-destination bytes for the page header
 * (VMIG_PAGE_MAGIC, index) and flips a byte of the body 100 bytes later, in every copy of
 * that page QEMU sends.  Plain pre-copy sends pages raw, so the header is found as is.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "guest/guest-abi.h"
#include "t_util.h"

#define FLIP_OFFSET 100

struct t_proxy {
    int lfd;
    char *target;
    int64_t page;
    uint64_t want; /* the 8 header bytes, as they appear little-endian on the wire */
    uint64_t window;
    int countdown;
    int hits;
    uint64_t bytes;
    pthread_t thread;
};

static int unix_socket(const char *path, bool listen_on)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    if (listen_on) {
        unlink(path);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
            close(fd);
            return -1;
        }
    } else if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void scan(t_proxy *p, uint8_t *buf, ssize_t n)
{
    if (p->page < 0) {
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (p->countdown > 0 && --p->countdown == 0) {
            buf[i] ^= 0xff;
            p->hits++;
        }
        p->window = (p->window >> 8) | ((uint64_t)buf[i] << 56);
        if (p->window == p->want) {
            p->countdown = FLIP_OFFSET;
        }
    }
}

static bool pump(t_proxy *p, int from, int to, bool outbound)
{
    uint8_t buf[65536];
    ssize_t n = read(from, buf, sizeof(buf));
    if (n <= 0) {
        return false;
    }
    if (outbound) {
        scan(p, buf, n);
        p->bytes += (uint64_t)n;
    }
    for (ssize_t off = 0; off < n;) {
        ssize_t w = send(to, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w <= 0) {
            return false;
        }
        off += w;
    }
    return true;
}

static void *run(void *opaque)
{
    t_proxy *p = opaque;
    int in = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
    int out = in >= 0 ? unix_socket(p->target, false) : -1;
    while (in >= 0 && out >= 0) {
        struct pollfd pfd[2] = {{.fd = in, .events = POLLIN}, {.fd = out, .events = POLLIN}};
        if (poll(pfd, 2, 60000) <= 0) {
            break;
        }
        if ((pfd[0].revents && !pump(p, in, out, true)) ||
            (pfd[1].revents && !pump(p, out, in, false))) {
            break;
        }
    }
    if (in >= 0) {
        close(in);
    }
    if (out >= 0) {
        close(out);
    }
    return NULL;
}

t_proxy *t_proxy_start(const char *listen_path, const char *target_path, int64_t page)
{
    t_proxy *p = g_new0(t_proxy, 1);
    p->lfd = unix_socket(listen_path, true);
    cr_assert(ge(int, p->lfd, 0), "listening on %s: %s", listen_path, strerror(errno));
    p->target = g_strdup(target_path);
    p->page = page;
    p->want = (uint64_t)VMIG_PAGE_MAGIC | ((uint64_t)(uint32_t)page << 32);
    pthread_create(&p->thread, NULL, run, p);
    return p;
}

void t_proxy_stop(t_proxy *p, uint64_t *ret_bytes, int *ret_hits)
{
    pthread_join(p->thread, NULL);
    close(p->lfd);
    *ret_bytes = p->bytes;
    *ret_hits = p->hits;
    g_free(p->target);
    g_free(p);
}
