/* The vmigrate command line: the only part of vmigrate that talks to people. */
#ifndef VMIG_CLI_H
#define VMIG_CLI_H

#include <json-c/json.h>
#include <stdbool.h>

#include "vmigrate.h"

enum {
    CLI_OK = 0,
    CLI_FAILED = 1, /* the operation failed (the message says why) */
    CLI_USAGE = 2,  /* the command line was wrong */
};

typedef struct cli_global {
    const char *state_dir;
    const char *qemu;
    bool debug;
} cli_global;

/* Every command: argv[0] is the command name; returns an exit code. */
int cmd_vm(const cli_global *g, int argc, char **argv);
int cmd_migrate(const cli_global *g, int argc, char **argv);
int cmd_demo(const cli_global *g, int argc, char **argv);
int cmd_qmp(const cli_global *g, int argc, char **argv);
int cmd_cpu(const cli_global *g, int argc, char **argv);
int cmd_agent(const cli_global *g, int argc, char **argv);
int cmd_key(const cli_global *g, int argc, char **argv);
/* jobinfo, abort, set-max-downtime, set-speed, postcopy, dirtyrate (cmd_control.c) */
int cmd_control(const cli_global *g, int argc, char **argv);

/* output.c */
void cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints and frees @err, returns CLI_FAILED. */
int cli_fail(vmig_error *err);
/* getopt_long returned '?' or ':' (optstring starts with "+:"): report it, return CLI_USAGE. */
int cli_bad_option(const char *cmd, int c, char **argv);
vmig_engine *cli_engine(const cli_global *g, vmig_error **errp);
void cli_install_sigint(vmig_engine *e);
/* Before the engine is freed. */
void cli_remove_sigint(void);
bool cli_parse_int(const char *opt, const char *val, int lo, int hi, int *ret);
void cli_print_json(json_object *o);
json_object *cli_stats_json(const vmig_migration_stats *st);

typedef struct cli_progress {
    bool enabled;
    bool tty;
    long long last_line_ms;
} cli_progress;
void cli_progress_init(cli_progress *p, bool verbose);
void cli_progress_cb(void *opaque, const vmig_migration_stats *st);
void cli_progress_done(cli_progress *p);

/* Migration options shared by migrate and demo. */
enum { /* migrate's long options without a letter (demo's start at 0x100) */
       CLI_OPT_POLICY = 0x200,
       CLI_OPT_DOWNTIME_STEPS,
       CLI_OPT_AUTO_CONVERGE,
       CLI_OPT_AC_INITIAL,
       CLI_OPT_AC_INCREMENT,
       CLI_OPT_POSTCOPY,
       CLI_OPT_POSTCOPY_AFTER,
       CLI_OPT_POSTCOPY_PREEMPT,
       CLI_OPT_POSTCOPY_RESUME,
       CLI_OPT_TIMEOUT_ACTION,
       CLI_OPT_TIMEOUT_SUSPEND,
       CLI_OPT_TIMEOUT_POSTCOPY,
       CLI_OPT_DIRTY_LIMIT,
       CLI_OPT_COMPRESSED,
       CLI_OPT_SUSPEND,
       CLI_OPT_OFFLINE,
       CLI_OPT_PERSISTENT,
       CLI_OPT_UNDEFINE_SOURCE,
       CLI_OPT_DEST_SPEC,
       CLI_OPT_COPY_ALL,
       CLI_OPT_COPY_INC,
       CLI_OPT_MIGRATE_DISKS,
};

typedef struct cli_migrate_args {
    vmig_migrate_opts opts;
    bool verbose;
    bool json;
} cli_migrate_args;
/* Handles one migrate option; returns 1 if taken, 0 if not a migrate option, -1 if bad. */
int cli_migrate_opt(cli_migrate_args *a, int opt, const char *val);

extern const char cli_migrate_opts_help[];

#define CLI_CHANNELS_MAX 66 /* main, 64 multifd, preempt */
#define CLI_ACTIONS_MAX 64
/* A migration to its end (the progress callback on @prog): its figures, the relay's channels
 * into @chan (room for CLI_CHANNELS_MAX), and what the policy did into @act (room for
 * CLI_ACTIONS_MAX; may be NULL). */
bool cli_migrate_run(vmig_engine *e, const char *name, const vmig_migrate_opts *o,
                     cli_progress *prog, vmig_migration_stats *st, vmig_channel_stats *chan,
                     size_t *n_chan, vmig_policy_action *act, size_t *n_act, vmig_error **errp);
json_object *cli_actions_json(const vmig_policy_action *a, size_t n);
json_object *cli_channels_json(const vmig_channel_stats *c, size_t n);
void cli_print_channels(const vmig_channel_stats *c, size_t n);

#endif
