/*
 * QEMU's tools (qemu-img, qemu-nbd): where they are, and running them, waiting (short work:
 * info, create) or on the ring (a copy that takes minutes, with its progress).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"

char *eng_qemu_tool(const vmig_engine *e, const char *tool)
{
    if (e->qemu) {
        g_autofree char *dir = g_path_get_dirname(e->qemu);
        g_autofree char *path = g_build_filename(dir, tool, NULL);
        if (access(path, X_OK) == 0) {
            return g_steal_pointer(&path);
        }
    }
    return g_find_program_in_path(tool);
}

bool eng_run_tool(const char *const *argv, int timeout_s, vmig_error **errp)
{
    g_autofree char *out = NULL;
    return eng_run_tool_out(argv, timeout_s, &out, errp);
}

bool eng_run_tool_out(const char *const *argv, int timeout_s, char **ret_out, vmig_error **errp)
{
    g_autofree char *out = NULL, *err_text = NULL;
    g_autoptr(GError) gerr = NULL;
    int status = 0;
    /* under timeout(1), so a tool that hangs cannot hang the caller */
    g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(a, g_strdup("timeout"));
    g_ptr_array_add(a, g_strdup_printf("%d", timeout_s));
    for (const char *const *p = argv; *p; p++) {
        g_ptr_array_add(a, g_strdup(*p));
    }
    g_ptr_array_add(a, NULL);
    if (!g_spawn_sync(NULL, (char **)a->pdata, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out,
                      &err_text, &status, &gerr)) {
        vmig_set_error(errp, VMIG_E_IO, "running %s: %s", argv[0], gerr->message);
        return false;
    }
    if (!g_spawn_check_wait_status(status, NULL)) {
        g_strstrip(err_text);
        vmig_set_error(errp, VMIG_E_IO, "%s %s failed%s%s", argv[0], argv[1] ? argv[1] : "",
                       *err_text ? ": " : "", err_text);
        return false;
    }
    *ret_out = g_steal_pointer(&out);
    return true;
}

/* ---- on the ring ------------------------------------------------------------------------- */

#define TOOL_OUT_MAX 4096 /* what is kept of its output for the error message */

struct eng_tool {
    vmig_engine *e;
    char *name;
    GPid pid;
    int fd; /* its stdout and stderr, one pipe */
    int64_t op;
    GString *out;  /* lines that are not progress */
    GString *line; /* the line being read */
    eng_tool_progress_fn progress;
    eng_tool_done_fn done;
    void *opaque;
};

/* "    (12.34/100%)": qemu-img's progress, at the end of a line or before a '\r'. */
static bool parse_progress(const char *s, double *ret)
{
    const char *open = strrchr(s, '(');
    double v = 0;
    if (!open || sscanf(open, "(%lf/100%%)", &v) != 1 || v < 0 || v > 100) {
        return false;
    }
    *ret = v / 100.0;
    return true;
}

static void take_line(eng_tool *t)
{
    double p = 0;
    if (parse_progress(t->line->str, &p)) {
        if (t->progress) {
            t->progress(t->opaque, p);
        }
    } else if (t->line->len && t->out->len < TOOL_OUT_MAX) {
        g_string_append_printf(t->out, "%s%s", t->out->len ? "; " : "", t->line->str);
    }
    g_string_truncate(t->line, 0);
}

static void tool_finish(eng_tool *t)
{
    int status = 0;
    pid_t r;
    do {
        r = waitpid(t->pid, &status, 0);
    } while (r < 0 && errno == EINTR);
    g_spawn_close_pid(t->pid);
    t->pid = 0;
    take_line(t);
    vmig_error *err = NULL;
    if (r < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        vmig_set_error(&err, VMIG_E_IO, "%s failed (%s %d)%s%s", t->name,
                       r >= 0 && WIFSIGNALED(status) ? "signal" : "exit status",
                       r >= 0 && WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status),
                       t->out->len ? ": " : "", t->out->str);
    }
    eng_tool_done_fn done = t->done;
    void *opaque = t->opaque;
    t->done = NULL;
    done(opaque, err);
    vmig_error_free(err);
}

static void tool_wait(eng_tool *t);

static void on_output(void *opaque, int res)
{
    eng_tool *t = opaque;
    t->op = 0;
    char buf[512];
    ssize_t n = res < 0 ? -1 : read(t->fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        tool_wait(t);
        return;
    }
    if (n <= 0) {
        tool_finish(t); /* its end of the pipe closed: it exited */
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\r' || buf[i] == '\n') {
            take_line(t);
        } else if (t->line->len < TOOL_OUT_MAX) {
            g_string_append_c(t->line, buf[i]);
        }
    }
    tool_wait(t);
}

static void tool_wait(eng_tool *t)
{
    int64_t id = ring_poll(t->e->ring, t->fd, POLLIN, on_output, t);
    if (id < 0) {
        kill(t->pid, SIGKILL);
        tool_finish(t);
        return;
    }
    t->op = id;
}

eng_tool *eng_tool_start(vmig_engine *e, const char *const *argv, eng_tool_progress_fn progress,
                         eng_tool_done_fn done, void *opaque, vmig_error **errp)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        vmig_set_error_errno(errp, errno, "pipe");
        return NULL;
    }
    g_autoptr(GError) gerr = NULL;
    GPid pid = 0;
    g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func(g_free);
    for (const char *const *q = argv; *q; q++) {
        g_ptr_array_add(a, g_strdup(*q));
    }
    g_ptr_array_add(a, NULL);
    bool ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)a->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
        NULL, NULL, -1, p[1], p[1], NULL, NULL, 0, &pid, NULL, NULL, NULL, &gerr);
    close(p[1]);
    if (!ok) {
        close(p[0]);
        vmig_set_error(errp, VMIG_E_IO, "running %s: %s", argv[0], gerr->message);
        return NULL;
    }
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    eng_tool *t = g_new0(eng_tool, 1);
    t->e = e;
    t->name = g_path_get_basename(argv[0]);
    t->pid = pid;
    t->fd = p[0];
    t->out = g_string_new(NULL);
    t->line = g_string_new(NULL);
    t->progress = progress;
    t->done = done;
    t->opaque = opaque;
    tool_wait(t);
    return t;
}

bool eng_tool_running(const eng_tool *t)
{
    return t && t->done != NULL;
}

void eng_tool_free(eng_tool *t)
{
    if (!t) {
        return;
    }
    if (t->op) {
        ring_detach(t->e->ring, t->op, NULL, NULL);
    }
    if (t->pid) { /* still running: it goes, and is reaped here */
        kill(t->pid, SIGKILL);
        waitpid(t->pid, NULL, 0);
        g_spawn_close_pid(t->pid);
    }
    close(t->fd);
    g_string_free(t->out, TRUE);
    g_string_free(t->line, TRUE);
    g_free(t->name);
    g_free(t);
}
