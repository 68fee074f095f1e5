/* Helpers for the integration tests (prefix t_). */
#ifndef VMIG_TEST_UTIL_H
#define VMIG_TEST_UTIL_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "vmigrate.h"

/* A completion ring for tests that talk QMP without an engine; freed at exit. */
struct ring;
struct ring *t_ring(void);

/* A fresh state directory under /tmp (owned string). */
char *t_state_dir_new(void);
/* Removes it, and fails the test if QEMU processes still use it or files are left. */
void t_state_dir_check_clean(const char *dir);
/* QEMU processes whose command line mentions @needle. */
int t_qemu_count(const char *needle);
/* The same, once the count has settled at 0 or 5 s have passed. */
int t_qemu_count_settled(const char *needle);
/* The end of a suite with an engine on @state: stops every VM, frees the engine, checks that
 * nothing is left (t_state_dir_check_clean), then kills and removes whatever a failed test
 * left anyway, and frees @state. */
void t_engine_teardown(vmig_engine *e, char *state);
/* pid of the QEMU that owns instance @dir (0 if none). */
int t_instance_pid(const char *instance_dir);

/* A spec for the built-in test guest. */
vmig_spec *t_guest_spec(const char *name, int mem_mib, int dirty_mib_s);
/* The same with @extra appended to the guest's command line ("vmig.tlb_refresh=0"). */
vmig_spec *t_guest_spec_ex(const char *name, int mem_mib, int dirty_mib_s, const char *extra);
/* Version code (major * 10000 + minor * 100 + micro) of the QEMU the tests run: $VMIG_QEMU,
 * else the build's default.  Asked once per test process. */
int t_qemu_version(void);
/* Whether a live migration under test loses guest writes in QEMU itself: QEMU < 9.0 under
 * TCG.  vmigrate refuses such migrations unless told --unsafe. */
bool t_qemu_loses_tcg_writes(void);
/* Skips the calling test when it would check a guest that migrated live on such a QEMU. */
#define T_SKIP_IF_QEMU_LOSES_WRITES()                                                              \
    do {                                                                                           \
        if (t_qemu_loses_tcg_writes()) {                                                           \
            cr_skip_test("QEMU %d.%d under TCG loses guest writes in live migration: this "        \
                         "test checks a dirtying guest after one (run it on QEMU >= 9.0)",         \
                         t_qemu_version() / 10000, t_qemu_version() / 100 % 100);                  \
        }                                                                                          \
    } while (0)
/* Options for a live migration whose guest is idle, or whose result is not checked: on a
 * QEMU that loses writes it needs --unsafe, which is harmless there. */
void t_live_opts(vmig_migrate_opts *o);
/* $VMIG_TEST_ACCEL (tcg default, kvm on real hosts). */
vmig_accel t_accel(void);
/* An engine on @state_dir that logs to stderr when $VMIG_TEST_DEBUG is set. */
vmig_engine *t_engine(const char *state_dir);

typedef struct t_run_result {
    int status; /* exit code, or 128 + signal */
    char *out;
    char *err;
} t_run_result;
/* Runs @argv (NULL-terminated; argv[0] a path) and collects its output. */
t_run_result t_run(const char *const *argv);
/* Runs the vmigrate CLI ($VMIG_CLI) with @args (NULL-terminated). */
t_run_result t_cli(const char *const *args);

/* A `vmigrate agent` process ($VMIG_CLI, $VMIG_QEMU) with a new key, its own state directory
 * and a log (stderr) beside the key. */
typedef struct t_agent {
    char *dir, *key_dir, *key, *log, *dest, *netns;
    int port;
    pid_t pid;
} t_agent;
/* Starts it (in network namespace @netns when set) on @host, port 0; dest is its vmig:// URL.
 * It dies with the test process. */
void t_agent_start(t_agent *a, const char *netns, const char *host);
/* Removes its key and log, and frees what t_agent_start() made (a->dir too, if still set:
 * tear its state down first).  The agent process must be gone. */
void t_agent_free(t_agent *a);
/* The same, in a mount namespace of its own where directory @bind_from is mounted over
 * @bind_at: what the agent sees at @bind_at is not what the test sees (two hosts' disks). */
void t_agent_start_ex(t_agent *a, const char *netns, const char *host, const char *bind_from,
                      const char *bind_at);

/* A progress callback (vmig_progress_fn) that cuts a migration once it runs in post-copy with
 * more than 4 MiB left: migrate-pause on the source's reader monitor @sock shuts its channel
 * down, as a broken network would.  @cut says it did. */
typedef struct t_cutter {
    bool cut;
    char *sock;
} t_cutter;
void t_cut_in_postcopy(void *opaque, const vmig_migration_stats *st);
void t_run_result_clear(t_run_result *r);

/* A unix-socket relay from @listen_path to @target_path that corrupts the body of every copy
 * of test-guest page @page it sees (@page < 0: a clean relay).  Runs on its own thread. */
typedef struct t_proxy t_proxy;
t_proxy *t_proxy_start(const char *listen_path, const char *target_path, int64_t page);
/* Bytes relayed and copies of the page corrupted, after the stream ended. */
void t_proxy_stop(t_proxy *p, uint64_t *ret_bytes, int *ret_hits);

#endif
