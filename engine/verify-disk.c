/*
 * Checks the disk of a VM running the built-in test guest with vmig.disk_mib (guest-abi.h):
 * the twin of the memory check (verify.c).
 *
 * The VM is paused (QEMU flushes its caches when it stops), the status block says how far the
 * guest got, and every sector of the pattern is read from the image and compared with what
 * the status block says it must hold.  A raw image is read in place; any other format is
 * first converted to raw with qemu-img (in /dev/shm when there is one).  A sector lost in a
 * storage copy holds an older generation, or nothing; the guest's own count of steps it read
 * back wrong covers the time the VM ran on the copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

#define QEMU_IMG_TIMEOUT_S 120

void eng_verify_sectors(const struct vmig_guest_status *st, uint32_t first, const uint8_t *buf,
                        uint32_t n, eng_verify_result *res)
{
    uint32_t cur = st->disk_cursor;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = first + i;
        if (s >= cur && s - cur < VMIG_DISK_STEP) {
            continue; /* the step being written when the VM stopped: either generation */
        }
        uint32_t want = s < cur ? st->disk_gen : st->disk_gen - 1;
        uint32_t w[VMIG_SECTOR_WORDS];
        memcpy(w, buf + (size_t)i * VMIG_SECTOR_SIZE, sizeof(w));
        bool header_ok = w[0] == VMIG_SECTOR_MAGIC && w[1] == s && w[2] == want;
        bool body_ok = true;
        for (uint32_t k = 3; header_ok && k < VMIG_SECTOR_WORDS; k++) {
            if (w[k] != vmig_sector_word(s, want, k)) {
                body_ok = false;
                break;
            }
        }
        res->pages_checked++;
        if (header_ok && body_ok) {
            continue;
        }
        if (res->bad_pages++ == 0) {
            res->first_bad = s;
            res->expected_gen = want;
            res->found_magic = w[0];
            res->found_index = w[1];
            res->found_gen = w[2];
            res->content_bad = header_ok;
        }
    }
}

/* The disk the guest writes to: the first IDE one (the primary master). */
static const eng_disk *guest_disk(const eng_vm *vm, unsigned *ret_index)
{
    for (guint i = 0; vm->spec && i < vm->spec->disks->len; i++) {
        const eng_disk *d = g_ptr_array_index(vm->spec->disks, i);
        if (d->interface && strcmp(d->interface, "ide") == 0) {
            *ret_index = i;
            return d;
        }
    }
    return NULL;
}

/* The image's first @len bytes in raw form, into @buf. */
static bool read_image(const vmig_engine *e, const eng_disk *d, uint8_t *buf, size_t len,
                       vmig_error **errp)
{
    g_autofree char *raw = NULL;
    const char *path = d->path;
    if (d->format && strcmp(d->format, "raw") != 0) {
        g_autofree char *img = eng_qemu_tool(e, "qemu-img");
        if (!img) {
            vmig_set_error(errp, VMIG_E_NOTFOUND, "checking a %s image needs qemu-img", d->format);
            return false;
        }
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : g_get_tmp_dir();
        raw = g_build_filename(dir, "vmig-disk-XXXXXX", NULL);
        int fd = g_mkstemp(raw);
        if (fd < 0) {
            vmig_set_error_errno(errp, errno, "creating a temporary file");
            return false;
        }
        close(fd);
        /* -U: the paused QEMU still holds its lock on the image */
        const char *argv[] = {img,  "convert", "-U",    "-f", d->format,
                              "-O", "raw",     d->path, raw,  NULL};
        if (!eng_run_tool(argv, QEMU_IMG_TIMEOUT_S, errp)) {
            unlink(raw);
            return false;
        }
        path = raw;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    bool ok = false;
    if (fd < 0) {
        vmig_set_error_errno(errp, errno, "%s", path);
    } else {
        ssize_t got = pread(fd, buf, len, 0);
        ok = got == (ssize_t)len;
        if (!ok) {
            vmig_set_error(errp, VMIG_E_VERIFY, "disk %s holds %zd bytes, the guest wrote %zu",
                           d->path, got, len);
        }
        close(fd);
    }
    if (raw) {
        unlink(raw);
    }
    return ok;
}

static bool judge(const eng_vm *vm, unsigned idx, const eng_disk *d,
                  const struct vmig_guest_status *st, const eng_verify_result *r, vmig_error **errp)
{
    if (st->disk_errors) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "disk check of '%s' failed: the guest read back %u step(s) of disk%u not "
                       "holding what it wrote (first: sector %u)",
                       vm->name, st->disk_errors, idx, st->disk_first_bad);
        return false;
    }
    if (r->bad_pages == 0) {
        return true;
    }
    if (r->content_bad) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "disk check of '%s' failed: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                       " sectors wrong; first: sector %u of disk%u (%s) has the right header "
                       "but corrupted contents",
                       vm->name, r->bad_pages, r->pages_checked, r->first_bad, idx, d->path);
    } else {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       "disk check of '%s' failed: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                       " sectors wrong; first: sector %u of disk%u (%s) should hold generation "
                       "%u, holds magic 0x%08x index %u generation %u",
                       vm->name, r->bad_pages, r->pages_checked, r->first_bad, idx, d->path,
                       r->expected_gen, r->found_magic, r->found_index, r->found_gen);
    }
    return false;
}

/* Checks the image against @st (the status block read with the VM paused). */
static bool check_disk(const vmig_engine *e, const eng_vm *vm, const struct vmig_guest_status *st,
                       uint64_t *ret_sectors, vmig_error **errp)
{
    if (st->disk_state != VMIG_DISK_RUNNING) {
        static const char *const why[] = {
            [VMIG_DISK_OFF] = "writes no disk (boot it with vmig.disk_mib)",
            [VMIG_DISK_FILLING] = "has not finished filling its disk yet",
            [VMIG_DISK_NONE] = "found no ATA disk on its primary master",
            [VMIG_DISK_IO_ERROR] = "got an I/O error from its disk",
        };
        vmig_set_error(errp, VMIG_E_STATE, "the test guest in '%s' %s", vm->name,
                       st->disk_state < G_N_ELEMENTS(why) ? why[st->disk_state]
                                                          : "reports an unknown disk state");
        return false;
    }
    unsigned idx = 0;
    const eng_disk *d = guest_disk(vm, &idx);
    /* the guest is untrusted: its numbers drive how much is read */
    if (!d || st->disk_sectors == 0 || st->disk_sectors % VMIG_DISK_STEP ||
        st->disk_sectors > (1u << 21) || st->disk_cursor >= st->disk_sectors || st->disk_gen < 2) {
        vmig_set_error(errp, VMIG_E_VERIFY,
                       d ? "the test guest's disk status does not fit (%u sectors, cursor %u, "
                           "generation %u)"
                         : "VM has no IDE disk for the test guest to write (%u %u %u)",
                       st->disk_sectors, st->disk_cursor, st->disk_gen);
        return false;
    }
    size_t len = (size_t)st->disk_sectors * VMIG_SECTOR_SIZE;
    g_autofree uint8_t *buf = g_malloc(len);
    if (!read_image(e, d, buf, len, errp)) {
        return false;
    }
    eng_verify_result res = {0};
    eng_verify_sectors(st, 0, buf, st->disk_sectors, &res);
    if (!judge(vm, idx, d, st, &res, errp)) {
        return false;
    }
    if (ret_sectors) {
        *ret_sectors = res.pages_checked;
    }
    return true;
}

bool eng_guest_verify_disk(eng_vm *vm, uint64_t *ret_sectors, vmig_error **errp)
{
    char state[32];
    if (!eng_vm_run_state(vm, state, sizeof(state), errp)) {
        return false;
    }
    bool was_running = strcmp(state, "running") == 0;
    if (was_running && !qmp_conn_call_void(vm->qmp, "stop", NULL, ENG_QMP_TIMEOUT_MS, errp)) {
        return false;
    }
    struct vmig_guest_status st;
    bool ok = eng_guest_status(vm, &st, errp) && check_disk(vm->e, vm, &st, ret_sectors, errp);
    if (was_running) {
        vmig_error *cerr = NULL;
        if (!qmp_conn_call_void(vm->qmp, "cont", NULL, ENG_QMP_TIMEOUT_MS, &cerr)) {
            vmig_propagate_error(errp, cerr);
            ok = false;
        }
    }
    return ok;
}
