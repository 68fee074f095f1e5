/*
 * The structs a caller allocates carry their size, so a program built against an older
 * header keeps working with a newer library.  Each test lays out the struct as an older
 * header had it, with guard bytes right after, and checks the library does not write past it.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/support/t_util.h"
#include "vmigrate.h"

#define GUARD 0xA5

/* vmig_migrate_opts as an older header had it: without the last field (unsafe). */
typedef struct opts_before {
    uint32_t size;
    bool live;
    int max_downtime_ms;
    int bandwidth_mib_s;
    int timeout_s;
    const char *dest;
    bool force;
} opts_before;

/* vmig_migration_stats without vm_holder. */
typedef struct stats_before {
    char status[24];
    uint64_t total_ms, setup_ms, downtime_ms, qemu_downtime_ms, qemu_total_ms;
    uint64_t transferred_bytes, remaining_bytes, total_bytes, dirty_pages_rate, passes;
    double mbps, progress;
    char cpu_check[16];
} stats_before;

/* vmig_vm_info without the job fields. */
typedef struct info_before {
    char name[128];
    int pid;
    char status[32];
    char qmp_path[4096];
} info_before;

static bool guard_intact(const unsigned char *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (g[i] != GUARD) {
            return false;
        }
    }
    return true;
}

Test(abi, the_newer_structs_are_larger)
{
    /* Otherwise these tests prove nothing. */
    cr_assert(gt(sz, sizeof(vmig_migrate_opts), sizeof(opts_before)));
    cr_assert(gt(sz, sizeof(vmig_migration_stats), sizeof(stats_before)));
    cr_assert(gt(sz, sizeof(vmig_vm_info), sizeof(info_before)));
}

Test(abi, opts_init_stays_inside_an_older_struct)
{
    struct {
        opts_before o;
        unsigned char guard[64];
    } b;
    memset(&b, GUARD, sizeof(b));
    vmig_migrate_opts_init_sized((vmig_migrate_opts *)&b.o, sizeof(b.o));
    cr_assert(guard_intact(b.guard, sizeof(b.guard)), "nothing written past the older struct");
    cr_assert(eq(u32, b.o.size, (uint32_t)sizeof(opts_before)));
    cr_assert(b.o.live);
    cr_assert(eq(str, (char *)b.o.dest, "local"));
    cr_assert(not(b.o.force));
}

/* A migration called with older options and older statistics: accepted as options, and the
 * figures written no further than the older struct. */
Test(abi, migrate_takes_older_structs, .timeout = 30)
{
    g_autofree char *dir = t_state_dir_new();
    vmig_engine *e = vmig_engine_new(dir, NULL);
    cr_assert_not_null(e);
    struct {
        opts_before o;
        unsigned char guard[64];
    } b;
    memset(&b, GUARD, sizeof(b));
    vmig_migrate_opts_init_sized((vmig_migrate_opts *)&b.o, sizeof(b.o));
    struct {
        stats_before st;
        unsigned char guard[64];
    } s;
    memset(&s, GUARD, sizeof(s));
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate_sized(e, "ghost", (vmig_migrate_opts *)&b.o, NULL, NULL,
                                     (vmig_migration_stats *)&s.st, sizeof(s.st), &err)));
    /* refused for the VM, not for options it never had */
    cr_assert_not_null(strstr(vmig_error_message(err), "no VM named 'ghost'"), "%s",
                       vmig_error_message(err));
    cr_assert(guard_intact(s.guard, sizeof(s.guard)), "nothing written past the older stats");
    cr_assert(eq(str, s.st.status, "failed"));
    vmig_error_free(err);
    vmig_engine_free(e);
    rmdir(dir);
}

Test(abi, opts_without_a_size_are_refused, .timeout = 30)
{
    g_autofree char *dir = t_state_dir_new();
    vmig_engine *e = vmig_engine_new(dir, NULL);
    vmig_migrate_opts o;
    memset(&o, 0, sizeof(o)); /* not through vmig_migrate_opts_init() */
    vmig_error *err = NULL;
    cr_assert_null(vmig_migrate_start(e, "ghost", &o, NULL, NULL, NULL, NULL, &err));
    cr_assert_not_null(strstr(vmig_error_message(err), "vmig_migrate_opts_init"), "%s",
                       vmig_error_message(err));
    vmig_error_free(err);
    vmig_engine_free(e);
    rmdir(dir);
}

Test(abi, vm_list_strides_an_older_array, .timeout = 30)
{
    g_autofree char *dir = t_state_dir_new();
    const char *names[] = {"alpha", "beta", "gamma"};
    for (int i = 0; i < 3; i++) { /* VMs whose QEMU is gone: listed as dead */
        g_autofree char *vdir = g_build_filename(dir, names[i], NULL);
        g_autofree char *spec = g_build_filename(vdir, "spec.json", NULL);
        cr_assert(eq(int, g_mkdir_with_parents(vdir, 0700), 0));
        g_autofree char *json = g_strdup_printf("{\"name\": \"%s\", \"memory_mib\": 64}", names[i]);
        cr_assert(g_file_set_contents(spec, json, -1, NULL));
    }
    vmig_engine *e = vmig_engine_new(dir, NULL);
    struct {
        info_before info[2];
        unsigned char guard[64];
    } b;
    memset(&b, GUARD, sizeof(b));
    int n = vmig_vm_list_sized(e, (vmig_vm_info *)b.info, 2, sizeof(info_before), 100, NULL);
    cr_assert(eq(int, n, 3), "three VMs, two slots");
    cr_assert(eq(str, b.info[0].name, "alpha"));
    cr_assert(eq(str, b.info[1].name, "beta"), "the second entry is where the caller's stride "
                                               "puts it");
    cr_assert(eq(str, b.info[1].status, "dead"));
    cr_assert(guard_intact(b.guard, sizeof(b.guard)), "nothing written past the array");
    for (int i = 0; i < 3; i++) {
        vmig_vm_stop(e, names[i], 1000, NULL);
    }
    vmig_engine_free(e);
    rmdir(dir);
}

Test(abi, version_is_the_library_s)
{
    cr_assert(eq(str, (char *)vmig_version(), VMIG_VERSION_STRING));
}
