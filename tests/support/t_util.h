/* Helpers for the integration tests (prefix t_). */
#ifndef VMIG_TEST_UTIL_H
#define VMIG_TEST_UTIL_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "vmigrate.h"

/* A fresh state directory under /tmp (owned string). */
char *t_state_dir_new(void);
/* Removes it, and fails the test if QEMU processes still use it or files are left. */
void t_state_dir_check_clean(const char *dir);
/* QEMU processes whose command line mentions @needle. */
int t_qemu_count(const char *needle);
/* pid of the QEMU that owns instance @dir (0 if none). */
int t_instance_pid(const char *instance_dir);

/* A spec for the built-in test guest. */
vmig_spec *t_guest_spec(const char *name, int mem_mib, int dirty_mib_s);
/* $VMIG_TEST_ACCEL (tcg default, kvm on real hosts). */
vmig_accel t_accel(void);
/* An engine on @state_dir that logs to stderr when $VMIG_TEST_DEBUG is set. */
vmig_engine *t_engine(const char *state_dir);

typedef struct t_run_result {
    int status; /* exit code, or 128 + signal */
    char *out;
    char *err;
} t_run_result;
/* Runs the vmigrate CLI ($VMIG_CLI) with @args (NULL-terminated). */
t_run_result t_cli(const char *const *args);
void t_run_result_clear(t_run_result *r);

/* A unix-socket relay from @listen_path to @target_path that corrupts the body of every copy
 * of test-guest page @page it sees (@page < 0: a clean relay).  Runs on its own thread. */
typedef struct t_proxy t_proxy;
t_proxy *t_proxy_start(const char *listen_path, const char *target_path, int64_t page);
/* Bytes relayed and copies of the page corrupted, after the stream ended. */
void t_proxy_stop(t_proxy *p, uint64_t *ret_bytes, int *ret_hits);

#endif
