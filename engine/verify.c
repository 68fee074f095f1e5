/*
 * Checks the memory of a VM running the built-in test guest (guest/guest-abi.h).
 *
 * The VM is paused, its status block and pattern range are dumped with pmemsave in chunks
 * (to /dev/shm when there is one, so nothing touches a disk), and every page is compared with
 * what the status block says it must hold.  A page lost in a migration holds an older
 * generation; a corrupted one fails its header or body.  The guest's own count of pages it
 * found wrong before rewriting them covers the time the VM ran after the migration.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

#define CHUNK_PAGES 16384u /* 64 MiB per pmemsave */
#define PMEMSAVE_TIMEOUT_MS 60000

void eng_verify_pages(const struct vmig_guest_status *st, uint32_t first, const uint8_t *buf,
                      uint32_t n, eng_verify_result *res)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = first + i;
        if (p == st->cursor) {
            continue; /* may be half-written when the VM stopped */
        }
        uint32_t want = p < st->cursor ? st->gen : st->gen - 1;
        uint32_t w[VMIG_GUEST_PAGE_WORDS];
        memcpy(w, buf + (size_t)i * VMIG_GUEST_PAGE_SIZE, sizeof(w));
        bool header_ok = w[0] == VMIG_PAGE_MAGIC && w[1] == p && w[2] == want;
        bool body_ok = true;
        for (uint32_t k = 3; header_ok && k < VMIG_GUEST_PAGE_WORDS; k++) {
            if (w[k] != vmig_page_word(p, want, k)) {
                body_ok = false;
                break;
            }
        }
        res->pages_checked++;
        if (header_ok && body_ok) {
            continue;
        }
        if (res->bad_pages++ == 0) {
            res->first_bad = p;
            res->expected_gen = want;
            res->found_magic = w[0];
            res->found_index = w[1];
            res->found_gen = w[2];
            res->content_bad = header_ok;
        }
    }
}

static char *dump_path(void)
{
    const char *dir = g_file_test("/dev/shm", G_FILE_TEST_IS_DIR) && access("/dev/shm", W_OK) == 0
                          ? "/dev/shm"
                          : g_get_tmp_dir();
    g_autofree char *tmpl = g_build_filename(dir, "vmig-mem-XXXXXX", NULL);
    int fd = g_mkstemp(tmpl);
    if (fd < 0) {
        return NULL;
    }
    close(fd);
    return g_steal_pointer(&tmpl);
}

/* Dumps @len bytes of guest-physical memory at @addr into @buf. */
static bool read_guest(eng_vm *vm, const char *path, uint64_t addr, size_t len, uint8_t *buf,
                       vmig_error **errp)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "val", json_object_new_int64((int64_t)addr));
    json_object_object_add(args, "size", json_object_new_int64((int64_t)len));
    json_object_object_add(args, "filename", json_object_new_string(path));
    if (!qmp_conn_call_void(vm->qmp, "pmemsave", args, PMEMSAVE_TIMEOUT_MS, errp)) {
        return false;
    }
    FILE *f = fopen(path, "rbe");
    if (!f) {
        vmig_set_error_errno(errp, errno, "%s", path);
        return false;
    }
    size_t got = fread(buf, 1, len, f);
    fclose(f);
    if (got != len) {
        vmig_set_error(errp, VMIG_E_IO, "pmemsave wrote %zu of %zu bytes", got, len);
        return false;
    }
    return true;
}

bool eng_guest_status_check(const struct vmig_guest_status *st, uint64_t ram_bytes,
                            vmig_error **errp)
{
    /* The guest is untrusted too: its numbers drive how much memory is read and checked. */
    uint64_t end = (uint64_t)st->range_start + (uint64_t)st->npages * VMIG_GUEST_PAGE_SIZE;
    if (st->page_size != VMIG_GUEST_PAGE_SIZE || end > ram_bytes || st->cursor > st->npages) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "the test guest's status block does not fit the VM (page size %u, "
                       "%u pages from 0x%x, cursor %u, in %" G_GUINT64_FORMAT " MiB of RAM)",
                       st->page_size, st->npages, st->range_start, st->cursor, ram_bytes >> 20);
        return false;
    }
    return true;
}

static bool status_at(eng_vm *vm, const char *path, struct vmig_guest_status *st, vmig_error **errp)
{
    if (!read_guest(vm, path, VMIG_GUEST_STATUS_ADDR, sizeof(*st), (uint8_t *)st, errp)) {
        return false;
    }
    if (st->magic != VMIG_GUEST_STATUS_MAGIC || st->version != VMIG_GUEST_ABI_VERSION) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "VM '%s' does not run the vmigrate test guest (no status block at 0x%x)",
                       vm->name, VMIG_GUEST_STATUS_ADDR);
        return false;
    }
    return eng_guest_status_check(st, vm->spec ? vm->spec->memory_mib << 20 : 0, errp);
}

bool eng_guest_status(eng_vm *vm, struct vmig_guest_status *ret, vmig_error **errp)
{
    g_autofree char *path = dump_path();
    if (!path) {
        vmig_set_error_errno(errp, errno, "creating a temporary file");
        return false;
    }
    bool ok = status_at(vm, path, ret, errp);
    unlink(path);
    return ok;
}

static bool check_range(eng_vm *vm, const char *path, const struct vmig_guest_status *st,
                        eng_verify_result *res, vmig_error **errp)
{
    g_autofree uint8_t *buf = g_malloc((size_t)CHUNK_PAGES * VMIG_GUEST_PAGE_SIZE);
    for (uint64_t at = 0; at < st->npages; at += CHUNK_PAGES) {
        uint32_t first = (uint32_t)at;
        uint32_t n = (uint32_t)MIN((uint64_t)CHUNK_PAGES, st->npages - at);
        uint64_t addr = st->range_start + (uint64_t)first * VMIG_GUEST_PAGE_SIZE;
        if (!read_guest(vm, path, addr, (size_t)n * VMIG_GUEST_PAGE_SIZE, buf, errp)) {
            return false;
        }
        eng_verify_pages(st, first, buf, n, res);
    }
    return true;
}

static bool judge(const eng_vm *vm, const struct vmig_guest_status *st, const eng_verify_result *r,
                  vmig_error **errp)
{
    if (st->errors) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "guest memory check of '%s' failed: the guest found %u page(s) not "
                       "holding what it wrote (first: page %u)",
                       vm->name, st->errors, st->first_bad);
        return false;
    }
    if (r->bad_pages == 0) {
        return true;
    }
    uint64_t addr = st->range_start + (uint64_t)r->first_bad * VMIG_GUEST_PAGE_SIZE;
    if (r->content_bad) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "guest memory check of '%s' failed: %" G_GUINT64_FORMAT
                       " of %" G_GUINT64_FORMAT
                       " pages wrong; first: page %u (guest-physical 0x%" G_GINT64_MODIFIER
                       "x) has the right header but corrupted contents",
                       vm->name, r->bad_pages, r->pages_checked, r->first_bad, addr);
    } else {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "guest memory check of '%s' failed: %" G_GUINT64_FORMAT
                       " of %" G_GUINT64_FORMAT
                       " pages wrong; first: page %u (guest-physical 0x%" G_GINT64_MODIFIER
                       "x) should hold generation %u, holds magic 0x%08x "
                       "index %u generation %u",
                       vm->name, r->bad_pages, r->pages_checked, r->first_bad, addr,
                       r->expected_gen, r->found_magic, r->found_index, r->found_gen);
    }
    return false;
}

bool eng_guest_verify(eng_vm *vm, uint64_t *ret_pages, vmig_error **errp)
{
    char state[32];
    if (!eng_vm_run_state(vm, state, sizeof(state), errp)) {
        return false;
    }
    bool was_running = strcmp(state, "running") == 0;
    if (was_running && !qmp_conn_call_void(vm->qmp, "stop", NULL, ENG_QMP_TIMEOUT_MS, errp)) {
        return false;
    }
    g_autofree char *path = dump_path();
    struct vmig_guest_status st;
    eng_verify_result res = {0};
    bool ok = path != NULL;
    if (!ok) {
        vmig_set_error_errno(errp, errno, "creating a temporary file");
    }
    ok = ok && status_at(vm, path, &st, errp);
    if (ok && st.state != VMIG_GUEST_RUNNING) {
        vmig_set_error(errp, VMIG_E_STATE,
                       "the test guest in '%s' has not finished filling its memory yet", vm->name);
        ok = false;
    }
    ok = ok && check_range(vm, path, &st, &res, errp) && judge(vm, &st, &res, errp);
    if (path) {
        unlink(path);
    }
    if (was_running) {
        vmig_error *cerr = NULL;
        if (!qmp_conn_call_void(vm->qmp, "cont", NULL, ENG_QMP_TIMEOUT_MS, &cerr)) {
            vmig_propagate_error(errp, cerr);
            ok = false;
        }
    }
    if (ok && ret_pages) {
        *ret_pages = res.pages_checked;
    }
    return ok;
}

static eng_vm *open_vm(vmig_engine *e, const char *name, vmig_error **errp)
{
    if (!eng_spec_name_valid(name)) {
        vmig_set_error(errp, VMIG_E_INVAL, "'%s' is not a valid VM name", name);
        return NULL;
    }
    g_autofree char *dir = eng_vm_dir(e->state_dir, name);
    g_autoptr(eng_vm) vm = eng_vm_find(e, dir, errp);
    if (!vm || !eng_vm_connect_sync(vm, errp)) {
        return NULL;
    }
    return g_steal_pointer(&vm);
}

bool vmig_guest_wait_ready(vmig_engine *e, const char *name, int timeout_ms, vmig_error **errp)
{
    g_autoptr(eng_vm) vm = open_vm(e, name, errp);
    if (!vm) {
        return false;
    }
    int64_t deadline = vmig_now_ms() + timeout_ms;
    struct vmig_guest_status st = {0};
    for (;;) {
        vmig_error *err = NULL;
        bool ok = eng_guest_status(vm, &st, &err);
        if (ok && st.state == VMIG_GUEST_RUNNING) {
            return true;
        }
        if (err && vmig_error_code(err) != VMIG_E_VERIFY) {
            vmig_propagate_error(errp, err); /* the monitor broke: no point waiting */
            return false;
        }
        int left = vmig_ms_left(deadline);
        if (left == 0) {
            vmig_set_error(errp, VMIG_E_TIMEOUT,
                           "the test guest in '%s' did not fill its memory within %d ms (%s)", name,
                           timeout_ms, err ? vmig_error_message(err) : "still filling");
            vmig_error_free(err);
            return false;
        }
        vmig_error_free(err);
        vmig_engine_run(e, MIN(left, 100), NULL); /* other jobs go on meanwhile */
    }
}

bool vmig_guest_verify(vmig_engine *e, const char *name, uint64_t *ret_pages, vmig_error **errp)
{
    g_autoptr(eng_vm) vm = open_vm(e, name, errp);
    return vm && eng_guest_verify(vm, ret_pages, errp);
}

bool vmig_guest_verify_disk(vmig_engine *e, const char *name, uint64_t *ret_sectors,
                            vmig_error **errp)
{
    g_autoptr(eng_vm) vm = open_vm(e, name, errp);
    return vm && eng_guest_verify_disk(vm, ret_sectors, errp);
}
