/*
 * Storage (issue 12) on real QEMU pairs: the test guest writes its disk while it runs, and
 * every image a migration leaves is checked sector by sector, as memory is page by page.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/engine.h"
#include "guest/guest-abi.h"
#include "tests/support/t_util.h"

#define READY_MS 120000
#define MEM_MIB 64
#define DISK_MIB 4

static char *state;
static vmig_engine *eng;
static char *images; /* the test's own images, outside the state directory */

static void setup(void);
static void teardown(void);
static void setup(void)
{
    state = t_state_dir_new();
    eng = t_engine(state);
    images = g_dir_make_tmp("vmig-img-XXXXXX", NULL);
    cr_assert_not_null(images);
}

static void teardown2(void);
static void remove_images(const char *st_dir);

static void teardown(void)
{
    teardown2();
    t_engine_teardown(eng, state);
    g_autoptr(GDir) d = g_dir_open(images, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        g_autofree char *p = g_build_filename(images, n, NULL);
        unlink(p);
    }
    rmdir(images);
    g_free(images);
}

TestSuite(storage, .init = setup, .fini = teardown, .timeout = 300);

/* A new image @file of @mib MiB in @format in the test's directory; its path. */
static char *make_image(const char *file, const char *format, int mib)
{
    char *path = g_build_filename(images, file, NULL);
    g_autofree char *img = eng_qemu_tool(eng, "qemu-img");
    cr_assert_not_null(img, "qemu-img not found");
    g_autofree char *size = g_strdup_printf("%dM", mib);
    const char *argv[] = {img, "create", "-q", "-f", format, path, size, NULL};
    vmig_error *err = NULL;
    cr_assert(eng_run_tool(argv, 30, &err), "%s", vmig_error_message(err));
    return path;
}

/* The test guest with @disks (a JSON array) and the disk writer on its first IDE disk. */
static void start_guest_disks(const char *name, int rate, const char *disks, int disk_kib_s)
{
    g_autofree char *extra = g_strdup_printf("vmig.disk_mib=%d vmig.disk_kib_s=%d", DISK_MIB,
                                             disk_kib_s);
    g_autoptr(vmig_spec) base = t_guest_spec_ex(name, MEM_MIB, rate, extra);
    g_autofree char *json = vmig_spec_to_json(base);
    g_autofree char *with = g_strdup_printf("%.*s, \"disks\": %s}", (int)(strlen(json) - 1), json,
                                            disks);
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) s = vmig_spec_parse(with, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    cr_assert(vmig_vm_start(eng, s, t_accel(), &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

static void verify_all(const char *name)
{
    uint64_t pages = 0, sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify(eng, name, &pages, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_verify_disk(eng, name, &sectors, &err), "%s", vmig_error_message(err));
    cr_assert(ge(u64, sectors, (uint64_t)DISK_MIB * 2048 - VMIG_DISK_STEP), "checked %lu sectors",
              (unsigned long)sectors);
}

/* Overwrites sector @s of raw image @path with a copy of sector @from. */
static void stale_sector(const char *path, unsigned s, unsigned from)
{
    int fd = open(path, O_RDWR);
    cr_assert(fd >= 0);
    uint8_t buf[VMIG_SECTOR_SIZE];
    cr_assert(
        eq(sz, (size_t)pread(fd, buf, sizeof(buf), (off_t)from * VMIG_SECTOR_SIZE), sizeof(buf)));
    cr_assert(
        eq(sz, (size_t)pwrite(fd, buf, sizeof(buf), (off_t)s * VMIG_SECTOR_SIZE), sizeof(buf)));
    close(fd);
}

Test(storage, the_disk_check_names_a_stale_sector)
{
    g_autofree char *raw = make_image("check.raw", "raw", 8);
    g_autofree char *disks = g_strdup_printf("[{\"path\": \"%s\", \"interface\": \"ide\"}]", raw);
    start_guest_disks("check", 0, disks, 512);
    verify_all("check");
    /* paused, the guest cannot mend it: sector 4000 now holds sector 100's record */
    vmig_error *err = NULL;
    char *out = vmig_qmp_call(g_build_filename(state, "check", ENG_READER_SOCK, NULL), "stop", NULL,
                              10000, &err);
    cr_assert_not_null(out, "%s", vmig_error_message(err));
    free(out);
    stale_sector(raw, 4000, 100);
    uint64_t sectors = 0;
    cr_assert(not(vmig_guest_verify_disk(eng, "check", &sectors, &err)));
    const char *msg = vmig_error_message(err);
    cr_assert(strstr(msg, "sector 4000 of disk0") && strstr(msg, "index 100"), "%s", msg);
    vmig_error_free(err);
}

static bool job_done(void *opaque)
{
    return vmig_job_finished(opaque);
}

static vmig_job *run(const char *name, const vmig_migrate_opts *o, vmig_migration_stats *st)
{
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, name, o, NULL, NULL, NULL, NULL, &err);
    cr_assert(j != NULL, "%s", vmig_error_message(err));
    cr_assert(eng_run_until(eng, job_done, j, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_job_stats(j, st));
    return j;
}

/* A second state directory on this host: the destination, with an engine of its own. */
static char *state2;
static vmig_engine *eng2;
static const char *moved; /* the VM that went there */

static const char *local_dest(void)
{
    static char dest[4200];
    if (!state2) {
        state2 = t_state_dir_new();
        eng2 = t_engine(state2);
    }
    g_snprintf(dest, sizeof(dest), "local:%s", state2);
    return dest;
}

/* Removes what a storage copy made in @st_dir's image directory: the VM's disks, which
 * stopping it leaves, as stopping any VM does. */
static void remove_images(const char *st_dir)
{
    g_autofree char *dir = g_build_filename(st_dir, "images", NULL);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        g_autofree char *p = g_build_filename(dir, n, NULL);
        unlink(p);
    }
    rmdir(dir);
}

static void teardown2(void)
{
    if (state2) {
        vmig_error *err = NULL;
        if (moved) {
            vmig_vm_stop(eng2, moved, 10000, &err); /* its images go once it has stopped */
            vmig_error_free(err);
            moved = NULL;
        }
        remove_images(state2);
        t_engine_teardown(eng2, state2);
        state2 = NULL;
    }
}

/* qemu-img compare of two images (force-share: QEMUs hold them). */
static bool same_image(const char *a, const char *b)
{
    g_autofree char *img = eng_qemu_tool(eng, "qemu-img");
    const char *argv[] = {img, "compare", "-U", "-q", a, b, NULL};
    return eng_run_tool(argv, 60, NULL);
}

/* The image a VM's disk @idx is on, from its spec at @st_dir. */
static char *disk_path(vmig_engine *e, const char *st_dir, const char *name, unsigned idx)
{
    g_autofree char *dir = g_build_filename(st_dir, name, NULL);
    g_autoptr(eng_vm) vm = eng_vm_find(e, dir, NULL);
    cr_assert_not_null(vm, "no VM '%s' in %s", name, st_dir);
    cr_assert(lt(u32, idx, vm->spec->disks->len));
    const eng_disk *d = g_ptr_array_index(vm->spec->disks, idx);
    return g_strdup(d->path);
}

/* Fills raw image @path with bytes that are not zero, so a copy that skipped them shows. */
static void scribble(const char *path, int mib)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    for (int i = 0; i < mib * 256; i++) {
        uint32_t w[1024];
        for (int k = 0; k < 1024; k++) {
            w[k] = (uint32_t)(i * 2654435761u) ^ (uint32_t)k;
        }
        cr_assert(eq(sz, fwrite(w, 1, sizeof(w), f), sizeof(w)));
    }
    fclose(f);
}

Test(storage, copy_storage_all_moves_a_qcow2_and_a_raw_disk_live)
{
    g_autofree char *q = make_image("live.qcow2", "qcow2", 8);
    g_autofree char *raw = make_image("data.raw", "raw", 4);
    scribble(raw, 4);
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"format\": \"qcow2\", \"interface\": \"ide\"}, "
        "{\"path\": \"%s\", \"format\": \"raw\"}]",
        q, raw);
    start_guest_disks("live", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = local_dest();
    o.copy_storage_all = true;
    vmig_migration_stats st;
    moved = "live";
    vmig_job *j = run("live", &o, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 2));
    /* a mirror counts again what the guest rewrote while it ran */
    cr_assert(ge(u64, st.disk_total_bytes, (uint64_t)12 << 20), "%lu",
              (unsigned long)st.disk_total_bytes);
    cr_assert(eq(u64, st.disk_remaining_bytes, 0));
    vmig_job_free(j);
    /* the destination runs on new images in its own directory, the guest's writes in them */
    g_autofree char *d0 = disk_path(eng2, state2, "live", 0);
    g_autofree char *d1 = disk_path(eng2, state2, "live", 1);
    g_autofree char *imgdir = g_build_filename(state2, "images", NULL);
    cr_assert(g_str_has_prefix(d0, imgdir) && g_str_has_prefix(d1, imgdir), "%s %s", d0, d1);
    uint64_t pages = 0, sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify(eng2, "live", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_verify_disk(eng2, "live", &sectors, &err), "%s", vmig_error_message(err));
    cr_assert(ge(u64, sectors, (uint64_t)DISK_MIB * 2048 - VMIG_DISK_STEP));
    cr_assert(same_image(raw, d1), "disk1's copy differs from its source");
}

/* The proof file is gone from beside the images once the pre-flight has run. */
static void no_token_left(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        cr_assert(not(g_str_has_prefix(n, ".vmig-shared-")), "left in %s: %s", dir, n);
    }
}

Test(storage, the_preflight_passes_a_shared_disk_and_the_guest_goes_on_writing_it)
{
    g_autofree char *raw = make_image("shared.raw", "raw", 8);
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"interface\": \"ide\", \"cache\": \"none\"}]", raw);
    start_guest_disks("shared", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = local_dest();
    vmig_migration_stats st;
    moved = "shared";
    vmig_job *j = run("shared", &o, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 0));
    vmig_job_free(j);
    g_autofree char *d0 = disk_path(eng2, state2, "shared", 0);
    cr_assert(eq(str, d0, raw), "a shared disk stays where it is");
    no_token_left(images);
    uint64_t pages = 0, sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify(eng2, "shared", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_verify_disk(eng2, "shared", &sectors, &err), "%s",
              vmig_error_message(err));
}

Test(storage, copy_storage_inc_copies_the_top_layer_over_a_shared_backing_file)
{
    g_autofree char *base = make_image("base.raw", "raw", 8);
    scribble(base, 8);
    g_autofree char *top = g_build_filename(images, "top.qcow2", NULL);
    g_autofree char *img = eng_qemu_tool(eng, "qemu-img");
    const char *argv[] = {img, "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, NULL};
    vmig_error *err = NULL;
    cr_assert(eng_run_tool(argv, 30, &err), "%s", vmig_error_message(err));
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"format\": \"qcow2\", \"interface\": \"ide\"}]", top);
    start_guest_disks("inc", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = local_dest();
    o.copy_storage_inc = true;
    vmig_migration_stats st;
    moved = "inc";
    vmig_job *j = run("inc", &o, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 1));
    vmig_job_free(j);
    g_autofree char *d0 = disk_path(eng2, state2, "inc", 0);
    cr_assert(not(eq(str, d0, top)));
    uint64_t sectors = 0;
    cr_assert(vmig_guest_verify_disk(eng2, "inc", &sectors, &err), "%s", vmig_error_message(err));
    /* the upper half, which the guest never writes, reads from the shared base */
    g_autofree char *raw_copy = g_build_filename(images, "copy-as.raw", NULL);
    const char *conv[] = {img, "convert", "-U", "-O", "raw", d0, raw_copy, NULL};
    cr_assert(eng_run_tool(conv, 60, &err), "%s", vmig_error_message(err));
    g_autofree char *a = NULL, *b = NULL;
    gsize alen = 0, blen = 0;
    cr_assert(g_file_get_contents(raw_copy, &a, &alen, NULL));
    cr_assert(g_file_get_contents(base, &b, &blen, NULL));
    size_t from = (size_t)DISK_MIB << 20;
    cr_assert(eq(sz, (size_t)alen, (size_t)blen));
    cr_assert(memcmp(a + from, b + from, alen - from) == 0,
              "the copy does not read the base where the guest never wrote");
    const char *info[] = {img, "info", "-U", d0, NULL};
    g_autofree char *out = NULL;
    cr_assert(eng_run_tool_out(info, 30, &out, &err), "%s", vmig_error_message(err));
    cr_assert(strstr(out, base) != NULL, "the copy is not backed by %s: %s", base, out);
}

Test(storage, migrate_disks_copies_one_disk_of_two_and_the_other_stays_shared)
{
    g_autofree char *q = make_image("sel.qcow2", "qcow2", 8);
    g_autofree char *raw = make_image("kept.raw", "raw", 4);
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"format\": \"qcow2\", \"interface\": \"ide\"}, "
        "{\"path\": \"%s\", \"cache\": \"none\"}]",
        q, raw);
    start_guest_disks("sel", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = local_dest();
    o.copy_storage_all = true;
    o.migrate_disks = "disk0";
    vmig_migration_stats st;
    moved = "sel";
    vmig_job *j = run("sel", &o, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 1));
    vmig_job_free(j);
    g_autofree char *d0 = disk_path(eng2, state2, "sel", 0);
    g_autofree char *d1 = disk_path(eng2, state2, "sel", 1);
    cr_assert(not(eq(str, d0, q)), "disk0 is copied");
    cr_assert(eq(str, d1, raw), "disk1 stays shared");
    uint64_t sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify_disk(eng2, "sel", &sectors, &err), "%s", vmig_error_message(err));
}

/* Kills the destination QEMU once its mirror has copied something, and not all. */
static void kill_mid_mirror(void *opaque, const vmig_migration_stats *st)
{
    bool *killed = opaque;
    if (*killed || st->disk_transferred_bytes == 0 ||
        st->disk_transferred_bytes >= st->disk_total_bytes) {
        return;
    }
    g_autofree char *dir = g_build_filename(state2, "doomed.incoming", NULL);
    int pid = t_instance_pid(dir);
    if (pid > 0) {
        kill(pid, SIGKILL);
        *killed = true;
    }
}

Test(storage, the_destination_killed_during_the_mirror_leaves_the_source_and_no_image)
{
    g_autofree char *raw = make_image("doomed.raw", "raw", 64);
    scribble(raw, 64);
    g_autofree char *disks = g_strdup_printf("[{\"path\": \"%s\", \"interface\": \"ide\"}]", raw);
    start_guest_disks("doomed", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = local_dest();
    o.copy_storage_all = true;
    o.bandwidth_mib_s = 16; /* the mirror takes seconds */
    bool killed = false;
    vmig_error *err = NULL;
    vmig_job *j = vmig_migrate_start(eng, "doomed", &o, kill_mid_mirror, &killed, NULL, NULL, &err);
    cr_assert_not_null(j, "%s", vmig_error_message(err));
    cr_assert(eng_run_until(eng, job_done, j, &err), "%s", vmig_error_message(err));
    cr_assert(killed, "the mirror ended before the test could kill the destination");
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "destination QEMU exited while the disks were copied") &&
                  strstr(msg, "running on the source"),
              "%s", msg);
    vmig_job_free(j);
    g_autofree char *imgdir = g_build_filename(state2, "images", NULL);
    cr_assert(not(g_file_test(imgdir, G_FILE_TEST_EXISTS)), "the partial image is left in %s",
              imgdir);
    verify_all("doomed");
}

/* ---- through an agent: the proof and the cache rule between hosts ------------------------ */

static void agent_stop(t_agent *a)
{
    kill(a->pid, SIGTERM);
    waitpid(a->pid, NULL, 0);
    vmig_engine *ae = t_engine(a->dir);
    t_engine_teardown(ae, a->dir); /* frees a->dir */
    a->dir = NULL;
    t_agent_free(a);
}

static vmig_job *to_agent(const char *name, const t_agent *a, bool unsafe, vmig_migration_stats *st)
{
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = a->dest;
    o.key_file = a->key;
    o.unsafe = unsafe;
    return run(name, &o, st);
}

Test(storage, the_preflight_refuses_another_file_at_the_same_path)
{
    if (geteuid() != 0) {
        cr_skip_test("needs root for a mount namespace");
    }
    g_autofree char *raw = make_image("twin.raw", "raw", 8);
    /* the agent's view of the images directory: a copy of the image, same name, same size */
    g_autofree char *other = g_dir_make_tmp("vmig-twin-XXXXXX", NULL);
    g_autofree char *twin = g_build_filename(other, "twin.raw", NULL);
    g_autofree char *bytes = NULL;
    gsize len = 0;
    cr_assert(g_file_get_contents(raw, &bytes, &len, NULL));
    cr_assert(g_file_set_contents(twin, bytes, (gssize)len, NULL));
    t_agent a = {0};
    t_agent_start_ex(&a, NULL, "127.0.0.1", other, images);
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"interface\": \"ide\", \"cache\": \"none\"}]", raw);
    start_guest_disks("twin", 8, disks, 256);
    vmig_migration_stats st;
    vmig_job *j = to_agent("twin", &a, false, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "another file with the same name") && strstr(msg, "disk0") &&
                  strstr(msg, "--copy-storage-all") && strstr(msg, "running on the source"),
              "%s", msg);
    vmig_job_free(j);
    no_token_left(images);
    verify_all("twin");
    agent_stop(&a);
    unlink(twin);
    rmdir(other);
}

Test(storage, a_shared_disk_with_the_page_cache_is_refused_between_hosts_unless_unsafe)
{
    g_autofree char *raw = make_image("nfs.raw", "raw", 8);
    t_agent a = {0};
    t_agent_start(&a, NULL, "127.0.0.1");
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"interface\": \"ide\", \"cache\": \"writeback\"}]", raw);
    start_guest_disks("nfs", 8, disks, 256);
    vmig_migration_stats st;
    vmig_job *j = to_agent("nfs", &a, false, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_FAILED));
    const char *msg = vmig_error_message(vmig_job_error(j));
    cr_assert(strstr(msg, "cache=writeback") && strstr(msg, "--unsafe") &&
                  strstr(msg, "running on the source"),
              "%s", msg);
    vmig_job_free(j);
    verify_all("nfs");
    /* --unsafe: the proof passes (the agent reads the token), and the VM moves */
    j = to_agent("nfs", &a, true, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    vmig_job_free(j);
    no_token_left(images);
    vmig_engine *ae = t_engine(a.dir);
    uint64_t sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify_disk(ae, "nfs", &sectors, &err), "%s", vmig_error_message(err));
    vmig_engine_free(ae);
    agent_stop(&a);
}

Test(storage, copy_storage_all_through_the_agent_carries_nbd_on_its_one_port)
{
    g_autofree char *q = make_image("far.qcow2", "qcow2", 8);
    g_autofree char *raw = make_image("far.raw", "raw", 4);
    scribble(raw, 4);
    t_agent a = {0};
    t_agent_start(&a, NULL, "127.0.0.1");
    g_autofree char *disks = g_strdup_printf(
        "[{\"path\": \"%s\", \"format\": \"qcow2\", \"interface\": \"ide\"}, "
        "{\"path\": \"%s\", \"format\": \"raw\"}]",
        q, raw);
    start_guest_disks("far", 8, disks, 256);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = true;
    o.dest = a.dest;
    o.key_file = a.key;
    o.copy_storage_all = true;
    vmig_migration_stats st;
    vmig_job *j = run("far", &o, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 2));
    /* the relay's channels: main, then one nbd channel a disk, which carried the images */
    vmig_channel_stats ch[8];
    size_t n = vmig_job_channels(j, ch, 8);
    uint64_t nbd_bytes = 0;
    unsigned nbd = 0;
    for (size_t i = 0; i < n && i < 8; i++) {
        if (strcmp(ch[i].kind, "nbd") == 0) {
            nbd++;
            nbd_bytes += ch[i].bytes_out;
        }
    }
    cr_assert(eq(u32, nbd, 2), "%zu channels, %u nbd", n, nbd);
    cr_assert(ge(u64, nbd_bytes, (uint64_t)4 << 20), "nbd channels carried %lu bytes",
              (unsigned long)nbd_bytes);
    vmig_job_free(j);
    vmig_engine *ae = t_engine(a.dir);
    g_autofree char *d1 = disk_path(ae, a.dir, "far", 1);
    g_autofree char *imgdir = g_build_filename(a.dir, "images", NULL);
    cr_assert(g_str_has_prefix(d1, imgdir), "%s", d1);
    cr_assert(same_image(raw, d1), "disk1's copy differs from its source");
    uint64_t pages = 0, sectors = 0;
    vmig_error *err = NULL;
    cr_assert(vmig_guest_verify(ae, "far", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_verify_disk(ae, "far", &sectors, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_vm_stop(ae, "far", 10000, &err), "%s", vmig_error_message(err));
    vmig_engine_free(ae);
    remove_images(a.dir);
    agent_stop(&a);
}

/* ---- offline: a shut-off VM's images copied with QEMU's tools ---------------------------- */

/* A defined, shut-off VM with a raw and a qcow2 disk holding data; their paths. */
static void define_cold(const char *name, char **ret_raw, char **ret_q)
{
    g_autofree char *rawname = g_strdup_printf("%s.raw", name);
    g_autofree char *qname = g_strdup_printf("%s.qcow2", name);
    *ret_raw = make_image(rawname, "raw", 8);
    scribble(*ret_raw, 8);
    *ret_q = g_build_filename(images, qname, NULL);
    g_autofree char *img = eng_qemu_tool(eng, "qemu-img");
    const char *argv[] = {img, "convert", "-f", "raw", "-O", "qcow2", *ret_raw, *ret_q, NULL};
    vmig_error *err = NULL;
    cr_assert(eng_run_tool(argv, 60, &err), "%s", vmig_error_message(err));
    g_autofree char *json = g_strdup_printf(
        "{\"name\": \"%s\", \"memory_mib\": 32, \"kernel\": \"%s\", \"disks\": "
        "[{\"path\": \"%s\", \"interface\": \"ide\"}, {\"path\": \"%s\", \"format\": \"qcow2\"}]}",
        name, vmig_guest_kernel(), *ret_raw, *ret_q);
    g_autoptr(vmig_spec) s = vmig_spec_parse(json, &err);
    cr_assert_not_null(s, "%s", vmig_error_message(err));
    cr_assert(vmig_vm_define(eng, s, &err), "%s", vmig_error_message(err));
}

/* The definition of @name in @e names new images under @st_dir/images, equal to the source's. */
static void check_copies(vmig_engine *e, const char *st_dir, const char *name, const char *raw,
                         const char *q)
{
    vmig_error *err = NULL;
    g_autoptr(vmig_spec) def = vmig_vm_definition(e, name, &err);
    cr_assert_not_null(def, "%s", vmig_error_message(err));
    g_autofree char *imgdir = g_build_filename(st_dir, "images", NULL);
    const eng_disk *d0 = g_ptr_array_index(def->disks, 0), *d1 = g_ptr_array_index(def->disks, 1);
    cr_assert(g_str_has_prefix(d0->path, imgdir) && g_str_has_prefix(d1->path, imgdir), "%s %s",
              d0->path, d1->path);
    cr_assert(eq(str, d1->format, "qcow2"));
    cr_assert(same_image(raw, d0->path), "disk0's copy differs");
    cr_assert(same_image(q, d1->path), "disk1's copy differs");
    g_autofree char *img = eng_qemu_tool(eng, "qemu-img");
    const char *info[] = {img, "info", "-U", d1->path, NULL};
    g_autofree char *out = NULL;
    cr_assert(eng_run_tool_out(info, 30, &out, &err), "%s", vmig_error_message(err));
    cr_assert(strstr(out, "file format: qcow2") != NULL, "%s", out);
}

static vmig_job *offline_copy(const char *name, const char *dest, const char *key,
                              vmig_migration_stats *st)
{
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = false;
    o.offline = o.persistent = o.undefine_source = true;
    o.copy_storage_all = true;
    o.dest = dest;
    o.key_file = key;
    vmig_job *j = run(name, &o, st);
    g_autofree char *defdir = g_build_filename(state, ENG_DEF_DIR, NULL);
    rmdir(defdir); /* --undefinesource emptied it */
    return j;
}

Test(storage, offline_copy_storage_all_to_another_state_directory)
{
    g_autofree char *raw = NULL, *q = NULL;
    define_cold("cold", &raw, &q);
    vmig_migration_stats st;
    vmig_job *j = offline_copy("cold", local_dest(), NULL, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u32, st.disks_copied, 2));
    cr_assert(eq(u64, st.disk_transferred_bytes, (uint64_t)16 << 20));
    vmig_job_free(j);
    check_copies(eng2, state2, "cold", raw, q);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_undefine(eng2, "cold", &err), "%s", vmig_error_message(err));
    g_autofree char *defdir = g_build_filename(state2, ENG_DEF_DIR, NULL);
    rmdir(defdir);
}

Test(storage, offline_copy_storage_all_to_an_agent_through_qemu_nbd)
{
    g_autofree char *raw = NULL, *q = NULL;
    define_cold("far", &raw, &q);
    t_agent a = {0};
    t_agent_start(&a, NULL, "127.0.0.1");
    vmig_migration_stats st;
    vmig_job *j = offline_copy("far", a.dest, a.key, &st);
    cr_assert(eq(int, vmig_job_get_state(j), VMIG_JOB_COMPLETED), "%s",
              vmig_error_message(vmig_job_error(j)));
    cr_assert(eq(u64, st.disk_transferred_bytes, (uint64_t)16 << 20));
    vmig_job_free(j);
    vmig_engine *ae = t_engine(a.dir);
    check_copies(ae, a.dir, "far", raw, q);
    vmig_error *err = NULL;
    cr_assert(vmig_vm_undefine(ae, "far", &err), "%s", vmig_error_message(err));
    vmig_engine_free(ae);
    g_autofree char *defdir = g_build_filename(a.dir, ENG_DEF_DIR, NULL);
    rmdir(defdir);
    remove_images(a.dir);
    agent_stop(&a);
}
