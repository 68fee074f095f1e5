/*
 * Migrations between two QEMU versions on real QEMU pairs: $VMIG_QEMU_OLD (Debian 12's 7.2)
 * and $VMIG_QEMU_NEW (>= 9.0, from bookworm-backports).  The source runs one, the destination
 * the other (the engine's QEMU when migrate starts is the destination's).
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <string.h>

#include "engine/engine.h"
#include "tests/support/t_util.h"

#define READY_MS 120000

static char *state;
static vmig_engine *eng;
static const char *qemu_old, *qemu_new;
static char v_old[32], v_new[32];
static char old_series[16]; /* "7.2": its versioned machine types end in it */
static GPtrArray *warnings;

static void keep_warnings(void *opaque, vmig_log_level level, const char *msg)
{
    (void)opaque;
    if (level <= VMIG_LOG_WARN) {
        g_ptr_array_add(warnings, g_strdup(msg));
    }
}

static int version_of(const char *qemu, char *buf, size_t len)
{
    vmig_engine_set_qemu(eng, qemu);
    vmig_error *err = NULL;
    int v = vmig_engine_qemu_version(eng, NULL, &err);
    cr_assert(gt(int, v, 0), "%s", vmig_error_message(err));
    g_snprintf(buf, len, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    return v;
}

static void setup(void)
{
    qemu_old = getenv("VMIG_QEMU_OLD");
    qemu_new = getenv("VMIG_QEMU_NEW");
    cr_assert(qemu_old && *qemu_old && qemu_new && *qemu_new,
              "VMIG_QEMU_OLD and VMIG_QEMU_NEW name the two QEMUs (scripts/setup.sh)");
    state = t_state_dir_new();
    eng = t_engine(state);
    warnings = g_ptr_array_new_with_free_func(g_free);
    vmig_engine_set_log(eng, keep_warnings, NULL);
    int old = version_of(qemu_old, v_old, sizeof(v_old));
    int new = version_of(qemu_new, v_new, sizeof(v_new));
    cr_assert(ge(int, new, 90000), "new QEMU %s is not >= 9.0", v_new);
    cr_assert(lt(int, old, 90000), "old QEMU %s is not < 9.0", v_old);
    g_snprintf(old_series, sizeof(old_series), "%d.%d", old / 10000, old / 100 % 100);
}

static void teardown(void)
{
    g_ptr_array_free(warnings, TRUE);
    t_engine_teardown(eng, state);
}

TestSuite(versions, .init = setup, .fini = teardown, .timeout = 240);

/* Starts the test guest on @qemu with machine type @machine (NULL: the spec's default). */
static void start_on(const char *qemu, const char *name, const char *machine, int rate)
{
    vmig_engine_set_qemu(eng, qemu);
    g_autoptr(vmig_spec) s = t_guest_spec(name, 128, rate);
    if (machine) {
        g_free(s->machine);
        s->machine = g_strdup(machine);
    }
    vmig_error *err = NULL;
    cr_assert(vmig_vm_start(eng, s, VMIG_ACCEL_TCG, &err), "%s", vmig_error_message(err));
    cr_assert(vmig_guest_wait_ready(eng, name, READY_MS, &err), "%s", vmig_error_message(err));
}

/* The VM's QEMU version, asked over its monitor. */
static void running_version(const char *name, char *buf, size_t len)
{
    g_autofree char *sock = g_build_filename(state, name, "qmp.sock", NULL);
    vmig_error *err = NULL;
    g_autoptr(qmp_conn) c = qmp_conn_open_unix(t_ring(), sock, 5000, &err);
    cr_assert_not_null(c, "%s", vmig_error_message(err));
    eng_qemu_version v;
    cr_assert(eng_qemu_version_query(c, &v, &err), "%s", vmig_error_message(err));
    eng_qemu_version_str(&v, buf, len);
}

static void expect_refused(const char *name, const vmig_migrate_opts *o, const char *const *needles)
{
    int qemus = t_qemu_count(state);
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(not(vmig_migrate(eng, name, o, NULL, NULL, &st, &err)));
    const char *msg = vmig_error_message(err);
    cr_assert(eq(int, vmig_error_code(err), VMIG_E_STATE), "%s", msg);
    for (const char *const *n = needles; *n; n++) {
        cr_assert_not_null(strstr(msg, *n), "'%s' not in: %s", *n, msg);
    }
    g_autofree char *running = g_strdup_printf("VM '%s' is running on the source", name);
    cr_assert_not_null(strstr(msg, running), "%s", msg);
    cr_assert(eq(str, st.status, "failed"));
    vmig_error_free(err);
    cr_assert(eq(int, t_qemu_count(state), qemus), "refused before a destination QEMU started");
    err = NULL;
    cr_assert(vmig_guest_verify(eng, name, NULL, &err), "the source lost nothing: %s",
              vmig_error_message(err));
}

Test(versions, live_tcg_migration_on_old_qemu_is_refused)
{
    start_on(qemu_old, "lossy", NULL, 40);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    const char *const needles[] = {"refusing to migrate VM 'lossy' live",
                                   v_old,
                                   "TCG",
                                   "QEMU 9.0",
                                   "03bfc2188f",
                                   "without --live",
                                   "--unsafe",
                                   NULL};
    expect_refused("lossy", &o, needles);
}

Test(versions, unsafe_migrates_live_on_old_qemu_anyway)
{
    start_on(qemu_old, "risky", NULL, 40);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.unsafe = true;
    vmig_migration_stats st;
    vmig_error *err = NULL;
    /* Only completion is asserted: on this QEMU the guest's data may be lost, which is what
     * --unsafe accepts. */
    cr_assert(vmig_migrate(eng, "risky", &o, NULL, NULL, &st, &err), "%s", vmig_error_message(err));
    cr_assert(eq(str, st.status, "completed"));
    bool warned = false;
    for (guint i = 0; i < warnings->len; i++) {
        warned |= strstr(g_ptr_array_index(warnings, i), "--unsafe") != NULL;
    }
    cr_assert(warned, "the engine warned that it migrated unsafely");
}

Test(versions, old_to_new_with_a_pinned_machine_type)
{
    g_autofree char *pinned = g_strdup_printf("pc-i440fx-%s", old_series);
    start_on(qemu_old, "upgrade", pinned, 20);
    vmig_engine_set_qemu(eng, qemu_new);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = false; /* live from QEMU 7.2 under TCG is refused: see above */
    vmig_migration_stats st;
    vmig_error *err = NULL;
    cr_assert(vmig_migrate(eng, "upgrade", &o, NULL, NULL, &st, &err), "%s",
              vmig_error_message(err));
    char now[32];
    running_version("upgrade", now, sizeof(now));
    cr_assert(eq(str, now, v_new), "the VM runs on the new QEMU");
    uint64_t pages = 0;
    cr_assert(vmig_guest_verify(eng, "upgrade", &pages, &err), "%s", vmig_error_message(err));
    cr_assert(gt(u64, pages, 25000));
}

Test(versions, new_to_old_is_refused)
{
    g_autofree char *pinned = g_strdup_printf("pc-i440fx-%s", old_series);
    start_on(qemu_new, "downgrade", pinned, 0);
    vmig_engine_set_qemu(eng, qemu_old);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = false;
    const char *const needles[] = {"older QEMU", v_new, v_old, NULL};
    expect_refused("downgrade", &o, needles);
}

Test(versions, unversioned_machine_type_between_versions_is_refused)
{
    start_on(qemu_old, "alias", "pc", 0);
    vmig_engine_set_qemu(eng, qemu_new);
    vmig_migrate_opts o;
    vmig_migrate_opts_init(&o);
    o.live = false;
    g_autofree char *pinned = g_strdup_printf("\"pc-i440fx-%s\"", old_series);
    const char *const needles[] = {"unversioned machine type 'pc'", v_old, v_new, pinned, NULL};
    expect_refused("alias", &o, needles);
}
